//! san-authz's JSON config: the serde shape ([`SanAuthzConfig`], unknown
//! fields rejected, JSON Schema derived) and its compiled form
//! ([`Compiled`]), built once in `on_configure`.

use filter_core::config::{validate_header_name, ConfigError};
use filter_core::route::RouteMatcher;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cert::{Policy, TrustedCa};
use crate::san::{valid_trust_domain, HostPattern, SanMatcher, SpiffeId};

/// Default bound on the XFCC header, in bytes (a P-256 certificate URL-encoded is ~1 KiB).
pub const DEFAULT_MAX_XFCC_BYTES: usize = 16 * 1024;
/// Default bound on the XFCC elements parsed.
pub const DEFAULT_MAX_XFCC_ELEMENTS: usize = 8;
/// Default bound on the URI + DNS SANs of one certificate.
pub const DEFAULT_MAX_SANS: usize = 32;
/// Default number of verified certificates remembered per worker.
pub const DEFAULT_SIGNATURE_CACHE_SIZE: usize = 256;

/// The san-authz filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SanAuthzConfig {
    /// Where the client certificate comes from, and how it is checked.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The allow list. A request passes when at least one rule allows it;
    /// rules are tried in order and the first allowing rule names the
    /// published SAN. Everything no rule allows is denied (403). An empty
    /// list denies everything.
    pub rules: Vec<RuleConfig>,
    /// Request header that carries the authorised SAN to the upstream
    /// (e.g. `x-gateway-client-san`); client copies are always removed
    /// first. Absent: no header (the SAN is still published in filter
    /// state `wasm.gateway_identity`).
    #[serde(default)]
    pub upstream_san_header: Option<String>,
    /// Log and count what would be denied, but let it through (default
    /// false). A request let through this way gets no identity and no SAN
    /// header.
    #[serde(default)]
    pub dry_run: bool,
}

/// The source of the client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This Envoy terminated TLS: the verified peer certificate of the
    /// downstream connection (property `connection.peer_certificate`).
    /// Client headers play no part.
    #[default]
    Connection,
    /// A trusted hop in front terminated TLS: the `Cert=` of the LAST
    /// element of `x-forwarded-client-cert` (the one that hop appended).
    /// Only safe when nothing but that hop can reach this listener, and
    /// only with `trusted_cas` (required): a header proves nothing about
    /// who issued the certificate in it.
    Xfcc,
}

/// How the client certificate is obtained and checked.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `"connection"` (default) or `"xfcc"`.
    #[serde(default)]
    pub source: Source,
    /// PEM CA certificates (EC P-256/P-384). When set, the client
    /// certificate must be signed directly by one of them (no
    /// intermediates). Required (at least one) with `xfcc`, where the
    /// certificate comes from a header; optional with `connection`, where
    /// Envoy's TLS handshake already validated the chain (default: none).
    #[serde(default)]
    pub trusted_cas: Vec<String>,
    /// `xfcc` only: refuse an element without `Hash=` (default false; when
    /// present, `Hash=` must always match the certificate).
    #[serde(default)]
    pub require_hash: bool,
    /// `xfcc` only: longest accepted header, in bytes (default 16384).
    #[serde(default = "default_max_xfcc_bytes")]
    pub max_xfcc_bytes: usize,
    /// `xfcc` only: most elements parsed (default 8); more → denied.
    #[serde(default = "default_max_xfcc_elements")]
    pub max_xfcc_elements: usize,
    /// Most URI + DNS SANs in one certificate (default 32); more → denied.
    #[serde(default = "default_max_sans")]
    pub max_sans: usize,
    /// With `trusted_cas`: certificates whose issuer signature was verified,
    /// remembered per worker by their SHA-256 (default 256 entries, oldest
    /// evicted first; 0 disables), so a caller pays one ECDSA verification
    /// per worker, not one per request.
    #[serde(default = "default_signature_cache_size")]
    pub signature_cache_size: usize,
}

fn default_max_xfcc_bytes() -> usize {
    DEFAULT_MAX_XFCC_BYTES
}
fn default_max_xfcc_elements() -> usize {
    DEFAULT_MAX_XFCC_ELEMENTS
}
fn default_max_sans() -> usize {
    DEFAULT_MAX_SANS
}
fn default_signature_cache_size() -> usize {
    DEFAULT_SIGNATURE_CACHE_SIZE
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            source: Source::default(),
            trusted_cas: Vec::new(),
            require_hash: false,
            max_xfcc_bytes: DEFAULT_MAX_XFCC_BYTES,
            max_xfcc_elements: DEFAULT_MAX_XFCC_ELEMENTS,
            max_sans: DEFAULT_MAX_SANS,
            signature_cache_size: DEFAULT_SIGNATURE_CACHE_SIZE,
        }
    }
}

/// One allow rule.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A name for logs.
    pub name: String,
    /// SAN matchers; the rule applies to a certificate when any of them
    /// matches any of its SANs. At least one.
    pub sans: Vec<SanMatcherConfig>,
    /// Request hosts (`:authority` without port, case-insensitive): exact
    /// names or `*.suffix` wildcards. Empty or absent: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefixes (segment-aware, on the normalised path) with their
    /// methods. At least one; `{"prefix": "/"}` allows every path.
    pub paths: Vec<PathRuleConfig>,
}

/// A SAN matcher: exactly one of its keys.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SanMatcherConfig {
    /// A URI SAN equal to this string (e.g. a full SPIFFE ID).
    Exact(String),
    /// A DNS SAN equal to this name (case-insensitive).
    Dns(String),
    /// Any SPIFFE ID in this trust domain (e.g. `partner.example`).
    SpiffeTrustDomain(String),
    /// SPIFFE IDs of a trust domain whose path is `path_prefix` or lies
    /// below it, at segment boundaries.
    SpiffePathPrefix {
        trust_domain: String,
        /// Starts with `/`, e.g. `/ns/partner-a`.
        path_prefix: String,
    },
}

/// Allowed methods under a path prefix, or on one exact path: exactly one
/// of `prefix` and `path`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRuleConfig {
    /// Path prefix, matched at segment boundaries; a prefix ending in `/`
    /// matches everything below it (not the bare directory).
    #[serde(default)]
    pub prefix: Option<String>,
    /// One exact path (e.g. `/health`), nothing below it.
    #[serde(default)]
    pub path: Option<String>,
    /// Methods (upper case); empty or absent means every method.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// A compiled path rule.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    /// `prefix` or, exact, `path` (filter_core's one route rule type).
    route: RouteMatcher,
}

impl PathMatcher {
    /// Does the normalised `path` (no query) with `method` match?
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.route.matches(method, path)
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub sans: Vec<SanMatcher>,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathMatcher>,
}

/// The ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub source: Source,
    pub policy: Policy,
    pub require_hash: bool,
    pub max_xfcc_bytes: usize,
    pub max_xfcc_elements: usize,
    pub signature_cache_size: usize,
    pub rules: Vec<Rule>,
    pub upstream_san_header: Option<String>,
    pub dry_run: bool,
}

fn compile_san(path: &str, m: SanMatcherConfig) -> Result<SanMatcher, ConfigError> {
    Ok(match m {
        SanMatcherConfig::Exact(s) => {
            let p = format!("{path}.exact");
            if s.is_empty() {
                return Err(ConfigError::at(p, "must not be empty"));
            }
            if s.starts_with("spiffe://") && SpiffeId::parse(&s).is_none() {
                return Err(ConfigError::at(
                    p,
                    format!("{s:?} is not a valid SPIFFE ID"),
                ));
            }
            SanMatcher::ExactUri(s)
        }
        SanMatcherConfig::Dns(s) => {
            let ok = !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !ok {
                return Err(ConfigError::at(
                    format!("{path}.dns"),
                    format!("{s:?} is not a DNS name"),
                ));
            }
            SanMatcher::Dns(s.to_ascii_lowercase())
        }
        SanMatcherConfig::SpiffeTrustDomain(td) => {
            if !valid_trust_domain(&td) {
                return Err(ConfigError::at(
                    format!("{path}.spiffe_trust_domain"),
                    format!("{td:?} is not a SPIFFE trust domain (lower case [a-z0-9.-_])"),
                ));
            }
            SanMatcher::SpiffeTrustDomain(td)
        }
        SanMatcherConfig::SpiffePathPrefix {
            trust_domain,
            path_prefix,
        } => {
            if !valid_trust_domain(&trust_domain) {
                return Err(ConfigError::at(
                    format!("{path}.spiffe_path_prefix.trust_domain"),
                    format!("{trust_domain:?} is not a SPIFFE trust domain"),
                ));
            }
            let prefix = path_prefix.trim_end_matches('/');
            let id = format!("spiffe://{trust_domain}{prefix}");
            if !path_prefix.starts_with('/') || SpiffeId::parse(&id).is_none() {
                return Err(ConfigError::at(
                    format!("{path}.spiffe_path_prefix.path_prefix"),
                    format!("{path_prefix:?} must start with '/' and be a valid SPIFFE path"),
                ));
            }
            SanMatcher::SpiffePathPrefix {
                trust_domain,
                path_prefix: prefix.to_string(),
            }
        }
    })
}

fn compile_host(path: &str, h: &str) -> Result<HostPattern, ConfigError> {
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
    if !ok {
        return Err(ConfigError::at(
            path,
            format!("{h:?} must be a lower-case host name or *.suffix, without port"),
        ));
    }
    Ok(if wild {
        HostPattern::Suffix(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

impl TryFrom<SanAuthzConfig> for Compiled {
    type Error = ConfigError;

    fn try_from(raw: SanAuthzConfig) -> Result<Self, ConfigError> {
        let id = raw.identity;
        let mut trusted_cas = Vec::with_capacity(id.trusted_cas.len());
        for (i, pem) in id.trusted_cas.iter().enumerate() {
            trusted_cas.push(
                TrustedCa::from_pem(pem)
                    .map_err(|e| ConfigError::at(format!("identity.trusted_cas[{i}]"), e))?,
            );
        }
        // A certificate read from a header is only as good as its issuer:
        // without a CA list, any self-made certificate in the last XFCC
        // element would be believed. The connection's peer certificate was
        // validated by Envoy's handshake (the listener's trusted_ca).
        if id.source == Source::Xfcc && trusted_cas.is_empty() {
            return Err(ConfigError::at(
                "identity.trusted_cas",
                "required with source \"xfcc\": at least one CA certificate (PEM) \
                 that issued the clients' certificates (the certificate comes from \
                 a header, whose issuer nothing else checks)",
            ));
        }
        if id.max_sans == 0 {
            return Err(ConfigError::at("identity.max_sans", "must be at least 1"));
        }
        if id.signature_cache_size > 65_536 {
            return Err(ConfigError::at(
                "identity.signature_cache_size",
                "must be at most 65536",
            ));
        }
        if id.max_xfcc_elements == 0 {
            return Err(ConfigError::at(
                "identity.max_xfcc_elements",
                "must be at least 1",
            ));
        }
        if id.max_xfcc_bytes < 1024 {
            return Err(ConfigError::at(
                "identity.max_xfcc_bytes",
                "must be at least 1024 (a certificate does not fit in less)",
            ));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.name.is_empty() {
                return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
            }
            if r.sans.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.sans"),
                    "at least one SAN matcher is required",
                ));
            }
            if r.paths.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.paths"),
                    "at least one path rule is required ({\"prefix\": \"/\"} allows all)",
                ));
            }
            let mut sans = Vec::with_capacity(r.sans.len());
            for (j, m) in r.sans.into_iter().enumerate() {
                sans.push(compile_san(&format!("{at}.sans[{j}]"), m)?);
            }
            let mut hosts = Vec::with_capacity(r.hosts.len());
            for (j, h) in r.hosts.iter().enumerate() {
                hosts.push(compile_host(&format!("{at}.hosts[{j}]"), h)?);
            }
            let mut paths = Vec::with_capacity(r.paths.len());
            for (j, p) in r.paths.iter().enumerate() {
                let pat = format!("{at}.paths[{j}]");
                let (text, exact) = match (&p.prefix, &p.path) {
                    (Some(prefix), None) => (prefix, false),
                    (None, Some(path)) => (path, true),
                    _ => {
                        return Err(ConfigError::at(
                            pat,
                            "exactly one of `prefix` and `path` is required",
                        ))
                    }
                };
                let route = RouteMatcher::new(&pat, text, &p.methods)
                    .map_err(|mut e| {
                        if exact && e.path.ends_with(".prefix") {
                            e.path = format!("{pat}.path");
                        }
                        e
                    })?
                    .exact(exact);
                paths.push(PathMatcher { route });
            }
            rules.push(Rule {
                name: r.name,
                sans,
                hosts,
                paths,
            });
        }
        if let Some(h) = &raw.upstream_san_header {
            validate_header_name("upstream_san_header", h)?;
            if h.starts_with(':') {
                return Err(ConfigError::at(
                    "upstream_san_header",
                    "must not be a pseudo-header",
                ));
            }
        }
        Ok(Compiled {
            source: id.source,
            policy: Policy {
                trusted_cas,
                max_sans: id.max_sans,
            },
            require_hash: id.require_hash,
            max_xfcc_bytes: id.max_xfcc_bytes,
            max_xfcc_elements: id.max_xfcc_elements,
            signature_cache_size: id.signature_cache_size,
            rules,
            upstream_san_header: raw.upstream_san_header,
            dry_run: raw.dry_run,
        })
    }
}

/// Parses and compiles a JSON config.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    filter_core::config::load::<SanAuthzConfig, Compiled>(bytes)
}

/// The JSON Schema of [`SanAuthzConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(SanAuthzConfig)).unwrap_or_default()
}
