//! Write-ahead recording (`recording.mode: write_ahead`): a record of the
//! request is acknowledged durable by the collector before the request is
//! forwarded.
//!
//! The call is made from whichever context is running when the request is
//! ready: the request's own (its answer arrives in the request's
//! `on_grpc_call_response`), or the root's when the request was parked for
//! JWKS (the root looks the token up in `Shared::ahead_calls`). Both paths
//! end in `answered`, acting on the effective request.

use prost::Message;
use proxy_wasm::types::LogLevel;
use std::time::Duration;
use tracegate_policy::config::FailureMode;
use tracegate_policy::inspect::error_body;
use tracegate_policy::Record;
use tracegate_proto::v1::{ExportRequest, ExportResponse};
use tracegate_proto::{EXPORT_METHOD, RECORD_SERVICE};

use crate::auth::IdentitySlot;
use crate::host;
use crate::root::Shared;

/// Progress of one request's write-ahead record.
#[derive(Debug, Default)]
pub enum Ahead {
    /// Not started (async mode, or the request is not finished yet).
    #[default]
    Off,
    /// Built when the request ended while its JWT decision waited for keys;
    /// sent once the caller is known.
    Deferred(Box<Record>),
    /// Sent; the request waits for the acknowledgement.
    InFlight(Box<Record>),
    /// Acknowledged durable: the request went on.
    Written(String),
    /// The call failed and `fail_open` let the request go on; the record
    /// travels later through the outbox.
    Queued(String),
}

impl Ahead {
    /// Whether the request must still wait for it.
    pub fn pending(&self) -> bool {
        matches!(self, Ahead::Deferred(_) | Ahead::InFlight(_))
    }

    pub fn take_deferred(&mut self) -> Option<Record> {
        match std::mem::take(self) {
            Ahead::Deferred(r) => Some(*r),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The written-ahead record's id, for the exchange's record to name.
    pub fn record_id(&self) -> Option<&str> {
        match self {
            Ahead::Off => None,
            Ahead::Deferred(r) | Ahead::InFlight(r) => Some(&r.record_id),
            Ahead::Written(id) | Ahead::Queued(id) => Some(id),
        }
    }
}

pub enum Start {
    /// The call is made (its token); the request waits.
    Waiting(u32),
    /// Not written ahead but allowed on (`fail_open`).
    Proceed,
    /// Answered 503 (`fail_closed`).
    Refused,
}

/// Sends the request's record ahead, on the current (effective) request.
pub fn start(shared: &Shared, slot: &IdentitySlot, mut record: Record) -> Start {
    record.identity = slot.borrow().identity.clone();
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
            Start::Waiting(token)
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
pub fn answered(shared: &Shared, slot: &IdentitySlot, result: Result<(), String>) {
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
            if let Start::Refused = fail(shared, slot, *record, &why) {
                return;
            }
        }
    }
    let s = slot.borrow();
    if !s.parked && !s.held_otherwise() {
        drop(s);
        host::resume_request();
    }
}

fn fail(shared: &Shared, slot: &IdentitySlot, record: Record, why: &str) -> Start {
    shared.metrics.write_ahead_failed.add(1);
    match shared.config.recording.failure_mode {
        FailureMode::FailClosed => {
            host::log(
                LogLevel::Warn,
                &format!("write-ahead record failed ({why}): request refused (503)"),
            );
            let mut s = slot.borrow_mut();
            s.answered = true;
            let api = s.api;
            drop(s);
            let message =
                format!("the request could not be recorded before forwarding ({why}); retry later");
            host::send_response(
                503,
                &[("content-type", "application/json"), ("retry-after", "1")],
                error_body(api, unavailable_kind(api), &message, None).as_bytes(),
            );
            Start::Refused
        }
        FailureMode::FailOpen => {
            host::log(
                LogLevel::Warn,
                &format!("write-ahead record failed ({why}): forwarded anyway (fail_open); the record follows through the outbox"),
            );
            let id = record.record_id.clone();
            shared.enqueue(record, false);
            slot.borrow_mut().ahead = Ahead::Queued(id);
            Start::Proceed
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
