//! The configuration compiled: parsed and checked (`Config::parse`), then
//! every detector, rule and key built once. The filter compiles it once per
//! worker and configuration; `tracegate` tooling uses the same function, so
//! a configuration it accepts is one the filter accepts.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use tracegate_proto::v1::PolicyRef;

use crate::access::Access;
use crate::config::{err, Config, ConfigError};
use crate::inspect::Inspector;
use crate::jwt::Authenticator;

#[derive(Debug)]
pub struct Policy {
    pub config: Config,
    /// Which configuration this is (name, version, SHA-256 of its canonical
    /// form), as every record states it. Made once here, cloned per record.
    pub reference: PolicyRef,
    /// Masking and block rules; `None` when neither is configured.
    pub inspector: Option<Inspector>,
    /// The compiled `jwt` section; `None` when requests are not
    /// authenticated. Holds the key and token caches, hence owned mutably
    /// by one worker.
    pub auth: Option<Authenticator>,
    /// Headers that carry the callers' JWTs: tracegate's own, not judged as
    /// a leak, recorded as `[credential]`.
    pub token_headers: Vec<String>,
    /// The compiled `access` section; `None`: everyone may use everything.
    pub access: Option<Access>,
}

impl Policy {
    /// Parses, checks and compiles a configuration (JSON; empty means all
    /// defaults). Errors name the field.
    pub fn compile(bytes: &[u8]) -> Result<Policy, ConfigError> {
        let config = Config::parse(bytes)?;
        let sha256 = canonical_sha256(bytes)?;
        let reference = PolicyRef {
            name: config
                .policy
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            version: config
                .policy
                .as_ref()
                .map(|p| p.version.clone())
                .unwrap_or_default(),
            sha256,
        };
        Policy::from_config(config, reference)
    }

    fn from_config(config: Config, reference: PolicyRef) -> Result<Policy, ConfigError> {
        let mut auth = config.jwt.as_ref().map(Authenticator::new).transpose()?;
        let access = config
            .access
            .as_ref()
            .map(|a| Access::new(a, config.jwt.is_some()))
            .transpose()?;
        if let (Some(access), Some(auth)) = (&access, auth.as_mut()) {
            auth.read_claims(&access.claims);
        }
        if let Some(i) = access.as_ref().and_then(|a| a.tool_rules().next()) {
            // Tool calls in answers are read where answers are inspected.
            if !config.masking.enabled || !config.inspection.responses {
                return Err(err(
                    &format!("access.rules[{i}].tools"),
                    "restricting tools needs answers inspected (tool calls in answers are withheld): keep `masking.enabled` and `inspection.responses` on",
                ));
            }
        }
        let inspector = Inspector::new(&config.inspection, &config.masking, &config.rules)?;
        // Access rules read the request body, so it is held and parsed
        // (strictly: duplicate keys refused) even without masking or rules.
        let inspector = (config.masking.enabled || !config.rules.is_empty() || access.is_some())
            .then_some(
                inspector
                    .with_approvals(config.approval.is_some())
                    .with_facts(access.is_some()),
            );
        let token_headers = config
            .jwt
            .iter()
            .flat_map(|j| j.providers.iter().map(|p| p.from_header.name.clone()))
            .collect();
        Ok(Policy {
            config,
            reference,
            inspector,
            auth,
            token_headers,
            access,
        })
    }
}

/// The canonical form of a configuration: the JSON value written back with
/// every object's keys sorted by their UTF-8 bytes and no whitespace;
/// strings as serde_json writes them (only `"`, `\` and control characters
/// escaped), numbers as parsed (integers as written, others in their
/// shortest round-trip form). An empty configuration is `{}`. So
/// formatting and key order do not change it; anything else does
/// (including writing out a default explicitly).
pub fn canonical_json(bytes: &[u8]) -> Result<String, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok("{}".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| err("", e.to_string()))?;
    let mut out = String::with_capacity(bytes.len());
    write_canonical(&value, &mut out);
    Ok(out)
}

/// Lower-case hex SHA-256 of `canonical_json(bytes)`.
pub fn canonical_sha256(bytes: &[u8]) -> Result<String, ConfigError> {
    let digest = Sha256::digest(canonical_json(bytes)?.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            // The workspace's serde_json keeps insertion order: sort here.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        // Null, booleans and numbers: serde_json's compact form.
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    // A `Value::String` always serialises; the fallback is unreachable.
    out.push_str(&serde_json::Value::from(s).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn canonical_form_ignores_formatting_and_key_order() {
        let a = br#"{"rules":[{"id":"r","keywords":["x"],"action":"block"}],
                     "policy":{"version":"1","name":"p"}}"#;
        let b = br#"{ "policy" : { "name" : "p", "version" : "1" },
                      "rules" : [ { "action" : "block", "id" : "r", "keywords" : [ "x" ] } ] }"#;
        assert_eq!(canonical_json(a).unwrap(), canonical_json(b).unwrap());
        assert_eq!(
            canonical_json(a).unwrap(),
            r#"{"policy":{"name":"p","version":"1"},"rules":[{"action":"block","id":"r","keywords":["x"]}]}"#
        );
        // Array order is meaning (rules are evaluated in order): it counts.
        let c = br#"{"rules":[{"keywords":["y","x"]}]}"#;
        let d = br#"{"rules":[{"keywords":["x","y"]}]}"#;
        assert_ne!(canonical_sha256(c).unwrap(), canonical_sha256(d).unwrap());
        // Escapes are normalised: the same string written two ways.
        assert_eq!(
            canonical_json(br#"{"k":"\u00e9\/"}"#).unwrap(),
            "{\"k\":\"\u{e9}/\"}"
        );
        assert_eq!(canonical_json(b"").unwrap(), "{}");
        assert_eq!(
            canonical_sha256(b" ").unwrap(),
            canonical_sha256(b"{ }").unwrap()
        );
    }

    #[test]
    fn compile_states_name_version_and_hash() {
        let p = Policy::compile(br#"{"policy":{"name":"egress","version":"7"}}"#).unwrap();
        assert_eq!(p.reference.name, "egress");
        assert_eq!(p.reference.version, "7");
        // SHA-256 of the canonical text, computed independently: `printf %s
        // '{"policy":{"name":"egress","version":"7"}}' | sha256sum`.
        assert_eq!(
            p.reference.sha256,
            "590690392b7e0792e84c3eb2d7309944ed11630f6419d99913d3de6f8db993a9"
        );
        assert_eq!(p.reference.sha256.len(), 64);
        let none = Policy::compile(b"").unwrap();
        assert_eq!(
            (
                none.reference.name.as_str(),
                none.reference.version.as_str()
            ),
            ("", "")
        );
        // SHA-256("{}").
        assert_eq!(
            none.reference.sha256,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
