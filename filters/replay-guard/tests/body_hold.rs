//! `Compiled::body_hold` lists the settings under which `Request::on_headers`
//! holds the headers for the body (`WaitBody`): every route that needs a
//! signature, and the requests that match no route. istio/generate.py
//! refuses a WasmPlugin for a chain with any (Istio cannot set Envoy's
//! `allow_on_headers_stop_iteration`, without which a held request never
//! gets its body), so each listed setting is met by a signed request with a
//! body, and an open route never holds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use base64::Engine;
use filter_core::host::FakeHost;
use filter_core::shared::MemorySharedData;
use filter_core::Verdict;
use replay_guard::config::{load, Compiled};
use replay_guard::filter::Request;
use replay_guard::keyid::{derive_key, hmac_sha256};
use sha2::{Digest, Sha256};

const MASTER_B64: &str = "6uVwr+zo9rh/CyU3BUNq4p0/wad99gc4EK4KZJgK1wc=";
const NOW: u64 = 1_750_000_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn config(json: &str) -> Compiled {
    load(json.as_bytes(), &|_| Some(MASTER_B64.to_string())).unwrap()
}

/// A POST signed over method, authority, path and Content-Digest, with a
/// content-length body (headers not at end of stream).
fn signed_post(path: &str) -> FakeHost {
    let body = br#"{"item_id":"a","quantity":1}"#;
    let digest = format!("sha-256=:{}:", b64(&Sha256::digest(body)));
    let keyid = format!("phone-1:alice:{}", NOW + 600);
    let params = format!(
        "(\"@method\" \"@authority\" \"@path\" \"content-digest\");created={NOW};keyid=\"{keyid}\";nonce=\"nonce-{path}\""
    );
    let base = format!(
        "\"@method\": POST\n\"@authority\": gateway.test\n\"@path\": {path}\n\"content-digest\": {digest}\n\"@signature-params\": {params}"
    );
    let master = base64::engine::general_purpose::STANDARD
        .decode(MASTER_B64)
        .unwrap();
    let sig = hmac_sha256(&derive_key(&master, &keyid), base.as_bytes());
    let mut h = FakeHost::request("POST", path)
        .with_header("signature-input", &format!("app={params}"))
        .with_header("signature", &format!("app=:{}:", b64(&sig)))
        .with_header("content-digest", &digest)
        .with_header("content-length", &body.len().to_string())
        .with_body(body);
    h.time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW);
    h
}

fn headers(cfg: &Compiled, path: &str) -> Verdict {
    let store = MemorySharedData::new();
    cfg.store.create_keys(&store).unwrap();
    let mut h = signed_post(path);
    let v = Request::default().on_headers(cfg, &mut h, &store, false);
    assert!(h.response.is_none(), "{path}: {:?}", h.response);
    v
}

fn fields(cfg: &Compiled) -> Vec<String> {
    cfg.body_hold().into_iter().map(|b| b.field).collect()
}

#[test]
fn the_shipped_config_holds_on_its_signed_routes_and_off_them() {
    let bytes = std::fs::read(repo().join("examples/config/replay-guard/app.json")).unwrap();
    let cfg = load(&bytes, &|_| Some(MASTER_B64.to_string())).unwrap();
    assert_eq!(fields(&cfg), ["routes[1]", "required_components"]);
    // routes[1] (api) and a path on no route hold a signed body ...
    assert_eq!(headers(&cfg, "/api/v1/orders"), Verdict::WaitBody);
    assert_eq!(headers(&cfg, "/elsewhere"), Verdict::WaitBody);
    // ... the open routes[0] (health) does not
    assert_eq!(headers(&cfg, "/health"), Verdict::Continue);
    let reasons = cfg.body_hold();
    assert!(
        reasons[0].reason.contains("\"api\""),
        "{}",
        reasons[0].reason
    );
    assert!(
        reasons[0].reason.contains("Content-Digest"),
        "{}",
        reasons[0].reason
    );
}

#[test]
fn a_dry_run_holds_too() {
    let cfg = config(r#"{"master_secrets":[{"version":"1","env":"M"}],"dry_run":true}"#);
    assert_eq!(fields(&cfg), ["required_components"]);
    assert_eq!(headers(&cfg, "/x"), Verdict::WaitBody);
}

#[test]
fn an_open_catch_all_ends_the_list() {
    let cfg = config(
        r#"{"master_secrets":[{"version":"1","env":"M"}],
            "routes":[{"name":"signed","prefix":"/api/"},
                      {"name":"rest","prefix":"/","open":true},
                      {"name":"never","prefix":"/never"}]}"#,
    );
    assert_eq!(fields(&cfg), ["routes[0]"]);
    assert_eq!(headers(&cfg, "/api/x"), Verdict::WaitBody);
    assert_eq!(headers(&cfg, "/never"), Verdict::Continue);
    assert_eq!(headers(&cfg, "/other"), Verdict::Continue);
    let everything_open = config(
        r#"{"master_secrets":[{"version":"1","env":"M"}],"routes":[{"name":"all","prefix":"/","open":true}]}"#,
    );
    assert!(everything_open.body_hold().is_empty());
}

#[test]
fn an_open_route_that_is_not_a_catch_all_leaves_the_rest_held() {
    for route in [
        r#"{"name":"a","prefix":"/","open":true,"exact":true}"#,
        r#"{"name":"a","prefix":"/","open":true,"methods":["GET"]}"#,
        r#"{"name":"a","prefix":"/public/","open":true}"#,
    ] {
        let cfg = config(&format!(
            r#"{{"master_secrets":[{{"version":"1","env":"M"}}],"routes":[{route}]}}"#
        ));
        assert_eq!(fields(&cfg), ["required_components"], "{route}");
        assert_eq!(headers(&cfg, "/api/x"), Verdict::WaitBody, "{route}");
    }
}
