//! Human approval through the real Envoy, filter and collector (its
//! approval service: the filters' calls on its gRPC port behind client
//! certificates, the approvers' API behind JWTs), with callers and
//! approvers identified by tokens minted by jwcrypto, and approvers using
//! the `tracegate approvals` CLI.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::jwt::{approver_claims, approvers, claims, unix_now, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{poll, Stack, StackOptions};

const RISKY: &str = "please deploy to production now";
/// Matches the rule whose approvals need two approvers.
const VERY_RISKY: &str = "please drop the database now";

fn config(approval: Value) -> Value {
    let mut approval = approval;
    approval["cluster"] = json!("tracegate_approvals");
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
                   "action": "approve", "risk": 100},
                  {"id": "drop-db", "keywords": ["drop the database"],
                   "action": "approve", "risk": 100}],
        "approval": approval
    })
}

/// Callers' tokens (audience: the gateway) and approvers' tokens (audience:
/// the approval service), all signed by the identity provider's key.
struct Tokens {
    alice: String,
    mallory: String,
    /// Approvers (group llm-approvers).
    bob: String,
    carol: String,
    /// Alice's own approver token: she is an approver too.
    alice_approver: String,
    /// Valid, but not in the approvers' group.
    eve: String,
    bob_expired: String,
    /// Signed by the right key, naming another issuer.
    bob_wrong_issuer: String,
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

fn start(approval: Value) -> (Stack, Tokens) {
    start_with(approval, ApprovalsAt::Collector)
}

fn start_with(approval: Value, at: ApprovalsAt) -> (Stack, Tokens) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let now = unix_now();
    let mut expired = approver_claims("bob", &["llm-approvers"]);
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_issuer = approver_claims("bob", &["llm-approvers"]);
    wrong_issuer["iss"] = json!("https://evil.tracegate.test");
    let specs: Vec<Value> = [
        claims("alice"),
        claims("mallory"),
        approver_claims("bob", &["llm-approvers"]),
        approver_claims("carol", &["staff", "llm-approvers"]),
        approver_claims("alice", &["llm-approvers"]),
        approver_claims("eve", &["staff"]),
        expired,
        wrong_issuer,
    ]
    .into_iter()
    .map(|c| json!({"key": "ec256", "alg": "ES256", "claims": c}))
    .collect();
    let tokens = keys.mint(&specs).unwrap();
    let stack_dir = dir.path().join("stack");
    let options = StackOptions {
        approvers: Some(Box::new(|port| {
            approvers(port, json!([{"rule": "drop-db", "approvals_required": 2}]))
        })),
        ..StackOptions::default()
    };
    let stack = Stack::start_with_options(&stack_dir, &config(approval), &options, |u, p| {
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
    let mut t = tokens.into_iter();
    let mut next = || t.next().unwrap();
    let tokens = Tokens {
        alice: next(),
        mallory: next(),
        bob: next(),
        carol: next(),
        alice_approver: next(),
        eve: next(),
        bob_expired: next(),
        bob_wrong_issuer: next(),
        _dir: dir,
    };
    (stack, tokens)
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
fn pending_id(stack: &Stack, approver: &str) -> String {
    poll("a pending approval", Duration::from_secs(10), || {
        let list = stack.collector.approvals(approver, &["list"])?;
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

/// Every way past the approvers' door but a real approver's token fails:
/// none, expired, another issuer, the caller's own gateway token, someone
/// who is not an approver, and the requester approving their own request.
fn door_holds(stack: &Stack, who: &Tokens, id: &str) {
    let c = &stack.collector;
    let approve = format!("/v1/approvals/{id}/approve");
    let body = json!({"approver": "bob", "reason": "lgtm"});
    for (what, token, status, reason) in [
        ("no token", None, 401, "missing"),
        ("expired", Some(&who.bob_expired), 401, "expired"),
        (
            "wrong issuer",
            Some(&who.bob_wrong_issuer),
            401,
            "unknown_issuer",
        ),
        (
            "the caller's gateway token",
            Some(&who.alice),
            401,
            "wrong_audience",
        ),
    ] {
        let (got, answer) = c
            .approvals_http("POST", &approve, token.map(String::as_str), Some(&body))
            .unwrap();
        assert_eq!(
            (got, answer["reason"].as_str()),
            (status, Some(reason)),
            "{what}: {answer}"
        );
        let (got, _) = c
            .approvals_http("GET", "/v1/approvals", token.map(String::as_str), None)
            .unwrap();
        assert_eq!(got, status, "{what}: list");
    }
    let (got, answer) = c
        .approvals_http(
            "POST",
            &approve,
            Some(&who.eve),
            Some(&json!({"reason": "ok"})),
        )
        .unwrap();
    assert_eq!(got, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not an approver"),
        "{answer}"
    );
    let own = c
        .approvals(&who.alice_approver, &["approve", id, "--reason", "mine"])
        .unwrap_err()
        .to_string();
    assert!(own.contains("may not decide their own requests"), "{own}");
    let own = c
        .approvals(&who.alice_approver, &["deny", id, "--reason", "mine"])
        .unwrap_err()
        .to_string();
    assert!(own.contains("may not decide their own requests"), "{own}");
    let shown = c.approvals(&who.bob, &["show", id]).unwrap();
    assert!(
        shown.contains(&format!("approval {id}  PENDING")),
        "still pending: {shown}"
    );
}

#[test]
fn hold_approved_request_is_forwarded_and_the_verified_approver_recorded() {
    let (mut stack, who) = start(json!({"threshold": 100, "mode": "hold",
        "hold_timeout_ms": 30000, "poll_ms": 500}));
    let url = stack.envoy.url("/v1/chat/completions");

    // Below the threshold: no approval, no wait.
    assert_eq!(ask(&url, &who.alice, "low", "hello", None).status, 200);

    let client = ask_later(&stack, &who.alice, "held", RISKY);
    let id = pending_id(&stack, &who.bob);
    let shown = stack.collector.approvals(&who.bob, &["show", &id]).unwrap();
    assert!(shown.contains("requester  alice"), "{shown}");
    assert!(shown.contains("risk       100 (threshold 100)"), "{shown}");
    assert!(shown.contains("rule prod-deploy"), "{shown}");
    assert!(shown.contains("needs      1 approver"), "{shown}");

    door_holds(&stack, &who, &id);
    assert_eq!(
        stack.upstream.received().unwrap().len(),
        1,
        "held, not forwarded"
    );

    let out = stack
        .collector
        .approvals(&who.bob, &["approve", &id, "--reason", "change ticket 42"])
        .unwrap();
    assert!(out.contains("APPROVED by bob@example.com"), "{out}");

    let answer = client.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(stack.upstream.received().unwrap().len(), 2);

    let r = record(&mut stack, "held");
    let a = &r["approval"];
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["mode"], "hold");
    assert_eq!(a["state"], "APPROVED");
    assert_eq!(a["approver"], "bob@example.com");
    assert_eq!(
        a["approvers"],
        json!([{"issuer": ISSUER, "subject": "bob", "display": "bob@example.com"}])
    );
    assert_eq!(a["approvals_required"], 1);
    assert_eq!(a["reason"], "change ticket 42");
    assert_eq!(a["outcome"], "forwarded");
    let timeline = stack.collector.cli(&["replay", "held"]).unwrap();
    let bob = format!("bob@example.com (sub bob, iss {ISSUER})");
    assert!(
        timeline.contains(&format!("approval: {id} (hold): APPROVED by {bob}")),
        "{timeline}"
    );
    assert!(timeline.contains("created by alice"), "{timeline}");
    assert!(
        timeline.contains(&format!("approved by {bob}: change ticket 42")),
        "{timeline}"
    );
}

#[test]
fn hold_denied_request_is_refused_with_the_reason() {
    let (mut stack, who) =
        start(json!({"threshold": 100, "hold_timeout_ms": 20000, "poll_ms": 500}));
    let client = ask_later(&stack, &who.alice, "denied", RISKY);
    let id = pending_id(&stack, &who.bob);
    stack
        .collector
        .approvals(&who.bob, &["deny", &id, "--reason", "no change window"])
        .unwrap();
    let answer = client.join().unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body["error"]["type"], "approval_denied");
    assert_eq!(
        answer.body["error"]["message"],
        "tracegate: request denied by bob@example.com: no change window"
    );
    assert!(
        stack.upstream.received().unwrap().is_empty(),
        "never forwarded"
    );
    let r = record(&mut stack, "denied");
    assert_eq!(r["status"], 403);
    assert_eq!(r["approval"]["state"], "DENIED");
    assert_eq!(r["approval"]["outcome"], "denied");
    assert_eq!(r["approval"]["approvers"][0]["subject"], "bob");
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
            .approvals(&who.bob, &["show", &id])?
            .contains(&format!("approval {id}  EXPIRED"))
            .then_some(()))
    })
    .unwrap();
    let late = stack
        .collector
        .approvals(&who.bob, &["approve", &id, "--reason", "late"])
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

    // The caller approving their own request: refused, and still pending.
    door_holds(&stack, &who, &id);
    let early = ask(&url, &who.alice, "async", RISKY, Some(&id));
    assert_eq!(early.status, 403, "{}", early.body);
    // The attack this closes: the caller, with nothing but their own token
    // and network reach, names someone else as the approver.
    let (status, _) = stack
        .collector
        .approvals_http(
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            Some(&who.alice),
            Some(&json!({"approver": "bob", "reason": "lgtm"})),
        )
        .unwrap();
    assert_eq!(status, 401);

    stack
        .collector
        .approvals(&who.bob, &["approve", &id, "--reason", "ok once"])
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

    let records = stack.collector.wait_for_records("async", 7).unwrap();
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
            "grant_refused",
            "forwarded",
            "grant_refused"
        ]
    );
    assert_eq!(records[5]["approval"]["approvers"][0]["subject"], "bob");
    // Refused attempts are on the record at the service too.
    let shown = stack.collector.approvals(&who.bob, &["show", &id]).unwrap();
    assert_eq!(shown.matches("redeem_refused").count(), 5, "{shown}");
    assert!(shown.contains("redeemed"), "{shown}");
}

#[test]
fn a_quorum_of_two_distinct_approvers_is_needed() {
    let (mut stack, who) = start(json!({"threshold": 100, "mode": "async"}));
    let url = stack.envoy.url("/v1/chat/completions");
    let first = ask(&url, &who.alice, "quorum", VERY_RISKY, None);
    assert_eq!(first.status, 403, "{}", first.body);
    let id = first.approval_id.unwrap();
    let shown = stack.collector.approvals(&who.bob, &["show", &id]).unwrap();
    assert!(shown.contains("needs      2 approver(s)"), "{shown}");

    let one = stack
        .collector
        .approvals(&who.bob, &["approve", &id, "--reason", "first"])
        .unwrap();
    assert!(
        one.contains("PENDING, approved by bob@example.com of 2 needed"),
        "{one}"
    );
    let again = stack
        .collector
        .approvals(&who.bob, &["approve", &id, "--reason", "again"])
        .unwrap_err()
        .to_string();
    assert!(again.contains("already approved"), "{again}");
    let half = ask(&url, &who.alice, "quorum", VERY_RISKY, Some(&id));
    assert_eq!(
        half.status, 403,
        "one approval is not a grant: {}",
        half.body
    );
    assert!(half.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("still pending"));
    assert!(stack.upstream.received().unwrap().is_empty());

    let two = stack
        .collector
        .approvals(&who.carol, &["approve", &id, "--reason", "second"])
        .unwrap();
    assert!(
        two.contains("APPROVED by bob@example.com, carol@example.com"),
        "{two}"
    );
    let retry = ask(&url, &who.alice, "quorum", VERY_RISKY, Some(&id));
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(stack.upstream.received().unwrap().len(), 1);

    let records = stack.collector.wait_for_records("quorum", 3).unwrap();
    let a = &records[2]["approval"];
    assert_eq!(a["outcome"], "forwarded");
    assert_eq!(a["approvals_required"], 2);
    let subjects: Vec<&str> = a["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["bob", "carol"]);
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

/// What an approver is shown is built around what made the request risky:
/// padding in front of it cannot push it out of view.
#[test]
fn approvers_see_the_risky_part_whatever_the_padding() {
    let (stack, who) = start(json!({"threshold": 100, "mode": "async"}));
    let url = stack.envoy.url("/v1/chat/completions");
    let padding = "All is well, nothing to see here. ".repeat(300);
    let text = format!("{padding}Now {RISKY}, with key AKIAIOSFODNN7EXAMPLE.");
    let first = ask(&url, &who.alice, "excerpt", &text, None);
    assert_eq!(first.status, 403, "{}", first.body);
    let id = first.approval_id.unwrap();
    let (status, approval) = stack
        .collector
        .approvals_http("GET", &format!("/v1/approvals/{id}"), Some(&who.bob), None)
        .unwrap();
    assert_eq!(status, 200, "{approval}");
    let excerpt = approval["request"]["excerpt"].as_str().unwrap_or_default();
    assert!(excerpt.contains(RISKY), "{excerpt}");
    assert!(excerpt.contains("[AWS_ACCESS_KEY_ID]"), "{excerpt}");
    assert!(!excerpt.contains("AKIAIOSF"), "{excerpt}");
    assert!(excerpt.contains("marked places]"), "{excerpt}");
}
