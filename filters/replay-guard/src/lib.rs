//! # replay-guard: signed app requests, once only
//!
//! Runs on the app gateway right after sanitize and enforces, on every
//! route that is not configured `open`:
//! * an RFC 9421 HTTP Message Signature (`Signature-Input` / `Signature`,
//!   `hmac-sha256`) covering the route's components, `@query` when there is
//!   a query and `content-digest` when there is a body; `created` inside
//!   `[now - max_age, now + max_skew]`, `expires` honoured, `nonce` and
//!   `keyid` required; constant-time comparison;
//! * short-lived keys: key id `<device>:<user>:<expiry>[:<version>]`, key =
//!   HMAC-SHA256(master secret, key id); expired key ids refused; up to four
//!   master secrets by version (rotation without downtime);
//! * RFC 9530 `Content-Digest` (sha-256, sha-512) against the body received,
//!   with the headers held until it is checked, so a failing request never
//!   reaches the upstream;
//! * each nonce accepted once, in a bounded, time-bucketed store in Envoy
//!   shared data that every worker sees (see [`nonce`]); full → refused;
//! * the verified device and user handed to fds-block and passport through
//!   filter state ([`filter_core::identity`]);
//! * reports of invalid signatures, digest mismatches and replays to the
//!   FDS service, sent from the root context without delaying the denial,
//!   coalesced per suspect in a bounded table and rate-limited per worker
//!   ([`report`], [`coalesce`]).
//!
//! Every failure is a 401 JSON denial naming the check in general terms
//! (413 for a body too large to buffer). The decision code lives in
//! [`config`], [`sig`], [`digest`], [`keyid`], [`nonce`], [`report`] and
//! [`filter`], plain Rust tested natively; the proxy-wasm glue below only
//! moves data. The per-request decision is a pure core,
//! [`filter::decide`]: [`filter::decide_headers`] takes the header map read
//! once ([`filter_core::request::RequestView`]), the `:path` sanitize saved,
//! the nonce store and the clock as values, and either decides or hands
//! back the verified signature's [`filter::BodyState`] for
//! [`filter::decide_body_chunk`] / [`filter::decide_body`]; each decision is
//! a [`filter::Ruling`] (the [`filter_core::request::Decision`] to apply,
//! the outcome, the report to queue), with no host call. The
//! `Request::on_headers` / `on_body` / `on_trailers` adapters in [`filter`]
//! read the host, call the core and apply the ruling.
//! Config reference: `docs/filters/replay-guard.md`.

pub mod coalesce;
pub mod config;
pub mod digest;
pub mod filter;
pub mod keyid;
pub mod nonce;
pub mod report;
pub mod sig;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    #[cfg(not(gateway_native))]
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::{Duration, UNIX_EPOCH};

    use filter_core::proxy::{self, ProxyHost, ProxySharedData};
    use filter_core::store::ClaimAnswer;
    use filter_core::Verdict;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    use crate::coalesce::{Recorded, ReportQueue};
    use crate::config::{self, Compiled};
    use crate::filter::{Outcome, Request};

    const TICK: Duration = Duration::from_millis(200);

    filter_core::filter_entry!(root);

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    /// Labelled decision counters (docs/operations.md), defined on first use.
    const VERIFIED: &str = "replay_guard_verified_total";
    const DENIED: &str = "replay_guard_denied_total";
    const DRY_RUN_DENIED: &str = "replay_guard_dry_run_denied_total";

    filter_core::metric_set! {
        struct Metrics {
            open: counter("replay_guard_open_total"),
            invalid_signature: counter("replay_guard_invalid_signature_total"),
            replay: counter("replay_guard_replay_total"),
            store_refused: counter("replay_guard_nonce_store_refused_total"),
            reports_sent: counter("replay_guard_reports_sent_total"),
            reports_dropped: counter("replay_guard_reports_dropped_total"),
            report_suspects_evicted: counter("replay_guard_report_suspects_evicted_total"),
            store_claimed: counter("replay_guard_store_claimed_total"),
            store_replayed: counter("replay_guard_store_replayed_total"),
            store_unavailable: counter("replay_guard_store_unavailable_total"),
            store_local_replay: counter("replay_guard_store_local_replay_total"),
        }
    }

    fn increment_by(id: Option<u32>, n: u64) {
        if let (Some(id), Ok(n @ 1..)) = (id, i64::try_from(n)) {
            let _ = proxy_wasm::hostcalls::increment_metric(id, n);
        }
    }

    fn now_ms(t: std::time::SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Report events handed from request contexts to a root context's tick,
    /// which sends them at the rate limit. In wasm one queue per root (per
    /// VM, so per worker). Natively one per configuration, shared by the
    /// roots of every thread: a native worker's roots tick only while it
    /// has streams (docs/native.md, "Ticks and root callouts"), so the main
    /// thread's root, which ticks on time, sends what an idle worker queued.
    #[derive(Clone)]
    struct Outbox(
        #[cfg(not(gateway_native))] Rc<RefCell<ReportQueue>>,
        #[cfg(gateway_native)] std::sync::Arc<std::sync::Mutex<ReportQueue>>,
    );

    impl Outbox {
        #[cfg(not(gateway_native))]
        fn new(_config: &[u8], q: impl FnOnce() -> ReportQueue) -> Self {
            Outbox(Rc::new(RefCell::new(q())))
        }

        /// The queue of this configuration (its JSON bytes), made by `q` if
        /// no live root has it; the registry holds weak references, so a
        /// replaced configuration's queue goes with its last root.
        #[cfg(gateway_native)]
        fn new(config: &[u8], q: impl FnOnce() -> ReportQueue) -> Self {
            use std::collections::HashMap;
            use std::sync::{Arc, Mutex, OnceLock, Weak};
            type Registry = Mutex<HashMap<Vec<u8>, Weak<Mutex<ReportQueue>>>>;
            static QUEUES: OnceLock<Registry> = OnceLock::new();
            let mut reg = QUEUES
                .get_or_init(Registry::default)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            reg.retain(|_, w| w.strong_count() > 0);
            if let Some(live) = reg.get(config).and_then(Weak::upgrade) {
                return Outbox(live);
            }
            let fresh = Arc::new(Mutex::new(q()));
            reg.insert(config.to_vec(), Arc::downgrade(&fresh));
            Outbox(fresh)
        }

        fn with<R>(&self, f: impl FnOnce(&mut ReportQueue) -> R) -> R {
            #[cfg(not(gateway_native))]
            return f(&mut self.0.borrow_mut());
            #[cfg(gateway_native)]
            return f(&mut self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }

    #[derive(Default)]
    struct Root {
        config: Option<Rc<Compiled>>,
        metrics: Option<Rc<Metrics>>,
        /// Report events handed from request contexts to the root context.
        outbox: Option<Outbox>,
    }

    impl Context for Root {
        fn on_http_call_response(&mut self, _token: u32, _h: usize, _b: usize, _t: usize) {
            // Fire and forget: the FDS answer changes nothing here.
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let env = |name: &str| std::env::var(name).ok();
            let Some(c) = proxy::load_plugin_config("replay-guard", |b| config::load(b, &env))
            else {
                return false;
            };
            if let Err(e) = c.store.create_keys(&ProxySharedData) {
                log::error!("replay-guard: cannot create the nonce store keys: {e}");
                return false;
            }
            log::info!(
                "replay-guard: configured with {} route rule(s), {} secret version(s), nonce store {} entries ({} bytes at the bound)",
                c.routes.len(),
                c.secrets.len(),
                c.store.capacity(),
                c.store.memory_at_bound()
            );
            if let Some(r) = &c.reports {
                let raw = self.get_plugin_configuration().unwrap_or_default();
                self.outbox = Some(Outbox::new(&raw, || {
                    ReportQueue::new(r.per_minute, r.burst, r.max_suspects)
                }));
                proxy::set_tick_period(TICK);
            }
            self.config = Some(Rc::new(c));
            self.metrics = Some(Rc::new(Metrics::define()));
            true
        }

        fn on_tick(&mut self) {
            let (Some(cfg), Some(outbox), Some(m)) = (&self.config, &self.outbox, &self.metrics)
            else {
                return;
            };
            let Some(r) = &cfg.reports else { return };
            // The decision (which suspects, how many) is the queue's.
            let now = now_ms(self.get_current_time());
            let due = outbox.with(|q| q.drain(now));
            for rep in due {
                let body = rep.body();
                let headers = vec![
                    (":method", "POST"),
                    (":path", r.path.as_str()),
                    (":authority", r.authority.as_str()),
                    ("content-type", "application/json"),
                ];
                match self.dispatch_http_call(&r.cluster, headers, Some(&body), vec![], r.timeout) {
                    Ok(_) => proxy::increment(m.reports_sent),
                    Err(e) => {
                        outbox.with(|q| q.send_failed(&rep));
                        increment_by(m.reports_dropped, rep.count);
                        log::warn!(
                            "replay-guard: report to cluster {} failed: {e:?}",
                            r.cluster
                        );
                    }
                }
            }
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Http {
                config: self.config.clone()?,
                metrics: self.metrics.clone()?,
                outbox: self.outbox.clone(),
                req: Request::default(),
                buffered: 0,
                counted: false,
                claim_token: None,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        outbox: Option<Outbox>,
        req: Request,
        buffered: usize,
        counted: bool,
        /// The nonce claim in flight (its callout's token).
        claim_token: Option<(u32, Box<crate::filter::PendingNonce>)>,
    }

    impl Http {
        /// Sends the pending nonce claim (a verdict of `WaitCallout`) to
        /// the shared store and holds the request until it answers; then
        /// counts and reports like any decision.
        fn after(&mut self, v: Verdict) -> Action {
            if v != Verdict::WaitCallout {
                return self.settled(v);
            }
            let (Some(p), Some(store)) = (self.req.take_claim(), self.config.shared_store.as_ref())
            else {
                return self.settled(v);
            };
            match proxy::dispatch_claim(store, &p.claim) {
                Ok(token) => {
                    self.claim_token = Some((token, p));
                    Action::Pause
                }
                Err(e) => {
                    log::warn!(
                        "replay-guard: cannot reach the shared store ({}): {e:?}",
                        store.cluster
                    );
                    self.answer(*p, ClaimAnswer::Unavailable)
                }
            }
        }

        /// Applies the shared store's answer to the paused request.
        fn answer(&mut self, p: crate::filter::PendingNonce, a: ClaimAnswer) -> Action {
            let v = self
                .req
                .on_claim_answer(&self.config, &mut ProxyHost, &ProxySharedData, p, a);
            let m = &self.metrics;
            match a {
                ClaimAnswer::Claimed => proxy::increment(m.store_claimed),
                ClaimAnswer::Taken => proxy::increment(m.store_replayed),
                ClaimAnswer::Unavailable => proxy::increment(m.store_unavailable),
            }
            self.settled(v)
        }

        /// Counts the outcome once and queues a report, if any.
        fn settled(&mut self, v: Verdict) -> Action {
            if self.req.local_replay {
                self.req.local_replay = false;
                proxy::increment(self.metrics.store_local_replay);
            }
            if let (Some(event), Some(outbox)) = (self.req.report.take(), &self.outbox) {
                match outbox.with(|q| q.record(event)) {
                    Recorded::Coalesced | Recorded::New => {}
                    Recorded::NewEvicting { dropped } => {
                        proxy::increment(self.metrics.report_suspects_evicted);
                        increment_by(self.metrics.reports_dropped, dropped);
                    }
                    Recorded::Refused => {
                        proxy::increment(self.metrics.report_suspects_evicted);
                        proxy::increment(self.metrics.reports_dropped);
                    }
                }
            }
            if !self.counted && self.req.outcome != Outcome::Pending {
                self.counted = true;
                let m = &self.metrics;
                // Decisions are labelled by gateway and route (denials also
                // by reason); open routes are not, to keep them free of the
                // two property reads.
                let labelled = |req: &crate::filter::Request, name: &str, reason: Option<&str>| {
                    let names = req
                        .names
                        .clone()
                        .unwrap_or_else(|| filter_core::decision::route_names(&ProxyHost));
                    let mut tags = vec![
                        ("gateway", names.gateway.as_str()),
                        ("route", names.route.as_str()),
                    ];
                    if let Some(r) = reason {
                        tags.push(("reason", r));
                    }
                    proxy::increment_tagged(name, &tags);
                };
                match self.req.outcome {
                    Outcome::Open => proxy::increment(m.open),
                    Outcome::Verified => labelled(&self.req, VERIFIED, None),
                    Outcome::DryRunDenied(code) => labelled(&self.req, DRY_RUN_DENIED, Some(code)),
                    Outcome::Denied(code) => {
                        labelled(&self.req, DENIED, Some(code));
                        match code {
                            "signature_invalid" | "digest_invalid" => {
                                proxy::increment(m.invalid_signature)
                            }
                            "replay" => proxy::increment(m.replay),
                            "replay_check_unavailable" => proxy::increment(m.store_refused),
                            _ => {}
                        }
                    }
                    Outcome::Pending => {}
                }
            }
            proxy::action(v)
        }
    }

    impl Context for Http {
        fn on_http_call_response(&mut self, token: u32, _h: usize, _b: usize, _t: usize) {
            let Some((t, p)) = self.claim_token.take() else {
                return;
            };
            if t != token {
                self.claim_token = Some((t, p));
                return;
            }
            if self.answer(*p, proxy::claim_answer()) == Action::Continue {
                // the proxy wrapper: in the chain build the filters after this one run first
                proxy::resume_http_request();
            }
        }
    }

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            let v = self.req.on_headers(
                &self.config,
                &mut ProxyHost,
                &ProxySharedData,
                end_of_stream,
            );
            self.after(v)
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.buffered = body_size;
            let v = self.req.on_body(
                &self.config,
                &mut ProxyHost,
                &ProxySharedData,
                body_size,
                end_of_stream,
            );
            self.after(v)
        }

        fn on_http_request_trailers(&mut self, _n: usize) -> Action {
            let v = self.req.on_trailers(
                &self.config,
                &mut ProxyHost,
                &ProxySharedData,
                self.buffered,
            );
            self.after(v)
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
