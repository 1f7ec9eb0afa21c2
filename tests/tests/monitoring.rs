//! Continuous monitoring through the real Envoy: token usage on every
//! record (the official SDKs, streamed and whole, all three APIs), the
//! collector's metrics scraped by a real Prometheus and queried with
//! PromQL, and `tracegate tail` following the records as they are stored.

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tracegate_e2e::jwt::{claims, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::prometheus::Prometheus;
use tracegate_e2e::{collector_bin, poll, run_client, Process, Stack};

const SUBJECT: &str = "monitor-alice";
/// Exchanges `sdk_usage.py` makes.
const EXCHANGES: usize = 5;

fn plugin_config() -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "jwt": {"required": true, "providers": [{
            "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.tracegate.test/jwks.json", "cluster": "idp",
                            "timeout_ms": 1000}
        }]}
    })
}

#[test]
fn usage_metrics_and_tail_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let mut stack = Stack::start_with_jwks(&plugin_config(), &jwks).unwrap();
    let token = keys
        .mint_one(json!({"key": "ec256", "alg": "ES256", "claims": claims(SUBJECT)}))
        .unwrap();

    // `tail` follows the store from now on, only this caller's records.
    let mut tail_command = Command::new(collector_bin());
    tail_command
        .args(["tail", "--json", "-n", "0", "--identity", SUBJECT, "--data"])
        .arg(&stack.collector.data);
    let mut tail = Process::spawn("tail", &mut tail_command, dir.path()).unwrap();
    let prometheus = Prometheus::start(dir.path(), &stack.collector.metrics_url).unwrap();

    let session = "monitoring-usage";
    let out = run_client("sdk_usage.py", &[&stack.envoy.url(""), session, &token]).unwrap();
    assert_eq!(out.matches("ok ").count(), 6, "{out}");

    // Every record states usage; the streamed chat the client did not ask
    // usage for has it too, asked upstream by tracegate.
    let records = stack
        .collector
        .wait_for_records(session, EXCHANGES)
        .unwrap();
    let mut input = 0;
    let mut output = 0;
    for r in &records {
        let u = &r["usage"];
        let path = r["path"].as_str().unwrap();
        assert!(u["input_tokens"].as_u64().is_some(), "{path}: {u}");
        assert!(u["output_tokens"].as_u64().is_some(), "{path}: {u}");
        assert!(
            u["request_model"].as_str().unwrap().contains("usage"),
            "{u}"
        );
        assert_eq!(u["response_model"], u["request_model"], "{u}");
        input += u["input_tokens"].as_u64().unwrap();
        output += u["output_tokens"].as_u64().unwrap();
    }
    let providers: Vec<&str> = records
        .iter()
        .map(|r| r["usage"]["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        providers,
        ["chat", "chat", "chat", "responses", "messages"],
        "{records:?}"
    );
    let first = &stack.upstream.received().unwrap()[0];
    let asked: Value = serde_json::from_str(first["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        asked["stream_options"]["include_usage"], true,
        "asked upstream for the client that did not: {asked}"
    );

    // `tracegate usage` sums the same from the store.
    let totals = stack
        .collector
        .cli(&["usage", "--by", "session", "--json"])
        .unwrap();
    let row: Value = totals
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["key"] == session)
        .unwrap_or_else(|| panic!("{totals}"));
    assert_eq!(row["exchanges"], EXCHANGES, "{row}");
    assert_eq!(row["input_tokens"], input, "{row}");
    assert_eq!(row["output_tokens"], output, "{row}");

    // Prometheus scraped the collector: the session's tokens by caller.
    let query = |token_type: &str| {
        format!(
            "sum(gen_ai_client_token_usage_sum{{identity=\"{SUBJECT}\",gen_ai_token_type=\"{token_type}\"}})"
        )
    };
    for (token_type, expected) in [("input", input), ("output", output)] {
        let promql = query(token_type);
        poll(&promql, Duration::from_secs(30), || {
            let v = prometheus.value(&promql)?;
            Ok((v == Some(expected as f64)).then_some(()))
        })
        .unwrap();
    }
    let requests = format!("sum(tracegate_llm_requests_total{{identity=\"{SUBJECT}\"}})");
    poll(&requests, Duration::from_secs(30), || {
        let v = prometheus.value(&requests)?;
        Ok((v == Some(EXCHANGES as f64)).then_some(()))
    })
    .unwrap();
    let by_model = prometheus
        .query(&format!(
            "sum by (gen_ai_request_model) (gen_ai_client_token_usage_count{{identity=\"{SUBJECT}\",gen_ai_token_type=\"input\"}})"
        ))
        .unwrap();
    assert_eq!(
        by_model.len(),
        3,
        "gpt-usage, gpt-usage-r, claude-usage: {by_model:?}"
    );
    let stored = prometheus
        .wait_for_value("tracegate_ingest_records_total", Duration::from_secs(30))
        .unwrap();
    assert!(stored >= EXCHANGES as f64, "{stored}");

    // `tail` printed each of them as it was stored, with its usage.
    let lines = poll("tail to print the records", Duration::from_secs(30), || {
        tail.check_alive()?;
        let lines: Vec<Value> = tail
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok((lines.len() >= EXCHANGES).then_some(lines))
    })
    .unwrap();
    let ids = |v: &[Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|r| r["record_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&lines), ids(&records), "each record once");
    assert!(lines.iter().all(|l| l["usage"]["input_tokens"].is_u64()));
}
