//! `tracegate policy check|apply`: a filter configuration judged offline by
//! the filter's own code (`tracegate_policy::Policy::compile`), and swapped
//! into the file Envoy's extension config discovery (ECDS) watches.
//!
//! The ECDS resource file is a `DiscoveryResponse` in JSON with one
//! `TypedExtensionConfig` named after the HTTP filter, whose `typed_config`
//! is the Wasm filter's configuration; tracegate's JSON is the string in its
//! `configuration`. `apply` changes only that string (and `version_info`),
//! keeping the module, VM and failure policy as the file has them.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracegate_policy::{ConfigError, Policy};
use tracegate_proto::v1::PolicyRef;

pub const TYPED_EXTENSION_CONFIG: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// One configuration found in a file: where it is (for messages) and the
/// verdict of `Policy::compile` on it.
pub struct Checked {
    /// `FILE`, or `FILE: resource NAME` for an ECDS resource file.
    pub source: String,
    pub result: Result<PolicyRef, ConfigError>,
}

/// The tracegate configurations a file holds: the file itself when it is the
/// filter's JSON, or each Wasm filter configuration of an ECDS resource file.
pub fn configurations(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let shown = path.display().to_string();
    // A filter configuration has no `resources` field (it would be refused
    // as unknown), so a document with one is a resource file.
    let resources = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("resources").cloned());
    let Some(resources) = resources else {
        return Ok(vec![(shown, bytes.to_vec())]);
    };
    let resources = resources
        .as_array()
        .ok_or_else(|| anyhow!("{shown}: `resources` is not a list"))?;
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let name = r["name"].as_str().unwrap_or("");
        let at = format!("{shown}: resources[{i}] ({name})");
        if r["typed_config"]["@type"] != WASM_FILTER {
            bail!(
                "{at}: typed_config is not the Wasm HTTP filter ({WASM_FILTER}): {}",
                r["typed_config"]["@type"]
            );
        }
        let configuration = &r["typed_config"]["config"]["configuration"];
        let text = match (&configuration["@type"], &configuration["value"]) {
            (Value::Null, Value::Null) => String::new(),
            (t, Value::String(s)) if t == STRING_VALUE => s.clone(),
            _ => bail!("{at}: configuration is not a google.protobuf.StringValue"),
        };
        out.push((at, text.into_bytes()));
    }
    if out.is_empty() {
        bail!("{shown}: no resources");
    }
    Ok(out)
}

/// `tracegate policy check FILE`.
pub fn check(path: &Path) -> Result<Vec<Checked>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(configurations(path, &bytes)?
        .into_iter()
        .map(|(source, config)| Checked {
            source,
            result: Policy::compile(&config).map(|p| p.reference),
        })
        .collect())
}

/// What `apply` needs beyond the configuration.
pub struct ApplyOptions {
    /// The watched directory.
    pub dir: PathBuf,
    /// The HTTP filter's name (the resource's name; the file is NAME.json).
    pub name: String,
    /// The module, for a resource file made anew (or to change it).
    pub wasm: Option<PathBuf>,
}

pub enum Applied {
    /// Written; the policy now in the file, and the one it replaced.
    Written {
        file: PathBuf,
        policy: PolicyRef,
        replaced: Option<PolicyRef>,
    },
    /// Refused by `Policy::compile`; nothing written.
    Invalid(ConfigError),
}

/// The resource file `apply` writes for this filter name.
pub fn resource_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// `tracegate policy apply FILE --dir DIR`: checks the configuration with
/// `Policy::compile`, puts it in the resource file and swaps that in
/// atomically (a temporary file in DIR, fsync, rename, directory fsync), so
/// Envoy only ever reads a whole file.
pub fn apply(config_file: &Path, opts: &ApplyOptions) -> Result<Applied> {
    let config =
        std::fs::read(config_file).with_context(|| format!("reading {}", config_file.display()))?;
    let policy = match Policy::compile(&config) {
        Ok(p) => p,
        Err(e) => return Ok(Applied::Invalid(e)),
    };
    let text = String::from_utf8(config).context("the configuration is not UTF-8")?;
    let file = resource_file(&opts.dir, &opts.name);
    let (mut doc, replaced) = match std::fs::read(&file) {
        Ok(bytes) => {
            let doc: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a JSON resource file", file.display()))?;
            let replaced = configurations(&file, &bytes)?
                .into_iter()
                .next()
                .and_then(|(_, c)| Policy::compile(&c).ok())
                .map(|p| p.reference);
            (doc, replaced)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let wasm = opts.wasm.as_deref().ok_or_else(|| {
                anyhow!(
                    "{} does not exist: give --wasm PATH (the filter module) to make it",
                    file.display()
                )
            })?;
            (new_resource(&opts.name, wasm), None)
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    set_configuration(&mut doc, &opts.name, &text, &policy, opts.wasm.as_deref())
        .with_context(|| format!("in {}", file.display()))?;
    let bytes = serde_json::to_vec_pretty(&doc)?;
    swap_in(&file, &bytes)?;
    Ok(Applied::Written {
        file,
        policy: policy.reference,
        replaced,
    })
}

/// A resource file for a filter named `name` loading `wasm`, shaped as the
/// shipped standalone Envoy configuration loads it.
pub fn new_resource(name: &str, wasm: &Path) -> Value {
    json!({
        "version_info": "",
        "resources": [{
            "@type": TYPED_EXTENSION_CONFIG,
            "name": name,
            "typed_config": {
                "@type": WASM_FILTER,
                "config": {
                    "name": name,
                    "root_id": "tracegate",
                    // A crashed VM is reloaded; requests are refused until it is.
                    "failure_policy": "FAIL_RELOAD",
                    "vm_config": {
                        "vm_id": "tracegate",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm.to_string_lossy()}}
                    },
                    "configuration": {"@type": STRING_VALUE, "value": ""}
                }
            }
        }]
    })
}

/// Puts the configuration into the resource named `name`, and the policy's
/// hash into `version_info` (Envoy shows it in /config_dump).
fn set_configuration(
    doc: &mut Value,
    name: &str,
    text: &str,
    policy: &Policy,
    wasm: Option<&Path>,
) -> Result<()> {
    doc["version_info"] = json!(policy.reference.sha256);
    let resources = doc["resources"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("no `resources` list"))?;
    let resource = resources
        .iter_mut()
        .find(|r| r["name"] == name)
        .ok_or_else(|| anyhow!("no resource named {name:?} (give --name)"))?;
    if resource["typed_config"]["@type"] != WASM_FILTER {
        bail!("resource {name:?} is not the Wasm HTTP filter");
    }
    let config = &mut resource["typed_config"]["config"];
    config["configuration"] = json!({"@type": STRING_VALUE, "value": text});
    if let Some(wasm) = wasm {
        config["vm_config"]["code"] = json!({"local": {"filename": wasm.to_string_lossy()}});
    }
    // Holding headers needs this Envoy option; without it requests with a
    // body would hang (README, `inspection.hold_headers`).
    if policy.config.inspection.hold_headers {
        config["allow_on_headers_stop_iteration"] = json!(true);
    }
    Ok(())
}

/// Replaces `file` with `bytes` so that a reader sees the old file or the
/// new one: a temporary file in the same directory (a name of its own, so
/// two applies never share one), fsync, rename over `file`, directory fsync.
/// Envoy's `watched_directory` reloads on the rename.
pub fn swap_in(file: &Path, bytes: &[u8]) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let base = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()
            .with_context(|| format!("fsync of {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))?;
        std::fs::File::open(dir)?
            .sync_all()
            .with_context(|| format!("fsync of {}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> ApplyOptions {
        ApplyOptions {
            dir: dir.to_path_buf(),
            name: "tracegate".into(),
            wasm: None,
        }
    }

    #[test]
    fn apply_makes_keeps_and_swaps_the_resource() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("policy.json");
        std::fs::write(&config, r#"{"policy":{"name":"p","version":"1"}}"#).unwrap();
        let ecds = dir.path().join("ecds");
        std::fs::create_dir(&ecds).unwrap();
        // Without a resource file, the module must be named.
        assert!(apply(&config, &opts(&ecds)).is_err());
        let mut o = opts(&ecds);
        o.wasm = Some("/opt/tracegate.wasm".into());
        let Applied::Written {
            file,
            policy,
            replaced,
        } = apply(&config, &o).unwrap()
        else {
            panic!("written");
        };
        assert!(replaced.is_none());
        assert_eq!(file, ecds.join("tracegate.json"));
        // An operator's edit of the resource (another failure policy) stays.
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        doc["resources"][0]["typed_config"]["config"]["failure_policy"] = json!("FAIL_CLOSED");
        std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();

        std::fs::write(
            &config,
            r#"{"policy":{"name":"p","version":"2"},"inspection":{"hold_headers":true}}"#,
        )
        .unwrap();
        let Applied::Written {
            policy: p2,
            replaced,
            ..
        } = apply(&config, &opts(&ecds)).unwrap()
        else {
            panic!("written");
        };
        assert_eq!(replaced.unwrap().sha256, policy.sha256);
        assert_eq!(p2.version, "2");
        let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let c = &doc["resources"][0]["typed_config"]["config"];
        assert_eq!(c["failure_policy"], "FAIL_CLOSED");
        assert_eq!(
            c["vm_config"]["code"]["local"]["filename"],
            "/opt/tracegate.wasm"
        );
        assert_eq!(c["allow_on_headers_stop_iteration"], true);
        assert_eq!(doc["version_info"], json!(p2.sha256));
        // Only the resource file is left in the directory: no temporary files.
        let names: Vec<_> = std::fs::read_dir(&ecds)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tracegate.json"]);

        // `check` reads the resource file as Envoy would get it.
        let checked = check(&file).unwrap();
        assert_eq!(checked.len(), 1);
        assert_eq!(checked[0].result.as_ref().unwrap().sha256, p2.sha256);
    }

    #[test]
    fn an_invalid_configuration_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("policy.json");
        std::fs::write(&config, r#"{"recording":{"batch_size":3}}"#).unwrap();
        let mut o = opts(dir.path());
        o.wasm = Some("/x.wasm".into());
        let Applied::Invalid(e) = apply(&config, &o).unwrap() else {
            panic!("refused");
        };
        assert_eq!(e.field, "recording.batch_size");
        assert!(!resource_file(dir.path(), "tracegate").exists());
        let checked = check(&config).unwrap();
        assert_eq!(
            checked[0].result.as_ref().unwrap_err().field,
            "recording.batch_size"
        );
    }

    #[test]
    fn a_resource_file_that_is_not_the_wasm_filter_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.json");
        std::fs::write(
            &f,
            r#"{"resources":[{"name":"x","typed_config":{"@type":"type.googleapis.com/other"}}]}"#,
        )
        .unwrap();
        assert!(check(&f).is_err());
    }
}
