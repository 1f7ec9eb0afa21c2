//! `tracegate tail`: which records to show, and one line per record.

use std::io::{self, Write};
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::Record;

use super::{millis, time};
use crate::metrics::identity_label as identity;
use crate::term::Safe;

/// What `tail` shows; every condition set must hold.
#[derive(Debug, Default, Clone)]
pub struct TailFilter {
    pub session: Option<String>,
    /// The verified subject, `anonymous` or `rejected`.
    pub identity: Option<String>,
    /// `allowed`, `masked`, `blocked`, `refused`, ... as on the record.
    pub verdict: Option<String>,
    /// A detector that found something, in the request or the answer.
    pub detector: Option<String>,
}

impl TailFilter {
    pub fn matches(&self, r: &Record) -> bool {
        let inspection = r.inspection.as_ref();
        self.session.as_ref().is_none_or(|s| *s == r.session_id)
            && self.identity.as_ref().is_none_or(|i| *i == identity(r))
            && self.verdict.as_ref().is_none_or(|v| *v == verdict(r))
            && self.detector.as_ref().is_none_or(|d| {
                inspection.is_some_and(|i| {
                    i.request_findings.contains_key(d) || i.response_findings.contains_key(d)
                })
            })
    }
}

fn verdict(r: &Record) -> &str {
    r.inspection
        .as_ref()
        .map(|i| i.verdict.as_str())
        .filter(|v| !v.is_empty())
        .unwrap_or("allowed")
}

/// `TIME  session S  WHO  POST /path -> 200  verdict [findings]  model
/// tokens  12.0 ms`, terminal-safe.
pub fn write_tail_line(out: &mut impl Write, r: &Record) -> io::Result<()> {
    let mut line = format!(
        "{}  session {}  {}  {} {} -> {}  {}",
        time(r.request_start_unix_nanos),
        Safe(&r.session_id),
        Safe(&identity(r)),
        Safe(&r.method),
        Safe(&r.path),
        r.status,
        Safe(verdict(r)),
    );
    if r.phase() == Phase::Request {
        line.push_str(" (written ahead)");
    }
    if let Some(i) = &r.inspection {
        let mut found: Vec<String> = i
            .request_findings
            .iter()
            .chain(&i.response_findings)
            .map(|(k, n)| format!("{}×{n}", Safe(k)))
            .collect();
        found.sort();
        if !found.is_empty() {
            line.push_str(&format!(" [{}]", found.join(" ")));
        }
    }
    if let Some(u) = &r.usage {
        if !u.request_model.is_empty() {
            line.push_str(&format!("  {}", Safe(&u.request_model)));
        }
        let n = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
        if u.input_tokens.is_some() || u.output_tokens.is_some() {
            line.push_str(&format!(
                " {}→{} tokens",
                n(u.input_tokens),
                n(u.output_tokens)
            ));
        }
    }
    line.push_str(&format!("  {}", millis(r.duration_micros)));
    writeln!(out, "{line}")
}
