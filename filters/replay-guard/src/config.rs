//! replay-guard's JSON config: the serde shape ([`ReplayGuardConfig`],
//! unknown fields rejected, JSON Schema derived) and its compiled form
//! ([`Compiled`]), built once in `on_configure`.
//!
//! Master secrets are never part of the JSON: the config names an
//! environment variable per secret version, read once at configure time
//! (in Envoy: `vm_config.environment_variables`, see the docs page).

use filter_core::config::{validate_header_name, BodyHold, ConfigError};
use filter_core::duration::ConfigDuration;
use filter_core::route::RouteMatcher;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::nonce::StoreLayout;

/// The master secrets (shared with the other filter that reads them).
pub use filter_core::secrets::{MasterSecret, Secret, MAX_SECRETS, MIN_SECRET_BYTES};
/// Components every signature must cover unless a route says otherwise.
pub const DEFAULT_COMPONENTS: [&str; 3] = ["@method", "@authority", "@path"];

/// The replay-guard filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayGuardConfig {
    /// Master secrets by version (1 to 4). A key's HMAC key is
    /// HMAC-SHA256(master secret, key id). A key id may name the version as
    /// a 4th field (`<device>:<user>:<expiry>:<version>`); without it every
    /// configured secret is tried, in order.
    pub master_secrets: Vec<MasterSecret>,
    /// Oldest accepted `created`, relative to the gateway's clock (default "5m").
    #[serde(default = "default_max_age")]
    pub max_age: ConfigDuration,
    /// How far `created` may lie in the future (client clock ahead; default "30s").
    #[serde(default = "default_max_skew")]
    pub max_skew: ConfigDuration,
    /// Longest accepted remaining lifetime of a key id: a key id whose expiry
    /// lies further ahead than this is refused. Absent (the default): the
    /// expiry the key issuer signed into the key id is honoured as it is,
    /// like a JWT's `exp` (only a holder of the master secret can mint a
    /// key id, so this only guards against an issuer's mistakes).
    #[serde(default)]
    pub max_key_lifetime: Option<ConfigDuration>,
    /// Verify only the signature with this label; absent: the first label of
    /// `Signature-Input` that also appears in `Signature`.
    #[serde(default)]
    pub label: Option<String>,
    /// Components every signature must cover (default
    /// `["@method", "@authority", "@path"]`); `@query` is added when the
    /// request has a query and `content-digest` when it has a body.
    #[serde(default = "default_components")]
    pub required_components: Vec<String>,
    /// Per-route rules, first match wins. A request that matches no route
    /// needs a signature with `required_components`.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// The shared nonce store.
    #[serde(default)]
    pub nonce_store: NonceStoreConfig,
    /// Largest body buffered for the digest check, in bytes (default 1048576);
    /// larger → 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Reports of invalid signatures and replays to the FDS service; absent:
    /// no reports.
    #[serde(default)]
    pub reports: Option<ReportsConfig>,
    /// The store every replica of the gateway shares (Redis behind the
    /// gateway-store sidecar, docs/gateway-store.md). Set: each nonce is
    /// claimed there once (one callout after the signature and digest
    /// verify; the request waits at most `timeout`), and `nonce_store`
    /// above is only this replica's first-level cache that refuses a replay
    /// it already knows without a round trip. Absent: `nonce_store` alone
    /// decides, which holds per Envoy process only.
    #[serde(default)]
    pub shared_store: Option<filter_core::store::SharedStoreConfig>,
    /// Dry run (default false): every check runs, but a request that would
    /// be refused is logged (`"dry_run":true`), counted in
    /// `replay_guard_dry_run_denied_total` and let through unchanged,
    /// without an identity and without a report to the FDS service.
    #[serde(default)]
    pub dry_run: bool,
}

/// Rules for one route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A name for logs.
    pub name: String,
    /// Path prefix, matched at segment boundaries.
    pub prefix: String,
    /// Methods (upper case); empty or absent means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Match the path exactly instead of as a prefix (default false).
    #[serde(default)]
    pub exact: bool,
    /// No signature needed on this route (default false).
    #[serde(default)]
    pub open: bool,
    /// Components this route's signatures must cover, replacing
    /// `required_components`.
    #[serde(default)]
    pub components: Option<Vec<String>>,
}

/// Layout and bound of the nonce store (see `docs/filters/replay-guard.md`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NonceStoreConfig {
    /// Most nonces held at once, all buckets together (default 1048576).
    /// Memory at the bound: about 16 bytes per nonce.
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
    /// Width of a time bucket over `created` (default "30s").
    #[serde(default = "default_bucket")]
    pub bucket: ConfigDuration,
    /// Shards per time bucket (default 64), so that one update copies a small value.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Accepted nonce length in characters (default 8..=128).
    #[serde(default = "default_min_nonce")]
    pub min_nonce_length: usize,
    #[serde(default = "default_max_nonce")]
    pub max_nonce_length: usize,
}

impl Default for NonceStoreConfig {
    fn default() -> Self {
        NonceStoreConfig {
            max_entries: default_max_entries(),
            bucket: default_bucket(),
            shards: default_shards(),
            min_nonce_length: default_min_nonce(),
            max_nonce_length: default_max_nonce(),
        }
    }
}

/// Where and how often reports go.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// Envoy cluster of the FDS service (e.g. "fds").
    pub cluster: String,
    /// `:authority` of the report request (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Path of the report endpoint (default "/v1/reports").
    #[serde(default = "default_report_path")]
    pub path: String,
    /// Timeout of one report call (default "2s").
    #[serde(default = "default_report_timeout")]
    pub timeout: ConfigDuration,
    /// Reports per minute per Envoy worker, steady state (default 60).
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
    /// Reports a worker may send at once after a quiet period (default 10).
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Suspects a worker keeps pending at most, 1 to 4096 (default 256):
    /// events are coalesced per suspect (device, user and kind when the
    /// signature verified; client address and kind when it did not) and
    /// sent at the rate above. Unverified suspects hold at most half of the
    /// table; a new verified suspect evicts the newest unverified one, any
    /// other newcomer finding no room is dropped and counted in the next
    /// report's `suppressed`. About 2 KiB per suspect at most.
    #[serde(default = "default_max_suspects")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_suspects: usize,
}

fn default_max_age() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_max_skew() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_components() -> Vec<String> {
    DEFAULT_COMPONENTS.iter().map(|s| s.to_string()).collect()
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_max_entries() -> u32 {
    1 << 20
}
fn default_bucket() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_shards() -> u32 {
    64
}
fn default_min_nonce() -> usize {
    8
}
fn default_max_nonce() -> usize {
    128
}
fn default_report_path() -> String {
    "/v1/reports".into()
}
fn default_report_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_per_minute() -> u32 {
    60
}
fn default_burst() -> u32 {
    10
}
fn default_max_suspects() -> usize {
    crate::coalesce::DEFAULT_MAX_SUSPECTS
}

/// A covered component as the gateway computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    Method,
    Authority,
    Scheme,
    Path,
    Query,
    TargetUri,
    RequestTarget,
    /// A header field, lower case.
    Field(String),
}

impl Component {
    /// Parses a component identifier (without parameters).
    pub fn parse(name: &str) -> Option<Component> {
        Some(match name {
            "@method" => Component::Method,
            "@authority" => Component::Authority,
            "@scheme" => Component::Scheme,
            "@path" => Component::Path,
            "@query" => Component::Query,
            "@target-uri" => Component::TargetUri,
            "@request-target" => Component::RequestTarget,
            n if n.starts_with('@') => return None,
            n => {
                validate_header_name("", n).ok()?;
                Component::Field(n.to_string())
            }
        })
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: String,
    pub matcher: RouteMatcher,
    pub open: bool,
    /// Component identifiers that must be covered (as written in Signature-Input).
    pub components: Vec<String>,
}

/// Compiled report settings.
#[derive(Debug, Clone)]
pub struct Reports {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: std::time::Duration,
    pub per_minute: u32,
    pub burst: u32,
    /// Bound of the pending table ([`crate::coalesce`]), per worker.
    pub max_suspects: usize,
}

/// The ready-to-use configuration, shared by every request context.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub secrets: Vec<Secret>,
    pub max_age: u64,
    pub max_skew: u64,
    pub max_key_lifetime: u64,
    pub label: Option<String>,
    pub default_components: Vec<String>,
    pub routes: Vec<CompiledRoute>,
    pub store: StoreLayout,
    pub min_nonce_length: usize,
    pub max_nonce_length: usize,
    pub max_body_bytes: u64,
    pub reports: Option<Reports>,
    /// Where nonces are claimed across replicas (`None`: this process's
    /// nonce store alone).
    pub shared_store: Option<filter_core::store::SharedStore>,
    pub dry_run: bool,
}

impl Compiled {
    /// The first route that matches, if any.
    pub fn route(&self, method: &str, path: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.matcher.matches(method, path))
    }

    /// The settings that make replay-guard hold the request headers while it
    /// reads the body ([`BodyHold`]). Every signed request that may carry a
    /// body (no end-of-stream on the headers) is held until its
    /// Content-Digest is checked, in a dry run too: so each route that is not
    /// `open`, and the requests that match no route (`required_components`),
    /// unless an open route before them takes every request (prefix `/`, any
    /// method, not exact). Conservative: a route shadowed by an earlier one
    /// is still listed. Empty only when no request needs a signature.
    pub fn body_hold(&self) -> Vec<BodyHold> {
        const WHY: &str =
            "a signed request with a body is held until its Content-Digest is checked";
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.open {
                if r.matcher.prefix() == "/"
                    && !r.matcher.is_exact()
                    && r.matcher.methods().is_empty()
                {
                    return out;
                }
                continue;
            }
            out.push(BodyHold::new(
                format!("routes[{i}]"),
                format!("route {:?}: {WHY}", r.name),
            ));
        }
        out.push(BodyHold::new(
            "required_components",
            format!("requests on no route: {WHY}"),
        ));
        out
    }
}

/// `[A-Za-z0-9_-]`, 1..=max characters.
pub fn is_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_components(path: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::at(path, "must name at least one component"));
    }
    for (i, c) in list.iter().enumerate() {
        if Component::parse(c).is_none() {
            return Err(ConfigError::at(
                format!("{path}[{i}]"),
                format!("{c:?} is not a supported component (derived: @method, @authority, @scheme, @path, @query, @target-uri, @request-target; or a lower-case header name)"),
            ));
        }
        if list.iter().take(i).any(|p| p == c) {
            return Err(ConfigError::at(format!("{path}[{i}]"), "named twice"));
        }
    }
    Ok(())
}

fn secs(path: &str, d: ConfigDuration, min: u64, max: u64) -> Result<u64, ConfigError> {
    let s = d.as_duration().as_secs();
    if d.as_duration().subsec_nanos() != 0 || s < min || s > max {
        return Err(ConfigError::at(
            path,
            format!("must be whole seconds between {min}s and {max}s"),
        ));
    }
    Ok(s)
}

impl Compiled {
    /// Validates and compiles `c`, reading each secret's environment
    /// variable through `env` (`std::env::var` in the filter).
    pub fn compile(
        c: ReplayGuardConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secrets = filter_core::secrets::compile(&c.master_secrets, env)?;
        let max_age = secs("max_age", c.max_age, 1, 24 * 3600)?;
        let max_skew = secs("max_skew", c.max_skew, 0, 3600)?;
        let max_key_lifetime = match c.max_key_lifetime {
            Some(d) => secs("max_key_lifetime", d, 1, 366 * 24 * 3600)?,
            None => u64::MAX,
        };
        if let Some(l) = &c.label {
            if sfv::KeyRef::from_str(l).is_err() {
                return Err(ConfigError::at(
                    "label",
                    "must be a structured-field key (lower case, digits, _ - . *)",
                ));
            }
        }
        check_components("required_components", &c.required_components)?;
        let mut routes = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.name.is_empty() {
                return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
            }
            let matcher = RouteMatcher::new(&at, &r.prefix, &r.methods)?.exact(r.exact);
            if r.open && r.components.is_some() {
                return Err(ConfigError::at(
                    format!("{at}.components"),
                    "an open route takes no components",
                ));
            }
            let components = match r.components {
                Some(list) => {
                    check_components(&format!("{at}.components"), &list)?;
                    list
                }
                None => c.required_components.clone(),
            };
            routes.push(CompiledRoute {
                name: r.name,
                matcher,
                open: r.open,
                components,
            });
        }
        let n = &c.nonce_store;
        let bucket = secs("nonce_store.bucket", n.bucket, 1, 3600)?;
        if n.shards == 0 || n.shards > 1024 {
            return Err(ConfigError::at(
                "nonce_store.shards",
                "must be between 1 and 1024",
            ));
        }
        if n.min_nonce_length == 0 || n.min_nonce_length > n.max_nonce_length {
            return Err(ConfigError::at(
                "nonce_store.min_nonce_length",
                "must be at least 1 and at most max_nonce_length",
            ));
        }
        if n.max_nonce_length > 256 {
            return Err(ConfigError::at(
                "nonce_store.max_nonce_length",
                "must be at most 256",
            ));
        }
        let store = StoreLayout::new(max_age + max_skew, bucket, n.shards, n.max_entries)
            .map_err(|m| ConfigError::at("nonce_store.max_entries", m))?;
        if c.max_body_bytes == 0 || c.max_body_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::at(
                "max_body_bytes",
                "must be between 1 and 16777216",
            ));
        }
        let reports = match c.reports {
            None => None,
            Some(r) => {
                if r.cluster.is_empty() {
                    return Err(ConfigError::at("reports.cluster", "must not be empty"));
                }
                if !r.path.starts_with('/') {
                    return Err(ConfigError::at("reports.path", "must start with '/'"));
                }
                if r.per_minute == 0 || r.per_minute > 6000 {
                    return Err(ConfigError::at(
                        "reports.per_minute",
                        "must be between 1 and 6000",
                    ));
                }
                if r.burst == 0 || r.burst > 1000 {
                    return Err(ConfigError::at(
                        "reports.burst",
                        "must be between 1 and 1000",
                    ));
                }
                if r.max_suspects == 0 || r.max_suspects > crate::coalesce::MAX_MAX_SUSPECTS {
                    return Err(ConfigError::at(
                        "reports.max_suspects",
                        format!(
                            "must be between 1 and {}",
                            crate::coalesce::MAX_MAX_SUSPECTS
                        ),
                    ));
                }
                let t = r.timeout.as_duration();
                if t.is_zero() || t.as_secs() > 60 {
                    return Err(ConfigError::at(
                        "reports.timeout",
                        "must be between 1ms and 60s",
                    ));
                }
                Some(Reports {
                    authority: r.authority.unwrap_or_else(|| r.cluster.clone()),
                    cluster: r.cluster,
                    path: r.path,
                    timeout: t,
                    per_minute: r.per_minute,
                    burst: r.burst,
                    max_suspects: r.max_suspects,
                })
            }
        };
        Ok(Compiled {
            secrets,
            max_age,
            max_skew,
            max_key_lifetime,
            label: c.label,
            default_components: c.required_components,
            routes,
            store,
            min_nonce_length: n.min_nonce_length,
            max_nonce_length: n.max_nonce_length,
            max_body_bytes: c.max_body_bytes,
            reports,
            shared_store: match c.shared_store {
                Some(s) => Some(s.compile("shared_store")?),
                None => None,
            },
            dry_run: c.dry_run,
        })
    }
}

/// Parses and compiles a JSON config; secrets come from `env`.
pub fn load(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Compiled, ConfigError> {
    let raw: ReplayGuardConfig = filter_core::config::parse_json(bytes)?;
    Compiled::compile(raw, env)
}

/// The JSON Schema of [`ReplayGuardConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ReplayGuardConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SECRET_B64: &str = "6uVwr+zo9rh/CyU3BUNq4p0/wad99gc4EK4KZJgK1wc=";

    fn env(name: &str) -> Option<String> {
        match name {
            "K1" => Some(SECRET_B64.into()),
            "SHORT" => Some("c2hvcnQ=".into()),
            "BAD" => Some("***".into()),
            _ => None,
        }
    }

    fn err(json: &str) -> ConfigError {
        load(json.as_bytes(), &env).unwrap_err()
    }

    #[test]
    fn minimal_config_compiles_with_documented_defaults() {
        let c = load(br#"{"master_secrets":[{"version":"1","env":"K1"}]}"#, &env).unwrap();
        assert_eq!(c.max_age, 300);
        assert_eq!(c.max_skew, 30);
        assert_eq!(c.default_components, DEFAULT_COMPONENTS);
        assert_eq!(c.secrets[0].key.len(), 32);
        assert!(c.reports.is_none());
        let c = load(
            br#"{"master_secrets":[{"version":"1","env":"K1"}],"reports":{"cluster":"fds"}}"#,
            &env,
        )
        .unwrap();
        let r = c.reports.unwrap();
        assert_eq!((r.per_minute, r.burst, r.max_suspects), (60, 10, 256));
        assert_eq!(
            (r.path.as_str(), r.authority.as_str()),
            ("/v1/reports", "fds")
        );
    }

    #[test]
    fn secret_problems_name_the_field() {
        assert_eq!(err(r#"{"master_secrets":[]}"#).path, "master_secrets");
        assert_eq!(
            err(r#"{"master_secrets":[{"version":"1","env":"NOPE"}]}"#).path,
            "master_secrets[0].env"
        );
        assert_eq!(
            err(r#"{"master_secrets":[{"version":"1","env":"SHORT"}]}"#).path,
            "master_secrets[0].env"
        );
        assert_eq!(
            err(r#"{"master_secrets":[{"version":"1","env":"BAD"}]}"#).path,
            "master_secrets[0].env"
        );
        assert_eq!(
            err(r#"{"master_secrets":[{"version":"a:b","env":"K1"}]}"#).path,
            "master_secrets[0].version"
        );
        assert_eq!(
            err(r#"{"master_secrets":[{"version":"1","env":"K1"},{"version":"1","env":"K1"}]}"#)
                .path,
            "master_secrets[1].version"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = load(br#"{"master_secrets":[{"version":"1","env":"K1"}]}"#, &env).unwrap();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains("key: ["), "{dbg}");
    }

    #[test]
    fn other_problems_name_the_field() {
        let s = r#""master_secrets":[{"version":"1","env":"K1"}]"#;
        for (json, path) in [
            (
                format!(r#"{{{s},"required_components":["@nope"]}}"#),
                "required_components[0]",
            ),
            (
                format!(r#"{{{s},"required_components":[]}}"#),
                "required_components",
            ),
            (
                format!(r#"{{{s},"routes":[{{"name":"a","prefix":"/a","components":["X-Up"]}}]}}"#),
                "routes[0].components[0]",
            ),
            (
                format!(r#"{{{s},"routes":[{{"name":"a","prefix":"a"}}]}}"#),
                "routes[0].prefix",
            ),
            (format!(r#"{{{s},"max_age":"0s"}}"#), "max_age"),
            (
                format!(r#"{{{s},"nonce_store":{{"shards":0}}}}"#),
                "nonce_store.shards",
            ),
            (
                format!(r#"{{{s},"nonce_store":{{"max_entries":3}}}}"#),
                "nonce_store.max_entries",
            ),
            (format!(r#"{{{s},"label":"Sig"}}"#), "label"),
            (
                format!(r#"{{{s},"reports":{{"cluster":"fds","per_minute":0}}}}"#),
                "reports.per_minute",
            ),
            (
                format!(r#"{{{s},"reports":{{"cluster":"fds","max_suspects":0}}}}"#),
                "reports.max_suspects",
            ),
            (
                format!(r#"{{{s},"reports":{{"cluster":"fds","max_suspects":4097}}}}"#),
                "reports.max_suspects",
            ),
            (
                format!(r#"{{{s},"reports":{{"cluster":"fds","max_suspect":9}}}}"#),
                "reports.max_suspect",
            ),
            (format!(r#"{{{s},"unknown":1}}"#), "unknown"),
        ] {
            assert_eq!(err(&json).path, path, "{json}");
        }
    }
}
