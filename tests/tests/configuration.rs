//! Envoy refuses an invalid tracegate configuration and says why; the shipped
//! Envoy configuration is valid.

use serde_json::{json, Value};
use std::process::Command;
use tracegate_e2e::{envoy_bin, envoy_config, filter_wasm, workspace_root, Envoy, START_TIMEOUT};

/// Starts Envoy with this plugin configuration and expects it to refuse it.
/// Returns Envoy's log.
fn refused(plugin_config: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ports = envoy_config::Ports {
        upstream: 9,
        collector: 9,
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

#[test]
fn invalid_envoy_configuration_fails_validation() {
    // The validation above can fail: a broken copy of the file is refused.
    let root = workspace_root();
    let yaml = std::fs::read_to_string(root.join("envoy/tracegate.yaml")).unwrap();
    let broken = yaml.replace("cluster: llm_upstream", "cluster: no_such_cluster");
    assert_ne!(broken, yaml, "the route names llm_upstream");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(envoy_bin())
        .current_dir(&root)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
