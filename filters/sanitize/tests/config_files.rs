//! The shipped example configs load, the JSON Schema on disk is current, and
//! broken configs are refused with the field named.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_shipped_example_config_compiles() {
    let dir = repo().join("examples/config/sanitize");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&p).unwrap();
            sanitize::config::load(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 4, "expected the four gateway configs, found {n}");
}

#[test]
fn schema_is_current() {
    filter_core::testing::assert_schema_current(
        env!("CARGO_MANIFEST_DIR"),
        "sanitize",
        &sanitize::config::schema(),
    );
}

#[test]
fn broken_configs_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"max_body_bytes": 0}"#, "max_body_bytes"),
        (
            r#"{"routes":[{"name":"x","prefix":"api"}]}"#,
            "routes[0].prefix",
        ),
        (
            r#"{"routes":[{"name":"x","prefix":"/a","methds":["GET"]}]}"#,
            "routes[0].methds",
        ),
        (
            r#"{"routes":[{"name":"x","prefix":"/a","query":{"size":{"type":"integer_clamp","min":5,"max":1}}}]}"#,
            "routes[0].query.size.min",
        ),
        (
            r#"{"remove_headers":{"exact":["X-Bad"]}}"#,
            "remove_headers.exact[0]",
        ),
        (
            r#"{"routes":[{"name":"x","prefix":"/a","body":{"fields":{"q":{"type":"float"}}}}]}"#,
            "routes[0].body.fields.q.type",
        ),
    ];
    for (json, path) in cases {
        let e = sanitize::config::load(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, *path, "{json}: {e}");
    }
}
