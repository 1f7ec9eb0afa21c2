//! Human approval of risky requests: which requests need it, and the wire
//! format spoken with the approval service. Pure: bytes, identity and
//! configuration in, decisions and messages out.
//!
//! A request's risk is the sum of what it hit: detectors (each counted once),
//! rules (their `risk`, notably `approve` rules) and identity conditions on
//! the caller's verified claims. At `approval.threshold` or above it needs a
//! person's approval:
//! - `hold`: the request waits while the service is asked and polled;
//! - `async`: the caller gets an error naming the approval at once and, once
//!   approved, retries with `x-tracegate-approval: ID`; the service checks
//!   that the grant belongs to this caller and this request, and spends it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::Identity;

use crate::config::ConfigError;

/// Header a caller sends to redeem an approval (async mode).
pub const GRANT_HEADER: &str = "x-tracegate-approval";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    #[default]
    Hold,
    Async,
}

impl ApprovalMode {
    /// The record's `approval.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::Hold => "hold",
            ApprovalMode::Async => "async",
        }
    }
}

/// What the approval gate did with a request: the record's
/// `approval.outcome`, and the error type of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Approved (or a grant redeemed): forwarded.
    Forwarded,
    /// No decision in time and `on_timeout: forward`.
    ForwardedExpired,
    /// Async mode: asked; the caller retries with the grant (403).
    ApprovalRequired,
    /// The grant of a retry was refused (403).
    GrantRefused,
    Denied,
    /// No decision in time (403).
    Expired,
    /// The approval service failed (403).
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::ForwardedExpired => "forwarded_expired",
            Outcome::ApprovalRequired => "approval_required",
            Outcome::GrantRefused => "grant_refused",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
            Outcome::Unavailable => "unavailable",
        }
    }

    pub fn forwarded(self) -> bool {
        matches!(self, Outcome::Forwarded | Outcome::ForwardedExpired)
    }

    /// The error type of the 403 (OpenAI shape).
    pub fn error_type(self) -> &'static str {
        match self {
            Outcome::ApprovalRequired => "approval_required",
            Outcome::Denied => "approval_denied",
            Outcome::Expired => "approval_expired",
            Outcome::Unavailable => "approval_unavailable",
            Outcome::GrantRefused | Outcome::Forwarded | Outcome::ForwardedExpired => {
                "approval_refused"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// No decision in time: 403, recorded as EXPIRED.
    #[default]
    Deny,
    /// No decision in time: forwarded anyway, recorded as EXPIRED.
    Forward,
}

/// The `approval` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// Requests whose risk reaches this need approval (1 or more).
    pub threshold: u32,
    pub mode: ApprovalMode,
    /// Envoy cluster of the approval service (HTTP/1.1 or HTTP/2); the
    /// collector's is its gRPC port (`tracegate_collector`).
    pub cluster: String,
    /// `:authority` of the calls.
    pub authority: String,
    /// Path of the approvals collection (`POST` creates, `GET path/ID` reads).
    pub path: String,
    /// Deadline of one call (create, redeem; a poll adds its wait).
    pub timeout_ms: u64,
    /// `hold`: how long a request waits for a decision.
    pub hold_timeout_ms: u64,
    /// `hold`: how long one long-poll waits at the service.
    pub poll_ms: u64,
    pub on_timeout: OnTimeout,
    /// `async`: how long an approval may stay pending.
    pub pending_ttl_s: u64,
    /// How long a decision to approve stays usable...
    pub grant_ttl_s: u64,
    /// ...and how many requests it lets through (async; hold uses it once).
    pub grant_uses: u32,
    /// Risk added by who the caller is.
    pub identity: Vec<IdentityCondition>,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            threshold: 100,
            mode: ApprovalMode::Hold,
            // The collector serves the filters' approval calls on its gRPC
            // port, behind the same client certificate as the records.
            cluster: "tracegate_collector".into(),
            authority: "tracegate-collector".into(),
            path: "/v1/approvals".into(),
            timeout_ms: 2_000,
            hold_timeout_ms: 300_000,
            poll_ms: 20_000,
            on_timeout: OnTimeout::Deny,
            pending_ttl_s: 3_600,
            grant_ttl_s: 900,
            grant_uses: 1,
            identity: Vec::new(),
        }
    }
}

/// `{"claim": "groups", "equals": "contractors", "risk": 50}` (a string
/// claim equal to the value, or a JSON array claim holding it), or
/// `{"anonymous": true, "risk": 80}`. Claims are the provider's
/// `record_claims`, verified.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityCondition {
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub anonymous: bool,
    pub risk: u32,
}

impl IdentityCondition {
    fn name(&self) -> String {
        match (&self.claim, &self.equals) {
            (Some(c), Some(v)) => format!("{c}={v}"),
            _ => "anonymous".into(),
        }
    }

    fn matches(&self, identity: Option<&Identity>) -> bool {
        let verified = identity.filter(|i| i.status == Status::Verified as i32);
        if self.anonymous {
            return verified.is_none();
        }
        let (Some(i), Some(claim), Some(want)) = (verified, &self.claim, &self.equals) else {
            return false;
        };
        claim_holds(
            i.claims.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            claim,
            want,
        )
    }
}

impl ApprovalConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &str, message: String| ConfigError {
            field: format!("approval.{field}"),
            message,
        };
        if self.threshold == 0 {
            return Err(err("threshold", "must be at least 1".into()));
        }
        if self.cluster.trim().is_empty() {
            return Err(err("cluster", "must name an Envoy cluster".into()));
        }
        if !self.path.starts_with('/') || self.path.ends_with('/') {
            return Err(err(
                "path",
                format!("{:?} must start with / and not end with /", self.path),
            ));
        }
        let ranges: [(&str, u64, u64, u64); 6] = [
            ("timeout_ms", self.timeout_ms, 1, 60_000),
            ("hold_timeout_ms", self.hold_timeout_ms, 1, 3_600_000),
            ("poll_ms", self.poll_ms, 1, 300_000),
            ("pending_ttl_s", self.pending_ttl_s, 1, 30 * 86_400),
            ("grant_ttl_s", self.grant_ttl_s, 1, 30 * 86_400),
            ("grant_uses", u64::from(self.grant_uses), 1, 1_000_000),
        ];
        for (name, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return Err(err(name, format!("{v} is outside {lo}..={hi}")));
            }
        }
        for (i, c) in self.identity.iter().enumerate() {
            let ok = match (&c.claim, &c.equals, c.anonymous) {
                (Some(claim), Some(_), false) => !claim.is_empty(),
                (None, None, true) => true,
                _ => false,
            };
            if !ok {
                return Err(err(
                    &format!("identity[{i}]"),
                    "give either claim and equals, or anonymous: true".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn needs_approval(&self, risk: u32) -> bool {
        risk >= self.threshold
    }

    /// Risk from who the caller is, with a reason per condition met.
    pub fn identity_risk(&self, identity: Option<&Identity>) -> (u32, Vec<RiskReason>) {
        let mut total = 0u32;
        let mut reasons = Vec::new();
        for c in self.identity.iter().filter(|c| c.matches(identity)) {
            total = total.saturating_add(c.risk);
            reasons.push(RiskReason {
                kind: "identity".into(),
                name: c.name(),
                risk: c.risk,
                count: 1,
            });
        }
        (total, reasons)
    }
}

/// One thing that made a request risky, shown to the approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskReason {
    /// `detector`, `rule` or `identity`.
    pub kind: String,
    pub name: String,
    /// Its score; 0 for a detector (detectors' scores are summed in `risk`).
    pub risk: u32,
    pub count: u32,
}

/// Who asks: the verified `iss` and `sub`, or anonymous. The grant is bound
/// to `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub key: String,
    pub subject: String,
    pub provider: String,
    /// The verified `iss`; empty for anonymous callers.
    #[serde(default)]
    pub issuer: String,
}

impl Requester {
    pub fn of(identity: Option<&Identity>) -> Requester {
        match identity.filter(|i| i.status == Status::Verified as i32) {
            Some(i) => Requester {
                key: format!("{}|{}", i.issuer, i.subject),
                subject: i.subject.clone(),
                provider: i.provider.clone(),
                issuer: i.issuer.clone(),
            },
            None => Requester {
                key: "anonymous".into(),
                subject: "anonymous".into(),
                provider: String::new(),
                issuer: String::new(),
            },
        }
    }

    /// Whether `approver` is this requester: same issuer and subject. An
    /// anonymous requester is nobody's.
    pub fn is(&self, approver: &Approver) -> bool {
        if self.key == "anonymous" && self.issuer.is_empty() {
            return false;
        }
        let same_key = self.key == format!("{}|{}", approver.issuer, approver.subject);
        let same_pair = !self.issuer.is_empty()
            && self.issuer == approver.issuer
            && self.subject == approver.subject;
        same_key || same_pair
    }
}

/// A person who decided, as the approval service verified them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Approver {
    pub issuer: String,
    pub subject: String,
    /// The display claim (e.g. email), or the subject.
    #[serde(default)]
    pub display: String,
}

impl Approver {
    pub fn to_proto(&self) -> tracegate_proto::v1::Approver {
        tracegate_proto::v1::Approver {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            display: self.display.clone(),
        }
    }
}

/// Whether verified claims (as `Identity.claims`: strings as they are,
/// other values as JSON) meet `claim` = `want`: a string claim equal to it,
/// or an array claim holding it.
pub fn claim_holds<'a>(
    claims: impl IntoIterator<Item = (&'a str, &'a str)>,
    claim: &str,
    want: &str,
) -> bool {
    claims.into_iter().any(|(name, value)| {
        name == claim
            && (value == want
                || serde_json::from_str::<Vec<serde_json::Value>>(value)
                    .is_ok_and(|items| items.iter().any(|v| v.as_str() == Some(want))))
    })
}

/// The request a grant is for: method, path and body as the caller sent
/// them (before masking), so a retry of the same request has the same
/// digest and any other request does not.
pub fn request_digest(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    let d = h.finalize();
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `POST {path}`: asks for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub mode: ApprovalMode,
    pub requester: Requester,
    pub session_id: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub digest: String,
    pub risk: u32,
    pub threshold: u32,
    pub reasons: Vec<RiskReason>,
    /// The start of the request's masked prompt, for the approver.
    pub excerpt: String,
    /// How long it may stay pending.
    pub expires_in_s: u64,
    pub grant_ttl_s: u64,
    pub grant_uses: u32,
}

impl CreateRequest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `POST {path}/{id}/redeem`: spends one use of an approved grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedeemRequest {
    pub requester: Requester,
    pub digest: String,
}

impl RedeemRequest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Approved => "APPROVED",
            State::Denied => "DENIED",
            State::Expired => "EXPIRED",
        }
    }
}

/// What the service says about one approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub id: String,
    pub state: State,
    /// Display names of who decided, for reading.
    #[serde(default)]
    pub approver: String,
    #[serde(default)]
    pub reason: String,
    /// Who decided, as the service verified them.
    #[serde(default)]
    pub approvers: Vec<Approver>,
    #[serde(default)]
    pub approvals_required: u32,
}

/// Reads a service answer: HTTP status and body. Anything but a well-formed
/// view with a 2xx is an error with a message for the caller.
pub fn parse_view(status: Option<u32>, body: &[u8]) -> Result<View, String> {
    let status = status.ok_or("it did not answer (down, slow or unreachable)")?;
    if !(200..300).contains(&status) {
        let why = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| match status {
                // Envoy's own answers when the cluster fails.
                503 => "it is unreachable (HTTP 503)".into(),
                504 => "it did not answer in time (HTTP 504)".into(),
                _ => format!("it answered HTTP {status}"),
            });
        return Err(why);
    }
    let view: View = serde_json::from_slice(body)
        .map_err(|e| format!("it answered something unreadable ({e})"))?;
    if view.id.is_empty() || view.id.len() > 128 {
        return Err("it answered without a valid approval id".into());
    }
    Ok(view)
}

/// A view of a non-2xx answer whose body names why, e.g. a refused redeem.
pub fn refusal_reason(status: Option<u32>, body: &[u8]) -> Option<String> {
    let status = status?;
    if (200..300).contains(&status) || status >= 500 {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
}

/// An error body in the API's shape that also names the approval.
pub fn error_with_approval(
    api: crate::llm::Api,
    kind: &str,
    message: &str,
    approval_id: Option<&str>,
) -> String {
    let body = crate::inspect::error_body(api, kind, message, None);
    match (
        approval_id,
        serde_json::from_str::<serde_json::Value>(&body),
    ) {
        (Some(id), Ok(mut v)) => {
            v["error"]["approval_id"] = serde_json::Value::from(id);
            v.to_string()
        }
        _ => body,
    }
}

/// Context shown on each side of a marked place.
const AROUND: usize = 160;

/// What an approver reads: the request as sent (masked), around each place
/// that made it risky (a masked finding, a rule's match), with context on
/// both sides, up to `max` characters; then how much was left out. Without
/// marks, the beginning of the body. Padding cannot push the risky part out
/// of view.
pub fn excerpt(masked_body: &[u8], marks: &[crate::inspect::Mark], max: usize) -> String {
    let text = String::from_utf8_lossy(masked_body);
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let ceil = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i += 1;
        }
        i
    };
    let mut windows: Vec<(usize, usize)> = marks
        .iter()
        .map(|m| {
            (
                floor(m.start.saturating_sub(AROUND)),
                ceil(m.end.saturating_add(AROUND)),
            )
        })
        .collect();
    if windows.is_empty() {
        windows.push((0, ceil(max)));
    }
    windows.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (a, b) in windows {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut out = String::new();
    let mut shown = 0;
    let mut spans = Vec::new();
    for (a, b) in &merged {
        if shown >= max {
            break;
        }
        let part: String = text[*a..*b].chars().take(max - shown).collect();
        shown += part.chars().count();
        spans.push((*a, a + part.len()));
        if *a > 0 {
            out.push('…');
        }
        out.push_str(&part);
        if a + part.len() < text.len() {
            out.push('…');
        }
        out.push('\n');
    }
    if marks.is_empty() && text.chars().count() <= max {
        // Short and nothing marked: the whole body.
        return text.into_owned();
    }
    let places = marks
        .iter()
        .filter(|m| spans.iter().any(|&(a, b)| m.start >= a && m.start < b))
        .count();
    out.push_str(&format!(
        "[body of {} bytes; {shown} characters shown, around {places} of {} marked places]",
        masked_body.len(),
        marks.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn verified(claims: &[(&str, &str)]) -> Identity {
        Identity {
            status: Status::Verified as i32,
            issuer: "https://idp".into(),
            subject: "alice".into(),
            provider: "corp".into(),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn excerpts_show_what_made_a_request_risky_whatever_the_padding() {
        let padding = "lorem ipsum ".repeat(2000);
        let body = format!("{padding}deploy to production now [AWS_ACCESS_KEY_ID] please{padding}");
        let at = body.find("[AWS").unwrap();
        let marks = [crate::inspect::Mark {
            start: at,
            end: at + "[AWS_ACCESS_KEY_ID]".len(),
        }];
        let e = excerpt(body.as_bytes(), &marks, 600);
        assert!(
            e.contains("deploy to production now [AWS_ACCESS_KEY_ID] please"),
            "{e}"
        );
        assert!(e.starts_with('…'));
        assert!(
            e.ends_with(&format!(
                "[body of {} bytes; 339 characters shown, around 1 of 1 marked places]",
                body.len()
            )),
            "{e}"
        );
        // Short and unmarked: the whole body.
        assert_eq!(excerpt(b"hello", &[], 600), "hello");
    }

    #[test]
    fn identity_conditions_add_risk() {
        let c: ApprovalConfig = serde_json::from_str(
            r#"{"threshold": 100, "identity": [
                {"claim": "groups", "equals": "contractors", "risk": 60},
                {"claim": "tier", "equals": "trial", "risk": 30},
                {"anonymous": true, "risk": 100}]}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let contractor = verified(&[("groups", r#"["staff","contractors"]"#), ("tier", "trial")]);
        let (risk, reasons) = c.identity_risk(Some(&contractor));
        assert_eq!(risk, 90);
        assert_eq!(reasons[0].name, "groups=contractors");
        assert_eq!(
            c.identity_risk(Some(&verified(&[("groups", "staff")]))).0,
            0
        );
        assert_eq!(c.identity_risk(None).0, 100);
        assert!(c.needs_approval(100) && !c.needs_approval(99));
    }

    #[test]
    fn bad_configuration_is_named() {
        let bad = |json: &str| {
            serde_json::from_str::<ApprovalConfig>(json)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.field))
                .unwrap_err()
        };
        assert_eq!(bad(r#"{"threshold": 0}"#), "approval.threshold");
        assert_eq!(bad(r#"{"path": "v1/approvals"}"#), "approval.path");
        assert_eq!(bad(r#"{"grant_uses": 0}"#), "approval.grant_uses");
        assert_eq!(
            bad(r#"{"identity": [{"claim": "g", "risk": 1}]}"#),
            "approval.identity[0]"
        );
    }

    #[test]
    fn digest_binds_method_path_and_body() {
        let d = request_digest("POST", "/v1/chat/completions", b"{}");
        assert!(d.starts_with("sha256:") && d.len() == 71);
        assert_eq!(d, request_digest("POST", "/v1/chat/completions", b"{}"));
        assert_ne!(d, request_digest("POST", "/v1/chat/completions", b"{ }"));
        assert_ne!(d, request_digest("POST", "/v1/responses", b"{}"));
        // Length prefixes: moving bytes between fields changes the digest.
        assert_ne!(
            request_digest("POST", "/a", b"b"),
            request_digest("POST", "/ab", b"")
        );
    }

    #[test]
    fn service_answers_are_checked() {
        let ok = parse_view(
            Some(200),
            br#"{"id":"apr_1","state":"APPROVED","approver":"bob","reason":"ok"}"#,
        )
        .unwrap();
        assert_eq!(ok.state, State::Approved);
        assert!(parse_view(None, b"")
            .unwrap_err()
            .contains("did not answer"));
        assert_eq!(
            parse_view(Some(403), br#"{"error":"grant already used"}"#).unwrap_err(),
            "grant already used"
        );
        assert!(parse_view(Some(200), b"<html>")
            .unwrap_err()
            .contains("unreadable"));
        assert!(parse_view(Some(200), br#"{"id":"x","state":"MAYBE"}"#).is_err());
        assert!(parse_view(Some(200), br#"{"id":"","state":"PENDING"}"#).is_err());
        assert_eq!(
            refusal_reason(Some(409), br#"{"error":"used"}"#).as_deref(),
            Some("used")
        );
        assert_eq!(refusal_reason(Some(503), br#"{"error":"x"}"#), None);
    }

    #[test]
    fn requester_key_binds_issuer_and_subject() {
        let alice = Requester::of(Some(&verified(&[])));
        assert_eq!(alice.key, "https://idp|alice");
        assert_eq!(alice.issuer, "https://idp");
        assert_eq!(Requester::of(None).key, "anonymous");
        let who = |iss: &str, sub: &str| Approver {
            issuer: iss.into(),
            subject: sub.into(),
            display: "x".into(),
        };
        assert!(alice.is(&who("https://idp", "alice")));
        assert!(!alice.is(&who("https://idp", "bob")));
        assert!(
            !alice.is(&who("https://other", "alice")),
            "another issuer's alice"
        );
        // Requests recorded before `issuer` existed: the key still binds.
        let old: Requester = serde_json::from_str(
            r#"{"key": "https://idp|alice", "subject": "alice", "provider": "corp"}"#,
        )
        .unwrap();
        assert!(old.is(&who("https://idp", "alice")));
        assert!(!Requester::of(None).is(&who("", "anonymous")));
    }

    #[test]
    fn claims_hold_as_strings_or_array_members() {
        let claims = [("groups", r#"["staff","llm-approvers"]"#), ("dept", "sre")];
        assert!(claim_holds(claims, "groups", "llm-approvers"));
        assert!(claim_holds(claims, "dept", "sre"));
        assert!(!claim_holds(claims, "groups", "sre"));
        assert!(!claim_holds(claims, "dept", "staff"));
    }
}
