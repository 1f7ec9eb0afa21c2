//! Records and the CLI state what happened, through the real Envoy, filter
//! and collector: what the upstream saw of a refused request, no
//! "forwarded" for a request answered 503, sessions kept per verified
//! caller, and text from records and approvals printed terminal-safe.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tracegate_e2e::jwt::{approver_claims, approvers, claims, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{poll, Collector, Stack, StackOptions};

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Characters a terminal acts on (as `tracegate`'s term module defines them),
/// other than the newlines that end lines.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            c != '\n'
                && (c.is_control()
                    || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        })
        .collect()
}

/// A POST sent over a raw connection in two steps: the head, then (after
/// `between` returns) the body. Returns the status and the whole answer.
fn staged(stack: &Stack, session: &str, body: &str, between: impl FnOnce()) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", stack.envoy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: api.test\r\ncontent-type: application/json\r\n\
         x-session-id: {session}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    between();
    s.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn chat_body(text: &str) -> String {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string()
}

fn block_config(hold_headers: bool) -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "inspection": {"hold_headers": hold_headers},
        "rules": [{"id": "no-drop", "keywords": ["drop the database"], "action": "block"}]
    })
}

fn starts_of(stack: &Stack, session: &str) -> usize {
    stack
        .upstream
        .starts()
        .unwrap()
        .iter()
        .filter(|s| s["headers"]["x-session-id"] == session)
        .count()
}

#[test]
fn a_request_blocked_after_its_headers_went_upstream_says_so() {
    let mut stack = Stack::start(&block_config(false)).unwrap();
    let s = unique("headers-went");
    // hold_headers: false: the head goes on at once; the body is judged
    // before it follows.
    let (status, answer) = staged(&stack, &s, &chat_body("please drop the database"), || {
        poll(
            "the request's head at the upstream",
            Duration::from_secs(10),
            || Ok((starts_of(&stack, &s) == 1).then_some(())),
        )
        .unwrap();
    });
    assert_eq!(status, 403, "{answer}");
    assert!(
        stack.upstream.received().unwrap().is_empty(),
        "the body never reached the upstream"
    );
    let r = stack.collector.wait_for_records(&s, 1).unwrap().remove(0);
    assert_eq!(r["inspection"]["verdict"], "blocked", "{r}");
    assert_eq!(r["upstream_saw"], "headers", "{r}");
    let timeline = stack.collector.cli(&["replay", &s]).unwrap();
    assert!(
        timeline.contains("upstream saw: headers (method, URL and headers went on"),
        "{timeline}"
    );
    let exported = stack.collector.cli(&["export"]).unwrap();
    assert!(
        exported.contains("\"upstream_saw\":\"headers\""),
        "{exported}"
    );
}

#[test]
fn with_headers_held_a_blocked_request_says_the_upstream_saw_nothing() {
    let mut stack = Stack::start(&block_config(true)).unwrap();
    let s = unique("headers-held");
    let (status, answer) = staged(&stack, &s, &chat_body("please drop the database"), || {});
    assert_eq!(status, 403, "{answer}");
    let r = stack.collector.wait_for_records(&s, 1).unwrap().remove(0);
    assert_eq!(r["inspection"]["verdict"], "blocked", "{r}");
    assert_eq!(r["upstream_saw"], "nothing", "{r}");
    assert_eq!(r["answered_by"], "tracegate", "{r}");
    assert_eq!(starts_of(&stack, &s), 0, "nothing reached the upstream");

    // A request that passes says the upstream saw it whole.
    let ok = unique("headers-held-ok");
    let (status, answer) = staged(&stack, &ok, &chat_body("hello"), || {});
    assert_eq!(status, 200, "{answer}");
    let r = stack.collector.wait_for_records(&ok, 1).unwrap().remove(0);
    assert_eq!(r["inspection"]["verdict"], "forwarded", "{r}");
    assert_eq!(r["upstream_saw"], "request", "{r}");
    assert_eq!(r["answered_by"], "upstream", "{r}");

    // The upstream is gone: Envoy answers 503 itself, and the record says
    // so rather than pass it off as the upstream's answer.
    stack.upstream.process.kill().unwrap();
    let gone = unique("upstream-gone");
    let (status, answer) = staged(&stack, &gone, &chat_body("hello"), || {});
    assert_eq!(status, 503, "{answer}");
    let r = stack
        .collector
        .wait_for_records(&gone, 1)
        .unwrap()
        .remove(0);
    assert_eq!(r["answered_by"], "proxy", "{r}");
    assert!(
        r["status_detail"].as_str().unwrap().contains("upstream"),
        "{r}"
    );
    let timeline = stack.collector.cli(&["replay", &gone]).unwrap();
    assert!(
        timeline.contains("answered by: proxy (upstream"),
        "{timeline}"
    );
}

#[test]
fn a_write_ahead_503_is_not_recorded_as_forwarded() {
    let mut stack = Stack::start(&json!({"recording": {
        "flush_interval_ms": 20, "batch_max_records": 1, "mode": "write_ahead"
    }}))
    .unwrap();
    let port = stack.collector.grpc_port;
    stack.collector.process.kill().unwrap();
    let s = unique("write-ahead-503");
    let answer = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", &s)
        .header("content-type", "application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(chat_body("must not pass"))
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert!(stack.upstream.received().unwrap().is_empty());

    // The collector returns; the exchange's record arrives from the outbox.
    stack.collector = Collector::start_on(&stack.dir, port).unwrap();
    let r = stack.collector.wait_for_records(&s, 1).unwrap().remove(0);
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!(r["answered_by"], "tracegate", "{r}");
    assert_eq!(r["inspection"]["verdict"], "unrecorded", "{r}");
    assert!(
        r["inspection"]["reason"]
            .as_str()
            .unwrap()
            .contains("could not be made durable"),
        "{r}"
    );
    // Without hold_headers the head went on before the record was asked for.
    assert_eq!(r["upstream_saw"], "headers", "{r}");
    let timeline = stack.collector.cli(&["replay", &s]).unwrap();
    assert!(timeline.contains("inspection: unrecorded ("), "{timeline}");
    assert!(!timeline.contains("inspection: forwarded"), "{timeline}");
}

/// Tokens of two callers and an approver, of one identity provider.
struct Callers {
    alice: String,
    bob: String,
    /// An approver's token (group llm-approvers) for the approvals CLI.
    approver: String,
    _dir: tempfile::TempDir,
}

fn callers_stack(extra: Value, options: StackOptions) -> (Stack, Callers) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let specs: Vec<Value> = [
        claims("alice"),
        claims("bob"),
        approver_claims("carol", &["llm-approvers"]),
    ]
    .into_iter()
    .map(|c| json!({"key": "ec256", "alg": "ES256", "claims": c}))
    .collect();
    let mut tokens = keys.mint(&specs).unwrap().into_iter();
    let mut config = json!({
        "recording": {"flush_interval_ms": 20},
        "jwt": {"required": false, "providers": [{
            "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.tracegate.test/jwks.json", "cluster": "idp",
                            "timeout_ms": 1000, "retry_interval_ms": 200}
        }]}
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let stack = Stack::start_with_options(&dir.path().join("stack"), &config, &options, |u, _| {
        u.publish_jwks(&jwks)
    })
    .unwrap();
    let callers = Callers {
        alice: tokens.next().unwrap(),
        bob: tokens.next().unwrap(),
        approver: tokens.next().unwrap(),
        _dir: dir,
    };
    (stack, callers)
}

fn post(
    stack: &Stack,
    token: Option<&str>,
    session: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value, Option<String>) {
    let mut req = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", session)
        .header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut resp = req
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .unwrap();
    let id = resp
        .headers()
        .get("x-tracegate-approval-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = resp.status().as_u16();
    (
        status,
        resp.body_mut().read_json().unwrap_or(Value::Null),
        id,
    )
}

#[test]
fn sessions_are_listed_and_replayed_per_verified_caller() {
    let (mut stack, who) = callers_stack(json!({}), StackOptions::default());
    let s = unique("shared");
    let json_type = "application/json";
    for (token, text) in [
        (Some(&who.alice), "alice one"),
        (Some(&who.bob), "bob: I was here too"),
        (Some(&who.alice), "alice two"),
        (None, "anonymous"),
    ] {
        let (status, body, _) = post(
            &stack,
            token.map(String::as_str),
            &s,
            json_type,
            &chat_body(text),
        );
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, _) = post(
        &stack,
        Some("not.a.jwt"),
        &s,
        json_type,
        &chat_body("forged"),
    );
    assert_eq!(status, 401);
    // Every record of the session is there (the helper sees all callers).
    let all = stack.collector.wait_for_records(&s, 5).unwrap();
    assert_eq!(all.len(), 5);

    let alice = format!("{ISSUER}|alice");
    let bob = format!("{ISSUER}|bob");
    let sessions = stack.collector.cli(&["sessions"]).unwrap();
    let rows: Vec<(String, String)> = sessions
        .lines()
        .filter(|l| l.starts_with(&s))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[f.len() - 1].to_string())
        })
        .collect();
    assert_eq!(
        rows,
        [
            (alice.clone(), "2".to_string()),
            (bob.clone(), "1".to_string()),
            ("anonymous".to_string(), "1".to_string()),
            ("rejected".to_string(), "1".to_string()),
        ],
        "{sessions}"
    );

    // One caller's session: only their exchanges.
    let only = stack
        .collector
        .cli(&["replay", &s, "--caller", &alice, "--json"])
        .unwrap();
    let only: Vec<Value> = only
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(only.len(), 2);
    assert!(only
        .iter()
        .all(|r| r["identity"]["subject"] == "alice" && r["caller"] == alice.as_str()));
    let timeline = stack
        .collector
        .cli(&["replay", &s, "--caller", &bob])
        .unwrap();
    assert!(
        timeline.starts_with(&format!("session {s} (caller {bob}): 1 exchanges")),
        "{timeline}"
    );
    assert!(!timeline.contains("alice"), "{timeline}");
    let err = stack
        .collector
        .cli(&["replay", &s, "--caller", &format!("{ISSUER}|mallory")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no exchanges recorded"), "{err}");

    // Without --caller: each caller's exchanges under their own heading,
    // never interleaved.
    let timeline = stack.collector.cli(&["replay", &s]).unwrap();
    let blocks: Vec<&str> = timeline.split("session ").skip(1).collect();
    assert_eq!(blocks.len(), 4, "{timeline}");
    assert!(blocks[0].starts_with(&format!("{s} (caller {alice}): 2 exchanges")));
    assert!(blocks[0].contains("alice one") && blocks[0].contains("alice two"));
    assert!(!blocks[0].contains("bob"), "{}", blocks[0]);
    assert!(blocks[1].starts_with(&format!("{s} (caller {bob}): 1 exchanges")));
    assert!(blocks[3].starts_with(&format!("{s} (caller rejected): 1 exchanges")));
    assert!(
        blocks[3].contains("inspection: unauthenticated"),
        "{}",
        blocks[3]
    );
}

#[test]
fn approvers_and_replay_see_control_characters_escaped() {
    let options = StackOptions {
        approvers: Some(Box::new(|port| approvers(port, json!([])))),
        ..StackOptions::default()
    };
    let approval = json!({"cluster": "tracegate_approvals", "mode": "async", "threshold": 100});
    let rules = json!([{"id": "prod-deploy", "keywords": ["deploy to production"],
                        "action": "approve", "risk": 100}]);
    let (mut stack, who) = callers_stack(json!({"approval": approval, "rules": rules}), options);
    let s = unique("escapes");
    // A plain-text prompt whose second line would erase the risky line
    // above it and print a reassuring one over it, then reorder the rest.
    let prompt =
        "please deploy to production now\n\x1b[1A\x1b[2K\rnothing to see here\u{202e}dlrow";
    let (status, body, id) = post(&stack, Some(&who.alice), &s, "text/plain", prompt);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "approval_required", "{body}");
    let id = id.expect("an approval id");

    let r = stack.collector.wait_for_records(&s, 1).unwrap().remove(0);
    assert!(r["request_body"]["text"].as_str().unwrap().contains('\x1b'));
    let timeline = stack.collector.cli(&["replay", &s]).unwrap();
    assert_eq!(raw_controls(&timeline), [], "{timeline:?}");
    assert!(
        timeline.contains("| \\x1b[1A\\x1b[2K\\rnothing to see here\\u{202e}dlrow"),
        "{timeline}"
    );
    let json_lines = stack.collector.cli(&["replay", &s, "--json"]).unwrap();
    assert_eq!(raw_controls(&json_lines), [], "{json_lines:?}");
    let v: Value = serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
    assert_eq!(
        v["request_body"]["text"], prompt,
        "the JSON keeps the value"
    );

    let approver = &who.approver;
    let shown = stack.collector.approvals(approver, &["show", &id]).unwrap();
    assert_eq!(raw_controls(&shown), [], "{shown:?}");
    assert!(shown.contains("\\x1b["), "{shown}");
    let listed = stack.collector.approvals(approver, &["list"]).unwrap();
    assert_eq!(raw_controls(&listed), [], "{listed:?}");
}
