//! Caller identity through the real Envoy: tokens minted by jwcrypto, keys
//! served by a JWKS endpoint behind an Envoy cluster, identities in the
//! collector's records.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::jwt::{claims, unix_now, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{poll, run_client, Stack};

fn remote_provider() -> Value {
    json!({
        "name": "corp",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "remote_jwks": {
            "uri": "http://idp.tracegate.test/jwks.json",
            "cluster": "idp",
            "timeout_ms": 1000,
            "unknown_kid_refetch_interval_ms": 200,
            "retry_interval_ms": 200
        },
        "record_claims": ["email"],
        "claim_to_headers": [{"claim": "sub", "header": "x-tracegate-subject"}]
    })
}

fn plugin_config(providers: Value, required: bool) -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "jwt": {"required": required, "providers": providers}
    })
}

struct Answer {
    status: u16,
    www_authenticate: String,
    body: Value,
}

/// POSTs a chat request with these extra headers; any status is an answer.
fn chat(stack: &Stack, session: &str, headers: &[(&str, &str)]) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .post(stack.envoy.url("/v1/chat/completions"))
        .header("x-session-id", session);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req
        .send_json(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = resp.body_mut().read_json().unwrap_or(Value::Null);
    Answer {
        status: resp.status().as_u16(),
        www_authenticate,
        body,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn tokens_are_verified_and_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["rsa", "ec256", "ed25519"]).unwrap();
    let mut stack =
        Stack::start_with_jwks(&plugin_config(json!([remote_provider()]), true), &jwks).unwrap();
    let now = unix_now();
    let with = |over: Value| {
        let mut c = claims("alice");
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };

    // Valid tokens of three algorithms pass, the token does not reach the
    // upstream, and a forged claim header is replaced by the verified claim.
    let good = keys
        .mint(&[
            json!({"key": "rsa", "alg": "RS256", "claims": with(json!({"email": "alice@corp.test"}))}),
            json!({"key": "ec256", "alg": "ES256", "claims": with(json!({"sub": "bob"}))}),
            json!({"key": "ed25519", "alg": "EdDSA", "claims": with(json!({"sub": "carol"}))}),
        ])
        .unwrap();
    for (token, sub) in good.iter().zip(["alice", "bob", "carol"]) {
        let auth = bearer(token);
        let a = chat(
            &stack,
            "identity-ok",
            &[("authorization", &auth), ("x-tracegate-subject", "admin")],
        );
        assert_eq!(a.status, 200, "{sub}: {}", a.body);
        let seen = stack.upstream.received().unwrap();
        let headers = &seen.last().unwrap()["headers"];
        assert_eq!(headers["x-tracegate-subject"], sub, "{headers}");
        assert!(
            headers.get("authorization").is_none(),
            "token stripped: {headers}"
        );
    }
    // The same token again is answered from the cache.
    assert_eq!(
        chat(
            &stack,
            "identity-ok",
            &[("authorization", &bearer(&good[0]))]
        )
        .status,
        200
    );

    // Refusals: (name, token, reason).
    let specs = [
        (
            "expired",
            json!({"key": "ec256", "alg": "ES256", "claims": with(json!({"iat": now - 7200, "exp": now - 3600}))}),
        ),
        (
            "not yet valid",
            json!({"key": "ec256", "alg": "ES256", "claims": with(json!({"nbf": now + 3600}))}),
        ),
        (
            "wrong issuer",
            json!({"key": "ec256", "alg": "ES256", "claims": with(json!({"iss": "https://evil.test"}))}),
        ),
        (
            "wrong audience",
            json!({"key": "ec256", "alg": "ES256", "claims": with(json!({"aud": "another-service"}))}),
        ),
        (
            "bad signature",
            json!({"key": "rsa", "alg": "RS256", "claims": with(json!({})), "tamper": "signature"}),
        ),
        (
            "tampered payload",
            json!({"key": "ed25519", "alg": "EdDSA", "claims": with(json!({})), "tamper": "payload"}),
        ),
        (
            "alg none",
            json!({"unsigned": true, "claims": with(json!({}))}),
        ),
        (
            "RS256 to HS256 key confusion",
            json!({"hmac_with_public_pem_of": "rsa", "claims": with(json!({}))}),
        ),
        (
            "unknown kid",
            json!({"key": "rsa2", "alg": "RS256", "claims": with(json!({}))}),
        ),
        (
            "oversized",
            json!({"key": "ec256", "alg": "ES256", "claims": with(json!({})), "pad_to": 10000}),
        ),
    ];
    let tokens = keys
        .mint(&specs.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>())
        .unwrap();
    let mut cases: Vec<(&str, String, &str)> = specs
        .iter()
        .zip(&tokens)
        .map(|((name, _), t)| (*name, bearer(t), ""))
        .collect();
    let reasons = [
        "expired",
        "not_yet_valid",
        "unknown_issuer",
        "wrong_audience",
        "bad_signature",
        "bad_signature",
        "algorithm_not_allowed",
        "algorithm_not_allowed",
        "unknown_kid",
        "too_large",
    ];
    for (case, reason) in cases.iter_mut().zip(reasons) {
        case.2 = reason;
    }
    cases.push(("malformed", "Bearer not.a.jwt".into(), "malformed"));
    cases.push(("garbage", "Bearer ???".into(), "malformed"));
    let received_before = stack.upstream.received().unwrap().len();
    for (name, auth, reason) in &cases {
        let a = chat(&stack, "identity-refused", &[("authorization", auth)]);
        assert_eq!(a.status, 401, "{name}: {}", a.body);
        assert_eq!(a.body["error"]["reason"], *reason, "{name}: {}", a.body);
        assert_eq!(a.body["error"]["type"], "authentication_error");
        assert!(
            a.www_authenticate.starts_with(
                "Bearer realm=\"tracegate\", error=\"invalid_token\", error_description=\""
            ),
            "{name}: {}",
            a.www_authenticate
        );
    }
    // No token at all: 401 without an error code (RFC 6750 3.1).
    let a = chat(&stack, "identity-refused", &[]);
    assert_eq!(a.status, 401);
    assert_eq!(a.www_authenticate, "Bearer realm=\"tracegate\"");
    assert_eq!(a.body["error"]["reason"], "missing");
    let a = chat(
        &stack,
        "identity-refused",
        &[("authorization", "Basic YWxpY2U6cHc=")],
    );
    assert_eq!(a.body["error"]["reason"], "missing");
    assert_eq!(
        stack.upstream.received().unwrap().len(),
        received_before,
        "nothing refused reached the upstream"
    );

    // Stats count verifications, cache hits and each reason.
    let stat = |name: &str| {
        stack
            .envoy
            .stat(&format!("wasmcustom.tracegate.jwt.{name}"))
            .unwrap()
    };
    assert_eq!(stat("verified"), 4);
    assert!(stat("cache_hits") >= 1, "cache hits {}", stat("cache_hits"));
    assert_eq!(stat("rejected.expired"), 1);
    assert_eq!(stat("rejected.bad_signature"), 2);
    assert_eq!(stat("rejected.algorithm_not_allowed"), 2);
    assert_eq!(stat("rejected.malformed"), 2);
    assert_eq!(stat("rejected.missing"), 2);

    // Every record carries the identity; refused ones say why.
    let ok = stack.collector.wait_for_records("identity-ok", 4).unwrap();
    let subjects: Vec<&str> = ok
        .iter()
        .map(|r| r["identity"]["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["alice", "bob", "carol", "alice"]);
    assert!(ok.iter().all(|r| r["identity"]["status"] == "verified"));
    assert_eq!(ok[0]["identity"]["claims"]["email"], "alice@corp.test");
    assert_eq!(ok[0]["identity"]["algorithm"], "RS256");
    assert_eq!(ok[0]["identity"]["key_id"], "rsa-1");
    let refused = stack
        .collector
        .wait_for_records("identity-refused", cases.len() + 2)
        .unwrap();
    for (r, (name, _, reason)) in refused.iter().zip(&cases) {
        assert_eq!(r["status"], 401, "{name}");
        assert_eq!(r["identity"]["status"], "rejected", "{name}");
        assert_eq!(r["identity"]["rejection_reason"], *reason, "{name}");
    }
    // Nothing unverified is recorded as an identity: no subject on refused
    // records; the sub a refused JWT claims is kept apart, for alerts.
    assert!(refused
        .iter()
        .all(|r| r["identity"].get("subject").is_none()));
    assert!(
        refused
            .iter()
            .any(|r| r["identity"]["claimed_subject"] == "alice"),
        "{refused:?}"
    );

    let timeline = stack.collector.cli(&["replay", "identity-ok"]).unwrap();
    assert!(
        timeline.contains("identity: alice (provider corp, iss https://idp.tracegate.test, RS256 kid rsa-1) email=alice@corp.test"),
        "{timeline}"
    );
    let sessions = stack.collector.cli(&["sessions"]).unwrap();
    assert!(
        sessions.contains("https://idp.tracegate.test|alice"),
        "{sessions}"
    );
}

#[test]
fn unknown_kid_refetches_and_a_rotation_is_picked_up_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let stack = Stack::start_with_jwks(
        &plugin_config(json!([remote_provider()]), true),
        &keys.jwks(&["rsa"]).unwrap(),
    )
    .unwrap();
    let old = keys
        .mint_one(json!({"key": "rsa", "alg": "RS256", "claims": claims("alice")}))
        .unwrap();
    let new = keys
        .mint_one(json!({"key": "rsa2", "alg": "RS256", "claims": claims("alice")}))
        .unwrap();
    assert_eq!(
        chat(&stack, "rotation", &[("authorization", &bearer(&old))]).status,
        200
    );

    // rsa-2 is not published yet: refused, after a refetch.
    let fetches = stack.upstream.jwks_fetches().unwrap();
    let a = chat(&stack, "rotation", &[("authorization", &bearer(&new))]);
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["reason"], "unknown_kid");
    assert_eq!(
        stack.upstream.jwks_fetches().unwrap(),
        fetches + 1,
        "one refetch"
    );

    // The issuer rotates to rsa-2. A request with the new kid is accepted once
    // the refetch interval (200 ms) has passed; Envoy keeps running.
    stack
        .upstream
        .publish_jwks(&keys.jwks(&["rsa2"]).unwrap())
        .unwrap();
    poll(
        "the rotated key to be used",
        Duration::from_secs(10),
        || {
            let a = chat(&stack, "rotation-poll", &[("authorization", &bearer(&new))]);
            Ok((a.status == 200).then_some(()))
        },
    )
    .unwrap();
    // The withdrawn key no longer verifies, cached or not.
    let a = chat(&stack, "rotation", &[("authorization", &bearer(&old))]);
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"]["reason"], "unknown_kid");
    assert!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.jwks.fetched")
            .unwrap()
            >= 3
    );
}

#[test]
fn jwks_endpoint_down_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let mut stack =
        Stack::start_with_idp_down(&plugin_config(json!([remote_provider()]), true)).unwrap();
    let token = keys
        .mint_one(json!({"key": "ec256", "alg": "ES256", "claims": claims("alice")}))
        .unwrap();
    // The first request may wait for the first fetch to fail; later ones are
    // refused at once while the retry interval runs.
    for _ in 0..3 {
        let a = chat(&stack, "idp-down", &[("authorization", &bearer(&token))]);
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.body["error"]["reason"], "jwks_unavailable", "{}", a.body);
        assert!(a.www_authenticate.contains("error=\"invalid_token\""));
    }
    assert!(stack.upstream.received().unwrap().is_empty());
    assert!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.jwks.fetch_failed")
            .unwrap()
            >= 1
    );
    let records = stack.collector.wait_for_records("idp-down", 3).unwrap();
    assert!(records
        .iter()
        .all(|r| r["identity"]["rejection_reason"] == "jwks_unavailable"));
}

#[test]
fn optional_tokens_inline_keys_hmac_and_several_providers() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let secret: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwt-keys.json")).unwrap())
            .unwrap();
    let providers = json!([
        {"name": "inline", "issuer": ISSUER, "audiences": [AUDIENCE],
         "jwks": keys.jwks(&["ec384"]).unwrap(), "forward": true},
        {"name": "service", "issuer": "https://svc.tracegate.test", "audiences": [AUDIENCE],
         "hmac_secret_base64": secret["hmac"]["k"], "from_header": {"name": "x-service-token"}}
    ]);
    let mut stack = Stack::start(&plugin_config(providers, false)).unwrap();
    let mut svc = claims("batch-job");
    svc["iss"] = json!("https://svc.tracegate.test");
    let t = keys
        .mint(&[
            json!({"key": "ec384", "alg": "ES384", "claims": claims("alice")}),
            json!({"key": "hmac", "alg": "HS256", "claims": svc}),
            json!({"key": "ec384", "alg": "ES384", "claims": claims("alice"), "tamper": "signature"}),
        ])
        .unwrap();

    assert_eq!(
        chat(&stack, "optional", &[]).status,
        200,
        "anonymous allowed"
    );
    assert_eq!(
        chat(&stack, "optional", &[("authorization", &bearer(&t[0]))]).status,
        200
    );
    let seen = stack.upstream.received().unwrap();
    assert_eq!(
        seen.last().unwrap()["headers"]["authorization"],
        bearer(&t[0]),
        "forward: true keeps the token"
    );
    assert_eq!(
        chat(&stack, "optional", &[("x-service-token", &t[1])]).status,
        200
    );
    let bad = chat(&stack, "optional", &[("authorization", &bearer(&t[2]))]);
    assert_eq!(bad.status, 401, "a bad token is refused even when optional");

    let records = stack.collector.wait_for_records("optional", 4).unwrap();
    let who: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let id = &r["identity"];
            (
                id["status"].as_str().unwrap().to_string(),
                id["provider"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("anonymous".into(), "".into()),
            ("verified".into(), "inline".into()),
            ("verified".into(), "service".into()),
            ("rejected".into(), "".into())
        ]
    );
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.jwt.anonymous")
            .unwrap(),
        1
    );
}

#[test]
fn openai_and_anthropic_sdks_authenticate_with_a_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let mut stack = Stack::start_with_jwks(
        &plugin_config(json!([remote_provider()]), true),
        &keys.jwks(&["ec256"]).unwrap(),
    )
    .unwrap();
    let now = unix_now();
    let mut old = claims("mallory");
    old["iat"] = json!(now - 7200);
    old["exp"] = json!(now - 3600);
    let t = keys
        .mint(&[
            json!({"key": "ec256", "alg": "ES256", "claims": claims("alice")}),
            json!({"key": "ec256", "alg": "ES256", "claims": old}),
        ])
        .unwrap();
    let url = stack.envoy.url("/v1");
    let stdout = run_client("sdk_identity.py", &[&url, "sdk-identity", &t[0], &t[1]]).unwrap();
    assert!(stdout.contains("tracegate: token has expired"), "{stdout}");
    assert!(
        stdout.contains("anthropic refused: tracegate: token has expired"),
        "{stdout}"
    );
    let records = stack.collector.wait_for_records("sdk-identity", 3).unwrap();
    assert_eq!(records[0]["identity"]["subject"], "alice");
    assert_eq!(records[1]["identity"]["rejection_reason"], "expired");
    assert_eq!(records[2]["path"], "/v1/messages");
    assert_eq!(records[2]["identity"]["rejection_reason"], "expired");
}
