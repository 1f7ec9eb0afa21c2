//! How records are shown: a readable timeline (`timeline`), JSON lines
//! (`json`), the session list (`sessions`). Every text that comes from a
//! record is printed through `term::Safe`.

use std::time::{Duration, UNIX_EPOCH};
use tracegate_proto::v1::record::{AnsweredBy, Phase, UpstreamSaw};
use tracegate_proto::v1::Record;

use crate::ledger::caller::Caller;

pub mod caller;
mod json;
mod sessions;
mod timeline;

pub use json::write_json_lines;
pub use sessions::write_sessions;
pub use timeline::write_timeline;

fn time(unix_nanos: i64) -> String {
    if unix_nanos <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_nanos(unix_nanos as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn millis(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

/// The records of one session, caller by caller (callers in the order of
/// their first exchange, each caller's records in the order given): one
/// caller's exchanges are never shown among another's.
pub fn by_caller(records: Vec<Record>) -> Vec<(Caller, Vec<Record>)> {
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

/// What the record says the upstream saw, when it says it.
fn upstream_saw(r: &Record) -> Option<UpstreamSaw> {
    match UpstreamSaw::try_from(r.upstream_saw).unwrap_or(UpstreamSaw::Unknown) {
        UpstreamSaw::Unknown => None,
        saw => Some(saw),
    }
}

/// Who answered the client, when the record says it.
fn answered_by(r: &Record) -> Option<AnsweredBy> {
    match AnsweredBy::try_from(r.answered_by).unwrap_or(AnsweredBy::Unknown) {
        AnsweredBy::Unknown => None,
        by => Some(by),
    }
}

/// `upstream`, `tracegate`, `proxy`, `nobody`: the JSON value.
fn answered_by_name(by: AnsweredBy) -> &'static str {
    match by {
        AnsweredBy::Unknown => "unknown",
        AnsweredBy::Upstream => "upstream",
        AnsweredBy::Tracegate => "tracegate",
        AnsweredBy::Proxy => "proxy",
        AnsweredBy::Nobody => "nobody",
    }
}

/// `nothing`, `headers`, `request`: the JSON value.
fn upstream_name(saw: UpstreamSaw) -> &'static str {
    match saw {
        UpstreamSaw::Unknown => "unknown",
        UpstreamSaw::Nothing => "nothing",
        UpstreamSaw::Headers => "headers",
        UpstreamSaw::Request => "request",
    }
}

#[cfg(test)]
mod tests;
