//! Differential test of the config loaders' error paths: every example config
//! is mutated (each value given a wrong type, each object an unknown member,
//! each member removed), compact and pretty-printed, and the path that
//! `filter_core::config` recovers from serde_json's error position is
//! compared with `serde_path_to_error`'s, the path-tracking deserializer the
//! loaders used before.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Every mutation of `v`, one per document.
fn mutations(v: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out, v);
    out
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(root: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(root, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

fn walk(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Value>, root: &Value) {
    let wrong: Vec<Value> = match v {
        Value::String(_) => vec![json!(12345), json!({}), json!(null)],
        Value::Number(_) => vec![json!("text"), json!([]), json!(-1), json!(1.5)],
        Value::Bool(_) => vec![json!("yes"), json!(1)],
        Value::Object(_) => vec![json!(5), json!([]), json!("s")],
        Value::Array(_) => vec![json!("s"), json!({}), json!([{"zz": 1}])],
        Value::Null => vec![json!(7)],
    };
    for w in wrong {
        let mut doc = root.clone();
        *at_mut(&mut doc, path) = w;
        out.push(doc);
    }
    match v {
        Value::Object(m) => {
            let mut doc = root.clone();
            at_mut(&mut doc, path)
                .as_object_mut()
                .unwrap()
                .insert("zz_unknown".into(), json!(1));
            out.push(doc);
            for (k, child) in m {
                let mut doc = root.clone();
                at_mut(&mut doc, path).as_object_mut().unwrap().remove(k);
                out.push(doc);
                path.push(Step::Key(k.clone()));
                walk(child, path, out, root);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Step::Index(i));
                walk(child, path, out, root);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The path `serde_path_to_error` reports for `bytes` as `T`, if it fails.
fn reference<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, T>(de)
        .err()
        .map(|e| e.path().to_string())
}

fn check<T: DeserializeOwned>(
    name: &str,
    load: impl Fn(&[u8]) -> Result<(), filter_core::config::ConfigError>,
) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/config")
        .join(name);
    let (mut compared, mut exact) = (0, 0);
    for entry in std::fs::read_dir(&root).unwrap() {
        let file = entry.unwrap().path();
        let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for doc in mutations(&v) {
            for text in [doc.to_string(), serde_json::to_string_pretty(&doc).unwrap()] {
                let Some(want) = reference::<T>(text.as_bytes()) else {
                    continue;
                };
                let got = load(text.as_bytes()).expect_err(&text);
                compared += 1;
                if got.path == want {
                    exact += 1;
                    continue;
                }
                // Inside buffered content (internally tagged enum variants)
                // serde_path_to_error stops at the variant's object; we name
                // the unknown member in it, or stop one level up.
                let related = |a: &str, b: &str| {
                    a == "."
                        || b.strip_prefix(a)
                            .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
                };
                assert!(
                    related(&want, &got.path) || related(&got.path, &want),
                    "{}: {text}\n{}\nwant {want} got {}",
                    file.display(),
                    got.message,
                    got.path
                );
                eprintln!("{name}: {} (reference {want}): {}", got.path, got.message);
            }
        }
    }
    eprintln!("{name}: {exact} of {compared} error paths identical");
    assert!(
        compared > 50,
        "{name}: only {compared} failing mutations compared"
    );
    // The rest are the buffered-content cases above, one level apart.
    assert!(exact * 10 >= compared * 8, "{name}: {exact} of {compared}");
}

#[test]
fn error_paths_match_the_path_tracking_deserializer() {
    check::<sanitize::config::SanitizeConfig>("sanitize", |b| sanitize::config::load(b).map(drop));
    check::<jwt::config::JwtConfig>("jwt", |b| jwt::config::load(b).map(drop));
    check::<replay_guard::config::ReplayGuardConfig>("replay-guard", |b| {
        replay_guard::config::load(b, &|_| {
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into())
        })
        .map(drop)
    });
    check::<e2ee::config::E2eeConfig>("e2ee", |b| {
        e2ee::config::load(b, &|_| {
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into())
        })
        .map(drop)
    });
    check::<fds_block::config::FdsBlockConfig>("fds-block", |b| {
        fds_block::config::load(b).map(drop)
    });
    check::<passport::config::PassportConfig>("passport", |b| passport::config::load(b).map(drop));
    check::<san_authz::config::SanAuthzConfig>("san-authz", |b| {
        san_authz::config::load(b).map(drop)
    });
    check::<oidc::config::OidcConfig>("oidc", |b| {
        oidc::config::load(b, &|_| Some("secret".into())).map(drop)
    });
    check::<route_breaker::config::RouteBreakerConfig>("route-breaker", |b| {
        route_breaker::config::load(b).map(drop)
    });
}
