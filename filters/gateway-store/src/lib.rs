//! # gateway-store
//!
//! The gateway filters' only path to Redis. Upstream Envoy has no proxy-wasm
//! Redis call, so the filters (jwt one-time routes, replay-guard nonces, oidc
//! sessions) reach Redis through `dispatch_http_call` to this small service
//! next to each Envoy. It performs exactly the operations the filters need
//! and nothing else:
//!
//! | request | Redis command |
//! |---|---|
//! | `POST /v1/claim/{ns}/{key}?ttl_ms=N` | `SET gw:{ns}:{key} <random id> NX PX N` (201 / 409) |
//! | `PUT /v1/session/{ns}/{key}?ttl_ms=N` | `SET gw:{ns}:{key} <body> PX N` (204) |
//! | `GET /v1/session/{ns}/{key}` | `GET gw:{ns}:{key}` (200 / 404) |
//! | `DELETE /v1/session/{ns}/{key}` | `DEL gw:{ns}:{key}` (204) |
//! | `GET /healthz` | `PING` |
//! | `GET /stats` | none |
//!
//! plus one fixed compare-and-delete `EVAL` that releases a claim Redis
//! granted after its request had been answered 503. Namespaces come from the
//! command line, keys are SHA-256 hex: no client string is ever a key. Every
//! request waits at most `--timeout-ms` (or its `x-deadline-ms`), then gets
//! 503 `store_unavailable`. See `docs/gateway-store.md`.
//!
//! A host service, not a wasm module: on wasm32 this crate is empty (so the
//! workspace's wasm32 clippy pass skips it).
#![cfg(not(target_arch = "wasm32"))]

pub mod api;
pub mod config;
mod handoff;
pub mod server;
pub mod stats;
pub mod store;
