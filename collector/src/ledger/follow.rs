//! Following a data directory while the server writes it (`tracegate tail`),
//! without its lock.
//!
//! A record is shown once its frame is complete in the segment and its CRC
//! holds: the writer writes a group of frames and then fdatasyncs them, and
//! answers the filter only after that. A frame still being written (too
//! short, or its CRC not yet holding in the open segment) is waited for,
//! never shown in part. When a later segment
//! exists, the current one is sealed (the writer seals before it creates the
//! next), so it is read to its end and left; a segment deleted by retention
//! while being followed is left for the next one.

use anyhow::{Context, Result};
use prost::Message;
use std::fs::File;
use std::os::unix::fs::FileExt;
use tracegate_proto::v1::ledger_entry::Entry;
use tracegate_proto::v1::{LedgerEntry, Record};

use super::frame::{self, FRAME_OVERHEAD, MAX_PAYLOAD, SEGMENT_HEADER_LEN};
use super::layout::Layout;

pub struct Follower {
    layout: Layout,
    /// The segment being followed (0: none exists yet).
    segment: u64,
    /// Where its next frame starts.
    offset: u64,
    /// Damage met: a frame whose CRC fails in a sealed segment is skipped
    /// with the rest of that segment.
    pub warnings: Vec<String>,
}

/// What the bytes at a frame's start hold so far.
enum Next {
    Frame {
        len: usize,
        record: Option<Box<Record>>,
    },
    /// Not all of the frame is written yet (or nothing is).
    Incomplete,
    Corrupt(String),
}

impl Follower {
    /// Starts at the end of the store: `poll` returns what is written from
    /// now on. Also returns up to `last` records already stored (those of
    /// the newest segment that has any), oldest first.
    pub fn at_end(layout: Layout, last: usize) -> Result<(Follower, Vec<Record>)> {
        let segments = layout.segments()?;
        let mut f = Follower {
            layout,
            segment: segments.last().copied().unwrap_or(0),
            offset: SEGMENT_HEADER_LEN as u64,
            warnings: Vec::new(),
        };
        let mut earlier = Vec::new();
        if f.segment > 0 {
            earlier = f.read_available(false)?;
        }
        // A segment that just rolled is empty: look back one for context.
        if earlier.len() < last {
            if let Some(&prev) = segments.iter().rev().nth(1) {
                let mut back = Follower {
                    layout: f.layout.clone(),
                    segment: prev,
                    offset: SEGMENT_HEADER_LEN as u64,
                    warnings: Vec::new(),
                };
                let mut older = back.read_available(true)?;
                older.append(&mut earlier);
                earlier = older;
            }
        }
        let skip = earlier.len().saturating_sub(last);
        earlier.drain(..skip);
        Ok((f, earlier))
    }

    /// Records completed since the last call, in stored order (does not
    /// block; callers poll).
    pub fn poll(&mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        loop {
            // Listed before reading: a later segment means the current one
            // was complete before that listing, so one more read finishes it.
            let later = self
                .layout
                .segments()?
                .into_iter()
                .find(|&n| n > self.segment);
            if self.segment > 0 {
                out.append(&mut self.read_available(later.is_some())?);
            }
            match later {
                Some(n) => {
                    self.segment = n;
                    self.offset = SEGMENT_HEADER_LEN as u64;
                }
                None => return Ok(out),
            }
        }
    }

    /// The complete frames of the current segment from `offset` on;
    /// `sealed`: nothing more will be written to it.
    fn read_available(&mut self, sealed: bool) -> Result<Vec<Record>> {
        let path = self.layout.segment(self.segment);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Deleted by retention: `poll` moves on to the next segment.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let len = file.metadata()?.len();
        if len <= self.offset {
            return Ok(Vec::new());
        }
        let mut bytes = vec![0u8; (len - self.offset) as usize];
        file.read_exact_at(&mut bytes, self.offset)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match next(&bytes[at..]) {
                Next::Frame { len, record } => {
                    records.extend(record.map(|r| *r));
                    at += len;
                }
                Next::Incomplete => break,
                // The writer may be mid-write: its pages can land one by one.
                Next::Corrupt(_) if !sealed => break,
                Next::Corrupt(why) => {
                    self.warnings.push(format!(
                        "{}: corrupt frame at offset {} ({why}); the rest of this segment is skipped",
                        self.layout.show(&path),
                        self.offset + at as u64
                    ));
                    at = bytes.len();
                }
            }
        }
        self.offset += at as u64;
        Ok(records)
    }
}

fn next(bytes: &[u8]) -> Next {
    if bytes.len() < FRAME_OVERHEAD {
        return Next::Incomplete;
    }
    let announced = frame::announced_len(&[bytes[0], bytes[1], bytes[2], bytes[3]]);
    if announced > MAX_PAYLOAD {
        return Next::Corrupt(format!("length {announced}"));
    }
    if announced + FRAME_OVERHEAD > bytes.len() {
        return Next::Incomplete;
    }
    match frame::parse_one(bytes) {
        Ok(f) => {
            let record = match LedgerEntry::decode(&bytes[f.payload.clone()]) {
                Ok(LedgerEntry {
                    entry: Some(Entry::Record(r)),
                }) => Some(Box::new(r)),
                _ => None,
            };
            Next::Frame { len: f.len, record }
        }
        Err(why) => Next::Corrupt(why),
    }
}
