//! The reference approval service as a process: its HTTP API, the webhook it
//! calls for a new pending approval, and approvals surviving a restart.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{field, Server};

/// Starts `serve --approvals`; returns it and the approval service's base URL.
fn start(data: &Path, webhook: Option<&str>) -> (Server, String) {
    let mut args = vec!["--approvals", "127.0.0.1:0"];
    if let Some(url) = webhook {
        args.extend(["--approval-webhook", url]);
    }
    let (server, line) = common::serve(data, &args);
    let url = field(&line, "approvals=").to_string();
    (server, format!("{url}/v1/approvals"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn create_body() -> Value {
    json!({
        "mode": "async",
        "requester": {"key": "https://idp|alice", "subject": "alice", "provider": "corp"},
        "session_id": "s1", "request_id": "r1", "method": "POST",
        "path": "/v1/chat/completions", "digest": "sha256:ab", "risk": 120, "threshold": 100,
        "reasons": [{"kind": "rule", "name": "prod", "risk": 120, "count": 1}],
        "excerpt": "deploy to production", "expires_in_s": 600, "grant_ttl_s": 600, "grant_uses": 1
    })
}

/// Reads one HTTP request from the listener; returns its body.
fn receive_one(listener: &TcpListener) -> String {
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
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

#[test]
fn api_webhook_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let (server, base) = start(&data, Some(&hook_url));
    let a = agent();

    let mut created = a.post(&base).send_json(create_body()).unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.body_mut().read_json().unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("apr_"), "{created}");
    assert_eq!(created["state"], "PENDING");

    // The webhook hears of it.
    let notice: Value = serde_json::from_str(&receive_one(&hook)).unwrap();
    assert_eq!(notice["event"], "approval.pending");
    assert_eq!(notice["approval"]["id"], id.as_str());
    assert_eq!(
        notice["approval"]["request"]["requester"]["subject"],
        "alice"
    );

    // Bad input is refused with a reason.
    let mut bad = a.post(&base).send("{").unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.body_mut().read_json().unwrap();
    assert!(
        bad["error"].as_str().unwrap().contains("malformed"),
        "{bad}"
    );
    assert_eq!(
        a.get(&format!("{base}/apr_nope")).call().unwrap().status(),
        404
    );
    let mut no_reason = a
        .post(&format!("{base}/{id}/approve"))
        .send_json(json!({"approver": "bob", "reason": " "}))
        .unwrap();
    assert_eq!(no_reason.status(), 400);
    let v: Value = no_reason.body_mut().read_json().unwrap();
    assert_eq!(v["error"], "a reason is required");

    let ok = a
        .post(&format!("{base}/{id}/approve"))
        .send_json(json!({"approver": "bob", "reason": "ok"}))
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Restart: the approval is rebuilt from the store's events.
    drop(server);
    let (_server, base) = start(&data, None);
    let mut again = a.get(&format!("{base}/{id}")).call().unwrap();
    let again: Value = again.body_mut().read_json().unwrap();
    assert_eq!(again["state"], "APPROVED", "{again}");
    assert_eq!(again["approver"], "bob");
    let events: Vec<&str> = again["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "approved"]);
    let redeemed = a
        .post(&format!("{base}/{id}/redeem"))
        .send_json(json!({"requester": {"key": "https://idp|alice", "subject": "alice", "provider": "corp"},
                          "digest": "sha256:ab"}))
        .unwrap();
    assert_eq!(redeemed.status(), 200);
}
