//! The chain's configuration: the gateway's filters in order, each with its
//! own JSON configuration exactly as the filter takes it alone (same schema,
//! same loader, same errors, with the path prefixed by `filters[i].config`).
//!
//! ```json
//! {"filters": [
//!    {"name": "sanitize", "config": {...}},
//!    {"name": "jwt", "config": {...}}],
//!  "disabled_on_routes": {"health": ["fds-block", "route-breaker"]},
//!  "header_writes": "each",
//!  "export": []}
//! ```

use std::collections::BTreeMap;

use filter_core::config::ConfigError;
use filter_core::context::HeaderWrites;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The filters a chain can run, by their Envoy filter name.
pub const FILTERS: [&str; 8] = [
    "sanitize",
    "jwt",
    "replay-guard",
    "fds-block",
    "passport",
    "route-breaker",
    "san-authz",
    "oidc",
];

/// Most filters in one chain (each filter at most once).
pub const MAX_FILTERS: usize = FILTERS.len();

/// Most routes in `disabled_on_routes` (a route config's size).
pub const MAX_ROUTES: usize = 256;

/// The chain's JSON configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The gateway's filters, in the order they run.
    pub filters: Vec<Part>,
    /// Route name (Envoy's `xds.route_name`) → the filters of this chain
    /// that do not run on it: the chain's form of a per-route
    /// `typed_per_filter_config: {<filter>: {disabled: true}}`.
    #[serde(default)]
    pub disabled_on_routes: BTreeMap<String, Vec<String>>,
    /// How the collected header writes reach Envoy: `each` (default: one
    /// call per changed header name) or `map` (one replacement of the map).
    #[serde(default)]
    pub header_writes: Writes,
    /// Filter-state values the chain's filters hand each other that are
    /// ALSO written to Envoy's filter state, for readers outside the chain
    /// (an access log's `%FILTER_STATE(wasm.gateway_identity:PLAIN)%`):
    /// `gateway_identity`, `original_path`, `original_body`. Default none.
    #[serde(default)]
    pub export: Vec<String>,
}

/// One filter of the chain.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// The filter (`sanitize`, `jwt`, `replay-guard`, `fds-block`,
    /// `passport`, `route-breaker`, `san-authz`, `oidc`).
    pub name: String,
    /// The filter's own configuration (docs/filters/<name>.md).
    pub config: serde_json::Value,
}

/// [`ChainConfig::header_writes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Writes {
    #[default]
    Each,
    Map,
}

/// The chain's configuration, checked: the filters' own configurations are
/// still JSON (each filter loads its part in its `on_configure`).
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// (filter name, its configuration as JSON bytes), in order.
    pub parts: Vec<(&'static str, Vec<u8>)>,
    /// Route name → for each filter of `parts`, whether it is disabled there.
    pub disabled: BTreeMap<String, Vec<bool>>,
    pub writes: HeaderWrites,
    pub export: Vec<String>,
}

impl Compiled {
    /// The filters disabled on `route` (None: all run).
    pub fn disabled_on(&self, route: &str) -> Option<&[bool]> {
        self.disabled.get(route).map(Vec::as_slice)
    }
}

/// Parses and checks a chain configuration.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    let c: ChainConfig = filter_core::config::parse_json(bytes)?;
    compile(c)
}

fn compile(c: ChainConfig) -> Result<Compiled, ConfigError> {
    if c.filters.is_empty() {
        return Err(ConfigError::at(
            "filters",
            "a chain needs at least one filter",
        ));
    }
    let mut parts: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(c.filters.len());
    for (i, p) in c.filters.iter().enumerate() {
        let Some(name) = FILTERS.iter().copied().find(|f| *f == p.name) else {
            return Err(ConfigError::at(
                format!("filters[{i}].name"),
                format!(
                    "unknown filter {:?} (known: {})",
                    p.name,
                    FILTERS.join(", ")
                ),
            ));
        };
        if parts.iter().any(|(n, _)| *n == name) {
            return Err(ConfigError::at(
                format!("filters[{i}].name"),
                format!("{name} is already in the chain (each filter runs at most once)"),
            ));
        }
        let bytes = serde_json::to_vec(&p.config)
            .map_err(|e| ConfigError::at(format!("filters[{i}].config"), e.to_string()))?;
        parts.push((name, bytes));
    }
    if c.disabled_on_routes.len() > MAX_ROUTES {
        return Err(ConfigError::at(
            "disabled_on_routes",
            format!("at most {MAX_ROUTES} routes"),
        ));
    }
    let mut disabled = BTreeMap::new();
    for (route, names) in &c.disabled_on_routes {
        let mut off = vec![false; parts.len()];
        for (j, n) in names.iter().enumerate() {
            let Some(k) = parts.iter().position(|(p, _)| p == n) else {
                return Err(ConfigError::at(
                    format!("disabled_on_routes.{route}[{j}]"),
                    format!("{n:?} is not a filter of this chain"),
                ));
            };
            if let Some(o) = off.get_mut(k) {
                *o = true;
            }
        }
        disabled.insert(route.clone(), off);
    }
    for (i, e) in c.export.iter().enumerate() {
        if !filter_core::context::LOCAL_PROPERTIES.contains(&e.as_str()) {
            return Err(ConfigError::at(
                format!("export[{i}]"),
                format!(
                    "{e:?} is not a value the chain hands over (known: {})",
                    filter_core::context::LOCAL_PROPERTIES.join(", ")
                ),
            ));
        }
    }
    Ok(Compiled {
        parts,
        disabled,
        writes: match c.header_writes {
            Writes::Each => HeaderWrites::Each,
            Writes::Map => HeaderWrites::Map,
        },
        export: c.export,
    })
}

/// Loads every part with its filter's own loader (what the filter's
/// `on_configure` runs), so a chain that passes here is one the chain's
/// `on_configure` accepts. `env`: the environment replay-guard reads its
/// secrets from. An error names `filters[i].config.<the filter's path>`.
pub fn validate_parts(
    c: &Compiled,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (i, (name, bytes)) in c.parts.iter().enumerate() {
        let r = match *name {
            "sanitize" => sanitize::config::load(bytes).map(drop),
            "jwt" => jwt::config::load(bytes).map(drop),
            "replay-guard" => replay_guard::config::load(bytes, &env).map(drop),
            "fds-block" => fds_block::config::load(bytes).map(drop),
            "passport" => passport::config::load(bytes).map(drop),
            "route-breaker" => route_breaker::config::load(bytes).map(drop),
            "san-authz" => san_authz::config::load(bytes).map(drop),
            "oidc" => oidc::config::load(bytes, &env).map(drop),
            _ => Ok(()),
        };
        r.map_err(|e| {
            let at = if e.path == "." {
                format!("filters[{i}].config")
            } else {
                format!("filters[{i}].config.{}", e.path)
            };
            ConfigError::at(at, format!("{name}: {}", e.message))
        })?;
    }
    Ok(())
}

/// The JSON Schema of [`ChainConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ChainConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_their_order_and_their_json() {
        let c = load(
            br#"{"filters":[{"name":"sanitize","config":{"dry_run":true}},
                            {"name":"route-breaker","config":{"name":"web","routes":[]}}],
                 "disabled_on_routes":{"health":["route-breaker"]}}"#,
        )
        .unwrap();
        assert_eq!(c.parts.len(), 2);
        assert_eq!(c.parts[0], ("sanitize", br#"{"dry_run":true}"#.to_vec()));
        assert_eq!(c.parts[1].0, "route-breaker");
        assert_eq!(c.disabled_on("health"), Some(&[false, true][..]));
        assert_eq!(c.disabled_on("api"), None);
        assert_eq!(c.writes, HeaderWrites::Each);
    }

    #[test]
    fn errors_name_the_field() {
        let e = load(br#"{"filters":[{"name":"nope","config":{}}]}"#).unwrap_err();
        assert_eq!(e.path, "filters[0].name");
        let e = load(br#"{"filters":[{"name":"jwt","config":{}},{"name":"jwt","config":{}}]}"#)
            .unwrap_err();
        assert_eq!(e.path, "filters[1].name");
        let e = load(br#"{"filters":[]}"#).unwrap_err();
        assert_eq!(e.path, "filters");
        let e = load(br#"{"filters":[{"name":"jwt","config":{}}],"extra":1}"#).unwrap_err();
        assert_eq!(e.path, "extra");
        let e = load(
            br#"{"filters":[{"name":"jwt","config":{}}],"disabled_on_routes":{"h":["sanitize"]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "disabled_on_routes.h[0]");
        let e =
            load(br#"{"filters":[{"name":"jwt","config":{}}],"export":["secret"]}"#).unwrap_err();
        assert_eq!(e.path, "export[0]");
    }

    #[test]
    fn each_part_is_checked_by_its_own_filter_with_the_path_prefixed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config");
        let read = |p: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(root.join(p)).unwrap()).unwrap()
        };
        let doc = serde_json::json!({"filters": [
            {"name": "sanitize", "config": read("sanitize/web.json")},
            {"name": "jwt", "config": read("jwt/web.json")},
        ]});
        let c = load(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let env = |_: &str| None;
        validate_parts(&c, &env).unwrap();
        let mut bad = doc.clone();
        bad["filters"][1]["config"]["no_such_field"] = serde_json::json!(1);
        let c = load(&serde_json::to_vec(&bad).unwrap()).unwrap();
        let e = validate_parts(&c, &env).unwrap_err();
        assert_eq!(e.path, "filters[1].config.no_such_field");
        assert!(e.message.starts_with("jwt: "), "{}", e.message);
    }

    #[test]
    fn the_schema_describes_the_parts() {
        let s = schema();
        assert!(s["properties"]["filters"].is_object());
    }
}
