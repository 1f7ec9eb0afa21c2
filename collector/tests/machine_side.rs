//! The collector's machine side through the real server: with TLS, only
//! clients holding a certificate from the configured CA get past the
//! handshake, for records and for approval calls alike; whatever the
//! client, bad input (oversized, malformed, implausible records) is refused
//! with a reason and nothing of it is stored.

use std::path::Path;
use std::process::Command;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracegate_proto::v1::record_service_client::RecordServiceClient;
use tracegate_proto::v1::{Body, ExportRequest, Record};

mod common;
use common::{field, BIN};

fn record(id: &str) -> Record {
    Record {
        record_id: id.into(),
        session_id: "machine-side".into(),
        request_start_unix_nanos: 1,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        request_body: Some(Body {
            data: b"{}".to_vec(),
            size: 2,
            ..Body::default()
        }),
        ..Record::default()
    }
}

/// Record ids in the store (`tracegate export`).
fn stored(data: &Path) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["export", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["record_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn certs(dir: &Path) {
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// A gRPC channel to `port` over TLS trusting `ca_dir`'s CA, presenting the
/// client certificate `identity` (directory, file stem) if any.
async fn tls_channel(
    port: u16,
    ca_dir: &Path,
    identity: Option<(&Path, &str)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_dir, "ca.pem")))
        .domain_name("tracegate-collector");
    if let Some((dir, stem)) = identity {
        tls = tls.identity(Identity::from_pem(
            read(dir, &format!("{stem}.pem")),
            read(dir, &format!("{stem}.key")),
        ));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn export(
    channel: Channel,
    records: Vec<Record>,
) -> Result<tracegate_proto::v1::ExportResponse, tonic::Status> {
    RecordServiceClient::new(channel)
        .export(ExportRequest { records })
        .await
        .map(|r| r.into_inner())
}

#[test]
fn only_clients_with_a_certificate_from_the_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (dir.path().join("tls"), dir.path().join("other-ca"));
    certs(&good);
    certs(&other);
    let config = dir.path().join("serve.json");
    std::fs::write(
        &config,
        r#"{"tls": {"cert": "tls/collector.pem", "key": "tls/collector.key", "client_ca": "tls/ca.pem"}}"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let (_server, line) = common::serve(&data, &["--config", &config.to_string_lossy()]);
    assert!(line.contains("tls=client-certificates"), "{line}");
    let port: u16 = field(&line, "grpc=127.0.0.1:").parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The gateway's certificate: in.
        let ok = export(
            tls_channel(port, &good, Some((&good, "gateway")))
                .await
                .unwrap(),
            vec![record("from-the-gateway")],
        )
        .await
        .unwrap();
        assert_eq!(ok.accepted, 1);

        // No certificate, another CA's, the server's own (not for clients):
        // refused at the handshake (tonic connects lazily: the call fails).
        for (what, identity) in [
            ("no certificate", None),
            (
                "another CA's certificate",
                Some((other.as_path(), "gateway")),
            ),
            ("a server certificate", Some((good.as_path(), "collector"))),
        ] {
            let refused = match tls_channel(port, &good, identity).await {
                Err(e) => e,
                Ok(ch) => format!("{:?}", export(ch, vec![record(what)]).await.unwrap_err()),
            };
            assert!(!refused.is_empty(), "{what}");
        }
        // Plain HTTP/2 without TLS.
        let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(ch) = plain.connect().await {
            export(ch, vec![record("plaintext")]).await.unwrap_err();
        }
    });

    // The approval calls on the same port: the same door (no approval
    // service here, so a client that gets in hears gRPC's UNIMPLEMENTED).
    let url = format!("https://127.0.0.1:{port}/v1/approvals");
    let ca = ureq::tls::Certificate::from_pem(&read(&good, "ca.pem")).unwrap();
    let agent = |client: Option<&Path>| -> ureq::Agent {
        let mut tls = ureq::tls::TlsConfig::builder().root_certs(
            ureq::tls::RootCerts::new_with_certs(std::slice::from_ref(&ca)),
        );
        if let Some(d) = client {
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(
                &[ureq::tls::Certificate::from_pem(&read(d, "gateway.pem")).unwrap()],
                ureq::tls::PrivateKey::from_pem(&read(d, "gateway.key")).unwrap(),
            )));
        }
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into()
    };
    // ureq checks the server name against the URL's host: 127.0.0.1 is in
    // the collector's certificate.
    let answer = agent(Some(&good)).post(&url).send("{}").unwrap();
    assert_eq!(answer.headers().get("grpc-status").unwrap(), "12");
    assert!(agent(None).post(&url).send("{}").is_err());
    assert!(agent(Some(&other)).post(&url).send("{}").is_err());

    assert_eq!(
        stored(&data),
        ["from-the-gateway"],
        "nothing else was stored"
    );
}

#[derive(Clone, PartialEq, prost::Message)]
struct NotAnExport {
    /// Field 1 of ExportRequest is a message; a varint there is malformed.
    #[prost(uint64, tag = "1")]
    records: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BrokenRecords {
    /// Length-delimited, but not a Record inside.
    #[prost(bytes = "vec", tag = "1")]
    records: Vec<u8>,
}

async fn send_raw<M: prost::Message + Send + Sync + 'static>(
    channel: Channel,
    message: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tracegate.v1.RecordService/Export");
    let codec: tonic_prost::ProstCodec<M, tracegate_proto::v1::ExportResponse> =
        tonic_prost::ProstCodec::default();
    grpc.unary(tonic::Request::new(message), path, codec)
        .await
        .unwrap_err()
}

#[test]
fn bad_input_is_refused_with_a_reason_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_server, line) = common::serve(&data, &[]);
    let port: u16 = field(&line, "grpc=127.0.0.1:").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        // Implausible records are rejected one by one, with the reason; the
        // good one in the same batch is stored.
        let mut absurd = record("absurd-size");
        absurd.response_body = Some(Body {
            size: u64::MAX,
            ..Body::default()
        });
        let mut long_id = record("");
        long_id.record_id = "x".repeat(4096);
        let mut untruncated = record("claims-truncated");
        untruncated.request_body.as_mut().unwrap().truncated = true;
        let answer = export(
            channel.clone(),
            vec![record("good"), record(""), absurd, long_id, untruncated],
        )
        .await
        .unwrap();
        assert_eq!(answer.accepted, 1);
        let reasons: Vec<&str> = answer.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert_eq!(reasons[0], "record_id is empty");
        assert!(
            reasons[1].contains("response_body.size") && reasons[1].contains("absurd"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].contains("record_id is 4096 bytes"),
            "{reasons:?}"
        );
        assert!(reasons[3].contains("truncated"), "{reasons:?}");
        assert!(
            answer.rejected[2].record_id.len() <= 128,
            "a refused id is not echoed whole"
        );

        // Over the message limit: refused by the decoder.
        let mut huge = record("huge");
        huge.request_body = Some(Body {
            data: vec![b'x'; 33 << 20],
            size: 33 << 20,
            ..Body::default()
        });
        let status = export(channel.clone(), vec![huge]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("too large"), "{status:?}");

        // Not an ExportRequest at all.
        for status in [
            send_raw(channel.clone(), NotAnExport { records: 7 }).await,
            send_raw(
                channel.clone(),
                BrokenRecords {
                    records: vec![0xff; 9],
                },
            )
            .await,
        ] {
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            assert!(status.message().contains("decode"), "{status:?}");
        }
    });
    assert_eq!(stored(&data), ["good"]);
}
