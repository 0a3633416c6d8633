//! The shared store: once-only claims (one-time `jti`s, nonces) that hold
//! across every replica of a gateway, kept in Redis behind the
//! `gateway-store` sidecar (docs/gateway-store.md), reached with one HTTP
//! callout per claim (`dispatch_http_call` to an Envoy cluster; upstream
//! Envoy has no proxy-wasm Redis call).
//!
//! This module is the pure part every filter shares: the config section
//! ([`SharedStoreConfig`] → [`SharedStore`]), the callout it sends for a
//! [`Claim`] and how the answer reads ([`ClaimAnswer`]). A claim is
//! `POST /v1/claim/<namespace>/<key>?ttl_ms=N`, where the key is the hex of
//! a SHA-256 the filter computed (never a client string or a bearer token),
//! and the sidecar runs one atomic `SET gw:<namespace>:<key> <id> NX PX N`:
//! 201 claimed, 409 claimed before (a replay), anything else (503, a
//! timeout, a reset, no sidecar) is "no answer", which fails closed unless
//! the filter's config opts into the per-replica fallback.

use std::fmt::Write as _;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::denial::Denial;
use crate::duration::ConfigDuration;

/// The longest a request may wait for its claim (the contract: "well under
/// a second").
pub const MAX_TIMEOUT: Duration = Duration::from_secs(1);
/// The default wait.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;
/// The `Retry-After` (seconds) of a refusal for want of an answer.
pub const RETRY_AFTER_SECS: u64 = 1;

/// What a filter does when the store gives no answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse with 503 `replay_check_unavailable` and `Retry-After` (the
    /// default: the once-only guarantee is never silently weakened).
    #[default]
    Deny,
    /// Decide on this replica's own store alone. WEAKER: while the shared
    /// store is down, a request replayed to another replica (or to this
    /// one after a restart) is accepted.
    Local,
}

/// The `shared_store` section of a filter's config.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedStoreConfig {
    /// Envoy cluster of the gateway-store sidecar (e.g. "gateway_store").
    pub cluster: String,
    /// `:authority` of the callout (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Key namespace, one per gateway and filter (e.g. "web.jwt"): lower-case
    /// letters, digits, `.` and `-`, at most 64 characters. The sidecar only
    /// serves the namespaces it is started with. Every replica of a gateway
    /// must use the same one.
    pub namespace: String,
    /// How long a request waits for its claim before the `on_unavailable`
    /// rule applies (default "100ms", at most "1s").
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// `deny` (default) or `local`.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(DEFAULT_TIMEOUT_MS))
}

/// A validated `shared_store` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStore {
    pub cluster: String,
    pub authority: String,
    pub namespace: String,
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
    /// `timeout` in milliseconds, as the `x-deadline-ms` header sends it.
    deadline_ms: String,
}

impl SharedStoreConfig {
    /// Validates the section; errors name `<at>.<field>`.
    pub fn compile(self, at: &str) -> Result<SharedStore, ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.cluster"),
                "must not be empty",
            ));
        }
        if !valid_namespace(&self.namespace) {
            return Err(ConfigError::at(
                format!("{at}.namespace"),
                "must be 1 to 64 characters of a-z, 0-9, '.' and '-'",
            ));
        }
        let timeout = self.timeout.as_duration();
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(ConfigError::at(
                format!("{at}.timeout"),
                "must be between 1ms and 1s",
            ));
        }
        Ok(SharedStore {
            authority: self.authority.unwrap_or_else(|| self.cluster.clone()),
            cluster: self.cluster,
            namespace: self.namespace,
            deadline_ms: sidecar_deadline(timeout).as_millis().to_string(),
            timeout,
            on_unavailable: self.on_unavailable,
        })
    }
}

/// The deadline the sidecar is given: a fifth (at most 20 ms) under the
/// filter's own timeout, so that it answers 503 itself (and releases a claim
/// that lands later) before Envoy cuts the call.
fn sidecar_deadline(timeout: Duration) -> Duration {
    let margin = (timeout / 5).min(Duration::from_millis(20));
    timeout.saturating_sub(margin).max(Duration::from_millis(1))
}

/// Whether `ns` is a namespace the sidecar's URL and Redis key can carry.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// One key to claim once: a SHA-256 (of the issuer and `jti`, of the key
/// id and nonce) and how long the claim must be remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub key: [u8; 32],
    /// At least 1 ms.
    pub ttl_ms: u64,
}

/// The pieces of the callout for a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout<'a> {
    pub cluster: &'a str,
    pub headers: [(&'static str, String); 4],
    pub timeout: Duration,
}

impl SharedStore {
    /// The callout that claims `claim`: `POST /v1/claim/<ns>/<hex>?ttl_ms=N`
    /// with the filter's deadline in `x-deadline-ms` (the sidecar answers
    /// 503 by then instead of letting Envoy's timeout cut the call).
    pub fn claim_callout(&self, claim: &Claim) -> Callout<'_> {
        let mut path = String::with_capacity(32 + self.namespace.len() + 64);
        path.push_str("/v1/claim/");
        path.push_str(&self.namespace);
        path.push('/');
        push_hex(&mut path, &claim.key);
        let _ = write!(path, "?ttl_ms={}", claim.ttl_ms.max(1));
        Callout {
            cluster: &self.cluster,
            headers: [
                (":method", "POST".to_string()),
                (":path", path),
                (":authority", self.authority.clone()),
                ("x-deadline-ms", self.deadline_ms.clone()),
            ],
            timeout: self.timeout,
        }
    }
}

impl SharedStore {
    /// The callout of a session operation (`method` PUT, GET or DELETE) on
    /// `/v1/session/<ns>/<hex key>` with `query` (`ttl_ms=N` for PUT,
    /// `idle_ms=N` or `consume=1` for GET, empty for none), the filter's
    /// deadline in `x-deadline-ms` as for claims.
    pub fn session_callout(
        &self,
        method: &'static str,
        key: &[u8; 32],
        query: &str,
    ) -> Callout<'_> {
        let mut path = String::with_capacity(32 + self.namespace.len() + 64 + query.len());
        path.push_str("/v1/session/");
        path.push_str(&self.namespace);
        path.push('/');
        push_hex(&mut path, key);
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        Callout {
            cluster: &self.cluster,
            headers: [
                (":method", method.to_string()),
                (":path", path),
                (":authority", self.authority.clone()),
                ("x-deadline-ms", self.deadline_ms.clone()),
            ],
            timeout: self.timeout,
        }
    }
}

/// What the store said about a session operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAnswer {
    /// 200 with the value (GET), or 204 (PUT, DELETE).
    Ok,
    /// 404: no such key (GET), never set or expired.
    NotFound,
    /// No answer in time, or any other status.
    Unavailable,
}

impl SessionAnswer {
    /// Reads the callout's `:status` (`None`: the call failed or timed out).
    pub fn from_status(status: Option<&str>) -> Self {
        match status {
            Some("200" | "204") => SessionAnswer::Ok,
            Some("404") => SessionAnswer::NotFound,
            _ => SessionAnswer::Unavailable,
        }
    }
}

/// Appends the lower-case hex of `bytes`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
}

/// What the store said about a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// First claim: the request may go on.
    Claimed,
    /// Claimed before, on any replica: a replay.
    Taken,
    /// No answer in time (timeout, reset, sidecar or Redis down, any other
    /// status).
    Unavailable,
}

impl ClaimAnswer {
    /// Reads the callout's `:status` (`None`: the call failed or timed out).
    pub fn from_status(status: Option<&str>) -> Self {
        match status {
            Some("201") => ClaimAnswer::Claimed,
            Some("409") => ClaimAnswer::Taken,
            _ => ClaimAnswer::Unavailable,
        }
    }
}

/// The refusal when the store gives no answer in time.
pub fn unavailable_denial() -> Denial {
    Denial::unavailable(
        "replay_check_unavailable",
        "the one-time check cannot be made right now; retry shortly",
    )
    .with_header("retry-after", RETRY_AFTER_SECS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<SharedStore, ConfigError> {
        crate::config::parse_json::<SharedStoreConfig>(json.as_bytes())?.compile("shared_store")
    }

    #[test]
    fn a_section_compiles_with_its_defaults() {
        let s = cfg(r#"{"cluster":"gateway_store","namespace":"web.jwt"}"#).unwrap();
        assert_eq!(s.authority, "gateway_store");
        assert_eq!(s.timeout, Duration::from_millis(100));
        assert_eq!(s.on_unavailable, OnUnavailable::Deny);
        let s = cfg(r#"{"cluster":"c","namespace":"a","timeout":"250ms","on_unavailable":"local","authority":"store"}"#).unwrap();
        assert_eq!(
            (s.authority.as_str(), s.on_unavailable),
            ("store", OnUnavailable::Local)
        );
    }

    #[test]
    fn bad_sections_name_their_field() {
        for (json, field) in [
            (r#"{"cluster":"","namespace":"a"}"#, "shared_store.cluster"),
            (
                r#"{"cluster":"c","namespace":"Web"}"#,
                "shared_store.namespace",
            ),
            (
                r#"{"cluster":"c","namespace":"a/b"}"#,
                "shared_store.namespace",
            ),
            (
                r#"{"cluster":"c","namespace":""}"#,
                "shared_store.namespace",
            ),
            (
                r#"{"cluster":"c","namespace":"a","timeout":"0ms"}"#,
                "shared_store.timeout",
            ),
            (
                r#"{"cluster":"c","namespace":"a","timeout":"2s"}"#,
                "shared_store.timeout",
            ),
        ] {
            assert_eq!(cfg(json).unwrap_err().path, field, "{json}");
        }
        assert!(cfg(r#"{"cluster":"c","namespace":"a","on_unavailable":"allow"}"#).is_err());
        assert!(cfg(r#"{"cluster":"c","namespace":"a","extra":1}"#).is_err());
        assert!(!valid_namespace(&"a".repeat(65)));
    }

    #[test]
    fn a_claim_is_one_post_with_the_hex_key_and_the_deadline() {
        let s =
            cfg(r#"{"cluster":"gateway_store","namespace":"app.replay-guard","timeout":"80ms"}"#)
                .unwrap();
        let mut key = [0u8; 32];
        key[0] = 0xab;
        key[31] = 0x01;
        let c = s.claim_callout(&Claim { key, ttl_ms: 0 });
        assert_eq!(c.cluster, "gateway_store");
        assert_eq!(c.timeout, Duration::from_millis(80));
        let path = &c.headers[1].1;
        assert!(
            path.starts_with("/v1/claim/app.replay-guard/ab0000"),
            "{path}"
        );
        assert!(path.ends_with("0001?ttl_ms=1"), "{path}");
        assert_eq!(
            path.len(),
            "/v1/claim/app.replay-guard/".len() + 64 + "?ttl_ms=1".len()
        );
        // the sidecar's deadline is under the filter's: it answers first
        assert_eq!(c.headers[3], ("x-deadline-ms", "64".to_string()));
        assert_eq!(
            sidecar_deadline(Duration::from_millis(100)),
            Duration::from_millis(80)
        );
        assert_eq!(
            sidecar_deadline(Duration::from_secs(1)),
            Duration::from_millis(980)
        );
        assert_eq!(
            sidecar_deadline(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn only_201_claims_and_only_409_is_a_replay() {
        assert_eq!(ClaimAnswer::from_status(Some("201")), ClaimAnswer::Claimed);
        assert_eq!(ClaimAnswer::from_status(Some("409")), ClaimAnswer::Taken);
        for s in [None, Some("200"), Some("503"), Some("404"), Some("")] {
            assert_eq!(ClaimAnswer::from_status(s), ClaimAnswer::Unavailable);
        }
        let d = unavailable_denial();
        assert_eq!((d.status, d.code), (503, "replay_check_unavailable"));
        assert!(d
            .headers
            .iter()
            .any(|(n, v)| *n == "retry-after" && v == "1"));
    }
}
