//! Micro-benchmark of e2ee's per-request work, natively or as wasm32-wasip1
//! under Node's WASI (V8, the engine Envoy embeds):
//!
//! ```sh
//! make bench-e2ee     # builds this for wasm32, runs it in node with examples/config/e2ee/app.json,
//!                     # then natively with the native build's AES-GCM (feature native-aead: ring)
//! ```
//!
//! For a body of 0, 1 KiB, 16 KiB and 60 KiB (the app gateway's 4096-byte
//! records on the request too): the request step (`decide_body`: key id
//! check, IKM and HKDF derivation, every record decrypted, the header
//! edits) and the response step (a fresh encoder, the same plaintext
//! encrypted in 4096-byte records as it would stream back), best of several
//! rounds, µs per request; then the fixed cost and the cost per KiB (least
//! squares over the sizes) against the budget (≤ 20 µs + ≤ 2 µs/KiB for
//! both steps together).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use e2ee::{codec, config, decide};

const ROUNDS: usize = 7;
const KID: &str = "bench-phone:bench-user:4102444800";
const SECRET_B64: &str = "6uVwr+zo9rh/CyU3BUNq4p0/wad99gc4EK4KZJgK1wc=";

fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| f()).fold(f64::MAX, f64::min)
}

fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/config/e2ee/app.json".into());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The bench's own secret for every configured variable.
    let cfg = config::load(&bytes, &|_| Some(SECRET_B64.to_string())).expect("config");
    let master = cfg.secrets[0].key.clone();
    let ikm = codec::ikm(&master, KID.as_bytes());
    let rs = cfg.response_record_size;
    let engine = if cfg!(target_arch = "wasm32") {
        "V8 (wasm32)"
    } else {
        "native"
    };
    println!(
        "e2ee in {engine}, AES-128-GCM by {}: µs per request, best of {ROUNDS} rounds (record size {rs})",
        codec::aead::BACKEND
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "bytes", "request", "response", "both"
    );
    let mut points = Vec::new();
    for size in [0usize, 1024, 16 * 1024, 60 * 1024] {
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let body = codec::seal(&plain, &ikm, [9; 16], rs, KID.as_bytes()).unwrap();
        let n = if size > 8192 { 200 } else { 2000 };
        let req = best(|| {
            per_call(n, || {
                let o = decide::decide_body(&cfg, &body, Some(KID)).unwrap();
                std::hint::black_box(o);
            })
        });
        let resp = best(|| {
            per_call(n, || {
                let mut e = codec::Encoder::new(&ikm, [7; 16], rs, KID.as_bytes()).unwrap();
                let mut out = Vec::with_capacity(body.len());
                // As Envoy hands a body over: 16 KiB chunks.
                for chunk in plain.chunks(16 * 1024) {
                    e.push(chunk, &mut out);
                }
                e.finish(&mut out);
                std::hint::black_box(out);
            })
        });
        println!("{size:>8} {req:>10.2} {resp:>10.2} {:>10.2}", req + resp);
        points.push((size as f64 / 1024.0, req + resp));
    }
    // The primitive alone: one AES-128-GCM seal of 16 KiB in place, by the
    // codec's backend (and by RustCrypto's too when that is another one).
    {
        use aes_gcm::aead::consts::{U12, U16};
        use aes_gcm::aead::{AeadCore, AeadInPlace, KeyInit, KeySizeUser};
        fn seal_16k<A>() -> f64
        where
            A: AeadInPlace + AeadCore<NonceSize = U12> + KeyInit + KeySizeUser<KeySize = U16>,
        {
            let c = A::new(&[1u8; 16].into());
            let mut buf = vec![0u8; 16 * 1024];
            best(|| {
                per_call(200, || {
                    let tag = c
                        .encrypt_in_place_detached(&[0u8; 12].into(), b"", &mut buf)
                        .unwrap();
                    std::hint::black_box(tag);
                })
            })
        }
        let raw = seal_16k::<codec::aead::Aes128Gcm>();
        println!(
            "aes-128-gcm alone ({}): {:.3} µs/KiB",
            codec::aead::BACKEND,
            raw / 16.0
        );
        if codec::aead::BACKEND != "aes-gcm (RustCrypto)" {
            let raw = seal_16k::<codec::aead::RustCrypto>();
            println!(
                "aes-128-gcm alone (aes-gcm (RustCrypto)): {:.3} µs/KiB",
                raw / 16.0
            );
        }
    }
    // Least squares: both = fixed + per_kib * KiB.
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (sxx, sxy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x * x, b + x * y));
    let per_kib = (n * sxy - sx * sy) / (n * sxx - sx * sx);
    let fixed = (sy - per_kib * sx) / n;
    let ok = |v: f64, limit: f64| if v <= limit { "ok" } else { "OVER BUDGET" };
    println!(
        "fixed {fixed:.2} µs/request ({}: budget 20), {per_kib:.3} µs/KiB ({}: budget 2)",
        ok(fixed, 20.0),
        ok(per_kib, 2.0)
    );
}
