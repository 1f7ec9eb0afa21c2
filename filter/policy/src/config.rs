//! The plugin configuration: JSON in Envoy's `StringValue`, parsed once per
//! configuration into typed settings.
//!
//! Unknown fields are errors, not ignored, so a misspelt setting can never
//! silently fall back to a default. Every error names the field it is about.

use serde::Deserialize;
use std::fmt;

use crate::access::AccessConfig;
use crate::approval::ApprovalConfig;
use crate::inspect::config::{InspectionConfig, MaskingConfig, RuleConfig};
use crate::jwt::JwtConfig;

/// The whole plugin configuration. Every section and field has a safe default,
/// so `{}` (or an empty configuration) is valid.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What the operator calls this configuration; stamped on every record
    /// with the configuration's hash (`Policy::reference`).
    pub policy: Option<PolicyInfo>,
    pub collector: CollectorConfig,
    pub recording: RecordingConfig,
    pub session: SessionConfig,
    /// Caller identity. Without this section requests are not authenticated
    /// and records carry no identity.
    pub jwt: Option<JwtConfig>,
    /// Which bodies are inspected, and limits.
    pub inspection: InspectionConfig,
    /// Detectors and operators; on by default with every built-in detector.
    pub masking: MaskingConfig,
    /// Block rules, evaluated on request text by scope.
    pub rules: Vec<RuleConfig>,
    /// Human approval of risky requests. Without it, `approve` rules block.
    pub approval: Option<ApprovalConfig>,
    /// Access rules: who may use which models, APIs, paths and tools.
    /// Without it every caller may use everything.
    pub access: Option<AccessConfig>,
    /// What the filter reports about itself beyond its usual stats.
    pub diagnostics: DiagnosticsConfig,
}

/// The `diagnostics` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Time spent inside each kind of callback, as Envoy counters: where a
    /// worker's time goes. Off by default: it costs two clock reads and
    /// two counter updates per callback.
    pub callback_time: bool,
}

/// The `policy` section: a name and version for people; the hash of the
/// canonical configuration is what identifies it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInfo {
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// Longest policy name or version: they are printed in every replay line.
pub const MAX_POLICY_LABEL: usize = 128;

/// Where records go: an Envoy cluster speaking HTTP/2 to `tracegate serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Name of the Envoy cluster of the collector's gRPC endpoint.
    pub cluster: String,
    /// Deadline of one export call.
    pub timeout_ms: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            cluster: "tracegate_collector".into(),
            timeout_ms: 5_000,
        }
    }
}

/// How exchanges are captured and batched on their way to the collector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Bytes of each body kept in the record; longer bodies are truncated and
    /// marked so.
    pub max_body_bytes: usize,
    /// A batch is sent once it holds this many records...
    pub batch_max_records: usize,
    /// ...or this many encoded bytes...
    pub batch_max_bytes: usize,
    /// ...or its oldest record has waited this long.
    pub flush_interval_ms: u64,
    /// Records held per worker (queued, in flight, and reserved for requests
    /// under way). What happens when it is full: `failure_mode`.
    pub buffer_max_records: usize,
    /// Encoded bytes of records held per worker (queued and in flight):
    /// once reached, new requests are treated as with a full buffer. It
    /// bounds the worker's memory when the collector falls behind; records
    /// of requests already admitted are still taken.
    pub buffer_max_bytes: usize,
    /// `async`: records are batched and sent after the exchange.
    /// `write_ahead`: a record of the request is acknowledged durable by the
    /// collector before the request is forwarded; the exchange's record
    /// follows as usual.
    pub mode: RecordingMode,
    /// `fail_closed`: a request that could not be recorded is not served:
    /// 503 when the buffer is full (or the write-ahead call fails).
    /// `fail_open`: it is served; the lost record is counted in
    /// `tracegate.records_dropped`.
    pub failure_mode: FailureMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingMode {
    #[default]
    Async,
    WriteAhead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    FailClosed,
    FailOpen,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            batch_max_records: 64,
            batch_max_bytes: 1024 * 1024,
            flush_interval_ms: 1_000,
            buffer_max_records: 10_000,
            buffer_max_bytes: 16 * 1024 * 1024,
            mode: RecordingMode::Async,
            failure_mode: FailureMode::FailClosed,
        }
    }
}

/// How exchanges are grouped into sessions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Request header naming the session; without it, the request id is used.
    pub header: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            header: "x-session-id".into(),
        }
    }
}

/// The collector accepts gRPC messages up to this size (see collector/src/grpc.rs).
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `recording.batch_max_records`; empty for
    /// the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid tracegate configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid tracegate configuration: field `{}`: {}",
                self.field, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and checks the plugin configuration (what needs no compiling:
    /// `Policy::compile` compiles keys, detectors and rules). Empty input
    /// means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Ok(Config::default()),
            Some(b'{') => {}
            // serde would also read a struct from a JSON array, by position.
            Some(_) => return Err(err("", "the configuration must be a JSON object")),
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError {
                field: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            }
        })?;
        de.end().map_err(|e| err("", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.policy {
            label("policy.name", &p.name, false)?;
            label("policy.version", &p.version, true)?;
        }
        let c = &self.collector;
        if c.cluster.trim().is_empty() {
            return Err(err("collector.cluster", "must name an Envoy cluster"));
        }
        in_range("collector.timeout_ms", c.timeout_ms, 1, 300_000)?;

        let r = &self.recording;
        in_range("recording.max_body_bytes", r.max_body_bytes, 0, 16 << 20)?;
        in_range(
            "recording.batch_max_records",
            r.batch_max_records,
            1,
            10_000,
        )?;
        in_range(
            "recording.batch_max_bytes",
            r.batch_max_bytes,
            1024,
            MAX_BATCH_BYTES,
        )?;
        in_range(
            "recording.flush_interval_ms",
            r.flush_interval_ms,
            10,
            600_000,
        )?;
        in_range(
            "recording.buffer_max_records",
            r.buffer_max_records,
            r.batch_max_records,
            10_000_000,
        )?;
        in_range(
            "recording.buffer_max_bytes",
            r.buffer_max_bytes,
            r.batch_max_bytes,
            1 << 30,
        )?;
        // A record holds up to two bodies; it must fit in one gRPC message.
        if r.max_body_bytes.saturating_mul(2) + 64 * 1024 > MAX_BATCH_BYTES {
            return Err(err(
                "recording.max_body_bytes",
                format!(
                    "two bodies of this size do not fit in one export message of {MAX_BATCH_BYTES} bytes"
                ),
            ));
        }

        let h = &self.session.header;
        if h.is_empty() || !h.bytes().all(is_header_name_byte) {
            return Err(err(
                "session.header",
                format!("{h:?} is not a lowercase HTTP header name"),
            ));
        }
        if let Some(approval) = &self.approval {
            approval.validate()?;
        }
        Ok(())
    }
}

/// A policy name or version: printable, no control characters, bounded.
fn label(field: &str, value: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    if value.trim().is_empty() && !(may_be_empty && value.is_empty()) {
        return Err(err(field, "must not be empty or blank"));
    }
    if value.chars().count() > MAX_POLICY_LABEL {
        return Err(err(
            field,
            format!("longer than {MAX_POLICY_LABEL} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(err(field, "must not hold control characters"));
    }
    Ok(())
}

pub(crate) fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

pub(crate) fn in_range<T: PartialOrd + fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(err(
            field,
            format!("{value} is out of range, expected {min}..={max}"),
        ));
    }
    Ok(())
}

/// Lowercase token characters (RFC 9110); Envoy stores header names lowercased.
pub(crate) fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn callback_time_is_off_unless_asked_for() {
        assert!(!Config::default().diagnostics.callback_time);
        let c = Config::parse(br#"{"diagnostics": {"callback_time": true}}"#).unwrap();
        assert!(c.diagnostics.callback_time);
        let e = Config::parse(br#"{"diagnostics": {"callback_times": true}}"#).unwrap_err();
        assert_eq!(e.field, "diagnostics.callback_times", "{e}");
    }

    #[test]
    fn empty_and_empty_object_are_defaults() {
        assert_eq!(Config::parse(b"").unwrap(), Config::default());
        assert_eq!(Config::parse(b"  \n").unwrap(), Config::default());
        assert_eq!(Config::parse(b"{}").unwrap(), Config::default());
    }

    #[test]
    fn parses_every_section() {
        let c = Config::parse(
            br#"{"collector":{"cluster":"c","timeout_ms":100},
                 "recording":{"max_body_bytes":10,"batch_max_records":2,"batch_max_bytes":2048,
                              "flush_interval_ms":50,"buffer_max_records":8},
                 "session":{"header":"x-trace"}}"#,
        )
        .unwrap();
        assert_eq!(c.collector.cluster, "c");
        assert_eq!(c.recording.batch_max_records, 2);
        assert_eq!(c.recording.flush_interval_ms, 50);
        assert_eq!(c.session.header, "x-trace");
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let c =
            Config::parse(br#"{"recording":{"mode":"write_ahead","failure_mode":"fail_open"}}"#)
                .unwrap();
        assert_eq!(c.recording.mode, RecordingMode::WriteAhead);
        assert_eq!(c.recording.failure_mode, FailureMode::FailOpen);
        assert_eq!(
            Config::default().recording.failure_mode,
            FailureMode::FailClosed,
            "safe default: nothing unrecorded is served"
        );
        let e = Config::parse(br#"{"recording":{"mode":"sync"}}"#).unwrap_err();
        assert_eq!(e.field, "recording.mode");
        let e = Config::parse(br#"{"recording":{"batch_size":3}}"#).unwrap_err();
        assert_eq!(e.field, "recording.batch_size");
        assert!(e.message.contains("unknown field `batch_size`"), "{e}");
        assert!(
            e.message.contains("batch_max_records"),
            "lists the valid names: {e}"
        );

        let e = Config::parse(br#"{"colector":{}}"#).unwrap_err();
        assert_eq!(e.field, "colector");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let e = Config::parse(br#"{"collector":{"timeout_ms":"soon"}}"#).unwrap_err();
        assert_eq!(e.field, "collector.timeout_ms");
        assert!(e.message.contains("invalid type"), "{e}");
        assert!(e.to_string().contains("field `collector.timeout_ms`"));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for (json, field) in [
            (
                r#"{"recording":{"batch_max_records":0}}"#,
                "recording.batch_max_records",
            ),
            (
                r#"{"recording":{"flush_interval_ms":1}}"#,
                "recording.flush_interval_ms",
            ),
            (
                r#"{"recording":{"batch_max_records":100,"buffer_max_records":10}}"#,
                "recording.buffer_max_records",
            ),
            (
                r#"{"recording":{"max_body_bytes":16777216}}"#,
                "recording.max_body_bytes",
            ),
            (r#"{"collector":{"cluster":" "}}"#, "collector.cluster"),
            (r#"{"collector":{"timeout_ms":0}}"#, "collector.timeout_ms"),
            (r#"{"session":{"header":"X-Session"}}"#, "session.header"),
            (r#"{"session":{"header":""}}"#, "session.header"),
        ] {
            let e = Config::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn policy_section_is_checked() {
        let c = Config::parse(br#"{"policy":{"name":"prod-egress","version":"2026-03-01.1"}}"#)
            .unwrap();
        let p = c.policy.unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_str()),
            ("prod-egress", "2026-03-01.1")
        );
        let c = Config::parse(br#"{"policy":{"name":"p"}}"#).unwrap();
        assert_eq!(c.policy.unwrap().version, "", "version is optional");
        for (json, field) in [
            (r#"{"policy":{"version":"1"}}"#, "policy"),
            (r#"{"policy":{"name":" "}}"#, "policy.name"),
            (r#"{"policy":{"name":"a\u001b[2J"}}"#, "policy.name"),
            (r#"{"policy":{"name":"a","version":" "}}"#, "policy.version"),
            (r#"{"policy":{"name":"a","owner":"b"}}"#, "policy.owner"),
        ] {
            let e = Config::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
        let long = format!(r#"{{"policy":{{"name":"{}"}}}}"#, "n".repeat(129));
        assert_eq!(
            Config::parse(long.as_bytes()).unwrap_err().field,
            "policy.name"
        );
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_rejected() {
        let e = Config::parse(b"{\"collector\": ").unwrap_err();
        assert!(e.message.contains("EOF"), "{e}");
        let e = Config::parse(b"{} {}").unwrap_err();
        assert!(e.message.contains("trailing"), "{e}");
        let e = Config::parse(b"[]").unwrap_err();
        assert!(e.message.contains("JSON object"), "{e}");
    }
}
