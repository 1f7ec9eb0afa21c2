//! Bounded caches keyed by SHA-256 of the token: verified tokens, and
//! tokens refused after a signature check.
//!
//! A token verified once costs a hash and a lookup until it expires. A token
//! refused after its signature was checked (a forged signature, an expired or
//! misdirected token) costs the same when it comes again, so a flood of one
//! forged token costs hashes, not signature checks. The key is a hash, so a
//! cache never holds a bearer token. Eviction is first-in first-out: simple,
//! bounded, and an attacker cannot pin entries.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Identity, Rejection};

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    /// Unix seconds after which the entry is no longer a valid answer.
    valid_until: u64,
}

/// A bounded map from token hashes to answers, oldest evicted first.
#[derive(Debug)]
pub struct Bounded<V> {
    capacity: usize,
    entries: HashMap<TokenHash, Entry<V>>,
    /// Insertion order; always holds exactly the keys of `entries`.
    order: VecDeque<TokenHash>,
}

impl<V: Clone> Bounded<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer for a token seen before, if still valid at `now`.
    pub fn get(&self, key: &TokenHash, now: u64) -> Option<V> {
        let entry = self.entries.get(key)?;
        (now <= entry.valid_until).then(|| entry.value.clone())
    }

    pub fn insert(&mut self, key: TokenHash, value: V, valid_until: u64) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry { value, valid_until };
        if let Some(slot) = self.entries.get_mut(&key) {
            *slot = entry;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(key, entry);
        self.order.push_back(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

/// Verified tokens: the identity, valid until `exp` plus the clock skew (a
/// token without `exp`: for `MAX_CACHE_SECONDS`).
pub type TokenCache = Bounded<Arc<Identity>>;

/// Tokens refused after a signature check, with the refusal. Only refusals
/// that cannot turn into an acceptance while the keys stay the same are
/// kept (see `Authenticator::decide`); the cache is emptied when a
/// provider's keys change.
pub type RejectionCache = Bounded<Rejection>;

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn bounded_first_in_first_out_and_expiring() {
        let mut c: Bounded<u32> = Bounded::new(2);
        let (a, b, d) = (token_hash("a"), token_hash("b"), token_hash("d"));
        c.insert(a, 1, 10);
        c.insert(b, 2, 10);
        assert_eq!(c.get(&a, 10), Some(1));
        assert_eq!(c.get(&a, 11), None, "expired");
        c.insert(d, 3, 10);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&a, 0), None, "the oldest went first");
        assert_eq!(c.get(&d, 0), Some(3));
        c.insert(b, 4, 10);
        assert_eq!((c.get(&b, 0), c.len()), (Some(4), 2), "replaced in place");
        let mut off: Bounded<u32> = Bounded::new(0);
        off.insert(a, 1, 10);
        assert!(off.is_empty());
    }
}
