//! The record store: one append-only log file per data directory.
//!
//! Frame: `len: u32 LE | crc32c(payload): u32 LE | payload` where the payload
//! is one protobuf `Record`. A batch is appended with one write and one
//! fdatasync before it is acknowledged. The hash-chained, signed segment
//! format replaces this file in a later version; the interface stays.

use anyhow::{bail, Context, Result};
use prost::Message;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tracegate_proto::v1::{Record, RejectedRecord};

const LOG_FILE: &str = "records.log";
const LOCK_FILE: &str = "LOCK";
const HEADER_LEN: usize = 8;
/// A record larger than this is refused (the filter's limits keep records far below).
pub const MAX_RECORD_BYTES: usize = 32 << 20;

/// The store opened for writing. Holds an exclusive lock on the directory.
pub struct Store {
    log: File,
    ids: HashSet<String>,
    _lock: File,
}

/// What happened to a batch.
#[derive(Debug, Default, PartialEq)]
pub struct Appended {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: Vec<RejectedRecord>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            bail!("{} is in use by another tracegate server", dir.display());
        }
        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !existed {
            File::open(dir)?.sync_all()?; // make the new file's name durable
        }
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)?;
        let scan = scan(&bytes, &path)?;
        if scan.valid_len < bytes.len() {
            // A torn tail: the last append did not complete, so it was never
            // acknowledged. Cut it off so the next frame starts cleanly.
            eprintln!(
                "tracegate: {}: dropping {} bytes of an incomplete final record",
                path.display(),
                bytes.len() - scan.valid_len
            );
            log.set_len(scan.valid_len as u64)?;
            log.sync_all()?;
        }
        let ids = scan.records.into_iter().map(|r| r.record_id).collect();
        Ok(Store {
            log,
            ids,
            _lock: lock,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Appends the new records of a batch durably. Records already stored are
    /// counted as duplicates; malformed ones are rejected.
    pub fn append(&mut self, records: Vec<Record>) -> Result<Appended> {
        let mut out = Appended::default();
        let mut frames = Vec::new();
        let mut new_ids = HashSet::new();
        for record in records {
            let problem = if record.record_id.is_empty() {
                Some("record_id is empty")
            } else if record.encoded_len() > MAX_RECORD_BYTES {
                Some("record is larger than 32 MiB")
            } else {
                None
            };
            if let Some(reason) = problem {
                out.rejected.push(RejectedRecord {
                    record_id: record.record_id,
                    reason: reason.into(),
                });
                continue;
            }
            if self.ids.contains(&record.record_id) || !new_ids.insert(record.record_id.clone()) {
                out.duplicates += 1;
                continue;
            }
            let payload = record.encode_to_vec();
            frames.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frames.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            frames.extend_from_slice(&payload);
            out.accepted += 1;
        }
        if !frames.is_empty() {
            self.log.write_all(&frames)?;
            self.log.sync_data()?;
            self.ids.extend(new_ids);
        }
        Ok(out)
    }
}

struct Scan {
    records: Vec<Record>,
    valid_len: usize,
}

/// Reads every frame. A frame cut short at the end of the file is a torn
/// tail; a bad checksum or undecodable record anywhere is corruption, which is
/// reported and never silently skipped.
fn scan(bytes: &[u8], path: &Path) -> Result<Scan> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER_LEN) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES {
            bail!(
                "{}: corrupt frame at offset {at}: length {len}",
                path.display()
            );
        }
        let Some(payload) = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            bail!(
                "{}: corrupt frame at offset {at}: checksum mismatch",
                path.display()
            );
        }
        let record = Record::decode(payload)
            .with_context(|| format!("{}: undecodable record at offset {at}", path.display()))?;
        records.push(record);
        at += HEADER_LEN + len;
    }
    Ok(Scan {
        records,
        valid_len: at,
    })
}

fn log_path(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(LOG_FILE);
    if !dir.is_dir() {
        bail!("{} is not a tracegate data directory", dir.display());
    }
    Ok(path)
}

/// Every stored record, in the order received. Readers need no lock: frames
/// are only appended, and a frame still being written reads as a torn tail.
pub fn read_all(dir: &Path) -> Result<Vec<Record>> {
    let path = log_path(dir)?;
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    }
    Ok(scan(&bytes, &path)?.records)
}

/// One session's records, ordered by request start time.
pub fn read_session(dir: &Path, session: &str) -> Result<Vec<Record>> {
    let mut records: Vec<Record> = read_all(dir)?
        .into_iter()
        .filter(|r| r.session_id == session)
        .collect();
    records.sort_by(|a, b| {
        (a.request_start_unix_nanos, &a.record_id).cmp(&(b.request_start_unix_nanos, &b.record_id))
    });
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, session: &str, start: i64) -> Record {
        Record {
            record_id: id.into(),
            session_id: session.into(),
            request_start_unix_nanos: start,
            ..Record::default()
        }
    }

    #[test]
    fn appends_dedupes_and_reads_back_by_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let a = s
            .append(vec![
                rec("b", "s1", 2),
                rec("a", "s1", 1),
                rec("c", "s2", 0),
                rec("a", "s1", 1),
            ])
            .unwrap();
        assert_eq!((a.accepted, a.duplicates), (3, 1));
        let a = s.append(vec![rec("a", "s1", 1), rec("", "s1", 1)]).unwrap();
        assert_eq!((a.accepted, a.duplicates, a.rejected.len()), (0, 1, 1));
        drop(s);

        let ids: Vec<_> = read_session(dir.path(), "s1")
            .unwrap()
            .into_iter()
            .map(|r| r.record_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.len(), 3, "ids are rebuilt from the log on open");
    }

    #[test]
    fn second_server_on_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn torn_tail_is_cut_but_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.append(vec![rec("a", "s", 1), rec("b", "s", 2)]).unwrap();
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let full = std::fs::read(&path).unwrap();

        // Every truncation keeps exactly the complete frames before it.
        let first = HEADER_LEN + rec("a", "s", 1).encoded_len();
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.len(), usize::from(cut >= first), "cut at {cut}");
        }

        let mut bad = full.clone();
        bad[HEADER_LEN + 1] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let e = Store::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("offset 0: checksum mismatch"), "{e}");
    }
}
