//! The FDS feed document (`GET /v1/blocklist`) and the compact list that the
//! fetching worker stores in shared data for every other worker.
//!
//! The feed is external input: unknown fields are ignored (the service adds
//! `created_at`, may add more), an invalid entry is skipped and counted
//! rather than failing the whole list, and the document as a whole is
//! refused (the last good list stays in force) when it is not JSON, has no
//! `version`, or holds more entries than `max_entries`.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, Kind};
use crate::index::Index;

#[derive(Debug, Deserialize)]
struct RawFeed {
    version: u64,
    entries: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
struct RawEntry {
    #[serde(default)]
    id: Option<u64>,
    #[serde(rename = "type")]
    kind: String,
    value: String,
    #[serde(default)]
    api: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

/// Why a feed document was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("feed body is {0} bytes, over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("feed body is not a block list: {0}")]
    Malformed(String),
    #[error("feed holds {0} live entries, over max_entries = {1}; keeping the last good list")]
    TooManyEntries(usize, usize),
    #[error("feed answered HTTP {0}")]
    Status(u16),
    #[error("feed call failed: {0}")]
    Call(String),
}

/// A parsed feed: its version, the live valid entries, and how many entries
/// were skipped as invalid (with the first reason, for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub version: u64,
    pub entries: Vec<Entry>,
    pub invalid: usize,
    pub first_invalid: Option<String>,
}

/// Parses a feed body. Entries already expired at `now` are dropped (they
/// would never match). More than `max_entries` live entries → refused.
pub fn parse(body: &[u8], max_entries: usize, now: u64) -> Result<Parsed, FeedError> {
    let raw: RawFeed =
        serde_json::from_slice(body).map_err(|e| FeedError::Malformed(e.to_string()))?;
    let mut entries = Vec::with_capacity(raw.entries.len().min(max_entries));
    let mut invalid = 0;
    let mut first_invalid = None;
    for (i, r) in raw.entries.into_iter().enumerate() {
        let built = match Kind::parse(&r.kind) {
            None => Err(format!("entries[{i}].type: unknown type {:?}", r.kind)),
            Some(kind) => Entry::new(
                kind,
                &r.value,
                r.api.as_deref(),
                r.expires_at,
                r.reason.as_deref().unwrap_or(""),
                r.id,
            )
            .map_err(|(field, msg)| format!("entries[{i}].{field}: {msg}")),
        };
        match built {
            Ok(e) if e.live_at(now) => entries.push(e),
            Ok(_) => {}
            Err(msg) => {
                invalid += 1;
                first_invalid.get_or_insert(msg);
            }
        }
        if entries.len() > max_entries {
            // Stop early: do not build a huge vector only to refuse it.
            return Err(FeedError::TooManyEntries(entries.len(), max_entries));
        }
    }
    Ok(Parsed {
        version: raw.version,
        entries,
        invalid,
        first_invalid,
    })
}

/// One entry in the shared-data list: short field names, it is stored once
/// per process but copied into every worker on each change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct StoredEntry {
    #[serde(rename = "t")]
    kind: Kind,
    #[serde(rename = "v")]
    value: String,
    #[serde(rename = "a", default)]
    api: Option<String>,
    #[serde(rename = "x", default)]
    expires_at: Option<u64>,
    #[serde(rename = "r", default)]
    reason: String,
    #[serde(rename = "i", default)]
    id: Option<u64>,
}

impl StoredEntry {
    fn validate(&self) -> Option<Entry> {
        Entry::new(
            self.kind,
            &self.value,
            self.api.as_deref(),
            self.expires_at,
            &self.reason,
            self.id,
        )
        .ok()
    }
}

/// The serialising twin of [`StoredEntry`], borrowing from an [`Entry`] so
/// that encoding a list makes no second copy of it.
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    t: Kind,
    v: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<u64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    r: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    i: Option<u64>,
}

#[derive(Serialize)]
struct StoredListRef<'a> {
    g: u64,
    v: u64,
    e: Vec<StoredEntryRef<'a>>,
}

/// Encodes the list stored in shared data: `{"g": generation (bumped on
/// every publish, so workers notice a change even if the feed's own version
/// restarts), "v": feed version, "e": [entries]}`.
pub fn encode_list(generation: u64, version: u64, entries: &[Entry]) -> Vec<u8> {
    let list = StoredListRef {
        g: generation,
        v: version,
        e: entries
            .iter()
            .map(|e| StoredEntryRef {
                t: e.kind,
                v: &e.value,
                a: e.api.as_ref().map(|a| a.to_spec()),
                x: e.expires_at,
                r: &e.reason,
                i: e.id,
            })
            .collect(),
    };
    serde_json::to_vec(&list).unwrap_or_default()
}

/// The list as stored in shared data, decoded (tests and tools; the filter
/// decodes straight into an index with [`decode_index`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StoredList {
    #[serde(rename = "g")]
    pub generation: u64,
    #[serde(rename = "v")]
    pub version: u64,
    #[serde(rename = "e")]
    entries: Vec<StoredEntry>,
}

impl StoredList {
    pub fn decode(bytes: &[u8]) -> Option<StoredList> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, validated again; invalid ones are skipped.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .iter()
            .filter_map(StoredEntry::validate)
            .collect()
    }
}

/// A stored list decoded into an index.
#[derive(Debug, Clone)]
pub struct LoadedList {
    pub generation: u64,
    pub version: u64,
    /// Entries in the stored list (before expiry/validation).
    pub len: usize,
    pub index: Index,
}

/// Decodes a stored list straight into an index: each entry is validated
/// again (the bytes come from shared data, which any plugin with the same
/// vm_id could write), inserted if live at `now`, and dropped before the
/// next is read, so a worker's rebuild never holds a second copy of the
/// list. More than `max_entries` entries → refused.
pub fn decode_index(bytes: &[u8], now: u64, max_entries: usize) -> Result<LoadedList, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let loaded = serde::Deserializer::deserialize_map(&mut de, ListVisitor { now, max_entries })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(loaded)
}

struct ListVisitor {
    now: u64,
    max_entries: usize,
}

impl<'de> Visitor<'de> for ListVisitor {
    type Value = LoadedList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stored block list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LoadedList, A::Error> {
        let (mut generation, mut version, mut entries) = (None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "g" => generation = Some(map.next_value::<u64>()?),
                "v" => version = Some(map.next_value::<u64>()?),
                "e" => {
                    entries = Some(map.next_value_seed(EntriesSeed {
                        now: self.now,
                        max_entries: self.max_entries,
                    })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (index, len) = entries.ok_or_else(|| de::Error::missing_field("e"))?;
        Ok(LoadedList {
            generation: generation.ok_or_else(|| de::Error::missing_field("g"))?,
            version: version.ok_or_else(|| de::Error::missing_field("v"))?,
            len,
            index,
        })
    }
}

struct EntriesSeed {
    now: u64,
    max_entries: usize,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed {
    type Value = (Index, usize);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(Index, usize), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed {
    type Value = (Index, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(Index, usize), A::Error> {
        let mut index = Index::default();
        let mut n = 0usize;
        while let Some(stored) = seq.next_element::<StoredEntry>()? {
            n += 1;
            if n > self.max_entries {
                return Err(de::Error::custom(format!(
                    "more than max_entries = {} entries",
                    self.max_entries
                )));
            }
            if let Some(e) = stored.validate() {
                if e.live_at(self.now) {
                    index.insert(&e);
                }
            }
        }
        Ok((index, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED: &str = r#"{"version": 7, "entries": [
        {"id": 1, "type": "user", "value": "mallory", "expires_at": null, "reason": "ato", "created_at": 5},
        {"id": 2, "type": "ip", "value": "203.0.113.0/24", "reason": "botnet"},
        {"id": 3, "type": "user_api", "value": "alice", "api": "POST /api/v1/orders", "expires_at": 2000000000},
        {"id": 4, "type": "device", "value": "dev-9"},
        {"id": 5, "type": "user", "value": "old", "expires_at": 10},
        {"id": 6, "type": "ip", "value": "not-an-ip"},
        {"id": 7, "type": "planet", "value": "x"}
    ]}"#;

    #[test]
    fn parses_valid_entries_and_skips_invalid_and_expired() {
        let p = parse(FEED.as_bytes(), 100, 1000).unwrap();
        assert_eq!(p.version, 7);
        assert_eq!(p.entries.len(), 4);
        assert_eq!(p.invalid, 2);
        assert!(p.first_invalid.unwrap().starts_with("entries[5].value"));
        assert_eq!(p.entries[1].value, "203.0.113.0/24");
    }

    #[test]
    fn refuses_non_json_and_missing_version() {
        assert!(matches!(
            parse(b"<html>", 10, 0),
            Err(FeedError::Malformed(_))
        ));
        assert!(matches!(
            parse(br#"{"entries": []}"#, 10, 0),
            Err(FeedError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_more_live_entries_than_max() {
        assert_eq!(
            parse(FEED.as_bytes(), 3, 1000),
            Err(FeedError::TooManyEntries(4, 3))
        );
    }

    #[test]
    fn stored_list_round_trips() {
        let p = parse(FEED.as_bytes(), 100, 1000).unwrap();
        let bytes = encode_list(3, p.version, &p.entries);
        let back = StoredList::decode(&bytes).unwrap();
        assert_eq!((back.generation, back.version), (3, 7));
        assert_eq!(back.entries(), p.entries);
    }

    #[test]
    fn stored_list_decodes_straight_into_an_index() {
        let p = parse(FEED.as_bytes(), 100, 1000).unwrap();
        let bytes = encode_list(3, p.version, &p.entries);
        let loaded = decode_index(&bytes, 1000, 100).unwrap();
        assert_eq!((loaded.generation, loaded.version, loaded.len), (3, 7, 4));
        assert_eq!(
            loaded.index.counts(),
            Index::build(&p.entries, 1000).counts()
        );
        assert!(loaded.index.user("mallory", 1000).is_some());
        // entries expire by the time of the rebuild
        assert_eq!(
            decode_index(&bytes, 2_000_000_000, 100)
                .unwrap()
                .index
                .counts()
                .user_api,
            0
        );
    }

    #[test]
    fn a_stored_list_over_max_entries_or_garbled_is_refused() {
        let p = parse(FEED.as_bytes(), 100, 1000).unwrap();
        let bytes = encode_list(3, p.version, &p.entries);
        assert!(decode_index(&bytes, 1000, 3)
            .unwrap_err()
            .contains("max_entries"));
        assert!(decode_index(b"{\"g\": 1}", 1000, 3).is_err());
        assert!(decode_index(b"[]", 1000, 3).is_err());
        assert!(decode_index(&bytes[..bytes.len() - 1], 1000, 100).is_err());
    }
}
