//! The end of an exchange: its record, stating what happened, goes to the
//! outbox.

use super::gates::{new_record_id, AheadGate, ApprovalGate};
use super::{Effect, Exchange, Gateway, Host, Phase};
use crate::approval::Outcome;
use crate::mask::Hits;
use crate::record::{final_verdict, AnsweredBy, Ending, Verdict};

impl Exchange {
    pub(super) fn end(
        &mut self,
        code_details: Option<String>,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        gw.unpark(self.id);
        let answered_locally = self.answered_locally();
        self.phase = Phase::Ended;
        let Some(mut recorder) = self.recorder.take() else {
            // Never started (no headers): nothing to record.
            if self.reserved {
                self.reserved = false;
                gw.release();
            }
            return;
        };
        let unauthenticated = self
            .identity
            .as_ref()
            .is_some_and(|i| i.status() == tracegate_proto::v1::identity::Status::Rejected);
        recorder.set_identity(self.identity.take());
        if let Some(id) = self.ahead.record_id() {
            recorder.request_record_id = id.to_string();
        }
        recorder.approval = self.approval.record();
        recorder.usage = self.take_usage();
        // The approval gate's verdict, unless it let the request go.
        let approval_refused = match &self.approval {
            ApprovalGate::Off | ApprovalGate::Todo(_) | ApprovalGate::Passed(_) => None,
            ApprovalGate::Asking { record, .. } => Some((Verdict::Denied, &record.detail)),
            ApprovalGate::Refused { outcome, record } => Some((
                if *outcome == Outcome::ApprovalRequired {
                    Verdict::AwaitingApproval
                } else {
                    Verdict::Denied
                },
                &record.detail,
            )),
        }
        .map(|(verdict, detail)| {
            self.inspection.reason = detail.clone();
            verdict
        });
        // Without a response status seen, the proxy tells the code it
        // answered (or 0).
        if recorder.status() == 0 {
            if let Some(code) = host.response_code() {
                recorder.fallback_status(u32::try_from(code).unwrap_or(0));
            }
        }
        // What the record states happened: never "forwarded" for a request
        // that did not go upstream whole. The proxy's response code details
        // tell the upstream's answers (`via_upstream`) from its own.
        let answered_by =
            AnsweredBy::of(answered_locally, recorder.status(), code_details.as_deref());
        if answered_by == AnsweredBy::Proxy {
            recorder.status_detail = code_details.unwrap_or_default();
        }
        recorder.answered_by = answered_by;
        let ending = Ending {
            answered_by,
            unauthenticated,
            unrecorded: matches!(self.ahead, AheadGate::Refused(_)),
            approval_refused,
            upstream: self.upstream,
        };
        self.inspection.verdict = final_verdict(self.inspection.verdict, &ending);
        self.inspection.access = self.access_record(gw);
        if self.inspection.reason.is_empty() {
            self.inspection.reason = match self.inspection.verdict {
                Verdict::Unrecorded => "its record could not be made durable before forwarding (write_ahead, fail_closed): answered 503".into(),
                Verdict::Abandoned => "the client went away before the request was forwarded".into(),
                Verdict::NotForwarded if answered_by == AnsweredBy::Proxy => format!(
                    "the proxy answered {} ({}) before the request was forwarded whole",
                    recorder.status(),
                    recorder.status_detail
                ),
                _ => String::new(),
            };
        }
        recorder.upstream = ending.upstream;
        if !self.tokens.is_empty() {
            // The client got tokenized values back; the record must not.
            if let Some(m) = gw.policy.inspector.as_ref().and_then(|i| i.masker()) {
                let mut discard = Hits::default();
                let tokens = &mut self.tokens;
                recorder
                    .response_body
                    .map_text(|t| m.mask(t, tokens, &mut discard));
            }
        }
        if self.body == super::BodyMode::Inspected
            || !self.inspection.request.is_empty()
            || !self.inspection.response.is_empty()
            || self.inspection.verdict != Verdict::Forwarded
            || self.inspection.access.is_some()
        {
            recorder.inspection = Some(self.inspection.to_proto());
        }
        let mut record = recorder.finish(new_record_id(host), gw.source.clone(), host.now_nanos());
        // The policy this exchange was decided under: this gateway's, which
        // a reload never changes under a request in flight.
        record.policy = Some(gw.policy.reference.clone());
        out.push(Effect::Enqueue {
            record: Box::new(record),
            reserved: self.reserved,
        });
        self.reserved = false;
    }
}
