//! `Compiled::body_hold` lists exactly the settings under which
//! `Request::on_headers` holds the headers for the body (`WaitBody`), and
//! `unknown_length_body: "refuse"` answers 411 without holding.
//!
//! istio/generate.py refuses a WasmPlugin for a chain with any such setting
//! (Istio cannot set Envoy's `allow_on_headers_stop_iteration`, without which
//! a held request never gets its body), so a missed hold here would ship a
//! gateway that hangs: each route of each config is driven with every body
//! shape and every `WaitBody` must be explained by a listed setting, and
//! every listed setting must be met by some request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use filter_core::host::FakeHost;
use filter_core::Verdict;
use sanitize::config::{load, Compiled};
use sanitize::filter::Request;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Headers end the stream.
    None,
    /// `content-length: 0`, headers not at end of stream.
    EmptyLength,
    /// `content-length: n` and a small JSON body.
    Length,
    /// No content-length (HTTP/1.1 chunked, HTTP/2 without it).
    Unknown,
}

const SHAPES: [Shape; 4] = [
    Shape::None,
    Shape::EmptyLength,
    Shape::Length,
    Shape::Unknown,
];

fn host(method: &str, path: &str, shape: Shape) -> (FakeHost, bool) {
    let body = br#"{"item_id":"a","quantity":1}"#;
    let h = FakeHost::request(method, path).with_header("content-type", "application/json");
    match shape {
        Shape::None => (h, true),
        Shape::EmptyLength => (h.with_header("content-length", "0"), false),
        Shape::Length => (
            h.with_header("content-length", &body.len().to_string())
                .with_body(body),
            false,
        ),
        Shape::Unknown => (h.with_body(body), false),
    }
}

/// (method, path) of every route of `raw`, and a path no route takes.
fn targets(raw: &Value) -> Vec<(Option<usize>, String, String)> {
    let mut out = vec![(None, "POST".to_string(), "/no-route/x".to_string())];
    for (i, r) in raw["routes"].as_array().into_iter().flatten().enumerate() {
        let method = r["methods"][0].as_str().unwrap_or("POST").to_string();
        out.push((Some(i), method, r["prefix"].as_str().unwrap().to_string()));
    }
    out
}

/// The settings that the requests showed to hold the headers.
fn observed_holds(cfg: &Compiled, raw: &Value) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for (route, method, path) in targets(raw) {
        for shape in SHAPES {
            let (mut h, eos) = host(&method, &path, shape);
            let v = Request::default().on_headers(cfg, &mut h, eos);
            if v != Verdict::WaitBody {
                continue;
            }
            let matched = cfg
                .routes
                .iter()
                .position(|r| r.matcher.matches(&method, &path));
            assert_eq!(matched, route, "{method} {path} matched another route");
            let field = match matched.and_then(|i| cfg.routes[i].body.as_ref().map(|_| i)) {
                Some(i) => format!("routes[{i}].body"),
                None => {
                    assert!(
                        matches!(shape, Shape::Unknown),
                        "{method} {path} {shape:?}: held without a body rule or an unknown length"
                    );
                    "unknown_length_body".to_string()
                }
            };
            held.insert(field);
        }
    }
    held
}

fn configs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("examples/config/sanitize")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let raw: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            for (variant, edit) in [
                ("", json!({})),
                (" refuse", json!({"unknown_length_body": "refuse"})),
                (" count", json!({"unknown_length_body": "count"})),
                (" dry-run", json!({"dry_run": true})),
            ] {
                let mut v = raw.clone();
                for (k, val) in edit.as_object().unwrap() {
                    v[k] = val.clone();
                }
                out.push((format!("{}{variant}", p.display()), v));
            }
        }
    }
    assert!(out.len() >= 16);
    out
}

#[test]
fn body_hold_lists_exactly_what_waits_for_the_body() {
    for (name, raw) in configs() {
        let cfg = load(raw.to_string().as_bytes()).unwrap();
        let listed: BTreeSet<String> = cfg.body_hold().into_iter().map(|b| b.field).collect();
        assert_eq!(observed_holds(&cfg, &raw), listed, "{name}");
    }
}

#[test]
fn the_shipped_configs_hold_for_their_body_rules_and_for_unknown_lengths() {
    let fields = |file: &str| -> Vec<String> {
        let bytes = std::fs::read(repo().join("examples/config/sanitize").join(file)).unwrap();
        load(&bytes)
            .unwrap()
            .body_hold()
            .into_iter()
            .map(|b| b.field)
            .collect()
    };
    assert_eq!(
        fields("web.json"),
        ["routes[1].body", "unknown_length_body"]
    );
    // The app gateway's JSON rule runs in the second pass, after e2ee
    // decrypted the body (docs/filters/e2ee.md).
    assert_eq!(fields("app.json"), ["unknown_length_body"]);
    assert_eq!(
        fields("app-body.json"),
        ["routes[0].body", "unknown_length_body"]
    );
    assert_eq!(fields("secure.json"), ["unknown_length_body"]);
    assert_eq!(fields("egress.json"), ["unknown_length_body"]);
    assert_eq!(fields("internal.json"), ["unknown_length_body"]);
    let reasons = load(&std::fs::read(repo().join("examples/config/sanitize/web.json")).unwrap())
        .unwrap()
        .body_hold();
    assert!(
        reasons[0].reason.contains("\"orders\""),
        "{}",
        reasons[0].reason
    );
}

#[test]
fn refuse_answers_411_at_the_headers_and_never_holds() {
    let cfg = load(br#"{"max_body_bytes": 64, "unknown_length_body": "refuse"}"#).unwrap();
    assert!(cfg.body_hold().is_empty());
    // no content-length, a body may follow: 411 at once, nothing forwarded
    let (mut h, eos) = host("POST", "/upload", Shape::Unknown);
    let mut r = Request::default();
    assert_eq!(r.on_headers(&cfg, &mut h, eos), Verdict::Responded);
    let code = filter_core::testing::assert_denial(h.response.as_ref(), &[411], Some("test-rid"));
    assert_eq!(code, "length_required");
    assert_eq!(r.denied_code, Some("length_required"));
    // an announced body, an empty one and none at all pass the headers
    for shape in [Shape::Length, Shape::EmptyLength, Shape::None] {
        let (mut h, eos) = host("POST", "/upload", shape);
        assert_eq!(
            Request::default().on_headers(&cfg, &mut h, eos),
            Verdict::Continue,
            "{shape:?}"
        );
        assert!(h.response.is_none());
    }
    // an announced size over the limit is still 413 (before the 411 check)
    let mut h = FakeHost::request("POST", "/upload").with_header("content-length", "65");
    assert_eq!(
        Request::default().on_headers(&cfg, &mut h, false),
        Verdict::Responded
    );
    assert_eq!(h.response.as_ref().unwrap().status, 413);
    // a dry run only logs it
    let dry = load(br#"{"unknown_length_body": "refuse", "dry_run": true}"#).unwrap();
    let (mut h, eos) = host("POST", "/upload", Shape::Unknown);
    let mut r = Request::default();
    assert_eq!(r.on_headers(&dry, &mut h, eos), Verdict::Continue);
    assert!(h.response.is_none());
    assert_eq!(r.denied_code, Some("length_required"));
}

#[test]
fn refuse_applies_on_body_rule_routes_too() {
    let mut raw: Value = serde_json::from_slice(
        &std::fs::read(repo().join("examples/config/sanitize/web.json")).unwrap(),
    )
    .unwrap();
    raw["unknown_length_body"] = json!("refuse");
    let cfg = load(raw.to_string().as_bytes()).unwrap();
    let (mut h, eos) = host("POST", "/api/v1/orders", Shape::Unknown);
    assert_eq!(
        Request::default().on_headers(&cfg, &mut h, eos),
        Verdict::Responded
    );
    assert_eq!(h.response.as_ref().unwrap().status, 411);
    // the JSON rule itself still needs the body: it stays listed
    let fields: Vec<String> = cfg.body_hold().into_iter().map(|b| b.field).collect();
    assert_eq!(fields, ["routes[1].body"]);
}

#[test]
fn unknown_length_body_is_a_closed_enum() {
    let e = load(br#"{"unknown_length_body": "ignore"}"#).unwrap_err();
    assert_eq!(e.path, "unknown_length_body");
}
