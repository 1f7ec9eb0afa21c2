//! How records are shown: a readable timeline, JSON lines, a session list.
//! Every text that comes from a record is printed through `term::Safe`.

use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::record::{AnsweredBy, Phase, UpstreamSaw};
use tracegate_proto::v1::{Approval, ApprovalEvent, Body, Identity, Inspection, Record};

use crate::caller::Caller;
use crate::ledger::index::SessionSummary;
use crate::term::{self, Safe};

/// Bodies longer than this are cut in the readable timeline (never in --json).
const TIMELINE_BODY_CHARS: usize = 4000;

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

/// The readable timeline of one caller's session; `events` are the stored
/// events of the approvals its records name.
pub fn write_timeline(
    out: &mut impl Write,
    session: &str,
    caller: &Caller,
    records: &[Record],
    events: &[ApprovalEvent],
) -> io::Result<()> {
    writeln!(
        out,
        "session {} (caller {}): {} exchanges",
        Safe(session),
        Safe(&caller.key()),
        records.len()
    )?;
    for (i, r) in records.iter().enumerate() {
        writeln!(out)?;
        writeln!(
            out,
            "#{} {}  {} {}  -> {}  {}",
            i + 1,
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
        )?;
        let unrecorded = r
            .inspection
            .as_ref()
            .is_some_and(|i| i.verdict == "unrecorded");
        if r.phase() == Phase::Request {
            writeln!(
                out,
                "   written ahead (durable before forwarding); no record of its end: the proxy stopped mid-exchange"
            )?;
        } else if unrecorded && !r.request_record_id.is_empty() {
            writeln!(
                out,
                "   request record {} was not acknowledged durable in time: the request was answered 503",
                Safe(&r.request_record_id)
            )?;
        } else if !r.request_record_id.is_empty() {
            writeln!(
                out,
                "   request written ahead as record {}",
                Safe(&r.request_record_id)
            )?;
        }
        if let Some(saw) = upstream_saw(r) {
            writeln!(out, "   upstream saw: {}", upstream_text(saw))?;
        }
        match answered_by(r) {
            Some(AnsweredBy::Proxy) => {
                writeln!(out, "   answered by: proxy ({})", Safe(&r.status_detail))?
            }
            Some(by) => writeln!(out, "   answered by: {}", answered_by_name(by))?,
            None => {}
        }
        if let Some(id) = &r.identity {
            writeln!(out, "   identity: {}", identity_line(id))?;
        }
        if let Some(i) = &r.inspection {
            writeln!(out, "   inspection: {}", inspection_line(i))?;
        }
        if let Some(a) = &r.approval {
            writeln!(out, "   approval: {}", approval_line(a))?;
            for ev in events.iter().filter(|e| e.approval_id == a.id) {
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
                writeln!(
                    out,
                    "     {} {}{who}{why}",
                    time(ev.unix_nanos),
                    Safe(&ev.event)
                )?;
            }
        }
        if !r.request_headers.is_empty() {
            writeln!(out, "   request headers:")?;
            for h in &r.request_headers {
                writeln!(out, "     {}: {}", Safe(&h.name), Safe(&h.value))?;
            }
        }
        write_body(out, "request", r.request_body.as_ref())?;
        write_body(out, "response", r.response_body.as_ref())?;
    }
    Ok(())
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
pub fn approver_text(p: &tracegate_proto::v1::Approver) -> String {
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
pub fn approval_line(a: &Approval) -> String {
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
pub fn identity_line(id: &Identity) -> String {
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
pub fn inspection_line(i: &Inspection) -> String {
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

/// The JSON form of a record (one per line with `--json`). Bodies are text
/// when they are UTF-8, else base64 in `data_base64`.
#[derive(Serialize)]
struct RecordJson<'a> {
    record_id: &'a str,
    session_id: &'a str,
    /// `Caller::key`: whose session this record is in.
    caller: String,
    request_id: &'a str,
    request_start: String,
    response_start: String,
    end: String,
    duration_micros: u64,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    status: u32,
    /// As they went upstream (masked), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    request_headers: Vec<HeaderJson<'a>>,
    request_body: Option<BodyJson<'a>>,
    response_body: Option<BodyJson<'a>>,
    source: &'a str,
    phase: &'static str,
    /// `nothing`, `headers` or `request`; absent in records that do not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_saw: Option<&'static str>,
    /// `upstream`, `tracegate`, `proxy` or `nobody`; absent when not said.
    #[serde(skip_serializing_if = "Option::is_none")]
    answered_by: Option<&'static str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    status_detail: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_record_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inspection: Option<InspectionJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<ApprovalJson<'a>>,
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct ApprovalJson<'a> {
    id: &'a str,
    mode: &'a str,
    state: &'a str,
    approver: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    approvers: Vec<ApproverJson<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    approvals_required: u32,
    reason: &'a str,
    risk: u32,
    threshold: u32,
    outcome: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct ApproverJson<'a> {
    issuer: &'a str,
    subject: &'a str,
    display: &'a str,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct InspectionJson<'a> {
    verdict: &'a str,
    risk: u32,
    request_findings: BTreeMap<&'a str, u32>,
    response_findings: BTreeMap<&'a str, u32>,
    rules: Vec<RuleJson<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    blocked_rule: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    stream_holds_exceeded: u32,
}

#[derive(Serialize)]
struct RuleJson<'a> {
    id: &'a str,
    action: &'a str,
    scope: &'a str,
}

fn inspection_json(i: &Inspection) -> InspectionJson<'_> {
    fn counts(m: &std::collections::HashMap<String, u32>) -> BTreeMap<&str, u32> {
        m.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }
    InspectionJson {
        verdict: &i.verdict,
        risk: i.risk,
        request_findings: counts(&i.request_findings),
        response_findings: counts(&i.response_findings),
        rules: i
            .rules
            .iter()
            .map(|r| RuleJson {
                id: &r.id,
                action: &r.action,
                scope: &r.scope,
            })
            .collect(),
        blocked_rule: &i.blocked_rule,
        reason: &i.reason,
        stream_holds_exceeded: i.stream_holds_exceeded,
    }
}

#[derive(Serialize)]
struct IdentityJson<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    provider: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    issuer: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subject: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    claims: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    algorithm: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    rejection_reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    rejection_detail: &'a str,
}

fn identity_json(id: &Identity) -> IdentityJson<'_> {
    IdentityJson {
        status: match Status::try_from(id.status).unwrap_or(Status::Unspecified) {
            Status::Verified => "verified",
            Status::Anonymous => "anonymous",
            Status::Rejected => "rejected",
            Status::Unspecified => "unknown",
        },
        provider: &id.provider,
        issuer: &id.issuer,
        subject: &id.subject,
        claims: id
            .claims
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        algorithm: &id.algorithm,
        key_id: &id.key_id,
        expires: (id.expires_unix > 0).then(|| time(id.expires_unix.saturating_mul(1_000_000_000))),
        rejection_reason: &id.rejection_reason,
        rejection_detail: &id.rejection_detail,
    }
}

#[derive(Serialize)]
struct BodyJson<'a> {
    content_type: &'a str,
    size: u64,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

fn body_json(b: &Body) -> BodyJson<'_> {
    let text = std::str::from_utf8(&b.data).ok();
    BodyJson {
        content_type: &b.content_type,
        size: b.size,
        truncated: b.truncated,
        text,
        data_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&b.data)),
    }
}

pub fn write_json_lines(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    for r in records {
        let json = RecordJson {
            record_id: &r.record_id,
            session_id: &r.session_id,
            caller: Caller::of(r).key(),
            request_id: &r.request_id,
            request_start: time(r.request_start_unix_nanos),
            response_start: time(r.response_start_unix_nanos),
            end: time(r.end_unix_nanos),
            duration_micros: r.duration_micros,
            method: &r.method,
            path: &r.path,
            authority: &r.authority,
            status: r.status,
            request_headers: r
                .request_headers
                .iter()
                .map(|h| HeaderJson {
                    name: &h.name,
                    value: &h.value,
                })
                .collect(),
            request_body: r.request_body.as_ref().map(body_json),
            response_body: r.response_body.as_ref().map(body_json),
            source: &r.source,
            phase: match r.phase() {
                Phase::Exchange => "exchange",
                Phase::Request => "request",
            },
            upstream_saw: upstream_saw(r).map(upstream_name),
            answered_by: answered_by(r).map(answered_by_name),
            status_detail: &r.status_detail,
            request_record_id: &r.request_record_id,
            identity: r.identity.as_ref().map(identity_json),
            inspection: r.inspection.as_ref().map(inspection_json),
            approval: r.approval.as_ref().map(|a| ApprovalJson {
                id: &a.id,
                mode: &a.mode,
                state: &a.state,
                approver: &a.approver,
                approvers: a
                    .approvers
                    .iter()
                    .map(|p| ApproverJson {
                        issuer: &p.issuer,
                        subject: &p.subject,
                        display: &p.display,
                    })
                    .collect(),
                approvals_required: a.approvals_required,
                reason: &a.reason,
                risk: a.risk,
                threshold: a.threshold,
                outcome: &a.outcome,
                detail: &a.detail,
            }),
        };
        term::write_json(out, &json)?;
        writeln!(out)?;
    }
    Ok(())
}

/// One row per session and caller (`replay SESSION --caller CALLER` shows
/// that row's exchanges).
pub fn write_sessions(
    out: &mut impl Write,
    sessions: &BTreeMap<(String, String), SessionSummary>,
) -> io::Result<()> {
    let mut rows: Vec<_> = sessions.iter().collect();
    rows.sort_by_key(|(key, row)| (row.first_unix_nanos, *key));
    writeln!(
        out,
        "{:<40} {:<40} {:<24} {:<24} {:>9}",
        "SESSION", "CALLER", "FIRST", "LAST", "EXCHANGES"
    )?;
    for ((id, caller), row) in rows {
        writeln!(
            out,
            "{:<40} {:<40} {:<24} {:<24} {:>9}",
            Safe(id).to_string(),
            Safe(caller).to_string(),
            time(row.first_unix_nanos),
            time(row.last_unix_nanos),
            row.exchanges
        )?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::term::is_unsafe;
    use tracegate_proto::v1::{Approver, RuleMatch};

    const EVIL: &str = "x\x1b[2K\r\u{202e}\u{9b}31m\ny\u{2066}\t\x07";

    fn evil() -> String {
        EVIL.to_string()
    }

    /// A record with hostile text in every string it holds.
    fn hostile() -> Record {
        let body = |_| Body {
            data: format!("{{\"content\": \"{EVIL}\"}}\r\nline two\rover").into_bytes(),
            size: 100,
            truncated: false,
            content_type: evil(),
        };
        Record {
            record_id: evil(),
            session_id: evil(),
            request_id: evil(),
            method: evil(),
            path: evil(),
            authority: evil(),
            status: 403,
            request_body: Some(body(0)),
            response_body: Some(body(1)),
            source: evil(),
            request_record_id: evil(),
            identity: Some(Identity {
                status: Status::Verified as i32,
                provider: evil(),
                issuer: evil(),
                subject: evil(),
                claims: [(evil(), evil())].into_iter().collect(),
                algorithm: evil(),
                key_id: evil(),
                ..Identity::default()
            }),
            inspection: Some(Inspection {
                request_findings: [(evil(), 1)].into_iter().collect(),
                response_findings: [(evil(), 1)].into_iter().collect(),
                verdict: "blocked".into(),
                blocked_rule: evil(),
                reason: evil(),
                rules: vec![RuleMatch {
                    id: evil(),
                    action: evil(),
                    scope: evil(),
                }],
                ..Inspection::default()
            }),
            approval: Some(Approval {
                id: evil(),
                mode: evil(),
                state: evil(),
                approver: evil(),
                reason: evil(),
                outcome: evil(),
                detail: evil(),
                approvers: vec![Approver {
                    issuer: evil(),
                    subject: evil(),
                    display: "bob".into(),
                }],
                ..Approval::default()
            }),
            upstream_saw: UpstreamSaw::Headers as i32,
            answered_by: AnsweredBy::Proxy as i32,
            status_detail: evil(),
            request_headers: vec![tracegate_proto::v1::Header {
                name: evil(),
                value: evil(),
            }],
            ..Record::default()
        }
    }

    fn assert_inert(out: &[u8]) -> String {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let bad: Vec<char> = text
            .chars()
            .filter(|&c| c != '\n' && is_unsafe(c))
            .collect();
        assert!(bad.is_empty(), "{bad:?} in {text}");
        text
    }

    #[test]
    fn the_timeline_prints_nothing_a_terminal_would_act_on() {
        let r = hostile();
        let ev = ApprovalEvent {
            approval_id: r.approval.as_ref().unwrap().id.clone(),
            event: evil(),
            actor: evil(),
            reason: evil(),
            ..ApprovalEvent::default()
        };
        let mut out = Vec::new();
        let caller = Caller::of(&r);
        write_timeline(&mut out, EVIL, &caller, &[r], &[ev]).unwrap();
        let text = assert_inert(&out);
        assert!(text.contains("\\x1b[2K\\r\\u{202e}"), "{text}");
        // A record's newline cannot start a line of its own.
        assert!(!text.lines().any(|l| l.starts_with('y')), "{text}");
        assert!(
            text.contains("     | over") || text.contains("\\rover"),
            "{text}"
        );
        assert!(text.contains("upstream saw: headers"), "{text}");
    }

    #[test]
    fn json_lines_stay_json_and_inert() {
        let mut out = Vec::new();
        write_json_lines(&mut out, &[hostile()]).unwrap();
        let text = assert_inert(&out);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["path"], EVIL);
        assert_eq!(v["upstream_saw"], "headers");
        assert_eq!(
            (v["answered_by"].as_str(), v["status_detail"].as_str()),
            (Some("proxy"), Some(EVIL))
        );
        assert_eq!(v["caller"], format!("{EVIL}|{EVIL}"));
    }

    #[test]
    fn the_session_list_is_inert() {
        let mut sessions = BTreeMap::new();
        sessions.insert((evil(), evil()), SessionSummary::default());
        let mut out = Vec::new();
        write_sessions(&mut out, &sessions).unwrap();
        assert_inert(&out);
    }

    #[test]
    fn callers_of_one_session_are_kept_apart() {
        let with = |sub: &str, t: i64| Record {
            session_id: "shared".into(),
            request_start_unix_nanos: t,
            identity: (!sub.is_empty()).then(|| Identity {
                status: Status::Verified as i32,
                issuer: "https://idp".into(),
                subject: sub.into(),
                ..Identity::default()
            }),
            ..Record::default()
        };
        let groups = by_caller(vec![
            with("bob", 1),
            with("alice", 2),
            with("bob", 3),
            with("", 4),
        ]);
        let keys: Vec<(String, usize)> = groups.iter().map(|(c, rs)| (c.key(), rs.len())).collect();
        assert_eq!(
            keys,
            [
                ("https://idp|bob".to_string(), 2),
                ("https://idp|alice".to_string(), 1),
                ("anonymous".to_string(), 1)
            ]
        );
    }
}
