//! The one writer of a data directory: group commit, segment roll and seal,
//! retention, and the signed HEAD, after recovery at start-up (`recover`).
//!
//! Durability rule: `append` returns only after the batch's frames are
//! written with one `write` and made durable with one `fdatasync`; only then
//! does the gRPC layer acknowledge. Any write or sync error is returned and
//! the server exits without acknowledging (a failed fsync may have dropped
//! dirty pages; retrying it would lie).

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracegate_proto::v1::ledger_entry::Entry;
use tracegate_proto::v1::{
    Alert, AlertDelivered, ApprovalEvent, LedgerEntry, Record, RejectedRecord, Retention,
};

use super::frame::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use super::index::SegmentIndex;
use super::layout::{sync_dir, write_atomic, Layout};
use super::merkle::{self, leaf_hash};
use super::recover::{self, Resumable, Sealed};
use super::seal::{self, Head, Seal};
use super::Hash;
use crate::alerts::deliver::Delivered;
use crate::alerts::eval::Evaluator;
use crate::metrics::Metrics;

/// A record larger than this is refused (the filter's limits keep records far below).
pub const MAX_RECORD_BYTES: usize = 32 << 20;
/// HEAD is rewritten at most this often (and at every seal and at shutdown).
const HEAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Options {
    /// Roll to a new segment once the open one holds this many bytes...
    pub segment_bytes: u64,
    /// ...or its first record is this old.
    pub segment_age: Duration,
    /// Delete sealed segments whose newest record is older than this.
    pub retain_age: Option<Duration>,
    /// Delete the oldest sealed segments while all segments exceed this.
    pub retain_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(3600),
            retain_age: None,
            retain_bytes: None,
        }
    }
}

/// What happened to one export call's records.
#[derive(Debug, Default, PartialEq)]
pub struct Appended {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: Vec<RejectedRecord>,
}

struct OpenSegment {
    number: u64,
    file: File,
    len: u64,
    first_seq: u64,
    /// Wall clock when this segment was opened (for the age roll).
    opened_unix_nanos: i64,
    leaves: Vec<Hash>,
    first_time: i64,
    last_time: i64,
    index: SegmentIndex,
}

pub struct Ledger {
    layout: Layout,
    key: SigningKey,
    opts: Options,
    open: OpenSegment,
    next_seq: u64,
    chain: Hash,
    last_seal: Hash,
    ids: HashSet<String>,
    sealed: VecDeque<Sealed>,
    /// Bytes of the sealed segments held (kept with `sealed`).
    sealed_bytes: u64,
    head_written: Option<Instant>,
    /// Sequence HEAD names.
    head_seq: u64,
    retention_checked: Instant,
    /// What recovery found; the server prints it.
    pub findings: Vec<String>,
    /// Every approval event held, in stored order (the approval service
    /// rebuilds its state from them).
    pub approval_events: Vec<ApprovalEvent>,
    /// Where commits, the store's shape and stored records are counted
    /// (`serve --metrics`).
    metrics: Option<Arc<Metrics>>,
    /// When the last seal was written (Unix nanoseconds; 0: none known).
    last_seal_unix_nanos: i64,
    /// Every alert held, and which webhooks acknowledged which (delivery
    /// resumes from them at start-up).
    pub alerts: Vec<Alert>,
    pub alerts_delivered: Delivered,
    /// The alert rules and where raised alerts go once durable.
    alerting: Option<Alerting>,
    _lock: File,
}

/// Alert rules evaluated on what the writer stores for the first time.
pub struct Alerting {
    pub evaluator: Evaluator,
    /// To the delivery thread (unbounded: the writer never waits on it).
    pub out: std::sync::mpsc::Sender<Alert>,
}

fn alert_entry<'a>(a: &Alert) -> Pending<'a> {
    Pending {
        payload: LedgerEntry {
            entry: Some(Entry::Alert(a.clone())),
        }
        .encode_to_vec(),
        indexed: Indexed::Nothing,
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Frames encoded for one write, and what the state becomes once they are
/// durable.
struct Batch {
    bytes: Vec<u8>,
    /// Sequence number and chain hash after the last frame.
    seq: u64,
    chain: Hash,
    leaves: Vec<Hash>,
    /// Offset of each frame in the segment.
    offsets: Vec<u64>,
}

/// One entry about to be written, and what the session index learns of it.
struct Pending<'a> {
    payload: Vec<u8>,
    indexed: Indexed<'a>,
}

enum Indexed<'a> {
    Record(&'a Record),
    Approval(&'a str),
    Nothing,
}

impl Ledger {
    /// Opens (creating if needed) a data directory for writing: takes its
    /// lock, recovers it (`recover`: torn tail cut, corruption quarantined,
    /// record ids and indexes rebuilt), then continues the last segment or
    /// starts a new one.
    pub fn open(layout: Layout, key: SigningKey, opts: Options) -> Result<Ledger> {
        let lock = lock(&layout)?;
        let found = recover::recover(&layout)?;
        let open = match found.resume {
            Some(last) => OpenSegment::resume(&layout, last)?,
            None => OpenSegment::create(&layout, found.next_segment, found.next_seq, found.chain)?,
        };
        Ok(Ledger {
            layout,
            key,
            opts,
            open,
            next_seq: found.next_seq,
            chain: found.chain,
            last_seal: found.last_seal,
            ids: found.ids,
            sealed_bytes: found.sealed.iter().map(|s| s.bytes).sum(),
            sealed: found.sealed,
            head_written: None,
            head_seq: 0,
            retention_checked: Instant::now(),
            findings: found.findings,
            approval_events: found.approval_events,
            metrics: None,
            last_seal_unix_nanos: 0,
            alerts: found.alerts,
            alerts_delivered: found.alerts_delivered,
            alerting: None,
            _lock: lock,
        })
    }

    /// Counts what happens from now on in `metrics`; the store's shape at
    /// once (the last seal's time from its file).
    pub fn observe(&mut self, metrics: Arc<Metrics>) {
        self.last_seal_unix_nanos = self
            .sealed
            .back()
            .and_then(|s| std::fs::metadata(self.layout.seal(s.number)).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        self.metrics = Some(metrics);
        self.report_store();
    }

    fn report_store(&self) {
        if let Some(m) = &self.metrics {
            let bytes = self.sealed_bytes + self.open.len;
            m.store(
                self.sealed.len() as u64 + 1,
                bytes,
                self.last_seal_unix_nanos,
            );
        }
    }

    /// Evaluates `alerting`'s rules on every record and approval event
    /// stored from now on; alerts are stored with what raised them.
    pub fn alert(&mut self, alerting: Alerting) {
        self.alerting = Some(alerting);
    }

    /// The alerts `records` raise, as entries to store in the same write.
    fn raise(&mut self, records: &[&Record], events: &[ApprovalEvent]) -> Vec<Alert> {
        let Some(a) = &mut self.alerting else {
            return Vec::new();
        };
        if a.evaluator.is_empty() {
            return Vec::new();
        }
        let now = now_nanos();
        let mut out = Vec::new();
        for r in records {
            out.extend(a.evaluator.record(r, now));
        }
        for ev in events {
            out.extend(a.evaluator.event(ev));
        }
        out
    }

    /// Hands durable alerts to delivery.
    fn deliver(&mut self, alerts: Vec<Alert>) {
        if let Some(a) = &self.alerting {
            for alert in alerts {
                // The delivery thread gone (shutting down): the alert is
                // stored and goes out at the next start.
                let _ = a.out.send(alert);
            }
        }
    }

    /// Records held (distinct ids).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Sequence number of the last durable entry (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Appends the new records of several export calls with one write and
    /// one fdatasync (group commit). Records already held are counted as
    /// duplicates; malformed ones are rejected.
    pub fn append(&mut self, calls: &[Vec<Record>]) -> Result<Vec<Appended>> {
        let mut results = Vec::with_capacity(calls.len());
        let mut pending = Vec::new();
        let mut new_ids: HashSet<&str> = HashSet::new();
        for records in calls {
            let mut out = Appended::default();
            for record in records {
                // A LedgerEntry holding the record (field 1), encoded
                // without copying the record first.
                let mut payload = Vec::with_capacity(record.encoded_len() + 8);
                prost::encoding::message::encode(1, record, &mut payload);
                let problem = if record.record_id.is_empty() {
                    Some("record_id is empty")
                } else if payload.len() > MAX_RECORD_BYTES {
                    Some("record is larger than 32 MiB")
                } else {
                    None
                };
                if let Some(reason) = problem {
                    out.rejected.push(RejectedRecord {
                        record_id: record.record_id.clone(),
                        reason: reason.into(),
                    });
                    continue;
                }
                if self.ids.contains(&record.record_id) || !new_ids.insert(&record.record_id) {
                    out.duplicates += 1;
                    continue;
                }
                pending.push(Pending {
                    payload,
                    indexed: Indexed::Record(record),
                });
                out.accepted += 1;
            }
            results.push(out);
        }
        // The records about to be stored, for the metrics once durable.
        let stored: Vec<&Record> = match self.metrics {
            Some(_) => pending
                .iter()
                .filter_map(|p| match p.indexed {
                    Indexed::Record(r) => Some(r),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let new: Vec<&Record> = pending
            .iter()
            .filter_map(|p| match p.indexed {
                Indexed::Record(r) => Some(r),
                _ => None,
            })
            .collect();
        // Alerts go in the same write as the records that raised them: an
        // acknowledged record's alert is never lost.
        let alerts = self.raise(&new, &[]);
        pending.extend(alerts.iter().map(alert_entry));
        if !pending.is_empty() {
            self.write(pending)?;
        }
        self.deliver(alerts);
        if let Some(m) = &self.metrics {
            m.duplicates(results.iter().map(|r| u64::from(r.duplicates)).sum());
            m.rejected(results.iter().map(|r| r.rejected.len() as u64).sum());
            for r in stored {
                m.record_stored(r);
            }
        }
        Ok(results)
    }

    /// Writes entries durably to the open segment, rolling first if it is
    /// full or old.
    fn write(&mut self, pending: Vec<Pending<'_>>) -> Result<()> {
        let now = now_nanos();
        let size: u64 = pending
            .iter()
            .map(|p| (p.payload.len() + frame::FRAME_OVERHEAD) as u64)
            .sum();
        if !self.open.leaves.is_empty()
            && (self.open.len + size > self.opts.segment_bytes || self.segment_too_old(now))
        {
            self.roll(now)?;
        }
        let batch = self.encode(&pending, now, size as usize);
        self.open
            .file
            .write_all(&batch.bytes)
            .context("writing to the open segment")?;
        let synced = Instant::now();
        self.open
            .file
            .sync_data()
            .context("fdatasync of the open segment")?;
        if let Some(m) = &self.metrics {
            m.committed(
                pending.len(),
                batch.bytes.len() as u64,
                synced.elapsed().as_secs_f64(),
            );
        }
        // Durable: now the state may move on.
        self.advance(&pending, batch, now);
        self.report_store();
        if self
            .head_written
            .is_none_or(|at| at.elapsed() >= HEAD_INTERVAL)
        {
            self.write_head(false)?;
        }
        Ok(())
    }

    /// The frames of `pending`, continuing the sequence and the chain.
    fn encode(&self, pending: &[Pending<'_>], now: i64, size: usize) -> Batch {
        let mut batch = Batch {
            bytes: Vec::with_capacity(size),
            seq: self.next_seq,
            chain: self.chain,
            leaves: Vec::with_capacity(pending.len()),
            offsets: Vec::with_capacity(pending.len()),
        };
        for p in pending {
            batch.offsets.push(self.open.len + batch.bytes.len() as u64);
            // One SHA-256 of the payload: the leaf serves the chain and,
            // at the seal, the Merkle root.
            let leaf = leaf_hash(&p.payload);
            batch.chain = frame::encode_frame_into(
                &mut batch.bytes,
                batch.seq,
                now,
                &p.payload,
                &leaf,
                &batch.chain,
            );
            batch.leaves.push(leaf);
            batch.seq += 1;
        }
        batch
    }

    /// Takes a durable batch into the state: index, ids, leaves, sequence
    /// and chain.
    fn advance(&mut self, pending: &[Pending<'_>], batch: Batch, now: i64) {
        for (p, offset) in pending.iter().zip(batch.offsets) {
            match p.indexed {
                Indexed::Record(r) => {
                    self.open.index.add(r, offset);
                    self.ids.insert(r.record_id.clone());
                }
                Indexed::Approval(id) => self.open.index.add_approval(id, offset),
                Indexed::Nothing => {}
            }
        }
        if self.open.leaves.is_empty() {
            self.open.first_time = now;
        }
        self.open.last_time = now;
        self.open.leaves.extend(batch.leaves);
        self.open.len += batch.bytes.len() as u64;
        self.next_seq = batch.seq;
        self.chain = batch.chain;
    }

    /// Appends approval events durably (one write, one fdatasync), with the
    /// alerts they raise.
    pub fn append_events(&mut self, events: &[ApprovalEvent]) -> Result<()> {
        let alerts = self.raise(&[], events);
        let mut pending = events
            .iter()
            .map(|ev| Pending {
                payload: LedgerEntry {
                    entry: Some(Entry::Approval(ev.clone())),
                }
                .encode_to_vec(),
                indexed: Indexed::Approval(&ev.approval_id),
            })
            .collect::<Vec<_>>();
        pending.extend(alerts.iter().map(alert_entry));
        if pending.is_empty() {
            return Ok(());
        }
        self.write(pending)?;
        self.deliver(alerts);
        Ok(())
    }

    /// Stores that webhooks acknowledged alerts (one write, one fdatasync).
    pub fn append_delivered(&mut self, marks: &[AlertDelivered]) -> Result<()> {
        if marks.is_empty() {
            return Ok(());
        }
        let pending = marks
            .iter()
            .map(|m| Pending {
                payload: LedgerEntry {
                    entry: Some(Entry::AlertDelivered(m.clone())),
                }
                .encode_to_vec(),
                indexed: Indexed::Nothing,
            })
            .collect();
        self.write(pending)
    }

    fn segment_too_old(&self, now: i64) -> bool {
        let age = now.saturating_sub(self.open.opened_unix_nanos);
        age >= 0 && age as u128 >= self.opts.segment_age.as_nanos()
    }

    /// Periodic work while idle: roll an old segment, apply retention,
    /// refresh HEAD.
    pub fn tick(&mut self) -> Result<()> {
        let now = now_nanos();
        if !self.open.leaves.is_empty() && self.segment_too_old(now) {
            self.roll(now)?;
        }
        if self.retention_checked.elapsed() >= Duration::from_secs(60) {
            self.retention_checked = Instant::now();
            self.apply_retention(now)?;
        }
        if self.head_seq + 1 != self.next_seq {
            self.write_head(false)?;
        }
        Ok(())
    }

    /// Seals the open segment and opens the next one. Order matters for
    /// recovery: the seal is durable before the next segment exists.
    fn roll(&mut self, now: i64) -> Result<()> {
        let o = &self.open;
        let seal = Seal {
            segment: o.number,
            records: o.leaves.len() as u64,
            first_seq: o.first_seq,
            last_seq: self.next_seq - 1,
            first_unix_nanos: o.first_time,
            last_unix_nanos: o.last_time,
            last_chain: self.chain,
            merkle_root: merkle::root(&o.leaves),
            previous: self.last_seal,
        };
        let text = seal.sign(&self.key);
        write_atomic(&self.layout.seal(o.number), text.as_bytes(), true)?;
        self.last_seal = seal::seal_hash(&text);
        self.last_seal_unix_nanos = now;
        o.index.store(&self.layout)?;
        self.sealed.push_back(Sealed {
            number: o.number,
            bytes: o.len,
            last_time: o.last_time,
        });
        self.sealed_bytes += o.len;
        let next_number = o.number + 1;
        self.write_head(true)?;
        let next = OpenSegment::create(&self.layout, next_number, self.next_seq, self.chain)?;
        self.open = next;
        self.open.opened_unix_nanos = now;
        self.apply_retention(now)
    }

    /// Deletes the oldest sealed segments the policy no longer keeps. The
    /// signed retention entry is durable before any file goes. Segments go
    /// oldest first, so the deleted ones are always 1..=N.
    pub(super) fn apply_retention(&mut self, now: i64) -> Result<()> {
        let (victims, policy) = self.retention_victims(now);
        let (Some(first), Some(last)) = (victims.first(), victims.last()) else {
            return Ok(());
        };
        let statement = self.write_retention(last.number, policy, now)?;
        self.delete(&victims)?;
        eprintln!(
            "tracegate: retention deleted segments {}..{} ({}); their seals are kept",
            first.number,
            last.number,
            statement.lines().nth(2).unwrap_or_default()
        );
        Ok(())
    }

    /// The oldest sealed segments the policy no longer keeps, and the
    /// policy that ends the first of them.
    fn retention_victims(&self, now: i64) -> (Vec<Sealed>, String) {
        let mut total: u64 = self.sealed_bytes + self.open.len;
        let mut victims = Vec::new();
        let mut policy = String::new();
        for s in &self.sealed {
            let too_old = self
                .opts
                .retain_age
                .is_some_and(|age| now.saturating_sub(s.last_time) as u128 > age.as_nanos());
            let too_big = self.opts.retain_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            if policy.is_empty() {
                policy = match (too_old, self.opts.retain_age, self.opts.retain_bytes) {
                    (true, Some(age), _) => format!("age > {}", humantime::format_duration(age)),
                    (_, _, Some(max)) => format!("size > {max} bytes"),
                    _ => "retention".into(),
                };
            }
            total -= s.bytes;
            victims.push(*s);
        }
        (victims, policy)
    }

    /// Writes the signed retention entry for segments 1..=`last`; returns
    /// the statement signed.
    fn write_retention(&mut self, last: u64, policy: String, now: i64) -> Result<String> {
        // Cumulative (always from segment 1): an earlier retention entry may
        // itself be in a segment deleted now, so the newest one must vouch
        // for every deletion so far.
        let mut retention = Retention {
            first_segment: 1,
            last_segment: last,
            policy,
            unix_nanos: now,
            signature: Vec::new(),
        };
        let statement = seal::retention_statement(&retention);
        retention.signature = self.key.sign(statement.as_bytes()).to_bytes().to_vec();
        let payload = LedgerEntry {
            entry: Some(Entry::Retention(retention)),
        }
        .encode_to_vec();
        self.write(vec![Pending {
            payload,
            indexed: Indexed::Nothing,
        }])?;
        Ok(statement)
    }

    /// Deletes the victims' segments and indexes (the oldest sealed ones)
    /// and stops tracking them.
    fn delete(&mut self, victims: &[Sealed]) -> Result<()> {
        for v in victims {
            for path in [self.layout.segment(v.number), self.layout.index(v.number)] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("deleting {}", path.display()))
                    }
                }
            }
        }
        // By number, not by count: writing the retention entry may have
        // rolled the segment and applied retention again from inside (the
        // idle tick), deleting and untracking these already; popping once
        // per victim would then untrack segments that are still on disk.
        let last = victims.last().map_or(0, |v| v.number);
        while let Some(s) = self.sealed.front().filter(|s| s.number <= last) {
            self.sealed_bytes -= s.bytes;
            self.sealed.pop_front();
        }
        self.report_store();
        sync_dir(&self.layout.root.join("segments"))
    }

    /// Rewrites HEAD: the last durable record, signed. `durable` also
    /// fsyncs it (at seals and shutdown; otherwise it may lag by a second).
    fn write_head(&mut self, durable: bool) -> Result<()> {
        self.head_written = Some(Instant::now());
        if self.next_seq == 1 {
            return Ok(());
        }
        self.head_seq = self.next_seq - 1;
        let head = Head {
            segment: self.open.number,
            sequence: self.next_seq - 1,
            chain: self.chain,
            unix_nanos: now_nanos(),
        };
        let text = seal::sign_text(&head.body(), &self.key);
        write_atomic(&self.layout.head(), text.as_bytes(), durable)
    }

    /// Clean shutdown: HEAD made durable.
    pub fn close(mut self) -> Result<()> {
        self.write_head(true)
    }
}

/// Makes the data directory if needed and takes its lock (held while the
/// returned file is open): one server per directory.
fn lock(layout: &Layout) -> Result<File> {
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.lock())?;
    if lock.try_lock().is_err() {
        bail!(
            "{} is in use by another tracegate server",
            layout.root.display()
        );
    }
    if layout.root.join("records.log").exists() {
        bail!(
            "{} holds records.log from tracegate before 0.4 (unsigned); move it away or use another --data",
            layout.root.display()
        );
    }
    layout.create_dirs()?;
    Ok(lock)
}

impl OpenSegment {
    /// Starts segment `number`: its header, made durable.
    fn create(layout: &Layout, number: u64, first_seq: u64, prev: Hash) -> Result<OpenSegment> {
        let header = SegmentHeader {
            segment: number,
            first_seq,
            prev_chain: prev,
        };
        let path = layout.segment(number);
        write_atomic(&path, &header.encode(), true)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(OpenSegment {
            number,
            file,
            len: SEGMENT_HEADER_LEN as u64,
            first_seq,
            opened_unix_nanos: now_nanos(),
            leaves: Vec::new(),
            first_time: 0,
            last_time: 0,
            index: SegmentIndex::new(number),
        })
    }

    /// Continues the segment recovery found open.
    fn resume(layout: &Layout, last: Resumable) -> Result<OpenSegment> {
        let file = OpenOptions::new()
            .append(true)
            .open(layout.segment(last.number))?;
        Ok(OpenSegment {
            number: last.number,
            file,
            len: last.len,
            first_seq: last.first_seq,
            opened_unix_nanos: last.first_time.unwrap_or_else(now_nanos),
            leaves: last.leaves,
            first_time: last.first_time.unwrap_or(0),
            last_time: last.last_time,
            index: last.index,
        })
    }
}
