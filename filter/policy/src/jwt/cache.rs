//! A bounded cache of verified tokens, keyed by SHA-256 of the token.
//!
//! Only successes are cached: a token verified once costs a hash and a lookup
//! until it expires. The key is a hash, so the cache never holds a bearer
//! token. Eviction is first-in first-out: simple, bounded, and an attacker
//! cannot pin entries.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::Identity;

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug)]
struct Entry {
    identity: Rc<Identity>,
    /// Unix seconds after which the entry is no longer a valid answer.
    valid_until: u64,
}

#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenHash, Entry>,
    /// Insertion order; always holds exactly the keys of `entries`.
    order: VecDeque<TokenHash>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// The identity of a token verified earlier and still valid at `now`.
    pub fn get(&self, key: &TokenHash, now: u64) -> Option<Rc<Identity>> {
        let entry = self.entries.get(key)?;
        (now <= entry.valid_until).then(|| entry.identity.clone())
    }

    pub fn insert(&mut self, key: TokenHash, identity: Rc<Identity>, valid_until: u64) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry {
            identity,
            valid_until,
        };
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
