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

use super::frame::{self, Ending};
use super::layout::Layout;
use super::merkle;
use super::seal::{self, hex, Head, Seal};
use super::Hash;

#[derive(Debug, Default)]
pub struct Report {
    pub segments: u64,
    pub sealed: u64,
    /// Entries (records and retention statements) checked.
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
    let mut r = Report::default();
    if !layout.exists() {
        r.problems.push(format!(
            "{} is not a tracegate data directory (no segments/)",
            layout.root.display()
        ));
        return Ok(r);
    }
    let segments: BTreeSet<u64> = layout.segments()?.into_iter().collect();
    let seal_numbers = layout.seals()?;

    // Seals: signature, then the chain of seals.
    let mut seals: BTreeMap<u64, Seal> = BTreeMap::new();
    // The last seal seen and its hash (`None` inside: it did not verify).
    let mut previous: Option<(u64, Option<Hash>)> = None;
    for &n in &seal_numbers {
        let path = layout.seal(n);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                r.problems
                    .push(format!("{}: unreadable: {e}", layout.show(&path)));
                continue;
            }
        };
        match Seal::verify(&text, key) {
            Ok(s) => {
                if s.segment != n {
                    r.problems.push(format!(
                        "{}: names segment {} (a seal moved or copied)",
                        layout.show(&path),
                        s.segment
                    ));
                }
                // Segments between this seal and the one before may lack a
                // seal only if they are present (left unsealed by damage,
                // which is reported with the segment).
                let from = previous.map_or(1, |(p, _)| p + 1);
                if (from..n).all(|m| segments.contains(&m)) {
                    if let Some(h) = previous.map_or(Some([0; 32]), |(_, h)| h) {
                        if h != s.previous {
                            r.problems.push(format!(
                                "{}: does not follow from the seal before it (previous {})",
                                layout.show(&path),
                                hex(&s.previous)
                            ));
                        }
                    }
                } else {
                    r.problems
                        .push(format!("seals of segments {from}..{} are missing", n - 1));
                }
                seals.insert(n, s);
                previous = Some((n, Some(seal::seal_hash(&text))));
            }
            Err(why) => {
                r.problems.push(format!("{}: {why}", layout.show(&path)));
                previous = Some((n, None));
            }
        }
    }

    // Segments, in order, with the state carried across them.
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
    let mut expect: Option<(u64, Hash)> = None;
    let mut retained: BTreeSet<u64> = BTreeSet::new();
    let mut missing: Vec<u64> = Vec::new();
    let mut tips: BTreeMap<u64, Hash> = BTreeMap::new();
    for n in first..=last {
        let path = layout.segment(n);
        let name = layout.show(&path);
        let seal = seals.get(&n);
        if !segments.contains(&n) {
            match seal {
                Some(s) => {
                    missing.push(n);
                    expect = Some((s.last_seq + 1, s.last_chain));
                    tips.insert(s.last_seq, s.last_chain);
                }
                None => {
                    r.problems
                        .push(format!("{name}: missing, and so is its seal"));
                    expect = None;
                }
            }
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                r.problems.push(format!("{name}: unreadable: {e}"));
                expect = None;
                continue;
            }
        };
        r.segments += 1;
        r.bytes += bytes.len() as u64;
        let scan = match frame::scan(&bytes) {
            Ok(s) => s,
            Err(why) => {
                r.problems.push(format!("{name}: {why}"));
                expect = None;
                continue;
            }
        };
        if scan.header.segment != n {
            r.problems.push(format!(
                "{name}: header names segment {} (a segment renamed)",
                scan.header.segment
            ));
        }
        if let Some((seq, chain)) = expect {
            if scan.header.first_seq != seq {
                r.problems.push(format!(
                    "{name}: starts at sequence {} where {seq} was expected (records missing or added between segments)",
                    scan.header.first_seq
                ));
            } else if scan.header.prev_chain != chain {
                r.problems.push(format!(
                    "{name}: does not continue the hash chain of the segment before it"
                ));
            }
        } else if n == 1 && (scan.header.first_seq != 1 || scan.header.prev_chain != [0; 32]) {
            r.problems.push(format!(
                "{name}: the first segment does not start the chain"
            ));
        }
        for c in &scan.corrupt {
            r.problems.push(format!(
                "{name} offset {}: corrupt ({}); intact frames resume at offset {}",
                c.offset, c.why, c.resumes_at
            ));
        }
        for l in &scan.links {
            r.problems
                .push(format!("{name} offset {}: {}", l.offset, l.what));
        }
        if let Ending::TornTail { offset } = scan.ending {
            r.problems.push(format!(
                "{name} offset {offset}: ends in a partial frame of {} bytes (truncated, or a write the server has not yet recovered)",
                bytes.len() - offset
            ));
        }
        for f in &scan.frames {
            r.entries += 1;
            r.first_seq.get_or_insert(f.seq);
            r.last_seq = Some(f.seq);
            tips.insert(f.seq, f.chain);
            let payload = &bytes[f.payload.clone()];
            if payload.first() == Some(&RETENTION_TAG) {
                check_retention(payload, key, &name, f.offset, &mut r, &mut retained);
            }
        }
        match seal {
            Some(s) => {
                r.sealed += 1;
                let (tip_seq, tip_chain) = scan.tip();
                let root = merkle::root(&scan.leaves);
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
                if s.merkle_root != root {
                    wrong.push("Merkle root differs".into());
                }
                if !wrong.is_empty() {
                    r.problems.push(format!(
                        "{name}: does not match its seal: {}",
                        wrong.join("; ")
                    ));
                }
            }
            None if n != last => r.problems.push(format!(
                "{name}: closed (a later segment exists) but has no seal"
            )),
            None => {}
        }
        expect = Some(scan.tip());
    }
    for n in missing {
        if retained.contains(&n) {
            r.retained += 1;
        } else {
            r.problems.push(format!(
                "{}: missing; its seal is present and no retention entry covers it (deleted outside the retention policy)",
                layout.show(&layout.segment(n))
            ));
        }
    }

    // HEAD: the log must still reach the last record the writer signed for.
    match std::fs::read_to_string(layout.head()) {
        Ok(text) => match Head::verify(&text, key) {
            Ok(head) => match tips.get(&head.sequence) {
                Some(chain) if *chain == head.chain => {}
                Some(_) => r.problems.push(format!(
                    "HEAD: the record at sequence {} is not the one HEAD signed for",
                    head.sequence
                )),
                None => r.problems.push(format!(
                    "HEAD names sequence {} (segment {}), but the log ends at {} (records cut off the end)",
                    head.sequence,
                    head.segment,
                    r.last_seq.unwrap_or(0)
                )),
            },
            Err(why) => r.problems.push(format!("HEAD: {why}")),
        },
        Err(_) if r.entries == 0 => {}
        Err(e) => r.problems.push(format!("HEAD: unreadable: {e}")),
    }
    Ok(r)
}

fn check_retention(
    payload: &[u8],
    key: &VerifyingKey,
    name: &str,
    offset: usize,
    r: &mut Report,
    retained: &mut BTreeSet<u64>,
) {
    let Some(Entry::Retention(ret)) = LedgerEntry::decode(payload).ok().and_then(|e| e.entry)
    else {
        return;
    };
    let statement = seal::retention_statement(&ret);
    let ok = <[u8; 64]>::try_from(ret.signature.as_slice())
        .ok()
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .is_some_and(|sig| key.verify_strict(statement.as_bytes(), &sig).is_ok());
    if ok {
        retained.extend(ret.first_segment..=ret.last_segment);
    } else {
        r.problems.push(format!(
            "{name} offset {offset}: retention entry for segments {}..{} has no valid signature",
            ret.first_segment, ret.last_segment
        ));
    }
}
