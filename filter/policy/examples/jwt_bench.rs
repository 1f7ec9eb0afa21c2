#![allow(clippy::expect_used)] // a benchmark: a failed expectation should stop it loudly
//! Cost of deciding on a request's token: a full verification (cache miss)
//! per algorithm, a cache hit, and a forged token sent again and again with
//! and without the cache of refused tokens. Runs natively and, built for
//! wasm32-wasip1, inside a wasm VM (`make bench`).
//!
//! Tokens are the jwcrypto-minted test vectors; times are per decision.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tracegate_policy::jwt::verify::{Authenticator, Decision, Extracted};
use tracegate_policy::jwt::JwtConfig;

const VECTORS: &str = include_str!("../src/jwt/testdata/vectors.json");

fn authenticator(v: &Value, cache_entries: usize) -> Authenticator {
    let config: JwtConfig = serde_json::from_value(json!({
        "cache_entries": cache_entries,
        "negative_cache_entries": cache_entries,
        "providers": [{
            "name": "bench", "issuer": v["issuer"], "audiences": [v["audience"]],
            "jwks": v["jwks"], "hmac_secret_base64": v["hmac_secret_base64"]
        }]
    }))
    .expect("config");
    Authenticator::new(&config).expect("authenticator")
}

/// Runs `f` for about `budget` and returns the mean time per call.
fn measure(budget: Duration, mut f: impl FnMut()) -> Duration {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed() / n.max(1)
}

fn main() {
    let label = std::env::args().nth(1).unwrap_or_else(|| "native".into());
    let v: Value = serde_json::from_str(VECTORS).expect("vectors");
    let now_ms = v["now"].as_u64().expect("now") * 1000;
    let token = |name: &str| Extracted {
        source: 0,
        token: v["tokens"][name].as_str().expect("token").to_string(),
    };
    let budget = Duration::from_millis(300);
    let mut no_cache = authenticator(&v, 0);
    let mut cached = authenticator(&v, 1024);

    println!("JWT decision cost ({label}), microseconds per request");
    println!("{:<8} {:>12} {:>12}", "alg", "cache miss", "cache hit");
    for name in ["rs256", "ps256", "es256", "es384", "eddsa", "hs256"] {
        let t = token(name);
        let miss = measure(budget, || {
            let d = no_cache.decide(Some(&t), now_ms, true);
            assert!(
                matches!(d, Decision::Verified { cached: false, .. }),
                "{d:?}"
            );
        });
        let hit = measure(budget, || {
            let d = cached.decide(Some(&t), now_ms, true);
            assert!(matches!(d, Decision::Verified { .. }), "{d:?}");
        });
        println!(
            "{:<8} {:>12.1} {:>12.2}",
            name.to_uppercase(),
            miss.as_secs_f64() * 1e6,
            hit.as_secs_f64() * 1e6
        );
    }
    // A forged ES256 token (valid structure, wrong signature), the same one
    // again and again: a signature check each time without the cache of
    // refused tokens, a SHA-256 and a lookup with it.
    let bad = token("bad_signature");
    let refused = measure(budget, || {
        let d = no_cache.decide(Some(&bad), now_ms, true);
        assert!(matches!(d, Decision::Rejected(ref r) if !r.cached), "{d:?}");
    });
    let refused_cached = measure(budget, || {
        let d = cached.decide(Some(&bad), now_ms, true);
        assert!(matches!(d, Decision::Rejected(_)), "{d:?}");
    });
    println!(
        "{:<8} {:>12.1} {:>12.2}",
        "forged",
        refused.as_secs_f64() * 1e6,
        refused_cached.as_secs_f64() * 1e6
    );
    println!("(forged: the same ES256 token with a bad signature, repeated; \"cache hit\" = answered from the cache of refused tokens)");
}
