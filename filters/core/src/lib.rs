//! Shared ground for the gateway's proxy-wasm filters.
//!
//! Everything here is plain Rust that compiles and is tested natively; the
//! only proxy-wasm code lives in [`proxy`] (wasm32 only), which adapts the
//! host ABI to the [`host::HttpHost`] and [`shared::SharedData`] seams.
//!
//! * [`host`]: the seam a filter's request logic talks to, and [`host::FakeHost`]
//!   for native tests of that logic.
//! * [`denial`]: the one JSON denial shape every filter answers with.
//! * [`config`]: JSON config loading that rejects unknown fields and names the
//!   field path of every error.
//! * [`duration`]: durations written as `"5s"`, `"300ms"`, `"2m"`, `"1h"`.
//! * [`route`]: path-prefix + method matching, segment aware.
//! * [`shared`]: compare-and-swap helpers over proxy-wasm shared data.
//! * [`headers`]: header names the filters agree on.
//! * [`identity`]: the verified caller identity handed from the verifying
//!   filters (jwt, replay-guard, san-authz) to the ones after them.
//! * [`decision`]: the one structured log line per denial (docs/operations.md).
//! * [`metrics`]: labelled counter names (Envoy tag extraction).
//! * [`request`]: the pure decision seam ([`request::RequestView`] in,
//!   [`request::Decision`] out) that every build's host adapter applies.
//! * [`store`]: once-only claims in the shared store (Redis behind the
//!   gateway-store sidecar), the same for every replica of a gateway.
//! * [`chain_hooks`]: the chain build's switch, scoped to its callbacks
//!   (`proxy::chain`).
//! * [`context`]: the chain build's per-request context (one header read,
//!   batched writes, hand-overs in VM memory) in front of the host.
//! * [`original`]: the client's `:path`/body saved before a rewrite, for
//!   signature verification after sanitize.

pub mod chain_hooks;
pub mod config;
pub mod context;
pub mod decision;
pub mod denial;
pub mod duration;
pub mod headers;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod original;
pub mod request;
pub mod route;
pub mod secrets;
pub mod shared;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(any(target_arch = "wasm32", gateway_native))]
pub mod proxy;

pub use denial::Denial;
pub use host::{HttpHost, Verdict};
