//! Live reload of the policy through Envoy's extension config discovery
//! (ECDS), with no restart: `tracegate policy apply` swaps the resource file
//! in the watched directory; a request in flight finishes under the policy
//! it started with, and its record says so; the next request is judged by
//! the new one. A configuration that bypasses the CLI and is invalid is
//! refused by Envoy (the filter's on_configure fails in Envoy's canary VM),
//! and the old policy stays in force. And a hundred reloads do not grow
//! Envoy's memory or leave VMs behind.

use serde_json::{json, Value};
use std::time::Duration;
use tracegate_e2e::{envoy_config, policy_cli, Envoy, Stack, StackOptions};

const CHAT: &str = "/v1/chat/completions";
/// Configurations Envoy took (`config_reload` counts attempts, failed ones
/// too).
const RELOADS: &str = "extension_config_discovery.http_filter.tracegate.update_success";
const REJECTED: &str = "extension_config_discovery.http_filter.tracegate.update_rejected";
const CONFIG_FAIL: &str = "extension_config_discovery.http_filter.tracegate.config_fail";
const FIVE_XX: &str = "http.llm_ingress.downstream_rq_5xx";

/// A policy that blocks prompts holding `blocked`.
fn policy(version: &str, blocked: &str) -> Value {
    json!({
        "policy": {"name": "egress", "version": version},
        "recording": {"flush_interval_ms": 20},
        "inspection": {"hold_headers": true},
        "rules": [{"id": format!("no-{blocked}"), "scope": "prompt", "action": "block",
                   "keywords": [blocked], "message": "not this"}]
    })
}

fn chat(text: &str, stream: bool) -> Vec<u8> {
    json!({"model": "gpt-test", "stream": stream,
           "messages": [{"role": "user", "content": text}]})
    .to_string()
    .into_bytes()
}

fn ask(stack: &Stack, session: &str, text: &str) -> (u16, String) {
    let a = stack
        .post(
            CHAT,
            session,
            &[("content-type", "application/json")],
            &chat(text, false),
        )
        .unwrap();
    (a.status, a.body)
}

/// The SHA-256 `tracegate policy` printed.
fn sha_in(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("sha256"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no sha256 in {out:?}"))
}

/// `tracegate policy check` of the ECDS resource file: what is deployed.
fn check_deployed(stack: &Stack) -> (i32, String, String) {
    let file = envoy_config::ecds_file(stack.ecds.as_deref().unwrap());
    policy_cli(&["check".as_ref(), file.as_os_str()]).unwrap()
}

/// Applies a configuration and waits until Envoy has taken it (its reload
/// counter moved past `reloads`).
fn apply(stack: &mut Stack, config: &Value, reloads: u64) -> String {
    let out = stack.apply_policy(config).unwrap();
    stack.envoy.wait_stat(RELOADS, reloads + 1).unwrap();
    sha_in(&out)
}

fn record_policy(r: &Value) -> (&str, &str) {
    (
        r["policy"]["version"].as_str().unwrap_or(""),
        r["policy"]["sha256"].as_str().unwrap_or(""),
    )
}

/// A stack whose Envoy takes the policy through ECDS, starting with `first`.
fn ecds_stack(dir: &std::path::Path, first: &serde_json::Value) -> Stack {
    let options = StackOptions {
        ecds: true,
        ..StackOptions::default()
    };
    Stack::start_with_options(dir, first, &options, |_, _| Ok(())).unwrap()
}

#[test]
fn a_reload_decides_the_next_request_and_never_one_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = ecds_stack(dir.path(), &policy("1", "alpha"));
    let (code, out, err) = check_deployed(&stack);
    assert_eq!(code, 0, "{err}");
    let sha1 = sha_in(&out);
    assert_eq!(
        stack.envoy.stat(RELOADS).unwrap(),
        1,
        "the first configuration"
    );

    let sha2 = std::thread::scope(|s| {
        // A streamed answer held by the upstream after its first events:
        // the exchange is under way (judged, forwarded, answering) when the
        // policy changes.
        let in_flight = s.spawn(|| {
            stack
                .post(
                    CHAT,
                    "in-flight",
                    &[
                        ("content-type", "application/json"),
                        ("x-test-pause-after", "2:in-flight"),
                    ],
                    &chat("tell a bravo story", true),
                )
                .unwrap()
        });
        tracegate_e2e::poll("the held request upstream", Duration::from_secs(20), || {
            let starts = stack.upstream.starts()?;
            Ok(starts
                .iter()
                .any(|r| r["headers"]["x-session-id"] == "in-flight")
                .then_some(()))
        })
        .unwrap();

        // The new rule blocks what the old one let through, and the other
        // way round.
        let sha2 = sha_in(&stack.apply_policy(&policy("2", "bravo")).unwrap());
        assert_ne!(sha1, sha2);
        let admin = stack.envoy.admin_port;
        tracegate_e2e::poll("the reload", Duration::from_secs(20), || {
            Ok((Envoy::stat_at(admin, RELOADS)? >= 2).then_some(()))
        })
        .unwrap();
        let (status, body) = ask(&stack, "after", "one more bravo please");
        assert_eq!(status, 403, "judged by the new rule: {body}");
        assert!(body.contains("no-bravo"), "{body}");
        let (status, body) = ask(&stack, "after", "alpha is fine now");
        assert_eq!(status, 200, "{body}");

        stack.upstream.release("in-flight").unwrap();
        let answer = in_flight.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains("bravo"), "{}", answer.body);
        sha2
    });

    // Every record names the policy that decided it: the one in flight the
    // old one (its retiring root delivered it).
    let held = stack.collector.wait_for_records("in-flight", 1).unwrap();
    assert_eq!(record_policy(&held[0]), ("1", sha1.as_str()), "{}", held[0]);
    assert_eq!(held[0]["inspection"]["verdict"], "forwarded");
    let after = stack.collector.wait_for_records("after", 2).unwrap();
    assert_eq!(record_policy(&after[0]), ("2", sha2.as_str()));
    assert_eq!(after[0]["inspection"]["blocked_rule"], "no-bravo");
    assert_eq!(record_policy(&after[1]), ("2", sha2.as_str()));
    assert_eq!(after[1]["policy"]["name"], "egress");
    let sessions = stack.collector.cli(&["sessions"]).unwrap();
    // SESSION CALLER FIRST LAST POLICIES EXCHANGES
    let policies = |s: &str| {
        let row = sessions.lines().find(|l| l.starts_with(s));
        row.and_then(|r| r.split_whitespace().nth(4))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(policies("in-flight"), sha1[..12], "{sessions}");
    assert_eq!(policies("after "), sha2[..12], "{sessions}");
    let timeline = stack.collector.cli(&["replay", "in-flight"]).unwrap();
    assert!(
        timeline.contains(&format!("policy: egress version 1 sha256 {sha1}")),
        "{timeline}"
    );

    // A configuration written into the watched file past the CLI, with an
    // unknown field: Envoy's canary VM runs the filter's on_configure, which
    // refuses it; the update is rejected and the old policy stays.
    let file = envoy_config::ecds_file(stack.ecds.as_deref().unwrap());
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut bad = policy("3", "alpha");
    bad["recording"]["batch_size"] = json!(3);
    doc["resources"][0]["typed_config"]["config"]["configuration"]["value"] =
        json!(bad.to_string());
    let tmp = dir.path().join("hand-edited.json");
    std::fs::write(&tmp, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    stack.envoy.wait_stat(REJECTED, 1).unwrap();
    let log = stack.envoy.process.log();
    assert!(
        log.contains("invalid tracegate configuration: field `recording.batch_size`"),
        "{log}"
    );
    // Envoy counts the attempt (`config_reload`) and its failure; only
    // the two good configurations were taken.
    assert_eq!(stack.envoy.stat(CONFIG_FAIL).unwrap(), 1);
    assert_eq!(stack.envoy.stat(RELOADS).unwrap(), 2, "not taken");
    let (status, _) = ask(&stack, "rejected", "bravo still blocked");
    assert_eq!(status, 403, "the old rule still decides");
    let (status, _) = ask(&stack, "rejected", "alpha still fine");
    assert_eq!(status, 200);
    let rejected = stack.collector.wait_for_records("rejected", 2).unwrap();
    for r in &rejected {
        assert_eq!(record_policy(r), ("2", sha2.as_str()), "{r}");
    }
    // The operator's check of the file says what is wrong with it.
    let (code, _, err) = check_deployed(&stack);
    assert_eq!(code, 1);
    assert!(err.contains("field `recording.batch_size`"), "{err}");

    // No request failed along the way.
    assert_eq!(stack.envoy.stat(FIVE_XX).unwrap(), 0);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        0
    );
}

/// Envoy's resident memory, in bytes.
fn rss(envoy: &Envoy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", envoy.process.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn a_hundred_reloads_leave_no_vm_and_little_memory_behind() {
    const VMS: &str = "wasm.envoy.wasm.runtime.v8.active";
    const WASM_MEMORY: &str = "wasmcustom.tracegate.wasm_memory_bytes";
    let dir = tempfile::tempdir().unwrap();
    let mut stack = ecds_stack(dir.path(), &policy("0", "alpha"));
    // Each round: a new policy (block rule alternating), then a request
    // judged by it, whose record the retiring root must deliver.
    let round = |stack: &mut Stack, i: u64| {
        let blocked = if i.is_multiple_of(2) {
            "alpha"
        } else {
            "bravo"
        };
        let reloads = stack.envoy.stat(RELOADS).unwrap();
        apply(stack, &policy(&i.to_string(), blocked), reloads);
        let (status, _) = ask(stack, "rounds", "alpha and bravo");
        assert_eq!(status, 403);
        let (status, _) = ask(stack, "rounds", "neither");
        assert_eq!(status, 200);
    };
    // Warm-up: the first reloads make the caches a worker keeps.
    for i in 1..=5 {
        round(&mut stack, i);
    }
    stack.collector.wait_for_records("rounds", 10).unwrap();
    let (rss0, vms0, mem0) = (
        rss(&stack.envoy),
        stack.envoy.stat(VMS).unwrap(),
        stack.envoy.stat(WASM_MEMORY).unwrap(),
    );
    let started = std::time::Instant::now();
    for i in 6..=105 {
        round(&mut stack, i);
    }
    let took = started.elapsed();
    let records = stack.collector.wait_for_records("rounds", 210).unwrap();
    let (rss1, vms1, mem1) = (
        rss(&stack.envoy),
        stack.envoy.stat(VMS).unwrap(),
        stack.envoy.stat(WASM_MEMORY).unwrap(),
    );
    println!(
        "100 reloads (each with 2 requests) in {took:.1?}: Envoy RSS {:.1} -> {:.1} MB, \
         wasm linear memory {:.1} -> {:.1} MB, V8 VMs {vms0} -> {vms1}",
        rss0 as f64 / 1e6,
        rss1 as f64 / 1e6,
        mem0 as f64 / 1e6,
        mem1 as f64 / 1e6
    );
    // Every record names the policy of its round.
    for (n, r) in records.iter().enumerate() {
        let round = (n / 2 + 1).to_string();
        assert_eq!(r["policy"]["version"], round.as_str(), "{r}");
    }
    assert_eq!(vms1, vms0, "retired configurations leave no VM behind");
    assert!(
        mem1.saturating_sub(mem0) <= 8 << 20,
        "wasm memory grew from {mem0} to {mem1} bytes"
    );
    assert!(
        rss1.saturating_sub(rss0) <= 64 << 20,
        "Envoy RSS grew from {rss0} to {rss1} bytes"
    );
    assert_eq!(stack.envoy.stat(FIVE_XX).unwrap(), 0);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.tracegate.records_dropped")
            .unwrap(),
        0
    );
}
