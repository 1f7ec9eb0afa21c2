//! Per-segment session index: which sessions a sealed segment holds, per
//! caller (see `caller`), their summary (for `tracegate sessions`) and the
//! offsets of their records (for `tracegate replay`), and the offsets of
//! approval events, so neither reads whole segments.
//!
//! The server rebuilds every index from the segments at start-up; readers
//! check each frame they reach through an index (CRC, session id, caller),
//! so a stale or edited index can hide nothing it did not already fail to
//! list. An index of another version is ignored (the segment is scanned)
//! until the server's next start rewrites it.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::Record;

use super::caller::Caller;
use super::layout::{write_atomic, Layout};

/// Written into every index; readers use only their own version.
/// 3: callers stored structured (`Caller`), not as their printed key.
/// 4: sessions list the policies (SHA-256) their exchanges ran under.
pub const INDEX_VERSION: u32 = 4;

/// What one caller's session looks like, over the records seen so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub first_unix_nanos: i64,
    pub last_unix_nanos: i64,
    /// Whole exchanges (records written ahead are not counted twice).
    pub exchanges: u64,
    /// The policies (SHA-256 of the canonical configuration) the records
    /// name: more than one when the configuration was reloaded mid-session.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub policies: BTreeSet<String>,
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
        if let Some(p) = r.policy.as_ref().filter(|p| !p.sha256.is_empty()) {
            if !self.policies.contains(&p.sha256) {
                self.policies.insert(p.sha256.clone());
            }
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
        self.policies.extend(other.policies.iter().cloned());
    }
}

/// One caller's records in one session of the segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub caller: Caller,
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
    /// Session id → its callers' records, a caller once.
    pub sessions: BTreeMap<String, Vec<SessionEntry>>,
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
        let Some(entry) = self.entry(&r.session_id, Caller::of(r)) else {
            return;
        };
        entry.summary.add(r);
        entry.offsets.push(offset);
    }

    /// The caller's entry in the session, made if new.
    fn entry(&mut self, session: &str, caller: Caller) -> Option<&mut SessionEntry> {
        if !self.sessions.contains_key(session) {
            self.sessions.insert(session.to_string(), Vec::new());
        }
        let entries = self.sessions.get_mut(session)?;
        match entries.iter().position(|e| e.caller == caller) {
            Some(at) => entries.get_mut(at),
            None => {
                entries.push(SessionEntry {
                    caller,
                    summary: SessionSummary::default(),
                    offsets: Vec::new(),
                });
                entries.last_mut()
            }
        }
    }

    /// Segment `n`'s index as stored, if it is there, readable, and of this
    /// version.
    pub fn load(layout: &Layout, n: u64) -> Option<SegmentIndex> {
        let bytes = std::fs::read(layout.index(n)).ok()?;
        serde_json::from_slice::<SegmentIndex>(&bytes)
            .ok()
            .filter(|i| i.segment == n && i.version == INDEX_VERSION)
    }

    pub fn store(&self, layout: &Layout) -> Result<()> {
        let json = serde_json::to_vec(self)?;
        // Not fsynced: an index is rebuilt from its segment at every start.
        write_atomic(&layout.index(self.segment), &json, false)
    }
}
