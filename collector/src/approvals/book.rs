//! The approvals and their rules, as pure state: every change is an
//! `ApprovalEvent` that is first made durable in the store, then applied.
//! The same events rebuild the book at start-up.

use serde::Serialize;
use std::collections::BTreeMap;
use tracegate_policy::approval::{ApprovalMode, Approver, CreateRequest, RedeemRequest, State};
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
    /// Display names of who decided (approvers, or the one who denied).
    pub approver: String,
    pub reason: String,
    /// Who decided, as verified: those who approved so far (all of them
    /// once APPROVED), or the one who denied.
    pub approvers: Vec<Decider>,
    /// Distinct approvals needed before the grant exists.
    pub approvals_required: u32,
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

/// One verified person's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decider {
    #[serde(flatten)]
    pub who: Approver,
    pub reason: String,
    pub unix_nanos: i64,
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
        ..ApprovalEvent::default()
    }
}

/// Longest text fields of a request for approval (the filter's are far
/// shorter): anything larger is refused, not stored.
const MAX_TEXT: usize = 8 * 1024;
const MAX_REASONS: usize = 256;
const MAX_REASON_TEXT: usize = 4 * 1024;

impl Book {
    pub fn get(&self, id: &str) -> Option<&Approval> {
        self.approvals.get(id)
    }

    /// Approvals waiting for a decision.
    pub fn pending(&self) -> usize {
        self.approvals
            .values()
            .filter(|a| a.state == State::Pending)
            .count()
    }

    /// All approvals, newest first.
    pub fn list(&self) -> Vec<&Approval> {
        let mut all: Vec<&Approval> = self.approvals.values().collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.created_unix_nanos));
        all
    }

    /// A filter's request for approval, needing `approvals_required`
    /// distinct approvers.
    pub fn create(
        &self,
        id: &str,
        req: &CreateRequest,
        approvals_required: u32,
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
        let texts = [
            ("requester.key", &req.requester.key),
            ("requester.subject", &req.requester.subject),
            ("requester.issuer", &req.requester.issuer),
            ("requester.provider", &req.requester.provider),
            ("session_id", &req.session_id),
            ("request_id", &req.request_id),
            ("method", &req.method),
            ("path", &req.path),
            ("digest", &req.digest),
            ("excerpt", &req.excerpt),
        ];
        for (name, text) in texts {
            if text.len() > MAX_TEXT {
                return Err(api(400, format!("{name} is longer than {MAX_TEXT} bytes")));
            }
        }
        if req.reasons.len() > MAX_REASONS
            || req
                .reasons
                .iter()
                .any(|r| r.kind.len() + r.name.len() > MAX_REASON_TEXT)
        {
            return Err(api(400, "too many or too long reasons"));
        }
        let mut ev = event(id, "created", now, &req.requester.subject, "");
        ev.request_json = serde_json::to_string(req).map_err(|e| api(500, e.to_string()))?;
        ev.approvals_required = approvals_required.max(1);
        Ok(ev)
    }

    /// A verified approver's decision. Nobody decides their own request
    /// (same issuer and subject); each approver counts once toward the
    /// quorum; one denial denies.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        approver: &Approver,
        reason: &str,
        now: i64,
    ) -> Result<ApprovalEvent, ApiError> {
        let a = self
            .approvals
            .get(id)
            .ok_or_else(|| api(404, format!("no approval {id}")))?;
        if reason.trim().is_empty() {
            return Err(api(400, "a reason is required"));
        }
        if reason.len() > MAX_REASON_TEXT {
            return Err(api(
                400,
                format!("the reason is longer than {MAX_REASON_TEXT} bytes"),
            ));
        }
        if a.request.requester.is(approver) {
            return Err(api(
                403,
                format!(
                    "approvers may not decide their own requests ({} is the requester of {id})",
                    approver.subject
                ),
            ));
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
        if approve && a.approvers.iter().any(|d| same(&d.who, approver)) {
            return Err(api(
                409,
                format!(
                    "{} has already approved {id}; it needs {} distinct approvers",
                    approver.display, a.approvals_required
                ),
            ));
        }
        let kind = if approve { "approved" } else { "denied" };
        let mut ev = event(id, kind, now, &approver.display, reason);
        ev.approver = Some(approver.to_proto());
        Ok(ev)
    }

    /// What `approver` decided on approval `id`, if they decided it:
    /// `Some(true)` approved, `Some(false)` denied.
    pub fn decision_of(&self, id: &str, approver: &Approver) -> Option<bool> {
        let a = self.approvals.get(id)?;
        if !a.approvers.iter().any(|d| same(&d.who, approver)) {
            return None;
        }
        Some(a.state != State::Denied)
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
                    approvers: Vec::new(),
                    approvals_required: ev.approvals_required.max(1),
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
        // Events written before approvers were verified name only an actor.
        let decider = Decider {
            who: ev.approver.as_ref().map_or_else(
                || Approver {
                    issuer: String::new(),
                    subject: ev.actor.clone(),
                    display: ev.actor.clone(),
                },
                |p| Approver {
                    issuer: p.issuer.clone(),
                    subject: p.subject.clone(),
                    display: p.display.clone(),
                },
            ),
            reason: ev.reason.clone(),
            unix_nanos: ev.unix_nanos,
        };
        match ev.event.as_str() {
            "approved" if pending && !a.approvers.iter().any(|d| same(&d.who, &decider.who)) => {
                a.approvers.push(decider);
                a.approver = displays(&a.approvers);
                a.reason = ev.reason.clone();
                if a.approvers.len() >= a.approvals_required as usize {
                    a.state = State::Approved;
                    a.decided_unix_nanos = ev.unix_nanos;
                    a.grant_expires_unix_nanos = ev
                        .unix_nanos
                        .saturating_add((a.request.grant_ttl_s as i64).saturating_mul(SECOND));
                }
            }
            "denied" if pending => {
                a.state = State::Denied;
                a.approvers = vec![decider];
                a.approver = displays(&a.approvers);
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

fn same(a: &Approver, b: &Approver) -> bool {
    a.issuer == b.issuer && a.subject == b.subject
}

fn displays(deciders: &[Decider]) -> String {
    let names: Vec<&str> = deciders.iter().map(|d| d.who.display.as_str()).collect();
    names.join(", ")
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
                issuer: "https://idp".into(),
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

    fn who(sub: &str) -> Approver {
        Approver {
            issuer: "https://idp".into(),
            subject: sub.into(),
            display: format!("{sub}@example.com"),
        }
    }

    fn book_with(mode: ApprovalMode, quorum: u32) -> Book {
        let mut b = Book::default();
        let ev = b.create("apr_1", &request(mode), quorum, 0).unwrap();
        b.apply(&ev);
        b
    }

    fn redeem(key: &str, digest: &str) -> RedeemRequest {
        RedeemRequest {
            requester: Requester {
                key: key.into(),
                subject: key.rsplit('|').next().unwrap().into(),
                provider: "corp".into(),
                issuer: "https://idp".into(),
            },
            digest: digest.into(),
        }
    }

    #[test]
    fn approve_then_redeem_once_by_the_same_caller_for_the_same_request() {
        let mut b = book_with(ApprovalMode::Async, 1);
        let own = b
            .decide("apr_1", true, &who("alice"), "self", 1)
            .unwrap_err();
        assert_eq!(own.status, 403, "no self-approval");
        assert!(own.message.contains("their own requests"), "{own:?}");
        // Nor self-denial: the requester decides nothing.
        assert_eq!(
            b.decide("apr_1", false, &who("alice"), "x", 1)
                .unwrap_err()
                .status,
            403
        );
        // Another issuer's "alice" is someone else.
        let other_alice = Approver {
            issuer: "https://other".into(),
            ..who("alice")
        };
        assert!(b.decide("apr_1", true, &other_alice, "ok", 1).is_ok());
        assert_eq!(
            b.decide("apr_1", true, &who("bob"), "", 1)
                .unwrap_err()
                .status,
            400
        );
        let ev = b
            .decide("apr_1", true, &who("bob"), "looks fine", 1)
            .unwrap();
        assert_eq!(ev.actor, "bob@example.com");
        assert_eq!(ev.approver.as_ref().unwrap().subject, "bob");
        b.apply(&ev);
        let a = b.get("apr_1").unwrap();
        assert_eq!(a.state, State::Approved);
        assert_eq!(a.approver, "bob@example.com");
        assert_eq!(a.approvers[0].who, who("bob"));
        assert_eq!(
            b.decide("apr_1", false, &who("carol"), "no", 2)
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
        let mut b2 = book_with(ApprovalMode::Async, 1);
        b2.apply(&b2.decide("apr_1", true, &who("bob"), "ok", 1).unwrap());
        let r = b2
            .redeem("apr_1", &redeem("https://idp|alice", "sha256:aa"), late)
            .unwrap_err();
        assert!(r.error.message.contains("expired"));
    }

    #[test]
    fn a_quorum_needs_distinct_approvers_and_one_denial_denies() {
        let mut b = book_with(ApprovalMode::Async, 2);
        b.apply(&b.decide("apr_1", true, &who("bob"), "ok", 1).unwrap());
        let a = b.get("apr_1").unwrap();
        assert_eq!((a.state, a.approvers.len()), (State::Pending, 1));
        let twice = b
            .decide("apr_1", true, &who("bob"), "again", 2)
            .unwrap_err();
        assert_eq!(twice.status, 409);
        assert!(twice.message.contains("2 distinct approvers"), "{twice:?}");
        // Not redeemable until the quorum is met.
        assert!(b
            .redeem("apr_1", &redeem("https://idp|alice", "sha256:aa"), 2)
            .is_err());
        b.apply(&b.decide("apr_1", true, &who("carol"), "fine", 3).unwrap());
        let a = b.get("apr_1").unwrap();
        assert_eq!(a.state, State::Approved);
        assert_eq!(a.approver, "bob@example.com, carol@example.com");
        assert_eq!(a.decided_unix_nanos, 3);

        let mut d = book_with(ApprovalMode::Hold, 2);
        d.apply(&d.decide("apr_1", true, &who("bob"), "ok", 1).unwrap());
        d.apply(
            &d.decide("apr_1", false, &who("carol"), "no window", 2)
                .unwrap(),
        );
        let a = d.get("apr_1").unwrap();
        assert_eq!(a.state, State::Denied);
        assert_eq!(a.approver, "carol@example.com");
        assert_eq!(a.history.len(), 3);

        // A replayed store applies a duplicate approval once.
        let mut r = book_with(ApprovalMode::Async, 2);
        let ev = r.decide("apr_1", true, &who("bob"), "ok", 1).unwrap();
        r.apply(&ev);
        r.apply(&ev);
        assert_eq!(r.get("apr_1").unwrap().state, State::Pending);
    }

    #[test]
    fn oversized_requests_for_approval_are_refused() {
        let b = Book::default();
        let mut req = request(ApprovalMode::Hold);
        req.excerpt = "x".repeat(MAX_TEXT + 1);
        assert_eq!(b.create("apr_1", &req, 1, 0).unwrap_err().status, 400);
    }

    #[test]
    fn pending_approvals_expire_and_hold_approvals_cannot_be_redeemed() {
        let mut b = book_with(ApprovalMode::Hold, 1);
        assert!(b.due_expiries(59 * SECOND).is_empty());
        let evs = b.due_expiries(60 * SECOND);
        assert_eq!(evs.len(), 1);
        b.apply(&evs[0]);
        assert_eq!(b.get("apr_1").unwrap().state, State::Expired);
        assert_eq!(
            b.decide("apr_1", true, &who("bob"), "late", 61 * SECOND)
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

    #[test]
    fn events_without_a_verified_approver_still_replay() {
        let mut b = book_with(ApprovalMode::Async, 0);
        b.apply(&event("apr_1", "approved", 1, "bob", "old store"));
        let a = b.get("apr_1").unwrap();
        assert_eq!(a.state, State::Approved, "quorum 0 in old stores means 1");
        assert_eq!(a.approver, "bob");
    }
}
