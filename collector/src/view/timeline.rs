//! The readable timeline of one caller's session (`tracegate replay`).

use std::io::{self, Write};
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::record::{AnsweredBy, Phase, UpstreamSaw};
use tracegate_proto::v1::{
    Approval, ApprovalEvent, Body, Identity, Inspection, PolicyRef, Record, Usage,
};

use super::conversation::Exchange;
use super::replay::write_conversation;
use super::{answered_by, answered_by_name, caller, millis, time, upstream_saw};
use crate::ledger::caller::Caller;
use crate::term::Safe;

/// Bodies longer than this are cut in the readable timeline (never in --json).
const TIMELINE_BODY_CHARS: usize = 4000;

/// How the timeline shows bodies.
pub enum Bodies<'a> {
    /// As sent: the body text, line by line (`replay --raw`).
    Raw,
    /// Read as the conversation: `exchanges[i]` is `records[i]` read
    /// (`conversation::conversation`); placeholders highlighted with
    /// `color`.
    Conversation {
        exchanges: &'a [Exchange],
        color: bool,
    },
}

/// The readable timeline of one caller's session with the bodies as sent;
/// `events` are the stored events of the approvals its records name.
#[cfg(test)]
pub fn write_timeline(
    out: &mut impl Write,
    session: &str,
    caller: &Caller,
    records: &[Record],
    events: &[ApprovalEvent],
) -> io::Result<()> {
    write_timeline_with(out, session, caller, records, events, &Bodies::Raw)
}

/// The readable timeline of one caller's session, bodies shown as
/// `bodies` says.
pub fn write_timeline_with(
    out: &mut impl Write,
    session: &str,
    caller: &Caller,
    records: &[Record],
    events: &[ApprovalEvent],
    bodies: &Bodies,
) -> io::Result<()> {
    writeln!(
        out,
        "session {} (caller {}): {} exchanges",
        Safe(session),
        Safe(&caller::key(caller)),
        records.len()
    )?;
    for (i, r) in records.iter().enumerate() {
        writeln!(out)?;
        write_exchange(out, i + 1, r, events)?;
        match bodies {
            Bodies::Raw => {
                write_body(out, "request", r.request_body.as_ref())?;
                write_body(out, "response", r.response_body.as_ref())?;
            }
            Bodies::Conversation { exchanges, color } => {
                if let Some(x) = exchanges.get(i) {
                    write_conversation(out, x, *color)?;
                }
            }
        }
    }
    Ok(())
}

/// Exchange `number` of the timeline: what was asked and answered, how it
/// was recorded, who asked, what was found and decided (the bodies follow).
fn write_exchange(
    out: &mut impl Write,
    number: usize,
    r: &Record,
    events: &[ApprovalEvent],
) -> io::Result<()> {
    write_request(out, number, r)?;
    write_recording(out, r)?;
    write_path_taken(out, r)?;
    if let Some(p) = &r.policy {
        writeln!(out, "   policy: {}", policy_line(p))?;
    }
    if let Some(id) = &r.identity {
        writeln!(out, "   identity: {}", identity_line(id))?;
    }
    if let Some(i) = &r.inspection {
        writeln!(out, "   inspection: {}", inspection_line(i))?;
    }
    if let Some(u) = &r.usage {
        writeln!(out, "   usage: {}", usage_line(u))?;
    }
    if let Some(a) = &r.approval {
        write_approval(out, a, events)?;
    }
    write_headers(out, r)
}

/// `#1 TIME  POST /path  -> 200  12.0 ms`, then the exchange's ids.
fn write_request(out: &mut impl Write, number: usize, r: &Record) -> io::Result<()> {
    writeln!(
        out,
        "#{} {}  {} {}  -> {}  {}",
        number,
        time(r.request_start_unix_nanos),
        Safe(&r.method),
        Safe(&r.path),
        r.status,
        millis(r.duration_micros),
    )?;
    writeln!(
        out,
        "   record {}  request {}  host {}",
        Safe(&r.record_id),
        Safe(&r.request_id),
        Safe(&r.authority)
    )
}

/// How the exchange was written ahead (`recording.mode: write_ahead`), if
/// it was.
fn write_recording(out: &mut impl Write, r: &Record) -> io::Result<()> {
    let unrecorded = r
        .inspection
        .as_ref()
        .is_some_and(|i| i.verdict == "unrecorded");
    if r.phase() == Phase::Request {
        writeln!(
            out,
            "   written ahead (durable before forwarding); no record of its end: the proxy stopped mid-exchange"
        )
    } else if unrecorded && !r.request_record_id.is_empty() {
        writeln!(
            out,
            "   request record {} was not acknowledged durable in time: the request was answered 503",
            Safe(&r.request_record_id)
        )
    } else if !r.request_record_id.is_empty() {
        writeln!(
            out,
            "   request written ahead as record {}",
            Safe(&r.request_record_id)
        )
    } else {
        Ok(())
    }
}

/// What the upstream saw and who answered the client, when recorded.
fn write_path_taken(out: &mut impl Write, r: &Record) -> io::Result<()> {
    if let Some(saw) = upstream_saw(r) {
        writeln!(out, "   upstream saw: {}", upstream_text(saw))?;
    }
    match answered_by(r) {
        Some(AnsweredBy::Proxy) => {
            writeln!(out, "   answered by: proxy ({})", Safe(&r.status_detail))
        }
        Some(by) => writeln!(out, "   answered by: {}", answered_by_name(by)),
        None => Ok(()),
    }
}

/// The approval and the stored events of it.
fn write_approval(out: &mut impl Write, a: &Approval, events: &[ApprovalEvent]) -> io::Result<()> {
    writeln!(out, "   approval: {}", approval_line(a))?;
    for ev in events.iter().filter(|e| e.approval_id == a.id) {
        writeln!(out, "     {}", event_line(ev))?;
    }
    Ok(())
}

/// `TIME approved by bob (iss https://idp): looks fine`.
fn event_line(ev: &ApprovalEvent) -> String {
    let who = match (&ev.approver, ev.actor.is_empty()) {
        (Some(p), _) => format!(" by {}", approver_text(p)),
        (None, true) => String::new(),
        (None, false) => format!(" by {}", Safe(&ev.actor)),
    };
    let why = if ev.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", Safe(&ev.reason))
    };
    format!("{} {}{who}{why}", time(ev.unix_nanos), Safe(&ev.event))
}

fn write_headers(out: &mut impl Write, r: &Record) -> io::Result<()> {
    if r.request_headers.is_empty() {
        return Ok(());
    }
    writeln!(out, "   request headers:")?;
    for h in &r.request_headers {
        writeln!(out, "     {}: {}", Safe(&h.name), Safe(&h.value))?;
    }
    Ok(())
}

fn upstream_text(saw: UpstreamSaw) -> &'static str {
    match saw {
        UpstreamSaw::Unknown => "not recorded",
        UpstreamSaw::Nothing => "nothing (no part of the request left the proxy)",
        UpstreamSaw::Headers => {
            "headers (method, URL and headers went on before the body was judged; the body did not)"
        }
        UpstreamSaw::Request => "request (headers and body)",
    }
}

/// `bob@example.com (sub bob, iss https://idp)`: a verified approver.
fn approver_text(p: &tracegate_proto::v1::Approver) -> String {
    if p.display.is_empty() || p.display == p.subject {
        format!("{} (iss {})", Safe(&p.subject), Safe(&p.issuer))
    } else {
        format!(
            "{} (sub {}, iss {})",
            Safe(&p.display),
            Safe(&p.subject),
            Safe(&p.issuer)
        )
    }
}

/// `apr_1 (hold): APPROVED by bob (iss https://idp): "looks fine"; risk 130 >= 100; forwarded`.
fn approval_line(a: &Approval) -> String {
    let mut line = format!("{} ({}): {}", Safe(&a.id), Safe(&a.mode), Safe(&a.state));
    if !a.approvers.is_empty() {
        let who: Vec<String> = a.approvers.iter().map(approver_text).collect();
        line.push_str(&format!(" by {}", who.join(" and ")));
    } else if !a.approver.is_empty() {
        line.push_str(&format!(" by {}", Safe(&a.approver)));
    }
    if !a.reason.is_empty() {
        line.push_str(&format!(": \"{}\"", Safe(&a.reason)));
    }
    line.push_str(&format!(
        "; risk {} >= {}; {}",
        a.risk,
        a.threshold,
        Safe(&a.outcome)
    ));
    line
}

/// `alice (provider corp, iss https://idp, ES256 kid k1) email=a@x`, or
/// `anonymous`, or `rejected: expired (token has expired)`.
fn identity_line(id: &Identity) -> String {
    match Status::try_from(id.status).unwrap_or(Status::Unspecified) {
        Status::Verified => {
            let mut line = format!(
                "{} (provider {}, iss {}, {}",
                Safe(if id.subject.is_empty() {
                    "(no sub)"
                } else {
                    &id.subject
                }),
                Safe(&id.provider),
                Safe(&id.issuer),
                Safe(&id.algorithm)
            );
            if !id.key_id.is_empty() {
                line.push_str(&format!(" kid {}", Safe(&id.key_id)));
            }
            line.push(')');
            let mut claims: Vec<_> = id.claims.iter().collect();
            claims.sort();
            for (k, v) in claims {
                line.push_str(&format!(" {}={}", Safe(k), Safe(v)));
            }
            line
        }
        Status::Anonymous => "anonymous".into(),
        Status::Rejected if !id.claimed_subject.is_empty() => format!(
            "rejected: {} ({}); the token claims sub {} (unverified)",
            Safe(&id.rejection_reason),
            Safe(&id.rejection_detail),
            Safe(&id.claimed_subject)
        ),
        Status::Rejected => format!(
            "rejected: {} ({})",
            Safe(&id.rejection_reason),
            Safe(&id.rejection_detail)
        ),
        Status::Unspecified => "unknown".into(),
    }
}

/// `blocked by no-jailbreak (prompt injection); risk 170; request: email×1
/// payment_card×1; response: phone×1; rules: no-jailbreak(block, prompt)`.
fn inspection_line(i: &Inspection) -> String {
    let mut line = match i.verdict.as_str() {
        "blocked" => format!("blocked by {} ({})", Safe(&i.blocked_rule), Safe(&i.reason)),
        _ if !i.reason.is_empty() => format!("{} ({})", Safe(&i.verdict), Safe(&i.reason)),
        v => Safe(v).to_string(),
    };
    line.push_str(&format!("; risk {}", i.risk));
    let findings = |m: &std::collections::HashMap<String, u32>| {
        let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{}×{n}", Safe(k))).collect();
        v.sort();
        v.join(" ")
    };
    if !i.request_findings.is_empty() {
        line.push_str(&format!("; request: {}", findings(&i.request_findings)));
    }
    if !i.response_findings.is_empty() {
        line.push_str(&format!("; response: {}", findings(&i.response_findings)));
    }
    if i.stream_holds_exceeded > 0 {
        line.push_str(&format!(
            "; streamed text masked whole (hold limit reached) ×{}",
            i.stream_holds_exceeded
        ));
    }
    if !i.rules.is_empty() {
        let rules: Vec<String> = i
            .rules
            .iter()
            .map(|r| format!("{}({}, {})", Safe(&r.id), Safe(&r.action), Safe(&r.scope)))
            .collect();
        line.push_str(&format!("; rules: {}", rules.join(" ")));
    }
    line
}

fn write_body(out: &mut impl Write, label: &str, body: Option<&Body>) -> io::Result<()> {
    let Some(b) = body.filter(|b| b.size > 0) else {
        return writeln!(out, "   {label}: (empty)");
    };
    let kind = Safe(if b.content_type.is_empty() {
        "no content-type"
    } else {
        &b.content_type
    });
    let kept = if b.truncated {
        format!(", first {} B recorded", b.data.len())
    } else {
        String::new()
    };
    writeln!(out, "   {label}: {kind}, {} B{kept}", b.size)?;
    let text = String::from_utf8_lossy(&b.data);
    let mut shown: String = text.chars().take(TIMELINE_BODY_CHARS).collect();
    if shown.len() < text.len() {
        shown.push_str(" …");
    }
    // Lines end at LF (a CR before it is part of the line ending); every
    // other control character, a lone CR included, is shown escaped.
    let lines = shown.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    for line in lines.filter(|l| !l.trim().is_empty()) {
        writeln!(out, "     | {}", Safe(line))?;
    }
    Ok(())
}

/// `egress version 7 sha256 5906…` (name and version when the
/// configuration has a `policy` section; the hash always).
fn policy_line(p: &PolicyRef) -> String {
    let mut line = String::new();
    if !p.name.is_empty() {
        line += &format!("{} ", Safe(&p.name));
    }
    if !p.version.is_empty() {
        line += &format!("version {} ", Safe(&p.version));
    }
    line + &format!("sha256 {}", Safe(&p.sha256))
}

/// `openai chat gpt-4o (answered by gpt-4o-2024-08-06): 19 in (3 cached), 10
/// out (4 reasoning)`; a count not stated is `?`.
fn usage_line(u: &Usage) -> String {
    let n = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
    let mut line = format!(
        "{} {} {}",
        Safe(&u.provider),
        Safe(&u.operation),
        Safe(if u.request_model.is_empty() {
            "(no model)"
        } else {
            &u.request_model
        })
    );
    if !u.response_model.is_empty() && u.response_model != u.request_model {
        line.push_str(&format!(" (answered by {})", Safe(&u.response_model)));
    }
    line.push_str(&format!(": {} in", n(u.input_tokens)));
    if let Some(c) = u.cached_input_tokens {
        line.push_str(&format!(" ({c} cached)"));
    }
    line.push_str(&format!(", {} out", n(u.output_tokens)));
    if let Some(r) = u.reasoning_tokens {
        line.push_str(&format!(" ({r} reasoning)"));
    }
    line
}
