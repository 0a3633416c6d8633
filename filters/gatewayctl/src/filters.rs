//! The registry of filters: name → the filter crate's own config loader and
//! JSON Schema. The loaders are the very code `on_configure` runs in Envoy,
//! so a config that passes here is one Envoy accepts (modulo secrets read
//! from the environment at configure time, see [`Filter::validate`]).

use filter_core::config::{BodyHold, ConfigError};

/// One filter of the suite.
#[derive(Debug, Clone, Copy)]
pub struct Filter {
    /// The Envoy filter name = examples/config dir = docs page = WasmPlugin stem.
    pub name: &'static str,
    /// The wasm module's root_id/vm_id (the crate's lib name).
    pub root_id: &'static str,
    load: fn(&[u8]) -> Result<(), ConfigError>,
    /// The config's settings that hold the request headers for the body
    /// (the filter crate's own `Compiled::body_hold`; none for a filter that
    /// never reads the body).
    body_hold: fn(&[u8]) -> Result<Vec<BodyHold>, ConfigError>,
    schema: fn() -> serde_json::Value,
}

/// A placeholder secret (32 zero bytes, base64) for environment variables
/// that a config names but that are not set where the CLI runs: `validate`
/// checks the config's shape; Envoy checks the real secret at start-up.
const PLACEHOLDER_SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

pub(crate) fn replay_guard_env(name: &str) -> Option<String> {
    Some(std::env::var(name).unwrap_or_else(|_| PLACEHOLDER_SECRET.to_string()))
}

fn value<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Every filter, in contract order.
pub const ALL: &[Filter] = &[
    Filter {
        name: "sanitize",
        root_id: "sanitize",
        load: |b| sanitize::config::load(b).map(drop),
        body_hold: |b| sanitize::config::load(b).map(|c| c.body_hold()),
        schema: || value(sanitize::config::schema()),
    },
    Filter {
        name: "jwt",
        root_id: "jwt",
        load: |b| jwt::config::load(b).map(drop),
        body_hold: |b| jwt::config::load(b).map(|_| Vec::new()),
        schema: || value(jwt::config::schema()),
    },
    Filter {
        name: "replay-guard",
        root_id: "replay_guard",
        load: |b| replay_guard::config::load(b, &replay_guard_env).map(drop),
        body_hold: |b| replay_guard::config::load(b, &replay_guard_env).map(|c| c.body_hold()),
        schema: || value(replay_guard::config::schema()),
    },
    Filter {
        name: "e2ee",
        root_id: "e2ee",
        load: |b| e2ee::config::load(b, &replay_guard_env).map(drop),
        body_hold: |b| e2ee::config::load(b, &replay_guard_env).map(|c| c.body_hold()),
        schema: || value(e2ee::config::schema()),
    },
    Filter {
        name: "fds-block",
        root_id: "fds_block",
        load: |b| fds_block::config::load(b).map(drop),
        body_hold: |b| fds_block::config::load(b).map(|_| Vec::new()),
        schema: || value(fds_block::config::schema()),
    },
    Filter {
        name: "passport",
        root_id: "passport",
        load: |b| passport::config::load(b).map(drop),
        body_hold: |b| passport::config::load(b).map(|_| Vec::new()),
        schema: || value(passport::config::schema()),
    },
    Filter {
        name: "san-authz",
        root_id: "san_authz",
        load: |b| san_authz::config::load(b).map(drop),
        body_hold: |b| san_authz::config::load(b).map(|_| Vec::new()),
        schema: || value(san_authz::config::schema()),
    },
    Filter {
        name: "oidc",
        root_id: "oidc",
        load: |b| oidc::config::load(b, &replay_guard_env).map(drop),
        body_hold: |b| oidc::config::load(b, &replay_guard_env).map(|_| Vec::new()),
        schema: || value(oidc::config::schema()),
    },
    Filter {
        name: "route-breaker",
        root_id: "route_breaker",
        load: |b| route_breaker::config::load(b).map(drop),
        body_hold: |b| route_breaker::config::load(b).map(|_| Vec::new()),
        schema: || value(route_breaker::config::schema()),
    },
];

impl Filter {
    /// Loads and compiles `bytes` with the filter's own code.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), ConfigError> {
        (self.load)(bytes)
    }

    /// The filter config's JSON Schema.
    pub fn schema(&self) -> serde_json::Value {
        (self.schema)()
    }

    /// Loads `bytes` with the filter's own code and lists the settings that
    /// make it hold the request headers while it reads the body: such a
    /// config needs Envoy's `allow_on_headers_stop_iteration: true`, which
    /// an Istio `WasmPlugin` cannot set (docs/istio.md).
    pub fn body_hold(&self, bytes: &[u8]) -> Result<Vec<BodyHold>, ConfigError> {
        (self.body_hold)(bytes)
    }
}

/// The chain build's configuration (filters/chain: a gateway's filters in
/// order, each with its own config) checked by the chain's loader and each
/// part's filter, then the settings of every part that hold the request
/// headers for the body, at `filters[i].config.<field>`: one Envoy filter
/// runs them all, so the chain holds the headers when any part does.
pub fn chain_body_hold(bytes: &[u8]) -> Result<Vec<BodyHold>, ConfigError> {
    let c = chain::config::load(bytes)?;
    chain::config::validate_parts(&c, &replay_guard_env)?;
    let mut out = Vec::new();
    for (i, part) in c.parts.iter().enumerate() {
        let Some(f) = find(part.filter) else {
            return Err(ConfigError::at(
                format!("filters[{i}].name"),
                format!("{}: no body-hold rule for this filter", part.filter),
            ));
        };
        let holds = f.body_hold(&part.config).map_err(|e| {
            ConfigError::at(
                format!("filters[{i}].config.{}", e.path),
                format!("{}: {}", part.filter, e.message),
            )
        })?;
        out.extend(holds.into_iter().map(|h| {
            BodyHold::new(
                format!("filters[{i}].config.{}", h.field),
                format!("{}: {}", part.instance, h.reason),
            )
        }));
    }
    Ok(out)
}

/// Finds a filter by its name or root_id (`replay-guard`, `replay_guard`).
pub fn find(name: &str) -> Option<&'static Filter> {
    ALL.iter().find(|f| f.name == name || f.root_id == name)
}

/// The names, for error messages.
pub fn names() -> String {
    ALL.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_holds_the_headers_where_any_part_does_and_names_the_part() {
        let sanitize = r#"{"routes":[{"name":"orders","prefix":"/o","body":{"fields":{}}}],"unknown_length_body":"refuse"}"#;
        let chain = format!(
            r#"{{"filters":[{{"name":"sanitize","config":{sanitize}}},{{"name":"route-breaker","config":{{"name":"egress"}}}}]}}"#
        );
        let holds = chain_body_hold(chain.as_bytes()).unwrap();
        assert_eq!(holds.len(), 1, "{holds:?}");
        assert_eq!(holds[0].field, "filters[0].config.routes[0].body");
        assert!(
            holds[0].reason.starts_with("sanitize: "),
            "{}",
            holds[0].reason
        );
        let quiet =
            r#"{"filters":[{"name":"sanitize","config":{"unknown_length_body":"refuse"}}]}"#;
        assert_eq!(chain_body_hold(quiet.as_bytes()).unwrap(), Vec::new());
        let bad = r#"{"filters":[{"name":"sanitize","config":{"not_a_field":1}}]}"#;
        let e = chain_body_hold(bad.as_bytes()).unwrap_err();
        assert!(e.path.starts_with("filters[0].config"), "{}", e.path);
    }

    #[test]
    fn names_and_root_ids_both_resolve() {
        assert_eq!(find("replay_guard").unwrap().name, "replay-guard");
        assert_eq!(find("route-breaker").unwrap().root_id, "route_breaker");
        assert!(find("nope").is_none());
    }

    #[test]
    fn only_the_body_reading_filters_hold_the_headers_for_the_body() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config");
        for f in ALL {
            for e in std::fs::read_dir(root.join(f.name)).unwrap() {
                let p = e.unwrap().path();
                let holds = f.body_hold(&std::fs::read(&p).unwrap()).unwrap();
                let reads_body = matches!(f.name, "sanitize" | "replay-guard" | "e2ee");
                assert_eq!(!holds.is_empty(), reads_body, "{}: {holds:?}", p.display());
            }
        }
        assert!(find("sanitize").unwrap().body_hold(b"{not json").is_err());
    }

    #[test]
    fn every_filter_has_an_object_schema() {
        for f in ALL {
            let s = f.schema();
            assert!(
                s.get("properties").is_some() || s.get("$defs").is_some(),
                "{}",
                f.name
            );
        }
    }
}
