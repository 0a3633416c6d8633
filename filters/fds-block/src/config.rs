//! fds-block's JSON config: the serde shape ([`FdsBlockConfig`], unknown
//! fields rejected, JSON Schema derived) and its compiled form
//! ([`Compiled`]: the static entries already indexed), built once in
//! `on_configure`.

use std::time::Duration;

use filter_core::config::ConfigError;
use filter_core::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, Kind};
use crate::index::Index;
use crate::sync::Keys;

/// Default bound on entries per source (static list, feed list).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Largest `max_entries` accepted.
pub const MAX_ENTRIES_LIMIT: usize = 1_000_000;
/// How often every worker looks for a newly published list.
pub const SYNC_TICK: Duration = Duration::from_millis(250);
/// Default bound on the feed's response body.
pub const DEFAULT_MAX_FEED_BYTES: usize = 32 * 1024 * 1024;

/// The fds-block filter's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FdsBlockConfig {
    /// Entries that always apply (besides the feed's), same shape as the
    /// feed's entries. Default: none.
    #[serde(default)]
    pub entries: Vec<EntryConfig>,
    /// The live FDS feed. Absent: static entries only.
    #[serde(default)]
    pub feed: Option<FeedConfig>,
    /// Most entries per source (default 100000, at most 1000000): more static
    /// entries is a config error; a feed document with more live entries is
    /// refused as a whole (the last good list stays in force, and
    /// `fds_block_feed_errors_total` counts it).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Log and count what would be blocked, but let every request through
    /// (default false).
    #[serde(default)]
    pub dry_run: bool,
}

fn default_max_entries() -> usize {
    DEFAULT_MAX_ENTRIES
}

/// A static block-list entry.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// What the entry blocks.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// User id, device id, or IP address / CIDR (IPv4 or IPv6).
    pub value: String,
    /// `"METHOD /path-prefix"` (upper-case method or `*`); required for
    /// `user_api`, refused for the other types.
    #[serde(default)]
    pub api: Option<String>,
    /// Unix seconds from which the entry no longer applies; absent or null:
    /// never expires.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Logged on a block (never sent to the client).
    #[serde(default)]
    pub reason: String,
}

/// Where and how often to poll the FDS feed.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Envoy cluster of the FDS service (required).
    pub cluster: String,
    /// `:authority` of the poll request (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Path of the block list (default `/v1/blocklist`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Time between polls (default "1s"; at least 100ms). A poll of an
    /// unchanged list costs one 304 thanks to `If-None-Match`.
    #[serde(default = "default_interval")]
    pub interval: ConfigDuration,
    /// Timeout of one poll (default "2s").
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Largest feed response body accepted, in bytes (default 33554432).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// What to do with requests before this worker has the feed's list for
    /// the first time (at start, or while the FDS service has never
    /// answered): `deny` (default: 503 `blocklist_unavailable` with
    /// `Retry-After: 1`) or `static_only` (judge on the static entries).
    #[serde(default)]
    pub until_loaded: UntilLoaded,
}

/// Behaviour before the first feed list is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UntilLoaded {
    /// 503 with `Retry-After: 1` (fail closed).
    #[default]
    Deny,
    /// Judge on the static entries only (fail open for the feed's).
    StaticOnly,
}

fn default_path() -> String {
    "/v1/blocklist".into()
}
fn default_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_FEED_BYTES
}

/// The compiled feed settings.
#[derive(Debug, Clone)]
pub struct Feed {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
    pub until_loaded: UntilLoaded,
    pub keys: Keys,
}

impl Feed {
    /// How long a poller holds the lease: the call's timeout plus a margin,
    /// after which another worker may take over.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(1)
    }
    /// How often each worker ticks (checks the small shared state for a new
    /// list, and polls when due): every 250 ms, so that all workers apply a
    /// list within ~250 ms of the one that fetched it. A tick that finds
    /// nothing new costs two small shared-data reads.
    pub fn tick(&self) -> Duration {
        self.interval.min(SYNC_TICK)
    }
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The static entries, indexed.
    pub static_index: Index,
    pub feed: Option<Feed>,
    pub max_entries: usize,
    pub dry_run: bool,
}

impl TryFrom<FdsBlockConfig> for Compiled {
    type Error = ConfigError;

    fn try_from(raw: FdsBlockConfig) -> Result<Self, ConfigError> {
        if raw.max_entries == 0 || raw.max_entries > MAX_ENTRIES_LIMIT {
            return Err(ConfigError::at(
                "max_entries",
                format!("must be between 1 and {MAX_ENTRIES_LIMIT}"),
            ));
        }
        if raw.entries.len() > raw.max_entries {
            return Err(ConfigError::at(
                "entries",
                format!(
                    "{} static entries exceed max_entries = {}",
                    raw.entries.len(),
                    raw.max_entries
                ),
            ));
        }
        let mut static_index = Index::default();
        for (i, e) in raw.entries.iter().enumerate() {
            let entry = Entry::new(
                e.kind,
                &e.value,
                e.api.as_deref(),
                e.expires_at,
                &e.reason,
                None,
            )
            .map_err(|(field, msg)| ConfigError::at(format!("entries[{i}].{field}"), msg))?;
            // Static entries are not dropped when already expired at load:
            // the request-time check ignores them anyway.
            static_index.insert(&entry);
        }
        let feed = match raw.feed {
            None => None,
            Some(f) => Some(compile_feed(f)?),
        };
        Ok(Compiled {
            static_index,
            feed,
            max_entries: raw.max_entries,
            dry_run: raw.dry_run,
        })
    }
}

fn compile_feed(f: FeedConfig) -> Result<Feed, ConfigError> {
    if f.cluster.is_empty() {
        return Err(ConfigError::at("feed.cluster", "must not be empty"));
    }
    if !f.path.starts_with('/')
        || f.path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ConfigError::at(
            "feed.path",
            "must start with '/' and hold no whitespace",
        ));
    }
    if f.interval.as_duration() < Duration::from_millis(100) {
        return Err(ConfigError::at("feed.interval", "must be at least 100ms"));
    }
    if f.timeout.as_duration() < Duration::from_millis(100)
        || f.timeout.as_duration() > Duration::from_secs(60)
    {
        return Err(ConfigError::at(
            "feed.timeout",
            "must be between 100ms and 60s",
        ));
    }
    if f.max_bytes == 0 {
        return Err(ConfigError::at("feed.max_bytes", "must be at least 1"));
    }
    let authority = f.authority.unwrap_or_else(|| f.cluster.clone());
    if authority.is_empty() {
        return Err(ConfigError::at("feed.authority", "must not be empty"));
    }
    let keys = Keys::new(&f.cluster, &authority, &f.path);
    Ok(Feed {
        cluster: f.cluster,
        authority,
        path: f.path,
        interval: f.interval.as_duration(),
        timeout: f.timeout.as_duration(),
        max_bytes: f.max_bytes,
        until_loaded: f.until_loaded,
        keys,
    })
}

/// Parses and compiles a JSON config.
pub fn load(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    filter_core::config::load::<FdsBlockConfig, Compiled>(bytes)
}

/// The JSON Schema of the config.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(FdsBlockConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_a_static_only_filter_with_defaults() {
        let c = load(b"{}").unwrap();
        assert!(c.feed.is_none());
        assert_eq!(c.max_entries, DEFAULT_MAX_ENTRIES);
        assert!(!c.dry_run);
    }

    #[test]
    fn feed_defaults() {
        let c = load(br#"{"feed": {"cluster": "fds"}}"#).unwrap();
        let f = c.feed.unwrap();
        assert_eq!(f.authority, "fds");
        assert_eq!(f.path, "/v1/blocklist");
        assert_eq!(f.interval, Duration::from_secs(1));
        assert_eq!(f.until_loaded, UntilLoaded::Deny);
        assert_eq!(f.lease(), Duration::from_secs(3));
    }

    #[test]
    fn static_entries_are_indexed() {
        let c = load(
            br#"{"entries": [{"type": "ip", "value": "192.0.2.0/24", "reason": "x"},
                             {"type": "user_api", "value": "a", "api": "POST /api/v1/orders"}]}"#,
        )
        .unwrap();
        assert_eq!(c.static_index.counts().ip, 1);
        assert_eq!(c.static_index.counts().user_api, 1);
    }

    #[test]
    fn too_many_static_entries_is_an_error() {
        let e = load(br#"{"max_entries": 1, "entries": [{"type": "user", "value": "a"}, {"type": "user", "value": "b"}]}"#)
            .unwrap_err();
        assert_eq!(e.path, "entries");
    }
}
