//! No way around the gateway: the agent holds no provider key (the gateway
//! injects it after tracegate), so the same request sent straight to the
//! LLM API is refused; and only gateways reach the collector's machine
//! side (gRPC ingest, the filters' approval calls): a client without the
//! gateway's certificate is refused at the handshake and stores nothing.

use serde_json::json;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracegate_e2e::jwt::{claims, Keys, AUDIENCE, ISSUER};
use tracegate_e2e::{make_certs, poll, run_client, Stack, StackOptions};
use tracegate_proto::v1::record_service_client::RecordServiceClient;
use tracegate_proto::v1::{ExportRequest, Record};

const PROVIDER_KEY: &str = "sk-org-only-the-gateway-holds-this";

fn plugin_config() -> serde_json::Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "jwt": {"required": true, "providers": [{
            "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"uri": "http://idp.tracegate.test/jwks.json", "cluster": "idp"}
        }]}
    })
}

#[test]
fn agent_without_the_provider_key_is_answered_only_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let token = keys
        .mint_one(json!({"key": "ec256", "alg": "ES256", "claims": claims("agent-7")}))
        .unwrap();
    let options = StackOptions {
        provider_key: Some(PROVIDER_KEY.into()),
        ..StackOptions::default()
    };
    let mut stack = Stack::start_with_options(
        &dir.path().join("stack"),
        &plugin_config(),
        &options,
        |u, _| u.publish_jwks(&jwks),
    )
    .unwrap();
    let out = run_client(
        "sdk_gateway.py",
        &[
            &stack.envoy.url("/v1"),
            &format!("http://127.0.0.1:{}/v1", stack.upstream.port),
            "around",
            &token,
        ],
    )
    .unwrap();
    assert!(out.contains("through the gateway: answered"), "{out}");
    assert!(
        out.contains("with the agent's JWT: refused (401 invalid_api_key)"),
        "{out}"
    );

    // The provider saw one request: the gateway's, with the organisation's
    // key and without the agent's token.
    let received = stack.upstream.received().unwrap();
    assert_eq!(received.len(), 1, "{received:?}");
    let auth = received[0]["headers"]["authorization"].as_str().unwrap();
    assert_eq!(auth, format!("Bearer {PROVIDER_KEY}"));
    assert!(
        !received[0].to_string().contains(&token),
        "the agent's token never left the gateway"
    );
    let records = stack.collector.wait_for_records("around", 1).unwrap();
    assert_eq!(records[0]["identity"]["subject"], "agent-7");
}

#[test]
fn only_a_gateway_certificate_gets_into_the_collector_machine_side() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let token = keys
        .mint_one(json!({"key": "ec256", "alg": "ES256", "claims": claims("alice")}))
        .unwrap();
    let mut stack = Stack::start_with(&dir.path().join("stack"), &plugin_config(), |u, _| {
        u.publish_jwks(&jwks)
    })
    .unwrap();
    // Records from Envoy (which presents the gateway's certificate) arrive.
    let answer = ureq::post(stack.envoy.url("/v1/chat/completions"))
        .header("authorization", &format!("Bearer {token}"))
        .header("x-session-id", "via-envoy")
        .send_json(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
    assert_eq!(answer.status(), 200);
    stack.collector.wait_for_records("via-envoy", 1).unwrap();
    let before = stack.collector.stored_ids().unwrap();
    assert_eq!(before.len(), 1);

    let tls = stack.collector.tls.clone().unwrap();
    let other = dir.path().join("other-ca");
    make_certs(&other).unwrap();
    let port = stack.collector.grpc_port;
    let forged = Record {
        record_id: "0192d5f2-0000-7000-8000-000000000001".into(),
        session_id: "forged".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        ..Record::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
        for (what, identity, scheme) in [
            ("no certificate", None, "https"),
            ("another CA's certificate", Some(other.clone()), "https"),
            ("no TLS", None, "http"),
        ] {
            let mut endpoint =
                Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}")).unwrap();
            if scheme == "https" {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&tls, "ca.pem")))
                    .domain_name("tracegate-collector");
                if let Some(d) = &identity {
                    config = config.identity(Identity::from_pem(
                        read(d, "gateway.pem"),
                        read(d, "gateway.key"),
                    ));
                }
                endpoint = endpoint.tls_config(config).unwrap();
            }
            let result = match endpoint.connect().await {
                Ok(channel) => RecordServiceClient::new(channel)
                    .export(ExportRequest {
                        records: vec![forged.clone()],
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            assert!(result.is_err(), "{what}: the export went through");
        }
    });
    // The filters' approval calls are behind the same door: a caller cannot
    // create or redeem approvals itself.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_pem(&std::fs::read(tls.join("ca.pem")).unwrap())
                        .unwrap(),
                ]))
                .build(),
        )
        .build()
        .into();
    for path in ["/v1/approvals", "/v1/approvals/apr_x/redeem"] {
        let url = format!("https://127.0.0.1:{port}{path}");
        assert!(agent.post(&url).send("{}").is_err(), "{path}");
    }

    assert_eq!(
        stack.collector.stored_ids().unwrap(),
        before,
        "nothing stored"
    );
    poll(
        "the refusal in the collector's log",
        Duration::from_secs(5),
        || {
            Ok(stack
                .collector
                .process
                .log()
                .contains("TLS handshake with 127.0.0.1")
                .then_some(()))
        },
    )
    .unwrap();
}
