//! Console benchmark (for `make bench`): one session of 1,000 exchanges
//! (chat requests carrying a system prompt and the last 20 messages,
//! streamed answers of 40 deltas, masked values in both), stored in real
//! segments (sealed and indexed, the last one open); then the time to
//! build the session page (its first page, and all on one) as
//! `GET /sessions/{id}` does (read through the session index, reassemble,
//! render HTML; the socket and the sign-in check are left out) and the time of `tracegate replay` (conversation,
//! --raw and --json) as a process. A measurement, not an assertion.
//!
//! Usage: console_bench [PATH_TO_TRACEGATE_BINARY] [DIR] [EXCHANGES]
//! (CONSOLE_BENCH_KEEP=1 keeps DIR, with its seal key, for `serve` and
//! bench/console_open.py, which times the page in a browser.)

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracegate_collector::approvals::auth::Caller;
use tracegate_collector::console::auth::User;
use tracegate_collector::console::sessions::{session_page, SessionQuery, SESSION_PAGE};
use tracegate_collector::ledger::keys;
use tracegate_collector::ledger::layout::Layout;
use tracegate_collector::ledger::writer::{Ledger, Options};
use tracegate_policy::approval::Approver;
use tracegate_proto::v1::{Body, Inspection, Record, Usage};

const SESSION: &str = "bench-session";

fn body(data: String, content_type: &str) -> Option<Body> {
    Some(Body {
        size: data.len() as u64,
        data: data.into_bytes(),
        truncated: false,
        content_type: content_type.into(),
    })
}

fn exchange(i: usize, t0: i64) -> Record {
    let mut messages = vec![serde_json::json!({"role": "system",
        "content": "You are the release assistant. Answer briefly; call tools when needed."})];
    for j in i.saturating_sub(10)..i {
        messages.push(serde_json::json!({"role": "user",
            "content": format!("Step {j}: check the deploy log and mail [EMAIL_1] the summary.")}));
        messages.push(serde_json::json!({"role": "assistant",
            "content": format!("Step {j} done: the deploy log shows 0 errors; mailed [EMAIL_1].")}));
    }
    messages.push(serde_json::json!({"role": "user",
        "content": format!("Step {i}: check the deploy log and mail [EMAIL_1] the summary.")}));
    let request = serde_json::json!({"model": "gpt-4o", "stream": true, "messages": messages});
    let mut sse = String::new();
    sse += &format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    );
    for k in 0..40 {
        let piece = if k == 20 {
            " [EMAIL_1]".to_string()
        } else {
            format!(" word{k}")
        };
        sse += &format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}}]})
        );
    }
    sse += "data: [DONE]\n\n";
    let start = t0 + i as i64 * 2_000_000_000;
    Record {
        record_id: format!("rec-{i:05}"),
        session_id: SESSION.into(),
        request_id: format!("req-{i}"),
        request_start_unix_nanos: start,
        response_start_unix_nanos: start + 300_000_000,
        end_unix_nanos: start + 1_200_000_000,
        duration_micros: 1_200_000,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        authority: "api.openai.com".into(),
        status: 200,
        request_body: body(request.to_string(), "application/json"),
        response_body: body(sse, "text/event-stream"),
        source: "tracegate/bench".into(),
        inspection: Some(Inspection {
            verdict: "masked".into(),
            request_findings: [("email".to_string(), 1)].into_iter().collect(),
            risk: 30,
            ..Inspection::default()
        }),
        usage: Some(Usage {
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: "gpt-4o".into(),
            response_model: "gpt-4o-2024-08-06".into(),
            input_tokens: Some(900),
            output_tokens: Some(41),
            ..Usage::default()
        }),
        ..Record::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().unwrap_or("target/release/tracegate".into()));
    let dir = PathBuf::from(args.next().unwrap_or("target/bench/console".into()));
    let n: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = 1_764_000_000_000_000_000;
    let opts = Options {
        // Several sealed (indexed) segments and an open one, as a store
        // that has run a while.
        segment_bytes: 2 << 20,
        ..Options::default()
    };
    let key = keys::generate()?;
    // Where `serve --data DIR` finds its seal key, so that bench/console_open.py
    // can serve this store to a browser (CONSOLE_BENCH_KEEP=1).
    let (private, public) = Layout::new(&dir).default_key();
    std::fs::create_dir_all(&dir)?;
    keys::write_pair(&key, &private, &public)?;
    let mut ledger = Ledger::open(Layout::new(&dir), key, opts)?;
    let records: Vec<Record> = (0..n).map(|i| exchange(i, t0)).collect();
    let stored: usize = records
        .iter()
        .map(|r| {
            r.request_body.as_ref().map_or(0, |b| b.data.len())
                + r.response_body.as_ref().map_or(0, |b| b.data.len())
        })
        .sum();
    for chunk in records.chunks(50) {
        ledger.append(&[chunk.to_vec()])?;
    }
    ledger.close()?;
    let segments = Layout::new(&dir).segments()?.len();
    let user = User {
        subject: "bench".into(),
        display: "bench@example.com".into(),
        caller: Caller {
            approver: Approver {
                issuer: "https://idp.example".into(),
                subject: "bench".into(),
                display: "bench@example.com".into(),
            },
            claims: Vec::new(),
        },
        csrf: "x".into(),
    };
    // The first page (as the session list links it) and the whole session
    // on one page (`?limit=1000`).
    let mut pages = Vec::new();
    for (label, limit) in [
        (format!("first page, {SESSION_PAGE} exchanges"), None),
        (format!("`?limit={n}`, all {n} exchanges"), Some(n)),
    ] {
        let q = SessionQuery {
            limit,
            ..SessionQuery::default()
        };
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..7 {
            let started = Instant::now();
            let page = session_page(&dir, SESSION, &q, &user)?
                .ok_or_else(|| anyhow::anyhow!("the session was not found"))?;
            times.push(started.elapsed());
            bytes = page.len();
        }
        pages.push((label, bytes, times));
    }
    let mut replay = Vec::new();
    for (label, extra) in [
        ("replay (conversation)", &[][..]),
        ("replay --raw", &["--raw"][..]),
        ("replay --json", &["--json"][..]),
    ] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let status = Command::new(&bin)
                .args(["replay", SESSION, "--data"])
                .arg(&dir)
                .args(extra)
                .stdout(Stdio::null())
                .status()?;
            times.push(started.elapsed());
            anyhow::ensure!(status.success(), "{label} failed: {status}");
        }
        replay.push((label, median(times)));
    }
    println!(
        "# Console: one session of {n} exchanges ({:.1} MB of bodies, {segments} segments)",
        stored as f64 / 1e6
    );
    println!();
    println!("| what | median ms | min ms |");
    println!("|---|---:|---:|");
    for (label, bytes, times) in pages {
        let min = times.iter().min().copied().unwrap_or_default();
        println!(
            "| GET /sessions/{{id}} page build: {label} ({:.2} MB of HTML) | {} | {} |",
            bytes as f64 / 1e6,
            ms(median(times)),
            ms(min)
        );
    }
    for (label, t) in &replay {
        println!(
            "| `tracegate {label}` (process, output discarded) | {} | |",
            ms(*t)
        );
    }
    if std::env::var_os("CONSOLE_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
