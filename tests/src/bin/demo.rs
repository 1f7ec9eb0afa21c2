//! `make demo`: the whole path on real components.
//!
//! Starts the collector, a local OpenAI-compatible upstream and Envoy with the
//! tracegate filter; runs a short conversation with the official `openai`
//! Python SDK pointed at Envoy; prints the session as `tracegate replay`
//! shows it; stops everything (also on Ctrl-C). The data stays in
//! target/demo/ to explore afterwards.

use anyhow::{bail, Result};
use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracegate_e2e::{collector_bin, poll, python_bin, workspace_root, Process, Stack};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
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
    println!("demo: starting collector, local LLM upstream and Envoy with the tracegate filter…");
    let stack = Stack::start_in(&dir, &json!({"recording": {"flush_interval_ms": 100}}))?;
    println!(
        "demo: Envoy on 127.0.0.1:{} (admin :{}), collector gRPC on :{}, upstream on :{}\n",
        stack.envoy.port, stack.envoy.admin_port, stack.collector.grpc_port, stack.upstream.port
    );

    let session = format!("demo-{}", std::process::id());
    let mut client = Process::spawn(
        "openai-client",
        Command::new(python_bin())
            .arg(root.join("tests/clients/openai_chat.py"))
            .arg("--base-url")
            .arg(stack.envoy.url("/v1"))
            .args(["--session", &session]),
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

    let records = poll("the session's records", Duration::from_secs(30), || {
        check_interrupted()?;
        let n = stack.collector.replay_json(&session)?.len();
        Ok((n >= 3).then_some(n))
    })?;
    let data = stack.collector.data.display().to_string();
    println!("demo: the collector holds {records} exchanges of session {session}.\n");
    println!("$ tracegate replay {session} --data {data}");
    print!("{}", stack.collector.cli(&["replay", &session])?);

    drop(stack);
    println!(
        "\ndemo: stopped everything. The records stay in {data}:\n  {} sessions --data {data}",
        collector_bin().display()
    );
    Ok(())
}
