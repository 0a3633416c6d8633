//! # sanitize: the gateway's first trust boundary
//!
//! Runs first on every gateway listener and enforces, per request:
//! * **headers**: removes every header the config names (exact names and
//!   prefixes: `x-passport`, `x-user-*`, client `x-forwarded-client-cert` …)
//!   so that no client can supply what a later filter asserts;
//! * **path**: refuses (400) encoded or literal dot-segments, `..;` matrix
//!   tricks, encoded slashes and backslashes, double encodings, control and
//!   non-ASCII bytes and invalid percent-encoding that survived Envoy's own
//!   normalisation; over-long URIs → 400 `uri_too_long`;
//! * **query**: limits on parameter count and lengths (400) and per-route
//!   integer clamps (`size` into `[1, 100]`, default 20);
//! * **body**: a size limit (413) enforced before the upstream sees anything,
//!   and per-route JSON rules (types, lengths, ranges, required fields,
//!   unknown fields stripped; invalid → 400 naming the field; wrong content
//!   type → 415). Bodies are buffered only on routes with a body rule, or
//!   when no `content-length` announces the size.
//!
//! The decision code lives in [`config`], [`path`], [`query`] and [`body`],
//! and is put together by the pure core in [`decide`]:
//! [`decide::decide_headers`] (a `filter_core::request::RequestView` in, a
//! [`decide::HeadersDecision`] out: header edits, the query rewrite with the
//! client's original `:path`, the body state, or a denial) and
//! [`decide::decide_body`] (a [`decide::BodyDecision`]), none of which calls
//! the host. [`filter`] holds the adapters (`Request::on_headers`, `on_body`,
//! `on_trailers`): they read the headers once, call the core, apply its
//! answer (or log it in a dry run) and emit the decision log. All of it is
//! plain Rust tested natively; the proxy-wasm glue below only moves data in
//! and out. Config reference: `docs/filters/sanitize.md`.

pub mod body;
pub mod config;
pub mod decide;
pub mod filter;
pub mod path;
pub mod query;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::rc::Rc;

    use filter_core::decision;
    use filter_core::proxy::{self, ProxyHost};
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    use crate::config::{self, Compiled};
    use crate::filter::{Outcome, Request};

    filter_core::filter_entry!(root);

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    /// Counters (see docs/operations.md): `sanitize_allowed_total` is
    /// unlabelled (the per-request hot path reads no property); the others
    /// are labelled by gateway, route and, for denials, reason, defined on
    /// first use by `proxy::increment_tagged`.
    const ALLOWED: &str = "sanitize_allowed_total";
    const REWRITTEN: &str = "sanitize_rewritten_total";
    const DENIED: &str = "sanitize_denied_total";
    const DRY_RUN_DENIED: &str = "sanitize_dry_run_denied_total";

    #[derive(Default)]
    struct Root {
        config: Option<Rc<Compiled>>,
        allowed_id: Option<u32>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(c) = proxy::load_plugin_config("sanitize", config::load) else {
                return false;
            };
            log::info!("sanitize: configured with {} route rule(s)", c.routes.len());
            self.config = Some(Rc::new(c));
            self.allowed_id = proxy::counter(ALLOWED);
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            let config = self.config.clone()?;
            Some(Box::new(Http {
                config,
                req: Request::default(),
                counted: false,
                allowed_id: self.allowed_id,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        config: Rc<Compiled>,
        req: Request,
        counted: bool,
        allowed_id: Option<u32>,
    }

    impl Http {
        fn count(&mut self) {
            if self.counted {
                return;
            }
            self.counted = true;
            if self.req.outcome == Outcome::Allowed {
                // The hot path: no labels, so no property reads (Envoy's own
                // per-route stats already count requests per route).
                proxy::increment(self.allowed_id);
                return;
            }
            let names = self
                .req
                .names
                .take()
                .unwrap_or_else(|| decision::route_names(&ProxyHost));
            let at = [
                ("gateway", names.gateway.as_str()),
                ("route", names.route.as_str()),
            ];
            let denied = |name: &str, code: Option<&str>| {
                let [g, r] = at;
                proxy::increment_tagged(name, &[g, r, ("reason", code.unwrap_or("unknown"))]);
            };
            match (self.req.outcome, self.config.dry_run) {
                (Outcome::Denied, true) => denied(DRY_RUN_DENIED, self.req.denied_code),
                (Outcome::Denied, false) => denied(DENIED, self.req.denied_code),
                (Outcome::Rewritten, _) => proxy::increment_tagged(REWRITTEN, &at),
                (Outcome::Allowed, _) => {}
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

        fn on_http_request_trailers(&mut self, _n: usize) -> Action {
            let v = self.req.on_trailers(&self.config, &mut ProxyHost);
            self.count();
            proxy::action(v)
        }

        fn on_log(&mut self) {
            self.count();
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
