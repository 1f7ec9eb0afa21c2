//! Requests through the real Envoy and the real filter reach the upstream, and
//! their records reach the real collector and come back from `tracegate replay`.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::{poll, Stack};

/// Flush quickly so tests do not wait for the default one-second interval.
fn plugin_config() -> Value {
    json!({"recording": {"flush_interval_ms": 20}})
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    )
    .replace([' ', ':', '{', '}', ',', '.'], "")
}

fn chat_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text}
        ]
    })
}

#[test]
fn chat_completion_is_forwarded_and_its_record_replayed() {
    let mut stack = Stack::start(&plugin_config()).unwrap();
    let session = unique("plain");
    let body = chat_body("hello through envoy", false);

    let mut response = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", &session)
        .send_json(&body)
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.body_mut().read_json().unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "echo: hello through envoy"
    );

    // The upstream got the request unchanged.
    let received = stack.upstream.received().unwrap();
    assert_eq!(received.len(), 1);
    let forwarded: Value = serde_json::from_str(received[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(forwarded, body);

    let records = stack.collector.wait_for_records(&session, 1).unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["session_id"], session.as_str());
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/v1/chat/completions");
    assert_eq!(r["status"], 200);
    assert_eq!(r["record_id"].as_str().unwrap().len(), 36, "UUID: {r}");
    assert!(!r["request_id"].as_str().unwrap().is_empty());
    assert!(r["source"]
        .as_str()
        .unwrap()
        .starts_with("tracegate-filter/"));
    assert!(r["duration_micros"].as_u64().unwrap() > 0);
    assert!(r["request_start"].as_str().unwrap() <= r["response_start"].as_str().unwrap());
    assert!(r["response_start"].as_str().unwrap() <= r["end"].as_str().unwrap());

    let recorded_request: Value =
        serde_json::from_str(r["request_body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(recorded_request, body);
    assert!(r["request_body"]["content_type"]
        .as_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r["request_body"]["truncated"], false);
    let recorded_response: Value =
        serde_json::from_str(r["response_body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(recorded_response, answer);

    // The readable timeline shows the same exchange.
    let timeline = stack.collector.cli(&["replay", &session]).unwrap();
    assert!(timeline.contains("1 exchanges"), "{timeline}");
    assert!(
        timeline.contains("POST /v1/chat/completions  -> 200"),
        "{timeline}"
    );
    assert!(timeline.contains("hello through envoy"), "{timeline}");
}

#[test]
fn streamed_completion_is_recorded_whole_and_in_order() {
    let mut stack = Stack::start(&plugin_config()).unwrap();
    let session = unique("stream");

    let mut response = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", &session)
        .header("x-test-chunk-delay-ms", "5")
        .send_json(chat_body("one two three four", true))
        .unwrap();
    assert_eq!(response.status(), 200);
    let sse = response.body_mut().read_to_string().unwrap();
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    let text: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, "echo: one two three four");

    // A second exchange in the same session, to check ordering.
    ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", &session)
        .send_json(chat_body("second", false))
        .unwrap();

    let records = stack.collector.wait_for_records(&session, 2).unwrap();
    assert_eq!(
        records[0]["response_body"]["text"],
        sse.as_str(),
        "the whole stream, byte for byte"
    );
    assert_eq!(
        records[0]["response_body"]["content_type"],
        "text/event-stream"
    );
    assert!(records[1]["request_body"]["text"]
        .as_str()
        .unwrap()
        .contains("second"));
    assert!(records[0]["request_start"].as_str() < records[1]["request_start"].as_str());
}

#[test]
fn without_session_header_the_request_id_is_the_session() {
    let mut stack = Stack::start(&plugin_config()).unwrap();
    let response = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .send_json(chat_body("no session header", false))
        .unwrap();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let records = stack.collector.wait_for_records(&request_id, 1).unwrap();
    assert_eq!(records[0]["session_id"], request_id.as_str());
    assert_eq!(records[0]["request_id"], request_id.as_str());
    let sessions = stack.collector.cli(&["sessions"]).unwrap();
    assert!(
        sessions
            .lines()
            .any(|l| l.starts_with(&request_id) && l.ends_with(" 1")),
        "{sessions}"
    );
}

#[test]
fn many_exchanges_are_batched_and_none_is_lost() {
    // A batch of 8 is sent as soon as it is full; the rest by the timer.
    let mut stack = Stack::start(&json!({
        "recording": {"batch_max_records": 8, "flush_interval_ms": 200}
    }))
    .unwrap();
    let session = unique("batch");
    let n = 30;
    for i in 0..n {
        ureq::post(stack.envoy.url("/v1/chat/completions"))
            .header("x-session-id", &session)
            .send_json(chat_body(&format!("message {i}"), false))
            .unwrap();
    }
    let records = stack.collector.wait_for_records(&session, n).unwrap();
    assert_eq!(records.len(), n, "no duplicates either");
    for (i, r) in records.iter().enumerate() {
        assert!(
            r["request_body"]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("message {i}\"")),
            "record {i} out of order: {r}"
        );
    }
    let exported = poll("the export counter", Duration::from_secs(5), || {
        let v = stack.envoy.stat("wasmcustom.tracegate.records_exported")?;
        Ok((v >= n as u64).then_some(v))
    })
    .unwrap();
    assert_eq!(exported, n as u64);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        0
    );
}

#[test]
fn bodies_over_the_capture_limit_are_truncated_and_marked() {
    let mut stack = Stack::start(&json!({
        "recording": {"flush_interval_ms": 20, "max_body_bytes": 100}
    }))
    .unwrap();
    let session = unique("large");
    let big = "x".repeat(5000);
    let mut response = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", &session)
        .send_json(chat_body(&big, false))
        .unwrap();
    let answer = response.body_mut().read_to_string().unwrap();
    assert!(
        answer.contains(&big),
        "the client still gets the whole answer"
    );
    let r = &stack.collector.wait_for_records(&session, 1).unwrap()[0];
    assert_eq!(r["request_body"]["truncated"], true);
    assert_eq!(r["request_body"]["text"].as_str().unwrap().len(), 100);
    assert!(r["request_body"]["size"].as_u64().unwrap() > 5000);
    assert_eq!(
        r["response_body"]["size"].as_u64().unwrap(),
        answer.len() as u64
    );
}

#[test]
fn openai_sdk_conversation_is_recorded() {
    // The official openai Python SDK (the demo's client) through Envoy.
    let mut stack = Stack::start(&plugin_config()).unwrap();
    let session = unique("sdk");
    let script = tracegate_e2e::workspace_root().join("tests/clients/openai_chat.py");
    let out = std::process::Command::new(tracegate_e2e::python_bin())
        .arg(script)
        .args(["--base-url", &stack.envoy.url("/v1"), "--session", &session])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let records = stack.collector.wait_for_records(&session, 3).unwrap();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["status"] == 200));
    let agent = |r: &Value| r["request_body"]["text"].as_str().unwrap().to_string();
    assert!(agent(&records[0]).contains("Summarise the incident report"));
    assert!(agent(&records[2]).contains("\"stream\":true"));
    assert_eq!(
        records[2]["response_body"]["content_type"],
        "text/event-stream"
    );
    assert!(records[2]["response_body"]["text"]
        .as_str()
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
}

#[test]
fn records_wait_for_a_collector_that_was_down() {
    let mut stack = Stack::start(&plugin_config()).unwrap();
    let port = stack.collector.grpc_port;
    stack.collector.process.kill().unwrap();

    let session = unique("outage");
    for i in 0..3 {
        let response = ureq::post(stack.envoy.url("/v1/chat/completions"))
            .header("x-session-id", &session)
            .send_json(chat_body(&format!("during outage {i}"), false))
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "a few records fit in the buffer while the collector is down"
        );
    }
    // The filter tried and failed, and holds the records.
    poll("failed exports", Duration::from_secs(10), || {
        Ok((stack.envoy.stat("wasmcustom.tracegate.export_failures")? > 0).then_some(()))
    })
    .unwrap();

    // Same port, same data: the filter's retries get through.
    stack.collector = tracegate_e2e::Collector::start_on(&stack.dir, port).unwrap();
    let records = stack.collector.wait_for_records(&session, 3).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        0
    );
}
