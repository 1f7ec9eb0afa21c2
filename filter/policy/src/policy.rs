//! The configuration compiled: parsed and checked (`Config::parse`), then
//! every detector, rule and key built once. The filter compiles it once per
//! worker and configuration; `tracegate` tooling uses the same function, so
//! a configuration it accepts is one the filter accepts.

use crate::config::{Config, ConfigError};
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
}

impl Policy {
    /// Parses, checks and compiles a configuration (JSON; empty means all
    /// defaults). Errors name the field.
    pub fn compile(bytes: &[u8]) -> Result<Policy, ConfigError> {
        Policy::from_config(Config::parse(bytes)?)
    }

    pub fn from_config(config: Config) -> Result<Policy, ConfigError> {
        let auth = config.jwt.as_ref().map(Authenticator::new).transpose()?;
        let inspector = Inspector::new(&config.inspection, &config.masking, &config.rules)?;
        let inspector = (config.masking.enabled || !config.rules.is_empty())
            .then_some(inspector.with_approvals(config.approval.is_some()));
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
        })
    }
}
