//! What the CLI prints: a session replayed (`replay`: a readable timeline
//! per caller, `timeline`, its bodies read as messages by `conversation`
//! or as sent, or JSON lines, `json`), the session list
//! (`sessions`), new records as they come (`tail`), a caller as text
//! (`caller`), and the reports of `verify`,
//! `certs` and `keygen` (`report`). Every text that comes from a record is
//! printed through `term::Safe`.

use std::time::{Duration, UNIX_EPOCH};
use tracegate_proto::v1::record::{AnsweredBy, UpstreamSaw};
use tracegate_proto::v1::Record;

pub mod caller;
pub mod conversation;
mod json;
mod replay;
pub mod report;
mod sessions;
mod tail;
mod timeline;
mod usage;

pub use json::write_json_lines;
pub use replay::{approvals_named, fold_written_ahead, write_replay, ReplayFormat};
pub use sessions::write_sessions;
pub use tail::{write_tail_line, TailFilter};
pub use usage::{UsageBy, UsageReport, UsageTotals};

pub(crate) fn time(unix_nanos: i64) -> String {
    if unix_nanos <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_nanos(unix_nanos as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn millis(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
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
