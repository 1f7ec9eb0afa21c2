//! Streamed answers through the real Envoy: text reaches the client while
//! the model is still writing, every valid SSE framing is masked, answers
//! without a content type are inspected, and an endless event ends the
//! stream with an error the SDKs raise, without growing the worker's memory.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::{reply_header, run_client, Stack};

const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123";

fn plugin_config() -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "inspection": {"hold_headers": true, "stream_max_event_bytes": 1048576}
    })
}

fn post(
    stack: &Stack,
    path: &str,
    session: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = agent
        .post(stack.envoy.url(path))
        .header("x-session-id", session)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body.to_string()).unwrap();
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()
        .unwrap_or_default();
    (status, body)
}

/// The text a client assembles from an event stream (any API), read with
/// the WHATWG line rules.
fn assembled(stream: &str) -> String {
    let mut out = String::new();
    let normalised = stream.replace("\r\n", "\n").replace('\r', "\n");
    for block in normalised.split("\n\n") {
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) else {
            continue;
        };
        for text in [
            &v["choices"][0]["delta"]["content"],
            &v["delta"]["text"],
            &v["delta"]["thinking"],
        ] {
            out += text.as_str().unwrap_or("");
        }
        if v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("response.") && t.ends_with(".delta"))
        {
            out += v["delta"].as_str().unwrap_or("");
        }
    }
    out
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-test", "stream": stream, "max_tokens": 100,
           "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn sdk_streams_show_text_before_the_model_finishes() {
    let stack = Stack::start(&plugin_config()).unwrap();
    let upstream = format!("http://127.0.0.1:{}", stack.upstream.port);
    let out = run_client(
        "sdk_streaming.py",
        &[&stack.envoy.url(""), &upstream, "early-text"],
    )
    .unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        6,
        "{out}"
    );
}

#[test]
fn every_framing_and_untyped_streams_are_masked() {
    let stack = Stack::start(&plugin_config()).unwrap();
    let reply = format!("Use {KEY} and mail ops@example.com today.");
    let reply_h = reply_header(&reply);
    let want = "Use [OPENAI_API_KEY] and mail [EMAIL] today.";
    for (path, framing) in [
        ("/v1/messages", "cr"),
        ("/v1/messages", "crlf"),
        ("/v1/chat/completions", "cr"),
        ("/v1/responses", "crlf"),
        ("/v1/messages", "untyped"),
        ("/v1/chat/completions", "untyped"),
    ] {
        let mut headers = vec![(reply_h.0, reply_h.1.as_str()), ("x-test-piece-chars", "3")];
        match framing {
            "untyped" => headers.push(("x-test-no-content-type", "1")),
            f => headers.push(("x-test-framing", f)),
        }
        let body = if path == "/v1/responses" {
            json!({"model": "gpt-test", "stream": true, "input": "hi"})
        } else {
            chat(true)
        };
        let (status, text) = post(&stack, path, "framings", &headers, &body);
        assert_eq!(status, 200, "{path} {framing}: {text}");
        assert!(
            !text.contains("sk-proj") && !text.contains("ops@"),
            "{path} {framing}: {text}"
        );
        assert_eq!(assembled(&text), want, "{path} {framing}: {text}");
    }
}

#[test]
fn whole_answers_without_a_content_type_are_masked() {
    let stack = Stack::start(&plugin_config()).unwrap();
    let reply = format!("the key is {KEY}");
    let reply_h = reply_header(&reply);
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let (status, text) = post(
            &stack,
            path,
            "untyped",
            &[
                (reply_h.0, reply_h.1.as_str()),
                ("x-test-no-content-type", "1"),
            ],
            &chat(false),
        );
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains("sk-proj"), "{path}: {text}");
        assert!(
            text.contains("the key is [OPENAI_API_KEY]"),
            "{path}: {text}"
        );
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
    }
}

#[test]
fn an_endless_event_ends_the_stream_with_an_error_and_memory_stays_bounded() {
    let mut stack = Stack::start(&plugin_config()).unwrap();
    let memory = "wasmcustom.tracegate.wasm_memory_bytes";
    // A first streamed exchange with a finding: the worker's caches (regex
    // engines, lazy DFAs) are made on first use.
    let reply = format!("the key {KEY} is here");
    let reply_h = reply_header(&reply);
    let warm = [(reply_h.0, reply_h.1.as_str()), ("x-test-piece-chars", "5")];
    let (status, _) = post(&stack, "/v1/chat/completions", "warm", &warm, &chat(true));
    assert_eq!(status, 200);
    stack.collector.wait_for_records("warm", 1).unwrap();
    // The gauge is set on the root's timer right before it sends records:
    // the record's arrival means it was set after the exchange.
    let before = stack.envoy.stat(memory).unwrap();
    assert!(before > 0);
    // One `data:` line of 64 MiB that never ends.
    let (status, text) = post(
        &stack,
        "/v1/chat/completions",
        "endless",
        &[("x-test-endless-line-kb", "65536")],
        &chat(true),
    );
    assert_eq!(status, 200);
    assert!(
        text.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(text.contains("exceeds 1048576 bytes"), "{text}");
    assert!(
        text.len() < 4096,
        "only the error event: {} bytes",
        text.len()
    );
    let records = stack.collector.wait_for_records("endless", 1).unwrap();
    let reason = records[0]["inspection"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("response stream cut"), "{}", records[0]);
    // The VM's memory grew by less than a few times the event cap, not by
    // the 64 MiB the line was long (one worker; the gauge is its VM's).
    let after = stack.envoy.stat(memory).unwrap();
    println!("wasm linear memory around a 64 MiB event: {before} -> {after} bytes");
    assert!(
        after.saturating_sub(before) <= 4 << 20,
        "wasm memory grew from {before} to {after} bytes"
    );
    // The SDK raises the error event.
    let out = run_client(
        "sdk_stream_error.py",
        &[&stack.envoy.url(""), "endless-sdk"],
    )
    .unwrap();
    assert!(out.contains("ok openai raised"), "{out}");
    assert!(out.contains("ok anthropic raised"), "{out}");
}
