//! The real `tracegate serve` process, killed with SIGKILL while clients
//! export over real gRPC: after a restart every acknowledged record is there
//! and the store verifies.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracegate_proto::v1::record_service_client::RecordServiceClient;
use tracegate_proto::v1::{ExportRequest, Record};

mod common;
use common::{field, Server, BIN};

fn start(data: &Path) -> (Server, u16) {
    let (server, line) = common::serve(data, &["--segment-size", "1MiB"]);
    let port = field(&line, "grpc=127.0.0.1:").parse().unwrap();
    (server, port)
}

fn record(client: usize, n: usize) -> Record {
    Record {
        record_id: format!("c{client}-{n:08}"),
        session_id: format!("kill9-{client}"),
        request_start_unix_nanos: 1,
        path: "/v1/chat/completions".into(),
        request_body: Some(tracegate_proto::v1::Body {
            data: vec![b'x'; 1000],
            size: 1000,
            ..Default::default()
        }),
        ..Record::default()
    }
}

#[test]
fn every_acknowledged_record_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, port) = start(&data);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut clients = Vec::new();
    for c in 0..8 {
        let acked = acked.clone();
        clients.push(runtime.spawn(async move {
            let endpoint = format!("http://127.0.0.1:{port}");
            let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint)
                .unwrap()
                .connect()
                .await
            else {
                return;
            };
            let mut client = RecordServiceClient::new(channel);
            for batch in 0.. {
                let records: Vec<Record> = (0..16).map(|i| record(c, batch * 16 + i)).collect();
                let ids: Vec<String> = records.iter().map(|r| r.record_id.clone()).collect();
                match client.export(ExportRequest { records }).await {
                    Ok(answer) => {
                        assert_eq!(answer.into_inner().accepted, 16);
                        acked.lock().unwrap().extend(ids);
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 4000 {
        assert!(Instant::now() < deadline, "clients made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.0.kill().unwrap(); // SIGKILL, mid-load
    server.0.wait().unwrap();
    for c in clients {
        runtime.block_on(c).unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();

    // Restart: recovery runs, then stop cleanly.
    let (restarted, _) = start(&data);
    drop(restarted);

    let out = Command::new(BIN)
        .args(["export", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: HashSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["record_id"].as_str().unwrap().to_string()
        })
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(stored.len() >= acked.len());

    let verify = Command::new(BIN)
        .args(["verify", "--data"])
        .arg(&data)
        .arg("--pubkey")
        .arg(data.join("seal.pub"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.starts_with("OK:"), "{report}");
    eprintln!(
        "acknowledged {} records before SIGKILL, {} stored after restart; {report}",
        acked.len(),
        stored.len()
    );
}
