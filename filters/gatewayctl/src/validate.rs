//! `validate` (filter configs) and `validate-manifest` (Istio WasmPlugin
//! manifests): each config goes through its filter's own loader; an error
//! names the file and the field path.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::filters::{self, Filter};

/// The outcome of checking one config.
#[derive(Debug)]
pub struct Report {
    /// What was checked (`examples/config/sanitize/web.json`, `x.yaml [web-sanitize]`).
    pub what: String,
    /// `None`: valid; `Some(message)`: invalid, the message names the field.
    pub error: Option<String>,
}

/// Validates one JSON file with `filter`.
pub fn file(filter: &Filter, path: &Path) -> Report {
    let what = path.display().to_string();
    match std::fs::read(path) {
        Err(e) => Report {
            what,
            error: Some(format!("cannot read: {e}")),
        },
        Ok(bytes) => Report {
            what,
            error: filter.validate(&bytes).err().map(|e| e.to_string()),
        },
    }
}

/// Validates a chain configuration (filters/chain: a gateway's filters in
/// order, each with its own config): the chain's fields, then each part with
/// its filter's own loader; errors name `filters[i].config.<field>`.
pub fn chain_file(path: &Path) -> Report {
    let what = path.display().to_string();
    match std::fs::read(path) {
        Err(e) => Report {
            what,
            error: Some(format!("cannot read: {e}")),
        },
        Ok(bytes) => Report {
            what,
            error: chain::config::load(&bytes)
                .and_then(|c| chain::config::validate_parts(&c, &crate::filters::replay_guard_env))
                .err()
                .map(|e| e.to_string()),
        },
    }
}

/// Every examples/config/<filter>/*.json under `config_dir`, per filter.
pub fn all(config_dir: &Path) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    for f in filters::ALL {
        let dir = config_dir.join(f.name);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        if files.is_empty() {
            out.push(Report {
                what: dir.display().to_string(),
                error: Some("no example config (*.json) for this filter".into()),
            });
        }
        for p in files {
            out.push(file(f, &p));
        }
    }
    Ok(out)
}

/// The filter a WasmPlugin is for: the `gateway-filters.io/filter` label,
/// else `spec.pluginName` (the root_id), else the longest filter name that
/// ends `metadata.name` (`web-route-breaker` → `route-breaker`).
fn plugin_filter(doc: &Value) -> Option<&'static Filter> {
    let meta = doc.get("metadata");
    let label = meta
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get("gateway-filters.io/filter"))
        .and_then(Value::as_str);
    if let Some(f) = label.and_then(filters::find) {
        return Some(f);
    }
    let plugin = doc
        .get("spec")
        .and_then(|s| s.get("pluginName"))
        .and_then(Value::as_str);
    if let Some(f) = plugin.and_then(filters::find) {
        return Some(f);
    }
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str)?;
    filters::ALL
        .iter()
        .filter(|f| name == f.name || name.ends_with(&format!("-{}", f.name)))
        .max_by_key(|f| f.name.len())
}

/// Why a WasmPlugin's configuration cannot work: it holds the request
/// headers while it reads the body, which needs Envoy's
/// `allow_on_headers_stop_iteration: true`; istiod cannot set it, so such a
/// request would wait for its body until Envoy's timeouts.
fn body_hold_message(filter: &Filter, holds: &[filter_core::config::BodyHold]) -> String {
    let fields: Vec<String> = holds
        .iter()
        .map(|h| format!("`spec.pluginConfig.{}` ({})", h.field, h.reason))
        .collect();
    format!(
        "{} config holds the request headers while it reads the body: {}. That needs Envoy's \
         allow_on_headers_stop_iteration, which a WasmPlugin cannot set (the request would hang): \
         use the gateway's EnvoyFilter (istio/generated/<gateway>/envoyfilter/, docs/istio.md)",
        filter.name,
        fields.join("; ")
    )
}

/// A WasmPlugin of the chain build (istio/generated/<gateway>/chain/): the
/// `gateway-filters.io/filter: chain` label, else `spec.pluginName: chain`
/// (the chain's root_id).
fn is_chain_plugin(doc: &Value) -> bool {
    let label = doc
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get("gateway-filters.io/filter"))
        .and_then(Value::as_str);
    let plugin = doc
        .get("spec")
        .and_then(|s| s.get("pluginName"))
        .and_then(Value::as_str);
    label == Some("chain") || (label.is_none() && plugin == Some("chain"))
}

/// Why a chain WasmPlugin's pluginConfig cannot work, if it cannot: the
/// chain's loader and each part's filter judge it, then no part may hold
/// the request headers for the body (a WasmPlugin cannot set the flag).
fn chain_plugin_error(doc: &Value) -> Option<String> {
    let Some(cfg) = doc.get("spec").and_then(|s| s.get("pluginConfig")) else {
        return Some("spec.pluginConfig: missing".to_string());
    };
    let bytes = serde_json::to_vec(cfg).unwrap_or_default();
    match filters::chain_body_hold(&bytes) {
        Err(e) => {
            let field = if e.path == "." {
                "spec.pluginConfig".to_string()
            } else {
                format!("spec.pluginConfig.{}", e.path)
            };
            Some(format!("chain config: invalid at `{field}`: {}", e.message))
        }
        Ok(holds) if !holds.is_empty() => {
            let fields: Vec<String> = holds
                .iter()
                .map(|h| format!("`spec.pluginConfig.{}` ({})", h.field, h.reason))
                .collect();
            Some(format!(
                "chain config holds the request headers while it reads the body: {}. That needs \
                 Envoy's allow_on_headers_stop_iteration, which a WasmPlugin cannot set (the request \
                 would hang): use the gateway's chain EnvoyFilter (istio/generated/<gateway>/chain/, \
                 docs/istio.md)",
                fields.join("; ")
            ))
        }
        Ok(_) => None,
    }
}

/// YAML files under `path` (itself when it is a file), sorted.
fn yaml_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                out.extend(yaml_files(&e.path()));
            }
        }
        out.sort();
        out
    } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    }
}

/// Validates every WasmPlugin in `path` (a file or a directory of them).
pub fn manifests(path: &Path) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    let files = if path.is_dir() {
        yaml_files(path)
    } else {
        vec![path.to_path_buf()]
    };
    for p in files {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc: Value = match serde::Deserialize::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    out.push(Report {
                        what: format!("{} [document {}]", p.display(), i + 1),
                        error: Some(format!("not YAML: {e}")),
                    });
                    continue;
                }
            };
            if doc.get("kind").and_then(Value::as_str) != Some("WasmPlugin") {
                continue;
            }
            let name = doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            let what = format!("{} [WasmPlugin {name}]", p.display());
            if is_chain_plugin(&doc) {
                out.push(Report {
                    what,
                    error: chain_plugin_error(&doc),
                });
                continue;
            }
            let Some(filter) = plugin_filter(&doc) else {
                out.push(Report {
                    what,
                    error: Some(format!(
                        "metadata: no filter named by the gateway-filters.io/filter label, spec.pluginName or metadata.name (known: {})",
                        filters::names()
                    )),
                });
                continue;
            };
            let error = match doc.get("spec").and_then(|s| s.get("pluginConfig")) {
                None => Some("spec.pluginConfig: missing".to_string()),
                Some(cfg) => {
                    let bytes = serde_json::to_vec(cfg).unwrap_or_default();
                    match filter.body_hold(&bytes) {
                        Err(e) => {
                            let field = if e.path == "." {
                                "spec.pluginConfig".to_string()
                            } else {
                                format!("spec.pluginConfig.{}", e.path)
                            };
                            Some(format!(
                                "{} config: invalid at `{field}`: {}",
                                filter.name, e.message
                            ))
                        }
                        Ok(holds) if !holds.is_empty() => Some(body_hold_message(filter, &holds)),
                        Ok(_) => None,
                    }
                }
            };
            out.push(Report { what, error });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(y: &str) -> Value {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn the_filter_comes_from_the_label_plugin_name_or_metadata_name() {
        let by_label = doc("metadata: {name: x, labels: {gateway-filters.io/filter: jwt}}");
        assert_eq!(plugin_filter(&by_label).unwrap().name, "jwt");
        let by_plugin = doc("metadata: {name: x}\nspec: {pluginName: replay_guard}");
        assert_eq!(plugin_filter(&by_plugin).unwrap().name, "replay-guard");
        let by_name = doc("metadata: {name: web-route-breaker}");
        assert_eq!(plugin_filter(&by_name).unwrap().name, "route-breaker");
        assert!(plugin_filter(&doc("metadata: {name: web-unknown}")).is_none());
    }

    #[test]
    fn a_wasmplugin_that_would_hold_the_headers_for_the_body_is_invalid() {
        let dir = std::env::temp_dir().join(format!("gatewayctl-body-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plugins.yaml");
        std::fs::write(
            &file,
            "kind: WasmPlugin\nmetadata: {name: web-sanitize}\nspec:\n  pluginConfig:\n    routes:\n    - {name: orders, prefix: /o, body: {fields: {}}}\n\
             ---\nkind: WasmPlugin\nmetadata: {name: egress-sanitize}\nspec:\n  pluginConfig: {unknown_length_body: refuse}\n\
             ---\nkind: WasmPlugin\nmetadata: {name: egress-route-breaker}\nspec:\n  pluginConfig: {name: egress}\n",
        )
        .unwrap();
        let reports = manifests(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(reports.len(), 3);
        let e = reports[0].error.as_deref().unwrap();
        assert!(e.contains("`spec.pluginConfig.routes[0].body`"), "{e}");
        assert!(e.contains("`spec.pluginConfig.unknown_length_body`"), "{e}");
        assert!(e.contains("allow_on_headers_stop_iteration"), "{e}");
        assert!(e.contains("envoyfilter"), "{e}");
        assert_eq!(reports[1].error, None, "{:?}", reports[1].error);
        assert_eq!(reports[2].error, None, "{:?}", reports[2].error);
    }

    #[test]
    fn a_chain_wasmplugin_is_judged_part_by_part() {
        let dir = std::env::temp_dir().join(format!("gatewayctl-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("chain.yaml");
        std::fs::write(
            &file,
            "kind: WasmPlugin\nmetadata: {name: egress-chain, labels: {gateway-filters.io/filter: chain}}\nspec:\n  pluginName: chain\n  pluginConfig:\n    filters:\n    - {name: sanitize, config: {unknown_length_body: refuse}}\n    - {name: route-breaker, config: {name: egress}}\n\
             ---\nkind: WasmPlugin\nmetadata: {name: web-chain}\nspec:\n  pluginName: chain\n  pluginConfig:\n    filters:\n    - name: sanitize\n      config: {routes: [{name: orders, prefix: /o, body: {fields: {}}}], unknown_length_body: refuse}\n\
             ---\nkind: WasmPlugin\nmetadata: {name: bad-chain, labels: {gateway-filters.io/filter: chain}}\nspec:\n  pluginConfig:\n    filters:\n    - {name: route-breaker, config: {name: egress, not_a_field: 1}}\n",
        )
        .unwrap();
        let reports = manifests(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[0].error, None, "{:?}", reports[0].error);
        let e = reports[1].error.as_deref().unwrap();
        assert!(
            e.contains("`spec.pluginConfig.filters[0].config.routes[0].body`"),
            "{e}"
        );
        assert!(e.contains("allow_on_headers_stop_iteration"), "{e}");
        let e = reports[2].error.as_deref().unwrap();
        assert!(e.contains("spec.pluginConfig.filters[0].config"), "{e}");
        assert!(e.contains("not_a_field"), "{e}");
    }
}
