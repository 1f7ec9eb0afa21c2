#![allow(clippy::expect_used)] // a benchmark: a failed expectation should stop it loudly
//! Masking throughput on a realistic chat body: a multi-turn OpenAI chat
//! request of about 64 KB of prose, code and logs with a few secrets in it,
//! inspected whole (parse, walk, detect, mask, serialise) as the filter does.
//! Also the detector scan alone over the same text, the SSE stream path,
//! and high-entropy text (base64 of bytes that are no media format: the
//! detectors' lazy DFA of all patterns gives up there).
//! Runs natively and, built for wasm32-wasip1, inside V8 (`make bench`).

use base64::Engine;
use serde_json::json;
use std::time::{Duration, Instant};
use tracegate_policy::inspect::config::{InspectionConfig, MaskingConfig};
use tracegate_policy::inspect::{Inspector, RequestVerdict};
use tracegate_policy::llm::Api;
use tracegate_policy::mask::{Hits, Tokens};

const PROSE: &str = "The deployment failed after the migration step because the connection pool \
was exhausted; we rolled back at 14:32 and the error rate returned to normal within five minutes. \
Next we will add a canary stage, raise the pool size to 64 and alert on saturation above 80 percent. ";
const CODE: &str = "fn main() {\n    let cfg = Config::load(\"/etc/app/config.toml\")?;\n    for (i, item) in cfg.items.iter().enumerate() {\n        println!(\"{i}: {item:?}\");\n    }\n}\n";
const LOG: &str = "2026-11-24T10:15:02Z INFO request_id=7f3a2c path=/v1/orders status=200 latency_ms=42 user=u-1842\n";

fn body(kb: usize, secrets: bool) -> Vec<u8> {
    let mut messages =
        vec![json!({"role": "system", "content": "You are an SRE assistant. Answer briefly."})];
    let mut size = 0;
    let mut turn = 0;
    while size < kb * 1024 {
        let mut text = format!("{PROSE}{CODE}{LOG}{LOG}{PROSE}");
        if secrets && turn % 4 == 0 {
            text.push_str("contact ops@example.com, key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 ");
        }
        size += text.len();
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": text}));
        turn += 1;
    }
    json!({"model": "gpt-4o", "messages": messages})
        .to_string()
        .into_bytes()
}

/// `kb` KB of base64 of pseudo-random bytes: not a media format, so
/// inspected as text (a zip, a key file or an encrypted blob an agent
/// passes on looks like this).
fn high_entropy(kb: usize) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..kb * 768)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A request with 256 KB of high-entropy base64 in one text part.
fn archive_request() -> Vec<u8> {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Unpack this archive and list its files."},
        {"type": "text", "text": high_entropy(256)}]}]})
    .to_string()
    .into_bytes()
}

/// A tool result of hashes or keys: 4,000 short high-entropy strings.
fn hashes_request() -> Vec<u8> {
    let blob = high_entropy(192);
    let parts: Vec<_> = blob
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .map(|item| json!({"type": "text", "text": item}))
        .collect();
    json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "Which of these objects changed?"},
        {"role": "tool", "tool_call_id": "call_1", "content": parts}]})
    .to_string()
    .into_bytes()
}

/// MB/s of `f`: the best of five slices of `budget` (on a machine shared
/// with other work, interference only ever slows a slice down, so the best
/// slice is the closest to what the code itself costs); or, with `N=k` in
/// the environment, exactly `k` runs after the first (instruction counts
/// under callgrind).
fn measure(budget: Duration, bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    if let Some(k) = std::env::var("N").ok().and_then(|n| n.parse::<u64>().ok()) {
        let start = Instant::now();
        for _ in 0..k {
            f();
        }
        return (bytes as f64 * k as f64) / start.elapsed().as_secs_f64() / 1e6;
    }
    let slice = budget / 5;
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while n == 0 || start.elapsed() < slice {
            f();
            n += 1;
        }
        best = best.max((bytes as f64 * n as f64) / start.elapsed().as_secs_f64() / 1e6);
    }
    best
}

fn main() {
    let label = std::env::args().nth(1).unwrap_or_else(|| "native".into());
    let inspector = Inspector::new(&InspectionConfig::default(), &MaskingConfig::default(), &[])
        .expect("inspector");
    let masker = inspector.masker().expect("masker");
    let budget = Duration::from_millis(700);
    // `CASE=Anthropic` runs only the cases whose name contains it (profiling).
    let only = std::env::var("CASE").unwrap_or_default();
    let run = |name: &str| name.contains(only.as_str());
    println!(
        "Masking throughput ({label}), MB/s, all {} built-in detectors",
        masker.catalogue().detectors().len()
    );
    println!("{:<44} {:>10}", "case", "MB/s");
    // Whole requests, inspected as the filter does.
    let mut requests: Vec<(String, Vec<u8>)> = [
        ("chat request 64 KB, no secrets", 64, false),
        ("chat request 64 KB, 17 secrets", 64, true),
        ("chat request 4 KB, 1 secret", 4, true),
    ]
    .into_iter()
    .map(|(name, kb, secrets)| (format!("{name} (whole request)"), body(kb, secrets)))
    .collect();
    requests.push((
        "request with 256 KB of high-entropy base64".into(),
        archive_request(),
    ));
    requests.push((
        "request with 4,000 high-entropy strings of 64 B".into(),
        hashes_request(),
    ));
    for (name, b) in requests.iter().filter(|(name, _)| run(name)) {
        let mbps = measure(budget, b.len(), || {
            let v = inspector.request("application/json", b, &mut Tokens::default());
            assert!(matches!(v, RequestVerdict::Forward { .. }));
        });
        println!("{name:<44} {mbps:>10.1}");
    }
    let text = format!("{PROSE}{CODE}{LOG}").repeat(200);
    let mut findings = Vec::new();
    if run("detector scan") {
        let mbps = measure(budget, text.len(), || {
            masker.catalogue().find(&text, &mut findings)
        });
        println!("{:<44} {:>10.1}", "detector scan only, 70 KB of text", mbps);
    }

    // The SSE path: 64 KB of answer text in 20-byte deltas, as each API
    // streams it (with its real envelope), MB/s of stream bytes.
    let pieces: Vec<String> = text
        .as_bytes()
        .chunks(20)
        .take(3200)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let blob = high_entropy(48);
    let blob_pieces: Vec<String> = blob
        .as_bytes()
        .chunks(20)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let chat_chunks = |pieces: &[String]| {
        let mut s = String::new();
        for p in pieces {
            let ev = json!({"id": "chatcmpl-AbC123dEf456", "object": "chat.completion.chunk",
                "created": 1764070000, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_5f2c1b",
                "choices": [{"index": 0, "delta": {"content": p}, "logprobs": null, "finish_reason": null}]});
            s.push_str(&format!("data: {ev}\n\n"));
        }
        s + "data: [DONE]\n\n"
    };
    let streams = [
        (
            "SSE OpenAI chat chunks",
            Api::OpenAiChat,
            chat_chunks(&pieces),
        ),
        (
            "SSE OpenAI chat chunks, high-entropy base64",
            Api::OpenAiChat,
            chat_chunks(&blob_pieces),
        ),
        ("SSE Responses output_text.delta", Api::OpenAiResponses, {
            let mut s = String::new();
            for (i, p) in pieces.iter().enumerate() {
                let ev = json!({"type": "response.output_text.delta", "sequence_number": i,
                    "item_id": "msg_67c1a2b3", "output_index": 0, "content_index": 0, "delta": p});
                s.push_str(&format!(
                    "event: response.output_text.delta\ndata: {ev}\n\n"
                ));
            }
            s
        }),
        ("SSE Anthropic text_delta", Api::Anthropic, {
            let mut s = String::new();
            for p in &pieces {
                let ev = json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p}});
                s.push_str(&format!("event: content_block_delta\ndata: {ev}\n\n"));
            }
            s
        }),
    ];
    for (name, api, stream) in streams {
        if !run(name) {
            continue;
        }
        let mbps = measure(budget, stream.len(), || {
            let mut s = inspector.stream(api);
            let mut t = Tokens::default();
            let mut h = Hits::default();
            for chunk in stream.as_bytes().chunks(1024) {
                let _ = s.push(masker, chunk, &mut t, &mut h);
            }
            let _ = s.finish(masker, &mut t, &mut h);
        });
        println!(
            "{:<44} {:>10.1}",
            format!("{name}, 64 KB text in 20-byte deltas"),
            mbps
        );
    }
}
