//! One session as `tracegate replay` shows it: caller by caller, a readable
//! timeline each (bodies read as the conversation, or as sent with
//! `--raw`), or JSON lines.

use std::io::{self, Write};
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::{ApprovalEvent, Record};

use super::conversation::{conversation, Exchange, Message, Part, Side, Text};
use super::json::write_json_lines;
use super::timeline::{write_timeline_with, Bodies};
use crate::ledger::caller::Caller;
use crate::term::Safe;

/// What `replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFormat {
    /// The timeline with each exchange's messages; `color` highlights the
    /// mask placeholders (a terminal).
    Conversation { color: bool },
    /// The timeline with the bodies as sent (`--raw`).
    Raw,
    /// One JSON object per record (`--json`).
    Json,
}

/// Writes a session's records (as `fold_written_ahead` leaves them), caller
/// by caller: a timeline each, a blank line between, or one JSON object per
/// record. `events` are the stored events of the approvals the records name
/// (`approvals_named`).
pub fn write_replay(
    out: &mut impl Write,
    session: &str,
    records: Vec<Record>,
    events: &[ApprovalEvent],
    format: ReplayFormat,
) -> io::Result<()> {
    for (i, (caller, records)) in by_caller(records).iter().enumerate() {
        if format == ReplayFormat::Json {
            write_json_lines(out, records)?;
            continue;
        }
        if i > 0 {
            writeln!(out)?;
        }
        let read;
        let bodies = match format {
            ReplayFormat::Conversation { color } => {
                read = conversation(session, records, events);
                Bodies::Conversation {
                    exchanges: &read.exchanges,
                    color,
                }
            }
            _ => Bodies::Raw,
        };
        write_timeline_with(out, session, caller, records, events, &bodies)?;
    }
    Ok(())
}

/// An exchange's messages, below its timeline lines: the request's (those
/// the caller's previous exchange did not already send), then the answer.
pub(super) fn write_conversation(
    out: &mut impl Write,
    x: &Exchange,
    color: bool,
) -> io::Result<()> {
    if x.earlier_messages > 0 {
        writeln!(
            out,
            "   (the first {} messages repeat the previous exchange's request; not shown again)",
            x.earlier_messages
        )?;
    }
    write_side(out, "request", &x.request, color)?;
    write_side(out, "answer", &x.response, color)
}

fn write_side(out: &mut impl Write, label: &str, side: &Side, color: bool) -> io::Result<()> {
    let mut notes = Vec::new();
    if side.streamed {
        notes.push("streamed, reassembled");
    }
    if side.truncated {
        notes.push("cut when recorded");
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    if side.empty {
        return writeln!(out, "   {label}: (empty)");
    }
    if let Some(raw) = &side.raw {
        writeln!(out, "   {label}{notes}: not read as messages; as sent:")?;
        return write_lines(out, "     | ", "     | ", raw, color);
    }
    writeln!(out, "   {label}{notes}:")?;
    for m in &side.messages {
        write_message(out, m, color)?;
    }
    Ok(())
}

fn write_message(out: &mut impl Write, m: &Message, color: bool) -> io::Result<()> {
    let role = m.role.name();
    for part in &m.parts {
        let head = |what: &str| format!("     [{role}] {what}");
        match part {
            Part::Text { text } => write_lines(out, &head(""), "       ", text, color)?,
            Part::Reasoning { text } => {
                write_lines(out, &head("thinking: "), "       ", text, color)?
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                let mut first = head("calls ");
                first.push_str(&inline(name, color));
                if !id.is_empty() {
                    first.push_str(&format!(" ({})", Safe(id)));
                }
                first.push_str(": ");
                write_lines(out, &first, "       ", arguments, color)?;
            }
            Part::ToolResult { id, content } => {
                let first = if id.is_empty() {
                    head("result: ")
                } else {
                    head(&format!("result of {}: ", Safe(id)))
                };
                write_lines(out, &first, "       ", content, color)?;
            }
            Part::Other { what } => writeln!(out, "{}", head(&format!("({})", Safe(what))))?,
            Part::Error { text } => write_lines(out, &head("error: "), "       ", text, color)?,
        }
    }
    Ok(())
}

/// `text` on one line, terminal-safe, placeholders highlighted.
fn inline(text: &Text, color: bool) -> String {
    let mut s = String::new();
    for (piece, masked) in text.segments() {
        if masked && color {
            s.push_str(&format!("\x1b[7m{}\x1b[27m", Safe(piece)));
        } else {
            s.push_str(&Safe(piece).to_string());
        }
    }
    s
}

/// `text` line by line: the first after `first`, the rest after `indent`;
/// each line terminal-safe (a lone CR and every other control shown
/// escaped), placeholders in reverse video when `color`.
fn write_lines(
    out: &mut impl Write,
    first: &str,
    indent: &str,
    text: &Text,
    color: bool,
) -> io::Result<()> {
    let mut line = String::from(first);
    let mut wrote = false;
    for (piece, masked) in text.segments() {
        let mut sub = piece.split('\n').peekable();
        while let Some(part) = sub.next() {
            let part = part
                .strip_suffix('\r')
                .filter(|_| sub.peek().is_some())
                .unwrap_or(part);
            if masked && color {
                line.push_str("\x1b[7m");
                line.push_str(&Safe(part).to_string());
                line.push_str("\x1b[27m");
            } else {
                line.push_str(&Safe(part).to_string());
            }
            if sub.peek().is_some() {
                writeln!(out, "{line}")?;
                wrote = true;
                line = String::from(indent);
            }
        }
    }
    if !wrote || line != indent {
        writeln!(out, "{line}")?;
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
