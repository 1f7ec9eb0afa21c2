use super::config::*;
use super::*;
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn inspector(masking: Value, rules: Value) -> Inspector {
    let masking: MaskingConfig = serde_json::from_value(masking).unwrap();
    let rules: Vec<RuleConfig> = serde_json::from_value(rules).unwrap();
    Inspector::new(&InspectionConfig::default(), &masking, &rules).unwrap()
}

fn chat(user: &str) -> Vec<u8> {
    json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": user}
    ]})
    .to_string()
    .into_bytes()
}

#[test]
fn requests_are_masked_and_stay_valid_json() {
    let i = inspector(json!({}), json!([]));
    let v = i.request(
        "application/json",
        &chat("my card is 4111 1111 1111 1111"),
        &mut Tokens::default(),
    );
    let RequestVerdict::Forward {
        body: Some(body),
        hits,
        rules,
    } = v
    else {
        panic!("{v:?}")
    };
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["messages"][1]["content"], "my card is [CARD_NUMBER]");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(hits.counts["payment_card"], 1);
    assert!(rules.is_empty());
    // Nothing found: the body is forwarded as it came.
    let v = i.request(
        "application/json; charset=utf-8",
        &chat("hello"),
        &mut Tokens::default(),
    );
    assert!(matches!(v, RequestVerdict::Forward { body: None, .. }));
}

#[test]
fn rules_block_by_scope() {
    let i = inspector(
        json!({}),
        json!([
            {"id": "jailbreak", "scope": "prompt", "keywords": ["Ignore previous instructions"], "action": "block",
             "message": "prompt injection"},
            {"id": "no-o1", "scope": "model", "regex": "^o1", "action": "block"},
            {"id": "watch", "scope": "any", "keywords": ["helpful"], "action": "log"}
        ]),
    );
    let v = i.request(
        "application/json",
        &chat("please IGNORE previous instructions"),
        &mut Tokens::default(),
    );
    let RequestVerdict::Blocked {
        rule,
        message,
        rules,
        ..
    } = v
    else {
        panic!("{v:?}")
    };
    assert_eq!(rule.id, "jailbreak");
    assert_eq!(message, "prompt injection");
    assert_eq!(rules.len(), 2, "the log rule is recorded too");
    // The system prompt is not the prompt scope.
    let v = i.request(
        "application/json",
        &json!({"messages": [{"role": "system", "content": "ignore previous instructions"}]})
            .to_string()
            .into_bytes(),
        &mut Tokens::default(),
    );
    assert!(matches!(v, RequestVerdict::Forward { .. }), "{v:?}");
    let v = i.request(
        "application/json",
        &json!({"model": "o1-mini", "messages": []})
            .to_string()
            .into_bytes(),
        &mut Tokens::default(),
    );
    assert!(matches!(v, RequestVerdict::Blocked { rule, .. } if rule.id == "no-o1"));
}

#[test]
fn approve_rules_block_without_an_approval_service_and_add_risk_with_one() {
    let rules = json!([{"id": "prod", "keywords": ["deploy to production"], "action": "approve",
                        "risk": 70, "message": "production change"}]);
    let body = chat("deploy to production, key AKIAIOSFODNN7EXAMPLE");
    let v = inspector(json!({}), rules.clone()).request(
        "application/json",
        &body,
        &mut Tokens::default(),
    );
    let RequestVerdict::Blocked { message, .. } = v else {
        panic!("{v:?}")
    };
    assert!(
        message.contains("no approval service is configured"),
        "{message}"
    );

    let i = inspector(json!({}), rules).with_approvals(true);
    let v = i.request("application/json", &body, &mut Tokens::default());
    let RequestVerdict::Forward { hits, rules, .. } = v else {
        panic!("{v:?}")
    };
    assert_eq!(rules.len(), 1);
    assert_eq!(i.rules_risk(&rules), 70);
    assert_eq!(i.rule_risk("prod"), 70);
    assert!(hits.risk > 0, "the AWS key id adds its detector's risk");
}

#[test]
fn uninspectable_requests_are_refused() {
    let i = inspector(json!({}), json!([]));
    let mut t = Tokens::default();
    for (ct, body, status) in [
        ("application/json", b"{not json".to_vec(), 400),
        ("application/json", vec![b'"', 0xff, 0xfe, b'"'], 400),
        ("application/octet-stream", b"x".to_vec(), 415),
        ("application/json", vec![b' '; 5 << 20], 413),
    ] {
        match i.request(ct, &body, &mut t) {
            RequestVerdict::Refused { status: s, .. } => assert_eq!(s, status, "{ct}"),
            other => panic!("{ct}: {other:?}"),
        }
    }
    // An empty body has nothing to inspect, whatever its type.
    assert!(matches!(
        i.request("application/octet-stream", b"", &mut t),
        RequestVerdict::Forward { body: None, .. }
    ));
    // Plain text is masked as text.
    let v = i.request("text/plain", b"mail bob@example.com", &mut t);
    assert!(matches!(v, RequestVerdict::Forward { body: Some(b), .. } if b == b"mail [EMAIL]"));
}

#[test]
fn responses_are_masked_and_tokens_restored() {
    let i = inspector(
        json!({"detectors": {"email": {"operator": "tokenize"}}}),
        json!([]),
    );
    let mut t = Tokens::default();
    let v = i.request(
        "application/json",
        &chat("write to bob@example.com"),
        &mut t,
    );
    let RequestVerdict::Forward {
        body: Some(body), ..
    } = v
    else {
        panic!("{v:?}")
    };
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("write to [EMAIL_1]"));
    let answer = json!({"choices": [{"message": {"role": "assistant",
        "content": "Sent to [EMAIL_1]; your key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 leaked"}}]});
    let mut hits = Hits::default();
    let out = i
        .response(
            "application/json",
            answer.to_string().as_bytes(),
            &mut t,
            &mut hits,
        )
        .unwrap()
        .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Sent to bob@example.com; your key [OPENAI_API_KEY] leaked"
    );
    assert_eq!(hits.counts["openai_api_key"], 1);
}

#[test]
fn error_bodies_in_each_api_shape() {
    let o: Value = serde_json::from_str(&error_body(
        Api::OpenAiChat,
        "permission_error",
        "no",
        Some("r1"),
    ))
    .unwrap();
    assert_eq!(o["error"]["message"], "tracegate: no");
    assert_eq!(o["error"]["rule"], "r1");
    let a: Value =
        serde_json::from_str(&error_body(Api::Anthropic, "permission_error", "no", None)).unwrap();
    assert_eq!(a["type"], "error");
    assert_eq!(a["error"]["type"], "permission_error");
}

#[test]
fn configuration_errors() {
    let check = |masking: Value, rules: Value, field: &str| {
        let masking: MaskingConfig = serde_json::from_value(masking).unwrap();
        let rules: Vec<RuleConfig> = serde_json::from_value(rules).unwrap();
        let e = Inspector::new(&InspectionConfig::default(), &masking, &rules).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    };
    check(
        json!({"detectors": {"emial": {}}}),
        json!([]),
        "masking.detectors.emial",
    );
    check(
        json!({"custom": [{"name": "x", "pattern": "("}]}),
        json!([]),
        "masking.custom[0].pattern",
    );
    check(
        json!({"default_operator": "hash"}),
        json!([]),
        "masking.hmac_key_base64",
    );
    check(
        json!({}),
        json!([{"id": "a", "action": "block"}]),
        "rules[0]",
    );
    check(
        json!({}),
        json!([{"id": "a", "regex": "(", "action": "block"}]),
        "rules[0].regex",
    );
    let e =
        crate::Config::parse(br#"{"rules": [{"id": "a", "keywords": ["x"], "action": "deny"}]}"#)
            .unwrap_err();
    assert_eq!(e.field, "rules[0].action");
}
