//! Human approval through the real Envoy, filter and collector (whose
//! `serve --approvals` is the approval service), with callers identified by
//! JWTs minted by jwcrypto and approvers using the `tracegate approvals` CLI.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::jwt::{claims, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{poll, Stack};

const RISKY: &str = "please deploy to production now";

fn config(approval: Value) -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "jwt": {"required": true, "providers": [{
            "name": "corp",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.tracegate.test/jwks.json", "cluster": "idp",
                            "timeout_ms": 1000, "retry_interval_ms": 200}
        }]},
        "rules": [{"id": "prod-deploy", "keywords": ["deploy to production"],
                   "action": "approve", "risk": 100}],
        "approval": approval
    })
}

struct Callers {
    alice: String,
    mallory: String,
    _dir: tempfile::TempDir,
}

/// Where the filter's approval cluster points.
#[derive(Clone, Copy)]
enum ApprovalsAt {
    /// The collector's approval service.
    Collector,
    /// A port where nothing listens.
    Nothing,
    /// The test LLM upstream: HTTP, but not an approval service.
    Upstream,
    /// A socket that accepts connections and never answers.
    Silent(u16),
}

fn start(approval: Value) -> (Stack, Callers) {
    start_with(approval, ApprovalsAt::Collector)
}

fn start_with(approval: Value, at: ApprovalsAt) -> (Stack, Callers) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let tokens = keys
        .mint(&[
            json!({"key": "ec256", "alg": "ES256", "claims": claims("alice")}),
            json!({"key": "ec256", "alg": "ES256", "claims": claims("mallory")}),
        ])
        .unwrap();
    let stack_dir = dir.path().join("stack");
    let stack = Stack::start_with(&stack_dir, &config(approval), |u, p| {
        u.publish_jwks(&jwks)?;
        match at {
            ApprovalsAt::Collector => {}
            ApprovalsAt::Nothing => {
                p.approvals = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port()
            }
            ApprovalsAt::Upstream => p.approvals = u.port,
            ApprovalsAt::Silent(port) => p.approvals = port,
        }
        Ok(())
    })
    .unwrap();
    let mut tokens = tokens.into_iter();
    let callers = Callers {
        alice: tokens.next().unwrap(),
        mallory: tokens.next().unwrap(),
        _dir: dir,
    };
    (stack, callers)
}

struct Answer {
    status: u16,
    body: Value,
    approval_id: Option<String>,
}

fn ask(url: &str, token: &str, session: &str, text: &str, grant: Option<&str>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .post(url)
        .header("authorization", &format!("Bearer {token}"))
        .header("x-session-id", session);
    if let Some(g) = grant {
        req = req.header("x-tracegate-approval", g);
    }
    let mut resp = req
        .send_json(json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .unwrap();
    Answer {
        status: resp.status().as_u16(),
        approval_id: resp
            .headers()
            .get("x-tracegate-approval-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: resp.body_mut().read_json().unwrap_or(Value::Null),
    }
}

/// Sends in a thread (a held request blocks until decided).
fn ask_later(
    stack: &Stack,
    token: &str,
    session: &str,
    text: &str,
) -> std::thread::JoinHandle<Answer> {
    let (url, token, session, text) = (
        stack.envoy.url("/v1/chat/completions"),
        token.to_string(),
        session.to_string(),
        text.to_string(),
    );
    std::thread::spawn(move || ask(&url, &token, &session, &text, None))
}

/// The id of the one pending approval, once the filter has asked.
fn pending_id(stack: &Stack) -> String {
    poll("a pending approval", Duration::from_secs(10), || {
        let list = stack.collector.approvals(&["list"])?;
        Ok(list
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string))
    })
    .unwrap()
}

fn record(stack: &mut Stack, session: &str) -> Value {
    stack
        .collector
        .wait_for_records(session, 1)
        .unwrap()
        .remove(0)
}

#[test]
fn hold_approved_request_is_forwarded_and_the_decision_recorded() {
    let (mut stack, who) = start(json!({"threshold": 100, "mode": "hold",
        "hold_timeout_ms": 20000, "poll_ms": 500}));
    let url = stack.envoy.url("/v1/chat/completions");

    // Below the threshold: no approval, no wait.
    assert_eq!(ask(&url, &who.alice, "low", "hello", None).status, 200);

    let client = ask_later(&stack, &who.alice, "held", RISKY);
    let id = pending_id(&stack);
    let shown = stack.collector.approvals(&["show", &id]).unwrap();
    assert!(shown.contains("requester  alice"), "{shown}");
    assert!(shown.contains("risk       100 (threshold 100)"), "{shown}");
    assert!(shown.contains("rule prod-deploy"), "{shown}");
    assert_eq!(
        stack.upstream.received().unwrap().len(),
        1,
        "held, not forwarded"
    );

    let own = stack
        .collector
        .approvals(&["approve", &id, "--reason", "mine", "--as", "alice"])
        .unwrap_err()
        .to_string();
    assert!(own.contains("may not approve their own requests"), "{own}");
    stack
        .collector
        .approvals(&[
            "approve",
            &id,
            "--reason",
            "change ticket 42",
            "--as",
            "bob",
        ])
        .unwrap();

    let answer = client.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(stack.upstream.received().unwrap().len(), 2);

    let r = record(&mut stack, "held");
    let a = &r["approval"];
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["mode"], "hold");
    assert_eq!(a["state"], "APPROVED");
    assert_eq!(a["approver"], "bob");
    assert_eq!(a["reason"], "change ticket 42");
    assert_eq!(a["outcome"], "forwarded");
    let timeline = stack.collector.cli(&["replay", "held"]).unwrap();
    assert!(
        timeline.contains(&format!("approval: {id} (hold): APPROVED by bob")),
        "{timeline}"
    );
    assert!(timeline.contains("created by alice"), "{timeline}");
    assert!(
        timeline.contains("approved by bob: change ticket 42"),
        "{timeline}"
    );
}

#[test]
fn hold_denied_request_is_refused_with_the_reason() {
    let (mut stack, who) =
        start(json!({"threshold": 100, "hold_timeout_ms": 20000, "poll_ms": 500}));
    let client = ask_later(&stack, &who.alice, "denied", RISKY);
    let id = pending_id(&stack);
    stack
        .collector
        .approvals(&["deny", &id, "--reason", "no change window", "--as", "bob"])
        .unwrap();
    let answer = client.join().unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body["error"]["type"], "approval_denied");
    assert_eq!(
        answer.body["error"]["message"],
        "tracegate: request denied by bob: no change window"
    );
    assert!(
        stack.upstream.received().unwrap().is_empty(),
        "never forwarded"
    );
    let r = record(&mut stack, "denied");
    assert_eq!(r["status"], 403);
    assert_eq!(r["approval"]["state"], "DENIED");
    assert_eq!(r["approval"]["outcome"], "denied");
    assert_eq!(r["inspection"]["verdict"], "denied");
}

#[test]
fn hold_without_a_decision_expires_and_is_refused() {
    let (mut stack, who) =
        start(json!({"threshold": 100, "hold_timeout_ms": 1500, "poll_ms": 500}));
    let answer = ask(
        &stack.envoy.url("/v1/chat/completions"),
        &who.alice,
        "slow",
        RISKY,
        None,
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.body["error"]["type"], "approval_expired");
    assert!(stack.upstream.received().unwrap().is_empty());
    let r = record(&mut stack, "slow");
    assert_eq!(r["approval"]["state"], "EXPIRED");
    assert_eq!(r["approval"]["outcome"], "expired");
    let id = r["approval"]["id"].as_str().unwrap().to_string();
    // The service expired it too: a late decision cannot land.
    poll("the service to expire it", Duration::from_secs(5), || {
        Ok(stack
            .collector
            .approvals(&["show", &id])?
            .contains(&format!("approval {id}  EXPIRED"))
            .then_some(()))
    })
    .unwrap();
    let late = stack
        .collector
        .approvals(&["approve", &id, "--reason", "late", "--as", "bob"])
        .unwrap_err()
        .to_string();
    assert!(late.contains("already EXPIRED"), "{late}");
}

#[test]
fn async_grant_is_bound_to_its_caller_and_request_and_used_once() {
    let (mut stack, who) = start(json!({"threshold": 100, "mode": "async"}));
    let url = stack.envoy.url("/v1/chat/completions");

    let first = ask(&url, &who.alice, "async", RISKY, None);
    assert_eq!(first.status, 403, "{}", first.body);
    assert_eq!(first.body["error"]["type"], "approval_required");
    let id = first.body["error"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first.approval_id.as_deref(), Some(id.as_str()));
    assert!(first.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("x-tracegate-approval: {id}")));
    assert!(stack.upstream.received().unwrap().is_empty());

    // Too early: not decided yet.
    let early = ask(&url, &who.alice, "async", RISKY, Some(&id));
    assert_eq!(early.status, 403);
    assert!(early.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("still pending"));

    stack
        .collector
        .approvals(&["approve", &id, "--reason", "ok once", "--as", "bob"])
        .unwrap();
    let stolen = ask(&url, &who.mallory, "async", RISKY, Some(&id));
    assert_eq!(stolen.status, 403);
    assert!(
        stolen.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("belongs to another caller"),
        "{}",
        stolen.body
    );
    let other = ask(
        &url,
        &who.alice,
        "async",
        &format!("{RISKY}, and drop the db"),
        Some(&id),
    );
    assert_eq!(other.status, 403);
    assert!(other.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("different request"));

    let retry = ask(&url, &who.alice, "async", RISKY, Some(&id));
    assert_eq!(retry.status, 200, "{}", retry.body);
    let received = stack.upstream.received().unwrap();
    assert_eq!(received.len(), 1);
    assert!(
        received[0]["headers"].get("x-tracegate-approval").is_none(),
        "the grant header is not forwarded: {}",
        received[0]["headers"]
    );
    let replayed = ask(&url, &who.alice, "async", RISKY, Some(&id));
    assert_eq!(replayed.status, 403);
    assert!(replayed.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already been used"));
    assert_eq!(stack.upstream.received().unwrap().len(), 1);

    let records = stack.collector.wait_for_records("async", 6).unwrap();
    let outcomes: Vec<&str> = records
        .iter()
        .map(|r| r["approval"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "approval_required",
            "grant_refused",
            "grant_refused",
            "grant_refused",
            "forwarded",
            "grant_refused"
        ]
    );
    // Refused attempts are on the record at the service too.
    let shown = stack.collector.approvals(&["show", &id]).unwrap();
    assert_eq!(shown.matches("redeem_refused").count(), 4, "{shown}");
    assert!(shown.contains("redeemed"), "{shown}");
}

#[test]
fn approval_service_down_or_garbage_means_refused_never_forwarded() {
    // The kernel completes connections to a listening socket nobody
    // accepts from: the call then times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (at, expect) in [
        (ApprovalsAt::Silent(silent_port), "did not answer in time"),
        // Envoy answers for a cluster it cannot connect to.
        (ApprovalsAt::Nothing, "it is unreachable"),
        // An HTTP server that is not an approval service: the LLM upstream
        // answers 404s.
        (ApprovalsAt::Upstream, "it answered HTTP 404"),
    ] {
        let (mut stack, who) = start_with(json!({"threshold": 100, "timeout_ms": 500}), at);
        let answer = ask(
            &stack.envoy.url("/v1/chat/completions"),
            &who.alice,
            "down",
            RISKY,
            None,
        );
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert_eq!(answer.body["error"]["type"], "approval_unavailable");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("approval service is unavailable"),
            "{message}"
        );
        assert!(message.contains(expect), "{message}");
        assert!(
            stack.upstream.received().unwrap().is_empty(),
            "never forwarded"
        );
        assert_eq!(
            record(&mut stack, "down")["approval"]["outcome"],
            "unavailable"
        );
        assert_eq!(
            stack
                .envoy
                .stat("wasmcustom.tracegate.approval.unavailable")
                .unwrap(),
            1
        );
    }
}
