//! Recovery at start-up: what the writer finds in a data directory before
//! it appends again.
//!
//! Every segment is scanned. A torn tail of the last, unsealed segment (an
//! interrupted append, never acknowledged) is cut; corruption is reported
//! and quarantined, never cut, and its segment is no longer written. The
//! record ids, the approval events, the alerts and their deliveries, and
//! the indexes of sealed segments are rebuilt from the frames.

use anyhow::{Context, Result};
use prost::Message;
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use tracegate_proto::v1::ledger_entry::Entry;
use tracegate_proto::v1::{Alert, ApprovalEvent, LedgerEntry};

use crate::alerts::deliver::Delivered;

use super::frame::{self, Ending, Scan};
use super::index::SegmentIndex;
use super::layout::{write_atomic, Layout};
use super::seal;
use super::Hash;

/// A sealed segment, as retention needs it.
#[derive(Debug, Clone, Copy)]
pub struct Sealed {
    pub number: u64,
    pub bytes: u64,
    pub last_time: i64,
}

/// The last segment, unsealed and undamaged: appends continue in it.
pub struct Resumable {
    pub number: u64,
    pub len: u64,
    pub first_seq: u64,
    /// Time of its first frame (`None`: it holds none yet).
    pub first_time: Option<i64>,
    /// Time of its last frame (0 without one).
    pub last_time: i64,
    pub leaves: Vec<Hash>,
    pub index: SegmentIndex,
}

/// A data directory as recovery leaves it.
pub struct Recovered {
    /// What was found (cut, corrupt, unsealed), for the operator.
    pub findings: Vec<String>,
    pub ids: HashSet<String>,
    /// Every approval event held, in stored order.
    pub approval_events: Vec<ApprovalEvent>,
    /// Every alert held, and the (alert, webhook) pairs delivered.
    pub alerts: Vec<Alert>,
    pub alerts_delivered: Delivered,
    pub sealed: VecDeque<Sealed>,
    /// The sequence number and chain hash the next entry continues from.
    pub next_seq: u64,
    pub chain: Hash,
    /// SHA-256 of the newest seal's text (zeros without a seal).
    pub last_seal: Hash,
    /// The segment to append to, if the last one can take appends.
    pub resume: Option<Resumable>,
    /// The number of a new segment, if one is needed.
    pub next_segment: u64,
}

/// Scans every segment of `layout` (already locked by the caller), cutting
/// a torn tail and quarantining corruption as it goes.
pub fn recover(layout: &Layout) -> Result<Recovered> {
    let seals: HashSet<u64> = layout.seals()?.into_iter().collect();
    let numbers = layout.segments()?;
    let mut found = Recovered {
        findings: Vec::new(),
        ids: HashSet::new(),
        approval_events: Vec::new(),
        alerts: Vec::new(),
        alerts_delivered: Delivered::new(),
        sealed: VecDeque::new(),
        next_seq: 1,
        chain: [0; 32],
        last_seal: [0; 32],
        resume: None,
        next_segment: numbers.last().map_or(1, |n| n + 1),
    };
    for (i, &n) in numbers.iter().enumerate() {
        let is_last = i + 1 == numbers.len();
        found.segment(layout, n, is_last, seals.contains(&n))?;
    }
    found.last_seal = last_seal_hash(layout)?;
    Ok(found)
}

impl Recovered {
    /// Recovers segment `n`: its entries, its damage, its torn tail, and
    /// what it is now (sealed, the one to append to, or closed for good).
    fn segment(&mut self, layout: &Layout, n: u64, is_last: bool, is_sealed: bool) -> Result<()> {
        let path = layout.segment(n);
        let name = layout.show(&path);
        let bytes = read_segment(&path)?;
        let scan = match frame::scan(&bytes) {
            Ok(s) => s,
            Err(why) => {
                let msg = format!("{name}: {why}; segment not used");
                quarantine(layout, n, &msg)?;
                self.findings.push(msg);
                return Ok(());
            }
        };
        let index = self.read_entries(n, &bytes, &scan);
        self.report_damage(layout, n, &name, &scan)?;
        let may_cut = is_last && !is_sealed && scan.corrupt.is_empty();
        let len = self.end_torn_tail(&path, &name, bytes.len(), &scan, may_cut)?;
        (self.next_seq, self.chain) = scan.tip();
        let last_time = scan.frames.last().map_or(0, |f| f.unix_nanos);
        if is_sealed {
            index.store(layout)?;
            self.sealed.push_back(Sealed {
                number: n,
                bytes: len,
                last_time,
            });
        } else if is_last && scan.corrupt.is_empty() {
            self.resume = Some(Resumable {
                number: n,
                len,
                first_seq: scan.header.first_seq,
                first_time: scan.frames.first().map(|f| f.unix_nanos),
                last_time,
                leaves: scan.leaves,
                index,
            });
        } else if !scan.corrupt.is_empty() {
            // Damaged: never written again; appends go to a new segment.
        } else {
            self.findings.push(format!(
                "{name}: closed segment without a seal (seal deleted, or damage)"
            ));
        }
        Ok(())
    }

    /// Takes the record ids and approval events of a segment's intact
    /// frames; returns its index.
    fn read_entries(&mut self, n: u64, bytes: &[u8], scan: &Scan) -> SegmentIndex {
        let mut index = SegmentIndex::new(n);
        for f in &scan.frames {
            match LedgerEntry::decode(&bytes[f.payload.clone()])
                .ok()
                .and_then(|e| e.entry)
            {
                Some(Entry::Record(r)) => {
                    index.add(&r, f.offset as u64);
                    self.ids.insert(r.record_id);
                }
                Some(Entry::Approval(ev)) => {
                    index.add_approval(&ev.approval_id, f.offset as u64);
                    self.approval_events.push(ev);
                }
                Some(Entry::Alert(a)) => self.alerts.push(a),
                Some(Entry::AlertDelivered(d)) => {
                    self.alerts_delivered.insert((d.alert_id, d.webhook));
                }
                _ => {}
            }
        }
        index
    }

    /// Reports corrupt bytes and broken links; quarantines a segment with
    /// corrupt bytes (naming both).
    fn report_damage(&mut self, layout: &Layout, n: u64, name: &str, scan: &Scan) -> Result<()> {
        let first = self.findings.len();
        for c in &scan.corrupt {
            self.findings.push(format!(
                "{name}: corrupt bytes at offset {} ({}), intact frames resume at {}; kept as they are",
                c.offset, c.why, c.resumes_at
            ));
        }
        for l in &scan.links {
            self.findings
                .push(format!("{name}: offset {}: {}", l.offset, l.what));
        }
        if scan.corrupt.is_empty() {
            return Ok(());
        }
        quarantine(layout, n, &self.findings[first..].join("\n"))
    }

    /// Cuts a torn tail if `may_cut` (the last segment, unsealed and
    /// otherwise undamaged), else reports it; returns the segment's length.
    fn end_torn_tail(
        &mut self,
        path: &Path,
        name: &str,
        len: usize,
        scan: &Scan,
        may_cut: bool,
    ) -> Result<u64> {
        let Ending::TornTail { offset } = scan.ending else {
            return Ok(len as u64);
        };
        if !may_cut {
            self.findings.push(format!(
                "{name}: ends in a partial frame at offset {offset}; kept as it is"
            ));
            return Ok(len as u64);
        }
        // An interrupted append: never acknowledged, safe to cut.
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(offset as u64)?;
        f.sync_all()?;
        self.findings.push(format!(
            "{name}: cut {} bytes of an interrupted write at offset {offset}",
            len - offset
        ));
        Ok(offset as u64)
    }
}

fn read_segment(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// SHA-256 of the newest seal's text, which the next seal names; zeros
/// without a seal.
fn last_seal_hash(layout: &Layout) -> Result<Hash> {
    match layout.seals()?.last() {
        Some(&n) => {
            let text = std::fs::read_to_string(layout.seal(n))?;
            Ok(seal::seal_hash(&text))
        }
        None => Ok([0; 32]),
    }
}

/// Writes (once) what was found damaged in a segment, for the operator.
fn quarantine(layout: &Layout, n: u64, what: &str) -> Result<()> {
    let path = layout.quarantine(n);
    if path.exists() {
        return Ok(());
    }
    let text = format!(
        "found at start-up, {}:\n{what}\nThe segment is kept unchanged and no longer written; `tracegate verify` reports it.\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    write_atomic(&path, text.as_bytes(), true)
}
