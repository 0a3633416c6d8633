//! # route-breaker: per-route circuit breakers at the edge
//!
//! Runs last before the router on every gateway listener and guards the
//! routes its config names (path prefix + methods, and/or Envoy's route
//! name) with Resilience4j's CircuitBreaker semantics: failure-rate and
//! slow-call-rate thresholds over a count- or time-based sliding window,
//! a minimum number of calls, a wait in OPEN, then a fixed number of
//! HALF_OPEN probes that decide between OPEN and CLOSED.
//!
//! * An open breaker answers **503** `{"error":"circuit_open", …}` with
//!   `Retry-After` (seconds left, at least 1) from the request headers
//!   callback: the upstream sees nothing.
//! * The state of each breaker is one shared-data key, read and updated with
//!   compare-and-swap, so every Envoy worker sees the same state: when one
//!   opens it, all answer 503; HALF_OPEN admits exactly the permitted number
//!   of probes across all workers.
//! * An outcome is recorded once, at the end of the stream (the access-log
//!   callback: one VM entry, no response-headers callback): a failure when
//!   the response status is one of `failure_statuses` (5xx by default) or
//!   Envoy's response flags say the upstream reset, refused, or timed out;
//!   slow when the call took longer than `slow_call_duration_threshold`
//!   from the moment this filter let the request go to the end of the
//!   response. A call that got no response at all counts as a failure if
//!   the upstream failed, and is ignored if the client went away.
//!
//! [`breaker`] is the pure state machine (property-tested against a
//! reference model), [`config`] the config, [`filter`] the request logic;
//! the proxy-wasm glue below only moves data in and out. Config reference:
//! `docs/filters/route-breaker.md`.

pub mod breaker;
pub mod config;
pub mod decide;
pub mod filter;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::cell::Cell;
    use std::rc::Rc;

    use filter_core::metrics;
    use filter_core::proxy::{self, ProxyHost, ProxySharedData};
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    use crate::breaker::Phase;
    use crate::config::{self, Compiled};
    use crate::filter::{self, Call, Event};

    filter_core::filter_entry!(root);

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    /// Metrics of one breaker: `route_breaker_<thing>{gateway=<scope>,route=<route>}`
    /// (labels by Envoy tag extraction, `filter_core::metrics`), defined at
    /// configure time: at most `MAX_ROUTES` breakers per configuration.
    struct RouteMetrics {
        /// 0 closed, 1 open, 2 half-open (set by the worker that made the last transition).
        state: Option<u32>,
        transitions: Option<u32>,
        opened: Option<u32>,
        rejected: Option<u32>,
        /// Dry run: would have rejected (`reason="circuit_open"`).
        dry_run_denied: Option<u32>,
        calls: Option<u32>,
        failures: Option<u32>,
        slow_calls: Option<u32>,
        failure_rate: Option<u32>,
        slow_call_rate: Option<u32>,
        store_errors: Option<u32>,
        /// The rates this worker last wrote (skip unchanged writes: the
        /// hot path of a closed breaker records on every response).
        last_rates: Cell<Option<(u64, u64)>>,
    }

    impl RouteMetrics {
        fn define(scope: &str, route: &str) -> Self {
            let tags = [("gateway", scope), ("route", route)];
            let n = |thing: &str| metrics::tagged(&format!("route_breaker_{thing}"), &tags);
            RouteMetrics {
                state: proxy::gauge(&n("state")),
                transitions: proxy::counter(&n("transitions_total")),
                opened: proxy::counter(&n("opened_total")),
                rejected: proxy::counter(&n("rejected_total")),
                dry_run_denied: proxy::counter(&metrics::tagged(
                    "route_breaker_dry_run_denied_total",
                    &[
                        ("gateway", scope),
                        ("route", route),
                        ("reason", "circuit_open"),
                    ],
                )),
                calls: proxy::counter(&n("calls_total")),
                failures: proxy::counter(&n("failures_total")),
                slow_calls: proxy::counter(&n("slow_calls_total")),
                failure_rate: proxy::gauge(&n("failure_rate_percent")),
                slow_call_rate: proxy::gauge(&n("slow_call_rate_percent")),
                store_errors: proxy::counter(&n("store_errors_total")),
                last_rates: Cell::new(None),
            }
        }

        /// Transitions are rare: every one sets the gauge.
        fn observe(&self, phase: Phase) {
            proxy::record(self.state, phase.gauge());
        }
    }

    struct Shared {
        config: Compiled,
        metrics: Vec<RouteMetrics>,
    }

    impl Shared {
        fn emit(&self, events: &[Event]) {
            for e in events {
                match e {
                    Event::Transition { route, transition } => {
                        let Some(m) = self.metrics.get(*route) else {
                            continue;
                        };
                        proxy::increment(m.transitions);
                        if transition.to == Phase::Open {
                            proxy::increment(m.opened);
                        }
                        m.observe(transition.to);
                        let name = self
                            .config
                            .routes
                            .get(*route)
                            .map_or("?", |r| r.name.as_str());
                        log::info!(
                            "route-breaker: {}/{name}: {} -> {}",
                            self.config.name,
                            transition.from,
                            transition.to
                        );
                    }
                    Event::Rejected { route } => {
                        let Some(m) = self.metrics.get(*route) else {
                            continue;
                        };
                        proxy::increment(m.rejected);
                    }
                    Event::DryRunRejected { route } => {
                        let Some(m) = self.metrics.get(*route) else {
                            continue;
                        };
                        proxy::increment(m.dry_run_denied);
                    }
                    Event::Recorded {
                        route,
                        failed,
                        slow,
                        rates,
                    } => {
                        let Some(m) = self.metrics.get(*route) else {
                            continue;
                        };
                        proxy::increment(m.calls);
                        if *failed {
                            proxy::increment(m.failures);
                        }
                        if *slow {
                            proxy::increment(m.slow_calls);
                        }
                        if let Some((f, s)) = rates {
                            let now = (f.round() as u64, s.round() as u64);
                            if m.last_rates.replace(Some(now)) != Some(now) {
                                proxy::record(m.failure_rate, now.0);
                                proxy::record(m.slow_call_rate, now.1);
                            }
                        }
                    }
                    Event::StoreError { route, error } => {
                        if let Some(m) = self.metrics.get(*route) {
                            proxy::increment(m.store_errors);
                        }
                        log::warn!("route-breaker: state store: {error}; request let through");
                    }
                }
            }
        }
    }

    #[derive(Default)]
    struct Root {
        shared: Option<Rc<Shared>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(config) = proxy::load_plugin_config("route-breaker", config::load) else {
                return false;
            };
            if let Err(e) = filter::init_store(&config, &ProxySharedData) {
                log::error!("route-breaker: could not initialise the breaker state: {e}");
                return false;
            }
            let metrics = config
                .routes
                .iter()
                .map(|r| RouteMetrics::define(&config.name, &r.name))
                .collect();
            log::info!(
                "route-breaker: {} configured with {} breaker(s)",
                config.name,
                config.routes.len()
            );
            self.shared = Some(Rc::new(Shared { config, metrics }));
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            let shared = self.shared.clone()?;
            Some(Box::new(Http {
                shared,
                call: None,
                events: Vec::new(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        shared: Rc<Shared>,
        call: Option<Call>,
        events: Vec<Event>,
    }

    impl Http {
        fn flush(&mut self) {
            if !self.events.is_empty() {
                self.shared.emit(&self.events);
                self.events.clear();
            }
        }
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            let (v, call) = filter::on_request_headers(
                &self.shared.config,
                &mut ProxyHost,
                &ProxySharedData,
                &mut self.events,
            );
            self.call = call;
            self.flush();
            proxy::action(v)
        }

        fn on_log(&mut self) {
            if let Some(call) = self.call.as_mut() {
                filter::on_log(
                    &self.shared.config,
                    &ProxyHost,
                    &ProxySharedData,
                    call,
                    &mut self.events,
                );
                self.flush();
            }
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
