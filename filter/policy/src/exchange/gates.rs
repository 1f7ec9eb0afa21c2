//! What a complete, judged request passes before it goes upstream: a
//! person's approval (if its risk calls for one), then its record written
//! ahead (`recording.mode: write_ahead`).
//!
//! Approval, through the approval service (an Envoy cluster):
//! - `hold`: create the approval, then long-poll it until it is decided or
//!   `hold_timeout_ms` passes; approved → forwarded, denied → 403 with the
//!   approver's reason, no decision → 403 (or forwarded, `on_timeout`),
//!   recorded as EXPIRED.
//! - `async`: create it and answer 403 at once with its id; a retry carrying
//!   `x-tracegate-approval: ID` redeems the grant (the service checks caller,
//!   request digest, uses and expiry) and is forwarded.
//!
//! Whatever goes wrong with the service (down, slow, garbage) ends in a 403
//! that says so: a request that needs approval is never forwarded without
//! one. A write-ahead record that is not acknowledged ends in a 503
//! (fail_closed) or goes through the outbox later (fail_open).

use prost::Message;
use tracegate_proto::v1::{self as proto, ExportRequest, ExportResponse, Record};
use tracegate_proto::{EXPORT_METHOD, RECORD_SERVICE};

use super::request::now_ms;
use super::{
    count, Action, BodyMode, Call, CallKind, Effect, Exchange, Gateway, Host, Level, LocalReply,
    Phase, Refusal, Reply, Stat,
};
use crate::approval::{
    excerpt, parse_view, refusal_reason, request_digest, ApprovalConfig, ApprovalMode,
    CreateRequest, OnTimeout, Outcome, RedeemRequest, Requester, RiskReason, State, View,
    GRANT_HEADER,
};
use crate::config::{FailureMode, RecordingMode};
use crate::record::{record_id, RequestInfo, UpstreamSaw};

/// Characters of the request an approver is shown (around what made it
/// risky).
const EXCERPT_CHARS: usize = 1500;

/// What the request brings to the approval gate, gathered when it ended.
#[derive(Debug, Clone)]
pub(super) struct Ask {
    /// Risk from detectors and rules (identity risk is added at the gate,
    /// once the caller is known).
    base_risk: u32,
    reasons: Vec<RiskReason>,
    session_id: String,
    request_id: String,
    method: String,
    path: String,
    digest: String,
    excerpt: String,
    /// `x-tracegate-approval` of a retry (async mode).
    grant: Option<String>,
}

/// Which approval call is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Create,
    Poll,
    Redeem,
}

#[derive(Debug, Default)]
pub(super) enum ApprovalGate {
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
    Refused {
        record: Box<proto::Approval>,
        outcome: Outcome,
    },
}

impl ApprovalGate {
    /// For the exchange's record.
    pub(super) fn record(&self) -> Option<proto::Approval> {
        match self {
            ApprovalGate::Off | ApprovalGate::Todo(_) => None,
            ApprovalGate::Asking { record, .. }
            | ApprovalGate::Passed(record)
            | ApprovalGate::Refused { record, .. } => Some((**record).clone()),
        }
    }
}

/// Progress of the request's write-ahead record.
#[derive(Debug, Default)]
pub(super) enum AheadGate {
    /// Not written ahead (async mode).
    #[default]
    Off,
    /// Built when the request ended; sent when the gates get here (after
    /// authentication and approval).
    Todo(Box<Record>),
    /// Sent; the request waits for the acknowledgement.
    InFlight(Box<Record>),
    /// Acknowledged durable: the request went on.
    Written(String),
    /// The call failed and `fail_open` let the request go on; the record
    /// travels later through the outbox.
    Queued(String),
    /// The call failed (or was not acknowledged in time) and `fail_closed`
    /// answered 503: not forwarded. The record may still have been stored.
    Refused(String),
}

impl AheadGate {
    /// The written-ahead record's id, for the exchange's record to name.
    pub(super) fn record_id(&self) -> Option<&str> {
        match self {
            AheadGate::Off | AheadGate::Todo(_) => None,
            AheadGate::InFlight(r) => Some(&r.record_id),
            AheadGate::Written(id) | AheadGate::Queued(id) | AheadGate::Refused(id) => Some(id),
        }
    }
}

/// What a gate says.
enum Gate {
    /// Passed (or not needed).
    Pass,
    /// A call is under way; the request waits.
    Wait,
    /// The request was answered locally (403, 503).
    Stop,
}

impl Exchange {
    /// Builds what the gates need while the request's bytes are at hand.
    pub(super) fn prepare_gates(&mut self, raw: &[u8], sent: &[u8], gw: &Gateway, host: &dyn Host) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let config = &gw.policy.config;
        if config.recording.mode == RecordingMode::WriteAhead {
            let inspection = (self.body == BodyMode::Inspected).then(|| self.inspection.to_proto());
            let id = new_record_id(host);
            let mut record =
                recorder.request_record(id, gw.source.clone(), None, inspection, self.upstream);
            record.policy = Some(gw.policy.reference.clone());
            self.ahead = AheadGate::Todo(Box::new(record));
        }
        if config.approval.is_some() {
            self.approval = ApprovalGate::Todo(Box::new(self.approval_ask(gw, raw, sent)));
        }
    }

    /// What the approval gate needs to know of this request.
    fn approval_ask(&self, gw: &Gateway, raw: &[u8], sent: &[u8]) -> Ask {
        let i = &self.inspection;
        let mut reasons: Vec<RiskReason> = i
            .request
            .counts
            .iter()
            .map(|(name, &count)| RiskReason {
                kind: "detector".into(),
                name: name.clone(),
                risk: 0,
                count,
            })
            .collect();
        let inspector = gw.policy.inspector.as_ref();
        for rule in &i.rules {
            reasons.push(RiskReason {
                kind: "rule".into(),
                name: rule.id.clone(),
                risk: inspector.map_or(0, |x| x.rule_risk(&rule.id)),
                count: 1,
            });
        }
        let default = RequestInfo::default();
        let info = self.recorder.as_ref().map_or(&default, |r| r.info());
        Ask {
            base_risk: i.request.risk.saturating_add(i.rules_risk),
            reasons,
            session_id: self
                .recorder
                .as_ref()
                .map(|r| r.session_id().to_string())
                .unwrap_or_default(),
            digest: request_digest(&info.method, &info.path, raw),
            request_id: info.request_id.clone(),
            method: info.method.clone(),
            path: info.path.clone(),
            excerpt: excerpt(sent, &self.marks, EXCERPT_CHARS),
            grant: self.grant.clone(),
        }
    }

    /// Runs the gates of a complete request as far as they go now:
    /// `Continue` when it may go upstream.
    pub(super) fn run_gates(
        &mut self,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        if matches!(
            self.phase,
            Phase::Answered | Phase::WaitingForKeys { .. } | Phase::Ended
        ) {
            return Action::Pause;
        }
        // Access rules first: a request its caller may not make is never
        // shown to an approver or written ahead.
        if !self.access_gate(gw, out) {
            return Action::Pause;
        }
        for gate in [Exchange::approval_gate, Exchange::ahead_gate] {
            match gate(self, gw, host, out) {
                Gate::Pass => {}
                Gate::Wait | Gate::Stop => return Action::Pause,
            }
        }
        // Gates run only on a complete request: all of it goes on.
        self.let_go(UpstreamSaw::Request);
        self.phase = Phase::Forwarded;
        Action::Continue
    }

    /// After an asynchronous answer: the gates again, and the request
    /// resumed if they all pass.
    fn resume_gates(&mut self, gw: &mut Gateway, host: &dyn Host, out: &mut Vec<Effect>) {
        if self.run_gates(gw, host, out) == Action::Continue {
            out.push(Effect::Resume);
        }
    }

    fn approval_gate(&mut self, gw: &mut Gateway, host: &dyn Host, out: &mut Vec<Effect>) -> Gate {
        let Some(config) = gw.policy.config.approval.as_ref() else {
            return Gate::Pass;
        };
        let ask = match std::mem::take(&mut self.approval) {
            ApprovalGate::Todo(ask) => ask,
            state => {
                let gate = match state {
                    ApprovalGate::Asking { .. } => Gate::Wait,
                    ApprovalGate::Refused { .. } => Gate::Stop,
                    _ => Gate::Pass,
                };
                self.approval = state;
                return gate;
            }
        };
        let (identity_risk, identity_reasons) = config.identity_risk(self.identity.as_ref());
        let risk = ask.base_risk.saturating_add(identity_risk);
        if !config.needs_approval(risk) {
            return Gate::Pass;
        }
        out.push(count(Stat::ApprovalRequested));
        let requester = Requester::of(self.identity.as_ref());
        let mut record = Box::new(proto::Approval {
            mode: config.mode.as_str().into(),
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
                let path = format!("{}/{}/redeem", config.path, url_segment(id));
                (Step::Redeem, path, body.to_json())
            }
            _ => {
                let mut reasons = ask.reasons;
                reasons.extend(identity_reasons);
                let body = CreateRequest {
                    mode: config.mode,
                    requester,
                    session_id: ask.session_id,
                    request_id: ask.request_id,
                    method: ask.method,
                    path: ask.path,
                    digest: ask.digest,
                    risk,
                    threshold: config.threshold,
                    reasons,
                    excerpt: ask.excerpt,
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
        let deadline_ms = now_ms(host).saturating_add(config.hold_timeout_ms);
        let call = approval_call(config, "POST", path, Some(body), config.timeout_ms);
        out.push(Effect::Call(CallKind::Approval, call));
        self.approval = ApprovalGate::Asking {
            step,
            record,
            deadline_ms,
        };
        self.phase = Phase::WaitingForApproval;
        Gate::Wait
    }

    fn ahead_gate(&mut self, gw: &mut Gateway, _host: &dyn Host, out: &mut Vec<Effect>) -> Gate {
        let mut record = match std::mem::take(&mut self.ahead) {
            AheadGate::Todo(record) => record,
            state => {
                let gate = match state {
                    AheadGate::InFlight(_) => Gate::Wait,
                    _ => Gate::Pass,
                };
                self.ahead = state;
                return gate;
            }
        };
        record.identity = self.identity.clone();
        record.approval = self.approval.record();
        let c = &gw.policy.config.collector;
        let message = ExportRequest {
            records: vec![(*record).clone()],
        }
        .encode_to_vec();
        out.push(Effect::Call(
            CallKind::WriteAhead,
            Call::Grpc {
                cluster: c.cluster.clone(),
                service: RECORD_SERVICE,
                method: EXPORT_METHOD,
                message,
                timeout_ms: c.timeout_ms,
            },
        ));
        self.ahead = AheadGate::InFlight(record);
        self.phase = Phase::WritingAhead;
        Gate::Wait
    }

    /// A call the exchange made was answered.
    pub(super) fn answered(
        &mut self,
        call: CallKind,
        reply: Reply,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        match (call, self.phase) {
            (CallKind::Approval, Phase::WaitingForApproval) => {
                self.approval_answered(reply, gw, host, out)
            }
            (CallKind::WriteAhead, Phase::WritingAhead) => {
                self.ahead_answered(reply, gw, host, out)
            }
            // Answered, ended, or not waiting for this: nothing to do.
            _ => {}
        }
    }

    fn approval_answered(
        &mut self,
        reply: Reply,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        let Some(config) = gw.policy.config.approval.clone() else {
            return;
        };
        let ApprovalGate::Asking {
            step,
            mut record,
            deadline_ms,
        } = std::mem::take(&mut self.approval)
        else {
            return;
        };
        let (status, body) = match reply {
            Reply::Http { status, body } => (status, body),
            Reply::NotSent(status) => {
                let why = format!("cannot call cluster {:?}: {status}", config.cluster);
                return self.approval_unavailable(&config, record, &why, gw, out);
            }
            Reply::Grpc { .. } => {
                let why = "a gRPC answer to an HTTP call".to_string();
                return self.approval_unavailable(&config, record, &why, gw, out);
            }
        };
        let view = match (step, parse_view(status, &body)) {
            (Step::Redeem, Err(why)) => {
                return match refusal_reason(status, &body) {
                    Some(reason) => {
                        let message = format!("approval grant refused: {reason}");
                        self.approval_refused(
                            record,
                            Outcome::GrantRefused,
                            &message,
                            None,
                            gw,
                            out,
                        )
                    }
                    None => self.approval_unavailable(&config, record, &why, gw, out),
                };
            }
            (_, Err(why)) => return self.approval_unavailable(&config, record, &why, gw, out),
            (_, Ok(view)) => view,
        };
        record.id = view.id.clone();
        record.state = view.state.as_str().into();
        record.approver = view.approver.clone();
        record.reason = view.reason.clone();
        record.approvers = view.approvers.iter().map(|a| a.to_proto()).collect();
        record.approvals_required = view.approvals_required;
        match (step, view.state) {
            (Step::Create, _) if config.mode == ApprovalMode::Async => {
                let message = format!(
                    "this request needs approval (risk {} >= {}); approval {} is pending: once it is approved, send the same request again with header {GRANT_HEADER}: {}",
                    record.risk, record.threshold, view.id, view.id
                );
                let id = Some(view.id.clone());
                self.approval_refused(record, Outcome::ApprovalRequired, &message, id, gw, out);
            }
            (_, State::Approved) => {
                self.approval_passed(record, Outcome::Forwarded, gw, host, out);
            }
            (Step::Redeem, state) => {
                let message = format!("approval {} is {}, not approved", view.id, state.as_str());
                self.approval_refused(record, Outcome::GrantRefused, &message, None, gw, out);
            }
            (_, State::Denied) => {
                let by = if view.approver.is_empty() {
                    "an approver"
                } else {
                    &view.approver
                };
                let message = format!("request denied by {by}: {}", view.reason);
                let id = Some(view.id.clone());
                self.approval_refused(record, Outcome::Denied, &message, id, gw, out);
            }
            (_, State::Expired) => self.approval_expired(&config, record, &view, gw, host, out),
            (_, State::Pending) => {
                let now = now_ms(host);
                if now >= deadline_ms {
                    return self.approval_expired(&config, record, &view, gw, host, out);
                }
                let wait_ms = (deadline_ms - now).min(config.poll_ms);
                let path = format!(
                    "{}/{}?wait_ms={wait_ms}",
                    config.path,
                    url_segment(&view.id)
                );
                let call = approval_call(&config, "GET", path, None, wait_ms + config.timeout_ms);
                out.push(Effect::Call(CallKind::Approval, call));
                self.approval = ApprovalGate::Asking {
                    step: Step::Poll,
                    record,
                    deadline_ms,
                };
            }
        }
    }

    fn approval_passed(
        &mut self,
        mut record: Box<proto::Approval>,
        outcome: Outcome,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        out.push(count(Stat::ApprovalApproved));
        record.outcome = outcome.as_str().into();
        self.approval = ApprovalGate::Passed(record);
        self.resume_gates(gw, host, out);
    }

    fn approval_expired(
        &mut self,
        config: &ApprovalConfig,
        mut record: Box<proto::Approval>,
        view: &View,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        record.state = State::Expired.as_str().into();
        let waited = config.hold_timeout_ms / 1000;
        match config.on_timeout {
            OnTimeout::Forward => {
                out.push(Effect::Log(
                    Level::Warn,
                    format!(
                        "approval {} expired after {waited} s: forwarded (on_timeout: forward)",
                        view.id
                    ),
                ));
                self.approval_passed(record, Outcome::ForwardedExpired, gw, host, out);
            }
            OnTimeout::Deny => {
                let message = format!(
                    "no approval decision within {waited} s (approval {} expired); the request was not forwarded",
                    view.id
                );
                let id = Some(view.id.clone());
                self.approval_refused(record, Outcome::Expired, &message, id, gw, out);
            }
        }
    }

    fn approval_unavailable(
        &mut self,
        config: &ApprovalConfig,
        record: Box<proto::Approval>,
        why: &str,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) {
        out.push(count(Stat::ApprovalUnavailable));
        out.push(Effect::Log(
            Level::Warn,
            format!("approval service ({}): {why}", config.cluster),
        ));
        let message = format!(
            "this request needs approval (risk {} >= {}), but the approval service is unavailable: {why}; the request was not forwarded",
            record.risk, record.threshold
        );
        let id = (!record.id.is_empty()).then(|| record.id.clone());
        self.approval_refused(record, Outcome::Unavailable, &message, id, gw, out);
    }

    /// Answers 403 in the API's shape.
    fn approval_refused(
        &mut self,
        mut record: Box<proto::Approval>,
        outcome: Outcome,
        message: &str,
        approval_id: Option<String>,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) {
        if outcome != Outcome::ApprovalRequired {
            out.push(count(Stat::ApprovalRefused));
        }
        record.outcome = outcome.as_str().into();
        record.detail = message.into();
        self.approval = ApprovalGate::Refused { record, outcome };
        let refusal = Refusal::Approval {
            outcome,
            approval_id,
        };
        let reply = LocalReply::new(self.api, &refusal, message);
        self.respond(reply, gw, out);
    }

    /// The collector answered the write-ahead call: go on, or fail as
    /// configured.
    fn ahead_answered(
        &mut self,
        reply: Reply,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        let AheadGate::InFlight(record) = std::mem::take(&mut self.ahead) else {
            return;
        };
        let result = match reply {
            Reply::Grpc { status, message } => read_export_answer(status, &message),
            Reply::NotSent(status) => Err(format!(
                "cannot call collector cluster {:?}: {status}",
                gw.policy.config.collector.cluster
            )),
            Reply::Http { .. } => Err("an HTTP answer to a gRPC call".into()),
        };
        match result {
            Ok(()) => {
                out.push(count(Stat::WrittenAhead));
                self.ahead = AheadGate::Written(record.record_id);
            }
            Err(why) => {
                if !self.ahead_failed(*record, &why, gw, out) {
                    return;
                }
            }
        }
        self.resume_gates(gw, host, out);
    }

    /// The write-ahead record failed: 503 (fail_closed, `false`), or on
    /// through the outbox (fail_open, `true`).
    fn ahead_failed(
        &mut self,
        record: Record,
        why: &str,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) -> bool {
        out.push(count(Stat::WriteAheadFailed));
        match gw.policy.config.recording.failure_mode {
            FailureMode::FailClosed => {
                out.push(Effect::Log(
                    Level::Warn,
                    format!("write-ahead record failed ({why}): request refused (503)"),
                ));
                self.ahead = AheadGate::Refused(record.record_id);
                let message = format!(
                    "the request could not be recorded before forwarding ({why}); retry later"
                );
                let reply = LocalReply::new(self.api, &Refusal::Unrecorded, &message);
                self.respond(reply, gw, out);
                false
            }
            FailureMode::FailOpen => {
                out.push(Effect::Log(
                    Level::Warn,
                    format!("write-ahead record failed ({why}): forwarded anyway (fail_open); the record follows through the outbox"),
                ));
                self.ahead = AheadGate::Queued(record.record_id.clone());
                out.push(Effect::Enqueue {
                    record: Box::new(record),
                    reserved: false,
                });
                true
            }
        }
    }
}

/// A record id from the host's clock and randomness.
pub(super) fn new_record_id(host: &dyn Host) -> String {
    let millis = u64::try_from(host.now_nanos() / 1_000_000).unwrap_or(0);
    record_id(millis, &host.random())
}

/// Reads the collector's answer to a write-ahead call: `Ok` only when the
/// record was stored (or already was).
fn read_export_answer(status: u32, message: &[u8]) -> Result<(), String> {
    if status != 0 {
        return Err(format!("gRPC status {status}"));
    }
    let answer = ExportResponse::decode(message).map_err(|e| format!("undecodable answer: {e}"))?;
    match answer.rejected.first() {
        Some(r) => Err(format!("record rejected: {}", r.reason)),
        None if answer.accepted + answer.duplicates == 1 => Ok(()),
        None => Err("the collector did not store the record".into()),
    }
}

fn approval_call(
    config: &ApprovalConfig,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    timeout_ms: u64,
) -> Call {
    Call::Http {
        cluster: config.cluster.clone(),
        headers: vec![
            (":method", method.into()),
            (":path", path),
            (":authority", config.authority.clone()),
            ("content-type", "application/json".into()),
            ("accept", "application/json".into()),
        ],
        body,
        timeout_ms,
    }
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
