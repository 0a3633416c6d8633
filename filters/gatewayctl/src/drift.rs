//! `drift`: what a live Envoy runs (admin `/config_dump`) against what the
//! repository renders (`envoy/render.py`), wasm filter by wasm filter.
//!
//! For every listener: the ordered list of wasm filters (Envoy filter name,
//! `config.name`, `root_id`) and each filter's `configuration.value`, parsed
//! as JSON and compared semantically (key order and number spelling do not
//! matter). Only those values are read and printed — never the VM's
//! environment variables (which hold the app master secret in the demo).
//!
//! The stack's Envoys get their wasm filters' configurations by ECDS (the
//! dynamic form of `envoy/render.py`, docs/operations.md "Live
//! configuration"): in `/config_dump` such a filter is a `config_discovery`
//! named `<listener>.<filter>` in the listener, and its configuration is the
//! configuration is under `EcdsConfigDump.ecds_filters`. Drift resolves one
//! through the other and compares it under the filter's own name.
//!
//! Envoy 1.40's dump shows the config ECDS last READ, even when the filter
//! refused it and the previous one keeps serving (the RDS flavour of this
//! was envoyproxy/envoy#7939); the stat
//! `extension_config_discovery.http_filter.<name>.version_text` keeps the
//! version that runs. So drift reads both: when they differ, the dumped
//! config is a refused one, and drift says so instead of comparing with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::jsondiff;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The native build's blocks (docs/native.md): `filter_name` is the wasm
/// `root_id`, `filter_config` a StringValue holding the envelope
/// `{"config": "<the filter's JSON configuration>", ...}`.
const NATIVE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

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
    /// Delivered by ECDS: the resource name and the version the dump shows.
    pub ecds: Option<(String, String)>,
    /// The version that runs, when Envoy refused the dumped one (mark_refused).
    pub refused: Option<String>,
}

/// listener name → its wasm filters in chain order.
pub type Chains = BTreeMap<String, Vec<WasmFilter>>;

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// ECDS resource name → (its `typed_config`, its `version_info`) as dumped.
type Ecds = BTreeMap<String, (Value, String)>;

/// The wasm filters of one listener object (static or dynamic shape);
/// `ecds` resolves filters delivered by `config_discovery`.
fn listener_chain(listener: &Value, ecds: &Ecds) -> Vec<WasmFilter> {
    let mut out = Vec::new();
    let listener_name = str_at(listener, "name");
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
                let mut name = str_at(hf, "name");
                let mut ecds_of = None;
                let tc = if hf.get("config_discovery").is_some() {
                    // The dynamic form names the filter "<listener>.<filter>".
                    let own = name
                        .strip_prefix(listener_name)
                        .and_then(|n| n.strip_prefix('.'))
                        .unwrap_or(name);
                    match ecds.get(name) {
                        Some((tc, version)) => {
                            ecds_of = Some((name.to_string(), version.clone()));
                            name = own;
                            tc
                        }
                        None => {
                            out.push(WasmFilter {
                                filter: own.to_string(),
                                plugin: String::new(),
                                root_id: String::new(),
                                config: Value::String(format!("<ECDS resource {name} not loaded>")),
                                ecds: Some((name.to_string(), String::new())),
                                refused: None,
                            });
                            continue;
                        }
                    }
                } else {
                    let Some(tc) = hf.get("typed_config") else {
                        continue;
                    };
                    tc
                };
                if str_at(tc, "@type") == NATIVE_TYPE {
                    let raw = tc
                        .get("filter_config")
                        .and_then(|c| c.get("value"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let envelope: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
                    let inner = str_at(&envelope, "config");
                    let config =
                        serde_json::from_str(inner).unwrap_or_else(|_| Value::String(inner.into()));
                    out.push(WasmFilter {
                        filter: name.to_string(),
                        plugin: str_at(tc, "filter_name").to_string(),
                        root_id: str_at(tc, "filter_name").to_string(),
                        config,
                        ecds: ecds_of,
                        refused: None,
                    });
                    continue;
                }
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
                    filter: name.to_string(),
                    plugin: str_at(&cfg, "name").to_string(),
                    root_id: str_at(&cfg, "root_id").to_string(),
                    config,
                    ecds: ecds_of,
                    refused: None,
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
        let chain = listener_chain(l, &Ecds::new());
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
    let mut ecds = Ecds::new();
    for c in configs.into_iter().flatten() {
        if !str_at(c, "@type").ends_with("EcdsConfigDump") {
            continue;
        }
        let filters = c.get("ecds_filters").and_then(Value::as_array);
        for entry in filters.into_iter().flatten() {
            let Some(f) = entry.get("ecds_filter") else {
                continue;
            };
            if let Some(tc) = f.get("typed_config") {
                let version = str_at(entry, "version_info").to_string();
                ecds.insert(str_at(f, "name").to_string(), (tc.clone(), version));
            }
        }
    }
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
            let chain = listener_chain(l, &ecds);
            if !chain.is_empty() {
                out.insert(str_at(l, "name").to_string(), chain);
            }
        }
    }
    out
}

/// ECDS resource → the version that runs, from `<admin>/stats`
/// (`extension_config_discovery.http_filter.<name>.version_text`).
pub fn running_versions(stats: &Value) -> BTreeMap<String, String> {
    const PREFIX: &str = "extension_config_discovery.http_filter.";
    let mut out = BTreeMap::new();
    let stats = stats.get("stats").and_then(Value::as_array);
    for s in stats.into_iter().flatten() {
        let name = str_at(s, "name");
        let Some(resource) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(".version_text"))
        else {
            continue;
        };
        if let Some(v) = s.get("value").and_then(Value::as_str) {
            out.insert(resource.to_string(), v.to_string());
        }
    }
    out
}

/// Marks every ECDS-delivered filter whose dumped config is not the one
/// that runs (the dump shows a refused config, `running` has another version).
pub fn mark_refused(live: &mut Chains, running: &BTreeMap<String, String>) {
    for f in live.values_mut().flatten() {
        if let Some((resource, read)) = &f.ecds {
            match running.get(resource) {
                Some(v) if v != read && !read.is_empty() => f.refused = Some(v.clone()),
                _ => {}
            }
        }
    }
}

/// Fetches `<admin>/stats?format=json` for the ECDS counters and versions.
pub fn fetch_ecds_stats(admin: &str) -> Result<Value> {
    let url = format!(
        "{}/stats?format=json&filter=%5Eextension_config_discovery%5C.",
        admin.trim_end_matches('/')
    );
    let mut resp = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    serde_json::from_str(&body).with_context(|| format!("{url} is not JSON"))
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
            if let (Some(running), Some((resource, read))) = (&h.refused, &h.ecds) {
                out.push(format!(
                    "{name}/{}: Envoy refused the config it read last (ECDS {resource} version {read}) \
                     and still runs version {running}, so the config compared here is not what runs \
                     (extension_config_discovery.http_filter.{resource}.update_rejected; Envoy's log names \
                     the field; `make reload` pushes the repository's config again)",
                    w.filter
                ));
                continue;
            }
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
    fn a_native_block_is_compared_by_its_envelopes_configuration() {
        let native = |cfg: &str| {
            let envelope = serde_json::json!({"config": cfg}).to_string();
            json!({"static_resources": {"listeners": [{"name": "web", "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"http_filters": [{"name": "sanitize", "typed_config": {
                    "@type": NATIVE_TYPE, "filter_name": "sanitize",
                    "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": envelope}}}]}}]}]}]}})
        };
        let repo = from_bootstrap(&native(r#"{"dry_run": false}"#));
        assert_eq!(repo["web"][0].root_id, "sanitize");
        assert!(compare(&repo, &from_bootstrap(&native(r#"{"dry_run":false}"#))).is_empty());
        let d = compare(&repo, &from_bootstrap(&native(r#"{"dry_run": true}"#)));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("web/sanitize: configuration dry_run"),
            "{d:?}"
        );
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

    /// The dynamic form's dump: the listener names "web.sanitize" by ECDS,
    /// its configuration is in EcdsConfigDump.
    fn ecds_dump(running: &str) -> Value {
        let mut l = listener("web", "{}");
        l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0] = json!({
            "name": "web.sanitize",
            "config_discovery": {"config_source": {"path_config_source": {"path": "/x/web.sanitize.json"}},
                                 "type_urls": [WASM_TYPE]}});
        let tc = listener("web", running)["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]
            .clone();
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump", "ecds_filters": [{
                "version_info": "abc", "ecds_filter": {
                    "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                    "name": "web.sanitize", "typed_config": tc}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "static_listeners": [{"listener": l}]}]})
    }

    #[test]
    fn an_ecds_delivered_config_matches_the_same_static_render() {
        let boot = json!({"static_resources": {"listeners": [listener("web", r#"{"a":1}"#)]}});
        let live = from_config_dump(&ecds_dump(r#"{"a":1}"#));
        assert_eq!(live["web"][0].filter, "sanitize");
        assert_eq!(live["web"][0].plugin, "sanitize");
        let d = compare(&from_bootstrap(&boot), &live);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn an_ecds_config_that_differs_from_the_render_is_reported_by_field() {
        let boot = json!({"static_resources": {"listeners": [listener("web", r#"{"max_body_bytes":1}"#)]}});
        let d = compare(
            &from_bootstrap(&boot),
            &from_config_dump(&ecds_dump(r#"{"max_body_bytes":65536}"#)),
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("web/sanitize: configuration max_body_bytes"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn a_config_envoy_refused_is_named_instead_of_compared() {
        // The dump shows the refused config (what the render asked for); the
        // stat says another version runs.
        let boot = json!({"static_resources": {"listeners": [listener("web", r#"{"bad":1}"#)]}});
        let mut live = from_config_dump(&ecds_dump(r#"{"bad":1}"#));
        assert!(compare(&from_bootstrap(&boot), &live).is_empty());
        let stats = json!({"stats": [
            {"name": "extension_config_discovery.http_filter.web.sanitize.version_text", "value": "good"},
            {"name": "extension_config_discovery.http_filter.web.sanitize.update_rejected", "value": 1}]});
        mark_refused(&mut live, &running_versions(&stats));
        let d = compare(&from_bootstrap(&boot), &live);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("web/sanitize: Envoy refused the config it read last (ECDS web.sanitize version abc) and still runs version good"), "{}", d[0]);
    }

    #[test]
    fn the_same_version_read_and_running_is_not_a_refusal() {
        let mut live = from_config_dump(&ecds_dump("{}"));
        let stats = json!({"stats": [
            {"name": "extension_config_discovery.http_filter.web.sanitize.version_text", "value": "abc"}]});
        mark_refused(&mut live, &running_versions(&stats));
        assert_eq!(live["web"][0].refused, None);
    }

    #[test]
    fn an_ecds_filter_that_never_loaded_is_drift() {
        let mut dump = ecds_dump("{}");
        dump["configs"][0]["ecds_filters"] = json!([]);
        let boot = json!({"static_resources": {"listeners": [listener("web", "{}")]}});
        let d = compare(&from_bootstrap(&boot), &from_config_dump(&dump));
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.iter().any(|l| l.contains("not loaded")), "{d:?}");
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
