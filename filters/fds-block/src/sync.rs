//! One fetcher per Envoy process: a lease in shared data decides which
//! worker polls the feed; the list it fetched is published in shared data,
//! and every worker rebuilds its local index when the generation changes.
//!
//! Two fixed keys per feed (`<prefix>.state`, `<prefix>.list`), created at
//! configure time; both bounded (the state is a few numbers, the list holds
//! at most `max_entries` validated entries of bounded size):
//!
//! * **state** (small, read by every worker on every tick, always written
//!   with CAS): the lease holder and its deadline, when the next poll is
//!   due, the generation/version/ETag of the published list, when the feed
//!   last answered and how many polls failed in a row.
//! * **list** (large, written only by the lease holder, read by a worker
//!   only when `state.generation` differs from what it has built).
//!
//! The lease: on a tick, a worker for which the poll is due and whose lease
//! is free (or expired: a holder that died mid-call) CASes itself in as
//! holder until `now + lease`; only the winner dispatches the HTTP call. The
//! answer (or the failure) releases the lease and schedules the next poll.

use filter_core::shared::{update, SharedData, SharedError, Update};
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::feed::{decode_index, encode_list, LoadedList, StoredList};

/// CAS attempts before giving up for this tick (the next tick tries again).
const ATTEMPTS: u32 = 8;

/// The shared-data keys of one feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub state: String,
    pub list: String,
}

impl Keys {
    /// Keys derived from the feed's cluster, authority and path, so that
    /// gateways of one process polling the same feed share one fetcher and
    /// one list.
    pub fn new(cluster: &str, authority: &str, path: &str) -> Keys {
        let key = |what: &str| {
            filter_core::shared::key("fds-block", "feed", &[&cluster, &authority, &path, &what])
        };
        Keys {
            state: key("state"),
            list: key("list"),
        }
    }
}

/// The small shared state of a feed (milliseconds are Unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Lease holder (a random per-VM id); 0: nobody.
    pub holder: u64,
    pub lease_until_ms: u64,
    /// The next poll may start at this time.
    pub next_poll_ms: u64,
    /// Bumped on every publish; 0: nothing published yet.
    pub generation: u64,
    /// The feed's version of the published list.
    pub version: u64,
    /// The feed's ETag of the published list, sent as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// When the feed last answered usefully (200 or 304); 0: never.
    pub last_ok_ms: u64,
    /// When this state was created (the age reference before any success).
    pub created_ms: u64,
    /// Polls that failed in a row.
    pub failures: u64,
}

impl State {
    fn decode(bytes: Option<&[u8]>) -> Option<State> {
        serde_json::from_slice(bytes?).ok()
    }
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Seconds since the feed last answered (since start when it never has).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        let since = if self.last_ok_ms > 0 {
            self.last_ok_ms
        } else {
            self.created_ms
        };
        now_ms.saturating_sub(since) / 1000
    }
}

/// Creates the state key if it does not exist yet (configure time). Two
/// workers racing here both write an initial state; the loser's overwrite
/// only resets an idle state, so the race is harmless.
pub fn init<S: SharedData + ?Sized>(
    store: &S,
    keys: &Keys,
    now_ms: u64,
) -> Result<(), SharedError> {
    let (value, _) = store.get(&keys.state)?;
    if State::decode(value.as_deref()).is_some() {
        return Ok(());
    }
    let s = State {
        created_ms: now_ms,
        ..State::default()
    };
    store.set(&keys.state, &s.encode(), None)
}

/// Reads the state (None when absent or unreadable).
pub fn read_state<S: SharedData + ?Sized>(store: &S, keys: &Keys) -> Option<State> {
    let (value, _) = store.get(&keys.state).ok()?;
    State::decode(value.as_deref())
}

/// What a tick should do about polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// This worker holds the lease: poll now, with this `If-None-Match`.
    Fetch { etag: Option<String> },
    /// Not due, or another worker is polling.
    Idle,
}

/// Tries to take the lease for a due poll.
pub fn try_acquire<S: SharedData + ?Sized>(
    store: &S,
    keys: &Keys,
    me: u64,
    now_ms: u64,
    lease_ms: u64,
) -> Result<Poll, SharedError> {
    update(store, &keys.state, ATTEMPTS, |v| {
        let mut s = State::decode(v).unwrap_or(State {
            created_ms: now_ms,
            ..State::default()
        });
        let leased = s.holder != 0 && now_ms < s.lease_until_ms;
        if leased || now_ms < s.next_poll_ms {
            return Update::Keep(Poll::Idle);
        }
        s.holder = me;
        s.lease_until_ms = now_ms.saturating_add(lease_ms);
        let etag = if s.generation > 0 {
            s.etag.clone()
        } else {
            None
        };
        Update::Write(s.encode(), Poll::Fetch { etag })
    })
}

/// How a poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// 200 with a valid list.
    Updated {
        version: u64,
        etag: Option<String>,
        entries: &'a [Entry],
    },
    /// 304: the published list is current.
    NotModified,
    /// Any failure: the published list stays in force.
    Failed,
}

/// What [`complete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// Published a new list under this generation.
    Published(u64),
    /// Recorded a 304 or a failure (`failures` in a row).
    Recorded { failures: u64 },
    /// This worker's lease had been taken over (it took too long); nothing
    /// was written.
    LostLease,
}

/// Records the end of a poll, releases the lease and schedules the next one.
/// On `Updated`, the list is written first, then the state announces it.
pub fn complete<S: SharedData + ?Sized>(
    store: &S,
    keys: &Keys,
    me: u64,
    now_ms: u64,
    interval_ms: u64,
    outcome: &Outcome<'_>,
) -> Result<Completed, SharedError> {
    let Some(current) = read_state(store, keys) else {
        return Ok(Completed::LostLease);
    };
    if current.holder != me {
        return Ok(Completed::LostLease);
    }
    if let Outcome::Updated {
        version, entries, ..
    } = outcome
    {
        // Only the lease holder writes the list; the generation it carries is
        // the one the state update below announces.
        let list = encode_list(current.generation.saturating_add(1), *version, entries);
        store.set(&keys.list, &list, None)?;
    }
    update(store, &keys.state, ATTEMPTS, |v| {
        let Some(mut s) = State::decode(v) else {
            return Update::Keep(Completed::LostLease);
        };
        if s.holder != me {
            return Update::Keep(Completed::LostLease);
        }
        s.holder = 0;
        s.lease_until_ms = 0;
        s.next_poll_ms = now_ms.saturating_add(interval_ms);
        let done = match outcome {
            Outcome::Updated { version, etag, .. } => {
                s.generation = s.generation.saturating_add(1);
                s.version = *version;
                s.etag = etag.clone();
                s.last_ok_ms = now_ms;
                s.failures = 0;
                Completed::Published(s.generation)
            }
            Outcome::NotModified => {
                s.last_ok_ms = now_ms;
                s.failures = 0;
                Completed::Recorded { failures: 0 }
            }
            Outcome::Failed => {
                s.failures = s.failures.saturating_add(1);
                Completed::Recorded {
                    failures: s.failures,
                }
            }
        };
        Update::Write(s.encode(), done)
    })
}

/// The published list's bytes when the announced generation differs from
/// `have` (one small read of the state; the list itself only on a change).
fn list_bytes_if_changed<S: SharedData + ?Sized>(
    store: &S,
    keys: &Keys,
    have: u64,
) -> Option<Vec<u8>> {
    let state = read_state(store, keys)?;
    if state.generation == 0 || state.generation == have {
        return None;
    }
    store.get(&keys.list).ok()?.0
}

/// The published list, decoded, when its generation differs from `have`.
pub fn read_list_if_changed<S: SharedData + ?Sized>(
    store: &S,
    keys: &Keys,
    have: u64,
) -> Option<StoredList> {
    let list = StoredList::decode(&list_bytes_if_changed(store, keys, have)?)?;
    // A list older than the state (its writer is between the two writes)
    // is still newer than what we have; the next tick catches up.
    (list.generation != have).then_some(list)
}

/// The published list decoded straight into an index, when its generation
/// differs from `have`. `Some(Err(_))`: the stored list is unusable (over
/// `max_entries`, or garbled); keep the previous index.
pub fn read_index_if_changed<S: SharedData + ?Sized>(
    store: &S,
    keys: &Keys,
    have: u64,
    now: u64,
    max_entries: usize,
) -> Option<Result<LoadedList, String>> {
    let bytes = list_bytes_if_changed(store, keys, have)?;
    match decode_index(&bytes, now, max_entries) {
        Ok(l) if l.generation == have => None,
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Kind;
    use filter_core::shared::MemorySharedData;

    fn keys() -> Keys {
        Keys::new("fds", "fds", "/v1/blocklist")
    }

    fn user(v: &str) -> Entry {
        Entry::new(Kind::User, v, None, None, "", Some(1)).unwrap()
    }

    #[test]
    fn only_one_worker_gets_the_lease() {
        let s = MemorySharedData::new();
        let k = keys();
        init(&s, &k, 0).unwrap();
        assert_eq!(
            try_acquire(&s, &k, 1, 10, 3000).unwrap(),
            Poll::Fetch { etag: None }
        );
        assert_eq!(try_acquire(&s, &k, 2, 11, 3000).unwrap(), Poll::Idle);
        // even the holder does not poll twice
        assert_eq!(try_acquire(&s, &k, 1, 12, 3000).unwrap(), Poll::Idle);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_the_late_answer_is_dropped() {
        let s = MemorySharedData::new();
        let k = keys();
        init(&s, &k, 0).unwrap();
        assert!(matches!(
            try_acquire(&s, &k, 1, 0, 3000).unwrap(),
            Poll::Fetch { .. }
        ));
        assert!(matches!(
            try_acquire(&s, &k, 2, 3000, 3000).unwrap(),
            Poll::Fetch { .. }
        ));
        let e = [user("u")];
        let late = Outcome::Updated {
            version: 1,
            etag: None,
            entries: &e,
        };
        assert_eq!(
            complete(&s, &k, 1, 3100, 1000, &late).unwrap(),
            Completed::LostLease
        );
        assert!(read_list_if_changed(&s, &k, 0).is_none());
    }

    #[test]
    fn publish_then_every_worker_sees_the_new_generation_once() {
        let s = MemorySharedData::new();
        let k = keys();
        init(&s, &k, 0).unwrap();
        try_acquire(&s, &k, 1, 0, 3000).unwrap();
        let e = [user("u")];
        let out = Outcome::Updated {
            version: 4,
            etag: Some("\"4\"".into()),
            entries: &e,
        };
        assert_eq!(
            complete(&s, &k, 1, 100, 1000, &out).unwrap(),
            Completed::Published(1)
        );
        let list = read_list_if_changed(&s, &k, 0).unwrap();
        assert_eq!((list.generation, list.version, list.len()), (1, 4, 1));
        assert!(read_list_if_changed(&s, &k, 1).is_none());
        let loaded = read_index_if_changed(&s, &k, 0, 0, 10).unwrap().unwrap();
        assert_eq!((loaded.generation, loaded.index.counts().user), (1, 1));
        assert!(read_index_if_changed(&s, &k, 1, 0, 10).is_none());
        assert!(read_index_if_changed(&s, &k, 0, 0, 0).unwrap().is_err());
        // the next poll is due after the interval and sends the ETag
        assert_eq!(try_acquire(&s, &k, 2, 500, 3000).unwrap(), Poll::Idle);
        assert_eq!(
            try_acquire(&s, &k, 2, 1100, 3000).unwrap(),
            Poll::Fetch {
                etag: Some("\"4\"".into())
            }
        );
    }

    #[test]
    fn failures_keep_the_list_count_up_and_age_the_feed() {
        let s = MemorySharedData::new();
        let k = keys();
        init(&s, &k, 0).unwrap();
        try_acquire(&s, &k, 1, 0, 3000).unwrap();
        let e = [user("u")];
        let out = Outcome::Updated {
            version: 1,
            etag: None,
            entries: &e,
        };
        complete(&s, &k, 1, 1000, 1000, &out).unwrap();
        for (i, t) in [2000u64, 3000].iter().enumerate() {
            try_acquire(&s, &k, 1, *t, 3000).unwrap();
            assert_eq!(
                complete(&s, &k, 1, *t, 1000, &Outcome::Failed).unwrap(),
                Completed::Recorded {
                    failures: i as u64 + 1
                }
            );
        }
        let st = read_state(&s, &k).unwrap();
        assert_eq!(st.generation, 1, "last good list stays published");
        assert_eq!(st.age_secs(11_000), 10);
        try_acquire(&s, &k, 1, 4000, 3000).unwrap();
        complete(&s, &k, 1, 4000, 1000, &Outcome::NotModified).unwrap();
        assert_eq!(read_state(&s, &k).unwrap().failures, 0);
        assert_eq!(read_state(&s, &k).unwrap().age_secs(4000), 0);
    }

    #[test]
    fn init_keeps_an_existing_state() {
        let s = MemorySharedData::new();
        let k = keys();
        init(&s, &k, 0).unwrap();
        try_acquire(&s, &k, 1, 0, 3000).unwrap();
        init(&s, &k, 50).unwrap();
        assert_eq!(read_state(&s, &k).unwrap().holder, 1);
    }

    #[test]
    fn different_feeds_use_different_keys() {
        assert_ne!(keys(), Keys::new("fds", "fds", "/v2/blocklist"));
    }
}
