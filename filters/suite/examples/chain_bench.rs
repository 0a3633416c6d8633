//! The web chain's wasm-side work, filter by filter: each filter's
//! request-headers logic for the bench request (GET /api/v1/users/1, a
//! cached token, a known passport subject, nothing blocked, no breaker on the
//! path) over the fake host, built for wasm32-wasip1 and run under Node's V8
//! with `--no-liftoff`, as Envoy runs it:
//!
//! ```sh
//! make bench-chain      # mints demo tokens, builds this for wasm32, runs it in node
//! ```
//!
//! What it measures is the filters' own code between host calls (the fake
//! host's calls are plain Rust and cost next to nothing); what Envoy adds per
//! host call and per VM entry is measured by `make bench` (docs/performance.md).
//! Figures are the best of several rounds, in µs per request.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use filter_core::host::{FakeHost, HttpHost, Verdict};
use filter_core::shared::MemorySharedData;

const SANITIZE: &str = include_str!("../../../examples/config/sanitize/web.json");
const JWT: &str = include_str!("../../../examples/config/jwt/web.json");
const FDS: &str = include_str!("../../../examples/config/fds-block/web.json");
const PASSPORT: &str = include_str!("../../../examples/config/passport/web.json");
const BREAKER: &str = include_str!("../../../examples/config/route-breaker/web.json");
const ROUNDS: usize = 7;
const N: usize = 2000;

/// One filter's request-headers logic on a request.
type Step<'a> = dyn Fn(&mut FakeHost) + 'a;

fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::MAX, f64::min)
}

/// Runs `step` on N copies of `host` and returns µs per call (best round).
fn time(host: &FakeHost, mut step: impl FnMut(&mut FakeHost)) -> f64 {
    best(|| {
        let mut hosts: Vec<FakeHost> = (0..N).map(|_| host.clone()).collect();
        let a = Instant::now();
        for h in &mut hosts {
            step(h);
        }
        a.elapsed().as_nanos() as f64 / N as f64 / 1000.0
    })
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tokens.txt".into());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let token = text.lines().find(|l| !l.is_empty()).expect("a token");
    let now = SystemTime::now();
    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let now_ms = u64::try_from(now.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();

    // What Envoy hands the first filter for `wrk -H 'authorization: ...'`.
    let mut base = FakeHost::request("GET", "/api/v1/users/1")
        .with_header(":scheme", "http")
        .with_header("authorization", &format!("Bearer {token}"))
        .with_header("user-agent", "wrk")
        .with_header("x-forwarded-proto", "http")
        .with_property(&["source", "address"], b"127.0.0.1:40000");
    base.time = now;

    // sanitize
    let s_cfg = sanitize::config::load(SANITIZE.as_bytes()).expect("sanitize web.json");
    let sanitize_step = |h: &mut FakeHost| {
        let mut req = sanitize::filter::Request::default();
        let v = req.on_headers(&s_cfg, h, true);
        assert_eq!(v, Verdict::Continue);
    };

    // jwt (the token verified once, then every request is a cache hit)
    let j_cfg = jwt::config::load(JWT.as_bytes()).expect("jwt web.json");
    let keys: Vec<jwt::filter::ProviderKeys> = j_cfg
        .providers
        .iter()
        .map(|p| jwt::filter::ProviderKeys::initial(&p.keys))
        .collect();
    let jti = jwt::jti::JtiStore::new(j_cfg.jti_max_entries, j_cfg.jti_max_lifetime.as_secs());
    let j_shared = MemorySharedData::new();
    let j_cache = RefCell::new(jwt::cache::TokenCache::new(j_cfg.cache_entries));
    let env = jwt::filter::Env {
        cfg: &j_cfg,
        keys: &keys,
        cache: &j_cache,
        shared: &j_shared,
        jti: &jti,
    };
    let jwt_step = |h: &mut FakeHost| {
        let (v, o, _) = jwt::filter::on_request_headers(&env, h);
        assert_eq!(v, Verdict::Continue, "{o:?}");
    };

    // fds-block: the shipped static entry, an empty feed list loaded
    let f_cfg = fds_block::config::load(FDS.as_bytes()).expect("fds-block web.json");
    let feed_ix = fds_block::index::Index::build(std::iter::empty(), now_s);
    let fds_step = |h: &mut FakeHost| {
        let out = fds_block::filter::on_request_headers(
            h,
            &f_cfg,
            fds_block::filter::FeedView::Loaded(&feed_ix),
            now_s,
        );
        assert_eq!(out.verdict, Verdict::Continue);
    };

    // passport: the subject's context already in the shared cache
    let p_cfg = passport::config::load(PASSPORT.as_bytes()).expect("passport web.json");
    let p_store = MemorySharedData::new();
    let passport_step = |h: &mut FakeHost| {
        let s = passport::filter::on_request_headers(&p_cfg, h, &p_store, |_| false);
        assert_eq!(s, passport::filter::Start::Hit);
    };

    // route-breaker: the web breaker guards /api/v1/unstable/ only
    let b_cfg = route_breaker::config::load(BREAKER.as_bytes()).expect("route-breaker web.json");
    let b_store = MemorySharedData::new();
    route_breaker::filter::init_store(&b_cfg, &b_store).expect("breaker store");
    let breaker_step = |h: &mut FakeHost| {
        let mut events = Vec::new();
        let (v, _) = route_breaker::filter::on_request_headers(&b_cfg, h, &b_store, &mut events);
        assert_eq!(v, Verdict::Continue);
    };

    // Warm up: verify the token once (cache), learn the subject, seed passport.
    let mut h = base.clone();
    sanitize_step(&mut h);
    let after_sanitize = h.clone();
    jwt_step(&mut h);
    let after_jwt = h.clone();
    let ident = filter_core::identity::Identity::read(&h).expect("jwt published an identity");
    let key = passport::cache::CacheKey {
        user: ident.user.clone().expect("a subject"),
        device: ident.device.clone(),
    };
    let ctx = serde_json::json!({
        "user_id": key.user, "device_id": null, "consents": ["marketing", "analytics"],
        "risk_level": "low", "tier": "standard"
    });
    let body = serde_json::to_vec(&ctx).unwrap();
    let entry = passport::filter::lookup_result(&p_cfg, &key, Some(200), Some(&body), now_ms)
        .expect("issuer answer");
    passport::filter::complete(&p_cfg, &p_store, &key, &Ok(entry), now_ms);
    fds_step(&mut h);
    let after_fds = h.clone();
    passport_step(&mut h);
    let after_passport = h.clone();
    breaker_step(&mut h);
    if std::env::var_os("CHAIN_BENCH_SHOW").is_some() {
        // What the upstream gets, and the filter-state values (sizes for the
        // bench's mimic targets).
        for (n, v) in &h.headers {
            println!("header {n}: {} bytes", v.len());
        }
        for (p, v) in &h.properties {
            println!("property {}: {} bytes", p.join("."), v.len());
        }
        for k in p_store.keys() {
            let v = filter_core::shared::SharedData::get(&p_store, &k).unwrap();
            println!("shared {k}: {} bytes", v.0.map_or(0, |b| b.len()));
        }
    }
    let calls = |from: &FakeHost, step: &dyn Fn(&mut FakeHost)| {
        let mut x = from.clone();
        x.calls.set(0);
        step(&mut x);
        x.calls.get()
    };

    let rows: [(&str, &FakeHost, &Step); 5] = [
        ("sanitize", &base, &sanitize_step),
        ("jwt", &after_sanitize, &jwt_step),
        ("fds-block", &after_jwt, &fds_step),
        ("passport", &after_fds, &passport_step),
        ("route-breaker", &after_passport, &breaker_step),
    ];
    let mut total = 0.0;
    println!("| filter | wasm-side µs/request | host calls |");
    println!("|---|---|---|");
    for (name, from, step) in rows {
        let us = time(from, step);
        total += us;
        println!("| {name} | {us:.2} | {} |", calls(from, step));
    }
    let floor = time(&base, |h| {
        std::hint::black_box(h.request_headers());
    });
    println!("| chain | {total:.2} | |");
    println!(
        "(fake host: one header-map copy costs {floor:.2} µs here; N = {N}, best of {ROUNDS})"
    );
}
