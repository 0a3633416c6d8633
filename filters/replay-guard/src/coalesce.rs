//! The per-worker report queue: suspicious events coalesced per suspect in a
//! bounded pending table, sent at the rate limit so that a flood by one
//! suspect never hides another.
//!
//! * **Suspect**: a verified event (`replay`, `digest_mismatch`: the key id's
//!   signature verified) belongs to (kind, device, user). An unverified one
//!   (`invalid_signature`: the key id is only claimed, anyone can invent
//!   one) belongs to (kind, client address): the client's IP without its
//!   port, an IPv6 client's /64 network. The claimed key id is never part of
//!   the key, so invented ids cannot create suspects: one address is one
//!   suspect, whatever it claims (its first claim is the report's sample).
//! * **Pending table**: at most `max_suspects` suspects, of which
//!   unverified ones hold at most half (rounded up). An event of a pending
//!   suspect only adds to its count. A new verified suspect that finds the
//!   table full evicts the most recently queued unverified suspect; any
//!   other new suspect that finds no room is refused. Nothing verified is
//!   ever evicted, and a suspect already queued keeps its place. Events lost
//!   that way are counted ([`Stats`]) and carried in the next report's
//!   `suppressed`.
//! * **Sending** ([`ReportQueue::drain`], called on every tick): while a
//!   token is available, the suspect queued longest goes out as one
//!   [`Report`] and leaves the table, alternating between the verified and
//!   the unverified queue when both wait. A suspect's later events queue it
//!   again, behind every suspect already waiting: a suspect with `k`
//!   suspects ahead of it in its queue is sent within `2(k + 1)` tokens.
//!
//! Memory: every stored string is cut to a byte bound (below), so one
//! pending suspect holds at most about 2 KiB; 256 suspects (the default)
//! under 512 KiB per worker (448,960 bytes measured with every string at
//! its bound, 64-bit layout: `a_full_table_of_longest_strings_...`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::report::{Event, RateLimiter, Report};

/// Default bound of the pending table, in suspects per worker.
pub const DEFAULT_MAX_SUSPECTS: usize = 256;
/// Largest accepted bound (about 8 MiB per worker at 2 KiB a suspect).
pub const MAX_MAX_SUSPECTS: usize = 4096;

/// Byte bounds of the strings a pending suspect keeps.
const MAX_KEYID: usize = 256;
const MAX_ID: usize = 64;
const MAX_METHOD: usize = 32;
const MAX_PATH: usize = 512;
const MAX_REQUEST_ID: usize = 128;
const MAX_CLIENT: usize = 64;

/// Who an event is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Suspect {
    Verified {
        kind: crate::report::ReportKind,
        device: String,
        user: String,
    },
    Unverified {
        kind: crate::report::ReportKind,
        /// [`client_key`] of the client address.
        client: Option<String>,
    },
}

impl Suspect {
    fn of(e: &Event) -> Suspect {
        match (e.verified, &e.device, &e.user) {
            (true, Some(d), Some(u)) => Suspect::Verified {
                kind: e.kind,
                device: cut(d, MAX_ID),
                user: cut(u, MAX_ID),
            },
            _ => Suspect::Unverified {
                kind: e.kind,
                client: e.client.as_deref().map(client_key),
            },
        }
    }

    fn verified(&self) -> bool {
        matches!(self, Suspect::Verified { .. })
    }
}

/// The part of a client address that names an unverified suspect: the IP
/// without the port; for IPv6 its /64 network (one subscriber's usual
/// allocation, so that rotating addresses inside it stays one suspect).
fn client_key(client: &str) -> String {
    let ip = client
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| client.parse::<IpAddr>());
    match ip {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                let net = std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        Err(_) => cut(client, MAX_CLIENT),
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

/// The sample event with every string cut to its bound.
fn bounded(e: Event) -> Event {
    Event {
        kind: e.kind,
        keyid: cut(&e.keyid, MAX_KEYID),
        device: e.device.map(|d| cut(&d, MAX_ID)),
        user: e.user.map(|u| cut(&u, MAX_ID)),
        verified: e.verified,
        method: cut(&e.method, MAX_METHOD),
        path: cut(&e.path, MAX_PATH),
        client: e.client.map(|c| cut(&c, MAX_CLIENT)),
        request_id: e.request_id.map(|r| cut(&r, MAX_REQUEST_ID)),
        at: e.at,
    }
}

/// A suspect's events since its previous report.
#[derive(Debug)]
struct Pending {
    /// The first of them.
    sample: Event,
    count: u64,
    last_at: u64,
}

/// What [`ReportQueue::record`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted with a suspect already pending.
    Coalesced,
    /// A new pending suspect.
    New,
    /// A new (verified) suspect, admitted by evicting the most recently
    /// queued unverified suspect, whose `dropped` events are lost.
    NewEvicting { dropped: u64 },
    /// Not admitted (table, or the unverified share, full): the event is lost.
    Refused,
}

/// Running totals of one queue, in events unless said otherwise. At every
/// moment `recorded == sent + pending + dropped` (see
/// [`ReportQueue::pending_events`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events recorded.
    pub recorded: u64,
    /// Events counted in reports handed out (and not returned by
    /// [`ReportQueue::send_failed`]).
    pub sent: u64,
    /// Events lost: refused, evicted, or in a report that could not be sent.
    pub dropped: u64,
    /// Suspects evicted or refused by the table bound.
    pub suspects_evicted: u64,
    /// Reports handed out by [`ReportQueue::drain`].
    pub reports: u64,
}

/// Which queue goes next when both wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Verified,
    Unverified,
}

/// One worker's pending reports (see the module docs).
#[derive(Debug)]
pub struct ReportQueue {
    limiter: RateLimiter,
    max_suspects: usize,
    max_unverified: usize,
    table: HashMap<Suspect, Pending>,
    /// Pending suspects in the order they were queued, one queue per class.
    verified: VecDeque<Suspect>,
    unverified: VecDeque<Suspect>,
    turn: Turn,
    /// Events lost since the last report handed out (its `suppressed`).
    dropped_since: u64,
    stats: Stats,
}

impl ReportQueue {
    /// A queue sending at most `burst` reports at once and `per_minute` in
    /// the steady state, holding at most `max_suspects` (at least 1).
    pub fn new(per_minute: u32, burst: u32, max_suspects: usize) -> Self {
        let max_suspects = max_suspects.max(1);
        ReportQueue {
            limiter: RateLimiter::new(per_minute, burst),
            max_suspects,
            max_unverified: max_suspects.div_ceil(2),
            table: HashMap::new(),
            verified: VecDeque::new(),
            unverified: VecDeque::new(),
            turn: Turn::Verified,
            dropped_since: 0,
            stats: Stats::default(),
        }
    }

    /// Counts `event` with its suspect, or queues a new suspect.
    pub fn record(&mut self, event: Event) -> Recorded {
        self.stats.recorded = self.stats.recorded.saturating_add(1);
        let key = Suspect::of(&event);
        if let Some(p) = self.table.get_mut(&key) {
            p.count = p.count.saturating_add(1);
            p.last_at = p.last_at.max(event.at);
            return Recorded::Coalesced;
        }
        let mut outcome = Recorded::New;
        if key.verified() {
            if self.table.len() >= self.max_suspects {
                match self.unverified.pop_back() {
                    Some(victim) => {
                        let dropped = self.table.remove(&victim).map_or(0, |p| p.count);
                        self.lose(dropped);
                        self.stats.suspects_evicted += 1;
                        outcome = Recorded::NewEvicting { dropped };
                    }
                    None => return self.refuse(),
                }
            }
        } else if self.unverified.len() >= self.max_unverified
            || self.table.len() >= self.max_suspects
        {
            return self.refuse();
        }
        let sample = bounded(event);
        let last_at = sample.at;
        if key.verified() {
            self.verified.push_back(key.clone());
        } else {
            self.unverified.push_back(key.clone());
        }
        self.table.insert(
            key,
            Pending {
                sample,
                count: 1,
                last_at,
            },
        );
        outcome
    }

    fn refuse(&mut self) -> Recorded {
        self.lose(1);
        self.stats.suspects_evicted += 1;
        Recorded::Refused
    }

    fn lose(&mut self, events: u64) {
        self.dropped_since = self.dropped_since.saturating_add(events);
        self.stats.dropped = self.stats.dropped.saturating_add(events);
    }

    /// The reports to send at `now_ms`: one per token available, longest
    /// queued first, alternating between verified and unverified suspects.
    /// Call it on every tick; it takes no token while nothing waits.
    pub fn drain(&mut self, now_ms: u64) -> Vec<Report> {
        let mut out = Vec::new();
        while !self.table.is_empty() && self.limiter.allow(now_ms) {
            let take_unverified = match self.turn {
                Turn::Unverified => !self.unverified.is_empty(),
                Turn::Verified => self.verified.is_empty(),
            };
            let key = if take_unverified {
                self.turn = Turn::Verified;
                self.unverified.pop_front()
            } else {
                self.turn = Turn::Unverified;
                self.verified.pop_front()
            };
            let Some(p) = key.and_then(|k| self.table.remove(&k)) else {
                continue;
            };
            self.stats.sent = self.stats.sent.saturating_add(p.count);
            self.stats.reports += 1;
            out.push(Report {
                source: "replay-guard",
                first_at: p.sample.at,
                sample: p.sample,
                suppressed: std::mem::take(&mut self.dropped_since),
                count: p.count,
                last_at: p.last_at,
            });
        }
        out
    }

    /// `report` (from [`drain`](Self::drain)) could not be sent: its events
    /// and the drops it carried go into the next report's `suppressed`.
    pub fn send_failed(&mut self, report: &Report) {
        self.stats.sent = self.stats.sent.saturating_sub(report.count);
        self.stats.dropped = self.stats.dropped.saturating_add(report.count);
        self.dropped_since = self
            .dropped_since
            .saturating_add(report.count)
            .saturating_add(report.suppressed);
    }

    /// Suspects pending (at most the bound).
    pub fn pending_suspects(&self) -> usize {
        self.table.len()
    }

    /// Unverified suspects pending (at most half the bound, rounded up).
    pub fn pending_unverified(&self) -> usize {
        self.unverified.len()
    }

    /// Events pending, all suspects together.
    pub fn pending_events(&self) -> u64 {
        self.table.values().map(|p| p.count).sum()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportKind;

    const T0: u64 = 1_750_000_000_000;

    fn replay(device: &str) -> Event {
        Event {
            kind: ReportKind::Replay,
            keyid: format!("{device}:alice:1750000600"),
            device: Some(device.into()),
            user: Some("alice".into()),
            verified: true,
            method: "GET".into(),
            path: "/api/v1/users/7".into(),
            client: Some("10.0.0.7:51234".into()),
            request_id: Some(format!("rid-{device}")),
            at: T0 / 1000,
        }
    }

    fn invalid(keyid: &str, client: &str) -> Event {
        Event {
            kind: ReportKind::InvalidSignature,
            keyid: keyid.into(),
            device: None,
            user: None,
            verified: false,
            method: "GET".into(),
            path: "/api/v1/users/7".into(),
            client: Some(client.into()),
            request_id: None,
            at: T0 / 1000,
        }
    }

    fn at(mut e: Event, secs: u64) -> Event {
        e.at = secs;
        e
    }

    fn conserved(q: &ReportQueue) {
        let s = q.stats();
        assert_eq!(s.recorded, s.sent + q.pending_events() + s.dropped, "{s:?}");
    }

    #[test]
    fn events_of_one_device_coalesce_into_one_report_with_count_and_times() {
        let mut q = ReportQueue::new(60, 10, 16);
        assert_eq!(q.record(at(replay("a"), 100)), Recorded::New);
        for s in 101..=104 {
            assert_eq!(q.record(at(replay("a"), s)), Recorded::Coalesced);
        }
        let out = q.drain(T0);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(
            (r.count, r.first_at, r.last_at, r.sample.at),
            (5, 100, 104, 100)
        );
        assert_eq!(r.sample.device.as_deref(), Some("a"));
        assert_eq!(
            r.sample.request_id.as_deref(),
            Some("rid-a"),
            "the first event is the sample"
        );
        assert_eq!(q.pending_suspects(), 0);
        conserved(&q);
    }

    #[test]
    fn kind_device_and_user_each_make_a_separate_suspect() {
        let mut q = ReportQueue::new(60, 10, 16);
        let mut other_user = replay("a");
        other_user.user = Some("bob".into());
        let mut digest = replay("a");
        digest.kind = ReportKind::DigestMismatch;
        for e in [replay("a"), replay("b"), other_user, digest] {
            assert_eq!(q.record(e), Recorded::New);
        }
        assert_eq!(q.drain(T0).len(), 4);
    }

    #[test]
    fn invalid_signatures_coalesce_by_client_ip_whatever_key_id_or_port_they_claim() {
        let mut q = ReportQueue::new(60, 10, 16);
        assert_eq!(
            q.record(invalid("victim:alice:1", "203.0.113.9:4000")),
            Recorded::New
        );
        for i in 0..50 {
            let e = invalid(
                &format!("invented-{i}:x:1"),
                &format!("203.0.113.9:{}", 5000 + i),
            );
            assert_eq!(q.record(e), Recorded::Coalesced);
        }
        // The same address without a port (or IPv4-mapped) is the same suspect.
        assert_eq!(
            q.record(invalid("z:z:1", "203.0.113.9")),
            Recorded::Coalesced
        );
        assert_eq!(
            q.record(invalid("z:z:1", "[::ffff:203.0.113.9]:1")),
            Recorded::Coalesced
        );
        assert_eq!(q.record(invalid("z:z:1", "203.0.113.10:1")), Recorded::New);
        let out = q.drain(T0);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].count, 53);
        assert_eq!(out[0].sample.keyid, "victim:alice:1");
        assert_eq!(
            (out[0].sample.device.as_ref(), out[0].sample.verified),
            (None, false)
        );
    }

    #[test]
    fn ipv6_clients_are_one_suspect_per_64_network() {
        let mut q = ReportQueue::new(60, 10, 16);
        assert_eq!(
            q.record(invalid("k", "[2001:db8:1:2::1]:443")),
            Recorded::New
        );
        assert_eq!(
            q.record(invalid("k", "[2001:db8:1:2:ffff::9]:1")),
            Recorded::Coalesced
        );
        assert_eq!(
            q.record(invalid("k", "2001:db8:1:2:aaaa::1")),
            Recorded::Coalesced
        );
        assert_eq!(
            q.record(invalid("k", "[2001:db8:1:3::1]:443")),
            Recorded::New
        );
        assert_eq!(q.pending_suspects(), 2);
    }

    #[test]
    fn a_new_suspect_is_sent_before_the_next_report_of_a_flooder() {
        // burst 1, one token a second: the flooder took the only token.
        let mut q = ReportQueue::new(60, 1, 16);
        q.record(replay("flooder"));
        assert_eq!(q.drain(T0).len(), 1);
        for _ in 0..99 {
            q.record(replay("flooder"));
        }
        q.record(replay("other"));
        for _ in 0..100 {
            q.record(replay("flooder"));
        }
        assert!(q.drain(T0 + 999).is_empty(), "no token yet");
        let next = q.drain(T0 + 1000);
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].sample.device.as_deref(), next[0].count),
            (Some("flooder"), 199)
        );
        let next = q.drain(T0 + 2000);
        assert_eq!(
            (next[0].sample.device.as_deref(), next[0].count),
            (Some("other"), 1)
        );
        conserved(&q);
    }

    #[test]
    fn verified_and_unverified_suspects_take_turns() {
        let mut q = ReportQueue::new(60, 10, 64);
        for i in 0..5 {
            q.record(invalid("k", &format!("198.51.100.{i}:1")));
        }
        for d in ["a", "b", "c"] {
            q.record(replay(d));
        }
        let order: Vec<bool> = q.drain(T0).iter().map(|r| r.sample.verified).collect();
        assert_eq!(order, [true, false, true, false, true, false, false, false]);
    }

    #[test]
    fn unverified_suspects_hold_at_most_half_the_table_and_never_evict() {
        let mut q = ReportQueue::new(60, 10, 8);
        for i in 0..4 {
            assert_eq!(
                q.record(invalid("k", &format!("198.51.100.{i}:1"))),
                Recorded::New
            );
        }
        assert_eq!(
            q.record(invalid("k", "198.51.100.200:1")),
            Recorded::Refused
        );
        for d in ["a", "b", "c", "d"] {
            assert_eq!(q.record(replay(d)), Recorded::New);
        }
        assert_eq!(q.pending_suspects(), 8);
        // Full: an invented address is refused, a pending one still counts.
        assert_eq!(
            q.record(invalid("k", "198.51.100.201:1")),
            Recorded::Refused
        );
        assert_eq!(
            q.record(invalid("k", "198.51.100.0:9")),
            Recorded::Coalesced
        );
        assert_eq!(q.stats().suspects_evicted, 2);
        conserved(&q);
    }

    #[test]
    fn a_new_verified_suspect_evicts_the_newest_unverified_one_and_the_loss_is_reported() {
        let mut q = ReportQueue::new(60, 10, 4);
        q.record(invalid("k", "198.51.100.1:1"));
        q.record(invalid("k", "198.51.100.2:1"));
        q.record(invalid("k", "198.51.100.2:1"));
        q.record(replay("a"));
        q.record(replay("b"));
        assert_eq!(q.record(replay("c")), Recorded::NewEvicting { dropped: 2 });
        assert_eq!(q.record(replay("d")), Recorded::NewEvicting { dropped: 1 });
        // Full of verified suspects: a new one is refused, none is evicted.
        assert_eq!(q.record(replay("e")), Recorded::Refused);
        assert_eq!(q.stats().suspects_evicted, 3);
        let out = q.drain(T0);
        let devices: Vec<_> = out.iter().map(|r| r.sample.device.as_deref()).collect();
        assert_eq!(devices, [Some("a"), Some("b"), Some("c"), Some("d")]);
        assert_eq!(
            out[0].suppressed, 4,
            "the next report carries what was lost"
        );
        assert!(out[1..].iter().all(|r| r.suppressed == 0));
        conserved(&q);
    }

    #[test]
    fn a_report_that_could_not_be_sent_is_counted_in_the_next_one() {
        let mut q = ReportQueue::new(60, 10, 4);
        q.record(replay("a"));
        q.record(replay("a"));
        let out = q.drain(T0);
        q.send_failed(&out[0]);
        conserved(&q);
        q.record(replay("b"));
        let out = q.drain(T0);
        assert_eq!(out[0].suppressed, 2);
        conserved(&q);
    }

    #[test]
    fn drain_takes_no_token_while_nothing_waits() {
        let mut q = ReportQueue::new(60, 2, 4);
        for _ in 0..10 {
            assert!(q.drain(T0).is_empty());
        }
        q.record(replay("a"));
        q.record(replay("b"));
        assert_eq!(q.drain(T0).len(), 2, "the whole burst is still there");
    }

    #[test]
    fn stored_strings_are_cut_to_their_bounds() {
        let mut q = ReportQueue::new(60, 10, 4);
        let mut e = invalid(&"k".repeat(10_000), "not an address ".repeat(100).as_str());
        e.path = format!("/{}", "é".repeat(5_000));
        e.method = "M".repeat(1_000);
        e.request_id = Some("r".repeat(10_000));
        q.record(e);
        let r = q.drain(T0).remove(0);
        assert_eq!(r.sample.keyid.len(), MAX_KEYID);
        assert!(r.sample.path.len() <= MAX_PATH && r.sample.path.len() > MAX_PATH - 4);
        assert_eq!(r.sample.method.len(), MAX_METHOD);
        assert_eq!(r.sample.request_id.map(|s| s.len()), Some(MAX_REQUEST_ID));
        assert_eq!(r.sample.client.map(|s| s.len()), Some(MAX_CLIENT));
    }

    /// Heap and inline bytes the queue holds: the table's and the queues'
    /// slots at their capacity, plus every stored string's capacity (native
    /// 64-bit layout, an upper bound of wasm32's).
    fn footprint(q: &ReportQueue) -> usize {
        use std::mem::size_of;
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::capacity);
        let key = |k: &Suspect| match k {
            Suspect::Verified { device, user, .. } => device.capacity() + user.capacity(),
            Suspect::Unverified { client, .. } => s(client),
        };
        let slots = q.table.capacity() * (size_of::<Suspect>() + size_of::<Pending>() + 1)
            + (q.verified.capacity() + q.unverified.capacity()) * size_of::<Suspect>();
        let strings: usize = q
            .table
            .iter()
            .map(|(k, p)| {
                let e = &p.sample;
                key(k)
                    + e.keyid.capacity()
                    + e.method.capacity()
                    + e.path.capacity()
                    + s(&e.device)
                    + s(&e.user)
                    + s(&e.client)
                    + s(&e.request_id)
            })
            .sum::<usize>()
            + q.verified
                .iter()
                .chain(&q.unverified)
                .map(key)
                .sum::<usize>();
        slots + strings
    }

    #[test]
    fn a_full_table_of_longest_strings_stays_within_the_documented_memory() {
        let mut q = ReportQueue::new(60, 10, DEFAULT_MAX_SUSPECTS);
        for i in 0..DEFAULT_MAX_SUSPECTS {
            let long = |n: usize| format!("{i}-{}", "x".repeat(n));
            let mut e = if i % 2 == 0 {
                replay(&long(MAX_ID))
            } else {
                invalid(&long(MAX_KEYID), &format!("[2001:db8:{i:x}::1]:1"))
            };
            e.user = e.user.map(|_| long(MAX_ID));
            e.keyid = long(MAX_KEYID);
            e.method = long(MAX_METHOD);
            e.path = long(MAX_PATH);
            e.request_id = Some(long(MAX_REQUEST_ID));
            e.client = Some(long(MAX_CLIENT));
            q.record(e);
        }
        assert_eq!(q.pending_suspects(), DEFAULT_MAX_SUSPECTS);
        let bytes = footprint(&q);
        // docs/filters/replay-guard.md: "about 2 KiB per suspect, 512 KiB at the default bound"
        assert!(bytes <= 512 * 1024, "{bytes} bytes");
        eprintln!("pending table at the default bound: {bytes} bytes");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const TICK_MS: u64 = 200;

        /// One flooder event: its three suspects (replay, digest mismatch,
        /// invalid signature from its address).
        fn flooder(kind: u8, secs: u64) -> Event {
            match kind % 3 {
                0 => at(replay("flooder"), secs),
                1 => {
                    let mut e = at(replay("flooder"), secs);
                    e.kind = ReportKind::DigestMismatch;
                    e
                }
                _ => at(invalid("anything:x:1", "192.0.2.66:1234"), secs),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: filter_core::testing::cases(256),
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            /// Whatever the flooder does (up to three suspects: its replays,
            /// its digest mismatches, its address's invalid signatures),
            /// another suspect's first event is reported within 6 tokens (2
            /// flooder suspects ahead in its queue, the other queue's turns
            /// between) plus one tick.
            #[test]
            fn another_suspect_is_reported_within_a_bounded_time_under_any_flood(
                per_minute in 1u32..=600,
                burst in 1u32..=10,
                max_suspects in 4usize..=64,
                flood in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..80),
                other_tick in 0usize..80,
                other_verified in any::<bool>(),
                warm_up in 0u64..120_000,
            ) {
                let mut q = ReportQueue::new(per_minute, burst, max_suspects);
                let interval = 60_000 / u64::from(per_minute);
                // A token every `interval`, seen at the next tick (with a
                // burst of 1 the fraction accrued past a full token is lost).
                let per_send = interval.div_ceil(TICK_MS) * TICK_MS;
                let bound = 6 * per_send + TICK_MS;
                let mut now = T0 + warm_up;
                let mut recorded_at = None;
                let mut reported_at = None;
                let ticks = flood.len().max(other_tick + 1) + (bound / TICK_MS) as usize + 2;
                for tick in 0..ticks {
                    for k in flood.get(tick).into_iter().flatten() {
                        q.record(flooder(*k, now / 1000));
                    }
                    if tick == other_tick {
                        let e = if other_verified {
                            at(replay("other"), now / 1000)
                        } else {
                            at(invalid("other:x:1", "198.51.100.7:1"), now / 1000)
                        };
                        prop_assert_ne!(q.record(e), Recorded::Refused);
                        recorded_at = Some(now);
                    }
                    // more flood after the other event, on the same tick
                    for k in flood.get(tick).into_iter().flatten() {
                        q.record(flooder(k.wrapping_add(1), now / 1000));
                    }
                    now += TICK_MS;
                    for r in q.drain(now) {
                        let other = r.sample.device.as_deref() == Some("other") || r.sample.keyid == "other:x:1";
                        if other && reported_at.is_none() {
                            reported_at = Some(now);
                        }
                    }
                    conserved(&q);
                }
                let (Some(rec), Some(rep)) = (recorded_at, reported_at) else {
                    return Err(TestCaseError::fail("the other suspect was never reported"));
                };
                prop_assert!(rep - rec <= bound, "reported {} ms after, bound {bound}", rep - rec);
            }

            /// Any mix of suspects, drains and failed sends: the table never
            /// exceeds its bound (unverified: half), verified suspects are
            /// never evicted by unverified ones, and every event is either
            /// sent, pending or counted as dropped.
            #[test]
            fn the_table_is_bounded_and_every_event_is_accounted_for(
                max_suspects in 1usize..=32,
                burst in 1u32..=5,
                steps in proptest::collection::vec((0u8..6, 0u16..200, any::<bool>()), 1..600),
            ) {
                let mut q = ReportQueue::new(60, burst, max_suspects);
                let mut now = T0;
                let mut suppressed = 0;
                for (op, n, fail) in steps {
                    match op {
                        0 | 1 => { q.record(replay(&format!("d{}", n % 48))); }
                        2 | 3 => { q.record(invalid(&format!("inv{n}:x:1"), &format!("198.51.{}.{}:1", n / 100, n))); }
                        4 => {
                            // an unverified event never costs a verified suspect its place
                            let verified_before = q.verified.clone();
                            q.record(invalid("x", &format!("203.0.113.{}:1", n % 250)));
                            prop_assert_eq!(&q.verified, &verified_before);
                        }
                        _ => {
                            now += u64::from(n) * 20;
                            for r in q.drain(now) {
                                prop_assert!(r.count >= 1 && r.first_at <= r.last_at);
                                if fail { q.send_failed(&r) } else { suppressed += r.suppressed; }
                            }
                        }
                    }
                    prop_assert!(q.pending_suspects() <= max_suspects);
                    prop_assert!(q.pending_unverified() <= max_suspects.div_ceil(2));
                    prop_assert_eq!(q.pending_suspects(), q.verified.len() + q.unverified.len());
                    let s = q.stats();
                    prop_assert_eq!(s.recorded, s.sent + q.pending_events() + s.dropped);
                    prop_assert!(suppressed <= s.dropped);
                }
            }
        }
    }
}
