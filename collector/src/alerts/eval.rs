//! Which alerts a stored record or approval event raises.
//!
//! Runs on the writer thread, on records and events about to be stored for
//! the first time (a resent record raises nothing again). An alert's id is
//! derived from its rule and what raised it, so the same cause never makes
//! two alerts, and a receiver can deduplicate redeliveries on it.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use tracegate_proto::v1::{identity::Status, record::Phase, Alert, ApprovalEvent, Record};

use super::{ApprovalOutcome, Condition, RateKey, Rule};

const MINUTE_NANOS: i64 = 60_000_000_000;
/// Quiet windows are forgotten at most this often (record time).
const SWEEP_NANOS: i64 = 1_000_000_000;
/// Rate windows kept at most; past it, quiet ones are forgotten first, and
/// when none is quiet, new keys count together under `OVERFLOW` (a caller
/// inventing a new subject per token is still counted, in one window).
const MAX_WINDOWS: usize = 10_000;
const OVERFLOW: &str = "_other";

pub struct Evaluator {
    rules: Vec<Rule>,
    /// Alert ids raised so far (recovered at start-up too): an approval
    /// denied is seen both in its event and in the filter's record.
    seen: HashSet<String>,
    /// JWT rejections per (rule, key) within the last minute.
    windows: HashMap<(usize, String), Window>,
    /// When quiet windows were last forgotten (record time): at most once a
    /// second, so a full map does not cost a pass per record.
    swept_at: i64,
}

#[derive(Default)]
struct Window {
    times: VecDeque<i64>,
    /// Fired for this burst: not again until a whole minute is quiet.
    fired: bool,
}

/// Stable, header-safe: 32 hex digits of SHA-256 of the rule and the cause.
pub fn alert_id(rule: &str, cause: &str) -> String {
    let d = Sha256::digest(format!("{rule}\n{cause}").as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl Evaluator {
    pub fn new(rules: Vec<Rule>, seen: impl IntoIterator<Item = String>) -> Evaluator {
        Evaluator {
            rules,
            seen: seen.into_iter().collect(),
            windows: HashMap::new(),
            swept_at: i64::MIN,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Alerts a newly stored record raises (`now`: when it is stored).
    pub fn record(&mut self, r: &Record, now: i64) -> Vec<Alert> {
        // A written-ahead request is completed by its exchange's record,
        // which carries everything it does: alert once, on that.
        if r.phase() == Phase::Request {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            let raised = match &rule.condition {
                Condition::Verdict(vs) => {
                    let v = verdict(r);
                    vs.iter()
                        .find(|x| x.as_str() == v)
                        .map(|x| format!("verdict {}", x.as_str()))
                }
                Condition::RiskAtLeast(n) => {
                    let risk = risk(r);
                    (risk >= *n).then(|| format!("risk {risk} ≥ {n}"))
                }
                Condition::Detector(names) => {
                    let found = detectors(r);
                    let hit: Vec<&str> = names
                        .iter()
                        .filter(|n| found.get(n.as_str()).is_some_and(|c| *c > 0))
                        .map(String::as_str)
                        .collect();
                    (!hit.is_empty()).then(|| format!("detector {}", hit.join(", ")))
                }
                Condition::Approval(outcomes) => r.approval.as_ref().and_then(|a| {
                    let o = record_outcome(&a.outcome)?;
                    outcomes
                        .contains(&o)
                        .then(|| format!("approval {}", o.as_str()))
                }),
                Condition::JwtRejections { .. } => None,
            };
            if let Some(what) = raised {
                let cause = match &rule.condition {
                    Condition::Approval(_) => {
                        approval_cause(r.approval.as_ref().map_or("", |a| &a.id), &r.record_id)
                    }
                    _ => r.record_id.clone(),
                };
                if let Some(a) = self.raise(i, &cause, r, now, &what) {
                    out.push(a);
                }
            }
            if let Condition::JwtRejections { per_minute, by } = self.rules[i].condition {
                if let Some(a) = self.rejection(i, per_minute, by, r, now) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Counts a rejected token in its window; an alert when the count
    /// first exceeds the limit.
    fn rejection(
        &mut self,
        i: usize,
        limit: u32,
        by: RateKey,
        r: &Record,
        now: i64,
    ) -> Option<Alert> {
        let id = r.identity.as_ref()?;
        if id.status() != Status::Rejected {
            return None;
        }
        let mut key = match by {
            RateKey::Subject => id.claimed_subject.clone(),
            RateKey::Source => r.source.clone(),
        };
        // The record's own time: records held by a filter while the
        // collector was down arrive late but count when they happened.
        let t = if r.request_start_unix_nanos > 0 {
            r.request_start_unix_nanos
        } else {
            now
        };
        if self.windows.len() >= MAX_WINDOWS && !self.windows.contains_key(&(i, key.clone())) {
            if t.saturating_sub(self.swept_at) >= SWEEP_NANOS {
                self.swept_at = t;
                self.windows
                    .retain(|_, w| w.times.back().is_some_and(|last| t - last < MINUTE_NANOS));
            }
            if self.windows.len() >= MAX_WINDOWS {
                key = OVERFLOW.to_string();
            }
        }
        let w = self.windows.entry((i, key.clone())).or_default();
        while w
            .times
            .front()
            .is_some_and(|first| t - first >= MINUTE_NANOS)
        {
            w.times.pop_front();
        }
        if w.times.is_empty() {
            w.fired = false;
        }
        w.times.push_back(t);
        let count = w.times.len();
        if w.fired || count <= limit as usize {
            return None;
        }
        w.fired = true;
        let shown = if key.is_empty() {
            "(none)"
        } else {
            key.as_str()
        };
        let what = format!(
            "{count} JWT rejections within a minute for {} {shown} (limit {limit})",
            by.as_str()
        );
        let mut a = self.raise(
            i,
            &format!("{}\n{key}\n{}", by.as_str(), r.record_id),
            r,
            now,
            &what,
        )?;
        a.rejections = count as u32;
        a.rate_key = format!("{}={key}", by.as_str());
        Some(a)
    }

    /// Alerts a newly stored approval event raises.
    pub fn event(&mut self, ev: &ApprovalEvent) -> Vec<Alert> {
        let outcome = match ev.event.as_str() {
            "denied" => ApprovalOutcome::Denied,
            "expired" => ApprovalOutcome::Expired,
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        for i in 0..self.rules.len() {
            let Condition::Approval(outcomes) = &self.rules[i].condition else {
                continue;
            };
            if !outcomes.contains(&outcome) {
                continue;
            }
            let rule = &self.rules[i];
            let id = alert_id(&rule.id, &approval_cause(&ev.approval_id, ""));
            if !self.seen.insert(id.clone()) {
                continue;
            }
            out.push(Alert {
                alert_id: id,
                rule: rule.id.clone(),
                kind: rule.condition.kind().into(),
                unix_nanos: ev.unix_nanos,
                approval_id: ev.approval_id.clone(),
                approval_outcome: outcome.as_str().into(),
                webhooks: rule.webhooks.clone(),
                summary: format!("approval {} {}", ev.approval_id, outcome.as_str()),
                ..Alert::default()
            });
        }
        out
    }

    /// The alert of rule `i` for `cause`, unless already raised.
    fn raise(&mut self, i: usize, cause: &str, r: &Record, now: i64, what: &str) -> Option<Alert> {
        let rule = &self.rules[i];
        let id = alert_id(&rule.id, cause);
        if !self.seen.insert(id.clone()) {
            return None;
        }
        Some(describe(id, rule, r, now, what))
    }
}

/// One approval alerts once per rule, whether its event or the filter's
/// record is stored first (the record alone when the approval service is
/// not this collector's).
fn approval_cause(approval_id: &str, record_id: &str) -> String {
    if approval_id.is_empty() {
        format!("record\n{record_id}")
    } else {
        format!("approval\n{approval_id}")
    }
}

/// The filter's `Approval.outcome` as an alert's outcome.
fn record_outcome(outcome: &str) -> Option<ApprovalOutcome> {
    match outcome {
        "denied" => Some(ApprovalOutcome::Denied),
        "expired" | "forwarded_expired" => Some(ApprovalOutcome::Expired),
        _ => None,
    }
}

fn verdict(r: &Record) -> &str {
    r.inspection.as_ref().map_or("", |i| i.verdict.as_str())
}

fn risk(r: &Record) -> u32 {
    let inspected = r.inspection.as_ref().map_or(0, |i| i.risk);
    let asked = r.approval.as_ref().map_or(0, |a| a.risk);
    inspected.max(asked)
}

/// Findings per detector, request and response added.
fn detectors(r: &Record) -> HashMap<String, u32> {
    let mut out: HashMap<String, u32> = HashMap::new();
    if let Some(i) = &r.inspection {
        for (name, n) in i.request_findings.iter().chain(&i.response_findings) {
            let c = out.entry(name.clone()).or_default();
            *c = c.saturating_add(*n);
        }
    }
    out
}

/// The alert's metadata from the record: names, counts and ids only.
fn describe(id: String, rule: &Rule, r: &Record, now: i64, what: &str) -> Alert {
    let subject = r
        .identity
        .as_ref()
        .filter(|i| i.status() == Status::Verified)
        .map(|i| i.subject.clone())
        .unwrap_or_default();
    let approval = r.approval.as_ref();
    Alert {
        alert_id: id,
        rule: rule.id.clone(),
        kind: rule.condition.kind().into(),
        unix_nanos: now,
        record_id: r.record_id.clone(),
        session_id: r.session_id.clone(),
        subject,
        source: r.source.clone(),
        verdict: verdict(r).into(),
        blocked_rule: r
            .inspection
            .as_ref()
            .map(|i| i.blocked_rule.clone())
            .unwrap_or_default(),
        risk: risk(r),
        detectors: detectors(r),
        approval_id: approval.map(|a| a.id.clone()).unwrap_or_default(),
        approval_outcome: approval
            .and_then(|a| record_outcome(&a.outcome))
            .map(|o| o.as_str().to_string())
            .unwrap_or_default(),
        policy_sha256: r
            .policy
            .as_ref()
            .map(|p| p.sha256.clone())
            .unwrap_or_default(),
        webhooks: rule.webhooks.clone(),
        summary: what.into(),
        ..Alert::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Verdict, When};
    use tracegate_proto::v1::{Approval, Identity, Inspection};

    fn rule(id: &str, condition: Condition) -> Rule {
        Rule {
            id: id.into(),
            condition,
            webhooks: vec!["sec".into()],
        }
    }

    fn rec(id: &str) -> Record {
        Record {
            record_id: id.into(),
            session_id: "s".into(),
            request_start_unix_nanos: 1_000,
            ..Record::default()
        }
    }

    fn inspected(id: &str, verdict: &str, risk: u32, finding: Option<&str>) -> Record {
        let mut r = rec(id);
        r.inspection = Some(Inspection {
            verdict: verdict.into(),
            risk,
            request_findings: finding.map(|f| (f.to_string(), 2)).into_iter().collect(),
            ..Inspection::default()
        });
        r
    }

    #[test]
    fn each_kind_fires_and_does_not() {
        let _ = When::default();
        let mut e = Evaluator::new(
            vec![
                rule(
                    "v",
                    Condition::Verdict(vec![Verdict::Blocked, Verdict::Refused]),
                ),
                rule("r", Condition::RiskAtLeast(70)),
                rule("d", Condition::Detector(vec!["aws_access_key".into()])),
                rule("a", Condition::Approval(vec![ApprovalOutcome::Denied])),
            ],
            [],
        );
        let fired = |e: &mut Evaluator, r: &Record| -> Vec<String> {
            e.record(r, 5).into_iter().map(|a| a.rule).collect()
        };
        assert_eq!(fired(&mut e, &inspected("1", "blocked", 0, None)), ["v"]);
        assert_eq!(fired(&mut e, &inspected("2", "refused", 0, None)), ["v"]);
        assert!(fired(&mut e, &inspected("3", "forwarded", 69, Some("email"))).is_empty());
        assert_eq!(fired(&mut e, &inspected("4", "forwarded", 70, None)), ["r"]);
        assert_eq!(
            fired(
                &mut e,
                &inspected("5", "forwarded", 0, Some("aws_access_key"))
            ),
            ["d"]
        );
        let mut denied = rec("6");
        denied.approval = Some(Approval {
            id: "ap1".into(),
            outcome: "denied".into(),
            risk: 80,
            ..Approval::default()
        });
        assert_eq!(fired(&mut e, &denied), ["r", "a"]);
        let mut expired = rec("7");
        expired.approval = Some(Approval {
            id: "ap2".into(),
            outcome: "expired".into(),
            ..Approval::default()
        });
        assert!(fired(&mut e, &expired).is_empty());
        // The service's event for an approval whose record already alerted.
        assert!(e
            .event(&ApprovalEvent {
                approval_id: "ap1".into(),
                event: "denied".into(),
                ..ApprovalEvent::default()
            })
            .is_empty());
        let a = e.event(&ApprovalEvent {
            approval_id: "ap9".into(),
            event: "denied".into(),
            ..ApprovalEvent::default()
        });
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].approval_outcome, "denied");
        // Written-ahead halves do not alert; the exchange's record does.
        let mut ahead = inspected("8", "blocked", 0, None);
        ahead.phase = Phase::Request as i32;
        assert!(fired(&mut e, &ahead).is_empty());
    }

    #[test]
    fn ids_are_stable_and_not_raised_twice() {
        let rules = || vec![rule("v", Condition::Verdict(vec![Verdict::Blocked]))];
        let r = inspected("rec-1", "blocked", 0, None);
        let mut e = Evaluator::new(rules(), []);
        let a = e.record(&r, 1);
        assert_eq!(a[0].alert_id, alert_id("v", "rec-1"));
        assert_eq!(a[0].alert_id.len(), 32);
        assert!(e.record(&r, 2).is_empty());
        // After a restart, alerts recovered from the store are not raised again.
        let mut e = Evaluator::new(rules(), [a[0].alert_id.clone()]);
        assert!(e.record(&r, 3).is_empty());
    }

    fn rejected(id: &str, at_secs: i64, source: &str) -> Record {
        let mut r = rec(id);
        r.request_start_unix_nanos = at_secs * 1_000_000_000;
        r.source = source.into();
        r.identity = Some(Identity {
            status: Status::Rejected as i32,
            rejection_reason: "bad_signature".into(),
            ..Identity::default()
        });
        r
    }

    #[test]
    fn rejection_rate_fires_once_per_burst_per_key() {
        let mut e = Evaluator::new(
            vec![rule(
                "jwt",
                Condition::JwtRejections {
                    per_minute: 3,
                    by: RateKey::Source,
                },
            )],
            [],
        );
        let mut fired = Vec::new();
        for s in 0..10 {
            fired.extend(e.record(&rejected(&format!("a{s}"), 100 + s, "gw-a"), 0));
        }
        assert_eq!(fired.len(), 1, "once when the 4th rejection crosses 3");
        assert_eq!(fired[0].record_id, "a3");
        assert_eq!(fired[0].rejections, 4);
        assert_eq!(fired[0].rate_key, "source=gw-a");
        // Another key has its own window.
        for s in 0..3 {
            assert!(e
                .record(&rejected(&format!("b{s}"), 100 + s, "gw-b"), 0)
                .is_empty());
        }
        // Slow rejections (3 a minute apart) never cross.
        for s in 0..5 {
            assert!(e
                .record(&rejected(&format!("c{s}"), 1000 + 61 * s, "gw-c"), 0)
                .is_empty());
        }
        // gw-a keeps going without a quiet minute: no new alert...
        for s in 0..5 {
            assert!(e
                .record(&rejected(&format!("d{s}"), 150 + 20 * s, "gw-a"), 0)
                .is_empty());
        }
        // ...after a quiet minute, a new burst alerts again.
        let mut again = Vec::new();
        for s in 0..4 {
            again.extend(e.record(&rejected(&format!("e{s}"), 500 + s, "gw-a"), 0));
        }
        assert_eq!(again.len(), 1);
        // Verified requests do not count.
        let mut ok = rec("v");
        ok.identity = Some(Identity {
            status: Status::Verified as i32,
            subject: "alice".into(),
            ..Identity::default()
        });
        assert!(e.record(&ok, 0).is_empty());
    }

    #[test]
    fn rejection_rate_by_the_subject_the_refused_token_claims() {
        let mut e = Evaluator::new(
            vec![rule(
                "jwt",
                Condition::JwtRejections {
                    per_minute: 2,
                    by: RateKey::Subject,
                },
            )],
            [],
        );
        let claiming = |id: &str, sub: &str, s: i64| {
            let mut r = rejected(id, s, "gw");
            if let Some(i) = r.identity.as_mut() {
                i.claimed_subject = sub.into();
            }
            r
        };
        let mut fired = Vec::new();
        for s in 0..3 {
            fired.extend(e.record(&claiming(&format!("m{s}"), "mallory", 100 + s), 0));
            fired.extend(e.record(&claiming(&format!("a{s}"), &format!("user{s}"), 100 + s), 0));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].rate_key, "subject=mallory");
    }

    /// A caller claiming a new subject in every token, within one minute,
    /// fills the windows and is then counted in one shared window, which
    /// fires; the windows kept stay bounded.
    #[test]
    fn subjects_invented_per_token_are_counted_together_past_the_cap() {
        let mut e = Evaluator::new(
            vec![rule(
                "jwt",
                Condition::JwtRejections {
                    per_minute: 3,
                    by: RateKey::Subject,
                },
            )],
            [],
        );
        let mut fired = Vec::new();
        for n in 0..MAX_WINDOWS + 10 {
            let mut r = rejected(&format!("r{n}"), 100, "gw");
            if let Some(i) = r.identity.as_mut() {
                i.claimed_subject = format!("sub-{n}");
            }
            fired.extend(e.record(&r, 0));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].rate_key, format!("subject={OVERFLOW}"));
        assert!(e.windows.len() <= MAX_WINDOWS + 1);
    }
}
