//! The circuit breaker state machine, with Resilience4j's semantics, as plain
//! data: no clock, no host, no shared store. Time is passed in (Unix
//! milliseconds); the state is encoded to bytes ([`State::encode`]) so that it
//! can live in proxy-wasm shared data and be updated with compare-and-swap.
//!
//! * **CLOSED**: every call is admitted; outcomes go into a sliding window
//!   (the last `size` calls, or the calls of the last `size` seconds in
//!   one-second buckets). Once the window holds at least
//!   `minimumNumberOfCalls` outcomes, a failure rate ≥ `failureRateThreshold`
//!   or a slow-call rate ≥ `slowCallRateThreshold` opens the breaker. For a
//!   count-based window the minimum is capped at the window size, as
//!   Resilience4j does.
//! * **OPEN**: every call is rejected until `waitDurationInOpenState` has
//!   passed; the next call then moves the breaker to HALF_OPEN (the lazy
//!   transition: the observable behaviour of Resilience4j's automatic one).
//! * **HALF_OPEN**: exactly `permittedNumberOfCallsInHalfOpenState` calls are
//!   admitted, the rest rejected. When all of them have reported, a failure
//!   or slow rate ≥ its threshold opens the breaker again, otherwise it
//!   closes with an empty window. A probe whose outcome is ignored (the
//!   client went away first) gives its permit back. With
//!   `maxWaitDurationInHalfOpenState` > 0, a half-open state older than that
//!   opens again (so a lost probe cannot wedge the breaker).
//!
//! Every transition starts a new *epoch*. A call carries the epoch it was
//! admitted in ([`Ticket`]) and its outcome is discarded if the breaker has
//! moved on since: a slow call admitted while CLOSED cannot decide a
//! HALF_OPEN evaluation, which only its own probes decide. (Resilience4j
//! records such late outcomes into whatever state it is in; at a gateway
//! with probes spread over several workers, only the probes' outcomes keep
//! the permit count exact.)

use std::fmt;

/// The three states of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

impl Phase {
    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u64 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
    fn code(self) -> u8 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Phase::Closed),
            1 => Some(Phase::Open),
            2 => Some(Phase::HalfOpen),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sliding window of the CLOSED state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `n` calls.
    CountBased(u32),
    /// The calls that completed in the last `n` seconds (one-second buckets).
    TimeBased(u32),
}

/// Largest count-based window (calls): 1 byte each in the shared state.
pub const MAX_COUNT_WINDOW: u32 = 1000;
/// Largest time-based window (seconds): 20 bytes per second in the shared state.
pub const MAX_TIME_WINDOW: u32 = 300;

/// The compiled settings of one breaker (Resilience4j's names in snake case).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Percent in (0, 100].
    pub failure_rate_threshold: f64,
    /// Percent in (0, 100].
    pub slow_call_rate_threshold: f64,
    /// A call that takes longer than this is slow.
    pub slow_call_duration_threshold_ms: u64,
    /// ≥ 1.
    pub minimum_number_of_calls: u32,
    pub window: WindowKind,
    pub wait_duration_in_open_state_ms: u64,
    /// ≥ 1.
    pub permitted_number_of_calls_in_half_open_state: u32,
    /// 0: wait for every probe, however long.
    pub max_wait_duration_in_half_open_state_ms: u64,
}

impl Settings {
    /// The minimum number of calls actually required before rates count.
    pub fn effective_minimum(&self) -> u32 {
        match self.window {
            WindowKind::CountBased(n) => self.minimum_number_of_calls.min(n),
            WindowKind::TimeBased(_) => self.minimum_number_of_calls,
        }
    }

    /// Is a call that took `duration_ms` slow?
    pub fn is_slow(&self, duration_ms: u64) -> bool {
        duration_ms > self.slow_call_duration_threshold_ms
    }

    /// A fingerprint of everything that shapes the stored state, so that a
    /// state written under other settings is recognised and started afresh.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        h.write(&self.failure_rate_threshold.to_bits().to_le_bytes());
        h.write(&self.slow_call_rate_threshold.to_bits().to_le_bytes());
        h.write(&self.slow_call_duration_threshold_ms.to_le_bytes());
        h.write(&self.minimum_number_of_calls.to_le_bytes());
        match self.window {
            WindowKind::CountBased(n) => {
                h.write(&[0]);
                h.write(&n.to_le_bytes());
            }
            WindowKind::TimeBased(n) => {
                h.write(&[1]);
                h.write(&n.to_le_bytes());
            }
        }
        h.write(&self.wait_duration_in_open_state_ms.to_le_bytes());
        h.write(
            &self
                .permitted_number_of_calls_in_half_open_state
                .to_le_bytes(),
        );
        h.write(&self.max_wait_duration_in_half_open_state_ms.to_le_bytes());
        h.0
    }

    fn over_threshold(&self, calls: u32, failed: u32, slow: u32) -> bool {
        calls > 0
            && (rate(failed, calls) >= self.failure_rate_threshold
                || rate(slow, calls) >= self.slow_call_rate_threshold)
    }
}

/// `part` of `total` in percent, as Resilience4j computes it.
pub fn rate(part: u32, total: u32) -> f64 {
    if total == 0 {
        return 0.0;
    }
    f64::from(part) * 100.0 / f64::from(total)
}

/// FNV-1a, 64 bit: a stable hash for the settings fingerprint.
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted: `failed` per the failure statuses / upstream reset or
    /// timeout, `slow` per the slow-call threshold (both may hold).
    Counted { failed: bool, slow: bool },
    /// Not counted (the client went away before any response): a probe
    /// gives its permit back.
    Ignored,
}

impl Outcome {
    pub fn success() -> Self {
        Outcome::Counted {
            failed: false,
            slow: false,
        }
    }
    pub fn failure() -> Self {
        Outcome::Counted {
            failed: true,
            slow: false,
        }
    }
}

/// An admitted call: the epoch it was admitted in, and whether it is a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub epoch: u32,
    pub probe: bool,
}

/// What [`State::acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit(Ticket),
    /// Rejected; `retry_after_ms` until the breaker may admit again.
    Reject {
        retry_after_ms: u64,
    },
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recorded {
    /// The outcome was counted (false: ignored or stale).
    pub counted: bool,
    /// Failure and slow-call rates after this outcome, in percent, once the
    /// window holds the minimum number of calls.
    pub rates: Option<(f64, f64)>,
    pub transition: Option<Transition>,
}

/// One second of a time-based window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// The Unix second this bucket counts (0: never used).
    pub second: u64,
    pub calls: u32,
    pub failed: u32,
    pub slow: u32,
}

/// The CLOSED state's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// A ring of outcomes (bit 0 failed, bit 1 slow); `len` of them valid,
    /// the oldest at `head` once full.
    Count { ring: Vec<u8>, head: u32, len: u32 },
    /// Buckets indexed by `second % size`.
    Time { buckets: Vec<Bucket> },
}

const FAILED_BIT: u8 = 1;
const SLOW_BIT: u8 = 2;

impl Window {
    fn new(kind: WindowKind) -> Self {
        match kind {
            WindowKind::CountBased(n) => Window::Count {
                ring: vec![0; n.max(1) as usize],
                head: 0,
                len: 0,
            },
            WindowKind::TimeBased(n) => Window::Time {
                buckets: vec![Bucket::default(); n.max(1) as usize],
            },
        }
    }

    fn record(&mut self, failed: bool, slow: bool, now_ms: u64) {
        match self {
            Window::Count { ring, head, len } => {
                let size = ring.len() as u32;
                let bits =
                    (if failed { FAILED_BIT } else { 0 }) | (if slow { SLOW_BIT } else { 0 });
                if *len < size {
                    let pos = (*head + *len) % size;
                    if let Some(slot) = ring.get_mut(pos as usize) {
                        *slot = bits;
                    }
                    *len += 1;
                } else {
                    // Full: overwrite the oldest, which becomes the newest.
                    if let Some(slot) = ring.get_mut(*head as usize) {
                        *slot = bits;
                    }
                    *head = (*head + 1) % size;
                }
            }
            Window::Time { buckets } => {
                let sec = now_ms / 1000;
                let size = buckets.len() as u64;
                if let Some(b) = buckets.get_mut((sec % size) as usize) {
                    if b.second != sec {
                        *b = Bucket {
                            second: sec,
                            ..Bucket::default()
                        };
                    }
                    b.calls += 1;
                    b.failed += u32::from(failed);
                    b.slow += u32::from(slow);
                }
            }
        }
    }

    /// (calls, failed, slow) in the window as of `now_ms`.
    pub fn totals(&self, now_ms: u64) -> (u32, u32, u32) {
        match self {
            Window::Count { ring, head, len } => {
                let size = ring.len() as u32;
                let (mut c, mut f, mut s) = (0, 0, 0);
                for i in 0..*len {
                    let bits = ring
                        .get(((*head + i) % size) as usize)
                        .copied()
                        .unwrap_or(0);
                    c += 1;
                    f += u32::from(bits & FAILED_BIT != 0);
                    s += u32::from(bits & SLOW_BIT != 0);
                }
                (c, f, s)
            }
            Window::Time { buckets } => {
                let sec = now_ms / 1000;
                let size = buckets.len() as u64;
                let (mut c, mut f, mut s) = (0, 0, 0);
                for b in buckets {
                    // The current second and the size-1 before it.
                    if b.calls > 0 && b.second <= sec && b.second + size > sec {
                        c += b.calls;
                        f += b.failed;
                        s += b.slow;
                    }
                }
                (c, f, s)
            }
        }
    }
}

/// The whole state of one breaker, as stored in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// [`Settings::fingerprint`] of the settings it was built for.
    pub fingerprint: u64,
    /// Incremented on every transition.
    pub epoch: u32,
    pub phase: Phase,
    /// When the current phase began (Unix ms).
    pub since_ms: u64,
    /// HALF_OPEN: probes admitted, and the outcomes of those that reported.
    pub permits: u32,
    pub probe_calls: u32,
    pub probe_failed: u32,
    pub probe_slow: u32,
    /// CLOSED: the sliding window.
    pub window: Window,
}

impl State {
    /// A fresh CLOSED breaker.
    pub fn new(s: &Settings) -> Self {
        State {
            fingerprint: s.fingerprint(),
            epoch: 0,
            phase: Phase::Closed,
            since_ms: 0,
            permits: 0,
            probe_calls: 0,
            probe_failed: 0,
            probe_slow: 0,
            window: Window::new(s.window),
        }
    }

    fn enter(&mut self, s: &Settings, to: Phase, now_ms: u64) -> Transition {
        let from = self.phase;
        self.phase = to;
        self.epoch = self.epoch.wrapping_add(1);
        self.since_ms = now_ms;
        self.permits = 0;
        self.probe_calls = 0;
        self.probe_failed = 0;
        self.probe_slow = 0;
        // The window is emptied on every transition (Resilience4j starts a
        // new metrics object for each state).
        self.window = Window::new(s.window);
        Transition { from, to }
    }

    /// Milliseconds left in OPEN (0 when the wait is over).
    pub fn open_remaining_ms(&self, s: &Settings, now_ms: u64) -> u64 {
        (self
            .since_ms
            .saturating_add(s.wait_duration_in_open_state_ms))
        .saturating_sub(now_ms)
    }

    /// The time-driven transitions: OPEN → HALF_OPEN after the wait, and
    /// HALF_OPEN → OPEN after `max_wait_duration_in_half_open_state`.
    fn tick(&mut self, s: &Settings, now_ms: u64) -> Option<Transition> {
        match self.phase {
            Phase::Open if self.open_remaining_ms(s, now_ms) == 0 => {
                Some(self.enter(s, Phase::HalfOpen, now_ms))
            }
            Phase::HalfOpen
                if s.max_wait_duration_in_half_open_state_ms > 0
                    && now_ms.saturating_sub(self.since_ms)
                        >= s.max_wait_duration_in_half_open_state_ms =>
            {
                Some(self.enter(s, Phase::Open, now_ms))
            }
            _ => None,
        }
    }

    /// Asks to start a call at `now_ms`. Mutates the state only when it
    /// changes (a time-driven transition or a probe permit taken), which the
    /// returned `bool` says, so that the caller writes back only then.
    pub fn acquire(&mut self, s: &Settings, now_ms: u64) -> (Admission, Option<Transition>, bool) {
        let transition = self.tick(s, now_ms);
        let mut changed = transition.is_some();
        let admission = match self.phase {
            Phase::Closed => Admission::Admit(Ticket {
                epoch: self.epoch,
                probe: false,
            }),
            Phase::Open => Admission::Reject {
                retry_after_ms: self.open_remaining_ms(s, now_ms),
            },
            Phase::HalfOpen => {
                if self.permits < s.permitted_number_of_calls_in_half_open_state {
                    self.permits += 1;
                    changed = true;
                    Admission::Admit(Ticket {
                        epoch: self.epoch,
                        probe: true,
                    })
                } else {
                    // Every probe is in flight: try again shortly.
                    Admission::Reject {
                        retry_after_ms: 1000,
                    }
                }
            }
        };
        (admission, transition, changed)
    }

    /// Records the outcome of a call admitted with `ticket`.
    pub fn record(
        &mut self,
        s: &Settings,
        ticket: Ticket,
        outcome: Outcome,
        now_ms: u64,
    ) -> Recorded {
        let none = Recorded {
            counted: false,
            rates: None,
            transition: None,
        };
        if ticket.epoch != self.epoch {
            return none; // admitted in an earlier state
        }
        match (self.phase, outcome) {
            (Phase::Closed, Outcome::Counted { failed, slow }) if !ticket.probe => {
                self.window.record(failed, slow, now_ms);
                let (c, f, sl) = self.window.totals(now_ms);
                if c < s.effective_minimum() {
                    return Recorded {
                        counted: true,
                        rates: None,
                        transition: None,
                    };
                }
                let rates = Some((rate(f, c), rate(sl, c)));
                let transition = if s.over_threshold(c, f, sl) {
                    Some(self.enter(s, Phase::Open, now_ms))
                } else {
                    None
                };
                Recorded {
                    counted: true,
                    rates,
                    transition,
                }
            }
            (Phase::HalfOpen, Outcome::Counted { failed, slow }) if ticket.probe => {
                self.probe_calls += 1;
                self.probe_failed += u32::from(failed);
                self.probe_slow += u32::from(slow);
                let (c, f, sl) = (self.probe_calls, self.probe_failed, self.probe_slow);
                if c < s.permitted_number_of_calls_in_half_open_state {
                    return Recorded {
                        counted: true,
                        rates: None,
                        transition: None,
                    };
                }
                let to = if s.over_threshold(c, f, sl) {
                    Phase::Open
                } else {
                    Phase::Closed
                };
                Recorded {
                    counted: true,
                    rates: Some((rate(f, c), rate(sl, c))),
                    transition: Some(self.enter(s, to, now_ms)),
                }
            }
            (Phase::HalfOpen, Outcome::Ignored) if ticket.probe => {
                self.permits = self.permits.saturating_sub(1);
                none
            }
            _ => none,
        }
    }

    // ------------------------------------------------------------- codec

    /// The binary form kept in shared data (little endian):
    /// `version u8, fingerprint u64, epoch u32, phase u8, since u64,
    /// permits u32, probe_calls u32, probe_failed u32, probe_slow u32`, then
    /// `0 u8, size u32, head u32, len u32, size × u8` (count) or
    /// `1 u8, size u32, size × (second u64, calls u32, failed u32, slow u32)` (time).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(CODEC_VERSION);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.push(self.phase.code());
        out.extend_from_slice(&self.since_ms.to_le_bytes());
        for v in [
            self.permits,
            self.probe_calls,
            self.probe_failed,
            self.probe_slow,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        match &self.window {
            Window::Count { ring, head, len } => {
                out.push(0);
                out.extend_from_slice(&(ring.len() as u32).to_le_bytes());
                out.extend_from_slice(&head.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(ring);
            }
            Window::Time { buckets } => {
                out.push(1);
                out.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
                for b in buckets {
                    out.extend_from_slice(&b.second.to_le_bytes());
                    out.extend_from_slice(&b.calls.to_le_bytes());
                    out.extend_from_slice(&b.failed.to_le_bytes());
                    out.extend_from_slice(&b.slow.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes a stored state for `s`. Anything that is not a well-formed
    /// state written for these very settings is `None` (start afresh).
    pub fn decode(bytes: &[u8], s: &Settings) -> Option<State> {
        let mut r = Reader(bytes);
        if r.u8()? != CODEC_VERSION {
            return None;
        }
        let fingerprint = r.u64()?;
        if fingerprint != s.fingerprint() {
            return None;
        }
        let epoch = r.u32()?;
        let phase = Phase::from_code(r.u8()?)?;
        let since_ms = r.u64()?;
        let permits = r.u32()?;
        let probe_calls = r.u32()?;
        let probe_failed = r.u32()?;
        let probe_slow = r.u32()?;
        let window = match (r.u8()?, s.window) {
            (0, WindowKind::CountBased(n)) => {
                let size = r.u32()?;
                let head = r.u32()?;
                let len = r.u32()?;
                if size != n.max(1) || head >= size || len > size {
                    return None;
                }
                let ring = r.take(size as usize)?.to_vec();
                Window::Count { ring, head, len }
            }
            (1, WindowKind::TimeBased(n)) => {
                let size = r.u32()?;
                if size != n.max(1) {
                    return None;
                }
                let mut buckets = Vec::with_capacity(size as usize);
                for _ in 0..size {
                    buckets.push(Bucket {
                        second: r.u64()?,
                        calls: r.u32()?,
                        failed: r.u32()?,
                        slow: r.u32()?,
                    });
                }
                Window::Time { buckets }
            }
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(State {
            fingerprint,
            epoch,
            phase,
            since_ms,
            permits,
            probe_calls,
            probe_failed,
            probe_slow,
            window,
        })
    }
}

const CODEC_VERSION: u8 = 1;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's web breaker.
    pub(crate) fn contract() -> Settings {
        Settings {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 50.0,
            slow_call_duration_threshold_ms: 300,
            minimum_number_of_calls: 5,
            window: WindowKind::CountBased(10),
            wait_duration_in_open_state_ms: 5000,
            permitted_number_of_calls_in_half_open_state: 2,
            max_wait_duration_in_half_open_state_ms: 0,
        }
    }

    fn admit(st: &mut State, s: &Settings, now: u64) -> Ticket {
        match st.acquire(s, now).0 {
            Admission::Admit(t) => t,
            other => panic!("expected admit, got {other:?}"),
        }
    }

    fn call(st: &mut State, s: &Settings, now: u64, outcome: Outcome) -> Recorded {
        let t = admit(st, s, now);
        st.record(s, t, outcome, now)
    }

    #[test]
    fn failures_below_the_minimum_number_of_calls_never_open() {
        let s = contract();
        let mut st = State::new(&s);
        for _ in 0..4 {
            assert_eq!(call(&mut st, &s, 1, Outcome::failure()).transition, None);
        }
        assert_eq!(st.phase, Phase::Closed);
    }

    #[test]
    fn half_of_the_window_failing_opens_it() {
        let s = contract();
        let mut st = State::new(&s);
        for _ in 0..10 {
            call(&mut st, &s, 1, Outcome::success());
        }
        for i in 0..5 {
            let r = call(&mut st, &s, 1, Outcome::failure());
            assert_eq!(r.transition.is_some(), i == 4, "failure {i}");
        }
        assert_eq!(st.phase, Phase::Open);
    }

    #[test]
    fn slow_calls_alone_open_it() {
        let s = contract();
        let mut st = State::new(&s);
        let slow = Outcome::Counted {
            failed: false,
            slow: true,
        };
        for _ in 0..4 {
            call(&mut st, &s, 1, slow);
        }
        let r = call(&mut st, &s, 1, slow);
        assert_eq!(
            r.transition,
            Some(Transition {
                from: Phase::Closed,
                to: Phase::Open
            })
        );
    }

    #[test]
    fn open_rejects_with_the_time_left_then_half_open_admits_exactly_the_permits() {
        let s = contract();
        let mut st = State::new(&s);
        for _ in 0..5 {
            call(&mut st, &s, 1000, Outcome::failure());
        }
        assert_eq!(
            st.acquire(&s, 2500).0,
            Admission::Reject {
                retry_after_ms: 3500
            }
        );
        let (a, t, changed) = st.acquire(&s, 6000);
        assert!(matches!(a, Admission::Admit(Ticket { probe: true, .. })));
        assert_eq!(t.map(|t| t.to), Some(Phase::HalfOpen));
        assert!(changed);
        let p1 = match a {
            Admission::Admit(t) => t,
            Admission::Reject { .. } => unreachable!(),
        };
        let p2 = admit(&mut st, &s, 6001);
        assert!(matches!(st.acquire(&s, 6002).0, Admission::Reject { .. }));
        assert_eq!(st.record(&s, p1, Outcome::success(), 6100).transition, None);
        let r = st.record(&s, p2, Outcome::success(), 6200);
        assert_eq!(r.transition.map(|t| t.to), Some(Phase::Closed));
        assert_eq!(
            st.window.totals(6200).0,
            0,
            "closing starts an empty window"
        );
    }

    #[test]
    fn a_failing_probe_half_the_time_reopens() {
        let s = contract();
        let mut st = State::new(&s);
        for _ in 0..5 {
            call(&mut st, &s, 0, Outcome::failure());
        }
        let p1 = admit(&mut st, &s, 5000);
        let p2 = admit(&mut st, &s, 5000);
        st.record(&s, p1, Outcome::failure(), 5001);
        let r = st.record(&s, p2, Outcome::success(), 5002);
        assert_eq!(r.transition.map(|t| t.to), Some(Phase::Open));
        assert_eq!(
            st.acquire(&s, 5003).0,
            Admission::Reject {
                retry_after_ms: 4999
            }
        );
    }

    #[test]
    fn an_ignored_probe_gives_its_permit_back() {
        let s = contract();
        let mut st = State::new(&s);
        for _ in 0..5 {
            call(&mut st, &s, 0, Outcome::failure());
        }
        let p1 = admit(&mut st, &s, 5000);
        let _p2 = admit(&mut st, &s, 5000);
        assert!(matches!(st.acquire(&s, 5000).0, Admission::Reject { .. }));
        st.record(&s, p1, Outcome::Ignored, 5001);
        assert!(matches!(st.acquire(&s, 5002).0, Admission::Admit(_)));
    }

    #[test]
    fn a_late_outcome_from_an_earlier_state_is_discarded() {
        let s = contract();
        let mut st = State::new(&s);
        let slowpoke = admit(&mut st, &s, 0);
        for _ in 0..5 {
            call(&mut st, &s, 0, Outcome::failure());
        }
        let _p = admit(&mut st, &s, 5000);
        let r = st.record(&s, slowpoke, Outcome::success(), 5001);
        assert!(!r.counted);
        assert_eq!(st.probe_calls, 0);
    }

    #[test]
    fn max_wait_in_half_open_reopens_a_wedged_breaker() {
        let mut s = contract();
        s.max_wait_duration_in_half_open_state_ms = 10_000;
        let mut st = State::new(&s);
        for _ in 0..5 {
            call(&mut st, &s, 0, Outcome::failure());
        }
        admit(&mut st, &s, 5000);
        admit(&mut st, &s, 5000);
        let (a, t, _) = st.acquire(&s, 15_000);
        assert_eq!(t.map(|t| t.to), Some(Phase::Open));
        assert_eq!(
            a,
            Admission::Reject {
                retry_after_ms: 5000
            }
        );
    }

    #[test]
    fn time_based_window_forgets_old_seconds() {
        let mut s = contract();
        s.window = WindowKind::TimeBased(10);
        let mut st = State::new(&s);
        for _ in 0..4 {
            call(&mut st, &s, 1_000, Outcome::failure());
        }
        // 11 s later the four failures have left the window.
        let r = call(&mut st, &s, 12_000, Outcome::failure());
        assert_eq!(r.transition, None);
        assert_eq!(st.window.totals(12_000), (1, 1, 0));
        // Still inside: 9 s after the first of these.
        for _ in 0..4 {
            call(&mut st, &s, 20_999, Outcome::failure());
        }
        assert_eq!(st.phase, Phase::Open);
    }

    #[test]
    fn count_window_minimum_is_capped_at_its_size() {
        let mut s = contract();
        s.minimum_number_of_calls = 100;
        s.window = WindowKind::CountBased(4);
        let mut st = State::new(&s);
        for _ in 0..3 {
            call(&mut st, &s, 0, Outcome::success());
        }
        assert!(call(&mut st, &s, 0, Outcome::failure()).rates.is_some());
        call(&mut st, &s, 0, Outcome::failure());
        assert_eq!(st.phase, Phase::Open);
    }

    #[test]
    fn codec_round_trips_and_refuses_other_settings_or_garbage() {
        for window in [WindowKind::CountBased(10), WindowKind::TimeBased(7)] {
            let mut s = contract();
            s.window = window;
            let mut st = State::new(&s);
            call(&mut st, &s, 3_000, Outcome::failure());
            admit(&mut st, &s, 3_000);
            let bytes = st.encode();
            assert_eq!(State::decode(&bytes, &s), Some(st.clone()));
            let mut other = s.clone();
            other.wait_duration_in_open_state_ms += 1;
            assert_eq!(State::decode(&bytes, &other), None);
            for cut in 0..bytes.len() {
                assert_eq!(State::decode(bytes.get(..cut).unwrap(), &s), None);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(State::decode(&longer, &s), None);
        }
    }
}
