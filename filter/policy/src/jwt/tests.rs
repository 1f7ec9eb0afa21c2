//! Verification against tokens minted by jwcrypto (tests/clients/jwt_mint.py
//! `vectors`), an implementation independent of jwt-simple.

use super::verify::{Authenticator, Decision, Extracted};
use super::{identity_record, JwtConfig, Reason};
use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const VECTORS: &str = include_str!("testdata/vectors.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

fn now_ms() -> u64 {
    vectors()["now"].as_u64().unwrap() * 1000
}

fn token(name: &str) -> Extracted {
    Extracted {
        source: 0,
        token: vectors()["tokens"][name].as_str().unwrap().to_string(),
    }
}

fn provider(extra: Value) -> Value {
    let v = vectors();
    let mut p = json!({
        "name": "idp",
        "issuer": v["issuer"],
        "audiences": [v["audience"]],
        "jwks": v["jwks"],
    });
    for (k, val) in extra.as_object().unwrap() {
        if val.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = val.clone();
        }
    }
    p
}

fn auth_with(top: Value, p: Value) -> Authenticator {
    let mut c = json!({ "providers": [p] });
    for (k, v) in top.as_object().unwrap() {
        c[k] = v.clone();
    }
    let config: JwtConfig = serde_json::from_value(c).unwrap();
    Authenticator::new(&config).unwrap()
}

fn auth() -> Authenticator {
    auth_with(json!({}), provider(json!({})))
}

fn rejection(a: &mut Authenticator, name: &str) -> Reason {
    match a.decide(Some(&token(name)), now_ms(), true) {
        Decision::Rejected(r) => r.reason,
        other => panic!("{name}: expected a rejection, got {other:?}"),
    }
}

fn verified(a: &mut Authenticator, name: &str) -> std::sync::Arc<super::Identity> {
    match a.decide(Some(&token(name)), now_ms(), true) {
        Decision::Verified { identity, .. } => identity,
        other => panic!("{name}: expected verified, got {other:?}"),
    }
}

#[test]
fn every_asymmetric_algorithm_verifies() {
    let mut a = auth();
    for name in [
        "rs256", "rs384", "rs512", "ps256", "ps384", "ps512", "es256", "es384", "eddsa",
    ] {
        let id = verified(&mut a, name);
        assert_eq!(id.subject, "alice", "{name}");
        assert_eq!(id.issuer, "https://idp.test");
        assert_eq!(id.algorithm.to_lowercase(), name);
    }
}

#[test]
fn hmac_needs_a_secret_and_then_verifies() {
    // Without a secret HS256 is not even an allowed algorithm.
    assert_eq!(rejection(&mut auth(), "hs256"), Reason::AlgorithmNotAllowed);
    let secret = vectors()["hmac_secret_base64"].clone();
    let mut a = auth_with(
        json!({}),
        provider(json!({"jwks": null, "hmac_secret_base64": secret})),
    );
    verified(&mut a, "hs256");
    verified(&mut a, "hs512");
    assert_eq!(rejection(&mut a, "es256"), Reason::AlgorithmNotAllowed);
}

#[test]
fn refusals_name_their_reason() {
    let mut a = auth();
    for (name, reason) in [
        ("expired", Reason::Expired),
        ("not_yet_valid", Reason::NotYetValid),
        ("issued_in_future", Reason::NotYetValid),
        ("wrong_issuer", Reason::UnknownIssuer),
        ("no_issuer", Reason::UnknownIssuer),
        ("wrong_audience", Reason::WrongAudience),
        ("no_audience", Reason::WrongAudience),
        ("no_exp", Reason::Claims),
        ("bad_signature", Reason::BadSignature),
        ("tampered_payload", Reason::BadSignature),
        ("alg_none", Reason::AlgorithmNotAllowed),
        ("key_confusion", Reason::AlgorithmNotAllowed),
        ("unknown_kid", Reason::UnknownKid),
        ("kid_of_other_key", Reason::BadSignature),
    ] {
        assert_eq!(rejection(&mut a, name), reason, "{name}");
    }
}

#[test]
fn key_confusion_fails_even_where_hmac_is_allowed() {
    let secret = vectors()["hmac_secret_base64"].clone();
    let mut a = auth_with(json!({}), provider(json!({"hmac_secret_base64": secret})));
    assert_eq!(rejection(&mut a, "key_confusion"), Reason::BadSignature);
    verified(&mut a, "rs256");
}

#[test]
fn clock_skew_is_honoured() {
    // exp is 30 s before "now": inside the default 60 s, outside 10 s.
    verified(&mut auth(), "expired_within_skew");
    let mut strict = auth_with(json!({}), provider(json!({"clock_skew_s": 10})));
    assert_eq!(
        rejection(&mut strict, "expired_within_skew"),
        Reason::Expired
    );
}

#[test]
fn audience_lists_and_tokens_without_kid() {
    let mut a = auth();
    verified(&mut a, "aud_list");
    let id = verified(&mut a, "no_kid");
    assert_eq!(id.key_id, "ec256-1", "the key that verified it");
}

#[test]
fn expiration_may_be_optional() {
    let mut a = auth_with(json!({}), provider(json!({"require_expiration": false})));
    assert_eq!(verified(&mut a, "no_exp").expires_at, None);
}

#[test]
fn required_claims_exact_one_of_scope_and_nested() {
    let mut a = auth_with(
        json!({}),
        provider(json!({"required_claims": {"groups": ["sec", "ops"]}})),
    );
    verified(&mut a, "rs256");
    assert_eq!(rejection(&mut a, "groups_other"), Reason::Claims);
    assert_eq!(rejection(&mut a, "es256"), Reason::Claims, "claim missing");

    let mut a = auth_with(
        json!({}),
        provider(json!({"required_claims": {"scope": "llm:invoke"}})),
    );
    verified(&mut a, "es256");

    let mut a = auth_with(
        json!({}),
        provider(json!({"required_claims": {"realm.roles": "admin", "tier": [2, 3]}})),
    );
    verified(&mut a, "nested_claim");
}

#[test]
fn claims_are_recorded_and_copied_to_headers() {
    let mut a = auth_with(
        json!({}),
        provider(json!({
            "record_claims": ["email", "groups", "absent"],
            "claim_to_headers": [{"claim": "sub", "header": "x-user"},
                                 {"claim": "groups", "header": "x-groups"}]
        })),
    );
    let t = token("rs256");
    let d = a.decide(Some(&t), now_ms(), true);
    let Decision::Verified { identity, .. } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(
        identity.claims,
        vec![
            ("email".to_string(), "alice@example.com".to_string()),
            ("groups".to_string(), r#"["ml","sec"]"#.to_string())
        ]
    );
    let changes = a.header_changes(&d, Some(&t));
    assert_eq!(changes.remove, ["x-user", "x-groups", "authorization"]);
    assert_eq!(
        changes.set,
        vec![
            ("x-user".to_string(), "alice".to_string()),
            ("x-groups".to_string(), r#"["ml","sec"]"#.to_string())
        ]
    );
    // A request without a token still loses forged claim headers.
    let none = a.header_changes(&Decision::Anonymous, None);
    assert_eq!(none.remove, ["x-user", "x-groups"]);
    assert!(none.set.is_empty());

    let rec = identity_record(&d).unwrap();
    assert_eq!(rec.subject, "alice");
    assert_eq!(rec.claims["email"], "alice@example.com");
}

#[test]
fn forward_keeps_the_token() {
    let mut a = auth_with(json!({}), provider(json!({"forward": true})));
    let t = token("es256");
    let d = a.decide(Some(&t), now_ms(), true);
    assert!(a.header_changes(&d, Some(&t)).remove.is_empty());
}

#[test]
fn cache_answers_repeats_until_expiry() {
    let mut a = auth();
    let t = token("es256");
    assert!(matches!(
        a.decide(Some(&t), now_ms(), true),
        Decision::Verified { cached: false, .. }
    ));
    assert!(matches!(
        a.decide(Some(&t), now_ms(), true),
        Decision::Verified { cached: true, .. }
    ));
    assert_eq!(a.cache_len(), 1);
    // exp 1_700_003_600 plus 60 s skew; a second later it is expired.
    let later = 1_700_003_661_000;
    match a.decide(Some(&t), later, true) {
        Decision::Rejected(r) => assert_eq!(r.reason, Reason::Expired),
        other => panic!("{other:?}"),
    }
    let mut off = auth_with(json!({"cache_entries": 0}), provider(json!({})));
    for _ in 0..2 {
        assert!(matches!(
            off.decide(Some(&t), now_ms(), true),
            Decision::Verified { cached: false, .. }
        ));
    }
}

#[test]
fn refused_tokens_are_remembered_so_a_repeat_costs_no_signature_check() {
    let mut a = auth();
    let first = match a.decide(Some(&token("bad_signature")), now_ms(), true) {
        Decision::Rejected(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((first.reason, first.cached), (Reason::BadSignature, false));
    // The sub it claims is kept, unverified, for counting refusals.
    assert_eq!(first.claimed_subject.as_deref(), Some("alice"));
    let record = super::identity_record(&Decision::Rejected(first.clone())).unwrap();
    assert_eq!(record.claimed_subject, "alice");
    assert_eq!(record.subject, "", "no subject: nothing verified");
    assert!(record.claims.is_empty(), "nothing else of it");
    match a.decide(Some(&token("bad_signature")), now_ms(), true) {
        Decision::Rejected(r) => {
            assert!(r.cached, "answered from the negative cache");
            assert_eq!((r.reason, &r.detail), (first.reason, &first.detail));
            assert_eq!(r.claimed_subject, first.claimed_subject);
        }
        other => panic!("{other:?}"),
    }
    // Refusals that keys cannot undo are kept; those time or a fetch may
    // undo are not.
    for name in [
        "expired",
        "wrong_audience",
        "no_exp",
        "not_yet_valid",
        "unknown_kid",
    ] {
        rejection(&mut a, name);
    }
    assert_eq!(
        a.negative_cache_len(),
        4,
        "bad_signature, expired, wrong_audience, no_exp"
    );
    for name in ["not_yet_valid", "unknown_kid", "alg_none"] {
        match a.decide(Some(&token(name)), now_ms(), true) {
            Decision::Rejected(r) => assert!(!r.cached, "{name}"),
            other => panic!("{other:?}"),
        }
    }
    // A valid token is never refused for being like a refused one.
    verified(&mut a, "es256");

    let mut off = auth_with(json!({"negative_cache_entries": 0}), provider(json!({})));
    for _ in 0..2 {
        assert!(matches!(
            off.decide(Some(&token("bad_signature")), now_ms(), true),
            Decision::Rejected(r) if !r.cached
        ));
    }
    assert_eq!(off.negative_cache_len(), 0);
}

#[test]
fn negative_cache_is_bounded_and_emptied_when_keys_change() {
    let mut a = auth_with(json!({"negative_cache_entries": 2}), provider(json!({})));
    for name in ["bad_signature", "expired", "wrong_audience"] {
        rejection(&mut a, name);
    }
    assert_eq!(a.negative_cache_len(), 2);

    let mut a = remote();
    let now = now_ms();
    a.due_fetches(now);
    a.fetched(0, Ok(vectors()["jwks"].to_string().as_bytes()), now)
        .unwrap();
    // Signed by rsa-2 under rsa-1's kid: refused, and remembered...
    assert_eq!(rejection(&mut a, "kid_of_other_key"), Reason::BadSignature);
    assert_eq!(a.negative_cache_len(), 1);
    // ...until the key set changes, which may make it good.
    let later = now + 60_000;
    assert_eq!(a.due_fetches(later).len(), 1);
    let rotated = vectors()["jwks_rotated"].to_string();
    assert!(a.fetched(0, Ok(rotated.as_bytes()), later).unwrap().changed);
    assert_eq!(a.negative_cache_len(), 0);
}

#[test]
fn keys_fetched_directly_need_no_cluster() {
    use super::KeySource;
    let direct = |remote: Value| {
        let c: JwtConfig = serde_json::from_value(json!({"providers": [
            provider(json!({"jwks": null, "remote_jwks": remote}))]}))
        .unwrap();
        Authenticator::with_key_source(&c, KeySource::Direct)
    };
    let mut a = direct(json!({"uri": "https://idp.test/keys"})).unwrap();
    let due = a.due_fetches(now_ms());
    assert_eq!(due[0].uri, "https://idp.test/keys");
    assert_eq!(due[0].cluster, "");
    let e = direct(json!({"uri": "https://idp.test/keys", "cluster": "idp"})).unwrap_err();
    assert_eq!(e.field, "jwt.providers[0].remote_jwks.cluster", "{e}");
    // The filter needs its cluster.
    let c: JwtConfig = serde_json::from_value(json!({"providers": [
        provider(json!({"jwks": null, "remote_jwks": {"uri": "https://idp.test/keys"}}))]}))
    .unwrap();
    let e = Authenticator::new(&c).unwrap_err();
    assert!(e.message.contains("Envoy cluster"), "{e}");
}

#[test]
fn missing_tokens_and_extraction() {
    let mut a = auth();
    assert!(matches!(
        a.decide(None, now_ms(), true),
        Decision::Rejected(r) if r.reason == Reason::Missing
    ));
    let mut optional = auth_with(json!({"required": false}), provider(json!({})));
    assert!(matches!(
        optional.decide(None, now_ms(), true),
        Decision::Anonymous
    ));
    // A present but bad token is refused even when tokens are optional.
    assert_eq!(rejection(&mut optional, "expired"), Reason::Expired);

    let header =
        |v: &'static str| move |name: &str| (name == "authorization").then(|| v.to_string());
    assert_eq!(a.extract(header("Bearer abc")).unwrap().token, "abc");
    assert_eq!(a.extract(header("bearer   abc ")).unwrap().token, "abc");
    assert_eq!(a.extract(header("Basic abc")), None);
    assert_eq!(a.extract(|_: &str| None), None);

    let custom = auth_with(
        json!({}),
        provider(json!({"from_header": {"name": "x-api-key"}})),
    );
    let got = custom.extract(|n: &str| (n == "x-api-key").then(|| "tok".to_string()));
    assert_eq!(got.unwrap().token, "tok");
}

#[test]
fn malformed_and_oversized_tokens() {
    let mut a = auth();
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!.??.##",
        "e30.e30.",
        "W10.e30.sig",
    ] {
        let t = Extracted {
            source: 0,
            token: bad.to_string(),
        };
        match a.decide(Some(&t), now_ms(), true) {
            Decision::Rejected(r) => assert!(
                matches!(r.reason, Reason::Malformed | Reason::AlgorithmNotAllowed),
                "{bad}: {r:?}"
            ),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let big = Extracted {
        source: 0,
        token: "a".repeat(9000),
    };
    assert!(matches!(
        a.decide(Some(&big), now_ms(), true),
        Decision::Rejected(r) if r.reason == Reason::TooLarge
    ));
}

fn remote() -> Authenticator {
    auth_with(
        json!({}),
        provider(json!({"jwks": null, "remote_jwks": {
            "uri": "https://idp.test:8443/keys?x=1", "cluster": "idp",
            "unknown_kid_refetch_interval_ms": 1000, "retry_interval_ms": 500,
            "cache_duration_s": 60
        }})),
    )
}

#[test]
fn remote_keys_are_fetched_before_use() {
    let mut a = remote();
    let now = now_ms();
    let due = a.due_fetches(now);
    assert_eq!(due.len(), 1, "fetched as soon as possible");
    assert_eq!(due[0].authority, "idp.test:8443");
    assert_eq!(due[0].path, "/keys?x=1");
    assert!(a.due_fetches(now).is_empty(), "one fetch in flight");

    // A request meanwhile waits for the keys...
    assert!(matches!(
        a.decide(Some(&token("rs256")), now, true),
        Decision::NeedKeys { provider: 0 }
    ));
    let jwks = vectors()["jwks"].to_string();
    let report = a.fetched(0, Ok(jwks.as_bytes()), now + 5).unwrap();
    assert_eq!(report.keys, 9, "6 RSA algorithms, ES256, ES384, EdDSA");
    // ...and is decided again after it.
    verified(&mut a, "rs256");
}

#[test]
fn remote_fetch_failure_fails_closed() {
    let mut a = remote();
    let now = now_ms();
    a.due_fetches(now);
    a.fetched(0, Err("HTTP 503".into()), now).unwrap_err();
    match a.decide(Some(&token("rs256")), now + 1, true) {
        Decision::Rejected(r) => {
            assert_eq!(r.reason, Reason::JwksUnavailable);
            assert!(r.detail.contains("HTTP 503"), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(a.due_fetches(now + 100).is_empty(), "waits retry_interval");
    assert_eq!(a.due_fetches(now + 500).len(), 1);
    a.fetched(0, Ok(b"{\"keys\": 5}"), now + 501).unwrap_err();
    // Not JSON, no keys: still closed.
    assert!(matches!(
        a.decide(Some(&token("rs256")), now + 600, false),
        Decision::Rejected(r) if r.reason == Reason::JwksUnavailable
    ));
}

#[test]
fn unknown_kid_refetches_at_a_limited_rate_and_picks_up_rotation() {
    let mut a = remote();
    let now = now_ms();
    a.due_fetches(now);
    let jwks = vectors()["jwks"].to_string();
    a.fetched(0, Ok(jwks.as_bytes()), now).unwrap();
    verified(&mut a, "rs256");
    assert_eq!(a.cache_len(), 1);

    // rsa-2 is not published yet: one refetch is asked for...
    let t = token("unknown_kid");
    assert!(matches!(
        a.decide(Some(&t), now, true),
        Decision::NeedKeys { .. }
    ));
    assert_eq!(a.due_fetches(now).len(), 1);
    a.fetched(0, Ok(jwks.as_bytes()), now + 10).unwrap();
    // ...after which the waiting request is refused, and so is the next one
    // within the interval, without another fetch.
    assert!(
        matches!(a.decide(Some(&t), now + 10, false), Decision::Rejected(r) if r.reason == Reason::UnknownKid)
    );
    assert!(
        matches!(a.decide(Some(&t), now + 20, true), Decision::Rejected(r) if r.reason == Reason::UnknownKid)
    );
    assert!(a.due_fetches(now + 20).is_empty());

    // The issuer rotates: rsa-1 out, rsa-2 in.
    let later = now + 1000;
    assert!(matches!(
        a.decide(Some(&t), later, true),
        Decision::NeedKeys { .. }
    ));
    assert_eq!(a.due_fetches(later).len(), 1);
    let rotated = vectors()["jwks_rotated"].to_string();
    let report = a.fetched(0, Ok(rotated.as_bytes()), later).unwrap();
    assert!(report.changed);
    assert_eq!(
        a.cache_len(),
        0,
        "tokens of a withdrawn key leave the cache"
    );
    verified(&mut a, "unknown_kid");
    assert_eq!(rejection(&mut a, "rs256"), Reason::UnknownKid);
}

#[test]
fn remote_keys_are_refreshed_after_cache_duration() {
    let mut a = remote();
    let now = now_ms();
    a.due_fetches(now);
    a.fetched(0, Ok(vectors()["jwks"].to_string().as_bytes()), now)
        .unwrap();
    assert!(a.due_fetches(now + 59_000).is_empty());
    assert_eq!(a.due_fetches(now + 60_000).len(), 1);
    // A failed refresh keeps the keys in use.
    a.fetched(0, Err("timeout".into()), now + 60_001)
        .unwrap_err();
    verified(&mut a, "rs256");
}

#[test]
fn rejections_are_rfc6750_and_sdk_readable() {
    let r = super::Rejection::new(Reason::Expired, "token \"x\" has expired\n");
    assert_eq!(
        r.www_authenticate(),
        "Bearer realm=\"tracegate\", error=\"invalid_token\", error_description=\"token 'x' has expired?\""
    );
    let body: Value = serde_json::from_str(&r.body()).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["reason"], "expired");
    let missing = super::Rejection::new(Reason::Missing, "no bearer token");
    assert_eq!(missing.www_authenticate(), "Bearer realm=\"tracegate\"");
}

#[test]
fn configuration_errors_name_the_field() {
    let v = vectors();
    let check = |p: Value, field: &str, needle: &str| {
        let c: JwtConfig = serde_json::from_value(json!({"providers": [p]})).unwrap();
        let e = Authenticator::new(&c).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(needle), "{e}");
    };
    check(
        provider(json!({"audiences": []})),
        "jwt.providers[0].audiences",
        "aud",
    );
    check(
        provider(json!({"algorithms": ["none"]})),
        "jwt.providers[0].algorithms",
        "never",
    );
    check(
        provider(json!({"algorithms": ["HS256"]})),
        "jwt.providers[0].algorithms",
        "hmac_secret_base64",
    );
    check(
        provider(json!({"algorithms": ["RS1"]})),
        "jwt.providers[0].algorithms",
        "unknown algorithm",
    );
    check(
        provider(json!({"hmac_secret_base64": "c2hvcnQ="})),
        "jwt.providers[0].hmac_secret_base64",
        "too short",
    );
    check(
        provider(json!({"jwks": {"keys": []}})),
        "jwt.providers[0].jwks",
        "no usable key",
    );
    check(
        provider(json!({"jwks": "{not json"})),
        "jwt.providers[0].jwks",
        "not JSON",
    );
    check(
        provider(json!({"jwks": null})),
        "jwt.providers[0]",
        "no keys",
    );
    check(
        provider(json!({"remote_jwks": {"uri": "https://x/k", "cluster": "c"}})),
        "jwt.providers[0]",
        "not both",
    );
    check(
        provider(json!({"jwks": null, "remote_jwks": {"uri": "ftp://x/k", "cluster": "c"}})),
        "jwt.providers[0].remote_jwks.uri",
        "http(s)",
    );
    check(
        provider(json!({"claim_to_headers": [{"claim": "sub", "header": "authorization"}]})),
        "jwt.providers[0].claim_to_headers[0].header",
        "cannot carry",
    );
    check(
        provider(json!({"required_claims": {"g": []}})),
        "jwt.providers[0].required_claims.g",
        "empty",
    );
    check(
        provider(json!({"issuer": ""})),
        "jwt.providers[0].issuer",
        "empty",
    );

    let e = crate::Policy::compile(br#"{"jwt": {"providers": []}}"#).unwrap_err();
    assert_eq!(e.field, "jwt.providers");
    let e = crate::Policy::compile(br#"{"jwt": {"providers": [{"name": "a"}]}}"#).unwrap_err();
    assert_eq!(e.field, "jwt.providers[0]");
    assert!(e.message.contains("missing field `issuer`"), "{e}");
    let two = json!({"jwt": {"providers": [provider(json!({})), provider(json!({"name": "b"}))]}});
    let e = crate::Policy::compile(two.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "jwt.providers[1].issuer", "{e}");
    let _ = v;
}

#[test]
fn several_providers_are_chosen_by_issuer() {
    let v = vectors();
    let other = json!({"name": "other", "issuer": "https://evil.test", "audiences": [v["audience"]],
                       "jwks": v["jwks_rotated"]});
    let c: JwtConfig =
        serde_json::from_value(json!({"providers": [provider(json!({})), other]})).unwrap();
    let mut a = Authenticator::new(&c).unwrap();
    assert_eq!(verified(&mut a, "rs256").provider, "idp");
    // wrong_issuer is signed by ec256, which "other" also publishes.
    assert_eq!(verified(&mut a, "wrong_issuer").provider, "other");
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any text as a token: a decision, never a panic, never a pass.
        #[test]
        fn arbitrary_tokens_are_refused(token in "\\PC{0,300}", dots in 0usize..4) {
            let mut a = auth();
            let token = format!("{token}{}", ".".repeat(dots));
            let t = Extracted { source: 0, token };
            let d = a.decide(Some(&t), now_ms(), true);
            prop_assert!(matches!(d, Decision::Rejected(_)), "{:?}", d);
        }

        /// Changing any character of the signed part (header or payload)
        /// of a valid token makes it fail, whatever the algorithm.
        #[test]
        fn edited_tokens_never_verify(
            name in prop::sample::select(vec!["rs256", "ps384", "es256", "es384", "eddsa"]),
            at in any::<prop::sample::Index>(),
            with in prop::sample::select(b"AQgw_-.=x".to_vec()),
        ) {
            let mut a = auth_with(json!({"cache_entries": 0}), provider(json!({})));
            let good = token(name).token;
            let signed_len = good.rfind('.').unwrap();
            let i = at.index(signed_len);
            let mut bytes = good.clone().into_bytes();
            prop_assume!(bytes[i] != with);
            bytes[i] = with;
            let t = Extracted { source: 0, token: String::from_utf8(bytes).unwrap() };
            let d = a.decide(Some(&t), now_ms(), true);
            prop_assert!(matches!(d, Decision::Rejected(_)), "{} at {}: {:?}", name, i, d);
        }
    }
}
