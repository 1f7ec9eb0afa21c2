//! Envoy refuses an invalid tracegate configuration and says why; the shipped
//! Envoy configuration is valid.

use serde_json::{json, Value};
use std::process::Command;
use tracegate_e2e::{
    envoy_bin, envoy_config, filter_wasm, python_bin, workspace_root, Envoy, START_TIMEOUT,
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
    let root = workspace_root();
    let out = Command::new(envoy_bin())
        .current_dir(&root)
        .args(["--mode", "validate", "-c", "envoy/tracegate.yaml"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("configuration 'envoy/tracegate.yaml' OK"),
        "{text}"
    );
}

/// `envoy --mode validate` output and success for a copy of the shipped file
/// changed by `edit`.
fn validate_edited(edit: impl Fn(&str) -> String) -> (bool, String) {
    validate_edited_file("envoy/tracegate.yaml", edit)
}

fn validate_edited_file(file: &str, edit: impl Fn(&str) -> String) -> (bool, String) {
    let root = workspace_root();
    let yaml = std::fs::read_to_string(root.join(file)).unwrap();
    let edited = edit(&yaml);
    assert_ne!(edited, yaml, "the edit must change the file");
    let dir = tempfile::tempdir().unwrap();
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
    // The validation above can fail, and it checks the tracegate JSON too.
    let (ok, log) = validate_edited(|y| {
        y.replace(
            r#""timeout_ms": 5000"#,
            r#""timeout_ms": 5000, "retries": 3"#,
        )
    });
    assert!(!ok, "{log}");
    assert!(
        log.contains("field `collector.retries`: unknown field `retries`"),
        "{log}"
    );

    let (ok, _) =
        validate_edited(|y| y.replace("cluster: llm_upstream", "cluster: no_such_cluster"));
    assert!(!ok, "a route to a missing cluster is refused");
}

#[test]
fn shipped_oidc_gateway_configuration_validates() {
    // Envoy insists the injected key's SDS file exists; give it one.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("openai-key.yaml");
    std::fs::write(
        &secret,
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: openai-api-key\n  generic_secret: { secret: { inline_string: sk-test } }\n",
    )
    .unwrap();
    let with_secret =
        |y: &str| y.replace("/etc/tracegate/openai-key.yaml", &secret.to_string_lossy());
    let (ok, log) = validate_edited_file("envoy/tracegate-oidc.yaml", with_secret);
    assert!(ok, "{log}");
    assert!(log.contains("tracegate: configured"), "{log}");

    // The jwt section is checked too.
    let (ok, log) = validate_edited_file("envoy/tracegate-oidc.yaml", |y| {
        with_secret(y).replace(r#""audiences": ["llm-gateway"]"#, r#""audiences": []"#)
    });
    assert!(!ok);
    assert!(
        log.contains("field `jwt.providers[0].audiences`: list the accepted `aud` values"),
        "{log}"
    );
}

/// The Istio WasmPlugin's fields, read with PyYAML (an independent parser).
fn istio_wasmplugin() -> Value {
    let script = "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new(python_bin())
        .args(["-c", script])
        .arg(workspace_root().join("envoy/istio/wasmplugin.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn istio_plugin_config_is_accepted_by_the_filter() {
    let plugin = istio_wasmplugin();
    assert_eq!(plugin["kind"], "WasmPlugin");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    assert_eq!(
        plugin["spec"]["sha256"], "@WASM_SHA256@",
        "make istio fills it in"
    );
    let config = &plugin["spec"]["pluginConfig"];
    assert!(config["collector"]["cluster"]
        .as_str()
        .unwrap()
        .starts_with("outbound|4317||"));

    // The real filter in the real Envoy takes it (it would refuse to start
    // otherwise, as the tests above show).
    let dir = tempfile::tempdir().unwrap();
    let ports = envoy_config::Ports {
        upstream: 9,
        collector: 9,
        idp: 9,
        approvals: 9,
    };
    let bootstrap = envoy_config::bootstrap(&ports, &filter_wasm(), config);
    let envoy = Envoy::start(dir.path(), &bootstrap).unwrap();
    assert!(envoy.process.log().contains("tracegate: configured"));
}
