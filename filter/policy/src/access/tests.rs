use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::json::Tape;
use crate::Config;

fn compile(access: Value) -> Result<Access, ConfigError> {
    let config = Config::parse(json!({ "access": access }).to_string().as_bytes())?;
    Access::new(config.access.as_ref().unwrap(), true)
}

fn facts(body: Value) -> Facts {
    let src = body.to_string();
    let mut tape = Tape::default();
    tape.parse(&src).unwrap();
    Facts::read(&tape, &src)
}

fn tools(body: Value) -> Vec<String> {
    facts(body).tools.into_iter().map(|t| t.name).collect()
}

fn answer(body: Value) -> Vec<String> {
    let src = body.to_string();
    let mut tape = Tape::default();
    tape.parse(&src).unwrap();
    let mut out = Vec::new();
    answer_calls(&tape, &src, &mut out);
    out
}

fn analysts() -> Access {
    compile(json!({
        "default": "deny",
        "rules": [
            {"id": "analysts", "when": {"claims": {"groups": ["analysts"]}},
             "models": ["gpt-4o-mini*", "claude-3-5-haiku*"],
             "apis": ["openai_chat", "openai_responses", "anthropic"], "paths": ["/v1/*"],
             "tools": ["search_*"], "max_output_tokens": 1024, "stream": false},
            {"id": "guests", "when": {"anonymous": true}, "paths": ["/v1/models"]},
        ]
    }))
    .unwrap()
}

fn claims(groups: &[&str]) -> Vec<(String, Vec<String>)> {
    vec![(
        "groups".to_string(),
        groups.iter().map(|g| g.to_string()).collect(),
    )]
}

#[test]
fn globs_are_anchored_and_literal_but_for_star_and_question_mark() {
    let g = Globs::new("f", &["gpt-4o-mini*".into(), "o?".into(), "a.b+c".into()]).unwrap();
    for yes in ["gpt-4o-mini", "gpt-4o-mini-2024", "o1", "o3", "a.b+c"] {
        assert!(g.matches(yes), "{yes}");
    }
    for no in [
        "GPT-4o-mini",
        "gpt-4o",
        "xgpt-4o-mini",
        "o10",
        "axb+c",
        "a.bbc",
        "gpt-4о-mini", // Cyrillic о
        "",
    ] {
        assert!(!g.matches(no), "{no}");
    }
    assert!(!Globs::new("f", &[]).unwrap().matches(""), "empty list");
    assert!(Globs::new("f", &["*".into()]).unwrap().matches("a\nb"));
}

#[cfg(not(target_arch = "wasm32"))]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Glob matching by backtracking, the textbook way.
    fn reference(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| reference(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && reference(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
        }
    }

    proptest! {
        #[test]
        fn globs_match_like_the_reference(
            p in "[ab*?.\\\\(|é]{1,8}",
            s in "[ab.\\\\(|é\n]{0,10}",
        ) {
            let g = Globs::new("f", std::slice::from_ref(&p)).unwrap();
            let pc: Vec<char> = p.chars().collect();
            let sc: Vec<char> = s.chars().collect();
            prop_assert_eq!(g.matches(&s), reference(&pc, &sc), "{:?} {:?}", p, s);
        }
    }
}

#[test]
fn config_errors_name_the_field() {
    for (access, field) in [
        (json!({"rules": [{"id": "a b"}]}), "access.rules[0].id"),
        (json!({"rules": [{"id": "default"}]}), "access.rules[0].id"),
        (
            json!({"rules": [{"id": "a"}, {"id": "a"}]}),
            "access.rules[1].id",
        ),
        (
            json!({"rules": [{"id": "a", "models": ["gpt-4o", ""]}]}),
            "access.rules[0].models[1]",
        ),
        (
            json!({"rules": [{"id": "a", "tools": ["x\u{7}"]}]}),
            "access.rules[0].tools[0]",
        ),
        (
            json!({"rules": [{"id": "a", "paths": ["v1/*"]}]}),
            "access.rules[0].paths[0]",
        ),
        (
            json!({"rules": [{"id": "a", "apis": ["openai_chat", "gemini"]}]}),
            "access.rules[0].apis[1]",
        ),
        (
            json!({"rules": [{"id": "a", "max_output_tokens": 0}]}),
            "access.rules[0].max_output_tokens",
        ),
        (
            json!({"rules": [{"id": "a", "when": {"claims": {"g": "x"}, "anonymous": true}}]}),
            "access.rules[0].when",
        ),
        (
            json!({"rules": [{"id": "a", "when": {"claims": {"g": []}}}]}),
            "access.rules[0].when.claims.g",
        ),
        (
            json!({"rules": [{"id": "a", "when": {"claims": {"g": ["ok", ""]}}}]}),
            "access.rules[0].when.claims.g[1]",
        ),
        (
            json!({"rules": [{"id": "a", "model": ["x"]}]}),
            "access.rules[0].model",
        ),
        (json!({"default": "maybe", "rules": []}), "access.default"),
        (json!({}), "access"),
    ] {
        let e = compile(access.clone()).unwrap_err();
        assert_eq!(e.field, field, "{access}: {e}");
    }
    // Claims need a verified token.
    let c =
        Config::parse(br#"{"access":{"rules":[{"id":"a","when":{"claims":{"g":"x"}}}]}}"#).unwrap();
    let e = Access::new(c.access.as_ref().unwrap(), false).unwrap_err();
    assert_eq!(e.field, "access.rules[0].when.claims");
    // Tools restricted: answers must be inspected.
    let e = crate::Policy::compile(
        br#"{"masking":{"enabled":false},"access":{"rules":[{"id":"a","tools":[]}]}}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "access.rules[0].tools");
}

#[test]
fn without_an_access_section_nothing_changes() {
    let p = crate::Policy::compile(b"{}").unwrap();
    assert!(p.access.is_none());
    let p = crate::Policy::compile(br#"{"masking":{"enabled":false}}"#).unwrap();
    assert!(
        p.inspector.is_none(),
        "bodies are not held without access rules"
    );
    let p = crate::Policy::compile(
        br#"{"masking":{"enabled":false},"access":{"default":"allow","rules":[]}}"#,
    )
    .unwrap();
    assert!(p.inspector.is_some(), "access rules read the body");
}

#[test]
fn the_first_rule_whose_when_matches_decides() {
    let a = compile(json!({"default": "allow", "rules": [
        {"id": "ops", "when": {"claims": {"groups": ["ops-*"], "tier": "2"}}},
        {"id": "analysts", "when": {"claims": {"groups": "analysts"}}},
        {"id": "anon", "when": {"anonymous": true}},
        {"id": "everyone"},
    ]}))
    .unwrap();
    let mut c = claims(&["analysts", "ops-east"]);
    assert_eq!(
        a.select(Caller::Verified(&c)),
        Selected::Rule(1),
        "tier missing"
    );
    c.push(("tier".into(), vec!["2".into()]));
    assert_eq!(a.select(Caller::Verified(&c)), Selected::Rule(0));
    assert_eq!(a.select(Caller::Anonymous), Selected::Rule(2));
    assert_eq!(
        a.select(Caller::Verified(&claims(&["Analysts"]))),
        Selected::Rule(3),
        "exact, case included"
    );
    assert_eq!(a.id(Selected::Rule(3)), "everyone");
    let b = analysts();
    assert_eq!(
        b.select(Caller::Verified(&claims(&["other"]))),
        Selected::Default
    );
    let d = b
        .head(Selected::Default, Api::OpenAiChat, "/v1/chat/completions")
        .unwrap_err();
    assert_eq!(
        (d.rule.as_str(), d.check, d.index),
        ("default", Check::NoRule, 2)
    );
}

#[test]
fn head_checks_api_and_plain_paths() {
    let a = analysts();
    let r = Selected::Rule(0);
    assert!(a
        .head(r, Api::OpenAiChat, "/v1/chat/completions?x=1")
        .is_ok());
    assert!(a.head(r, Api::Anthropic, "/v1/messages").is_ok());
    let d = a.head(r, Api::Other, "/v1/embeddings").unwrap_err();
    assert_eq!(d.check, Check::Api);
    assert!(d.message.contains("access rule analysts"), "{}", d.message);
    for path in [
        "/v2/chat/completions",
        "/v1/../admin/chat/completions",
        "/v1/./chat/completions",
        "/v1//chat/completions",
        "/v1/%2e%2e/x/chat/completions",
        "/v1/chat%2Fcompletions",
        "/v1\\..\\chat/completions",
    ] {
        let d = a.head(r, Api::OpenAiChat, path).unwrap_err();
        assert_eq!(d.check, Check::Path, "{path}");
    }
    let g = Selected::Rule(1);
    assert!(a.head(g, Api::Other, "/v1/models").is_ok());
    assert!(
        a.head(g, Api::Other, "/v1/models/").is_err(),
        "another path"
    );
    assert!(a.head(g, Api::Other, "/v1/models/gpt-4o").is_err());
}

#[test]
fn body_checks_model_tools_limits_and_streaming() {
    let a = analysts();
    let r = Selected::Rule(0);
    let ok = json!({"model": "gpt-4o-mini", "max_tokens": 100,
                    "tools": [{"type": "function", "function": {"name": "search_web"}}]});
    assert!(a.body(r, &facts(ok)).is_ok());
    let cases = [
        (
            json!({"model": "gpt-4o", "max_tokens": 1}),
            Check::Model,
            "model \"gpt-4o\"",
        ),
        (
            json!({"model": "GPT-4o-mini", "max_tokens": 1}),
            Check::Model,
            "GPT",
        ),
        (
            json!({"model": "gpt-4о-mini", "max_tokens": 1}),
            Check::Model,
            "model",
        ),
        (json!({"max_tokens": 1}), Check::Model, "names no model"),
        (
            json!({"model": ["gpt-4o-mini"], "max_tokens": 1}),
            Check::Model,
            "not a string",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 4096}),
            Check::MaxOutputTokens,
            "max_tokens 4096 > 1024",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_completion_tokens": 2000}),
            Check::MaxOutputTokens,
            "max_completion_tokens 2000 > 1024",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_output_tokens": 1025}),
            Check::MaxOutputTokens,
            "1025 > 1024",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 10, "max_completion_tokens": 5000}),
            Check::MaxOutputTokens,
            "5000",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 1e9}),
            Check::MaxOutputTokens,
            "not a non-negative integer",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": "100"}),
            Check::MaxOutputTokens,
            "integer",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": -1}),
            Check::MaxOutputTokens,
            "integer",
        ),
        (
            json!({"model": "gpt-4o-mini"}),
            Check::MaxOutputTokens,
            "no output limit",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": null}),
            Check::MaxOutputTokens,
            "no output limit",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "stream": true}),
            Check::Stream,
            "streaming",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "stream": "true"}),
            Check::Stream,
            "streaming",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "stream": 1}),
            Check::Stream,
            "streaming",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "tools": [{"type": "function", "function": {"name": "exec"}}]}),
            Check::Tool,
            "tool \"exec\" (declared)",
        ),
    ];
    for (body, check, says) in cases {
        let d = a.body(r, &facts(body.clone())).unwrap_err();
        assert_eq!(d.check, check, "{body}");
        assert!(d.message.contains(says), "{body}: {}", d.message);
        assert_eq!(d.rule, "analysts");
    }
    for stream in [json!(false), json!(null)] {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 5, "stream": stream});
        assert!(a.body(r, &facts(body)).is_ok());
    }
    // No body: nothing names a model.
    assert!(a.body(r, &Facts::default()).is_ok());
    let d = a.body(r, &Facts::text()).unwrap_err();
    assert_eq!(d.check, Check::Model);
    // Default allow: no rule, no body checks.
    assert!(a
        .body(Selected::Default, &facts(json!({"model": "x"})))
        .is_ok());
}

#[test]
fn tools_are_found_wherever_an_upstream_reads_them() {
    // OpenAI chat: tools, legacy functions, tool_choice, function_call,
    // calls in the history (tool_calls, legacy function_call).
    assert_eq!(
        tools(json!({
            "tools": [{"type": "function", "function": {"name": "a"}}, {"type": "custom", "custom": {"name": "b"}}],
            "functions": [{"name": "c"}],
            "tool_choice": {"type": "function", "function": {"name": "d"}},
            "function_call": {"name": "e"},
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "assistant", "function_call": {"name": "g", "arguments": "{}"}},
                {"role": "tool", "tool_call_id": "1", "content": "x"},
            ]
        })),
        ["a", "b", "c", "d", "e", "f", "g"]
    );
    // Responses: tools by name or hosted type, tool_choice, calls in input.
    assert_eq!(
        tools(json!({
            "tools": [{"type": "function", "name": "a", "parameters": {}}, {"type": "web_search"}, {}],
            "tool_choice": {"type": "function", "name": "b"},
            "input": [
                {"type": "function_call", "call_id": "1", "name": "c", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "1", "output": "x"},
                {"type": "web_search_call", "id": "ws"},
                {"role": "user", "content": "hi"},
            ]
        })),
        ["a", "web_search", "", "b", "c", "web_search"]
    );
    // Anthropic: tools, tool_choice, tool_use blocks in the history.
    assert_eq!(
        tools(json!({
            "tools": [{"name": "a", "input_schema": {}}],
            "tool_choice": {"type": "tool", "name": "b"},
            "messages": [{"role": "assistant", "content": [
                {"type": "text", "text": "x"},
                {"type": "tool_use", "id": "t", "name": "c", "input": {}},
            ]}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "y"}]}]
        })),
        ["a", "b", "c"]
    );
    // Strings are judged decoded, as the upstream reads them.
    assert_eq!(tools(json!({"tools": [{"name": "\u{65}xec"}]})), ["exec"]);
    let src = r#"{"model":"\u0067pt-4o","tools":[{"name":"\u0065xec"}]}"#;
    let mut tape = Tape::default();
    tape.parse(src).unwrap();
    let f = Facts::read(&tape, src);
    assert_eq!(f.model, Model::Name("gpt-4o".into()));
    assert_eq!(f.tools[0].name, "exec");
    // A tool's parameters are not tools.
    assert_eq!(
        tools(
            json!({"tools": [{"type": "function", "function": {"name": "a",
            "parameters": {"properties": {"tools": {"type": "array"}, "name": {"type": "string"}}}}}]})
        ),
        ["a"]
    );
}

#[test]
fn tool_calls_are_found_in_answers_and_events() {
    assert_eq!(
        answer(
            json!({"choices": [{"message": {"role": "assistant", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "a", "arguments": "{}"}}],
            "function_call": {"name": "b"}}}]})
        ),
        ["a", "b"]
    );
    assert_eq!(
        answer(json!({"output": [{"type": "message", "content": []},
            {"type": "function_call", "name": "a", "arguments": "{}"},
            {"type": "code_interpreter_call", "id": "x"}]})),
        ["a", "code_interpreter"]
    );
    assert_eq!(
        answer(json!({"content": [{"type": "text", "text": "x"},
            {"type": "tool_use", "id": "t", "name": "a", "input": {}}]})),
        ["a"]
    );
    // Stream events: a chat delta naming its call (later deltas do not),
    // a Responses item, an Anthropic block, the completed response.
    assert_eq!(
        answer(
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "a", "arguments": ""}}]}}]})
        ),
        ["a"]
    );
    assert!(answer(json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]})).is_empty());
    assert_eq!(
        answer(
            json!({"type": "response.output_item.added", "item": {"type": "function_call", "name": "a"}})
        ),
        ["a"]
    );
    assert_eq!(
        answer(
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "name": "a", "input": {}}})
        ),
        ["a"]
    );
    assert_eq!(
        answer(
            json!({"type": "response.completed", "response": {"output": [{"type": "function_call", "name": "a"}]}})
        ),
        ["a"]
    );
    let g = analysts().answer_guard(Selected::Rule(0)).unwrap();
    assert_eq!(g.check(&["search_a".into(), "exec".into()]), Some("exec"));
    assert_eq!(g.check(&["search_a".into()]), None);
    assert!(
        analysts().answer_guard(Selected::Rule(1)).is_none(),
        "no tools list"
    );
}
