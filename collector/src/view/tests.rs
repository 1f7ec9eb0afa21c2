//! The views print nothing a terminal would act on, and keep callers apart.

use std::collections::BTreeMap;
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::record::{AnsweredBy, UpstreamSaw};
use tracegate_proto::v1::{
    Approval, ApprovalEvent, Approver, Body, Identity, Inspection, Record, RuleMatch,
};

use super::replay::by_caller;
use super::timeline::write_timeline;
use super::*;
use crate::ledger::caller::Caller;
use crate::ledger::index::SessionSummary;
use crate::term::is_unsafe;

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
        policy: Some(tracegate_proto::v1::PolicyRef {
            name: evil(),
            version: evil(),
            sha256: evil(),
        }),
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
    assert!(text.contains("   policy: x\\x1b[2K"), "{text}");
}

#[test]
fn the_conversation_prints_nothing_a_terminal_would_act_on() {
    let mut chat = hostile();
    chat.path = "/v1/chat/completions".into();
    chat.request_body = Some(Body {
        data: serde_json::json!({"messages": [
            {"role": "user", "content": format!("{EVIL} mail [EMAIL_1]\nsecond line")}]})
        .to_string()
        .into_bytes(),
        size: 10,
        truncated: false,
        content_type: "application/json".into(),
    });
    chat.response_body = Some(Body {
        data: format!(
            "data: {}\r\n\r\ndata: {}\r\n\r\ndata: [DONE]\r\n\r\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": format!("lo {EVIL}")}}]})
        )
        .into_bytes(),
        size: 10,
        truncated: false,
        content_type: "text/event-stream".into(),
    });
    for color in [false, true] {
        let mut out = Vec::new();
        let format = ReplayFormat::Conversation { color };
        write_replay(&mut out, EVIL, vec![chat.clone(), hostile()], &[], format).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Only the highlight's own escape reaches the terminal.
        let shown = text.replace("\x1b[7m", "").replace("\x1b[27m", "");
        assert_inert(shown.as_bytes());
        assert!(text.contains("[user] x\\x1b[2K"), "{text}");
        assert!(text.contains("       second line"), "{text}");
        assert!(text.contains("answer (streamed, reassembled):"), "{text}");
        assert!(text.contains("[assistant] Hello x\\x1b"), "{text}");
        // The hostile record's bodies are no API's: shown as sent, inert.
        assert!(text.contains("not read as messages"), "{text}");
        assert_eq!(text.contains("\x1b[7m[EMAIL_1]\x1b[27m"), color, "{text}");
        assert!(text.contains("[EMAIL_1]"));
    }
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
    assert_eq!(v["policy"]["sha256"], EVIL);
}

#[test]
fn sessions_name_the_policies_they_ran_under() {
    let mut summary = SessionSummary::default();
    for (start, sha) in [
        (1, "a".repeat(64)),
        (2, "b".repeat(64)),
        (3, "a".repeat(64)),
    ] {
        summary.add(&Record {
            session_id: "s".into(),
            request_start_unix_nanos: start,
            policy: Some(tracegate_proto::v1::PolicyRef {
                sha256: sha,
                ..Default::default()
            }),
            ..Record::default()
        });
    }
    summary.add(&Record::default());
    assert_eq!(summary.policies.len(), 2);
    let sessions: BTreeMap<(String, Caller), SessionSummary> = [
        (("s".into(), Caller::Anonymous), summary),
        (("old".into(), Caller::Anonymous), SessionSummary::default()),
    ]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    write_sessions(&mut out, &sessions).unwrap();
    let text = String::from_utf8(out).unwrap();
    let column = |s: &str, n: usize| {
        let row = text.lines().find(|l| l.starts_with(s)).unwrap();
        row.split_whitespace().nth(n).unwrap().to_string()
    };
    assert_eq!(column("SESSION", 4), "POLICIES", "{text}");
    assert_eq!(column("s ", 4), "aaaaaaaaaaaa,bbbbbbbbbbbb", "{text}");
    assert_eq!(column("s ", 5), "4", "the count stays last: {text}");
    assert_eq!(column("old", 4), "-", "{text}");
}

#[test]
fn the_session_list_is_inert() {
    let mut sessions = BTreeMap::new();
    let caller = Caller::Verified {
        issuer: evil(),
        subject: evil(),
    };
    sessions.insert((evil(), caller), SessionSummary::default());
    let mut out = Vec::new();
    write_sessions(&mut out, &sessions).unwrap();
    assert_inert(&out);
}

#[test]
fn sessions_are_listed_by_first_time_then_as_printed() {
    let at = |t: i64| SessionSummary {
        first_unix_nanos: t,
        last_unix_nanos: t,
        exchanges: 1,
        ..SessionSummary::default()
    };
    let verified = |sub: &str| Caller::Verified {
        issuer: "https://idp".into(),
        subject: sub.into(),
    };
    let sessions: BTreeMap<(String, Caller), SessionSummary> = [
        (("s".into(), Caller::Rejected), at(1)),
        (("s".into(), verified("bob")), at(1)),
        (("s".into(), Caller::Anonymous), at(1)),
        (("r".into(), verified("alice")), at(2)),
        (("a".into(), verified("alice")), at(3)),
    ]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    write_sessions(&mut out, &sessions).unwrap();
    let rows: Vec<(String, String)> = String::from_utf8(out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut words = l.split_whitespace();
            let session = words.next().unwrap_or_default().to_string();
            (session, words.next().unwrap_or_default().to_string())
        })
        .collect();
    let row = |s: &str, c: &str| (s.to_string(), c.to_string());
    assert_eq!(
        rows,
        [
            row("s", "anonymous"),
            row("s", "https://idp|bob"),
            row("s", "rejected"),
            row("r", "https://idp|alice"),
            row("a", "https://idp|alice"),
        ]
    );
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
    let keys: Vec<(String, usize)> = groups
        .iter()
        .map(|(c, rs)| (caller::key(c), rs.len()))
        .collect();
    assert_eq!(
        keys,
        [
            ("https://idp|bob".to_string(), 2),
            ("https://idp|alice".to_string(), 1),
            ("anonymous".to_string(), 1)
        ]
    );
}

#[test]
fn the_verify_report_lists_problems_then_sums_up() {
    use crate::ledger::verify::Report;
    let ok = Report {
        segments: 2,
        sealed: 1,
        entries: 10,
        bytes: 2_000_000,
        first_seq: Some(1),
        last_seq: Some(10),
        ..Report::default()
    };
    assert_eq!(
        report::verify_report(&ok, 0.5),
        "OK: 2 segments (1 sealed), 10 entries, sequence 1..10, 0 segments deleted by retention (seals checked); 2.0 MB in 0.50 s (4 MB/s)\n"
    );
    let failed = Report {
        problems: vec!["a".into(), "b".into()],
        ..Report::default()
    };
    let text = report::verify_report(&failed, 0.0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["PROBLEM a", "PROBLEM b"]);
    assert!(lines[2].starts_with("FAILED: 0 segments (0 sealed), 0 entries, no records,"));
    assert_eq!(lines[3], "2 problems");
}
