//! passport's JSON config: the serde shape ([`PassportConfig`], unknown
//! fields rejected, JSON Schema derived) and its compiled form ([`Compiled`]),
//! built once in `on_configure` (the signing key is parsed there, never per
//! request).

use std::time::Duration;

use filter_core::config::{validate_header_name, ConfigError};
use filter_core::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::signer::Signer;
pub use crate::signer::SigningKey;

/// Claims the filter sets itself; the issuer's context can never override them.
pub const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "ctx_iat"];
/// Most cache slots a config may ask for (each is one shared-data key).
pub const MAX_SLOTS: u32 = 65_536;

/// The passport filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassportConfig {
    /// The gateway's name: the passport's `iss` claim and the namespace of
    /// its cache keys in shared data (web and app keep separate caches).
    /// Lower case letters, digits, `-` and `_`.
    pub gateway: String,
    /// Where the context is looked up.
    pub issuer: IssuerConfig,
    /// The signed token.
    pub token: TokenConfig,
    /// The shared cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Requests waiting for a lookup.
    #[serde(default)]
    pub coalesce: CoalesceConfig,
    /// What an unknown user (issuer 404) gets: `"deny"` (default, 403
    /// `unknown_user`) or `"continue"` (forwarded without a passport).
    #[serde(default)]
    pub on_unknown_user: OnUnknownUser,
    /// Issuer down, slow or broken.
    #[serde(default)]
    pub on_issuer_error: OnIssuerError,
    /// Request headers derived from the context (client copies are always
    /// removed first, whether or not a value is set).
    #[serde(default)]
    pub headers: Vec<DerivedHeader>,
    /// Dry run (default false): a request that would be refused (unknown
    /// user with `on_unknown_user: "deny"`, issuer failure without a stale
    /// passport) is logged (`"dry_run":true`), counted in
    /// `passport_dry_run_denied_total` and forwarded **without** a passport.
    #[serde(default)]
    pub dry_run: bool,
}

/// The issuer service and how to ask it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Envoy cluster of the issuer (default `issuer`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// `:authority` of the lookup request (default `issuer`).
    #[serde(default = "default_cluster")]
    pub authority: String,
    /// Path and query of the lookup; `{user}` and `{device}` are replaced by
    /// the verified identity's values, percent-encoded. A query parameter
    /// whose whole value is `{device}` is dropped when the identity has no
    /// device. Default `/v1/context?user={user}&device={device}`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Timeout of one lookup (default `500ms`).
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Largest issuer response body accepted, in bytes (default 8192); a
    /// larger one counts as an issuer error.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// After a failed lookup for a user, new requests for that user fail at
    /// once (503, or the stale passport) for this long instead of queueing
    /// another lookup against a failing issuer (default `1s`; `0s` disables).
    #[serde(default = "default_error_backoff")]
    pub error_backoff: ConfigDuration,
}

fn default_cluster() -> String {
    "issuer".into()
}
fn default_path() -> String {
    "/v1/context?user={user}&device={device}".into()
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(500))
}
fn default_max_response() -> usize {
    8192
}
fn default_error_backoff() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}

/// The signed passport.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of a passport: `exp = iat + ttl` (default `60s`). Must be
    /// longer than `cache.ttl`: a cached passport is forwarded until the
    /// cache entry expires, so it always has `ttl - cache.ttl` left.
    #[serde(default = "default_token_ttl")]
    pub ttl: ConfigDuration,
    /// The key that signs (ES256). Every key that may still verify a live
    /// passport is listed in the published JWKS; this one names its `kid`.
    pub signing_key: SigningKey,
    /// Issuer context fields copied into the passport, under the same name
    /// (default `device_id`, `consents`, `risk_level`, `tier`). Absent or
    /// `null` fields are omitted. Reserved names (`iss`, `sub`, `iat`, `exp`,
    /// ...) are refused.
    #[serde(default = "default_claims")]
    pub claims: Vec<String>,
    /// Optional `aud` claim.
    #[serde(default)]
    pub audience: Option<String>,
}

fn default_token_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn default_claims() -> Vec<String> {
    ["device_id", "consents", "risk_level", "tier"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// The shared cache (process-wide, shared by every worker).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a looked-up context and its passport are served (default `30s`).
    #[serde(default = "default_cache_ttl")]
    pub ttl: ConfigDuration,
    /// How long an unknown user (issuer 404) is remembered (default `5s`).
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: ConfigDuration,
    /// Number of slots (default 4096, at most 65536): fixed shared-data keys,
    /// created at configure time. A user (+ device) maps to one slot by hash;
    /// a new entry replaces whatever the slot held (direct-mapped).
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Largest encoded slot, in bytes (default 4096); a larger entry is
    /// forwarded but not cached.
    #[serde(default = "default_max_entry")]
    pub max_entry_bytes: usize,
}

fn default_cache_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_negative_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_slots() -> u32 {
    4096
}
fn default_max_entry() -> usize {
    4096
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: default_cache_ttl(),
            negative_ttl: default_negative_ttl(),
            slots: default_slots(),
            max_entry_bytes: default_max_entry(),
        }
    }
}

/// Requests that wait for a lookup (their own or another worker's).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoalesceConfig {
    /// Longest a request waits for its context before 503 (default `2s`;
    /// must exceed `issuer.timeout`).
    #[serde(default = "default_max_wait")]
    pub max_wait: ConfigDuration,
    /// How often a worker re-checks the cache for its waiting requests, and
    /// the longest delay before it starts a lookup (default `2ms`).
    #[serde(default = "default_poll")]
    pub poll_interval: ConfigDuration,
    /// Most requests waiting per worker (default 1024); more → 503 at once.
    #[serde(default = "default_max_waiters")]
    pub max_waiters: usize,
}

fn default_max_wait() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_poll() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(2))
}
fn default_max_waiters() -> usize {
    1024
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            max_wait: default_max_wait(),
            poll_interval: default_poll(),
            max_waiters: default_max_waiters(),
        }
    }
}

/// What an unknown user gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknownUser {
    /// 403 `unknown_user`.
    #[default]
    Deny,
    /// Forwarded without a passport (and without derived headers).
    Continue,
}

/// Issuer failure handling.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnIssuerError {
    /// Serve the last known context for the user, re-signed with a fresh
    /// `iat`/`exp` and its original `ctx_iat`, when it was looked up at most
    /// this long ago (default `0s`: never; the request gets 503).
    #[serde(default)]
    pub serve_stale_for: ConfigDuration,
    /// `Retry-After` of the 503, in seconds (default 1).
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u32,
}

fn default_retry_after() -> u32 {
    1
}

impl Default for OnIssuerError {
    fn default() -> Self {
        OnIssuerError {
            serve_stale_for: ConfigDuration::default(),
            retry_after_seconds: default_retry_after(),
        }
    }
}

/// A request header set from a passport claim.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DerivedHeader {
    /// Header name (lower case), e.g. `x-user-consent`.
    pub name: String,
    /// A claim of `token.claims`: strings as they are, arrays joined with
    /// `,`, numbers and booleans as JSON; absent or `null` → no header.
    pub claim: String,
}

/// The ready-to-use configuration.
#[derive(Debug)]
pub struct Compiled {
    pub gateway: String,
    pub cluster: String,
    pub authority: String,
    pub path: PathTemplate,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub error_backoff_ms: u64,
    pub token_ttl_s: u64,
    pub claims: Vec<String>,
    pub audience: Option<String>,
    pub signer: Signer,
    pub cache_ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub slots: u32,
    pub max_entry_bytes: usize,
    pub max_wait_ms: u64,
    pub poll_interval: Duration,
    pub max_waiters: usize,
    pub on_unknown_user: OnUnknownUser,
    pub stale_for_ms: u64,
    pub retry_after: String,
    /// (header name, claim name)
    pub headers: Vec<(String, String)>,
    pub dry_run: bool,
}

/// The lookup path, split at its placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// `{user}`; `true` in the query.
    User(bool),
    /// `{device}` not droppable; `true` in the query.
    Device(bool),
    /// `[&]name=` immediately followed by `{device}` up to the next `&` or
    /// the end: dropped when there is no device.
    DeviceParam(String),
}

/// Characters kept as they are in a query value: RFC 3986 unreserved.
const VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl PathTemplate {
    pub fn parse(t: &str) -> Result<Self, String> {
        if !t.starts_with('/') {
            return Err("must start with '/'".into());
        }
        if t.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err("must be printable ASCII without spaces".into());
        }
        let mut parts = Vec::new();
        let mut rest = t;
        let mut saw_user = false;
        let mut in_query = false;
        while let Some(i) = rest.find('{') {
            let (lit, tail) = rest.split_at(i);
            in_query |= lit.contains('?');
            let end = tail.find('}').ok_or("unclosed '{'")?;
            let name = tail.get(1..end).unwrap_or_default();
            let after = tail.get(end + 1..).unwrap_or_default();
            match name {
                "user" => {
                    saw_user = true;
                    parts.push(Part::Lit(lit.to_string()));
                    parts.push(Part::User(in_query));
                }
                "device" => {
                    // `...[?&]device={device}` at a parameter's end → droppable.
                    let whole_value = after.is_empty() || after.starts_with('&');
                    let param_start = lit.rfind(['&', '?']);
                    match param_start {
                        Some(p) if whole_value && in_query && lit.ends_with('=') => {
                            let (head, param) = lit.split_at(p);
                            parts.push(Part::Lit(head.to_string()));
                            parts.push(Part::DeviceParam(param.to_string()));
                        }
                        _ => {
                            parts.push(Part::Lit(lit.to_string()));
                            parts.push(Part::Device(in_query));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; use {{user}} or {{device}}"
                    ))
                }
            }
            rest = after;
        }
        if rest.contains('}') {
            return Err("stray '}'".into());
        }
        parts.push(Part::Lit(rest.to_string()));
        if !saw_user {
            return Err("must contain {user}".into());
        }
        Ok(PathTemplate { parts })
    }

    /// Whether [`PathTemplate::render`] writes a path for this identity
    /// (no value in the path part is only dots). Cheap: no allocation, so
    /// it runs on every request, cache hits included.
    pub fn renders(&self, user: &str, device: Option<&str>) -> bool {
        let dots = |s: &str| !s.is_empty() && s.bytes().all(|b| b == b'.');
        !self.parts.iter().any(|p| match p {
            Part::User(false) => dots(user),
            Part::Device(false) => device.is_some_and(dots),
            _ => false,
        })
    }

    /// The lookup path for an identity; values percent-encoded. `None` when
    /// a value in the path (not the query) is only dots: `.` and `..` are
    /// dot-segments, and `%2E%2E` is one too to a server that decodes
    /// before it resolves them (RFC 3986 §6.2.2.2), so `/v1/users/../x`
    /// cannot be written safely at all; such an identity is never looked up.
    pub fn render(&self, user: &str, device: Option<&str>) -> Option<String> {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, VALUE).to_string();
        if !self.renders(user, device) {
            return None;
        }
        let mut out = String::new();
        let mut dropped_first_param = false;
        for p in &self.parts {
            match p {
                Part::Lit(s) => {
                    if dropped_first_param {
                        // The dropped parameter opened the query: the next
                        // one takes its '?'.
                        dropped_first_param = false;
                        if let Some(rest) = s.strip_prefix('&') {
                            out.push('?');
                            out.push_str(rest);
                            continue;
                        }
                    }
                    out.push_str(s);
                }
                Part::User(_) => out.push_str(&enc(user)),
                Part::Device(_) => out.push_str(&enc(device.unwrap_or_default())),
                Part::DeviceParam(param) => match device {
                    Some(d) => {
                        out.push_str(param);
                        out.push_str(&enc(d));
                    }
                    None => dropped_first_param = param.starts_with('?'),
                },
            }
        }
        Some(out)
    }
}

fn ms(d: ConfigDuration) -> u64 {
    u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX)
}

fn valid_gateway(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl TryFrom<PassportConfig> for Compiled {
    type Error = ConfigError;

    fn try_from(c: PassportConfig) -> Result<Self, ConfigError> {
        if !valid_gateway(&c.gateway) {
            return Err(ConfigError::at(
                "gateway",
                "must be 1-32 lower case letters, digits, '-' or '_'",
            ));
        }
        if c.issuer.cluster.is_empty() {
            return Err(ConfigError::at("issuer.cluster", "must not be empty"));
        }
        if c.issuer.authority.is_empty() {
            return Err(ConfigError::at("issuer.authority", "must not be empty"));
        }
        let path =
            PathTemplate::parse(&c.issuer.path).map_err(|e| ConfigError::at("issuer.path", e))?;
        if c.issuer.timeout.0.is_zero() {
            return Err(ConfigError::at("issuer.timeout", "must be positive"));
        }
        if c.issuer.max_response_bytes == 0 || c.issuer.max_response_bytes > 1024 * 1024 {
            return Err(ConfigError::at(
                "issuer.max_response_bytes",
                "must be within 1..=1048576",
            ));
        }
        let token_ttl_s = c.token.ttl.0.as_secs();
        if token_ttl_s == 0 || c.token.ttl.0.subsec_nanos() != 0 {
            return Err(ConfigError::at(
                "token.ttl",
                "must be a positive whole number of seconds",
            ));
        }
        if c.cache.ttl.0 >= c.token.ttl.0 {
            return Err(ConfigError::at(
                "cache.ttl",
                "must be shorter than token.ttl, or a cached passport could be forwarded expired",
            ));
        }
        let signer = Signer::from_config(&c.token.signing_key)?;
        for (i, claim) in c.token.claims.iter().enumerate() {
            if claim.is_empty() || RESERVED_CLAIMS.contains(&claim.as_str()) {
                return Err(ConfigError::at(
                    format!("token.claims[{i}]"),
                    format!("{claim:?} is empty or reserved (the filter sets {RESERVED_CLAIMS:?})"),
                ));
            }
        }
        if c.cache.slots == 0 || c.cache.slots > MAX_SLOTS {
            return Err(ConfigError::at(
                "cache.slots",
                format!("must be within 1..={MAX_SLOTS}"),
            ));
        }
        if c.cache.max_entry_bytes < 256 {
            return Err(ConfigError::at(
                "cache.max_entry_bytes",
                "must be at least 256",
            ));
        }
        if c.coalesce.max_wait.0 <= c.issuer.timeout.0 {
            return Err(ConfigError::at(
                "coalesce.max_wait",
                "must be longer than issuer.timeout, or waiters give up before the lookup does",
            ));
        }
        if c.coalesce.poll_interval.0.is_zero()
            || c.coalesce.poll_interval.0 > Duration::from_secs(1)
        {
            return Err(ConfigError::at(
                "coalesce.poll_interval",
                "must be within 1ms..=1s",
            ));
        }
        if c.coalesce.max_waiters == 0 {
            return Err(ConfigError::at("coalesce.max_waiters", "must be positive"));
        }
        let mut headers = Vec::with_capacity(c.headers.len());
        for (i, h) in c.headers.iter().enumerate() {
            validate_header_name(&format!("headers[{i}].name"), &h.name)?;
            if h.name == filter_core::headers::PASSPORT || h.name.starts_with(':') {
                return Err(ConfigError::at(
                    format!("headers[{i}].name"),
                    "reserved header",
                ));
            }
            if !c.token.claims.contains(&h.claim) {
                return Err(ConfigError::at(
                    format!("headers[{i}].claim"),
                    format!("{:?} is not one of token.claims", h.claim),
                ));
            }
            headers.push((h.name.clone(), h.claim.clone()));
        }
        Ok(Compiled {
            gateway: c.gateway,
            cluster: c.issuer.cluster,
            authority: c.issuer.authority,
            path,
            timeout: c.issuer.timeout.0,
            max_response_bytes: c.issuer.max_response_bytes,
            error_backoff_ms: ms(c.issuer.error_backoff),
            token_ttl_s,
            claims: c.token.claims,
            audience: c.token.audience,
            signer,
            cache_ttl_ms: ms(c.cache.ttl),
            negative_ttl_ms: ms(c.cache.negative_ttl),
            slots: c.cache.slots,
            max_entry_bytes: c.cache.max_entry_bytes,
            max_wait_ms: ms(c.coalesce.max_wait),
            poll_interval: c.coalesce.poll_interval.0,
            max_waiters: c.coalesce.max_waiters,
            on_unknown_user: c.on_unknown_user,
            stale_for_ms: ms(c.on_issuer_error.serve_stale_for),
            retry_after: c.on_issuer_error.retry_after_seconds.to_string(),
            headers,
            dry_run: c.dry_run,
        })
    }
}

/// Parses and compiles a JSON config.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    filter_core::config::load::<PassportConfig, Compiled>(bytes)
}

/// The JSON Schema of [`PassportConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PassportConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_template_encodes_values() {
        let t = PathTemplate::parse("/v1/context?user={user}&device={device}").unwrap();
        assert_eq!(
            t.render("a b&c", Some("d/1")).as_deref(),
            Some("/v1/context?user=a%20b%26c&device=d%2F1")
        );
    }

    #[test]
    fn device_parameter_is_dropped_without_a_device() {
        let t = PathTemplate::parse("/v1/context?user={user}&device={device}").unwrap();
        assert_eq!(
            t.render("alice", None).as_deref(),
            Some("/v1/context?user=alice")
        );
        let t = PathTemplate::parse("/v1/context?device={device}&user={user}").unwrap();
        assert_eq!(
            t.render("alice", None).as_deref(),
            Some("/v1/context?user=alice")
        );
        assert_eq!(
            t.render("alice", Some("d1")).as_deref(),
            Some("/v1/context?device=d1&user=alice")
        );
    }

    #[test]
    fn device_inside_the_path_is_kept_empty() {
        let t = PathTemplate::parse("/v1/users/{user}/devices/{device}").unwrap();
        assert_eq!(t.render("u", None).as_deref(), Some("/v1/users/u/devices/"));
        assert_eq!(
            t.render("u", Some("d")).as_deref(),
            Some("/v1/users/u/devices/d")
        );
    }

    #[test]
    fn an_identity_that_would_be_a_dot_segment_is_never_rendered() {
        let t = PathTemplate::parse("/v1/users/{user}/devices/{device}").unwrap();
        assert_eq!(t.render("..", None), None);
        assert_eq!(t.render(".", Some("d")), None);
        assert_eq!(t.render("u", Some("..")), None);
        assert_eq!(t.render("...", None), None);
        // Dots inside a value are ordinary characters.
        assert_eq!(
            t.render("a..b", Some(".d")).as_deref(),
            Some("/v1/users/a..b/devices/.d")
        );
        // In the query, dots are data: no path resolves them.
        let t = PathTemplate::parse("/v1/context?user={user}&device={device}").unwrap();
        assert_eq!(
            t.render("..", Some("..")).as_deref(),
            Some("/v1/context?user=..&device=..")
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "v1?user={user}",
            "/v1?device={device}",
            "/v1?u={usr}",
            "/v1?u={user",
            "/a b/{user}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
