//! # gateway-native: the gateway filters as one Envoy dynamic module
//!
//! `libgateway_native.so` (x86_64 Linux) holds every gateway filter;
//! Envoy 1.40 loads it with `envoy.extensions.filters.http.dynamic_modules`
//! and each `DynamicModuleFilter` block names one filter (`filter_name`,
//! the wasm builds' `root_id`) and carries its JSON configuration
//! ([`envelope`]). `envoy/render.py --wasm-build native` writes those
//! blocks; docs/native.md has the design, the ABI pinning and the numbers.
//!
//! Design: the filters' proxy-wasm glue (their root and HTTP contexts) is
//! compiled natively too (`--cfg gateway_native`) and runs on a native
//! implementation of the proxy-wasm host functions that forwards to Envoy's
//! dynamic-module callbacks (`host`), so that the native build serves the
//! contract with the very code the wasm builds run, not a second glue per
//! filter. The pure parts are here and tested natively: the proxy-wasm
//! byte encodings ([`codec`]), the property table ([`props`]), the
//! process-wide shared data ([`shared`]), the metric bookkeeping
//! ([`metrics`]), the block envelope ([`envelope`]), the root-context tick
//! and wake-up bookkeeping ([`ticks`]). `unsafe` lives in ONE
//! module, `ffi` (the C boundary), built only for the module itself.

pub mod codec;
pub mod envelope;
pub mod metrics;
pub mod props;
pub mod shared;
pub mod ticks;

#[cfg(gateway_native)]
mod callbacks;
#[cfg(gateway_native)]
mod claim;
#[cfg(gateway_native)]
mod direct;
#[cfg(gateway_native)]
mod e2ee_direct;
#[cfg(gateway_native)]
#[allow(unsafe_code)]
mod ffi;
#[cfg(gateway_native)]
mod guard;
#[cfg(gateway_native)]
mod host;
#[cfg(gateway_native)]
mod mimic;

/// The JSON denial a request gets when its filter failed (panicked, or has
/// no working configuration on its worker): 503, fail closed.
pub fn failure_body(filter: &str) -> String {
    serde_json::json!({
        "error": "filter_failed",
        "message": format!("the {filter} filter failed; the request was refused"),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_answer_is_the_json_denial_shape() {
        let v: serde_json::Value = serde_json::from_str(&failure_body("sanitize")).unwrap();
        assert_eq!(v["error"], "filter_failed");
        assert!(v["message"].as_str().unwrap().contains("sanitize"));
    }
}
