//! sanitize's JSON config: the serde shape ([`SanitizeConfig`], unknown
//! fields rejected, JSON Schema derived) and its compiled form ([`Compiled`]),
//! built once in `on_configure`.

use std::collections::BTreeMap;

use filter_core::config::{validate_header_name, BodyHold, ConfigError};
use filter_core::route::RouteMatcher;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default request body limit: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Upper bound for any body limit: bodies are buffered in the proxy.
pub const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;

/// The sanitize filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SanitizeConfig {
    /// Largest request body accepted on any route, in bytes (default 65536).
    /// A larger `content-length` is refused at once with 413; a body without
    /// one is handled as `unknown_length_body` says.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// A request body whose size no `content-length` announces (HTTP/1.1
    /// chunked; HTTP/2 or HTTP/3 without `content-length`): `"count"`
    /// (default) holds the headers, counts the body as it arrives and refuses
    /// it with 413 when it passes the limit, before anything reaches the
    /// upstream (this needs Envoy's `allow_on_headers_stop_iteration: true`);
    /// `"refuse"` answers 411 `length_required` at once and never holds the
    /// headers, for hosts that cannot set that flag (Istio's `WasmPlugin`).
    #[serde(default)]
    pub unknown_length_body: UnknownLengthBody,
    /// Request headers removed before anything else runs.
    #[serde(default)]
    pub remove_headers: HeaderRemoval,
    /// Defence in depth on the path that reached the filter.
    #[serde(default)]
    pub path: PathRules,
    /// Limits on every query string.
    #[serde(default)]
    pub query: QueryLimits,
    /// Per-route rules, first match wins (path prefix + methods).
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// Log and count what would be denied or rewritten, but let every request
    /// through unchanged (default false).
    #[serde(default)]
    pub dry_run: bool,
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// What to do with a request body of unannounced size (see
/// [`SanitizeConfig::unknown_length_body`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownLengthBody {
    /// Hold the headers and count the body against the limit (413 past it).
    #[default]
    Count,
    /// Refuse it with 411 `length_required`, without holding the headers.
    Refuse,
}

/// Headers a client must never send: removed from every request.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRemoval {
    /// Exact header names (lower case), e.g. `x-passport`.
    #[serde(default)]
    pub exact: Vec<String>,
    /// Header name prefixes (lower case), e.g. `x-user-`.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// Path checks. Envoy normalises the path first (`normalize_path`,
/// `merge_slashes`, escaped-slash action); what still looks like a trick
/// here is refused with 400.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRules {
    /// Longest accepted `:path` including the query, in bytes (default 4096);
    /// longer → 400 `uri_too_long`.
    #[serde(default = "default_max_path")]
    pub max_length: usize,
    /// Refuse any `;` in the path (matrix parameters), not only the
    /// `..;`/`.;` segments that are always refused (default true: an API
    /// path has no use for them, and `/api/v1/orders;x` is a classic way
    /// around a rule tied to a path; set false for an upstream that needs them).
    #[serde(default = "default_true")]
    pub reject_semicolon: bool,
    /// Refuse a path segment that ends with `.` (`/api/v1/users./7`) or
    /// begins or ends with an encoded space (`users%20`), default true:
    /// Windows/IIS drop trailing dots and spaces and some path matchers trim
    /// tokens, so such a path can reach `/api/v1/users/7` past the rules
    /// tied to it. Set false for an upstream whose names end that way.
    #[serde(default = "default_true")]
    pub reject_ambiguous_segments: bool,
    /// Route prefixes whose letter case is part of their identity (every
    /// `routes[].prefix` is one too): a path that lies under one of them
    /// only when letter case and percent-encoding are ignored
    /// (`/api/v1/Orders`, `/API/v1/transfers`, `/api/v1/%6Frders` for
    /// `/api/v1/orders`) is refused with 400 `invalid_path`. Envoy's routes
    /// and the filters' rules are case-sensitive, many upstream frameworks
    /// are not (Spring, IIS, ASP.NET): such a path would meet none of the
    /// route's rules (scopes, body rules, one-time `jti`) and still reach the
    /// route's handler. List every route prefix of the gateway (Envoy's and
    /// every filter's; `test_envoy_config.py` checks the shipped configs do).
    /// Case is folded as Unicode simple case folding does (`ſ` is `s`, the
    /// Kelvin sign is `k`), as Java's `equalsIgnoreCase` would.
    /// Default: none (only the `routes[].prefix`).
    #[serde(default)]
    pub case_sensitive_prefixes: Vec<String>,
}

fn default_max_path() -> usize {
    4096
}

fn default_true() -> bool {
    true
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            max_length: default_max_path(),
            reject_semicolon: true,
            reject_ambiguous_segments: true,
            case_sensitive_prefixes: Vec::new(),
        }
    }
}

/// Limits applied to every query string.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryLimits {
    /// Most parameters accepted (default 64); more → 400.
    #[serde(default = "default_max_params")]
    pub max_params: usize,
    /// Longest parameter name, in encoded bytes (default 128); longer → 400.
    #[serde(default = "default_max_name")]
    pub max_name_length: usize,
    /// Longest parameter value, in encoded bytes (default 1024); longer → 400.
    #[serde(default = "default_max_value")]
    pub max_value_length: usize,
}

fn default_max_params() -> usize {
    64
}
fn default_max_name() -> usize {
    128
}
fn default_max_value() -> usize {
    1024
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_params: default_max_params(),
            max_name_length: default_max_name(),
            max_value_length: default_max_value(),
        }
    }
}

/// Rules for one route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A name for logs and metrics.
    pub name: String,
    /// Path prefix, matched at segment boundaries on the normalised path.
    pub prefix: String,
    /// Match the path exactly instead of as a prefix (default false).
    #[serde(default)]
    pub exact: bool,
    /// Methods (upper case); empty or absent means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Body limit for this route, overriding the global `max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Query parameter rules by parameter name.
    #[serde(default)]
    pub query: BTreeMap<String, QueryParamRule>,
    /// JSON body rules; the body is buffered and checked only on routes that have them.
    #[serde(default)]
    pub body: Option<JsonBodyRule>,
}

/// A rule for one query parameter.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum QueryParamRule {
    /// An integer clamped into `[min, max]`. Missing → `default` (when set);
    /// repeated → one value, from the first occurrence.
    IntegerClamp {
        min: i64,
        max: i64,
        /// Value used when the parameter is missing (and when it is not an
        /// integer, with `on_invalid: "default"`).
        #[serde(default)]
        default: Option<i64>,
        /// What a value that is not an integer gets: `"default"` (replaced by
        /// `default`, or removed when there is none) or `"reject"` (400).
        #[serde(default)]
        on_invalid: OnInvalid,
    },
}

/// What to do with a value that does not parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    #[default]
    Default,
    Reject,
}

/// A JSON object body: field rules, required fields, unknown fields.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonBodyRule {
    /// Field rules by field name.
    pub fields: BTreeMap<String, FieldRule>,
    /// Fields the rule does not name: `"strip"` (default), `"reject"` (400)
    /// or `"keep"`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Deepest nesting accepted in the body (default 32).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

fn default_max_depth() -> usize {
    32
}

/// Handling of fields a body rule does not name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    #[default]
    Strip,
    Reject,
    Keep,
}

/// A rule for one body field.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum FieldRule {
    /// A JSON string; lengths count Unicode characters.
    String {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        min_length: Option<usize>,
        #[serde(default)]
        max_length: Option<usize>,
    },
    /// A JSON integer (no fraction, no exponent, not a string).
    Integer {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        min: Option<i64>,
        #[serde(default)]
        max: Option<i64>,
    },
    /// Any JSON number.
    Number {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
    /// `true` or `false`.
    Boolean {
        #[serde(default)]
        required: bool,
    },
}

impl FieldRule {
    pub fn required(&self) -> bool {
        match self {
            FieldRule::String { required, .. }
            | FieldRule::Integer { required, .. }
            | FieldRule::Number { required, .. }
            | FieldRule::Boolean { required } => *required,
        }
    }
}

/// A compiled route rule.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: String,
    pub matcher: RouteMatcher,
    pub max_body_bytes: u64,
    /// Query rules, in name order.
    pub query: Vec<(String, QueryParamRule)>,
    pub body: Option<JsonBodyRule>,
}

/// The ready-to-use configuration, shared by every request context.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub max_body_bytes: u64,
    pub unknown_length_body: UnknownLengthBody,
    pub remove_exact: Vec<String>,
    pub remove_prefixes: Vec<String>,
    pub path: PathRules,
    pub query: QueryLimits,
    pub routes: Vec<CompiledRoute>,
    /// `path.case_sensitive_prefixes` and every route prefix, compiled.
    pub case_guards: Vec<crate::path::CaseGuard>,
    pub dry_run: bool,
}

impl Compiled {
    /// The first route that matches, if any.
    pub fn route(&self, method: &str, path: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.matcher.matches(method, path))
    }

    /// The settings that make sanitize hold the request headers while it
    /// reads the body ([`BodyHold`]; empty: it never does, and runs correctly
    /// without Envoy's `allow_on_headers_stop_iteration`). These are exactly
    /// the cases where `Request::on_headers` answers `WaitBody`: a route
    /// with a JSON body rule, and a body without `content-length` under
    /// `unknown_length_body: "count"`; a dry run never holds (it lets the
    /// headers go on and only logs). The native test
    /// `body_hold_lists_exactly_what_waits_for_the_body` checks the two
    /// against each other.
    pub fn body_hold(&self) -> Vec<BodyHold> {
        if self.dry_run {
            return Vec::new();
        }
        let mut out: Vec<BodyHold> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.body.is_some())
            .map(|(i, r)| {
                BodyHold::new(
                    format!("routes[{i}].body"),
                    format!(
                        "route {:?}: the JSON body rule reads the whole body before the headers go on",
                        r.name
                    ),
                )
            })
            .collect();
        if self.unknown_length_body == UnknownLengthBody::Count {
            out.push(BodyHold::new(
                "unknown_length_body",
                "\"count\" (the default): a body without content-length is counted before the \
                 headers go on (\"refuse\" answers 411 instead and holds nothing)",
            ));
        }
        out
    }
}

fn check_body_limit(path: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 || v > MAX_BODY_LIMIT {
        return Err(ConfigError::at(
            path,
            format!("must be between 1 and {MAX_BODY_LIMIT} bytes"),
        ));
    }
    Ok(())
}

impl TryFrom<SanitizeConfig> for Compiled {
    type Error = ConfigError;

    fn try_from(c: SanitizeConfig) -> Result<Self, ConfigError> {
        check_body_limit("max_body_bytes", c.max_body_bytes)?;
        for (i, n) in c.remove_headers.exact.iter().enumerate() {
            validate_header_name(&format!("remove_headers.exact[{i}]"), n)?;
        }
        for (i, n) in c.remove_headers.prefixes.iter().enumerate() {
            validate_header_name(&format!("remove_headers.prefixes[{i}]"), n)?;
        }
        if c.path.max_length < 16 {
            return Err(ConfigError::at("path.max_length", "must be at least 16"));
        }
        if c.query.max_params == 0 {
            return Err(ConfigError::at("query.max_params", "must be at least 1"));
        }
        let mut case_guards: Vec<crate::path::CaseGuard> = Vec::new();
        for (i, p) in c.path.case_sensitive_prefixes.iter().enumerate() {
            let at = format!("path.case_sensitive_prefixes[{i}]");
            RouteMatcher::new(&at, p, &[])
                .map_err(|_| ConfigError::at(at, "must start with '/' and hold no '?' or '#'"))?;
            crate::path::CaseGuard::push_new(&mut case_guards, p);
        }
        let mut routes = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.name.is_empty() {
                return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
            }
            let matcher = RouteMatcher::new(&at, &r.prefix, &r.methods)?.exact(r.exact);
            let max_body_bytes = match r.max_body_bytes {
                Some(v) => {
                    check_body_limit(&format!("{at}.max_body_bytes"), v)?;
                    v
                }
                None => c.max_body_bytes,
            };
            for (name, rule) in &r.query {
                let p = format!("{at}.query.{name}");
                if name.is_empty() {
                    return Err(ConfigError::at(p, "parameter name must not be empty"));
                }
                match rule {
                    QueryParamRule::IntegerClamp {
                        min, max, default, ..
                    } => {
                        if min > max {
                            return Err(ConfigError::at(format!("{p}.min"), "must not exceed max"));
                        }
                        if let Some(d) = default {
                            if d < min || d > max {
                                return Err(ConfigError::at(
                                    format!("{p}.default"),
                                    format!("must lie within [{min}, {max}]"),
                                ));
                            }
                        }
                    }
                }
            }
            if let Some(body) = &r.body {
                if body.max_depth == 0 || body.max_depth > 128 {
                    return Err(ConfigError::at(
                        format!("{at}.body.max_depth"),
                        "must be between 1 and 128",
                    ));
                }
                for (name, f) in &body.fields {
                    let p = format!("{at}.body.fields.{name}");
                    if name.is_empty() {
                        return Err(ConfigError::at(p, "field name must not be empty"));
                    }
                    let bad = match f {
                        FieldRule::String {
                            min_length: Some(a),
                            max_length: Some(b),
                            ..
                        } => a > b,
                        FieldRule::Integer {
                            min: Some(a),
                            max: Some(b),
                            ..
                        } => a > b,
                        FieldRule::Number {
                            min: Some(a),
                            max: Some(b),
                            ..
                        } => a > b || a.is_nan() || b.is_nan(),
                        _ => false,
                    };
                    if bad {
                        return Err(ConfigError::at(p, "lower bound exceeds upper bound"));
                    }
                }
            }
            crate::path::CaseGuard::push_new(&mut case_guards, &r.prefix);
            routes.push(CompiledRoute {
                name: r.name,
                matcher,
                max_body_bytes,
                query: r.query.into_iter().collect(),
                body: r.body,
            });
        }
        Ok(Compiled {
            max_body_bytes: c.max_body_bytes,
            unknown_length_body: c.unknown_length_body,
            remove_exact: c.remove_headers.exact,
            remove_prefixes: c.remove_headers.prefixes,
            path: c.path,
            query: c.query,
            routes,
            case_guards,
            dry_run: c.dry_run,
        })
    }
}

/// Parses and compiles a JSON config.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    filter_core::config::load::<SanitizeConfig, Compiled>(bytes)
}

/// The JSON Schema of [`SanitizeConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(SanitizeConfig)).unwrap_or_default()
}
