//! The authenticator: the `jwt` configuration compiled once, and the decision
//! for one request's token.
//!
//! Order of checks for a token: size; cache; compact form and header; `alg`
//! (`none` and algorithms outside the provider's allow-list are refused before
//! any key is looked at); the provider, chosen by the unverified `iss` and
//! used for nothing else until the signature holds; the key, by `alg` and
//! `kid`; signature; time window; audience; required claims. Only a token that
//! passes all of them yields claims.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

use super::cache::{token_hash, RejectionCache, TokenCache};
use super::config::{JwtConfig, ProviderConfig, RemoteJwksConfig};
use super::keys::{Alg, KeySet};
use super::{Identity, Reason, Rejection};
use crate::config::{err, in_range, is_header_name_byte, ConfigError};

/// A verified token without `exp` (allowed only with `require_expiration:
/// false`) is cached for at most this long.
const MAX_CACHE_SECONDS: u64 = 300;
/// Longest claim value copied into a request header.
const MAX_HEADER_VALUE: usize = 4096;

/// Where tokens are read from: a request header and the text before the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    pub header: String,
    pub prefix: String,
}

/// A token found on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Which of the authenticator's token sources (distinct headers and
    /// prefixes, in the order providers name them) it was read from.
    pub source: usize,
    pub token: String,
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// No token, and tokens are not required.
    Anonymous,
    Verified {
        identity: Arc<Identity>,
        /// Answered from the cache, without a signature check.
        cached: bool,
    },
    Rejected(Rejection),
    /// The provider's keys are missing or lack the token's `kid`: wait for
    /// the JWKS fetch this asked for, then decide with `allow_fetch = false`.
    NeedKeys {
        provider: usize,
    },
}

/// How remote JWKS are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Through an Envoy cluster (the filter): `remote_jwks.cluster` is required.
    EnvoyCluster,
    /// By fetching `remote_jwks.uri` directly (the collector): no cluster.
    Direct,
}

/// A JWKS fetch the root context should start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksFetch {
    pub provider: usize,
    /// The configured URL (for `KeySource::Direct`).
    pub uri: String,
    /// The Envoy cluster (empty for `KeySource::Direct`).
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

#[derive(Debug)]
struct Remote {
    config: RemoteJwksConfig,
    authority: String,
    path: String,
    keys: Option<KeySet>,
    fetched_at_ms: Option<u64>,
    last_attempt_ms: Option<u64>,
    last_error: Option<String>,
    last_unknown_kid_fetch_ms: Option<u64>,
    in_flight: bool,
    /// A request is waiting for keys: fetch at the next opportunity.
    wanted: bool,
}

#[derive(Debug)]
struct Provider {
    name: String,
    issuer: String,
    audiences: HashSet<String>,
    algorithms: Vec<Alg>,
    clock_skew_s: u64,
    require_expiration: bool,
    required_claims: Vec<(String, Vec<Value>)>,
    source: usize,
    forward: bool,
    claim_headers: Vec<(String, String)>,
    record_claims: Vec<String>,
    max_token_bytes: usize,
    /// Inline JWKS keys and HMAC keys.
    local_keys: KeySet,
    remote: Option<Remote>,
}

/// Request headers to change for the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Authenticator {
    required: bool,
    sources: Vec<TokenSource>,
    providers: Vec<Provider>,
    /// Every `claim_to_headers` header of every provider: removed from every
    /// request so a caller cannot forge them.
    claim_header_names: Vec<String>,
    cache: TokenCache,
    /// Tokens refused after a signature check: the same forged token again
    /// costs a hash, not a check.
    rejected: RejectionCache,
    key_source: KeySource,
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

    fn compile(&mut self, at: &str, p: &ProviderConfig) -> Result<Provider, ConfigError> {
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
        in_range(&field("clock_skew_s"), p.clock_skew_s, 0, 600)?;
        in_range(&field("max_token_bytes"), p.max_token_bytes, 256, 65_536)?;

        let secret = match &p.hmac_secret_base64 {
            None => None,
            Some(s) => {
                let bytes = STANDARD
                    .decode(s.trim())
                    .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim().trim_end_matches('=')))
                    .map_err(|e| err(&field("hmac_secret_base64"), format!("not base64: {e}")))?;
                if bytes.len() < 32 {
                    return Err(err(
                        &field("hmac_secret_base64"),
                        format!("{} bytes is too short; use at least 32", bytes.len()),
                    ));
                }
                Some(bytes)
            }
        };
        let algorithms = match &p.algorithms {
            Some(names) => {
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
                        return Err(err(&field("algorithms"), why));
                    };
                    if alg.is_symmetric() && secret.is_none() {
                        return Err(err(
                            &field("algorithms"),
                            format!("{name} needs `hmac_secret_base64`"),
                        ));
                    }
                    algs.push(alg);
                }
                if algs.is_empty() {
                    return Err(err(&field("algorithms"), "must not be empty"));
                }
                algs
            }
            // Default: what the configured keys can verify.
            None => {
                let asymmetric = p.jwks.is_some() || p.remote_jwks.is_some();
                Alg::ALL
                    .into_iter()
                    .filter(|a| {
                        if a.is_symmetric() {
                            secret.is_some()
                        } else {
                            asymmetric
                        }
                    })
                    .collect()
            }
        };

        let mut local_keys = KeySet::default();
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
            local_keys = KeySet::from_jwks(text.as_bytes(), &asymmetric)
                .map_err(|e| err(&field("jwks"), e))?;
        }
        if let Some(secret) = &secret {
            if !algorithms.iter().any(|a| a.is_symmetric()) {
                return Err(err(
                    &field("algorithms"),
                    "a secret is configured but no HS256/HS384/HS512 is allowed",
                ));
            }
            local_keys.add_secret(secret, &algorithms);
        }
        let remote = match &p.remote_jwks {
            None => None,
            Some(r) => Some(compile_remote(&field("remote_jwks"), r, self.key_source)?),
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
                &field("algorithms"),
                "JWKS keys are configured but no asymmetric algorithm is allowed",
            ));
        }

        let mut required_claims = Vec::new();
        for (claim, want) in &p.required_claims {
            let values = match want {
                Value::Array(items) if !items.is_empty() => items.clone(),
                Value::Array(_) => {
                    return Err(err(
                        &format!("{}.{claim}", field("required_claims")),
                        "an empty list matches nothing",
                    ))
                }
                v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)) => vec![v.clone()],
                _ => {
                    return Err(err(
                        &format!("{}.{claim}", field("required_claims")),
                        "expected a string, number, boolean or a list of them",
                    ))
                }
            };
            if values
                .iter()
                .any(|v| v.is_object() || v.is_array() || v.is_null())
            {
                return Err(err(
                    &format!("{}.{claim}", field("required_claims")),
                    "list items must be strings, numbers or booleans",
                ));
            }
            required_claims.push((claim.clone(), values));
        }

        let h = &p.from_header;
        check_header_name(&field("from_header.name"), &h.name)?;
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
                &field("issuer"),
                format!(
                    "{:?} is already used by another provider reading the same header",
                    p.issuer
                ),
            ));
        }

        let mut claim_headers = Vec::new();
        for (j, ch) in p.claim_to_headers.iter().enumerate() {
            let hf = format!("{}[{j}].header", field("claim_to_headers"));
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
                return Err(err(
                    &format!("{}[{j}].claim", field("claim_to_headers")),
                    "must not be empty",
                ));
            }
            claim_headers.push((ch.claim.clone(), ch.header.clone()));
            if !self.claim_header_names.contains(&ch.header) {
                self.claim_header_names.push(ch.header.clone());
            }
        }

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
            max_token_bytes: p.max_token_bytes,
            local_keys,
            remote,
        })
    }

    /// Finds the token: the first configured source whose header is present
    /// and starts with its prefix. `header` gives a request header's value.
    pub fn extract(&self, header: impl Fn(&str) -> Option<String>) -> Option<Extracted> {
        self.sources.iter().enumerate().find_map(|(i, s)| {
            let value = header(&s.header)?;
            let value = value.trim();
            let token = if s.prefix.is_empty() {
                value
            } else {
                let head = value.get(..s.prefix.len())?;
                if !head.eq_ignore_ascii_case(&s.prefix) {
                    return None;
                }
                value.get(s.prefix.len()..)?.trim_start()
            };
            Some(Extracted {
                source: i,
                token: token.to_string(),
            })
        })
    }

    /// Decides on a request's token (`None`: the request has none).
    /// `allow_fetch` is false when re-deciding after a fetch, so one request
    /// never asks for keys twice.
    pub fn decide(
        &mut self,
        token: Option<&Extracted>,
        now_ms: u64,
        allow_fetch: bool,
    ) -> Decision {
        let Some(t) = token else {
            return if self.required {
                Decision::Rejected(Rejection::new(Reason::Missing, "no bearer token"))
            } else {
                Decision::Anonymous
            };
        };
        let now = now_ms / 1000;
        let limit = self
            .providers
            .iter()
            .filter(|p| p.source == t.source)
            .map(|p| p.max_token_bytes)
            .max()
            .unwrap_or(0);
        if t.token.len() > limit {
            return Decision::Rejected(Rejection::new(
                Reason::TooLarge,
                format!("token of {} bytes exceeds {limit}", t.token.len()),
            ));
        }
        let hash = token_hash(&t.token);
        if let Some(identity) = self.cache.get(&hash, now) {
            return Decision::Verified {
                identity,
                cached: true,
            };
        }
        if let Some(mut rejection) = self.rejected.get(&hash, now) {
            rejection.cached = true;
            return Decision::Rejected(rejection);
        }
        match self.verify(t, now_ms, allow_fetch) {
            Ok((identity, valid_until)) => {
                let identity = Arc::new(identity);
                self.cache.insert(hash, identity.clone(), valid_until);
                Decision::Verified {
                    identity,
                    cached: false,
                }
            }
            Err(Step::Reject(r)) => {
                // Refusals that only a change of keys could undo (and a
                // change of keys empties this cache). Not `not_yet_valid`:
                // time makes that token good; not `unknown_kid` or
                // `jwks_unavailable`: a fetch may.
                if matches!(
                    r.reason,
                    Reason::BadSignature | Reason::Expired | Reason::WrongAudience | Reason::Claims
                ) {
                    self.rejected.insert(hash, r.clone(), u64::MAX);
                }
                Decision::Rejected(r)
            }
            Err(Step::NeedKeys(p)) => Decision::NeedKeys { provider: p },
        }
    }

    fn verify(
        &mut self,
        t: &Extracted,
        now_ms: u64,
        allow_fetch: bool,
    ) -> Result<(Identity, u64), Step> {
        let now = now_ms / 1000;
        let (header, payload) = parse_compact(&t.token)?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(reject(
                Reason::AlgorithmNotAllowed,
                "unsigned tokens (alg none) are never accepted",
            ));
        }
        let Some(alg) = Alg::from_name(alg_name) else {
            return Err(reject(
                Reason::AlgorithmNotAllowed,
                format!("algorithm {} is not supported", printable(alg_name)),
            ));
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(reject(Reason::Malformed, "`kid` is not a string")),
        };
        let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(index) = self
            .providers
            .iter()
            .position(|p| p.source == t.source && p.issuer == iss)
        else {
            return Err(reject(
                Reason::UnknownIssuer,
                format!("issuer {} is not trusted", printable(iss)),
            ));
        };
        let p = &self.providers[index];
        if !p.algorithms.contains(&alg) {
            return Err(reject(
                Reason::AlgorithmNotAllowed,
                format!("algorithm {alg} is not allowed for provider {}", p.name),
            ));
        }

        // Keys: asymmetric ones come from the inline JWKS or the fetched one.
        let remote_keys = p.remote.as_ref().and_then(|r| r.keys.as_ref());
        let mut candidates: Vec<_> = p.local_keys.candidates(alg, kid).collect();
        if !alg.is_symmetric() {
            if let Some(keys) = remote_keys {
                candidates.extend(keys.candidates(alg, kid));
            }
        }
        if candidates.is_empty() {
            return Err(self.missing_keys(index, kid, now_ms, allow_fetch));
        }

        let mut options = VerificationOptions {
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            time_tolerance: Some(Duration::from_secs(p.clock_skew_s)),
            allowed_issuers: Some(HashSet::from([p.issuer.clone()])),
            allowed_audiences: Some(p.audiences.clone()),
            max_token_length: Some(p.max_token_bytes),
            ..VerificationOptions::default()
        };
        options.max_header_length = Some(p.max_token_bytes);
        let mut claims = None;
        for candidate in &candidates {
            match candidate.key.verify(&t.token, options.clone()) {
                Ok(c) => {
                    claims = Some((c, candidate.kid.clone()));
                    break;
                }
                Err(e) => match e.downcast_ref::<JWTError>() {
                    Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
                        continue
                    }
                    other => return Err(Step::Reject(rejection_for(other, &e.to_string()))),
                },
            }
        }
        let Some((claims, key_id)) = claims else {
            return Err(reject(
                Reason::BadSignature,
                format!(
                    "signature does not match any {alg} key of provider {}",
                    p.name
                ),
            ));
        };

        // From here the payload is verified: the bytes parsed above are the
        // signed bytes.
        let exp = claims.expires_at.map(|t| t.as_secs());
        if exp.is_none() && p.require_expiration {
            return Err(reject(Reason::Claims, "token has no `exp`"));
        }
        for (name, allowed) in &p.required_claims {
            let split = name == "scope" || name == "scp";
            match claim(&payload, name) {
                None => {
                    return Err(reject(
                        Reason::Claims,
                        format!("required claim `{name}` is missing"),
                    ))
                }
                Some(actual) if !claim_matches(actual, allowed, split) => {
                    return Err(reject(
                        Reason::Claims,
                        format!("claim `{name}` does not have a required value"),
                    ))
                }
                Some(_) => {}
            }
        }
        let identity = Identity {
            provider: p.name.clone(),
            provider_index: index,
            issuer: p.issuer.clone(),
            subject: claims.subject.clone().unwrap_or_default(),
            algorithm: alg.name().to_string(),
            key_id: key_id.unwrap_or_default(),
            expires_at: exp,
            claims: p
                .record_claims
                .iter()
                .filter_map(|c| claim(&payload, c).map(|v| (c.clone(), claim_text(v))))
                .collect(),
            headers: p
                .claim_headers
                .iter()
                .filter_map(|(c, h)| {
                    let v = claim_text(claim(&payload, c)?);
                    header_value_ok(&v).then(|| (h.clone(), v))
                })
                .collect(),
        };
        // jwt-simple accepts a token until `exp + skew`; so does the cache.
        let valid_until = match exp {
            Some(exp) => exp.saturating_add(p.clock_skew_s),
            None => now + MAX_CACHE_SECONDS,
        };
        Ok((identity, valid_until))
    }

    /// No key fits the token. Fetch (or wait for a fetch) when that can help,
    /// else refuse.
    fn missing_keys(
        &mut self,
        index: usize,
        kid: Option<&str>,
        now_ms: u64,
        allow_fetch: bool,
    ) -> Step {
        let p = &mut self.providers[index];
        let name = p.name.clone();
        let Some(r) = p.remote.as_mut() else {
            return match kid {
                Some(kid) => Step::Reject(Rejection::new(
                    Reason::UnknownKid,
                    format!("no key with kid {} for provider {name}", printable(kid)),
                )),
                None => Step::Reject(Rejection::new(
                    Reason::UnknownKid,
                    format!("provider {name} has no key for this algorithm"),
                )),
            };
        };
        if r.keys.is_none() {
            let recently_failed = r.last_error.is_some()
                && r.last_attempt_ms
                    .is_some_and(|t| now_ms < t.saturating_add(r.config.retry_interval_ms));
            if allow_fetch && (r.in_flight || !recently_failed) {
                r.wanted = true;
                return Step::NeedKeys(index);
            }
            let why = r.last_error.as_deref().unwrap_or("not fetched yet");
            return Step::Reject(Rejection::new(
                Reason::JwksUnavailable,
                format!("keys of provider {name} are unavailable: {why}"),
            ));
        }
        let kid_text = kid.map_or_else(|| "(none)".to_string(), printable);
        let may_refetch = kid.is_some_and(|k| !r.keys.as_ref().is_some_and(|ks| ks.has_kid(k)))
            && r.last_unknown_kid_fetch_ms.is_none_or(|t| {
                now_ms >= t.saturating_add(r.config.unknown_kid_refetch_interval_ms)
            });
        if allow_fetch && (r.in_flight || may_refetch) {
            if !r.in_flight {
                r.last_unknown_kid_fetch_ms = Some(now_ms);
            }
            r.wanted = true;
            return Step::NeedKeys(index);
        }
        Step::Reject(Rejection::new(
            Reason::UnknownKid,
            format!("no key with kid {kid_text} for provider {name}"),
        ))
    }

    /// JWKS fetches due now: never fetched, wanted by a request, or the cached
    /// keys are older than `cache_duration_s`. Marks them in flight.
    pub fn due_fetches(&mut self, now_ms: u64) -> Vec<JwksFetch> {
        let mut due = Vec::new();
        for (i, p) in self.providers.iter_mut().enumerate() {
            let Some(r) = p.remote.as_mut() else { continue };
            if r.in_flight {
                continue;
            }
            let retry_ok = r
                .last_attempt_ms
                .is_none_or(|t| now_ms >= t.saturating_add(r.config.retry_interval_ms));
            let stale = r.fetched_at_ms.is_none_or(|t| {
                now_ms >= t.saturating_add(r.config.cache_duration_s.saturating_mul(1000))
            });
            let failed_recently = r.last_error.is_some() && !retry_ok;
            if (r.wanted && !failed_recently) || (stale && retry_ok) {
                r.in_flight = true;
                r.wanted = false;
                r.last_attempt_ms = Some(now_ms);
                due.push(JwksFetch {
                    provider: i,
                    uri: r.config.uri.clone(),
                    cluster: r.config.cluster.clone(),
                    authority: r.authority.clone(),
                    path: r.path.clone(),
                    timeout_ms: r.config.timeout_ms,
                });
            }
        }
        due
    }

    /// The outcome of a fetch: the body of a 200 answer, or why it failed.
    /// Returns the number of usable keys, or the error (also kept, to explain
    /// rejections). On failure, keys fetched before stay in use.
    pub fn fetched(
        &mut self,
        provider: usize,
        result: Result<&[u8], String>,
        now_ms: u64,
    ) -> Result<FetchReport, String> {
        let Some(p) = self.providers.get_mut(provider) else {
            return Err("no such provider".into());
        };
        let Some(r) = p.remote.as_mut() else {
            return Err("provider has no remote JWKS".into());
        };
        r.in_flight = false;
        let allowed: Vec<Alg> = p
            .algorithms
            .iter()
            .copied()
            .filter(|a| !a.is_symmetric())
            .collect();
        let parsed = result.and_then(|body| KeySet::from_jwks(body, &allowed));
        match parsed {
            Ok(keys) => {
                let kids = |ks: &KeySet| {
                    ks.keys
                        .iter()
                        .map(|k| (k.kid.clone(), k.alg))
                        .collect::<Vec<_>>()
                };
                let changed = r.keys.as_ref().is_none_or(|old| kids(old) != kids(&keys));
                let report = FetchReport {
                    keys: keys.keys.len(),
                    skipped: keys.skipped.clone(),
                    changed,
                };
                r.keys = Some(keys);
                r.fetched_at_ms = Some(now_ms);
                r.last_error = None;
                if changed {
                    // A key may have been withdrawn: tokens it signed must
                    // not live on in the cache. A key may have been added:
                    // a token refused before may verify now.
                    self.cache.clear();
                    self.rejected.clear();
                }
                Ok(report)
            }
            Err(e) => {
                r.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Name of a provider, for logs.
    pub fn provider_name(&self, provider: usize) -> &str {
        self.providers.get(provider).map_or("", |p| p.name.as_str())
    }

    /// Header changes for the upstream request: claim headers are always
    /// removed (a caller must not be able to set them), then set from the
    /// verified claims; the token is removed unless the provider forwards it.
    pub fn header_changes(&self, decision: &Decision, token: Option<&Extracted>) -> HeaderChanges {
        let mut changes = HeaderChanges {
            remove: self.claim_header_names.clone(),
            set: Vec::new(),
        };
        if let Decision::Verified { identity, .. } = decision {
            if let Some(p) = self.providers.get(identity.provider_index) {
                if !p.forward {
                    if let Some(s) = token.and_then(|t| self.sources.get(t.source)) {
                        changes.remove.push(s.header.clone());
                    }
                }
            }
            changes.set = identity.headers.clone();
        }
        changes
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Tokens remembered as refused.
    pub fn negative_cache_len(&self) -> usize {
        self.rejected.len()
    }
}

/// What a fetch brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    pub keys: usize,
    pub skipped: Vec<String>,
    /// The set of (kid, algorithm) differs from the previous fetch.
    pub changed: bool,
}

enum Step {
    Reject(Rejection),
    NeedKeys(usize),
}

fn reject(reason: Reason, detail: impl Into<String>) -> Step {
    Step::Reject(Rejection::new(reason, detail))
}

fn rejection_for(e: Option<&JWTError>, text: &str) -> Rejection {
    let reason = match e {
        Some(JWTError::TokenHasExpired) => Reason::Expired,
        Some(JWTError::TokenNotValidYet | JWTError::ClockDrift) => Reason::NotYetValid,
        Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => {
            Reason::WrongAudience
        }
        Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
            Reason::UnknownIssuer
        }
        Some(JWTError::TokenTooLong | JWTError::HeaderTooLarge) => Reason::TooLarge,
        Some(JWTError::AlgorithmMismatch) => Reason::AlgorithmNotAllowed,
        _ => Reason::Malformed,
    };
    let detail = match reason {
        Reason::Expired => "token has expired".to_string(),
        Reason::NotYetValid => "token is not valid yet".to_string(),
        Reason::WrongAudience => "token is not meant for this audience".to_string(),
        _ => text.to_string(),
    };
    Rejection::new(reason, detail)
}

/// Splits a compact JWS and decodes its header and payload as JSON objects.
type JsonObject = Map<String, Value>;

fn parse_compact(token: &str) -> Result<(JsonObject, JsonObject), Step> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(
            Reason::Malformed,
            "not a compact JWS (three dot-separated parts)",
        ));
    };
    let object = |part: &str, what: &str| -> Result<JsonObject, Step> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| reject(Reason::Malformed, format!("{what} is not base64url")))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(reject(
                Reason::Malformed,
                format!("{what} is not a JSON object"),
            )),
        }
    };
    Ok((object(h, "header")?, object(p, "payload")?))
}

/// A claim by name; a name that is not a top-level claim is read as a dotted
/// path into objects (`realm_access.roles`).
fn claim<'a>(payload: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = payload.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = payload.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

fn claim_matches(actual: &Value, allowed: &[Value], split_words: bool) -> bool {
    match actual {
        Value::Array(items) => items.iter().any(|i| allowed.contains(i)),
        Value::String(s) if split_words => {
            allowed.contains(actual)
                || s.split(' ')
                    .any(|w| allowed.iter().any(|a| a.as_str() == Some(w)))
        }
        _ => allowed.contains(actual),
    }
}

/// A claim as text: strings as they are, anything else as JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn header_value_ok(v: &str) -> bool {
    v.len() <= MAX_HEADER_VALUE
        && v.bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// Unverified text for a message: quoted, control characters escaped, cut.
fn printable(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    let mut q = format!("{cut:?}");
    if s.chars().count() > 80 {
        q.push('…');
    }
    q
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
    Ok(Remote {
        config: r.clone(),
        authority,
        path,
        keys: None,
        fetched_at_ms: None,
        last_attempt_ms: None,
        last_error: None,
        last_unknown_kid_fetch_ms: None,
        in_flight: false,
        wanted: false,
    })
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
