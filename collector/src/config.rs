//! `tracegate serve --config FILE`: strict JSON naming the collector's TLS
//! files and who may decide approvals.
//!
//! ```json
//! {
//!   "tls": {"cert": "collector.pem", "key": "collector.key", "client_ca": "ca.pem"},
//!   "approvers": {
//!     "providers": [{"name": "corp", "issuer": "https://login.example.com",
//!                    "audiences": ["tracegate-approvals"],
//!                    "remote_jwks": {"uri": "https://login.example.com/.well-known/jwks.json"}}],
//!     "display_claim": "email",
//!     "allow": [{"claim": "groups", "equals": "llm-approvers"}],
//!     "approvals_required": 1,
//!     "policies": [{"rule": "production-change",
//!                   "allow": [{"claim": "groups", "equals": "sre-leads"}],
//!                   "approvals_required": 2}]
//!   },
//!   "console": {"issuer": "https://login.example.com", "client_id": "tracegate-console",
//!               "public_url": "https://tracegate.example.com:8443"}
//! }
//! ```
//! Paths are relative to the file's directory. Unknown fields and values out
//! of range are refused, naming the field.

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tracegate_policy::jwt::config::ProviderConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// TLS on the machine side (gRPC ingest and the filter's approval
    /// calls), with client certificates required; the approvers' API is
    /// served over TLS too (server certificate only).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Who may look at and decide approvals (`serve --approvals` needs it).
    #[serde(default)]
    pub approvers: Option<ApproversConfig>,
    /// Label caps of the Prometheus metrics (`serve --metrics`).
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    /// Alert rules over stored records and approval events, and the
    /// webhooks they go to (README "Alerts").
    #[serde(default)]
    pub alerts: Option<crate::alerts::AlertsConfig>,
    /// The web console's sign-in (`serve --console`): the organisation's
    /// OIDC issuer and the console's client there.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
}

/// `{"issuer": "https://login.example.com", "client_id": "tracegate-console",
/// "client_secret": "...", "public_url": "https://tracegate.example.com:8443",
/// "scopes": ["openid", "profile", "email"]}`. The id_tokens are verified
/// with the `approvers` providers: `client_id` must be among a provider's
/// `audiences`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub issuer: String,
    pub client_id: String,
    /// For a confidential client; without it the console signs in as a
    /// public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The console's origin as browsers reach it (the redirect URI is
    /// {public_url}/auth/callback; cookies are Secure when it is https).
    pub public_url: String,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

impl ConsoleConfig {
    pub fn settings(&self) -> crate::console::auth::OidcSettings {
        crate::console::auth::OidcSettings {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            public_url: self.public_url.trim_end_matches('/').to_string(),
            scopes: self
                .scopes
                .clone()
                .unwrap_or_else(crate::console::auth::OidcSettings::default_scopes),
        }
    }

    fn check(&self) -> Result<(), String> {
        let field_err = |field: &str, msg: &str| Err(format!("field `console.{field}`: {msg}"));
        for (field, value) in [
            ("issuer", &self.issuer),
            ("client_id", &self.client_id),
            ("public_url", &self.public_url),
        ] {
            if value.trim().is_empty() {
                return field_err(field, "must not be empty");
            }
        }
        for (field, value) in [("issuer", &self.issuer), ("public_url", &self.public_url)] {
            if !(value.starts_with("https://") || value.starts_with("http://")) {
                return field_err(field, "must be an http(s) URL");
            }
        }
        if self.client_secret.as_deref().is_some_and(str::is_empty) {
            return field_err("client_secret", "must not be empty (leave it out)");
        }
        if let Some(scopes) = &self.scopes {
            if !scopes.iter().any(|s| s == "openid") {
                return field_err("scopes", "must hold \"openid\"");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The collector's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign the gateways' client certificates.
    /// A client without a certificate from one of them is refused at the
    /// handshake.
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproversConfig {
    /// The OIDC issuers approvers' tokens come from: the filter's provider
    /// schema (`remote_jwks` without `cluster`: the collector fetches the
    /// URI itself).
    pub providers: Vec<ProviderConfig>,
    /// A verified claim shown as the approver's name (e.g. `email`); the
    /// subject when absent.
    #[serde(default)]
    pub display_claim: Option<String>,
    /// Who is an approver: a verified token meeting at least one of these.
    pub allow: Vec<ClaimCondition>,
    /// Distinct approvers needed before a grant exists (1..=10).
    #[serde(default = "one")]
    pub approvals_required: u32,
    /// Stricter rules for some approvals (by rule or risk).
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Verified approver tokens remembered (by SHA-256) until they expire.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

/// `{"claim": "groups", "equals": "llm-approvers"}`: a string claim equal to
/// the value, or an array claim holding it (as the filter's identity
/// conditions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimCondition {
    pub claim: String,
    pub equals: String,
}

impl std::fmt::Display for ClaimCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.claim, self.equals)
    }
}

/// Applies to approvals of a rule (the request matched it) and/or at or
/// above a risk. When any policy applies, the approver must meet the
/// `allow` of every policy that applies (a policy without `allow` uses the
/// top-level one), and the quorum is the largest `approvals_required` among
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub min_risk: Option<u32>,
    #[serde(default)]
    pub allow: Option<Vec<ClaimCondition>>,
    #[serde(default)]
    pub approvals_required: Option<u32>,
}

fn one() -> u32 {
    1
}

fn default_cache_entries() -> usize {
    1024
}

pub const MAX_QUORUM: u32 = 10;

impl ServeConfig {
    /// Reads and checks a configuration file; relative paths become
    /// relative to its directory.
    pub fn load(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        let mut config: ServeConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            anyhow!(
                "invalid configuration {}: field `{field}`: {}",
                path.display(),
                e.inner()
            )
        })?;
        config
            .check()
            .map_err(|e| anyhow!("invalid configuration {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(tls) = &mut config.tls {
            for p in [&mut tls.cert, &mut tls.key, &mut tls.client_ca] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// Checks values serde cannot; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (field, n) in [
            ("metrics.max_identities", self.metrics.max_identities),
            ("metrics.max_models", self.metrics.max_models),
        ] {
            if !(1..=100_000).contains(&n) {
                return Err(format!(
                    "field `{field}`: {n} is out of range, expected 1..=100000"
                ));
            }
        }
        if let Some(alerts) = &self.alerts {
            alerts.rules()?;
        }
        if let Some(console) = &self.console {
            console.check()?;
        }
        let Some(a) = &self.approvers else {
            return Ok(());
        };
        let field_err = |field: String, msg: &str| Err(format!("field `{field}`: {msg}"));
        if a.providers.is_empty() {
            return field_err(
                "approvers.providers".into(),
                "at least one issuer is needed",
            );
        }
        for (i, p) in a.providers.iter().enumerate() {
            if p.forward {
                return field_err(
                    format!("approvers.providers[{i}].forward"),
                    "is for the filter, not used by the collector",
                );
            }
            if !p.claim_to_headers.is_empty() {
                return field_err(
                    format!("approvers.providers[{i}].claim_to_headers"),
                    "is for the filter, not used by the collector",
                );
            }
        }
        if a.allow.is_empty() {
            return field_err(
                "approvers.allow".into(),
                "name who is an approver, e.g. [{\"claim\": \"groups\", \"equals\": \"llm-approvers\"}]",
            );
        }
        check_conditions("approvers.allow", &a.allow)?;
        if !(1..=MAX_QUORUM).contains(&a.approvals_required) {
            return field_err(
                "approvers.approvals_required".into(),
                &format!("{} is outside 1..={MAX_QUORUM}", a.approvals_required),
            );
        }
        if a.cache_entries > 100_000 {
            return field_err("approvers.cache_entries".into(), "is outside 0..=100000");
        }
        if a.display_claim.as_deref().is_some_and(str::is_empty) {
            return field_err("approvers.display_claim".into(), "must not be empty");
        }
        for (i, p) in a.policies.iter().enumerate() {
            let at = format!("approvers.policies[{i}]");
            if p.rule.is_none() && p.min_risk.is_none() {
                return field_err(at, "give `rule`, `min_risk` or both");
            }
            if p.rule.as_deref().is_some_and(|r| r.trim().is_empty()) {
                return field_err(format!("{at}.rule"), "must not be empty");
            }
            if p.allow.is_none() && p.approvals_required.is_none() {
                return field_err(at, "give `allow`, `approvals_required` or both");
            }
            if let Some(allow) = &p.allow {
                if allow.is_empty() {
                    return field_err(format!("{at}.allow"), "an empty list allows nobody");
                }
                check_conditions(&format!("{at}.allow"), allow)?;
            }
            if let Some(n) = p.approvals_required {
                if !(1..=MAX_QUORUM).contains(&n) {
                    return field_err(
                        format!("{at}.approvals_required"),
                        &format!("{n} is outside 1..={MAX_QUORUM}"),
                    );
                }
            }
        }
        Ok(())
    }
}

fn check_conditions(at: &str, conditions: &[ClaimCondition]) -> Result<(), String> {
    for (j, c) in conditions.iter().enumerate() {
        if c.claim.is_empty() || c.equals.is_empty() {
            return Err(format!(
                "field `{at}[{j}]`: `claim` and `equals` must not be empty"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: serde_json::Value) -> Result<(), String> {
        let c: ServeConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.check()
    }

    fn approvers(extra: serde_json::Value) -> serde_json::Value {
        let mut a = json!({
            "providers": [{"name": "corp", "issuer": "https://idp", "audiences": ["a"],
                           "remote_jwks": {"uri": "https://idp/jwks"}}],
            "allow": [{"claim": "groups", "equals": "llm-approvers"}]
        });
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        json!({ "approvers": a })
    }

    #[test]
    fn the_shipped_configuration_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("serve.json");
        let c = ServeConfig::load(&path).unwrap();
        let tls = c.tls.unwrap();
        assert!(
            tls.cert.ends_with("collector/../target/tls/collector.pem"),
            "{tls:?}"
        );
        let a = c.approvers.unwrap();
        let access = crate::approvals::access::Access::new(&a);
        crate::approvals::auth::ApproverAuth::new(&a, &access.claims_read()).unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        check(approvers(json!({}))).unwrap();
        assert!(check(approvers(json!({"allow": []})))
            .unwrap_err()
            .contains("approvers.allow"));
        assert!(check(approvers(json!({"approvals_required": 0})))
            .unwrap_err()
            .contains("approvers.approvals_required"));
        assert!(check(approvers(json!({"policies": [{"allow": []}]})))
            .unwrap_err()
            .contains("approvers.policies[0]"));
        assert!(check(approvers(
            json!({"policies": [{"rule": "x", "approvals_required": 11}]})
        ))
        .unwrap_err()
        .contains("approvers.policies[0].approvals_required"));
        assert!(check(json!({"approvers": {"providers": [], "allow": []}}))
            .unwrap_err()
            .contains("approvers.providers"));
        assert!(check(json!({"tls": {"cert": "a", "key": "b"}}))
            .unwrap_err()
            .contains("client_ca"));
        assert!(check(
            json!({"alerts": {"webhooks": [{"name": "a", "url": "http://x"}],
            "rules": [{"id": "r", "when": {"risk_at_least": 5}, "webhooks": ["b"]}]}})
        )
        .unwrap_err()
        .contains("alerts.rules[0].webhooks[0]"));
        let console = |extra: serde_json::Value| {
            let mut c = json!({"issuer": "https://idp", "client_id": "tracegate-console",
                               "public_url": "https://console.example"});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            check(json!({ "console": c }))
        };
        console(json!({})).unwrap();
        assert!(console(json!({"issuer": ""}))
            .unwrap_err()
            .contains("console.issuer"));
        assert!(console(json!({"scopes": ["email"]}))
            .unwrap_err()
            .contains("console.scopes"));
        assert!(console(json!({"client": "x"}))
            .unwrap_err()
            .contains("unknown field"));
        assert!(check(json!({"approver": {}}))
            .unwrap_err()
            .contains("unknown field"));
    }
}
