//! The verified-token cache: one per worker (VM), keyed by the SHA-256 of
//! the token, so a client's repeated token costs a hash and a map lookup,
//! not a signature verification.
//!
//! Bound and eviction: at most `max_entries` entries (config
//! `cache.max_entries`, default 1024). An entry is valid until its token's
//! `exp` (+ skew) and only for the key-set generation it was verified with
//! (a JWKS refresh that drops a key invalidates it). When the cache is full,
//! expired entries are dropped first, then the oldest insertion (FIFO).
//! Route policy (scopes, one-time `jti`) is applied on every request,
//! cached or not.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sha2::{Digest, Sha256};

/// What the cache remembers of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Index of the provider that verified it.
    pub provider: usize,
    /// Key-set generation of that provider at verification time.
    pub generation: u64,
    pub sub: Option<String>,
    pub exp: u64,
    /// `exp` + skew: the entry is usable while now < this.
    pub valid_until: u64,
    pub jti: Option<String>,
    pub scopes: Vec<String>,
    /// (header, value) pairs to forward.
    pub forward: Vec<(String, String)>,
}

pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A bounded map from token hash to [`Verified`].
#[derive(Debug, Default)]
pub struct TokenCache {
    max: usize,
    map: HashMap<TokenHash, Rc<Verified>>,
    order: VecDeque<TokenHash>,
}

impl TokenCache {
    pub fn new(max: usize) -> Self {
        TokenCache {
            max,
            map: HashMap::with_capacity(max.min(1024)),
            order: VecDeque::with_capacity(max.min(1024)),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A live entry for this token, if any; a stale one is dropped.
    pub fn get(
        &mut self,
        h: &TokenHash,
        now: u64,
        generation_of: impl Fn(usize) -> u64,
    ) -> Option<Rc<Verified>> {
        let v = self.map.get(h)?;
        if now < v.valid_until && generation_of(v.provider) == v.generation {
            return Some(v.clone());
        }
        // Stale: gone from both, so `order` holds exactly the map's keys (a
        // token presented again after it expired, over and over, must not
        // grow it, nor leave an old copy that would evict its next entry).
        self.map.remove(h);
        if let Some(i) = self.order.iter().position(|o| o == h) {
            self.order.remove(i);
        }
        None
    }

    pub fn insert(&mut self, h: TokenHash, v: Verified, now: u64) {
        if self.max == 0 {
            return;
        }
        if let Some(e) = self.map.get_mut(&h) {
            *e = Rc::new(v);
            return;
        }
        if self.map.len() >= self.max {
            self.evict(now);
        }
        self.map.insert(h, Rc::new(v));
        self.order.push_back(h);
    }

    fn evict(&mut self, now: u64) {
        // Drop order entries whose map entry is gone or expired, then, if
        // still full, the oldest live one.
        let before = self.map.len();
        self.map.retain(|_, v| now < v.valid_until);
        if self.map.len() < before {
            let map = &self.map;
            self.order.retain(|h| map.contains_key(h));
        }
        while self.map.len() >= self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => {
                    self.map.clear();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(valid_until: u64) -> Verified {
        Verified {
            provider: 0,
            generation: 1,
            sub: Some("u".into()),
            exp: valid_until,
            valid_until,
            jti: None,
            scopes: vec![],
            forward: vec![],
        }
    }

    #[test]
    fn entries_expire_with_their_token() {
        let mut c = TokenCache::new(4);
        c.insert(hash("a"), v(100), 0);
        assert!(c.get(&hash("a"), 99, |_| 1).is_some());
        assert!(c.get(&hash("a"), 100, |_| 1).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn a_new_key_set_generation_invalidates_entries() {
        let mut c = TokenCache::new(4);
        c.insert(hash("a"), v(100), 0);
        assert!(c.get(&hash("a"), 1, |_| 2).is_none());
    }

    #[test]
    fn full_cache_drops_expired_first_then_oldest() {
        let mut c = TokenCache::new(3);
        c.insert(hash("a"), v(1000), 0);
        c.insert(hash("b"), v(10), 0);
        c.insert(hash("c"), v(1000), 0);
        c.insert(hash("d"), v(1000), 50); // b expired → dropped
        assert_eq!(c.len(), 3);
        assert!(c.get(&hash("a"), 50, |_| 1).is_some());
        c.insert(hash("e"), v(1000), 50); // full, none expired → a (oldest) dropped
        assert_eq!(c.len(), 3);
        assert!(c.get(&hash("a"), 50, |_| 1).is_none());
        assert!(c.get(&hash("e"), 50, |_| 1).is_some());
    }

    #[test]
    fn bound_holds_under_a_flood() {
        let mut c = TokenCache::new(16);
        for i in 0..10_000 {
            c.insert(hash(&i.to_string()), v(1_000_000), i);
            assert!(c.len() <= 16);
        }
        assert!(c.order.len() <= 32);
    }

    #[test]
    fn expired_tokens_presented_again_do_not_grow_the_order_queue() {
        let mut c = TokenCache::new(16);
        for i in 0..10_000u64 {
            // verified, expires, presented again (dropped by get), verified anew
            c.insert(hash("t"), v(i + 1), i);
            assert!(c.get(&hash("t"), i + 1, |_| 1).is_none());
            assert_eq!(c.order.len(), c.len());
        }
        assert!(c.is_empty());
    }

    #[test]
    fn zero_size_disables_the_cache() {
        let mut c = TokenCache::new(0);
        c.insert(hash("a"), v(100), 0);
        assert!(c.is_empty());
    }
}
