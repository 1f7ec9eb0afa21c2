//! How records are shown: a readable timeline, JSON lines, a session list.

use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};
use tracegate_proto::v1::{Body, Record};

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

pub fn write_timeline(out: &mut impl Write, session: &str, records: &[Record]) -> io::Result<()> {
    writeln!(out, "session {session}: {} exchanges", records.len())?;
    for (i, r) in records.iter().enumerate() {
        writeln!(out)?;
        writeln!(
            out,
            "#{} {}  {} {}  -> {}  {}",
            i + 1,
            time(r.request_start_unix_nanos),
            r.method,
            r.path,
            r.status,
            millis(r.duration_micros),
        )?;
        writeln!(
            out,
            "   record {}  request {}  host {}",
            r.record_id, r.request_id, r.authority
        )?;
        write_body(out, "request", r.request_body.as_ref())?;
        write_body(out, "response", r.response_body.as_ref())?;
    }
    Ok(())
}

fn write_body(out: &mut impl Write, label: &str, body: Option<&Body>) -> io::Result<()> {
    let Some(b) = body.filter(|b| b.size > 0) else {
        return writeln!(out, "   {label}: (empty)");
    };
    let kind = if b.content_type.is_empty() {
        "no content-type"
    } else {
        &b.content_type
    };
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
    for line in shown.lines().filter(|l| !l.trim().is_empty()) {
        writeln!(out, "     | {line}")?;
    }
    Ok(())
}

/// The JSON form of a record (one per line with `--json`). Bodies are text
/// when they are UTF-8, else base64 in `data_base64`.
#[derive(Serialize)]
struct RecordJson<'a> {
    record_id: &'a str,
    session_id: &'a str,
    request_id: &'a str,
    request_start: String,
    response_start: String,
    end: String,
    duration_micros: u64,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    status: u32,
    request_body: Option<BodyJson<'a>>,
    response_body: Option<BodyJson<'a>>,
    source: &'a str,
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
            request_id: &r.request_id,
            request_start: time(r.request_start_unix_nanos),
            response_start: time(r.response_start_unix_nanos),
            end: time(r.end_unix_nanos),
            duration_micros: r.duration_micros,
            method: &r.method,
            path: &r.path,
            authority: &r.authority,
            status: r.status,
            request_body: r.request_body.as_ref().map(body_json),
            response_body: r.response_body.as_ref().map(body_json),
            source: &r.source,
        };
        serde_json::to_writer(&mut *out, &json)?;
        writeln!(out)?;
    }
    Ok(())
}

pub fn write_sessions(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    let mut sessions: BTreeMap<&str, (i64, i64, usize)> = BTreeMap::new();
    for r in records {
        let e = sessions
            .entry(&r.session_id)
            .or_insert((i64::MAX, i64::MIN, 0));
        e.0 = e.0.min(r.request_start_unix_nanos);
        e.1 = e.1.max(r.end_unix_nanos);
        e.2 += 1;
    }
    let mut rows: Vec<_> = sessions.into_iter().collect();
    rows.sort_by_key(|(_, (first, _, _))| *first);
    writeln!(
        out,
        "{:<40} {:<24} {:<24} {:>9}",
        "SESSION", "FIRST", "LAST", "EXCHANGES"
    )?;
    for (id, (first, last, n)) in rows {
        writeln!(
            out,
            "{id:<40} {:<24} {:<24} {n:>9}",
            time(first),
            time(last)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            record_id: "r1".into(),
            session_id: "s".into(),
            request_start_unix_nanos: 1_700_000_000_123_000_000,
            duration_micros: 12_345,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            request_body: Some(Body {
                data: b"{\"a\":1}".to_vec(),
                size: 7,
                truncated: false,
                content_type: "application/json".into(),
            }),
            response_body: Some(Body {
                data: vec![0xff, 0x00],
                size: 10,
                truncated: true,
                content_type: String::new(),
            }),
            ..Record::default()
        }
    }

    #[test]
    fn timeline_shows_the_exchange() {
        let mut out = Vec::new();
        write_timeline(&mut out, "s", &[record()]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "#1 2023-11-14T22:13:20.123Z  POST /v1/chat/completions  -> 200  12.3 ms"
            ),
            "{text}"
        );
        assert!(text.contains("request: application/json, 7 B"), "{text}");
        assert!(text.contains("| {\"a\":1}"), "{text}");
        assert!(
            text.contains("response: no content-type, 10 B, first 2 B recorded"),
            "{text}"
        );
    }

    #[test]
    fn json_lines_use_text_or_base64() {
        let mut out = Vec::new();
        write_json_lines(&mut out, &[record()]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_body"]["text"], "{\"a\":1}");
        assert_eq!(v["response_body"]["data_base64"], "/wA=");
        assert_eq!(v["response_body"]["truncated"], true);
        assert_eq!(v["request_start"], "2023-11-14T22:13:20.123Z");
    }
}
