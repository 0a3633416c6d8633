//! The chain's configuration: the gateway's filters in order, each with its
//! own JSON configuration exactly as the filter takes it alone (same schema,
//! same loader, same errors, with the path prefixed by `filters[i].config`).
//!
//! ```json
//! {"filters": [
//!    {"name": "sanitize", "config": {...}},
//!    {"name": "jwt", "config": {...}},
//!    {"name": "sanitize", "instance": "sanitize-body", "config": {...}}],
//!  "disabled_on_routes": {"health": ["fds-block", "route-breaker"]},
//!  "header_writes": "each",
//!  "export": []}
//! ```
//!
//! A filter may run more than once (the app gateway's second sanitize pass,
//! `sanitize-body`, judges the body e2ee decrypted): each run is a named
//! instance with its own configuration and its own root context, exactly
//! as two Envoy filters of one module would be.

use std::collections::BTreeMap;

use filter_core::config::ConfigError;
use filter_core::context::HeaderWrites;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The filters a chain can run, by their Envoy filter name.
pub const FILTERS: [&str; 9] = [
    "sanitize",
    "jwt",
    "replay-guard",
    "e2ee",
    "fds-block",
    "passport",
    "route-breaker",
    "san-authz",
    "oidc",
];

/// The filters that implement response callbacks (headers, body,
/// trailers): the chain drives its response steps for them only, and a
/// chain that has none runs from a module that exports no response
/// callback (docs/chain.md, "Response steps").
pub const RESPONSE_FILTERS: [&str; 1] = ["e2ee"];

/// Most parts in one chain (instances included).
pub const MAX_FILTERS: usize = 16;

/// Longest instance name.
pub const MAX_INSTANCE_LEN: usize = 64;

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
    /// The filter (`sanitize`, `jwt`, `replay-guard`, `e2ee`, `fds-block`,
    /// `passport`, `route-breaker`, `san-authz`, `oidc`).
    pub name: String,
    /// This part's name in the chain when the filter runs more than once
    /// (the app gateway's `sanitize-body`): `[a-z0-9-]`, at most 64
    /// characters, unique in the chain; what `disabled_on_routes` and the
    /// chain's own logs name. Default: the filter's name. The filter's
    /// metrics and decision logs are the filter's, whatever the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
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

/// One part of a checked chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPart {
    /// The filter ([`FILTERS`]).
    pub filter: &'static str,
    /// The part's name in the chain: its `instance`, else the filter's name.
    pub instance: String,
    /// The filter's configuration as JSON bytes.
    pub config: Vec<u8>,
}

impl CompiledPart {
    /// Whether the filter implements response callbacks ([`RESPONSE_FILTERS`]).
    pub fn on_response(&self) -> bool {
        RESPONSE_FILTERS.contains(&self.filter)
    }
}

/// The chain's configuration, checked: the filters' own configurations are
/// still JSON (each filter loads its part in its `on_configure`).
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The parts, in order.
    pub parts: Vec<CompiledPart>,
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

    /// Whether any part implements response callbacks: only then does the
    /// chain need a module that exports them (docs/chain.md).
    pub fn on_response(&self) -> bool {
        self.parts.iter().any(CompiledPart::on_response)
    }
}

/// Whether `name` is a valid instance name (`[a-z0-9-]`, 1 to
/// [`MAX_INSTANCE_LEN`] characters).
fn valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INSTANCE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
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
    if c.filters.len() > MAX_FILTERS {
        return Err(ConfigError::at(
            "filters",
            format!("at most {MAX_FILTERS} filters in one chain"),
        ));
    }
    let mut parts: Vec<CompiledPart> = Vec::with_capacity(c.filters.len());
    for (i, p) in c.filters.iter().enumerate() {
        let Some(filter) = FILTERS.iter().copied().find(|f| *f == p.name) else {
            return Err(ConfigError::at(
                format!("filters[{i}].name"),
                format!(
                    "unknown filter {:?} (known: {})",
                    p.name,
                    FILTERS.join(", ")
                ),
            ));
        };
        let instance = match &p.instance {
            Some(n) if !valid_instance(n) => {
                return Err(ConfigError::at(
                    format!("filters[{i}].instance"),
                    format!("{n:?} is not an instance name ([a-z0-9-], 1 to {MAX_INSTANCE_LEN} characters)"),
                ));
            }
            Some(n) => n.clone(),
            None => filter.to_string(),
        };
        if parts.iter().any(|q| q.instance == instance) {
            let at = if p.instance.is_some() {
                "instance"
            } else {
                "name"
            };
            return Err(ConfigError::at(
                format!("filters[{i}].{at}"),
                format!(
                    "{instance} is already in the chain (a filter that runs twice needs an `instance` name for each other run)"
                ),
            ));
        }
        let config = serde_json::to_vec(&p.config)
            .map_err(|e| ConfigError::at(format!("filters[{i}].config"), e.to_string()))?;
        parts.push(CompiledPart {
            filter,
            instance,
            config,
        });
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
            let Some(k) = parts.iter().position(|p| p.instance == *n) else {
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
    for (i, part) in c.parts.iter().enumerate() {
        let (name, bytes) = (part.filter, &part.config);
        let r = match name {
            "sanitize" => sanitize::config::load(bytes).map(drop),
            "jwt" => jwt::config::load(bytes).map(drop),
            "replay-guard" => replay_guard::config::load(bytes, &env).map(drop),
            #[cfg(feature = "e2ee")]
            "e2ee" => e2ee::config::load(bytes, &env).map(drop),
            #[cfg(not(feature = "e2ee"))]
            "e2ee" => Err(ConfigError::at(
                ".",
                "this build of the chain does not link e2ee (chain_response.wasm does)",
            )),
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
        assert_eq!(
            c.parts[0],
            CompiledPart {
                filter: "sanitize",
                instance: "sanitize".into(),
                config: br#"{"dry_run":true}"#.to_vec()
            }
        );
        assert_eq!(c.parts[1].filter, "route-breaker");
        assert!(!c.on_response());
        assert_eq!(c.disabled_on("health"), Some(&[false, true][..]));
        assert_eq!(c.disabled_on("api"), None);
        assert_eq!(c.writes, HeaderWrites::Each);
    }

    #[test]
    fn a_filter_runs_twice_as_named_instances_each_with_its_config() {
        let c = load(
            br#"{"filters":[{"name":"sanitize","config":{"dry_run":true}},
                            {"name":"e2ee","config":{}},
                            {"name":"sanitize","instance":"sanitize-body","config":{}}],
                 "disabled_on_routes":{"health":["sanitize-body","e2ee"]}}"#,
        )
        .unwrap();
        let names: Vec<_> = c
            .parts
            .iter()
            .map(|p| (p.filter, p.instance.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("sanitize", "sanitize"),
                ("e2ee", "e2ee"),
                ("sanitize", "sanitize-body")
            ]
        );
        assert_eq!(c.parts[2].config, b"{}");
        assert_eq!(c.disabled_on("health"), Some(&[false, true, true][..]));
        assert!(c.on_response(), "e2ee answers response callbacks");
    }

    #[test]
    fn instance_names_are_unique_and_well_formed() {
        // The same filter twice without a name for the second run.
        let e = load(
            br#"{"filters":[{"name":"sanitize","config":{}},{"name":"sanitize","config":{}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "filters[1].name");
        // An instance that takes another part's name.
        let e = load(
            br#"{"filters":[{"name":"jwt","config":{}},{"name":"sanitize","instance":"jwt","config":{}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "filters[1].instance");
        for bad in [
            "",
            "Sanitize",
            "a b",
            "x.y",
            &"a".repeat(MAX_INSTANCE_LEN + 1),
        ] {
            let doc = serde_json::json!({"filters": [{"name": "sanitize", "instance": bad, "config": {}}]});
            let e = load(&serde_json::to_vec(&doc).unwrap()).unwrap_err();
            assert_eq!(e.path, "filters[0].instance", "{bad:?}");
        }
        let many: Vec<_> = (0..=MAX_FILTERS)
            .map(|i| serde_json::json!({"name": "sanitize", "instance": format!("s{i}"), "config": {}}))
            .collect();
        let e = load(&serde_json::to_vec(&serde_json::json!({ "filters": many })).unwrap())
            .unwrap_err();
        assert_eq!(e.path, "filters");
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
        assert!(s["$defs"]["Part"]["properties"]["instance"].is_object());
        filter_core::testing::assert_schema_current(env!("CARGO_MANIFEST_DIR"), "chain", &s);
    }
}
