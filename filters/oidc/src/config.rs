//! The oidc filter's configuration: JSON → [`OidcConfig`] (unknown fields
//! refused) → [`Compiled`] (validated once, at configure time).
//! Reference: `docs/filters/oidc.md`.

use std::time::Duration;

use filter_core::config::{self, ConfigError};
use filter_core::duration::ConfigDuration;
use filter_core::route::RouteMatcher;
use filter_core::store::{OnUnavailable, SharedStore, SharedStoreConfig};
use jsonwebtoken::Algorithm;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::provider::Origin;

/// Longest accepted client secret (bytes).
pub const MAX_SECRET_BYTES: usize = 512;
/// Most path rules.
pub const MAX_RULES: usize = 256;
/// Most groups one rule may name.
pub const MAX_RULE_GROUPS: usize = 64;

/// The filter's configuration document.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer identifier, exactly as its discovery document
    /// and ID tokens state it (e.g. "https://sso.example.com"). The
    /// discovery document is `{issuer}/.well-known/openid-configuration`,
    /// fetched through `provider.cluster`.
    pub issuer: String,
    /// How the gateway reaches the provider (discovery, JWKS, token endpoint).
    pub provider: ProviderConfig,
    /// The client id registered at the provider.
    pub client_id: String,
    /// Name of the VM environment variable that holds the client secret
    /// (Envoy's `vm_config.environment_variables`; Istio: a Secret mounted
    /// as the variable). The secret itself never appears in a config or a log.
    pub client_secret_env: String,
    /// Scopes asked for; must contain "openid" (default: openid, email,
    /// profile, groups).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Path of the redirection endpoint on this gateway (default
    /// "/oauth2/callback"); the redirect URI sent to the provider is
    /// `https://<the request's authority><redirect_path>`, which must be
    /// registered at the provider for every host the gateway serves.
    #[serde(default = "default_redirect_path")]
    pub redirect_path: String,
    /// Path that ends the session (default "/oauth2/logout").
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the provider sends the browser after logout, on this gateway
    /// (default "/"), sent as `post_logout_redirect_uri`.
    #[serde(default = "default_post_logout_path")]
    pub post_logout_path: String,
    /// Authorities (`host[:port]`) the gateway accepts for building its
    /// redirect URI; empty (default): the request's own authority.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The cookies the gateway sets.
    #[serde(default)]
    pub cookie: CookieConfig,
    /// Session lifetimes.
    #[serde(default)]
    pub session: SessionConfig,
    /// Where sessions and login states live: the gateway-store sidecar in
    /// front of Redis (docs/gateway-store.md). `on_unavailable` must be
    /// `deny`: a session is never decided on one replica alone.
    pub shared_store: SharedStoreConfig,
    /// Per-path access rules, first match wins; a path no rule matches
    /// gets `default_access`.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Access of paths no rule matches (default "authenticated").
    #[serde(default = "default_access")]
    pub default_access: Access,
    /// The identity headers set for the upstream (client copies are always
    /// removed, on every path).
    #[serde(default)]
    pub headers: HeadersConfig,
    /// ID-token signature algorithms accepted (default ["RS256"]).
    #[serde(default = "default_algorithms")]
    pub id_token_algorithms: Vec<jwt::config::Alg>,
    /// Allowed clock difference with the provider for `exp`/`iat` (default "60s", at most "5m").
    #[serde(default = "default_skew")]
    pub clock_skew: ConfigDuration,
    /// Also send the session's access token to the upstream as
    /// `Authorization: Bearer` (the client's own `Authorization` is then
    /// always removed), refreshed with the refresh token before it
    /// expires, one refresh per session at a time across replicas. Off
    /// when absent.
    #[serde(default)]
    pub forward_access_token: Option<ForwardTokenConfig>,
}

/// The access token for the upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardTokenConfig {
    /// Refresh this long before the token expires (default "60s", at most "1h").
    #[serde(default = "default_refresh_before")]
    pub refresh_before: ConfigDuration,
}

fn default_refresh_before() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

/// How the gateway reaches the provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Envoy cluster of the provider (discovery, JWKS and token endpoint
    /// must be on the issuer's origin).
    pub cluster: String,
    /// `:authority` of the callouts (default: the issuer's host[:port]).
    #[serde(default)]
    pub authority: Option<String>,
    /// Timeout of each callout (default "2s", at most "10s").
    #[serde(default = "default_provider_timeout")]
    pub timeout: ConfigDuration,
    /// How often the discovery document and the JWKS are fetched again
    /// (default "5m").
    #[serde(default = "default_refresh")]
    pub refresh_interval: ConfigDuration,
    /// After a failed fetch, the next try (default "5s"); also the least
    /// time between two JWKS fetches caused by an unknown `kid`.
    #[serde(default = "default_retry")]
    pub retry_interval: ConfigDuration,
    /// How long the last good discovery document and JWKS are used while
    /// the provider cannot be fetched (default "24h").
    #[serde(default = "default_max_stale")]
    pub max_stale: ConfigDuration,
}

/// The cookies' names and attributes. Both are always `HttpOnly; Secure;
/// Path=/` (no `Domain`), as the `__Host-` prefix of the defaults requires.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CookieConfig {
    /// Session cookie (default "__Host-gw-session"): an opaque random id.
    #[serde(default = "default_session_cookie")]
    pub name: String,
    /// Pre-login cookie (default "__Host-gw-login"): binds a login's
    /// `state` to the browser that started it.
    #[serde(default = "default_login_cookie")]
    pub login_name: String,
    /// `SameSite` of the session cookie: "lax" (default) or "strict". The
    /// pre-login cookie is always `Lax` (it must come back with the
    /// provider's top-level redirect).
    #[serde(default)]
    pub same_site: SameSite,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: default_session_cookie(),
            login_name: default_login_cookie(),
            same_site: SameSite::default(),
        }
    }
}

/// `SameSite` values the session cookie may take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
}

/// Session lifetimes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Longest a session lives from login (default "8h", at most "30d").
    #[serde(default = "default_lifetime")]
    pub lifetime: ConfigDuration,
    /// A session unused this long ends (default "30m"; Redis expires it).
    #[serde(default = "default_idle")]
    pub idle_timeout: ConfigDuration,
    /// Longest a login may take at the provider (default "5m", at most "30m").
    #[serde(default = "default_login_timeout")]
    pub login_timeout: ConfigDuration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            lifetime: default_lifetime(),
            idle_timeout: default_idle(),
            login_timeout: default_login_timeout(),
        }
    }
}

/// Who may reach a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone, no session looked at (identity headers still stripped).
    Open,
    /// Any logged-in user.
    Authenticated,
    /// A logged-in user in at least one of the rule's `groups_any`.
    Groups,
}

/// One path rule.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Exactly this path (nothing below it). One of `path` / `prefix`.
    #[serde(default)]
    pub path: Option<String>,
    /// This path and everything below it (segment boundaries respected).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Upper-case methods the rule is limited to (default: any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// open | authenticated | groups.
    pub access: Access,
    /// With `access: groups`: the user needs at least one of these.
    #[serde(default)]
    pub groups_any: Vec<String>,
}

/// The identity headers for the upstream.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// The ID token's `sub` (default "x-user-id").
    #[serde(default = "default_user_header")]
    pub user_id: String,
    /// Its `email` (default "x-user-email").
    #[serde(default = "default_email_header")]
    pub email: String,
    /// Its `groups`, comma-separated (default "x-user-groups").
    #[serde(default = "default_groups_header")]
    pub groups: String,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            user_id: default_user_header(),
            email: default_email_header(),
            groups: default_groups_header(),
        }
    }
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile", "groups"]
        .map(String::from)
        .to_vec()
}
fn default_redirect_path() -> String {
    "/oauth2/callback".into()
}
fn default_logout_path() -> String {
    "/oauth2/logout".into()
}
fn default_post_logout_path() -> String {
    "/".into()
}
fn default_access() -> Access {
    Access::Authenticated
}
fn default_algorithms() -> Vec<jwt::config::Alg> {
    vec![jwt::config::Alg::RS256]
}
fn default_skew() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn default_provider_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_refresh() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn default_retry() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_max_stale() -> ConfigDuration {
    ConfigDuration::from_secs(24 * 3600)
}
fn default_session_cookie() -> String {
    "__Host-gw-session".into()
}
fn default_login_cookie() -> String {
    "__Host-gw-login".into()
}
fn default_lifetime() -> ConfigDuration {
    ConfigDuration::from_secs(8 * 3600)
}
fn default_idle() -> ConfigDuration {
    ConfigDuration::from_secs(30 * 60)
}
fn default_login_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5 * 60)
}
fn default_user_header() -> String {
    "x-user-id".into()
}
fn default_email_header() -> String {
    "x-user-email".into()
}
fn default_groups_header() -> String {
    "x-user-groups".into()
}

/// A compiled path rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: RouteMatcher,
    pub access: Access,
    pub groups_any: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub issuer: String,
    /// Scheme, host and port of the issuer: the discovery document's
    /// endpoints fetched by the gateway must share it.
    pub issuer_origin: Origin,
    pub discovery_path: String,
    pub cluster: String,
    pub authority: String,
    pub provider_timeout: Duration,
    pub refresh_secs: u64,
    pub retry_secs: u64,
    pub max_stale_secs: u64,
    pub client_id: String,
    /// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
    pub client_auth: String,
    pub scope: String,
    pub redirect_path: String,
    pub logout_path: String,
    pub post_logout_path: String,
    pub hosts: Vec<String>,
    pub session_cookie: String,
    pub login_cookie: String,
    pub same_site: SameSite,
    pub lifetime_secs: u64,
    pub idle_ms: u64,
    pub login_timeout_secs: u64,
    pub store: SharedStore,
    pub rules: Vec<Rule>,
    pub default_access: Access,
    pub headers: HeadersConfig,
    pub algorithms: Vec<Algorithm>,
    pub skew_secs: u64,
    /// `forward_access_token.refresh_before` in seconds; `None`: no token
    /// goes upstream (and none is kept in the session).
    pub forward_token_refresh_secs: Option<u64>,
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// The client secret, never printed.
struct ClientSecret(String);

fn non_empty(at: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::at(at, "must not be empty"));
    }
    Ok(())
}

fn gateway_path(at: &str, v: &str) -> Result<(), ConfigError> {
    if !v.starts_with('/') || v.starts_with("//") || v.contains(['?', '#', '\\']) {
        return Err(ConfigError::at(
            at,
            "must be a path on this gateway: '/' then no '?', '#', '\\' or leading '//'",
        ));
    }
    Ok(())
}

fn cookie_name(at: &str, v: &str) -> Result<(), ConfigError> {
    // RFC 6265 cookie-name = token
    let token = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(ConfigError::at(
            at,
            "must be an RFC 6265 token of 1 to 64 characters",
        ));
    }
    if v.starts_with("__Secure-") {
        return Err(ConfigError::at(
            at,
            "use the stricter \"__Host-\" prefix or none",
        ));
    }
    Ok(())
}

fn duration_in(
    at: &str,
    d: ConfigDuration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = d.as_duration();
    if d < min || d > max {
        return Err(ConfigError::at(
            at,
            format!(
                "must be between {}s and {}s",
                min.as_secs_f64(),
                max.as_secs()
            ),
        ));
    }
    Ok(d)
}

/// `application/x-www-form-urlencoded` of one value (RFC 6749 §2.3.1 asks
/// for it in the Basic credentials).
pub fn form_encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl Compiled {
    /// Validates `c`, reading the client secret through `env`
    /// (`std::env::var` in the filter).
    pub fn compile(
        c: OidcConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Compiled, ConfigError> {
        let issuer_origin = Origin::parse(&c.issuer).ok_or_else(|| {
            ConfigError::at(
                "issuer",
                "must be an http(s) URL without query or fragment (e.g. \"https://sso.example.com\")",
            )
        })?;
        let discovery_path = format!(
            "{}/.well-known/openid-configuration",
            issuer_origin.path.trim_end_matches('/')
        );
        non_empty("provider.cluster", &c.provider.cluster)?;
        let provider_timeout = duration_in(
            "provider.timeout",
            c.provider.timeout,
            Duration::from_millis(10),
            Duration::from_secs(10),
        )?;
        let refresh = duration_in(
            "provider.refresh_interval",
            c.provider.refresh_interval,
            Duration::from_secs(10),
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let retry = duration_in(
            "provider.retry_interval",
            c.provider.retry_interval,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        let max_stale = duration_in(
            "provider.max_stale",
            c.provider.max_stale,
            Duration::ZERO,
            Duration::from_secs(30 * 24 * 3600),
        )?;
        non_empty("client_id", &c.client_id)?;
        if c.client_id.chars().any(char::is_control) {
            return Err(ConfigError::at(
                "client_id",
                "must not contain control characters",
            ));
        }
        if c.client_secret_env.is_empty() || c.client_secret_env.contains(['=', '\0']) {
            return Err(ConfigError::at(
                "client_secret_env",
                "must be an environment variable name",
            ));
        }
        let secret = ClientSecret(
            env(&c.client_secret_env)
                .map(|s| s.trim().to_string())
                .ok_or_else(|| {
                    ConfigError::at(
                        "client_secret_env",
                        format!("environment variable {} is not set", c.client_secret_env),
                    )
                })?,
        );
        if secret.0.is_empty() || secret.0.len() > MAX_SECRET_BYTES {
            return Err(ConfigError::at(
                "client_secret_env",
                format!("the secret must be 1 to {MAX_SECRET_BYTES} bytes"),
            ));
        }
        let client_auth = {
            use base64::Engine as _;
            let pair = format!("{}:{}", form_encode(&c.client_id), form_encode(&secret.0));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        if !c.scopes.iter().any(|s| s == "openid") {
            return Err(ConfigError::at("scopes", "must contain \"openid\""));
        }
        for (i, s) in c.scopes.iter().enumerate() {
            // RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if !ok {
                return Err(ConfigError::at(
                    format!("scopes[{i}]"),
                    "is not a scope token",
                ));
            }
        }
        gateway_path("redirect_path", &c.redirect_path)?;
        gateway_path("logout_path", &c.logout_path)?;
        gateway_path("post_logout_path", &c.post_logout_path)?;
        if c.redirect_path == c.logout_path {
            return Err(ConfigError::at(
                "logout_path",
                "must differ from redirect_path",
            ));
        }
        for (i, h) in c.hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !ok {
                return Err(ConfigError::at(
                    format!("hosts[{i}]"),
                    "is not a host[:port]",
                ));
            }
        }
        cookie_name("cookie.name", &c.cookie.name)?;
        cookie_name("cookie.login_name", &c.cookie.login_name)?;
        if c.cookie.name == c.cookie.login_name {
            return Err(ConfigError::at(
                "cookie.login_name",
                "must differ from cookie.name",
            ));
        }
        let lifetime = duration_in(
            "session.lifetime",
            c.session.lifetime,
            Duration::from_secs(60),
            Duration::from_secs(30 * 24 * 3600),
        )?;
        let idle = duration_in(
            "session.idle_timeout",
            c.session.idle_timeout,
            Duration::from_secs(60),
            Duration::from_secs(30 * 24 * 3600),
        )?;
        if idle > lifetime {
            return Err(ConfigError::at(
                "session.idle_timeout",
                "must not exceed session.lifetime",
            ));
        }
        let login_timeout = duration_in(
            "session.login_timeout",
            c.session.login_timeout,
            Duration::from_secs(30),
            Duration::from_secs(30 * 60),
        )?;
        let store = c.shared_store.compile("shared_store")?;
        if store.on_unavailable != OnUnavailable::Deny {
            return Err(ConfigError::at(
                "shared_store.on_unavailable",
                "must be \"deny\": sessions are never decided on one replica alone",
            ));
        }
        if c.rules.len() > MAX_RULES {
            return Err(ConfigError::at(
                "rules",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, r) in c.rules.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            let matcher = match (&r.path, &r.prefix) {
                (Some(p), None) => RouteMatcher::new(&at, p, &r.methods)
                    .map_err(|e| ConfigError::at(format!("{at}.path"), e.message))?
                    .exact(true),
                (None, Some(p)) => RouteMatcher::new(&at, p, &r.methods)?,
                _ => {
                    return Err(ConfigError::at(
                        at,
                        "needs exactly one of \"path\" and \"prefix\"",
                    ))
                }
            };
            match (r.access, r.groups_any.is_empty()) {
                (Access::Groups, true) => {
                    return Err(ConfigError::at(
                        format!("{at}.groups_any"),
                        "must name at least one group when access is \"groups\"",
                    ))
                }
                (Access::Open | Access::Authenticated, false) => {
                    return Err(ConfigError::at(
                        format!("{at}.groups_any"),
                        "is only for access \"groups\"",
                    ))
                }
                _ => {}
            }
            if r.groups_any.len() > MAX_RULE_GROUPS {
                return Err(ConfigError::at(
                    format!("{at}.groups_any"),
                    format!("at most {MAX_RULE_GROUPS} groups"),
                ));
            }
            if r.groups_any.iter().any(|g| g.is_empty() || g.contains(',')) {
                return Err(ConfigError::at(
                    format!("{at}.groups_any"),
                    "groups must be non-empty and contain no ','",
                ));
            }
            rules.push(Rule {
                matcher,
                access: r.access,
                groups_any: r.groups_any,
            });
        }
        if c.default_access == Access::Groups {
            return Err(ConfigError::at(
                "default_access",
                "must be \"open\" or \"authenticated\" (group rules need a path rule)",
            ));
        }
        config::validate_header_name("headers.user_id", &c.headers.user_id)?;
        config::validate_header_name("headers.email", &c.headers.email)?;
        config::validate_header_name("headers.groups", &c.headers.groups)?;
        if c.id_token_algorithms.is_empty() {
            return Err(ConfigError::at("id_token_algorithms", "must not be empty"));
        }
        let skew = duration_in(
            "clock_skew",
            c.clock_skew,
            Duration::ZERO,
            Duration::from_secs(300),
        )?;
        let forward_token_refresh_secs = match &c.forward_access_token {
            None => None,
            Some(f) => Some(
                duration_in(
                    "forward_access_token.refresh_before",
                    f.refresh_before,
                    Duration::ZERO,
                    Duration::from_secs(3600),
                )?
                .as_secs(),
            ),
        };
        let authority = c
            .provider
            .authority
            .clone()
            .unwrap_or_else(|| issuer_origin.authority.clone());
        Ok(Compiled {
            issuer: c.issuer,
            discovery_path,
            issuer_origin,
            cluster: c.provider.cluster,
            authority,
            provider_timeout,
            refresh_secs: refresh.as_secs(),
            retry_secs: retry.as_secs(),
            max_stale_secs: max_stale.as_secs(),
            client_id: c.client_id,
            client_auth,
            scope: c.scopes.join(" "),
            redirect_path: c.redirect_path,
            logout_path: c.logout_path,
            post_logout_path: c.post_logout_path,
            hosts: c.hosts,
            session_cookie: c.cookie.name,
            login_cookie: c.cookie.login_name,
            same_site: c.cookie.same_site,
            lifetime_secs: lifetime.as_secs(),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            login_timeout_secs: login_timeout.as_secs(),
            store,
            rules,
            default_access: c.default_access,
            headers: c.headers,
            algorithms: c
                .id_token_algorithms
                .iter()
                .map(|a| a.algorithm())
                .collect(),
            skew_secs: skew.as_secs(),
            forward_token_refresh_secs,
        })
    }

    /// The access rule of a request.
    pub fn rule(&self, method: &str, path: &str) -> (Access, &[String]) {
        self.rules
            .iter()
            .find(|r| r.matcher.matches(method, path))
            .map_or((self.default_access, &[][..]), |r| {
                (r.access, r.groups_any.as_slice())
            })
    }
}

/// Parses and compiles a configuration document.
pub fn load(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Compiled, ConfigError> {
    let raw: OidcConfig = config::parse_json(bytes)?;
    Compiled::compile(raw, env)
}

/// The JSON Schema of the configuration.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(OidcConfig)).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SECRET: &str = "s3cr:et/+";

    pub(crate) fn env(name: &str) -> Option<String> {
        (name == "OIDC_CLIENT_SECRET").then(|| SECRET.to_string())
    }

    pub(crate) const EXAMPLE: &str = r#"{
        "issuer": "http://localhost:18084",
        "provider": {"cluster": "oidc_provider"},
        "client_id": "internal-gateway",
        "client_secret_env": "OIDC_CLIENT_SECRET",
        "shared_store": {"cluster": "gateway_store", "namespace": "internal.oidc"},
        "rules": [
            {"path": "/health", "access": "open"},
            {"prefix": "/admin/", "access": "groups", "groups_any": ["tools-admin"]}
        ]
    }"#;

    pub(crate) fn compiled() -> Compiled {
        load(EXAMPLE.as_bytes(), &env).unwrap()
    }

    #[test]
    fn example_compiles_with_defaults() {
        let c = compiled();
        assert_eq!(c.discovery_path, "/.well-known/openid-configuration");
        assert_eq!(c.authority, "localhost:18084");
        assert_eq!(c.scope, "openid email profile groups");
        assert_eq!(c.session_cookie, "__Host-gw-session");
        assert_eq!(c.idle_ms, 30 * 60 * 1000);
        // RFC 6749 §2.3.1: both parts form-urlencoded before base64
        use base64::Engine as _;
        let b = c.client_auth.strip_prefix("Basic ").unwrap();
        let pair = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        assert_eq!(pair, b"internal-gateway:s3cr%3Aet%2F%2B");
        assert_eq!(c.rule("GET", "/health"), (Access::Open, &[][..]));
        assert_eq!(c.rule("GET", "/health/x").0, Access::Authenticated);
        assert_eq!(c.rule("GET", "/admin/users").0, Access::Groups);
        assert_eq!(c.rule("GET", "/administrator").0, Access::Authenticated);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let c = compiled();
        assert!(!format!("{c:?}").contains("s3cr"));
        assert!(!format!("{:?}", ClientSecret("s3cr".into())).contains("s3cr"));
    }

    #[test]
    fn bad_configs_name_their_field() {
        let base: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"issuer": "ftp://x"}), "issuer"),
            (serde_json::json!({"issuer": "http://x/?a"}), "issuer"),
            (
                serde_json::json!({"client_secret_env": "NOPE"}),
                "client_secret_env",
            ),
            (serde_json::json!({"scopes": ["email"]}), "scopes"),
            (
                serde_json::json!({"scopes": ["openid", "a b"]}),
                "scopes[1]",
            ),
            (
                serde_json::json!({"redirect_path": "//evil"}),
                "redirect_path",
            ),
            (
                serde_json::json!({"logout_path": "/oauth2/callback"}),
                "logout_path",
            ),
            (
                serde_json::json!({"cookie": {"name": "a b"}}),
                "cookie.name",
            ),
            (
                serde_json::json!({"cookie": {"login_name": "__Host-gw-session"}}),
                "cookie.login_name",
            ),
            (
                serde_json::json!({"session": {"idle_timeout": "9h"}}),
                "session.idle_timeout",
            ),
            (
                serde_json::json!({"shared_store": {"cluster": "s", "namespace": "n", "on_unavailable": "local"}}),
                "shared_store.on_unavailable",
            ),
            (
                serde_json::json!({"rules": [{"prefix": "/a", "access": "groups"}]}),
                "rules[0].groups_any",
            ),
            (
                serde_json::json!({"rules": [{"access": "open"}]}),
                "rules[0]",
            ),
            (
                serde_json::json!({"rules": [{"path": "/a", "prefix": "/a", "access": "open"}]}),
                "rules[0]",
            ),
            (
                serde_json::json!({"default_access": "groups"}),
                "default_access",
            ),
            (
                serde_json::json!({"headers": {"user_id": "X-User"}}),
                "headers.user_id",
            ),
            (
                serde_json::json!({"provider": {"cluster": "p", "timeout": "1m"}}),
                "provider.timeout",
            ),
            (
                serde_json::json!({"id_token_algorithms": []}),
                "id_token_algorithms",
            ),
            (serde_json::json!({"clock_skew": "1h"}), "clock_skew"),
        ];
        for (patch, field) in cases {
            let mut doc = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                doc[k] = v.clone();
            }
            let err = load(doc.to_string().as_bytes(), &env).unwrap_err();
            assert_eq!(err.path, field, "{patch}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut doc: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        doc["client_secret"] = "inline".into();
        assert!(load(doc.to_string().as_bytes(), &env).is_err());
    }

    #[test]
    fn schema_file_is_current() {
        filter_core::testing::assert_schema_current(env!("CARGO_MANIFEST_DIR"), "oidc", &schema());
    }

    #[test]
    fn the_shipped_example_loads() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/config/oidc/internal.json"
        );
        let bytes = std::fs::read(path).unwrap();
        let c = load(&bytes, &env).unwrap();
        assert_eq!(c.store.namespace, "internal.oidc");
    }

    #[test]
    fn schema_names_the_fields() {
        let s = schema().to_string();
        for f in ["issuer", "client_secret_env", "shared_store", "groups_any"] {
            assert!(s.contains(f), "{f}");
        }
    }
}
