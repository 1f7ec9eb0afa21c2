//! Delivery: one thread POSTs each stored alert to each of its webhooks
//! until one answers 2xx, then has the writer store an `AlertDelivered`
//! marker. Failures are retried with exponential backoff (0.5 s doubling
//! to 60 s), without end: an alert is only dropped when its webhook is no
//! longer configured. At start-up, stored alerts without a marker for a
//! webhook are queued again (at least once: a crash between a 2xx and its
//! marker sends that alert again, with the same id).

use anyhow::Result;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tracegate_proto::v1::{Alert, AlertDelivered};

use super::{payload, Format, WebhookConfig};
use crate::ledger::writer::now_nanos;
use crate::metrics::Metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// One POST at most this long (connect included).
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often the idle thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
pub const ID_HEADER: &str = "X-Tracegate-Alert-Id";

/// (alert id, webhook name) pairs already answered 2xx.
pub type Delivered = HashSet<(String, String)>;

/// The (alert, webhook) pairs still to send among stored alerts.
pub fn undelivered(alerts: Vec<Alert>, delivered: &Delivered) -> Vec<(Arc<Alert>, String)> {
    let mut out = Vec::new();
    for a in alerts {
        let a = Arc::new(a);
        for w in &a.webhooks {
            if !delivered.contains(&(a.alert_id.clone(), w.clone())) {
                out.push((a.clone(), w.clone()));
            }
        }
    }
    out
}

struct Job {
    alert: Arc<Alert>,
    webhook: usize,
    due: Instant,
    backoff: Duration,
}

pub struct Deliverer {
    webhooks: Vec<WebhookConfig>,
    agent: ureq::Agent,
    jobs: Vec<Job>,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    pub fn new(webhooks: Vec<WebhookConfig>, metrics: Arc<Metrics>) -> Deliverer {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Deliverer {
            webhooks,
            agent,
            jobs: Vec::new(),
            metrics,
        }
    }

    fn queue(&mut self, alert: Arc<Alert>, webhook: &str) {
        match self.webhooks.iter().position(|w| w.name == webhook) {
            Some(i) => self.jobs.push(Job {
                alert,
                webhook: i,
                due: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            None => eprintln!(
                "tracegate: alert {} is not sent to webhook {webhook:?}: no longer configured",
                alert.alert_id
            ),
        }
    }

    fn queue_new(&mut self, alert: Alert) {
        let alert = Arc::new(alert);
        for w in alert.webhooks.clone() {
            self.queue(alert.clone(), &w);
        }
    }

    /// POSTs every due job once; returns the markers of those answered 2xx.
    fn attempt_due(&mut self) -> Vec<AlertDelivered> {
        let now = Instant::now();
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.jobs.len() {
            if self.jobs[i].due > now {
                i += 1;
                continue;
            }
            let job = &mut self.jobs[i];
            let hook = &self.webhooks[job.webhook];
            match post(&self.agent, hook, &job.alert) {
                Ok(()) => {
                    self.metrics.alert_sent(&hook.name);
                    done.push(AlertDelivered {
                        alert_id: job.alert.alert_id.clone(),
                        webhook: hook.name.clone(),
                        unix_nanos: now_nanos(),
                    });
                    self.jobs.swap_remove(i);
                }
                Err(why) => {
                    self.metrics.alert_failed(&hook.name);
                    eprintln!(
                        "tracegate: alert {} to webhook {}: {why}; retrying in {:?}",
                        job.alert.alert_id, hook.name, job.backoff
                    );
                    job.due = Instant::now() + job.backoff;
                    job.backoff = (job.backoff * 2).min(MAX_BACKOFF);
                    i += 1;
                }
            }
        }
        self.metrics.alerts_queued(self.jobs.len());
        done
    }

    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        self.jobs
            .iter()
            .map(|j| j.due.saturating_duration_since(now))
            .min()
            .unwrap_or(POLL)
            .min(POLL)
    }
}

fn post(agent: &ureq::Agent, hook: &WebhookConfig, alert: &Alert) -> Result<(), String> {
    let body = payload::body(alert, hook.format).to_string();
    let content_type = match hook.format {
        Format::Json | Format::Slack => "application/json",
    };
    let resp = agent
        .post(&hook.url)
        .header(ID_HEADER, &alert.alert_id)
        .header("content-type", content_type)
        .send(body.as_bytes())
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", resp.status()))
    }
}

/// Starts the delivery thread: `recovered` first, then what `incoming`
/// brings; `mark` stores delivery markers (false: the store stopped). It
/// ends when `stop` is set or the store stops; what is left stays in the
/// store for the next start.
pub fn spawn(
    mut deliverer: Deliverer,
    recovered: Vec<(Arc<Alert>, String)>,
    incoming: mpsc::Receiver<Alert>,
    mut mark: impl FnMut(Vec<AlertDelivered>) -> bool + Send + 'static,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    for (alert, webhook) in recovered {
        deliverer.queue(alert, &webhook);
    }
    deliverer.metrics.alerts_queued(deliverer.jobs.len());
    let handle = std::thread::Builder::new()
        .name("alert-delivery".into())
        .spawn(move || loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match incoming.recv_timeout(deliverer.next_wait()) {
                Ok(a) => {
                    deliverer.queue_new(a);
                    while let Ok(a) = incoming.try_recv() {
                        deliverer.queue_new(a);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The writer is gone: nothing new will come; keep sending
                // what is queued until stopped.
                Err(mpsc::RecvTimeoutError::Disconnected) if deliverer.jobs.is_empty() => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(deliverer.next_wait());
                }
            }
            let done = deliverer.attempt_due();
            if !done.is_empty() && !mark(done) {
                break;
            }
        })?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, hooks: &[&str]) -> Alert {
        Alert {
            alert_id: id.into(),
            webhooks: hooks.iter().map(|s| s.to_string()).collect(),
            ..Alert::default()
        }
    }

    #[test]
    fn recovery_queues_what_no_webhook_acknowledged() {
        let delivered: Delivered = [
            ("a".to_string(), "sec".to_string()),
            ("b".to_string(), "sec".to_string()),
            ("b".to_string(), "chat".to_string()),
        ]
        .into();
        let left = undelivered(
            vec![
                alert("a", &["sec", "chat"]),
                alert("b", &["sec", "chat"]),
                alert("c", &["sec"]),
            ],
            &delivered,
        );
        let left: Vec<(&str, &str)> = left
            .iter()
            .map(|(a, w)| (a.alert_id.as_str(), w.as_str()))
            .collect();
        assert_eq!(left, [("a", "chat"), ("c", "sec")]);
    }
}
