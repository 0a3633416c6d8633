//! The proxy-wasm side of the seams (wasm32 only): [`ProxyHost`] implements
//! [`HttpHost`] and [`ProxySharedData`] implements [`SharedData`] with host
//! calls. Host errors become `None`/[`SharedError`], never panics.
//!
//! In the chain build (filters/chain: one Envoy filter runs a gateway's
//! filters in turn) the chain installs the request's
//! [`RequestContext`](crate::context::RequestContext) while it calls a
//! filter, and [`ProxyHost`] is then that context in front of the host
//! ([`RawHost`]): one header read, batched writes, hand-overs in VM memory.
//! The few host calls that steer a request or a root context from outside
//! a callback go through the wrappers here ([`set_tick_period`],
//! [`set_effective_context`], [`resume_http_request`]), which the chain
//! redirects to itself ([`chain`]) while it is calling into its filters (a
//! [`chain::Scope`] per chain callback). A filter module alone, or a filter
//! of the native module that runs as its own Envoy filter on a thread the
//! chain also runs on, never sees any of this: outside a chain callback,
//! every call goes straight to the host.

use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType, Status};

use crate::host::{HttpHost, Verdict};
use crate::shared::{SharedData, SharedError, Versioned};

/// [`HttpHost`] over the current HTTP context: the host calls, or, inside
/// the chain build, the request's context in front of them.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyHost;

/// [`HttpHost`] straight over the current HTTP context's host calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawHost;

/// A header value as text. Envoy hands over whatever bytes a client or an
/// upstream sent (HTTP allows obs-text, 0x80-0xFF, in values), and the SDK's
/// string getters (`get_map`, `get_map_value`, `get_http_*_header`) unwrap
/// `String::from_utf8`: one such byte would trap the VM and take every
/// request of its worker down with it. So every header is read as bytes and
/// an invalid sequence becomes U+FFFD (which sanitize refuses: a value that
/// carries one is never forwarded by a gateway that runs it).
pub fn text(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// One header of `map` (request or response headers, or an HTTP call's
/// response), read as bytes and made text by [`text`].
pub fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(text)
}

/// Sends `claim` to the shared store ([`crate::store`]) from the current
/// context: the callout's token, or the host's refusal (no answer).
pub fn dispatch_claim(
    store: &crate::store::SharedStore,
    claim: &crate::store::Claim,
) -> Result<u32, Status> {
    let call = store.claim_callout(claim);
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    hostcalls::dispatch_http_call(call.cluster, headers, None, vec![], call.timeout)
}

/// Sends a store callout ([`crate::store::SharedStore::session_callout`])
/// with an optional body.
pub fn dispatch_store(
    call: &crate::store::Callout<'_>,
    body: Option<&[u8]>,
) -> Result<u32, Status> {
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    hostcalls::dispatch_http_call(call.cluster, headers, body, vec![], call.timeout)
}

/// What the claim callout that has just answered says. No `:status`
/// (timeout, reset, no healthy host) is no answer.
pub fn claim_answer() -> crate::store::ClaimAnswer {
    let status = header(MapType::HttpCallResponseHeaders, ":status");
    crate::store::ClaimAnswer::from_status(status.as_deref())
}

impl HttpHost for RawHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        // Names are tokens (Envoy's codecs refuse anything else); values are bytes.
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .map(|m| m.into_iter().map(|(n, v)| (n, text(v))).collect())
            .unwrap_or_default()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        header(MapType::HttpRequestHeaders, name)
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
    }
    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
    }
    fn replace_request_body(&mut self, body: &[u8]) {
        let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, usize::MAX, body);
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        if let Err(e) =
            hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body))
        {
            log::error!("send_http_response failed: {e:?}");
        }
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        if let Err(e) = hostcalls::set_property(path.to_vec(), Some(value)) {
            log::error!("set_property {path:?} failed: {e:?}");
        }
    }
    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if let Err(e) = hostcalls::set_map(MapType::HttpRequestHeaders, pairs) {
            log::error!("set_http_request_headers failed: {e:?}");
        }
    }
}

/// Runs `f` with the host a filter should see now: the chain's request
/// context in front of [`RawHost`] while the chain serves a request, else
/// [`RawHost`].
fn with_host<R>(f: impl FnOnce(&mut dyn HttpHost) -> R) -> R {
    match chain::active() {
        Some(ctx) => match ctx.try_borrow_mut() {
            Ok(mut c) => f(&mut c.host(&mut RawHost)),
            Err(_) => f(&mut RawHost),
        },
        None => f(&mut RawHost),
    }
}

impl HttpHost for ProxyHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        with_host(|h| h.request_headers())
    }
    fn request_header(&self, name: &str) -> Option<String> {
        with_host(|h| h.request_header(name))
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        with_host(|h| h.set_request_header(name, value))
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        with_host(|h| h.add_request_header(name, value))
    }
    fn remove_request_header(&mut self, name: &str) {
        with_host(|h| h.remove_request_header(name))
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        with_host(|h| h.request_body(size))
    }
    fn replace_request_body(&mut self, body: &[u8]) {
        with_host(|h| h.replace_request_body(body))
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        with_host(|h| h.send_response(status, headers, body))
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        with_host(|h| h.property(path))
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        with_host(|h| h.set_property(path, value))
    }
    fn now(&self) -> SystemTime {
        with_host(|h| h.now())
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        with_host(|h| h.set_request_headers(headers))
    }
}

/// Sets the calling root context's tick period (the chain build keeps one
/// period per filter and ticks each filter on its own).
pub fn set_tick_period(period: std::time::Duration) {
    if chain::enabled() {
        chain::push_tick(period);
        return;
    }
    if let Err(e) = hostcalls::set_tick_period(period) {
        log::warn!("set_tick_period failed: {e:?}");
    }
}

/// Makes context `id` the effective one (a request to finish from a root
/// context's callback). Inside the chain build, a request's context then
/// serves [`ProxyHost`].
pub fn set_effective_context(id: u32) -> Result<(), Status> {
    hostcalls::set_effective_context(id)?;
    if chain::enabled() {
        chain::select(id);
    }
    Ok(())
}

/// Resumes the effective request after a callout. Inside the chain build
/// the chain resumes it: the filters after this one run first.
pub fn resume_http_request() {
    if chain::enabled() {
        chain::push_resumed();
        return;
    }
    if let Err(e) = hostcalls::resume_http_request() {
        log::warn!("resume_http_request failed: {e:?}");
    }
}

/// The chain build's hooks (filters/chain): plain Rust, tested natively
/// ([`crate::chain_hooks`]).
pub use crate::chain_hooks as chain;

/// Maps a [`Verdict`] to the proxy-wasm action.
pub fn action(v: Verdict) -> Action {
    match v {
        Verdict::Continue => Action::Continue,
        Verdict::WaitBody | Verdict::WaitCallout | Verdict::Responded => Action::Pause,
    }
}

/// [`SharedData`] over the host's process-wide shared data.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxySharedData;

impl SharedData for ProxySharedData {
    fn get(&self, key: &str) -> Result<Versioned, SharedError> {
        hostcalls::get_shared_data(key).map_err(|s| SharedError::Host(format!("{s:?}")))
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(s) => Err(SharedError::Host(format!("{s:?}"))),
        }
    }
}

/// Defines a counter metric, logging (not panicking) when the host refuses.
pub fn counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("could not define metric {name}: {e:?}");
            None
        }
    }
}

/// Increments a counter defined with [`counter`].
pub fn increment(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

thread_local! {
    /// Labelled counters this VM has defined: stat name → metric id.
    /// Bounded by [`crate::metrics::MAX_TAGGED_METRICS`].
    static TAGGED: std::cell::RefCell<std::collections::HashMap<String, Option<u32>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Increments the counter `name` with labels `tags` (see
/// [`crate::metrics`]), defining it on first use and caching its id (Envoy
/// allocates a new id on every define, so defining per request would leak).
/// Past [`crate::metrics::MAX_TAGGED_METRICS`] distinct names, counts the
/// unlabelled `name` instead.
pub fn increment_tagged(name: &str, tags: &[(&str, &str)]) {
    let full = crate::metrics::tagged(name, tags);
    let id = TAGGED.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(id) = m.get(&full) {
            return *id;
        }
        let key = if m.len() >= crate::metrics::MAX_TAGGED_METRICS {
            name.to_string()
        } else {
            full
        };
        if let Some(id) = m.get(&key) {
            return *id;
        }
        let id = counter(&key);
        m.insert(key, id);
        id
    });
    increment(id);
}

/// Defines a gauge metric, logging (not panicking) when the host refuses.
pub fn gauge(name: &str) -> Option<u32> {
    define(proxy_wasm::types::MetricType::Gauge, name)
}

/// Defines a histogram metric, logging (not panicking) when the host refuses.
pub fn histogram(name: &str) -> Option<u32> {
    define(proxy_wasm::types::MetricType::Histogram, name)
}

fn define(kind: proxy_wasm::types::MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("could not define metric {name}: {e:?}");
            None
        }
    }
}

/// Sets a gauge (or records a histogram value) defined with [`gauge`] or
/// [`histogram`].
pub fn record(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// The plugin's configuration, parsed and compiled by `load`: what every
/// filter's `on_configure` starts with. A configuration that does not load
/// is logged as `<filter>: <error naming the field>` and is `None`, so that
/// `on_configure` returns false and Envoy refuses it.
pub fn load_plugin_config<T, E: std::fmt::Display>(
    filter: &str,
    load: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Option<T> {
    let bytes = chain::config().unwrap_or_else(|| {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default()
    });
    match load(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            log::error!("{filter}: {e}");
            None
        }
    }
}

/// A filter module's entry point and root-context factory, the same for
/// every filter: with the crate's `standalone` feature, `proxy_wasm::main!`
/// installs `$root` (a `fn(context_id) -> Box<dyn RootContext>`) for every
/// plugin of the module; without it (the suite, which dispatches on
/// `root_id`), `new_root` is the factory the suite calls. `$init` runs once
/// at module start, before any root context exists.
#[macro_export]
macro_rules! filter_entry {
    ($root:path) => {
        $crate::filter_entry!($root, {});
    };
    ($root:path, $init:block) => {
        #[cfg(feature = "standalone")]
        proxy_wasm::main! {{
            proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
            $init
            proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
                $root(id)
            });
        }}

        /// This filter's root context, for the suite module (filters/suite),
        /// which picks a filter by `root_id`.
        pub(crate) fn new_root(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
            $init
            $root(context_id)
        }
    };
}

/// A filter's fixed metrics: a struct of metric ids and its `define()`,
/// which defines each one (`counter`, `gauge` or `histogram` of this
/// module) at configure time; a metric the host refuses is `None`, logged.
///
/// ```ignore
/// filter_core::metric_set! {
///     struct Metrics {
///         hit: counter("passport_hit_total"),
///         latency: histogram("passport_issuer_latency_ms"),
///     }
/// }
/// ```
#[macro_export]
macro_rules! metric_set {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident: $kind:ident($metric:expr)),* $(,)? }) => {
        $(#[$meta])*
        struct $name {
            $($field: Option<u32>,)*
        }

        impl $name {
            fn define() -> Self {
                $name {
                    $($field: $crate::proxy::$kind($metric),)*
                }
            }
        }
    };
}
