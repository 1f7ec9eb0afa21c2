//! The approvals and their rules, as pure state: every change is an
//! `ApprovalEvent` that is first made durable in the store, then applied.
//! The same events rebuild the book at start-up.

use serde::Serialize;
use std::collections::BTreeMap;
use tracegate_policy::approval::{ApprovalMode, CreateRequest, RedeemRequest, State};
use tracegate_proto::v1::ApprovalEvent;

const SECOND: i64 = 1_000_000_000;

/// An error for the API: HTTP status and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

fn api(status: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// A refused redeem: the error, and the event that records the attempt.
#[derive(Debug, Clone)]
pub struct Refused {
    pub error: ApiError,
    pub event: Option<ApprovalEvent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub id: String,
    pub state: State,
    pub approver: String,
    pub reason: String,
    pub request: CreateRequest,
    pub created_unix_nanos: i64,
    /// While PENDING: when it expires.
    pub expires_unix_nanos: i64,
    pub decided_unix_nanos: i64,
    /// Once APPROVED: until when the grant may be used, and how often.
    pub grant_expires_unix_nanos: i64,
    pub uses_left: u32,
    pub history: Vec<EventView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub event: String,
    pub unix_nanos: i64,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Book {
    approvals: BTreeMap<String, Approval>,
}

fn event(id: &str, kind: &str, now: i64, actor: &str, reason: &str) -> ApprovalEvent {
    ApprovalEvent {
        approval_id: id.into(),
        event: kind.into(),
        unix_nanos: now,
        actor: actor.into(),
        reason: reason.into(),
        request_json: String::new(),
    }
}

impl Book {
    pub fn get(&self, id: &str) -> Option<&Approval> {
        self.approvals.get(id)
    }

    /// All approvals, newest first.
    pub fn list(&self) -> Vec<&Approval> {
        let mut all: Vec<&Approval> = self.approvals.values().collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.created_unix_nanos));
        all
    }

    pub fn create(
        &self,
        id: &str,
        req: &CreateRequest,
        now: i64,
    ) -> Result<ApprovalEvent, ApiError> {
        if !(1..=30 * 86_400).contains(&req.expires_in_s) {
            return Err(api(400, "expires_in_s must be 1..=2592000"));
        }
        if !(1..=30 * 86_400).contains(&req.grant_ttl_s) || req.grant_uses == 0 {
            return Err(api(
                400,
                "grant_ttl_s must be 1..=2592000 and grant_uses at least 1",
            ));
        }
        if req.requester.key.is_empty() || req.digest.is_empty() {
            return Err(api(400, "requester and digest are required"));
        }
        let mut ev = event(id, "created", now, &req.requester.subject, "");
        ev.request_json = serde_json::to_string(req).map_err(|e| api(500, e.to_string()))?;
        Ok(ev)
    }

    /// A decision by a person. Approvers may not decide their own requests.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        approver: &str,
        reason: &str,
        now: i64,
    ) -> Result<ApprovalEvent, ApiError> {
        let a = self
            .approvals
            .get(id)
            .ok_or_else(|| api(404, format!("no approval {id}")))?;
        if approver.trim().is_empty() {
            return Err(api(400, "the approver must be named"));
        }
        if reason.trim().is_empty() {
            return Err(api(400, "a reason is required"));
        }
        if a.state != State::Pending {
            return Err(api(
                409,
                format!("approval {id} is already {}", a.state.as_str()),
            ));
        }
        if now >= a.expires_unix_nanos {
            return Err(api(409, format!("approval {id} has expired")));
        }
        if approver == a.request.requester.subject && a.request.requester.key != "anonymous" {
            return Err(api(403, "approvers may not approve their own requests"));
        }
        let kind = if approve { "approved" } else { "denied" };
        Ok(event(id, kind, now, approver, reason))
    }

    /// Spends one use of an approved grant, if this caller may: `Ok` is the
    /// event to record; `Err` carries the refusal and its event (refused
    /// attempts are evidence too).
    pub fn redeem(
        &self,
        id: &str,
        req: &RedeemRequest,
        now: i64,
    ) -> Result<ApprovalEvent, Box<Refused>> {
        let Some(a) = self.approvals.get(id) else {
            return Err(Box::new(Refused {
                error: api(404, format!("no approval {id}")),
                event: None,
            }));
        };
        let refused = |status: u16, why: String| {
            let ev = event(id, "redeem_refused", now, &req.requester.subject, &why);
            Err(Box::new(Refused {
                error: api(status, why),
                event: Some(ev),
            }))
        };
        if a.request.mode == ApprovalMode::Hold {
            return refused(
                403,
                format!("approval {id} was for a held request and cannot be redeemed"),
            );
        }
        match a.state {
            State::Approved => {}
            State::Pending if now < a.expires_unix_nanos => {
                return refused(409, format!("approval {id} is still pending"))
            }
            State::Denied => {
                return refused(
                    403,
                    format!("approval {id} was denied by {}: {}", a.approver, a.reason),
                )
            }
            State::Pending | State::Expired => {
                return refused(403, format!("approval {id} expired without a decision"))
            }
        }
        if req.requester.key != a.request.requester.key {
            return refused(403, format!("approval {id} belongs to another caller"));
        }
        if req.digest != a.request.digest {
            return refused(403, format!("approval {id} is for a different request"));
        }
        if now >= a.grant_expires_unix_nanos {
            return refused(
                403,
                format!("approval {id} has expired (the grant is no longer valid)"),
            );
        }
        if a.uses_left == 0 {
            return refused(403, format!("approval {id} has already been used"));
        }
        Ok(event(id, "redeemed", now, &req.requester.subject, ""))
    }

    /// Pending approvals whose time is up.
    pub fn due_expiries(&self, now: i64) -> Vec<ApprovalEvent> {
        self.approvals
            .values()
            .filter(|a| a.state == State::Pending && now >= a.expires_unix_nanos)
            .map(|a| event(&a.id, "expired", now, "", "no decision in time"))
            .collect()
    }

    /// Applies a recorded event. Events that do not fit (unknown id, a
    /// decision on a decided approval) change nothing.
    pub fn apply(&mut self, ev: &ApprovalEvent) {
        if ev.event == "created" {
            let Ok(req) = serde_json::from_str::<CreateRequest>(&ev.request_json) else {
                return;
            };
            let expires = ev
                .unix_nanos
                .saturating_add((req.expires_in_s as i64).saturating_mul(SECOND));
            let uses = req.grant_uses;
            self.approvals.insert(
                ev.approval_id.clone(),
                Approval {
                    id: ev.approval_id.clone(),
                    state: State::Pending,
                    approver: String::new(),
                    reason: String::new(),
                    request: req,
                    created_unix_nanos: ev.unix_nanos,
                    expires_unix_nanos: expires,
                    decided_unix_nanos: 0,
                    grant_expires_unix_nanos: 0,
                    uses_left: uses,
                    history: Vec::new(),
                },
            );
        }
        let Some(a) = self.approvals.get_mut(&ev.approval_id) else {
            return;
        };
        let pending = a.state == State::Pending;
        match ev.event.as_str() {
            "approved" if pending => {
                a.state = State::Approved;
                a.approver = ev.actor.clone();
                a.reason = ev.reason.clone();
                a.decided_unix_nanos = ev.unix_nanos;
                a.grant_expires_unix_nanos = ev
                    .unix_nanos
                    .saturating_add((a.request.grant_ttl_s as i64).saturating_mul(SECOND));
            }
            "denied" if pending => {
                a.state = State::Denied;
                a.approver = ev.actor.clone();
                a.reason = ev.reason.clone();
                a.decided_unix_nanos = ev.unix_nanos;
            }
            "expired" if pending => {
                a.state = State::Expired;
                a.reason = ev.reason.clone();
                a.decided_unix_nanos = ev.unix_nanos;
            }
            "redeemed" => a.uses_left = a.uses_left.saturating_sub(1),
            _ => {}
        }
        a.history.push(EventView {
            event: ev.event.clone(),
            unix_nanos: ev.unix_nanos,
            actor: ev.actor.clone(),
            reason: ev.reason.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_policy::approval::Requester;

    fn request(mode: ApprovalMode) -> CreateRequest {
        CreateRequest {
            mode,
            requester: Requester {
                key: "https://idp|alice".into(),
                subject: "alice".into(),
                provider: "corp".into(),
            },
            session_id: "s".into(),
            request_id: "r".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            digest: "sha256:aa".into(),
            risk: 120,
            threshold: 100,
            reasons: Vec::new(),
            excerpt: String::new(),
            expires_in_s: 60,
            grant_ttl_s: 600,
            grant_uses: 1,
        }
    }

    fn book_with(mode: ApprovalMode) -> Book {
        let mut b = Book::default();
        let ev = b.create("apr_1", &request(mode), 0).unwrap();
        b.apply(&ev);
        b
    }

    fn redeem(key: &str, digest: &str) -> RedeemRequest {
        RedeemRequest {
            requester: Requester {
                key: key.into(),
                subject: key.rsplit('|').next().unwrap().into(),
                provider: "corp".into(),
            },
            digest: digest.into(),
        }
    }

    #[test]
    fn approve_then_redeem_once_by_the_same_caller_for_the_same_request() {
        let mut b = book_with(ApprovalMode::Async);
        assert_eq!(
            b.decide("apr_1", true, "alice", "self", 1)
                .unwrap_err()
                .status,
            403,
            "no self-approval"
        );
        assert_eq!(
            b.decide("apr_1", true, "bob", "", 1).unwrap_err().status,
            400
        );
        let ev = b.decide("apr_1", true, "bob", "looks fine", 1).unwrap();
        b.apply(&ev);
        assert_eq!(b.get("apr_1").unwrap().state, State::Approved);
        assert_eq!(
            b.decide("apr_1", false, "carol", "no", 2)
                .unwrap_err()
                .status,
            409
        );

        let r = b
            .redeem("apr_1", &redeem("https://idp|mallory", "sha256:aa"), 2)
            .unwrap_err();
        assert!(r.error.message.contains("another caller"), "{r:?}");
        assert_eq!(r.event.unwrap().event, "redeem_refused");
        let r = b
            .redeem("apr_1", &redeem("https://idp|alice", "sha256:bb"), 2)
            .unwrap_err();
        assert!(r.error.message.contains("different request"));
        let ev = b
            .redeem("apr_1", &redeem("https://idp|alice", "sha256:aa"), 2)
            .unwrap();
        b.apply(&ev);
        let r = b
            .redeem("apr_1", &redeem("https://idp|alice", "sha256:aa"), 3)
            .unwrap_err();
        assert!(r.error.message.contains("already been used"));
        let late = 1 + 601 * SECOND;
        let mut b2 = book_with(ApprovalMode::Async);
        b2.apply(&b2.decide("apr_1", true, "bob", "ok", 1).unwrap());
        let r = b2
            .redeem("apr_1", &redeem("https://idp|alice", "sha256:aa"), late)
            .unwrap_err();
        assert!(r.error.message.contains("expired"));
    }

    #[test]
    fn pending_approvals_expire_and_hold_approvals_cannot_be_redeemed() {
        let mut b = book_with(ApprovalMode::Hold);
        assert!(b.due_expiries(59 * SECOND).is_empty());
        let evs = b.due_expiries(60 * SECOND);
        assert_eq!(evs.len(), 1);
        b.apply(&evs[0]);
        assert_eq!(b.get("apr_1").unwrap().state, State::Expired);
        assert_eq!(
            b.decide("apr_1", true, "bob", "late", 61 * SECOND)
                .unwrap_err()
                .status,
            409
        );
        let r = b
            .redeem(
                "apr_1",
                &redeem("https://idp|alice", "sha256:aa"),
                61 * SECOND,
            )
            .unwrap_err();
        assert!(r.error.message.contains("held request"));
        assert_eq!(b.get("apr_1").unwrap().history.len(), 2);
    }
}
