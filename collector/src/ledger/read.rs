//! Reading a data directory without the lock (while a server writes):
//! sessions, one session's records, approval events, export. Sealed segments are reached
//! through their index; the open segment is scanned (a frame still being
//! written reads as a torn tail and is skipped).

use anyhow::{bail, Context, Result};
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use tracegate_proto::v1::ledger_entry::Entry;
use tracegate_proto::v1::{ApprovalEvent, LedgerEntry, Record};

use super::caller::Caller;
use super::frame::{self, FRAME_OVERHEAD};
use super::index::{SegmentIndex, SessionSummary};
use super::layout::Layout;
use super::seal::Seal;

pub struct Reader {
    layout: Layout,
    segments: Vec<u64>,
    seals: HashSet<u64>,
    /// Damage met while reading (the records around it are still read).
    pub warnings: Vec<String>,
}

impl Reader {
    pub fn open(layout: Layout) -> Result<Reader> {
        if !layout.exists() {
            bail!(
                "{} is not a tracegate data directory (no segments/)",
                layout.root.display()
            );
        }
        Ok(Reader {
            segments: layout.segments()?,
            seals: layout.seals()?.into_iter().collect(),
            layout,
            warnings: Vec::new(),
        })
    }

    /// Every intact record of a segment, with its frame offset.
    fn scan_records(&mut self, n: u64) -> Result<Vec<(u64, Record)>> {
        let path = self.layout.segment(n);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let scan = match frame::scan(&bytes) {
            Ok(s) => s,
            Err(why) => {
                self.warnings
                    .push(format!("{}: {why}", self.layout.show(&path)));
                return Ok(Vec::new());
            }
        };
        for c in &scan.corrupt {
            self.warnings.push(format!(
                "{}: corrupt bytes at offset {} ({})",
                self.layout.show(&path),
                c.offset,
                c.why
            ));
        }
        Ok(scan
            .frames
            .iter()
            .filter_map(|f| Some((f.offset as u64, record(&bytes[f.payload.clone()])?)))
            .collect())
    }

    /// The index of a sealed segment, if present, readable and of this
    /// version.
    fn index(&self, n: u64) -> Option<SegmentIndex> {
        if !self.seals.contains(&n) {
            return None;
        }
        SegmentIndex::load(&self.layout, n)
    }

    /// Every session, per caller: (session id, caller) → summary.
    pub fn sessions(&mut self) -> Result<BTreeMap<(String, Caller), SessionSummary>> {
        let mut out: BTreeMap<(String, Caller), SessionSummary> = BTreeMap::new();
        for n in self.segments.clone() {
            match self.index(n) {
                Some(index) => {
                    for (id, entries) in index.sessions {
                        for e in entries {
                            out.entry((id.clone(), e.caller))
                                .or_default()
                                .merge(&e.summary);
                        }
                    }
                }
                None => {
                    for (_, r) in self.scan_records(n)? {
                        let mut one = SessionSummary::default();
                        one.add(&r);
                        out.entry((r.session_id.clone(), Caller::of(&r)))
                            .or_default()
                            .merge(&one);
                    }
                }
            }
        }
        Ok(out)
    }

    /// One session's records, ordered by request start: every caller's
    /// (`None`; callers tell them apart with `Caller::of`), or one caller's.
    pub fn session(&mut self, session: &str, caller: Option<&Caller>) -> Result<Vec<Record>> {
        let wanted =
            |r: &Record| r.session_id == session && caller.is_none_or(|c| &Caller::of(r) == c);
        let mut records = Vec::new();
        for n in self.segments.clone() {
            match self.index(n) {
                Some(index) => {
                    let Some(entries) = index.sessions.get(session) else {
                        continue;
                    };
                    let path = self.layout.segment(n);
                    let file =
                        File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    let entries = entries
                        .iter()
                        .filter(|e| caller.is_none_or(|c| c == &e.caller));
                    for entry in entries {
                        for &offset in &entry.offsets {
                            match read_frame(&file, offset) {
                                Some(r) if wanted(&r) => records.push(r),
                                _ => self.warnings.push(format!(
                                    "{}: index names offset {offset} for this session, but no intact record of it is there",
                                    self.layout.show(&path)
                                )),
                            }
                        }
                    }
                }
                None => records.extend(
                    self.scan_records(n)?
                        .into_iter()
                        .map(|(_, r)| r)
                        .filter(|r| wanted(r)),
                ),
            }
        }
        records.sort_by(|a, b| {
            (a.request_start_unix_nanos, &a.record_id)
                .cmp(&(b.request_start_unix_nanos, &b.record_id))
        });
        Ok(records)
    }

    /// Every record whose request started in `[since, until)`, in stored
    /// order; sealed segments entirely outside the range are skipped.
    pub fn export(
        &mut self,
        since: Option<i64>,
        until: Option<i64>,
        mut each: impl FnMut(&Record) -> Result<()>,
    ) -> Result<u64> {
        let mut n_out = 0;
        for n in self.segments.clone() {
            if let (Some(since), true) = (since, self.seals.contains(&n)) {
                let seal = std::fs::read_to_string(self.layout.seal(n))
                    .ok()
                    .and_then(|t| Seal::parse_unverified(&t).ok());
                // Records arrive after their request started: a segment
                // whose last frame was written before `since` holds none.
                if seal.is_some_and(|s| s.last_unix_nanos < since) {
                    continue;
                }
            }
            for (_, r) in self.scan_records(n)? {
                let t = r.request_start_unix_nanos;
                if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                    continue;
                }
                each(&r)?;
                n_out += 1;
            }
        }
        Ok(n_out)
    }
}

impl Reader {
    /// The stored events of these approvals, in stored order.
    pub fn approval_events(&mut self, ids: &[String]) -> Result<Vec<ApprovalEvent>> {
        let mut out = Vec::new();
        if ids.is_empty() {
            return Ok(out);
        }
        for n in self.segments.clone() {
            let path = self.layout.segment(n);
            match self.index(n) {
                Some(index) => {
                    let file =
                        File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    for id in ids {
                        for &offset in index.approvals.get(id).into_iter().flatten() {
                            if let Some(Entry::Approval(ev)) = read_entry(&file, offset) {
                                if &ev.approval_id == id {
                                    out.push(ev);
                                }
                            }
                        }
                    }
                }
                None => {
                    let Ok(bytes) = std::fs::read(&path) else {
                        continue;
                    };
                    let Ok(scan) = frame::scan(&bytes) else {
                        continue;
                    };
                    for f in &scan.frames {
                        if let Some(Entry::Approval(ev)) =
                            LedgerEntry::decode(&bytes[f.payload.clone()])
                                .ok()
                                .and_then(|e| e.entry)
                        {
                            if ids.contains(&ev.approval_id) {
                                out.push(ev);
                            }
                        }
                    }
                }
            }
        }
        out.sort_by_key(|e| e.unix_nanos);
        Ok(out)
    }
}

fn record(payload: &[u8]) -> Option<Record> {
    match LedgerEntry::decode(payload).ok()?.entry? {
        Entry::Record(r) => Some(r),
        _ => None,
    }
}

/// The record in the frame at `offset`, if the frame there is intact.
fn read_frame(file: &File, offset: u64) -> Option<Record> {
    match read_entry(file, offset)? {
        Entry::Record(r) => Some(r),
        _ => None,
    }
}

/// The entry in the frame at `offset`, if the frame there is intact.
fn read_entry(file: &File, offset: u64) -> Option<Entry> {
    let mut len = [0u8; 4];
    file.read_exact_at(&mut len, offset).ok()?;
    let len = frame::announced_len(&len);
    if len > frame::MAX_PAYLOAD {
        return None;
    }
    let mut buf = vec![0u8; FRAME_OVERHEAD + len];
    file.read_exact_at(&mut buf, offset).ok()?;
    let f = frame::parse_one(&buf).ok()?;
    LedgerEntry::decode(&buf[f.payload]).ok()?.entry
}
