//! The `inspection`, `masking` and `rules` sections of the configuration.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectionConfig {
    /// Request bodies larger than this are refused with 413 (they could not
    /// be inspected whole).
    pub max_body_bytes: usize,
    /// Request content types inspected (media type, parameters ignored);
    /// a request with a body of any other type is refused with 415.
    pub content_types: Vec<String>,
    /// Streamed text is held back only from where a detector could still
    /// match; a candidate longer than this (a PEM block that never ends) is
    /// not waited for: the held text is masked whole, never released raw,
    /// and the record counts it. The longest bounded built-in match (a JWT)
    /// is under 15 KB.
    pub stream_hold_max_bytes: usize,
    /// Largest SSE event accepted; a stream with a longer one is ended with
    /// an error event (the SDKs raise it) and the record says why. Memory
    /// per stream stays within this.
    pub stream_max_event_bytes: usize,
    /// Mask responses too (bodies and SSE streams).
    pub responses: bool,
    /// Hold headers until the body is inspected, so a blocked request never
    /// reaches the upstream at all and bodies keep an exact content-length.
    /// Needs Envoy's `allow_on_headers_stop_iteration: true` on the Wasm
    /// filter (Envoy >= 1.35): without it Envoy stops body callbacks too and
    /// requests hang. Off: headers go on at once (without content-length),
    /// the body follows once inspected, and a blocked request is reset
    /// before any of its body leaves.
    pub hold_headers: bool,
}

impl Default for InspectionConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            content_types: vec!["application/json".into(), "text/plain".into()],
            stream_hold_max_bytes: 16 << 10,
            stream_max_event_bytes: 1 << 20,
            responses: true,
            hold_headers: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorName {
    Redact,
    Partial,
    Hash,
    Tokenize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub operator: Option<OperatorName>,
    /// For `partial`: characters kept at the end (default 4).
    #[serde(default)]
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub risk: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub pattern: String,
    #[serde(default = "default_custom_risk")]
    pub risk: u32,
    #[serde(default)]
    pub operator: Option<OperatorName>,
    #[serde(default)]
    pub keep_last: Option<usize>,
}

fn default_custom_risk() -> u32 {
    50
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    pub enabled: bool,
    /// Operator of every detector without its own.
    pub default_operator: OperatorName,
    /// Per built-in detector: on/off, operator, risk.
    pub detectors: BTreeMap<String, DetectorSettings>,
    pub custom: Vec<CustomDetector>,
    /// Key of the `hash` operator (base64, at least 32 bytes). Required when
    /// any detector hashes; keep it secret, or hashes can be brute-forced.
    pub hmac_key_base64: Option<String>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_operator: OperatorName::Redact,
            detectors: BTreeMap::new(),
            custom: Vec::new(),
            hmac_key_base64: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleScope {
    Prompt,
    System,
    Model,
    ToolName,
    ToolArguments,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Block,
    Approve,
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub id: String,
    #[serde(default = "default_scope")]
    pub scope: RuleScope,
    #[serde(default)]
    pub regex: Option<String>,
    /// Matched case-insensitively anywhere in the text.
    #[serde(default)]
    pub keywords: Vec<String>,
    pub action: RuleAction,
    #[serde(default)]
    pub message: Option<String>,
    /// Added to the request's risk when the rule matches.
    #[serde(default)]
    pub risk: u32,
}

fn default_scope() -> RuleScope {
    RuleScope::Any
}
