//! Collector benchmark (run by `make bench`): durable records per second and
//! acknowledgement latency for 1 KB records through the real `tracegate serve`
//! over real gRPC, next to a raw write+fdatasync loop on the same disk, and
//! `verify` throughput over the data written.
//!
//! Usage: store_bench [PATH_TO_TRACEGATE_BINARY] [DIR] [JSON_OUT]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracegate_collector::ledger::layout::Layout;
use tracegate_collector::ledger::{keys, verify};
use tracegate_proto::v1::record_service_client::RecordServiceClient;
use tracegate_proto::v1::{Body, ExportRequest, Record};

const RECORD_BYTES: usize = 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().unwrap_or("target/release/tracegate".into()));
    let base = PathBuf::from(args.next().unwrap_or("target/bench/store".into()));
    let json_out = args.next().map(PathBuf::from);
    let mut report = serde_json::json!({"raw": [], "serve": []});
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("creating the bench directory");

    println!("# Collector: durable 1 KB records (fdatasync before every acknowledgement)");
    println!();
    println!("| setup | records/s | ack p50 | ack p99 | fdatasyncs/s |");
    println!("|---|---:|---:|---:|---:|");
    for batch in [1, 64] {
        let (rate, lat) = raw_loop(&base.join("raw"), batch, Duration::from_secs(2));
        push(
            &mut report["raw"],
            serde_json::json!({"records_per_sync": batch, "records_per_s": rate,
            "p50_ms": pct(&lat, 50).as_secs_f64() * 1e3, "p99_ms": pct(&lat, 99).as_secs_f64() * 1e3}),
        );
        println!(
            "| raw write+fdatasync, {batch} record{} per sync | {rate:.0} | {} | {} | {:.0} |",
            if batch == 1 { "" } else { "s" },
            ms(pct(&lat, 50)),
            ms(pct(&lat, 99)),
            rate / batch as f64
        );
    }
    let mut last_data = None;
    for (clients, batch) in [(1, 1), (16, 1), (8, 64), (32, 64), (64, 128)] {
        let data = base.join(format!("serve-{clients}x{batch}"));
        let (rate, lat, syncs) =
            through_server(&bin, &data, clients, batch, Duration::from_secs(3));
        println!(
            "| tracegate serve, {clients} gRPC clients × {batch} records per call | {rate:.0} | {} | {} | {syncs:.0} |",
            ms(pct(&lat, 50)),
            ms(pct(&lat, 99)),
        );
        push(
            &mut report["serve"],
            serde_json::json!({"clients": clients, "records_per_call": batch,
                "records_per_s": rate, "syncs_per_s": syncs,
                "p50_ms": pct(&lat, 50).as_secs_f64() * 1e3,
                "p99_ms": pct(&lat, 99).as_secs_f64() * 1e3}),
        );
        last_data = Some(data);
    }
    println!();
    let mut verified = None;
    if let Some(data) = last_data {
        let key = keys::read_public(&data.join("seal.pub")).expect("seal.pub");
        let started = Instant::now();
        let report = verify::verify(&Layout::new(&data), &key).expect("verify");
        let secs = started.elapsed().as_secs_f64();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        println!("| verify | MB | entries | seconds | MB/s |");
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| {} segments | {:.1} | {} | {secs:.2} | {:.0} |",
            report.segments,
            report.bytes as f64 / 1e6,
            report.entries,
            report.bytes as f64 / 1e6 / secs
        );
        verified = Some(
            serde_json::json!({"mb": report.bytes as f64 / 1e6, "seconds": secs,
            "mb_per_s": report.bytes as f64 / 1e6 / secs}),
        );
    }
    report["verify"] = verified.unwrap_or_default();
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("json"))
            .expect("writing the JSON report");
    }
}

fn push(list: &mut serde_json::Value, row: serde_json::Value) {
    if let Some(a) = list.as_array_mut() {
        a.push(row);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Appends `batch` 1 KB records per write and fdatasyncs each write.
fn raw_loop(dir: &Path, batch: usize, run: Duration) -> (f64, Vec<Duration>) {
    std::fs::create_dir_all(dir).expect("dir");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .expect("raw.log");
    let buf = vec![b'x'; RECORD_BYTES * batch];
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < run {
        let t = Instant::now();
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    let rate = (lat.len() * batch) as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat)
}

fn record(client: usize, n: usize) -> Record {
    Record {
        record_id: format!("c{client}-{n:010}"),
        session_id: format!("bench-{client}"),
        request_start_unix_nanos: 1,
        path: "/v1/chat/completions".into(),
        // 1 KB of record in all (the id, session and framing make up the rest).
        request_body: Some(Body {
            data: vec![b'x'; RECORD_BYTES - 80],
            size: (RECORD_BYTES - 80) as u64,
            ..Default::default()
        }),
        ..Record::default()
    }
}

/// Runs `tracegate serve` on a fresh data directory and measures what
/// `clients` concurrent exporters get acknowledged.
fn through_server(
    bin: &Path,
    data: &Path,
    clients: usize,
    batch: usize,
    run: Duration,
) -> (f64, Vec<Duration>, f64) {
    let mut child = Command::new(bin)
        .args(["serve", "--grpc", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server output");
    let port: u16 = line
        .split("grpc=127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let total: usize = runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let latencies = latencies.clone();
            tasks.push(tokio::spawn(async move {
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                        .expect("endpoint")
                        .connect()
                        .await
                        .expect("connect");
                let mut client = RecordServiceClient::new(channel);
                let mut sent = 0;
                let mut mine = Vec::new();
                while started.elapsed() < run {
                    let records: Vec<Record> = (0..batch).map(|i| record(c, sent + i)).collect();
                    let t = Instant::now();
                    let answer = client
                        .export(ExportRequest { records })
                        .await
                        .expect("export");
                    mine.push(t.elapsed());
                    assert_eq!(answer.into_inner().accepted as usize, batch);
                    sent += batch;
                }
                latencies.lock().expect("lock").extend(mine);
                sent
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("client");
        }
        total
    });
    let secs = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort();
    // Every durable group is one fdatasync: count them from the frames'
    // timestamps (one per group commit).
    let syncs = group_commits(data) as f64 / secs;
    (total as f64 / secs, lat, syncs)
}

/// Distinct frame timestamps = group commits (the writer stamps a group once).
fn group_commits(data: &Path) -> usize {
    let layout = Layout::new(data);
    let mut groups = 0;
    for n in layout.segments().unwrap_or_default() {
        let Ok(bytes) = std::fs::read(layout.segment(n)) else {
            continue;
        };
        if let Ok(scan) = tracegate_collector::ledger::frame::scan(&bytes) {
            let mut last = None;
            for f in &scan.frames {
                if last != Some(f.unix_nanos) {
                    groups += 1;
                    last = Some(f.unix_nanos);
                }
            }
        }
    }
    groups
}
