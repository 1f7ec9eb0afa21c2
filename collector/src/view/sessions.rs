//! The session list (`tracegate sessions`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use super::{caller, time};
use crate::ledger::caller::Caller;
use crate::ledger::index::SessionSummary;
use crate::term::Safe;

/// One row per session and caller (`replay SESSION --caller CALLER` shows
/// that row's exchanges), with the policies its exchanges ran under.
pub fn write_sessions(
    out: &mut impl Write,
    sessions: &BTreeMap<(String, Caller), SessionSummary>,
) -> io::Result<()> {
    // Rows are per printed caller: callers that print alike (possible only
    // with an issuer holding `|`) share one.
    let mut printed: BTreeMap<(&str, String), SessionSummary> = BTreeMap::new();
    for ((id, c), row) in sessions {
        printed
            .entry((id.as_str(), caller::key(c)))
            .or_default()
            .merge(row);
    }
    let mut rows: Vec<_> = printed.iter().collect();
    rows.sort_by_key(|(key, row)| (row.first_unix_nanos, *key));
    // The exchange count stays the last column (scripts read it there).
    writeln!(
        out,
        "{:<40} {:<40} {:<24} {:<24} {:<25} {:>9}",
        "SESSION", "CALLER", "FIRST", "LAST", "POLICIES", "EXCHANGES"
    )?;
    for ((id, who), row) in rows {
        writeln!(
            out,
            "{:<40} {:<40} {:<24} {:<24} {:<25} {:>9}",
            Safe(id).to_string(),
            Safe(who).to_string(),
            time(row.first_unix_nanos),
            time(row.last_unix_nanos),
            policies(&row.policies),
            row.exchanges
        )?;
    }
    Ok(())
}

/// The policies a session ran under, by the first 12 hex digits of their
/// SHA-256 (as `replay` and `tracegate policy check` print them whole);
/// `-` for records of filters that do not state one.
fn policies(hashes: &BTreeSet<String>) -> String {
    if hashes.is_empty() {
        return "-".into();
    }
    let short: Vec<String> = hashes
        .iter()
        .map(|h| Safe(h.get(..12).unwrap_or(h)).to_string())
        .collect();
    short.join(",")
}
