//! The shipped example config loads (with the demo master secret standing
//! in for the environment variable), the JSON Schema on disk is current,
//! and broken configs are refused with the field named.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo_env(name: &str) -> Option<String> {
    (name == "REPLAY_GUARD_MASTER_V1")
        .then(|| std::fs::read_to_string(repo().join("examples/keys/app-master.key")).ok())
        .flatten()
}

#[test]
fn every_shipped_example_config_compiles() {
    let dir = repo().join("examples/config/replay-guard");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&p).unwrap();
            let c = replay_guard::config::load(&bytes, &demo_env)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(c.route("GET", "/health").is_some_and(|r| r.open));
            assert!(c.route("GET", "/api/v1/users/7").is_some_and(|r| !r.open));
            n += 1;
        }
    }
    assert!(n >= 1, "expected the app gateway config");
}

#[test]
fn shipped_config_without_its_secret_is_refused() {
    let bytes = std::fs::read(repo().join("examples/config/replay-guard/app.json")).unwrap();
    let e = replay_guard::config::load(&bytes, &|_| None).unwrap_err();
    assert_eq!(e.path, "master_secrets[0].env");
}

#[test]
fn schema_is_current() {
    filter_core::testing::assert_schema_current(
        env!("CARGO_MANIFEST_DIR"),
        "replay-guard",
        &replay_guard::config::schema(),
    );
}
