//! tracegate's own answers: the one place that chooses status, error type
//! and body shape for each API.

use crate::approval::{error_with_approval, Outcome};
use crate::inspect::error_body;
use crate::jwt::Rejection;
use crate::llm::Api;

/// An answer the proxy sends in place of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Why tracegate answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller's token was refused (401, the JWT error shape).
    Unauthenticated(Rejection),
    /// A block rule matched (403).
    Blocked { rule: String },
    /// An access rule (or the access default) does not allow it (403).
    Denied { rule: String },
    /// It cannot be inspected: 400, 413, 415 or 502, with the error type
    /// inspection chose.
    Uninspectable { status: u32, kind: &'static str },
    /// Its record cannot be kept (fail_closed): 503, retry later.
    Unrecorded,
    /// The approval gate did not let it go (403).
    Approval {
        outcome: Outcome,
        approval_id: Option<String>,
    },
}

impl LocalReply {
    pub fn new(api: Api, refusal: &Refusal, message: &str) -> LocalReply {
        let anthropic = api == Api::Anthropic;
        let json = |status, body: String| LocalReply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.into_bytes(),
        };
        match refusal {
            Refusal::Unauthenticated(r) => LocalReply {
                status: 401,
                headers: vec![
                    ("www-authenticate", r.www_authenticate()),
                    ("content-type", "application/json".into()),
                ],
                body: r.body().into_bytes(),
            },
            Refusal::Blocked { rule } | Refusal::Denied { rule } => {
                let kind = if anthropic {
                    "permission_error"
                } else {
                    "permission_denied"
                };
                json(403, error_body(api, kind, message, Some(rule)))
            }
            Refusal::Uninspectable { status, kind } => {
                let kind = match (anthropic, status) {
                    (true, 413) => "request_too_large",
                    (true, _) => "invalid_request_error",
                    (false, _) => kind,
                };
                json(*status, error_body(api, kind, message, None))
            }
            Refusal::Unrecorded => {
                let kind = if anthropic {
                    "overloaded_error"
                } else {
                    "service_unavailable"
                };
                let mut reply = json(503, error_body(api, kind, message, None));
                reply.headers.push(("retry-after", "1".into()));
                reply
            }
            Refusal::Approval {
                outcome,
                approval_id,
            } => {
                let kind = if anthropic {
                    "permission_error"
                } else {
                    outcome.error_type()
                };
                let body = error_with_approval(api, kind, message, approval_id.as_deref());
                let mut reply = json(403, body);
                if let Some(id) = approval_id {
                    reply.headers.push(("x-tracegate-approval-id", id.clone()));
                }
                reply
            }
        }
    }
}

/// The body that replaces an answer tracegate cannot inspect (it must not
/// reach the client), in the API's error shape.
pub fn unreadable_answer(api: Api, message: &str) -> Vec<u8> {
    error_body(api, "api_error", message, None).into_bytes()
}
