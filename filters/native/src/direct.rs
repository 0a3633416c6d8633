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
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

use filter_core::proxy::ProxySharedData;
use filter_core::Verdict;
use jwt::cache::TokenCache;
use jwt::config::{Compiled, Keys};
use jwt::filter::{self, Env, Outcome, ProviderKeys, Result_};
use jwt::jti::JtiStore;

use crate::callbacks::{CallbackHost, Labelled, PerThread};
use crate::ffi::FilterPtr;
use crate::host::{self, Config};

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
    labelled: Labelled,
}

thread_local! {
    static STATES: PerThread<State> = PerThread::default();
}

fn state(c: &Arc<Config>) -> Option<Rc<State>> {
    STATES.with(|m| m.get(c, || make_state(c)))
}

fn make_state(c: &Arc<Config>) -> Option<State> {
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
    Some(State {
        keys: cfg
            .providers
            .iter()
            .map(|p| ProviderKeys::initial(&p.keys))
            .collect(),
        cache: RefCell::new(TokenCache::new(cfg.cache_entries)),
        cfg,
        jti,
        ids,
        labelled: Labelled::default(),
    })
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
    let mut h = CallbackHost::new(f, "jwt");
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
    if h.send_reply() {
        return host::STOP_ITERATION;
    }
    match v {
        Verdict::Continue => host::CONTINUE,
        _ => host::STOP_ITERATION,
    }
}

/// jwt's glue's `Metrics::count`, into the host's table (one lock).
fn count(c: &Config, st: &State, h: &CallbackHost, o: &Outcome) {
    let id = |i: usize| st.ids.get(i).copied().unwrap_or(0);
    let mut ids: Vec<u32> = Vec::with_capacity(4);
    let labelled = |name: &str, reason: Option<&str>| -> Option<u32> {
        let names = o
            .names
            .clone()
            .unwrap_or_else(|| filter_core::decision::route_names(h));
        st.labelled.id(name, &names, reason)
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
