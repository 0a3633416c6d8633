//! jwt's JSON config: the serde shape ([`JwtConfig`], unknown fields
//! rejected, JSON Schema derived) and its compiled form ([`Compiled`]),
//! built once in `on_configure`. Reference: `docs/filters/jwt.md`.

use std::time::Duration;

use filter_core::config::{validate_header_name, ConfigError};
use filter_core::duration::ConfigDuration;
use filter_core::route::RouteMatcher;
use jsonwebtoken::{Algorithm, Validation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::jwks::{self, KeySet, Strictness};

/// Default largest token accepted, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;

/// The jwt filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Token issuers this gateway trusts (at least one). A token's unverified
    /// `iss` picks the provider; a token from no listed issuer is refused.
    pub providers: Vec<ProviderConfig>,
    /// Per-route rules, first match wins (path prefix + methods).
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// What a request that matches no route needs (default `"required"`:
    /// unknown routes are closed).
    #[serde(default = "default_requirement")]
    pub default_requirement: Requirement,
    /// `realm` of the `WWW-Authenticate` challenge (default `"api"`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Largest token accepted, in bytes (default 8192, at most 65536).
    /// Longer tokens are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// The per-worker verified-token cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The process-wide store of used `jti`s (routes with `one_time_jti`).
    #[serde(default)]
    pub jti_store: JtiStoreConfig,
    /// The store every replica of the gateway shares (Redis behind the
    /// gateway-store sidecar, docs/gateway-store.md). Set: a one-time route
    /// claims each `jti` there (one callout; the request waits at most
    /// `timeout`), and `jti_store` above is only this replica's first-level
    /// cache that refuses a replay it already knows without a round trip.
    /// Absent: `jti_store` alone decides, which holds per Envoy process only
    /// (a replay sent to another replica, or after a restart, is accepted).
    #[serde(default)]
    pub shared_store: Option<filter_core::store::SharedStoreConfig>,
    /// Dry run (default false): every check runs, but a request that would
    /// be refused is logged (`"dry_run":true`), counted in
    /// `jwt_dry_run_denied_total` and let through unchanged — without an
    /// identity and without forwarded claims (client copies of the claim
    /// headers are still removed).
    #[serde(default)]
    pub dry_run: bool,
}

fn default_requirement() -> Requirement {
    Requirement::Required
}
fn default_realm() -> String {
    "api".into()
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

/// A trusted issuer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A name for logs, metrics and shared-data keys (`[a-z0-9_-]`, ≤ 32).
    pub name: String,
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (at least one); the token's `aud` (string or
    /// array) must contain one of them.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (default: all supported asymmetric
    /// ones). Each key is further bound to the algorithms of its type.
    #[serde(default = "all_algorithms")]
    pub algorithms: Vec<Alg>,
    /// Tolerance for `exp`, `nbf` and `iat` (default `"60s"`, at most `"5m"`).
    #[serde(default = "default_skew")]
    pub clock_skew: ConfigDuration,
    /// Where tokens are read (default: `Authorization: Bearer`).
    #[serde(default = "default_sources")]
    pub sources: Vec<TokenSource>,
    /// The verification keys.
    pub jwks: JwksSource,
    /// Claims copied to request headers for the upstream after verification.
    /// These headers are removed from every incoming request first, on every
    /// route, so a client can never supply them.
    #[serde(default)]
    pub forward_claims: Vec<ClaimHeader>,
    /// Keep the token's header for the upstream (default false: a header
    /// source is removed once the token is verified, and on `none` routes,
    /// where nothing verifies it, a header holding a token of the source's
    /// scheme is removed too; one provider with `forward_token: true` keeps
    /// tokens on `none` routes for all, since an unchecked token names no
    /// provider). Removing a header removes all its lines.
    #[serde(default)]
    pub forward_token: bool,
}

fn all_algorithms() -> Vec<Alg> {
    vec![
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ]
}
fn default_skew() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn default_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header {
        name: "authorization".into(),
        prefix: Some("Bearer ".into()),
    }]
}

/// Supported signature algorithms (JWS `alg` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub fn algorithm(self) -> Algorithm {
        match self {
            Alg::RS256 => Algorithm::RS256,
            Alg::RS384 => Algorithm::RS384,
            Alg::RS512 => Algorithm::RS512,
            Alg::PS256 => Algorithm::PS256,
            Alg::PS384 => Algorithm::PS384,
            Alg::PS512 => Algorithm::PS512,
            Alg::ES256 => Algorithm::ES256,
            Alg::ES384 => Algorithm::ES384,
            Alg::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenSource {
    /// A request header (lower-case name); `prefix` (e.g. `"Bearer "`,
    /// matched case-insensitively) is required and removed when set.
    Header {
        name: String,
        #[serde(default)]
        prefix: Option<String>,
    },
    /// A cookie by name.
    Cookie { name: String },
}

/// A claim copied to a request header.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeader {
    /// Top-level claim name (`sub`, `scope`, …). Strings are copied as they
    /// are, numbers and booleans as JSON, arrays of strings space-separated;
    /// objects and values with control characters are not forwarded.
    pub claim: String,
    /// Lower-case header name.
    pub header: String,
}

/// The keys of a provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum JwksSource {
    /// A JWKS document (`{"keys": [...]}`) in the config.
    Inline(serde_json::Value),
    /// A JWKS fetched through an Envoy cluster.
    Remote(RemoteJwks),
}

/// A remote JWKS, fetched from the root context on a timer. One worker
/// fetches per interval (a lease in shared data); every worker reads the
/// shared copy.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    /// Envoy cluster serving the JWKS.
    pub cluster: String,
    /// Request path, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// `:authority` of the request (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Fetch timeout (default `"2s"`).
    #[serde(default = "default_fetch_timeout")]
    pub timeout: ConfigDuration,
    /// How long a fetched JWKS is fresh (default `"5m"`). It is refreshed
    /// when it is older than 80% of this.
    #[serde(default = "default_cache_duration")]
    pub cache_duration: ConfigDuration,
    /// How long past `cache_duration` the last good JWKS keeps being used
    /// while fetches fail (default `"1h"`); after that tokens are refused.
    #[serde(default = "default_max_stale")]
    pub max_stale: ConfigDuration,
    /// Wait between failed fetches, and the least time between two
    /// refetches caused by an unknown `kid` (default `"10s"`).
    #[serde(default = "default_retry_interval")]
    pub retry_interval: ConfigDuration,
}

fn default_fetch_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_cache_duration() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_max_stale() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}
fn default_retry_interval() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// A valid token (401 without).
    Required,
    /// No token is fine; a token that is present must be valid.
    Optional,
    /// Tokens are not looked at.
    None,
}

/// Scopes a route needs (`scope` claim, space-separated, RFC 9068).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ScopeRule {
    /// Every listed scope.
    AllOf(Vec<String>),
    /// At least one listed scope.
    AnyOf(Vec<String>),
}

impl ScopeRule {
    /// Does a token with `granted` scopes satisfy the rule?
    pub fn satisfied_by(&self, granted: &[String]) -> bool {
        match self {
            ScopeRule::AllOf(need) => need.iter().all(|s| granted.contains(s)),
            ScopeRule::AnyOf(need) => need.iter().any(|s| granted.contains(s)),
        }
    }
    /// The scopes, space-separated (for `WWW-Authenticate`).
    pub fn joined(&self) -> String {
        match self {
            ScopeRule::AllOf(v) | ScopeRule::AnyOf(v) => v.join(" "),
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
    /// Match the path exactly instead of as a prefix (default false): an
    /// open `/health` must not open `/health/anything`.
    #[serde(default)]
    pub exact: bool,
    /// Methods (upper case); empty or absent means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// What the route needs.
    pub requirement: Requirement,
    /// Scopes the token must carry (403 `insufficient_scope` otherwise).
    #[serde(default)]
    pub scopes: Option<ScopeRule>,
    /// Each token `jti` is accepted once on this route (tokens without `jti`
    /// are refused); needs `requirement: "required"`.
    #[serde(default)]
    pub one_time_jti: bool,
}

/// The per-worker verified-token cache.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most entries per worker (default 1024, at most 65536; 0 disables the
    /// cache). The token text held is also capped at 1 MiB per worker.
    /// Entries expire with their token; when full, expired entries go
    /// first, then the oldest.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
}

fn default_cache_entries() -> usize {
    1024
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: default_cache_entries(),
        }
    }
}

/// The one-time `jti` store, shared by all workers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JtiStoreConfig {
    /// Most `jti`s remembered at once, process-wide (default 65536, at most
    /// 1048576). Split evenly over the time buckets; a token whose bucket is
    /// full is refused with 503 (never forgotten early).
    #[serde(default = "default_jti_entries")]
    pub max_entries: usize,
    /// Longest remaining lifetime (`exp` − now) of a token accepted on a
    /// one-time route (default `"1h"`, at most `"24h"`). The store remembers
    /// each `jti` until its token expires, so this bounds how long it keeps it.
    #[serde(default = "default_jti_lifetime")]
    pub max_token_lifetime: ConfigDuration,
}

fn default_jti_entries() -> usize {
    65536
}
fn default_jti_lifetime() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}

impl Default for JtiStoreConfig {
    fn default() -> Self {
        JtiStoreConfig {
            max_entries: default_jti_entries(),
            max_token_lifetime: default_jti_lifetime(),
        }
    }
}

// ---------------------------------------------------------------- compiled

/// Where a compiled provider's keys come from.
#[derive(Debug, Clone)]
pub enum Keys {
    Inline(std::rc::Rc<KeySet>),
    Remote(RemoteJwks),
}

/// A provider ready to verify.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub skew_secs: u64,
    pub sources: Vec<TokenSource>,
    pub keys: Keys,
    pub forward_claims: Vec<ClaimHeader>,
    pub forward_token: bool,
    /// One `jsonwebtoken` validation per allowed algorithm.
    pub validations: Vec<(Algorithm, Validation)>,
}

impl Provider {
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

/// A compiled route rule.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatcher,
    pub requirement: Requirement,
    pub scopes: Option<ScopeRule>,
    pub one_time_jti: bool,
}

/// The ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub providers: Vec<Provider>,
    pub routes: Vec<Route>,
    pub default_requirement: Requirement,
    /// `Bearer realm="…"`, escaped.
    pub challenge: String,
    pub max_token_bytes: usize,
    pub cache_entries: usize,
    pub jti_max_entries: usize,
    pub jti_max_lifetime: Duration,
    /// Where one-time `jti`s are claimed across replicas (`None`: this
    /// process's `jti` store alone).
    pub shared_store: Option<filter_core::store::SharedStore>,
    /// Every header a provider forwards claims into (stripped first).
    pub forwarded_headers: Vec<String>,
    /// Union of the providers' sources, in order, without duplicates.
    pub sources: Vec<TokenSource>,
    pub dry_run: bool,
}

impl Compiled {
    /// The first route the request falls under.
    pub fn route(&self, method: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(method, path))
    }
    pub fn provider_by_issuer(&self, iss: &str) -> Option<(usize, &Provider)> {
        self.providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.issuer == iss)
    }
    pub fn has_remote_keys(&self) -> bool {
        self.providers
            .iter()
            .any(|p| matches!(p.keys, Keys::Remote(_)))
    }
}

fn check_name(path: &str, n: &str) -> Result<(), ConfigError> {
    if n.is_empty()
        || n.len() > 32
        || !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::at(
            path,
            "must be 1-32 characters of [a-z0-9_-]",
        ));
    }
    Ok(())
}

fn check_scope(path: &str, s: &str) -> Result<(), ConfigError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(ConfigError::at(
            path,
            format!("scope {s:?} must be printable ASCII without spaces, quotes or backslashes"),
        ));
    }
    Ok(())
}

fn compile_provider(i: usize, p: ProviderConfig) -> Result<Provider, ConfigError> {
    let at = format!("providers[{i}]");
    check_name(&format!("{at}.name"), &p.name)?;
    if p.issuer.is_empty() {
        return Err(ConfigError::at(format!("{at}.issuer"), "must not be empty"));
    }
    if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
        return Err(ConfigError::at(
            format!("{at}.audiences"),
            "must list at least one non-empty audience",
        ));
    }
    if p.algorithms.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.algorithms"),
            "must not be empty",
        ));
    }
    let skew = p.clock_skew.as_duration();
    if skew > Duration::from_secs(300) {
        return Err(ConfigError::at(
            format!("{at}.clock_skew"),
            "must be at most 5m",
        ));
    }
    if p.sources.is_empty() {
        return Err(ConfigError::at(
            format!("{at}.sources"),
            "must not be empty",
        ));
    }
    for (j, s) in p.sources.iter().enumerate() {
        match s {
            TokenSource::Header { name, prefix } => {
                validate_header_name(&format!("{at}.sources[{j}].header.name"), name)?;
                if name.starts_with(':') || name == "cookie" {
                    return Err(ConfigError::at(
                        format!("{at}.sources[{j}].header.name"),
                        "use a cookie source for cookies; pseudo-headers are not sources",
                    ));
                }
                if prefix.as_deref() == Some("") {
                    return Err(ConfigError::at(
                        format!("{at}.sources[{j}].header.prefix"),
                        "must not be empty when set",
                    ));
                }
            }
            TokenSource::Cookie { name } => {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b";=,".contains(&b))
                {
                    return Err(ConfigError::at(
                        format!("{at}.sources[{j}].cookie.name"),
                        "must be a cookie name token",
                    ));
                }
            }
        }
    }
    for (j, c) in p.forward_claims.iter().enumerate() {
        if c.claim.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.forward_claims[{j}].claim"),
                "must not be empty",
            ));
        }
        validate_header_name(&format!("{at}.forward_claims[{j}].header"), &c.header)?;
        if c.header.starts_with(':')
            || matches!(
                c.header.as_str(),
                "host" | "authorization" | "cookie" | "content-length" | "transfer-encoding"
            )
        {
            return Err(ConfigError::at(
                format!("{at}.forward_claims[{j}].header"),
                "this header cannot carry a claim",
            ));
        }
    }
    let algorithms: Vec<Algorithm> = p.algorithms.iter().map(|a| a.algorithm()).collect();
    let keys = match p.jwks {
        JwksSource::Inline(v) => {
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            let set = jwks::parse(&bytes, &algorithms, Strictness::Strict)
                .map_err(|e| ConfigError::at(format!("{at}.jwks.inline"), e.to_string()))?;
            Keys::Inline(std::rc::Rc::new(set))
        }
        JwksSource::Remote(r) => {
            let rp = format!("{at}.jwks.remote");
            if r.cluster.is_empty() {
                return Err(ConfigError::at(
                    format!("{rp}.cluster"),
                    "must not be empty",
                ));
            }
            if !r.path.starts_with('/') {
                return Err(ConfigError::at(format!("{rp}.path"), "must start with '/'"));
            }
            let t = r.timeout.as_duration();
            if t < Duration::from_millis(100) || t > Duration::from_secs(60) {
                return Err(ConfigError::at(
                    format!("{rp}.timeout"),
                    "must be between 100ms and 60s",
                ));
            }
            if r.cache_duration.as_duration() < Duration::from_secs(10) {
                return Err(ConfigError::at(
                    format!("{rp}.cache_duration"),
                    "must be at least 10s",
                ));
            }
            if r.retry_interval.as_duration() < Duration::from_secs(1) {
                return Err(ConfigError::at(
                    format!("{rp}.retry_interval"),
                    "must be at least 1s",
                ));
            }
            Keys::Remote(r)
        }
    };
    let validations = algorithms
        .iter()
        .map(|alg| {
            let mut v = Validation::new(*alg);
            v.leeway = skew.as_secs();
            // exp/nbf/iat are checked once, against the proxy's clock
            // (`token::check_claims`, on the very bytes the signature
            // covers); jsonwebtoken would check them again against the
            // process's own clock, a second time source in a decision
            // that takes `now` as its input. iss/aud are re-checked here.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.set_issuer(&[p.issuer.as_str()]);
            v.set_audience(&p.audiences);
            (*alg, v)
        })
        .collect();
    Ok(Provider {
        name: p.name,
        issuer: p.issuer,
        audiences: p.audiences,
        algorithms,
        skew_secs: skew.as_secs(),
        sources: p.sources,
        keys,
        forward_claims: p.forward_claims,
        forward_token: p.forward_token,
        validations,
    })
}

impl TryFrom<JwtConfig> for Compiled {
    type Error = ConfigError;

    fn try_from(c: JwtConfig) -> Result<Self, ConfigError> {
        if c.providers.is_empty() {
            return Err(ConfigError::at(
                "providers",
                "at least one provider is required",
            ));
        }
        if c.max_token_bytes < 64 || c.max_token_bytes > 65536 {
            return Err(ConfigError::at(
                "max_token_bytes",
                "must be between 64 and 65536",
            ));
        }
        if c.realm.is_empty()
            || !c
                .realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(ConfigError::at(
                "realm",
                "must be printable ASCII without quotes or backslashes",
            ));
        }
        if c.cache.max_entries > 65536 {
            return Err(ConfigError::at(
                "cache.max_entries",
                "must be at most 65536",
            ));
        }
        if c.jti_store.max_entries < crate::jti::BUCKETS || c.jti_store.max_entries > 1 << 20 {
            return Err(ConfigError::at(
                "jti_store.max_entries",
                format!("must be between {} and 1048576", crate::jti::BUCKETS),
            ));
        }
        let life = c.jti_store.max_token_lifetime.as_duration();
        if life < Duration::from_secs(1) || life > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::at(
                "jti_store.max_token_lifetime",
                "must be between 1s and 24h",
            ));
        }
        let shared_store = match c.shared_store {
            Some(s) => Some(s.compile("shared_store")?),
            None => None,
        };
        let mut providers = Vec::with_capacity(c.providers.len());
        for (i, p) in c.providers.into_iter().enumerate() {
            let p = compile_provider(i, p)?;
            if providers.iter().any(|q: &Provider| q.name == p.name) {
                return Err(ConfigError::at(
                    format!("providers[{i}].name"),
                    "duplicate provider name",
                ));
            }
            if providers.iter().any(|q: &Provider| q.issuer == p.issuer) {
                return Err(ConfigError::at(
                    format!("providers[{i}].issuer"),
                    "duplicate issuer",
                ));
            }
            providers.push(p);
        }
        let mut routes = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.into_iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.name.is_empty() {
                return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
            }
            let matcher = RouteMatcher::new(&at, &r.prefix, &r.methods)?.exact(r.exact);
            if let Some(s) = &r.scopes {
                if r.requirement == Requirement::None {
                    return Err(ConfigError::at(
                        format!("{at}.scopes"),
                        "scopes need requirement \"required\" or \"optional\"",
                    ));
                }
                let (ScopeRule::AllOf(list) | ScopeRule::AnyOf(list)) = s;
                if list.is_empty() {
                    return Err(ConfigError::at(
                        format!("{at}.scopes"),
                        "must list at least one scope",
                    ));
                }
                for (j, sc) in list.iter().enumerate() {
                    check_scope(&format!("{at}.scopes[{j}]"), sc)?;
                }
            }
            if r.one_time_jti && r.requirement != Requirement::Required {
                return Err(ConfigError::at(
                    format!("{at}.one_time_jti"),
                    "needs requirement \"required\"",
                ));
            }
            routes.push(Route {
                name: r.name,
                matcher,
                requirement: r.requirement,
                scopes: r.scopes,
                one_time_jti: r.one_time_jti,
            });
        }
        let mut forwarded_headers: Vec<String> = Vec::new();
        let mut sources: Vec<TokenSource> = Vec::new();
        for p in &providers {
            for f in &p.forward_claims {
                if !forwarded_headers.contains(&f.header) {
                    forwarded_headers.push(f.header.clone());
                }
            }
            for s in &p.sources {
                if !sources.contains(s) {
                    sources.push(s.clone());
                }
            }
        }
        for (i, p) in providers.iter().enumerate() {
            for s in &p.sources {
                if let TokenSource::Header { name, .. } = s {
                    if forwarded_headers.contains(name) {
                        return Err(ConfigError::at(
                            format!("providers[{i}].sources"),
                            format!("header {name:?} is also a forwarded-claim header"),
                        ));
                    }
                }
            }
        }
        Ok(Compiled {
            providers,
            routes,
            default_requirement: c.default_requirement,
            challenge: format!("Bearer realm=\"{}\"", c.realm),
            max_token_bytes: c.max_token_bytes,
            cache_entries: c.cache.max_entries,
            jti_max_entries: c.jti_store.max_entries,
            jti_max_lifetime: life,
            shared_store,
            forwarded_headers,
            sources,
            dry_run: c.dry_run,
        })
    }
}

/// Parses and compiles a JSON config.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    filter_core::config::load::<JwtConfig, Compiled>(bytes)
}

/// The JSON Schema of [`JwtConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(JwtConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = include_str!("../../../examples/config/jwt/web.json");
    const REMOTE: &str = include_str!("../../../examples/config/jwt/web-remote-jwks.json");
    const DEMO_JWKS: &str = include_str!("../../../examples/keys/jwks.json");

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "providers": [{
                "name": "demo",
                "issuer": "https://issuer.demo.local",
                "audiences": ["demo-api"],
                "jwks": {"inline": serde_json::from_str::<serde_json::Value>(DEMO_JWKS).unwrap()}
            }]
        })
    }

    fn load_value(v: &serde_json::Value) -> Result<Compiled, ConfigError> {
        load(v.to_string().as_bytes())
    }

    #[test]
    fn example_configs_load() {
        let c = load(WEB.as_bytes()).unwrap();
        assert_eq!(c.providers.len(), 1);
        assert_eq!(c.default_requirement, Requirement::Required);
        let c = load(REMOTE.as_bytes()).unwrap();
        assert!(c.has_remote_keys());
    }

    #[test]
    fn web_example_trusts_exactly_the_demo_jwks() {
        let web: serde_json::Value = serde_json::from_str(WEB).unwrap();
        let demo: serde_json::Value = serde_json::from_str(DEMO_JWKS).unwrap();
        assert_eq!(
            web["providers"][0]["jwks"]["inline"], demo,
            "examples/config/jwt/web.json must inline examples/keys/jwks.json verbatim"
        );
    }

    #[test]
    fn defaults_are_closed() {
        let c = load_value(&minimal()).unwrap();
        assert_eq!(c.default_requirement, Requirement::Required);
        let p = &c.providers[0];
        assert_eq!(p.skew_secs, 60);
        assert!(!p.forward_token);
        assert_eq!(
            p.sources,
            vec![TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into())
            }]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"providers": []}), "providers"),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["audiences"] = serde_json::json!([]);
                    v
                },
                "providers[0].audiences",
            ),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["algorithms"] = serde_json::json!(["HS256"]);
                    v
                },
                "providers[0].algorithms[0]",
            ),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["algorithms"] = serde_json::json!(["none"]);
                    v
                },
                "providers[0].algorithms[0]",
            ),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["clock_skew"] = "1h".into();
                    v
                },
                "providers[0].clock_skew",
            ),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["bogus"] = 1.into();
                    v
                },
                "providers[0].bogus",
            ),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["jwks"] =
                        serde_json::json!({"inline": {"keys": [{"kty":"oct","k":"AA"}]}});
                    v
                },
                "providers[0].jwks.inline",
            ),
            (
                {
                    let mut v = minimal();
                    v["providers"][0]["forward_claims"] =
                        serde_json::json!([{"claim":"sub","header":"X-User"}]);
                    v
                },
                "providers[0].forward_claims[0].header",
            ),
            (
                {
                    let mut v = minimal();
                    v["routes"] = serde_json::json!([{"name":"a","prefix":"/a","requirement":"none","scopes":{"all_of":["x"]}}]);
                    v
                },
                "routes[0].scopes",
            ),
            (
                {
                    let mut v = minimal();
                    v["routes"] = serde_json::json!([{"name":"a","prefix":"/a","requirement":"optional","one_time_jti":true}]);
                    v
                },
                "routes[0].one_time_jti",
            ),
            (
                {
                    let mut v = minimal();
                    v["routes"] = serde_json::json!([{"name":"a","prefix":"/a","requirement":"required","scopes":{"any_of":["a b"]}}]);
                    v
                },
                "routes[0].scopes[0]",
            ),
            (
                {
                    let mut v = minimal();
                    v["max_token_bytes"] = 10.into();
                    v
                },
                "max_token_bytes",
            ),
            (
                {
                    let mut v = minimal();
                    v["jti_store"] = serde_json::json!({"max_token_lifetime": "48h"});
                    v
                },
                "jti_store.max_token_lifetime",
            ),
        ];
        for (v, path) in cases {
            let e = load_value(&v).unwrap_err();
            assert_eq!(e.path, path, "{v}: {e}");
        }
    }

    #[test]
    fn schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.schema.json");
        let want = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        if std::env::var("UPDATE_SCHEMAS").as_deref() == Ok("1") {
            std::fs::write(path, &want).unwrap();
            return;
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is out of date: run `UPDATE_SCHEMAS=1 cargo test -p jwt schema_is_current`"
        );
    }

    #[test]
    fn examples_validate_against_the_schema_shape() {
        // The schema at least names every top-level field the examples use.
        let s = schema();
        let props = s["properties"].as_object().unwrap();
        for ex in [WEB, REMOTE] {
            let v: serde_json::Value = serde_json::from_str(ex).unwrap();
            for k in v.as_object().unwrap().keys() {
                assert!(props.contains_key(k), "{k}");
            }
        }
    }
}
