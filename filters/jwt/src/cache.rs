//! The verified-token cache: one per worker (VM), keyed by the token itself,
//! so a client's repeated token costs a map lookup (a SipHash of the token
//! and one comparison of its bytes), not a signature verification. An entry
//! is found only for the identical token: no digest stands in for it, so no
//! collision can ever hand one token's verification to another.
//!
//! Bound and eviction: at most `max_entries` entries (config
//! `cache.max_entries`, default 1024) and at most [`MAX_TOKEN_TEXT_BYTES`]
//! of token text (1 MiB; only verified tokens enter, at most
//! `max_token_bytes` each). An entry is valid until its token's `exp`
//! (+ skew) and only for the key-set generation it was verified with (a
//! JWKS refresh that drops a key invalidates it). When either bound is
//! reached, expired entries are dropped first, then the oldest insertion
//! (FIFO). Route policy (scopes, one-time `jti`) is applied on every
//! request, cached or not.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Most bytes of token text the cache holds per worker.
pub const MAX_TOKEN_TEXT_BYTES: usize = 1 << 20;

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

/// A bounded map from token to [`Verified`]. The map's hasher is std's
/// `RandomState` (SipHash-1-3 with per-VM random keys): its keys are
/// verified tokens only, and lookups cannot be steered into collisions.
/// Its `Debug` shows the counts only: the keys are bearer tokens.
#[derive(Default)]
pub struct TokenCache {
    max: usize,
    max_bytes: usize,
    bytes: usize,
    map: HashMap<Rc<str>, Rc<Verified>>,
    order: VecDeque<Rc<str>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.map.len())
            .field("bytes", &self.bytes)
            .field("max", &self.max)
            .finish()
    }
}

impl TokenCache {
    pub fn new(max: usize) -> Self {
        Self::with_byte_limit(max, MAX_TOKEN_TEXT_BYTES)
    }

    fn with_byte_limit(max: usize, max_bytes: usize) -> Self {
        TokenCache {
            max,
            max_bytes,
            bytes: 0,
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

    /// Bytes of token text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A live entry for this token, if any; a stale one is dropped.
    pub fn get(
        &mut self,
        token: &str,
        now: u64,
        generation_of: impl Fn(usize) -> u64,
    ) -> Option<Rc<Verified>> {
        let v = self.map.get(token)?;
        if now < v.valid_until && generation_of(v.provider) == v.generation {
            return Some(v.clone());
        }
        // Stale: gone from both, so `order` holds exactly the map's keys (a
        // token presented again after it expired, over and over, must not
        // grow it, nor leave an old copy that would evict its next entry).
        self.remove(token);
        None
    }

    pub fn insert(&mut self, token: &str, v: Verified, now: u64) {
        if self.max == 0 || token.len() > self.max_bytes {
            return;
        }
        if let Some(e) = self.map.get_mut(token) {
            *e = Rc::new(v);
            return;
        }
        if self.map.len() >= self.max || self.bytes + token.len() > self.max_bytes {
            self.evict(now, token.len());
        }
        let key: Rc<str> = Rc::from(token);
        self.bytes += key.len();
        self.map.insert(key.clone(), Rc::new(v));
        self.order.push_back(key);
    }

    fn remove(&mut self, token: &str) {
        if let Some((key, _)) = self.map.remove_entry(token) {
            self.bytes -= key.len();
            if let Some(i) = self.order.iter().position(|o| Rc::ptr_eq(o, &key)) {
                self.order.remove(i);
            }
        }
    }

    /// Makes room for one more entry of `incoming` bytes.
    fn evict(&mut self, now: u64, incoming: usize) {
        // Drop expired entries (and their order slots), then, if still
        // full, the oldest live ones.
        let before = self.map.len();
        self.map.retain(|_, v| now < v.valid_until);
        if self.map.len() < before {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
            self.bytes = self.order.iter().map(|k| k.len()).sum();
        }
        while self.map.len() >= self.max || self.bytes + incoming > self.max_bytes {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                    self.bytes -= old.len();
                }
                None => {
                    self.map.clear();
                    self.bytes = 0;
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
        c.insert("a", v(100), 0);
        assert!(c.get("a", 99, |_| 1).is_some());
        assert!(c.get("a", 100, |_| 1).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn a_new_key_set_generation_invalidates_entries() {
        let mut c = TokenCache::new(4);
        c.insert("a", v(100), 0);
        assert!(c.get("a", 1, |_| 2).is_none());
    }

    #[test]
    fn full_cache_drops_expired_first_then_oldest() {
        let mut c = TokenCache::new(3);
        c.insert("a", v(1000), 0);
        c.insert("b", v(10), 0);
        c.insert("c", v(1000), 0);
        c.insert("d", v(1000), 50); // b expired → dropped
        assert_eq!(c.len(), 3);
        assert!(c.get("a", 50, |_| 1).is_some());
        c.insert("e", v(1000), 50); // full, none expired → a (oldest) dropped
        assert_eq!(c.len(), 3);
        assert!(c.get("a", 50, |_| 1).is_none());
        assert!(c.get("e", 50, |_| 1).is_some());
    }

    #[test]
    fn bound_holds_under_a_flood() {
        let mut c = TokenCache::new(16);
        for i in 0..10_000 {
            c.insert(&i.to_string(), v(1_000_000), i);
            assert!(c.len() <= 16);
        }
        assert!(c.order.len() <= 32);
    }

    #[test]
    fn expired_tokens_presented_again_do_not_grow_the_order_queue() {
        let mut c = TokenCache::new(16);
        for i in 0..10_000u64 {
            // verified, expires, presented again (dropped by get), verified anew
            c.insert("t", v(i + 1), i);
            assert!(c.get("t", i + 1, |_| 1).is_none());
            assert_eq!(c.order.len(), c.len());
        }
        assert!(c.is_empty());
    }

    #[test]
    fn only_the_identical_token_hits() {
        let mut c = TokenCache::new(4);
        c.insert("aaa.bbb.ccc", v(100), 0);
        assert!(c.get("aaa.bbb.ccc", 1, |_| 1).is_some());
        assert!(c.get("aaa.bbb.ccd", 1, |_| 1).is_none());
        assert!(c.get("aaa.bbb.cc", 1, |_| 1).is_none());
        assert!(c.get("aaa.bbb.ccc ", 1, |_| 1).is_none());
    }

    #[test]
    fn token_text_is_bounded_in_bytes_too() {
        let mut c = TokenCache::with_byte_limit(1000, 100);
        for i in 0..50u64 {
            c.insert(&format!("{i:040}"), v(1_000_000), i);
            assert!(c.bytes() <= 100, "{}", c.bytes());
            assert_eq!(c.bytes(), c.order.iter().map(|k| k.len()).sum::<usize>());
        }
        assert_eq!(c.len(), 2);
        // the two newest stayed
        assert!(c.get(&format!("{:040}", 49), 50, |_| 1).is_some());
        assert!(c.get(&format!("{:040}", 48), 50, |_| 1).is_some());
        // a token larger than the whole budget is never kept
        c.insert(&"x".repeat(101), v(1_000_000), 50);
        assert_eq!(c.len(), 2);
        // dropping a stale entry gives its bytes back
        assert!(c.get(&format!("{:040}", 49), 50, |_| 2).is_none());
        assert_eq!(c.bytes(), 40);
    }

    #[test]
    fn zero_size_disables_the_cache() {
        let mut c = TokenCache::new(0);
        c.insert("a", v(100), 0);
        assert!(c.is_empty());
    }
}
