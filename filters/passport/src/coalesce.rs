//! Requests waiting for a lookup, per worker, and the root context's tick:
//! which waiters can finish, and which lookups this worker must start.
//!
//! Lookups are started by the root context only (never by a request), so a
//! lookup outlives the request that caused it (a client that disconnects
//! does not strand the others), and the answer arrives in one place that
//! finishes every local waiter at once. Waiters of other workers see the
//! stored outcome at their own worker's next tick.

use filter_core::shared::SharedData;

use crate::cache::{self, CacheKey, Probe};
use crate::config::Compiled;
use crate::filter::{self, Resolution};

/// A request waiting for its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    /// The HTTP context id.
    pub id: u32,
    pub key: CacheKey,
    /// Unix ms when it started waiting.
    pub since: u64,
    /// Unix ms when it gives up (503, or the stale passport).
    pub deadline: u64,
}

/// The waiters of one worker (one root context), bounded.
#[derive(Debug, Default)]
pub struct Waiters {
    list: Vec<Waiter>,
    /// Keys this worker is looking up (root dispatched, answer pending).
    lookups: Vec<(u32, CacheKey, u64)>,
}

/// The registry is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Waiters {
    pub fn len(&self) -> usize {
        self.list.len()
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn push(&mut self, w: Waiter, max: usize) -> Result<(), Full> {
        if self.list.len() >= max {
            return Err(Full);
        }
        self.list.push(w);
        Ok(())
    }

    /// Forgets a request (it ended, e.g. the client went away).
    pub fn remove(&mut self, id: u32) {
        self.list.retain(|w| w.id != id);
    }

    /// Whether a request of this worker already waits for `key`.
    pub fn waiting_for(&self, key: &CacheKey) -> bool {
        self.list.iter().any(|w| &w.key == key)
    }

    /// Takes out every waiter for `key`.
    pub fn take(&mut self, key: &CacheKey) -> Vec<Waiter> {
        let (take, keep) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|w| &w.key == key);
        self.list = keep;
        take
    }

    /// Records a lookup this worker started (token → key, start ms).
    pub fn lookup_started(&mut self, token: u32, key: CacheKey, now: u64) {
        self.lookups.push((token, key, now));
    }

    /// The key and start time of a finished lookup.
    pub fn lookup_finished(&mut self, token: u32) -> Option<(CacheKey, u64)> {
        let i = self.lookups.iter().position(|(t, _, _)| *t == token)?;
        let (_, k, at) = self.lookups.swap_remove(i);
        Some((k, at))
    }

    fn looking_up(&self, key: &CacheKey, now: u64, max_age: u64) -> bool {
        self.lookups
            .iter()
            .any(|(_, k, at)| k == key && now < at.saturating_add(max_age))
    }
}

/// What one tick decided.
#[derive(Debug, Default, PartialEq)]
pub struct TickPlan {
    /// Waiters to finish now, with how.
    pub finish: Vec<(u32, Resolution)>,
    /// Lookups to start (this worker won the claim).
    pub start: Vec<CacheKey>,
    /// How many of `finish` timed out.
    pub timed_out: usize,
}

/// One tick: re-checks the cache for every waiting key, finishes the waiters
/// whose outcome is known or whose deadline passed, and claims the lookups
/// nobody is doing.
pub fn tick<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    waiters: &mut Waiters,
    now: u64,
) -> TickPlan {
    let mut plan = TickPlan::default();
    let mut keys: Vec<CacheKey> = Vec::new();
    for w in &waiters.list {
        if !keys.contains(&w.key) {
            keys.push(w.key.clone());
        }
    }
    let lookup_age = u64::try_from(cfg.timeout.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1000);
    for key in keys {
        let (name, slot) = filter::slot_of(cfg, store, &key);
        let id = key.id();
        let mut need_lookup = false;
        let mut keep = Vec::new();
        for w in waiters.take(&key) {
            let res = match cache::probe(&slot, &id, now, w.since, cfg) {
                Probe::Fresh(e) => Some(Resolution::Passport(e.clone())),
                Probe::Unknown => Some(Resolution::Unknown),
                Probe::Failed => Some(Resolution::Unavailable(
                    cache::stale(&slot, &id, now, cfg).cloned(),
                )),
                Probe::InFlight | Probe::Start if now >= w.deadline => {
                    plan.timed_out += 1;
                    Some(Resolution::Unavailable(
                        cache::stale(&slot, &id, now, cfg).cloned(),
                    ))
                }
                Probe::InFlight => None,
                Probe::Start => {
                    need_lookup = true;
                    None
                }
            };
            match res {
                Some(r) => plan.finish.push((w.id, r)),
                None => keep.push(w),
            }
        }
        waiters.list.extend(keep);
        if need_lookup && !waiters.looking_up(&key, now, lookup_age) {
            let until = now.saturating_add(lookup_age);
            match cache::claim(store, &name, &id, now, until, cfg) {
                Ok(true) => plan.start.push(key),
                Ok(false) => {}
                Err(e) => {
                    // Contended or refused: do the lookup anyway rather than
                    // leave the waiters without one.
                    log::warn!("passport: claiming a lookup: {e}");
                    plan.start.push(key);
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::config;
    use crate::filter::{complete, lookup_result};
    use filter_core::shared::MemorySharedData;

    const NOW: u64 = 1_750_000_000_000;

    fn waiter(id: u32, user: &str, since: u64) -> Waiter {
        Waiter {
            id,
            key: CacheKey {
                user: user.into(),
                device: None,
            },
            since,
            deadline: since + 2000,
        }
    }

    #[test]
    fn concurrent_misses_on_two_workers_start_one_lookup() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let (mut w1, mut w2) = (Waiters::default(), Waiters::default());
        for id in 0..5 {
            w1.push(waiter(id, "alice", NOW), 10).unwrap();
            w2.push(waiter(100 + id, "alice", NOW), 10).unwrap();
        }
        let p1 = tick(&cfg, &store, &mut w1, NOW + 1);
        let p2 = tick(&cfg, &store, &mut w2, NOW + 1);
        assert_eq!(p1.start.len() + p2.start.len(), 1, "one lookup in all");
        assert!(p1.finish.is_empty() && p2.finish.is_empty());
        w1.lookup_started(7, p1.start[0].clone(), NOW + 1);
        // Ticks before the answer start nothing more.
        assert!(tick(&cfg, &store, &mut w1, NOW + 3).start.is_empty());
        assert!(tick(&cfg, &store, &mut w2, NOW + 3).start.is_empty());

        // The answer: worker 1 finishes its waiters at once ...
        let (key, _) = w1.lookup_finished(7).unwrap();
        let body = br#"{"user_id":"alice","risk_level":"low"}"#;
        let res = complete(
            &cfg,
            &store,
            &key,
            &lookup_result(&cfg, &key, Some(200), Some(body), NOW + 5),
            NOW + 5,
        );
        assert_eq!(w1.take(&key).len(), 5);
        assert!(matches!(res, Resolution::Passport(_)));
        // ... and worker 2 at its next tick, from the cache.
        let p2 = tick(&cfg, &store, &mut w2, NOW + 6);
        assert_eq!(p2.finish.len(), 5);
        assert!(p2
            .finish
            .iter()
            .all(|(_, r)| matches!(r, Resolution::Passport(_))));
        assert!(w2.is_empty());
    }

    #[test]
    fn a_failed_lookup_fails_the_other_workers_waiters() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let mut w2 = Waiters::default();
        w2.push(waiter(1, "alice", NOW), 10).unwrap();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let name = cache::slot_name("web", key.slot(cfg.slots));
        assert!(cache::claim(&store, &name, "alice", NOW, NOW + 1500, &cfg).unwrap());
        assert!(tick(&cfg, &store, &mut w2, NOW + 1).finish.is_empty());
        complete(
            &cfg,
            &store,
            &key,
            &Err(filter::LookupError::NoAnswer),
            NOW + 500,
        );
        let p = tick(&cfg, &store, &mut w2, NOW + 502);
        assert_eq!(p.finish, vec![(1, Resolution::Unavailable(None))]);
    }

    #[test]
    fn waiters_time_out_closed() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let name = cache::slot_name("web", key.slot(cfg.slots));
        // Someone claimed and never answered.
        assert!(cache::claim(&store, &name, "alice", NOW, NOW + 60_000, &cfg).unwrap());
        let mut w = Waiters::default();
        w.push(waiter(1, "alice", NOW), 10).unwrap();
        let p = tick(&cfg, &store, &mut w, NOW + 2000);
        assert_eq!(p.timed_out, 1);
        assert_eq!(p.finish, vec![(1, Resolution::Unavailable(None))]);
    }

    #[test]
    fn an_expired_claim_is_taken_over() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let name = cache::slot_name("web", key.slot(cfg.slots));
        assert!(cache::claim(&store, &name, "alice", NOW, NOW + 10, &cfg).unwrap());
        let mut w = Waiters::default();
        w.push(waiter(1, "alice", NOW), 10).unwrap();
        assert_eq!(tick(&cfg, &store, &mut w, NOW + 11).start, vec![key]);
    }

    #[test]
    fn the_registry_is_bounded_and_forgets_ended_requests() {
        let mut w = Waiters::default();
        w.push(waiter(1, "a", NOW), 2).unwrap();
        w.push(waiter(2, "b", NOW), 2).unwrap();
        assert_eq!(w.push(waiter(3, "c", NOW), 2), Err(Full));
        w.remove(1);
        assert_eq!(w.len(), 1);
        assert!(!w.waiting_for(&CacheKey {
            user: "a".into(),
            device: None
        }));
    }
}
