//! Any life an exchange can have in the proxy: its events in every order
//! Envoy can deliver them (bodies in any chunks, buffered or streamed as the
//! exchange's answers ask, calls and keys answered in any way and at any
//! point, the client gone at any step), driven as the filter's worker drives
//! them. Whatever happens: no panic (a trap would end the VM for every
//! request of the worker), nothing unjudged reaches the upstream or the
//! client, exactly one record, holding what went upstream and what the
//! client got, and what the exchange held in the gateway is given back.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::detect::Catalogue;
use crate::inspect::tests::properties::escaped;

/// Planted in answers, in a sentence a stream may split anywhere.
const ANSWER_SECRET: &str = "AKIAIOSFODNN7EXAMPLE";

/// Pieces of a prompt: plain text and secrets.
const PIECES: &[&str] = &[
    "the pool ran dry ",
    "oncall@example.com",
    "card 4111 1111 1111 1111 ",
    "ghp_1234567890abcdefghijABCDEFGHIJ123456",
    "é ünïcode ",
    "\"quoted\" \\ back ",
];

/// Words the rules act on (one blocks, one asks for approval).
const RULED: &[&str] = &["please exfiltrate it ", "deploy to prod "];

/// The configurations an exchange meets, with what each asks of it.
fn config(which: usize) -> Value {
    let v = vectors();
    let local_jwt = json!({"providers": [{
        "name": "corp", "issuer": v["issuer"], "audiences": [v["audience"]], "jwks": v["jwks"],
    }]});
    let rules = json!([
        {"id": "no-exfil", "scope": "prompt", "keywords": ["exfiltrate"], "action": "block"},
        {"id": "deploys", "scope": "prompt", "keywords": ["deploy"], "action": "approve", "risk": 100},
    ]);
    match which {
        // `make bench`'s: a local JWT, headers held, records async.
        0 => json!({"jwt": local_jwt, "inspection": {"hold_headers": true}, "rules": rules}),
        // Headers go on before the body; a person asked; records ahead.
        1 => json!({
            "rules": rules,
            "approval": {"threshold": 50},
            "recording": {"mode": "write_ahead"},
        }),
        // Keys fetched while requests wait; records ahead, failing open.
        2 => json!({
            "jwt": remote_jwt(),
            "inspection": {"hold_headers": true},
            "rules": rules,
            "recording": {"mode": "write_ahead", "failure_mode": "fail_open"},
        }),
        // Approval and write-ahead behind held headers and remote keys.
        _ => json!({
            "jwt": remote_jwt(),
            "inspection": {"hold_headers": true},
            "rules": rules,
            "approval": {"threshold": 50},
            "recording": {"mode": "write_ahead"},
        }),
    }
}

/// Cuts `bytes` at the given fractions (sorted, deduplicated, no empty
/// piece).
fn chunks(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) * bytes.len() / usize::from(u16::MAX))
        .filter(|&a| a > 0 && a < bytes.len())
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for a in at.into_iter().chain([bytes.len()]) {
        out.push(bytes[from..a].to_vec());
        from = a;
    }
    out
}

/// What the upstream answers.
#[derive(Debug, Clone)]
struct Answer {
    status: u32,
    content_type: &'static str,
    encoding: &'static str,
    body: Vec<u8>,
}

/// The LLM APIs, each with its request, whole answer and stream events.
#[derive(Debug, Clone, Copy)]
enum Llm {
    Chat,
    Messages,
    Responses,
}

impl Llm {
    fn path(self) -> &'static str {
        match self {
            Llm::Chat => "/v1/chat/completions",
            Llm::Messages => "/v1/messages",
            Llm::Responses => "/v1/responses",
        }
    }

    fn request(self, prompt: &str, stream: bool) -> Value {
        match self {
            Llm::Chat => json!({"model": "gpt-4o", "stream": stream, "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": prompt},
            ]}),
            Llm::Messages => json!({"model": "claude-sonnet-4-5", "max_tokens": 100,
                "stream": stream, "system": "You are terse.",
                "messages": [{"role": "user", "content": prompt}]}),
            Llm::Responses => json!({"model": "gpt-4o", "stream": stream,
                "instructions": "You are terse.", "input": prompt}),
        }
    }

    fn whole(self, text: &str) -> Value {
        match self {
            Llm::Chat => json!({"choices": [{"index": 0,
                "message": {"role": "assistant", "content": text}}]}),
            Llm::Messages => json!({"type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}]}),
            Llm::Responses => json!({"object": "response", "output": [{"type": "message",
                "content": [{"type": "output_text", "text": text}]}]}),
        }
    }

    fn event(self, text: &str) -> String {
        match self {
            Llm::Chat => format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": text}}]})
            ),
            Llm::Messages => format!(
                "event: content_block_delta\ndata: {}\n\n",
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": text}})
            ),
            Llm::Responses => format!(
                "event: response.output_text.delta\ndata: {}\n\n",
                json!({"type": "response.output_text.delta", "item_id": "msg_1",
                       "output_index": 0, "content_index": 0, "delta": text})
            ),
        }
    }
}

fn answer(llm: Llm, kind: usize, text_cut: u16, encoding: &'static str) -> Answer {
    let text = format!("Rotate the key {ANSWER_SECRET} today, then tell the team.");
    let cut = usize::from(text_cut) * text.len() / usize::from(u16::MAX);
    let (a, b) = text.split_at(cut);
    let (status, content_type, body) = match kind {
        0 => (
            200,
            "application/json",
            llm.whole(&text).to_string().into_bytes(),
        ),
        1 => (
            200,
            "text/event-stream",
            format!("{}{}", llm.event(a), llm.event(b)).into_bytes(),
        ),
        // No type: the first bytes tell a stream from a whole body.
        2 => (
            200,
            "",
            format!("{}{}", llm.event(a), llm.event(b)).into_bytes(),
        ),
        _ => (
            500,
            "application/json",
            json!({"error": {"message": text}}).to_string().into_bytes(),
        ),
    };
    Answer {
        status,
        content_type,
        encoding,
        body,
    }
}

/// The texts a reader finds in `bytes`: the bytes themselves, each JSON
/// string in them (whole, or in `data:` lines), and the strings of all
/// `data:` lines joined, as a client joins a stream's deltas.
fn readable(bytes: &[u8]) -> Vec<String> {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let raw = String::from_utf8_lossy(bytes).to_string();
    let mut texts = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        strings(&v, &mut texts);
    }
    let mut streamed = Vec::new();
    for line in raw.lines() {
        if let Some(Ok(v)) = line
            .strip_prefix("data: ")
            .map(serde_json::from_str::<Value>)
        {
            strings(&v, &mut streamed);
        }
    }
    texts.push(streamed.concat());
    texts.extend(streamed);
    texts.push(raw);
    texts
}

/// What the built-in detectors find in what a reader finds in `bytes`:
/// text that shows a secret went out as it was.
fn unmasked(bytes: &[u8]) -> Vec<String> {
    static DETECTORS: std::sync::OnceLock<Catalogue> = std::sync::OnceLock::new();
    let detectors = DETECTORS.get_or_init(|| Catalogue::new(|_| true, &[]).unwrap());
    let mut found = Vec::new();
    let mut findings = Vec::new();
    for text in readable(bytes) {
        detectors.find(&text, &mut findings);
        found.extend(findings.iter().map(|f| text[f.start..f.end].to_string()));
    }
    found
}

/// How each asynchronous question is answered, in turn.
#[derive(Debug, Clone, Copy)]
enum Answering {
    Yes,
    No,
    Fails,
}

/// The proxy around one exchange, as Envoy and the worker drive it.
struct Proxy {
    gw: Gateway,
    host: Fake,
    ex: Exchange,
    out: Vec<Effect>,
    /// Request bytes that went upstream, response bytes the client got.
    upstream: Vec<u8>,
    client: Vec<u8>,
    headers_held: bool,
    /// The last request (response) body callback paused: the proxy buffers
    /// what comes next after what it holds.
    request_buffered: bool,
    response_buffered: bool,
    request_complete: bool,
    call: Option<CallKind>,
    local_reply: Option<u32>,
    enqueued: usize,
    /// The effects of the event being delivered let the request go on.
    resumed: bool,
    /// The last record handed to the outbox.
    record: Option<Record>,
    ended: bool,
    answers: std::vec::IntoIter<Answering>,
    /// The client goes away at this step (after the headers: a stream
    /// without them has nothing to record).
    gone_at: usize,
    step: usize,
}

impl Proxy {
    /// Delivers `event` (unless the client is gone by now) and carries out
    /// its effects, as the worker does: a call that cannot be made is
    /// answered at once; a request resumed inside its own callback goes on
    /// by the callback's Continue.
    fn deliver(&mut self, event: Event<'_>) -> Option<Action> {
        if self.ended {
            return None;
        }
        self.step += 1;
        if self.step >= self.gone_at {
            self.end(None, "downstream_remote_disconnect");
            return None;
        }
        let callback = matches!(
            event,
            Event::RequestHeaders { .. } | Event::RequestBody { .. } | Event::RequestTrailers
        );
        self.resumed = false;
        let mut action = self.on(event);
        while let Some(kind) = self.not_sent() {
            self.on(Event::Answered {
                call: kind,
                reply: Reply::NotSent("BadArgument".into()),
            });
        }
        if self.resumed {
            if callback {
                action = Action::Continue;
            } else {
                assert!(
                    self.headers_held || self.request_buffered,
                    "resumed a request that was not paused"
                );
                self.headers_held = false;
                self.release_request();
            }
        }
        Some(action)
    }

    /// The answer to a call just made, when it is that it cannot be made.
    fn not_sent(&mut self) -> Option<CallKind> {
        let kind = self.call?;
        if let Some(Answering::Fails) = self.answers.as_slice().first() {
            self.answers.next();
            self.call = None;
            return Some(kind);
        }
        None
    }

    fn on(&mut self, event: Event<'_>) -> Action {
        self.out.clear();
        let action = self.ex.on(event, &mut self.gw, &self.host, &mut self.out);
        let now = self.host.now_nanos() as u64;
        for effect in std::mem::take(&mut self.out) {
            match effect {
                Effect::ReplaceRequestBody { len, ref bytes } => {
                    let mut buf = self.host.request.borrow_mut();
                    assert!(len <= buf.len(), "replaces {len} of {} held", buf.len());
                    buf.splice(..len, bytes.iter().copied());
                }
                Effect::ReplaceResponseBody { len, ref bytes } => {
                    let mut buf = self.host.response.borrow_mut();
                    assert!(len <= buf.len(), "replaces {len} of {} held", buf.len());
                    buf.splice(..len, bytes.iter().copied());
                }
                Effect::Respond(ref reply) => {
                    assert!(self.local_reply.is_none(), "answered twice");
                    self.local_reply = Some(reply.status);
                }
                Effect::Call(kind, _) => {
                    assert!(self.call.is_none(), "a second call while {:?}", self.call);
                    self.call = Some(kind);
                }
                Effect::Resume => self.resumed = true,
                Effect::Enqueue {
                    ref record,
                    reserved,
                } => {
                    self.enqueued += 1;
                    self.record = Some((**record).clone());
                    let mut more = Vec::new();
                    self.gw
                        .enqueue((**record).clone(), reserved, now, &mut more);
                }
                _ => {}
            }
            self.out.push(effect);
        }
        action
    }

    fn release_request(&mut self) {
        assert!(
            self.local_reply.is_none(),
            "request went on after the local reply"
        );
        let mut buf = self.host.request.borrow_mut();
        self.upstream.extend(buf.drain(..));
        self.request_buffered = false;
    }

    fn request_headers(&mut self, path: &str, token: Option<&str>, end_of_stream: bool) {
        let mut headers: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", path),
            (":authority", "api.test"),
            ("content-type", "application/json"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        if let Some(action) = self.deliver(Event::RequestHeaders {
            headers: &headers,
            end_of_stream,
        }) {
            self.headers_held = action == Action::Pause;
            if !self.headers_held {
                self.release_request();
            }
        }
    }

    fn request_chunk(&mut self, chunk: &[u8], end_of_stream: bool) {
        {
            let mut buf = self.host.request.borrow_mut();
            if !self.request_buffered {
                buf.clear();
            }
            buf.extend_from_slice(chunk);
        }
        self.request_complete = end_of_stream;
        let size = self.host.request.borrow().len();
        let Some(action) = self.deliver(Event::RequestBody {
            size,
            end_of_stream,
        }) else {
            return;
        };
        if action == Action::Continue {
            self.headers_held = false;
            self.release_request();
        } else {
            self.request_buffered = true;
        }
    }

    /// Answers what the exchange waits for (keys, a call), as the next
    /// answers say, until it waits for nothing.
    fn answer_all(&mut self) {
        while !self.ended && (self.call.is_some() || self.gw.parked() > 0) {
            let answering = self.answers.next().unwrap_or(Answering::Yes);
            if self.gw.parked() > 0 {
                let jwks = vectors()["jwks"].to_string();
                let now_ms = self.host.now_s.get() as u64 * 1000;
                let fetched = match answering {
                    Answering::Yes => Ok(jwks.as_bytes()),
                    _ => Err("HTTP 503".to_string()),
                };
                let ready = self.gw.keys_fetched(0, fetched, now_ms, &mut Vec::new());
                if ready.contains(&7) {
                    self.deliver(Event::KeysReady);
                }
                continue;
            }
            // Not parked, so a call is waited for.
            let Some(kind) = self.call.take() else {
                break;
            };
            let reply = match (kind, answering) {
                (CallKind::Approval, Answering::Yes) => approval_view("APPROVED"),
                (CallKind::Approval, Answering::No) => approval_view("DENIED"),
                (CallKind::WriteAhead, Answering::Yes) => stored(1),
                (CallKind::WriteAhead, Answering::No) => Reply::Grpc {
                    status: 14,
                    message: Vec::new(),
                },
                // Timed out.
                (CallKind::Approval, Answering::Fails) => Reply::Http {
                    status: None,
                    body: Vec::new(),
                },
                (CallKind::WriteAhead, Answering::Fails) => Reply::Grpc {
                    status: 4,
                    message: Vec::new(),
                },
            };
            self.deliver(Event::Answered { call: kind, reply });
        }
    }

    fn response(&mut self, answer: &Answer, cuts: &[u16]) {
        let (status, content_type, encoding, body) = match self.local_reply {
            // The local reply passes the filter on its way out too.
            Some(status) => (status, "application/json", "", b"{}".to_vec()),
            None => (
                answer.status,
                answer.content_type,
                answer.encoding,
                answer.body.clone(),
            ),
        };
        let upstream_answer = self.local_reply.is_none();
        // Held headers go out with the body; only what the body does counts.
        let delivered = self.deliver(Event::ResponseHeaders {
            status,
            content_type: content_type.into(),
            content_encoding: encoding.into(),
            end_of_stream: false,
        });
        if delivered.is_none() {
            return;
        }
        if upstream_answer && self.local_reply.is_some() {
            // Refused on sight (compressed): the client gets the local reply.
            return;
        }
        let pieces = chunks(&body, cuts);
        let last = pieces.len() - 1;
        for (i, piece) in pieces.iter().enumerate() {
            {
                let mut buf = self.host.response.borrow_mut();
                if !self.response_buffered {
                    buf.clear();
                }
                buf.extend_from_slice(piece);
            }
            let size = self.host.response.borrow().len();
            let Some(action) = self.deliver(Event::ResponseBody {
                size,
                end_of_stream: i == last,
            }) else {
                return;
            };
            if upstream_answer && self.local_reply.is_some() {
                return;
            }
            if action == Action::Continue {
                let mut buf = self.host.response.borrow_mut();
                if upstream_answer {
                    self.client.extend(buf.drain(..));
                } else {
                    buf.clear();
                }
                self.response_buffered = false;
            } else {
                self.response_buffered = true;
            }
        }
    }

    fn end(&mut self, code: Option<u64>, details: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        let before = self.enqueued;
        self.host.code.set(code);
        self.on(Event::End {
            code_details: Some(details.into()),
        });
        assert_eq!(self.enqueued - before, 1, "one record at the end");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_life_of_an_exchange_keeps_its_promises(
        which in 0usize..4,
        llm in prop::sample::select(vec![Llm::Chat, Llm::Messages, Llm::Responses]),
        stream in any::<bool>(),
        token in prop::sample::select(vec![
            Some("es256"), Some("es256"), Some("es256"), Some("rs256"), Some("rs256"),
            Some("bad_signature"), None,
        ]),
        prompt in prop::collection::vec(prop::sample::select(PIECES), 1..6),
        ruled in prop::option::weighted(0.2, prop::sample::select(RULED)),
        glue in prop::sample::select(vec!["", " ", "\n"]),
        every in prop::sample::select(vec![0usize, 2, 5]),
        truncate in prop::option::weighted(0.1, 0usize..40),
        cuts in prop::collection::vec(any::<u16>(), 0..4),
        answers in prop::collection::vec(
            prop::sample::select(vec![
                Answering::Yes, Answering::Yes, Answering::Yes, Answering::No, Answering::Fails,
            ]),
            0..6,
        ),
        kind in 0usize..4,
        text_cut in any::<u16>(),
        encoding in prop::sample::select(vec!["", "", "", "gzip"]),
        answer_cuts in prop::collection::vec(any::<u16>(), 0..4),
        gone_at in prop::option::weighted(0.3, 2usize..14),
    ) {
        let policy = Policy::compile(config(which).to_string().as_bytes()).unwrap();
        let mut p = Proxy {
            gw: Gateway::new(policy, "test".into()),
            host: Fake::new(),
            ex: Exchange::new(7),
            out: Vec::new(),
            upstream: Vec::new(),
            client: Vec::new(),
            headers_held: false,
            request_buffered: false,
            response_buffered: false,
            request_complete: false,
            call: None,
            local_reply: None,
            enqueued: 0,
            resumed: false,
            record: None,
            ended: false,
            answers: answers.into_iter(),
            gone_at: gone_at.unwrap_or(usize::MAX),
            step: 0,
        };
        let token = token.map(|t| vectors()["tokens"][t].as_str().unwrap().to_string());
        let prompt = prompt.into_iter().chain(ruled).collect::<Vec<_>>().join(glue);
        let mut body = escaped(&llm.request(&prompt, stream), every).into_bytes();
        if let Some(t) = truncate {
            body.truncate(body.len().saturating_sub(t + 1));
        }

        p.request_headers(llm.path(), token.as_deref(), false);
        p.answer_all();
        let pieces = chunks(&body, &cuts);
        let last = pieces.len() - 1;
        for (i, piece) in pieces.iter().enumerate() {
            p.request_chunk(piece, i == last);
            p.answer_all();
        }
        prop_assert!(p.request_complete || p.ended);
        let sent_whole = !p.headers_held && !p.request_buffered && p.local_reply.is_none();
        if sent_whole || p.local_reply.is_some() {
            let answer = answer(llm, kind, text_cut, encoding);
            p.response(&answer, &answer_cuts);
        }
        p.end(Some(200), "via_upstream");

        // Nothing after the end.
        p.out.clear();
        prop_assert_eq!(
            p.ex.on(Event::ResponseBody { size: 0, end_of_stream: true }, &mut p.gw, &p.host, &mut p.out),
            Action::Continue
        );
        prop_assert!(p.out.is_empty(), "{:?}", p.out);
        // What it held in the gateway is given back.
        prop_assert_eq!(p.gw.parked(), 0);
        prop_assert_eq!(p.gw.reservations(), 0);

        // Nothing unjudged went upstream: the body whole and masked, or none
        // of it.
        let upstream = String::from_utf8_lossy(&p.upstream);
        let raw = unmasked(&p.upstream);
        prop_assert!(raw.is_empty(), "{:?} went upstream in {}", raw, upstream);
        if !p.upstream.is_empty() {
            prop_assert!(serde_json::from_slice::<Value>(&p.upstream).is_ok(), "{}", upstream);
        }
        // Nor to the client.
        let raw = unmasked(&p.client);
        prop_assert!(raw.is_empty(), "the client got {:?} in {}", raw, String::from_utf8_lossy(&p.client));

        // The record holds what went upstream and what the client got.
        let record = p.record.take().unwrap();
        let held = |b: Option<tracegate_proto::v1::Body>| b.filter(|b| !b.truncated).map(|b| b.data);
        if !p.upstream.is_empty() {
            prop_assert_eq!(held(record.request_body), Some(p.upstream.clone()));
        }
        if p.local_reply.is_none() && !p.client.is_empty() {
            prop_assert_eq!(
                held(record.response_body).map(|b| String::from_utf8_lossy(&b).to_string()),
                Some(String::from_utf8_lossy(&p.client).to_string())
            );
        }
    }
}
