//! proxy-wasm shared data, natively: ONE process-wide map (every worker
//! thread, every filter), with the wasm host's compare-and-swap semantics:
//! each key has a version (`cas`), a write that names a version succeeds
//! only if it is still the current one, a write with version 0 always does.
//!
//! Bounded: at most [`MAX_KEYS`] keys and [`MAX_VALUE_BYTES`] per value (a
//! write past either bound is refused like a lost CAS race, which every
//! caller already handles: `filter_core::shared` retries a few times and
//! then reports a store error). The keys the filters write come from their
//! configuration (routes, key ids), not from clients; the bound is the
//! backstop (docs/native.md).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Keys the map holds at most.
pub const MAX_KEYS: usize = 65_536;
/// Bytes one value may have at most.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The version named is not the current one (or a bound was hit).
    CasMismatch,
}

/// The process-wide shared data.
#[derive(Debug, Default)]
pub struct Store {
    map: Mutex<BTreeMap<String, (Vec<u8>, u32)>>,
}

impl Store {
    pub const fn new() -> Self {
        Store {
            map: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Vec<u8>, u32)>> {
        // A poisoned lock only means a panic elsewhere held it; the map
        // itself is always consistent (every update is one insert).
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value of `key` and its version.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().get(key).cloned()
    }

    /// Writes `value` if `cas` is 0 or the current version of `key`.
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Refused> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(Refused::CasMismatch);
        }
        let mut map = self.lock();
        let next = match map.get(key) {
            Some((_, current)) if cas != 0 && cas != *current => return Err(Refused::CasMismatch),
            Some((_, current)) => current.wrapping_add(1).max(1),
            None if map.len() >= MAX_KEYS => return Err(Refused::CasMismatch),
            None => 1,
        };
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_with_the_current_version_wins_and_a_stale_one_loses() {
        let s = Store::new();
        assert_eq!(s.get("k"), None);
        s.set("k", b"a", 0).unwrap();
        let (v, cas) = s.get("k").unwrap();
        assert_eq!(v, b"a");
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.set("k", b"c", cas), Err(Refused::CasMismatch));
        assert_eq!(s.get("k").unwrap().0, b"b");
        // Version 0: unconditional.
        s.set("k", b"d", 0).unwrap();
        assert_eq!(s.get("k").unwrap().0, b"d");
    }

    #[test]
    fn the_map_is_bounded_in_keys_and_value_size() {
        let s = Store::new();
        assert_eq!(
            s.set("big", &vec![0; MAX_VALUE_BYTES + 1], 0),
            Err(Refused::CasMismatch)
        );
        for i in 0..MAX_KEYS {
            s.set(&i.to_string(), b"", 0).unwrap();
        }
        assert_eq!(s.set("one-more", b"", 0), Err(Refused::CasMismatch));
        // Existing keys stay writable at the bound.
        s.set("0", b"x", 0).unwrap();
    }

    #[test]
    fn threads_share_one_map() {
        static S: Store = Store::new();
        let t = std::thread::spawn(|| S.set("from-thread", b"1", 0));
        t.join().unwrap().unwrap();
        assert_eq!(S.get("from-thread").unwrap().0, b"1");
    }
}
