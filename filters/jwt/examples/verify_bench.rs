//! Micro-benchmark of the verification core. It runs natively or as
//! wasm32-wasip1 under Node's WASI (V8, the engine Envoy embeds), so each
//! step is measured in the runtime the filter really meets:
//!
//! ```sh
//! make bench-verify        # mints demo tokens, builds this for wasm32, runs it in node
//! ```
//!
//! Each line of the token file (first argument) is one compact JWT signed by
//! a demo key (examples/keys). Figures are the best of several rounds (the
//! shared machines this runs on are noisy; the minimum is the stable
//! statistic), in µs per token.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use base64::Engine;
use jwt::{cache, config, filter, jti, pkcs1, token};

const WEB: &str = include_str!("../../../examples/config/jwt/web.json");
const ROUNDS: usize = 7;

fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::MAX, f64::min)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tokens.txt".into());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let tokens: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let cfg = config::load(WEB.as_bytes()).expect("web.json");
    let p = &cfg.providers[0];
    let config::Keys::Inline(keys) = &p.keys else {
        panic!("inline keys expected")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for alg in ["RS256", "ES256"] {
        let set: Vec<&str> = tokens
            .iter()
            .copied()
            .filter(|t| {
                token::precheck(t, 8192)
                    .map(|u| format!("{:?}", u.alg))
                    .as_deref()
                    == Ok(alg)
            })
            .collect();
        if set.is_empty() {
            continue;
        }
        let per = |total: std::time::Duration| total.as_nanos() as f64 / set.len() as f64 / 1000.0;
        let pre = best(|| {
            let a = Instant::now();
            for t in &set {
                let u = token::precheck(t, 8192).expect("precheck");
                token::check_claims(&u, p, Some(keys), now).expect("claims");
            }
            per(a.elapsed())
        });
        let full = best(|| {
            let us: Vec<_> = set
                .iter()
                .map(|t| {
                    let u = token::precheck(t, 8192).expect("precheck");
                    let ki = token::check_claims(&u, p, Some(keys), now).expect("claims");
                    (t, u, ki)
                })
                .collect();
            let a = Instant::now();
            for (t, u, ki) in &us {
                token::verify_signature(t, u, p, keys, *ki).expect("signature");
            }
            per(a.elapsed())
        });
        print!("{alg}: {} tokens, precheck+claims {pre:.1} us, signature step (jsonwebtoken::decode) {full:.1} us", set.len());
        if alg == "RS256" {
            let key = keys
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some("demo-rs256"))
                .expect("demo-rs256");
            let jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n: kn, e: ke } =
                key.decoding.kind()
            else {
                panic!("rsa key expected")
            };
            let pk = pkcs1::prepared(kn, ke).expect("prepared");
            let sigs: Vec<(&str, Vec<u8>)> = set
                .iter()
                .map(|t| {
                    let (msg, sig) = t.rsplit_once('.').expect("jws");
                    (
                        msg,
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(sig)
                            .expect("b64"),
                    )
                })
                .collect();
            let raw = best(|| {
                let a = Instant::now();
                for (msg, sig) in &sigs {
                    assert!(pk.verify(pkcs1::Hash::Sha256, msg.as_bytes(), sig));
                }
                per(a.elapsed())
            });
            let prep = best(|| {
                let a = Instant::now();
                std::hint::black_box(pkcs1::PreparedKey::new(kn, ke));
                a.elapsed().as_nanos() as f64 / 1000.0
            });
            print!(", raw PKCS#1 {raw:.1} us, preparing the key {prep:.1} us");
        }
        println!();
    }
    cached_path(&cfg, tokens.first().copied().expect("a token"));
}

/// The whole request-headers callback for a repeated (cached) token over the
/// fake host: the wasm-side work of the hot path, without Envoy's host calls.
fn cached_path(cfg: &config::Compiled, tok: &str) {
    use filter_core::host::FakeHost;
    use filter_core::shared::MemorySharedData;
    let keys: Vec<filter::ProviderKeys> = cfg
        .providers
        .iter()
        .map(|p| filter::ProviderKeys::initial(&p.keys))
        .collect();
    let store = jti::JtiStore::new(cfg.jti_max_entries, cfg.jti_max_lifetime.as_secs());
    let shared = MemorySharedData::new();
    let env = filter::Env {
        cfg,
        keys: &keys,
        cache: &std::cell::RefCell::new(cache::TokenCache::new(cfg.cache_entries)),
        shared: &shared,
        jti: &store,
    };
    let base = FakeHost::request("GET", "/api/v1/users/1")
        .with_header("authorization", &format!("Bearer {tok}"))
        .with_header("user-agent", "bench/1.0")
        .with_header("accept", "*/*");
    let mut first = base.clone();
    first.time = std::time::SystemTime::now();
    let (v, o, _) = filter::on_request_headers(&env, &mut first);
    assert_eq!(o.result, filter::Result_::Allowed, "{v:?} {o:?}");
    let n = 2000;
    let full = best(|| {
        let mut hosts: Vec<FakeHost> = (0..n).map(|_| base.clone()).collect();
        let a = Instant::now();
        for h in &mut hosts {
            let (_, o, _) = filter::on_request_headers(&env, h);
            assert!(o.cache_hit);
        }
        a.elapsed().as_nanos() as f64 / n as f64 / 1000.0
    });
    // The lookup alone: a cache holding this token (a synthetic entry).
    let mut lookup_cache = cache::TokenCache::new(1024);
    let entry = cache::Verified {
        provider: 0,
        generation: 0,
        sub: None,
        exp: u64::MAX,
        valid_until: u64::MAX,
        jti: None,
        scopes: vec![],
        forward: vec![],
    };
    lookup_cache.insert(tok, entry, 0);
    let lookup = best(|| {
        let a = Instant::now();
        for _ in 0..n {
            std::hint::black_box(lookup_cache.get(std::hint::black_box(tok), 1, |_| 0));
        }
        a.elapsed().as_nanos() as f64 / n as f64 / 1000.0
    });
    println!("cached token, whole on_request_headers over the fake host: {full:.2} us (of which the cache lookup {lookup:.2} us)");
}
