//! Access rules through the real Envoy: tokens minted by jwcrypto with
//! different `groups`, the official SDKs (chat, Responses, Anthropic), the
//! records in the collector and Envoy's stats per rule. One stack, many
//! cases.

use serde_json::{json, Value};
use tracegate_e2e::jwt::{claims, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{run_client, Stack};

fn plugin_config() -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "inspection": {"hold_headers": true},
        "jwt": {"required": false, "providers": [{
            "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.tracegate.test/jwks.json", "cluster": "idp",
                            "timeout_ms": 1000, "retry_interval_ms": 200}
        }]},
        "access": {"default": "deny", "rules": [
            {"id": "analysts", "when": {"claims": {"groups": ["analysts"]}},
             "models": ["gpt-4o-mini*", "claude-3-5-haiku*"],
             "apis": ["openai_chat", "openai_responses", "anthropic"], "paths": ["/v1/*"],
             "tools": ["search_*"], "max_output_tokens": 1024, "stream": false},
            {"id": "streamers", "when": {"claims": {"groups": "streamers"}},
             "models": ["gpt-4o-mini"], "tools": ["search_*"]}
        ]}
    })
}

fn records(stack: &mut Stack, session: &str, n: usize) -> Vec<Value> {
    stack.collector.wait_for_records(session, n).unwrap()
}

fn access(r: &Value) -> &Value {
    &r["inspection"]["access"]
}

#[test]
fn access_rules_through_envoy_and_the_sdks() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let mut stack = Stack::start_with_jwks(&plugin_config(), &jwks).unwrap();
    let token = |sub: &str, groups: Value| {
        let mut c = claims(sub);
        c["groups"] = groups;
        keys.mint_one(json!({"key": "ec256", "alg": "ES256", "claims": c}))
            .unwrap()
    };
    let analyst = token("ann", json!(["staff", "analysts"]));
    let streamer = token("sam", json!("streamers"));
    let outsider = token("oscar", json!(["Analysts", "analysts "]));

    let out = run_client(
        "sdk_access.py",
        &[&stack.envoy.url("/v1"), "access-sdk", &analyst, &streamer],
    )
    .unwrap();
    assert!(out.ends_with("ok\n"), "{out}");

    // Doors the SDKs do not open: raw bytes.
    let auth = format!("Bearer {analyst}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let cases: [(&str, &str, u16, &str); 6] = [
        // The upstream takes the last `model`: a duplicate key is refused.
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","max_tokens":5,"model":"gpt-4o","messages":[]}"#,
            400,
            "twice",
        ),
        // Escapes are read as the upstream reads them.
        (
            "/v1/chat/completions",
            r#"{"model":"\u0067pt-4o","max_tokens":5,"messages":[]}"#,
            403,
            "model \\\"gpt-4o\\\"",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[],"tool_choice":{"type":"function","function":{"name":"exec_shell"}}}"#,
            403,
            "exec_shell",
        ),
        // Paths that could mean another resource upstream.
        (
            "/v1//chat/completions",
            r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#,
            403,
            "empty segments",
        ),
        (
            "/v1/embeddings",
            r#"{"model":"gpt-4o-mini","input":"x"}"#,
            403,
            "API other",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","max_tokens":1.5e3,"messages":[]}"#,
            403,
            "max_tokens is not a non-negative integer",
        ),
    ];
    for (path, body, status, says) in cases {
        let a = stack
            .post(path, "access-raw", &headers, body.as_bytes())
            .unwrap();
        assert_eq!(a.status, status, "{path} {body}: {}", a.body);
        assert!(a.body.contains(says), "{body}: {}", a.body);
    }
    // Anonymous and outsiders (claims are exact) get the default.
    let body = br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#;
    let json_only = [("content-type", "application/json")];
    let outsider_auth = format!("Bearer {outsider}");
    for h in [
        &json_only[..],
        &[
            ("authorization", outsider_auth.as_str()),
            ("content-type", "application/json"),
        ][..],
    ] {
        let a = stack
            .post("/v1/chat/completions", "access-anon", h, body)
            .unwrap();
        assert_eq!(a.status, 403, "{}", a.body);
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"]["rule"], "default", "{v}");
    }

    // Nothing refused reached the upstream: only the allowed requests and
    // the two answers whose tool calls were withheld did.
    let seen = stack.upstream.received().unwrap();
    for r in &seen {
        let body = r["body"].as_str().unwrap_or_default();
        assert!(
            !body.contains("exec_shell") && !body.contains("gpt-4o\""),
            "{r}"
        );
    }

    // Records name the rule and why.
    let recs = records(&mut stack, "access-raw", cases.len());
    let denied: Vec<&Value> = recs
        .iter()
        .filter(|r| r["inspection"]["verdict"] == "access_denied")
        .collect();
    assert_eq!(denied.len(), cases.len() - 1, "{recs:#?}");
    for r in &denied {
        assert_eq!(access(r)["rule"], "analysts", "{r}");
        assert_eq!(access(r)["decision"], "denied", "{r}");
        assert_eq!(r["upstream_saw"], "nothing", "{r}");
    }
    let anon = records(&mut stack, "access-anon", 2);
    assert!(
        anon.iter().all(|r| access(r)["check"] == "no_rule"),
        "{anon:#?}"
    );
    let sdk = records(&mut stack, "access-sdk", 23);
    let checks: Vec<String> = sdk
        .iter()
        .map(|r| access(r)["check"].as_str().unwrap_or_default().to_string())
        .collect();
    for check in [
        "model",
        "tool",
        "max_output_tokens",
        "stream",
        "answer_tool",
    ] {
        assert!(checks.iter().any(|c| c == check), "{check}: {checks:?}");
    }
    let withheld: Vec<&Value> = sdk
        .iter()
        .filter(|r| access(r)["check"] == "answer_tool")
        .collect();
    assert_eq!(withheld.len(), 3, "chat, anthropic, streamed");
    for r in &withheld {
        assert_eq!(
            access(r)["answer_tools_denied"],
            json!(["exec_shell"]),
            "{r}"
        );
        let body = r["response_body"]["text"].as_str().unwrap_or_default();
        assert!(
            !body.contains("call_test_1") && !body.contains("toolu_test_1"),
            "{body}"
        );
    }

    // Envoy's stats, per rule.
    let stat = |name: &str| {
        stack
            .envoy
            .stat(&format!("wasmcustom.tracegate.access.{name}"))
            .unwrap()
    };
    assert_eq!(stat("analysts.denied"), 21);
    assert_eq!(stat("default.denied"), 2);
    assert_eq!(stat("analysts.answers_denied"), 2);
    assert_eq!(stat("streamers.answers_denied"), 1);
    assert_eq!(stat("streamers.denied"), 0);
}
