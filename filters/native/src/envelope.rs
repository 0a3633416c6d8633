//! What one `DynamicModuleFilter` block hands the module: `filter_name` is
//! the filter (the `root_id` of the wasm builds: `sanitize`, `route_breaker`
//! …) and `filter_config` (a `google.protobuf.StringValue`) is this
//! envelope, written by `envoy/render.py` from the wasm block it replaces:
//!
//! ```json
//! {"config": "<the filter's JSON configuration, as in the wasm block>",
//!  "allow_on_headers_stop_iteration": true}
//! ```
//!
//! `config` is the same JSON text the wasm block's `configuration` carries,
//! so the filter's own loader (serde, `deny_unknown_fields`) checks it
//! exactly as in the wasm builds. `allow_on_headers_stop_iteration` keeps
//! the wasm block's flag of that name: a filter that pauses in its request
//! headers callback then still receives the body (Envoy's
//! `StopIteration`); without it the pause holds everything
//! (`StopAllIterationAndWatermark`, the wasm host's default).
//!
//! `peer_certificate_from_xfcc: true` (render.py sets it only on a listener
//! whose connection manager has `forward_client_cert_details: SANITIZE_SET`
//! and `set_current_client_cert_details.cert: true`, where Envoy drops the
//! client's XFCC and writes one element from the verified connection):
//! `connection.peer_certificate` is read from that element's `Cert=`.
//! Without it the property reads as absent natively (no dynamic-module
//! attribute carries the whole certificate).

use serde::Deserialize;

/// The filters the module runs, by the name a block gives (the wasm builds'
/// `root_id`s, the same table as filters/suite), and `chain`: a whole
/// gateway as ONE Envoy filter (filters/chain: its `config` is the chain's
/// configuration, docs/chain.md).
pub const FILTERS: [&str; 10] = [
    "sanitize",
    "jwt",
    "replay_guard",
    "fds_block",
    "passport",
    "route_breaker",
    "san_authz",
    "e2ee",
    "oidc",
    "chain",
];

/// Bench/test-only filters (docs/native.md, "Floors"): `envoy/render.py`
/// never writes them; tests/bench/run.py puts them on their own listeners
/// to measure what the host costs with no filter logic at all.
/// * `bench_raw`: every Envoy hook answers Continue at once (no root, no
///   proxy-wasm context): what any dynamic-module filter costs Envoy;
/// * `bench_noop`: a root and an empty HTTP context through the whole host
///   and the proxy-wasm SDK's dispatcher: the floor of a native filter here;
/// * `bench_jwt_direct`: an experiment (docs/native.md, "Floors"): jwt's
///   pure request path (its own config loader and `jwt::filter`) written
///   straight against the dynamic-module callbacks, no proxy-wasm host
///   (`crate::direct`): what the proxy-wasm layer costs jwt's cached path.
/// * `bench_claim_direct`: an experiment (docs/performance.md, "The claim
///   without Envoy's HTTP client"): each request claims a fresh key in
///   Redis over a connection the module owns, not through a callout.
/// * `bench_body_mimic`: an experiment (docs/performance.md, "e2ee's fixed
///   cost"): e2ee's Envoy-side work on an encrypted request (body held and
///   replaced, headers edited, the answer's body rewritten), with identity
///   transforms, straight on the callbacks (`crate::mimic`).
pub const BENCH_FILTERS: [&str; 5] = [
    "bench_raw",
    "bench_noop",
    "bench_jwt_direct",
    "bench_claim_direct",
    "bench_body_mimic",
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    config: String,
    #[serde(default)]
    allow_on_headers_stop_iteration: bool,
    #[serde(default)]
    peer_certificate_from_xfcc: bool,
}

/// One block's filter and configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Index into [`FILTERS`], then [`BENCH_FILTERS`] (`FILTERS.len() + i`).
    pub filter: usize,
    /// The filter's JSON configuration (what `on_configure` loads).
    pub config: Vec<u8>,
    pub allow_on_headers_stop_iteration: bool,
    /// `connection.peer_certificate` is the `Cert=` of the XFCC element
    /// Envoy set from the verified connection (above).
    pub peer_certificate_from_xfcc: bool,
}

impl Envelope {
    /// The filter's name (its `root_id`).
    pub fn name(&self) -> &'static str {
        FILTERS
            .iter()
            .chain(BENCH_FILTERS.iter())
            .nth(self.filter)
            .copied()
            .unwrap_or("unknown")
    }

    /// `bench_raw`: the hooks answer Continue without the host;
    /// `bench_body_mimic` has no root or context either.
    pub fn raw(&self) -> bool {
        matches!(self.name(), "bench_raw" | "bench_body_mimic")
    }

    /// `e2ee`: served straight on the callbacks (crate::e2ee_direct), not
    /// through the proxy-wasm host.
    pub fn e2ee(&self) -> bool {
        self.name() == "e2ee"
    }

    /// `bench_body_mimic`: e2ee's Envoy-side work, no crypto, no host.
    pub fn mimic(&self) -> bool {
        self.name() == "bench_body_mimic"
    }

    /// `bench_jwt_direct`: jwt's request path without the proxy-wasm host.
    pub fn direct(&self) -> bool {
        self.name() == "bench_jwt_direct"
    }

    /// `bench_claim_direct`: a claim over the module's own Redis connection.
    pub fn claim_direct(&self) -> bool {
        self.name() == "bench_claim_direct"
    }

    /// The filter whose metrics the block counts (`bench_jwt_direct`
    /// counts jwt's).
    pub fn metrics_name(&self) -> &'static str {
        if self.direct() {
            "jwt"
        } else {
            self.name()
        }
    }
}

/// Parses a block's `filter_name` and `filter_config`; the error names the
/// field.
pub fn parse(filter_name: &[u8], filter_config: &[u8]) -> Result<Envelope, String> {
    let filter = FILTERS
        .iter()
        .chain(BENCH_FILTERS.iter())
        .position(|f| f.as_bytes() == filter_name)
        .ok_or_else(|| {
            format!(
                "filter_name: unknown filter {:?} (expected one of {FILTERS:?})",
                String::from_utf8_lossy(filter_name)
            )
        })?;
    let mut de = serde_json::Deserializer::from_slice(filter_config);
    let raw: Raw =
        serde::Deserialize::deserialize(&mut de).map_err(|e| format!("filter_config: {e}"))?;
    de.end().map_err(|e| format!("filter_config: {e}"))?;
    Ok(Envelope {
        filter,
        config: raw.config.into_bytes(),
        allow_on_headers_stop_iteration: raw.allow_on_headers_stop_iteration,
        peer_certificate_from_xfcc: raw.peer_certificate_from_xfcc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_names_its_filter_and_carries_its_json_config() {
        let e = parse(b"route_breaker", br#"{"config": "{\"routes\": []}"}"#).unwrap();
        assert_eq!(e.name(), "route_breaker");
        assert_eq!(e.config, br#"{"routes": []}"#);
        assert!(!e.allow_on_headers_stop_iteration);
        let e = parse(
            b"sanitize",
            br#"{"config": "{}", "allow_on_headers_stop_iteration": true}"#,
        )
        .unwrap();
        assert!(e.allow_on_headers_stop_iteration);
        assert!(!e.peer_certificate_from_xfcc);
        let e = parse(
            b"san_authz",
            br#"{"config": "{}", "peer_certificate_from_xfcc": true}"#,
        )
        .unwrap();
        assert!(e.peer_certificate_from_xfcc);
    }

    #[test]
    fn a_chain_block_carries_the_chain_s_configuration() {
        let e = parse(
            b"chain",
            br#"{"config": "{\"filters\": []}", "allow_on_headers_stop_iteration": true}"#,
        )
        .unwrap();
        assert_eq!(e.name(), "chain");
        assert_eq!(e.config, br#"{"filters": []}"#);
        assert!(e.allow_on_headers_stop_iteration);
    }

    #[test]
    fn an_unknown_filter_or_field_is_refused_naming_it() {
        let e = parse(b"noop", br#"{"config": "{}"}"#).unwrap_err();
        assert!(e.starts_with("filter_name: unknown filter \"noop\""), "{e}");
        let e = parse(b"sanitize", br#"{"config": "{}", "vm_id": "x"}"#).unwrap_err();
        assert!(e.starts_with("filter_config: unknown field `vm_id`"), "{e}");
        let e = parse(b"sanitize", br#"{}"#).unwrap_err();
        assert!(e.contains("missing field `config`"), "{e}");
        assert!(parse(b"sanitize", b"not json").is_err());
    }

    #[test]
    fn the_bench_floors_are_their_own_names() {
        let e = parse(b"bench_raw", br#"{"config": ""}"#).unwrap();
        assert_eq!(e.name(), "bench_raw");
        assert!(e.raw());
        let e = parse(b"bench_noop", br#"{"config": ""}"#).unwrap();
        assert_eq!(e.name(), "bench_noop");
        assert!(!e.raw());
        assert!(!parse(b"jwt", br#"{"config": ""}"#).unwrap().raw());
        let e = parse(b"bench_jwt_direct", br#"{"config": "{}"}"#).unwrap();
        assert!(e.direct() && !e.raw());
        assert_eq!(e.metrics_name(), "jwt");
        assert!(!parse(b"jwt", br#"{"config": ""}"#).unwrap().direct());
    }
}
