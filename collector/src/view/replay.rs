//! One session as `tracegate replay` shows it: caller by caller, a readable
//! timeline each or JSON lines.

use std::io::{self, Write};
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::{ApprovalEvent, Record};

use super::json::write_json_lines;
use super::timeline::write_timeline;
use crate::ledger::caller::Caller;

/// Writes a session's records (as `fold_written_ahead` leaves them), caller
/// by caller: a timeline each, a blank line between, or (`json`) one JSON
/// object per record. `events` are the stored events of the approvals the
/// records name (`approvals_named`).
pub fn write_replay(
    out: &mut impl Write,
    session: &str,
    records: Vec<Record>,
    events: &[ApprovalEvent],
    json: bool,
) -> io::Result<()> {
    for (i, (caller, records)) in by_caller(records).iter().enumerate() {
        if json {
            write_json_lines(out, records)?;
            continue;
        }
        if i > 0 {
            writeln!(out)?;
        }
        write_timeline(out, session, caller, records, events)?;
    }
    Ok(())
}

/// The records of one session, caller by caller (callers in the order of
/// their first exchange, each caller's records in the order given): one
/// caller's exchanges are never shown among another's.
pub(super) fn by_caller(records: Vec<Record>) -> Vec<(Caller, Vec<Record>)> {
    let mut groups: Vec<(Caller, Vec<Record>)> = Vec::new();
    for r in records {
        let caller = Caller::of(&r);
        match groups.iter_mut().find(|(c, _)| *c == caller) {
            Some((_, rs)) => rs.push(r),
            None => groups.push((caller, vec![r])),
        }
    }
    groups
}

/// The exchanges of a session as shown: a record written ahead
/// (`recording.mode: write_ahead`) is folded into the record that completes
/// it; one never completed (the proxy stopped mid-exchange) stays, marked.
pub fn fold_written_ahead(records: Vec<Record>) -> Vec<Record> {
    let completed: std::collections::HashSet<String> = records
        .iter()
        .filter(|r| !r.request_record_id.is_empty())
        .map(|r| r.request_record_id.clone())
        .collect();
    records
        .into_iter()
        .filter(|r| !(r.phase() == Phase::Request && completed.contains(&r.record_id)))
        .collect()
}

/// The ids of the approvals these records name, whose events the timeline
/// shows with them.
pub fn approvals_named(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.approval.as_ref().map(|a| a.id.clone()))
        .filter(|id| !id.is_empty())
        .collect()
}
