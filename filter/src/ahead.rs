//! Write-ahead recording (`recording.mode: write_ahead`): a record of the
//! request is acknowledged durable by the collector before the request is
//! forwarded.
//!
//! A gate (see gates.rs): the call is made by whichever context runs the
//! gates, and its answer ends in `answered`, acting on the effective request.

use prost::Message;
use proxy_wasm::types::LogLevel;
use std::time::Duration;
use tracegate_policy::config::FailureMode;
use tracegate_policy::inspect::error_body;
use tracegate_policy::Record;
use tracegate_proto::v1::{ExportRequest, ExportResponse};
use tracegate_proto::{EXPORT_METHOD, RECORD_SERVICE};

use crate::gates::{self, track_call, Gate, Purpose, RequestSlot, Via};
use crate::host;
use crate::root::Shared;

/// Progress of one request's write-ahead record.
#[derive(Debug, Default)]
pub enum Ahead {
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

impl Ahead {
    /// The written-ahead record's id, for the exchange's record to name.
    pub fn record_id(&self) -> Option<&str> {
        match self {
            Ahead::Off | Ahead::Todo(_) => None,
            Ahead::InFlight(r) => Some(&r.record_id),
            Ahead::Written(id) | Ahead::Queued(id) | Ahead::Refused(id) => Some(id),
        }
    }
}

/// The write-ahead gate.
pub fn advance(shared: &Shared, slot: &RequestSlot, via: Via) -> Gate {
    let state = std::mem::take(&mut slot.borrow_mut().ahead);
    let mut record = match state {
        Ahead::Todo(record) => *record,
        Ahead::InFlight(_) => {
            slot.borrow_mut().ahead = state;
            return Gate::Wait;
        }
        done => {
            slot.borrow_mut().ahead = done;
            return Gate::Pass;
        }
    };
    record.identity = slot.borrow().identity.clone();
    record.approval = slot.borrow().approval.record();
    let c = &shared.config.collector;
    let payload = ExportRequest {
        records: vec![record.clone()],
    }
    .encode_to_vec();
    match host::grpc_call(
        &c.cluster,
        RECORD_SERVICE,
        EXPORT_METHOD,
        &payload,
        Duration::from_millis(c.timeout_ms),
    ) {
        Ok(token) => {
            slot.borrow_mut().ahead = Ahead::InFlight(Box::new(record));
            track_call(shared, slot, via, token, Purpose::WriteAhead);
            Gate::Wait
        }
        Err(status) => fail(
            shared,
            slot,
            record,
            &format!("cannot call collector cluster {:?}: {status}", c.cluster),
        ),
    }
}

/// Reads the collector's answer to a write-ahead call: `Ok` only when the
/// record was stored (or already was).
pub fn read_answer(status_code: u32, response_size: usize) -> Result<(), String> {
    if status_code != 0 {
        return Err(format!("gRPC status {status_code}"));
    }
    let bytes = host::grpc_response(response_size).unwrap_or_default();
    let answer =
        ExportResponse::decode(bytes.as_slice()).map_err(|e| format!("undecodable answer: {e}"))?;
    match answer.rejected.first() {
        Some(r) => Err(format!("record rejected: {}", r.reason)),
        None if answer.accepted + answer.duplicates == 1 => Ok(()),
        None => Err("the collector did not store the record".into()),
    }
}

/// The collector answered the current (effective) request's write-ahead
/// call: go on, or fail as configured.
pub fn answered(shared: &Shared, slot: &RequestSlot, via: Via, result: Result<(), String>) {
    let state = std::mem::take(&mut slot.borrow_mut().ahead);
    let Ahead::InFlight(record) = state else {
        slot.borrow_mut().ahead = state;
        return;
    };
    match result {
        Ok(()) => {
            shared.metrics.written_ahead.add(1);
            slot.borrow_mut().ahead = Ahead::Written(record.record_id);
        }
        Err(why) => {
            if let Gate::Stop = fail(shared, slot, *record, &why) {
                return;
            }
        }
    }
    gates::resume(shared, slot, via);
}

fn fail(shared: &Shared, slot: &RequestSlot, record: Record, why: &str) -> Gate {
    shared.metrics.write_ahead_failed.add(1);
    match shared.config.recording.failure_mode {
        FailureMode::FailClosed => {
            host::log(
                LogLevel::Warn,
                &format!("write-ahead record failed ({why}): request refused (503)"),
            );
            let mut s = slot.borrow_mut();
            s.answered = true;
            s.ahead = Ahead::Refused(record.record_id);
            let api = s.api;
            drop(s);
            let message =
                format!("the request could not be recorded before forwarding ({why}); retry later");
            host::send_response(
                503,
                &[("content-type", "application/json"), ("retry-after", "1")],
                error_body(api, unavailable_kind(api), &message, None).as_bytes(),
            );
            Gate::Stop
        }
        FailureMode::FailOpen => {
            host::log(
                LogLevel::Warn,
                &format!("write-ahead record failed ({why}): forwarded anyway (fail_open); the record follows through the outbox"),
            );
            let id = record.record_id.clone();
            shared.enqueue(record, false);
            slot.borrow_mut().ahead = Ahead::Queued(id);
            Gate::Pass
        }
    }
}

/// The error type a 503 carries in each API's shape.
pub fn unavailable_kind(api: tracegate_policy::llm::Api) -> &'static str {
    match api {
        tracegate_policy::llm::Api::Anthropic => "overloaded_error",
        _ => "service_unavailable",
    }
}
