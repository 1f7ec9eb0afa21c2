//! `make demo`: the whole path on real components.
//!
//! Starts the collector (its machine side behind client certificates made on
//! the first run in target/tls/, its approvers' API behind JWTs), a local
//! OpenAI-compatible upstream (which also serves the identity provider's
//! JWKS) and Envoy with the tracegate filter (presenting the gateway's
//! certificate to the collector); runs a short conversation with the
//! official `openai` Python SDK pointed at Envoy, authenticated by a JWT;
//! shows a secret masked, a production change held until an approver (with
//! their own token) allows it while the agent's attempt to approve it itself
//! is refused, an expired token refused; prints the session as `tracegate
//! replay` shows it; stops everything (also on Ctrl-C). The data stays in
//! target/demo/ to explore afterwards.

use anyhow::{bail, Result};
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracegate_e2e::jwt::{approver_claims, approvers, claims, unix_now, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{
    collector_bin, poll, python_bin, workspace_root, Process, Stack, StackOptions,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// One chat request as the agent, with any status as an answer.
fn agent_call(
    stack: &Stack,
    token: &str,
    session: &str,
    text: &str,
) -> Result<ureq::http::Response<ureq::Body>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    Ok(agent
        .post(stack.envoy.url("/v1/chat/completions"))
        .header("authorization", &format!("Bearer {token}"))
        .header("x-session-id", session)
        .send_json(
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}),
        )?)
}

fn main() {
    // Ctrl-C or SIGTERM: stop at the next step; dropping the stack stops
    // every process.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    if let Err(e) = run() {
        eprintln!("demo: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    // The identity provider: an ES256 key pair; its public JWKS is served to
    // Envoy's `idp` cluster, and the agent gets a token signed with it.
    let keys = Keys::generate(&dir)?;
    let jwks = keys.jwks(&["ec256"])?;
    let mut agent = claims("sre-agent");
    agent["email"] = json!("sre-agent@example.com");
    let mut stale = claims("sre-agent");
    stale["iat"] = json!(unix_now() - 7200);
    stale["exp"] = json!(unix_now() - 3600);
    let tokens = keys.mint(&[
        json!({"key": "ec256", "alg": "ES256", "claims": agent}),
        json!({"key": "ec256", "alg": "ES256", "claims": stale}),
        json!({"key": "ec256", "alg": "ES256",
               "claims": approver_claims("sre-lead", &["llm-approvers"])}),
    ])?;
    // The approver's token, as the CLI reads it (--token-file).
    let approver_token = dir.join("approver.token");
    std::fs::write(&approver_token, &tokens[2])?;
    let config = json!({
        "recording": {"flush_interval_ms": 100},
        "jwt": {"providers": [{
            "name": "demo-idp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.example/jwks.json", "cluster": "idp"},
            "record_claims": ["email"]
        }]},
        "rules": [{"id": "production-change", "scope": "prompt", "action": "approve",
                   "risk": 100, "keywords": ["deploy to production"]}],
        "approval": {"threshold": 100, "mode": "hold", "hold_timeout_ms": 60000, "poll_ms": 1000}
    });

    println!("demo: starting collector, local LLM upstream and Envoy with the tracegate filter…");
    let tls = root.join("target/tls");
    if !tls.join("ca.pem").exists() {
        println!(
            "demo: first run: making a private CA and certificates in {} (tracegate certs)",
            tls.display()
        );
    }
    let options = StackOptions {
        tls_dir: Some(tls.clone()),
        approvers: Some(Box::new(|port| approvers(port, json!([])))),
        ..StackOptions::default()
    };
    let config = {
        let mut c = config;
        c["approval"]["cluster"] = json!("tracegate_collector");
        c
    };
    let stack = Stack::start_with_options(&dir, &config, &options, |upstream, _| {
        upstream.publish_jwks(&jwks)
    })?;
    println!(
        "demo: Envoy on 127.0.0.1:{} (admin :{}), collector gRPC on :{} (client certificates required; Envoy presents {}/gateway.pem), approvers' API {}, upstream on :{}",
        stack.envoy.port,
        stack.envoy.admin_port,
        stack.collector.grpc_port,
        tls.display(),
        stack.collector.approvals_url.as_deref().unwrap_or("-"),
        stack.upstream.port
    );
    println!("demo: the agent authenticates with an ES256 JWT (sub sre-agent) as its API key\n");

    let session = format!("demo-{}", std::process::id());
    let mut client = Process::spawn(
        "openai-client",
        Command::new(python_bin())
            .arg(root.join("tests/clients/openai_chat.py"))
            .arg("--base-url")
            .arg(stack.envoy.url("/v1"))
            .args(["--session", &session])
            .args(["--api-key", &tokens[0]]),
        &dir,
    )?;
    let status = poll("the openai client", Duration::from_secs(120), || {
        check_interrupted()?;
        client.try_wait()
    })?;
    print!("{}", client.log());
    if !status.success() {
        bail!("the openai client failed ({status})");
    }

    // A prompt that leaks a key: the LLM (which echoes) sees the mask.
    let leaky = format!(
        "deploy with key {} please",
        "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123"
    );
    let mut masked = agent_call(&stack, &tokens[0], &session, &leaky)?;
    let answer: serde_json::Value = masked.body_mut().read_json()?;
    println!("user> {leaky}");
    println!(
        "assistant> {}   (the model only ever saw the mask)\n",
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
    );

    // A production change waits for a person: the request is held until an
    // approver decides with the CLI.
    let risky = "deploy to production: release 2026.11";
    let held = {
        let (url, token, session) = (
            stack.envoy.url("/v1/chat/completions"),
            tokens[0].clone(),
            session.clone(),
        );
        std::thread::spawn(move || -> Result<String> {
            let mut r = ureq::post(&url)
                .header("authorization", &format!("Bearer {token}"))
                .header("x-session-id", &session)
                .send_json(json!({"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": risky}]}))?;
            let v: serde_json::Value = r.body_mut().read_json()?;
            Ok(v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("?")
                .to_string())
        })
    };
    println!("user> {risky}   (waits: rule production-change needs approval)");
    let id = poll("the approval request", Duration::from_secs(30), || {
        check_interrupted()?;
        let list = stack
            .collector
            .approvals_token_file(&approver_token, &["list"])?;
        Ok(list
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .map(|id| (id.to_string(), list.clone())))
    })?;
    let server = stack.collector.approvals_url.clone().unwrap_or_default();
    let cli = format!(
        "tracegate approvals --server {server} --ca {} --token-file {}",
        tls.join("ca.pem").display(),
        approver_token.display()
    );
    println!("$ {cli} list\n{}", id.1);
    let id = id.0;
    // The agent tries to approve its own request with its own token.
    let (status, refused) = stack.collector.approvals_http(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(&tokens[0]),
        Some(&json!({"approver": "sre-lead", "reason": "lgtm"})),
    )?;
    println!(
        "demo: the agent approving its own request with its own token: HTTP {status}, {}",
        refused["error"].as_str().unwrap_or("?")
    );
    println!("$ {cli} approve {id} --reason \"change ticket 42\"");
    print!(
        "{}",
        stack.collector.approvals_token_file(
            &approver_token,
            &["approve", &id, "--reason", "change ticket 42"]
        )?
    );
    let answer = held
        .join()
        .map_err(|_| anyhow::anyhow!("the held request's thread panicked"))??;
    println!("assistant> {answer}   (forwarded once approved)\n");

    // The same call with an expired token never reaches the LLM.
    let mut refused = agent_call(&stack, &tokens[1], &session, "hi")?;
    println!(
        "demo: with an expired token: HTTP {}, {}\n",
        refused.status(),
        refused.body_mut().read_to_string()?
    );

    let records = poll("the session's records", Duration::from_secs(30), || {
        check_interrupted()?;
        let n = stack.collector.replay_json(&session)?.len();
        Ok((n >= 6).then_some(n))
    })?;
    let data = stack.collector.data.display().to_string();
    println!("demo: the collector holds {records} exchanges of session {session}.\n");
    println!("$ tracegate replay {session} --data {data}");
    print!("{}", stack.collector.cli(&["replay", &session])?);

    drop(stack);
    // Stopped cleanly: every segment and HEAD are final. The auditor's check.
    let pubkey = format!("{data}/seal.pub");
    println!("\n$ tracegate verify --data {data} --pubkey {pubkey}");
    let verify = std::process::Command::new(collector_bin())
        .args(["verify", "--data", &data, "--pubkey", &pubkey])
        .output()?;
    print!("{}", String::from_utf8_lossy(&verify.stdout));
    if !verify.status.success() {
        anyhow::bail!("verify failed: {}", String::from_utf8_lossy(&verify.stderr));
    }
    println!(
        "\ndemo: stopped everything. The records stay in {data}:\n  {} sessions --data {data}",
        collector_bin().display()
    );
    Ok(())
}
