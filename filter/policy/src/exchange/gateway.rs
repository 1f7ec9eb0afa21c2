//! What one worker's gateway knows across its exchanges: the compiled
//! policy, the JWT key and token caches, the record outbox with the places
//! promised to requests under way, and the requests parked for signing keys.
//! Pure: the filter's worker owns one and carries out the effects it asks for.

use tracegate_proto::v1::Record;

use super::{count, Effect, Level, Stat};
use crate::config::FailureMode;
use crate::outbox::Outbox;
use crate::policy::Policy;

/// Requests one worker parks while keys are fetched; more are refused (401,
/// jwks_unavailable) rather than held without bound.
pub const MAX_PARKED: usize = 1024;

/// Whether a new request may be served, as far as recording goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A buffer place is reserved for its record (fail_closed).
    Reserved,
    /// Served without a reservation (fail_open: its record may be dropped).
    Unreserved,
    /// No place for its record: answer 503 (fail_closed).
    Refused,
}

/// A request paused until its provider's keys arrive.
#[derive(Debug)]
struct Parked {
    exchange: u32,
    provider: usize,
}

#[derive(Debug)]
pub struct Gateway {
    pub policy: Policy,
    /// `tracegate-filter/<version> (<plugin name>)`, stamped on every record.
    pub source: String,
    pub outbox: Outbox,
    /// Buffer places promised to requests under way (fail_closed), so their
    /// records always fit when they end.
    reserved: usize,
    parked: Vec<Parked>,
    /// Records dropped and requests refused for want of buffer; logged at
    /// powers of two and every thousandth, so an outage does not flood the log.
    dropped: u64,
    refused: u64,
}

/// Whether a count is worth a log line: 1, 2, 4, 8, … and every thousandth.
fn worth_logging(n: u64) -> bool {
    n.is_power_of_two() || n.is_multiple_of(1000)
}

impl Gateway {
    pub fn new(policy: Policy, source: String) -> Gateway {
        Gateway {
            outbox: Outbox::new(policy.config.recording.clone()),
            policy,
            source,
            reserved: 0,
            parked: Vec::new(),
            dropped: 0,
            refused: 0,
        }
    }

    /// Admits a new request for recording. With `fail_closed` it reserves a
    /// buffer place for its record, or refuses when there is none; with
    /// `fail_open` it always admits.
    pub fn admit(&mut self, out: &mut Vec<Effect>) -> Admission {
        if self.policy.config.recording.failure_mode == FailureMode::FailOpen {
            return Admission::Unreserved;
        }
        if self.outbox.has_room(self.reserved) {
            self.reserved += 1;
            return Admission::Reserved;
        }
        out.push(count(Stat::UnrecordedRefused));
        self.refused += 1;
        if worth_logging(self.refused) {
            out.push(Effect::Log(
                Level::Warn,
                format!(
                    "record buffer full (collector slow or down): {} requests refused with 503 by this worker (recording.failure_mode fail_closed)",
                    self.refused
                ),
            ));
        }
        Admission::Refused
    }

    /// Gives back a reservation whose record will not come.
    pub fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Hands a record to the outbox, using the request's reservation if it
    /// has one; counts it if the buffer is full (fail_open only: a reserved
    /// place is always there, even when the bytes held are over their bound).
    pub fn enqueue(&mut self, record: Record, reserved: bool, now: u64, out: &mut Vec<Effect>) {
        let taken = if reserved {
            self.release();
            self.outbox.push_reserved(record, now)
        } else {
            self.outbox.push(record, now)
        };
        if taken.is_ok() {
            return;
        }
        out.push(count(Stat::RecordsDropped));
        self.dropped += 1;
        if worth_logging(self.dropped) {
            out.push(Effect::Log(
                Level::Warn,
                format!(
                    "record buffer full (collector slow or down): {} records dropped by this worker",
                    self.dropped
                ),
            ));
        }
    }

    /// Parks an exchange until `provider`'s keys arrive; `false` when too
    /// many already wait.
    pub(super) fn park(&mut self, exchange: u32, provider: usize) -> bool {
        if self.parked.len() >= MAX_PARKED {
            return false;
        }
        self.parked.push(Parked { exchange, provider });
        true
    }

    /// Forgets an exchange that ended or was answered while parked.
    pub fn unpark(&mut self, exchange: u32) {
        self.parked.retain(|p| p.exchange != exchange);
    }

    /// Buffer places promised to requests under way (for tests).
    pub fn reservations(&self) -> usize {
        self.reserved
    }

    /// Exchanges parked (for tests and stats).
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Takes a JWKS fetch's answer (the body of a 200, or why not); returns
    /// the exchanges that waited on this provider, each to be sent
    /// `Event::KeysReady`.
    pub fn keys_fetched(
        &mut self,
        provider: usize,
        result: Result<&[u8], String>,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Vec<u32> {
        if let Some(auth) = self.policy.auth.as_mut() {
            let outcome = auth.fetched(provider, result, now_ms);
            let name = auth.provider_name(provider).to_string();
            match outcome {
                Ok(report) => {
                    out.push(count(Stat::JwksFetched));
                    if report.changed {
                        out.push(Effect::Log(
                            Level::Info,
                            format!("JWKS of provider {name}: {} keys", report.keys),
                        ));
                    }
                    for skipped in &report.skipped {
                        out.push(Effect::Log(
                            Level::Warn,
                            format!("JWKS of provider {name}: skipped {skipped}"),
                        ));
                    }
                }
                Err(e) => {
                    out.push(count(Stat::JwksFetchFailed));
                    out.push(Effect::Log(
                        Level::Warn,
                        format!("JWKS of provider {name}: fetch failed: {e}"),
                    ));
                }
            }
        }
        let mut ready = Vec::new();
        self.parked.retain(|p| {
            if p.provider == provider {
                ready.push(p.exchange);
                false
            } else {
                true
            }
        });
        ready
    }
}
