//! The shipped example configs load, the JSON Schema on disk is current, and
//! broken configs are refused with the field named.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_shipped_example_config_compiles() {
    let dir = repo().join("examples/config/route-breaker");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&p).unwrap();
            let c = route_breaker::config::load(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            names.push(c.name);
        }
    }
    assert!(
        names.len() >= 4,
        "expected the four gateway configs, found {names:?}"
    );
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "scopes must differ: {names:?}");
}

#[test]
fn the_web_config_is_the_contracts_breaker() {
    let bytes = std::fs::read(repo().join("examples/config/route-breaker/web.json")).unwrap();
    let c = route_breaker::config::load(&bytes).unwrap();
    let r = &c.routes[c.route("GET", "/api/v1/unstable/x", None).unwrap()];
    let s = &r.settings;
    assert_eq!(s.failure_rate_threshold, 50.0);
    assert_eq!(s.slow_call_rate_threshold, 50.0);
    assert_eq!(s.slow_call_duration_threshold_ms, 300);
    assert_eq!(s.minimum_number_of_calls, 5);
    assert_eq!(s.window, route_breaker::breaker::WindowKind::CountBased(10));
    assert_eq!(s.wait_duration_in_open_state_ms, 5000);
    assert_eq!(s.permitted_number_of_calls_in_half_open_state, 2);
    assert_eq!(c.route("GET", "/api/v1/users/1", None), None);
}

#[test]
fn schema_is_current() {
    filter_core::testing::assert_schema_current(
        env!("CARGO_MANIFEST_DIR"),
        "route-breaker",
        &route_breaker::config::schema(),
    );
}

#[test]
fn broken_configs_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"routes":[]}"#, "."),
        (r#"{"name":"Web"}"#, "name"),
        (
            r#"{"name":"w","routes":[{"name":"a"}]}"#,
            "routes[0].prefix",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"api"}]}"#,
            "routes[0].prefix",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"failureRateThreshold":50}}]}"#,
            "routes[0].breaker.failureRateThreshold",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"failure_rate_threshold":0}}]}"#,
            "routes[0].breaker.failure_rate_threshold",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"slow_call_rate_threshold":101}}]}"#,
            "routes[0].breaker.slow_call_rate_threshold",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"sliding_window_size":1001}}]}"#,
            "routes[0].breaker.sliding_window_size",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"sliding_window_type":"time_based","sliding_window_size":301}}]}"#,
            "routes[0].breaker.sliding_window_size",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"sliding_window_type":"sliding"}}]}"#,
            "routes[0].breaker.sliding_window_type",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"minimum_number_of_calls":0}}]}"#,
            "routes[0].breaker.minimum_number_of_calls",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"permitted_number_of_calls_in_half_open_state":0}}]}"#,
            "routes[0].breaker.permitted_number_of_calls_in_half_open_state",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"wait_duration_in_open_state":"5"}}]}"#,
            "routes[0].breaker.wait_duration_in_open_state",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","breaker":{"failure_statuses":["6xx"]}}]}"#,
            "routes[0].breaker.failure_statuses[0]",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a"},{"name":"a","prefix":"/b"}]}"#,
            "routes[1].name",
        ),
        (
            r#"{"name":"w","routes":[{"name":"a","prefix":"/a","methods":["get"]}]}"#,
            "routes[0].methods[0]",
        ),
    ];
    for (json, path) in cases {
        let e = route_breaker::config::load(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, *path, "{json}: {e}");
    }
}
