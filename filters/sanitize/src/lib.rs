//! # sanitize: the gateway's first trust boundary
//!
//! Runs first on every gateway listener and enforces, per request:
//! * **headers**: removes every header the config names (exact names and
//!   prefixes: `x-passport`, `x-user-*`, client `x-forwarded-client-cert` …)
//!   so that no client can supply what a later filter asserts;
//! * **path**: refuses (400) encoded or literal dot-segments, `..;` matrix
//!   tricks, encoded slashes and backslashes, double encodings, control and
//!   non-ASCII bytes and invalid percent-encoding that survived Envoy's own
//!   normalisation; over-long URIs → 414;
//! * **query**: limits on parameter count and lengths (400) and per-route
//!   integer clamps (`size` into `[1, 100]`, default 20);
//! * **body**: a size limit (413) enforced before the upstream sees anything,
//!   and per-route JSON rules (types, lengths, ranges, required fields,
//!   unknown fields stripped; invalid → 400 naming the field; wrong content
//!   type → 415). Bodies are buffered only on routes with a body rule, or
//!   when no `content-length` announces the size.
//!
//! The decision code lives in [`config`], [`path`], [`query`], [`body`] and
//! [`filter`], plain Rust tested natively; the proxy-wasm glue below only
//! moves data in and out. Config reference: `docs/filters/sanitize.md`.

pub mod body;
pub mod config;
pub mod filter;
pub mod path;
pub mod query;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::rc::Rc;

    use filter_core::proxy::{self, ProxyHost};
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    use crate::config::{self, Compiled};
    use crate::filter::{Outcome, Request};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}

    /// Counters, defined once per plugin configuration.
    struct Metrics {
        allowed: Option<u32>,
        rewritten: Option<u32>,
        denied: Option<u32>,
        dry_run_denied: Option<u32>,
    }

    impl Metrics {
        fn define() -> Self {
            Metrics {
                allowed: proxy::counter("sanitize_allowed_total"),
                rewritten: proxy::counter("sanitize_rewritten_total"),
                denied: proxy::counter("sanitize_denied_total"),
                dry_run_denied: proxy::counter("sanitize_dry_run_denied_total"),
            }
        }
    }

    #[derive(Default)]
    struct Root {
        config: Option<Rc<Compiled>>,
        metrics: Option<Rc<Metrics>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let bytes = self.get_plugin_configuration().unwrap_or_default();
            match config::load(&bytes) {
                Ok(c) => {
                    log::info!("sanitize: configured with {} route rule(s)", c.routes.len());
                    self.config = Some(Rc::new(c));
                    self.metrics = Some(Rc::new(Metrics::define()));
                    true
                }
                Err(e) => {
                    log::error!("{e}");
                    false
                }
            }
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            let config = self.config.clone()?;
            let metrics = self.metrics.clone()?;
            Some(Box::new(Http {
                config,
                metrics,
                req: Request::default(),
                counted: false,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        req: Request,
        counted: bool,
    }

    impl Http {
        fn count(&mut self) {
            if self.counted {
                return;
            }
            self.counted = true;
            let m = &self.metrics;
            match (self.req.outcome, self.config.dry_run) {
                (Outcome::Denied, true) => proxy::increment(m.dry_run_denied),
                (Outcome::Denied, false) => proxy::increment(m.denied),
                (Outcome::Rewritten, _) => proxy::increment(m.rewritten),
                (Outcome::Allowed, _) => proxy::increment(m.allowed),
            }
        }
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            let v = self
                .req
                .on_headers(&self.config, &mut ProxyHost, end_of_stream);
            if v == filter_core::Verdict::Continue
                && (end_of_stream || self.req.outcome == Outcome::Denied)
            {
                self.count();
            }
            proxy::action(v)
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            let v = self
                .req
                .on_body(&self.config, &mut ProxyHost, body_size, end_of_stream);
            if end_of_stream || v == filter_core::Verdict::Responded {
                self.count();
            }
            proxy::action(v)
        }

        fn on_log(&mut self) {
            self.count();
        }
    }
}
