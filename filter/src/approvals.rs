//! The approval gate: asks the approval service (an Envoy cluster, over
//! `dispatch_http_call`) for a person's decision on a risky request.
//!
//! - `hold`: create the approval, then long-poll it until it is decided or
//!   `hold_timeout_ms` passes; approved → forwarded, denied → 403 with the
//!   approver's reason, no decision → 403 (or forwarded, `on_timeout`),
//!   recorded as EXPIRED.
//! - `async`: create it and answer 403 at once with its id; a retry carrying
//!   `x-tracegate-approval: ID` redeems the grant (the service checks caller,
//!   request digest, uses and expiry) and is forwarded.
//!
//! Whatever goes wrong with the service (down, slow, garbage) ends in a 403
//! that says so: a request that needs approval is never forwarded without one.

use proxy_wasm::types::LogLevel;
use std::time::Duration;
use tracegate_policy::approval::{
    error_with_approval, parse_view, refusal_reason, ApprovalConfig, ApprovalMode, CreateRequest,
    OnTimeout, RedeemRequest, Requester, RiskReason, State, View, GRANT_HEADER,
};
use tracegate_policy::llm::Api;
use tracegate_proto::v1 as proto;

use crate::gates::{self, track_call, Gate, Purpose, RequestSlot, Via};
use crate::host;
use crate::root::Shared;

/// What the request brings to the gate, gathered when it ended.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Risk from detectors and rules (identity risk is added at the gate,
    /// once the caller is known).
    pub base_risk: u32,
    pub reasons: Vec<RiskReason>,
    pub session_id: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub digest: String,
    pub excerpt: String,
    /// `x-tracegate-approval` of a retry (async mode).
    pub grant: Option<String>,
}

/// Which call is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Poll,
    Redeem,
}

#[derive(Debug, Default)]
pub enum ApprovalGate {
    /// No approval configured, or the request's risk is below the threshold.
    #[default]
    Off,
    /// Not asked yet.
    Todo(Box<Ask>),
    /// A call to the service is under way.
    Asking {
        step: Step,
        record: Box<proto::Approval>,
        /// Host time (ms) after which a hold ends without a decision.
        deadline_ms: u64,
    },
    /// Approved (or forwarded on timeout): the request goes on.
    Passed(Box<proto::Approval>),
    /// Answered 403.
    Refused(Box<proto::Approval>),
}

impl ApprovalGate {
    /// For the exchange's record.
    pub fn record(&self) -> Option<proto::Approval> {
        match self {
            ApprovalGate::Off | ApprovalGate::Todo(_) => None,
            ApprovalGate::Asking { record, .. }
            | ApprovalGate::Passed(record)
            | ApprovalGate::Refused(record) => Some((**record).clone()),
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(host::now_nanos() / 1_000_000).unwrap_or(0)
}

/// The approval gate.
pub fn advance(shared: &Shared, slot: &RequestSlot, via: Via) -> Gate {
    let Some(config) = &shared.config.approval else {
        return Gate::Pass;
    };
    let state = std::mem::take(&mut slot.borrow_mut().approval);
    let ask = match state {
        ApprovalGate::Todo(ask) => ask,
        ApprovalGate::Asking { .. } => {
            slot.borrow_mut().approval = state;
            return Gate::Wait;
        }
        ApprovalGate::Refused(_) => {
            slot.borrow_mut().approval = state;
            return Gate::Stop;
        }
        other => {
            slot.borrow_mut().approval = other;
            return Gate::Pass;
        }
    };
    let identity = slot.borrow().identity.clone();
    let (identity_risk, identity_reasons) = config.identity_risk(identity.as_ref());
    let risk = ask.base_risk.saturating_add(identity_risk);
    if !config.needs_approval(risk) {
        return Gate::Pass;
    }
    shared.metrics.approval_requested.add(1);
    let requester = Requester::of(identity.as_ref());
    let mut record = Box::new(proto::Approval {
        mode: match config.mode {
            ApprovalMode::Hold => "hold",
            ApprovalMode::Async => "async",
        }
        .into(),
        risk,
        threshold: config.threshold,
        ..proto::Approval::default()
    });
    // Creating and redeeming are both POSTs.
    let (step, path, body) = match (config.mode, &ask.grant) {
        (ApprovalMode::Async, Some(id)) => {
            record.id = id.clone();
            let body = RedeemRequest {
                requester,
                digest: ask.digest.clone(),
            };
            (
                Step::Redeem,
                format!("{}/{}/redeem", config.path, url_segment(id)),
                body.to_json(),
            )
        }
        _ => {
            let mut reasons = ask.reasons.clone();
            reasons.extend(identity_reasons);
            let body = CreateRequest {
                mode: config.mode,
                requester,
                session_id: ask.session_id.clone(),
                request_id: ask.request_id.clone(),
                method: ask.method.clone(),
                path: ask.path.clone(),
                digest: ask.digest.clone(),
                risk,
                threshold: config.threshold,
                reasons,
                excerpt: ask.excerpt.clone(),
                expires_in_s: match config.mode {
                    ApprovalMode::Hold => config.hold_timeout_ms.div_ceil(1000),
                    ApprovalMode::Async => config.pending_ttl_s,
                },
                grant_ttl_s: config.grant_ttl_s,
                grant_uses: config.grant_uses,
            };
            (Step::Create, config.path.clone(), body.to_json())
        }
    };
    let deadline_ms = now_ms().saturating_add(config.hold_timeout_ms);
    let timeout = Duration::from_millis(config.timeout_ms);
    match call(config, "POST", &path, Some(&body), timeout) {
        Ok(token) => {
            slot.borrow_mut().approval = ApprovalGate::Asking {
                step,
                record,
                deadline_ms,
            };
            track_call(shared, slot, via, token, Purpose::Approval);
            Gate::Wait
        }
        Err(why) => {
            unavailable(shared, slot, config, record, &why);
            Gate::Stop
        }
    }
}

/// The service answered a call of the current (effective) request: decide,
/// or ask again, then let the gates go on.
pub fn answered(shared: &Shared, slot: &RequestSlot, via: Via, status: Option<u32>, body: &[u8]) {
    let Some(config) = &shared.config.approval else {
        return;
    };
    let state = std::mem::take(&mut slot.borrow_mut().approval);
    let ApprovalGate::Asking {
        step,
        mut record,
        deadline_ms,
    } = state
    else {
        slot.borrow_mut().approval = state;
        return;
    };
    let view = match (&step, parse_view(status, body)) {
        (Step::Redeem, Err(why)) => {
            match refusal_reason(status, body) {
                Some(reason) => refuse(
                    shared,
                    slot,
                    record,
                    "grant_refused",
                    "approval_refused",
                    &format!("approval grant refused: {reason}"),
                    None,
                ),
                None => unavailable(shared, slot, config, record, &why),
            }
            return;
        }
        (_, Err(why)) => {
            unavailable(shared, slot, config, record, &why);
            return;
        }
        (_, Ok(view)) => view,
    };
    record.id = view.id.clone();
    record.state = view.state.as_str().into();
    record.approver = view.approver.clone();
    record.reason = view.reason.clone();
    record.approvers = view.approvers.iter().map(|a| a.to_proto()).collect();
    record.approvals_required = view.approvals_required;
    match (&step, view.state) {
        (Step::Create, _) if config.mode == ApprovalMode::Async => {
            let message = format!(
                "this request needs approval (risk {} >= {}); approval {} is pending: once it is approved, send the same request again with header {GRANT_HEADER}: {}",
                record.risk, record.threshold, view.id, view.id
            );
            refuse(
                shared,
                slot,
                record,
                "approval_required",
                "approval_required",
                &message,
                Some(&view.id),
            );
        }
        (Step::Redeem, State::Approved) => pass(shared, slot, via, record, "forwarded"),
        (Step::Redeem, state) => refuse(
            shared,
            slot,
            record,
            "grant_refused",
            "approval_refused",
            &format!("approval {} is {}, not approved", view.id, state.as_str()),
            None,
        ),
        (_, State::Approved) => pass(shared, slot, via, record, "forwarded"),
        (_, State::Denied) => {
            let message = format!(
                "request denied by {}: {}",
                if view.approver.is_empty() {
                    "an approver"
                } else {
                    &view.approver
                },
                view.reason
            );
            refuse(
                shared,
                slot,
                record,
                "denied",
                "approval_denied",
                &message,
                Some(&view.id),
            );
        }
        (_, State::Expired) => expired(shared, slot, via, config, record, &view),
        (_, State::Pending) => {
            let now = now_ms();
            if now >= deadline_ms {
                return expired(shared, slot, via, config, record, &view);
            }
            let wait_ms = (deadline_ms - now).min(config.poll_ms);
            let path = format!(
                "{}/{}?wait_ms={wait_ms}",
                config.path,
                url_segment(&view.id)
            );
            let timeout = Duration::from_millis(wait_ms + config.timeout_ms);
            match call(config, "GET", &path, None, timeout) {
                Ok(token) => {
                    slot.borrow_mut().approval = ApprovalGate::Asking {
                        step: Step::Poll,
                        record,
                        deadline_ms,
                    };
                    track_call(shared, slot, via, token, Purpose::Approval);
                }
                Err(why) => unavailable(shared, slot, config, record, &why),
            }
        }
    }
}

fn pass(
    shared: &Shared,
    slot: &RequestSlot,
    via: Via,
    mut record: Box<proto::Approval>,
    outcome: &str,
) {
    shared.metrics.approval_approved.add(1);
    record.outcome = outcome.into();
    slot.borrow_mut().approval = ApprovalGate::Passed(record);
    gates::resume(shared, slot, via);
}

fn expired(
    shared: &Shared,
    slot: &RequestSlot,
    via: Via,
    config: &ApprovalConfig,
    mut record: Box<proto::Approval>,
    view: &View,
) {
    record.state = State::Expired.as_str().into();
    let waited = config.hold_timeout_ms / 1000;
    match config.on_timeout {
        OnTimeout::Forward => {
            host::log(
                LogLevel::Warn,
                &format!("approval {} expired after {waited} s: forwarded (on_timeout: forward)", view.id),
            );
            pass(shared, slot, via, record, "forwarded_expired");
        }
        OnTimeout::Deny => refuse(
            shared,
            slot,
            record,
            "expired",
            "approval_expired",
            &format!(
                "no approval decision within {waited} s (approval {} expired); the request was not forwarded",
                view.id
            ),
            Some(&view.id),
        ),
    }
}

fn unavailable(
    shared: &Shared,
    slot: &RequestSlot,
    config: &ApprovalConfig,
    record: Box<proto::Approval>,
    why: &str,
) {
    shared.metrics.approval_unavailable.add(1);
    host::log(
        LogLevel::Warn,
        &format!("approval service ({}): {why}", config.cluster),
    );
    let message = format!(
        "this request needs approval (risk {} >= {}), but the approval service is unavailable: {why}; the request was not forwarded",
        record.risk, record.threshold
    );
    let id = (!record.id.is_empty()).then(|| record.id.clone());
    refuse(
        shared,
        slot,
        record,
        "unavailable",
        "approval_unavailable",
        &message,
        id.as_deref(),
    );
}

/// Answers the effective request 403 in its API's shape.
fn refuse(
    shared: &Shared,
    slot: &RequestSlot,
    mut record: Box<proto::Approval>,
    outcome: &str,
    kind: &str,
    message: &str,
    approval_id: Option<&str>,
) {
    if outcome != "approval_required" {
        shared.metrics.approval_refused.add(1);
    }
    record.outcome = outcome.into();
    record.detail = message.into();
    let api = {
        let mut s = slot.borrow_mut();
        s.answered = true;
        s.approval = ApprovalGate::Refused(record);
        s.api
    };
    let kind = if api == Api::Anthropic {
        "permission_error"
    } else {
        kind
    };
    let body = error_with_approval(api, kind, message, approval_id);
    let mut headers = vec![("content-type", "application/json")];
    if let Some(id) = approval_id {
        headers.push(("x-tracegate-approval-id", id));
    }
    host::send_response(403, &headers, body.as_bytes());
}

fn call(
    config: &ApprovalConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, String> {
    let headers = [
        (":method", method),
        (":path", path),
        (":authority", config.authority.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];
    host::http_call_with_body(&config.cluster, &headers, body, timeout)
        .map_err(|status| format!("cannot call cluster {:?}: {status}", config.cluster))
}

/// An approval id as one path segment: ids the service makes are
/// `apr_<hex>`; anything else a client sends is percent-encoded.
fn url_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
