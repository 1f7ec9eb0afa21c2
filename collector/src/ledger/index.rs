//! Per-segment session index: which sessions a sealed segment holds, per
//! caller (see `caller`), their summary (for `tracegate sessions`) and the
//! offsets of their records (for `tracegate replay`), so neither reads
//! whole segments.
//!
//! The server rebuilds every index from the segments at start-up; readers
//! check each frame they reach through an index (CRC, session id, caller),
//! so a stale or edited index can hide nothing it did not already fail to
//! list. An index of another version is ignored (the segment is scanned).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::Record;

use crate::caller::Caller;

/// Written into every index; readers use only their own version.
pub const INDEX_VERSION: u32 = 2;

/// What one caller's session looks like, over the records seen so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub first_unix_nanos: i64,
    pub last_unix_nanos: i64,
    /// Whole exchanges (records written ahead are not counted twice).
    pub exchanges: u64,
}

impl SessionSummary {
    pub fn add(&mut self, r: &Record) {
        let end = r.end_unix_nanos.max(r.request_start_unix_nanos);
        if self.exchanges == 0 && self.first_unix_nanos == 0 {
            self.first_unix_nanos = r.request_start_unix_nanos;
            self.last_unix_nanos = end;
        }
        self.first_unix_nanos = self.first_unix_nanos.min(r.request_start_unix_nanos);
        self.last_unix_nanos = self.last_unix_nanos.max(end);
        if r.phase() == Phase::Exchange {
            self.exchanges += 1;
        }
    }

    pub fn merge(&mut self, other: &SessionSummary) {
        if self.first_unix_nanos == 0 && self.exchanges == 0 {
            *self = other.clone();
            return;
        }
        self.first_unix_nanos = self.first_unix_nanos.min(other.first_unix_nanos);
        self.last_unix_nanos = self.last_unix_nanos.max(other.last_unix_nanos);
        self.exchanges += other.exchanges;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionEntry {
    #[serde(flatten)]
    pub summary: SessionSummary,
    /// Frame offsets in the segment.
    pub offsets: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentIndex {
    #[serde(default)]
    pub version: u32,
    pub segment: u64,
    /// Session id → caller key (`Caller::key`) → that caller's records.
    pub sessions: BTreeMap<String, BTreeMap<String, SessionEntry>>,
    /// Approval id → offsets of its events.
    #[serde(default)]
    pub approvals: BTreeMap<String, Vec<u64>>,
}

impl SegmentIndex {
    pub fn new(segment: u64) -> Self {
        Self {
            version: INDEX_VERSION,
            segment,
            sessions: BTreeMap::new(),
            approvals: BTreeMap::new(),
        }
    }

    pub fn add_approval(&mut self, id: &str, offset: u64) {
        self.approvals
            .entry(id.to_string())
            .or_default()
            .push(offset);
    }

    pub fn add(&mut self, r: &Record, offset: u64) {
        if !self.sessions.contains_key(&r.session_id) {
            self.sessions.insert(r.session_id.clone(), BTreeMap::new());
        }
        let Some(callers) = self.sessions.get_mut(&r.session_id) else {
            return;
        };
        let e = callers.entry(Caller::of(r).key()).or_default();
        e.summary.add(r);
        e.offsets.push(offset);
    }
}
