//! `noop::spin` timed outside Envoy: built for wasm32-wasip1 and run under
//! Node's V8 (tests/bench/wasi-run.mjs) with `--no-liftoff` (TurboFan) and
//! with `--liftoff --no-wasm-tier-up` (the baseline tier only). The `spin:<n>`
//! probe listener runs the same function inside Envoy; comparing the three
//! tells which tier Envoy's V8 runs the filters' code in.

use std::time::Instant;

// The function itself, not the filter crate (whose entry point would make
// this a reactor module).
#[path = "../src/spin.rs"]
mod spin;

fn main() {
    const ROUNDS: u32 = 100;
    const N: u32 = 2000;
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for i in 0..N {
            std::hint::black_box(spin::spin(std::hint::black_box(ROUNDS + i % 2)));
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        best = best.min(us);
    }
    println!("spin:{ROUNDS}: {best:.2} µs per call (best of 7 x {N})");
}
