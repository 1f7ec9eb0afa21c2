//! The `jwt` section checked and compiled, once: each provider's issuer,
//! audiences, algorithms, keys (inline, HMAC, remote), required claims,
//! token source and claim headers. Errors name the field at fault.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

use super::cache::{RejectionCache, TokenCache};
use super::config::{JwtConfig, ProviderConfig, RemoteJwksConfig};
use super::fetch::Remote;
use super::keys::{Alg, KeySet};
use super::verify::Authenticator;
use crate::config::{err, in_range, is_header_name_byte, ConfigError};

/// How remote JWKS are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Through an Envoy cluster (the filter): `remote_jwks.cluster` is required.
    EnvoyCluster,
    /// By fetching `remote_jwks.uri` directly (the collector): no cluster.
    Direct,
}

/// Where tokens are read from: a request header and the text before the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TokenSource {
    pub(super) header: String,
    pub(super) prefix: String,
}

#[derive(Debug)]
pub(super) struct Provider {
    pub(super) name: String,
    pub(super) issuer: String,
    pub(super) audiences: HashSet<String>,
    pub(super) algorithms: Vec<Alg>,
    pub(super) clock_skew_s: u64,
    pub(super) require_expiration: bool,
    pub(super) required_claims: Vec<(String, Vec<Value>)>,
    pub(super) source: usize,
    pub(super) forward: bool,
    pub(super) claim_headers: Vec<(String, String)>,
    pub(super) record_claims: Vec<String>,
    /// Claims access rules read (`Authenticator::read_claims`).
    pub(super) access_claims: Vec<String>,
    pub(super) max_token_bytes: usize,
    /// Inline JWKS keys and HMAC keys.
    pub(super) local_keys: KeySet,
    pub(super) remote: Option<Remote>,
}

impl Authenticator {
    /// Checks and compiles the `jwt` section of the filter (keys fetched
    /// through Envoy clusters); errors name the field.
    pub fn new(config: &JwtConfig) -> Result<Authenticator, ConfigError> {
        Self::with_key_source(config, KeySource::EnvoyCluster)
    }

    /// Checks and compiles a `jwt` section whose remote keys are reached as
    /// `source` says.
    pub fn with_key_source(
        config: &JwtConfig,
        source: KeySource,
    ) -> Result<Authenticator, ConfigError> {
        in_range("jwt.cache_entries", config.cache_entries, 0, 100_000)?;
        in_range(
            "jwt.negative_cache_entries",
            config.negative_cache_entries,
            0,
            100_000,
        )?;
        if config.providers.is_empty() {
            return Err(err("jwt.providers", "at least one provider is needed"));
        }
        let mut auth = Authenticator {
            required: config.required,
            sources: Vec::new(),
            providers: Vec::new(),
            claim_header_names: Vec::new(),
            cache: TokenCache::new(config.cache_entries),
            rejected: RejectionCache::new(config.negative_cache_entries),
            key_source: source,
        };
        for (i, p) in config.providers.iter().enumerate() {
            let provider = auth.compile(&format!("jwt.providers[{i}]"), p)?;
            auth.providers.push(provider);
        }
        Ok(auth)
    }

    /// Checks one provider and compiles it; the first fault found is the
    /// error. `token_source` registers the provider's header before
    /// `claim_headers` refuses token headers as claim headers.
    fn compile(&mut self, at: &str, p: &ProviderConfig) -> Result<Provider, ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        self.check_identity(at, p)?;
        in_range(&field("clock_skew_s"), p.clock_skew_s, 0, 600)?;
        in_range(&field("max_token_bytes"), p.max_token_bytes, 256, 65_536)?;
        let secret = hmac_secret(
            &field("hmac_secret_base64"),
            p.hmac_secret_base64.as_deref(),
        )?;
        let algorithms = algorithms(&field("algorithms"), p, secret.is_some())?;
        let (local_keys, remote) = self.keys(at, p, &algorithms, secret.as_deref())?;
        let required_claims = required_claims(&field("required_claims"), &p.required_claims)?;
        let source = self.token_source(at, p)?;
        let claim_headers = self.claim_headers(&field("claim_to_headers"), p)?;
        Ok(Provider {
            name: p.name.clone(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.iter().cloned().collect(),
            algorithms,
            clock_skew_s: p.clock_skew_s,
            require_expiration: p.require_expiration,
            required_claims,
            source,
            forward: p.forward,
            claim_headers,
            record_claims: p.record_claims.clone(),
            access_claims: Vec::new(),
            max_token_bytes: p.max_token_bytes,
            local_keys,
            remote,
        })
    }

    /// Who the provider is (a name of its own, an issuer) and whom its
    /// tokens must be for.
    fn check_identity(&self, at: &str, p: &ProviderConfig) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        if p.name.trim().is_empty() {
            return Err(err(&field("name"), "must not be empty"));
        }
        if self.providers.iter().any(|q| q.name == p.name) {
            return Err(err(&field("name"), format!("{:?} is used twice", p.name)));
        }
        if p.issuer.is_empty() {
            return Err(err(&field("issuer"), "must not be empty"));
        }
        if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
            return Err(err(
                &field("audiences"),
                "list the accepted `aud` values (tokens for other services must not pass)",
            ));
        }
        Ok(())
    }

    /// The keys: inline ones (JWKS, HMAC secret) and the remote JWKS. At
    /// least one kind, inline and remote JWKS not both, and JWKS keys only
    /// with an asymmetric algorithm to use them.
    fn keys(
        &self,
        at: &str,
        p: &ProviderConfig,
        algorithms: &[Alg],
        secret: Option<&[u8]>,
    ) -> Result<(KeySet, Option<Remote>), ConfigError> {
        let local_keys = local_keys(at, p, algorithms, secret)?;
        let remote = match &p.remote_jwks {
            None => None,
            Some(r) => Some(compile_remote(
                &format!("{at}.remote_jwks"),
                r,
                self.key_source,
            )?),
        };
        if p.jwks.is_some() && remote.is_some() {
            return Err(err(at, "set `jwks` or `remote_jwks`, not both"));
        }
        if p.jwks.is_none() && remote.is_none() && secret.is_none() {
            return Err(err(
                at,
                "no keys: set `jwks`, `remote_jwks` or `hmac_secret_base64`",
            ));
        }
        if (p.jwks.is_some() || remote.is_some()) && algorithms.iter().all(|a| a.is_symmetric()) {
            return Err(err(
                &format!("{at}.algorithms"),
                "JWKS keys are configured but no asymmetric algorithm is allowed",
            ));
        }
        Ok((local_keys, remote))
    }

    /// The index of the provider's token source; providers reading the same
    /// header with the same prefix share one. They cannot share an issuer:
    /// the issuer is what picks the provider for a token.
    fn token_source(&mut self, at: &str, p: &ProviderConfig) -> Result<usize, ConfigError> {
        let h = &p.from_header;
        check_header_name(&format!("{at}.from_header.name"), &h.name)?;
        let source = TokenSource {
            header: h.name.clone(),
            prefix: h.prefix.clone(),
        };
        let source = match self.sources.iter().position(|s| *s == source) {
            Some(i) => i,
            None => {
                self.sources.push(source);
                self.sources.len() - 1
            }
        };
        if self
            .providers
            .iter()
            .any(|q| q.issuer == p.issuer && q.source == source)
        {
            return Err(err(
                &format!("{at}.issuer"),
                format!(
                    "{:?} is already used by another provider reading the same header",
                    p.issuer
                ),
            ));
        }
        Ok(source)
    }

    /// `claim_to_headers` as (claim, header). Each header is also listed in
    /// `claim_header_names`, removed from every request. Not a header that
    /// routes or frames the request, nor one tokens are read from.
    fn claim_headers(
        &mut self,
        field: &str,
        p: &ProviderConfig,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut claim_headers = Vec::new();
        for (j, ch) in p.claim_to_headers.iter().enumerate() {
            let hf = format!("{field}[{j}].header");
            check_header_name(&hf, &ch.header)?;
            if ch.header.starts_with(':')
                || [
                    "host",
                    "authorization",
                    "content-length",
                    "transfer-encoding",
                ]
                .contains(&ch.header.as_str())
                || self.sources.iter().any(|s| s.header == ch.header)
            {
                return Err(err(&hf, format!("{:?} cannot carry a claim", ch.header)));
            }
            if ch.claim.is_empty() {
                return Err(err(&format!("{field}[{j}].claim"), "must not be empty"));
            }
            claim_headers.push((ch.claim.clone(), ch.header.clone()));
            if !self.claim_header_names.contains(&ch.header) {
                self.claim_header_names.push(ch.header.clone());
            }
        }
        Ok(claim_headers)
    }
}

/// The shared secret for HS256/384/512, decoded: base64 or base64url, at
/// least 32 bytes.
fn hmac_secret(field: &str, secret: Option<&str>) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(s) = secret else {
        return Ok(None);
    };
    let bytes = STANDARD
        .decode(s.trim())
        .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim().trim_end_matches('=')))
        .map_err(|e| err(field, format!("not base64: {e}")))?;
    if bytes.len() < 32 {
        return Err(err(
            field,
            format!("{} bytes is too short; use at least 32", bytes.len()),
        ));
    }
    Ok(Some(bytes))
}

/// The allowed algorithms: those listed (never `none`; HS* only with a
/// secret), or by default what the configured keys can verify.
fn algorithms(field: &str, p: &ProviderConfig, has_secret: bool) -> Result<Vec<Alg>, ConfigError> {
    let Some(names) = &p.algorithms else {
        let asymmetric = p.jwks.is_some() || p.remote_jwks.is_some();
        return Ok(Alg::ALL
            .into_iter()
            .filter(|a| {
                if a.is_symmetric() {
                    has_secret
                } else {
                    asymmetric
                }
            })
            .collect());
    };
    let mut algs = Vec::new();
    for name in names {
        let Some(alg) = Alg::from_name(name) else {
            let why = if name.eq_ignore_ascii_case("none") {
                "unsigned tokens (`none`) are never accepted".to_string()
            } else {
                format!(
                    "unknown algorithm {name:?}; expected one of {}",
                    Alg::ALL.map(Alg::name).join(", ")
                )
            };
            return Err(err(field, why));
        };
        if alg.is_symmetric() && !has_secret {
            return Err(err(field, format!("{name} needs `hmac_secret_base64`")));
        }
        algs.push(alg);
    }
    if algs.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    Ok(algs)
}

/// Keys given in the configuration: the inline JWKS's keys for the allowed
/// asymmetric algorithms, and one HMAC key per allowed HS algorithm.
fn local_keys(
    at: &str,
    p: &ProviderConfig,
    algorithms: &[Alg],
    secret: Option<&[u8]>,
) -> Result<KeySet, ConfigError> {
    let mut keys = KeySet::default();
    if let Some(jwks) = &p.jwks {
        let text = match jwks {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let asymmetric: Vec<Alg> = algorithms
            .iter()
            .copied()
            .filter(|a| !a.is_symmetric())
            .collect();
        keys = KeySet::from_jwks(text.as_bytes(), &asymmetric)
            .map_err(|e| err(&format!("{at}.jwks"), e))?;
    }
    if let Some(secret) = secret {
        if !algorithms.iter().any(|a| a.is_symmetric()) {
            return Err(err(
                &format!("{at}.algorithms"),
                "a secret is configured but no HS256/HS384/HS512 is allowed",
            ));
        }
        keys.add_secret(secret, algorithms);
    }
    Ok(keys)
}

/// `required_claims`: claim → the values that satisfy it (one of).
fn required_claims(
    field: &str,
    claims: &BTreeMap<String, Value>,
) -> Result<Vec<(String, Vec<Value>)>, ConfigError> {
    let mut required = Vec::new();
    for (claim, want) in claims {
        let at = format!("{field}.{claim}");
        let values = match want {
            Value::Array(items) if !items.is_empty() => items.clone(),
            Value::Array(_) => return Err(err(&at, "an empty list matches nothing")),
            v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)) => vec![v.clone()],
            _ => {
                return Err(err(
                    &at,
                    "expected a string, number, boolean or a list of them",
                ))
            }
        };
        if values
            .iter()
            .any(|v| v.is_object() || v.is_array() || v.is_null())
        {
            return Err(err(&at, "list items must be strings, numbers or booleans"));
        }
        required.push((claim.clone(), values));
    }
    Ok(required)
}

fn compile_remote(
    at: &str,
    r: &RemoteJwksConfig,
    source: KeySource,
) -> Result<Remote, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    let (authority, path) = split_uri(&r.uri).map_err(|e| err(&field("uri"), e))?;
    match source {
        KeySource::EnvoyCluster if r.cluster.trim().is_empty() => {
            return Err(err(&field("cluster"), "must name an Envoy cluster"));
        }
        KeySource::Direct if !r.cluster.is_empty() => {
            return Err(err(
                &field("cluster"),
                "is for Envoy; the collector fetches `uri` itself",
            ));
        }
        _ => {}
    }
    in_range(&field("timeout_ms"), r.timeout_ms, 1, 60_000)?;
    in_range(
        &field("cache_duration_s"),
        r.cache_duration_s,
        1,
        7 * 86_400,
    )?;
    in_range(
        &field("unknown_kid_refetch_interval_ms"),
        r.unknown_kid_refetch_interval_ms,
        0,
        86_400_000,
    )?;
    in_range(
        &field("retry_interval_ms"),
        r.retry_interval_ms,
        10,
        3_600_000,
    )?;
    Ok(Remote::new(r.clone(), authority, path))
}

/// `https://host[:port]/path?query` → (`host[:port]`, `/path?query`).
fn split_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("{uri:?} is not an http(s) URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.is_empty() || authority.contains(['@', ' ', '#']) || path.contains([' ', '#']) {
        return Err(format!("{uri:?} is not a usable URL"));
    }
    Ok((authority.to_string(), path))
}

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(is_header_name_byte) {
        return Err(err(
            field,
            format!("{name:?} is not a lowercase HTTP header name"),
        ));
    }
    Ok(())
}
