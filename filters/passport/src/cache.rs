//! The shared cache: a fixed array of slots in proxy-wasm shared data, seen
//! by every worker of the Envoy process.
//!
//! Layout: `cache.slots` keys `passport/slot/<gateway>/<index>`, created at
//! configure time and only ever updated with compare-and-swap afterwards. A
//! user (+ device) maps to one slot by FNV-1a hash (direct-mapped); each slot
//! is one small JSON document ([`Slot`]) holding at most
//! * `e`: one cached result for one key (a signed passport with its context,
//!   or an "unknown user" mark), replaced by the next result written to the
//!   slot, whatever its key: that is the eviction rule;
//! * `f`: one in-flight marker (a worker is looking this key up, until a
//!   deadline), which makes concurrent misses on every worker wait for that
//!   one lookup instead of starting their own;
//! * `x`: the last failed lookup (key and time), which wakes the waiters of
//!   other workers with the failure and backs new requests off.
//!
//! Every entry carries its full key, so a collision is a miss, never someone
//! else's passport. Memory is bounded by `slots × max_entry_bytes`.

use std::cell::RefCell;
use std::rc::Rc;

use filter_core::shared::{self, SharedData, SharedError, Update};
use serde::{Deserialize, Serialize};

use crate::config::Compiled;

/// CAS attempts before a write gives up.
const ATTEMPTS: u32 = 8;

/// The verified identity a passport is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub user: String,
    pub device: Option<String>,
}

impl CacheKey {
    /// The key as stored in a slot: user, then `\u{1f}` and the device.
    pub fn id(&self) -> String {
        match &self.device {
            Some(d) => format!("{}\u{1f}{}", self.user, d),
            None => self.user.clone(),
        }
    }

    /// The slot index, `0..slots` (FNV-1a 64: stable across workers and builds).
    pub fn slot(&self, slots: u32) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.id().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        u32::try_from(h % u64::from(slots.max(1))).unwrap_or(0)
    }
}

/// The shared-data key of a slot.
pub fn slot_name(gateway: &str, index: u32) -> String {
    filter_core::shared::key("passport", "slot", &[&gateway, &index])
}

/// One slot's document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<Flight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<Failure>,
}

/// A cached lookup result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// [`CacheKey::id`].
    pub k: String,
    /// When the issuer answered, Unix milliseconds.
    pub at: u64,
    /// The issuer did not know the user (404).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub neg: bool,
    /// The signed passport (empty when `neg`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tok: String,
    /// The passport's claims other than `iat`/`exp` (kept to re-sign a stale one).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub ctx: serde_json::Map<String, serde_json::Value>,
    /// Derived request headers, (name, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub h: Vec<(String, String)>,
}

/// A lookup in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    pub k: String,
    /// Unix ms after which the marker is void (its worker gave up or died).
    pub until: u64,
}

/// The last failed lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub k: String,
    /// Unix ms of the failure.
    pub at: u64,
}

impl Slot {
    /// Parses a slot; an empty or unreadable one is an empty slot.
    pub fn parse(bytes: Option<&[u8]>) -> Slot {
        match bytes {
            Some(b) if !b.is_empty() => serde_json::from_slice(b).unwrap_or_default(),
            _ => Slot::default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What the cache says about a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe<'a> {
    /// A passport to forward.
    Fresh(&'a Entry),
    /// Known to be unknown (negative cache).
    Unknown,
    /// The lookup failed (after `since`, or within the error back-off).
    Failed,
    /// Another lookup is under way: wait for it.
    InFlight,
    /// Nothing usable and nobody looking: a lookup must start.
    Start,
}

/// Looks `key` up in a slot at `now` for a request that started waiting at
/// `since` (= `now` for a new request).
pub fn probe<'a>(slot: &'a Slot, key: &str, now: u64, since: u64, cfg: &Compiled) -> Probe<'a> {
    if let Some(e) = slot.e.as_ref().filter(|e| e.k == key) {
        if !e.neg && now < e.at.saturating_add(cfg.cache_ttl_ms) {
            return Probe::Fresh(e);
        }
        if e.neg && now < e.at.saturating_add(cfg.negative_ttl_ms) {
            return Probe::Unknown;
        }
    }
    if let Some(x) = slot.x.as_ref().filter(|x| x.k == key) {
        if x.at >= since || now < x.at.saturating_add(cfg.error_backoff_ms) {
            return Probe::Failed;
        }
    }
    if slot.f.as_ref().is_some_and(|f| f.k == key && now < f.until) {
        return Probe::InFlight;
    }
    Probe::Start
}

/// The stale passport a failure may serve: the key's last positive entry,
/// looked up at most `stale_for` ago.
pub fn stale<'a>(slot: &'a Slot, key: &str, now: u64, cfg: &Compiled) -> Option<&'a Entry> {
    if cfg.stale_for_ms == 0 {
        return None;
    }
    slot.e
        .as_ref()
        .filter(|e| e.k == key && !e.neg && now <= e.at.saturating_add(cfg.stale_for_ms))
}

/// A slot's document (`None`: missing, or the host refused, logged).
fn read_bytes<S: SharedData + ?Sized>(store: &S, name: &str) -> Option<Vec<u8>> {
    match store.get(name) {
        Ok((v, _)) => v,
        Err(e) => {
            log::warn!("passport: reading {name}: {e}");
            None
        }
    }
}

/// Reads and parses a slot.
pub fn read<S: SharedData + ?Sized>(store: &S, name: &str) -> Slot {
    Slot::parse(read_bytes(store, name).as_deref())
}

/// Entries of the worker-local memo of parsed slots ([`read_memo`]).
pub const MEMO_ENTRIES: usize = 64;
/// Largest slot document the memo keeps (larger ones are parsed every time).
pub const MEMO_MAX_BYTES: usize = 8192;

/// One memo entry: the slot's name, the exact bytes read, what they parse to.
type Memo = Option<(String, Vec<u8>, Rc<Slot>)>;

thread_local! {
    /// Direct-mapped by slot index: at most [`MEMO_ENTRIES`] ×
    /// [`MEMO_MAX_BYTES`] of documents (plus their parsed form) per VM, i.e.
    /// per worker; a typical entry is ~1 KiB. Replaced by the next slot of
    /// the same index that is read; never needs invalidating, because a
    /// document is reused only when the bytes just read are identical to the
    /// ones it was parsed from.
    static MEMO: RefCell<Vec<Memo>> = const { RefCell::new(Vec::new()) };
}

/// Reads a slot like [`read`], but parses its document only when it differs
/// from the last one read for this index: a hit on a slot that did not
/// change since (every repeated request of a user within `cache.ttl`) costs
/// the shared-data read and a byte comparison instead of a JSON parse
/// (~3.4 µs natively for a 0.8 KiB document; more in V8).
pub fn read_memo<S: SharedData + ?Sized>(store: &S, name: &str, index: u32) -> Rc<Slot> {
    let Some(bytes) = read_bytes(store, name) else {
        return Rc::new(Slot::default());
    };
    if bytes.is_empty() || bytes.len() > MEMO_MAX_BYTES {
        return Rc::new(Slot::parse(Some(&bytes)));
    }
    let i = usize::try_from(index).unwrap_or(0) % MEMO_ENTRIES;
    MEMO.with(|m| {
        let Ok(mut m) = m.try_borrow_mut() else {
            return Rc::new(Slot::parse(Some(&bytes)));
        };
        if m.len() < MEMO_ENTRIES {
            m.resize(MEMO_ENTRIES, None);
        }
        let Some(entry) = m.get_mut(i) else {
            return Rc::new(Slot::parse(Some(&bytes)));
        };
        if let Some((n, b, slot)) = entry.as_ref() {
            if n == name && *b == bytes {
                return slot.clone();
            }
        }
        let slot = Rc::new(Slot::parse(Some(&bytes)));
        *entry = Some((name.to_string(), bytes, slot.clone()));
        slot
    })
}

/// Creates the slot keys that do not exist yet (configure time).
pub fn create_slots<S: SharedData + ?Sized>(
    store: &S,
    gateway: &str,
    slots: u32,
) -> Result<(), SharedError> {
    for i in 0..slots {
        let name = slot_name(gateway, i);
        if store.get(&name)?.0.is_none() {
            store.set(&name, b"", None)?;
        }
    }
    Ok(())
}

/// Claims the lookup of `key`: succeeds only when the slot still says
/// [`Probe::Start`] for it, and marks the lookup in flight until `until`.
pub fn claim<S: SharedData + ?Sized>(
    store: &S,
    name: &str,
    key: &str,
    now: u64,
    until: u64,
    cfg: &Compiled,
) -> Result<bool, SharedError> {
    shared::update(store, name, ATTEMPTS, |v| {
        let mut slot = Slot::parse(v);
        if probe(&slot, key, now, now, cfg) != Probe::Start {
            return Update::Keep(false);
        }
        slot.f = Some(Flight {
            k: key.to_string(),
            until,
        });
        Update::Write(slot.encode(), true)
    })
}

/// The outcome of a lookup, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Entry(Entry),
    Failure { at: u64 },
}

/// Writes a lookup's outcome into its slot and clears its in-flight marker.
/// An entry that would make the slot larger than `max_entry_bytes` is
/// refused (`Ok(false)`): the caller records a failure instead.
pub fn store<S: SharedData + ?Sized>(
    store: &S,
    name: &str,
    key: &str,
    outcome: &Stored,
    max_entry_bytes: usize,
) -> Result<bool, SharedError> {
    shared::update(store, name, ATTEMPTS, |v| {
        let mut slot = Slot::parse(v);
        if slot.f.as_ref().is_some_and(|f| f.k == key) {
            slot.f = None;
        }
        match outcome {
            Stored::Entry(e) => {
                slot.e = Some(e.clone());
                if slot.x.as_ref().is_some_and(|x| x.k == key) {
                    slot.x = None;
                }
            }
            Stored::Failure { at } => {
                slot.x = Some(Failure {
                    k: key.to_string(),
                    at: *at,
                })
            }
        }
        let bytes = slot.encode();
        if bytes.len() > max_entry_bytes {
            return Update::Keep(false);
        }
        Update::Write(bytes, true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::config;
    use filter_core::shared::MemorySharedData;

    fn key(u: &str) -> CacheKey {
        CacheKey {
            user: u.into(),
            device: None,
        }
    }

    fn entry_slot(user: &str, at: u64) -> Slot {
        Slot {
            e: Some(Entry {
                k: user.into(),
                at,
                neg: false,
                tok: "t".repeat(500),
                ctx: serde_json::Map::new(),
                h: vec![("x-user-risk".into(), "low".into())],
            }),
            f: None,
            x: None,
        }
    }

    #[test]
    fn the_memo_reuses_a_parse_only_for_identical_bytes_of_the_same_slot() {
        let s = MemorySharedData::new();
        s.set("passport/web/7", &entry_slot("alice", 1).encode(), None)
            .unwrap();
        let a = read_memo(&s, "passport/web/7", 7);
        let b = read_memo(&s, "passport/web/7", 7);
        assert!(Rc::ptr_eq(&a, &b), "unchanged bytes: parsed once");
        assert_eq!(*a, entry_slot("alice", 1));

        // Any change of the document is seen at once.
        s.set("passport/web/7", &entry_slot("alice", 2).encode(), None)
            .unwrap();
        let c = read_memo(&s, "passport/web/7", 7);
        assert_eq!(c.e.as_ref().unwrap().at, 2);

        // Another slot on the same memo index (another gateway, or index + 64)
        // with the same bytes is its own document.
        s.set("passport/app/7", &entry_slot("bob", 2).encode(), None)
            .unwrap();
        let d = read_memo(&s, "passport/app/7", 7);
        assert_eq!(d.e.as_ref().unwrap().k, "bob");
        s.set("passport/web/71", &entry_slot("carol", 2).encode(), None)
            .unwrap();
        assert_eq!(
            read_memo(&s, "passport/web/71", 71).e.as_ref().unwrap().k,
            "carol"
        );
        assert_eq!(
            read_memo(&s, "passport/web/7", 7).e.as_ref().unwrap().k,
            "alice"
        );

        // Empty, missing and oversized documents are not memoised.
        s.set("passport/web/8", b"", None).unwrap();
        assert_eq!(*read_memo(&s, "passport/web/8", 8), Slot::default());
        assert_eq!(*read_memo(&s, "passport/web/9", 9), Slot::default());
        let mut big = entry_slot("dave", 3);
        if let Some(e) = big.e.as_mut() {
            e.tok = "t".repeat(MEMO_MAX_BYTES);
        }
        s.set("passport/web/10", &big.encode(), None).unwrap();
        let x = read_memo(&s, "passport/web/10", 10);
        let y = read_memo(&s, "passport/web/10", 10);
        assert!(!Rc::ptr_eq(&x, &y));
        assert_eq!(*x, big);
    }

    fn entry(k: &str, at: u64) -> Entry {
        Entry {
            k: k.into(),
            at,
            neg: false,
            tok: "t".into(),
            ctx: Default::default(),
            h: vec![],
        }
    }

    #[test]
    fn slot_index_is_stable_and_in_range() {
        let k = key("alice");
        assert_eq!(k.slot(4096), k.slot(4096));
        assert!(k.slot(7) < 7);
        let with_device = CacheKey {
            user: "alice".into(),
            device: Some("d1".into()),
        };
        assert_ne!(k.id(), with_device.id());
    }

    #[test]
    fn a_fresh_entry_is_a_hit_until_the_ttl() {
        let cfg = config(|_| {});
        let slot = Slot {
            e: Some(entry("alice", 1_000)),
            ..Default::default()
        };
        assert!(matches!(
            probe(&slot, "alice", 1_000 + cfg.cache_ttl_ms - 1, 0, &cfg),
            Probe::Fresh(_)
        ));
        assert_eq!(
            probe(&slot, "alice", 1_000 + cfg.cache_ttl_ms, 0, &cfg),
            Probe::Start
        );
        assert_eq!(
            probe(&slot, "bob", 1_000, 0, &cfg),
            Probe::Start,
            "a collision is a miss"
        );
    }

    #[test]
    fn an_in_flight_marker_makes_others_wait_until_it_expires() {
        let cfg = config(|_| {});
        let slot = Slot {
            f: Some(Flight {
                k: "alice".into(),
                until: 5_000,
            }),
            ..Default::default()
        };
        assert_eq!(probe(&slot, "alice", 4_999, 4_999, &cfg), Probe::InFlight);
        assert_eq!(probe(&slot, "alice", 5_000, 5_000, &cfg), Probe::Start);
        assert_eq!(probe(&slot, "bob", 4_000, 4_000, &cfg), Probe::Start);
    }

    #[test]
    fn a_failure_fails_earlier_waiters_and_backs_off_new_requests() {
        let cfg = config(|_| {});
        let slot = Slot {
            x: Some(Failure {
                k: "alice".into(),
                at: 10_000,
            }),
            ..Default::default()
        };
        assert_eq!(probe(&slot, "alice", 10_001, 9_000, &cfg), Probe::Failed);
        assert_eq!(
            probe(&slot, "alice", 10_500, 10_500, &cfg),
            Probe::Failed,
            "backoff"
        );
        assert_eq!(
            probe(&slot, "alice", 11_000 + 1, 11_001, &cfg),
            Probe::Start
        );
    }

    #[test]
    fn only_one_claim_wins() {
        let cfg = config(|_| {});
        let s = MemorySharedData::new();
        create_slots(&s, "web", 4).unwrap();
        let name = slot_name("web", 1);
        assert!(claim(&s, &name, "alice", 100, 700, &cfg).unwrap());
        assert!(!claim(&s, &name, "alice", 101, 701, &cfg).unwrap());
        // After the result is stored, nobody needs to claim.
        assert!(store(
            &s,
            &name,
            "alice",
            &Stored::Entry(entry("alice", 150)),
            4096
        )
        .unwrap());
        let slot = read(&s, &name);
        assert!(slot.f.is_none());
        assert!(matches!(
            probe(&slot, "alice", 200, 200, &cfg),
            Probe::Fresh(_)
        ));
    }

    #[test]
    fn create_slots_keeps_existing_contents() {
        let s = MemorySharedData::new();
        s.set(
            &slot_name("web", 0),
            b"{\"x\":{\"k\":\"a\",\"at\":1}}",
            None,
        )
        .unwrap();
        create_slots(&s, "web", 2).unwrap();
        assert!(read(&s, &slot_name("web", 0)).x.is_some());
        assert_eq!(s.get(&slot_name("web", 1)).unwrap().0.unwrap(), b"");
    }

    #[test]
    fn an_oversized_entry_is_not_stored() {
        let s = MemorySharedData::new();
        let mut e = entry("alice", 1);
        e.tok = "x".repeat(5000);
        assert!(!store(&s, "k", "alice", &Stored::Entry(e), 4096).unwrap());
    }

    #[test]
    fn stale_serves_only_within_the_configured_age() {
        let cfg = config(|c| {
            c.on_issuer_error.serve_stale_for = filter_core::duration::ConfigDuration::from_secs(60)
        });
        let slot = Slot {
            e: Some(entry("alice", 1_000)),
            ..Default::default()
        };
        assert!(stale(&slot, "alice", 61_000, &cfg).is_some());
        assert!(stale(&slot, "alice", 61_001, &cfg).is_none());
        let off = config(|_| {});
        assert!(stale(&slot, "alice", 2_000, &off).is_none());
    }

    #[test]
    fn garbage_in_a_slot_reads_as_empty() {
        assert_eq!(Slot::parse(Some(b"{not json")), Slot::default());
    }
}
