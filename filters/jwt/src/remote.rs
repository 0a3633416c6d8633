//! Remote JWKS: the shared-data layout and the time rules of the fetch loop
//! ([`crate::refresh`] is the loop itself; the root context in `lib.rs`
//! only runs it on its timer and makes the `dispatch_http_call`s).
//!
//! Shared data, per provider (fixed keys, created at configure time):
//! * `jwt/jwks.v1/<name>`: fetch time (8 bytes LE, Unix seconds) followed by
//!   the JWKS document as fetched. Every worker reads it on each tick and
//!   reloads its keys when the fetch time changes, so one fetch serves the
//!   whole process.
//! * `jwt/jwks-lease.v1/<name>`: a Unix time (8 bytes LE) before which no
//!   worker starts another fetch. A worker takes the lease with
//!   compare-and-swap, so at most one fetch per `retry_interval` runs in the
//!   process, whether it is a scheduled refresh, a retry after a failure,
//!   or a refetch asked for by a token with an unknown `kid`.
//!
//! Freshness: a JWKS is fresh for `cache_duration` and refreshed once it is
//! older than 80% of it; while fetches fail it is served stale for up to
//! `max_stale` more (each request verified with stale keys is counted),
//! then dropped: tokens of that provider are refused until a fetch succeeds.

use filter_core::shared::{update, SharedData, SharedError, Update};

use crate::config::RemoteJwks;

pub fn entry_key(provider: &str) -> String {
    filter_core::shared::key("jwt", "jwks.v1", &[&provider])
}

pub fn lease_key(provider: &str) -> String {
    filter_core::shared::key("jwt", "jwks-lease.v1", &[&provider])
}

/// Creates the provider's keys if absent (configure time).
pub fn ensure_keys<S: SharedData + ?Sized>(store: &S, provider: &str) -> Result<(), SharedError> {
    for k in [entry_key(provider), lease_key(provider)] {
        if store.get(&k)?.0.is_none() {
            store.set(&k, &[], None)?;
        }
    }
    Ok(())
}

/// Encodes a fetched JWKS for shared data.
pub fn encode_entry(fetched_at: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&fetched_at.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// Decodes a shared-data entry: (fetch time, JWKS body). Empty → none yet.
pub fn decode_entry(v: &[u8]) -> Option<(u64, &[u8])> {
    let (t, body) = v.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*t), body))
}

/// How usable a JWKS of this age is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past `cache_duration`, within `max_stale`: still used, counted.
    Stale,
    /// Past `cache_duration + max_stale`: not used.
    Expired,
}

pub fn freshness(r: &RemoteJwks, fetched_at: u64, now: u64) -> Freshness {
    let age = now.saturating_sub(fetched_at);
    let life = r.cache_duration.as_duration().as_secs();
    if age < life {
        Freshness::Fresh
    } else if age < life.saturating_add(r.max_stale.as_duration().as_secs()) {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

/// Should this worker try to fetch now (subject to the lease)?
pub fn wants_fetch(r: &RemoteJwks, fetched_at: Option<u64>, now: u64, kid_miss: bool) -> bool {
    match fetched_at {
        None => true,
        Some(t) => {
            let refresh_at = r.cache_duration.as_duration().as_secs() * 4 / 5;
            kid_miss || now.saturating_sub(t) >= refresh_at
        }
    }
}

/// How long a fetch lease lasts, in whole seconds: at least the retry
/// interval, and at least the fetch timeout, so that no second fetch starts
/// while the first can still be in flight.
pub fn lease_secs(r: &RemoteJwks) -> u64 {
    r.retry_interval
        .as_duration()
        .as_secs()
        .max(r.timeout.as_duration().as_secs())
        .max(1)
}

/// Takes the fetch lease for `secs` seconds if it is free. True when this
/// worker now owns it. `now` is in whole seconds, so the lease is written as
/// `now + secs + 1`: taken at 100.99 s with a 1 s lease, it must not run out
/// at 101.0 s, 10 ms later.
pub fn take_lease<S: SharedData + ?Sized>(
    store: &S,
    provider: &str,
    now: u64,
    secs: u64,
) -> Result<bool, SharedError> {
    update(store, &lease_key(provider), 4, |cur| {
        let until = cur
            .and_then(|v| v.first_chunk::<8>())
            .map_or(0, |b| u64::from_le_bytes(*b));
        if until > now {
            Update::Keep(false)
        } else {
            let until = now.saturating_add(secs).saturating_add(1);
            Update::Write(until.to_le_bytes().to_vec(), true)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::duration::ConfigDuration;
    use filter_core::shared::MemorySharedData;

    fn remote() -> RemoteJwks {
        RemoteJwks {
            cluster: "jwks".into(),
            path: "/jwks".into(),
            authority: None,
            timeout: ConfigDuration::from_secs(2),
            cache_duration: ConfigDuration::from_secs(100),
            max_stale: ConfigDuration::from_secs(50),
            retry_interval: ConfigDuration::from_secs(10),
        }
    }

    #[test]
    fn entry_round_trips() {
        let e = encode_entry(42, b"{}");
        assert_eq!(decode_entry(&e), Some((42, &b"{}"[..])));
        assert_eq!(decode_entry(&[]), None);
    }

    #[test]
    fn freshness_goes_fresh_stale_expired() {
        let r = remote();
        assert_eq!(freshness(&r, 1000, 1099), Freshness::Fresh);
        assert_eq!(freshness(&r, 1000, 1100), Freshness::Stale);
        assert_eq!(freshness(&r, 1000, 1149), Freshness::Stale);
        assert_eq!(freshness(&r, 1000, 1150), Freshness::Expired);
    }

    #[test]
    fn refresh_starts_before_expiry_or_on_kid_miss() {
        let r = remote();
        assert!(wants_fetch(&r, None, 0, false));
        assert!(!wants_fetch(&r, Some(1000), 1079, false));
        assert!(wants_fetch(&r, Some(1000), 1080, false));
        assert!(wants_fetch(&r, Some(1000), 1001, true));
    }

    #[test]
    fn one_lease_per_interval_across_workers() {
        let s = MemorySharedData::new();
        ensure_keys(&s, "p").unwrap();
        assert!(take_lease(&s, "p", 100, 10).unwrap());
        // Another worker in the same interval.
        assert!(!take_lease(&s, "p", 105, 10).unwrap());
        // Taken at 100.x, so 110 may be less than 10 s later: still held.
        assert!(!take_lease(&s, "p", 110, 10).unwrap());
        assert!(take_lease(&s, "p", 111, 10).unwrap());
    }

    #[test]
    fn a_one_second_lease_outlives_the_second_it_was_taken_in() {
        let s = MemorySharedData::new();
        ensure_keys(&s, "p").unwrap();
        assert!(take_lease(&s, "p", 100, 1).unwrap());
        assert!(!take_lease(&s, "p", 101, 1).unwrap());
        assert!(take_lease(&s, "p", 102, 1).unwrap());
    }

    #[test]
    fn the_lease_covers_the_fetch_timeout() {
        let mut r = remote();
        r.retry_interval = ConfigDuration::from_secs(1);
        r.timeout = ConfigDuration::from_secs(5);
        assert_eq!(lease_secs(&r), 5);
        assert_eq!(lease_secs(&remote()), 10);
    }
}
