//! The web chain's host calls per request (GET /api/v1/users/1, a cached
//! token, a known passport subject, nothing blocked, no breaker on the
//! path): the five filters as separate filters (each with the host to
//! itself, the identity through filter state) against the same five over one
//! request context (filter_core::context), counted by kind on a fake host
//! that counts every call, the clock included. `make bench-chain` prints the
//! table (`cargo test -p chain --test host_calls -- --nocapture`).
//!
//! Counted here: the calls a filter makes through `HttpHost` (headers,
//! properties, clock, writes). Not through it, the same in both builds:
//! passport's cache read (one `get_shared_data`) and the allowed-request
//! counters (`increment_metric`: jwt, passport, sanitize).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use filter_core::context::{HeaderWrites, RequestContext};
use filter_core::host::{FakeHost, HttpHost, Verdict};
use filter_core::shared::MemorySharedData;

const SANITIZE: &str = include_str!("../../../examples/config/sanitize/web.json");
const JWT: &str = include_str!("../../../examples/config/jwt/web.json");
const FDS: &str = include_str!("../../../examples/config/fds-block/web.json");
const PASSPORT: &str = include_str!("../../../examples/config/passport/web.json");
const BREAKER: &str = include_str!("../../../examples/config/route-breaker/web.json");
const KEY: &str = include_str!("../../../examples/keys/jwt-es256.pem");

/// A host that counts every call by kind.
struct Counting {
    inner: FakeHost,
    calls: RefCell<BTreeMap<&'static str, u32>>,
}

impl Counting {
    fn new(inner: FakeHost) -> Self {
        Counting {
            inner,
            calls: RefCell::new(BTreeMap::new()),
        }
    }
    fn count(&self, kind: &'static str) {
        *self.calls.borrow_mut().entry(kind).or_default() += 1;
    }
    fn total(&self) -> u32 {
        self.calls.borrow().values().sum()
    }
    fn take(&self) -> BTreeMap<&'static str, u32> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
}

impl HttpHost for Counting {
    fn request_headers(&self) -> Vec<(String, String)> {
        self.count("get_http_request_headers");
        self.inner.request_headers()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.count("get_http_request_header");
        self.inner.request_header(name)
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.count("set/remove_http_request_header");
        self.inner.set_request_header(name, value);
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        self.count("add_http_request_header");
        self.inner.add_request_header(name, value);
    }
    fn remove_request_header(&mut self, name: &str) {
        self.count("set/remove_http_request_header");
        self.inner.remove_request_header(name);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.count("get_buffer");
        self.inner.request_body(size)
    }
    fn replace_request_body(&mut self, body: &[u8]) {
        self.count("set_buffer");
        self.inner.replace_request_body(body);
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.count("send_http_response");
        self.inner.send_response(status, headers, body);
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.count("get_property");
        self.inner.property(path)
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.count("set_property");
        self.inner.set_property(path, value);
    }
    fn now(&self) -> SystemTime {
        self.count("get_current_time");
        self.inner.now()
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        self.count("set_http_request_headers");
        self.inner.set_request_headers(headers);
    }
}

/// A demo ES256 token for `sub`, valid for an hour from `now`.
fn token(now: u64) -> String {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = serde_json::json!({"alg": "ES256", "kid": "demo-es256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": "https://issuer.demo.local", "aud": "demo-api", "sub": "bench-user",
        "scope": "users:read", "iat": now, "exp": now + 3600, "jti": "j-1"
    });
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(KEY).unwrap();
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

#[test]
fn the_web_chain_makes_fewer_host_calls_over_one_request_context() {
    let now = SystemTime::now();
    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let now_ms = u64::try_from(now.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let tok = token(now_s);
    let mut base = FakeHost::request("GET", "/api/v1/users/1")
        .with_header(":scheme", "http")
        .with_header("authorization", &format!("Bearer {tok}"))
        .with_header("user-agent", "wrk")
        .with_header("x-forwarded-proto", "http")
        .with_property(&["source", "address"], b"127.0.0.1:40000")
        .with_property(&["xds", "route_name"], b"api")
        .with_property(&["xds", "virtual_host_name"], b"web");
    base.time = now;

    let s_cfg = sanitize::config::load(SANITIZE.as_bytes()).unwrap();
    let j_cfg = jwt::config::load(JWT.as_bytes()).unwrap();
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
    let f_cfg = fds_block::config::load(FDS.as_bytes()).unwrap();
    let feed_ix = fds_block::index::Index::build(std::iter::empty(), now_s);
    let p_cfg = passport::config::load(PASSPORT.as_bytes()).unwrap();
    let p_store = MemorySharedData::new();
    let b_cfg = route_breaker::config::load(BREAKER.as_bytes()).unwrap();
    let b_store = MemorySharedData::new();
    route_breaker::filter::init_store(&b_cfg, &b_store).unwrap();

    // The five filters' request-headers steps, on any host.
    #[allow(clippy::too_many_arguments)]
    fn run_all<H: HttpHost>(
        h: &mut H,
        s_cfg: &sanitize::config::Compiled,
        env: &jwt::filter::Env<'_, MemorySharedData>,
        f_cfg: &fds_block::config::Compiled,
        feed_ix: &fds_block::index::Index,
        p_cfg: &passport::config::Compiled,
        p_store: &MemorySharedData,
        b_cfg: &route_breaker::config::Compiled,
        b_store: &MemorySharedData,
        marks: &mut Vec<(&'static str, u32)>,
        count: &dyn Fn(&H) -> u32,
    ) -> passport::filter::Start {
        let mut req = sanitize::filter::Request::default();
        assert_eq!(req.on_headers(s_cfg, h, true), Verdict::Continue);
        marks.push(("sanitize", count(h)));
        let (v, o, _) = jwt::filter::on_request_headers(env, h);
        assert_eq!(v, Verdict::Continue, "{o:?}");
        marks.push(("jwt", count(h)));
        let now_s = h.unix_seconds();
        let out = fds_block::filter::on_request_headers(
            h,
            f_cfg,
            fds_block::filter::FeedView::Loaded(feed_ix),
            now_s,
        );
        assert_eq!(out.verdict, Verdict::Continue);
        marks.push(("fds-block", count(h)));
        let s = passport::filter::on_request_headers(p_cfg, h, p_store, |_| false);
        marks.push(("passport", count(h)));
        let mut events = Vec::new();
        let (v, _) = route_breaker::filter::on_request_headers(b_cfg, h, b_store, &mut events);
        assert_eq!(v, Verdict::Continue);
        marks.push(("route-breaker", count(h)));
        s
    }

    // Warm up: the token verified once (cache), the subject's passport
    // context in the shared cache.
    let mut warm = Counting::new(base.clone());
    let mut marks = Vec::new();
    run_all(
        &mut warm,
        &s_cfg,
        &env,
        &f_cfg,
        &feed_ix,
        &p_cfg,
        &p_store,
        &b_cfg,
        &b_store,
        &mut marks,
        &|h| h.total(),
    );
    let key = passport::cache::CacheKey {
        user: "bench-user".into(),
        device: None,
    };
    let ctx = serde_json::json!({
        "user_id": "bench-user", "device_id": null, "consents": ["marketing"],
        "risk_level": "low", "tier": "standard"
    });
    let body = serde_json::to_vec(&ctx).unwrap();
    let entry = passport::filter::lookup_result(&p_cfg, &key, Some(200), Some(&body), now_ms)
        .expect("issuer answer");
    passport::filter::complete(&p_cfg, &p_store, &key, &Ok(entry), now_ms);

    // Per filter: each filter has the host to itself.
    let mut per = Counting::new(base.clone());
    let mut marks = Vec::new();
    let start = run_all(
        &mut per,
        &s_cfg,
        &env,
        &f_cfg,
        &feed_ix,
        &p_cfg,
        &p_store,
        &b_cfg,
        &b_store,
        &mut marks,
        &|h| h.total(),
    );
    assert_eq!(start, passport::filter::Start::Hit);
    let per_upstream = per.inner.headers.clone();
    let per_kinds = per.take();

    // The chain: one request context in front of the host, then one flush.
    let mut results = Vec::new();
    for writes in [HeaderWrites::Each, HeaderWrites::Map] {
        let mut raw = Counting::new(base.clone());
        let mut rc = RequestContext::new(writes, Vec::new());
        let mut cmarks = Vec::new();
        {
            let mut h = rc.host(&mut raw);
            // The chain reads the route name for its per-route switches.
            let _ = h.property(&["xds", "route_name"]);
            let start = run_all(
                &mut h,
                &s_cfg,
                &env,
                &f_cfg,
                &feed_ix,
                &p_cfg,
                &p_store,
                &b_cfg,
                &b_store,
                &mut cmarks,
                &|_| 0,
            );
            assert_eq!(start, passport::filter::Start::Hit);
        }
        rc.flush(&mut raw);
        let mut a = per_upstream.clone();
        let mut b = raw.inner.headers.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "the upstream sees the same headers ({writes:?})");
        results.push((writes, raw.total(), raw.take()));
    }

    println!("\nWeb chain, GET /api/v1/users/1, cached token, known subject: host calls per request (through HttpHost)");
    println!("\n| filter | per-filter: calls (cumulative) |");
    println!("|---|---|");
    for (name, n) in &marks {
        println!("| {name} | {n} |");
    }
    let kinds: std::collections::BTreeSet<&str> = per_kinds
        .keys()
        .chain(results.iter().flat_map(|r| r.2.keys()))
        .copied()
        .collect();
    println!("\n| call | per-filter | chain (writes: each) | chain (writes: map) |");
    println!("|---|---|---|---|");
    for k in kinds {
        let g = |m: &BTreeMap<&str, u32>| m.get(k).copied().unwrap_or(0);
        println!(
            "| {k} | {} | {} | {} |",
            g(&per_kinds),
            g(&results[0].2),
            g(&results[1].2)
        );
    }
    let per_total: u32 = per_kinds.values().sum();
    println!(
        "| **total** | **{per_total}** | **{}** | **{}** |",
        results[0].1, results[1].1
    );
    println!(
        "\nNot through HttpHost, the same in every build: passport's cache read (get_shared_data) and \
         the allowed-request counters (increment_metric x3: jwt, passport, sanitize on_log)."
    );
    println!(
        "VM entries per request (exported callbacks, filters/wasm-opt/callbacks): per-filter 5 x \
         (context_create + request_headers + delete) + log x2 (sanitize, route-breaker) = 17; \
         chain: context_create, request_headers, log, delete = 4 (no response callback)."
    );
    assert!(results[0].1 < per_total && results[1].1 <= results[0].1);
}
