//! `make bench`'s end-to-end part: what the tracegate filter costs in Envoy.
//!
//! One Envoy process with one worker and two listeners, identical but for
//! the tracegate filter (a realistic policy: ES256 JWT verified, every
//! built-in detector masking requests and responses, records sent to a
//! running collector), in front of the same local upstream. wrk (Debian)
//! drives both listeners in turn at a fixed concurrency for bodies of 1, 4,
//! 16 and 64 KB, rounds interleaved, medians reported; then streamed
//! answers as the SDKs yield them (time to the first visible text, lag of
//! every 10 % of the answer); then Envoy's memory with and
//! without the filter; and where the cost goes at 4 KB (listeners that add
//! one part of the policy at a time); and the worker time of a request
//! carrying the same forged token again and again (refused 401), with and
//! without the filter's cache of refused tokens. Prints markdown tables;
//! writes target/bench/envoy.json.
//!
//! usage: tracegate-bench [--smoke] [--out DIR] [--baseline WASM]
//!   --smoke: one short round of one size (make test runs it so it keeps working).
//!   --baseline WASM: only this build against another build of the filter,
//!     interleaved, the two builds' order alternating (for before/after
//!     figures).
//!   --memory: only the memory table (one configuration against none).
//!   --latency: only the table of latency at fixed rates.
//!   --hold: set everything up, warm it, print the listeners' ports, the
//!     token and the body files, and wait for stdin to close (for profiling
//!     Envoy with perf while driving it by hand).

mod open_loop;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use tracegate_e2e::jwt::{claims, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{
    envoy_config, filter_wasm, floor_wasm, python_bin, workspace_root, Collector, Envoy, Upstream,
};

struct Plan {
    sizes_kb: Vec<usize>,
    rounds: usize,
    seconds: u32,
    connections: u32,
    streams: usize,
}

fn policy() -> Value {
    json!({
        "jwt": {"required": true, "providers": [{
            "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.example/jwks.json", "cluster": "idp"},
            "record_claims": ["email"]
        }]},
        "inspection": {"hold_headers": true},
        "rules": [{"id": "prompt-injection", "scope": "prompt", "action": "block",
                   "keywords": ["ignore previous instructions"]}]
    })
}

/// A chat request of about `kb` KB: prose, code and log lines, an e-mail
/// address in every fourth message (masked on the way).
fn body(kb: usize) -> Vec<u8> {
    const PROSE: &str = "The deployment failed after the migration step because the connection \
pool was exhausted; we rolled back and the error rate returned to normal within five minutes. ";
    const CODE: &str = "fn main() {\n    let cfg = Config::load(\"/etc/app/config.toml\")?;\n}\n";
    const LOG: &str = "2026-11-24T10:15:02Z INFO request_id=7f3a2c path=/v1/orders status=200\n";
    let mut messages = vec![json!({"role": "system", "content": "You are an SRE assistant."})];
    let mut size = 0;
    let mut turn = 0;
    while size + 400 < kb * 1024 {
        let mut text = format!("{PROSE}{CODE}{LOG}");
        if turn % 4 == 0 {
            text.push_str("Escalate to oncall@example.com. ");
        }
        size += text.len() + 40;
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": text}));
        turn += 1;
    }
    json!({"model": "gpt-4o", "messages": messages})
        .to_string()
        .into_bytes()
}

/// An answer of about 600 bytes (a typical short completion).
const REPLY: &str = "The pool ran out of connections during the migration. Raise the pool size, \
add a canary stage before the migration step, alert on pool saturation above eighty percent, and \
keep the rollback runbook linked from the deploy dashboard so that the on-call engineer can act \
within minutes. After the change, replay yesterday's traffic in staging and compare error rates.";

#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Connection errors and answers other than 2xx.
    errors: u64,
    /// Of those, answers other than 2xx (a 401 is what a forged token gets).
    non2xx: u64,
    requests: u64,
}

/// One wrk run against `port`; its Lua script reports JSON.
fn wrk(
    dir: &Path,
    port: u16,
    body_file: &Path,
    token: &str,
    seconds: u32,
    connections: u32,
) -> Result<Run> {
    let script = dir.join("wrk.lua");
    std::fs::write(
        &script,
        format!(
            r#"wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer {token}"
wrk.headers["x-test-reply"] = "{REPLY}"
local f = assert(io.open("{}", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#,
            body_file.display()
        ),
    )?;
    let out = Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .arg("-s")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| {
            format!(
                "no result from wrk: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Value = serde_json::from_str(line)?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(Run {
        rps: n("requests") / (n("duration_us") / 1e6),
        p50_ms: n("p50_us") / 1e3,
        p99_ms: n("p99_us") / 1e3,
        errors: (n("errors") + n("non2xx")) as u64,
        non2xx: n("non2xx") as u64,
        requests: n("requests") as u64,
    })
}

/// Answers by status class on one listener (`http.<prefix>.downstream_rq_*`).
#[derive(Debug, Clone, Copy, Default)]
struct Codes {
    c2xx: u64,
    c4xx: u64,
    c5xx: u64,
}

impl Codes {
    fn read(envoy: &Envoy, prefix: &str) -> Codes {
        let n = |class: &str| {
            envoy
                .stat(&format!("http.{prefix}.downstream_rq_{class}"))
                .unwrap_or(0)
        };
        Codes {
            c2xx: n("2xx"),
            c4xx: n("4xx"),
            c5xx: n("5xx"),
        }
    }

    fn since(self, before: Codes) -> Codes {
        Codes {
            c2xx: self.c2xx.saturating_sub(before.c2xx),
            c4xx: self.c4xx.saturating_sub(before.c4xx),
            c5xx: self.c5xx.saturating_sub(before.c5xx),
        }
    }

    /// "none", or what went wrong: e.g. "5xx 84106, connection 3".
    fn errors(self, connection: u64) -> String {
        let parts: Vec<String> = [
            ("4xx", self.c4xx),
            ("5xx", self.c5xx),
            ("connection", connection),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The kinds of callback the filter times (filter/src/stats.rs).
const CALLBACKS: [&str; 7] = [
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "end",
    "call_answer",
    "tick",
];

/// Time inside each kind of the filter's callbacks, per request, with the
/// full policy at 4 KB: what the policy core costs inside Envoy, beside
/// what `exchange_bench` measures outside it.
fn callback_times(
    envoy: &Envoy,
    dir: &Path,
    file: &Path,
    token: &str,
    plan: &Plan,
    port: u16,
) -> Result<Value> {
    let read = || -> Vec<(u64, u64)> {
        CALLBACKS
            .iter()
            .map(|c| {
                let stat = |what: &str| {
                    envoy
                        .stat(&format!("wasmcustom.tracegate.callback.{c}.{what}"))
                        .unwrap_or(0)
                };
                (stat("calls"), stat("ns"))
            })
            .collect()
    };
    let before = read();
    let mut requests = 0;
    for _ in 0..plan.rounds {
        requests += wrk(dir, port, file, token, plan.seconds, plan.connections)?.requests;
    }
    let after = read();
    if requests == 0 {
        bail!("no request reached the timed listener");
    }
    println!();
    println!("Time inside the filter's callbacks, full policy, 4 KB bodies (`diagnostics.callback_time`; wall time from the host's clock, per request, over {requests} requests):");
    println!();
    println!("| callback | calls per request | µs per call | µs per request |");
    println!("|---|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut total = 0.0;
    for ((name, (calls0, ns0)), (calls1, ns1)) in CALLBACKS.iter().zip(&before).zip(&after) {
        let calls = calls1.saturating_sub(*calls0);
        let ns = ns1.saturating_sub(*ns0);
        let per_request = ns as f64 / 1e3 / requests as f64;
        let per_call = if calls > 0 {
            ns as f64 / 1e3 / calls as f64
        } else {
            0.0
        };
        total += per_request;
        println!(
            "| {name} | {:.2} | {per_call:.1} | {per_request:.1} |",
            calls as f64 / requests as f64
        );
        rows.push(json!({"callback": name, "calls": calls, "ns": ns,
                         "us_per_request": per_request}));
    }
    println!("| all | | | {total:.1} |");
    Ok(json!({"requests": requests, "callbacks": rows, "us_per_request": total}))
}

/// The CPU time of Envoy's (one) worker thread, from `/proc`: what a
/// request costs the worker, whatever else runs on the machine's CPUs.
struct WorkerClock {
    stat: PathBuf,
    ticks_per_second: f64,
}

impl WorkerClock {
    fn of(pid: u32) -> Result<WorkerClock> {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?.path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim() == "wrk:worker_0" {
                // SAFETY: sysconf only reads a configuration value.
                let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
                if ticks <= 0 {
                    bail!("sysconf(_SC_CLK_TCK) failed");
                }
                return Ok(WorkerClock {
                    stat: task.join("stat"),
                    ticks_per_second: ticks as f64,
                });
            }
        }
        bail!("Envoy {pid} has no thread named wrk:worker_0")
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(&self.stat)?;
        // Fields after the command (which is in parentheses and may hold
        // spaces): state is field 3, utime 14 and stime 15.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("unreadable /proc stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            Ok(fields
                .get(i - 3)
                .context("short /proc stat")?
                .parse::<f64>()?)
        };
        Ok((ticks(14)? + ticks(15)?) / self.ticks_per_second)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

/// What a streaming user sees through each listener: the official SDKs
/// read answers paced like a model (bench/stream_latency.py); time to the
/// first visible text and to each 10 % of the answer.
fn streams(
    passthrough: u16,
    tracegate: u16,
    token: &str,
    runs: usize,
    smoke: bool,
) -> Result<Value> {
    let mut cmd = Command::new(python_bin());
    cmd.arg(workspace_root().join("bench/stream_latency.py"))
        .arg(format!("http://127.0.0.1:{passthrough}"))
        .arg(format!("http://127.0.0.1:{tracegate}"))
        .arg(token)
        .arg(runs.to_string());
    if smoke {
        cmd.arg("--smoke");
    }
    let out = cmd.output().context("cannot run bench/stream_latency.py")?;
    if !out.status.success() {
        bail!(
            "stream_latency.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn print_streams(report: &Value) {
    println!();
    println!(
        "Streamed answers as the SDKs yield them ({}-character pieces, {} ms apart; medians of {} runs, interleaved): time to the first visible text, and how much later than passthrough each 10 % of the answer arrived.",
        report["piece_chars"], report["pace_ms"], report["rows"][0]["runs"]
    );
    println!();
    println!("| API | answer | first text passthrough | first text tracegate | 10 % | 20 % | 30 % | 40 % | 50 % | 60 % | 70 % | 80 % | 90 % | 100 % |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in report["rows"].as_array().into_iter().flatten() {
        let lags: Vec<String> = row["added_lag_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:+.1}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {} |",
            row["api"].as_str().unwrap_or(""),
            row["answer"].as_str().unwrap_or(""),
            row["passthrough"]["first_text_ms"].as_f64().unwrap_or(0.0),
            row["tracegate"]["first_text_ms"].as_f64().unwrap_or(0.0),
            lags.join(" | ")
        );
    }
}

/// This build against a baseline build, interleaved round by round.
/// The two builds swap places every round, over an even number of
/// rounds: in a fixed order the build run second read up to 9 % more
/// req/s, whichever it was (two runs at 92409f5), more than most changes
/// measured.
fn compare_builds(
    dir: &Path,
    plan: &Plan,
    token: &str,
    passthrough: u16,
    baseline: u16,
    this: u16,
) -> Result<()> {
    let rounds = plan.rounds.next_multiple_of(2);
    println!(
        "# This build against the baseline build: one Envoy, one worker, the same policy; wrk, {} connections, {} s per run, {rounds} rounds interleaved (the builds' order alternating), medians",
        plan.connections, plan.seconds
    );
    println!();
    println!("| body | passthrough req/s | baseline req/s | this build req/s | baseline ratio | this build ratio | baseline p50 | this build p50 |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &kb in &plan.sizes_kb {
        let file = dir.join(format!("body-{kb}k.json"));
        std::fs::write(&file, body(kb))?;
        // Indices into `ports` and `runs`: passthrough first, then the builds.
        let ports = [passthrough, baseline, this];
        let mut runs: [Vec<Run>; 3] = Default::default();
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
            for i in order {
                runs[i].push(wrk(
                    dir,
                    ports[i],
                    &file,
                    token,
                    plan.seconds,
                    plan.connections,
                )?);
            }
        }
        let m = |r: &[Run], f: fn(&Run) -> f64| median(r.iter().map(f).collect());
        let rps: Vec<f64> = runs.iter().map(|r| m(r, |x| x.rps)).collect();
        let p50: Vec<f64> = runs.iter().map(|r| m(r, |x| x.p50_ms)).collect();
        println!(
            "| {kb} KB | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} % | {:.2} ms | {:.2} ms |",
            rps[0],
            rps[1],
            rps[2],
            rps[1] / rps[0] * 100.0,
            rps[2] / rps[0] * 100.0,
            p50[1],
            p50[2]
        );
    }
    Ok(())
}

/// About the size of the record a 4 KB request is written ahead with.
const AHEAD_RECORD_BYTES: usize = 4608;

/// Latency at 4 KB at fixed rates (open loop): half of passthrough's
/// capacity, and a light 100 requests/s (about one at a time); then, at
/// the light rate, the disk alone under `disk` (the collector's file
/// system): a written-ahead request waits for one fdatasync, and no
/// filter makes it faster than the disk's.
fn fixed_rate_latency(
    listeners: &[(&str, u16)],
    token: &str,
    capacity: f64,
    plan: &Plan,
    disk: &Path,
) -> Result<Value> {
    let request = open_loop::request(&body(4), token, REPLY);
    // The light run is four times longer: at 100/s a 5 s run's p99 is its
    // fifth slowest request, which moved by ±2 ms between runs; 20 s makes
    // it the twentieth.
    let seconds = f64::from(plan.seconds);
    let light = ("light", 100.0, seconds * 4.0);
    let rates = [
        (
            "half of passthrough's capacity",
            (capacity / 2.0).round(),
            seconds,
        ),
        light,
    ];
    println!();
    println!(
        "Latency at fixed rates, 4 KB bodies (open loop: each request due at its time, latency from then; {} s per run, {} s at the light rate):",
        plan.seconds,
        plan.seconds * 4
    );
    println!();
    println!("| rate | listener | p50 | p99 | max | p50 added | p99 added | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for (rate_name, rate, seconds) in rates {
        let mut base: Option<open_loop::Latency> = None;
        for (name, port) in listeners {
            let l = open_loop::run(*port, &request, rate, seconds, 64)?;
            let b = *base.get_or_insert(l);
            println!(
                "| {rate_name} ({rate:.0}/s) | {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:+.2} ms | {:+.2} ms | {} |",
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                l.p50_ms - b.p50_ms,
                l.p99_ms - b.p99_ms,
                l.errors
            );
            out.push(
                json!({"rate": rate, "rate_name": rate_name, "listener": name,
                            "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "max_ms": l.max_ms,
                            "p50_added_ms": l.p50_ms - b.p50_ms,
                            "p99_added_ms": l.p99_ms - b.p99_ms,
                            "sent": l.sent, "errors": l.errors}),
            );
        }
    }
    // The light rate: one fdatasync at a time, as its requests wait for.
    let (rate_name, rate, seconds) = light;
    let d = open_loop::disk_sync(disk, rate, seconds, AHEAD_RECORD_BYTES)?;
    let name = format!("the disk alone: {AHEAD_RECORD_BYTES} bytes appended, then fdatasync");
    println!(
        "| {rate_name} ({rate:.0}/s) | {name} | {:.2} ms | {:.2} ms | {:.2} ms | | | |",
        d.p50_ms, d.p99_ms, d.max_ms
    );
    out.push(
        json!({"rate": rate, "rate_name": rate_name, "listener": "disk",
                    "p50_ms": d.p50_ms, "p99_ms": d.p99_ms, "max_ms": d.max_ms,
                    "sent": d.sent, "errors": d.errors}),
    );
    Ok(Value::Array(out))
}

/// Where one Envoy's RSS goes (kB): pages of Envoy's own binary
/// (file-backed, shared with every Envoy on the machine that maps the same
/// file), V8's compiled code (anonymous executable mappings), the malloc
/// heap as tcmalloc reports it (admin `/memory`: live allocations, and
/// freed memory it keeps in its caches), and the rest (wasm linear
/// memories, V8's own heaps, stacks).
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kb: u64,
    binary_kb: u64,
    jit_kb: u64,
    heap_live_kb: u64,
    heap_kept_kb: u64,
}

impl Footprint {
    fn of(envoy: &Envoy) -> Result<Footprint> {
        let pid = envoy.process.pid();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        /// What the mapping of the following `Rss:` lines holds.
        enum Mapping {
            Binary,
            Jit,
            Other,
        }
        let (mut rss_kb, mut binary_kb, mut jit_kb) = (0, 0, 0);
        let mut mapping = Mapping::Other;
        for line in smaps.lines() {
            if let Some(kb) = line.strip_prefix("Rss:") {
                let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse()?;
                rss_kb += kb;
                match mapping {
                    Mapping::Binary => binary_kb += kb,
                    Mapping::Jit => jit_kb += kb,
                    Mapping::Other => {}
                }
            } else if line.starts_with(|c: char| c.is_ascii_hexdigit())
                && line
                    .split_whitespace()
                    .next()
                    .is_some_and(|r| r.contains('-'))
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let perms = fields.get(1).copied().unwrap_or("");
                let path = fields.get(5).copied();
                mapping = match path {
                    Some(p) if Path::new(p) == exe => Mapping::Binary,
                    None if perms.contains('x') => Mapping::Jit,
                    _ => Mapping::Other,
                };
            }
        }
        let url = format!("http://127.0.0.1:{}/memory", envoy.admin_port);
        let heap: Value = ureq::get(&url).call()?.body_mut().read_json()?;
        // tcmalloc reports byte counts as JSON strings.
        let field = |name: &str| -> u64 {
            heap[name]
                .as_str()
                .and_then(|v| v.parse().ok())
                .or_else(|| heap[name].as_u64())
                .unwrap_or(0)
                / 1024
        };
        let live = field("allocated");
        Ok(Footprint {
            rss_kb,
            binary_kb,
            jit_kb,
            heap_live_kb: live,
            heap_kept_kb: field("total_physical_bytes").saturating_sub(live),
        })
    }

    fn other_kb(&self) -> u64 {
        self.rss_kb
            .saturating_sub(self.binary_kb + self.jit_kb + self.heap_live_kb + self.heap_kept_kb)
    }

    fn json(&self) -> Value {
        json!({"rss_kb": self.rss_kb, "envoy_binary_kb": self.binary_kb,
               "compiled_code_kb": self.jit_kb, "heap_live_kb": self.heap_live_kb,
               "heap_kept_free_kb": self.heap_kept_kb, "other_kb": self.other_kb()})
    }
}

/// Envoy's memory with one tracegate configuration and without any, each
/// after the same load: every body size of the plan, at the load tables'
/// concurrency.
struct Memory {
    /// Envoy without a filter, and with tracegate.
    without: Footprint,
    with: Footprint,
    wasm_bytes: u64,
    /// Linear memory after each body size's run.
    wasm_after: Vec<(usize, u64)>,
    refused: u64,
    export_failures: u64,
    /// The same with two workers (Envoy RSS without and with tracegate):
    /// what a further worker adds. Not in smoke runs.
    two_workers: Option<(u64, u64)>,
    /// Envoy with the floor filter in tracegate's place, one worker: what
    /// any wasm filter that reads bodies makes Envoy carry.
    floor: Option<Footprint>,
}

/// Envoy's memory with one tracegate configuration and without, one
/// worker; and, unless `smoke`, the RSS of both with two workers.
fn memory_of_one_configuration(
    dir: &Path,
    ports: &envoy_config::Ports,
    plan: &Plan,
    token: &str,
    smoke: bool,
) -> Result<Memory> {
    let one = memory_with_workers(dir, ports, plan, token, 1)?;
    if smoke {
        return Ok(one);
    }
    let two = memory_with_workers(dir, ports, plan, token, 2)?;
    Ok(Memory {
        two_workers: Some((two.without.rss_kb, two.with.rss_kb)),
        ..one
    })
}

fn memory_with_workers(
    dir: &Path,
    ports: &envoy_config::Ports,
    plan: &Plan,
    token: &str,
    workers: u32,
) -> Result<Memory> {
    let policy = policy();
    let (tracegate_module, floor_module) = (filter_wasm(), floor_wasm());
    // No filter: the bootstrap leaves out the one it is given.
    let start = |name: &str, filter: Option<(&Path, &Value)>| -> Result<Envoy> {
        let d = dir.join(format!("{name}-{workers}"));
        std::fs::create_dir_all(&d)?;
        let (wasm, config) = filter.unwrap_or((&tracegate_module, &policy));
        Envoy::start_workers(
            &d,
            &envoy_config::bench_bootstrap(ports, wasm, config, filter.is_some()),
            workers,
        )
    };
    let with = start("envoy-one", Some((&tracegate_module, &policy)))?;
    // Linear memory only grows: read after each size, it shows which load
    // took it where.
    let mut wasm_after = Vec::new();
    every_size(dir, plan, token, with.listener_port("tracegate")?, |kb| {
        wasm_after.push((kb, with.stat("wasmcustom.tracegate.wasm_memory_bytes")?));
        Ok(())
    })?;
    let with_footprint = Footprint::of(&with)?;
    let wasm_bytes = with.stat("wasmcustom.tracegate.wasm_memory_bytes")?;
    let refused = with.stat("wasmcustom.tracegate.recording.refused")?;
    let export_failures = with.stat("wasmcustom.tracegate.export_failures")?;
    drop(with);
    let plain = start("envoy-plain", None)?;
    every_size(dir, plan, token, plain.port, |_| Ok(()))?;
    let without = Footprint::of(&plain)?;
    drop(plain);
    let floor = if workers == 1 {
        let config = json!({"inspection": {"hold_headers": true}});
        let envoy = start("envoy-floor", Some((&floor_module, &config)))?;
        every_size(dir, plan, token, envoy.listener_port("tracegate")?, |_| {
            Ok(())
        })?;
        Some(Footprint::of(&envoy)?)
    } else {
        None
    };
    Ok(Memory {
        without,
        with: with_footprint,
        wasm_bytes,
        wasm_after,
        refused,
        export_failures,
        two_workers: None,
        floor,
    })
}

/// wrk against `port` with every body size of the plan in turn; `after`
/// runs after each.
fn every_size(
    dir: &Path,
    plan: &Plan,
    token: &str,
    port: u16,
    mut after: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    for &kb in &plan.sizes_kb {
        let file = dir.join(format!("body-{kb}k.json"));
        wrk(dir, port, &file, token, plan.seconds, plan.connections)?;
        after(kb)?;
    }
    Ok(())
}

fn print_memory(memory: &Memory, plan: &Plan) {
    println!();
    println!("Memory: one tracegate configuration against none, after the same load (every body size, {} s each, {} connections):", plan.seconds, plan.connections);
    println!();
    println!("| | without tracegate | with tracegate | added |");
    println!("|---|---:|---:|---:|");
    let mb = |kb: u64| kb as f64 / 1024.0;
    let (plain, one) = (memory.without.rss_kb, memory.with.rss_kb);
    println!(
        "| Envoy RSS (one worker) | {:.1} MB | {:.1} MB | {:.1} MB |",
        mb(plain),
        mb(one),
        mb(one.saturating_sub(plain))
    );
    if let Some(floor) = &memory.floor {
        println!(
            "| Envoy RSS with the floor filter instead (one worker; bench/floor-filter) | {:.1} MB | {:.1} MB | {:.1} MB |",
            mb(plain),
            mb(floor.rss_kb),
            mb(floor.rss_kb.saturating_sub(plain))
        );
    }
    if let Some((plain2, with2)) = memory.two_workers {
        println!(
            "| Envoy RSS (two workers) | {:.1} MB | {:.1} MB | {:.1} MB |",
            mb(plain2),
            mb(with2),
            mb(with2.saturating_sub(plain2))
        );
    }
    println!(
        "| wasm linear memory of the worker's VM (one worker) | | {:.1} MB | |",
        memory.wasm_bytes as f64 / 1048576.0
    );
    let steps: Vec<String> = memory
        .wasm_after
        .iter()
        .map(|(kb, b)| format!("{kb} KB: {:.1} MB", *b as f64 / 1048576.0))
        .collect();
    println!(
        "| wasm linear memory after each size's run | | {} | |",
        steps.join(", ")
    );
    println!(
        "| requests refused for want of record buffer | | {} | |",
        memory.refused
    );
    println!(
        "| export calls failed (retried) | | {} | |",
        memory.export_failures
    );
    if let Some((plain2, with2)) = memory.two_workers {
        let added1 = mb(one.saturating_sub(plain));
        let added2 = mb(with2.saturating_sub(plain2));
        println!();
        println!(
            "A further worker adds {:.1} MB; the first {:.1} MB (with what an Envoy carries once: the main thread's VM, the module's code).",
            added2 - added1,
            added1
        );
    }
    if let Some(floor) = &memory.floor {
        print_footprints(&[memory.without, *floor, memory.with]);
    }
}

/// Where the RSS of the one-worker Envoys goes: without a filter, with the
/// floor filter, with tracegate.
fn print_footprints([plain, floor, with]: &[Footprint; 3]) {
    println!();
    println!("Where the RSS goes (one worker, the Envoys above; malloc heap from admin /memory):");
    println!();
    println!("| | without | floor filter | tracegate | tracegate − floor |");
    println!("|---|---:|---:|---:|---:|");
    type Part = fn(&Footprint) -> u64;
    let rows: [(&str, Part); 6] = [
        (
            "Envoy's binary (file pages: shared by every Envoy mapping it)",
            |f| f.binary_kb,
        ),
        ("compiled wasm (V8 code)", |f| f.jit_kb),
        ("malloc heap, live", |f| f.heap_live_kb),
        ("malloc heap, freed and kept by tcmalloc", |f| {
            f.heap_kept_kb
        }),
        (
            "the rest (wasm linear memories, V8 heaps, stacks)",
            Footprint::other_kb,
        ),
        ("RSS", |f| f.rss_kb),
    ];
    let mb = |kb: u64| kb as f64 / 1024.0;
    for (name, part) in rows {
        let (p, f, w) = (part(plain), part(floor), part(with));
        println!(
            "| {name} | {:.1} MB | {:.1} MB | {:.1} MB | {:+.1} MB |",
            mb(p),
            mb(f),
            mb(w),
            mb(w) - mb(f)
        );
    }
}

/// `--hold`: everything stays up, warmed, for profiling by hand; ends when
/// stdin closes.
fn hold_for_profiling(dir: &Path, envoy: &Envoy, token: &str, listeners: &[&str]) -> Result<()> {
    for kb in [1, 4, 16, 64] {
        std::fs::write(dir.join(format!("body-{kb}k.json")), body(kb))?;
    }
    std::fs::write(dir.join("token"), token)?;
    println!("envoy pid {}", envoy.process.pid());
    println!("bodies and token (wrk.lua uses them) in {}", dir.display());
    for name in listeners {
        println!("{name} {}", envoy.listener_port(name)?);
    }
    println!("holding until stdin closes");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let hold = args.iter().any(|a| a == "--hold");
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/bench"));
    let plan = if smoke {
        Plan {
            sizes_kb: vec![4],
            rounds: 1,
            seconds: 1,
            connections: 4,
            streams: 1,
        }
    } else {
        Plan {
            sizes_kb: vec![1, 4, 16, 64],
            rounds: 3,
            seconds: 5,
            connections: 16,
            streams: 3,
        }
    };
    let dir = out_dir.join("envoy-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The upstream must not keep what it receives under load.
    std::env::set_var("TEST_UPSTREAM_FORGET", "1");

    let keys = Keys::generate(&dir)?;
    let jwks = keys.jwks(&["ec256"])?;
    let mut c = claims("bench-agent");
    c["exp"] = json!(tracegate_e2e::jwt::unix_now() + 86_400);
    let token = keys.mint_one(json!({"key": "ec256", "alg": "ES256", "claims": c.clone()}))?;
    // The same claims with a broken signature: what a flood of one forged
    // token looks like.
    let forged =
        keys.mint_one(json!({"key": "ec256", "alg": "ES256", "claims": c, "tamper": "signature"}))?;

    let collector = Collector::start(&dir)?;
    let upstream = Upstream::start(&dir)?;
    upstream.publish_jwks(&jwks)?;
    let ports = envoy_config::Ports {
        upstream: upstream.port,
        collector: collector.grpc_port,
        idp: upstream.port,
        approvals: collector.grpc_port,
        tls: None,
        provider_key: None,
    };
    if args.iter().any(|a| a == "--memory") {
        for &kb in &plan.sizes_kb {
            std::fs::write(dir.join(format!("body-{kb}k.json")), body(kb))?;
        }
        print_memory(
            &memory_of_one_configuration(&dir, &ports, &plan, &token, smoke)?,
            &plan,
        );
        return Ok(());
    }
    let envoy_dir = dir.join("envoy");
    std::fs::create_dir_all(&envoy_dir)?;
    let mut bootstrap = envoy_config::bench_bootstrap(&ports, &filter_wasm(), &policy(), true);
    // Parts of the policy alone, for the cost breakdown.
    let record_only = json!({"masking": {"enabled": false}});
    let mut jwt_only = policy();
    jwt_only["masking"] = json!({"enabled": false});
    if let Some(o) = jwt_only.as_object_mut() {
        o.remove("rules");
    }
    // The same, with records built but dropped (no collector cluster,
    // fail_open): the filter's own cost of recording, without the
    // collector's CPU on this machine.
    let record_nowhere = json!({"masking": {"enabled": false},
        "collector": {"cluster": "no_such_cluster"},
        "recording": {"failure_mode": "fail_open"}});
    envoy_config::add_variant(&mut bootstrap, "tg-record", &filter_wasm(), &record_only);
    envoy_config::add_variant(
        &mut bootstrap,
        "tg-nowhere",
        &filter_wasm(),
        &record_nowhere,
    );
    envoy_config::add_variant(&mut bootstrap, "tg-jwt", &filter_wasm(), &jwt_only);
    // The full policy with answers passed unmasked: what masking requests
    // costs apart from masking answers.
    let mut requests_only = policy();
    requests_only["inspection"]["responses"] = json!(false);
    envoy_config::add_variant(
        &mut bootstrap,
        "tg-requests",
        &filter_wasm(),
        &requests_only,
    );
    // The full policy, timing its own callbacks (`diagnostics.callback_time`).
    let mut timed = policy();
    timed["diagnostics"] = json!({"callback_time": true});
    envoy_config::add_variant(&mut bootstrap, "tg-timed", &filter_wasm(), &timed);
    // The floor: a filter that holds headers and reads whole bodies, with no
    // policy (bench/floor-filter). Its configuration only asks Envoy to allow
    // holding the headers.
    envoy_config::add_variant(
        &mut bootstrap,
        "floor",
        &floor_wasm(),
        &json!({"inspection": {"hold_headers": true}}),
    );
    // The full policy, its records written ahead.
    let mut ahead = policy();
    ahead["recording"] = json!({"mode": "write_ahead"});
    envoy_config::add_variant(&mut bootstrap, "tg-ahead", &filter_wasm(), &ahead);
    // A repeated forged token, refused: with the cache of refused tokens
    // (the default) and without it (each request a signature check).
    let mut no_negative_cache = jwt_only.clone();
    no_negative_cache["jwt"]["negative_cache_entries"] = json!(0);
    envoy_config::add_variant(&mut bootstrap, "tg-forged", &filter_wasm(), &jwt_only);
    envoy_config::add_variant(
        &mut bootstrap,
        "tg-forged-nocache",
        &filter_wasm(),
        &no_negative_cache,
    );
    // `--baseline WASM`: another build of the filter with the same policy,
    // measured interleaved with this one (an A/B that noise hits equally).
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    if let Some(wasm) = &baseline {
        envoy_config::add_variant(&mut bootstrap, "tg-baseline", wasm, &policy());
    }
    let envoy = Envoy::start(&envoy_dir, &bootstrap)?;
    if baseline.is_some() {
        let base_port = envoy.listener_port("tg-baseline")?;
        let (with, without) = (
            envoy.listener_port("tracegate")?,
            envoy.listener_port("passthrough")?,
        );
        // Warm up (JWKS fetch, token cache, connections).
        std::fs::write(dir.join("warm.json"), body(1))?;
        for port in [with, without, base_port] {
            wrk(&dir, port, &dir.join("warm.json"), &token, 1, 2)?;
        }
        if hold {
            return hold_for_profiling(
                &dir,
                &envoy,
                &token,
                &["passthrough", "tracegate", "tg-baseline"],
            );
        }
        return compare_builds(&dir, &plan, &token, without, base_port, with);
    }
    let with = envoy.listener_port("tracegate")?;
    let without = envoy.listener_port("passthrough")?;
    let record_port = envoy.listener_port("tg-record")?;
    let nowhere_port = envoy.listener_port("tg-nowhere")?;
    let jwt_port = envoy.listener_port("tg-jwt")?;
    let requests_port = envoy.listener_port("tg-requests")?;
    let timed_port = envoy.listener_port("tg-timed")?;
    let forged_port = envoy.listener_port("tg-forged")?;
    let forged_nocache_port = envoy.listener_port("tg-forged-nocache")?;
    let ahead_port = envoy.listener_port("tg-ahead")?;
    let floor_port = envoy.listener_port("floor")?;

    // Warm up (JWKS fetch, token cache, connections), and check both work.
    let warm = dir.join("warm.json");
    std::fs::write(&warm, body(1))?;
    for port in [
        with,
        without,
        record_port,
        nowhere_port,
        jwt_port,
        requests_port,
        timed_port,
        ahead_port,
        floor_port,
    ] {
        let r = wrk(&dir, port, &warm, &token, 1, 2)?;
        if r.errors > 0 || r.rps == 0.0 {
            bail!(
                "warm-up against port {port} failed: {r:?} (see {})",
                dir.display()
            );
        }
    }

    if hold {
        return hold_for_profiling(
            &dir,
            &envoy,
            &token,
            &[
                "passthrough",
                "tracegate",
                "tg-record",
                "tg-nowhere",
                "tg-jwt",
                "tg-requests",
                "tg-timed",
                "tg-ahead",
                "floor",
            ],
        );
    }
    if args.iter().any(|a| a == "--latency") {
        let file = dir.join("body-4k.json");
        std::fs::write(&file, body(4))?;
        let capacity = wrk(&dir, without, &file, &token, plan.seconds, plan.connections)?.rps;
        fixed_rate_latency(
            &[
                ("passthrough", without),
                ("tracegate (records async)", with),
                ("tracegate (records written ahead)", ahead_port),
            ],
            &token,
            capacity,
            &plan,
            &dir,
        )?;
        return Ok(());
    }
    println!(
        "# Envoy with and without tracegate: one worker, wrk, {} connections, {} s per run, {} rounds interleaved, medians",
        plan.connections, plan.seconds, plan.rounds
    );
    println!();
    println!("| body | passthrough req/s | tracegate req/s | ratio | p50 passthrough | p50 tracegate | p50 added | p99 passthrough | p99 tracegate | errors passthrough | errors tracegate |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let mut rows = Vec::new();
    let mut floor_rows = Vec::new();
    for &kb in &plan.sizes_kb {
        let file = dir.join(format!("body-{kb}k.json"));
        std::fs::write(&file, body(kb))?;
        let (mut a, mut b, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        // Errors are reported in the row (a row with errors misses its
        // target), not a reason to stop.
        let codes_before = (
            Codes::read(&envoy, "passthrough"),
            Codes::read(&envoy, "llm_ingress"),
        );
        for _ in 0..plan.rounds {
            a.push(wrk(
                &dir,
                without,
                &file,
                &token,
                plan.seconds,
                plan.connections,
            )?);
            b.push(wrk(
                &dir,
                with,
                &file,
                &token,
                plan.seconds,
                plan.connections,
            )?);
            floor.push(wrk(
                &dir,
                floor_port,
                &file,
                &token,
                plan.seconds,
                plan.connections,
            )?);
        }
        let codes_a = Codes::read(&envoy, "passthrough").since(codes_before.0);
        let codes_b = Codes::read(&envoy, "llm_ingress").since(codes_before.1);
        let connection = |runs: &[Run]| -> u64 { runs.iter().map(|r| r.errors - r.non2xx).sum() };
        let (errors_a, errors_b) = (
            codes_a.errors(connection(&a)),
            codes_b.errors(connection(&b)),
        );
        let m = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let (rps_a, rps_b) = (m(&a, |r| r.rps), m(&b, |r| r.rps));
        let (p50_a, p50_b) = (m(&a, |r| r.p50_ms), m(&b, |r| r.p50_ms));
        let (p99_a, p99_b) = (m(&a, |r| r.p99_ms), m(&b, |r| r.p99_ms));
        let rps_floor = m(&floor, |r| r.rps);
        // Connection errors and answers other than 2xx: the floor forwards
        // everything, so any is a broken run.
        let floor_errors: u64 = floor.iter().map(|r| r.errors).sum();
        floor_rows.push((kb, rps_a, rps_b, rps_floor, floor_errors));
        println!(
            "| {kb} KB | {rps_a:.0} | {rps_b:.0} | {:.0} % | {p50_a:.2} ms | {p50_b:.2} ms | {:.2} ms | {p99_a:.2} ms | {p99_b:.2} ms | {errors_a} | {errors_b} |",
            rps_b / rps_a * 100.0,
            p50_b - p50_a
        );
        rows.push(
            json!({"body_kb": kb, "passthrough": {"rps": rps_a, "p50_ms": p50_a, "p99_ms": p99_a,
                                                  "errors": errors_a, "2xx": codes_a.c2xx},
                         "tracegate": {"rps": rps_b, "p50_ms": p50_b, "p99_ms": p99_b,
                                       "errors": errors_b, "2xx": codes_b.c2xx,
                                       "4xx": codes_b.c4xx, "5xx": codes_b.c5xx},
                         "floor": {"rps": rps_floor, "errors": floor_errors},
                         "throughput_ratio": rps_b / rps_a, "floor_ratio": rps_floor / rps_a,
                         "p50_added_ms": p50_b - p50_a,
                         "clean": errors_a == "none" && errors_b == "none"}),
        );
    }

    println!();
    println!("The floor under any filter that inspects whole bodies (bench/floor-filter: headers held, bodies buffered and copied into the VM, no policy, no record), same runs, interleaved:");
    println!();
    println!("| body | passthrough req/s | floor req/s | floor ratio | tracegate req/s | tracegate ratio | tracegate against the floor | floor errors (connection, non-2xx) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (kb, rps_a, rps_b, rps_floor, errors) in floor_rows {
        println!(
            "| {kb} KB | {rps_a:.0} | {rps_floor:.0} | {:.0} % | {rps_b:.0} | {:.0} % | {:.0} % | {errors} |",
            rps_floor / rps_a * 100.0,
            rps_b / rps_a * 100.0,
            rps_b / rps_floor * 100.0
        );
    }

    let capacity_4k = rows
        .iter()
        .find(|r| r["body_kb"] == 4)
        .and_then(|r| r["passthrough"]["rps"].as_f64())
        .unwrap_or(1000.0);
    let latency = fixed_rate_latency(
        &[
            ("passthrough", without),
            ("tracegate (records async)", with),
            ("tracegate (records written ahead)", ahead_port),
        ],
        &token,
        capacity_4k,
        &plan,
        &dir,
    )?;

    // Where the cost goes, at 4 KB: each variant adds one part of the policy.
    let file = dir.join("body-4k.json");
    std::fs::write(&file, body(4))?;
    let variants = [
        ("passthrough (no filter)", without),
        (
            "floor: headers held, bodies read, no policy (bench/floor-filter)",
            floor_port,
        ),
        (
            "tracegate: records built, then dropped (no collector)",
            nowhere_port,
        ),
        ("tracegate: recording only", record_port),
        ("+ JWT (ES256, cached)", jwt_port),
        (
            "+ masking requests, all detectors, a block rule (answers not masked)",
            requests_port,
        ),
        ("+ masking answers too (the full policy)", with),
    ];
    let worker = WorkerClock::of(envoy.process.pid())?;
    // Per variant: each run, and the worker thread's CPU per request in it.
    let mut runs: Vec<Vec<(Run, f64)>> = vec![Vec::new(); variants.len()];
    for _ in 0..plan.rounds {
        for (i, (_, port)) in variants.iter().enumerate() {
            let cpu_before = worker.cpu_seconds()?;
            let run = wrk(&dir, *port, &file, &token, plan.seconds, plan.connections)?;
            let cpu = worker.cpu_seconds()? - cpu_before;
            runs[i].push((run, cpu * 1e6 / run.requests.max(1) as f64));
        }
    }
    println!();
    println!("Where the cost goes, 4 KB bodies (same runs setup; worker time per request is 1/rate of the saturated worker, worker CPU per request is its thread's own CPU time, from /proc):");
    println!();
    println!("| listener | req/s | p50 | worker time per request | worker CPU per request |");
    println!("|---|---:|---:|---:|---:|");
    let mut breakdown = Vec::new();
    for ((name, _), r) in variants.iter().zip(&runs) {
        let rps = median(r.iter().map(|(x, _)| x.rps).collect());
        let p50 = median(r.iter().map(|(x, _)| x.p50_ms).collect());
        let cpu_us = median(r.iter().map(|(_, c)| *c).collect());
        println!(
            "| {name} | {rps:.0} | {p50:.2} ms | {:.0} µs | {cpu_us:.0} µs |",
            1e6 / rps
        );
        breakdown
            .push(json!({"listener": name, "rps": rps, "p50_ms": p50, "worker_cpu_us": cpu_us}));
    }

    let callbacks = callback_times(&envoy, &dir, &file, &token, &plan, timed_port)?;

    // A repeated forged token: every answer a 401, no connection errors.
    let forged_variants = [
        (
            "same forged ES256 token, without the cache of refused tokens",
            forged_nocache_port,
        ),
        (
            "same forged ES256 token, with the cache of refused tokens (default)",
            forged_port,
        ),
    ];
    let mut forged_runs: Vec<Vec<Run>> = vec![Vec::new(); forged_variants.len()];
    for _ in 0..plan.rounds {
        for (i, (_, port)) in forged_variants.iter().enumerate() {
            let r = wrk(&dir, *port, &file, &forged, plan.seconds, plan.connections)?;
            if r.non2xx != r.requests || r.errors != r.non2xx || r.requests == 0 {
                bail!("forged token against port {port}: expected only 401s, got {r:?}");
            }
            forged_runs[i].push(r);
        }
    }
    println!();
    println!("A flood of one forged token (4 KB bodies, every answer 401):");
    println!();
    println!("| listener | req/s | p50 | worker time per request |");
    println!("|---|---:|---:|---:|");
    let mut forged_rows = Vec::new();
    for ((name, _), r) in forged_variants.iter().zip(&forged_runs) {
        let rps = median(r.iter().map(|x| x.rps).collect());
        let p50 = median(r.iter().map(|x| x.p50_ms).collect());
        println!("| {name} | {rps:.0} | {p50:.2} ms | {:.0} µs |", 1e6 / rps);
        forged_rows.push(json!({"listener": name, "rps": rps, "p50_ms": p50,
                                "worker_us_per_request": 1e6 / rps}));
    }

    let stream_report = streams(without, with, &token, plan.streams, smoke)?;
    print_streams(&stream_report);

    // Memory after the whole bench, in this Envoy: its one VM holds every
    // configuration of the runs above.
    let rss_all = Footprint::of(&envoy)?.rss_kb;
    let wasm_all = envoy.stat("wasmcustom.tracegate.wasm_memory_bytes")?;
    let records = envoy.stat("wasmcustom.tracegate.records_exported")?;
    // Every listener but passthrough has one.
    let configurations = bootstrap["static_resources"]["listeners"]
        .as_array()
        .map_or(0, |l| l.len().saturating_sub(1));
    drop(envoy);
    let memory = memory_of_one_configuration(&dir, &ports, &plan, &token, smoke)?;
    print_memory(&memory, &plan);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!();
    println!(
        "After the whole bench, the Envoy above (its VM holding all {configurations} configurations): RSS {:.1} MB, wasm linear memory {:.1} MB.",
        mb(rss_all),
        wasm_all as f64 / 1048576.0
    );
    println!();
    println!("{records} records reached the collector during the runs.");

    let report = json!({
        "plan": {"sizes_kb": plan.sizes_kb, "rounds": plan.rounds, "seconds": plan.seconds,
                 "connections": plan.connections, "smoke": smoke},
        "load": rows,
        "breakdown_4kb": breakdown,
        "callbacks_4kb": callbacks,
        "latency_4kb_fixed_rate": latency,
        "forged_token_4kb": forged_rows,
        "stream": stream_report,
        "memory": {"envoy_rss_without_kb": memory.without.rss_kb,
                   "envoy_rss_with_kb": memory.with.rss_kb,
                   "envoy_rss_floor_kb": memory.floor.map_or(0, |f| f.rss_kb),
                   "wasm_memory_bytes": memory.wasm_bytes,
                   "records_refused": memory.refused,
                   "export_failures": memory.export_failures,
                   "two_workers": memory.two_workers.map(|(without, with)|
                       json!({"envoy_rss_without_kb": without, "envoy_rss_with_kb": with})),
                   "footprints": {"without": memory.without.json(),
                                  "floor": memory.floor.map(|f| f.json()),
                                  "with": memory.with.json()},
                   "wasm_memory_bytes_after_kb": memory.wasm_after.iter()
                       .map(|(kb, b)| json!({"body_kb": kb, "bytes": b})).collect::<Vec<_>>(),
                   "all_configurations": {"configurations": configurations,
                                          "envoy_rss_kb": rss_all,
                                          "wasm_memory_bytes": wasm_all}},
        "records_exported": records,
    });
    std::fs::write(
        out_dir.join("envoy.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    drop((collector, upstream));
    Ok(())
}
