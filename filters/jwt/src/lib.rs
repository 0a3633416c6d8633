//! # jwt: bearer-token verification for the web gateway
//!
//! Enforces, per request (after sanitize, before fds-block and passport):
//! * **route policy**: per route (path prefix + methods) a token is
//!   required, optional or not looked at; unknown routes default to
//!   required. Required scopes (`scope` claim, all-of or any-of) → 403
//!   `insufficient_scope`; a missing or bad token → 401, both with an
//!   RFC 6750 `WWW-Authenticate: Bearer` challenge;
//! * **verification**, cheapest checks first ([`token`]): size, shape,
//!   canonical base64url, strict JOSE header (no `none`, no HMAC, `alg`
//!   bound to the key's type, no `crit`/nested/JWE, duplicate members
//!   refused), claim types, issuer, audience, `exp`/`nbf`/`iat` within the
//!   skew, known `kid` — all before any signature work; then the signature
//!   through `jsonwebtoken` with the RustCrypto backend of [`crypto`];
//! * **keys** ([`jwks`]): inline JWKS, or a remote JWKS fetched through an
//!   Envoy cluster once per process, refreshed early, served stale within a
//!   limit while the endpoint fails, refetched on an unknown `kid` at most
//!   once per interval ([`remote`]);
//! * **one-time tokens** ([`jti`]): on routes that say so each `jti` is
//!   accepted once, process-wide, in a bounded time-bucketed store;
//! * **a verified-token cache** ([`cache`]) per worker, keyed by the token
//!   itself (exact match), bounded in entries and bytes;
//! * **identity**: the subject and expiry go to later filters through
//!   [`filter_core::identity::Identity`] (Envoy filter state), chosen claims
//!   to the upstream as headers that are stripped from every request first;
//!   the token's header is removed unless `forward_token` is set.
//!
//! The decision code is plain Rust tested natively; the proxy-wasm glue
//! below only moves data. Config reference: `docs/filters/jwt.md`.

pub mod cache;
pub mod config;
pub mod crypto;
pub mod ecverify;
pub mod filter;
pub mod jti;
pub mod jwks;
pub mod pkcs1;
pub mod refresh;
pub mod remote;
pub mod token;

#[cfg(test)]
mod tests;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use filter_core::proxy::{self, ProxyHost, ProxySharedData};
    use filter_core::{HttpHost, Verdict};
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    use crate::cache::TokenCache;
    use crate::config::{self, Compiled, Keys};
    use crate::filter::{self, Env, Outcome, ProviderKeys, Result_};
    use crate::jti::JtiStore;
    use crate::jwks;
    use crate::refresh::{Answer, Refresher, Response};
    use crate::remote;
    use filter_core::store::ClaimAnswer;

    filter_core::filter_entry!(root, {
        crate::crypto::install();
    });

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    /// Labelled decision counters (docs/operations.md), defined on first use.
    /// `jwt_allowed_total` is not among them: labels cost two property reads
    /// (~2 µs each, docs/performance.md), and every verified request pays for
    /// them; Envoy's per-route stats already count the allowed traffic.
    const DENIED: &str = "jwt_denied_total";
    const DRY_RUN_DENIED: &str = "jwt_dry_run_denied_total";
    const ANONYMOUS: &str = "jwt_anonymous_total";

    filter_core::metric_set! {
        struct Metrics {
            allowed: counter("jwt_allowed_total"),
            skipped: counter("jwt_skipped_total"),
            cache_hit: counter("jwt_cache_hit_total"),
            signature_checked: counter("jwt_signature_checked_total"),
            rejected_before_crypto: counter("jwt_rejected_before_crypto_total"),
            stale_served: counter("jwt_jwks_stale_served_total"),
            fetch_ok: counter("jwt_jwks_fetch_ok_total"),
            fetch_failed: counter("jwt_jwks_fetch_failed_total"),
            store_claimed: counter("jwt_store_claimed_total"),
            store_replayed: counter("jwt_store_replayed_total"),
            store_unavailable: counter("jwt_store_unavailable_total"),
            store_local_replay: counter("jwt_store_local_replay_total"),
        }
    }

    impl Metrics {
        fn count(&self, o: &Outcome) {
            // Denials and anonymous requests are labelled by gateway and route
            // (denials also by reason); allowed and skipped requests are not,
            // to keep the hot paths free of the two property reads.
            let labelled = |name: &str, reason: Option<&str>| {
                let names = o
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
            match o.result {
                Result_::Allowed => proxy::increment(self.allowed),
                Result_::Denied => {
                    labelled(DENIED, Some(o.code.unwrap_or("unknown")));
                    if !o.signature_checked && !o.cache_hit {
                        proxy::increment(self.rejected_before_crypto);
                    }
                }
                Result_::DryRunDenied => {
                    labelled(DRY_RUN_DENIED, Some(o.code.unwrap_or("unknown")));
                    if !o.signature_checked && !o.cache_hit {
                        proxy::increment(self.rejected_before_crypto);
                    }
                }
                Result_::Skipped => proxy::increment(self.skipped),
                Result_::Anonymous => labelled(ANONYMOUS, None),
            }
            if o.cache_hit {
                proxy::increment(self.cache_hit);
            }
            if o.signature_checked {
                proxy::increment(self.signature_checked);
            }
            if o.stale_keys {
                proxy::increment(self.stale_served);
            }
            if o.local_replay {
                proxy::increment(self.store_local_replay);
            }
            match o.claim {
                Some(ClaimAnswer::Claimed) => proxy::increment(self.store_claimed),
                Some(ClaimAnswer::Taken) => proxy::increment(self.store_replayed),
                Some(ClaimAnswer::Unavailable) => proxy::increment(self.store_unavailable),
                None => {}
            }
        }
    }

    /// State shared by the root context and the worker's HTTP contexts.
    struct Shared {
        config: Rc<Compiled>,
        metrics: Metrics,
        keys: RefCell<Vec<ProviderKeys>>,
        /// Per provider: an unknown kid was seen since the last tick.
        kid_miss: RefCell<Vec<bool>>,
        cache: RefCell<TokenCache>,
        jti: JtiStore,
    }

    #[derive(Default)]
    struct Root {
        shared: Option<Rc<Shared>>,
        /// The remote-JWKS loop's state (pure: [`crate::refresh`]).
        refresher: Refresher,
    }

    impl Context for Root {
        fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
            let Some(sh) = self.shared.clone() else {
                return;
            };
            let status =
                proxy::header(MapType::HttpCallResponseHeaders, ":status").unwrap_or_default();
            let body = if body_size <= jwks::MAX_JWKS_BYTES {
                self.get_http_call_response_body(0, body_size)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let now = ProxyHost.unix_seconds();
            let answer = Answer {
                token,
                status: &status,
                body: &body,
            };
            let got = self.refresher.on_response(
                answer,
                &sh.config,
                &mut sh.keys.borrow_mut(),
                &ProxySharedData,
                now,
            );
            let name = |pi: usize| sh.config.providers.get(pi).map_or("?", |p| p.name.as_str());
            match got {
                Response::NotOurs => {}
                Response::Stored { provider, bytes } => {
                    proxy::increment(sh.metrics.fetch_ok);
                    log::info!("jwt: JWKS of {} fetched ({bytes} bytes)", name(provider));
                }
                Response::Failed { provider, reason } => {
                    proxy::increment(sh.metrics.fetch_failed);
                    log::warn!("jwt: JWKS fetch for {}: {reason}", name(provider));
                }
            }
        }
    }

    impl Root {
        /// One turn of the remote-JWKS loop: reload, age, start due fetches.
        fn refresh_local(&mut self, sh: &Rc<Shared>, now: u64) {
            let kid_miss = std::mem::replace(
                &mut *sh.kid_miss.borrow_mut(),
                vec![false; sh.config.providers.len()],
            );
            let due = self.refresher.tick(
                &sh.config,
                &mut sh.keys.borrow_mut(),
                &kid_miss,
                &ProxySharedData,
                now,
            );
            for pi in due {
                let Some(p) = sh.config.providers.get(pi) else {
                    continue;
                };
                let Keys::Remote(r) = &p.keys else { continue };
                let authority = r.authority.as_deref().unwrap_or(r.cluster.as_str());
                match self.dispatch_http_call(
                    &r.cluster,
                    vec![
                        (":method", "GET"),
                        (":path", r.path.as_str()),
                        (":authority", authority),
                        ("accept", "application/json"),
                    ],
                    None,
                    vec![],
                    r.timeout.as_duration(),
                ) {
                    Ok(token) => self.refresher.started(token, pi),
                    Err(e) => {
                        proxy::increment(sh.metrics.fetch_failed);
                        log::warn!("jwt: JWKS fetch for {} could not start: {e:?}", p.name);
                    }
                }
            }
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            crate::crypto::install();
            let Some(c) = proxy::load_plugin_config("jwt", config::load) else {
                return false;
            };
            let jti = JtiStore::new(c.jti_max_entries, c.jti_max_lifetime.as_secs());
            if let Err(e) = jti.ensure_keys(&ProxySharedData) {
                log::error!("jwt: could not create the jti store: {e}");
                return false;
            }
            let n = c.providers.len();
            let mut keys = Vec::with_capacity(n);
            for p in &c.providers {
                if let Keys::Remote(_) = &p.keys {
                    if let Err(e) = remote::ensure_keys(&ProxySharedData, &p.name) {
                        log::error!("jwt: could not create JWKS keys for {}: {e}", p.name);
                        return false;
                    }
                }
                keys.push(ProviderKeys::initial(&p.keys));
            }
            let remote = c.has_remote_keys();
            log::info!(
                "jwt: configured {} provider(s), {} route rule(s), cache {} entries, jti store {} entries",
                n,
                c.routes.len(),
                c.cache_entries,
                c.jti_max_entries
            );
            let shared = Rc::new(Shared {
                cache: RefCell::new(TokenCache::new(c.cache_entries)),
                config: Rc::new(c),
                metrics: Metrics::define(),
                keys: RefCell::new(keys),
                kid_miss: RefCell::new(vec![false; n]),
                jti,
            });
            self.refresher = Refresher::new(n);
            if remote {
                let now = ProxyHost.unix_seconds();
                self.refresh_local(&shared, now);
                proxy::set_tick_period(Duration::from_secs(1));
            }
            self.shared = Some(shared);
            true
        }

        fn on_tick(&mut self) {
            if let Some(sh) = self.shared.clone() {
                let now = ProxyHost.unix_seconds();
                self.refresh_local(&sh, now);
            }
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            let shared = self.shared.clone()?;
            Some(Box::new(Http {
                shared,
                pending: None,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        shared: Rc<Shared>,
        /// A one-time request waiting for its `jti` claim (the callout's
        /// token, the request's state).
        pending: Option<(u32, filter::Pending)>,
    }

    impl Http {
        fn env<'a>(&'a self, keys: &'a [ProviderKeys]) -> Env<'a, ProxySharedData> {
            let sh = &self.shared;
            Env {
                cfg: &sh.config,
                keys,
                cache: &sh.cache,
                shared: &ProxySharedData,
                jti: &sh.jti,
            }
        }

        /// Finishes a paused request with the store's answer.
        fn finish(&mut self, p: filter::Pending, answer: ClaimAnswer) -> Verdict {
            let sh = self.shared.clone();
            let keys = sh.keys.borrow();
            let (v, out) = filter::on_claim_answer(&self.env(&keys), &mut ProxyHost, p, answer);
            sh.metrics.count(&out);
            v
        }
    }

    impl Context for Http {
        fn on_http_call_response(&mut self, token: u32, _h: usize, _b: usize, _t: usize) {
            let Some((t, p)) = self.pending.take() else {
                return;
            };
            if t != token {
                self.pending = Some((t, p));
                return;
            }
            if self.finish(p, proxy::claim_answer()) == Verdict::Continue {
                // the proxy wrapper: in the chain build the filters after this one run first
                proxy::resume_http_request();
            }
        }
    }

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            let sh = self.shared.clone();
            let keys = sh.keys.borrow();
            let (v, out, pending) = filter::on_request_headers(&self.env(&keys), &mut ProxyHost);
            drop(keys);
            if let Some(pi) = out.refetch {
                if let Some(m) = sh.kid_miss.borrow_mut().get_mut(pi) {
                    *m = true;
                }
            }
            let (Some(p), Some(store)) = (pending, sh.config.shared_store.as_ref()) else {
                sh.metrics.count(&out);
                return proxy::action(v);
            };
            // A one-time route: claim the jti in the shared store, hold
            // the request until it answers (at most the store's timeout).
            match proxy::dispatch_claim(store, &p.claim.claim) {
                Ok(token) => {
                    self.pending = Some((token, p));
                    Action::Pause
                }
                Err(e) => {
                    log::warn!(
                        "jwt: cannot reach the shared store ({}): {e:?}",
                        store.cluster
                    );
                    proxy::action(self.finish(p, ClaimAnswer::Unavailable))
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
