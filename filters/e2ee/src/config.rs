//! e2ee's JSON config: the serde shape ([`E2eeConfig`], unknown fields
//! rejected, JSON Schema derived) and its compiled form ([`Compiled`]),
//! built once in `on_configure`.
//!
//! The master secrets are replay-guard's (the contract derives the
//! encryption keys from the same master secret as the signing keys): the
//! config names the environment variable of each version, read once at
//! configure time, exactly as replay-guard does.

use filter_core::config::{BodyHold, ConfigError};
use filter_core::route::RouteMatcher;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::{Limits, MIN_RECORD_SIZE};

/// The master secrets (shared with the other filter that reads them).
pub use filter_core::secrets::{MasterSecret, Secret, MAX_SECRETS, MIN_SECRET_BYTES};
/// Largest `max_body_bytes` (the body is buffered whole to be decrypted).
pub const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest `max_record_size` and `response.record_size`.
pub const MAX_RECORD_LIMIT: u32 = 16 * 1024 * 1024;
/// Largest `max_records`.
pub const MAX_RECORDS_LIMIT: u32 = 1 << 20;

/// What a route asks of request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every request must carry an `aes128gcm` body (a plaintext body, or
    /// none at all, is 400 `encryption_required`).
    Required,
    /// An `aes128gcm` body is decrypted, a plaintext body passes as it is.
    Optional,
    /// e2ee does nothing: an `aes128gcm` body reaches the upstream encrypted.
    Off,
}

/// The e2ee filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct E2eeConfig {
    /// Master secrets by version (1 to 4), the same variables as
    /// replay-guard's. IKM = HMAC-SHA256(master secret, "aes128gcm:" + key
    /// id). A key id naming a version (`<device>:<user>:<expiry>:<version>`)
    /// uses that secret; without one every configured secret is tried.
    pub master_secrets: Vec<MasterSecret>,
    /// The mode of requests that match no route (default `"required"`).
    #[serde(default = "default_mode")]
    pub default_mode: Mode,
    /// Per-route modes, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// Largest encrypted body, in bytes (default 1048576); larger → 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Largest record size (`rs`) a request body may use (default 1048576).
    #[serde(default = "default_max_record_size")]
    pub max_record_size: u32,
    /// Most records in one request body (default 1024).
    #[serde(default = "default_max_records")]
    pub max_records: u32,
    /// How responses to encrypted requests are encrypted.
    #[serde(default)]
    pub response: ResponseConfig,
}

/// One route's mode.
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
    /// `required`, `optional` or `off`.
    pub mode: Mode,
}

/// Response encryption.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Record size of encrypted responses (default 4096, at least 18): the
    /// most response plaintext held per stream between two body chunks is
    /// this minus 17 bytes.
    #[serde(default = "default_response_record_size")]
    pub record_size: u32,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            record_size: default_response_record_size(),
        }
    }
}

fn default_mode() -> Mode {
    Mode::Required
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_max_record_size() -> u32 {
    1024 * 1024
}
fn default_max_records() -> u32 {
    1024
}
fn default_response_record_size() -> u32 {
    4096
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: String,
    pub matcher: RouteMatcher,
    pub mode: Mode,
}

/// The ready-to-use configuration, shared by every request context.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub secrets: Vec<Secret>,
    pub default_mode: Mode,
    pub routes: Vec<CompiledRoute>,
    pub max_body_bytes: u64,
    pub limits: Limits,
    pub response_record_size: u32,
}

impl Compiled {
    /// The mode of a request.
    pub fn mode(&self, method: &str, path: &str) -> Mode {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path))
            .map_or(self.default_mode, |r| r.mode)
    }

    /// The master secrets to try for `keyid`: the one its version names
    /// (none when that version is not configured), else all of them.
    pub fn secrets_for<'a>(&'a self, keyid: &'a str) -> impl Iterator<Item = &'a Secret> + 'a {
        let version = keyid.split(':').nth(3);
        self.secrets
            .iter()
            .filter(move |s| version.is_none_or(|v| v == s.version))
    }

    /// The settings that make e2ee hold the request headers while it reads
    /// the body ([`BodyHold`]): an `aes128gcm` body is held until it is
    /// decrypted on every route whose mode is not `off` (and on no route,
    /// unless `default_mode` is `off`). A plaintext body is never held.
    pub fn body_hold(&self) -> Vec<BodyHold> {
        const WHY: &str = "an aes128gcm body is held until it is decrypted";
        let mut out: Vec<BodyHold> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.mode != Mode::Off)
            .map(|(i, r)| {
                BodyHold::new(format!("routes[{i}]"), format!("route {:?}: {WHY}", r.name))
            })
            .collect();
        if self.default_mode != Mode::Off {
            out.push(BodyHold::new(
                "default_mode",
                format!("requests on no route: {WHY}"),
            ));
        }
        out
    }

    /// Validates and compiles `c`, reading each secret's environment
    /// variable through `env` (`std::env::var` in the filter).
    pub fn compile(
        c: E2eeConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secrets = filter_core::secrets::compile(&c.master_secrets, env)?;
        let mut routes = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if r.name.is_empty() {
                return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
            }
            let matcher = RouteMatcher::new(&at, &r.prefix, &r.methods)?.exact(r.exact);
            routes.push(CompiledRoute {
                name: r.name.clone(),
                matcher,
                mode: r.mode,
            });
        }
        if c.max_body_bytes == 0 || c.max_body_bytes > MAX_BODY_LIMIT {
            return Err(ConfigError::at(
                "max_body_bytes",
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            ));
        }
        let rs_range = MIN_RECORD_SIZE..=MAX_RECORD_LIMIT;
        if !rs_range.contains(&c.max_record_size) {
            return Err(ConfigError::at(
                "max_record_size",
                format!("must be between {MIN_RECORD_SIZE} and {MAX_RECORD_LIMIT}"),
            ));
        }
        if !(1..=MAX_RECORDS_LIMIT).contains(&c.max_records) {
            return Err(ConfigError::at(
                "max_records",
                format!("must be between 1 and {MAX_RECORDS_LIMIT}"),
            ));
        }
        if !rs_range.contains(&c.response.record_size) {
            return Err(ConfigError::at(
                "response.record_size",
                format!("must be between {MIN_RECORD_SIZE} and {MAX_RECORD_LIMIT}"),
            ));
        }
        Ok(Compiled {
            secrets,
            default_mode: c.default_mode,
            routes,
            max_body_bytes: c.max_body_bytes,
            limits: Limits {
                max_record_size: c.max_record_size,
                max_records: c.max_records as usize,
            },
            response_record_size: c.response.record_size,
        })
    }
}

/// Parses and compiles a config.
pub fn load(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Compiled, ConfigError> {
    let raw: E2eeConfig = filter_core::config::parse_json(bytes)?;
    Compiled::compile(raw, env)
}

/// The JSON Schema of [`E2eeConfig`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(E2eeConfig)).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SECRET_B64: &str = "6uVwr+zo9rh/CyU3BUNq4p0/wad99gc4EK4KZJgK1wc=";
    pub(crate) const OLD_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    pub(crate) fn env(name: &str) -> Option<String> {
        match name {
            "K1" => Some(SECRET_B64.into()),
            "K0" => Some(OLD_B64.into()),
            "SHORT" => Some("c2hvcnQ=".into()),
            "BAD" => Some("***".into()),
            _ => None,
        }
    }

    fn err(json: &str) -> ConfigError {
        load(json.as_bytes(), &env).unwrap_err()
    }

    #[test]
    fn a_minimal_config_compiles_with_the_documented_defaults() {
        let c = load(br#"{"master_secrets":[{"version":"1","env":"K1"}]}"#, &env).unwrap();
        assert_eq!(c.default_mode, Mode::Required);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(
            c.limits,
            Limits {
                max_record_size: 1 << 20,
                max_records: 1024
            }
        );
        assert_eq!(c.response_record_size, 4096);
        assert_eq!(c.secrets[0].key.len(), 32);
        assert_eq!(c.mode("GET", "/anything"), Mode::Required);
    }

    #[test]
    fn routes_pick_the_mode_first_match_wins() {
        let c = load(
            br#"{"master_secrets":[{"version":"1","env":"K1"}],
                 "routes":[{"name":"t","prefix":"/api/v1/transfers","methods":["POST"],"mode":"required"},
                           {"name":"api","prefix":"/api/v1","mode":"optional"},
                           {"name":"health","prefix":"/health","exact":true,"mode":"off"}]}"#,
            &env,
        )
        .unwrap();
        assert_eq!(c.mode("POST", "/api/v1/transfers"), Mode::Required);
        assert_eq!(c.mode("GET", "/api/v1/transfers"), Mode::Optional);
        assert_eq!(c.mode("POST", "/api/v1/orders"), Mode::Optional);
        assert_eq!(c.mode("GET", "/health"), Mode::Off);
        assert_eq!(c.mode("GET", "/health/x"), Mode::Required);
        let holds: Vec<String> = c.body_hold().into_iter().map(|h| h.field).collect();
        assert_eq!(holds, ["routes[0]", "routes[1]", "default_mode"]);
    }

    #[test]
    fn problems_name_the_field() {
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
            err(r#"{"master_secrets":[{"version":"a b","env":"K1"}]}"#).path,
            "master_secrets[0].version"
        );
        let base = r#""master_secrets":[{"version":"1","env":"K1"}]"#;
        assert_eq!(
            err(&format!("{{{base},\"max_record_size\":17}}")).path,
            "max_record_size"
        );
        assert_eq!(
            err(&format!("{{{base},\"max_records\":0}}")).path,
            "max_records"
        );
        assert_eq!(
            err(&format!("{{{base},\"max_body_bytes\":0}}")).path,
            "max_body_bytes"
        );
        assert_eq!(
            err(&format!("{{{base},\"response\":{{\"record_size\":10}}}}")).path,
            "response.record_size"
        );
        assert_eq!(
            err(&format!(
                "{{{base},\"routes\":[{{\"name\":\"x\",\"prefix\":\"/\",\"mode\":\"maybe\"}}]}}"
            ))
            .path,
            "routes[0].mode"
        );
        assert_eq!(
            err(&format!(
                "{{{base},\"routes\":[{{\"name\":\"x\",\"prefix\":\"/\"}}]}}"
            ))
            .path,
            "routes[0]"
        );
        assert_eq!(err(&format!("{{{base},\"surprise\":1}}")).path, "surprise");
    }

    #[test]
    fn a_versioned_key_id_uses_its_secret_only() {
        let c = load(
            br#"{"master_secrets":[{"version":"2","env":"K1"},{"version":"1","env":"K0"}]}"#,
            &env,
        )
        .unwrap();
        let v = |k: &str| {
            c.secrets_for(k)
                .map(|s| s.version.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(v("d:u:1"), ["2", "1"]);
        assert_eq!(v("d:u:1:1"), ["1"]);
        assert_eq!(v("d:u:1:9"), Vec::<String>::new());
    }
}
