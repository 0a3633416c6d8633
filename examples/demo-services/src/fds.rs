//! The FDS feed (18082): an in-memory, versioned block list and a store of
//! suspicious-event reports.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ETAG, IF_NONE_MATCH, LOCATION};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::http::{self, Resp};

/// At most this many reports are kept; the oldest are dropped first.
pub const MAX_REPORTS: usize = 10_000;

/// Longest accepted `value`, `api` or `reason`.
const MAX_FIELD_LEN: usize = 1024;

/// The entry types the feed accepts.
pub const ENTRY_TYPES: [&str; 4] = ["user", "ip", "device", "user_api"];

/// A validated block-list entry, before it gets an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// One of [`ENTRY_TYPES`].
    pub kind: String,
    /// The user id, IP address (or CIDR), or device id.
    pub value: String,
    /// `"METHOD /path-prefix"`, for `user_api` entries only.
    pub api: Option<String>,
    /// Unix seconds after which the entry no longer applies.
    pub expires_at: Option<u64>,
    /// Free text.
    pub reason: String,
}

/// A stored block-list entry, as served.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// Increasing id, never reused.
    pub id: u64,
    /// One of [`ENTRY_TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The user id, IP address (or CIDR), or device id.
    pub value: String,
    /// `"METHOD /path-prefix"`, present for `user_api` entries only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Unix seconds, or null for no expiry.
    pub expires_at: Option<u64>,
    /// Free text.
    pub reason: String,
    /// Unix seconds when the entry was added.
    pub created_at: u64,
}

#[derive(Debug)]
struct Inner {
    version: u64,
    next_id: u64,
    entries: Vec<Entry>,
    reports: VecDeque<Value>,
}

/// State of the FDS feed.
#[derive(Debug)]
pub struct FdsState {
    inner: Mutex<Inner>,
}

impl Default for FdsState {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                version: 1,
                next_id: 1,
                entries: Vec::new(),
                reports: VecDeque::new(),
            }),
        }
    }
}

impl FdsState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No handler panics while holding the lock; if one ever did, the data
        // is still consistent enough for a demo.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handles one request to the FDS feed.
pub async fn handle(state: &FdsState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/v1/blocklist", Method::GET) => get_blocklist(state, &req),
        ("/v1/blocklist", Method::POST) => match http::read_body(req.into_body()).await {
            Ok(body) => add_entry(state, &body),
            Err(resp) => resp,
        },
        ("/v1/blocklist", Method::DELETE) => {
            let mut inner = state.lock();
            let removed = inner.entries.len();
            inner.entries.clear();
            inner.version += 1;
            http::json(
                StatusCode::OK,
                &json!({ "version": inner.version, "removed": removed }),
            )
        }
        ("/v1/blocklist", _) => http::method_not_allowed("GET, POST, DELETE"),
        ("/v1/reports", Method::POST) => match http::read_body(req.into_body()).await {
            Ok(body) => add_report(state, &body),
            Err(resp) => resp,
        },
        ("/v1/reports", Method::GET) => {
            let inner = state.lock();
            http::json(StatusCode::OK, &json!({ "reports": inner.reports }))
        }
        ("/v1/reports", Method::DELETE) => {
            let mut inner = state.lock();
            let removed = inner.reports.len();
            inner.reports.clear();
            http::json(StatusCode::OK, &json!({ "removed": removed }))
        }
        ("/v1/reports", _) => http::method_not_allowed("GET, POST, DELETE"),
        (p, m) => match p.strip_prefix("/v1/blocklist/").map(str::parse::<u64>) {
            Some(Ok(id)) if m == Method::DELETE => remove_entry(state, id),
            Some(Ok(_)) => http::method_not_allowed("DELETE"),
            _ => http::not_found(),
        },
    }
}

fn get_blocklist(state: &FdsState, req: &Request<Incoming>) -> Resp {
    let inner = state.lock();
    let etag = format!("\"{}\"", inner.version);
    let not_modified = req
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| etag_matches(v, &etag));
    let mut resp = if not_modified {
        http::empty(StatusCode::NOT_MODIFIED)
    } else {
        http::json(
            StatusCode::OK,
            &json!({ "version": inner.version, "entries": inner.entries }),
        )
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(ETAG, value);
    }
    resp
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison,
/// comma-separated lists and `*` accepted).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

fn add_entry(state: &FdsState, body: &[u8]) -> Resp {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return http::error(
                StatusCode::BAD_REQUEST,
                "invalid_entry",
                &format!("body is not valid JSON: {e}"),
            )
        }
    };
    let new = match validate_entry(&parsed) {
        Ok(new) => new,
        Err(message) => return http::error(StatusCode::BAD_REQUEST, "invalid_entry", &message),
    };
    let mut inner = state.lock();
    let entry = Entry {
        id: inner.next_id,
        kind: new.kind,
        value: new.value,
        api: new.api,
        expires_at: new.expires_at,
        reason: new.reason,
        created_at: http::unix_now(),
    };
    inner.next_id += 1;
    inner.version += 1;
    inner.entries.push(entry.clone());
    drop(inner);
    let value = serde_json::to_value(&entry).unwrap_or(Value::Null);
    let mut resp = http::json(StatusCode::CREATED, &value);
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/blocklist/{}", entry.id)) {
        resp.headers_mut().insert(LOCATION, loc);
    }
    resp
}

fn remove_entry(state: &FdsState, id: u64) -> Resp {
    let mut inner = state.lock();
    let before = inner.entries.len();
    inner.entries.retain(|e| e.id != id);
    if inner.entries.len() == before {
        return http::error(StatusCode::NOT_FOUND, "not_found", "no entry with this id");
    }
    inner.version += 1;
    http::json(
        StatusCode::OK,
        &json!({ "version": inner.version, "removed": 1 }),
    )
}

fn add_report(state: &FdsState, body: &[u8]) -> Resp {
    let mut report: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        _ => {
            return http::error(
                StatusCode::BAD_REQUEST,
                "invalid_report",
                "a report must be a JSON object",
            )
        }
    };
    report.insert("received_at".into(), Value::from(http::unix_now()));
    let mut inner = state.lock();
    push_bounded(&mut inner.reports, Value::Object(report), MAX_REPORTS);
    let stored = inner.reports.len();
    drop(inner);
    http::json(
        StatusCode::ACCEPTED,
        &json!({ "accepted": true, "stored": stored }),
    )
}

/// Appends `item`, dropping the oldest items beyond `max`.
pub fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, max: usize) {
    queue.push_back(item);
    while queue.len() > max {
        queue.pop_front();
    }
}

/// Validates a block-list entry as posted to `POST /v1/blocklist`.
///
/// Rules: an object; `type` one of [`ENTRY_TYPES`]; `value` a non-empty
/// string (for `ip`, an IP address or CIDR); `api` (`"METHOD /path-prefix"`)
/// present for `user_api` and absent (or null) otherwise; `expires_at` a
/// non-negative integer or null/absent; `reason` a string or null/absent.
/// Unknown fields are ignored.
pub fn validate_entry(v: &Value) -> Result<NewEntry, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "the entry must be a JSON object".to_owned())?;

    let kind = match obj.get("type") {
        Some(Value::String(t)) if ENTRY_TYPES.contains(&t.as_str()) => t.clone(),
        _ => return Err("`type` must be one of user, ip, device, user_api".into()),
    };

    let value = match obj.get("value") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => return Err("`value` must be a non-empty string".into()),
    };
    if value.len() > MAX_FIELD_LEN || value.chars().any(char::is_control) {
        return Err("`value` is too long or contains control characters".into());
    }
    if kind == "ip" && !is_ip_or_cidr(&value) {
        return Err("`value` of an ip entry must be an IP address or CIDR".into());
    }

    let api = match obj.get("api") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`api` must be a string".into()),
    };
    let api = match (kind.as_str(), api) {
        ("user_api", Some(api)) if is_valid_api(&api) => Some(api),
        ("user_api", Some(_)) => {
            return Err("`api` must look like \"METHOD /path-prefix\"".into());
        }
        ("user_api", None) => return Err("`api` is required for user_api entries".into()),
        (_, Some(_)) => return Err("`api` is only allowed for user_api entries".into()),
        (_, None) => None,
    };

    let expires_at = match obj.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs) => Some(secs),
            None => return Err("`expires_at` must be Unix seconds (integer) or null".into()),
        },
        Some(_) => return Err("`expires_at` must be Unix seconds (integer) or null".into()),
    };

    let reason = match obj.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= MAX_FIELD_LEN => s.clone(),
        Some(Value::String(_)) => return Err("`reason` is too long".into()),
        Some(_) => return Err("`reason` must be a string".into()),
    };

    Ok(NewEntry {
        kind,
        value,
        api,
        expires_at,
        reason,
    })
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((addr, prefix)) => match (addr.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(p)) => p <= 32,
            (Ok(IpAddr::V6(_)), Ok(p)) => p <= 128,
            _ => false,
        },
    }
}

/// `"METHOD /path-prefix"`: an upper-case method token (or `*`, any method,
/// as fds-block accepts), one space, and a path starting with `/` without
/// whitespace.
fn is_valid_api(api: &str) -> bool {
    if api.len() > MAX_FIELD_LEN {
        return false;
    }
    let Some((method, path)) = api.split_once(' ') else {
        return false;
    };
    (method == "*" || !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()))
        && path.starts_with('/')
        && !path.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: Value) -> NewEntry {
        match validate_entry(&v) {
            Ok(e) => e,
            Err(msg) => unreachable!("expected valid entry {v}: {msg}"),
        }
    }

    #[test]
    fn valid_entries() {
        let e =
            ok(json!({"type": "user", "value": "alice", "expires_at": null, "reason": "fraud"}));
        assert_eq!(
            e,
            NewEntry {
                kind: "user".into(),
                value: "alice".into(),
                api: None,
                expires_at: None,
                reason: "fraud".into(),
            }
        );
        let e = ok(
            json!({"type": "user_api", "value": "bob", "api": "POST /api/v1/transfers",
                          "expires_at": 1_900_000_000u64}),
        );
        assert_eq!(e.api.as_deref(), Some("POST /api/v1/transfers"));
        assert_eq!(e.expires_at, Some(1_900_000_000));
        assert_eq!(e.reason, "");
        let e = ok(json!({"type": "user_api", "value": "bob", "api": "* /api/v1/orders"}));
        assert_eq!(e.api.as_deref(), Some("* /api/v1/orders"));
        ok(json!({"type": "ip", "value": "203.0.113.7"}));
        ok(json!({"type": "ip", "value": "2001:db8::/32"}));
        ok(json!({"type": "device", "value": "dev-1", "api": null, "extra": 1}));
    }

    #[test]
    fn invalid_entries() {
        for bad in [
            json!([]),
            json!({"value": "alice"}),
            json!({"type": "admin", "value": "alice"}),
            json!({"type": "user", "value": ""}),
            json!({"type": "user", "value": "   "}),
            json!({"type": "user", "value": 5}),
            json!({"type": "user", "value": "alice", "api": "GET /x"}),
            json!({"type": "user_api", "value": "alice"}),
            json!({"type": "user_api", "value": "alice", "api": "get /x"}),
            json!({"type": "user_api", "value": "alice", "api": "GET x"}),
            json!({"type": "user_api", "value": "alice", "api": "GET"}),
            json!({"type": "ip", "value": "not-an-ip"}),
            json!({"type": "ip", "value": "10.0.0.0/33"}),
            json!({"type": "user", "value": "a", "expires_at": -1}),
            json!({"type": "user", "value": "a", "expires_at": 1.5}),
            json!({"type": "user", "value": "a", "expires_at": "tomorrow"}),
            json!({"type": "user", "value": "a", "reason": 3}),
        ] {
            assert!(validate_entry(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"3\"", "\"3\""));
        assert!(etag_matches("W/\"3\"", "\"3\""));
        assert!(etag_matches("\"1\", \"3\"", "\"3\""));
        assert!(etag_matches("*", "\"3\""));
        assert!(!etag_matches("\"2\"", "\"3\""));
        assert!(!etag_matches("3", "\"3\""));
    }

    #[test]
    fn reports_are_bounded() {
        let mut q = VecDeque::new();
        for i in 0..5 {
            push_bounded(&mut q, i, 3);
        }
        assert_eq!(q, VecDeque::from([2, 3, 4]));
    }
}
