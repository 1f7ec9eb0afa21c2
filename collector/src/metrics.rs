//! Prometheus metrics of `tracegate serve` (`--metrics ADDR`, `GET /metrics`,
//! OpenMetrics text).
//!
//! Five groups: the ingest (export calls, records, bytes, group commits and
//! fdatasync latency), the store (segments, bytes, the last seal), approvals
//! (pending, decided by outcome, time to a decision), alerts (sent and
//! failed by webhook, queued), and the LLM traffic the
//! records describe (requests by identity, model and verdict; token usage
//! named after the OpenTelemetry GenAI conventions). Traffic is counted when
//! a record becomes durable, once per record id (a resent batch adds
//! nothing). Identity and model labels are capped: past the cap, new values
//! are counted as `_other`, so a caller cannot grow the scrape without bound.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use tracegate_proto::v1::{identity::Status, record::Phase, Record};

/// What exceeds a cap is counted under this label value.
pub const OTHER: &str = "_other";

/// `metrics` in `serve --config`: label caps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct `identity` label values (callers) before `_other`.
    pub max_identities: usize,
    /// Distinct model label values before `_other`.
    pub max_models: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_identities: 200,
            max_models: 50,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CallResult {
    ok,
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    result: CallResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    identity: String,
    gen_ai_request_model: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    identity: String,
    gen_ai_provider_name: String,
    gen_ai_operation_name: String,
    gen_ai_request_model: String,
    gen_ai_response_model: String,
    gen_ai_token_type: &'static str,
}

/// Token counts' buckets: powers of four, as OpenTelemetry advises for
/// `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

fn token_histogram() -> Histogram {
    Histogram::new(TOKEN_BUCKETS.iter().copied())
}

type TokenFamily = Family<TokenLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    export_calls: Family<CallLabels, Counter>,
    records: Counter,
    duplicates: Counter,
    rejected: Counter,
    bytes: Counter,
    group_records: Histogram,
    fdatasync: Histogram,
    segments: Gauge,
    store_bytes: Gauge,
    /// Unix nanoseconds of the last seal (0: none yet); its age is computed
    /// when scraped.
    last_seal_nanos: AtomicI64,
    last_seal_age: Gauge<f64, AtomicU64>,
    approvals_pending: Gauge,
    approvals_decided: Family<OutcomeLabels, Counter>,
    approval_decision: Histogram,
    requests: Family<RequestLabels, Counter>,
    tokens: TokenFamily,
    alerts_sent: Family<WebhookLabels, Counter>,
    alerts_failed: Family<WebhookLabels, Counter>,
    alerts_queued: Gauge,
    identities: Capped,
    models: Capped,
}

/// A label's values seen so far, up to a cap.
struct Capped {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl Capped {
    fn new(max: usize) -> Self {
        Capped {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    fn label(&self, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        let Ok(mut seen) = self.seen.lock() else {
            return OTHER.into();
        };
        if seen.contains(value) {
            return value.into();
        }
        if seen.len() < self.max {
            seen.insert(value.into());
            return value.into();
        }
        OTHER.into()
    }
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            export_calls: Family::default(),
            records: Counter::default(),
            duplicates: Counter::default(),
            rejected: Counter::default(),
            bytes: Counter::default(),
            group_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            fdatasync: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            segments: Gauge::default(),
            store_bytes: Gauge::default(),
            last_seal_nanos: AtomicI64::new(0),
            last_seal_age: Gauge::default(),
            approvals_pending: Gauge::default(),
            approvals_decided: Family::default(),
            approval_decision: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            requests: Family::default(),
            tokens: Family::new_with_constructor(token_histogram),
            alerts_sent: Family::default(),
            alerts_failed: Family::default(),
            alerts_queued: Gauge::default(),
            identities: Capped::new(config.max_identities),
            models: Capped::new(config.max_models),
        };
        let r = &mut m.registry;
        r.register(
            "tracegate_ingest_export_calls",
            "Export calls answered, by result",
            m.export_calls.clone(),
        );
        r.register(
            "tracegate_ingest_records",
            "Records stored (durable; each record id once)",
            m.records.clone(),
        );
        r.register(
            "tracegate_ingest_duplicate_records",
            "Records received again and not stored twice",
            m.duplicates.clone(),
        );
        r.register(
            "tracegate_ingest_rejected_records",
            "Records refused as implausible (not stored)",
            m.rejected.clone(),
        );
        r.register_with_unit(
            "tracegate_ingest",
            "Bytes appended to the store (framed entries)",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register(
            "tracegate_ingest_group_commit_entries",
            "Entries written together with one fdatasync",
            m.group_records.clone(),
        );
        r.register_with_unit(
            "tracegate_store_fdatasync",
            "Time of one fdatasync of the open segment",
            Unit::Seconds,
            m.fdatasync.clone(),
        );
        r.register(
            "tracegate_store_segments",
            "Segments held (sealed and open)",
            m.segments.clone(),
        );
        r.register_with_unit(
            "tracegate_store",
            "Bytes of segments held",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register_with_unit(
            "tracegate_store_last_seal_age",
            "Time since the last segment was sealed (0 before the first seal)",
            Unit::Seconds,
            m.last_seal_age.clone(),
        );
        r.register(
            "tracegate_approvals_pending",
            "Approvals waiting for a decision",
            m.approvals_pending.clone(),
        );
        r.register(
            "tracegate_approvals_decided",
            "Approvals decided, by outcome (approved, denied, expired)",
            m.approvals_decided.clone(),
        );
        r.register_with_unit(
            "tracegate_approvals_time_to_decision",
            "From the request for an approval to its decision",
            Unit::Seconds,
            m.approval_decision.clone(),
        );
        r.register(
            "tracegate_llm_requests",
            "LLM API exchanges recorded, by caller, requested model and verdict",
            m.requests.clone(),
        );
        r.register(
            "gen_ai_client_token_usage",
            "Tokens used per exchange (OpenTelemetry gen_ai.client.token.usage), by token type",
            m.tokens.clone(),
        );
        r.register(
            "tracegate_alerts_sent",
            "Alerts a webhook acknowledged (2xx), by webhook",
            m.alerts_sent.clone(),
        );
        r.register(
            "tracegate_alerts_failed",
            "Alert deliveries that failed (retried later), by webhook",
            m.alerts_failed.clone(),
        );
        r.register(
            "tracegate_alerts_queued",
            "Alert deliveries waiting (alert and webhook pairs)",
            m.alerts_queued.clone(),
        );
        m
    }

    pub fn alert_sent(&self, webhook: &str) {
        self.alerts_sent
            .get_or_create(&WebhookLabels {
                webhook: webhook.into(),
            })
            .inc();
    }

    pub fn alert_failed(&self, webhook: &str) {
        self.alerts_failed
            .get_or_create(&WebhookLabels {
                webhook: webhook.into(),
            })
            .inc();
    }

    /// Deliveries waiting: `+1` queued, `-1` delivered.
    pub fn alerts_queued(&self, change: i64) {
        self.alerts_queued.inc_by(change);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let sealed = self.last_seal_nanos.load(Ordering::Relaxed);
        let age = if sealed > 0 {
            (crate::ledger::writer::now_nanos().saturating_sub(sealed)) as f64 / 1e9
        } else {
            0.0
        };
        self.last_seal_age.set(age.max(0.0));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn export_call(&self, result: CallResult) {
        self.export_calls
            .get_or_create(&CallLabels { result })
            .inc();
    }

    pub fn rejected(&self, n: u64) {
        self.rejected.inc_by(n);
    }

    pub fn duplicates(&self, n: u64) {
        self.duplicates.inc_by(n);
    }

    /// One group commit: its entries, bytes and fdatasync time.
    pub fn committed(&self, entries: usize, bytes: u64, fdatasync_seconds: f64) {
        self.group_records.observe(entries as f64);
        self.bytes.inc_by(bytes);
        self.fdatasync.observe(fdatasync_seconds);
    }

    /// The store's shape after a write, roll or retention.
    pub fn store(&self, segments: u64, bytes: u64, last_seal_nanos: i64) {
        self.segments.set(segments as i64);
        self.store_bytes.set(bytes as i64);
        if last_seal_nanos > 0 {
            self.last_seal_nanos
                .store(last_seal_nanos, Ordering::Relaxed);
        }
    }

    pub fn approvals_pending(&self, n: usize) {
        self.approvals_pending.set(n as i64);
    }

    /// An approval left PENDING (`approved`, `denied`, `expired`).
    pub fn approval_decided(&self, outcome: &'static str, seconds: f64) {
        self.approvals_decided
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.approval_decision.observe(seconds.max(0.0));
    }

    /// A record became durable (once per record id).
    pub fn record_stored(&self, r: &Record) {
        self.records.inc();
        // A write-ahead record is followed by the exchange's own record:
        // counting both would count the request twice.
        if r.phase() == Phase::Request {
            return;
        }
        let identity = self.identities.label(&identity_label(r));
        let usage = r.usage.as_ref();
        let request_model = self
            .models
            .label(usage.map_or("", |u| u.request_model.as_str()));
        let verdict = r
            .inspection
            .as_ref()
            .map(|i| i.verdict.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or("allowed");
        self.requests
            .get_or_create(&RequestLabels {
                identity: identity.clone(),
                gen_ai_request_model: request_model.clone(),
                verdict: verdict.into(),
            })
            .inc();
        let Some(u) = usage else { return };
        let labels = |token_type: &'static str| TokenLabels {
            identity: identity.clone(),
            gen_ai_provider_name: u.provider.clone(),
            gen_ai_operation_name: u.operation.clone(),
            gen_ai_request_model: request_model.clone(),
            gen_ai_response_model: self.models.label(&u.response_model),
            gen_ai_token_type: token_type,
        };
        if let Some(n) = u.input_tokens {
            self.tokens
                .get_or_create(&labels("input"))
                .observe(n as f64);
        }
        if let Some(n) = u.output_tokens {
            self.tokens
                .get_or_create(&labels("output"))
                .observe(n as f64);
        }
    }
}

/// Who made the request: the verified subject (`issuer` then `subject`
/// would make long labels; the subject is what dashboards show),
/// `anonymous`, or `rejected` (a token that failed verification is not an
/// identity).
pub fn identity_label(r: &Record) -> String {
    match r.identity.as_ref() {
        Some(i) if i.status() == Status::Verified => i.subject.clone(),
        Some(i) if i.status() == Status::Rejected => "rejected".into(),
        _ => "anonymous".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::v1::{Identity, Inspection, Usage};

    fn record(subject: &str, model: &str, input: Option<u64>) -> Record {
        Record {
            record_id: format!("{subject}-{model}"),
            identity: Some(Identity {
                status: Status::Verified as i32,
                subject: subject.into(),
                ..Identity::default()
            }),
            inspection: Some(Inspection {
                verdict: "masked".into(),
                ..Inspection::default()
            }),
            usage: Some(Usage {
                provider: "openai".into(),
                operation: "chat".into(),
                request_model: model.into(),
                response_model: format!("{model}-2025"),
                input_tokens: input,
                output_tokens: Some(7),
                ..Usage::default()
            }),
            ..Record::default()
        }
    }

    #[test]
    fn traffic_and_tokens_are_labelled_and_capped() {
        let m = Metrics::new(&MetricsConfig {
            max_identities: 2,
            max_models: 5,
        });
        m.record_stored(&record("alice", "gpt-4o", Some(12)));
        m.record_stored(&record("bob", "gpt-4o", None));
        m.record_stored(&record("carol", "gpt-4o", Some(3)));
        let text = m.encode();
        assert!(
            text.contains(r#"tracegate_llm_requests_total{identity="alice",gen_ai_request_model="gpt-4o",verdict="masked"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"identity="_other""#), "capped: {text}");
        assert!(!text.contains("carol"), "{text}");
        assert!(
            text.contains(r#"gen_ai_client_token_usage_sum{identity="alice",gen_ai_provider_name="openai",gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o-2025",gen_ai_token_type="input"} 12.0"#),
            "{text}"
        );
        // Missing usage is not a zero: bob has output tokens but no input.
        assert!(!text.contains(r#"identity="bob",gen_ai_provider_name="openai",gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o",gen_ai_response_model="gpt-4o-2025",gen_ai_token_type="input""#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn write_ahead_records_do_not_count_twice() {
        let m = Metrics::new(&MetricsConfig::default());
        let mut r = record("alice", "m", Some(1));
        r.phase = Phase::Request as i32;
        m.record_stored(&r);
        let text = m.encode();
        assert!(text.contains("tracegate_ingest_records_total 1"), "{text}");
        assert!(!text.contains("tracegate_llm_requests_total{"), "{text}");
    }
}
