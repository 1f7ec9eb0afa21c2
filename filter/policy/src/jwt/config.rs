//! The `jwt` section of the plugin configuration, as written by the operator.
//! `Authenticator::new` (compile.rs) checks it and compiles it.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A request without a token is refused (401) unless this is false; then
    /// it passes and is recorded as anonymous. A token that is present is
    /// always verified, whatever this says.
    #[serde(default = "yes")]
    pub required: bool,
    /// Verified tokens remembered per worker, so a repeated token costs a hash
    /// lookup instead of a signature check. 0 turns the cache off.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Tokens refused after a signature check (bad signature, expired, wrong
    /// audience, claims) remembered per worker, so the same forged token
    /// again costs a hash lookup, not a signature check. 0 turns it off.
    #[serde(default = "default_cache_entries")]
    pub negative_cache_entries: usize,
    pub providers: Vec<ProviderConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Names the provider in records, logs and stats.
    pub name: String,
    /// The exact `iss` of its tokens; it also picks the provider for a token.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// Keys inline: a JWKS document, as a JSON object or as a string.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// Keys fetched from the issuer's JWKS endpoint: through an Envoy
    /// cluster in the filter, directly in the collector.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Shared secret (base64 or base64url) for HS256/384/512, at least 32 bytes.
    #[serde(default)]
    pub hmac_secret_base64: Option<String>,
    /// Accepted `alg` values. Default: every asymmetric algorithm, plus
    /// HS256/384/512 when a secret is set. HS* require a secret.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Tolerance for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    /// Tokens without `exp` are refused unless this is false.
    #[serde(default = "yes")]
    pub require_expiration: bool,
    /// Claim → required value (exact) or list of values (one of). An array
    /// claim matches when any element does; `scope`/`scp` strings are split
    /// on spaces. Dotted names reach into objects (`realm.role`).
    #[serde(default)]
    pub required_claims: BTreeMap<String, Value>,
    /// Where the token is: a header and the prefix before the token.
    #[serde(default)]
    pub from_header: TokenSourceConfig,
    /// Keep the token on the upstream request. Default: removed, so the LLM
    /// provider never sees the caller's credentials.
    #[serde(default)]
    pub forward: bool,
    /// Verified claims copied into request headers for the upstream. These
    /// headers are always removed from incoming requests first, so a caller
    /// cannot set them.
    #[serde(default)]
    pub claim_to_headers: Vec<ClaimHeaderConfig>,
    /// Claims written to the record besides `iss` and `sub`.
    #[serde(default)]
    pub record_claims: Vec<String>,
    /// Longer tokens are refused without being parsed.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// Lowercase header name.
    pub name: String,
    /// Text before the token, matched case-insensitively (RFC 6750 `Bearer `).
    /// Empty means the whole value is the token.
    #[serde(default)]
    pub prefix: String,
}

impl Default for TokenSourceConfig {
    fn default() -> Self {
        Self {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderConfig {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The JWKS URL (`https://idp.example.com/.well-known/jwks.json`); its
    /// host becomes `:authority`, its path `:path`.
    pub uri: String,
    /// The Envoy cluster that reaches it (TLS, if any, is the cluster's).
    /// Required in the filter; the collector fetches `uri` itself.
    #[serde(default)]
    pub cluster: String,
    #[serde(default = "default_fetch_timeout")]
    pub timeout_ms: u64,
    /// Keys are fetched again after this long, in the background.
    #[serde(default = "default_cache_duration")]
    pub cache_duration_s: u64,
    /// A token with a `kid` not in the key set triggers a fetch at most this
    /// often, so unknown kids cannot flood the issuer.
    #[serde(default = "default_refetch_interval")]
    pub unknown_kid_refetch_interval_ms: u64,
    /// After a failed fetch, the next one waits this long; until keys arrive,
    /// tokens of this provider are refused (fail closed).
    #[serde(default = "default_retry_interval")]
    pub retry_interval_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_cache_entries() -> usize {
    1024
}
fn default_clock_skew() -> u64 {
    60
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_fetch_timeout() -> u64 {
    5_000
}
fn default_cache_duration() -> u64 {
    600
}
fn default_refetch_interval() -> u64 {
    10_000
}
fn default_retry_interval() -> u64 {
    2_000
}
