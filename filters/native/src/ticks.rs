//! Root-context ticks and the wake-ups that carry them (pure bookkeeping;
//! `host` drives it, docs/native.md "Ticks and root callouts").
//!
//! * [`Ticks`]: the tick periods of the root contexts of ONE thread (the
//!   main thread's, or one worker's), and which are due.
//! * [`Schedule`]: what the process-wide timer thread watches: per
//!   configuration, when the main thread's root is next due (the timer
//!   commits to the configuration's scheduler); per worker, when it next has
//!   work (a due tick, or root-callout answers in its inbox) and the
//!   schedulers of its paused streams (the only way to run code on an idle
//!   worker: the timer commits to ONE of them, and not again until the
//!   worker ran or that stream is gone).
//!
//! Times are milliseconds since the epoch.

use std::collections::HashMap;

/// The tick periods of one thread's root contexts.
#[derive(Debug, Default)]
pub struct Ticks {
    roots: HashMap<u32, (u64, u64)>,
}

impl Ticks {
    /// Root `root` asks for a tick every `period_ms` (0: no tick); the first
    /// is due one period from `now` (as proxy-wasm's timer).
    pub fn set(&mut self, root: u32, period_ms: u64, now: u64) {
        if period_ms == 0 {
            self.roots.remove(&root);
        } else {
            self.roots
                .insert(root, (period_ms, now.saturating_add(period_ms)));
        }
    }

    /// Makes `root`'s tick due at `now` (if it has a period): whether it has.
    pub fn make_due(&mut self, root: u32, now: u64) -> bool {
        match self.roots.get_mut(&root) {
            Some((_, d)) => {
                *d = now;
                true
            }
            None => false,
        }
    }

    pub fn remove(&mut self, root: u32) {
        self.roots.remove(&root);
    }

    /// The roots whose tick is due at `now`, in id order, each re-armed one
    /// period later (a tick that ran late does not run twice to catch up).
    pub fn take_due(&mut self, now: u64) -> Vec<u32> {
        let mut due: Vec<u32> = self
            .roots
            .iter_mut()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, (p, d))| {
                *d = now.saturating_add(*p);
                *id
            })
            .collect();
        due.sort_unstable();
        due
    }

    /// When the next tick is due.
    pub fn next_due(&self) -> Option<u64> {
        self.roots.values().map(|(_, d)| *d).min()
    }

    /// When `root`'s next tick is due.
    pub fn due_of(&self, root: u32) -> Option<u64> {
        self.roots.get(&root).map(|(_, d)| *d)
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// One worker, as the timer thread sees it.
#[derive(Debug)]
struct Worker<K, S, A> {
    due: Option<u64>,
    /// Paused streams' schedulers (stream key, scheduler).
    wakers: Vec<(K, S)>,
    /// The stream whose scheduler was committed to and has not run yet.
    in_flight: Option<K>,
    inbox: Vec<A>,
}

impl<K, S, A> Default for Worker<K, S, A> {
    fn default() -> Self {
        Worker {
            due: None,
            wakers: Vec::new(),
            in_flight: None,
            inbox: Vec::new(),
        }
    }
}

/// What the timer thread does now.
#[derive(Debug, PartialEq, Eq)]
pub enum Fire<S> {
    /// Commit to this configuration's (main-thread) scheduler.
    Main(usize),
    /// Commit to this stream scheduler (a worker's paused stream).
    Worker(S),
}

/// The timer thread's view: main-thread roots per configuration, workers.
#[derive(Debug)]
pub struct Schedule<K, S, A> {
    mains: HashMap<usize, u64>,
    workers: HashMap<u64, Worker<K, S, A>>,
    /// When the timer thread wakes next on its own (its wait's deadline;
    /// `None` before its first wait).
    planned: Option<u64>,
}

impl<K, S, A> Default for Schedule<K, S, A> {
    fn default() -> Self {
        Schedule {
            mains: HashMap::new(),
            workers: HashMap::new(),
            planned: None,
        }
    }
}

impl<K: Copy + Eq, S: Copy, A> Schedule<K, S, A> {
    /// The main thread's root of configuration `config` is next due at
    /// `due` (`None`: no tick).
    pub fn set_main(&mut self, config: usize, due: Option<u64>) {
        match due {
            Some(d) => {
                self.mains.insert(config, d);
            }
            None => {
                self.mains.remove(&config);
            }
        }
    }

    /// Worker `w` ran its work: its next tick is due at `ticks_due`; an
    /// answer that arrived meanwhile makes it due at once.
    pub fn publish(&mut self, w: u64, ticks_due: Option<u64>, now: u64) {
        let e = self.workers.entry(w).or_default();
        e.due = if e.inbox.is_empty() {
            ticks_due
        } else {
            Some(now)
        };
    }

    /// An answer for a root context of worker `w`: due at once.
    pub fn push_answer(&mut self, w: u64, a: A, now: u64) {
        let e = self.workers.entry(w).or_default();
        e.inbox.push(a);
        e.due = Some(e.due.map_or(now, |d| d.min(now)));
    }

    /// The answers waiting for worker `w`.
    pub fn take_inbox(&mut self, w: u64) -> Vec<A> {
        self.workers
            .get_mut(&w)
            .map(|e| std::mem::take(&mut e.inbox))
            .unwrap_or_default()
    }

    /// Stream `k` of worker `w` paused, with scheduler `s`. `true`: the
    /// timer thread must be woken (notified) to honour it: the worker just
    /// became fireable and is due before the timer's own wake-up. A waker
    /// added to a worker that already has one, or that is due later than
    /// the timer wakes anyway, needs no wake-up: at saturation, where every
    /// request pauses, the timer thread then stays asleep (a notify per
    /// pause was a futex wake and two context switches per request).
    #[must_use]
    pub fn add_waker(&mut self, w: u64, k: K, s: S) -> bool {
        let e = self.workers.entry(w).or_default();
        if e.wakers.iter().any(|(x, _)| *x == k) {
            return false;
        }
        let was = Self::fireable(e);
        e.wakers.push((k, s));
        !was && Self::fireable(e) && e.due.is_some_and(|d| self.planned.is_none_or(|p| d < p))
    }

    /// The timer thread waits until `deadline` (or a notify).
    pub fn sleeping_until(&mut self, deadline: u64) {
        self.planned = Some(deadline);
    }

    /// Stream `k` of worker `w` is gone: its scheduler (to delete), and
    /// another waker may be fired if that one was in flight.
    pub fn remove_waker(&mut self, w: u64, k: K) -> Option<S> {
        let e = self.workers.get_mut(&w)?;
        if e.in_flight == Some(k) {
            e.in_flight = None;
        }
        let i = e.wakers.iter().position(|(x, _)| *x == k)?;
        Some(e.wakers.swap_remove(i).1)
    }

    /// Worker `w` got the event the timer committed.
    pub fn woken(&mut self, w: u64) {
        if let Some(e) = self.workers.get_mut(&w) {
            e.in_flight = None;
        }
    }

    fn fireable(e: &Worker<K, S, A>) -> bool {
        e.in_flight.is_none() && !e.wakers.is_empty()
    }

    /// What is due at `now`: main entries are consumed (the main thread
    /// re-publishes after its tick); a worker is woken through its oldest
    /// paused stream, once until it ran.
    pub fn fire(&mut self, now: u64) -> Vec<Fire<S>> {
        let mut out = Vec::new();
        let mains: Vec<usize> = self
            .mains
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in mains {
            self.mains.remove(&k);
            out.push(Fire::Main(k));
        }
        for e in self.workers.values_mut() {
            if e.due.is_some_and(|d| d <= now) && Self::fireable(e) {
                if let Some((k, s)) = e.wakers.first() {
                    e.in_flight = Some(*k);
                    out.push(Fire::Worker(*s));
                }
            }
        }
        out
    }

    /// When the timer thread next has something to do.
    pub fn next(&self) -> Option<u64> {
        let workers = self
            .workers
            .values()
            .filter(|e| Self::fireable(e))
            .filter_map(|e| e.due);
        self.mains.values().copied().chain(workers).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_due_one_period_after_they_are_set_and_rearm_from_now() {
        let mut t = Ticks::default();
        t.set(7, 100, 1_000);
        t.set(3, 50, 1_000);
        assert_eq!(t.next_due(), Some(1_050));
        assert!(t.take_due(1_049).is_empty());
        assert_eq!(t.take_due(1_050), vec![3]);
        assert_eq!(t.due_of(3), Some(1_100));
        // Late: both due, each runs once and re-arms from now.
        assert_eq!(t.take_due(5_000), vec![3, 7]);
        assert_eq!(t.due_of(7), Some(5_100));
        t.set(7, 0, 5_000);
        assert_eq!(t.due_of(7), None);
        assert!(!t.make_due(7, 5_000));
        assert!(t.make_due(3, 5_001));
        assert_eq!(t.take_due(5_001), vec![3]);
        t.remove(3);
        assert!(t.is_empty());
        assert_eq!(t.next_due(), None);
    }

    type S = Schedule<u32, u32, &'static str>;

    #[test]
    fn a_main_root_fires_once_per_publication() {
        let mut s = S::default();
        s.set_main(1, Some(100));
        assert_eq!(s.next(), Some(100));
        assert!(s.fire(99).is_empty());
        assert_eq!(s.fire(100), vec![Fire::Main(1)]);
        assert!(s.fire(200).is_empty());
        assert_eq!(s.next(), None);
        s.set_main(1, Some(300));
        s.set_main(1, None);
        assert_eq!(s.next(), None);
    }

    #[test]
    fn a_worker_without_a_paused_stream_is_not_woken() {
        let mut s = S::default();
        s.publish(1, Some(100), 0);
        assert_eq!(s.next(), None);
        assert!(s.fire(1_000).is_empty());
        let _ = s.add_waker(1, 10, 110);
        assert_eq!(s.next(), Some(100));
        assert_eq!(s.fire(1_000), vec![Fire::Worker(110)]);
    }

    #[test]
    fn a_pause_wakes_the_timer_only_when_its_worker_is_due_before_the_timer_wakes() {
        let mut s = S::default();
        s.publish(1, Some(500), 0);
        // The timer has not waited yet: wake it.
        assert!(s.add_waker(1, 10, 110));
        // The worker already has a waker: the timer knows.
        assert!(!s.add_waker(1, 11, 111));
        assert!(!s.add_waker(1, 10, 110));
        s.sleeping_until(400);
        assert_eq!(s.remove_waker(1, 10), Some(110));
        assert_eq!(s.remove_waker(1, 11), Some(111));
        // Due at 500, the timer wakes at 400 anyway.
        assert!(!s.add_waker(1, 12, 112));
        assert_eq!(s.remove_waker(1, 12), Some(112));
        // Due before the timer wakes: wake it.
        s.sleeping_until(1_000);
        assert!(s.add_waker(1, 13, 113));
        assert_eq!(s.remove_waker(1, 13), Some(113));
        // No tick at all: nothing to wake for.
        s.publish(1, None, 0);
        assert!(!s.add_waker(1, 14, 114));
        // In flight: not fireable before or after.
        s.publish(1, Some(10), 0);
        assert_eq!(s.fire(10), vec![Fire::Worker(114)]);
        assert!(!s.add_waker(1, 15, 115));
    }

    #[test]
    fn a_worker_is_woken_once_until_it_ran_or_its_waker_is_gone() {
        let mut s = S::default();
        let _ = s.add_waker(1, 10, 110);
        let _ = s.add_waker(1, 11, 111);
        let _ = s.add_waker(1, 10, 110);
        s.publish(1, Some(100), 0);
        assert_eq!(s.fire(100), vec![Fire::Worker(110)]);
        // In flight: not again, and not in `next`.
        assert!(s.fire(150).is_empty());
        assert_eq!(s.next(), None);
        // That stream is destroyed before its event ran: the other one.
        assert_eq!(s.remove_waker(1, 10), Some(110));
        assert_eq!(s.fire(150), vec![Fire::Worker(111)]);
        // The worker ran and published its next tick.
        s.woken(1);
        s.publish(1, Some(300), 160);
        assert!(s.fire(200).is_empty());
        assert_eq!(s.next(), Some(300));
        assert_eq!(s.remove_waker(1, 11), Some(111));
        assert_eq!(s.remove_waker(1, 11), None);
        assert_eq!(s.remove_waker(9, 11), None);
        assert_eq!(s.next(), None);
    }

    #[test]
    fn an_answer_makes_its_worker_due_at_once_until_it_took_the_inbox() {
        let mut s = S::default();
        let _ = s.add_waker(2, 20, 120);
        s.publish(2, Some(1_000), 0);
        s.push_answer(2, "jwks", 50);
        assert_eq!(s.next(), Some(50));
        assert_eq!(s.fire(50), vec![Fire::Worker(120)]);
        s.woken(2);
        // An answer that lands between the worker's ticks and its publish
        // keeps it due.
        s.push_answer(2, "feed", 60);
        s.publish(2, Some(1_000), 60);
        assert_eq!(s.next(), Some(60));
        assert_eq!(s.take_inbox(2), vec!["jwks", "feed"]);
        s.publish(2, Some(1_000), 61);
        assert_eq!(s.next(), Some(1_000));
        assert!(s.take_inbox(3).is_empty());
    }
}
