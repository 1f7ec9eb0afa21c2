#![allow(clippy::expect_used)] // a benchmark: a failed expectation should stop it loudly
//! What one exchange costs in the policy core, as the filter runs it, with
//! `make bench`'s realistic policy (ES256 JWT, cached after the first
//! request; every built-in detector on requests and answers; a block rule;
//! records batched): request headers, the whole request body, a 600-byte
//! JSON answer, the end and its record encoded into a batch. Microseconds
//! per exchange, split by step, for chat requests of 1, 4, 16 and 64 KB.
//! `ACCESS=1` adds access rules the caller passes (the cost of judging them);
//! `EVICT_MB=16` evicts the CPU caches before each step (the cost when
//! the core's code and tables are cold, as between Envoy's callbacks).
//! Runs natively and, built for wasm32-wasip1, inside V8 (`make bench`):
//! the Envoy tables show the same work plus the proxy's own.

use serde_json::{json, Value};
use std::cell::Cell;
use std::time::{Duration, Instant};
use tracegate_policy::exchange::{Event, Exchange, Gateway, Host};
use tracegate_policy::Policy;

const VECTORS: &str = include_str!("../src/jwt/testdata/vectors.json");

struct Fake {
    now_s: i64,
    request: Vec<u8>,
    response: Vec<u8>,
    ids: Cell<u64>,
}

fn slice(bytes: &[u8], start: usize, len: usize) -> Option<Vec<u8>> {
    let end = start.saturating_add(len).min(bytes.len());
    bytes.get(start.min(end)..end).map(<[u8]>::to_vec)
}

impl Host for Fake {
    fn now_nanos(&self) -> i64 {
        self.now_s * 1_000_000_000
    }
    fn random(&self) -> [u8; 10] {
        self.ids.set(self.ids.get() + 1);
        let mut r = [0; 10];
        r[..8].copy_from_slice(&self.ids.get().to_le_bytes());
        r
    }
    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        slice(&self.request, start, len)
    }
    fn response_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        slice(&self.response, start, len)
    }
    fn response_code(&self) -> Option<u64> {
        Some(200)
    }
}

/// The chat request of `make bench` (tests/src/bin/bench/main.rs): prose, code
/// and log lines, an e-mail address in every fourth message.
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

fn answer() -> Vec<u8> {
    let text = "The pool ran out of connections during the migration. Raise the pool size, \
add a canary stage before the migration step, alert on pool saturation above eighty percent, and \
keep the rollback runbook linked from the deploy dashboard so that the on-call engineer can act \
within minutes. After the change, replay yesterday's traffic in staging and compare error rates.";
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 900, "completion_tokens": 80, "total_tokens": 980}})
    .to_string()
    .into_bytes()
}

fn policy(v: &Value) -> Policy {
    let config = json!({
        "jwt": {"providers": [{
            "name": "corp", "issuer": v["issuer"], "audiences": [v["audience"]],
            "jwks": v["jwks"], "record_claims": ["email"]
        }]},
        "inspection": {"hold_headers": true},
        "rules": [{"id": "prompt-injection", "scope": "prompt", "action": "block",
                   "keywords": ["ignore previous instructions"]}]
    });
    let mut config = config;
    if std::env::var("ACCESS").is_ok() {
        // ACCESS=1: access rules the bench's caller passes (every check
        // but the output ceiling, which its body does not set; tools
        // restricted, so the answer is read for calls too).
        config["access"] = json!({"default": "deny", "rules": [
            {"id": "ops", "when": {"claims": {"groups": "ops"}}, "models": ["o1*"]},
            {"id": "invokers", "when": {"claims": {"scope": "llm:invoke"}},
             "models": ["gpt-4o*"], "apis": ["openai_chat"], "paths": ["/v1/*"],
             "tools": ["search_*"], "stream": false}
        ]});
    }
    Policy::compile(config.to_string().as_bytes()).expect("policy")
}

#[derive(Default)]
struct Split {
    headers: Duration,
    body: Duration,
    response: Duration,
    end: Duration,
    n: u32,
}

fn main() {
    let label = std::env::args().nth(1).unwrap_or_else(|| "native".into());
    let v: Value = serde_json::from_str(VECTORS).expect("vectors");
    let token = format!("Bearer {}", v["tokens"]["es256"].as_str().expect("token"));
    // EVICT_MB: that many MB written before each step (not timed), so
    // each starts with cold caches, as in Envoy, where the proxy's own
    // work and other requests' run between a request's callbacks.
    let evict_mb: usize = std::env::var("EVICT_MB")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let caches = if evict_mb > 0 {
        ", caches evicted before each step"
    } else {
        ""
    };
    println!("One exchange in the policy core ({label}{caches}), µs per exchange");
    println!("| request | headers + JWT | request body | answer (600 B) | end + record | total |");
    println!("|---|---:|---:|---:|---:|---:|");
    let only: Option<usize> = std::env::var("KB").ok().and_then(|k| k.parse().ok());
    for kb in [1, 4, 16, 64]
        .into_iter()
        .filter(|k| only.is_none_or(|o| o == *k))
    {
        let mut gw = Gateway::new(policy(&v), "bench".into());
        let host = Fake {
            now_s: v["now"].as_i64().expect("now"),
            request: body(kb),
            response: answer(),
            ids: Cell::new(0),
        };
        let headers: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "api.openai.com"),
            ("content-type", "application/json"),
            ("authorization", token.as_str()),
            ("user-agent", "OpenAI/Python 1.54.0"),
            ("x-request-id", "5f0c6f5e-4f6b-4c53-9a39-0d2a4b0e6f11"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let mut out = Vec::new();
        let mut split = Split::default();
        let budget = Duration::from_millis(1500);
        let start = Instant::now();
        let mut id = 0;
        // N: a fixed number of exchanges (to count instructions), else a time budget.
        let fixed: Option<u32> = std::env::var("N").ok().and_then(|n| n.parse().ok());
        let mut evict = vec![0u8; evict_mb << 20];
        // Evicts the caches (nothing when EVICT_MB is 0); returns the time
        // the step starts.
        let mut step_start = || {
            for byte in evict.iter_mut().step_by(64) {
                *byte = byte.wrapping_add(1);
            }
            std::hint::black_box(&evict);
            Instant::now()
        };
        while match fixed {
            Some(n) => split.n < n,
            None => start.elapsed() < budget || split.n < 20,
        } {
            id += 1;
            let mut ex = Exchange::new(id);
            let t0 = step_start();
            ex.on(
                Event::RequestHeaders {
                    headers: &headers,
                    end_of_stream: false,
                },
                &mut gw,
                &host,
                &mut out,
            );
            let t1 = Instant::now();
            let body_start = step_start();
            ex.on(
                Event::RequestBody {
                    size: host.request.len(),
                    end_of_stream: true,
                },
                &mut gw,
                &host,
                &mut out,
            );
            let t2 = Instant::now();
            let answer_start = step_start();
            ex.on(
                Event::ResponseHeaders {
                    status: 200,
                    content_type: "application/json".into(),
                    content_encoding: String::new(),
                    end_of_stream: false,
                },
                &mut gw,
                &host,
                &mut out,
            );
            ex.on(
                Event::ResponseBody {
                    size: host.response.len(),
                    end_of_stream: true,
                },
                &mut gw,
                &host,
                &mut out,
            );
            let t3 = Instant::now();
            let end_start = step_start();
            ex.on(
                Event::End {
                    code_details: Some("via_upstream".into()),
                },
                &mut gw,
                &host,
                &mut out,
            );
            // What the worker does with the effects that cost in the core:
            // the record into the outbox, batches taken and acknowledged.
            for e in out.drain(..) {
                if let tracegate_policy::exchange::Effect::Enqueue { record, reserved } = e {
                    let mut more = Vec::new();
                    gw.enqueue(*record, reserved, 0, &mut more);
                }
            }
            while let Some(id) = gw.outbox.take_batch(u64::MAX / 2).map(|b| b.id) {
                gw.outbox.acknowledge(id);
            }
            let t4 = Instant::now();
            if id > 3 {
                split.headers += t1 - t0;
                split.body += t2 - body_start;
                split.response += t3 - answer_start;
                split.end += t4 - end_start;
                split.n += 1;
            }
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(split.n);
        #[cfg(target_arch = "wasm32")]
        let memory = format!(
            " ({} MB linear memory)",
            core::arch::wasm32::memory_size(0) * 65_536 / 1_000_000
        );
        #[cfg(not(target_arch = "wasm32"))]
        let memory = String::new();
        let total = split.headers + split.body + split.response + split.end;
        println!(
            "| {kb} KB{memory} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            us(split.headers),
            us(split.body),
            us(split.response),
            us(split.end),
            us(total)
        );
    }
}
