//! Delivery: a thread per webhook POSTs each stored alert to it until it
//! answers 2xx, then has the writer store an `AlertDelivered`
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
    due: Instant,
    backoff: Duration,
}

/// One webhook's queue: each webhook has its own thread, so a slow or
/// hung receiver delays only its own alerts.
struct Worker {
    hook: WebhookConfig,
    agent: ureq::Agent,
    jobs: Vec<Job>,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn queue(&mut self, alert: Arc<Alert>) {
        self.metrics.alerts_queued(1);
        self.jobs.push(Job {
            alert,
            due: Instant::now(),
            backoff: FIRST_BACKOFF,
        });
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
            match post(&self.agent, &self.hook, &job.alert) {
                Ok(()) => {
                    // Counted as sent once its marker is stored (`run`).
                    self.metrics.alerts_queued(-1);
                    done.push(AlertDelivered {
                        alert_id: job.alert.alert_id.clone(),
                        webhook: self.hook.name.clone(),
                        unix_nanos: now_nanos(),
                    });
                    self.jobs.swap_remove(i);
                }
                Err(why) => {
                    self.metrics.alert_failed(&self.hook.name);
                    eprintln!(
                        "tracegate: alert {} to webhook {}: {why}; retrying in {:?}",
                        job.alert.alert_id, self.hook.name, job.backoff
                    );
                    job.due = Instant::now() + job.backoff;
                    job.backoff = (job.backoff * 2).min(MAX_BACKOFF);
                    i += 1;
                }
            }
        }
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

    fn run(
        mut self,
        incoming: mpsc::Receiver<Arc<Alert>>,
        mark: impl Fn(Vec<AlertDelivered>) -> bool,
        stop: &AtomicBool,
    ) {
        while !stop.load(Ordering::Relaxed) {
            match incoming.recv_timeout(self.next_wait()) {
                Ok(a) => {
                    self.queue(a);
                    while let Ok(a) = incoming.try_recv() {
                        self.queue(a);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if self.jobs.is_empty() {
                        break;
                    }
                    std::thread::sleep(self.next_wait());
                }
            }
            let done = self.attempt_due();
            let delivered = done.len();
            if delivered == 0 {
                continue;
            }
            if !mark(done) {
                break;
            }
            // Sent means delivered and durably marked: a restart will not
            // send it again.
            for _ in 0..delivered {
                self.metrics.alert_sent(&self.hook.name);
            }
        }
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

/// Starts delivery: a thread per webhook, and one handing each alert from
/// `incoming` (the writer) to its webhooks' threads. `recovered` goes first;
/// `mark` stores delivery markers (false: the store stopped). Everything
/// ends when `stop` is set; what is left stays in the store for the next
/// start.
pub fn spawn<M>(
    webhooks: Vec<WebhookConfig>,
    metrics: Arc<Metrics>,
    recovered: Vec<(Arc<Alert>, String)>,
    incoming: mpsc::Receiver<Alert>,
    mark: M,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>>
where
    M: Fn(Vec<AlertDelivered>) -> bool + Clone + Send + 'static,
{
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut routes = Vec::new();
    let mut workers = Vec::new();
    for hook in webhooks {
        let (tx, rx) = mpsc::channel::<Arc<Alert>>();
        routes.push((hook.name.clone(), tx));
        let worker = Worker {
            hook,
            agent: agent.clone(),
            jobs: Vec::new(),
            metrics: metrics.clone(),
        };
        let (mark, stop) = (mark.clone(), stop.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("alerts-{}", worker.hook.name))
                .spawn(move || worker.run(rx, mark, &stop))?,
        );
    }
    let route = move |alert: Arc<Alert>, webhook: &str| match routes
        .iter()
        .find(|(name, _)| name == webhook)
    {
        Some((_, tx)) => {
            let _ = tx.send(alert);
        }
        None => eprintln!(
            "tracegate: alert {} is not sent to webhook {webhook:?}: no longer configured",
            alert.alert_id
        ),
    };
    for (alert, webhook) in recovered {
        route(alert, &webhook);
    }
    let handle = std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match incoming.recv_timeout(POLL) {
                    Ok(a) => {
                        let a = Arc::new(a);
                        for w in &a.webhooks {
                            route(a.clone(), w);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // The writer is gone; the workers finish on `stop`.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(POLL);
                    }
                }
            }
            for w in workers {
                let _ = w.join();
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

    /// Answers each request with the next status, keeping the ids.
    fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for status in statuses {
                let (mut conn, _) = listener.accept().unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let (mut len, mut id) = (0, String::new());
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    let line = line.trim_end().to_ascii_lowercase();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if let Some(v) = line.strip_prefix("x-tracegate-alert-id:") {
                        id = v.trim().to_string();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                .unwrap();
                tx.send(id).unwrap();
            }
        });
        (url, rx)
    }

    #[test]
    fn failures_are_retried_until_acknowledged_then_marked() {
        let (url, got) = receiver(vec![500, 200]);
        let metrics = Arc::new(Metrics::new(&crate::metrics::MetricsConfig::default()));
        let (marks_tx, marks) = mpsc::channel();
        let (alerts, incoming) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn(
            vec![WebhookConfig {
                name: "sec".into(),
                url,
                format: Format::Json,
            }],
            metrics.clone(),
            Vec::new(),
            incoming,
            move |m| marks_tx.send(m).is_ok(),
            stop.clone(),
        )
        .unwrap();
        alerts.send(alert("a1", &["sec", "gone"])).unwrap();
        let wait = Duration::from_secs(10);
        assert_eq!(got.recv_timeout(wait).unwrap(), "a1");
        assert_eq!(got.recv_timeout(wait).unwrap(), "a1", "retried");
        let m = marks.recv_timeout(wait).unwrap();
        assert_eq!(
            (m[0].alert_id.as_str(), m[0].webhook.as_str()),
            ("a1", "sec")
        );
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
        let text = metrics.encode();
        assert!(
            text.contains("tracegate_alerts_sent_total{webhook=\"sec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tracegate_alerts_failed_total{webhook=\"sec\"} 1"),
            "{text}"
        );
        assert!(text.contains("tracegate_alerts_queued 0"), "{text}");
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
