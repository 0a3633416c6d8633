//! # chain: one Envoy HTTP filter per gateway
//!
//! `chain.wasm` links the eight filter crates (without their own entry
//! point, like filters/suite) and runs a gateway's filters, in order, inside
//! ONE Envoy HTTP filter: one VM entry per callback for the whole gateway.
//! Its configuration is the ordered list of the gateway's filters, each
//! with its own JSON configuration unchanged ([`config`]).
//!
//! Every filter runs its own code: its root context (configuration,
//! metrics, timers, callouts) and its HTTP context are the very ones of the
//! per-filter module. What changes is the host they talk to: one
//! [`filter_core::context::RequestContext`] per request, shared by the
//! filters (one read of the header map, reads served from it, writes
//! applied together before the request goes on or a reply leaves, the
//! identity and the client's original path/body handed over in VM memory,
//! one clock read per callback, stable properties read once), and the step
//! machine of [`run`] in place of Envoy's filter manager (a filter that
//! holds stops the ones after it; a denial ends the request; a callout's
//! answer resumes the chain at the next filter).
//!
//! The filters' timers are multiplexed on the chain's root context (each
//! filter keeps its own period) and the callouts' answers reach the filter
//! that started them. Docs: docs/chain.md.

pub mod config;
pub mod run;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm;

#[cfg(any(target_arch = "wasm32", gateway_native))]
pub use wasm::root_context;
