use super::*;
use serde_json::json;
use serde_json::Value;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// (scope, text) of every string value of a body whose text is one of
/// `interesting` (the walker lists every key, string and number; these
/// tests check the scopes of the texts that carry meaning).
fn scoped(body: &Value, d: Direction, interesting: &[&str]) -> Vec<(Scope, String)> {
    let src = body.to_string();
    let mut tape = crate::json::Tape::default();
    tape.parse(&src).unwrap();
    let mut parts = Vec::new();
    walk::parts(&tape, &src, d, &mut parts);
    let mut out: Vec<(Scope, String)> = parts
        .iter()
        .filter(|p| tape.kind(p.node) == Some(crate::json::Kind::String))
        .filter_map(|p| Some((p.scope, tape.str(&src, p.node)?.into_owned())))
        .filter(|(_, t)| interesting.contains(&t.as_str()))
        .collect();
    out.sort();
    out
}

fn texts(body: Value, d: Direction) -> Vec<(Scope, String)> {
    let mut all: Vec<&str> = Vec::new();
    let strings = collect_strings(&body);
    all.extend(strings.iter().map(String::as_str));
    scoped(&body, d, &all)
        .into_iter()
        .filter(|(_, t)| !STRUCTURE.contains(&t.as_str()))
        .collect()
}

/// Values that name structure (roles, types, ids in these tests), left out
/// of the lists below; `every_string_is_a_part` checks they are judged.
const STRUCTURE: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "text",
    "image_url",
    "function",
    "input_text",
    "reasoning",
    "summary_text",
    "function_call",
    "function_call_output",
    "thinking",
    "tool_use",
    "tool_result",
    "image",
    "base64",
    "image/png",
    "call_1",
    "c1",
    "rs_1",
    "gAAAA",
    "EqQBCkYIAR",
    "toolu_1",
    "chatcmpl-1",
    "chat.completion",
    "stop",
    "resp_1",
    "message",
    "output_text",
    "x1",
    "u",
    "data:image/png;base64,AAAA",
    "iVBOR",
];

fn collect_strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(collect_strings).collect(),
        Value::Object(o) => o.values().flat_map(collect_strings).collect(),
        _ => vec![],
    }
}

fn t(scope: Scope, s: &str) -> (Scope, String) {
    (scope, s.to_string())
}

#[test]
fn apis_by_path() {
    assert_eq!(Api::from_path("/v1/chat/completions"), Api::OpenAiChat);
    assert_eq!(
        Api::from_path("/openai/v1/chat/completions?x=1"),
        Api::OpenAiChat
    );
    assert_eq!(Api::from_path("/v1/responses"), Api::OpenAiResponses);
    assert_eq!(Api::from_path("/v1/messages"), Api::Anthropic);
    assert_eq!(Api::from_path("/v1/embeddings"), Api::Other);
}

#[test]
fn openai_chat_request_and_response() {
    let req = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "developer", "content": "dev note"},
            {"role": "user", "content": [{"type": "text", "text": "hello"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "reasoning_content": "thinking aloud",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "result text"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "find things"}}]
    });
    assert_eq!(
        texts(req, Direction::Request),
        vec![
            t(Scope::System, "be terse"),
            t(Scope::System, "dev note"),
            t(Scope::Prompt, "hello"),
            t(Scope::Reasoning, "thinking aloud"),
            t(Scope::ToolName, "lookup"),
            t(Scope::ToolName, "lookup"),
            t(Scope::ToolArguments, "{\"q\":\"x\"}"),
            t(Scope::ToolResult, "result text"),
            t(Scope::Model, "gpt-4o"),
            t(Scope::Other, "find things"),
        ]
    );
    let resp = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi there", "reasoning_content": "hmm"}}]});
    assert_eq!(
        texts(resp, Direction::Response),
        vec![
            t(Scope::Assistant, "hi there"),
            t(Scope::Reasoning, "hmm"),
            t(Scope::Model, "gpt-4o")
        ]
    );
}

#[test]
fn openai_responses_api() {
    let req = json!({
        "model": "o4-mini", "instructions": "sys",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "question"}]},
            {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA", "summary": [{"type": "summary_text", "text": "I thought"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
        ]
    });
    assert_eq!(
        texts(req, Direction::Request),
        vec![
            t(Scope::System, "sys"),
            t(Scope::Prompt, "question"),
            t(Scope::Reasoning, "I thought"),
            t(Scope::ToolName, "get_weather"),
            t(Scope::ToolArguments, "{\"city\":\"Paris\"}"),
            t(Scope::ToolResult, "sunny"),
            t(Scope::Model, "o4-mini"),
        ]
    );
    assert_eq!(
        texts(json!({"input": "just a string"}), Direction::Request),
        vec![t(Scope::Prompt, "just a string")]
    );
    let resp = json!({"id": "resp_1", "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "because"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "answer"}]}
    ]});
    assert_eq!(
        texts(resp, Direction::Response),
        vec![
            t(Scope::Assistant, "answer"),
            t(Scope::Reasoning, "because")
        ]
    );
}

#[test]
fn anthropic_messages() {
    let req = json!({
        "model": "claude-x", "max_tokens": 10,
        "system": [{"type": "text", "text": "sys prompt"}],
        "messages": [
            {"role": "user", "content": "plain question"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "deep thought", "signature": "EqQBCkYIAR"},
                {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "secret stuff", "n": 3}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "found it"}]},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
            ]}
        ]
    });
    assert_eq!(
        texts(req, Direction::Request),
        vec![
            t(Scope::System, "sys prompt"),
            t(Scope::Prompt, "plain question"),
            t(Scope::Reasoning, "deep thought"),
            t(Scope::ToolName, "search"),
            t(Scope::ToolArguments, "secret stuff"),
            t(Scope::ToolResult, "found it"),
            t(Scope::Model, "claude-x"),
        ]
    );
}

#[test]
fn any_other_json_is_walked_whole() {
    let body = json!({"a": {"b": ["one", {"c": "two"}]}, "id": "x1", "user_id": "u"});
    assert_eq!(
        texts(body, Direction::Request),
        vec![t(Scope::Other, "one"), t(Scope::Other, "two")]
    );
}

#[test]
fn every_string_key_and_number_is_a_part() {
    let body = json!({
        "model": "gpt-4o",
        "metadata": {"user_id": "bob@example.com"},
        "messages": [
            {"role": "User", "content": [
                {"type": "image_url", "image_url": {"url": "https://evil.example/?k=AKIA", "detail": "high"}},
                {"type": "text", "text": "data: my key"}
            ]},
            {"role": "tool", "tool_call_id": "call_secret", "content": "ok"}
        ],
        "seed": 4111111111111111u64,
        "sk-proj-key-as-a-key": 1
    });
    let src = body.to_string();
    let mut tape = crate::json::Tape::default();
    tape.parse(&src).unwrap();
    let mut parts = Vec::new();
    walk::parts(&tape, &src, Direction::Request, &mut parts);
    let text_of = |p: &walk::Part| {
        if tape.kind(p.node) == Some(crate::json::Kind::Number) {
            tape.raw(&src, p.node).to_string()
        } else {
            tape.str(&src, p.node).unwrap().into_owned()
        }
    };
    let all: Vec<String> = parts.iter().map(text_of).collect();
    for want in [
        "gpt-4o",
        "bob@example.com",
        "user_id",
        "https://evil.example/?k=AKIA",
        "high",
        "data: my key",
        "call_secret",
        "4111111111111111",
        "sk-proj-key-as-a-key",
    ] {
        assert!(all.iter().any(|a| a == want), "{want} not judged: {all:?}");
    }
    // "User" is the user, whatever its case.
    let p = parts.iter().find(|p| text_of(p) == "data: my key").unwrap();
    assert_eq!(p.scope, Scope::Prompt);
    // Only a base64 data URL or base64 field is marked as possible media.
    assert!(parts.iter().all(|p| !p.media));
}
