//! Caller identity on the request path: applies the authenticator's decision
//! to a request (headers, 401 answer, stats, the record's identity) and keeps
//! the requests that wait for a JWKS fetch.
//!
//! A request whose provider has no keys yet, or lacks its `kid`, is paused
//! and parked here. Only the root context fetches JWKS (one fetch per
//! provider, however many requests wait); when the answer arrives it decides
//! each parked request and resumes it or answers 401, acting on that request
//! through `set_effective_context`.

use proxy_wasm::types::LogLevel;
use std::time::Duration;

use tracegate_policy::jwt::{identity_record, Decision, Extracted, Reason, Rejection};
use tracegate_policy::record::UpstreamSaw;

use crate::gates::{self, RequestSlot, Via};
use crate::host::{self, Counter};
use crate::root::Shared;

/// Requests one worker parks while keys are fetched; more are refused (401,
/// jwks_unavailable) rather than held without bound.
const MAX_WAITERS: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct JwtMetrics {
    verified: Counter,
    cache_hits: Counter,
    negative_cache_hits: Counter,
    anonymous: Counter,
    rejected: [Counter; Reason::ALL.len()],
    jwks_fetched: Counter,
    jwks_fetch_failed: Counter,
}

impl JwtMetrics {
    pub fn define() -> Self {
        Self {
            verified: Counter::define("tracegate.jwt.verified"),
            cache_hits: Counter::define("tracegate.jwt.cache_hits"),
            negative_cache_hits: Counter::define("tracegate.jwt.negative_cache_hits"),
            anonymous: Counter::define("tracegate.jwt.anonymous"),
            rejected: Reason::ALL
                .map(|r| Counter::define(&format!("tracegate.jwt.rejected.{}", r.as_str()))),
            jwks_fetched: Counter::define("tracegate.jwks.fetched"),
            jwks_fetch_failed: Counter::define("tracegate.jwks.fetch_failed"),
        }
    }

    fn count(&self, decision: &Decision) {
        match decision {
            Decision::Anonymous => self.anonymous.add(1),
            Decision::Verified { cached, .. } => {
                self.verified.add(1);
                if *cached {
                    self.cache_hits.add(1);
                }
            }
            Decision::Rejected(r) => {
                if let Some(i) = Reason::ALL.iter().position(|x| *x == r.reason) {
                    self.rejected[i].add(1);
                }
                if r.cached {
                    self.negative_cache_hits.add(1);
                }
            }
            Decision::NeedKeys { .. } => {}
        }
    }
}

/// A paused request waiting for a provider's keys.
pub struct Waiter {
    context_id: u32,
    provider: usize,
    token: Extracted,
    slot: RequestSlot,
}

/// What the request should do next.
pub enum Next {
    Continue,
    /// Answered locally (401) or parked: stop here.
    Stop,
}

/// Reads the token from the current request and acts on the decision.
pub fn authenticate(shared: &Shared, context_id: u32, slot: &RequestSlot) -> Next {
    let Some(auth) = &shared.auth else {
        return Next::Continue;
    };
    let token = auth.borrow().extract(host::request_header);
    let decision = auth.borrow_mut().decide(token.as_ref(), now_ms(), true);
    if let Decision::NeedKeys { provider } = decision {
        let mut waiters = shared.waiters.borrow_mut();
        if waiters.len() < MAX_WAITERS {
            if let Some(token) = token {
                waiters.push(Waiter {
                    context_id,
                    provider,
                    token,
                    slot: slot.clone(),
                });
                slot.borrow_mut().parked = true;
                return Next::Stop;
            }
        }
        drop(waiters);
        let overflow = Decision::Rejected(Rejection::new(
            Reason::JwksUnavailable,
            "too many requests are waiting for signing keys",
        ));
        return apply(shared, &overflow, None, slot);
    }
    apply(shared, &decision, token.as_ref(), slot)
}

/// Applies a final decision to the current (effective) request.
fn apply(
    shared: &Shared,
    decision: &Decision,
    token: Option<&Extracted>,
    slot: &RequestSlot,
) -> Next {
    let Some(auth) = &shared.auth else {
        return Next::Continue;
    };
    shared.jwt_metrics.count(decision);
    slot.borrow_mut().identity = identity_record(decision);
    let rejection = match decision {
        Decision::Rejected(r) => r.clone(),
        // Never forwarded without a decision (fail closed). `decide` with
        // `allow_fetch = false` does not return this.
        Decision::NeedKeys { .. } => {
            Rejection::new(Reason::JwksUnavailable, "signing keys are not available")
        }
        Decision::Anonymous | Decision::Verified { .. } => {
            let changes = auth.borrow().header_changes(decision, token);
            for name in &changes.remove {
                host::set_request_header(name, None);
            }
            for (name, value) in &changes.set {
                host::set_request_header(name, Some(value));
            }
            return Next::Continue;
        }
    };
    host::log(
        LogLevel::Debug,
        &format!("401 {}: {}", rejection.reason.as_str(), rejection.detail),
    );
    host::send_response(
        401,
        &[
            ("www-authenticate", &rejection.www_authenticate()),
            ("content-type", "application/json"),
        ],
        rejection.body().as_bytes(),
    );
    Next::Stop
}

/// Forgets a request that ended while parked.
pub fn forget(shared: &Shared, context_id: u32) {
    shared
        .waiters
        .borrow_mut()
        .retain(|w| w.context_id != context_id);
}

/// Starts the JWKS fetches that are due; returns (call token, provider).
pub fn start_fetches(shared: &Shared, root_context_id: u32) -> Vec<(u32, usize)> {
    let Some(auth) = &shared.auth else {
        return Vec::new();
    };
    let due = auth.borrow_mut().due_fetches(now_ms());
    let mut started = Vec::new();
    for f in due {
        let headers = [
            (":method", "GET"),
            (":path", f.path.as_str()),
            (":authority", f.authority.as_str()),
            ("accept", "application/json"),
        ];
        match host::http_call(&f.cluster, &headers, Duration::from_millis(f.timeout_ms)) {
            Ok(token) => started.push((token, f.provider)),
            Err(status) => {
                let why = format!("cannot call cluster {:?}: {status}", f.cluster);
                jwks_answer(shared, root_context_id, f.provider, Err(why));
            }
        }
    }
    started
}

/// Takes a fetch's answer (body of a 200, or why not), then decides for every
/// request that waited on this provider.
pub fn jwks_answer(
    shared: &Shared,
    root_context_id: u32,
    provider: usize,
    result: Result<Vec<u8>, String>,
) {
    let Some(auth) = &shared.auth else {
        return;
    };
    let outcome =
        auth.borrow_mut()
            .fetched(provider, result.as_deref().map_err(Clone::clone), now_ms());
    let name = auth.borrow().provider_name(provider).to_string();
    match outcome {
        Ok(report) => {
            shared.jwt_metrics.jwks_fetched.add(1);
            if report.changed {
                host::log(
                    LogLevel::Info,
                    &format!("JWKS of provider {name}: {} keys", report.keys),
                );
            }
            for skipped in &report.skipped {
                host::log(
                    LogLevel::Warn,
                    &format!("JWKS of provider {name}: skipped {skipped}"),
                );
            }
        }
        Err(e) => {
            shared.jwt_metrics.jwks_fetch_failed.add(1);
            host::log(
                LogLevel::Warn,
                &format!("JWKS of provider {name}: fetch failed: {e}"),
            );
        }
    }

    let parked: Vec<Waiter> = {
        let mut waiters = shared.waiters.borrow_mut();
        let (mine, others) = waiters.drain(..).partition(|w| w.provider == provider);
        *waiters = others;
        mine
    };
    for w in parked {
        if !host::set_effective_context(w.context_id) {
            continue; // the request is gone
        }
        let decision = auth.borrow_mut().decide(Some(&w.token), now_ms(), false);
        w.slot.borrow_mut().parked = false;
        let next = apply(shared, &decision, Some(&w.token), &w.slot);
        if let Next::Continue = next {
            let (ready, body_pending) = {
                let s = w.slot.borrow();
                (s.ready, s.body_pending)
            };
            if ready {
                // The request ended while parked: its gates run now, with
                // the identity just decided.
                gates::resume(shared, &w.slot, Via::Root(w.context_id));
            } else if !body_pending {
                // Headers go on; the body's end runs the gates.
                gates::let_go(&w.slot, UpstreamSaw::Headers);
                host::resume_request();
            }
        }
    }
    host::set_effective_context(root_context_id);
}

fn now_ms() -> u64 {
    u64::try_from(host::now_nanos() / 1_000_000).unwrap_or(0)
}
