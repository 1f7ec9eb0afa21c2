//! The authenticator's decision for one request's token, and the header
//! changes for the upstream.
//!
//! Order of checks for a token: size; cache; compact form and header; `alg`
//! (`none` and algorithms outside the provider's allow-list are refused before
//! any key is looked at); the provider, chosen by the unverified `iss` and
//! used for nothing else until the signature holds; the key, by `alg` and
//! `kid`; signature; time window; audience; required claims. Only a token that
//! passes all of them yields claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

use super::cache::{token_hash, RejectionCache, TokenCache};
use super::compile::{KeySource, Provider, TokenSource};
use super::fetch::Remote;
use super::keys::{Alg, Claims, VerifyKey};
use super::{Identity, Reason, Rejection};

/// A verified token without `exp` (allowed only with `require_expiration:
/// false`) is cached for at most this long.
const MAX_CACHE_SECONDS: u64 = 300;
/// Longest claim value copied into a request header.
const MAX_HEADER_VALUE: usize = 4096;

/// The `sub` a token claims (unverified), shortened for the record.
fn claimed_subject(payload: &JsonObject) -> Option<String> {
    let sub = payload.get("sub").and_then(Value::as_str)?;
    Some(sub.chars().take(256).collect())
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

/// Request headers to change for the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
}

/// The `jwt` section compiled (`Authenticator::new`, compile.rs), the
/// caches of decided tokens and the state of remote keys (fetch.rs).
#[derive(Debug)]
pub struct Authenticator {
    pub(super) required: bool,
    pub(super) sources: Vec<TokenSource>,
    pub(super) providers: Vec<Provider>,
    /// Every `claim_to_headers` header of every provider: removed from every
    /// request so a caller cannot forge them.
    pub(super) claim_header_names: Vec<String>,
    pub(super) cache: TokenCache,
    /// Tokens refused after a signature check: the same forged token again
    /// costs a hash, not a check.
    pub(super) rejected: RejectionCache,
    /// How remote JWKS are reached; `compile` checks `remote_jwks` by it.
    pub(super) key_source: KeySource,
}

impl Authenticator {
    /// Keeps these claims of verified tokens in `Identity::access_claims`
    /// (what access rules' `when` read).
    pub fn read_claims(&mut self, names: &[String]) {
        for p in &mut self.providers {
            p.access_claims = names.to_vec();
        }
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

    /// The checks of the module doc after the caches, in that order. `Ok`
    /// holds the identity and until when (Unix seconds) to cache it.
    fn verify(
        &mut self,
        t: &Extracted,
        now_ms: u64,
        allow_fetch: bool,
    ) -> Result<(Identity, u64), Step> {
        let (header, payload) = parse_compact(&t.token)?;
        self.verify_parsed(t, now_ms, allow_fetch, &header, &payload)
            .map_err(|step| match step {
                Step::Reject(mut r) => {
                    r.claimed_subject = claimed_subject(&payload);
                    Step::Reject(r)
                }
                keys => keys,
            })
    }

    /// The checks after the token's parts are parsed.
    fn verify_parsed(
        &mut self,
        t: &Extracted,
        now_ms: u64,
        allow_fetch: bool,
        header: &JsonObject,
        payload: &JsonObject,
    ) -> Result<(Identity, u64), Step> {
        let now = now_ms / 1000;
        let (alg, kid) = alg_and_kid(header)?;
        let index = self.provider_for(t.source, payload, alg)?;
        let p = &self.providers[index];
        let candidates = p.candidates(alg, kid);
        if candidates.is_empty() {
            return Err(self.missing_keys(index, kid, now_ms, allow_fetch));
        }
        let (claims, key_id) = p.check_signature(&t.token, alg, &candidates, now)?;
        // From here the payload is verified: the bytes parsed above are the
        // signed bytes.
        let exp = p.check_claims(&claims, payload)?;
        let identity = p.identity(index, alg, key_id, exp, &claims, payload);
        // jwt-simple accepts a token until `exp + skew`; so does the cache.
        let valid_until = match exp {
            Some(exp) => exp.saturating_add(p.clock_skew_s),
            None => now + MAX_CACHE_SECONDS,
        };
        Ok((identity, valid_until))
    }

    /// The provider whose issuer the unverified `iss` names, among those
    /// reading the token's source, if it allows `alg`.
    fn provider_for(&self, source: usize, payload: &JsonObject, alg: Alg) -> Result<usize, Step> {
        let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(index) = self
            .providers
            .iter()
            .position(|p| p.source == source && p.issuer == iss)
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
        Ok(index)
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

/// The steps of `Authenticator::verify` that need one provider only.
impl Provider {
    /// Keys that may have signed the token. Asymmetric ones come from the
    /// inline JWKS or the fetched one; HMAC keys are always inline.
    fn candidates<'a>(&'a self, alg: Alg, kid: Option<&'a str>) -> Vec<&'a VerifyKey> {
        let mut candidates: Vec<_> = self.local_keys.candidates(alg, kid).collect();
        if !alg.is_symmetric() {
            if let Some(keys) = self.remote.as_ref().and_then(Remote::keys) {
                candidates.extend(keys.candidates(alg, kid));
            }
        }
        candidates
    }

    /// The first candidate whose signature holds, with jwt-simple's checks of
    /// time, issuer, audience and size. Returns the claims and the key's kid.
    fn check_signature(
        &self,
        token: &str,
        alg: Alg,
        candidates: &[&VerifyKey],
        now: u64,
    ) -> Result<(Claims, Option<String>), Step> {
        let mut options = VerificationOptions {
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            time_tolerance: Some(Duration::from_secs(self.clock_skew_s)),
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: Some(self.audiences.clone()),
            max_token_length: Some(self.max_token_bytes),
            ..VerificationOptions::default()
        };
        options.max_header_length = Some(self.max_token_bytes);
        for candidate in candidates {
            match candidate.key.verify(token, options.clone()) {
                Ok(claims) => return Ok((claims, candidate.kid.clone())),
                Err(e) => match e.downcast_ref::<JWTError>() {
                    Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
                        continue
                    }
                    other => return Err(Step::Reject(rejection_for(other, &e.to_string()))),
                },
            }
        }
        Err(reject(
            Reason::BadSignature,
            format!(
                "signature does not match any {alg} key of provider {}",
                self.name
            ),
        ))
    }

    /// `exp` when required, and the required claims, of a verified token.
    /// Returns `exp`.
    fn check_claims(&self, claims: &Claims, payload: &JsonObject) -> Result<Option<u64>, Step> {
        let exp = claims.expires_at.map(|t| t.as_secs());
        if exp.is_none() && self.require_expiration {
            return Err(reject(Reason::Claims, "token has no `exp`"));
        }
        for (name, allowed) in &self.required_claims {
            let split = name == "scope" || name == "scp";
            match claim(payload, name) {
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
        Ok(exp)
    }

    /// What a verified token tells: who, by which key, and the claims to
    /// record and to copy into headers.
    fn identity(
        &self,
        index: usize,
        alg: Alg,
        key_id: Option<String>,
        exp: Option<u64>,
        claims: &Claims,
        payload: &JsonObject,
    ) -> Identity {
        Identity {
            provider: self.name.clone(),
            provider_index: index,
            issuer: self.issuer.clone(),
            subject: claims.subject.clone().unwrap_or_default(),
            algorithm: alg.name().to_string(),
            key_id: key_id.unwrap_or_default(),
            expires_at: exp,
            claims: self
                .record_claims
                .iter()
                .filter_map(|c| claim(payload, c).map(|v| (c.clone(), claim_text(v))))
                .collect(),
            headers: self
                .claim_headers
                .iter()
                .filter_map(|(c, h)| {
                    let v = claim_text(claim(payload, c)?);
                    header_value_ok(&v).then(|| (h.clone(), v))
                })
                .collect(),
            access_claims: self
                .access_claims
                .iter()
                .filter_map(|c| {
                    let split = c == "scope" || c == "scp";
                    claim(payload, c).map(|v| (c.clone(), claim_values(v, split)))
                })
                .collect(),
        }
    }
}

/// Why verification stopped short of an identity.
pub(super) enum Step {
    Reject(Rejection),
    /// The keys of this provider are needed first.
    NeedKeys(usize),
}

fn reject(reason: Reason, detail: impl Into<String>) -> Step {
    Step::Reject(Rejection::new(reason, detail))
}

/// A refusal from jwt-simple's error, when a key's signature check stopped
/// for another reason than a signature that does not match.
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

type JsonObject = Map<String, Value>;

/// Splits a compact JWS and decodes its header and payload as JSON objects.
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

/// The header's `alg`, supported and not `none`, and its `kid`, if any.
fn alg_and_kid(header: &JsonObject) -> Result<(Alg, Option<&str>), Step> {
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
    Ok((alg, kid))
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

/// An array claim matches when any element does; with `split_words`, a
/// string also when any of its space-separated words does (OAuth `scope`).
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

/// A claim's values as text, for access rules: a string (and, with
/// `split_words`, each of its space-separated words), each element of an
/// array, numbers and booleans as JSON; objects and null have none.
fn claim_values(v: &Value, split_words: bool) -> Vec<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        Value::String(s) if split_words => {
            let mut out = vec![s.clone()];
            out.extend(
                s.split(' ')
                    .filter(|w| !w.is_empty() && *w != s)
                    .map(str::to_string),
            );
            out
        }
        other => scalar(other).into_iter().collect(),
    }
}

/// A claim as text: strings as they are, anything else as JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A claim value fit for a header: bounded, and no control character but
/// tab (a CR or LF would let a claim add headers).
fn header_value_ok(v: &str) -> bool {
    v.len() <= MAX_HEADER_VALUE
        && v.bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// Unverified text for a message: quoted, control characters escaped, cut.
pub(crate) fn printable(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    let mut q = format!("{cut:?}");
    if s.chars().count() > 80 {
        q.push('…');
    }
    q
}
