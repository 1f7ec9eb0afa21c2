//! What the filter does when records cannot reach the collector, and
//! write-ahead recording, through the real Envoy, filter and collector.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::{poll, Collector, Stack};

/// A buffer of two records per worker (the test Envoy has one worker), so a
/// collector outage fills it after two requests.
fn config(extra: Value) -> Value {
    let mut c = json!({"recording": {
        "flush_interval_ms": 20, "batch_max_records": 1, "buffer_max_records": 2
    }});
    for (k, v) in extra.as_object().unwrap() {
        c["recording"][k] = v.clone();
    }
    c
}

fn session(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn chat(stack: &Stack, session: &str, text: &str) -> (u16, Value, Option<String>) {
    let response = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", session)
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.into_body().read_json().unwrap_or(Value::Null);
    (status, body, retry_after)
}

fn restart_collector(stack: &mut Stack, port: u16) {
    stack.collector = Collector::start_on(&stack.dir, port).unwrap();
}

#[test]
fn fail_closed_refuses_what_it_cannot_record_and_loses_nothing() {
    let mut stack = Stack::start(&config(json!({}))).unwrap();
    let port = stack.collector.grpc_port;
    stack.collector.process.kill().unwrap();
    let s = session("fail-closed");

    let statuses: Vec<u16> = (0..4)
        .map(|i| chat(&stack, &s, &format!("m{i}")).0)
        .collect();
    assert_eq!(statuses, [200, 200, 503, 503], "two records fit, then 503");
    let (status, body, retry_after) = chat(&stack, &s, "refused");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("record buffer is full"));
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        stack.upstream.received().unwrap().len(),
        2,
        "refused requests never reach the upstream"
    );
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.recording.refused")
            .unwrap(),
        3
    );
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        0
    );

    // The collector returns: both held records arrive, and traffic resumes.
    restart_collector(&mut stack, port);
    let records = stack.collector.wait_for_records(&s, 2).unwrap();
    assert_eq!(records.len(), 2);
    poll(
        "the filter to see its records acknowledged",
        Duration::from_secs(10),
        || Ok((stack.envoy.stat("wasmcustom.tracegate.records_exported")? >= 2).then_some(())),
    )
    .unwrap();
    assert_eq!(chat(&stack, &s, "after").0, 200);
}

/// An agent sending large requests while the collector is down cannot grow
/// the worker's memory past `buffer_max_bytes`, however many records the
/// count would still allow: past it, 503; nothing admitted is lost.
#[test]
fn large_bodies_stop_at_the_byte_bound_and_lose_nothing() {
    let mut stack = Stack::start(&config(json!({
        "buffer_max_records": 1000, "batch_max_bytes": 65536, "buffer_max_bytes": 1048576
    })))
    .unwrap();
    let port = stack.collector.grpc_port;
    stack.collector.process.kill().unwrap();
    let s = session("byte-bound");
    // About 100 KB of record each (a short answer): about ten fit under
    // 1 MiB.
    let text = "lorem ipsum dolor sit amet ".repeat(3_700);
    let send = || {
        ureq::post(stack.envoy.url("/v1/chat/completions"))
            .header("x-session-id", &s)
            .header("x-test-reply", "ok")
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
            .unwrap()
            .status()
            .as_u16()
    };
    let statuses: Vec<u16> = (0..16).map(|_| send()).collect();
    let served = statuses.iter().take_while(|&&c| c == 200).count();
    assert!(
        (9..=12).contains(&served),
        "served {served} before the bound: {statuses:?}"
    );
    assert!(statuses[served..].iter().all(|&c| c == 503), "{statuses:?}");
    assert_eq!(stack.upstream.received().unwrap().len(), served);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        0
    );

    restart_collector(&mut stack, port);
    let records = stack.collector.wait_for_records(&s, served).unwrap();
    assert_eq!(records.len(), served, "every admitted record arrives");
    poll(
        "the filter to see its records acknowledged",
        Duration::from_secs(10),
        || {
            Ok(
                (stack.envoy.stat("wasmcustom.tracegate.records_exported")? >= served as u64)
                    .then_some(()),
            )
        },
    )
    .unwrap();
    assert_eq!(
        chat(&stack, &s, &text).0,
        200,
        "room again once acknowledged"
    );
}

#[test]
fn fail_open_serves_and_counts_what_it_drops() {
    let mut stack = Stack::start(&config(json!({"failure_mode": "fail_open"}))).unwrap();
    let port = stack.collector.grpc_port;
    stack.collector.process.kill().unwrap();
    let s = session("fail-open");

    let statuses: Vec<u16> = (0..5)
        .map(|i| chat(&stack, &s, &format!("m{i}")).0)
        .collect();
    assert_eq!(statuses, [200; 5], "fail_open serves everything");
    assert_eq!(stack.upstream.received().unwrap().len(), 5);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        3
    );
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.recording.refused")
            .unwrap(),
        0
    );

    restart_collector(&mut stack, port);
    let records = stack.collector.wait_for_records(&s, 2).unwrap();
    assert_eq!(
        records.len(),
        2,
        "the two buffered records arrive; three were dropped"
    );
}

#[test]
fn write_ahead_record_is_durable_before_the_request_is_forwarded() {
    let mut stack = Stack::start(&config(json!({
        "mode": "write_ahead", "buffer_max_records": 100
    })))
    .unwrap();
    let s = session("write-ahead");

    // The upstream holds its answer: look at the store while the request
    // is upstream.
    let url = stack.envoy.url("/v1/chat/completions");
    let s2 = s.clone();
    let client = std::thread::spawn(move || {
        ureq::post(&url)
            .header("x-session-id", &s2)
            .header("x-test-hold", "wa1")
            .send_json(json!({"model": "m", "messages": [{"role": "user", "content": "ahead"}]}))
            .map(|r| r.status().as_u16())
    });
    poll(
        "the request to reach the upstream",
        Duration::from_secs(10),
        || Ok((!stack.upstream.received()?.is_empty()).then_some(())),
    )
    .unwrap();
    // No waiting here: the record must already be stored.
    let stored = stack
        .collector
        .cli(&["export", "--format", "jsonl"])
        .unwrap();
    let ahead: Vec<Value> = stored
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ahead.len(), 1, "{stored}");
    assert_eq!(ahead[0]["phase"], "request");
    assert_eq!(ahead[0]["session_id"], s.as_str());
    assert!(ahead[0]["request_body"]["text"]
        .as_str()
        .unwrap()
        .contains("ahead"));
    assert_eq!(ahead[0]["status"], 0, "no response yet");

    stack.upstream.release("wa1").unwrap();
    assert_eq!(client.join().unwrap().unwrap(), 200);
    // The exchange's record follows and names the one written ahead;
    // replay shows the exchange once.
    poll("the exchange record", Duration::from_secs(10), || {
        let out = stack.collector.cli(&["export"])?;
        Ok((out.lines().count() == 2).then_some(out))
    })
    .map(|out| {
        let full: Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
        assert_eq!(full["phase"], "exchange");
        assert_eq!(full["request_record_id"], ahead[0]["record_id"]);
        assert_eq!(full["status"], 200);
    })
    .unwrap();
    let timeline = stack.collector.cli(&["replay", &s]).unwrap();
    assert!(
        timeline.starts_with(&format!("session {s} (caller anonymous): 1 exchanges")),
        "{timeline}"
    );
    assert!(
        timeline.contains("request written ahead as record"),
        "{timeline}"
    );
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.recording.written_ahead")
            .unwrap(),
        1
    );

    // Collector down: nothing can be written ahead, so nothing is forwarded.
    stack.collector.process.kill().unwrap();
    let (status, body, _) = chat(&stack, &s, "must not pass");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("could not be recorded before forwarding"));
    assert_eq!(
        stack.upstream.received().unwrap().len(),
        1,
        "never forwarded"
    );
    assert!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.recording.write_ahead_failed")
            .unwrap()
            >= 1
    );
}

#[test]
fn write_ahead_fail_open_forwards_and_records_later() {
    let mut stack = Stack::start(&config(json!({
        "mode": "write_ahead", "failure_mode": "fail_open", "buffer_max_records": 100
    })))
    .unwrap();
    let port = stack.collector.grpc_port;
    stack.collector.process.kill().unwrap();
    let s = session("write-ahead-open");
    assert_eq!(chat(&stack, &s, "goes anyway").0, 200);
    restart_collector(&mut stack, port);
    poll("both records", Duration::from_secs(20), || {
        let out = stack.collector.cli(&["export"])?;
        Ok((out.lines().count() == 2).then_some(()))
    })
    .unwrap();
    let records = stack.collector.replay_json(&s).unwrap();
    assert_eq!(records.len(), 1, "replay folds the written-ahead record");
    assert!(!records[0]["request_record_id"].as_str().unwrap().is_empty());
}
