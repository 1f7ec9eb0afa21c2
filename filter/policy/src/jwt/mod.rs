//! Caller identity: JWT verification at the parity of Envoy's jwt_authn.
//!
//! - `config`: the `jwt` section as the operator writes it.
//! - `compile`: that section checked and compiled into the `Authenticator`.
//! - `keys`: JWKS documents and HMAC secrets turned into verification keys.
//! - `verify`: the authenticator's decision for one request's token.
//! - `fetch`: remote JWKS, what to fetch when, and what a fetch brought.
//! - `cache`: verified and refused tokens by SHA-256, so a repeated token is
//!   a lookup.

pub mod cache;
pub mod compile;
pub mod config;
pub mod fetch;
pub mod keys;
pub mod verify;

pub use compile::KeySource;
pub use config::JwtConfig;
pub use fetch::JwksFetch;
pub use verify::{Authenticator, Decision, Extracted, HeaderChanges};

use tracegate_proto::v1 as proto;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    pub provider_index: usize,
    pub issuer: String,
    pub subject: String,
    pub algorithm: String,
    pub key_id: String,
    /// `exp`, Unix seconds.
    pub expires_at: Option<u64>,
    /// The provider's `record_claims` present in the token, as text.
    pub claims: Vec<(String, String)>,
    /// `claim_to_headers`: header name → claim value.
    pub headers: Vec<(String, String)>,
    /// The claims access rules read: name → values as text (array claims
    /// element by element, `scope`/`scp` also word by word).
    pub access_claims: Vec<(String, Vec<String>)>,
}

/// Why a request was refused. `as_str` names the stat
/// (`tracegate.jwt.rejected.<reason>`) and the record's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Malformed,
    TooLarge,
    UnknownIssuer,
    AlgorithmNotAllowed,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    Claims,
    JwksUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::UnknownIssuer,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongAudience,
        Reason::Claims,
        Reason::JwksUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::Claims => "claims",
            Reason::JwksUnavailable => "jwks_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// Answered from the cache of refused tokens, without a signature check.
    pub cached: bool,
    /// The `sub` the refused token claims, unverified: on the record so
    /// refusals can be counted per claimed subject (alerts), never trusted.
    pub claimed_subject: Option<String>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            cached: false,
            claimed_subject: None,
        }
    }

    fn description(&self) -> String {
        // A quoted-string in a header: no quotes, backslashes or controls.
        self.detail
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                c if c.is_control() || !c.is_ascii() => '?',
                c => c,
            })
            .take(200)
            .collect()
    }

    /// The `WWW-Authenticate` value (RFC 6750 section 3). A request without a
    /// token gets no error code, as the RFC asks.
    pub fn www_authenticate(&self) -> String {
        if self.reason == Reason::Missing {
            return "Bearer realm=\"tracegate\"".into();
        }
        format!(
            "Bearer realm=\"tracegate\", error=\"invalid_token\", error_description=\"{}\"",
            self.description()
        )
    }

    /// The 401 body. One shape both official SDKs read: OpenAI's
    /// `error.message`/`code` and Anthropic's `type: error` with
    /// `error.type`/`message`.
    pub fn body(&self) -> String {
        serde_json::json!({
            "type": "error",
            "error": {
                "type": "authentication_error",
                "code": if self.reason == Reason::Missing { "missing_token" } else { "invalid_token" },
                "reason": self.reason.as_str(),
                "message": format!("tracegate: {}", self.detail),
            }
        })
        .to_string()
    }
}

/// The identity part of a record.
pub fn identity_record(decision: &Decision) -> Option<proto::Identity> {
    use proto::identity::Status;
    Some(match decision {
        Decision::Anonymous => proto::Identity {
            status: Status::Anonymous as i32,
            ..Default::default()
        },
        Decision::Verified { identity: i, .. } => proto::Identity {
            status: Status::Verified as i32,
            provider: i.provider.clone(),
            issuer: i.issuer.clone(),
            subject: i.subject.clone(),
            claims: i.claims.iter().cloned().collect(),
            algorithm: i.algorithm.clone(),
            key_id: i.key_id.clone(),
            expires_unix: i
                .expires_at
                .map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)),
            ..Default::default()
        },
        Decision::Rejected(r) => proto::Identity {
            status: Status::Rejected as i32,
            rejection_reason: r.reason.as_str().into(),
            rejection_detail: r.detail.clone(),
            claimed_subject: r.claimed_subject.clone().unwrap_or_default(),
            ..Default::default()
        },
        Decision::NeedKeys { .. } => return None,
    })
}

#[cfg(test)]
mod tests;
