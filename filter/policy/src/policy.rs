//! The configuration compiled: parsed and checked (`Config::parse`), then
//! every detector, rule and key built once. The filter compiles it once per
//! worker and configuration; `tracegate` tooling uses the same function, so
//! a configuration it accepts is one the filter accepts.

use crate::access::Access;
use crate::config::{err, Config, ConfigError};
use crate::inspect::Inspector;
use crate::jwt::Authenticator;

#[derive(Debug)]
pub struct Policy {
    pub config: Config,
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
        Policy::from_config(Config::parse(bytes)?)
    }

    pub fn from_config(config: Config) -> Result<Policy, ConfigError> {
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
            inspector,
            auth,
            token_headers,
            access,
        })
    }
}
