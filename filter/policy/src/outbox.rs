//! Per-worker batching of records on their way to the collector.
//!
//! Each worker's gateway owns one `Outbox`. Exchanges push finished
//! records; the worker's timer asks for due batches, sends them, and
//! reports each batch's fate. A batch stays in the outbox until the collector
//! acknowledges it, so a failed or unanswered export is retried (after a
//! backoff), never lost. The buffer is bounded: once full, new records are
//! refused and the caller counts them.

use prost::Message;
use std::collections::{BTreeMap, VecDeque};
use tracegate_proto::v1::{ExportRequest, Record};

use crate::config::RecordingConfig;

/// Export calls in flight at once per worker.
pub const MAX_IN_FLIGHT: usize = 4;
const BACKOFF_START_NANOS: u64 = 100_000_000;
const BACKOFF_MAX_NANOS: u64 = 30_000_000_000;

/// Identifies a batch between `take_batch` and `acknowledge`/`fail`.
pub type BatchId = u64;

/// A record as it will travel: already encoded as one `records` entry of an
/// `ExportRequest` (tag, length, message), so a batch is the concatenation
/// of its entries and a retry re-sends the same bytes.
#[derive(Debug)]
struct Queued {
    entry: Vec<u8>,
    encoded_len: usize,
    enqueued_at: u64,
}

/// A batch ready to send: its id and the encoded `ExportRequest` (held by
/// the outbox until the batch is acknowledged or failed).
#[derive(Debug)]
pub struct Batch<'a> {
    pub id: BatchId,
    pub records: usize,
    pub payload: &'a [u8],
}

/// A batch sent and not yet answered. Only its encoded payload is kept (a
/// record's bytes are held once, not once queued and again as sent); a
/// failed batch is split back into its records by their lengths.
#[derive(Debug)]
struct InFlight {
    payload: Vec<u8>,
    /// Each record's encoded length and enqueue time, in payload order.
    records: Vec<(usize, u64)>,
}

/// The buffer is full; the record was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct BufferFull;

#[derive(Debug)]
pub struct Outbox {
    limits: RecordingConfig,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    in_flight: BTreeMap<BatchId, InFlight>,
    in_flight_records: usize,
    in_flight_bytes: usize,
    next_batch: BatchId,
    consecutive_failures: u32,
    retry_at: u64,
    /// Send whatever is queued without waiting for a batch to fill or age:
    /// the configuration is retiring (`drain`).
    draining: bool,
}

impl Outbox {
    pub fn new(limits: RecordingConfig) -> Self {
        Self {
            limits,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: BTreeMap::new(),
            in_flight_records: 0,
            in_flight_bytes: 0,
            next_batch: 1,
            consecutive_failures: 0,
            retry_at: 0,
            draining: false,
        }
    }

    /// From now on every queued record is due at once (backoff and call
    /// slots still apply): the configuration this outbox belongs to was
    /// replaced, and its records must leave before it does.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Records held: queued plus in flight.
    pub fn len(&self) -> usize {
        self.queue.len() + self.in_flight_records
    }

    /// Whether records wait to be sent and no backoff holds them back.
    pub fn waiting(&self, now: u64) -> bool {
        !self.queue.is_empty() && now >= self.retry_at
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoded bytes held: queued plus in flight.
    pub fn held_bytes(&self) -> usize {
        self.queued_bytes + self.in_flight_bytes
    }

    /// Whether `reserved` more records (promised to requests under way) and
    /// one more still fit, and the bytes held are under their bound.
    pub fn has_room(&self, reserved: usize) -> bool {
        self.len() + reserved < self.limits.buffer_max_records
            && self.held_bytes() < self.limits.buffer_max_bytes
    }

    /// Takes a record with no place reserved for it (`fail_open`): refused
    /// once either bound is reached.
    pub fn push(&mut self, record: Record, now: u64) -> Result<(), BufferFull> {
        if self.held_bytes() >= self.limits.buffer_max_bytes {
            return Err(BufferFull);
        }
        self.push_reserved(record, now)
    }

    /// Takes the record of a request admitted by `has_room`: only the count
    /// can refuse it (a reservation keeps a place), the bytes may overshoot
    /// their bound by the records of requests admitted under it.
    pub fn push_reserved(&mut self, record: Record, now: u64) -> Result<(), BufferFull> {
        if self.len() >= self.limits.buffer_max_records {
            return Err(BufferFull);
        }
        let request = ExportRequest {
            records: vec![record],
        };
        let entry = request.encode_to_vec();
        let encoded_len = entry.len();
        self.queued_bytes += encoded_len;
        self.queue.push_back(Queued {
            entry,
            encoded_len,
            enqueued_at: now,
        });
        Ok(())
    }

    /// Whether a batch should be sent now: enough records or bytes, or the
    /// oldest record has waited a flush interval; and no backoff is running
    /// and a call slot is free.
    pub fn is_due(&self, now: u64) -> bool {
        let Some(oldest) = self.queue.front() else {
            return false;
        };
        if self.in_flight.len() >= MAX_IN_FLIGHT || now < self.retry_at {
            return false;
        }
        self.draining
            || self.queue.len() >= self.limits.batch_max_records
            || self.queued_bytes >= self.limits.batch_max_bytes
            || now.saturating_sub(oldest.enqueued_at) >= self.limits.flush_interval_ms * 1_000_000
    }

    /// Takes the next batch if one is due: up to `batch_max_records` records
    /// and `batch_max_bytes` bytes, and always at least one record.
    pub fn take_batch(&mut self, now: u64) -> Option<Batch<'_>> {
        if !self.is_due(now) {
            return None;
        }
        // Count first, so the payload is allocated once at its size and the
        // entries are freed as they are copied in (a batch of one sends its
        // entry as it is, without a copy).
        let (mut n, mut bytes) = (0, 0);
        for next in &self.queue {
            let full = n >= self.limits.batch_max_records
                || (n > 0 && bytes + next.encoded_len > self.limits.batch_max_bytes);
            if full {
                break;
            }
            n += 1;
            bytes += next.encoded_len;
        }
        let mut records = Vec::with_capacity(n);
        let mut payload = Vec::new();
        for q in self.queue.drain(..n) {
            if n == 1 {
                payload = q.entry;
            } else {
                if payload.is_empty() {
                    payload.reserve_exact(bytes);
                }
                payload.extend_from_slice(&q.entry);
            }
            records.push((q.encoded_len, q.enqueued_at));
        }
        self.queued_bytes -= payload.len();
        self.in_flight_bytes += payload.len();
        let id = self.next_batch;
        self.next_batch += 1;
        let n = records.len();
        self.in_flight_records += n;
        let sent = self
            .in_flight
            .entry(id)
            .or_insert(InFlight { payload, records });
        Some(Batch {
            id,
            records: n,
            payload: &sent.payload,
        })
    }

    /// The collector stored the batch. Returns how many records it held.
    pub fn acknowledge(&mut self, id: BatchId) -> usize {
        let Some(batch) = self.in_flight.remove(&id) else {
            return 0;
        };
        let n = batch.records.len();
        self.in_flight_records -= n;
        self.in_flight_bytes -= batch.payload.len();
        self.consecutive_failures = 0;
        self.retry_at = 0;
        n
    }

    /// The export failed or was never answered: its records go back to the
    /// front of the queue, in their order, and sending pauses for a backoff
    /// that doubles with each consecutive failure.
    pub fn fail(&mut self, id: BatchId, now: u64) -> usize {
        let Some(batch) = self.in_flight.remove(&id) else {
            return 0;
        };
        let n = batch.records.len();
        self.in_flight_records -= n;
        self.in_flight_bytes -= batch.payload.len();
        let mut end = batch.payload.len();
        for &(encoded_len, enqueued_at) in batch.records.iter().rev() {
            let start = end - encoded_len;
            self.queued_bytes += encoded_len;
            self.queue.push_front(Queued {
                entry: batch.payload[start..end].to_vec(),
                encoded_len,
                enqueued_at,
            });
            end = start;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let shift = (self.consecutive_failures - 1).min(16);
        let backoff = (BACKOFF_START_NANOS << shift).min(BACKOFF_MAX_NANOS);
        self.retry_at = now.saturating_add(backoff);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const MS: u64 = 1_000_000;

    fn limits() -> RecordingConfig {
        RecordingConfig {
            batch_max_records: 3,
            batch_max_bytes: 1 << 20,
            flush_interval_ms: 100,
            buffer_max_records: 5,
            ..RecordingConfig::default()
        }
    }

    fn rec(i: u32) -> Record {
        Record {
            record_id: format!("r{i}"),
            ..Record::default()
        }
    }

    /// A taken batch, owned, so the test can go on using the outbox.
    struct Taken {
        id: BatchId,
        records: usize,
        ids: Vec<String>,
        bytes: usize,
    }

    fn take(o: &mut Outbox, now: u64) -> Option<Taken> {
        let b = o.take_batch(now)?;
        let ids = ExportRequest::decode(b.payload)
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.record_id)
            .collect();
        Some(Taken {
            id: b.id,
            records: b.records,
            ids,
            bytes: b.payload.len(),
        })
    }

    fn ids(batch: &Taken) -> Vec<String> {
        batch.ids.clone()
    }

    #[test]
    fn flushes_by_size() {
        let mut o = Outbox::new(limits());
        o.push(rec(1), 0).unwrap();
        o.push(rec(2), 0).unwrap();
        assert!(take(&mut o, 0).is_none(), "two records, no time passed");
        o.push(rec(3), 0).unwrap();
        o.push(rec(4), 0).unwrap();
        let b = take(&mut o, 0).unwrap();
        assert_eq!(ids(&b), ["r1", "r2", "r3"]);
        assert!(take(&mut o, 0).is_none(), "one record left, not yet due");
    }

    #[test]
    fn flushes_by_bytes() {
        let mut o = Outbox::new(RecordingConfig {
            batch_max_bytes: 1024,
            batch_max_records: 100,
            buffer_max_records: 100,
            ..limits()
        });
        let big = |i| Record {
            record_id: format!("r{i}"),
            path: "x".repeat(600),
            ..Record::default()
        };
        o.push(big(1), 0).unwrap();
        assert!(take(&mut o, 0).is_none());
        o.push(big(2), 0).unwrap();
        let b = take(&mut o, 0).unwrap();
        assert_eq!(ids(&b), ["r1"], "a batch never exceeds batch_max_bytes");
        assert!(b.bytes <= 1024);
    }

    #[test]
    fn records_wait_unless_a_backoff_holds_them() {
        let mut o = Outbox::new(limits());
        assert!(!o.waiting(0), "nothing queued");
        o.push(rec(1), 0).unwrap();
        assert!(o.waiting(0));
        let b = take(&mut o, 100 * MS).unwrap();
        assert!(!o.waiting(100 * MS), "in flight, not waiting");
        o.fail(b.id, 100 * MS);
        assert!(!o.waiting(150 * MS), "backing off");
        assert!(o.waiting(200 * MS));
    }

    #[test]
    fn a_draining_outbox_sends_at_once() {
        let mut o = Outbox::new(limits());
        o.push(rec(1), 0).unwrap();
        assert!(take(&mut o, MS).is_none(), "neither full nor old");
        o.drain();
        let b = take(&mut o, MS).expect("due at once");
        assert_eq!(b.records, 1);
        o.fail(b.id, MS);
        assert!(take(&mut o, 2 * MS).is_none(), "the backoff still applies");
        assert!(take(&mut o, 200 * MS).is_some());
    }

    #[test]
    fn flushes_by_age() {
        let mut o = Outbox::new(limits());
        o.push(rec(1), 10 * MS).unwrap();
        assert!(take(&mut o, 109 * MS).is_none());
        assert_eq!(ids(&take(&mut o, 110 * MS).unwrap()), ["r1"]);
    }

    #[test]
    fn a_record_larger_than_a_batch_still_goes_alone() {
        let mut o = Outbox::new(RecordingConfig {
            batch_max_bytes: 1024,
            ..limits()
        });
        o.push(
            Record {
                path: "y".repeat(5000),
                ..rec(1)
            },
            0,
        )
        .unwrap();
        let b = take(&mut o, 0).unwrap();
        assert_eq!(b.records, 1);
    }

    #[test]
    fn bounded_buffer_counts_in_flight_records() {
        let mut o = Outbox::new(limits());
        for i in 0..5 {
            o.push(rec(i), 0).unwrap();
        }
        assert_eq!(o.push(rec(9), 0), Err(BufferFull));
        let b = take(&mut o, 0).unwrap();
        assert_eq!(
            o.push(rec(9), 0),
            Err(BufferFull),
            "in-flight records still occupy the buffer"
        );
        assert_eq!(o.acknowledge(b.id), 3);
        o.push(rec(9), 0).unwrap();
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn room_counts_reservations() {
        let mut o = Outbox::new(limits());
        for i in 0..3 {
            o.push(rec(i), 0).unwrap();
        }
        assert!(o.has_room(1));
        assert!(!o.has_room(2), "3 held + 2 promised = the limit of 5");
    }

    #[test]
    fn failed_batch_is_retried_first_after_backoff() {
        let mut o = Outbox::new(limits());
        for i in 1..=4 {
            o.push(rec(i), 0).unwrap();
        }
        let b = take(&mut o, 0).unwrap();
        assert_eq!(o.fail(b.id, 0), 3);
        assert!(
            take(&mut o, 99 * MS).is_none(),
            "backoff of 100 ms after the first failure"
        );
        let b = take(&mut o, 100 * MS).unwrap();
        assert_eq!(ids(&b), ["r1", "r2", "r3"], "order kept");
        o.fail(b.id, 100 * MS);
        assert!(take(&mut o, 299 * MS).is_none(), "backoff doubled");
        let b = take(&mut o, 300 * MS).unwrap();
        o.acknowledge(b.id);
        assert_eq!(
            ids(&take(&mut o, 300 * MS).unwrap()),
            ["r4"],
            "backoff reset by success"
        );
    }

    #[test]
    fn in_flight_calls_are_limited() {
        let mut o = Outbox::new(RecordingConfig {
            batch_max_records: 1,
            buffer_max_records: 100,
            ..limits()
        });
        for i in 0..10 {
            o.push(rec(i), 0).unwrap();
        }
        let batches: Vec<_> = std::iter::from_fn(|| take(&mut o, 0)).collect();
        assert_eq!(batches.len(), MAX_IN_FLIGHT);
        o.acknowledge(batches[0].id);
        assert!(take(&mut o, 0).is_some());
    }

    #[test]
    fn unknown_batch_ids_are_ignored() {
        let mut o = Outbox::new(limits());
        assert_eq!(o.acknowledge(42), 0);
        assert_eq!(o.fail(42, 0), 0);
        assert!(o.is_empty());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Push,
            Tick(u64),
            Ack(usize),
            Fail(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Push),
                2 => (0u64..300).prop_map(Op::Tick),
                1 => any::<usize>().prop_map(Op::Ack),
                1 => any::<usize>().prop_map(Op::Fail),
            ]
        }

        proptest! {
            /// Whatever happens, every record pushed is acknowledged exactly
            /// once or still held; nothing is lost or duplicated.
            #[test]
            fn nothing_lost_nothing_duplicated(ops in proptest::collection::vec(op(), 1..200)) {
                let mut o = Outbox::new(limits());
                let mut now = 0;
                let mut next = 0u32;
                let mut accepted = Vec::new();
                let mut acked = Vec::new();
                let mut flying: Vec<(BatchId, Vec<String>)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Push => {
                            if o.push(rec(next), now).is_ok() {
                                accepted.push(format!("r{next}"));
                            }
                            next += 1;
                        }
                        Op::Tick(ms) => {
                            now += ms * MS;
                            while let Some(b) = take(&mut o, now) {
                                flying.push((b.id, ids(&b)));
                            }
                        }
                        Op::Ack(i) if !flying.is_empty() => {
                            let (id, batch) = flying.remove(i % flying.len());
                            prop_assert_eq!(o.acknowledge(id), batch.len());
                            acked.extend(batch);
                        }
                        Op::Fail(i) if !flying.is_empty() => {
                            let (id, _) = flying.remove(i % flying.len());
                            o.fail(id, now);
                        }
                        _ => {}
                    }
                    prop_assert!(o.len() <= limits().buffer_max_records);
                }
                // Drain: everything still held must come out exactly once.
                for (id, batch) in flying.drain(..) {
                    o.acknowledge(id);
                    acked.extend(batch);
                }
                now += 3_600_000 * MS;
                while let Some(b) = take(&mut o, now) {
                    acked.extend(ids(&b));
                    o.acknowledge(b.id);
                }
                prop_assert!(o.is_empty());
                prop_assert_eq!(o.held_bytes(), 0, "every byte accounted for");
                acked.sort();
                accepted.sort();
                prop_assert_eq!(acked, accepted);
            }
        }
    }
}
