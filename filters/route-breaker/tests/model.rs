//! Property tests: the breaker state machine (stored and reloaded through
//! its binary codec after every step, as shared data does) agrees with a
//! deliberately naive reference model of Resilience4j's documented
//! behaviour, for random settings, call sequences, outcomes and clocks.

use proptest::prelude::*;
use route_breaker::breaker::{Admission, Outcome, Phase, Settings, State, Ticket, WindowKind};

/// The reference model: keeps every outcome of the current CLOSED period
/// with its time and recomputes the window from scratch; integer
/// arithmetic for the thresholds.
#[derive(Debug)]
struct Model {
    s: Settings,
    thr_fail: u64,
    thr_slow: u64,
    phase: Phase,
    epoch: u32,
    since: u64,
    permits: u32,
    probes: Vec<(bool, bool)>,
    closed: Vec<(u64, bool, bool)>,
}

impl Model {
    fn new(s: Settings, thr_fail: u64, thr_slow: u64) -> Self {
        Model {
            s,
            thr_fail,
            thr_slow,
            phase: Phase::Closed,
            epoch: 0,
            since: 0,
            permits: 0,
            probes: vec![],
            closed: vec![],
        }
    }

    fn go(&mut self, to: Phase, now: u64) {
        self.phase = to;
        self.epoch += 1;
        self.since = now;
        self.permits = 0;
        self.probes.clear();
        self.closed.clear();
    }

    fn over(&self, calls: &[(bool, bool)]) -> bool {
        let n = calls.len() as u64;
        let f = calls.iter().filter(|c| c.0).count() as u64;
        let sl = calls.iter().filter(|c| c.1).count() as u64;
        n > 0 && (f * 100 >= self.thr_fail * n || sl * 100 >= self.thr_slow * n)
    }

    fn window(&self, now: u64) -> Vec<(bool, bool)> {
        match self.s.window {
            WindowKind::CountBased(n) => {
                let skip = self.closed.len().saturating_sub(n as usize);
                self.closed.iter().skip(skip).map(|c| (c.1, c.2)).collect()
            }
            WindowKind::TimeBased(n) => {
                let sec = now / 1000;
                self.closed
                    .iter()
                    .filter(|c| c.0 / 1000 + u64::from(n) > sec)
                    .map(|c| (c.1, c.2))
                    .collect()
            }
        }
    }

    fn minimum(&self) -> usize {
        match self.s.window {
            WindowKind::CountBased(n) => self.s.minimum_number_of_calls.min(n) as usize,
            WindowKind::TimeBased(_) => self.s.minimum_number_of_calls as usize,
        }
    }

    /// Some(retry_after_ms) when rejected, None when admitted (ticket returned).
    fn acquire(&mut self, now: u64) -> Result<Ticket, u64> {
        if self.phase == Phase::Open && now >= self.since + self.s.wait_duration_in_open_state_ms {
            self.go(Phase::HalfOpen, now);
        } else if self.phase == Phase::HalfOpen
            && self.s.max_wait_duration_in_half_open_state_ms > 0
            && now - self.since >= self.s.max_wait_duration_in_half_open_state_ms
        {
            self.go(Phase::Open, now);
        }
        match self.phase {
            Phase::Closed => Ok(Ticket {
                epoch: self.epoch,
                probe: false,
            }),
            Phase::Open => Err(self.since + self.s.wait_duration_in_open_state_ms - now),
            Phase::HalfOpen => {
                if self.permits < self.s.permitted_number_of_calls_in_half_open_state {
                    self.permits += 1;
                    Ok(Ticket {
                        epoch: self.epoch,
                        probe: true,
                    })
                } else {
                    Err(1000)
                }
            }
        }
    }

    fn record(&mut self, t: Ticket, o: Outcome, now: u64) {
        if t.epoch != self.epoch {
            return;
        }
        match (self.phase, o) {
            (Phase::Closed, Outcome::Counted { failed, slow }) => {
                self.closed.push((now, failed, slow));
                let w = self.window(now);
                if w.len() >= self.minimum() && self.over(&w) {
                    self.go(Phase::Open, now);
                }
            }
            (Phase::HalfOpen, Outcome::Counted { failed, slow }) => {
                self.probes.push((failed, slow));
                if self.probes.len() as u32 >= self.s.permitted_number_of_calls_in_half_open_state {
                    let to = if self.over(&self.probes.clone()) {
                        Phase::Open
                    } else {
                        Phase::Closed
                    };
                    self.go(to, now);
                }
            }
            (Phase::HalfOpen, Outcome::Ignored) => self.permits -= 1,
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Advance the clock, then ask for a permit.
    Acquire(u64),
    /// Advance the clock, then record an outcome for one outstanding call.
    Record(u64, usize, Outcome),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => (any::<bool>(), any::<bool>()).prop_map(|(failed, slow)| Outcome::Counted { failed, slow }),
        1 => Just(Outcome::Ignored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dt = prop_oneof![3 => 0u64..50, 2 => 0u64..1500, 1 => 0u64..8000];
    prop_oneof![
        (dt.clone()).prop_map(Op::Acquire),
        (dt, any::<usize>(), outcome()).prop_map(|(d, i, o)| Op::Record(d, i, o)),
    ]
}

fn settings() -> impl Strategy<Value = (Settings, u64, u64)> {
    let thr = prop::sample::select(vec![1u64, 25, 34, 50, 66, 75, 100]);
    let window = prop_oneof![
        (1u32..12).prop_map(WindowKind::CountBased),
        (1u32..6).prop_map(WindowKind::TimeBased),
    ];
    (
        thr.clone(),
        thr,
        1u32..8,
        window,
        1u64..6000,
        1u32..5,
        prop_oneof![Just(0u64), 500u64..9000],
    )
        .prop_map(|(tf, ts, min, window, wait, permits, max_wait)| {
            (
                Settings {
                    failure_rate_threshold: tf as f64,
                    slow_call_rate_threshold: ts as f64,
                    slow_call_duration_threshold_ms: 300,
                    minimum_number_of_calls: min,
                    window,
                    wait_duration_in_open_state_ms: wait,
                    permitted_number_of_calls_in_half_open_state: permits,
                    max_wait_duration_in_half_open_state_ms: max_wait,
                },
                tf,
                ts,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_reference_model(
        (s, tf, ts) in settings(),
        ops in prop::collection::vec(op(), 1..200),
        start in 1_000_000u64..2_000_000_000_000,
    ) {
        let mut model = Model::new(s.clone(), tf, ts);
        let mut stored = State::new(&s).encode();
        let mut now = start;
        let mut outstanding: Vec<Ticket> = vec![];
        for op in ops {
            let mut st = State::decode(&stored, &s).expect("state round-trips");
            match op {
                Op::Acquire(dt) => {
                    now += dt;
                    let (got, _, changed) = st.acquire(&s, now);
                    let want = model.acquire(now);
                    match (got, want) {
                        (Admission::Admit(t), Ok(mt)) => {
                            prop_assert_eq!(t, mt);
                            outstanding.push(t);
                        }
                        (Admission::Reject { retry_after_ms }, Err(ms)) => {
                            prop_assert_eq!(retry_after_ms, ms);
                            prop_assert!(retry_after_ms > 0);
                        }
                        (g, w) => prop_assert!(false, "impl {:?} model {:?}", g, w),
                    }
                    if !changed {
                        prop_assert_eq!(State::decode(&stored, &s).unwrap(), st.clone());
                    }
                }
                Op::Record(dt, i, o) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    now += dt;
                    let t = outstanding.remove(i % outstanding.len());
                    let r = st.record(&s, t, o, now);
                    let before = model.phase;
                    model.record(t, o, now);
                    prop_assert_eq!(r.transition.map(|x| x.to), (model.phase != before).then_some(model.phase));
                }
            }
            prop_assert_eq!(st.phase, model.phase);
            prop_assert_eq!(st.epoch, model.epoch);
            prop_assert_eq!(st.permits, model.permits);
            if st.phase == Phase::Closed {
                let (c, f, sl) = st.window.totals(now);
                let w = model.window(now);
                prop_assert_eq!(c as usize, w.len());
                prop_assert_eq!(f as usize, w.iter().filter(|x| x.0).count());
                prop_assert_eq!(sl as usize, w.iter().filter(|x| x.1).count());
            }
            // Invariants of any state.
            prop_assert!(st.permits <= s.permitted_number_of_calls_in_half_open_state);
            stored = st.encode();
        }
    }

    #[test]
    fn half_open_never_admits_more_than_the_permits(
        (s, tf, ts) in settings(),
        n in 1usize..30,
    ) {
        let mut model = Model::new(s.clone(), tf, ts);
        let mut st = State::new(&s);
        // Open it: enough failures to pass the minimum.
        let mut now = 10_000u64;
        for _ in 0..(s.minimum_number_of_calls.max(1)) {
            if let (Admission::Admit(t), _, _) = st.acquire(&s, now) {
                st.record(&s, t, Outcome::failure(), now);
            }
            if let Ok(t) = model.acquire(now) { model.record(t, Outcome::failure(), now); }
        }
        prop_assert_eq!(st.phase, Phase::Open);
        now += s.wait_duration_in_open_state_ms;
        let admitted = (0..n).filter(|_| matches!(st.acquire(&s, now).0, Admission::Admit(_))).count();
        prop_assert_eq!(admitted, n.min(s.permitted_number_of_calls_in_half_open_state as usize));
    }
}
