//! A local LLM upstream that speaks the OpenAI chat-completions wire format,
//! plain JSON or `stream: true` as server-sent events. It answers with an echo
//! of the last user message, so tests know exactly what to expect, and keeps
//! every request it received (`GET /__requests`) so tests can check what
//! Envoy forwarded. `GET /__starts` lists the API requests whose headers
//! arrived (method, path, headers), noted before their body is read, so
//! tests can see a request that was reset before its body came.
//!
//! It doubles as the identity provider's JWKS endpoint: `GET /jwks.json`
//! serves what a test last `PUT /__jwks` (404 before that), and
//! `GET /__jwks/fetches` counts the fetches, so tests can rotate keys.
//!
//! Streamed answers can be shaped by request headers (see `Shape`): text
//! pieces of N characters, a pause mid-stream until a test releases it, a
//! reasoning stream, other SSE framings, no content type, an endless line.
//!
//! With `--api-key KEY` it checks the provider key as the real APIs do:
//! every `/v1/...` request must carry `Authorization: Bearer KEY` (or
//! Anthropic's `x-api-key: KEY`), else it is answered 401 in OpenAI's error
//! shape, as a request sent around the gateway would be.
//!
//! Usage: test-upstream [--port N] [--api-key KEY]   (port 0, the default,
//! picks a free port and prints `test-upstream: listening on ADDR`).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<Value>>>);

/// Request heads as they arrived.
#[derive(Default, Clone)]
struct Starts(Arc<Mutex<Vec<Value>>>);

#[derive(Default, Clone)]
struct Jwks {
    document: Arc<Mutex<Option<Bytes>>>,
    fetches: Arc<AtomicUsize>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut port = 0u16;
    let mut api_key: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().unwrap_or_default().parse()?,
            "--api-key" => api_key = args.next(),
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: test-upstream [--port N] [--api-key KEY]"
            ),
        }
    }
    let seen = Seen::default();
    let starts = Starts::default();
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/responses", post(responses))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(api_key),
            check_api_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            starts.clone(),
            note_start,
        ));
    let app = Router::new()
        .route("/__requests", get(requests))
        .route("/__release/{name}", post(release))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(seen.clone())
        .merge(
            Router::new()
                .route("/__starts", get(list_starts))
                .with_state(starts),
        )
        .merge(
            Router::new()
                .route("/jwks.json", get(serve_jwks))
                .route("/__jwks", put(set_jwks))
                .route("/__jwks/fetches", get(jwks_fetches))
                .with_state(Jwks::default()),
        );
    let app = app.merge(api.with_state(seen));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("test-upstream: listening on {}", listener.local_addr()?);
    // No Nagle delay: streamed events leave as they are written.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// With a provider key configured, `/v1/...` requests without it are
/// refused as the provider would (OpenAI's 401 shape).
async fn check_api_key(
    State(key): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = key.as_deref() {
        let h = request.headers();
        let bearer = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_api_key = h.get("x-api-key").and_then(|v| v.to_str().ok());
        if bearer != Some(key) && x_api_key != Some(key) {
            let body = json!({"error": {
                "message": "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
    }
    next.run(request).await
}

/// Notes a request's head as soon as it arrives, before its body is read.
async fn note_start(State(starts): State<Starts>, request: Request, next: Next) -> Response {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    if let Ok(mut s) = starts.0.lock() {
        s.push(json!({
            "method": request.method().as_str(),
            "path": request.uri().path(),
            "headers": headers,
        }));
    }
    next.run(request).await
}

async fn list_starts(State(starts): State<Starts>) -> Json<Value> {
    Json(Value::Array(
        starts.0.lock().map(|s| s.clone()).unwrap_or_default(),
    ))
}

async fn requests(State(seen): State<Seen>) -> Json<Value> {
    let seen = seen.0.lock().map(|s| s.clone()).unwrap_or_default();
    Json(Value::Array(seen))
}

fn remember(seen: &Seen, path: &str, headers: &HeaderMap, body: &Bytes) {
    // Benchmarks send far too much to keep.
    if std::env::var_os("TEST_UPSTREAM_FORGET").is_some() {
        return;
    }
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    if let Ok(mut s) = seen.0.lock() {
        s.push(json!({
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(body),
        }));
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    (status, Json(body)).into_response()
}

/// The text of the last user message: a string, or the text parts of a list.
fn last_user_text(messages: &[Value]) -> String {
    let Some(m) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The request JSON and its `messages`, or the 400 to answer.
fn chat_request(body: &Bytes) -> Result<(Value, Vec<Value>), Box<Response>> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "body is not JSON")));
    };
    let Some(messages) = request["messages"].as_array().cloned() else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "messages is required",
        )));
    };
    Ok((request, messages))
}

/// What a test asked the model to say: `x-test-reply-b64` (base64, so a
/// secret in it passes tracegate's judging of headers unseen) or
/// `x-test-reply`.
fn asked_reply(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    if let Some(b64) = headers
        .get("x-test-reply-b64")
        .and_then(|v| v.to_str().ok())
    {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        return String::from_utf8(bytes).ok();
    }
    headers
        .get("x-test-reply")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `echo: <last user text>`, or the `x-test-reply` header's text, so tests
/// can make the model "say" something (a secret, a placeholder).
fn reply_text(headers: &HeaderMap, messages: &[Value]) -> String {
    match asked_reply(headers) {
        Some(text) => text,
        None => format!("echo: {}", last_user_text(messages)),
    }
}

fn delay_of(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("x-test-chunk-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map(Duration::from_millis)
}

/// How a streamed answer is shaped, from request headers.
struct Shape {
    /// `x-test-chunk-delay-ms`: a delay before each frame.
    delay: Option<Duration>,
    /// `x-test-piece-chars: N`: text deltas of N characters (default: one
    /// word each).
    piece_chars: Option<usize>,
    /// `x-test-pause-after: K:NAME`: frames from index K on wait until a
    /// test releases NAME (`POST /__release/NAME`).
    pause: Option<(usize, String)>,
    /// `x-test-framing: cr|crlf`: line ends other than LF.
    framing: Option<&'static str>,
    /// `x-test-no-content-type`: the answer carries no content type.
    untyped: bool,
    /// `x-test-reasoning: TEXT`: a reasoning stream before the answer.
    reasoning: Option<String>,
    /// `x-test-endless-line-kb: N`: the stream is one `data:` line of N KiB
    /// that never ends.
    endless_kb: Option<usize>,
}

impl Shape {
    fn of(headers: &HeaderMap) -> Shape {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Shape {
            delay: delay_of(headers),
            piece_chars: get("x-test-piece-chars").and_then(|v| v.parse().ok()),
            pause: get("x-test-pause-after").and_then(|v| {
                let (k, name) = v.split_once(':')?;
                Some((k.parse().ok()?, name.to_string()))
            }),
            framing: match get("x-test-framing") {
                Some("cr") => Some("\r"),
                Some("crlf") => Some("\r\n"),
                _ => None,
            },
            untyped: get("x-test-no-content-type").is_some(),
            reasoning: get("x-test-reasoning").map(str::to_string),
            endless_kb: get("x-test-endless-line-kb").and_then(|v| v.parse().ok()),
        }
    }

    /// The text deltas of `text`.
    fn pieces(&self, text: &str) -> Vec<String> {
        match self.piece_chars {
            Some(n) if n > 0 => {
                let chars: Vec<char> = text.chars().collect();
                chars.chunks(n).map(|c| c.iter().collect()).collect()
            }
            _ => text.split_inclusive(' ').map(str::to_string).collect(),
        }
    }

    /// Frames sent one by one, shaped.
    fn respond(self, frames: Vec<String>) -> Response {
        if let Some(kb) = self.endless_kb {
            return endless_line(kb, self.untyped);
        }
        let frames: Vec<String> = match self.framing {
            Some(nl) => frames.into_iter().map(|f| f.replace('\n', nl)).collect(),
            None => frames,
        };
        let delay = self.delay;
        let pause = self.pause;
        let stream = futures_util::stream::unfold(
            (frames.into_iter().enumerate(), pause),
            move |(mut frames, pause)| async move {
                let (i, frame) = frames.next()?;
                if let Some((k, name)) = &pause {
                    if i == *k {
                        wait_for_release(name).await;
                    }
                }
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(frame)),
                    (frames, pause),
                ))
            },
        );
        let mut response = Response::builder().header("cache-control", "no-cache");
        if !self.untyped {
            response = response.header("content-type", "text/event-stream");
        }
        response
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }
}

/// `data: AAAA…` for `kb` KiB, in 64 KiB frames, never ended by a newline.
fn endless_line(kb: usize, untyped: bool) -> Response {
    let frames = std::iter::once(Bytes::from_static(b"data: ")).chain(std::iter::repeat_n(
        Bytes::from(vec![b'A'; 64 << 10]),
        kb / 64,
    ));
    let stream = futures_util::stream::iter(frames.map(Ok::<_, std::convert::Infallible>));
    let mut response = Response::builder();
    if !untyped {
        response = response.header("content-type", "text/event-stream");
    }
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// A whole JSON answer (without a content type when the request asks).
fn json_answer(headers: &HeaderMap, value: Value) -> Response {
    if Shape::of(headers).untyped {
        return Response::builder()
            .body(Body::from(value.to_string()))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    Json(value).into_response()
}

/// Anthropic `/v1/messages`: a text answer (with a thinking block when the
/// request enables thinking), plain or streamed as Anthropic's events.
async fn anthropic_messages(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    remember(&seen, "/v1/messages", &headers, &body);
    let (request, messages) = match chat_request(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let messages = &messages[..];
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-test")
        .to_string();
    let reply = reply_text(&headers, messages);
    let shape = Shape::of(&headers);
    let thinking = shape.reasoning.clone().or_else(|| {
        (request["thinking"]["type"] == "enabled")
            .then(|| format!("thinking about: {}", last_user_text(messages)))
    });
    let id = format!("msg_{}", unix_now());
    let usage = json!({"input_tokens": 10, "output_tokens": reply.split_whitespace().count()});
    let mut blocks = Vec::new();
    if let Some(t) = &thinking {
        blocks.push(json!({"type": "thinking", "thinking": t, "signature": "c2lnbmF0dXJl"}));
    }
    blocks.push(json!({"type": "text", "text": reply}));
    let tool = headers
        .get("x-test-tool-call")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if request["stream"] != true {
        if let Some(name) = &tool {
            blocks.push(
                json!({"type": "tool_use", "id": "toolu_test_1", "name": name,
                "input": {"cmd": "cat /etc/passwd"}}),
            );
        }
        return json_answer(
            &headers,
            json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": blocks, "stop_reason": "end_turn", "stop_sequence": null, "usage": usage,
            }),
        );
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    )];
    for (index, block) in blocks.iter().enumerate() {
        let (kind, field, delta_kind) = if block["type"] == "thinking" {
            ("thinking", "thinking", "thinking_delta")
        } else {
            ("text", "text", "text_delta")
        };
        frames.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
            "content_block": {"type": kind, field: ""}}),
        ));
        let text = block[field].as_str().unwrap_or("");
        for word in shape.pieces(text) {
            frames.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": delta_kind, field: word}}),
            ));
        }
        if kind == "thinking" {
            frames.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}),
            ));
        }
        frames.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    frames.push(event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}})));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    shape.respond(frames)
}

/// OpenAI Responses API: `input` as a string or message items; the answer
/// is one output message, plain or streamed as the API's typed events.
async fn responses(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    remember(&seen, "/v1/responses", &headers, &body);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let prompt = match &request["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let messages: Vec<Value> = items
                .iter()
                .map(|m| {
                    let text: Vec<&str> = match &m["content"] {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(parts) => {
                            parts.iter().filter_map(|p| p["text"].as_str()).collect()
                        }
                        _ => vec![],
                    };
                    json!({"role": m["role"], "content": text.join(" ")})
                })
                .collect();
            last_user_text(&messages)
        }
        _ => return error(StatusCode::BAD_REQUEST, "input is required"),
    };
    let reply = match asked_reply(&headers) {
        Some(text) => text,
        None => format!("echo: {prompt}"),
    };
    let model = request["model"].as_str().unwrap_or("gpt-test").to_string();
    let id = format!("resp_{}", unix_now());
    let item = |text: &str, status: &str| {
        json!({"id": "msg_1", "type": "message", "role": "assistant",
        "status": status, "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let response = |text: &str, status: &str| {
        json!({"id": id, "object": "response", "created_at": unix_now(),
        "model": model, "status": status, "output": if text.is_empty() { json!([]) } else { json!([item(text, "completed")]) },
        "usage": {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
    };
    if request["stream"] != true {
        return json_answer(&headers, response(&reply, "completed"));
    }
    let shape = Shape::of(&headers);
    // With a reasoning stream, the reasoning item comes first.
    let out = usize::from(shape.reasoning.is_some());
    let mut seq = 0;
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    };
    let mut frames = vec![event(
        "response.created",
        json!({"response": response("", "in_progress")}),
    )];
    if let Some(reasoning) = &shape.reasoning {
        frames.push(event(
            "response.output_item.added",
            json!({"output_index": 0, "item": {"id": "rs_1", "type": "reasoning", "summary": []}}),
        ));
        for piece in shape.pieces(reasoning) {
            frames.push(event(
                "response.reasoning_summary_text.delta",
                json!({"item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": piece}),
            ));
        }
        frames.push(event(
            "response.reasoning_summary_text.done",
            json!({"item_id": "rs_1", "output_index": 0, "summary_index": 0, "text": reasoning}),
        ));
        frames.push(event(
            "response.output_item.done",
            json!({"output_index": 0, "item": {"id": "rs_1", "type": "reasoning",
                "summary": [{"type": "summary_text", "text": reasoning}]}}),
        ));
    }
    frames.push(event(
        "response.output_item.added",
        json!({"output_index": out, "item": item("", "in_progress")}),
    ));
    frames.push(event(
        "response.content_part.added",
        json!({"item_id": "msg_1", "output_index": out, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}}),
    ));
    for word in shape.pieces(&reply) {
        frames.push(event(
            "response.output_text.delta",
            json!({"item_id": "msg_1", "output_index": out,
            "content_index": 0, "delta": word}),
        ));
    }
    frames.push(event(
        "response.output_text.done",
        json!({"item_id": "msg_1", "output_index": out,
        "content_index": 0, "text": reply}),
    ));
    frames.push(event(
        "response.content_part.done",
        json!({"item_id": "msg_1", "output_index": out,
        "content_index": 0, "part": {"type": "output_text", "text": reply, "annotations": []}}),
    ));
    frames.push(event(
        "response.output_item.done",
        json!({"output_index": out, "item": item(&reply, "completed")}),
    ));
    frames.push(event(
        "response.completed",
        json!({"response": response(&reply, "completed")}),
    ));
    shape.respond(frames)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Names released by `POST /__release/NAME`.
static RELEASED: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn release(axum::extract::Path(name): axum::extract::Path<String>) -> &'static str {
    if let Ok(mut r) = RELEASED.lock() {
        r.push(name);
    }
    "released"
}

/// With header `x-test-hold: NAME`, the answer waits until a test releases
/// NAME, so a test can look at the world while the request is upstream.
async fn hold(headers: &HeaderMap) {
    if let Some(name) = headers.get("x-test-hold").and_then(|v| v.to_str().ok()) {
        wait_for_release(name).await;
    }
}

/// Waits (at most a minute) until a test releases `name`.
async fn wait_for_release(name: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if RELEASED.lock().is_ok_and(|r| r.iter().any(|n| n == name)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn chat_completions(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    remember(&seen, "/v1/chat/completions", &headers, &body);
    hold(&headers).await;
    let (request, messages) = match chat_request(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let messages = &messages[..];
    let model = request["model"]
        .as_str()
        .unwrap_or("test-model")
        .to_string();
    let reply = reply_text(&headers, messages);
    let id = format!("chatcmpl-{}", unix_now());
    let usage = json!({
        "prompt_tokens": messages.len() * 8,
        "completion_tokens": reply.split_whitespace().count(),
        "total_tokens": messages.len() * 8 + reply.split_whitespace().count(),
    });

    // `x-test-tool-call: NAME`: the model also calls tool NAME.
    let tool = headers
        .get("x-test-tool-call")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if request["stream"] != true {
        let mut message = json!({"role": "assistant", "content": reply});
        if let Some(name) = &tool {
            message["tool_calls"] = json!([{"id": "call_test_1", "type": "function",
                "function": {"name": name, "arguments": "{\"cmd\":\"cat /etc/passwd\"}"}}]);
        }
        return json_answer(
            &headers,
            json!({
                "id": id,
                "object": "chat.completion",
                "created": unix_now(),
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "finish_reason": if tool.is_some() { "tool_calls" } else { "stop" },
                }],
                "usage": usage,
            }),
        );
    }

    // One event per word (or piece), so a stream spans many chunks. A delay
    // between chunks (header x-test-chunk-delay-ms) makes it arrive in
    // separate reads.
    let shape = Shape::of(&headers);
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(reasoning) = &shape.reasoning {
        for piece in shape.pieces(reasoning) {
            events.push(chunk(json!({"reasoning_content": piece}), Value::Null));
        }
    }
    for word in shape.pieces(&reply) {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    if let Some(name) = &tool {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_test_1", "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\":\"cat /etc/passwd\"}"}}]}),
            Value::Null,
        ));
    }
    events.push(chunk(json!({}), json!("stop")));
    if request["stream_options"]["include_usage"] == true {
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last);
    }
    let mut frames: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    frames.push("data: [DONE]\n\n".into());
    shape.respond(frames)
}

async fn serve_jwks(State(jwks): State<Jwks>) -> Response {
    jwks.fetches.fetch_add(1, Ordering::SeqCst);
    let doc = jwks.document.lock().ok().and_then(|d| d.clone());
    match doc {
        Some(body) => ([("content-type", "application/json")], body).into_response(),
        None => error(StatusCode::NOT_FOUND, "no JWKS published yet"),
    }
}

async fn set_jwks(State(jwks): State<Jwks>, body: Bytes) -> StatusCode {
    if let Ok(mut d) = jwks.document.lock() {
        *d = Some(body);
    }
    StatusCode::NO_CONTENT
}

async fn jwks_fetches(State(jwks): State<Jwks>) -> String {
    jwks.fetches.load(Ordering::SeqCst).to_string()
}
