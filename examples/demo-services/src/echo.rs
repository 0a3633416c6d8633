//! The echo upstream (18080) and the partner upstream (18083): both reflect
//! the request they received as JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Map, Value};

use crate::http::{self, Resp};

/// Paths under this prefix obey `?status=` and `?delay_ms=`.
const UNSTABLE_PREFIX: &str = "/api/v1/unstable/";

/// State of the echo service.
#[derive(Debug, Default)]
pub struct EchoState {
    /// Requests seen on every path other than `/_stats...`.
    requests: AtomicU64,
}

/// Handles one request to the echo service.
pub async fn handle_echo(state: &EchoState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if path == "/_stats" || path.starts_with("/_stats/") {
        return stats(state, req.method(), path);
    }
    // Counted as soon as the headers are here, before any body is read.
    state.requests.fetch_add(1, Ordering::SeqCst);

    let query = req.uri().query().unwrap_or("").to_owned();
    let unstable = path.starts_with(UNSTABLE_PREFIX);
    let status = if unstable {
        match requested_status(&query) {
            Some(status) => status,
            None => {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_status",
                    "status must be an integer in 200..=599",
                )
            }
        }
    } else {
        StatusCode::OK
    };

    let mut reflected = match reflect(req).await {
        Ok(value) => value,
        Err(resp) => return resp,
    };
    if let Some(obj) = reflected.as_object_mut() {
        obj.insert("service".into(), Value::from("echo"));
    }
    if unstable {
        http::apply_delay(&query).await;
    }
    http::json(status, &reflected)
}

/// Handles one request to the partner service: any path, reflected.
pub async fn handle_partner(req: Request<Incoming>) -> Resp {
    match reflect(req).await {
        Ok(mut value) => {
            if let Some(obj) = value.as_object_mut() {
                obj.insert("service".into(), Value::from("partner"));
            }
            http::json(StatusCode::OK, &value)
        }
        Err(resp) => resp,
    }
}

fn stats(state: &EchoState, method: &Method, path: &str) -> Resp {
    match (path, method) {
        ("/_stats", &Method::GET) => http::json(
            StatusCode::OK,
            &json!({ "requests": state.requests.load(Ordering::SeqCst) }),
        ),
        ("/_stats", _) => http::method_not_allowed("GET"),
        ("/_stats/reset", &Method::POST) => {
            state.requests.store(0, Ordering::SeqCst);
            http::json(StatusCode::OK, &json!({ "requests": 0 }))
        }
        ("/_stats/reset", _) => http::method_not_allowed("POST"),
        _ => http::not_found(),
    }
}

/// The `status` query parameter as a final status code (200..=599);
/// 200 when absent, `None` when invalid.
fn requested_status(query: &str) -> Option<StatusCode> {
    let Some(raw) = http::query_param(query, "status") else {
        return Some(StatusCode::OK);
    };
    raw.trim()
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
}

/// Describes the request as `{"method", "path", "query", "headers", "body"}`.
async fn reflect(req: Request<Incoming>) -> Result<Value, Resp> {
    let (parts, body) = req.into_parts();
    let body = http::read_body(body).await?;
    Ok(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    }))
}

/// Lower-case header names to values; repeated headers are joined with ", ".
pub fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(name.as_str().to_owned(), Value::from(joined));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("X-B", HeaderValue::from_static("b"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let json = headers_json(&headers);
        assert_eq!(json.get("x-a"), Some(&Value::from("1, 2")));
        assert_eq!(json.get("x-b"), Some(&Value::from("b")));
        assert_eq!(json.len(), 2);
    }

    #[test]
    fn status_parameter() {
        assert_eq!(requested_status(""), Some(StatusCode::OK));
        assert_eq!(
            requested_status("status=503&delay_ms=1"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(requested_status("status=99"), None);
        assert_eq!(requested_status("status=600"), None);
        assert_eq!(requested_status("status=abc"), None);
    }
}
