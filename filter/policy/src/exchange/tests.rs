//! Scenarios of one exchange's life, fed event by event as the proxy would,
//! with a fake host: the interleavings that are hard to reach through Envoy.

use prost::Message;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use tracegate_proto::v1::record::UpstreamSaw as Saw;
use tracegate_proto::v1::{ExportRequest, ExportResponse, Record};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::Policy;

const VECTORS: &str = include_str!("../jwt/testdata/vectors.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

/// The proxy as the exchange sees it: a clock, and the bodies received.
struct Fake {
    now_s: Cell<i64>,
    request: RefCell<Vec<u8>>,
    response: RefCell<Vec<u8>>,
    /// The proxy's response code, and how often the exchange asked for it.
    code: Cell<Option<u64>>,
    code_reads: Cell<u32>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            now_s: Cell::new(vectors()["now"].as_i64().unwrap()),
            request: RefCell::default(),
            response: RefCell::default(),
            code: Cell::new(None),
            code_reads: Cell::new(0),
        }
    }
}

fn slice(bytes: &[u8], start: usize, len: usize) -> Option<Vec<u8>> {
    let end = start.saturating_add(len).min(bytes.len());
    bytes.get(start.min(end)..end).map(<[u8]>::to_vec)
}

impl Host for Fake {
    fn now_nanos(&self) -> i64 {
        self.now_s.get() * 1_000_000_000
    }
    fn random(&self) -> [u8; 10] {
        [7; 10]
    }
    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        slice(&self.request.borrow(), start, len)
    }
    fn response_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        slice(&self.response.borrow(), start, len)
    }
    fn response_code(&self) -> Option<u64> {
        self.code_reads.set(self.code_reads.get() + 1);
        self.code.get()
    }
}

/// One exchange with its gateway, host and the effects of the last event.
struct Scenario {
    gw: Gateway,
    host: Fake,
    ex: Exchange,
    out: Vec<Effect>,
    /// Records handed to the outbox, in order.
    records: Vec<(Record, bool)>,
}

impl Scenario {
    fn new(config: Value) -> Scenario {
        let policy = Policy::compile(config.to_string().as_bytes()).unwrap();
        Scenario {
            gw: Gateway::new(policy, "test".into()),
            host: Fake::new(),
            ex: Exchange::new(7),
            out: Vec::new(),
            records: Vec::new(),
        }
    }

    fn on(&mut self, event: Event<'_>) -> Action {
        self.out.clear();
        let action = self.ex.on(event, &mut self.gw, &self.host, &mut self.out);
        for e in &mut self.out {
            if let Effect::Enqueue { record, reserved } = e {
                self.records.push(((**record).clone(), *reserved));
            }
        }
        action
    }

    fn headers(&mut self, extra: &[(&str, &str)], end_of_stream: bool) -> Action {
        let mut headers: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "api.test"),
            ("content-type", "application/json"),
            ("x-request-id", "req-1"),
        ]
        .iter()
        .chain(extra)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        headers.sort();
        self.on(Event::RequestHeaders {
            headers: &headers,
            end_of_stream,
        })
    }

    /// The whole body arrives in one callback.
    fn body(&mut self, user: &str) -> Action {
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": user}]});
        *self.host.request.borrow_mut() = body.to_string().into_bytes();
        let size = self.host.request.borrow().len();
        self.on(Event::RequestBody {
            size,
            end_of_stream: true,
        })
    }

    /// The upstream's response headers.
    fn answer(&mut self, status: u32, content_type: &str, end_of_stream: bool) -> Action {
        self.on(Event::ResponseHeaders {
            status,
            content_type: content_type.into(),
            content_encoding: String::new(),
            end_of_stream,
        })
    }

    fn end(&mut self) -> Record {
        self.host.code.set(Some(200));
        self.on(Event::End {
            code_details: Some("via_upstream".into()),
        });
        self.records.last().cloned().expect("a record").0
    }

    fn has(&self, f: impl Fn(&Effect) -> bool) -> bool {
        self.out.iter().any(f)
    }

    fn call(&self) -> Option<(CallKind, Call)> {
        self.out.iter().find_map(|e| match e {
            Effect::Call(kind, call) => Some((*kind, call.clone())),
            _ => None,
        })
    }

    fn reply(&self) -> Option<&LocalReply> {
        self.out.iter().find_map(|e| match e {
            Effect::Respond(r) => Some(r),
            _ => None,
        })
    }

    fn resumed(&self) -> bool {
        self.has(|e| matches!(e, Effect::Resume))
    }
}

fn verdict(r: &Record) -> String {
    r.inspection
        .as_ref()
        .map(|i| i.verdict.clone())
        .unwrap_or_else(|| "forwarded".into())
}

fn remote_jwt() -> Value {
    let v = vectors();
    json!({"providers": [{
        "name": "idp",
        "issuer": v["issuer"],
        "audiences": [v["audience"]],
        "remote_jwks": {"uri": "https://idp.test/keys", "cluster": "idp"},
    }]})
}

fn bearer(name: &str) -> String {
    format!("Bearer {}", vectors()["tokens"][name].as_str().unwrap())
}

fn approval_view(state: &str) -> Reply {
    let view = json!({"id": "apr_1", "state": state, "approver": "alice", "reason": "ok"});
    Reply::Http {
        status: Some(200),
        body: view.to_string().into_bytes(),
    }
}

fn stored(n: u32) -> Reply {
    Reply::Grpc {
        status: 0,
        message: ExportResponse {
            accepted: n,
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

/// A rule that sends prompts naming "deploy" for approval.
fn approve_rule() -> Value {
    json!([{"id": "deploys", "scope": "prompt", "keywords": ["deploy"], "action": "approve", "risk": 100}])
}

#[test]
fn parked_for_keys_while_the_body_is_still_coming() {
    let mut s = Scenario::new(json!({"jwt": remote_jwt()}));
    let token = bearer("rs256");
    assert_eq!(
        s.headers(&[("authorization", &token)], false),
        Action::Pause
    );
    assert_eq!(s.ex.phase(), Phase::WaitingForKeys { complete: false });
    assert_eq!(s.gw.parked(), 1);

    // The body ends before the keys arrive: judged now (masked), gates later.
    assert_eq!(s.body("card 4111 1111 1111 1111"), Action::Pause);
    assert_eq!(s.ex.phase(), Phase::WaitingForKeys { complete: true });
    assert!(s.has(|e| matches!(e, Effect::ReplaceRequestBody { .. })));
    assert!(!s.resumed());

    let jwks = vectors()["jwks"].to_string();
    let mut effects = Vec::new();
    let now_ms = s.host.now_s.get() as u64 * 1000;
    let ready =
        s.gw.keys_fetched(0, Ok(jwks.as_bytes()), now_ms, &mut effects);
    assert_eq!(ready, vec![7]);
    assert_eq!(s.on(Event::KeysReady), Action::Pause);
    assert!(s.resumed(), "{:?}", s.out);
    assert_eq!(s.ex.phase(), Phase::Forwarded);

    let r = s.end();
    assert_eq!(verdict(&r), "forwarded");
    assert!(r.identity.is_some_and(|i| !i.subject.is_empty()));
    let sent = String::from_utf8_lossy(&r.request_body.unwrap().data).to_string();
    assert!(!sent.contains("4111 1111"), "{sent}");
}

#[test]
fn keys_before_the_body_let_the_headers_go_on() {
    let mut s = Scenario::new(json!({"jwt": remote_jwt()}));
    let token = bearer("es256");
    s.headers(&[("authorization", &token)], false);
    let jwks = vectors()["jwks"].to_string();
    let now_ms = s.host.now_s.get() as u64 * 1000;
    s.gw.keys_fetched(0, Ok(jwks.as_bytes()), now_ms, &mut Vec::new());
    s.on(Event::KeysReady);
    assert!(s.resumed(), "headers resumed: {:?}", s.out);
    assert_eq!(s.ex.phase(), Phase::Receiving);
    assert_eq!(s.body("hello"), Action::Continue);
    assert_eq!(verdict(&s.end()), "forwarded");
}

#[test]
fn keys_that_do_not_come_refuse_with_401() {
    let mut s = Scenario::new(json!({"jwt": remote_jwt()}));
    let token = bearer("rs256");
    s.headers(&[("authorization", &token)], false);
    let now_ms = s.host.now_s.get() as u64 * 1000;
    s.gw.keys_fetched(0, Err("HTTP 503".into()), now_ms, &mut Vec::new());
    s.on(Event::KeysReady);
    assert_eq!(s.reply().map(|r| r.status), Some(401));
    assert!(!s.resumed());
    // The body that still comes is not judged or forwarded.
    assert_eq!(s.body("hello"), Action::Pause);
    let r = s.end();
    assert_eq!(verdict(&r), "unauthenticated");
    assert_eq!(r.upstream_saw(), Saw::Nothing, "nothing went upstream");
}

#[test]
fn approval_then_write_ahead() {
    let mut s = Scenario::new(json!({
        "rules": approve_rule(),
        "approval": {"threshold": 50},
        "recording": {"mode": "write_ahead"},
    }));
    assert_eq!(s.headers(&[], false), Action::Continue);
    assert_eq!(s.body("please deploy to prod"), Action::Pause);
    let (kind, call) = s.call().expect("approval asked");
    assert_eq!(kind, CallKind::Approval);
    assert!(
        matches!(call, Call::Http { ref headers, .. } if headers.iter().any(|(n, v)| *n == ":method" && v == "POST"))
    );
    assert_eq!(s.ex.phase(), Phase::WaitingForApproval);

    // A write-ahead answer while the approval is asked is not for it.
    s.on(Event::Answered {
        call: CallKind::WriteAhead,
        reply: stored(1),
    });
    assert!(s.out.is_empty());

    s.on(Event::Answered {
        call: CallKind::Approval,
        reply: approval_view("APPROVED"),
    });
    let (kind, call) = s.call().expect("write-ahead sent");
    assert_eq!(kind, CallKind::WriteAhead);
    let Call::Grpc { message, .. } = call else {
        panic!("gRPC export");
    };
    let ahead = ExportRequest::decode(message.as_slice()).unwrap().records[0].clone();
    assert_eq!(ahead.approval.as_ref().unwrap().outcome, "forwarded");
    assert!(!s.resumed(), "not before the record is durable");
    assert_eq!(s.ex.phase(), Phase::WritingAhead);

    s.on(Event::Answered {
        call: CallKind::WriteAhead,
        reply: stored(1),
    });
    assert!(s.resumed());
    assert_eq!(s.ex.phase(), Phase::Forwarded);
    let r = s.end();
    assert_eq!(verdict(&r), "forwarded");
    assert_eq!(r.request_record_id, ahead.record_id);
    assert_eq!(r.approval.unwrap().state, "APPROVED");
    // Both records name the policy they were decided under.
    let policy = s.gw.policy.reference.clone();
    assert_eq!(policy.sha256.len(), 64);
    assert_eq!(ahead.policy.as_ref(), Some(&policy));
    assert_eq!(r.policy.as_ref(), Some(&policy));
}

#[test]
fn every_record_names_the_policy_even_a_refused_request() {
    let mut s = Scenario::new(json!({
        "policy": {"name": "egress", "version": "3"},
        "rules": [{"id": "no", "keywords": ["forbidden"], "action": "block"}],
    }));
    s.headers(&[], false);
    s.body("this is forbidden");
    let r = s.end();
    assert_eq!(verdict(&r), "blocked");
    let p = r.policy.expect("policy stated");
    assert_eq!((p.name.as_str(), p.version.as_str()), ("egress", "3"));
    assert_eq!(p.sha256, s.gw.policy.reference.sha256);
}

#[test]
fn write_ahead_failing_open_goes_on_and_queues_the_record() {
    let mut s = Scenario::new(json!({
        "masking": {"enabled": false},
        "recording": {"mode": "write_ahead", "failure_mode": "fail_open"},
    }));
    s.headers(&[], false);
    assert_eq!(s.body("hi"), Action::Pause);
    assert!(matches!(s.call(), Some((CallKind::WriteAhead, _))));
    s.on(Event::Answered {
        call: CallKind::WriteAhead,
        reply: Reply::Grpc {
            status: 14,
            message: Vec::new(),
        },
    });
    assert!(s.resumed());
    let (queued, reserved) = s.records.last().cloned().unwrap();
    assert!(!reserved, "fail_open reserves nothing");
    let r = s.end();
    assert_eq!(r.request_record_id, queued.record_id);
    assert_eq!(verdict(&r), "forwarded");
}

#[test]
fn write_ahead_that_cannot_be_sent_fails_closed_with_503() {
    let mut s = Scenario::new(json!({"recording": {"mode": "write_ahead"}}));
    s.headers(&[], false);
    s.body("hi");
    s.on(Event::Answered {
        call: CallKind::WriteAhead,
        reply: Reply::NotSent("BadArgument".into()),
    });
    assert_eq!(s.reply().map(|r| r.status), Some(503));
    assert!(!s.resumed());
    let r = s.end();
    assert_eq!(verdict(&r), "unrecorded");
    assert!(s.records.last().unwrap().1, "its reservation was used");
}

#[test]
fn a_call_answered_after_its_request_is_gone_does_nothing() {
    let mut s = Scenario::new(json!({"rules": approve_rule(), "approval": {"threshold": 50}}));
    s.headers(&[], false);
    s.body("deploy it");
    assert!(matches!(s.call(), Some((CallKind::Approval, _))));
    // The client goes away while a person is asked.
    let r = s.end();
    assert_eq!(r.upstream_saw(), Saw::Headers, "headers only");
    let records = s.records.len();
    s.on(Event::Answered {
        call: CallKind::Approval,
        reply: approval_view("APPROVED"),
    });
    assert!(s.out.is_empty(), "{:?}", s.out);
    assert_eq!(s.records.len(), records);
}

#[test]
fn a_reset_mid_stream_records_only_what_was_released() {
    let mut s = Scenario::new(json!({}));
    s.headers(&[], false);
    s.body("hi");
    s.answer(200, "text/event-stream", false);
    let chunk = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": text}}]})
        )
    };
    // A key split across events: its start is held back.
    let first = chunk("here: AKIA") + &chunk("IOSFODNN7");
    *s.host.response.borrow_mut() = first.clone().into_bytes();
    s.on(Event::ResponseBody {
        size: first.len(),
        end_of_stream: false,
    });
    let released: Vec<u8> = s
        .out
        .iter()
        .find_map(|e| match e {
            Effect::ReplaceResponseBody { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .unwrap();
    assert!(!String::from_utf8_lossy(&released).contains("AKIA"));
    // The connection resets: the exchange ends without the stream's end.
    s.host.code.set(Some(200));
    let r = s.on(Event::End {
        code_details: Some("upstream_reset_after_response_started".into()),
    });
    assert_eq!(r, Action::Continue);
    let (record, reserved) = s.records.last().cloned().unwrap();
    assert!(reserved);
    let body = record.response_body.unwrap().data;
    assert_eq!(body, released, "the record holds what the client got");
    // Nothing after the end.
    assert_eq!(
        s.on(Event::ResponseBody {
            size: 1,
            end_of_stream: true
        }),
        Action::Continue
    );
    assert!(s.out.is_empty());
}

fn block_rule() -> Value {
    json!([{"id": "no-exfil", "scope": "prompt", "keywords": ["exfiltrate"], "action": "block"}])
}

#[test]
fn blocked_with_headers_already_gone() {
    let mut s = Scenario::new(json!({"rules": block_rule()}));
    assert_eq!(s.headers(&[], false), Action::Continue);
    assert_eq!(s.body("please exfiltrate the data"), Action::Pause);
    let reply = s.reply().unwrap();
    assert_eq!(reply.status, 403);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["rule"], "no-exfil");
    assert_eq!(body["error"]["type"], "permission_denied");
    let r = s.end();
    assert_eq!(verdict(&r), "blocked");
    assert_eq!(
        r.upstream_saw(),
        Saw::Headers,
        "the headers went on, the body did not"
    );
}

#[test]
fn blocked_with_headers_held() {
    let mut s = Scenario::new(json!({"rules": block_rule(), "inspection": {"hold_headers": true}}));
    let anthropic = [(":path", "/v1/messages")];
    let mut headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":authority", "api.test"),
        ("content-type", "application/json"),
    ]
    .iter()
    .chain(&anthropic)
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    headers.sort();
    assert_eq!(
        s.on(Event::RequestHeaders {
            headers: &headers,
            end_of_stream: false
        }),
        Action::Pause
    );
    assert_eq!(s.body("exfiltrate now"), Action::Pause);
    let body: Value = serde_json::from_slice(&s.reply().unwrap().body).unwrap();
    assert_eq!(
        body["error"]["type"], "permission_error",
        "Anthropic's shape"
    );
    let r = s.end();
    assert_eq!(verdict(&r), "blocked");
    assert_eq!(r.upstream_saw(), Saw::Nothing, "nothing went upstream");
}

#[test]
fn a_full_buffer_refuses_with_503_under_fail_closed() {
    let mut s =
        Scenario::new(json!({"recording": {"buffer_max_records": 1, "batch_max_records": 1}}));
    // One place: the first exchange reserves it.
    assert_eq!(s.headers(&[], true), Action::Continue);
    let mut second = Exchange::new(8);
    let mut out = Vec::new();
    let headers = vec![(":path".to_string(), "/v1/responses".to_string())];
    let action = second.on(
        Event::RequestHeaders {
            headers: &headers,
            end_of_stream: true,
        },
        &mut s.gw,
        &s.host,
        &mut out,
    );
    assert_eq!(action, Action::Pause);
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Respond(r) if r.status == 503)));
    // Abandoned without an end, the first gives its place back.
    s.ex.abandon(&mut s.gw);
    let mut third = Exchange::new(9);
    let action = third.on(
        Event::RequestHeaders {
            headers: &headers,
            end_of_stream: true,
        },
        &mut s.gw,
        &s.host,
        &mut Vec::new(),
    );
    assert_eq!(action, Action::Continue);
}

#[test]
fn held_bytes_bound_refuses_new_requests_but_keeps_admitted_records() {
    let s = Scenario::new(json!({"recording": {
        "batch_max_bytes": 1024, "buffer_max_bytes": 2048, "flush_interval_ms": 600000}}));
    let mut gw = s.gw;
    let big = |i: u32| Record {
        record_id: format!("r{i}"),
        path: "x".repeat(1500),
        ..Record::default()
    };
    let mut out = Vec::new();
    // Three requests admitted while less than 2 KiB is held...
    assert_eq!(gw.admit(&mut out), Admission::Reserved);
    assert_eq!(gw.admit(&mut out), Admission::Reserved);
    gw.enqueue(big(1), true, 0, &mut out);
    assert_eq!(gw.admit(&mut out), Admission::Reserved);
    // ...all keep their records, though the bytes go over the bound.
    gw.enqueue(big(2), true, 0, &mut out);
    gw.enqueue(big(3), true, 0, &mut out);
    assert_eq!(gw.outbox.len(), 3);
    assert!(gw.outbox.held_bytes() > 4500);
    assert!(out.is_empty(), "nothing dropped or refused: {out:?}");
    // A new request is refused (503), as with a full buffer.
    assert_eq!(gw.admit(&mut out), Admission::Refused);
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Add(Stat::UnrecordedRefused, 1))));
    // The bytes acknowledged by the collector make room again.
    let mut ids = Vec::new();
    while let Some(batch) = gw.outbox.take_batch(1) {
        ids.push(batch.id);
    }
    assert_eq!(ids.len(), 3, "one record per batch of at most 1 KiB");
    for id in ids {
        gw.outbox.acknowledge(id);
    }
    assert_eq!(gw.outbox.held_bytes(), 0);
    assert_eq!(gw.admit(&mut out), Admission::Reserved);
}

#[test]
fn held_bytes_bound_drops_records_under_fail_open() {
    let s = Scenario::new(json!({"recording": {"failure_mode": "fail_open",
        "batch_max_bytes": 1024, "buffer_max_bytes": 1024, "flush_interval_ms": 600000}}));
    let mut gw = s.gw;
    let mut out = Vec::new();
    let big = Record {
        path: "x".repeat(1500),
        ..Record::default()
    };
    assert_eq!(gw.admit(&mut out), Admission::Unreserved);
    gw.enqueue(big.clone(), false, 0, &mut out);
    gw.enqueue(big, false, 0, &mut out);
    assert_eq!(gw.outbox.len(), 1, "the second is over the bound");
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Add(Stat::RecordsDropped, 1))));
}

#[test]
fn every_stat_has_its_own_index_and_name() {
    let all: Vec<Stat> = Stat::all().collect();
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.index(), i, "{s:?}");
        assert!(s.name().starts_with("tracegate."));
    }
    let mut names: Vec<String> = all.iter().map(|s| s.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len());
}

#[test]
fn the_response_code_is_asked_for_only_without_a_response_status() {
    // The upstream answered: its status stands, the proxy is not asked.
    let mut s = Scenario::new(json!({}));
    s.headers(&[], false);
    s.body("hello");
    s.answer(502, "application/json", true);
    s.host.code.set(Some(200));
    s.on(Event::End {
        code_details: Some("via_upstream".into()),
    });
    assert_eq!(s.records.last().expect("a record").0.status, 502);
    assert_eq!(s.host.code_reads.get(), 0);
    // The client went away before any answer: only the proxy can tell.
    let mut s = Scenario::new(json!({}));
    s.headers(&[], false);
    s.body("hello");
    s.host.code.set(Some(503));
    s.on(Event::End {
        code_details: Some("upstream_reset_before_response_started".into()),
    });
    assert_eq!(s.records.last().expect("a record").0.status, 503);
    assert_eq!(s.host.code_reads.get(), 1);
}

mod access;
#[cfg(not(target_arch = "wasm32"))]
mod proxy;
mod usage;
