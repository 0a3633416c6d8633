//! Decision logs: ONE structured line per denial (or dry-run would-deny),
//! the same shape from every filter, so that a log pipeline (Elasticsearch,
//! Loki …) parses it once and joins it with the access log (`request_id`,
//! `route`) and with the trace (`trace_id`).
//!
//! The line is a JSON object written with `log::info!` (Envoy prefixes it
//! with its own `[info][wasm] wasm log <plugin> …:`; everything from the
//! first `{` is the record):
//!
//! ```text
//! {"event":"gateway_denial","filter":"sanitize","dry_run":false,"gateway":"web","route":"api",
//!  "method":"POST","status":400,"code":"invalid_body","request_id":"5f0c…","trace_id":"4bf92f35…"}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `event` | always `gateway_denial` (filter on it) |
//! | `filter` | the filter that decided (`sanitize`, `jwt`, …) |
//! | `dry_run` | `true`: the filter would have denied but let the request through |
//! | `gateway` | Envoy virtual host name (`web`, `app`, `secure`, `egress`), `none` if unknown |
//! | `route` | Envoy route name (the access log's `route`), `none` when no route matched |
//! | `method` | request method |
//! | `status` | the status that was (or would have been) returned |
//! | `code` | the denial's stable `error` code |
//! | `request_id` | `x-request-id` (Envoy keeps or generates it) |
//! | `trace_id` | from `traceparent` (W3C) or `x-b3-traceid` (B3); absent when neither is valid |
//!
//! Never in the line: tokens, signatures, keys, cookies, bodies, query
//! strings, client-chosen header values other than the request id (which is
//! length-limited) — the code is a fixed string and the message is left out
//! on purpose (it may name a field of the client's body).

use serde::Serialize;

use crate::host::HttpHost;

/// `event` of every decision line.
pub const EVENT: &str = "gateway_denial";
/// Longest request id copied into a line (longer ones are cut).
pub const MAX_REQUEST_ID: usize = 128;
/// Placeholder for an unknown gateway or route.
pub const NONE: &str = "none";

/// The Envoy names of the request's virtual host (gateway) and route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteNames {
    pub gateway: String,
    pub route: String,
}

impl Default for RouteNames {
    fn default() -> Self {
        RouteNames {
            gateway: NONE.to_string(),
            route: NONE.to_string(),
        }
    }
}

/// Reads the Envoy virtual host and route names (two host calls; call it
/// once per request, only when a label or a log line needs them). Values
/// are reduced to `[A-Za-z0-9_-]`, at most 64 characters.
pub fn route_names<H: HttpHost + ?Sized>(host: &H) -> RouteNames {
    let read = |path: &[&str]| {
        host.property(path)
            .and_then(|v| String::from_utf8(v).ok())
            .map(|s| label_value(&s))
            .unwrap_or_else(|| NONE.to_string())
    };
    RouteNames {
        gateway: read(&["xds", "virtual_host_name"]),
        route: read(&["xds", "route_name"]),
    }
}

/// A value safe for a log field and a metric label: `[A-Za-z0-9_-]` kept,
/// anything else becomes `_`, at most 64 characters, empty → `none`.
pub fn label_value(v: &str) -> String {
    let s: String = v
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        NONE.to_string()
    } else {
        s
    }
}

/// The trace id of a request: the `trace-id` of a valid W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, not all zeros), else a valid B3
/// `x-b3-traceid` (16 or 32 hex digits). Lower-cased; anything else → None.
pub fn trace_id(headers: &[(String, String)]) -> Option<String> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
    };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tp) = get("traceparent") {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [version, trace, span, flags] = parts.as_slice() {
            if hex(version, 2)
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
            {
                return Some(trace.to_ascii_lowercase());
            }
        }
    }
    if let Some(b3) = get("x-b3-traceid") {
        if (hex(b3, 16) || hex(b3, 32)) && b3.bytes().any(|b| b != b'0') {
            return Some(b3.to_ascii_lowercase());
        }
    }
    None
}

/// One denial decision.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision<'a> {
    pub event: &'static str,
    pub filter: &'a str,
    pub dry_run: bool,
    pub gateway: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
}

impl<'a> Decision<'a> {
    /// A denial by `filter` with `status` and `code`; gateway/route unknown
    /// until [`Decision::at`] sets them.
    pub fn denial(filter: &'a str, method: &'a str, status: u16, code: &'a str) -> Self {
        Decision {
            event: EVENT,
            filter,
            dry_run: false,
            gateway: NONE,
            route: NONE,
            method,
            status,
            code,
            request_id: None,
            trace_id: None,
        }
    }

    #[must_use]
    pub fn at(mut self, names: &'a RouteNames) -> Self {
        self.gateway = &names.gateway;
        self.route = &names.route;
        self
    }

    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    #[must_use]
    pub fn request_id(mut self, id: Option<&'a str>) -> Self {
        self.request_id = id.map(|s| {
            let mut end = s.len().min(MAX_REQUEST_ID);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.get(..end).unwrap_or("")
        });
        self
    }

    #[must_use]
    pub fn trace_id(mut self, id: Option<&'a str>) -> Self {
        self.trace_id = id;
        self
    }

    /// The JSON line.
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"event":"{EVENT}","filter":"{}","status":{}}}"#,
                label_value(self.filter),
                self.status
            )
        })
    }

    /// Writes the line at info level.
    pub fn emit(&self) {
        log::info!("{}", self.line());
    }
}

/// Logs one denial line (the short form, for filters without a dry run).
#[allow(clippy::too_many_arguments)]
pub fn log_denial(
    filter: &str,
    names: &RouteNames,
    method: &str,
    status: u16,
    code: &str,
    request_id: Option<&str>,
    trace_id: Option<&str>,
) {
    Decision::denial(filter, method, status, code)
        .at(names)
        .request_id(request_id)
        .trace_id(trace_id)
        .emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn traceparent_wins_and_is_lower_cased() {
        let h = hdrs(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            (
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn b3_trace_id_is_used_when_there_is_no_valid_traceparent() {
        let h = hdrs(&[
            ("traceparent", "garbage"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
        ]);
        assert_eq!(trace_id(&h).as_deref(), Some("463ac35c9f6413ad"));
    }

    #[test]
    fn malformed_or_zero_trace_ids_are_dropped() {
        for v in [
            "463ac35c9f6413a",
            "zz3ac35c9f6413ad",
            "0000000000000000",
            "\"},{\"x\":1",
        ] {
            assert_eq!(trace_id(&hdrs(&[("x-b3-traceid", v)])), None, "{v}");
        }
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(trace_id(&hdrs(&[("traceparent", zero)])), None);
    }

    #[test]
    fn the_line_is_one_json_object_with_every_field() {
        let names = RouteNames {
            gateway: "web".into(),
            route: "api".into(),
        };
        let line = Decision::denial("sanitize", "POST", 400, "invalid_body")
            .at(&names)
            .request_id(Some("rid-1"))
            .trace_id(Some("463ac35c9f6413ad"))
            .line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "gateway_denial");
        assert_eq!(v["filter"], "sanitize");
        assert_eq!(v["dry_run"], false);
        assert_eq!(v["gateway"], "web");
        assert_eq!(v["route"], "api");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["status"], 400);
        assert_eq!(v["code"], "invalid_body");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["trace_id"], "463ac35c9f6413ad");
    }

    #[test]
    fn a_hostile_request_id_is_escaped_and_cut() {
        let evil = format!("a\"}}\n{{\"x\":\"{}", "b".repeat(500));
        let line = Decision::denial("jwt", "GET", 401, "missing_token")
            .request_id(Some(&evil))
            .line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"].as_str().unwrap().len(), MAX_REQUEST_ID);
        assert!(v.get("x").is_none());
    }

    #[test]
    fn route_names_come_from_envoy_properties_and_are_reduced() {
        let h = FakeHost::request("GET", "/")
            .with_property(&["xds", "route_name"], b"api v1")
            .with_property(&["xds", "virtual_host_name"], b"web");
        let n = route_names(&h);
        assert_eq!(n.gateway, "web");
        assert_eq!(n.route, "api_v1");
        assert_eq!(route_names(&FakeHost::new()), RouteNames::default());
    }
}
