//! The nonce store: one set of fixed shared-data keys, created at configure
//! time, that every Envoy worker (every VM with vm_id `replay_guard`) sees.
//!
//! **Layout.** A nonce is recorded under the time bucket of the request's
//! *signed* `created` (`epoch = created / bucket`), so a replay — which
//! carries the same `created` — always lands on the same key, and one CAS
//! update both checks and records it: no cross-bucket race. Keys are
//! `replay_guard.nonce.<slot>.<shard>` with `slot = epoch mod slots` and
//! `shard` from the entry's hash. `slots = ceil(window / bucket) + 2`, where
//! `window = max_age + max_skew`: two epochs sharing a slot are always more
//! than a window apart, so a slot's old contents can only belong to
//! requests that the `created` check already refuses.
//!
//! **Value.** `epoch` (u64 LE) followed by 16-byte entries, each the first
//! 16 bytes of SHA-256(keyid ‖ 0x00 ‖ nonce). An update that finds an older
//! epoch starts the slot afresh: expired nonces go without a scan.
//!
//! **Bound.** Each key holds at most `per_key = max_entries / (slots ×
//! shards)` entries; a full key refuses new nonces (fail closed). Memory at
//! the bound ≈ `slots × shards × (8 + 16 × per_key)` bytes plus the host's
//! per-key overhead.

use sha2::{Digest, Sha256};

use filter_core::shared::{update, SharedData, SharedError, Update};

/// Bytes per recorded nonce.
pub const ENTRY_BYTES: usize = 16;
const HEADER_BYTES: usize = 8;
/// CAS attempts before an update gives up (fail closed).
pub const CAS_ATTEMPTS: u32 = 16;

/// The store's fixed shape, computed from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLayout {
    /// Bucket width in seconds.
    pub bucket: u64,
    pub slots: u64,
    pub shards: u32,
    pub per_key: usize,
}

impl StoreLayout {
    /// `window` = max_age + max_skew, all in seconds.
    pub fn new(window: u64, bucket: u64, shards: u32, max_entries: u32) -> Result<Self, String> {
        let slots = window.div_ceil(bucket.max(1)) + 2;
        let keys = slots.saturating_mul(u64::from(shards));
        if keys > 65_536 {
            return Err(format!(
                "the store would need {keys} keys (slots {slots} × shards {shards}); use a wider bucket or fewer shards"
            ));
        }
        let per_key = u64::from(max_entries) / keys.max(1);
        if per_key == 0 {
            return Err(format!(
                "must be at least {keys} (one entry per key: {slots} slots × {shards} shards)"
            ));
        }
        Ok(StoreLayout {
            bucket: bucket.max(1),
            slots,
            shards,
            per_key: usize::try_from(per_key).unwrap_or(usize::MAX),
        })
    }

    /// Total nonces held at the bound.
    pub fn capacity(&self) -> u64 {
        self.per_key as u64 * self.slots * u64::from(self.shards)
    }

    /// Shared memory at the bound, in bytes (values only).
    pub fn memory_at_bound(&self) -> u64 {
        self.slots * u64::from(self.shards) * (HEADER_BYTES + ENTRY_BYTES * self.per_key) as u64
    }

    fn key(slot: u64, shard: u32) -> String {
        filter_core::shared::key("replay-guard", "nonce", &[&slot, &shard])
    }

    /// Creates every key that does not exist yet (an empty slot). Keys that
    /// exist (another worker made them, or an earlier VM) are left alone.
    pub fn create_keys<S: SharedData + ?Sized>(&self, store: &S) -> Result<(), SharedError> {
        let empty = 0u64.to_le_bytes();
        for slot in 0..self.slots {
            for shard in 0..self.shards {
                let key = Self::key(slot, shard);
                if store.get(&key)?.0.is_none() {
                    store.set(&key, &empty, None)?;
                }
            }
        }
        Ok(())
    }
}

/// What recording a nonce found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("the nonce was already used")]
    Replay,
    #[error("the nonce store is full")]
    Full,
    #[error("the nonce store is unavailable: {0}")]
    Unavailable(String),
}

/// The entry recorded for a (key id, nonce) pair.
pub fn entry(keyid: &str, nonce: &str) -> [u8; ENTRY_BYTES] {
    let mut h = Sha256::new();
    h.update(keyid.as_bytes());
    h.update([0u8]);
    h.update(nonce.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; ENTRY_BYTES];
    out.copy_from_slice(d.get(..ENTRY_BYTES).unwrap_or(&[0; ENTRY_BYTES]));
    out
}

/// Records `(keyid, nonce)` for a request signed at `created` (Unix
/// seconds, already inside the accepted window). `Err(Replay)` when it was
/// recorded before.
pub fn record<S: SharedData + ?Sized>(
    layout: &StoreLayout,
    store: &S,
    keyid: &str,
    nonce: &str,
    created: u64,
) -> Result<(), NonceError> {
    let e = entry(keyid, nonce);
    let epoch = created / layout.bucket;
    let slot = epoch % layout.slots;
    let shard = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) % layout.shards.max(1);
    let key = StoreLayout::key(slot, shard);
    let outcome = update(store, &key, CAS_ATTEMPTS, |value| {
        let Some(value) = value else {
            return Update::Keep(Err(NonceError::Unavailable("key missing".into())));
        };
        let (head, body) = value.split_at(HEADER_BYTES.min(value.len()));
        let stored = <[u8; 8]>::try_from(head).map_or(0, u64::from_le_bytes);
        if stored > epoch {
            // The slot already serves a later epoch: this `created` is older
            // than the window (clock moved back). Refuse rather than guess.
            return Update::Keep(Err(NonceError::Unavailable("stale bucket".into())));
        }
        let mut out: Vec<u8>;
        if stored < epoch {
            out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES);
            out.extend_from_slice(&epoch.to_le_bytes());
        } else {
            if body.chunks_exact(ENTRY_BYTES).any(|c| c == e) {
                return Update::Keep(Err(NonceError::Replay));
            }
            if body.len() / ENTRY_BYTES >= layout.per_key {
                return Update::Keep(Err(NonceError::Full));
            }
            out = Vec::with_capacity(value.len() + ENTRY_BYTES);
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&e);
        Update::Write(out, Ok(()))
    });
    match outcome {
        Ok(r) => r,
        Err(e) => Err(NonceError::Unavailable(e.to_string())),
    }
}

/// Whether `(keyid, nonce)` signed at `created` is already recorded here
/// (a read, no write): the first-level check in front of the shared store.
pub fn contains<S: SharedData + ?Sized>(
    layout: &StoreLayout,
    store: &S,
    keyid: &str,
    nonce: &str,
    created: u64,
) -> bool {
    let e = entry(keyid, nonce);
    let epoch = created / layout.bucket;
    let slot = epoch % layout.slots;
    let shard = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) % layout.shards.max(1);
    let Ok((Some(value), _)) = store.get(&StoreLayout::key(slot, shard)) else {
        return false;
    };
    let (head, body) = value.split_at(HEADER_BYTES.min(value.len()));
    <[u8; 8]>::try_from(head).map_or(0, u64::from_le_bytes) == epoch
        && body.chunks_exact(ENTRY_BYTES).any(|c| c == e)
}

/// The key a nonce is claimed under in the shared store: SHA-256 of the
/// key id, a NUL and the nonce.
pub fn claim_key(keyid: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(keyid.as_bytes());
    h.update([0u8]);
    h.update(nonce.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::shared::MemorySharedData;

    fn layout() -> StoreLayout {
        StoreLayout::new(330, 30, 4, 13 * 4 * 3).unwrap()
    }

    #[test]
    fn layout_covers_the_window_plus_two_buckets() {
        let l = layout();
        assert_eq!(l.slots, 13);
        assert_eq!(l.per_key, 3);
        assert_eq!(l.capacity(), 156);
        // the documented defaults: 5m + 30s window, 30s buckets, 64 shards, 2^20 entries
        let d = StoreLayout::new(330, 30, 64, 1 << 20).unwrap();
        assert_eq!((d.slots, d.per_key), (13, 1260));
        assert_eq!(d.memory_at_bound(), 13 * 64 * (8 + 16 * 1260));
        assert!(StoreLayout::new(330, 30, 64, 100).is_err());
    }

    #[test]
    fn a_nonce_is_accepted_once() {
        let (l, s) = (layout(), MemorySharedData::new());
        l.create_keys(&s).unwrap();
        assert_eq!(record(&l, &s, "d:u:1", "nonce-1", 1000), Ok(()));
        assert_eq!(
            record(&l, &s, "d:u:1", "nonce-1", 1000),
            Err(NonceError::Replay)
        );
        // same nonce under another key id is another entry
        assert_eq!(record(&l, &s, "d:u:2", "nonce-1", 1000), Ok(()));
    }

    #[test]
    fn keys_missing_means_fail_closed() {
        let (l, s) = (layout(), MemorySharedData::new());
        assert!(matches!(
            record(&l, &s, "k", "n", 1000),
            Err(NonceError::Unavailable(_))
        ));
    }

    #[test]
    fn creating_keys_again_keeps_recorded_nonces() {
        let (l, s) = (layout(), MemorySharedData::new());
        l.create_keys(&s).unwrap();
        record(&l, &s, "k", "n", 1000).unwrap();
        l.create_keys(&s).unwrap();
        assert_eq!(record(&l, &s, "k", "n", 1000), Err(NonceError::Replay));
    }

    #[test]
    fn a_full_key_refuses_new_nonces_and_a_new_epoch_starts_afresh() {
        let l = StoreLayout::new(330, 30, 1, 13).unwrap(); // one entry per key
        let s = MemorySharedData::new();
        l.create_keys(&s).unwrap();
        record(&l, &s, "k", "a", 1000).unwrap();
        assert_eq!(record(&l, &s, "k", "b", 1001), Err(NonceError::Full));
        // 13 buckets later the same slot serves a new epoch: old entries are gone
        let later = 1000 + 13 * 30;
        assert_eq!(record(&l, &s, "k", "b", later), Ok(()));
        // and the old epoch can no longer write there
        assert!(matches!(
            record(&l, &s, "k", "c", 1000),
            Err(NonceError::Unavailable(_))
        ));
    }

    #[test]
    fn replay_is_caught_whatever_the_order_of_arrival() {
        let (l, s) = (layout(), MemorySharedData::new());
        l.create_keys(&s).unwrap();
        // requests created in different buckets interleave
        for (i, created) in [1000u64, 1031, 1062, 1001].iter().enumerate() {
            record(&l, &s, "k", &format!("n{i}"), *created).unwrap();
        }
        for (i, created) in [1000u64, 1031, 1062, 1001].iter().enumerate() {
            assert_eq!(
                record(&l, &s, "k", &format!("n{i}"), *created),
                Err(NonceError::Replay)
            );
        }
    }
}
