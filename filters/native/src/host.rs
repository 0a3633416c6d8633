//! The native proxy-wasm host: what Envoy's wasm host does for a plugin,
//! done over dynamic-module callbacks, with the filters' unchanged
//! proxy-wasm glue (their root and HTTP contexts, compiled natively) on top.
//!
//! Threading. Envoy creates a filter configuration on its main thread and
//! the streams on its worker threads; the proxy-wasm SDK keeps its
//! dispatcher (root and HTTP contexts) in a thread-local. So, like one wasm
//! VM per worker:
//! * each worker thread creates its own root context per configuration on
//!   its first stream (`on_configure` with the block's JSON), and the main
//!   thread creates one at load time to validate the configuration (a
//!   configuration that does not load makes `config_new` fail: Envoy
//!   refuses the listener, with the filter's error naming the field);
//! * shared data is one process-wide bounded map ([`crate::shared`]);
//! * metrics are counted per configuration and flushed to Envoy on the main
//!   thread ([`crate::metrics`]);
//! * HTTP callouts from a request's context go through the stream's own
//!   callout;
//! * root contexts tick and make callouts (docs/native.md, "Ticks and root
//!   callouts"): the main thread's roots on their configuration's scheduler,
//!   committed by one process-wide timer thread, and through the
//!   configuration's callout; a worker's roots lazily, before a new stream
//!   of that worker is served, and, while the worker has paused streams,
//!   through the scheduler of one of them (the timer thread commits to it);
//!   a worker root's callouts are started by the main thread (the
//!   configuration's callout: no worker stream has to outlive them) and the
//!   answer is handed back to that worker's inbox, delivered the same ways.
//!
//! Like Envoy's wasm host, a local reply or a resumption asked for inside a
//! callback is carried out after the callback returns (so that Envoy's
//! synchronous re-entry into this filter, e.g. the local reply's response
//! headers, never meets a context that is still borrowed).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

/// The per-thread tables (context ids, stream pointers, tokens: keys the
/// host makes itself, hashed on every stream): foldhash, not SipHash.
type FastMap<K, V> = foldhash::HashMap<K, V>;

use crate::codec;
use crate::envelope::{self, Envelope};
use crate::ffi::{envoy, sdk, ConfigPtr, FilterPtr, SchedulerPtr, StreamSchedulerPtr};
use crate::metrics::{self, Kind, Pending, Registry};
use crate::props::{self, Source};
use crate::shared::Store;
use crate::ticks::{Fire, Schedule, Ticks};

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;
pub const STOP_ALL: u32 = 4;
/// `..._request_body_status`: StopIterationAndBuffer, StopIterationNoBuffer.
pub const BODY_STOP_AND_BUFFER: u32 = 1;
pub const BODY_STOP_NO_BUFFER: u32 = 3;

/// abi.h header map types (and proxy-wasm's `MapType` 0..3, the same numbers).
/// abi.h header map type of the request headers.
pub(crate) const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
/// Set by Envoy from the verified connection where the listener says so
/// (`peer_certificate_from_xfcc`, crate::envelope).
const XFCC: &[u8] = b"x-forwarded-client-cert";
/// proxy-wasm `MapType::HttpCallResponseHeaders`.
const CALL_RESPONSE_HEADERS: u32 = 6;
/// abi.h body types.
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;
const RECEIVED_RESPONSE_BODY: u32 = 2;
const BUFFERED_RESPONSE_BODY: u32 = 3;
/// proxy-wasm `BufferType`.
const BUF_REQUEST_BODY: u32 = 0;
const BUF_RESPONSE_BODY: u32 = 1;
const BUF_CALL_RESPONSE_BODY: u32 = 4;
const BUF_PLUGIN_CONFIGURATION: u32 = 7;

/// Header pairs as bytes.
type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// Config scheduler events: a metric flush; root work (the main thread's
/// due ticks, the workers' callouts to start).
const EVENT_FLUSH: u64 = 0;
const EVENT_WORK: u64 = 1;
/// Stream scheduler events: the worker's root work (timer); actions of
/// root work for this stream, posted from another stream's hook.
const EVENT_POSTED: u64 = 2;
/// Root callouts of the workers waiting for the main thread to start them,
/// per configuration (a worker root's callout beyond it fails at once).
const MAX_OUTBOX: usize = 4096;

static SHARED: Store = Store::new();
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::default()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Context ids and callout tokens: unique in the process (the SDK's
/// dispatcher refuses duplicates), never 0.
fn next_id() -> u32 {
    loop {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if id != 0 && id != RAW {
            return id;
        }
    }
}

/// One `DynamicModuleFilter` block's configuration, shared by the main
/// thread and the workers.
pub struct Config {
    envoy: ConfigPtr,
    env: Envelope,
    /// The main-thread scheduler of metric flushes; `None` once the
    /// configuration is destroyed (a late increment then schedules nothing:
    /// the scheduler is deleted under this lock, never used after).
    scheduler: Mutex<Option<SchedulerPtr>>,
    pending: Mutex<Pending>,
    /// When the last flush ran (ms since the epoch).
    last_flush_ms: AtomicU64,
    /// proxy-wasm metric id → Envoy's id on this configuration, for the
    /// metrics defined while the configuration was built (main thread).
    envoy_ids: Mutex<HashMap<u32, usize>>,
    /// Base name → Envoy's id and label names, for [`crate::metrics::LABELLED`].
    labelled: HashMap<&'static str, (usize, &'static [&'static str])>,
    /// Workers' root callouts for the main thread to start.
    outbox: Mutex<Vec<Outgoing>>,
}

/// A worker root's callout, started on the main thread.
struct Outgoing {
    worker: u64,
    root: u32,
    token: u32,
    cluster: Vec<u8>,
    headers: Headers,
    body: Vec<u8>,
    timeout_ms: u64,
}

/// Whose configuration callout it is: the main thread's root (`worker:
/// None`) or a worker's.
struct Origin {
    worker: Option<u64>,
    root: u32,
    token: u32,
}

/// A root callout's answer on its way to a worker (no headers and no body:
/// it failed).
struct Answer {
    root: u32,
    token: u32,
    headers: Headers,
    body: Vec<u8>,
}

/// What Envoy keeps for a configuration (boxed behind its module pointer).
pub type ConfigHandle = Arc<Config>;

/// The context of a `bench_raw` stream: none, and every hook continues.
const RAW: u32 = u32::MAX;

/// One stream of one filter (boxed behind its module pointer).
pub struct Stream {
    config: Arc<Config>,
    filter: FilterPtr,
    /// 0: no context (the worker's root context failed to configure).
    context: u32,
    logged: Cell<bool>,
    /// It has a scheduler in the worker's wakers (created when it paused).
    waker: Cell<bool>,
    /// Its request headers wait for its root's load-time callouts
    /// (`Some(end_of_stream)`): [`warming`].
    held: Cell<Option<bool>>,
    /// An e2ee block's stream: e2ee straight on the callbacks
    /// ([`crate::e2ee_direct`]; no context).
    e2ee: Option<Box<crate::e2ee_direct::Http>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Root,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Log,
    CallResponse,
}

#[derive(Clone)]
struct Current {
    context: u32,
    filter: Option<FilterPtr>,
    config: Arc<Config>,
    phase: Phase,
}

enum Deferred {
    Respond {
        filter: FilterPtr,
        status: u32,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        details: Vec<u8>,
    },
    Continue {
        filter: FilterPtr,
        request: bool,
    },
}

#[derive(Default)]
struct Thread {
    initialized: bool,
    /// Config address → (config, root context id) on this thread.
    roots: FastMap<usize, (Weak<Config>, u32)>,
    /// Live HTTP contexts on this thread → their stream (for
    /// `set_effective_context` from a root's callback).
    contexts: FastMap<u32, (FilterPtr, Weak<Config>)>,
    current: Option<Current>,
    /// The context and phase of the callback Envoy is in (the `Current`
    /// that `enter` installed): `set_effective_context` back to it restores
    /// its phase (a body read after a switch to the root and back is still
    /// this body callback's), a switch to any other stream is outside its
    /// callbacks.
    entry: Option<(u32, Phase)>,
    /// The configuration whose root context is being created.
    configuring: Option<Arc<Config>>,
    deferred: Vec<Deferred>,
    /// Stream → its callouts in flight: (Envoy callout id, SDK token)
    /// (removed whole when the stream is destroyed: O(1) per stream).
    callouts: FastMap<FilterPtr, Vec<(u64, u32)>>,
    call_response: Option<(Headers, Vec<u8>)>,
    /// This is the main thread (configurations are built here).
    main: bool,
    /// This worker's number in the timer's schedule (0: not yet).
    worker: u64,
    /// Set by the main thread when an answer lands in this worker's inbox.
    mail: Option<Arc<AtomicBool>>,
    /// The tick periods of this thread's root contexts.
    ticks: Ticks,
    /// `ticks.next_due()`, cached for the per-stream check.
    next_due: Option<u64>,
    /// Root callouts in flight: SDK token → root context.
    root_calls: FastMap<u32, u32>,
    /// The worker roots' load-time callouts in flight (started by their
    /// `on_configure`): SDK token → root context ([`warming`]).
    warm: FastMap<u32, u32>,
    /// Streams whose request headers wait for their root's load-time
    /// callouts → that root.
    held: FastMap<FilterPtr, u32>,
    /// Main thread: (configuration, Envoy callout id) → whose it is.
    config_callouts: FastMap<(usize, u64), Origin>,
    /// Paused streams' schedulers on this worker.
    wakers: FastMap<FilterPtr, StreamSchedulerPtr>,
    /// Actions of root work for a stream, waiting for its own event.
    posted: FastMap<FilterPtr, Vec<Deferred>>,
    /// Root work is running inside another stream's hook: actions for
    /// streams with a waker are posted to them (never re-entering Envoy
    /// for another stream from inside a hook).
    lazy: bool,
    /// Inside `config_new` (main thread): Envoy still accepts new metrics.
    defining: bool,
    unknown_metric_warned: bool,
}

thread_local! {
    static THREAD: RefCell<Thread> = RefCell::new(Thread::default());
}

fn with<R>(f: impl FnOnce(&mut Thread) -> R) -> R {
    THREAD.with(|t| f(&mut t.borrow_mut()))
}

fn current() -> Option<Current> {
    with(|t| t.current.clone())
}

/// The current context's stream (none in a root context), without
/// cloning the context (the hot host calls: headers, properties).
fn current_filter() -> Option<FilterPtr> {
    with(|t| t.current.as_ref().and_then(|c| c.filter))
}

// ------------------------------------------------------------------ lifecycle

pub fn program_init() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
}

fn init_thread() {
    let first = with(|t| !std::mem::replace(&mut t.initialized, true));
    if first {
        proxy_wasm::set_root_context(crate::guard::new_root);
    }
}

/// The filter name of the root context being created on this thread.
pub(crate) fn configuring_filter() -> Option<&'static str> {
    with(|t| t.configuring.as_ref().map(|c| c.env.name()))
}

/// Runs `f` with `cur` as the current context, then restores the previous
/// one and carries out what the callback deferred.
fn enter<R>(cur: Current, f: impl FnOnce() -> R) -> (R, bool) {
    let own = cur.filter;
    let (prev, prev_entry) = with(|t| {
        let entry = t.entry.replace((cur.context, cur.phase));
        (t.current.replace(cur), entry)
    });
    let r = f();
    let deferred = with(|t| {
        t.current = prev;
        t.entry = prev_entry;
        let all = std::mem::take(&mut t.deferred);
        if !t.lazy {
            return all;
        }
        let mut now = Vec::new();
        for d in all {
            let target = match &d {
                Deferred::Respond { filter, .. } | Deferred::Continue { filter, .. } => *filter,
            };
            match t.wakers.get(&target) {
                Some(w) => {
                    envoy::stream_scheduler_commit(*w, EVENT_POSTED);
                    t.posted.entry(target).or_default().push(d);
                }
                None => now.push(d),
            }
        }
        now
    });
    (r, run_deferred(deferred, own))
}

/// Carries out deferred local replies and resumptions; whether one was a
/// local reply of `own`.
fn run_deferred(deferred: Vec<Deferred>, own: Option<FilterPtr>) -> bool {
    let mut responded = false;
    for d in deferred {
        match d {
            Deferred::Respond {
                filter,
                status,
                headers,
                body,
                details,
            } => {
                if Some(filter) == own {
                    responded = true;
                }
                envoy::send_response(filter, status, &headers, &body, &details);
            }
            Deferred::Continue { filter, request } => {
                if request {
                    envoy::continue_decoding(filter);
                } else {
                    envoy::continue_encoding(filter);
                }
            }
        }
    }
    responded
}

/// Creates this thread's root context for `config` (once), configured with
/// the block's JSON. `None` when `on_configure` refused it.
fn ensure_root(config: &Arc<Config>) -> Option<u32> {
    let key = Arc::as_ptr(config) as usize;
    if let Some(id) = with(|t| t.roots.get(&key).map(|(_, id)| *id)) {
        return (id != 0).then_some(id);
    }
    init_thread();
    sweep_roots();
    let id = next_id();
    // Registered before `on_configure`: a root may ask for its tick period
    // and start callouts while it configures (jwt's first JWKS fetch).
    with(|t| {
        t.configuring = Some(config.clone());
        t.roots.insert(key, (Arc::downgrade(config), id));
    });
    let cur = Current {
        context: id,
        filter: None,
        config: config.clone(),
        phase: Phase::Root,
    };
    let (ok, _) = enter(cur, || {
        sdk::on_context_create(id, 0);
        sdk::on_vm_start(id) && sdk::on_configure(id, config.env.config.len())
    });
    let worker_tick = with(|t| {
        t.configuring = None;
        if !ok {
            t.roots.insert(key, (Arc::downgrade(config), 0));
            t.ticks.remove(id);
            t.root_calls.retain(|_, r| *r != id);
            t.warm.retain(|_, r| *r != id);
            t.next_due = t.ticks.next_due();
            return false;
        }
        // A worker's root is created by its first stream, where a wasm
        // VM's root has existed (and ticked) since load: its first tick is
        // due at once, so that it catches up (fds-block loads the list the
        // other roots published) before that stream is served.
        if t.main || !t.ticks.make_due(id, now_ms()) {
            return false;
        }
        t.next_due = t.ticks.next_due();
        true
    });
    if worker_tick {
        publish_worker();
    }
    if !ok {
        log(
            4,
            format!(
                "{}: configuration refused on this thread",
                config.env.name()
            )
            .as_bytes(),
        );
        finish_context(id);
        return None;
    }
    Some(id)
}

/// Deletes this thread's root contexts of configurations Envoy destroyed.
fn sweep_roots() {
    let dead: Vec<(usize, u32)> = with(|t| {
        t.roots
            .iter()
            .filter(|(_, (w, _))| w.strong_count() == 0)
            .map(|(k, (_, id))| (*k, *id))
            .collect()
    });
    for (key, id) in dead {
        with(|t| {
            t.roots.remove(&key);
            t.ticks.remove(id);
            t.root_calls.retain(|_, r| *r != id);
            t.warm.retain(|_, r| *r != id);
            t.next_due = t.ticks.next_due();
        });
        if id != 0 {
            finish_context(id);
        }
    }
}

fn finish_context(id: u32) {
    sdk::on_done(id);
    sdk::on_delete(id);
}

/// Main thread: a block's configuration. Loads it once here (root context
/// on the main thread): `None` (Envoy rejects the configuration) when the
/// envelope or the filter's own loader refuses it.
pub fn config_new(envoy_ptr: ConfigPtr, name: &[u8], config: &[u8]) -> Option<ConfigHandle> {
    let env = match envelope::parse(name, config) {
        Ok(e) => e,
        Err(e) => {
            log(4, format!("gateway_native: {e}").as_bytes());
            return None;
        }
    };
    let scheduler = envoy::config_scheduler_new(envoy_ptr);
    let mut labelled = HashMap::new();
    for (name, labels) in metrics::labelled_for(env.metrics_name()) {
        let ls: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
        match envoy::define_metric(envoy_ptr, 0, name.as_bytes(), &ls) {
            Ok(id) => {
                labelled.insert(name, (id, labels));
            }
            Err(r) => log(
                3,
                format!("gateway_native: could not define {name} (metrics result {r})").as_bytes(),
            ),
        }
    }
    let c = Arc::new(Config {
        envoy: envoy_ptr,
        env,
        scheduler: Mutex::new(scheduler),
        last_flush_ms: AtomicU64::new(0),
        pending: Mutex::new(Pending::default()),
        envoy_ids: Mutex::new(HashMap::new()),
        labelled,
        outbox: Mutex::new(Vec::new()),
    });
    lock(&timer().0)
        .configs
        .insert(config_key(&c), Arc::downgrade(&c));
    with(|t| {
        t.main = true;
        t.defining = true;
    });
    if c.env.raw() {
        // bench_raw: no root, no context (crate::envelope::BENCH_FILTERS).
        with(|t| t.defining = false);
        return Some(c);
    }
    if c.env.direct() || c.env.claim_direct() || c.env.e2ee() {
        // bench_jwt_direct, bench_claim_direct, e2ee: no root either; jwt's
        // or e2ee's checks and counters, or the claim's settings, here.
        let ok = if c.env.direct() {
            crate::direct::configure(&c)
        } else if c.env.e2ee() {
            crate::e2ee_direct::configure(&c)
        } else {
            crate::claim::configure(&c)
        };
        with(|t| t.defining = false);
        if !ok {
            config_destroy(c);
            return None;
        }
        register_for_flushes(&c);
        return Some(c);
    }
    let root = ensure_root(&c);
    with(|t| t.defining = false);
    match root {
        Some(_) => {
            register_for_flushes(&c);
            Some(c)
        }
        None => {
            config_destroy(c);
            None
        }
    }
}

pub fn config_destroy(c: ConfigHandle) {
    flush_metrics(&c);
    if let Some(s) = lock(&c.scheduler).take() {
        envoy::config_scheduler_delete(s);
    }
    let key = config_key(&c);
    {
        let mut g = lock(&timer().0);
        g.configs.remove(&key);
        g.sched.set_main(key, None);
    }
    with(|t| t.config_callouts.retain(|(k, _), _| *k != key));
    drop(c);
    sweep_roots();
}

/// Worker thread: a new stream of `config`'s filter.
pub fn filter_new(config: &ConfigHandle, filter: FilterPtr) -> Stream {
    if config.env.raw() || config.env.direct() || config.env.claim_direct() || config.env.e2ee() {
        return Stream {
            config: config.clone(),
            filter,
            context: RAW,
            logged: Cell::new(true),
            waker: Cell::new(false),
            held: Cell::new(None),
            e2ee: config
                .env
                .e2ee()
                .then(|| Box::new(crate::e2ee_direct::new_stream(config))),
        };
    }
    let root = ensure_root(config);
    // The worker's roots first: due ticks, answers to their callouts.
    lazy_work();
    let context = match root {
        Some(root) => {
            let id = next_id();
            let cur = Current {
                context: id,
                filter: Some(filter),
                config: config.clone(),
                phase: Phase::Root,
            };
            enter(cur, || sdk::on_context_create(id, root));
            with(|t| t.contexts.insert(id, (filter, Arc::downgrade(config))));
            id
        }
        None => 0,
    };
    Stream {
        config: config.clone(),
        filter,
        context,
        logged: Cell::new(false),
        waker: Cell::new(false),
        held: Cell::new(None),
        e2ee: None,
    }
}

fn call(s: &Stream, phase: Phase, f: impl FnOnce(u32) -> u32) -> (u32, bool) {
    let cur = Current {
        context: s.context,
        filter: Some(s.filter),
        config: s.config.clone(),
        phase,
    };
    enter(cur, || f(s.context))
}

/// The 503 a stream without a working context answers (fail closed, like
/// the wasm blocks' `failure_policy: FAIL_CLOSED`).
fn refuse(s: &Stream) {
    send_failure(s.filter, s.config.env.name());
}

/// Answers stream `f` 503 with [`crate::failure_body`] of `filter`.
pub(crate) fn send_failure(f: FilterPtr, filter: &str) {
    let body = crate::failure_body(filter);
    envoy::send_response(
        f,
        503,
        &[(b"content-type".to_vec(), b"application/json".to_vec())],
        body.as_bytes(),
        b"gateway_native_unavailable",
    );
}

fn headers_status(s: &Stream, action: u32, responded: bool) -> u32 {
    if responded {
        return STOP_ITERATION;
    }
    match action {
        0 => CONTINUE,
        _ if s.config.env.allow_on_headers_stop_iteration => STOP_ITERATION,
        _ => STOP_ALL,
    }
}

fn body_status(action: u32, responded: bool) -> u32 {
    match (action, responded) {
        (_, true) => BODY_STOP_NO_BUFFER,
        (0, false) => CONTINUE,
        _ => BODY_STOP_AND_BUFFER,
    }
}

pub fn request_headers(s: &Stream, eos: bool) -> u32 {
    if s.context == RAW {
        if s.config.env.direct() {
            return crate::direct::request_headers(&s.config, s.filter);
        }
        if s.config.env.claim_direct() {
            return crate::claim::request_headers(&s.config, s.filter);
        }
        if let Some(h) = &s.e2ee {
            return crate::e2ee_direct::request_headers(&s.config, h, s.filter, eos);
        }
        if s.config.env.mimic() {
            return crate::mimic::request_headers(eos);
        }
        return CONTINUE;
    }
    if s.context == 0 {
        refuse(s);
        return STOP_ITERATION;
    }
    if hold(s, eos) {
        return STOP_ALL;
    }
    let n = envoy::headers_count(s.filter, REQUEST_HEADERS);
    let (a, responded) = call(s, Phase::RequestHeaders, |id| {
        sdk::on_request_headers(id, n, eos)
    });
    if a != 0 && !responded {
        paused(s);
    }
    headers_status(s, a, responded)
}

pub fn request_body(s: &Stream, eos: bool) -> u32 {
    if s.context == RAW {
        if let Some(h) = &s.e2ee {
            return crate::e2ee_direct::request_body(&s.config, h, s.filter, eos);
        }
        if s.config.env.mimic() {
            return crate::mimic::request_body(s.filter, eos);
        }
        return CONTINUE;
    }
    if s.context == 0 {
        return BODY_STOP_NO_BUFFER;
    }
    let size = body_size(s.filter, true);
    let (a, responded) = call(s, Phase::RequestBody, |id| {
        sdk::on_request_body(id, size, eos)
    });
    if a != 0 && !responded {
        paused(s);
    }
    body_status(a, responded)
}

pub fn request_trailers(s: &Stream) -> u32 {
    if s.context == RAW {
        if let Some(h) = &s.e2ee {
            return crate::e2ee_direct::request_trailers(&s.config, h, s.filter);
        }
        return CONTINUE;
    }
    if s.context == 0 {
        return STOP_ITERATION;
    }
    let (a, responded) = call(s, Phase::RequestTrailers, |id| {
        sdk::on_request_trailers(id, 0)
    });
    u32::from(a != 0 || responded)
}

pub fn response_headers(s: &Stream, eos: bool) -> u32 {
    if s.context == RAW {
        if let Some(h) = &s.e2ee {
            return crate::e2ee_direct::response_headers(&s.config, h, s.filter, eos);
        }
        if s.config.env.mimic() {
            return crate::mimic::response_headers(s.filter);
        }
        return CONTINUE;
    }
    if s.context == 0 {
        return CONTINUE;
    }
    let n = envoy::headers_count(s.filter, RESPONSE_HEADERS);
    let (a, responded) = call(s, Phase::ResponseHeaders, |id| {
        sdk::on_response_headers(id, n, eos)
    });
    headers_status(s, a, responded)
}

pub fn response_body(s: &Stream, eos: bool) -> u32 {
    if s.context == RAW {
        if let Some(h) = &s.e2ee {
            return crate::e2ee_direct::response_body(&s.config, h, s.filter, eos);
        }
        if s.config.env.mimic() {
            return crate::mimic::response_body(s.filter);
        }
        return CONTINUE;
    }
    if s.context == 0 {
        return CONTINUE;
    }
    let size = body_size(s.filter, false);
    let (a, responded) = call(s, Phase::ResponseBody, |id| {
        sdk::on_response_body(id, size, eos)
    });
    body_status(a, responded)
}

pub fn response_trailers(s: &Stream) -> u32 {
    if s.context == RAW {
        if let Some(h) = &s.e2ee {
            return crate::e2ee_direct::response_trailers(&s.config, h);
        }
        return CONTINUE;
    }
    if s.context == 0 {
        return CONTINUE;
    }
    let (a, responded) = call(s, Phase::ResponseTrailers, |id| {
        sdk::on_response_trailers(id, 0)
    });
    u32::from(a != 0 || responded)
}

/// The stream is complete: the filters' `on_log` (access-log time).
pub fn stream_complete(s: &Stream) {
    if s.context == 0 || s.logged.replace(true) {
        return;
    }
    call(s, Phase::Log, |id| {
        sdk::on_log(id);
        0
    });
}

pub fn destroy(s: Stream) {
    if s.context == RAW && s.config.env.claim_direct() {
        crate::claim::destroy(s.filter);
    }
    if s.context == 0 || s.context == RAW {
        return;
    }
    stream_complete(&s);
    with(|t| {
        t.contexts.remove(&s.context);
        t.callouts.remove(&s.filter);
        t.posted.remove(&s.filter);
        if s.held.get().is_some() {
            t.held.remove(&s.filter);
        }
    });
    if s.waker.get() {
        drop_waker(s.filter);
    }
    let cur = Current {
        context: s.context,
        filter: None,
        config: s.config.clone(),
        phase: Phase::Log,
    };
    enter(cur, || finish_context(s.context));
}

pub fn callout_done(
    s: &Stream,
    callout_id: u64,
    _result: u32,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
) {
    let token = with(|t| {
        let calls = t.callouts.get_mut(&s.filter)?;
        let at = calls.iter().position(|(id, _)| *id == callout_id)?;
        let (_, token) = calls.swap_remove(at);
        if calls.is_empty() {
            t.callouts.remove(&s.filter);
        }
        Some(token)
    });
    let Some(token) = token else {
        return;
    };
    let (nh, nb) = (headers.len(), body.len());
    with(|t| t.call_response = Some((headers, body)));
    call(s, Phase::CallResponse, |id| {
        sdk::on_http_call_response(id, token, nh, nb);
        0
    });
    with(|t| t.call_response = None);
}

// ------------------------------------------------------------------ metrics

impl Config {
    /// The block's envelope (crate::direct reads its configuration).
    pub(crate) fn envelope(&self) -> &Envelope {
        &self.env
    }
}

/// Main thread, inside `config_new`: counter `name` defined in Envoy on
/// `c` (crate::direct, which has no root context to define it through).
pub(crate) fn define_config_counter(c: &Config, name: &str) -> Option<u32> {
    let id = lock(registry()).define(Kind::Counter, name)?;
    match envoy::define_metric(c.envoy, 0, name.as_bytes(), &[]) {
        Ok(e) => {
            lock(&c.envoy_ids).insert(id, e);
        }
        Err(r) => log(
            3,
            format!("gateway_native: could not define {name} (metrics result {r})").as_bytes(),
        ),
    }
    Some(id)
}

/// The registry's id of counter `name` (crate::direct).
pub(crate) fn counter_id(name: &str) -> Option<u32> {
    lock(registry()).define(Kind::Counter, name)
}

/// Counts one of each of `ids` on `c` (crate::direct), flushed as the
/// filters' increments are.
pub(crate) fn count(c: &Config, ids: &[u32]) {
    if ids.is_empty() {
        return;
    }
    let mut p = lock(&c.pending);
    for id in ids {
        p.increment(*id, 1);
    }
    schedule_flush(c, &mut p);
}

/// Counts `n` of each `(id, n)` on `c` (crate::e2ee_direct's byte counters).
pub(crate) fn count_by(c: &Config, by: &[(u32, usize)]) {
    let mut p = lock(&c.pending);
    let mut any = false;
    for (id, n) in by {
        if let Ok(n @ 1..) = u64::try_from(*n) {
            p.increment(*id, n);
            any = true;
        }
    }
    if any {
        schedule_flush(c, &mut p);
    }
}

/// Main thread: hands what the workers counted to Envoy.
pub fn flush_metrics(c: &Config) {
    c.last_flush_ms.store(now_ms(), Ordering::Relaxed);
    let batch = lock(&c.pending).take();
    let reg = lock(registry());
    let ids = lock(&c.envoy_ids);
    let kinds = [
        (0u32, batch.counters),
        (1, batch.gauges),
        (2, batch.samples),
    ];
    for (k, updates) in kinds {
        for (id, v) in updates {
            if let Some(e) = ids.get(&id) {
                envoy::update_metric(c.envoy, k, *e, &[], v);
                continue;
            }
            let Some((_, name)) = reg.get(id) else {
                continue;
            };
            let (base, tags) = metrics::parse_tagged(name);
            match c.labelled.get(base) {
                Some((e, labels))
                    if k == 0 && tags.iter().map(|(l, _)| *l).eq(labels.iter().copied()) =>
                {
                    let values: Vec<&[u8]> = tags.iter().map(|(_, v)| v.as_bytes()).collect();
                    envoy::update_metric(c.envoy, 0, *e, &values, v);
                }
                _ => {
                    let warn = with(|t| !std::mem::replace(&mut t.unknown_metric_warned, true));
                    if warn {
                        log(3, format!("gateway_native: metric {name} was not defined at configuration time; dropped (docs/native.md)").as_bytes());
                    }
                }
            }
        }
    }
}

pub fn define_metric(kind: u32, name: &[u8]) -> u32 {
    let Some(kind) = Kind::from_abi(kind) else {
        return 0;
    };
    let name = String::from_utf8_lossy(name);
    let Some(id) = lock(registry()).define(kind, &name) else {
        return 0;
    };
    // While a configuration is being built on the main thread, Envoy still
    // takes new metrics: define it there under its full name.
    let (defining, cur) = with(|t| (t.defining, t.current.clone()));
    if let (true, Some(cur)) = (defining, cur) {
        let mut ids = lock(&cur.config.envoy_ids);
        if let std::collections::hash_map::Entry::Vacant(slot) = ids.entry(id) {
            let k = match kind {
                Kind::Counter => 0,
                Kind::Gauge => 1,
                Kind::Histogram => 2,
            };
            match envoy::define_metric(cur.config.envoy, k, name.as_bytes(), &[]) {
                Ok(e) => {
                    slot.insert(e);
                }
                Err(r) => log(
                    3,
                    format!("gateway_native: could not define {name} (metrics result {r})")
                        .as_bytes(),
                ),
            }
        }
    }
    id
}

fn kind_of(id: u32) -> Option<Kind> {
    lock(registry()).get(id).map(|(k, _)| k)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn commit_flush(c: &Config) {
    if let Some(s) = *lock(&c.scheduler) {
        envoy::config_scheduler_commit(s, EVENT_FLUSH);
    }
}

/// After a change: schedules the flush now if the last one is old enough
/// (else the flusher thread does within `FLUSH_EVERY_MS`).
fn schedule_flush(c: &Config, pending: &mut Pending) {
    if metrics::flush_now(c.last_flush_ms.load(Ordering::Relaxed), now_ms())
        && pending.claim_flush()
    {
        commit_flush(c);
    }
}

/// The configurations whose pending metrics the flusher thread watches.
fn live_configs() -> &'static Mutex<Vec<Weak<Config>>> {
    static L: OnceLock<Mutex<Vec<Weak<Config>>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers `c` with the flusher thread (started with the first
/// configuration): every `FLUSH_EVERY_MS` it schedules a flush for each
/// configuration with changes and none scheduled.
fn register_for_flushes(c: &Arc<Config>) {
    let mut l = lock(live_configs());
    l.retain(|w| w.strong_count() > 0);
    l.push(Arc::downgrade(c));
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("gateway-native-metrics".into())
            .spawn(|| loop {
                std::thread::sleep(std::time::Duration::from_millis(metrics::FLUSH_EVERY_MS));
                let configs: Vec<Arc<Config>> = lock(live_configs())
                    .iter()
                    .filter_map(Weak::upgrade)
                    .collect();
                for c in configs {
                    if lock(&c.pending).claim_flush() {
                        commit_flush(&c);
                    }
                }
            });
        if let Err(e) = spawned {
            log(
                4,
                format!(
                    "gateway_native: no metrics flusher thread ({e}): metrics flush per change"
                )
                .as_bytes(),
            );
        }
    });
}

pub fn increment_metric(id: u32, offset: i64) -> bool {
    let (Some(cur), Some(Kind::Counter)) = (current(), kind_of(id)) else {
        return false;
    };
    let Ok(by) = u64::try_from(offset) else {
        return true;
    };
    let mut p = lock(&cur.config.pending);
    p.increment(id, by);
    schedule_flush(&cur.config, &mut p);
    true
}

pub fn record_metric(id: u32, value: u64) -> bool {
    let (Some(cur), Some(kind)) = (current(), kind_of(id)) else {
        return false;
    };
    let mut p = lock(&cur.config.pending);
    match kind {
        Kind::Gauge => p.set_gauge(id, value),
        Kind::Histogram => p.record(id, value),
        Kind::Counter => return false,
    }
    schedule_flush(&cur.config, &mut p);
    true
}

// ------------------------------------------------------- proxy-wasm host calls

thread_local! {
    /// The filter a context-free hook runs for ([`LogAs`]).
    static LOG_AS: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// While alive, [`log`] outside any context prefixes its lines with this
/// filter's name, as for a filter with a context (the hooks and the
/// configuration of the filters served straight on the callbacks:
/// crate::e2ee_direct). Restored on drop, also on unwind.
pub(crate) struct LogAs(Option<&'static str>);

impl LogAs {
    pub(crate) fn new(filter: &'static str) -> Self {
        LogAs(LOG_AS.with(|c| c.replace(Some(filter))))
    }
}

impl Drop for LogAs {
    fn drop(&mut self) {
        LOG_AS.with(|c| c.set(self.0));
    }
}

pub fn log(level: u32, message: &[u8]) {
    let mut line = Vec::with_capacity(message.len() + 24);
    // Envoy's wasm host prefixes "wasm log <plugin name>: "; the decision
    // lines (docs/operations.md) are JSON after the prefix.
    let name = current()
        .map(|c| c.config.env.name())
        .or_else(|| LOG_AS.with(Cell::get));
    if let Some(name) = name {
        line.extend_from_slice(b"native log ");
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b": ");
    }
    line.extend_from_slice(message);
    envoy::log(level.min(5), &line);
}

/// The tick period of the current context's root context (proxy-wasm: a
/// tick period belongs to the root context; an HTTP context that sets one
/// sets its root's).
pub fn set_tick_period(period_ms: u32) {
    let Some(cur) = current() else { return };
    let key = config_key(&cur.config);
    let main = with(|t| {
        let (_, root) = t.roots.get(&key)?;
        if *root == 0 {
            return None;
        }
        t.ticks.set(*root, u64::from(period_ms), now_ms());
        t.next_due = t.ticks.next_due();
        Some(t.main)
    });
    match main {
        Some(true) => publish_main(),
        Some(false) => publish_worker(),
        None => {}
    }
}

/// The body in a body hook: what is buffered plus what just arrived, or
/// the buffer alone when what arrived is that buffer (a filter before this
/// one buffered the body and resumed the chain: Envoy hands the buffer on
/// as the received data; counted twice, a second buffering filter saw its
/// body doubled).
fn body_size(f: FilterPtr, request: bool) -> usize {
    let (buffered, received) = if request {
        (BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY)
    } else {
        (BUFFERED_RESPONSE_BODY, RECEIVED_RESPONSE_BODY)
    };
    if envoy::received_is_buffered(f, request) {
        envoy::body_size(f, received)
    } else {
        envoy::body_size(f, buffered) + envoy::body_size(f, received)
    }
}

/// [`body_size`] for the streams without a context (crate::e2ee_direct).
pub(crate) fn hook_body_size(f: FilterPtr, request: bool) -> usize {
    body_size(f, request)
}

/// The body as [`get_buffer`] reads it, for the streams without a context
/// (crate::e2ee_direct): `in_body`, inside that body's own hook.
pub(crate) fn body_in(f: FilterPtr, request: bool, in_body: bool) -> Vec<u8> {
    body_view(f, request, body_phase(request, in_body))
}

/// The whole body replaced as [`set_buffer`] does, for the streams without
/// a context (crate::e2ee_direct).
pub(crate) fn replace_body_in(f: FilterPtr, request: bool, in_body: bool, data: &[u8]) {
    replace_body(
        f,
        request,
        body_phase(request, in_body),
        0,
        usize::MAX,
        data,
    );
}

fn body_phase(request: bool, in_body: bool) -> Phase {
    match (request, in_body) {
        (true, true) => Phase::RequestBody,
        (false, true) => Phase::ResponseBody,
        (true, false) => Phase::RequestTrailers,
        (false, false) => Phase::ResponseTrailers,
    }
}

/// The buffered and received body types of the request or the response,
/// and whether `phase` is that body's own hook.
fn body_kinds(request: bool, phase: Phase) -> (u32, u32, bool) {
    if request {
        (
            BUFFERED_REQUEST_BODY,
            RECEIVED_REQUEST_BODY,
            phase == Phase::RequestBody,
        )
    } else {
        (
            BUFFERED_RESPONSE_BODY,
            RECEIVED_RESPONSE_BODY,
            phase == Phase::ResponseBody,
        )
    }
}

/// The length of [`body_view`], without copying it.
fn body_view_len(f: FilterPtr, request: bool, phase: Phase) -> usize {
    let (buffered, received, in_phase) = body_kinds(request, phase);
    if in_phase && envoy::received_is_buffered(f, request) {
        return envoy::body_size(f, received);
    }
    let b = envoy::body_size(f, buffered);
    if in_phase {
        b + envoy::body_size(f, received)
    } else {
        b
    }
}

fn body_view(f: FilterPtr, request: bool, phase: Phase) -> Vec<u8> {
    let (buffered, received, in_phase) = body_kinds(request, phase);
    if in_phase && envoy::received_is_buffered(f, request) {
        return envoy::body(f, received);
    }
    let mut b = envoy::body(f, buffered);
    if in_phase {
        b.extend_from_slice(&envoy::body(f, received));
    }
    b
}

pub fn get_buffer(kind: u32, start: usize, max: usize) -> Option<Vec<u8>> {
    let cur = current()?;
    let all = match kind {
        BUF_PLUGIN_CONFIGURATION => cur.config.env.config.clone(),
        BUF_CALL_RESPONSE_BODY => with(|t| t.call_response.as_ref().map(|(_, b)| b.clone()))?,
        BUF_REQUEST_BODY => body_view(cur.filter?, true, cur.phase),
        BUF_RESPONSE_BODY => body_view(cur.filter?, false, cur.phase),
        _ => return None,
    };
    let end = start.saturating_add(max).min(all.len());
    Some(all.get(start.min(end)..end).unwrap_or_default().to_vec())
}

pub fn set_buffer(kind: u32, start: usize, size: usize, data: &[u8]) {
    let Some(cur) = current() else { return };
    let Some(f) = cur.filter else { return };
    let request = match kind {
        BUF_REQUEST_BODY => true,
        BUF_RESPONSE_BODY => false,
        _ => return,
    };
    replace_body(f, request, cur.phase, start, size, data);
}

/// Bytes `start..start + size` of the body in `phase` replaced by `data`.
fn replace_body(f: FilterPtr, request: bool, phase: Phase, start: usize, size: usize, data: &[u8]) {
    // The whole body replaced (what every filter here does): nothing of the
    // old one to keep, so it is not copied out first.
    let whole = start == 0 && size >= body_view_len(f, request, phase);
    let spliced;
    let new: &[u8] = if whole {
        data
    } else {
        let old = body_view(f, request, phase);
        let start = start.min(old.len());
        let end = start.saturating_add(size).min(old.len());
        let mut n = old.get(..start).unwrap_or_default().to_vec();
        n.extend_from_slice(data);
        n.extend_from_slice(old.get(end..).unwrap_or_default());
        spliced = n;
        &spliced
    };
    let (buffered, received, in_phase) = body_kinds(request, phase);
    // (When the received data is the buffer itself, the first drain empties
    // it and the second finds it empty: replaced once either way.)
    envoy::drain_body(f, buffered, usize::MAX);
    if in_phase {
        envoy::drain_body(f, received, usize::MAX);
        envoy::append_body(f, received, new);
    } else {
        envoy::append_body(f, buffered, new);
    }
}

fn map_headers(cur: &Current, map: u32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    match map {
        0..=3 => Some(envoy::headers(cur.filter?, map)),
        CALL_RESPONSE_HEADERS => with(|t| t.call_response.as_ref().map(|(h, _)| h.clone())),
        _ => None,
    }
}

pub fn get_map(map: u32) -> Vec<u8> {
    if map <= 3 {
        // Encoded straight from Envoy's header storage (no copy per header).
        return match current_filter() {
            Some(f) => {
                envoy::with_headers(f, map, |pairs| codec::encode_pairs(pairs.iter().copied()))
            }
            None => codec::encode_pairs(std::iter::empty()),
        };
    }
    let pairs = current()
        .and_then(|c| map_headers(&c, map))
        .unwrap_or_default();
    codec::encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

pub fn get_map_value(map: u32, key: &[u8]) -> Option<Vec<u8>> {
    let values = match map {
        0..=3 => envoy::header_values(current_filter()?, map, key),
        _ => map_headers(&current()?, map)?
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .collect(),
    };
    joined(values)
}

/// One value of a header given `values`: Envoy's wasm host joins repeated
/// headers with "," when one value is asked for; none is `None`.
pub(crate) fn joined(values: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    if values.len() <= 1 {
        return values.into_iter().next();
    }
    Some(values.join(&b","[..]))
}

pub fn set_map(map: u32, data: &[u8]) {
    let Some(cur) = current() else { return };
    let (Some(f), 0..=3) = (cur.filter, map) else {
        return;
    };
    let Some(pairs) = codec::decode_pairs(data) else {
        return;
    };
    let old = envoy::headers(f, map);
    for (k, _) in &old {
        if !pairs.iter().any(|(n, _)| n == k) {
            envoy::set_header(f, map, k, None);
        }
    }
    let mut seen: Vec<&[u8]> = Vec::new();
    for (k, v) in &pairs {
        if seen.contains(k) {
            envoy::add_header(f, map, k, v);
        } else {
            seen.push(k);
            envoy::set_header(f, map, k, Some(v));
        }
    }
}

pub fn set_map_value(map: u32, key: &[u8], value: Option<&[u8]>) {
    if let Some(f) = current_filter() {
        if map <= 3 {
            envoy::set_header(f, map, key, value);
        }
    }
}

pub fn add_map_value(map: u32, key: &[u8], value: &[u8]) {
    if let Some(f) = current_filter() {
        if map <= 3 {
            envoy::add_header(f, map, key, value);
        }
    }
}

pub fn get_property(path: &[u8]) -> Option<Vec<u8>> {
    let cur = current()?;
    let env = &cur.config.env;
    property(
        cur.filter,
        env.name(),
        env.peer_certificate_from_xfcc,
        &codec::split_path(path),
    )
}

/// Property `segments` of stream `f` (none: a root context) for filter
/// `root_id`; `peer_xfcc`: the certificate from the XFCC Envoy set
/// (crate::envelope).
pub(crate) fn property(
    f: Option<FilterPtr>,
    root_id: &str,
    peer_xfcc: bool,
    segments: &[&[u8]],
) -> Option<Vec<u8>> {
    match props::source(segments) {
        Source::RootId => Some(root_id.as_bytes().to_vec()),
        Source::StringAttribute(id) => envoy::attribute_string(f?, id),
        Source::IntAttribute(id) => envoy::attribute_int(f?, id).map(props::int_bytes),
        Source::FilterState(key) => envoy::filter_state(f?, key.as_bytes()),
        Source::PeerCertificate if peer_xfcc => {
            let values = envoy::header_values(f?, REQUEST_HEADERS, XFCC);
            let values: Vec<&str> = values
                .iter()
                .filter_map(|v| std::str::from_utf8(v).ok())
                .collect();
            san_authz::xfcc::connection_certificate_pem(&values).map(String::into_bytes)
        }
        Source::PeerCertificate | Source::Unsupported => None,
    }
}

pub fn set_property(path: &[u8], value: &[u8]) {
    let Some(Current {
        filter: Some(f), ..
    }) = current()
    else {
        return;
    };
    set_filter_state_property(f, &codec::split_path(path), value);
}

/// `set_property` on stream `f`: filter state `wasm.<path>` (as in wasm).
pub(crate) fn set_filter_state_property(f: FilterPtr, segments: &[&[u8]], value: &[u8]) {
    let key = props::filter_state_key(segments);
    if !envoy::set_filter_state(f, key.as_bytes(), value) {
        log(3, format!("set_property {key} refused").as_bytes());
    }
}

pub fn get_shared_data(key: &[u8]) -> Option<(Vec<u8>, u32)> {
    SHARED.get(&String::from_utf8_lossy(key))
}

pub fn set_shared_data(key: &[u8], value: &[u8], cas: u32) -> bool {
    SHARED
        .set(&String::from_utf8_lossy(key), value, cas)
        .is_ok()
}

pub fn continue_stream(stream: u32) {
    let Some(Current {
        filter: Some(filter),
        ..
    }) = current()
    else {
        return;
    };
    if stream <= 1 {
        with(|t| {
            t.deferred.push(Deferred::Continue {
                filter,
                request: stream == 0,
            })
        });
    }
}

pub fn send_local_response(status: u32, details: &[u8], body: &[u8], headers: &[u8]) {
    let Some(Current {
        filter: Some(filter),
        ..
    }) = current()
    else {
        log(4, b"send_local_response outside of a request");
        return;
    };
    let headers = codec::decode_pairs(headers)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    with(|t| {
        t.deferred.push(Deferred::Respond {
            filter,
            status,
            headers,
            body: body.to_vec(),
            details: details.to_vec(),
        })
    });
}

/// An HTTP callout from the current request's context: the SDK's token, or
/// proxy-wasm's BadArgument (2) / InternalFailure (10).
pub fn http_call(
    upstream: &[u8],
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, u32> {
    let cur = current().ok_or(10u32)?;
    let headers: Vec<(Vec<u8>, Vec<u8>)> = codec::decode_pairs(headers)
        .ok_or(2u32)?
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let init_error = |r: u32| -> u32 {
        match r {
            1 => 2,
            _ => 10,
        }
    };
    let Some(f) = cur.filter else {
        return root_http_call(&cur, upstream, headers, body, u64::from(timeout_ms));
    };
    let id = envoy::http_callout(f, upstream, &headers, body, u64::from(timeout_ms))
        .map_err(init_error)?;
    let token = next_id();
    with(|t| t.callouts.entry(f).or_default().push((id, token)));
    Ok(token)
}

pub fn set_effective_context(id: u32) -> bool {
    with(|t| {
        let entry = t.entry;
        let Some(cur) = t.current.as_mut() else {
            return false;
        };
        if let Some((f, w)) = t.contexts.get(&id) {
            if let Some(config) = w.upgrade() {
                cur.context = id;
                cur.filter = Some(*f);
                cur.config = config;
                cur.phase = match entry {
                    Some((ctx, phase)) if ctx == id => phase,
                    _ => Phase::Root,
                };
                return true;
            }
            return false;
        }
        if let Some((w, _)) = t.roots.values().find(|(_, rid)| *rid == id) {
            if let Some(config) = w.upgrade() {
                cur.context = id;
                cur.filter = None;
                cur.config = config;
                cur.phase = Phase::Root;
                return true;
            }
        }
        false
    })
}

// ------------------------------------------------ ticks and root callouts

fn config_key(c: &Arc<Config>) -> usize {
    Arc::as_ptr(c) as usize
}

/// The configuration of root context `root` on this thread, if it is one
/// and its configuration is alive.
fn root_config(root: u32) -> Option<Arc<Config>> {
    with(|t| {
        t.roots
            .values()
            .find(|(_, id)| *id == root && root != 0)
            .and_then(|(w, _)| w.upgrade())
    })
}

/// A root context's callout. Main thread: the configuration's callout.
/// Worker: queued for the main thread, which starts it the same way and
/// hands the answer back (a worker has no callout of its own that outlives
/// its streams). The token is the SDK's; the answer always comes, as a
/// failure (no headers, no body) when the callout could not start.
fn root_http_call(
    cur: &Current,
    upstream: &[u8],
    headers: Headers,
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, u32> {
    let root = cur.context;
    if root_config(root).is_none() {
        return Err(10);
    }
    let token = next_id();
    if with(|t| t.main) {
        let id = envoy::config_http_callout(cur.config.envoy, upstream, &headers, body, timeout_ms)
            .map_err(|r: u32| -> u32 {
                if r == 1 {
                    2
                } else {
                    10
                }
            })?;
        let key = config_key(&cur.config);
        with(|t| {
            t.config_callouts.insert(
                (key, id),
                Origin {
                    worker: None,
                    root,
                    token,
                },
            );
            t.root_calls.insert(token, root);
        });
        return Ok(token);
    }
    let worker = worker_id();
    {
        let mut out = lock(&cur.config.outbox);
        if out.len() >= MAX_OUTBOX {
            return Err(10);
        }
        out.push(Outgoing {
            worker,
            root,
            token,
            cluster: upstream.to_vec(),
            headers,
            body: body.to_vec(),
            timeout_ms,
        });
    }
    with(|t| {
        t.root_calls.insert(token, root);
        // A callout of a worker root's `on_configure`: a wasm VM's root
        // made it at load, before any request (warming).
        if t.configuring.is_some() {
            t.warm.insert(token, root);
        }
    });
    commit_work(&cur.config);
    Ok(token)
}

fn commit_work(c: &Config) {
    if let Some(s) = *lock(&c.scheduler) {
        envoy::config_scheduler_commit(s, EVENT_WORK);
    }
}

/// Main thread: a configuration's scheduler event (a metric flush; root
/// work: the workers' callouts to start, the main thread's due ticks).
pub fn config_scheduled(c: &ConfigHandle, event: u64) {
    flush_metrics(c);
    if event == EVENT_FLUSH {
        return;
    }
    let out = std::mem::take(&mut *lock(&c.outbox));
    let key = config_key(c);
    for o in out {
        match envoy::config_http_callout(c.envoy, &o.cluster, &o.headers, &o.body, o.timeout_ms) {
            Ok(id) => with(|t| {
                t.config_callouts.insert(
                    (key, id),
                    Origin {
                        worker: Some(o.worker),
                        root: o.root,
                        token: o.token,
                    },
                );
            }),
            Err(r) => {
                log(
                    1,
                    format!(
                        "{}: root callout to {} could not start (init result {r})",
                        c.env.name(),
                        String::from_utf8_lossy(&o.cluster)
                    )
                    .as_bytes(),
                );
                to_worker(
                    o.worker,
                    Answer {
                        root: o.root,
                        token: o.token,
                        headers: Vec::new(),
                        body: Vec::new(),
                    },
                );
            }
        }
    }
    run_due_ticks();
    publish_main();
}

/// Main thread: a configuration callout's answer (empty when it failed).
pub fn config_callout_done(c: &ConfigHandle, id: u64, headers: Headers, body: Vec<u8>) {
    let key = config_key(c);
    let Some(o) = with(|t| t.config_callouts.remove(&(key, id))) else {
        return;
    };
    match o.worker {
        None => deliver(o.root, o.token, headers, body),
        Some(w) => to_worker(
            w,
            Answer {
                root: o.root,
                token: o.token,
                headers,
                body,
            },
        ),
    }
}

/// Delivers a root callout's answer to the SDK (once per token, only to a
/// live root of this thread).
fn deliver(root: u32, token: u32, headers: Headers, body: Vec<u8>) {
    if with(|t| t.root_calls.remove(&token)).is_none() {
        return;
    }
    let warm = with(|t| t.warm.remove(&token).is_some());
    if let Some(config) = root_config(root) {
        let (nh, nb) = (headers.len(), body.len());
        let prev = with(|t| t.call_response.replace((headers, body)));
        let cur = Current {
            context: root,
            filter: None,
            config,
            phase: Phase::CallResponse,
        };
        enter(cur, || sdk::on_http_call_response(root, token, nh, nb));
        with(|t| t.call_response = prev);
    }
    if warm {
        release_held(root);
    }
}

// ------------------------------------------------------------ warming roots

/// A worker's root is created by its first stream, where a wasm VM's root
/// has existed since load: the callouts its `on_configure` started (oidc's
/// discovery fetch) would have been answered before any request. So a
/// stream of that configuration on that worker holds its request headers
/// (Envoy buffers the rest: StopAllIteration) until those answers have been
/// delivered, then runs them from its own scheduler event. Bounded by the
/// callouts' own timeouts (an answer always comes, empty when the callout
/// failed). A block with `allow_on_headers_stop_iteration` (its filter
/// expects body callbacks while its headers are stopped: a native chain
/// whose parts read bodies) is held only for a request without a body
/// (end of stream on the headers: no body callback can come); a request
/// with a body, or a stream that gets no scheduler, is served at once, as
/// before (oidc then answers 503 `provider_unavailable` until the fetch
/// is in: fail closed, retryable).
fn warming(config: &Arc<Config>) -> Option<u32> {
    with(|t| {
        if t.warm.is_empty() {
            return None;
        }
        let (_, root) = t.roots.get(&config_key(config))?;
        t.warm.values().any(|r| r == root).then_some(*root)
    })
}

/// Holds `s`'s request headers while its root is warming: whether it did.
fn hold(s: &Stream, eos: bool) -> bool {
    if s.config.env.allow_on_headers_stop_iteration && !eos {
        return false;
    }
    let Some(root) = warming(&s.config) else {
        return false;
    };
    paused(s);
    if !s.waker.get() {
        return false;
    }
    s.held.set(Some(eos));
    with(|t| t.held.insert(s.filter, root));
    true
}

/// Root `root` is warm: its held streams run from their own events.
fn release_held(root: u32) {
    with(|t| {
        if t.warm.values().any(|r| *r == root) {
            return;
        }
        for (f, r) in &t.held {
            if *r == root {
                if let Some(w) = t.wakers.get(f) {
                    envoy::stream_scheduler_commit(*w, EVENT_POSTED);
                }
            }
        }
    });
}

/// In `s`'s own event: its held request headers, if its root is warm now.
fn resume_held(s: &Stream) {
    let Some(eos) = s.held.get() else { return };
    if warming(&s.config).is_some() {
        return;
    }
    s.held.set(None);
    with(|t| t.held.remove(&s.filter));
    let n = envoy::headers_count(s.filter, REQUEST_HEADERS);
    let (a, responded) = call(s, Phase::RequestHeaders, |id| {
        sdk::on_request_headers(id, n, eos)
    });
    if responded {
        return;
    }
    if a == 0 {
        envoy::continue_decoding(s.filter);
    } else {
        paused(s);
    }
}

/// Runs the due ticks of this thread's root contexts.
fn run_due_ticks() {
    let due = with(|t| t.ticks.take_due(now_ms()));
    for id in due {
        let Some(config) = root_config(id) else {
            with(|t| t.ticks.remove(id));
            continue;
        };
        let cur = Current {
            context: id,
            filter: None,
            config,
            phase: Phase::Root,
        };
        enter(cur, || sdk::on_tick(id));
    }
    with(|t| t.next_due = t.ticks.next_due());
}

/// This worker's number (registered with the timer on first use).
fn worker_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = with(|t| t.worker);
    if id != 0 {
        return id;
    }
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mail = Arc::new(AtomicBool::new(false));
    lock(&timer().0).mail.insert(id, mail.clone());
    with(|t| {
        t.worker = id;
        t.mail = Some(mail);
    });
    id
}

/// Main thread: an answer for a root of worker `w`; the timer wakes it
/// (through a paused stream), else its next stream takes it.
fn to_worker(w: u64, a: Answer) {
    let (m, cv) = timer();
    {
        let mut g = lock(m);
        g.sched.push_answer(w, a, now_ms());
        if let Some(f) = g.mail.get(&w) {
            f.store(true, Ordering::Release);
        }
    }
    cv.notify_one();
}

/// Worker, before a new stream is served: the roots' work if any is due.
fn lazy_work() {
    let (due, has_mail, main) = with(|t| {
        let mail = t.mail.as_ref().is_some_and(|m| m.load(Ordering::Acquire));
        (t.next_due, mail, t.main)
    });
    if main {
        return;
    }
    if has_mail || due.is_some_and(|d| d <= now_ms()) {
        worker_work(true);
    }
}

/// Worker: delivers the answers in its inbox, runs its due ticks, and tells
/// the timer when it is next due. `lazy`: inside another stream's hook.
fn worker_work(lazy: bool) {
    let w = worker_id();
    if let Some(m) = with(|t| t.mail.clone()) {
        m.store(false, Ordering::Release);
    }
    let inbox = lock(&timer().0).sched.take_inbox(w);
    let prev = with(|t| std::mem::replace(&mut t.lazy, lazy));
    for a in inbox {
        deliver(a.root, a.token, a.headers, a.body);
    }
    run_due_ticks();
    with(|t| t.lazy = prev);
    publish_worker();
}

fn publish_worker() {
    let w = worker_id();
    let due = with(|t| t.ticks.next_due());
    let (m, cv) = timer();
    lock(m).sched.publish(w, due, now_ms());
    cv.notify_one();
}

fn publish_main() {
    let dues: Vec<(usize, Option<u64>)> = with(|t| {
        t.roots
            .iter()
            .map(|(k, (_, id))| (*k, t.ticks.due_of(*id)))
            .collect()
    });
    let (m, cv) = timer();
    {
        let mut g = lock(m);
        for (k, d) in dues {
            if g.configs.contains_key(&k) {
                g.sched.set_main(k, d);
            }
        }
    }
    cv.notify_one();
}

/// A stream paused: while this worker's roots have work to come (a tick
/// period, callouts in flight), its scheduler is one the timer can wake the
/// worker through.
fn paused(s: &Stream) {
    if s.waker.get() {
        return;
    }
    let busy = with(|t| !t.main && (!t.ticks.is_empty() || !t.root_calls.is_empty()));
    if !busy {
        return;
    }
    let Some(sched) = envoy::stream_scheduler_new(s.filter) else {
        return;
    };
    let w = worker_id();
    s.waker.set(true);
    with(|t| t.wakers.insert(s.filter, sched));
    let (m, cv) = timer();
    if lock(m).sched.add_waker(w, s.filter, sched) {
        cv.notify_one();
    }
}

/// The stream is destroyed: its scheduler leaves the schedule and is
/// deleted under the timer's lock (the timer never commits to a deleted one).
fn drop_waker(f: FilterPtr) {
    let w = worker_id();
    with(|t| t.wakers.remove(&f));
    let mut g = lock(&timer().0);
    if let Some(sched) = g.sched.remove_waker(w, f) {
        envoy::stream_scheduler_delete(sched);
    }
}

/// Worker: a stream's scheduler event (the timer's wake-up, or root work's
/// actions for this stream).
pub fn scheduled(s: &Stream, event: u64) {
    if s.context == RAW {
        if s.config.env.claim_direct() {
            crate::claim::scheduled(s.filter);
        }
        return;
    }
    let posted = with(|t| t.posted.remove(&s.filter)).unwrap_or_default();
    run_deferred(posted, None);
    if event == EVENT_WORK {
        let w = worker_id();
        lock(&timer().0).sched.woken(w);
        worker_work(false);
    }
    resume_held(s);
}

struct Timer {
    sched: Schedule<FilterPtr, StreamSchedulerPtr, Answer>,
    /// The configurations whose main-thread roots the schedule names.
    configs: HashMap<usize, Weak<Config>>,
    /// Each worker's "answers waiting" flag.
    mail: HashMap<u64, Arc<AtomicBool>>,
}

fn timer_state() -> &'static (Mutex<Timer>, Condvar) {
    static T: OnceLock<(Mutex<Timer>, Condvar)> = OnceLock::new();
    T.get_or_init(|| {
        (
            Mutex::new(Timer {
                sched: Schedule::default(),
                configs: HashMap::new(),
                mail: HashMap::new(),
            }),
            Condvar::new(),
        )
    })
}

/// The schedule, with its thread started (once): it sleeps until the
/// nearest due entry, and only commits to schedulers (it never runs a
/// filter).
fn timer() -> &'static (Mutex<Timer>, Condvar) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("gateway-native-ticks".into())
            .spawn(timer_loop);
        if let Err(e) = spawned {
            log(
                4,
                format!("gateway_native: no tick thread ({e}): root contexts tick only from their streams").as_bytes(),
            );
        }
    });
    timer_state()
}

fn timer_loop() {
    let (m, cv) = timer_state();
    let mut g = lock(m);
    loop {
        let now = now_ms();
        for f in g.sched.fire(now) {
            match f {
                Fire::Main(k) => {
                    if let Some(c) = g.configs.get(&k).and_then(Weak::upgrade) {
                        commit_work(&c);
                    }
                }
                Fire::Worker(s) => envoy::stream_scheduler_commit(s, EVENT_WORK),
            }
        }
        let now = now_ms();
        let wait = g
            .sched
            .next()
            .map_or(1_000, |d| d.saturating_sub(now))
            .clamp(1, 1_000);
        g.sched.sleeping_until(now.saturating_add(wait));
        g = match cv.wait_timeout(g, std::time::Duration::from_millis(wait)) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}
