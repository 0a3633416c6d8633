//! The one-time `jti` store, shared by every worker of the Envoy process
//! through proxy-wasm shared data (compare-and-swap, see
//! [`filter_core::shared`]).
//!
//! Layout: [`BUCKETS`] fixed keys `jwt/jti.v1/<W>/<slot>`, created at
//! configure time (shared data has no delete and its first insert is not
//! CAS-protected). A token goes to the bucket of its expiry: epoch =
//! ⌊(exp + skew) / W⌋, slot = epoch mod [`BUCKETS`]. A bucket's value is its
//! epoch (8 bytes LE) followed by 8-byte hashes (SHA-256 of `iss`, NUL, `jti`,
//! truncated; a false "replayed" needs a 64-bit collision).
//!
//! Forgetting: W = ⌈(max_token_lifetime + 300 s) / (BUCKETS − 1)⌉, so a slot
//! comes round again only after every token recorded in it has expired
//! (tokens with more than `max_token_lifetime` left are refused on one-time
//! routes). The first write of a newer epoch into a slot drops the old
//! epoch's entries at once.
//!
//! Bound: `max_entries` hashes in total (config `jti_store.max_entries`,
//! default 65536 → 8 KiB-entry buckets, 512 KiB of shared data), i.e.
//! `max_entries / BUCKETS` per bucket. A full bucket refuses new tokens
//! (503 with `Retry-After` until the bucket turns) rather than forget a
//! `jti` early, which would allow a replay.

use filter_core::shared::{update, SharedData, SharedError, Update};
use sha2::{Digest, Sha256};

/// Number of time buckets.
pub const BUCKETS: usize = 8;
/// Largest clock skew a provider may have (keeps W independent of providers).
const MAX_SKEW: u64 = 300;
/// CAS attempts before giving up under contention.
const ATTEMPTS: u32 = 16;

/// The store's geometry, derived from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JtiStore {
    /// Bucket width in seconds.
    pub width: u64,
    pub per_bucket: usize,
    pub max_lifetime: u64,
}

/// What recording a `jti` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First use: recorded.
    Fresh,
    /// Seen before: a replay.
    Replayed,
    /// The token lives longer than the store can remember it.
    LifetimeTooLong,
    /// The bucket is full; retry after this many seconds.
    Full { retry_after: u64 },
}

impl JtiStore {
    pub fn new(max_entries: usize, max_lifetime_secs: u64) -> Self {
        let span = max_lifetime_secs + MAX_SKEW;
        let n = (BUCKETS - 1) as u64;
        JtiStore {
            width: span.div_ceil(n).max(1),
            per_bucket: (max_entries / BUCKETS).max(1),
            max_lifetime: max_lifetime_secs,
        }
    }

    pub fn key(&self, slot: usize) -> String {
        filter_core::shared::key("jwt", "jti.v1", &[&self.width, &slot])
    }

    /// Creates the bucket keys that do not exist yet (configure time).
    pub fn ensure_keys<S: SharedData + ?Sized>(&self, store: &S) -> Result<(), SharedError> {
        for slot in 0..BUCKETS {
            let k = self.key(slot);
            if store.get(&k)?.0.is_none() {
                store.set(&k, &0u64.to_le_bytes(), None)?;
            }
        }
        Ok(())
    }

    /// Records `jti` of a verified token (expiry `exp`, provider skew `skew`).
    pub fn record<S: SharedData + ?Sized>(
        &self,
        store: &S,
        issuer: &str,
        jti: &str,
        exp: u64,
        skew: u64,
        now: u64,
    ) -> Result<Recorded, SharedError> {
        if exp.saturating_sub(now) > self.max_lifetime {
            return Ok(Recorded::LifetimeTooLong);
        }
        let until = exp.saturating_add(skew.min(MAX_SKEW));
        let epoch = until / self.width;
        let slot = (epoch % BUCKETS as u64) as usize;
        let h = entry_hash(issuer, jti);
        let per_bucket = self.per_bucket;
        let retry_after = ((epoch + 1) * self.width).saturating_sub(now).max(1);
        update(store, &self.key(slot), ATTEMPTS, |cur| {
            let cur = cur.unwrap_or(&[]);
            let (stored_epoch, entries) = split(cur);
            if stored_epoch == epoch && !cur.is_empty() {
                if entries.chunks_exact(8).any(|c| c == h) {
                    return Update::Keep(Recorded::Replayed);
                }
                if entries.len() / 8 >= per_bucket {
                    return Update::Keep(Recorded::Full { retry_after });
                }
                let mut v = cur.to_vec();
                v.extend_from_slice(&h);
                Update::Write(v, Recorded::Fresh)
            } else if stored_epoch < epoch || cur.len() < 8 {
                // Older epoch: all its tokens have expired; start afresh.
                let mut v = Vec::with_capacity(16);
                v.extend_from_slice(&epoch.to_le_bytes());
                v.extend_from_slice(&h);
                Update::Write(v, Recorded::Fresh)
            } else {
                // The slot already serves a later epoch: this token must be
                // past its lifetime by the store's clock. Refuse.
                Update::Keep(Recorded::Replayed)
            }
        })
    }
}

impl JtiStore {
    /// Whether `jti` is already recorded here (a read, no write): the
    /// first-level check in front of the shared store, which refuses a
    /// replay this replica already knows without a round trip.
    pub fn contains<S: SharedData + ?Sized>(
        &self,
        store: &S,
        issuer: &str,
        jti: &str,
        exp: u64,
        skew: u64,
    ) -> Result<bool, SharedError> {
        let until = exp.saturating_add(skew.min(MAX_SKEW));
        let epoch = until / self.width;
        let slot = (epoch % BUCKETS as u64) as usize;
        let h = entry_hash(issuer, jti);
        let (cur, _) = store.get(&self.key(slot))?;
        let cur = cur.unwrap_or_default();
        let (stored_epoch, entries) = split(&cur);
        Ok(cur.len() >= 8 && stored_epoch == epoch && entries.chunks_exact(8).any(|c| c == h))
    }
}

/// The key a `jti` is claimed under in the shared store: SHA-256 of the
/// issuer, a NUL and the `jti` (never the token or the `jti` itself).
pub fn claim_key(issuer: &str, jti: &str) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update(issuer.as_bytes());
    d.update([0u8]);
    d.update(jti.as_bytes());
    d.finalize().into()
}

fn split(v: &[u8]) -> (u64, &[u8]) {
    match v.split_first_chunk::<8>() {
        Some((e, rest)) => (u64::from_le_bytes(*e), rest),
        None => (0, &[]),
    }
}

fn entry_hash(issuer: &str, jti: &str) -> [u8; 8] {
    let mut d = Sha256::new();
    d.update(issuer.as_bytes());
    d.update([0u8]);
    d.update(jti.as_bytes());
    let full = d.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(full.get(..8).unwrap_or(&[0; 8]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::shared::MemorySharedData;

    const NOW: u64 = 1_800_000_000;

    fn store() -> (JtiStore, MemorySharedData) {
        let s = JtiStore::new(64, 3600);
        let m = MemorySharedData::new();
        s.ensure_keys(&m).unwrap();
        (s, m)
    }

    #[test]
    fn second_use_of_a_jti_is_a_replay() {
        let (s, m) = store();
        let r = |j| s.record(&m, "iss", j, NOW + 600, 60, NOW).unwrap();
        assert_eq!(r("a"), Recorded::Fresh);
        assert_eq!(r("a"), Recorded::Replayed);
        assert_eq!(r("b"), Recorded::Fresh);
    }

    #[test]
    fn same_jti_from_another_issuer_is_distinct() {
        let (s, m) = store();
        assert_eq!(
            s.record(&m, "i1", "a", NOW + 60, 60, NOW).unwrap(),
            Recorded::Fresh
        );
        assert_eq!(
            s.record(&m, "i2", "a", NOW + 60, 60, NOW).unwrap(),
            Recorded::Fresh
        );
    }

    #[test]
    fn tokens_living_longer_than_the_store_remembers_are_refused() {
        let (s, m) = store();
        assert_eq!(
            s.record(&m, "i", "a", NOW + 3601, 60, NOW).unwrap(),
            Recorded::LifetimeTooLong
        );
    }

    #[test]
    fn full_bucket_refuses_instead_of_forgetting() {
        let (s, m) = store();
        for i in 0..s.per_bucket {
            assert_eq!(
                s.record(&m, "i", &i.to_string(), NOW + 60, 0, NOW).unwrap(),
                Recorded::Fresh
            );
        }
        assert!(matches!(
            s.record(&m, "i", "x", NOW + 60, 0, NOW).unwrap(),
            Recorded::Full { .. }
        ));
        // Everything recorded is still remembered.
        assert_eq!(
            s.record(&m, "i", "0", NOW + 60, 0, NOW).unwrap(),
            Recorded::Replayed
        );
    }

    #[test]
    fn a_slot_is_reused_only_after_its_tokens_expired() {
        let (s, m) = store();
        let exp = NOW + 3600;
        assert_eq!(
            s.record(&m, "i", "a", exp, 60, NOW).unwrap(),
            Recorded::Fresh
        );
        // Time passes until the same slot comes round for new tokens.
        let later = NOW + s.width * BUCKETS as u64;
        assert!(later > exp + 60, "slot reuse before expiry");
        let new_exp = exp + s.width * BUCKETS as u64;
        assert_eq!(
            s.record(&m, "i", "b", new_exp, 60, later).unwrap(),
            Recorded::Fresh
        );
        // The slot was reset: one entry.
        let key = s.key((((new_exp + 60) / s.width) % BUCKETS as u64) as usize);
        assert_eq!(m.get(&key).unwrap().0.unwrap().len(), 16);
    }

    #[test]
    fn total_size_is_bounded() {
        let (s, m) = store();
        for i in 0..10_000u64 {
            let _ = s.record(&m, "i", &i.to_string(), NOW + (i % 3600), 60, NOW);
        }
        let total: usize = (0..BUCKETS)
            .map(|k| m.get(&s.key(k)).unwrap().0.unwrap().len())
            .sum();
        assert!(total <= BUCKETS * (8 + 8 * s.per_bucket));
    }

    #[test]
    fn contains_reads_without_recording() {
        let (s, m) = store();
        assert!(!s.contains(&m, "iss", "a", NOW + 600, 60).unwrap());
        assert!(!s.contains(&m, "iss", "a", NOW + 600, 60).unwrap());
        assert_eq!(
            s.record(&m, "iss", "a", NOW + 600, 60, NOW).unwrap(),
            Recorded::Fresh
        );
        assert!(s.contains(&m, "iss", "a", NOW + 600, 60).unwrap());
        assert!(!s.contains(&m, "other", "a", NOW + 600, 60).unwrap());
        assert_ne!(claim_key("iss", "a"), claim_key("iss", "b"));
        assert_ne!(claim_key("is", "sa"), claim_key("iss", "a"));
    }

    #[test]
    fn width_covers_lifetime_and_skew() {
        let s = JtiStore::new(65536, 3600);
        assert!(s.width * (BUCKETS as u64 - 1) >= 3600 + 300);
        assert_eq!(s.per_bucket, 8192);
    }
}
