//! `drift`: what a live Envoy runs (admin `/config_dump`) against what the
//! repository renders (`envoy/render.py`), wasm filter by wasm filter.
//!
//! For every listener: the ordered list of wasm filters (Envoy filter name,
//! `config.name`, `root_id`) and each filter's `configuration.value`, parsed
//! as JSON and compared semantically (key order and number spelling do not
//! matter). Only those values are read and printed — never the VM's
//! environment variables (which hold the app master secret in the demo).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::jsondiff;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// One wasm filter of one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmFilter {
    /// The http filter's name in the chain (`sanitize`, `replay-guard`).
    pub filter: String,
    /// `config.name`.
    pub plugin: String,
    pub root_id: String,
    /// `configuration.value` parsed as JSON (a string when it is not JSON).
    pub config: Value,
}

/// listener name → its wasm filters in chain order.
pub type Chains = BTreeMap<String, Vec<WasmFilter>>;

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The wasm filters of one listener object (static or dynamic shape).
fn listener_chain(listener: &Value) -> Vec<WasmFilter> {
    let mut out = Vec::new();
    let chains = listener
        .get("filter_chains")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for chain in &chains {
        let filters = chain.get("filters").and_then(Value::as_array);
        for nf in filters.into_iter().flatten() {
            let http = nf
                .get("typed_config")
                .and_then(|t| t.get("http_filters"))
                .and_then(Value::as_array);
            for hf in http.into_iter().flatten() {
                let Some(tc) = hf.get("typed_config") else {
                    continue;
                };
                if str_at(tc, "@type") != WASM_TYPE {
                    continue;
                }
                let cfg = tc.get("config").cloned().unwrap_or(Value::Null);
                let raw = cfg
                    .get("configuration")
                    .and_then(|c| c.get("value"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let config =
                    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
                out.push(WasmFilter {
                    filter: str_at(hf, "name").to_string(),
                    plugin: str_at(&cfg, "name").to_string(),
                    root_id: str_at(&cfg, "root_id").to_string(),
                    config,
                });
            }
        }
    }
    out
}

/// Chains from a bootstrap document (the rendered YAML, as JSON).
pub fn from_bootstrap(doc: &Value) -> Chains {
    let mut out = Chains::new();
    let listeners = doc
        .get("static_resources")
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_array);
    for l in listeners.into_iter().flatten() {
        let chain = listener_chain(l);
        if !chain.is_empty() {
            out.insert(str_at(l, "name").to_string(), chain);
        }
    }
    out
}

/// Chains from an admin `/config_dump` document.
pub fn from_config_dump(doc: &Value) -> Chains {
    let mut out = Chains::new();
    let configs = doc.get("configs").and_then(Value::as_array);
    for c in configs.into_iter().flatten() {
        if !str_at(c, "@type").ends_with("ListenersConfigDump") {
            continue;
        }
        let statics = c.get("static_listeners").and_then(Value::as_array);
        let dynamics = c.get("dynamic_listeners").and_then(Value::as_array);
        let listeners = statics
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("listener"))
            .chain(
                dynamics
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.get("active_state").and_then(|a| a.get("listener"))),
            );
        for l in listeners {
            let chain = listener_chain(l);
            if !chain.is_empty() {
                out.insert(str_at(l, "name").to_string(), chain);
            }
        }
    }
    out
}

/// Every difference, as printable lines (empty: no drift).
pub fn compare(repo: &Chains, live: &Chains) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in repo {
        let Some(have) = live.get(name) else {
            out.push(format!("listener {name}: in the repository, not live"));
            continue;
        };
        let order = |c: &[WasmFilter]| c.iter().map(|f| f.filter.clone()).collect::<Vec<_>>();
        if order(want) != order(have) {
            out.push(format!(
                "listener {name}: wasm filter chain differs: repository [{}] / live [{}]",
                order(want).join(", "),
                order(have).join(", ")
            ));
        }
        for w in want {
            let Some(h) = have.iter().find(|h| h.filter == w.filter) else {
                continue;
            };
            for (what, a, b) in [
                ("config.name", &w.plugin, &h.plugin),
                ("root_id", &w.root_id, &h.root_id),
            ] {
                if a != b {
                    out.push(format!(
                        "{name}/{}: {what}: repository {a:?} / live {b:?}",
                        w.filter
                    ));
                }
            }
            for d in jsondiff::diff(&w.config, &h.config) {
                out.push(format!("{name}/{}: configuration {d}", w.filter));
            }
        }
    }
    for name in live.keys() {
        if !repo.contains_key(name) {
            out.push(format!("listener {name}: live, not in the repository"));
        }
    }
    out
}

/// Renders the repository's Envoy config with `envoy/render.py` and reads it.
pub fn render_repo(
    repo: &Path,
    profile: &str,
    include_root: Option<&Path>,
    extra: &[PathBuf],
) -> Result<Value> {
    let out: PathBuf = std::env::temp_dir().join(format!(
        "gatewayctl-drift-{}-{}.yaml",
        std::process::id(),
        profile
    ));
    let mut cmd = Command::new("python3");
    cmd.arg(repo.join("envoy/render.py"))
        .args(["--profile", profile, "-o"])
        .arg(&out);
    if let Some(root) = include_root {
        cmd.arg("--include-root").arg(root);
    }
    for f in extra {
        cmd.arg("--extra").arg(f);
    }
    let res = cmd.output().context("running python3 envoy/render.py")?;
    if !res.status.success() {
        bail!(
            "envoy/render.py failed: {}",
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    read_yaml(&text.with_context(|| format!("reading {}", out.display()))?)
}

/// A YAML document (anchors and aliases resolved) as JSON.
pub fn read_yaml(text: &str) -> Result<Value> {
    serde_yaml::from_str::<Value>(text).context("parsing the rendered YAML")
}

/// Fetches `<admin>/config_dump`.
pub fn fetch_config_dump(admin: &str) -> Result<Value> {
    let url = format!("{}/config_dump", admin.trim_end_matches('/'));
    let mut resp = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    serde_json::from_str(&body).with_context(|| format!("{url} is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listener(name: &str, cfg: &str) -> Value {
        json!({"name": name, "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"http_filters": [
            {"name": "sanitize", "typed_config": {"@type": WASM_TYPE, "config": {
                "name": "sanitize", "root_id": "sanitize",
                "vm_config": {"environment_variables": {"key_values": {"SECRET": "x"}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": cfg}}}},
            {"name": "envoy.filters.http.router", "typed_config": {}}
        ]}}]}]})
    }

    #[test]
    fn the_same_config_in_both_shapes_is_no_drift() {
        let boot =
            json!({"static_resources": {"listeners": [listener("web", r#"{"a":1,"b":2}"#)]}});
        let dump = json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "static_listeners": [{"listener": listener("web", r#"{"b":2,"a":1}"#)}]}]});
        let (r, l) = (from_bootstrap(&boot), from_config_dump(&dump));
        assert_eq!(r.len(), 1);
        assert!(compare(&r, &l).is_empty(), "{:?}", compare(&r, &l));
    }

    #[test]
    fn a_changed_value_is_reported_with_listener_filter_and_field() {
        let boot =
            json!({"static_resources": {"listeners": [listener("web", r#"{"dry_run":false}"#)]}});
        let dump = json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "dynamic_listeners": [{"active_state": {"listener": listener("web", r#"{"dry_run":true}"#)}}]}]});
        let d = compare(&from_bootstrap(&boot), &from_config_dump(&dump));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("web/sanitize: configuration dry_run"),
            "{}",
            d[0]
        );
        assert!(!d[0].contains("SECRET"));
    }

    #[test]
    fn missing_listeners_are_drift_both_ways() {
        let boot = json!({"static_resources": {"listeners": [listener("web", "{}")]}});
        let dump = json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "static_listeners": [{"listener": listener("app", "{}")}]}]});
        let d = compare(&from_bootstrap(&boot), &from_config_dump(&dump));
        assert_eq!(d.len(), 2, "{d:?}");
    }
}
