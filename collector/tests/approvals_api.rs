//! The reference approval service as a process: the filters' side on the
//! gRPC port, the approvers' side behind tokens (401 before anything is
//! looked up, 403 for someone who is not an approver or decides their own
//! request), quorums, the webhook, and approvals rebuilt after a restart.

use jwt_simple::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;

mod common;
use common::{field, Server};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "tracegate-approvals";
const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// Writes the approvers' configuration.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("serve.json");
    let secret = base64_std(SECRET);
    std::fs::write(
        &path,
        json!({"approvers": {
            "providers": [{"name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
                           "hmac_secret_base64": secret}],
            "display_claim": "email",
            "allow": [{"claim": "groups", "equals": "llm-approvers"}],
            "policies": [{"rule": "prod", "approvals_required": 2}]
        }})
        .to_string(),
    )
    .unwrap();
    path
}

fn base64_std(bytes: &[u8]) -> String {
    use jwt_simple::reexports::ct_codecs::{Base64, Encoder};
    Base64::encode_to_string(bytes).unwrap()
}

/// A token for `sub` in `groups`, issued by `iss`, valid for `valid_s`
/// (negative: expired that long ago).
fn token_with(sub: &str, groups: &[&str], iss: &str, valid_s: i64) -> String {
    let key = HS256Key::from_bytes(SECRET);
    let custom = json!({"groups": groups, "email": format!("{sub}@example.com")});
    let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(3600))
        .with_issuer(iss)
        .with_audience(AUDIENCE)
        .with_subject(sub);
    if valid_s < 0 {
        let now = Clock::now_since_epoch();
        claims.issued_at = Some(now - Duration::from_secs(7200));
        claims.expires_at = Some(now - Duration::from_secs((-valid_s) as u64));
    }
    key.authenticate(claims).unwrap()
}

fn token(sub: &str, groups: &[&str]) -> String {
    token_with(sub, groups, ISSUER, 3600)
}

/// Starts `serve --approvals`; returns it, the filters' base URL (the gRPC
/// port) and the approvers' base URL.
fn start(data: &Path, cfg: &Path, webhook: Option<&str>) -> (Server, String, String) {
    let cfg = cfg.to_string_lossy().into_owned();
    let mut args = vec!["--config", cfg.as_str(), "--approvals", "127.0.0.1:0"];
    if let Some(url) = webhook {
        args.extend(["--approval-webhook", url]);
    }
    let (server, line) = common::serve(data, &args);
    let machine = format!("http://{}/v1/approvals", field(&line, "grpc="));
    let human = format!("{}/v1/approvals", field(&line, "approvals="));
    (server, machine, human)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into()
}

fn create_body(rule: &str) -> Value {
    json!({
        "mode": "async",
        "requester": {"key": "https://idp.test|alice", "subject": "alice", "provider": "corp",
                      "issuer": ISSUER},
        "session_id": "s1", "request_id": "r1", "method": "POST",
        "path": "/v1/chat/completions", "digest": "sha256:ab", "risk": 120, "threshold": 100,
        "reasons": [{"kind": "rule", "name": rule, "risk": 120, "count": 1}],
        "excerpt": "deploy to production", "expires_in_s": 600, "grant_ttl_s": 600, "grant_uses": 1
    })
}

/// Reads one HTTP request from the listener; returns its body.
fn receive_one(listener: &TcpListener) -> String {
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    String::from_utf8(body).unwrap()
}

/// Status and JSON body of a call.
fn call(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = r.unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

fn decide(base: &str, id: &str, verb: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = agent().post(&format!("{base}/{id}/{verb}"));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    call(req.send_json(body))
}

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    call(req.call())
}

#[test]
fn approvers_are_authenticated_and_machine_calls_stay_on_the_grpc_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path());
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let (server, machine, human) = start(&data, &cfg, Some(&hook_url));
    let a = agent();

    // The filters' side: create on the gRPC port.
    let (status, created) = call(a.post(&machine).send_json(create_body("other")));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("apr_"), "{created}");
    assert_eq!(created["state"], "PENDING");
    assert_eq!(created["approvals_required"], 1);
    let notice: Value = serde_json::from_str(&receive_one(&hook)).unwrap();
    assert_eq!(notice["event"], "approval.pending");
    assert_eq!(notice["approval"]["id"], id.as_str());
    // ...and not on the approvers' side, nor the approvers' calls here.
    assert_eq!(
        call(a.post(&human).send_json(create_body("other"))).0,
        401,
        "the approvers' side authenticates first"
    );
    assert_eq!(
        decide(
            &machine,
            &id,
            "approve",
            Some(&token("bob", &["llm-approvers"])),
            json!({"reason": "ok"})
        )
        .0,
        404,
        "no approving on the machine side"
    );
    let (status, bad) = call(a.post(&machine).send("{"));
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("malformed"),
        "{bad}"
    );

    // The approvers' side: no token, a bad one, an expired one, another
    // issuer's: 401, even for an approval that does not exist.
    let bob = token("bob", &["llm-approvers"]);
    for (who, t) in [
        ("none", None),
        ("garbage", Some("not.a.token".to_string())),
        (
            "expired",
            Some(token_with("bob", &["llm-approvers"], ISSUER, -600)),
        ),
        (
            "other issuer",
            Some(token_with(
                "bob",
                &["llm-approvers"],
                "https://evil.test",
                3600,
            )),
        ),
    ] {
        for (status, body) in [
            decide(
                &human,
                &id,
                "approve",
                t.as_deref(),
                json!({"reason": "lgtm"}),
            ),
            decide(
                &human,
                "apr_nope",
                "deny",
                t.as_deref(),
                json!({"reason": "x"}),
            ),
            get(&human, t.as_deref()),
            get(&format!("{human}/{id}"), t.as_deref()),
        ] {
            assert_eq!(status, 401, "{who}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("token"),
                "{who}: {body}"
            );
        }
    }
    let elsewhere = human.replace("/v1/approvals", "/v1/anything");
    assert_eq!(get(&elsewhere, None).0, 401, "unknown paths too");
    assert_eq!(
        get(&elsewhere, Some(&token("bob", &["llm-approvers"]))).0,
        404
    );
    let (_, expired) = get(&human, Some(&token_with("bob", &[], ISSUER, -600)));
    assert_eq!(expired["reason"], "expired");
    // The attack from the issue: a typed approver name is no approver.
    let (status, body) = decide(
        &human,
        &id,
        "approve",
        None,
        json!({"approver": "bob", "reason": "lgtm"}),
    );
    assert_eq!((status, body["reason"].as_str()), (401, Some("missing")));

    // A valid token of someone who is not an approver: 403, everywhere.
    let eve = token("eve", &["staff"]);
    for (status, body) in [
        get(&human, Some(&eve)),
        decide(&human, &id, "approve", Some(&eve), json!({"reason": "ok"})),
    ] {
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("not an approver"),
            "{body}"
        );
    }
    // The requester, even in the approvers' group, decides nothing of theirs.
    let alice = token("alice", &["llm-approvers"]);
    for verb in ["approve", "deny"] {
        let (status, body) = decide(&human, &id, verb, Some(&alice), json!({"reason": "mine"}));
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("their own requests"),
            "{body}"
        );
    }
    // A name in the body is refused, not used.
    let (status, body) = decide(
        &human,
        &id,
        "approve",
        Some(&bob),
        json!({"approver": "carol", "reason": "ok"}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("remove `approver`"),
        "{body}"
    );
    let (status, body) = decide(&human, &id, "approve", Some(&bob), json!({"reason": " "}));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("a reason is required"))
    );
    assert_eq!(get(&format!("{human}/apr_nope"), Some(&bob)).0, 404);

    let (status, approved) = decide(&human, &id, "approve", Some(&bob), json!({"reason": "ok"}));
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "APPROVED");
    assert_eq!(approved["approver"], "bob@example.com");
    assert_eq!(approved["approvers"][0]["issuer"], ISSUER);
    assert_eq!(approved["approvers"][0]["subject"], "bob");
    let (status, list) = get(&format!("{human}?state=APPROVED"), Some(&bob));
    assert_eq!(status, 200);
    assert_eq!(list["approvals"][0]["id"], id.as_str());

    // A `prod` approval needs two distinct approvers.
    let (_, prod) = call(a.post(&machine).send_json(create_body("prod")));
    let prod_id = prod["id"].as_str().unwrap().to_string();
    assert_eq!(prod["approvals_required"], 2);
    let _ = receive_one(&hook);
    let (_, once) = decide(
        &human,
        &prod_id,
        "approve",
        Some(&bob),
        json!({"reason": "1"}),
    );
    assert_eq!(once["state"], "PENDING", "{once}");
    let (status, twice) = decide(
        &human,
        &prod_id,
        "approve",
        Some(&bob),
        json!({"reason": "2"}),
    );
    assert_eq!(status, 409, "{twice}");
    let redeem = json!({"requester": {"key": "https://idp.test|alice", "subject": "alice",
                                      "provider": "corp", "issuer": ISSUER},
                        "digest": "sha256:ab"});
    let (status, early) = call(
        a.post(&format!("{machine}/{prod_id}/redeem"))
            .send_json(&redeem),
    );
    assert_eq!(status, 409, "not granted with one approval: {early}");
    let carol = token("carol", &["llm-approvers"]);
    let (_, done) = decide(
        &human,
        &prod_id,
        "approve",
        Some(&carol),
        json!({"reason": "2"}),
    );
    assert_eq!(done["state"], "APPROVED", "{done}");
    assert_eq!(done["approver"], "bob@example.com, carol@example.com");

    // Restart: approvals are rebuilt from the store's events.
    drop(server);
    let (_server, machine, human) = start(&data, &cfg, None);
    let (_, again) = get(&format!("{human}/{id}"), Some(&bob));
    assert_eq!(again["state"], "APPROVED", "{again}");
    assert_eq!(again["approvers"][0]["subject"], "bob");
    let events: Vec<&str> = again["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "approved"]);
    let (_, prod_again) = get(&format!("{human}/{prod_id}"), Some(&carol));
    assert_eq!(prod_again["approvers"].as_array().unwrap().len(), 2);
    let (status, _) = call(a.post(&format!("{machine}/{id}/redeem")).send_json(&redeem));
    assert_eq!(status, 200);
}

#[test]
fn approvals_need_a_configuration_naming_the_approvers() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--approvals",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--approvals needs a configuration file"),
        "{err}"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"approvers": {"providers": [], "allow": [], "quorum": 2}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--grpc", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("field `approvers.quorum`: unknown field"),
        "{err}"
    );
}
