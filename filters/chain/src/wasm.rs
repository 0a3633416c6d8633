//! The proxy-wasm side of the chain (wasm32, and natively with
//! `--cfg gateway_native`: the native module's `chain` filter): the chain's
//! root context holds every filter's root context, its HTTP context holds
//! every filter's HTTP context and the request's [`RequestContext`], and
//! both only move callbacks between Envoy, the filters and the step machine
//! ([`Run`]).
//!
//! Every callback of the chain's contexts holds a [`hooks::Scope`] from
//! entry to exit: the filters' `filter_core::proxy` calls are redirected to
//! the chain only then, never on a thread's other filters (natively the
//! per-filter blocks, other gateways' chains and the main thread share the
//! threads; filter_core::chain_hooks).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use filter_core::context::RequestContext;
use filter_core::proxy::{chain as hooks, RawHost};
use filter_core::HttpHost;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
#[cfg(target_arch = "wasm32")]
use proxy_wasm::types::LogLevel;
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::config::{self, Compiled};
use crate::run::{Run, Stage, Step};

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(root_context);
}}

/// The chain's root context, for a module that links the chain beside
/// other filters and dispatches on the plugin's `root_id` (the native
/// module, filters/native: `filter_name: chain`).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root::new(context_id))
}

/// The filters that read the request body (get body and trailer callbacks).
const READS_BODY: [&str; 3] = ["sanitize", "replay-guard", "e2ee"];

/// A filter's root context, as its own module would create it.
fn filter_root(name: &str, id: u32) -> Option<Box<dyn RootContext>> {
    Some(match name {
        "sanitize" => sanitize::root_context(id),
        "jwt" => jwt::root_context(id),
        "replay-guard" => replay_guard::root_context(id),
        // chain.wasm is built without e2ee (Cargo feature `e2ee`):
        // chain_response.wasm runs the gateways that have it.
        #[cfg(feature = "e2ee")]
        "e2ee" => e2ee::root_context(id),
        "fds-block" => fds_block::root_context(id),
        "passport" => passport::root_context(id),
        "route-breaker" => route_breaker::root_context(id),
        "san-authz" => san_authz::root_context(id),
        "oidc" => oidc::root_context(id),
        _ => return None,
    })
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The filters' timers on the chain's one root timer: each filter keeps the
/// period it asked for and is ticked when it is due.
#[derive(Debug, Default)]
struct Timers {
    period: Vec<Duration>,
    due: Vec<u64>,
    /// The period the host ticks the chain's root context at.
    host: Duration,
}

impl Timers {
    fn new(n: usize) -> Self {
        Timers {
            period: vec![Duration::ZERO; n],
            due: vec![0; n],
            host: Duration::ZERO,
        }
    }

    /// Records the periods the filters asked for; returns the host period
    /// when it has to change.
    fn update(&mut self, asked: Vec<(usize, Duration)>, now: u64) -> Option<Duration> {
        for (i, p) in asked {
            if let (Some(per), Some(due)) = (self.period.get_mut(i), self.due.get_mut(i)) {
                *per = p;
                *due = now.saturating_add(ms(p));
            }
        }
        let want = self
            .period
            .iter()
            .copied()
            .filter(|p| !p.is_zero())
            .min()
            .unwrap_or(Duration::ZERO);
        (want != self.host).then(|| {
            self.host = want;
            want
        })
    }

    /// The filters due at `now` (their next due time is set).
    fn due(&mut self, now: u64) -> Vec<usize> {
        let slack = ms(self.host) / 2;
        let mut out = Vec::new();
        for (i, (p, d)) in self.period.iter().zip(self.due.iter_mut()).enumerate() {
            if !p.is_zero() && now.saturating_add(slack) >= *d {
                *d = now.saturating_add(ms(*p));
                out.push(i);
            }
        }
        out
    }
}

/// What the chain's root context shares with its requests.
struct Shared {
    config: Compiled,
    timers: RefCell<Timers>,
    /// The requests in flight, to resume them from a root callback.
    requests: RefCell<HashMap<u32, Weak<RefCell<Request>>>>,
    root_id: u32,
}

impl Shared {
    /// Applies the tick periods the filters asked for. From an HTTP
    /// callback (`from`: its context id) the root context is made effective
    /// for the change and the request again after it.
    fn apply_ticks(&self, from: Option<u32>) {
        let asked = hooks::take_ticks();
        if asked.is_empty() {
            return;
        }
        let Some(period) = self.timers.borrow_mut().update(asked, now_ms()) else {
            return;
        };
        if let Some(id) = from {
            if hostcalls::set_effective_context(self.root_id).is_err() {
                return;
            }
            if let Err(e) = hostcalls::set_tick_period(period) {
                log::warn!("chain: set_tick_period failed: {e:?}");
            }
            let _ = hostcalls::set_effective_context(id);
            hooks::select(id);
        } else if let Err(e) = hostcalls::set_tick_period(period) {
            log::warn!("chain: set_tick_period failed: {e:?}");
        }
    }

    /// Continues the requests a filter resumed from a root callback (a
    /// callout's answer): the filters after it run, then the request goes
    /// on, or waits for the next filter that holds it.
    fn resume_requests(&self) {
        loop {
            let resumed = hooks::take_resumed();
            if resumed.is_empty() {
                break;
            }
            self.resume_ids(resumed);
            let _ = hostcalls::set_effective_context(self.root_id);
            hooks::deselect(self.root_id);
        }
        self.apply_ticks(None);
    }

    /// Continues each request of `ids` (each made the effective context).
    fn resume_ids(&self, ids: Vec<u32>) {
        for id in ids {
            let Some(req) = self.requests.borrow().get(&id).and_then(Weak::upgrade) else {
                continue;
            };
            if hostcalls::set_effective_context(id).is_err() {
                continue;
            }
            hooks::select(id);
            let step = req.borrow_mut().resume();
            if step == Step::Continue {
                req.borrow().flush();
                if let Err(e) = hostcalls::resume_http_request() {
                    log::warn!("chain: resume_http_request failed: {e:?}");
                }
            }
        }
    }
}

struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
    filters: Vec<Box<dyn RootContext>>,
}

impl Root {
    fn new(id: u32) -> Self {
        Root {
            id,
            shared: None,
            filters: Vec::new(),
        }
    }

    fn after(&self) {
        if let Some(s) = &self.shared {
            s.resume_requests();
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        let _scope = hooks::enter();
        hooks::deselect(self.id);
        // Each filter knows its own calls' tokens and ignores the others.
        for (i, f) in self.filters.iter_mut().enumerate() {
            hooks::set_stage(i);
            f.on_http_call_response(token, headers, body, trailers);
        }
        self.after();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let _scope = hooks::enter();
        hooks::deselect(self.id);
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match config::load(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("chain: {e}");
                return false;
            }
        };
        let mut filters = Vec::with_capacity(config.parts.len());
        let _ = hooks::take_ticks();
        for (i, part) in config.parts.iter().enumerate() {
            let name = &part.instance;
            let Some(mut root) = filter_root(part.filter, self.id) else {
                log::error!(
                    "chain: invalid config at `filters[{i}].name`: {} is not linked into this module (e2ee: chain_response.wasm)",
                    part.filter
                );
                return false;
            };
            hooks::set_stage(i);
            let bytes = part.config.clone();
            let len = bytes.len();
            let ok = hooks::with_config(bytes, || root.on_configure(len));
            if !ok {
                log::error!(
                    "chain: filters[{i}] ({name}) refused its configuration (the error above names the field)"
                );
                return false;
            }
            filters.push(root);
        }
        log::info!(
            "chain: configured {} filter(s): {}",
            config.parts.len(),
            config
                .parts
                .iter()
                .map(|p| p.instance.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
        let n = filters.len();
        self.filters = filters;
        let shared = Rc::new(Shared {
            config,
            timers: RefCell::new(Timers::new(n)),
            requests: RefCell::new(HashMap::new()),
            root_id: self.id,
        });
        shared.apply_ticks(None);
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        let _scope = hooks::enter();
        hooks::deselect(self.id);
        let Some(s) = self.shared.clone() else { return };
        let due = s.timers.borrow_mut().due(now_ms());
        for i in due {
            if let Some(f) = self.filters.get_mut(i) {
                hooks::set_stage(i);
                f.on_tick();
            }
        }
        self.after();
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        let _scope = hooks::enter();
        let shared = self.shared.clone()?;
        let cfg = &shared.config;
        let ctx = Rc::new(RefCell::new(RequestContext::new(
            cfg.writes,
            cfg.export.clone(),
        )));
        let mut stages = Vec::with_capacity(self.filters.len());
        for (i, (f, part)) in self.filters.iter().zip(cfg.parts.iter()).enumerate() {
            hooks::set_stage(i);
            let http = f.create_http_context(id)?;
            stages.push(Member {
                index: i,
                http,
                reads_body: READS_BODY.contains(&part.filter),
                on_response: part.on_response(),
                ctx: ctx.clone(),
                headers: 0,
            });
        }
        hooks::register(id, ctx.clone());
        let req = Rc::new(RefCell::new(Request {
            run: Run::default(),
            stages,
            ctx,
        }));
        shared.requests.borrow_mut().insert(id, Rc::downgrade(&req));
        Some(Box::new(Http { id, shared, req }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One filter's HTTP context inside a request of the chain.
struct Member {
    index: usize,
    http: Box<dyn HttpContext>,
    reads_body: bool,
    /// The filter implements response callbacks (config::RESPONSE_FILTERS).
    on_response: bool,
    ctx: hooks::Shared,
    /// The header count of the current callback (passed through).
    headers: usize,
}

impl Member {
    fn step(&self, a: Action) -> Step {
        if self.ctx.try_borrow().is_ok_and(|c| c.responded()) {
            Step::Replied
        } else if matches!(a, Action::Continue) {
            Step::Continue
        } else {
            Step::Hold
        }
    }
}

/// A response step's answer. The request's local reply (a denial) has its
/// response go through the filters that ran like any other, so a reply
/// sent earlier does not end a response step (unlike [`Member::step`]).
fn response_step(a: Action) -> Step {
    if matches!(a, Action::Continue) {
        Step::Continue
    } else {
        Step::Hold
    }
}

impl Stage for Member {
    fn headers(&mut self, end_of_stream: bool) -> Step {
        hooks::set_stage(self.index);
        let a = self
            .http
            .on_http_request_headers(self.headers, end_of_stream);
        self.step(a)
    }
    fn body(&mut self, size: usize, end_of_stream: bool) -> Step {
        hooks::set_stage(self.index);
        let a = self.http.on_http_request_body(size, end_of_stream);
        self.step(a)
    }
    fn trailers(&mut self) -> Step {
        hooks::set_stage(self.index);
        let a = self.http.on_http_request_trailers(0);
        self.step(a)
    }
    fn reads_body(&self) -> bool {
        self.reads_body
    }
    fn on_response(&self) -> bool {
        self.on_response
    }
    fn response_headers(&mut self, end_of_stream: bool) -> Step {
        hooks::set_stage(self.index);
        let a = self
            .http
            .on_http_response_headers(self.headers, end_of_stream);
        response_step(a)
    }
    fn response_body(&mut self, size: usize, end_of_stream: bool) -> Step {
        hooks::set_stage(self.index);
        let a = self.http.on_http_response_body(size, end_of_stream);
        response_step(a)
    }
    fn response_trailers(&mut self) -> Step {
        hooks::set_stage(self.index);
        let a = self.http.on_http_response_trailers(0);
        response_step(a)
    }
    fn body_size(&mut self, response: bool) -> Option<usize> {
        if response {
            // The filter may have replaced the chunk with raw host calls
            // (e2ee's records): its length now, for the next response
            // filter (read only when one follows).
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, usize::MAX)
                .ok()
                .map(|b| b.map_or(0, |b| b.len()))
        } else {
            self.ctx
                .try_borrow_mut()
                .ok()
                .and_then(|mut c| c.take_replaced_body())
        }
    }
}

/// A request of the chain: the step machine, the filters' HTTP contexts
/// and the request context they share.
struct Request {
    run: Run,
    stages: Vec<Member>,
    ctx: hooks::Shared,
}

impl Request {
    fn responded(&self) -> bool {
        self.ctx.try_borrow().is_ok_and(|c| c.responded())
    }

    /// The filter that held the request let it go.
    fn resume(&mut self) -> Step {
        if self.responded() {
            self.run.mark_replied();
            return Step::Replied;
        }
        match self.run.held() {
            Some(i) => self.run.resume(&mut self.stages, i),
            None => Step::Hold,
        }
    }

    /// Applies the collected header writes.
    fn flush(&self) {
        if let Ok(mut c) = self.ctx.try_borrow_mut() {
            c.flush(&mut RawHost);
        }
    }
}

struct Http {
    id: u32,
    shared: Rc<Shared>,
    req: Rc<RefCell<Request>>,
}

impl Http {
    /// Every callback starts here: the chain's redirections on (until the
    /// returned scope drops, at the callback's exit) and the request's
    /// context serving the filters.
    fn enter(&self) -> hooks::Scope {
        let scope = hooks::enter();
        hooks::select(self.id);
        scope
    }

    /// Every request callback ends here: tick periods, a resumption asked
    /// for during the callback, and the writes when the request goes on.
    fn leave(&self, step: Step) -> Action {
        self.shared.apply_ticks(Some(self.id));
        let mut step = step;
        let resumed = hooks::take_resumed();
        if resumed.contains(&self.id) {
            step = self.req.borrow_mut().resume();
        }
        let others: Vec<u32> = resumed.into_iter().filter(|i| *i != self.id).collect();
        if !others.is_empty() {
            // Another request resumed from here (not expected: callouts
            // answer in their own callbacks): continued like from a root.
            self.shared.resume_ids(others);
            let _ = hostcalls::set_effective_context(self.id);
            hooks::select(self.id);
        }
        match step {
            Step::Continue => {
                self.req.borrow().flush();
                Action::Continue
            }
            Step::Hold | Step::Replied => Action::Pause,
        }
    }

    /// The route's disabled filters, read once per request (the route name
    /// is a stable property of the request context) when the chain has any.
    fn route_off(&self) -> Vec<bool> {
        let cfg = &self.shared.config;
        if cfg.disabled.is_empty() {
            return Vec::new();
        }
        let route = filter_core::proxy::ProxyHost
            .property(&["xds", "route_name"])
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        cfg.disabled_on(&route)
            .map(<[bool]>::to_vec)
            .unwrap_or_default()
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        // A callout a filter started from this request (a per-request claim,
        // say): its answer goes to the filters that have run; the one that
        // started it resumes the request through proxy::resume_http_request.
        let _scope = self.enter();
        {
            let mut r = self.req.borrow_mut();
            let ran: Vec<usize> = r.run.ran().collect();
            for i in ran {
                if let Some(m) = r.stages.get_mut(i) {
                    hooks::set_stage(i);
                    m.http.on_http_call_response(token, headers, body, trailers);
                }
            }
            if r.responded() {
                r.run.mark_replied();
            }
        }
        // Resumed (the filter that held it called proxy::resume_http_request):
        // the filters after it run, and the request goes on if they let it.
        let held = self.req.borrow().run.held().is_some();
        if held && self.leave(Step::Hold) == Action::Continue {
            if let Err(e) = hostcalls::resume_http_request() {
                log::warn!("chain: resume_http_request failed: {e:?}");
            }
        } else {
            self.shared.apply_ticks(Some(self.id));
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, n: usize, end_of_stream: bool) -> Action {
        let _scope = self.enter();
        let off = self.route_off();
        let step = {
            let mut r = self.req.borrow_mut();
            r.run = Run::new(off);
            let Request { run, stages, .. } = &mut *r;
            for m in stages.iter_mut() {
                m.headers = n;
            }
            run.headers(stages, end_of_stream)
        };
        self.leave(step)
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let _scope = self.enter();
        let step = {
            let mut r = self.req.borrow_mut();
            let Request { run, stages, .. } = &mut *r;
            run.body(stages, size, end_of_stream)
        };
        self.leave(step)
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        let _scope = self.enter();
        let step = {
            let mut r = self.req.borrow_mut();
            let Request { run, stages, .. } = &mut *r;
            run.trailers(stages)
        };
        self.leave(step)
    }

    // The response steps: only a module that exports these callbacks
    // (chain_response.wasm, for chains with a filter of
    // config::RESPONSE_FILTERS) is entered for them; chain.wasm's exports
    // leave them out (filters/wasm-opt/callbacks), so a gateway whose
    // filters need no response callback never enters the VM for its
    // responses.
    fn on_http_response_headers(&mut self, n: usize, end_of_stream: bool) -> Action {
        let _scope = self.enter();
        let mut r = self.req.borrow_mut();
        let Request { run, stages, .. } = &mut *r;
        for m in stages.iter_mut() {
            m.headers = n;
        }
        respond(run.response_headers(stages, end_of_stream))
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let _scope = self.enter();
        let mut r = self.req.borrow_mut();
        let Request { run, stages, .. } = &mut *r;
        respond(run.response_body(stages, size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        let _scope = self.enter();
        let mut r = self.req.borrow_mut();
        let Request { run, stages, .. } = &mut *r;
        respond(run.response_trailers(stages))
    }

    fn on_log(&mut self) {
        let _scope = self.enter();
        let mut r = self.req.borrow_mut();
        let ran: Vec<usize> = r.run.ran().collect();
        for i in ran {
            if let Some(m) = r.stages.get_mut(i) {
                hooks::set_stage(i);
                m.http.on_log();
            }
        }
    }
}

/// A response step's action: on, or held (Envoy buffers the body for the
/// filter that holds it).
fn respond(step: Step) -> Action {
    match step {
        Step::Continue => Action::Continue,
        Step::Hold | Step::Replied => Action::Pause,
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        hooks::unregister(self.id);
        if let Ok(mut reqs) = self.shared.requests.try_borrow_mut() {
            reqs.remove(&self.id);
        }
    }
}
