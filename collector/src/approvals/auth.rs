//! Approvers' tokens, verified natively with the filter's authenticator
//! (tracegate-policy's `jwt`: the same provider schema, jwt-simple, the
//! caches of verified and refused tokens). Remote JWKS are fetched here,
//! directly from their URI, when a token needs them and in the background
//! every `cache_duration_s`.

use anyhow::{anyhow, Result};
use axum::http::HeaderMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracegate_policy::approval::Approver;
use tracegate_policy::jwt::keys::MAX_JWKS_BYTES;
use tracegate_policy::jwt::{
    Authenticator, Decision, JwksFetch, JwtConfig, KeySource, Reason, Rejection,
};

use crate::config::ApproversConfig;

/// A verified approver token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub approver: Approver,
    /// The verified claims conditions read, and the display claim.
    pub claims: Vec<(String, String)>,
}

pub struct ApproverAuth {
    auth: Arc<Mutex<Authenticator>>,
    /// One JWKS fetch round at a time; requests that need keys wait for it.
    fetching: tokio::sync::Mutex<()>,
    display_claim: Option<String>,
    agent: ureq::Agent,
}

fn now_ms() -> u64 {
    u64::try_from(crate::ledger::writer::now_nanos() / 1_000_000).unwrap_or(0)
}

impl ApproverAuth {
    /// Compiles the providers; `claims` are the claims the approver policy
    /// reads (kept with the display claim on every verified identity).
    pub fn new(config: &ApproversConfig, claims: &[String]) -> Result<ApproverAuth> {
        let mut providers = config.providers.clone();
        for p in &mut providers {
            let wanted = claims.iter().chain(config.display_claim.iter());
            for c in wanted {
                if !p.record_claims.contains(c) {
                    p.record_claims.push(c.clone());
                }
            }
        }
        let jwt = JwtConfig {
            required: true,
            cache_entries: config.cache_entries,
            negative_cache_entries: config.cache_entries,
            providers,
        };
        let auth = Authenticator::with_key_source(&jwt, KeySource::Direct).map_err(|e| {
            let field = e.field.strip_prefix("jwt.").unwrap_or(&e.field);
            anyhow!("field `approvers.{field}`: {}", e.message)
        })?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(ApproverAuth {
            auth: Arc::new(Mutex::new(auth)),
            fetching: tokio::sync::Mutex::new(()),
            display_claim: config.display_claim.clone(),
            agent,
        })
    }

    fn decide(&self, headers: &HeaderMap, allow_fetch: bool) -> Decision {
        let Ok(mut auth) = self.auth.lock() else {
            return Decision::Rejected(Rejection::new(
                Reason::JwksUnavailable,
                "the authenticator is unavailable",
            ));
        };
        let token = auth.extract(|name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        auth.decide(token.as_ref(), now_ms(), allow_fetch)
    }

    /// The caller's verified identity, or why not (a 401).
    pub async fn verify(self: &Arc<Self>, headers: HeaderMap) -> Result<Caller, Rejection> {
        let mut allow_fetch = true;
        loop {
            // A signature check costs up to a millisecond: off the async
            // workers.
            let this = self.clone();
            let h = headers.clone();
            let decision = tokio::task::spawn_blocking(move || this.decide(&h, allow_fetch))
                .await
                .unwrap_or_else(|_| {
                    Decision::Rejected(Rejection::new(Reason::Malformed, "verification failed"))
                });
            match decision {
                Decision::Verified { identity, .. } => {
                    let display = self
                        .display_claim
                        .as_ref()
                        .and_then(|c| identity.claims.iter().find(|(k, _)| k == c))
                        .map(|(_, v)| v.clone())
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| identity.subject.clone());
                    return Ok(Caller {
                        approver: Approver {
                            issuer: identity.issuer.clone(),
                            subject: identity.subject.clone(),
                            display,
                        },
                        claims: identity.claims.clone(),
                    });
                }
                Decision::Rejected(r) => return Err(r),
                Decision::Anonymous => {
                    return Err(Rejection::new(Reason::Missing, "no bearer token"))
                }
                Decision::NeedKeys { .. } if allow_fetch => {
                    self.fetch_due().await;
                    allow_fetch = false;
                }
                Decision::NeedKeys { .. } => {
                    return Err(Rejection::new(
                        Reason::JwksUnavailable,
                        "signing keys are not available",
                    ))
                }
            }
        }
    }

    /// Runs the JWKS fetches that are due (one round at a time).
    pub async fn fetch_due(self: &Arc<Self>) {
        let _round = self.fetching.lock().await;
        let due = match self.auth.lock() {
            Ok(mut a) => a.due_fetches(now_ms()),
            Err(_) => return,
        };
        for f in due {
            let this = self.clone();
            let provider = f.provider;
            let result = tokio::task::spawn_blocking(move || this.fetch(&f))
                .await
                .unwrap_or_else(|e| Err(format!("fetch failed: {e}")));
            let Ok(mut a) = self.auth.lock() else { return };
            let name = a.provider_name(provider).to_string();
            match a.fetched(provider, result.as_deref().map_err(Clone::clone), now_ms()) {
                Ok(report) => {
                    if report.changed {
                        eprintln!(
                            "tracegate: approvers: JWKS of provider {name}: {} keys",
                            report.keys
                        );
                    }
                    for s in &report.skipped {
                        eprintln!("tracegate: approvers: JWKS of provider {name}: skipped {s}");
                    }
                }
                Err(e) => {
                    eprintln!("tracegate: approvers: JWKS of provider {name}: fetch failed: {e}")
                }
            }
        }
    }

    fn fetch(&self, f: &JwksFetch) -> Result<Vec<u8>, String> {
        let mut response = self
            .agent
            .get(&f.uri)
            .config()
            .timeout_global(Some(Duration::from_millis(f.timeout_ms)))
            .build()
            .header("accept", "application/json")
            .call()
            .map_err(|e| format!("{}: {e}", f.uri))?;
        let status = response.status();
        if status != 200 {
            return Err(format!("{} answered HTTP {status}", f.uri));
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES as u64 + 1)
            .read_to_vec()
            .map_err(|e| format!("{}: {e}", f.uri))
    }
}

/// Fetches keys when they are due (at start, then every `cache_duration_s`
/// or after a failure, every `retry_interval_ms`).
pub async fn refresh(auth: Arc<ApproverAuth>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        auth.fetch_due().await;
    }
}
