//! Small HTTP helpers shared by the four services: JSON responses, bounded
//! body reads, query-string parsing and the delay knob.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

/// Response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Largest request body any service reads (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Largest `delay_ms` honoured (30 s).
pub const MAX_DELAY_MS: u64 = 30_000;

/// A JSON response with the given status.
pub fn json(status: StatusCode, value: &Value) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(_) => {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                br#"{"error":"internal","message":"could not serialise the response"}"#,
            )));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

/// A response with no body.
pub fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A JSON error response `{"error": code, "message": message}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json(status, &json!({ "error": code, "message": message }))
}

/// The 404 every service answers for a route it does not know.
pub fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The 405 for a known path with the wrong method.
pub fn method_not_allowed(allow: &'static str) -> Resp {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    );
    resp.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Reads the whole request body, at most [`MAX_BODY`] bytes. On failure
/// returns the response to send instead (413 when too large, 400 otherwise).
pub async fn read_body(body: Incoming) -> Result<Bytes, Resp> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body exceeds 1 MiB",
                ))
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "could not read the request body",
                ))
            }
        }
    }
}

/// The first value of `key` in a raw query string, form-decoded
/// (`+` is a space, `%XX` escapes are decoded, invalid UTF-8 is replaced).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k) == key).then(|| form_decode(v))
        })
}

fn form_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Percent-decodes one path segment.
pub fn path_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The `delay_ms` query parameter, capped at [`MAX_DELAY_MS`]; `None` when
/// absent or not a non-negative integer.
pub fn delay_from_query(query: &str) -> Option<Duration> {
    let ms: u64 = query_param(query, "delay_ms")?.trim().parse().ok()?;
    Some(Duration::from_millis(ms.min(MAX_DELAY_MS)))
}

/// Sleeps for the `delay_ms` query parameter, if any.
pub async fn apply_delay(query: &str) {
    if let Some(delay) = delay_from_query(query) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Current Unix time in whole seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_decodes_and_finds_first() {
        let q = "a=1&user=al%69ce+b&user=second&flag";
        assert_eq!(query_param(q, "user").as_deref(), Some("alice b"));
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("", "a"), None);
    }

    #[test]
    fn delay_is_capped_and_validated() {
        assert_eq!(
            delay_from_query("delay_ms=250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            delay_from_query("delay_ms=999999"),
            Some(Duration::from_millis(MAX_DELAY_MS))
        );
        assert_eq!(delay_from_query("delay_ms=-1"), None);
        assert_eq!(delay_from_query("delay_ms=abc"), None);
        assert_eq!(delay_from_query("x=1"), None);
    }
}
