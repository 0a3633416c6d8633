//! The request logic: admit or reject at the request headers, record the
//! outcome at the response headers (or at the end of the stream when no
//! response came through), all against the breaker state in shared data.
//! The decisions are pure ([`crate::decide`]); the functions here are their
//! host adapters.
//! Generic over [`HttpHost`] and [`SharedData`], so it runs natively with
//! [`filter_core::host::FakeHost`] and [`filter_core::shared::MemorySharedData`].

use std::time::{Duration, UNIX_EPOCH};

use filter_core::decision::{self, Decision};
use filter_core::headers;
use filter_core::host::{HttpHost, Verdict};
use filter_core::shared::{self, SharedData, SharedError, Update};
use filter_core::Denial;

use crate::breaker::{Outcome, Recorded, State, Ticket, Transition};
use crate::config::{Compiled, CompiledRoute};
use crate::decide::Admitted;

/// CAS attempts before giving up on one update.
pub const CAS_ATTEMPTS: u32 = 16;

/// Envoy's response flags (the legacy bit vector of `response.flags`) that
/// mean the upstream failed: the call is a failure whatever the status.
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const LOCAL_RESET: u64 = 0x8;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x8_0000;
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;
    /// Any of the above.
    pub const UPSTREAM_FAILURE: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | LOCAL_RESET
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_OVERFLOW
        | UPSTREAM_RETRY_LIMIT_EXCEEDED
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | UPSTREAM_PROTOCOL_ERROR;
}

/// Property path of the response flags.
pub const RESPONSE_FLAGS: &[&str] = &["response", "flags"];
/// Property path of the response status (an integer; 0 when none was sent).
pub const RESPONSE_CODE: &[&str] = &["response", "code"];
/// Property path of Envoy's route name (the matched route entry's `name`;
/// Envoy 1.40 answers nothing for the older `["route_name"]`).
pub const ROUTE_NAME: &[&str] = &["xds", "route_name"];

/// An admitted call on a guarded route, kept by the HTTP context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Index of the breaker in [`Compiled::routes`].
    pub route: usize,
    /// `None` when the state store failed at admission (nothing to record).
    pub ticket: Option<Ticket>,
    pub started_ms: u64,
    /// The outcome has been recorded.
    pub done: bool,
}

/// What happened, for the glue's metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Transition {
        route: usize,
        transition: Transition,
    },
    Rejected {
        route: usize,
    },
    /// Dry run: the breaker would have rejected the call; it went through
    /// (not recorded in the breaker's window).
    DryRunRejected {
        route: usize,
    },
    /// A counted outcome, with the window's rates once it holds enough calls.
    Recorded {
        route: usize,
        failed: bool,
        slow: bool,
        rates: Option<(f64, f64)>,
    },
    /// The state store failed; the call was let through unguarded.
    StoreError {
        route: usize,
        error: SharedError,
    },
}

fn now_ms<H: HttpHost + ?Sized>(host: &H) -> u64 {
    let d = host
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn load_state(route: &CompiledRoute, bytes: Option<&[u8]>) -> State {
    bytes
        .and_then(|b| State::decode(b, &route.settings))
        .unwrap_or_else(|| State::new(&route.settings))
}

/// Writes a fresh CLOSED state for every breaker whose key is missing or
/// holds a state for other settings (called from `on_configure`, so that
/// request-time updates always find their key and go through CAS).
pub fn init_store<S: SharedData + ?Sized>(cfg: &Compiled, store: &S) -> Result<(), SharedError> {
    for r in &cfg.routes {
        shared::update(store, &r.key, CAS_ATTEMPTS, |bytes| {
            match bytes.and_then(|b| State::decode(b, &r.settings)) {
                Some(_) => Update::Keep(()),
                None => Update::Write(State::new(&r.settings).encode(), ()),
            }
        })?;
    }
    Ok(())
}

/// The request headers: the host adapter of [`crate::decide::admit`] (one
/// `:path` read; `:method`, the route name and the clock only when a
/// breaker's path covers the request), answering 503 `circuit_open` with
/// `Retry-After` when the breaker refuses.
pub fn on_request_headers<H, S>(
    cfg: &Compiled,
    host: &mut H,
    store: &S,
    events: &mut Vec<Event>,
) -> (Verdict, Option<Call>)
where
    H: HttpHost + ?Sized,
    S: SharedData + ?Sized,
{
    if cfg.routes.is_empty() {
        return (Verdict::Continue, None);
    }
    let full_path = host.request_header(headers::PATH).unwrap_or_default();
    let admitted = {
        let h = &*host;
        crate::decide::admit(
            cfg,
            store,
            &full_path,
            || h.request_header(headers::METHOD).unwrap_or_default(),
            || {
                h.property(ROUTE_NAME)
                    .and_then(|b| String::from_utf8(b).ok())
            },
            || now_ms(h),
            events,
        )
    };
    let (route, method, secs) = match admitted {
        Admitted::Unguarded => return (Verdict::Continue, None),
        Admitted::Call(call) => return (Verdict::Continue, Some(call)),
        Admitted::Reject {
            route,
            method,
            retry_after_s,
        } => (route, method, retry_after_s),
    };
    let rid = host.request_header(headers::REQUEST_ID);
    // The decision line (rejection path only: two property reads and one
    // header read).
    let names = decision::route_names(&*host);
    Decision::denial("route-breaker", &method, 503, "circuit_open")
        .dry_run(cfg.dry_run)
        .at(&names)
        .request_id(rid.as_deref())
        .trace_id(decision::trace_id(&host.request_headers()).as_deref())
        .emit();
    if cfg.dry_run {
        return (Verdict::Continue, None);
    }
    let name = cfg.routes.get(route).map_or("", |r| r.name.as_str());
    Denial::unavailable(
        "circuit_open",
        format!("the circuit breaker of route {name:?} is open; retry in {secs} s"),
    )
    .with_header("retry-after", secs.to_string())
    .send(host, rid.as_deref());
    (Verdict::Responded, None)
}

fn response_flags<H: HttpHost + ?Sized>(host: &H) -> u64 {
    host.property(RESPONSE_FLAGS)
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Records a finished call's outcome in its breaker (pure over the
/// `SharedData` seam; for the decision core's tests).
#[cfg(test)]
pub(crate) fn record_outcome<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    call: &mut Call,
    outcome: Outcome,
    now: u64,
    events: &mut Vec<Event>,
) {
    record(cfg, store, call, outcome, now, events);
}

fn record<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    call: &mut Call,
    outcome: Outcome,
    now: u64,
    events: &mut Vec<Event>,
) {
    if call.done {
        return;
    }
    call.done = true;
    let (Some(ticket), Some(route)) = (call.ticket, cfg.routes.get(call.route)) else {
        return;
    };
    let res = shared::update(store, &route.key, CAS_ATTEMPTS, |bytes| {
        let mut st = load_state(route, bytes);
        let r = st.record(&route.settings, ticket, outcome, now);
        if r.counted || r.transition.is_some() || outcome == Outcome::Ignored {
            Update::Write(st.encode(), r)
        } else {
            Update::Keep(r)
        }
    });
    match res {
        Ok(Recorded {
            counted,
            rates,
            transition,
        }) => {
            if let (true, Outcome::Counted { failed, slow }) = (counted, outcome) {
                events.push(Event::Recorded {
                    route: call.route,
                    failed,
                    slow,
                    rates,
                });
            }
            if let Some(transition) = transition {
                events.push(Event::Transition {
                    route: call.route,
                    transition,
                });
            }
        }
        Err(error) => events.push(Event::StoreError {
            route: call.route,
            error,
        }),
    }
}

/// The end of the stream (Envoy's access-log callback, the only callback
/// after the request that this filter is entered for): classify and record
/// the call once. A response status (`response.code`: the upstream's, or the
/// router's local reply for a reset or timeout) counts as a response does: a
/// failure when the status is a failure status or the response flags say
/// the upstream failed, slow when the call took longer than the threshold.
/// Without a status (no response headers were ever sent), the call is a
/// failure if the upstream failed (reset, timeout…), otherwise (the client
/// went away first) it is not counted.
///
/// One callback instead of two (response headers, then log): one VM entry
/// less per guarded request, and none at all for the response headers in
/// the chain build (docs/performance.md, 2026-12-06).
pub fn on_log<H, S>(cfg: &Compiled, host: &H, store: &S, call: &mut Call, events: &mut Vec<Event>)
where
    H: HttpHost + ?Sized,
    S: SharedData + ?Sized,
{
    if call.done {
        return;
    }
    let Some(route) = cfg.routes.get(call.route) else {
        return;
    };
    let now = now_ms(host);
    let elapsed = now.saturating_sub(call.started_ms);
    let flags = response_flags(host);
    let outcome = match response_code(host) {
        Some(status) => crate::decide::response_outcome(route, Some(status), flags, elapsed),
        None => crate::decide::log_outcome(route, flags, elapsed),
    };
    record(cfg, store, call, outcome, now, events);
}

/// The response status Envoy sent (`response.code`), if any: none (0) when
/// no response headers were sent.
fn response_code<H: HttpHost + ?Sized>(host: &H) -> Option<u16> {
    host.property(RESPONSE_CODE)
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_le_bytes)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Phase;
    use crate::config::load;
    use filter_core::host::FakeHost;
    use filter_core::shared::MemorySharedData;

    const WEB: &[u8] = br#"{
      "name": "web",
      "routes": [{
        "name": "unstable", "prefix": "/api/v1/unstable/", "methods": ["GET"],
        "breaker": {
          "failure_rate_threshold": 50, "slow_call_rate_threshold": 50,
          "slow_call_duration_threshold": "300ms", "minimum_number_of_calls": 5,
          "sliding_window_size": 10, "wait_duration_in_open_state": "5s",
          "permitted_number_of_calls_in_half_open_state": 2
        }
      }]
    }"#;

    fn at(ms: u64) -> FakeHost {
        let mut h = FakeHost::request("GET", "/api/v1/unstable/x?status=500");
        h.time = UNIX_EPOCH + Duration::from_millis(ms);
        h
    }

    /// One call through the filter: request, then a response with `status`
    /// after `took` ms. Returns the request verdict and the host.
    fn call(
        cfg: &Compiled,
        store: &MemorySharedData,
        start: u64,
        took: u64,
        status: u16,
        ev: &mut Vec<Event>,
    ) -> (Verdict, FakeHost) {
        let mut h = at(start);
        let (v, c) = on_request_headers(cfg, &mut h, store, ev);
        if let Some(mut c) = c {
            let end = responded(at(start + took), status);
            on_log(cfg, &end, store, &mut c, ev);
        }
        (v, h)
    }

    /// The host at the end of a stream whose response had `status`.
    fn responded(h: FakeHost, status: u16) -> FakeHost {
        h.with_property(RESPONSE_CODE, &u64::from(status).to_le_bytes())
    }

    fn phase(cfg: &Compiled, store: &MemorySharedData) -> Phase {
        let r = &cfg.routes[0];
        let bytes = store.get(&r.key).unwrap().0.unwrap();
        State::decode(&bytes, &r.settings).unwrap().phase
    }

    #[test]
    fn unguarded_routes_pass_without_touching_the_store() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut h = FakeHost::request("GET", "/api/v1/users/1");
        let (v, c) = on_request_headers(&cfg, &mut h, &store, &mut Vec::new());
        assert_eq!((v, c), (Verdict::Continue, None));
        assert_eq!(store.get("route-breaker/web/unstable").unwrap().0, None);
        assert_eq!(h.calls.get(), 1, "an unguarded path costs one header read");
        // POST is not guarded either.
        let mut h = FakeHost::request("POST", "/api/v1/unstable/x");
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, &mut Vec::new()).1,
            None
        );
    }

    #[test]
    fn open_breaker_answers_503_circuit_open_with_retry_after() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        init_store(&cfg, &store).unwrap();
        let mut ev = Vec::new();
        for i in 0..5 {
            let (v, _) = call(&cfg, &store, 1_000 + i, 10, 500, &mut ev);
            assert_eq!(v, Verdict::Continue);
        }
        assert_eq!(phase(&cfg, &store), Phase::Open);
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::Transition {
                transition: Transition {
                    to: Phase::Open,
                    ..
                },
                ..
            }
        )));
        let (v, h) = call(&cfg, &store, 2_500, 10, 200, &mut ev);
        assert_eq!(v, Verdict::Responded);
        let r = h.response.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "circuit_open");
        // Opened at 1004 + 10 ms; 3514 ms left → 4 s.
        assert_eq!(r.header("retry-after"), Some("4"));
        assert_eq!(r.header("x-request-id"), Some("test-rid"));
        assert!(ev.contains(&Event::Rejected { route: 0 }));
    }

    #[test]
    fn dry_run_counts_the_would_be_rejection_and_lets_the_call_through() {
        let mut cfg = load(WEB).unwrap();
        cfg.dry_run = true;
        let store = MemorySharedData::new();
        init_store(&cfg, &store).unwrap();
        let mut ev = Vec::new();
        for i in 0..5 {
            call(&cfg, &store, 1_000 + i, 10, 500, &mut ev);
        }
        assert_eq!(phase(&cfg, &store), Phase::Open, "the breaker still trips");
        ev.clear();
        let (v, h) = call(&cfg, &store, 2_500, 10, 200, &mut ev);
        assert_eq!(v, Verdict::Continue);
        assert!(h.response.is_none());
        assert_eq!(ev, vec![Event::DryRunRejected { route: 0 }]);
        assert_eq!(phase(&cfg, &store), Phase::Open, "not recorded");
    }

    #[test]
    fn after_the_wait_two_good_probes_close_it() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        for _ in 0..5 {
            call(&cfg, &store, 0, 10, 503, &mut ev);
        }
        let mut h1 = at(5_010);
        let (v1, c1) = on_request_headers(&cfg, &mut h1, &store, &mut ev);
        let mut h2 = at(5_011);
        let (v2, c2) = on_request_headers(&cfg, &mut h2, &store, &mut ev);
        assert_eq!((v1, v2), (Verdict::Continue, Verdict::Continue));
        assert_eq!(phase(&cfg, &store), Phase::HalfOpen);
        // A third caller while both probes are in flight is refused.
        let (v3, h3) = call(&cfg, &store, 5_012, 1, 200, &mut ev);
        assert_eq!(v3, Verdict::Responded);
        assert_eq!(h3.response.unwrap().header("retry-after"), Some("1"));
        for mut c in [c1.unwrap(), c2.unwrap()] {
            on_log(&cfg, &responded(at(5_100), 200), &store, &mut c, &mut ev);
        }
        assert_eq!(phase(&cfg, &store), Phase::Closed);
    }

    #[test]
    fn slow_calls_alone_open_it() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        for _ in 0..5 {
            call(&cfg, &store, 0, 301, 200, &mut ev);
        }
        assert_eq!(phase(&cfg, &store), Phase::Open);
        let fast = load(WEB).unwrap();
        let store2 = MemorySharedData::new();
        for _ in 0..10 {
            call(&fast, &store2, 0, 300, 200, &mut ev);
        }
        assert_eq!(phase(&fast, &store2), Phase::Closed, "300 ms is not slow");
    }

    #[test]
    fn upstream_reset_flags_count_as_failure_whatever_the_status() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        for _ in 0..5 {
            let mut h = at(0);
            let (_, c) = on_request_headers(&cfg, &mut h, &store, &mut ev);
            let end =
                at(10).with_property(RESPONSE_FLAGS, &flags::UPSTREAM_REMOTE_RESET.to_le_bytes());
            // Even a 200 (say, a reset after a retry policy rewrote it).
            on_log(&cfg, &responded(end, 200), &store, &mut c.unwrap(), &mut ev);
        }
        assert_eq!(phase(&cfg, &store), Phase::Open);
    }

    #[test]
    fn on_log_counts_resets_and_ignores_client_aborts() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        // Client went away (downstream termination): not counted.
        for _ in 0..10 {
            let mut h = at(0);
            let (_, c) = on_request_headers(&cfg, &mut h, &store, &mut ev);
            let end = at(10).with_property(RESPONSE_FLAGS, &0x4000u64.to_le_bytes());
            on_log(&cfg, &end, &store, &mut c.unwrap(), &mut ev);
        }
        assert!(!ev.iter().any(|e| matches!(e, Event::Recorded { .. })));
        for _ in 0..5 {
            let mut h = at(0);
            let (_, c) = on_request_headers(&cfg, &mut h, &store, &mut ev);
            let end = at(10).with_property(
                RESPONSE_FLAGS,
                &flags::UPSTREAM_REQUEST_TIMEOUT.to_le_bytes(),
            );
            on_log(&cfg, &end, &store, &mut c.unwrap(), &mut ev);
        }
        assert_eq!(phase(&cfg, &store), Phase::Open);
    }

    #[test]
    fn outcome_is_recorded_once() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        let mut h = at(0);
        let (_, c) = on_request_headers(&cfg, &mut h, &store, &mut ev);
        let mut c = c.unwrap();
        on_log(&cfg, &responded(at(1), 500), &store, &mut c, &mut ev);
        on_log(&cfg, &responded(at(1), 500), &store, &mut c, &mut ev);
        on_log(&cfg, &at(1), &store, &mut c, &mut ev);
        let n = ev
            .iter()
            .filter(|e| matches!(e, Event::Recorded { .. }))
            .count();
        assert_eq!(n, 1);
    }

    /// A store that always fails.
    struct Broken;
    impl SharedData for Broken {
        fn get(&self, _: &str) -> Result<filter_core::shared::Versioned, SharedError> {
            Err(SharedError::Host("down".into()))
        }
        fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), SharedError> {
            Err(SharedError::Host("down".into()))
        }
    }

    #[test]
    fn a_broken_store_lets_traffic_through_and_reports_it() {
        let cfg = load(WEB).unwrap();
        let mut ev = Vec::new();
        let mut h = at(0);
        let (v, c) = on_request_headers(&cfg, &mut h, &Broken, &mut ev);
        assert_eq!(v, Verdict::Continue);
        assert!(h.response.is_none());
        assert!(matches!(ev.as_slice(), [Event::StoreError { .. }]));
        let mut c = c.unwrap();
        on_log(&cfg, &responded(at(1), 500), &Broken, &mut c, &mut ev);
        assert_eq!(ev.len(), 1, "nothing to record without a ticket");
    }

    #[test]
    fn init_store_keeps_a_current_state_and_replaces_a_stale_one() {
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        for _ in 0..5 {
            call(&cfg, &store, 0, 10, 500, &mut ev);
        }
        init_store(&cfg, &store).unwrap();
        assert_eq!(
            phase(&cfg, &store),
            Phase::Open,
            "a reconfigure keeps state"
        );
        let other = load(
            &String::from_utf8_lossy(WEB)
                .replace("\"5s\"", "\"6s\"")
                .into_bytes(),
        )
        .unwrap();
        init_store(&other, &store).unwrap();
        assert_eq!(phase(&other, &store), Phase::Closed);
    }

    #[test]
    fn half_open_admits_exactly_the_permits_across_workers() {
        // Many "workers" (contexts) race for permits through one store.
        let cfg = load(WEB).unwrap();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        for _ in 0..5 {
            call(&cfg, &store, 0, 10, 500, &mut ev);
        }
        let admitted = (0..20)
            .filter(|i| {
                let mut h = at(5_010 + i);
                on_request_headers(&cfg, &mut h, &store, &mut ev).0 == Verdict::Continue
            })
            .count();
        assert_eq!(admitted, 2);
    }

    /// A store where another worker takes a half-open permit between every
    /// read and write of ours, so that our CAS write loses and retries.
    struct Contended<'a> {
        inner: MemorySharedData,
        cfg: &'a Compiled,
        rivals: std::cell::Cell<u32>,
        rival_admitted: std::cell::Cell<u32>,
    }
    impl SharedData for Contended<'_> {
        fn get(&self, key: &str) -> Result<filter_core::shared::Versioned, SharedError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
            if cas.is_some() && self.rivals.get() > 0 {
                self.rivals.set(self.rivals.get() - 1);
                let mut h = at(5_010);
                let (v, _) = on_request_headers(self.cfg, &mut h, &self.inner, &mut Vec::new());
                if v == Verdict::Continue {
                    self.rival_admitted.set(self.rival_admitted.get() + 1);
                }
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn racing_workers_never_take_more_than_the_permits() {
        let cfg = load(WEB).unwrap();
        for rivals in 0..4 {
            let store = Contended {
                inner: MemorySharedData::new(),
                cfg: &cfg,
                rivals: std::cell::Cell::new(0),
                rival_admitted: std::cell::Cell::new(0),
            };
            let mut ev = Vec::new();
            for _ in 0..5 {
                call(&cfg, &store.inner, 0, 10, 500, &mut ev);
            }
            store.rivals.set(rivals);
            let mine = (0..5)
                .filter(|i| {
                    let mut h = at(5_010 + i);
                    on_request_headers(&cfg, &mut h, &store, &mut ev).0 == Verdict::Continue
                })
                .count() as u32;
            assert_eq!(mine + store.rival_admitted.get(), 2, "rivals {rivals}");
        }
    }
}
