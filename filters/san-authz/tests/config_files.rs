//! The shipped example configs load, the JSON Schema on disk is current, and
//! broken configs are refused with the field named.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_shipped_example_config_compiles() {
    let dir = repo().join("examples/config/san-authz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&p).unwrap();
            san_authz::config::load(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected secure.json and behind-edge.json, found {n}"
    );
}

#[test]
fn behind_edge_trusts_the_current_demo_ca() {
    // examples/gen-demo-material.sh rewrites it when the CA changes.
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("examples/config/san-authz/behind-edge.json")).unwrap(),
    )
    .unwrap();
    let ca = std::fs::read_to_string(repo().join("examples/certs/ca.pem")).unwrap();
    assert_eq!(
        cfg["identity"]["trusted_cas"][0].as_str(),
        Some(ca.as_str())
    );
}

#[test]
fn schema_is_current() {
    filter_core::testing::assert_schema_current(
        env!("CARGO_MANIFEST_DIR"),
        "san-authz",
        &san_authz::config::schema(),
    );
}

#[test]
fn xfcc_mode_without_trusted_cas_is_refused() {
    // Absent and empty alike: a certificate read from a header is only as
    // good as its issuer, and nothing else checks that issuer.
    for identity in [
        r#"{"source":"xfcc"}"#,
        r#"{"source":"xfcc","trusted_cas":[]}"#,
        r#"{"source":"xfcc","trusted_cas":[],"require_hash":true}"#,
    ] {
        let json = format!(r#"{{"identity":{identity},"rules":[]}}"#);
        let e = san_authz::config::load(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, "identity.trusted_cas", "{json}: {e}");
        assert!(e.to_string().contains("xfcc"), "{e}");
    }
    // behind-edge.json without its CA: refused too.
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("examples/config/san-authz/behind-edge.json")).unwrap(),
    )
    .unwrap();
    cfg["identity"]["trusted_cas"] = serde_json::json!([]);
    let e = san_authz::config::load(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.path, "identity.trusted_cas");
}

#[test]
fn connection_mode_needs_no_trusted_cas() {
    // Envoy's handshake validated the peer certificate's chain.
    for json in [
        r#"{"rules":[]}"#,
        r#"{"identity":{"source":"connection"},"rules":[]}"#,
    ] {
        assert!(san_authz::config::load(json.as_bytes()).is_ok(), "{json}");
    }
}

#[test]
fn broken_configs_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{}"#, "."),
        (
            r#"{"rules":[],"identity":{"source":"header"}}"#,
            "identity.source",
        ),
        (
            r#"{"rules":[],"identity":{"trusted_cas":["nope"]}}"#,
            "identity.trusted_cas[0]",
        ),
        (
            r#"{"rules":[],"identity":{"max_sans":0}}"#,
            "identity.max_sans",
        ),
        (r#"{"rules":[],"dryrun":true}"#, "dryrun"),
        (
            r#"{"rules":[{"name":"r","sans":[],"paths":[{"prefix":"/"}]}]}"#,
            "rules[0].sans",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"exact":"spiffe://td/a/"}],"paths":[{"prefix":"/"}]}]}"#,
            "rules[0].sans[0].exact",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"spiffe_trust_domain":"TD"}],"paths":[{"prefix":"/"}]}]}"#,
            "rules[0].sans[0].spiffe_trust_domain",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"spiffe_path_prefix":{"trust_domain":"td","path_prefix":"ns"}}],"paths":[{"prefix":"/"}]}]}"#,
            "rules[0].sans[0].spiffe_path_prefix.path_prefix",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"regex":".*"}],"paths":[{"prefix":"/"}]}]}"#,
            "rules[0].sans[0].regex",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"dns":"a.example"}],"paths":[]}]}"#,
            "rules[0].paths",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"dns":"a.example"}],"paths":[{"prefix":"x"}]}]}"#,
            "rules[0].paths[0].prefix",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"dns":"a.example"}],"paths":[{"prefix":"/","methods":["get"]}]}]}"#,
            "rules[0].paths[0].methods[0]",
        ),
        (
            r#"{"rules":[{"name":"r","sans":[{"dns":"a.example"}],"hosts":["Api:443"],"paths":[{"prefix":"/"}]}]}"#,
            "rules[0].hosts[0]",
        ),
        (
            r#"{"rules":[],"upstream_san_header":"X-San"}"#,
            "upstream_san_header",
        ),
    ];
    for (json, path) in cases {
        let e = san_authz::config::load(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, *path, "{json}: {e}");
    }
}
