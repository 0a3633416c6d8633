//! The shipped example configs load, the JSON Schema on disk is current, and
//! broken configs are refused with the field named.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_shipped_example_config_compiles() {
    let dir = repo().join("examples/config/fds-block");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&p).unwrap();
            let c =
                fds_block::config::load(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(
                c.feed.is_some(),
                "{}: the gateways poll the FDS feed",
                p.display()
            );
            assert!(!c.dry_run, "{}: shipped configs block", p.display());
            n += 1;
        }
    }
    assert!(n >= 2, "expected the web and app configs, found {n}");
}

#[test]
fn schema_is_current() {
    filter_core::testing::assert_schema_current(
        env!("CARGO_MANIFEST_DIR"),
        "fds-block",
        &fds_block::config::schema(),
    );
}

#[test]
fn broken_configs_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"max_entries": 0}"#, "max_entries"),
        (r#"{"dry_rn": true}"#, "dry_rn"),
        (
            r#"{"entries": [{"type": "ip", "value": "10.0.0.300"}]}"#,
            "entries[0].value",
        ),
        (
            r#"{"entries": [{"type": "user", "value": "a"}, {"type": "usr", "value": "b"}]}"#,
            "entries[1].type",
        ),
        (
            r#"{"entries": [{"type": "user_api", "value": "a"}]}"#,
            "entries[0].api",
        ),
        (
            r#"{"entries": [{"type": "user_api", "value": "a", "api": "post /x"}]}"#,
            "entries[0].api",
        ),
        (
            r#"{"entries": [{"type": "user", "value": "a", "why": "x"}]}"#,
            "entries[0].why",
        ),
        (r#"{"feed": {}}"#, "feed"),
        (r#"{"feed": {"cluster": ""}}"#, "feed.cluster"),
        (
            r#"{"feed": {"cluster": "fds", "interval": "10ms"}}"#,
            "feed.interval",
        ),
        (
            r#"{"feed": {"cluster": "fds", "interval": "1 s"}}"#,
            "feed.interval",
        ),
        (r#"{"feed": {"cluster": "fds", "path": "v1"}}"#, "feed.path"),
        (
            r#"{"feed": {"cluster": "fds", "until_loaded": "open"}}"#,
            "feed.until_loaded",
        ),
    ];
    for (json, path) in cases {
        let e = fds_block::config::load(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, *path, "{json}: {e}");
    }
}
