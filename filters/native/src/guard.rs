//! The filters' root and HTTP contexts, each wrapped so that a panic in a
//! filter never unwinds into the proxy-wasm SDK's `extern "C"` entry points
//! (where Rust would abort the whole process): every callback runs inside
//! `catch_unwind`. A request whose filter panicked is answered 503 with the
//! JSON denial shape (fail closed, the wasm blocks' `failure_policy:
//! FAIL_CLOSED`) and that context stays off; the other requests of the
//! worker go on (in wasm, the panic would have killed the worker's VM).

use std::panic::{catch_unwind, AssertUnwindSafe};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::envelope::FILTERS;

use crate::failure_body;

fn caught<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> Result<R, R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(_) => {
            log::error!("panic in {what} (contained; the request is refused)");
            Err(fallback)
        }
    }
}

/// The SDK's root-context factory on every thread of the module: the
/// filter whose root context `host` is creating.
pub fn new_root(context_id: u32) -> Box<dyn RootContext> {
    let name = crate::host::configuring_filter().unwrap_or("unknown");
    let inner = caught("new_root", None, || {
        Some(match FILTERS.iter().position(|f| *f == name) {
            Some(0) => sanitize::root_context(context_id),
            Some(1) => jwt::root_context(context_id),
            Some(2) => replay_guard::root_context(context_id),
            Some(3) => fds_block::root_context(context_id),
            Some(4) => passport::root_context(context_id),
            Some(5) => route_breaker::root_context(context_id),
            Some(6) => san_authz::root_context(context_id),
            Some(7) => e2ee::root_context(context_id),
            Some(8) => oidc::root_context(context_id),
            Some(9) => chain::root_context(context_id),
            _ if name == "bench_noop" => Box::new(NoopRoot),
            _ => return None,
        })
    })
    .unwrap_or(None);
    Box::new(GuardRoot { name, inner })
}

struct GuardRoot {
    name: &'static str,
    inner: Option<Box<dyn RootContext>>,
}

impl GuardRoot {
    fn run<R>(
        &mut self,
        what: &str,
        fallback: R,
        f: impl FnOnce(&mut Box<dyn RootContext>) -> R,
    ) -> R
    where
        R: Clone,
    {
        let Some(inner) = self.inner.as_mut() else {
            return fallback;
        };
        match caught(what, fallback, || f(inner)) {
            Ok(r) => r,
            Err(fallback) => {
                self.inner = None;
                fallback
            }
        }
    }
}

impl Context for GuardRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        self.run("root on_http_call_response", (), |r| {
            r.on_http_call_response(token, headers, body, trailers)
        });
    }
    fn on_done(&mut self) -> bool {
        self.run("root on_done", true, |r| r.on_done())
    }
}

impl RootContext for GuardRoot {
    fn on_vm_start(&mut self, size: usize) -> bool {
        self.run("on_vm_start", false, |r| r.on_vm_start(size))
    }
    fn on_configure(&mut self, size: usize) -> bool {
        if self.inner.is_none() {
            log::error!(
                "gateway_native: no filter named {:?} (expected one of {FILTERS:?})",
                self.name
            );
            return false;
        }
        self.run("on_configure", false, |r| r.on_configure(size))
    }
    fn on_tick(&mut self) {
        self.run("on_tick", (), |r| r.on_tick());
    }
    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let inner = self.inner.as_ref().and_then(|r| {
            caught("create_http_context", None, || {
                r.create_http_context(context_id)
            })
            .unwrap_or(None)
        });
        // Never None: the SDK panics on a root that makes no context.
        Some(Box::new(GuardHttp {
            name: self.name,
            inner,
            responded: false,
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct GuardHttp {
    name: &'static str,
    /// `None`: no context (its root had no configuration) or it panicked.
    inner: Option<Box<dyn HttpContext>>,
    responded: bool,
}

impl GuardHttp {
    /// Runs a request/response callback; without a context (or after a
    /// panic) the request is refused once with the 503 denial.
    fn step(&mut self, what: &str, f: impl FnOnce(&mut Box<dyn HttpContext>) -> Action) -> Action {
        if let Some(inner) = self.inner.as_mut() {
            match caught(what, Action::Pause, || f(inner)) {
                Ok(a) => return a,
                Err(_) => self.inner = None,
            }
        }
        if !self.responded {
            self.responded = true;
            let body = failure_body(self.name);
            let _ = proxy_wasm::hostcalls::send_http_response(
                503,
                vec![("content-type", "application/json")],
                Some(body.as_bytes()),
            );
        }
        Action::Pause
    }

    fn quiet(&mut self, what: &str, f: impl FnOnce(&mut Box<dyn HttpContext>)) {
        if let Some(inner) = self.inner.as_mut() {
            if caught(what, (), || f(inner)).is_err() {
                self.inner = None;
            }
        }
    }
}

impl Context for GuardHttp {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        if self.inner.is_none() {
            return;
        }
        let failed = {
            let Some(inner) = self.inner.as_mut() else {
                return;
            };
            caught("on_http_call_response", (), || {
                inner.on_http_call_response(token, headers, body, trailers)
            })
            .is_err()
        };
        if failed {
            // The request was waiting for this answer: refuse it now.
            self.inner = None;
            self.step("on_http_call_response", |_| Action::Pause);
            let _ = proxy_wasm::hostcalls::resume_http_request();
        }
    }
    fn on_done(&mut self) -> bool {
        let mut done = true;
        if let Some(inner) = self.inner.as_mut() {
            done = caught("on_done", true, || inner.on_done()).unwrap_or(true);
        }
        done
    }
}

impl HttpContext for GuardHttp {
    fn on_http_request_headers(&mut self, n: usize, eos: bool) -> Action {
        self.step("on_http_request_headers", |c| {
            c.on_http_request_headers(n, eos)
        })
    }
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.step("on_http_request_body", |c| {
            c.on_http_request_body(size, eos)
        })
    }
    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        self.step("on_http_request_trailers", |c| {
            c.on_http_request_trailers(n)
        })
    }
    fn on_http_response_headers(&mut self, n: usize, eos: bool) -> Action {
        if self.responded {
            return Action::Continue;
        }
        self.step("on_http_response_headers", |c| {
            c.on_http_response_headers(n, eos)
        })
    }
    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if self.responded {
            return Action::Continue;
        }
        self.step("on_http_response_body", |c| {
            c.on_http_response_body(size, eos)
        })
    }
    fn on_http_response_trailers(&mut self, n: usize) -> Action {
        if self.responded {
            return Action::Continue;
        }
        self.step("on_http_response_trailers", |c| {
            c.on_http_response_trailers(n)
        })
    }
    fn on_log(&mut self) {
        self.quiet("on_log", |c| c.on_log());
    }
}

/// `bench_noop` (crate::envelope::BENCH_FILTERS, bench/test only): a root
/// that configures and an HTTP context that continues everywhere, so that
/// the bench measures the host and the SDK's dispatcher alone.
struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        true
    }
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopHttp;

impl Context for NoopHttp {}

impl HttpContext for NoopHttp {}
