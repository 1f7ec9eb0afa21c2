//! Verification keys: JWKS documents and HMAC secrets turned into
//! jwt-simple keys, one per (key, algorithm) pair.
//!
//! Parsed once per configuration (inline JWKS) or once per fetch (remote JWKS),
//! never per request. jwt-simple's JWK import is strict (exact key sizes, no
//! private members, `use` must be `sig`, a JWK's `alg` must match), so a key
//! it refuses is skipped and reported rather than guessed at.

use jwt_simple::prelude::*;
use serde_json::{Map, Value};
use std::fmt;

/// The signature algorithms tracegate verifies. `none` is not one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// HMAC: verified with a shared secret, never with a JWKS key.
    pub fn is_symmetric(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One key, ready to check one algorithm's signatures.
#[derive(Clone)]
pub enum Key {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
}

/// The payload claims, as jwt-simple hands them back: the registered claims
/// typed, every other claim in `custom`.
pub type Claims = JWTClaims<Map<String, Value>>;

impl Key {
    /// Checks the signature, then the registered claims against `options`
    /// (time window, issuer, audience). jwt-simple refuses a token whose
    /// header `alg` is not this key's algorithm.
    pub fn verify(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<Claims, jwt_simple::Error> {
        let o = Some(options);
        match self {
            Key::RS256(k) => k.verify_token(token, o),
            Key::RS384(k) => k.verify_token(token, o),
            Key::RS512(k) => k.verify_token(token, o),
            Key::PS256(k) => k.verify_token(token, o),
            Key::PS384(k) => k.verify_token(token, o),
            Key::PS512(k) => k.verify_token(token, o),
            Key::ES256(k) => k.verify_token(token, o),
            Key::ES384(k) => k.verify_token(token, o),
            Key::EdDSA(k) => k.verify_token(token, o),
            Key::HS256(k) => k.verify_token(token, o),
            Key::HS384(k) => k.verify_token(token, o),
            Key::HS512(k) => k.verify_token(token, o),
        }
    }

    fn from_jwk(alg: Alg, jwk: &str) -> Result<Key, jwt_simple::Error> {
        Ok(match alg {
            Alg::RS256 => Key::RS256(RS256PublicKey::from_jwk(jwk)?),
            Alg::RS384 => Key::RS384(RS384PublicKey::from_jwk(jwk)?),
            Alg::RS512 => Key::RS512(RS512PublicKey::from_jwk(jwk)?),
            Alg::PS256 => Key::PS256(PS256PublicKey::from_jwk(jwk)?),
            Alg::PS384 => Key::PS384(PS384PublicKey::from_jwk(jwk)?),
            Alg::PS512 => Key::PS512(PS512PublicKey::from_jwk(jwk)?),
            Alg::ES256 => Key::ES256(ES256PublicKey::from_jwk(jwk)?),
            Alg::ES384 => Key::ES384(ES384PublicKey::from_jwk(jwk)?),
            Alg::EdDSA => Key::EdDSA(Ed25519PublicKey::from_jwk(jwk)?),
            Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                return Err(jwt_simple::JWTError::InvalidPublicKey.into());
            }
        })
    }

    fn from_secret(alg: Alg, secret: &[u8]) -> Option<Key> {
        Some(match alg {
            Alg::HS256 => Key::HS256(HS256Key::from_bytes(secret)),
            Alg::HS384 => Key::HS384(HS384Key::from_bytes(secret)),
            Alg::HS512 => Key::HS512(HS512Key::from_bytes(secret)),
            _ => return None,
        })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (an HMAC secret is one).
        f.write_str("Key(..)")
    }
}

/// A key usable for one algorithm, with the `kid` it was published under.
#[derive(Debug, Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Alg,
    pub key: Key,
}

/// All keys of one provider.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// JWKS entries that could not be used, with why (for the log).
    pub skipped: Vec<String>,
}

/// JWKS documents larger than this are refused before parsing.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// At most this many keys are taken from one JWKS.
pub const MAX_JWKS_KEYS: usize = 64;

/// Members jwt-simple reads from a public JWK. Everything else (x5c, x5t,
/// issuer, …) is dropped before import: it is not used to verify and can push
/// a key over jwt-simple's 8 KB JWK limit.
const JWK_MEMBERS: [&str; 9] = ["kty", "crv", "n", "e", "x", "y", "kid", "alg", "use"];

/// Which algorithms a JWK can serve, from its key type and curve.
fn algs_for(kty: &str, crv: Option<&str>) -> &'static [Alg] {
    match (kty, crv) {
        ("RSA", _) => &[
            Alg::RS256,
            Alg::RS384,
            Alg::RS512,
            Alg::PS256,
            Alg::PS384,
            Alg::PS512,
        ],
        ("EC", Some("P-256")) => &[Alg::ES256],
        ("EC", Some("P-384")) => &[Alg::ES384],
        ("OKP", Some("Ed25519")) => &[Alg::EdDSA],
        _ => &[],
    }
}

impl KeySet {
    /// Reads a JWKS (`{"keys": [...]}`) and keeps the keys usable for
    /// `allowed` algorithms. An error if the document is not a JWKS or if no
    /// key in it is usable: a provider with no keys could verify nothing.
    pub fn from_jwks(json: &[u8], allowed: &[Alg]) -> Result<KeySet, String> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "JWKS of {} bytes exceeds the limit of {MAX_JWKS_BYTES}",
                json.len()
            ));
        }
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err("JWKS has no \"keys\" array".into());
        };
        let mut set = KeySet::default();
        for (i, jwk) in keys.iter().enumerate().take(MAX_JWKS_KEYS) {
            set.add_jwk(i, jwk, allowed);
        }
        if keys.len() > MAX_JWKS_KEYS {
            set.skipped.push(format!(
                "{} keys after the first {MAX_JWKS_KEYS} ignored",
                keys.len() - MAX_JWKS_KEYS
            ));
        }
        if set.keys.is_empty() {
            let why = if set.skipped.is_empty() {
                "the key list is empty".to_string()
            } else {
                set.skipped.join("; ")
            };
            return Err(format!("JWKS has no usable key: {why}"));
        }
        Ok(set)
    }

    fn add_jwk(&mut self, index: usize, jwk: &Value, allowed: &[Alg]) {
        let Some(obj) = jwk.as_object() else {
            self.skipped.push(format!("key {index}: not a JSON object"));
            return;
        };
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        let kid = text("kid").map(str::to_string);
        let label = match &kid {
            Some(kid) => format!("key {index} (kid {kid:?})"),
            None => format!("key {index}"),
        };
        if text("use").is_some_and(|u| u != "sig") {
            self.skipped.push(format!("{label}: not a signing key"));
            return;
        }
        let kty = text("kty").unwrap_or_default();
        let candidates = algs_for(kty, text("crv"));
        if candidates.is_empty() {
            self.skipped.push(format!(
                "{label}: unsupported key type {kty:?} / curve {:?}",
                text("crv").unwrap_or_default()
            ));
            return;
        }
        let minimal: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| JWK_MEMBERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let minimal = Value::Object(minimal).to_string();
        let jwk_alg = text("alg");
        let mut added = false;
        let mut last_error = None;
        for &alg in candidates {
            if !allowed.contains(&alg) || jwk_alg.is_some_and(|a| a != alg.name()) {
                continue;
            }
            match Key::from_jwk(alg, &minimal) {
                Ok(key) => {
                    self.keys.push(VerifyKey {
                        kid: kid.clone(),
                        alg,
                        key,
                    });
                    added = true;
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if !added {
            let why = last_error.unwrap_or_else(|| match jwk_alg {
                Some(a) => format!("algorithm {a} is not allowed"),
                None => "none of its algorithms is allowed".into(),
            });
            self.skipped.push(format!("{label}: {why}"));
        }
    }

    /// HMAC keys from a shared secret, one per allowed HS algorithm.
    pub fn add_secret(&mut self, secret: &[u8], allowed: &[Alg]) {
        for &alg in allowed {
            if let Some(key) = Key::from_secret(alg, secret) {
                self.keys.push(VerifyKey {
                    kid: None,
                    alg,
                    key,
                });
            }
        }
    }

    /// Keys that may check a token with this header: same algorithm, and the
    /// same `kid` when both sides name one.
    pub fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.alg == alg
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    // As Envoy's jwt_authn: a token without kid is tried
                    // against every key of its algorithm, and a key without
                    // kid against every token.
                    _ => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}
