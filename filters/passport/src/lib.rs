//! # passport: one user-context lookup per transaction, signed and forwarded
//!
//! For a request that carries a verified identity (published by jwt on the
//! web gateway, by replay-guard on the app gateway, read with
//! [`filter_core::identity::Identity::read`], never from a header), the
//! filter forwards `x-passport`: a compact JWS (ES256, `kid` in its header)
//! with `iss` (the gateway), `sub` (the user), `iat`, a short `exp`,
//! `ctx_iat` (when the context was looked up) and the issuer's context
//! (`device_id`, `consents`, `risk_level`, `tier` by default), plus
//! configured headers derived from it (`x-user-consent`, `x-user-risk`).
//! Client copies of `x-passport` and of those headers are removed from every
//! request, with or without an identity.
//!
//! The context comes from the issuer service (`dispatch_http_call`, with a
//! timeout) and is cached in shared data for every worker, signed token
//! included, so a hit costs neither a lookup nor a signature. Concurrent
//! misses for the same user, on any worker, cause one lookup ([`cache`],
//! [`coalesce`]). Unknown users are denied (403 `unknown_user`, or forwarded
//! without a passport by config) and remembered briefly; an issuer that is
//! down or slow gives 503 `passport_unavailable` with `Retry-After`, or a
//! re-signed stale passport when configured.
//!
//! The decisions live in [`config`], [`signer`], [`cache`], [`filter`] and
//! [`coalesce`], plain Rust tested natively; the proxy-wasm glue below only
//! moves data in and out. Reference: `docs/filters/passport.md`.

pub mod cache;
pub mod coalesce;
pub mod config;
pub mod decide;
pub mod filter;
pub mod signer;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::{Duration, UNIX_EPOCH};

    use filter_core::proxy::{self, ProxyHost, ProxySharedData};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    use crate::cache::{self, CacheKey};
    use crate::coalesce::{self, Waiter, Waiters};
    use crate::config::{self, Compiled};
    use crate::filter::{self, Finished, LookupError, Resolution, Start};

    filter_core::filter_entry!(root);

    fn root(context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root {
            id: context_id,
            state: None,
        })
    }

    /// Labelled denial counters (docs/operations.md), defined on first use;
    /// `reason` is `unknown_user` or `passport_unavailable`.
    const DENIED: &str = "passport_denied_total";
    const DRY_RUN_DENIED: &str = "passport_dry_run_denied_total";

    filter_core::metric_set! {
        /// Counters (and one histogram), defined once per plugin configuration.
        struct Metrics {
            hit: counter("passport_hit_total"),
            miss: counter("passport_miss_total"),
            coalesced: counter("passport_coalesced_total"),
            lookup: counter("passport_lookup_total"),
            stale: counter("passport_stale_served_total"),
            issuer_error: counter("passport_issuer_error_total"),
            unknown: counter("passport_unknown_user_total"),
            unavailable: counter("passport_unavailable_total"),
            wait_timeout: counter("passport_wait_timeout_total"),
            latency: histogram("passport_issuer_latency_ms"),
        }
    }

    impl Metrics {
        /// Counts how a request ended; called with the request as the
        /// effective context (the labels are its gateway and route).
        fn finished(&self, f: Finished) {
            match f {
                Finished::Passport => {}
                Finished::Stale => proxy::increment(self.stale),
                Finished::UnknownDenied | Finished::UnknownForwarded | Finished::UnknownDryRun => {
                    proxy::increment(self.unknown)
                }
                Finished::Unavailable | Finished::UnavailableDryRun => {
                    proxy::increment(self.unavailable)
                }
            }
            if let Some(reason) = f.denial_reason() {
                // Denial path only: the two property reads of the labels.
                let names = filter_core::decision::route_names(&ProxyHost);
                proxy::increment_tagged(
                    if f.dry_run() { DRY_RUN_DENIED } else { DENIED },
                    &[
                        ("gateway", names.gateway.as_str()),
                        ("route", names.route.as_str()),
                        ("reason", reason),
                    ],
                );
            }
        }
    }

    /// What a root context shares with its HTTP contexts.
    struct State {
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        waiters: Rc<RefCell<Waiters>>,
        ticking: Rc<Cell<bool>>,
    }

    struct Root {
        id: u32,
        state: Option<State>,
    }

    fn now_ms() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    impl Context for Root {
        fn on_http_call_response(
            &mut self,
            token: u32,
            _headers: usize,
            body_size: usize,
            _trailers: usize,
        ) {
            let Some(s) = &self.state else { return };
            let cfg = &s.config;
            let now = now_ms();
            let status = proxy::header(MapType::HttpCallResponseHeaders, ":status")
                .and_then(|v| v.parse::<u16>().ok());
            let body =
                self.get_http_call_response_body(0, body_size.min(cfg.max_response_bytes + 1));
            let Some((key, started)) = s.waiters.borrow_mut().lookup_finished(token) else {
                return;
            };
            proxy::record(s.metrics.latency, now.saturating_sub(started));
            let result = filter::lookup_result(cfg, &key, status, body.as_deref(), now);
            if let Err(e) = &result {
                proxy::increment(s.metrics.issuer_error);
                log::warn!("passport: lookup failed: {e}");
            }
            let res = filter::complete(cfg, &ProxySharedData, &key, &result, now);
            let waiting = s.waiters.borrow_mut().take(&key);
            self.finish_all(waiting.into_iter().map(|w| (w.id, res.clone())).collect());
        }
    }

    impl Root {
        /// Starts the lookup of `key` from this root context.
        fn dispatch(&self, key: CacheKey, now: u64) -> Result<(), Vec<(u32, Resolution)>> {
            let Some(s) = &self.state else { return Ok(()) };
            let cfg = &s.config;
            let Some(path) = cfg.path.render(&key.user, key.device.as_deref()) else {
                // on_request_headers never waits for such a key; if one got
                // here, nobody asks the issuer for it.
                let waiting = s.waiters.borrow_mut().take(&key);
                return Err(waiting
                    .into_iter()
                    .map(|w| (w.id, Resolution::Unknown))
                    .collect());
            };
            let headers = vec![
                (":method", "GET"),
                (":path", path.as_str()),
                (":authority", cfg.authority.as_str()),
                ("accept", "application/json"),
            ];
            match self.dispatch_http_call(&cfg.cluster, headers, None, vec![], cfg.timeout) {
                Ok(token) => {
                    proxy::increment(s.metrics.lookup);
                    s.waiters.borrow_mut().lookup_started(token, key, now);
                    Ok(())
                }
                Err(e) => {
                    log::warn!("passport: cannot reach cluster {}: {e:?}", cfg.cluster);
                    proxy::increment(s.metrics.issuer_error);
                    let res = filter::complete(
                        cfg,
                        &ProxySharedData,
                        &key,
                        &Err(LookupError::NoAnswer),
                        now,
                    );
                    let waiting = s.waiters.borrow_mut().take(&key);
                    Err(waiting.into_iter().map(|w| (w.id, res.clone())).collect())
                }
            }
        }

        /// Finishes waiting requests: each becomes the effective context in
        /// turn, gets its headers or its local reply, and is resumed. A
        /// request that is gone is skipped. No RefCell borrow is held here.
        fn finish_all(&self, list: Vec<(u32, Resolution)>) {
            let Some(s) = &self.state else { return };
            for (id, res) in list {
                if proxy::set_effective_context(id).is_err() {
                    continue;
                }
                let f = filter::finish(&s.config, &mut ProxyHost, &res);
                s.metrics.finished(f);
                if f.forwarded() {
                    proxy::resume_http_request();
                }
            }
            let _ = proxy::set_effective_context(self.id);
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(c) = proxy::load_plugin_config("passport", config::load) else {
                return false;
            };
            if let Err(e) = cache::create_slots(&ProxySharedData, &c.gateway, c.slots) {
                log::warn!("passport: creating cache slots: {e}");
            }
            log::info!(
                "passport: configured for gateway {} (kid {}, {} cache slots)",
                c.gateway,
                c.signer.kid(),
                c.slots
            );
            self.state = Some(State {
                config: Rc::new(c),
                metrics: Rc::new(Metrics::define()),
                waiters: Rc::new(RefCell::new(Waiters::default())),
                ticking: Rc::new(Cell::new(false)),
            });
            true
        }

        fn on_tick(&mut self) {
            let Some(s) = &self.state else {
                proxy::set_tick_period(Duration::ZERO);
                return;
            };
            let now = now_ms();
            let plan = {
                let mut w = s.waiters.borrow_mut();
                coalesce::tick(&s.config, &ProxySharedData, &mut w, now)
            };
            for _ in 0..plan.timed_out {
                proxy::increment(s.metrics.wait_timeout);
            }
            // Lookups first, while the root is still the effective context.
            let mut finish = plan.finish;
            for key in plan.start {
                if let Err(failed) = self.dispatch(key, now) {
                    finish.extend(failed);
                }
            }
            self.finish_all(finish);
            if s.waiters.borrow().is_empty() {
                s.ticking.set(false);
                proxy::set_tick_period(Duration::ZERO);
            }
        }

        fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
            let s = self.state.as_ref()?;
            Some(Box::new(Http {
                id,
                root: self.id,
                config: s.config.clone(),
                metrics: s.metrics.clone(),
                waiters: s.waiters.clone(),
                ticking: s.ticking.clone(),
                waiting: false,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        id: u32,
        root: u32,
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        waiters: Rc<RefCell<Waiters>>,
        ticking: Rc<Cell<bool>>,
        waiting: bool,
    }

    impl Http {
        /// Registers this request as a waiter and makes sure the root ticks.
        fn wait(&mut self, key: CacheKey) -> Action {
            let cfg = &self.config;
            let now = now_ms();
            let w = Waiter {
                id: self.id,
                key,
                since: now,
                deadline: now.saturating_add(cfg.max_wait_ms),
            };
            let pushed = self.waiters.borrow_mut().push(w, cfg.max_waiters);
            if pushed.is_err() {
                log::warn!(
                    "passport: {} requests already wait on this worker",
                    cfg.max_waiters
                );
                let f = filter::finish(cfg, &mut ProxyHost, &Resolution::Unavailable(None));
                self.metrics.finished(f);
                return if f.forwarded() {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            self.waiting = true;
            if !self.ticking.get() {
                // The tick period belongs to the root context: set it as the root.
                if proxy::set_effective_context(self.root).is_ok() {
                    proxy::set_tick_period(cfg.poll_interval);
                    self.ticking.set(true);
                }
                let _ = proxy::set_effective_context(self.id);
            }
            Action::Pause
        }
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            let start = {
                let waiters = &self.waiters;
                filter::on_request_headers(&self.config, &mut ProxyHost, &ProxySharedData, |k| {
                    waiters.try_borrow().is_ok_and(|w| w.waiting_for(k))
                })
            };
            match start {
                Start::NoIdentity => Action::Continue,
                Start::Hit => {
                    proxy::increment(self.metrics.hit);
                    Action::Continue
                }
                Start::Done(f) => {
                    self.metrics.finished(f);
                    if f.forwarded() {
                        Action::Continue
                    } else {
                        Action::Pause
                    }
                }
                Start::Wait { key, coalesced } => {
                    proxy::increment(self.metrics.miss);
                    if coalesced {
                        proxy::increment(self.metrics.coalesced);
                    }
                    self.wait(key)
                }
            }
        }
    }

    impl Drop for Http {
        fn drop(&mut self) {
            if self.waiting {
                if let Ok(mut w) = self.waiters.try_borrow_mut() {
                    w.remove(self.id);
                }
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
