//! route-breaker's decisions as pure functions, no host call: whether a
//! request is admitted ([`admit`]: the request line, the route name and the
//! clock in, read lazily; the breaker state behind the `SharedData` seam)
//! and how a finished call counts ([`response_outcome`], [`log_outcome`]).
//! The host adapters in [`crate::filter`] read the inputs, send the 503 and
//! write the decision log, so every build runs the same code.

use filter_core::route::split_path;
use filter_core::shared::{self, SharedData, Update};

use crate::breaker::{Admission, Outcome};
use crate::config::{Compiled, CompiledRoute};
use crate::filter::{flags, load_state, Call, Event, CAS_ATTEMPTS};

/// What [`admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// No breaker guards this request.
    Unguarded,
    /// Admitted on a guarded route: the call to record at its end.
    Call(Call),
    /// The breaker refuses it (in dry run: only logged, the call goes on
    /// unrecorded): 503 `circuit_open`, `Retry-After: retry_after_s`.
    Reject {
        route: usize,
        method: String,
        retry_after_s: u64,
    },
}

/// The admission decision. `full_path`: `:path`; `method`, `route_name`
/// (Envoy's, read only when a breaker matches by route name) and `now_ms`
/// are asked for only once a breaker's path covers the request. Breaker
/// transitions and store errors are pushed to `events`, and so is the
/// rejection (`Rejected`, or `DryRunRejected` in dry run).
pub fn admit<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    full_path: &str,
    method: impl FnOnce() -> String,
    route_name: impl FnOnce() -> Option<String>,
    now_ms: impl FnOnce() -> u64,
    events: &mut Vec<Event>,
) -> Admitted {
    let (path, _) = split_path(full_path);
    if !cfg.routes.iter().any(|r| r.matcher.matches_path(path)) {
        return Admitted::Unguarded;
    }
    let method = method();
    let route_name = if cfg.uses_route_name {
        route_name()
    } else {
        None
    };
    let Some(idx) = cfg.route(&method, path, route_name.as_deref()) else {
        return Admitted::Unguarded;
    };
    let Some(route) = cfg.routes.get(idx) else {
        return Admitted::Unguarded;
    };
    let now = now_ms();
    let decided = shared::update(store, &route.key, CAS_ATTEMPTS, |bytes| {
        let mut st = load_state(route, bytes);
        let (admission, transition, changed) = st.acquire(&route.settings, now);
        if changed {
            Update::Write(st.encode(), (admission, transition))
        } else {
            Update::Keep((admission, transition))
        }
    });
    let (admission, transition) = match decided {
        Ok(d) => d,
        Err(error) => {
            // The breaker guards availability; a store it cannot reach must
            // not turn into an outage of the route.
            events.push(Event::StoreError { route: idx, error });
            return Admitted::Call(Call {
                route: idx,
                ticket: None,
                started_ms: now,
                done: true,
            });
        }
    };
    if let Some(transition) = transition {
        events.push(Event::Transition {
            route: idx,
            transition,
        });
    }
    match admission {
        Admission::Admit(ticket) => Admitted::Call(Call {
            route: idx,
            ticket: Some(ticket),
            started_ms: now,
            done: false,
        }),
        Admission::Reject { retry_after_ms } => {
            events.push(if cfg.dry_run {
                Event::DryRunRejected { route: idx }
            } else {
                Event::Rejected { route: idx }
            });
            Admitted::Reject {
                route: idx,
                method,
                retry_after_s: retry_after_ms.div_ceil(1000).max(1),
            }
        }
    }
}

/// How a call whose response headers came through counts: a failure if the
/// upstream failed (Envoy's response `flags`) or the status is one of the
/// route's failure statuses (no status: a failure); slow past the route's
/// threshold.
pub fn response_outcome(
    route: &CompiledRoute,
    status: Option<u16>,
    response_flags: u64,
    elapsed_ms: u64,
) -> Outcome {
    let upstream_failed = response_flags & flags::UPSTREAM_FAILURE != 0;
    Outcome::Counted {
        failed: upstream_failed || status.is_none_or(|s| route.is_failure_status(s)),
        slow: route.settings.is_slow(elapsed_ms),
    }
}

/// How a call counts at the end of the stream when no response headers came
/// through: a failure if the upstream failed, otherwise (the client went
/// away first) not counted.
pub fn log_outcome(route: &CompiledRoute, response_flags: u64, elapsed_ms: u64) -> Outcome {
    if response_flags & flags::UPSTREAM_FAILURE != 0 {
        Outcome::Counted {
            failed: true,
            slow: route.settings.is_slow(elapsed_ms),
        }
    } else {
        Outcome::Ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::filter::init_store;
    use filter_core::shared::MemorySharedData;

    fn web() -> Compiled {
        load(include_bytes!(
            "../../../examples/config/route-breaker/web.json"
        ))
        .unwrap()
    }

    #[test]
    fn an_unguarded_path_costs_no_other_input() {
        let cfg = web();
        let store = MemorySharedData::new();
        let mut ev = Vec::new();
        let a = admit(
            &cfg,
            &store,
            "/api/v1/users/1",
            || panic!("no method"),
            || panic!("no route name"),
            || panic!("no clock"),
            &mut ev,
        );
        assert_eq!(a, Admitted::Unguarded);
        assert!(ev.is_empty());
    }

    #[test]
    fn a_guarded_call_is_admitted_and_failures_open_the_breaker() {
        let cfg = web();
        let store = MemorySharedData::new();
        init_store(&cfg, &store).unwrap();
        let route = &cfg.routes[0];
        let mut ev = Vec::new();
        let mut now = 1_000_000u64;
        let mut rejected = false;
        for _ in 0..20 {
            now += 10;
            match admit(
                &cfg,
                &store,
                "/api/v1/unstable/x?status=500",
                || "GET".into(),
                || Some("unstable".into()),
                || now,
                &mut ev,
            ) {
                Admitted::Call(mut call) => {
                    let outcome = response_outcome(route, Some(500), 0, 5);
                    crate::filter::record_outcome(&cfg, &store, &mut call, outcome, now, &mut ev);
                }
                Admitted::Reject { retry_after_s, .. } => {
                    assert!(retry_after_s >= 1);
                    rejected = true;
                    break;
                }
                Admitted::Unguarded => panic!("the unstable route is guarded"),
            }
        }
        assert!(rejected, "the breaker opened: {ev:?}");
        assert!(ev.iter().any(|e| matches!(e, Event::Rejected { .. })));
    }

    #[test]
    fn outcomes_classify_status_flags_and_time() {
        let cfg = web();
        let route = &cfg.routes[0];
        assert_eq!(
            response_outcome(route, Some(200), 0, 1),
            Outcome::Counted {
                failed: false,
                slow: false
            }
        );
        assert!(matches!(
            response_outcome(route, None, 0, 1),
            Outcome::Counted { failed: true, .. }
        ));
        assert!(matches!(
            response_outcome(route, Some(200), flags::UPSTREAM_REQUEST_TIMEOUT, 1),
            Outcome::Counted { failed: true, .. }
        ));
        assert!(matches!(
            response_outcome(route, Some(200), 0, 60_000),
            Outcome::Counted { slow: true, .. }
        ));
        assert_eq!(log_outcome(route, 0, 1), Outcome::Ignored);
        assert!(matches!(
            log_outcome(route, flags::LOCAL_RESET, 1),
            Outcome::Counted { failed: true, .. }
        ));
    }
}
