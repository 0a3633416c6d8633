//! The shipped example configs load, the JSON Schema on disk is current, and
//! broken configs are refused with the field named.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[allow(clippy::unwrap_used)]
fn example(name: &str) -> serde_json::Value {
    let p = repo().join("examples/config/passport").join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn every_shipped_example_config_compiles() {
    let dir = repo().join("examples/config/passport");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&p).unwrap();
            passport::config::load(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the web and app configs, found {n}");
}

/// The demo configs inline the demo key (a Wasm VM cannot read files):
/// they must hold the same key as examples/keys/, or passports would not
/// verify with the published JWKS after `make demo-material`.
#[test]
fn inline_demo_keys_match_the_key_files() {
    let pem = std::fs::read_to_string(repo().join("examples/keys/passport-es256.pem")).unwrap();
    for name in ["web.json", "app.json"] {
        let cfg = example(name);
        assert_eq!(
            cfg["token"]["signing_key"]["pem"].as_str().map(str::trim),
            Some(pem.trim()),
            "{name}: run examples/gen-demo-material.sh (it rewrites the inline key)"
        );
        assert_eq!(cfg["token"]["signing_key"]["kid"], "passport-2026-1");
    }
}

#[test]
fn schema_is_current() {
    filter_core::testing::assert_schema_current(
        env!("CARGO_MANIFEST_DIR"),
        "passport",
        &passport::config::schema(),
    );
}

#[test]
fn broken_configs_name_the_field() {
    let base = example("web.json");
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("gateway", serde_json::json!("Web!"), "gateway"),
        (
            "issuer.path",
            serde_json::json!("/v1/context?id={uid}"),
            "issuer.path",
        ),
        ("issuer.timeout", serde_json::json!("5 s"), "issuer.timeout"),
        ("issuer.colour", serde_json::json!(1), "issuer.colour"),
        (
            "token.signing_key.pem",
            serde_json::json!("nope"),
            "token.signing_key.pem",
        ),
        (
            "token.claims",
            serde_json::json!(["tier", "exp"]),
            "token.claims[1]",
        ),
        ("cache.ttl", serde_json::json!("60s"), "cache.ttl"),
        ("cache.slots", serde_json::json!(0), "cache.slots"),
        (
            "coalesce.max_wait",
            serde_json::json!("100ms"),
            "coalesce.max_wait",
        ),
        (
            "headers",
            serde_json::json!([{"name": "X-Risk", "claim": "risk_level"}]),
            "headers[0].name",
        ),
        (
            "headers",
            serde_json::json!([{"name": "x-risk", "claim": "score"}]),
            "headers[0].claim",
        ),
        (
            "on_unknown_user",
            serde_json::json!("allow"),
            "on_unknown_user",
        ),
    ];
    for (field, value, path) in cases {
        let mut cfg = base.clone();
        let mut target = &mut cfg;
        let parts: Vec<&str> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = target.get_mut(*p).unwrap();
        }
        target[parts[parts.len() - 1]] = value.clone();
        let e = passport::config::load(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.path, *path, "{field}: {e}");
    }
}
