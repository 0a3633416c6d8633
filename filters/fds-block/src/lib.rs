//! # fds-block: precise, live blocking by user, device, IP/CIDR and user+API
//!
//! Refuses (403 `{"error":"blocked","message":"request blocked"}`) a request
//! when a live block-list entry matches it:
//! * **ip**: an address or CIDR (IPv4/IPv6) containing Envoy's resolved
//!   client address (`source.address`; behind the trusted load balancer,
//!   the last `x-forwarded-for` entry, resolved by Envoy, never parsed here);
//! * **user** / **device**: the verified identity that jwt (web) or
//!   replay-guard (app) published in filter state ([`filter_core::identity`]);
//! * **user_api**: that user on one API (`"METHOD /path-prefix"`) only.
//!
//! Entries come from the static config and from the FDS feed, polled by one
//! worker per Envoy process (a lease in shared data, [`sync`]), with
//! `If-None-Match` so an unchanged list costs a 304. The list is published
//! in shared data; each worker rebuilds its local [`index::Index`] when the
//! generation changes. Entries expire at `expires_at`, checked per request.
//! A failing feed leaves the last good list in force and the feed-age gauge
//! grows. A block writes one decision line (`filter_core::decision`, no
//! key); which entry matched and its reason go to the debug log only;
//! `dry_run` logs and counts without blocking.
//!
//! Decision code: [`decide`] (the request decision, pure), [`entry`],
//! [`index`], [`feed`], [`sync`], [`filter`] (its host adapter),
//! [`config`] (plain Rust, tested natively). The proxy-wasm glue below only
//! moves data in and out. Reference: `docs/filters/fds-block.md`.

pub mod config;
pub mod decide;
pub mod entry;
pub mod feed;
pub mod filter;
pub mod index;
pub mod sync;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use filter_core::proxy::{self, ProxyHost, ProxySharedData};
    use filter_core::HttpHost;
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    use crate::config::{self, Compiled, Feed};
    use crate::entry::Kind;
    use crate::feed::{self as feedmod, FeedError};
    use crate::filter::{self, Decision, FeedView};
    use crate::index::{Counts, Index};
    use crate::sync::{self, Completed, Keys, Outcome, Poll};

    filter_core::filter_entry!(root);

    fn root(context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::new(context_id))
    }

    /// How often a worker ticks until it has the feed's list for the first time.
    const FAST_TICK: Duration = Duration::from_millis(100);

    fn set_gauge(id: Option<u32>, value: usize) {
        proxy::record(id, u64::try_from(value).unwrap_or(u64::MAX));
    }

    fn by_kind<F: Fn(&str) -> Option<u32>>(f: F, fmt: &str) -> [Option<u32>; 4] {
        Kind::ALL.map(|k| f(&fmt.replace("{}", k.as_str())))
    }

    fn kind_slot(k: Kind) -> usize {
        match k {
            Kind::User => 0,
            Kind::Device => 1,
            Kind::Ip => 2,
            Kind::UserApi => 3,
        }
    }

    /// Metrics: counters are process-wide sums over workers and gateways;
    /// gauges are set by whichever worker last observed the value.
    /// Labelled decision counters (docs/operations.md), defined on first
    /// use: `reason` is `blocked_<kind>` or `blocklist_unavailable`.
    const DENIED: &str = "fds_block_denied_total";
    const DRY_RUN_DENIED: &str = "fds_block_dry_run_denied_total";

    struct Metrics {
        unavailable: Option<u32>,
        feed_errors: Option<u32>,
        feed_updates: Option<u32>,
        feed_invalid: Option<u32>,
        entries: [Option<u32>; 4],
        static_entries: [Option<u32>; 4],
        feed_age: Option<u32>,
        feed_version: Option<u32>,
        feed_failures: Option<u32>,
    }

    impl Metrics {
        fn define() -> Self {
            Metrics {
                unavailable: proxy::counter("fds_block_unavailable_total"),
                feed_errors: proxy::counter("fds_block_feed_errors_total"),
                feed_updates: proxy::counter("fds_block_feed_updates_total"),
                feed_invalid: proxy::counter("fds_block_feed_invalid_entries_total"),
                entries: by_kind(proxy::gauge, "fds_block_entries_{}"),
                static_entries: by_kind(proxy::gauge, "fds_block_static_entries_{}"),
                feed_age: proxy::gauge("fds_block_feed_age_seconds"),
                feed_version: proxy::gauge("fds_block_feed_version"),
                feed_failures: proxy::gauge("fds_block_feed_consecutive_failures"),
            }
        }

        fn set_counts(ids: &[Option<u32>; 4], c: Counts) {
            for k in Kind::ALL {
                set_gauge(ids.get(kind_slot(k)).copied().flatten(), c.get(k));
            }
        }
    }

    /// One feed's list as this worker (VM) has it, shared by every root
    /// context of the VM that polls the same feed (web and app gateways).
    struct Slot {
        keys: Keys,
        generation: Cell<u64>,
        index: RefCell<Option<Rc<Index>>>,
    }

    thread_local! {
        static SLOTS: RefCell<Vec<Rc<Slot>>> = const { RefCell::new(Vec::new()) };
    }

    fn slot_for(keys: &Keys) -> Rc<Slot> {
        SLOTS.with(|s| {
            let mut slots = s.borrow_mut();
            if let Some(found) = slots.iter().find(|x| x.keys == *keys) {
                return found.clone();
            }
            let slot = Rc::new(Slot {
                keys: keys.clone(),
                generation: Cell::new(0),
                index: RefCell::new(None),
            });
            slots.push(slot.clone());
            slot
        })
    }

    fn now() -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }

    fn unix_ms(t: SystemTime) -> u64 {
        u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX)
    }

    /// Rebuilds the slot's index if shared data holds a newer generation.
    fn sync_slot(slot: &Slot, config: &Compiled, metrics: &Metrics) {
        let have = slot.generation.get();
        let now_s = unix_ms(now()) / 1000;
        let loaded = match sync::read_index_if_changed(
            &ProxySharedData,
            &slot.keys,
            have,
            now_s,
            config.max_entries,
        ) {
            None => return,
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                log::error!("fds-block: published list refused ({e}); keeping the previous list");
                // Do not retry the same bytes on every tick: wait for the next publish.
                if let Some(st) = sync::read_state(&ProxySharedData, &slot.keys) {
                    slot.generation.set(st.generation);
                }
                return;
            }
        };
        slot.generation.set(loaded.generation);
        let counts = loaded.index.counts();
        Metrics::set_counts(&metrics.entries, counts);
        *slot.index.borrow_mut() = Some(Rc::new(loaded.index));
        log::info!(
            "fds-block: feed list loaded (generation {}, feed version {}): {} user, {} device, {} ip, {} user_api",
            loaded.generation,
            loaded.version,
            counts.user,
            counts.device,
            counts.ip,
            counts.user_api
        );
    }

    /// A random id for this VM's root context: the lease holder's name.
    /// (`RandomState` draws from WASI `random_get`, which Envoy provides.)
    fn random_id(context_id: u32) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(unix_ms(now()));
        h.write_u32(context_id);
        h.finish().max(1)
    }

    struct Root {
        context_id: u32,
        me: u64,
        config: Option<Rc<Compiled>>,
        metrics: Option<Rc<Metrics>>,
        slot: Option<Rc<Slot>>,
        /// The poll in flight: (token, started at ms).
        pending: Option<(u32, u64)>,
        fast: bool,
    }

    impl Root {
        fn new(context_id: u32) -> Self {
            Root {
                context_id,
                me: 0,
                config: None,
                metrics: None,
                slot: None,
                pending: None,
                fast: false,
            }
        }

        fn poll(&mut self, feed: &Feed, metrics: &Metrics, now_ms: u64) {
            if let Some((_, started)) = self.pending {
                let lease_ms = u64::try_from(feed.lease().as_millis()).unwrap_or(u64::MAX);
                if now_ms < started.saturating_add(lease_ms) {
                    return;
                }
                // The host never answered; the lease has expired anyway.
                self.pending = None;
            }
            let lease_ms = u64::try_from(feed.lease().as_millis()).unwrap_or(u64::MAX);
            let etag =
                match sync::try_acquire(&ProxySharedData, &feed.keys, self.me, now_ms, lease_ms) {
                    Ok(Poll::Fetch { etag }) => etag,
                    Ok(Poll::Idle) => return,
                    Err(e) => {
                        log::debug!("fds-block: lease: {e}");
                        return;
                    }
                };
            let mut headers: Vec<(&str, &str)> = vec![
                (":method", "GET"),
                (":path", &feed.path),
                (":authority", &feed.authority),
                ("accept", "application/json"),
            ];
            if let Some(e) = etag.as_deref() {
                headers.push(("if-none-match", e));
            }
            match self.dispatch_http_call(&feed.cluster, headers, None, vec![], feed.timeout) {
                Ok(token) => self.pending = Some((token, now_ms)),
                Err(e) => {
                    proxy::increment(metrics.feed_errors);
                    let why = format!("call to cluster {:?} could not start: {e:?}", feed.cluster);
                    self.finish(feed, now_ms, &Outcome::Failed, Some(&why));
                }
            }
        }

        /// Records the end of a poll; `error` is why it failed, logged on the
        /// first failure in a row and then every 30th (the gauges tell the rest).
        fn finish(&self, feed: &Feed, now_ms: u64, outcome: &Outcome<'_>, error: Option<&str>) {
            let interval_ms = u64::try_from(feed.interval.as_millis()).unwrap_or(u64::MAX);
            match sync::complete(
                &ProxySharedData,
                &feed.keys,
                self.me,
                now_ms,
                interval_ms,
                outcome,
            ) {
                Ok(Completed::Published(g)) => log::debug!("fds-block: published generation {g}"),
                Ok(Completed::Recorded { failures })
                    if failures == 1 || (failures > 0 && failures % 30 == 0) =>
                {
                    log::warn!(
                        "fds-block: feed poll failed ({} in a row): {}; the last good list stays in force",
                        failures,
                        error.unwrap_or("-")
                    );
                }
                Ok(Completed::Recorded { .. }) => {}
                Ok(Completed::LostLease) => {
                    log::warn!("fds-block: feed answer came after the lease expired; dropped")
                }
                Err(e) => log::warn!("fds-block: could not record the feed answer: {e}"),
            }
        }

        fn observe(&self, feed: &Feed, metrics: &Metrics, now_ms: u64) {
            if let Some(st) = sync::read_state(&ProxySharedData, &feed.keys) {
                set_gauge(
                    metrics.feed_age,
                    usize::try_from(st.age_secs(now_ms)).unwrap_or(usize::MAX),
                );
                set_gauge(
                    metrics.feed_version,
                    usize::try_from(st.version).unwrap_or(usize::MAX),
                );
                set_gauge(
                    metrics.feed_failures,
                    usize::try_from(st.failures).unwrap_or(usize::MAX),
                );
            }
        }
    }

    impl Context for Root {
        fn on_http_call_response(
            &mut self,
            token: u32,
            _headers: usize,
            body_size: usize,
            _trailers: usize,
        ) {
            if self.pending.map(|(t, _)| t) != Some(token) {
                return;
            }
            self.pending = None;
            let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics.clone()) else {
                return;
            };
            let Some(feed) = config.feed.as_ref() else {
                return;
            };
            let now_ms = unix_ms(now());
            let status = proxy::header(MapType::HttpCallResponseHeaders, ":status")
                .and_then(|s| s.parse::<u16>().ok());
            let parsed = match status {
                Some(200) if body_size > feed.max_bytes => {
                    Err(FeedError::TooLarge(body_size, feed.max_bytes))
                }
                Some(200) => {
                    let body = self
                        .get_http_call_response_body(0, body_size)
                        .unwrap_or_default();
                    feedmod::parse(&body, config.max_entries, now_ms / 1000).map(Some)
                }
                Some(304) => Ok(None),
                Some(s) => Err(FeedError::Status(s)),
                None => Err(FeedError::Call(
                    "no response (timeout, reset or no healthy host)".into(),
                )),
            };
            match parsed {
                Ok(Some(p)) => {
                    if p.invalid > 0 {
                        proxy::increment(metrics.feed_invalid);
                        log::warn!(
                            "fds-block: feed version {} has {} invalid entr(y/ies), skipped; first: {}",
                            p.version,
                            p.invalid,
                            p.first_invalid.as_deref().unwrap_or("-")
                        );
                    }
                    let etag = proxy::header(MapType::HttpCallResponseHeaders, "etag");
                    proxy::increment(metrics.feed_updates);
                    self.finish(
                        feed,
                        now_ms,
                        &Outcome::Updated {
                            version: p.version,
                            etag,
                            entries: &p.entries,
                        },
                        None,
                    );
                }
                Ok(None) => self.finish(feed, now_ms, &Outcome::NotModified, None),
                Err(e) => {
                    proxy::increment(metrics.feed_errors);
                    self.finish(feed, now_ms, &Outcome::Failed, Some(&e.to_string()));
                }
            }
            if let Some(slot) = &self.slot {
                sync_slot(slot, &config, &metrics);
            }
            self.observe(feed, &metrics, now_ms);
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(c) = proxy::load_plugin_config("fds-block", config::load) else {
                return false;
            };
            let metrics = Rc::new(Metrics::define());
            let counts = c.static_index.counts();
            Metrics::set_counts(&metrics.static_entries, counts);
            if self.me == 0 {
                self.me = random_id(self.context_id);
            }
            self.slot = None;
            if let Some(feed) = &c.feed {
                if let Err(e) = sync::init(&ProxySharedData, &feed.keys, unix_ms(now())) {
                    log::error!("fds-block: shared data unavailable: {e}");
                    return false;
                }
                let slot = slot_for(&feed.keys);
                self.fast = slot.index.borrow().is_none();
                proxy::set_tick_period(if self.fast { FAST_TICK } else { feed.tick() });
                self.slot = Some(slot);
            }
            log::info!(
                "fds-block: configured: {} static entries ({} user, {} device, {} ip, {} user_api), feed {}, max_entries {}{}",
                counts.total(),
                counts.user,
                counts.device,
                counts.ip,
                counts.user_api,
                c.feed.as_ref().map_or_else(|| "off".to_string(), |f| format!("{}{} every {:?}", f.cluster, f.path, f.interval)),
                c.max_entries,
                if c.dry_run { ", DRY RUN" } else { "" },
            );
            self.config = Some(Rc::new(c));
            self.metrics = Some(metrics);
            true
        }

        fn on_tick(&mut self) {
            let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics.clone()) else {
                return;
            };
            let Some(feed) = config.feed.as_ref() else {
                return;
            };
            let now_ms = unix_ms(now());
            if let Some(slot) = self.slot.clone() {
                sync_slot(&slot, &config, &metrics);
                if self.fast && slot.index.borrow().is_some() {
                    self.fast = false;
                    proxy::set_tick_period(feed.tick());
                }
            }
            self.poll(feed, &metrics, now_ms);
            self.observe(feed, &metrics, now_ms);
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Http {
                config: self.config.clone()?,
                metrics: self.metrics.clone()?,
                slot: self.slot.clone(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        slot: Option<Rc<Slot>>,
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            let index = match &self.slot {
                None => None,
                Some(slot) => {
                    if slot.index.borrow().is_none() {
                        // Not loaded on this worker yet: another worker may
                        // have published it since the last tick.
                        sync_slot(slot, &self.config, &self.metrics);
                    }
                    slot.index.borrow().clone()
                }
            };
            let view = match (&self.config.feed, &index) {
                (None, _) => FeedView::Off,
                (Some(_), Some(ix)) => FeedView::Loaded(ix),
                (Some(_), None) => FeedView::NotLoaded,
            };
            let mut host = ProxyHost;
            let now_s = host.unix_seconds();
            let out = filter::on_request_headers(&mut host, &self.config, view, now_s);
            let m = &self.metrics;
            if let (Some(reason), Some(names)) = (filter::reason(&out.decision), &out.names) {
                let name = if out.dry_run { DRY_RUN_DENIED } else { DENIED };
                proxy::increment_tagged(
                    name,
                    &[
                        ("gateway", names.gateway.as_str()),
                        ("route", names.route.as_str()),
                        ("reason", reason),
                    ],
                );
            }
            if out.decision == Decision::Unavailable {
                proxy::increment(m.unavailable);
            }
            proxy::action(out.verdict)
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
