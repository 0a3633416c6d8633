//! A bounded map for codes and tokens: keyed by client-presented random
//! strings, so it holds at most `cap` entries. Inserting into a full map first
//! drops the entries whose retention time has passed, then the oldest ones.

use std::collections::{BTreeMap, HashMap};

/// At most `cap` entries; each kept until its `retain_until` (Unix seconds)
/// at the latest, and evicted oldest-first when the map is full.
#[derive(Debug)]
pub struct Bounded<V> {
    cap: usize,
    next_seq: u64,
    entries: HashMap<String, Slot<V>>,
    /// Insertion order: sequence number → key.
    order: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct Slot<V> {
    seq: u64,
    retain_until: u64,
    value: V,
}

impl<V> Bounded<V> {
    /// An empty map holding at most `cap` (≥ 1) entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            next_seq: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Number of entries (expired ones not yet dropped included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Inserts (or replaces) `key`, making room first if the map is full.
    pub fn insert(&mut self, key: String, value: V, retain_until: u64, now: u64) {
        self.remove(&key);
        if self.entries.len() >= self.cap {
            self.purge_expired(now);
        }
        while self.entries.len() >= self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.order.insert(seq, key.clone());
        self.entries.insert(
            key,
            Slot {
                seq,
                retain_until,
                value,
            },
        );
    }

    /// The live entry under `key` (`None` once its retention time passed).
    pub fn get_mut(&mut self, key: &str, now: u64) -> Option<&mut V> {
        self.entries
            .get_mut(key)
            .filter(|slot| slot.retain_until > now)
            .map(|slot| &mut slot.value)
    }

    /// Removes `key`, live or not.
    pub fn remove(&mut self, key: &str) {
        self.remove_slot(key);
    }

    /// Keeps only the entries for which `keep` answers true.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let order = &mut self.order;
        self.entries.retain(|_, slot| {
            let kept = keep(&slot.value);
            if !kept {
                order.remove(&slot.seq);
            }
            kept
        });
    }

    /// Drops every entry whose retention time has passed.
    pub fn purge_expired(&mut self, now: u64) {
        let order = &mut self.order;
        self.entries.retain(|_, slot| {
            let live = slot.retain_until > now;
            if !live {
                order.remove(&slot.seq);
            }
            live
        });
    }

    fn remove_slot(&mut self, key: &str) -> Option<Slot<V>> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.seq);
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_drops_expired_entries_before_the_oldest_live_one() {
        let mut map = Bounded::new(3);
        map.insert("old-live".into(), 1, 100, 0);
        map.insert("expired".into(), 2, 10, 0);
        map.insert("young".into(), 3, 100, 0);
        map.insert("new".into(), 4, 100, 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get_mut("old-live", 20).copied(), Some(1));
        assert_eq!(map.get_mut("expired", 20), None);
        // Full again, nothing expired: the oldest goes.
        map.insert("newer".into(), 5, 100, 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get_mut("old-live", 20), None);
        assert_eq!(map.get_mut("young", 20).copied(), Some(3));
        assert_eq!(map.order.len(), map.entries.len());
    }

    #[test]
    fn entries_past_their_retention_are_gone() {
        let mut map = Bounded::new(10);
        map.insert("a".into(), 1, 50, 0);
        assert_eq!(map.get_mut("a", 49).copied(), Some(1));
        assert_eq!(map.get_mut("a", 50), None);
        map.remove("a");
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn never_grows_past_its_cap() {
        let mut map = Bounded::new(100);
        for i in 0..1000u64 {
            map.insert(format!("k{i}"), i, 1_000_000, i);
        }
        assert_eq!(map.len(), 100);
        assert_eq!(map.order.len(), 100);
        assert_eq!(map.get_mut("k999", 0).copied(), Some(999));
        assert_eq!(map.get_mut("k899", 0), None);
        map.retain(|v| v % 2 == 0);
        assert_eq!(map.len(), 50);
        assert_eq!(map.order.len(), 50);
    }
}
