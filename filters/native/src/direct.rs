//! `bench_jwt_direct` (bench/test only; crate::envelope::BENCH_FILTERS,
//! docs/native.md "Floors", docs/performance.md "jwt straight against the
//! callbacks"): an EXPERIMENT measuring what the proxy-wasm layer costs
//! jwt's request path. jwt's own configuration (its loader and validation,
//! `jwt::config::load`) and its pure request path (`jwt::filter::
//! on_request_headers`: `decide`, then the edits, the decision log, dry run,
//! the JSON denial) run over an [`HttpHost`] written straight over the
//! dynamic-module callbacks (`crate::ffi::envoy`): no proxy-wasm encodings,
//! no SDK dispatcher, no root or HTTP context, no per-hook host bookkeeping.
//! The headers are copied ONCE out of Envoy's storage into the
//! `(String, String)` pairs `filter_core::request::RequestView` borrows
//! (a view over Envoy's own bytes would need `RequestView` generic over
//! its storage: every filter's `decide` would change).
//!
//! Per worker thread and configuration, as jwt's glue has per VM: the
//! compiled configuration, the providers' keys, the verified-token cache
//! and the `jti` store handle. Counted into the host's per-configuration
//! metric table (the same names, flushed the same way).
//!
//! Refused at configuration time, naming the field (the direct path has no
//! root context, so no ticks and no callouts): a remote JWKS
//! (`providers[i].jwks.remote`: fetched and refreshed from the root
//! context) and one-time routes claimed in a shared store (`shared_store`
//! with a `routes[i].one_time_jti` route: a callout per request, the
//! request paused until it answers). One-time routes with this process's
//! store alone work (the process-wide shared data, as in the module).

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use filter_core::proxy::ProxySharedData;
use filter_core::{HttpHost, Verdict};
use jwt::cache::TokenCache;
use jwt::config::{Compiled, Keys};
use jwt::filter::{self, Env, Outcome, ProviderKeys, Result_};
use jwt::jti::JtiStore;

use crate::ffi::{envoy, FilterPtr};
use crate::host::{self, Config, REQUEST_HEADERS};

/// jwt's counters (its glue's `Metrics`, filters/jwt/src/lib.rs), by name.
const COUNTERS: [&str; 12] = [
    "jwt_allowed_total",
    "jwt_skipped_total",
    "jwt_cache_hit_total",
    "jwt_signature_checked_total",
    "jwt_rejected_before_crypto_total",
    "jwt_jwks_stale_served_total",
    "jwt_jwks_fetch_ok_total",
    "jwt_jwks_fetch_failed_total",
    "jwt_store_claimed_total",
    "jwt_store_replayed_total",
    "jwt_store_unavailable_total",
    "jwt_store_local_replay_total",
];
const ALLOWED: usize = 0;
const SKIPPED: usize = 1;
const CACHE_HIT: usize = 2;
const SIGNATURE_CHECKED: usize = 3;
const REJECTED_BEFORE_CRYPTO: usize = 4;
const STALE_SERVED: usize = 5;
const LOCAL_REPLAY: usize = 11;
const DENIED: &str = "jwt_denied_total";
const DRY_RUN_DENIED: &str = "jwt_dry_run_denied_total";
const ANONYMOUS: &str = "jwt_anonymous_total";

/// Loads jwt's configuration and refuses what the direct path does not do;
/// the error names the field (as jwt's glue logs it).
pub fn load(bytes: &[u8]) -> Result<Compiled, String> {
    let c = jwt::config::load(bytes).map_err(|e| format!("jwt: {e}"))?;
    for (i, p) in c.providers.iter().enumerate() {
        if let Keys::Remote(_) = p.keys {
            return Err(format!(
                "jwt: invalid config at `providers[{i}].jwks.remote`: bench_jwt_direct serves inline JWKS only (a remote JWKS is fetched and refreshed from a root context, which the direct path does not have)"
            ));
        }
    }
    if c.shared_store.is_some() {
        if let Some(i) = c.routes.iter().position(|r| r.one_time_jti) {
            return Err(format!(
                "jwt: invalid config at `routes[{i}].one_time_jti`: bench_jwt_direct does not claim one-time tokens in a shared store (`shared_store`: a callout per request); drop `shared_store` (this process's jti store decides) or the route's flag"
            ));
        }
    }
    Ok(c)
}

/// Main thread, inside `config_new`: checks the configuration and defines
/// jwt's counters on it (Envoy takes new metrics only then). `false`: refused
/// (logged, field named).
pub fn configure(c: &Config) -> bool {
    jwt::crypto::install();
    if let Err(e) = load(&c.envelope().config) {
        host::log(4, e.as_bytes());
        return false;
    }
    for name in COUNTERS {
        host::define_config_counter(c, name);
    }
    true
}

/// One worker's state for one configuration (jwt's glue: one per VM).
struct State {
    cfg: Compiled,
    keys: Vec<ProviderKeys>,
    cache: RefCell<TokenCache>,
    jti: JtiStore,
    /// [`COUNTERS`]' ids in the host's registry.
    ids: [u32; COUNTERS.len()],
    /// Labelled counter name → id (bounded: `MAX_TAGGED_METRICS`).
    tagged: RefCell<HashMap<String, u32>>,
}

/// Configuration address → (configuration, this thread's state).
type States = HashMap<usize, (Weak<Config>, Rc<State>)>;

/// A local reply: status, headers, body.
type Reply = (u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

thread_local! {
    static STATES: RefCell<States> = RefCell::new(HashMap::new());
}

fn state(c: &Arc<Config>) -> Option<Rc<State>> {
    let key = Arc::as_ptr(c) as usize;
    if let Some(s) = STATES.with(|m| m.borrow().get(&key).map(|(_, s)| s.clone())) {
        return Some(s);
    }
    jwt::crypto::install();
    let cfg = match load(&c.envelope().config) {
        Ok(cfg) => cfg,
        Err(e) => {
            host::log(4, e.as_bytes());
            return None;
        }
    };
    let jti = JtiStore::new(cfg.jti_max_entries, cfg.jti_max_lifetime.as_secs());
    if let Err(e) = jti.ensure_keys(&ProxySharedData) {
        host::log(
            4,
            format!("jwt: could not create the jti store: {e}").as_bytes(),
        );
        return None;
    }
    let mut ids = [0u32; COUNTERS.len()];
    for (id, name) in ids.iter_mut().zip(COUNTERS) {
        *id = host::counter_id(name).unwrap_or(0);
    }
    let s = Rc::new(State {
        keys: cfg
            .providers
            .iter()
            .map(|p| ProviderKeys::initial(&p.keys))
            .collect(),
        cache: RefCell::new(TokenCache::new(cfg.cache_entries)),
        cfg,
        jti,
        ids,
        tagged: RefCell::new(HashMap::new()),
    });
    STATES.with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|_, (w, _)| w.strong_count() > 0);
        m.insert(key, (Arc::downgrade(c), s.clone()));
    });
    Some(s)
}

/// The request headers hook of a `bench_jwt_direct` stream: the status for
/// Envoy (abi.h's request headers status). A panic is contained: 503
/// `filter_failed`, as the host answers for a failed filter.
pub fn request_headers(c: &Arc<Config>, f: FilterPtr) -> u32 {
    match catch_unwind(AssertUnwindSafe(|| run(c, f))) {
        Ok(status) => status,
        Err(_) => {
            host::log(4, b"bench_jwt_direct: panic (contained)");
            send_failure(f);
            host::STOP_ITERATION
        }
    }
}

fn send_failure(f: FilterPtr) {
    host::send_failure(f, "bench_jwt_direct");
}

fn run(c: &Arc<Config>, f: FilterPtr) -> u32 {
    let Some(st) = state(c) else {
        send_failure(f);
        return host::STOP_ITERATION;
    };
    let mut h = Direct { f, reply: None };
    let env = Env {
        cfg: &st.cfg,
        keys: &st.keys,
        cache: &st.cache,
        shared: &ProxySharedData,
        jti: &st.jti,
    };
    let (v, out, pending) = filter::on_request_headers(&env, &mut h);
    count(c, &st, &h, &out);
    if pending.is_some() {
        // Refused at configuration time (a shared store's one-time route).
        send_failure(f);
        return host::STOP_ITERATION;
    }
    // The local reply after every borrow is released (Envoy re-enters this
    // stream's response hooks synchronously; they answer Continue).
    if let Some((status, headers, body)) = h.reply.take() {
        envoy::send_response(f, u32::from(status), &headers, &body, b"jwt");
        return host::STOP_ITERATION;
    }
    match v {
        Verdict::Continue => host::CONTINUE,
        _ => host::STOP_ITERATION,
    }
}

/// jwt's glue's `Metrics::count`, into the host's table (one lock).
fn count(c: &Config, st: &State, h: &Direct, o: &Outcome) {
    let id = |i: usize| st.ids.get(i).copied().unwrap_or(0);
    let mut ids: Vec<u32> = Vec::with_capacity(4);
    let labelled = |name: &str, reason: Option<&str>| -> Option<u32> {
        let names = o
            .names
            .clone()
            .unwrap_or_else(|| filter_core::decision::route_names(h));
        let mut tags = vec![
            ("gateway", names.gateway.as_str()),
            ("route", names.route.as_str()),
        ];
        if let Some(r) = reason {
            tags.push(("reason", r));
        }
        let full = filter_core::metrics::tagged(name, &tags);
        let mut m = st.tagged.borrow_mut();
        if let Some(id) = m.get(&full) {
            return Some(*id);
        }
        if m.len() >= filter_core::metrics::MAX_TAGGED_METRICS {
            return None;
        }
        let id = host::counter_id(&full)?;
        m.insert(full, id);
        Some(id)
    };
    let before_crypto = !o.signature_checked && !o.cache_hit;
    match o.result {
        Result_::Allowed => ids.push(id(ALLOWED)),
        Result_::Denied | Result_::DryRunDenied => {
            let name = if o.result == Result_::Denied {
                DENIED
            } else {
                DRY_RUN_DENIED
            };
            ids.extend(labelled(name, Some(o.code.unwrap_or("unknown"))));
            if before_crypto {
                ids.push(id(REJECTED_BEFORE_CRYPTO));
            }
        }
        Result_::Skipped => ids.push(id(SKIPPED)),
        Result_::Anonymous => ids.extend(labelled(ANONYMOUS, None)),
    }
    if o.cache_hit {
        ids.push(id(CACHE_HIT));
    }
    if o.signature_checked {
        ids.push(id(SIGNATURE_CHECKED));
    }
    if o.stale_keys {
        ids.push(id(STALE_SERVED));
    }
    if o.local_replay {
        ids.push(id(LOCAL_REPLAY));
    }
    // `o.claim` (shared-store answers) never happens here: refused at
    // configuration time.
    host::count(c, &ids);
}

/// The request as jwt's pure path sees it, straight over the callbacks.
struct Direct {
    f: FilterPtr,
    /// A local reply asked for, sent once jwt's code has returned.
    reply: Option<Reply>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl HttpHost for Direct {
    fn request_headers(&self) -> Vec<(String, String)> {
        envoy::with_headers(self.f, REQUEST_HEADERS, |pairs| {
            pairs.iter().map(|(k, v)| (lossy(k), lossy(v))).collect()
        })
    }
    fn request_header(&self, name: &str) -> Option<String> {
        host::joined(envoy::header_values(
            self.f,
            REQUEST_HEADERS,
            name.as_bytes(),
        ))
        .map(|v| lossy(&v))
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        envoy::set_header(
            self.f,
            REQUEST_HEADERS,
            name.as_bytes(),
            Some(value.as_bytes()),
        );
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        envoy::add_header(self.f, REQUEST_HEADERS, name.as_bytes(), value.as_bytes());
    }
    fn remove_request_header(&mut self, name: &str) {
        envoy::set_header(self.f, REQUEST_HEADERS, name.as_bytes(), None);
    }
    fn request_body(&self, _size: usize) -> Option<Vec<u8>> {
        None
    }
    fn replace_request_body(&mut self, _body: &[u8]) {}
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        self.reply = Some((status, headers, body.to_vec()));
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let segments: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
        host::property(Some(self.f), "jwt", false, &segments)
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        let segments: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
        host::set_filter_state_property(self.f, &segments, value);
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
