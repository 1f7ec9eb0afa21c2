//! Remote JWKS: which to fetch and when (in the background every
//! `cache_duration_s`; at once when a request needs keys; after a failure,
//! not again before `retry_interval_ms`), and what a fetch brought. The host
//! runs the fetches; this keeps the schedule and the keys.

use super::config::RemoteJwksConfig;
use super::keys::{Alg, KeySet};
use super::verify::{printable, Authenticator, Step};
use super::{Reason, Rejection};

/// A JWKS fetch to start now (by the filter's worker, or the collector).
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

/// One provider's remote JWKS: its keys and when to fetch them again.
#[derive(Debug)]
pub(super) struct Remote {
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

impl Remote {
    /// Not fetched yet: due at the first `due_fetches`.
    pub(super) fn new(config: RemoteJwksConfig, authority: String, path: String) -> Remote {
        Remote {
            config,
            authority,
            path,
            keys: None,
            fetched_at_ms: None,
            last_attempt_ms: None,
            last_error: None,
            last_unknown_kid_fetch_ms: None,
            in_flight: false,
            wanted: false,
        }
    }

    /// The keys of the last successful fetch.
    pub(super) fn keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
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

impl Authenticator {
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
    /// Returns what it brought, or the error (also kept, to explain
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

    /// No key fits the token. Fetch (or wait for a fetch) when that can help,
    /// else refuse.
    pub(super) fn missing_keys(
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
}
