//! Arbitrary configurations for every filter's own loader (the code
//! `on_configure` runs): each example config with a few of its values
//! replaced by extremes of every type (huge and negative numbers, odd
//! durations and statuses, empty and 100 kB strings, wrong types) or members
//! removed, is either accepted or refused with an error that names a field,
//! and never panics. A panic in `on_configure` would take down the VM of a
//! gateway that receives the config over xDS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::filters::{Filter, ALL};

fn examples() -> Vec<(&'static Filter, PathBuf, Value)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/config");
    let mut out = Vec::new();
    for f in ALL {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(f.name))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for p in files {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            out.push((f, p, v));
        }
    }
    out
}

fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e308),
            json!(-1e308),
            json!(0),
            json!(-1),
            json!(0.5),
            json!(4_294_967_296_u64),
            json!(""),
            json!("0s"),
            json!("-1s"),
            json!("99999999999999999999h"),
            json!("18446744073709551615s"),
            json!("1e9ms"),
            json!("1.5s"),
            json!("0.000000001ms"),
            json!("5xx"),
            json!("0xx"),
            json!("999"),
            json!("/"),
            json!("*"),
            json!("::/0"),
            json!("0.0.0.0/0"),
            json!("300.1.1.1/33"),
            json!("GET /"),
            json!("\u{0}"),
            json!("é\u{200b}"),
            json!([]),
            json!({}),
            json!(null),
            json!(true),
            json!([""]),
            json!([{}]),
            json!({"keys": []}),
            json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        ]),
        Just(json!("a".repeat(100_000))),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Every node's path (object keys and array indexes), root excluded.
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(json!(k));
                out.push(here.clone());
                paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(json!(i));
                out.push(here.clone());
                paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn parent_mut<'a>(root: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let (_, init) = path.split_last()?;
    let mut v = root;
    for step in init {
        v = match step {
            Value::String(k) => v.get_mut(k.as_str())?,
            Value::Number(i) => v.get_mut(usize::try_from(i.as_u64()?).ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Replaces (or, with `remove`, deletes) the node at `path`.
fn mutate(root: &mut Value, path: &[Value], with: Value, remove: bool) {
    let Some(last) = path.last().cloned() else {
        return;
    };
    let Some(parent) = parent_mut(root, path) else {
        return;
    };
    match (parent, last) {
        (Value::Object(m), Value::String(k)) => {
            if remove {
                m.remove(&k);
            } else if let Some(slot) = m.get_mut(&k) {
                *slot = with;
            }
        }
        (Value::Array(a), Value::Number(i)) => {
            let i = usize::try_from(i.as_u64().unwrap_or(0)).unwrap_or(0);
            if i < a.len() {
                if remove {
                    a.remove(i);
                } else {
                    a[i] = with;
                }
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: filter_core::testing::cases(768),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_config_is_accepted_or_refused_with_a_field_and_never_panics(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), extreme(), any::<bool>()), 1..4),
    ) {
        let all = examples();
        let (filter, file, original) = &all[which.index(all.len())];
        let mut doc = original.clone();
        for (at, with, remove) in edits {
            let mut ps = Vec::new();
            paths(&doc, &mut Vec::new(), &mut ps);
            if ps.is_empty() {
                break;
            }
            let p = ps[at.index(ps.len())].clone();
            mutate(&mut doc, &p, with, remove && at.index(4) == 0);
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Err(e) = filter.validate(&bytes) {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty(), "{}: empty error", file.display());
        }
    }
}

#[test]
fn every_example_config_loads() {
    for (f, p, v) in examples() {
        f.validate(&serde_json::to_vec(&v).unwrap())
            .unwrap_or_else(|e| panic!("{} ({}): {e}", p.display(), f.name));
    }
}
