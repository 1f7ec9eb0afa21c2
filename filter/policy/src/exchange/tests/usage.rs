//! Usage on the record: read from whole and streamed answers; asked for
//! upstream when a streaming chat client did not, and that extra chunk kept
//! from the client.

use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

/// The request body as it goes upstream (replaced, or as sent).
fn forwarded(s: &Scenario) -> Value {
    let bytes = s
        .out
        .iter()
        .find_map(|e| match e {
            Effect::ReplaceRequestBody { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .unwrap_or_else(|| s.host.request.borrow().clone());
    serde_json::from_slice(&bytes).unwrap()
}

fn request(s: &mut Scenario, body: Value) {
    s.headers(&[], false);
    *s.host.request.borrow_mut() = body.to_string().into_bytes();
    let size = s.host.request.borrow().len();
    s.on(Event::RequestBody {
        size,
        end_of_stream: true,
    });
}

/// The stream through the exchange in one chunk; what the client gets.
fn stream(s: &mut Scenario, events: &[Value]) -> String {
    s.on(Event::ResponseHeaders {
        status: 200,
        content_type: "text/event-stream".into(),
        content_encoding: String::new(),
        end_of_stream: false,
    });
    let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    *s.host.response.borrow_mut() = text.clone().into_bytes();
    s.on(Event::ResponseBody {
        size: text.len(),
        end_of_stream: true,
    });
    s.out
        .iter()
        .find_map(|e| match e {
            Effect::ReplaceResponseBody { bytes, .. } => {
                Some(String::from_utf8(bytes.clone()).unwrap())
            }
            _ => None,
        })
        .unwrap_or(text)
}

fn chat_chunks(usage_chunk: bool) -> Vec<Value> {
    let mut events = vec![
        json!({"id": "c1", "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"content": "Hello"}}], "usage": null}),
        json!({"id": "c1", "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": null}),
    ];
    if usage_chunk {
        events.push(
            json!({"id": "c1", "model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}),
        );
    }
    events
}

#[test]
fn a_streaming_chat_client_that_did_not_ask_gets_no_usage_chunk_but_the_record_has_usage() {
    let mut s = Scenario::new(json!({}));
    request(
        &mut s,
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let up = forwarded(&s);
    assert_eq!(
        up["stream_options"]["include_usage"], true,
        "asked upstream"
    );
    assert_eq!(up["model"], "gpt-4o");
    let got = stream(&mut s, &chat_chunks(true));
    assert!(got.contains("Hello"), "{got}");
    assert!(
        !got.contains("prompt_tokens"),
        "the extra chunk is kept back: {got}"
    );
    assert!(got.ends_with("data: [DONE]\n\n"), "{got}");
    let record = s.end();
    let u = record.usage.expect("usage on the record");
    assert_eq!(
        (u.provider.as_str(), u.operation.as_str()),
        ("openai", "chat")
    );
    assert_eq!(u.request_model, "gpt-4o");
    assert_eq!(u.response_model, "gpt-4o-2024-08-06");
    assert_eq!((u.input_tokens, u.output_tokens), (Some(11), Some(2)));
    let recorded = String::from_utf8(record.response_body.unwrap().data).unwrap();
    assert_eq!(recorded, got, "the record holds what the client got");
}

#[test]
fn a_client_that_asked_for_usage_keeps_its_chunk() {
    let mut s = Scenario::new(json!({}));
    let body = json!({"model": "gpt-4o", "stream": true,
                      "stream_options": {"include_usage": true}, "messages": []});
    request(&mut s, body.clone());
    assert_eq!(forwarded(&s), body, "sent as it was");
    let got = stream(&mut s, &chat_chunks(true));
    assert!(got.contains(r#""prompt_tokens":11"#), "{got}");
    let u = s.end().usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (Some(11), Some(2)));
}

#[test]
fn an_upstream_that_states_no_usage_leaves_it_missing_not_zero() {
    let mut s = Scenario::new(json!({}));
    request(
        &mut s,
        json!({"model": "gpt-4o", "stream": true, "messages": []}),
    );
    stream(&mut s, &chat_chunks(false));
    let u = s.end().usage.unwrap();
    assert_eq!(u.request_model, "gpt-4o");
    assert_eq!((u.input_tokens, u.output_tokens), (None, None));
}

#[test]
fn whole_answers_and_unanswered_requests() {
    let mut s = Scenario::new(json!({}));
    request(&mut s, json!({"model": "gpt-4o", "messages": []}));
    assert!(
        forwarded(&s).get("stream_options").is_none(),
        "not streamed: nothing asked"
    );
    s.on(Event::ResponseHeaders {
        status: 200,
        content_type: "application/json".into(),
        content_encoding: String::new(),
        end_of_stream: false,
    });
    let answer = json!({"model": "gpt-4o-mini", "choices": [{"message": {"content": "ok"}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
    *s.host.response.borrow_mut() = answer.to_string().into_bytes();
    s.on(Event::ResponseBody {
        size: answer.to_string().len(),
        end_of_stream: true,
    });
    let u = s.end().usage.unwrap();
    assert_eq!(u.response_model, "gpt-4o-mini");
    assert_eq!((u.input_tokens, u.output_tokens), (Some(3), Some(1)));

    // Blocked before the upstream: the model asked for is still recorded.
    let mut s = Scenario::new(json!({"rules": [{"id": "no-exfil", "scope": "prompt",
        "keywords": ["exfiltrate"], "action": "block"}]}));
    request(
        &mut s,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "exfiltrate it"}]}),
    );
    let u = s.end().usage;
    let u = u.expect("usage of a blocked request");
    assert_eq!(u.request_model, "gpt-4o");
    assert_eq!(u.input_tokens, None);
}

#[test]
fn a_secret_in_a_model_name_is_masked_on_the_record_too() {
    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    let mut s = Scenario::new(json!({}));
    request(
        &mut s,
        json!({"model": format!("gpt-{KEY}"), "stream": true, "messages": []}),
    );
    let events = [
        json!({"model": format!("m-{KEY}"), "choices": [{"index": 0, "delta": {"content": "a"}}]}),
        json!({"model": format!("m-{KEY}"), "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
    ];
    let got = stream(&mut s, &events);
    assert!(!got.contains(KEY), "{got}");
    let record = s.end();
    let u = record.usage.clone().unwrap();
    assert_eq!(u.request_model, "gpt-[AWS_ACCESS_KEY_ID]");
    assert_eq!(u.response_model, "m-[AWS_ACCESS_KEY_ID]");
    use prost::Message;
    let bytes = record.encode_to_vec();
    assert!(
        !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "nothing raw in the record"
    );
}
