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
//!   callout; root-context callouts and ticks have no per-worker carrier in
//!   the dynamic-module ABI and are not served yet (docs/native.md): a
//!   filter that needs them is kept on its wasm module by envoy/render.py.
//!
//! Like Envoy's wasm host, a local reply or a resumption asked for inside a
//! callback is carried out after the callback returns (so that Envoy's
//! synchronous re-entry into this filter, e.g. the local reply's response
//! headers, never meets a context that is still borrowed).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::codec;
use crate::envelope::{self, Envelope};
use crate::ffi::{envoy, sdk, ConfigPtr, FilterPtr, SchedulerPtr};
use crate::metrics::{self, Kind, Pending, Registry};
use crate::props::{self, Source};
use crate::shared::Store;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;
pub const STOP_ALL: u32 = 4;
/// `..._request_body_status`: StopIterationAndBuffer, StopIterationNoBuffer.
pub const BODY_STOP_AND_BUFFER: u32 = 1;
pub const BODY_STOP_NO_BUFFER: u32 = 3;

/// abi.h header map types (and proxy-wasm's `MapType` 0..3, the same numbers).
const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
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
        if id != 0 {
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
}

/// What Envoy keeps for a configuration (boxed behind its module pointer).
pub type ConfigHandle = Arc<Config>;

/// One stream of one filter (boxed behind its module pointer).
pub struct Stream {
    config: Arc<Config>,
    filter: FilterPtr,
    /// 0: no context (the worker's root context failed to configure).
    context: u32,
    logged: Cell<bool>,
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
    roots: HashMap<usize, (Weak<Config>, u32)>,
    /// Live HTTP contexts on this thread → their stream (for
    /// `set_effective_context` from a root's callback).
    contexts: HashMap<u32, (FilterPtr, Weak<Config>)>,
    current: Option<Current>,
    /// The configuration whose root context is being created.
    configuring: Option<Arc<Config>>,
    deferred: Vec<Deferred>,
    /// (stream, Envoy callout id) → SDK token.
    callouts: HashMap<(FilterPtr, u64), u32>,
    call_response: Option<(Headers, Vec<u8>)>,
    tick_warned: bool,
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
    let prev = with(|t| t.current.replace(cur.clone()));
    let r = f();
    let deferred = with(|t| {
        t.current = prev;
        std::mem::take(&mut t.deferred)
    });
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
                if Some(filter) == cur.filter {
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
    (r, responded)
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
    with(|t| t.configuring = Some(config.clone()));
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
    with(|t| {
        t.configuring = None;
        t.roots
            .insert(key, (Arc::downgrade(config), if ok { id } else { 0 }));
    });
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
        with(|t| t.roots.remove(&key));
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
    for (name, labels) in metrics::labelled_for(env.name()) {
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
    });
    with(|t| t.defining = true);
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
    drop(c);
    sweep_roots();
}

/// Worker thread: a new stream of `config`'s filter.
pub fn filter_new(config: &ConfigHandle, filter: FilterPtr) -> Stream {
    let context = match ensure_root(config) {
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
    let body = crate::failure_body(s.config.env.name());
    envoy::send_response(
        s.filter,
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
    if s.context == 0 {
        refuse(s);
        return STOP_ITERATION;
    }
    let n = envoy::headers_count(s.filter, REQUEST_HEADERS);
    let (a, responded) = call(s, Phase::RequestHeaders, |id| {
        sdk::on_request_headers(id, n, eos)
    });
    headers_status(s, a, responded)
}

pub fn request_body(s: &Stream, eos: bool) -> u32 {
    if s.context == 0 {
        return BODY_STOP_NO_BUFFER;
    }
    let size = body_size(s.filter, true);
    let (a, responded) = call(s, Phase::RequestBody, |id| {
        sdk::on_request_body(id, size, eos)
    });
    body_status(a, responded)
}

pub fn request_trailers(s: &Stream) -> u32 {
    if s.context == 0 {
        return STOP_ITERATION;
    }
    let (a, responded) = call(s, Phase::RequestTrailers, |id| {
        sdk::on_request_trailers(id, 0)
    });
    u32::from(a != 0 || responded)
}

pub fn response_headers(s: &Stream, eos: bool) -> u32 {
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
    if s.context == 0 {
        return;
    }
    stream_complete(&s);
    with(|t| {
        t.contexts.remove(&s.context);
        t.callouts.retain(|(f, _), _| *f != s.filter);
    });
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
    let Some(token) = with(|t| t.callouts.remove(&(s.filter, callout_id))) else {
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
        envoy::config_scheduler_commit(s, 0);
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

pub fn log(level: u32, message: &[u8]) {
    let mut line = Vec::with_capacity(message.len() + 24);
    if let Some(c) = current() {
        // Envoy's wasm host prefixes "wasm log <plugin name>: "; the
        // decision lines (docs/operations.md) are JSON after the prefix.
        line.extend_from_slice(b"native log ");
        line.extend_from_slice(c.config.env.name().as_bytes());
        line.extend_from_slice(b": ");
    }
    line.extend_from_slice(message);
    envoy::log(level.min(5), &line);
}

pub fn set_tick_period(period_ms: u32) {
    if period_ms == 0 {
        return;
    }
    let warn = with(|t| !std::mem::replace(&mut t.tick_warned, true));
    if warn {
        let name = current().map_or("?", |c| c.config.env.name());
        log(
            3,
            format!("{name}: asked for a {period_ms} ms tick; the native build runs no root ticks yet (docs/native.md)").as_bytes(),
        );
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

fn body_view(f: FilterPtr, request: bool, phase: Phase) -> Vec<u8> {
    let (buffered, received, in_phase) = if request {
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
    };
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
    let old = body_view(f, request, cur.phase);
    let start = start.min(old.len());
    let end = start.saturating_add(size).min(old.len());
    let mut new = old.get(..start).unwrap_or_default().to_vec();
    new.extend_from_slice(data);
    new.extend_from_slice(old.get(end..).unwrap_or_default());
    let (buffered, received, in_phase) = if request {
        (
            BUFFERED_REQUEST_BODY,
            RECEIVED_REQUEST_BODY,
            cur.phase == Phase::RequestBody,
        )
    } else {
        (
            BUFFERED_RESPONSE_BODY,
            RECEIVED_RESPONSE_BODY,
            cur.phase == Phase::ResponseBody,
        )
    };
    // (When the received data is the buffer itself, the first drain empties
    // it and the second finds it empty: replaced once either way.)
    envoy::drain_body(f, buffered, usize::MAX);
    if in_phase {
        envoy::drain_body(f, received, usize::MAX);
        envoy::append_body(f, received, &new);
    } else {
        envoy::append_body(f, buffered, &new);
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
    let pairs = current()
        .and_then(|c| map_headers(&c, map))
        .unwrap_or_default();
    codec::encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

pub fn get_map_value(map: u32, key: &[u8]) -> Option<Vec<u8>> {
    let cur = current()?;
    let values = match map {
        0..=3 => envoy::header_values(cur.filter?, map, key),
        _ => map_headers(&cur, map)?
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .collect(),
    };
    if values.is_empty() {
        return None;
    }
    // Envoy's wasm host joins repeated headers with "," when one value is asked for.
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
    if let Some(Current {
        filter: Some(f), ..
    }) = current()
    {
        if map <= 3 {
            envoy::set_header(f, map, key, value);
        }
    }
}

pub fn add_map_value(map: u32, key: &[u8], value: &[u8]) {
    if let Some(Current {
        filter: Some(f), ..
    }) = current()
    {
        if map <= 3 {
            envoy::add_header(f, map, key, value);
        }
    }
}

pub fn get_property(path: &[u8]) -> Option<Vec<u8>> {
    let cur = current()?;
    let segments = codec::split_path(path);
    match props::source(&segments) {
        Source::RootId => Some(cur.config.env.name().as_bytes().to_vec()),
        Source::StringAttribute(id) => envoy::attribute_string(cur.filter?, id),
        Source::IntAttribute(id) => envoy::attribute_int(cur.filter?, id).map(props::int_bytes),
        Source::FilterState(key) => envoy::filter_state(cur.filter?, key.as_bytes()),
        Source::Unsupported => None,
    }
}

pub fn set_property(path: &[u8], value: &[u8]) {
    let Some(Current {
        filter: Some(f), ..
    }) = current()
    else {
        return;
    };
    let key = props::filter_state_key(&codec::split_path(path));
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
    let Some(Current {
        filter: Some(f), ..
    }) = current()
    else {
        // A root context's callout (JWKS refresh, feeds): not served natively yet.
        return Err(10);
    };
    let headers: Vec<(Vec<u8>, Vec<u8>)> = codec::decode_pairs(headers)
        .ok_or(2u32)?
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let id = envoy::http_callout(f, upstream, &headers, body, u64::from(timeout_ms)).map_err(
        |r| -> u32 {
            match r {
                1 => 2,
                _ => 10,
            }
        },
    )?;
    let token = next_id();
    with(|t| t.callouts.insert((f, id), token));
    Ok(token)
}

pub fn set_effective_context(id: u32) -> bool {
    with(|t| {
        let Some(cur) = t.current.as_mut() else {
            return false;
        };
        if let Some((f, w)) = t.contexts.get(&id) {
            if let Some(config) = w.upgrade() {
                cur.context = id;
                cur.filter = Some(*f);
                cur.config = config;
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
