//! `tracegate verify`: checks a data directory against the seal public key,
//! from its bytes alone (no index, no state of the server).
//!
//! Checked: every frame's CRC; sequence continuity and every chain link,
//! within and across segments; each seal's signature, record count,
//! sequence range, last chain hash and Merkle root; the chain of seals;
//! each retention entry's signature; that every missing segment is covered
//! by a retention entry; and that the log still reaches the record the
//! signed HEAD names.

use anyhow::Result;
use ed25519_dalek::VerifyingKey;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use tracegate_proto::v1::ledger_entry::Entry;
use tracegate_proto::v1::LedgerEntry;

use super::frame::{self, Ending, Scan};
use super::layout::Layout;
use super::merkle;
use super::seal::{self, hex, Head, Seal};
use super::Hash;

#[derive(Debug, Default)]
pub struct Report {
    pub segments: u64,
    pub sealed: u64,
    /// Entries (records, approval events, retention statements) checked.
    pub entries: u64,
    pub bytes: u64,
    /// Segments deleted by a signed retention entry (their seals checked).
    pub retained: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub problems: Vec<String>,
}

/// A frame payload is a `LedgerEntry`; field 2 (tag byte 0x12) is a
/// retention entry. Only those are decoded.
const RETENTION_TAG: u8 = 0x12;

pub fn verify(layout: &Layout, key: &VerifyingKey) -> Result<Report> {
    if !layout.exists() {
        let problem = format!(
            "{} is not a tracegate data directory (no segments/)",
            layout.root.display()
        );
        return Ok(Report {
            problems: vec![problem],
            ..Report::default()
        });
    }
    let segments: BTreeSet<u64> = layout.segments()?.into_iter().collect();
    let seal_numbers = layout.seals()?;
    let mut check = Check {
        layout,
        key,
        report: Report::default(),
        expect: None,
        retained: BTreeSet::new(),
        missing: Vec::new(),
        tips: BTreeMap::new(),
    };
    let seals = check.seals(&seal_numbers, &segments);
    check.segments(&segments, &seal_numbers, &seals);
    check.retention_covers_missing();
    check.head();
    Ok(check.report)
}

/// What the check has learnt so far, walking the directory in order.
struct Check<'a> {
    layout: &'a Layout,
    key: &'a VerifyingKey,
    report: Report,
    /// Sequence and chain hash the next segment must start from (`None`:
    /// not known, after a segment that could not be read).
    expect: Option<(u64, Hash)>,
    /// Segments a valid retention entry deleted.
    retained: BTreeSet<u64>,
    /// Segments that are gone while their seal is there.
    missing: Vec<u64>,
    /// Sequence → chain hash, of every entry read or sealed (for HEAD).
    tips: BTreeMap<u64, Hash>,
}

impl Check<'_> {
    fn problem(&mut self, text: String) {
        self.report.problems.push(text);
    }

    /// Each seal's signature, then the chain of seals; returns the seals
    /// that verify.
    fn seals(&mut self, numbers: &[u64], segments: &BTreeSet<u64>) -> BTreeMap<u64, Seal> {
        let mut seals = BTreeMap::new();
        // The last seal seen and its hash (`None` inside: it did not verify).
        let mut previous: Option<(u64, Option<Hash>)> = None;
        for &n in numbers {
            let path = self.layout.seal(n);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(format!("{}: unreadable: {e}", self.layout.show(&path)));
                    continue;
                }
            };
            match Seal::verify(&text, self.key) {
                Ok(s) => {
                    self.seal_follows(n, &s, previous, segments);
                    seals.insert(n, s);
                    previous = Some((n, Some(seal::seal_hash(&text))));
                }
                Err(why) => {
                    self.problem(format!("{}: {why}", self.layout.show(&path)));
                    previous = Some((n, None));
                }
            }
        }
        seals
    }

    /// A verified seal names its own segment and follows from the seal
    /// before it, `previous`.
    fn seal_follows(
        &mut self,
        n: u64,
        s: &Seal,
        previous: Option<(u64, Option<Hash>)>,
        segments: &BTreeSet<u64>,
    ) {
        let name = self.layout.show(&self.layout.seal(n));
        if s.segment != n {
            self.problem(format!(
                "{name}: names segment {} (a seal moved or copied)",
                s.segment
            ));
        }
        // Segments between this seal and the one before may lack a seal
        // only if they are present (left unsealed by damage, which is
        // reported with the segment).
        let from = previous.map_or(1, |(p, _)| p + 1);
        if !(from..n).all(|m| segments.contains(&m)) {
            self.problem(format!("seals of segments {from}..{} are missing", n - 1));
            return;
        }
        if let Some(h) = previous.map_or(Some([0; 32]), |(_, h)| h) {
            if h != s.previous {
                self.problem(format!(
                    "{name}: does not follow from the seal before it (previous {})",
                    hex(&s.previous)
                ));
            }
        }
    }

    /// Every segment number from the first to the last that a segment or a
    /// seal names, in order, with the state carried across them.
    fn segments(
        &mut self,
        segments: &BTreeSet<u64>,
        seal_numbers: &[u64],
        seals: &BTreeMap<u64, Seal>,
    ) {
        let last = segments
            .iter()
            .next_back()
            .copied()
            .max(seal_numbers.last().copied())
            .unwrap_or(0);
        let first = segments
            .iter()
            .next()
            .copied()
            .min(seal_numbers.first().copied())
            .unwrap_or(1);
        for n in first..=last {
            let seal = seals.get(&n);
            if segments.contains(&n) {
                self.segment(n, seal, n == last);
            } else {
                self.missing_segment(n, seal);
            }
        }
    }

    /// A segment that is not there: its seal says where the chain goes on.
    fn missing_segment(&mut self, n: u64, seal: Option<&Seal>) {
        match seal {
            Some(s) => {
                self.missing.push(n);
                self.expect = Some((s.last_seq + 1, s.last_chain));
                self.tips.insert(s.last_seq, s.last_chain);
            }
            None => {
                let name = self.layout.show(&self.layout.segment(n));
                self.problem(format!("{name}: missing, and so is its seal"));
                self.expect = None;
            }
        }
    }

    /// One segment: header, damage, entries, and against its seal.
    fn segment(&mut self, n: u64, seal: Option<&Seal>, is_last: bool) {
        let path = self.layout.segment(n);
        let name = self.layout.show(&path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                self.problem(format!("{name}: unreadable: {e}"));
                self.expect = None;
                return;
            }
        };
        self.report.segments += 1;
        self.report.bytes += bytes.len() as u64;
        let scan = match frame::scan(&bytes) {
            Ok(s) => s,
            Err(why) => {
                self.problem(format!("{name}: {why}"));
                self.expect = None;
                return;
            }
        };
        self.header(n, &name, &scan);
        self.damage(&name, &scan, bytes.len());
        self.entries(&name, &bytes, &scan);
        match seal {
            Some(s) => self.matches_seal(&name, s, &scan),
            None if !is_last => self.problem(format!(
                "{name}: closed (a later segment exists) but has no seal"
            )),
            None => {}
        }
        self.expect = Some(scan.tip());
    }

    /// The header names this segment and continues the chain where the
    /// segment before it ended.
    fn header(&mut self, n: u64, name: &str, scan: &Scan) {
        let header = &scan.header;
        if header.segment != n {
            self.problem(format!(
                "{name}: header names segment {} (a segment renamed)",
                header.segment
            ));
        }
        if let Some((seq, chain)) = self.expect {
            if header.first_seq != seq {
                self.problem(format!(
                    "{name}: starts at sequence {} where {seq} was expected (records missing or added between segments)",
                    header.first_seq
                ));
            } else if header.prev_chain != chain {
                self.problem(format!(
                    "{name}: does not continue the hash chain of the segment before it"
                ));
            }
        } else if n == 1 && (header.first_seq != 1 || header.prev_chain != [0; 32]) {
            self.problem(format!(
                "{name}: the first segment does not start the chain"
            ));
        }
    }

    /// Corrupt bytes, broken links and a partial frame at the end.
    fn damage(&mut self, name: &str, scan: &Scan, len: usize) {
        for c in &scan.corrupt {
            self.problem(format!(
                "{name} offset {}: corrupt ({}); intact frames resume at offset {}",
                c.offset, c.why, c.resumes_at
            ));
        }
        for l in &scan.links {
            self.problem(format!("{name} offset {}: {}", l.offset, l.what));
        }
        if let Ending::TornTail { offset } = scan.ending {
            self.problem(format!(
                "{name} offset {offset}: ends in a partial frame of {} bytes (truncated, or a write the server has not yet recovered)",
                len - offset
            ));
        }
    }

    /// Counts the intact entries, notes their chain hashes, and checks
    /// each retention entry.
    fn entries(&mut self, name: &str, bytes: &[u8], scan: &Scan) {
        for f in &scan.frames {
            self.report.entries += 1;
            self.report.first_seq.get_or_insert(f.seq);
            self.report.last_seq = Some(f.seq);
            self.tips.insert(f.seq, f.chain);
            let payload = &bytes[f.payload.clone()];
            if payload.first() == Some(&RETENTION_TAG) {
                self.retention_entry(name, f.offset, payload);
            }
        }
    }

    /// A signed retention entry vouches for the deletion of the segments it
    /// names.
    fn retention_entry(&mut self, name: &str, offset: usize, payload: &[u8]) {
        let Some(Entry::Retention(ret)) = LedgerEntry::decode(payload).ok().and_then(|e| e.entry)
        else {
            return;
        };
        let statement = seal::retention_statement(&ret);
        let ok = <[u8; 64]>::try_from(ret.signature.as_slice())
            .ok()
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
            .is_some_and(|sig| self.key.verify_strict(statement.as_bytes(), &sig).is_ok());
        if ok {
            self.retained.extend(ret.first_segment..=ret.last_segment);
        } else {
            self.problem(format!(
                "{name} offset {offset}: retention entry for segments {}..{} has no valid signature",
                ret.first_segment, ret.last_segment
            ));
        }
    }

    /// A sealed segment holds what its seal says: count, sequence range,
    /// last chain hash, Merkle root.
    fn matches_seal(&mut self, name: &str, s: &Seal, scan: &Scan) {
        self.report.sealed += 1;
        let (tip_seq, tip_chain) = scan.tip();
        let mut wrong = Vec::new();
        if s.records != scan.frames.len() as u64 {
            wrong.push(format!(
                "{} records sealed, {} present",
                s.records,
                scan.frames.len()
            ));
        }
        if s.first_seq != scan.header.first_seq || s.last_seq + 1 != tip_seq {
            wrong.push(format!(
                "sequence {}..{} sealed, {}..{} present",
                s.first_seq,
                s.last_seq,
                scan.header.first_seq,
                tip_seq.saturating_sub(1)
            ));
        }
        if s.last_chain != tip_chain {
            wrong.push("last chain hash differs".into());
        }
        if s.merkle_root != merkle::root(&scan.leaves) {
            wrong.push("Merkle root differs".into());
        }
        if !wrong.is_empty() {
            self.problem(format!(
                "{name}: does not match its seal: {}",
                wrong.join("; ")
            ));
        }
    }

    /// Every missing segment was deleted by a signed retention entry.
    fn retention_covers_missing(&mut self) {
        for n in std::mem::take(&mut self.missing) {
            if self.retained.contains(&n) {
                self.report.retained += 1;
            } else {
                self.problem(format!(
                    "{}: missing; its seal is present and no retention entry covers it (deleted outside the retention policy)",
                    self.layout.show(&self.layout.segment(n))
                ));
            }
        }
    }

    /// HEAD: the log must still reach the last record the writer signed for.
    fn head(&mut self) {
        let text = match std::fs::read_to_string(self.layout.head()) {
            Ok(text) => text,
            Err(_) if self.report.entries == 0 => return,
            Err(e) => return self.problem(format!("HEAD: unreadable: {e}")),
        };
        let head = match Head::verify(&text, self.key) {
            Ok(head) => head,
            Err(why) => return self.problem(format!("HEAD: {why}")),
        };
        match self.tips.get(&head.sequence) {
            Some(chain) if *chain == head.chain => {}
            Some(_) => self.problem(format!(
                "HEAD: the record at sequence {} is not the one HEAD signed for",
                head.sequence
            )),
            None => self.problem(format!(
                "HEAD names sequence {} (segment {}), but the log ends at {} (records cut off the end)",
                head.sequence,
                head.segment,
                self.report.last_seq.unwrap_or(0)
            )),
        }
    }
}
