//! Real-shaped bodies of the three APIs, whole and streamed.

use super::*;
use proptest::prelude::*;
use serde_json::json;
use tracegate_proto::v1::{Inspection, Usage};

fn body(data: impl Into<Vec<u8>>, content_type: &str) -> Option<Body> {
    let data = data.into();
    Some(Body {
        size: data.len() as u64,
        data,
        truncated: false,
        content_type: content_type.into(),
    })
}

fn record(path: &str, request: Value, response: Option<Body>) -> Record {
    Record {
        record_id: "r1".into(),
        session_id: "s".into(),
        method: "POST".into(),
        path: path.into(),
        status: 200,
        request_start_unix_nanos: 1_700_000_000_000_000_000,
        response_start_unix_nanos: 1_700_000_000_250_000_000,
        duration_micros: 1_500_000,
        request_body: body(request.to_string(), "application/json"),
        response_body: response,
        ..Record::default()
    }
}

fn texts(side: &Side) -> Vec<(Role, String)> {
    side.messages
        .iter()
        .flat_map(|m| {
            m.parts.iter().map(move |p| {
                let t = match p {
                    Part::Text { text } => format!("text:{}", text.text),
                    Part::Reasoning { text } => format!("reasoning:{}", text.text),
                    Part::ToolCall {
                        id,
                        name,
                        arguments,
                    } => format!("call:{id}:{}:{}", name.text, arguments.text),
                    Part::ToolResult { id, content } => format!("result:{id}:{}", content.text),
                    Part::Other { what } => format!("other:{what}"),
                    Part::Error { text } => format!("error:{}", text.text),
                };
                (m.role, t)
            })
        })
        .collect()
}

fn sse(events: &[Value], line_end: &str) -> Vec<u8> {
    let mut out = String::new();
    for e in events {
        if let Some(t) = e.get("type").and_then(Value::as_str) {
            out += &format!("event: {t}{line_end}");
        }
        out += &format!("data: {e}{line_end}{line_end}");
    }
    out.into_bytes()
}

#[test]
fn placeholders_are_found() {
    let t = Text::new(
        "mail [EMAIL_1] card [CARD_NUMBER:…1111] h [EMAIL:hmac:9f86d081884c] [EMAIL] [REDACTED:…] [credential] [1] [a] [X] [TODO later]",
    );
    let masked: Vec<&str> = t
        .segments()
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        masked,
        [
            "[EMAIL_1]",
            "[CARD_NUMBER:…1111]",
            "[EMAIL:hmac:9f86d081884c]",
            "[EMAIL]",
            "[REDACTED:…]",
            "[credential]"
        ]
    );
    let joined: String = t.segments().into_iter().map(|(s, _)| s).collect();
    assert_eq!(joined, t.text);
}

#[test]
fn openai_chat_whole() {
    let req = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "mail [EMAIL_1] please"},
                                     {"type": "image_url", "image_url": {"url": "data:"}}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": "{\"to\":\"[EMAIL_1]\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"}
    ]});
    let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Done.", "reasoning_content": "easy"},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}});
    let r = record(
        "/v1/chat/completions",
        req,
        body(answer.to_string(), "application/json"),
    );
    let x = exchange(&r, &[]);
    assert_eq!(x.api, Some(Api::Chat));
    assert_eq!(
        texts(&x.request),
        [
            (Role::System, "text:You are terse.".to_string()),
            (Role::User, "other:image_url".into()),
            (Role::User, "text:mail [EMAIL_1] please".into()),
            (
                Role::Assistant,
                "call:call_1:send:{\"to\":\"[EMAIL_1]\"}".into()
            ),
            (Role::Tool, "result:call_1:sent".into()),
        ]
    );
    assert_eq!(
        texts(&x.response),
        [
            (Role::Assistant, "reasoning:easy".to_string()),
            (Role::Assistant, "text:Done.".into())
        ]
    );
    assert!(!x.response.streamed);
    assert_eq!(x.first_byte_ms, Some(250.0));
    let Part::Text { text } = &x.request.messages[1].parts[1] else {
        panic!("text")
    };
    assert_eq!(text.masked, [[5, 14]]);
}

#[test]
fn openai_chat_streamed_with_six_empty_deltas() {
    let mut events =
        vec![json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})];
    for _ in 0..5 {
        events.push(json!({"choices": [{"index": 0, "delta": {"content": ""}}]}));
    }
    events.push(json!({"choices": [{"index": 0, "delta": {"reasoning_content": "think"}}]}));
    events.push(json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}));
    events.push(json!({"choices": [{"index": 0, "delta": {"content": "lo [EMA"}}]}));
    events.push(json!({"choices": [{"index": 0, "delta": {"content": "IL_1]"}}]}));
    events.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get", "arguments": "{\"a\":"}}]}}]}));
    events.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "1}"}}]}}]}));
    events.push(json!({"choices": [], "usage": {"prompt_tokens": 1}}));
    let mut data = sse(&events, "\n");
    data.extend_from_slice(b"data: [DONE]\n\n");
    let r = record(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        body(data, "text/event-stream"),
    );
    let x = exchange(&r, &[]);
    assert!(x.response.streamed);
    assert_eq!(
        texts(&x.response),
        [
            (Role::Assistant, "reasoning:think".to_string()),
            (Role::Assistant, "text:Hello [EMAIL_1]".into()),
            (Role::Assistant, "call:call_9:get:{\"a\":1}".into()),
        ]
    );
    let Part::Text { text } = &x.response.messages[0].parts[1] else {
        panic!("text")
    };
    assert_eq!(text.segments()[1], ("[EMAIL_1]", true));
}

#[test]
fn sse_framing_crlf_cr_and_multiline_data() {
    // CRLF line ends, a comment, data split over two lines (joined by a
    // newline, still one JSON value).
    let crlf = b": keep-alive\r\ndata: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\r\n\r\n";
    let cr =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"c\"}}]}\r\rdata: [DONE]\r\r";
    for (data, want) in [(&crlf[..], "text:ab"), (&cr[..], "text:c")] {
        let r = record(
            "/v1/chat/completions",
            json!({"messages": []}),
            body(data.to_vec(), "text/event-stream"),
        );
        let x = exchange(&r, &[]);
        assert_eq!(texts(&x.response), [(Role::Assistant, want.to_string())]);
    }
}

#[test]
fn responses_whole_and_streamed() {
    let req = json!({"model": "gpt-5", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "fc_1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "fc_1", "output": "sunny"}
    ]});
    let whole = json!({"id": "resp_1", "object": "response", "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "look"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]}
    ]});
    let r = record(
        "/v1/responses",
        req.clone(),
        body(whole.to_string(), "application/json"),
    );
    let x = exchange(&r, &[]);
    assert_eq!(x.api, Some(Api::Responses));
    assert_eq!(
        texts(&x.request),
        [
            (Role::System, "text:Be brief.".to_string()),
            (Role::User, "text:weather?".into()),
            (Role::Assistant, "call:fc_1:weather:{}".into()),
            (Role::Tool, "result:fc_1:sunny".into()),
        ]
    );
    let want = [
        (Role::Assistant, "reasoning:look".to_string()),
        (Role::Assistant, "text:Sunny.".into()),
    ];
    assert_eq!(texts(&x.response), want);

    let events = [
        json!({"type": "response.created", "response": {"id": "resp_1"}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning"}}),
        json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "lo"}),
        json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "ok"}),
        json!({"type": "response.output_item.added", "output_index": 1, "item": {"type": "message", "role": "assistant"}}),
        json!({"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "Sun"}),
        json!({"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "ny."}),
        json!({"type": "response.output_item.added", "output_index": 2, "item": {"type": "function_call", "call_id": "fc_2", "name": "more"}}),
        json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{\"x\""}),
        json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": ":2}"}),
        json!({"type": "response.completed", "response": {"id": "resp_1"}}),
    ];
    let r = record(
        "/v1/responses",
        req,
        body(sse(&events, "\n"), "text/event-stream"),
    );
    let x = exchange(&r, &[]);
    assert_eq!(
        texts(&x.response),
        [
            (Role::Assistant, "reasoning:look".to_string()),
            (Role::Assistant, "text:Sunny.".into()),
            (Role::Assistant, "call:fc_2:more:{\"x\":2}".into()),
        ]
    );
}

#[test]
fn anthropic_whole_and_streamed() {
    let req = json!({"model": "claude", "system": [{"type": "text", "text": "Sys"}], "max_tokens": 10,
    "messages": [
        {"role": "user", "content": "card [CARD_NUMBER:…1111]"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "found"}]},
            {"type": "text", "text": "thanks"}]}
    ]});
    let whole = json!({"type": "message", "role": "assistant", "content": [
        {"type": "text", "text": "Here."}], "usage": {"input_tokens": 3}});
    let r = record(
        "/v1/messages",
        req.clone(),
        body(whole.to_string(), "application/json"),
    );
    let x = exchange(&r, &[]);
    assert_eq!(x.api, Some(Api::Messages));
    assert_eq!(
        texts(&x.request),
        [
            (Role::System, "text:Sys".to_string()),
            (Role::User, "text:card [CARD_NUMBER:…1111]".into()),
            (Role::Assistant, "reasoning:hmm".into()),
            (Role::Assistant, "call:tu_1:lookup:{\"q\":1}".into()),
            (Role::Tool, "result:tu_1:found".into()),
            (Role::User, "text:thanks".into()),
        ]
    );
    assert_eq!(
        texts(&x.response),
        [(Role::Assistant, "text:Here.".to_string())]
    );

    let events = [
        json!({"type": "message_start", "message": {"id": "m", "role": "assistant", "content": []}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "zz"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi "}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "[EMAIL]"}}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "tu_2", "name": "f", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"k\":"}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "true}"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        json!({"type": "message_stop"}),
    ];
    let r = record(
        "/v1/messages",
        req,
        body(sse(&events, "\r\n"), "text/event-stream"),
    );
    let x = exchange(&r, &[]);
    assert_eq!(
        texts(&x.response),
        [
            (Role::Assistant, "reasoning:let me".to_string()),
            (Role::Assistant, "text:Hi [EMAIL]".into()),
            (Role::Assistant, "call:tu_2:f:{\"k\":true}".into()),
        ]
    );
}

#[test]
fn malformed_bodies_fall_back_to_raw_text() {
    let mut r = record(
        "/v1/chat/completions",
        json!({}),
        body(&b"data: {not json\n\n"[..], "text/event-stream"),
    );
    r.request_body = body(&b"{\"messages\": [ broken"[..], "application/json");
    let x = exchange(&r, &[]);
    assert_eq!(
        x.request.raw.as_ref().map(|t| t.text.as_str()),
        Some("{\"messages\": [ broken")
    );
    assert!(x.response.raw.is_some());
    // Not UTF-8, an error answer of no known shape, no body at all.
    r.request_body = body(
        vec![0xff, 0xfe, b'[', b'E', b'M', b'A', b'I', b'L', b']'],
        "",
    );
    r.response_body = body(
        json!({"error": {"message": "bad [EMAIL]"}}).to_string(),
        "application/json",
    );
    r.path = "/other".into();
    let x = exchange(&r, &[]);
    assert!(x.request.raw.as_ref().is_some_and(|t| t.masked.len() == 1));
    assert!(x.response.raw.is_some());
    r.response_body = None;
    assert!(exchange(&r, &[]).response.empty);
}

#[test]
fn metadata_and_repeated_history() {
    let first = json!({"messages": [{"role": "user", "content": "one"}]});
    let second = json!({"messages": [{"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"}, {"role": "user", "content": "two"}]});
    let mut a = record("/v1/chat/completions", first, None);
    a.inspection = Some(Inspection {
        verdict: "masked".into(),
        risk: 30,
        request_findings: [("email".to_string(), 2)].into_iter().collect(),
        ..Inspection::default()
    });
    a.usage = Some(Usage {
        provider: "openai".into(),
        operation: "chat".into(),
        request_model: "gpt-4o".into(),
        input_tokens: Some(5),
        ..Usage::default()
    });
    let mut b = record("/v1/chat/completions", second, None);
    b.record_id = "r2".into();
    let c = conversation("s", &[a, b], &[]);
    assert_eq!(c.exchanges[0].verdict.as_deref(), Some("masked"));
    assert_eq!(
        c.exchanges[0].findings,
        [Finding {
            detector: "email".into(),
            count: 2,
            side: "request"
        }]
    );
    assert_eq!(
        c.exchanges[0].usage.as_ref().and_then(|u| u.input_tokens),
        Some(5)
    );
    assert_eq!(c.exchanges[1].earlier_messages, 1);
    assert_eq!(c.exchanges[1].request.messages.len(), 2);
    // It serialises (the console and --json-like uses).
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["exchanges"][0]["request"]["messages"][0]["role"], "user");
}

proptest! {
    #[test]
    fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400),
                             path in prop_oneof![Just("/v1/chat/completions"), Just("/v1/responses"), Just("/v1/messages"), Just("/x")],
                             sse in any::<bool>()) {
        let mut r = record(path, json!({}), body(data.clone(), if sse { "text/event-stream" } else { "application/json" }));
        r.request_body = body(data, "application/json");
        let x = exchange(&r, &[]);
        for side in [&x.request, &x.response] {
            if let Some(t) = &side.raw {
                for [s, e] in &t.masked {
                    prop_assert!(s < e && *e <= t.text.len());
                }
            }
        }
    }

    #[test]
    fn spans_cover_text_exactly(s in "[a-zA-Z\\[\\]_:…0-9 ]{0,80}") {
        let t = Text::new(s.clone());
        let joined: String = t.segments().into_iter().map(|(p, _)| p).collect();
        prop_assert_eq!(joined, s);
    }
}
