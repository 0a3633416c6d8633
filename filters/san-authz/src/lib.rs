//! # san-authz: mTLS callers authorised by their certificate's SANs
//!
//! Runs on the secure gateway right after sanitize and enforces, per request:
//! * **identity from the certificate itself**: the verified peer certificate
//!   of the downstream TLS connection (`source: "connection"`, Envoy's
//!   `connection.peer_certificate`), or, behind a trusted TLS-terminating
//!   hop (`source: "xfcc"`), the `Cert=` of the LAST `x-forwarded-client-cert`
//!   element, bound to its `Hash=`; every URI and DNS SAN of the certificate,
//!   its validity window, its leaf profile (not a CA; keyUsage and
//!   extendedKeyUsage, when present, allow `digitalSignature` and
//!   `clientAuth`) and its issuer's signature against configured CA
//!   certificates (required with `xfcc`). The `URI=`/`DNS=` text of XFCC is
//!   never used.
//! * **an allow list of rules**: SAN matchers (exact URI, DNS, SPIFFE trust
//!   domain, SPIFFE path prefix) → hosts, path prefixes (on the normalised
//!   path, segment-aware) and methods. Anything no rule allows is a 403 JSON
//!   denial that names no rule, SAN or reason.
//! * **the authorised SAN handed on**: filter state `wasm.gateway_identity`
//!   (`filter_core::identity::Identity`, source `mtls`) and an optional
//!   upstream header whose client copies are always removed first.
//!
//! The decision code lives in [`config`], [`xfcc`], [`cert`], [`san`],
//! [`path`] and [`filter`], plain Rust tested natively; the proxy-wasm glue
//! below only moves data in and out. Config reference: `docs/filters/san-authz.md`.

pub mod cert;
pub mod config;
pub mod filter;
pub mod path;
pub mod san;
#[cfg(test)]
mod testcerts;
pub mod xfcc;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::cell::RefCell;
    use std::rc::Rc;

    use filter_core::proxy::{self, ProxyHost};
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    use crate::cert::SignatureCache;
    use crate::config::{self, Compiled};
    use crate::filter::{Outcome, Request};

    filter_core::filter_entry!(root);

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    /// Labelled decision counters (docs/operations.md), defined on first use.
    const ALLOWED: &str = "san_authz_allowed_total";
    const DENIED: &str = "san_authz_denied_total";
    const DRY_RUN_DENIED: &str = "san_authz_dry_run_denied_total";

    filter_core::metric_set! {
        /// Counters, defined once per plugin configuration.
        struct Metrics {
            certificate_rejected: counter("san_authz_certificate_rejected_total"),
        }
    }

    #[derive(Default)]
    struct Root {
        config: Option<Rc<Compiled>>,
        metrics: Option<Rc<Metrics>>,
        /// Per worker (a VM is single-threaded), bounded by the config.
        cache: Rc<RefCell<SignatureCache>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(c) = proxy::load_plugin_config("san-authz", config::load) else {
                return false;
            };
            log::info!(
                "san-authz: configured, source {:?}, {} rule(s), {} trusted CA(s){}",
                c.source,
                c.rules.len(),
                c.policy.trusted_cas.len(),
                if c.dry_run { ", DRY RUN" } else { "" }
            );
            self.cache = Rc::new(RefCell::new(SignatureCache::new(c.signature_cache_size)));
            self.config = Some(Rc::new(c));
            self.metrics = Some(Rc::new(Metrics::define()));
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            let config = self.config.clone()?;
            let metrics = self.metrics.clone()?;
            Some(Box::new(Http {
                config,
                metrics,
                cache: self.cache.clone(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        cache: Rc<RefCell<SignatureCache>>,
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
            let mut req = Request::default();
            let v = match self.cache.try_borrow_mut() {
                Ok(mut cache) => req.on_headers(&self.config, &mut cache, &mut ProxyHost),
                // Never contended (one callback at a time); fall back to no cache.
                Err(_) => req.on_headers(&self.config, &mut SignatureCache::new(0), &mut ProxyHost),
            };
            let m = &self.metrics;
            // Every decision is labelled by gateway and route (denials
            // also by reason); a denial already read the names.
            let names = req
                .names
                .take()
                .unwrap_or_else(|| filter_core::decision::route_names(&ProxyHost));
            let mut tags = vec![
                ("gateway", names.gateway.as_str()),
                ("route", names.route.as_str()),
            ];
            let name = match req.decision.outcome {
                Outcome::Allowed => ALLOWED,
                Outcome::Denied => DENIED,
                Outcome::DryRunDenied => DRY_RUN_DENIED,
            };
            if req.decision.outcome != Outcome::Allowed {
                tags.push(("reason", req.decision.reason.unwrap_or("unknown")));
            }
            proxy::increment_tagged(name, &tags);
            if req.decision.certificate_rejected {
                proxy::increment(m.certificate_rejected);
            }
            proxy::action(v)
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
