//! Envoy refuses an invalid tracegate configuration and says why; the shipped
//! Envoy configuration is valid.

use serde_json::{json, Value};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use tracegate_e2e::{
    envoy_bin, envoy_config, filter_wasm, make_certs, policy_cli, python_bin, workspace_root,
    Envoy, START_TIMEOUT,
};

/// Starts Envoy with this plugin configuration and expects it to refuse it.
/// Returns Envoy's log.
fn refused(plugin_config: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ports = envoy_config::Ports {
        upstream: 9,
        collector: 9,
        idp: 9,
        approvals: 9,
        tls: None,
        provider_key: None,
    };
    let bootstrap = envoy_config::bootstrap(&ports, &filter_wasm(), plugin_config);
    let mut envoy = Envoy::spawn(dir.path(), &bootstrap).unwrap();
    let status = envoy.wait_exit(START_TIMEOUT).unwrap();
    assert!(!status.success(), "Envoy accepted it: {}", envoy.log());
    envoy.log()
}

#[test]
fn unknown_field_is_refused_and_named() {
    let log = refused(&json!({"recording": {"batch_size": 10}}));
    assert!(
        log.contains("invalid tracegate configuration: field `recording.batch_size`: unknown field `batch_size`"),
        "{log}"
    );
}

#[test]
fn bad_value_is_refused_and_named() {
    let log = refused(&json!({"collector": {"timeout_ms": 0}}));
    assert!(
        log.contains("field `collector.timeout_ms`: 0 is out of range"),
        "{log}"
    );
    let log = refused(&json!({"session": {"header": 7}}));
    assert!(
        log.contains("field `session.header`: invalid type: integer `7`"),
        "{log}"
    );
}

#[test]
fn shipped_envoy_configuration_validates() {
    // `--mode validate` checks the bootstrap; it does not subscribe to ECDS,
    // so the policy is checked below, and loaded by a real Envoy.
    let (ok, text) = validate_edited(|y| y.to_string());
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
}

/// The SHA-256 `tracegate policy check FILE` prints, or its error.
fn checked_sha(file: &Path) -> Result<String, String> {
    let (code, out, err) = policy_cli(&[OsStr::new("check"), file.as_os_str()]).unwrap();
    match code {
        0 => Ok(out
            .lines()
            .find_map(|l| l.trim().strip_prefix("sha256"))
            .unwrap_or_default()
            .trim()
            .to_string()),
        _ => Err(err),
    }
}

#[test]
fn shipped_policy_is_what_envoy_loads_through_ecds() {
    loads_through_ecds(
        "envoy/tracegate.yaml",
        "envoy/ecds",
        "envoy/policy.json",
        "llm-egress",
        |y| y.to_string(),
    );
}

#[test]
fn shipped_oidc_policy_is_what_envoy_loads_through_ecds() {
    let dir = tempfile::tempdir().unwrap();
    let secret = sds_secret(dir.path());
    loads_through_ecds(
        "envoy/tracegate-oidc.yaml",
        "envoy/ecds-oidc",
        "envoy/policy-oidc.json",
        "llm-gateway-oidc",
        |y| y.replace("/etc/tracegate/openai-key.yaml", &secret),
    );
}

/// The shipped ECDS resource in `ecds` holds exactly `policy` (re-run
/// `tracegate policy apply POLICY --dir ECDS` after editing it), and a real
/// Envoy started with the shipped `yaml` (free ports, the ECDS directory and
/// certificates in a temporary copy, then `edit`) loads it.
fn loads_through_ecds(
    yaml: &str,
    ecds: &str,
    policy: &str,
    name: &str,
    edit: impl Fn(&str) -> String,
) {
    let root = workspace_root();
    let sha = checked_sha(&root.join(policy)).unwrap();
    let resource_file = root.join(ecds).join("tracegate.json");
    assert_eq!(
        checked_sha(&resource_file).unwrap(),
        sha,
        "{} is out of date",
        resource_file.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ecds");
    std::fs::create_dir(&copy).unwrap();
    let resource = std::fs::read_to_string(&resource_file).unwrap().replace(
        "\"target/tracegate_filter.wasm\"",
        &format!("{:?}", filter_wasm().to_string_lossy()),
    );
    std::fs::write(copy.join("tracegate.json"), resource).unwrap();
    let tls = dir.path().join("tls");
    make_certs(&tls).unwrap();
    let yaml = std::fs::read_to_string(root.join(yaml))
        .unwrap()
        .replace(ecds, &copy.to_string_lossy())
        .replace("target/tls/", &format!("{}/", tls.display()))
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 10000", "port_value: 0");
    let file = dir.path().join("shipped.yaml");
    std::fs::write(&file, edit(&yaml)).unwrap();
    let script = "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new(python_bin())
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    let bootstrap: Value = serde_json::from_slice(&out.stdout).unwrap();
    let envoy = Envoy::start(dir.path(), &bootstrap).unwrap();
    let log = envoy.process.log();
    assert!(
        log.contains(&format!("policy \"{name}\" version \"1\" sha256 {sha}")),
        "{log}"
    );
}

/// The SDS file of the provider key Envoy insists exists; returns its path.
fn sds_secret(dir: &Path) -> String {
    let secret = dir.join("openai-key.yaml");
    std::fs::write(
        &secret,
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: openai-api-key\n  generic_secret: { secret: { inline_string: sk-test } }\n",
    )
    .unwrap();
    secret.to_string_lossy().into_owned()
}

/// `envoy --mode validate` output and success for a copy of the shipped file
/// changed by `edit`, with the client certificate and CA it names (under
/// `target/tls/`) made by `tracegate certs` in a temporary directory.
fn validate_edited(edit: impl Fn(&str) -> String) -> (bool, String) {
    validate_edited_file("envoy/tracegate.yaml", edit)
}

fn validate_edited_file(file: &str, edit: impl Fn(&str) -> String) -> (bool, String) {
    let root = workspace_root();
    let yaml = std::fs::read_to_string(root.join(file)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    make_certs(&tls).unwrap();
    assert!(
        yaml.contains("target/tls/gateway.pem"),
        "{file} presents the gateway's certificate"
    );
    let edited = edit(&yaml.replace("target/tls/", &format!("{}/", tls.display())));
    let path = dir.path().join("edited.yaml");
    std::fs::write(&path, edited).unwrap();
    let out = Command::new(envoy_bin())
        .current_dir(&root)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn validation_runs_the_filter_configuration() {
    // The policy is checked by the filter's own code, offline.
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(workspace_root().join("envoy/policy.json"))
        .unwrap()
        .replace(
            r#""timeout_ms": 5000"#,
            r#""timeout_ms": 5000, "retries": 3"#,
        );
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy).unwrap();
    let err = checked_sha(&file).unwrap_err();
    assert!(
        err.contains("field `collector.retries`: unknown field `retries`"),
        "{err}"
    );

    // The validation above can fail.
    let (ok, _) =
        validate_edited(|y| y.replace("cluster: llm_upstream", "cluster: no_such_cluster"));
    assert!(!ok, "a route to a missing cluster is refused");

    // The client certificate is loaded, not only named.
    let (ok, log) = validate_edited(|y| y.replace("gateway.key", "no-such.key"));
    assert!(!ok, "{log}");
}

#[test]
fn shipped_oidc_gateway_configuration_validates() {
    let dir = tempfile::tempdir().unwrap();
    let secret = sds_secret(dir.path());
    let with_secret = |y: &str| y.replace("/etc/tracegate/openai-key.yaml", &secret);
    let (ok, log) = validate_edited_file("envoy/tracegate-oidc.yaml", with_secret);
    assert!(ok, "{log}");

    // Its policy's jwt section is checked before it reaches Envoy.
    let policy = std::fs::read_to_string(workspace_root().join("envoy/policy-oidc.json")).unwrap();
    let broken = policy.replace(
        "\"audiences\": [\n          \"llm-gateway\"\n        ]",
        "\"audiences\": []",
    );
    assert_ne!(broken, policy, "the audiences to break are there");
    let file = dir.path().join("policy.json");
    std::fs::write(&file, broken).unwrap();
    let err = checked_sha(&file).unwrap_err();
    assert!(
        err.contains("field `jwt.providers[0].audiences`: list the accepted `aud` values"),
        "{err}"
    );
}

/// The documents of an Istio manifest, read with PyYAML (an independent
/// parser).
fn istio_docs(file: &str) -> Vec<Value> {
    let script =
        "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new(python_bin())
        .args(["-c", script])
        .arg(workspace_root().join("envoy/istio").join(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The real filter in the real Envoy takes this configuration (it would
/// refuse to start otherwise, as the tests above show).
fn filter_accepts(config: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let ports = envoy_config::Ports {
        upstream: 9,
        collector: 9,
        idp: 9,
        approvals: 9,
        tls: None,
        provider_key: None,
    };
    let bootstrap = envoy_config::bootstrap(&ports, &filter_wasm(), config);
    let envoy = Envoy::start(dir.path(), &bootstrap).unwrap();
    assert!(envoy.process.log().contains("tracegate: configured"));
}

#[test]
fn istio_plugin_config_is_accepted_by_the_filter() {
    for file in ["wasmplugin.yaml", "egress-gateway.yaml"] {
        let docs = istio_docs(file);
        let plugin = kind(&docs, "WasmPlugin")[0];
        assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE", "{file}");
        assert_eq!(
            plugin["spec"]["sha256"], "@WASM_SHA256@",
            "make istio fills it in"
        );
        let config = &plugin["spec"]["pluginConfig"];
        for cluster in [
            &config["collector"]["cluster"],
            &config["approval"]["cluster"],
        ] {
            assert!(
                cluster.as_str().unwrap().starts_with("outbound|4317||"),
                "{file}: the collector's machine side: {cluster}"
            );
        }
        assert!(
            config["policy"]["name"].is_string(),
            "{file}: records name the policy"
        );
        filter_accepts(config);
    }
}

#[test]
fn istio_collector_ingest_is_for_the_gateway_only() {
    let docs = istio_docs("collector.yaml");
    let peer = kind(&docs, "PeerAuthentication");
    assert_eq!(peer[0]["spec"]["mtls"]["mode"], "STRICT");
    let policy = kind(&docs, "AuthorizationPolicy")[0];
    assert_eq!(policy["spec"]["action"], "ALLOW");
    // Every rule that opens 4317 names the gateway's service account, and
    // only it.
    let rules = policy["spec"]["rules"].as_array().unwrap();
    let ingest: Vec<&Value> = rules
        .iter()
        .filter(|r| {
            r["to"][0]["operation"]["ports"]
                .to_string()
                .contains("4317")
        })
        .collect();
    assert_eq!(ingest.len(), 1);
    assert_eq!(
        ingest[0]["from"][0]["source"]["principals"],
        serde_json::json!(["cluster.local/ns/istio-egress/sa/llm-egress-gateway"])
    );
    for r in rules {
        assert!(
            r["to"].as_array().is_some_and(|t| !t.is_empty()),
            "a rule without `to` would open every port: {r}"
        );
    }

    // The collector's configuration in the ConfigMap starts a real
    // collector with the approval service.
    let config = kind(&docs, "ConfigMap")[0]["data"]["serve.json"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("serve.json"), config).unwrap();
    let collector = tracegate_e2e::Collector::start_on(dir.path(), 0).unwrap();
    assert!(collector.approvals_url.is_some());
}

#[test]
fn istio_egress_gateway_is_the_only_way_out() {
    let docs = istio_docs("egress-gateway.yaml");
    let sidecar = kind(&docs, "Sidecar")[0];
    assert_eq!(
        sidecar["spec"]["outboundTrafficPolicy"]["mode"],
        "REGISTRY_ONLY"
    );
    let tls = kind(&docs, "DestinationRule")
        .into_iter()
        .find(|d| d["spec"]["host"] == "api.openai.com")
        .unwrap();
    assert_eq!(
        tls["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"], "SIMPLE",
        "TLS originated at the gateway"
    );
    let key = kind(&docs, "EnvoyFilter")[0];
    let value = &key["spec"]["configPatches"][0]["patch"]["value"];
    assert_eq!(value["name"], "envoy.filters.http.credential_injector");
    assert_eq!(
        key["spec"]["configPatches"][0]["patch"]["operation"], "INSERT_BEFORE",
        "before the router, after tracegate"
    );
    assert_eq!(
        kind(&docs, "AuthorizationPolicy")[0]["spec"]["action"],
        "ALLOW"
    );
    assert_eq!(
        kind(&docs, "NetworkPolicy")[0]["spec"]["policyTypes"][0],
        "Egress"
    );
}
