//! Access rules through the exchange: where they are judged, what the caller
//! gets, what the record and the stats say.

use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

fn inline_jwt() -> Value {
    let v = vectors();
    json!({"providers": [{"name": "idp", "issuer": v["issuer"], "audiences": [v["audience"]],
                          "jwks": v["jwks"]}], "required": false})
}

/// `alice`'s token has `scope: "openid llm:invoke"`.
fn config() -> Value {
    json!({
        "jwt": inline_jwt(),
        "inspection": {"hold_headers": true},
        "access": {"default": "deny", "rules": [
            {"id": "invokers", "when": {"claims": {"scope": "llm:invoke"}},
             "models": ["gpt-4o-mini*"], "tools": ["search_*"],
             "max_output_tokens": 100, "stream": false},
            {"id": "guests", "when": {"anonymous": true}, "paths": ["/v1/models"]},
        ]}
    })
}

/// Request headers with this path (and a token, if any).
fn head(s: &mut Scenario, path: &str, token: Option<&str>) -> Action {
    let mut headers: Vec<(String, String)> = [
        (":method", "POST"),
        (":path", path),
        (":authority", "api.test"),
        ("content-type", "application/json"),
        ("x-request-id", "req-1"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    if let Some(t) = token {
        headers.push(("authorization".into(), t.into()));
    }
    s.on(Event::RequestHeaders {
        headers: &headers,
        end_of_stream: false,
    })
}

fn send(s: &mut Scenario, body: Value) -> Action {
    *s.host.request.borrow_mut() = body.to_string().into_bytes();
    let size = s.host.request.borrow().len();
    s.on(Event::RequestBody {
        size,
        end_of_stream: true,
    })
}

fn access(r: &Record) -> tracegate_proto::v1::AccessDecision {
    r.inspection
        .as_ref()
        .and_then(|i| i.access.clone())
        .unwrap_or_default()
}

fn counted(s: &Scenario, stat: Stat) -> bool {
    s.has(|e| matches!(e, Effect::Add(x, 1) if *x == stat))
}

fn answer(s: &mut Scenario, content_type: &str, body: &str) -> Vec<u8> {
    s.on(Event::ResponseHeaders {
        status: 200,
        content_type: content_type.into(),
        content_encoding: String::new(),
        end_of_stream: false,
    });
    *s.host.response.borrow_mut() = body.as_bytes().to_vec();
    s.on(Event::ResponseBody {
        size: body.len(),
        end_of_stream: true,
    });
    s.out
        .iter()
        .find_map(|e| match e {
            Effect::ReplaceResponseBody { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .unwrap_or_else(|| body.as_bytes().to_vec())
}

#[test]
fn an_allowed_request_goes_on_and_its_record_names_the_rule() {
    let mut s = Scenario::new(config());
    let token = bearer("es256");
    assert_eq!(
        s.headers(&[("authorization", &token)], false),
        Action::Pause
    );
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50,
                      "tools": [{"type": "function", "function": {"name": "search_docs"}}],
                      "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(send(&mut s, body), Action::Continue);
    assert_eq!(s.ex.phase(), Phase::Forwarded);
    let r = s.end();
    assert_eq!(verdict(&r), "forwarded");
    let a = access(&r);
    assert_eq!(
        (a.rule.as_str(), a.decision.as_str()),
        ("invokers", "allowed")
    );
}

#[test]
fn a_denied_body_is_answered_403_in_the_api_shape_and_never_forwarded() {
    let cases = [
        (
            json!({"model": "gpt-4o", "max_tokens": 5}),
            "model",
            "model \"gpt-4o\" is not allowed",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 4096}),
            "max_output_tokens",
            "max_tokens 4096 > 100",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "stream": true}),
            "stream",
            "streaming",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "functions": [{"name": "exec"}]}),
            "tool",
            "tool \"exec\"",
        ),
    ];
    for (body, check, says) in cases {
        for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
            let mut s = Scenario::new(config());
            let token = bearer("es256");
            head(&mut s, path, Some(&token));
            assert_eq!(send(&mut s, body.clone()), Action::Pause);
            let reply = s.reply().cloned().expect("answered");
            assert_eq!(reply.status, 403);
            let v: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(v["error"]["rule"], "invokers", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(says) && message.contains("invokers"),
                "{message}"
            );
            let kind = if anthropic {
                "permission_error"
            } else {
                "permission_denied"
            };
            assert_eq!(v["error"]["type"], kind);
            assert!(counted(&s, Stat::AccessDenied(0)));
            let r = s.end();
            assert_eq!(verdict(&r), "access_denied");
            assert_eq!(r.upstream_saw(), Saw::Nothing);
            let a = access(&r);
            assert_eq!(
                (a.rule.as_str(), a.decision.as_str(), a.check.as_str()),
                ("invokers", "denied", check)
            );
            assert!(a.detail.contains(says), "{}", a.detail);
        }
    }
}

#[test]
fn the_head_is_judged_before_the_body_is_waited_for() {
    // Anonymous, on a path its rule does not allow.
    let mut s = Scenario::new(config());
    assert_eq!(s.headers(&[], false), Action::Pause);
    assert_eq!(s.reply().map(|r| r.status), Some(403));
    assert!(counted(&s, Stat::AccessDenied(1)));
    assert_eq!(
        send(&mut s, json!({"model": "x"})),
        Action::Pause,
        "the body is not judged"
    );
    let r = s.end();
    assert_eq!(access(&r).check, "path");
    assert_eq!(r.upstream_saw(), Saw::Nothing);

    // A verified caller no rule is for, under default deny.
    let mut c = config();
    c["access"]["rules"][0]["when"]["claims"]["scope"] = json!("admin");
    let mut s = Scenario::new(c);
    let token = bearer("es256");
    s.headers(&[("authorization", &token)], false);
    let reply = s.reply().cloned().expect("answered");
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["error"]["rule"], "default");
    assert!(counted(&s, Stat::AccessDenied(2)));
    let r = s.end();
    let a = access(&r);
    assert_eq!((a.rule.as_str(), a.check.as_str()), ("default", "no_rule"));
    // The stat names: one pair per rule and the default.
    let names: Vec<String> = Stat::all_for(&s.gw.policy)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    for n in [
        "tracegate.access.invokers.denied",
        "tracegate.access.guests.answers_denied",
        "tracegate.access.default.denied",
    ] {
        assert!(names.contains(&n.to_string()), "{n}");
    }
    let mut idx: Vec<usize> = Stat::all_for(&s.gw.policy)
        .into_iter()
        .map(|(s, _)| s.index())
        .collect();
    let n = idx.len();
    idx.sort();
    idx.dedup();
    assert_eq!(idx, (0..n).collect::<Vec<_>>());
}

#[test]
fn a_duplicate_model_key_is_refused_before_access_rules_read_it() {
    let mut s = Scenario::new(config());
    let token = bearer("es256");
    s.headers(&[("authorization", &token)], false);
    let body = r#"{"model":"gpt-4o-mini","max_tokens":5,"model":"gpt-4o"}"#;
    *s.host.request.borrow_mut() = body.as_bytes().to_vec();
    s.on(Event::RequestBody {
        size: body.len(),
        end_of_stream: true,
    });
    assert_eq!(s.reply().map(|r| r.status), Some(400));
    // JSON escapes are read as the upstream reads them.
    let mut s = Scenario::new(config());
    s.headers(&[("authorization", &token)], false);
    let body = r#"{"model":"\u0067pt-4o","max_tokens":5}"#;
    *s.host.request.borrow_mut() = body.as_bytes().to_vec();
    s.on(Event::RequestBody {
        size: body.len(),
        end_of_stream: true,
    });
    assert_eq!(s.reply().map(|r| r.status), Some(403));
}

fn allowed(s: &mut Scenario) {
    let token = bearer("es256");
    s.headers(&[("authorization", &token)], false);
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50});
    assert_eq!(send(s, body), Action::Continue);
}

#[test]
fn an_answer_calling_a_denied_tool_is_withheld() {
    let mut s = Scenario::new(config());
    allowed(&mut s);
    let body = json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "exec_shell", "arguments": "{}"}}]},
        "finish_reason": "tool_calls"}]})
    .to_string();
    let sent = answer(&mut s, "application/json", &body);
    let text = String::from_utf8_lossy(&sent).to_string();
    assert!(!text.contains("call_1"), "{text}");
    assert!(
        text.contains("exec_shell") && text.contains("invokers"),
        "{text}"
    );
    assert!(s.has(|e| matches!(e, Effect::SetResponseHeader(":status", Some(v)) if v == "403")));
    assert!(counted(&s, Stat::AccessAnswerDenied(0)));
    let r = s.end();
    let a = access(&r);
    assert_eq!(
        (a.decision.as_str(), a.check.as_str()),
        ("allowed", "answer_tool")
    );
    assert_eq!(a.answer_tools_denied, ["exec_shell"]);
    assert_eq!(
        r.response_body.unwrap().data,
        sent,
        "the record holds what the client got"
    );

    // An allowed call passes untouched.
    let mut s = Scenario::new(config());
    allowed(&mut s);
    let ok = body.replace("exec_shell", "search_web");
    assert_eq!(answer(&mut s, "application/json", &ok), ok.as_bytes());
    assert!(access(&s.end()).answer_tools_denied.is_empty());
}

#[test]
fn a_stream_calling_a_denied_tool_ends_with_an_error_before_the_call() {
    for (api_path, events) in [
        (
            "/v1/chat/completions",
            vec![
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me"}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                   "function": {"name": "exec_shell", "arguments": ""}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\":\"rm\"}"}}]}}]}),
            ],
        ),
        (
            "/v1/responses",
            vec![
                json!({"type": "response.output_item.added", "output_index": 0,
                   "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_shell", "arguments": ""}}),
                json!({"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": "{}"}),
            ],
        ),
        (
            "/v1/messages",
            vec![
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "call_1", "name": "exec_shell", "input": {}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            ],
        ),
    ] {
        let mut s = Scenario::new(config());
        let token = bearer("es256");
        head(&mut s, api_path, Some(&token));
        send(&mut s, json!({"model": "gpt-4o-mini", "max_tokens": 50}));
        let stream: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        let sent =
            String::from_utf8_lossy(&answer(&mut s, "text/event-stream", &stream)).to_string();
        assert!(
            !sent.contains("call_1") && !sent.contains("cmd"),
            "{api_path}: {sent}"
        );
        assert!(
            sent.contains("event: error") && sent.contains(r#""rule":"invokers""#),
            "{sent}"
        );
        assert!(counted(&s, Stat::AccessAnswerDenied(0)));
        let a = access(&s.end());
        assert_eq!(a.answer_tools_denied, ["exec_shell"], "{api_path}");
    }
}

#[test]
fn without_access_rules_records_carry_no_access_decision() {
    let mut s = Scenario::new(json!({}));
    s.headers(&[], false);
    s.body("hi");
    let r = s.end();
    assert!(r.inspection.is_none_or(|i| i.access.is_none()));
}

#[test]
fn facts_are_read_from_the_body_as_it_goes_upstream() {
    // The model names an e-mail address: masking changes it, and what the
    // upstream would read ("[EMAIL]") is what is judged.
    let mut c = config();
    c["access"]["rules"][0]["models"] = json!(["*@example.com"]);
    let mut s = Scenario::new(c);
    let token = bearer("es256");
    head(&mut s, "/v1/chat/completions", Some(&token));
    send(&mut s, json!({"model": "bob@example.com", "max_tokens": 5}));
    let reply = s.reply().cloned().expect("refused");
    assert_eq!(reply.status, 403);
    assert!(String::from_utf8_lossy(&reply.body).contains("[EMAIL]"));
    // A masked body whose facts did not change keeps them.
    let mut s = Scenario::new(config());
    head(&mut s, "/v1/chat/completions", Some(&token));
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "mail bob@example.com"}]});
    assert_eq!(send(&mut s, body), Action::Continue);
    assert!(s.has(|e| matches!(e, Effect::ReplaceRequestBody { .. })));
}

#[test]
fn gates_reached_with_the_caller_undecided_judge_it_as_anonymous() {
    // Not a path the proxy takes (the gates wait for the caller); should
    // one ever lead there, the request is judged, never let through.
    let mut s = Scenario::new(json!({
        "inspection": {"hold_headers": true},
        "access": {"default": "deny", "rules": [
            {"id": "guests", "when": {"anonymous": true}, "models": ["gpt-4o-mini"]}]}
    }));
    head(&mut s, "/v1/chat/completions", None);
    s.ex.access = AccessState::Pending;
    send(&mut s, json!({"model": "gpt-4o", "messages": []}));
    let reply = s.reply().expect("refused");
    assert_eq!(reply.status, 403);
    assert!(!s.has(|e| matches!(e, Effect::Resume)));
    assert_eq!(access(&s.end()).rule, "guests");
}
