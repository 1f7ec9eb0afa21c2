//! `make bench`'s Envoy benchmark, in its seconds-long smoke form, so that
//! it keeps working: real Envoy with and without the filter under wrk.

use serde_json::Value;
use std::process::Command;

#[test]
fn envoy_benchmark_runs_and_reports() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tracegate-bench"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("| 4 KB |"), "{stdout}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("envoy.json")).unwrap()).unwrap();
    let row = &report["load"][0];
    for side in ["passthrough", "tracegate", "floor"] {
        assert!(row[side]["rps"].as_f64().unwrap() > 0.0, "{report}");
    }
    // The floor forwards everything: an error there makes its ratio meaningless.
    assert_eq!(row["floor"]["errors"], 0, "{report}");
    assert!(report["records_exported"].as_u64().unwrap() > 0, "{report}");
    // Errors are reported per row, not a reason to stop.
    assert!(row["tracegate"]["errors"].is_string(), "{report}");
    let latency = report["latency_4kb_fixed_rate"].as_array().unwrap();
    assert_eq!(
        latency.len(),
        7,
        "two rates, three listeners, and the disk at the light rate: {report}"
    );
    assert!(latency.iter().any(|l| l["listener"] == "disk"), "{report}");
    for l in latency {
        assert!(l["sent"].as_u64().unwrap() > 0, "{l}");
        assert!(l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap());
    }
    // The breakdown reads the worker thread's own CPU: every listener costs some.
    let breakdown = report["breakdown_4kb"].as_array().unwrap();
    assert_eq!(breakdown.len(), 7, "{report}");
    for b in breakdown {
        assert!(b["worker_cpu_us"].as_f64().unwrap() > 0.0, "{b}");
    }
    // The timed listener reports time in every callback a request makes.
    let callbacks = report["callbacks_4kb"]["callbacks"].as_array().unwrap();
    for name in ["request_headers", "request_body", "response_body", "end"] {
        let c = callbacks.iter().find(|c| c["callback"] == name).unwrap();
        assert!(c["calls"].as_u64().unwrap() > 0, "{c}");
        assert!(c["ns"].as_u64().unwrap() > 0, "{c}");
    }
    assert!(
        report["memory"]["wasm_memory_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
}
