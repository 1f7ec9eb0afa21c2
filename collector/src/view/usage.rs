//! `tracegate usage`: tokens per caller, model or session, summed from the
//! records' `usage`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::Record;

use super::caller;
use crate::ledger::caller::Caller;
use crate::term::{self, Safe};

/// What the totals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    /// The caller as `replay --caller` names it.
    Identity,
    /// The model the request asked for.
    Model,
    /// The session id.
    Session,
}

/// One group's totals. Counts the answers did not state are not guessed:
/// `exchanges_without_usage` says how many exchanges add nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub key: String,
    pub exchanges: u64,
    pub exchanges_without_usage: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Sums the records' usage by `by`. A written-ahead record is not counted
/// (its exchange's record is); records without usage (not LLM calls) are
/// left out.
#[derive(Debug)]
pub struct UsageReport {
    by: UsageBy,
    groups: BTreeMap<String, UsageTotals>,
}

impl UsageReport {
    pub fn new(by: UsageBy) -> UsageReport {
        UsageReport {
            by,
            groups: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, r: &Record) {
        if r.phase() == Phase::Request {
            return;
        }
        let Some(u) = &r.usage else { return };
        let key = match self.by {
            UsageBy::Identity => caller::key(&Caller::of(r)),
            UsageBy::Model => u.request_model.clone(),
            UsageBy::Session => r.session_id.clone(),
        };
        let t = self
            .groups
            .entry(key.clone())
            .or_insert_with(|| UsageTotals {
                key,
                ..UsageTotals::default()
            });
        t.exchanges += 1;
        if u.input_tokens.is_none() && u.output_tokens.is_none() {
            t.exchanges_without_usage += 1;
        }
        let add = |total: &mut u64, n: Option<u64>| *total = total.saturating_add(n.unwrap_or(0));
        add(&mut t.input_tokens, u.input_tokens);
        add(&mut t.output_tokens, u.output_tokens);
        add(&mut t.cached_input_tokens, u.cached_input_tokens);
        add(&mut t.reasoning_tokens, u.reasoning_tokens);
    }

    /// Groups, most tokens first.
    pub fn rows(&self) -> Vec<&UsageTotals> {
        let mut rows: Vec<_> = self.groups.values().collect();
        rows.sort_by(|a, b| {
            (b.input_tokens.saturating_add(b.output_tokens))
                .cmp(&a.input_tokens.saturating_add(a.output_tokens))
                .then(a.key.cmp(&b.key))
        });
        rows
    }

    pub fn write_table(&self, out: &mut impl Write) -> io::Result<()> {
        let title = match self.by {
            UsageBy::Identity => "CALLER",
            UsageBy::Model => "MODEL",
            UsageBy::Session => "SESSION",
        };
        writeln!(
            out,
            "{title:<40} {:>9} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "EXCHANGES", "INPUT", "OUTPUT", "CACHED", "REASONING", "NO USAGE"
        )?;
        for t in self.rows() {
            writeln!(
                out,
                "{:<40} {:>9} {:>12} {:>12} {:>12} {:>12} {:>10}",
                Safe(&t.key).to_string(),
                t.exchanges,
                t.input_tokens,
                t.output_tokens,
                t.cached_input_tokens,
                t.reasoning_tokens,
                t.exchanges_without_usage
            )?;
        }
        Ok(())
    }

    /// One JSON object per group and line.
    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        for t in self.rows() {
            term::write_json(out, t)?;
            writeln!(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::v1::{identity::Status, Identity, Usage};

    fn record(subject: &str, model: &str, tokens: Option<(u64, u64)>, phase: Phase) -> Record {
        Record {
            session_id: format!("s-{subject}"),
            phase: phase as i32,
            identity: Some(Identity {
                status: Status::Verified as i32,
                issuer: "https://idp".into(),
                subject: subject.into(),
                ..Identity::default()
            }),
            usage: Some(Usage {
                request_model: model.into(),
                input_tokens: tokens.map(|t| t.0),
                output_tokens: tokens.map(|t| t.1),
                ..Usage::default()
            }),
            ..Record::default()
        }
    }

    #[test]
    fn totals_by_caller_and_model_count_missing_usage_apart() {
        let records = [
            record("alice", "gpt-4o", Some((10, 5)), Phase::Exchange),
            record("alice", "claude", Some((7, 1)), Phase::Exchange),
            record("alice", "gpt-4o", None, Phase::Exchange),
            record("alice", "gpt-4o", Some((99, 99)), Phase::Request),
            record("bob", "gpt-4o", Some((1, 1)), Phase::Exchange),
            Record::default(),
        ];
        let mut by_caller = UsageReport::new(UsageBy::Identity);
        let mut by_model = UsageReport::new(UsageBy::Model);
        for r in &records {
            by_caller.add(r);
            by_model.add(r);
        }
        let rows = by_caller.rows();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].key, "https://idp|alice");
        assert_eq!(
            (rows[0].exchanges, rows[0].exchanges_without_usage),
            (3, 1),
            "the written-ahead record is not counted"
        );
        assert_eq!((rows[0].input_tokens, rows[0].output_tokens), (17, 6));
        let rows = by_model.rows();
        assert_eq!(rows[0].key, "gpt-4o");
        assert_eq!((rows[0].input_tokens, rows[0].exchanges), (11, 3));
        let mut text = Vec::new();
        by_model.write_table(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("MODEL"), "{text}");
        let mut json = Vec::new();
        by_model.write_json(&mut json).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(json).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["key"], "gpt-4o");
        assert_eq!(first["input_tokens"], 11);
    }
}
