//! # oidc: single sign-on for internal tools at the gateway
//!
//! Runs on the internal gateway after sanitize and before route-breaker,
//! and gives web tools that have no login of their own an OpenID Connect
//! login (authorization code flow with PKCE S256, `client_secret_basic`)
//! with **server-side sessions** in Redis, reached through the
//! gateway-store sidecar (docs/gateway-store.md) that every replica
//! shares: a session started on one replica works on all, and a logout or
//! a Redis outage takes effect on all at once (no per-replica session
//! cache). Per-path rules: open, any logged-in user, or groups any-of.
//!
//! * [`config`]: the JSON configuration;
//! * [`provider`]: the provider's discovery document and JWKS, fetched
//!   through an Envoy cluster, refreshed, served stale on an outage;
//! * [`idtoken`]: ID-token validation on the jwt filter's verifier;
//! * [`flow`]: the request step machine (no host call): what to decide,
//!   or which callout to make and how to resume.
//!
//! The proxy-wasm glue below only moves data. Reference:
//! `docs/filters/oidc.md`.

pub mod config;
pub mod flow;
pub mod idtoken;
pub mod provider;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use filter_core::proxy::{self, ProxyHost};
    use filter_core::{HttpHost, Verdict};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    use crate::config::{self, Compiled};
    use crate::flow::{self, Answer, Call, Env, Event, Pending, Step};
    use crate::provider::{Doc, ProviderState, MAX_DISCOVERY_BYTES};

    filter_core::filter_entry!(root, {
        jwt::crypto::install();
    });

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    const LOGINS_FAILED: &str = "oidc_logins_failed_total";
    /// The decision counter of every denial, labelled like the other
    /// filters' (docs/operations.md): gateway, route, reason (the code).
    const DENIED: &str = "oidc_denied_total";

    filter_core::metric_set! {
        struct Metrics {
            allowed: counter("oidc_allowed_total"),
            refreshes: counter("oidc_token_refreshes_total"),
            open: counter("oidc_open_total"),
            login_required: counter("oidc_login_required_total"),
            forbidden: counter("oidc_forbidden_total"),
            logins_started: counter("oidc_logins_started_total"),
            logins_completed: counter("oidc_logins_completed_total"),
            logouts: counter("oidc_logouts_total"),
            store_unavailable: counter("oidc_session_store_unavailable_total"),
            provider_unavailable: counter("oidc_provider_unavailable_total"),
            bad_request: counter("oidc_bad_request_total"),
            fetch_ok: counter("oidc_provider_fetch_ok_total"),
            fetch_failed: counter("oidc_provider_fetch_failed_total"),
        }
    }

    impl Metrics {
        fn count(&self, e: Event) {
            let id = match e {
                Event::Allowed => self.allowed,
                Event::Refreshed => {
                    proxy::increment(self.refreshes);
                    self.allowed
                }
                Event::Open => self.open,
                Event::LoginRequired => self.login_required,
                Event::Forbidden => self.forbidden,
                Event::LoginStarted => self.logins_started,
                Event::LoginCompleted => self.logins_completed,
                Event::Logout => self.logouts,
                Event::StoreUnavailable => self.store_unavailable,
                Event::ProviderUnavailable => self.provider_unavailable,
                Event::BadRequest => self.bad_request,
                Event::LoginFailed(reason) => {
                    proxy::increment_tagged(LOGINS_FAILED, &[("reason", reason)]);
                    return;
                }
            };
            proxy::increment(id);
        }
    }

    struct Shared {
        config: Compiled,
        metrics: Metrics,
        provider: RefCell<ProviderState>,
    }

    impl Shared {
        /// `GET path` of the provider (discovery, JWKS), from the current context.
        fn get_from_provider(&self, path: &str) -> Result<u32, proxy_wasm::types::Status> {
            let c = &self.config;
            hostcalls::dispatch_http_call(
                &c.cluster,
                vec![
                    (":method", "GET"),
                    (":path", path),
                    (":authority", c.authority.as_str()),
                    ("accept", "application/json"),
                ],
                None,
                vec![],
                c.provider_timeout,
            )
        }

        /// Runs one step of the flow with this worker's provider state, the
        /// proxy's clock and the host's randomness.
        fn step(&self, f: impl FnOnce(&mut Env<'_>) -> Step) -> Step {
            let mut random = random;
            let mut provider = self.provider.borrow_mut();
            let mut env = Env {
                cfg: &self.config,
                provider: &mut provider,
                now: ProxyHost.unix_seconds(),
                random: &mut random,
            };
            f(&mut env)
        }
    }

    #[derive(Default)]
    struct Root {
        shared: Option<Rc<Shared>>,
    }

    impl Root {
        fn fetch_due(&self, sh: &Shared) {
            let now = ProxyHost.unix_seconds();
            let c = &sh.config;
            let due = sh.provider.borrow().due(c, now);
            let Some(doc) = due else { return };
            let path = match doc {
                Doc::Discovery => Some(c.discovery_path.clone()),
                Doc::Jwks => sh
                    .provider
                    .borrow()
                    .metadata
                    .as_ref()
                    .map(|(m, _)| m.jwks_path.clone()),
            };
            let Some(path) = path else { return };
            match sh.get_from_provider(&path) {
                Ok(token) => sh.provider.borrow_mut().started(token, doc),
                Err(e) => {
                    proxy::increment(sh.metrics.fetch_failed);
                    log::warn!(
                        "oidc: fetch of {path} from {} could not start: {e:?}",
                        c.cluster
                    );
                    sh.provider.borrow_mut().not_started(c, now);
                }
            }
        }
    }

    impl Context for Root {
        fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
            let Some(sh) = self.shared.clone() else {
                return;
            };
            let status = proxy::header(MapType::HttpCallResponseHeaders, ":status");
            let body = if body_size <= MAX_DISCOVERY_BYTES {
                self.get_http_call_response_body(0, body_size)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let now = ProxyHost.unix_seconds();
            let got = sh.provider.borrow_mut().on_answer(
                &sh.config,
                token,
                status.as_deref(),
                &body,
                now,
            );
            match got {
                None => {}
                Some(Ok(doc)) => {
                    proxy::increment(sh.metrics.fetch_ok);
                    log::info!("oidc: {doc:?} of {} fetched", sh.config.issuer);
                    // the JWKS right after the discovery document
                    self.fetch_due(&sh);
                }
                Some(Err((doc, why))) => {
                    proxy::increment(sh.metrics.fetch_failed);
                    log::warn!("oidc: {doc:?} of {}: {why}", sh.config.issuer);
                }
            }
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            jwt::crypto::install();
            let env = |name: &str| std::env::var(name).ok();
            let Some(c) = proxy::load_plugin_config("oidc", |b| config::load(b, &env)) else {
                return false;
            };
            log::info!(
                "oidc: configured issuer {}, client {}, {} path rule(s), sessions in {}",
                c.issuer,
                c.client_id,
                c.rules.len(),
                c.store.namespace
            );
            let sh = Rc::new(Shared {
                config: c,
                metrics: Metrics::define(),
                provider: RefCell::new(ProviderState::default()),
            });
            self.fetch_due(&sh);
            proxy::set_tick_period(Duration::from_secs(1));
            self.shared = Some(sh);
            true
        }

        fn on_tick(&mut self) {
            if let Some(sh) = self.shared.clone() {
                self.fetch_due(&sh);
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
        pending: Option<(u32, Box<Pending>)>,
    }

    fn random(buf: &mut [u8]) -> bool {
        getrandom::fill(buf).is_ok()
    }

    impl Http {
        /// Runs the flow until it decides or waits for a callout.
        fn drive(&mut self, mut step: Step) -> Verdict {
            let sh = self.shared.clone();
            loop {
                match step {
                    Step::Done(v, e) => {
                        sh.metrics.count(e);
                        if let Some((status, code)) = e.denial_code() {
                            let names = filter_core::decision::route_names(&ProxyHost);
                            proxy::increment_tagged(
                                DENIED,
                                &[
                                    ("gateway", names.gateway.as_str()),
                                    ("route", names.route.as_str()),
                                    ("reason", code),
                                ],
                            );
                            let rid = ProxyHost.request_header(filter_core::headers::REQUEST_ID);
                            let method = ProxyHost.request_header(":method").unwrap_or_default();
                            filter_core::decision::log_denial(
                                "oidc",
                                &names,
                                &method,
                                status,
                                code,
                                rid.as_deref(),
                                None,
                            );
                        }
                        return v;
                    }
                    Step::Call(call, p) => match self.dispatch(&call) {
                        Ok(token) => {
                            self.pending = Some((token, p));
                            return Verdict::WaitCallout;
                        }
                        Err(why) => {
                            log::warn!("oidc: callout could not start: {why}");
                            let no_answer = Answer {
                                status: None,
                                body: b"",
                            };
                            step = sh.step(|env| flow::resume(env, &mut ProxyHost, *p, no_answer));
                        }
                    },
                }
            }
        }

        fn dispatch(&self, call: &Call) -> Result<u32, String> {
            let c = &self.shared.config;
            match call {
                Call::Store {
                    method,
                    key,
                    query,
                    body,
                } => {
                    let co = c.store.session_callout(method, key, query);
                    proxy::dispatch_store(&co, body.as_deref()).map_err(|e| format!("{e:?}"))
                }
                Call::Token { path, body } => hostcalls::dispatch_http_call(
                    &c.cluster,
                    vec![
                        (":method", "POST"),
                        (":path", path.as_str()),
                        (":authority", c.authority.as_str()),
                        ("content-type", "application/x-www-form-urlencoded"),
                        ("accept", "application/json"),
                        ("authorization", c.client_auth.as_str()),
                    ],
                    Some(body.as_bytes()),
                    vec![],
                    c.provider_timeout,
                )
                .map_err(|e| format!("{e:?}")),
                Call::Claim { key, ttl_ms } => {
                    let claim = filter_core::store::Claim {
                        key: *key,
                        ttl_ms: *ttl_ms,
                    };
                    proxy::dispatch_claim(&c.store, &claim).map_err(|e| format!("{e:?}"))
                }
                Call::Jwks { path } => self
                    .shared
                    .get_from_provider(path)
                    .map_err(|e| format!("{e:?}")),
            }
        }
    }

    impl Context for Http {
        fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
            let Some((t, p)) = self.pending.take() else {
                return;
            };
            if t != token {
                self.pending = Some((t, p));
                return;
            }
            let sh = self.shared.clone();
            let status = proxy::header(MapType::HttpCallResponseHeaders, ":status");
            // Larger than any answer the flow reads: not read at all (the
            // flow treats an empty body as unusable).
            let body = if body_size <= flow::MAX_TOKEN_RESPONSE_BYTES {
                hostcalls::get_buffer(
                    proxy_wasm::types::BufferType::HttpCallResponseBody,
                    0,
                    body_size,
                )
                .ok()
                .flatten()
                .unwrap_or_default()
            } else {
                Vec::new()
            };
            let answer = Answer {
                status: status.as_deref(),
                body: &body,
            };
            let step = sh.step(|env| flow::resume(env, &mut ProxyHost, *p, answer));
            if self.drive(step) == Verdict::Continue {
                // the proxy wrapper: in the chain build the filters after this one run first
                proxy::resume_http_request();
            }
        }
    }

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            let step = self.shared.step(|env| flow::start(env, &mut ProxyHost));
            proxy::action(self.drive(step))
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
