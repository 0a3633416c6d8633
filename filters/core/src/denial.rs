//! The one denial shape: status, a stable machine code and a human message,
//! sent as JSON `{"error": code, "message": text}` with the request's
//! `x-request-id` echoed.

use std::borrow::Cow;

use serde::Serialize;

use crate::headers;
use crate::host::HttpHost;

/// A local reply that refuses a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status (400, 401, 403, 413, 415, 503 …).
    pub status: u16,
    /// Stable, machine-readable code, e.g. `invalid_body`. Part of the API.
    pub code: &'static str,
    /// Human-readable explanation. Never carries secrets or internals.
    pub message: Cow<'static, str>,
    /// Extra response headers (`www-authenticate`, `retry-after` …).
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl Denial {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(401, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(403, code, message)
    }
    pub fn payload_too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(413, "body_too_large", message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(503, code, message)
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The JSON body, `{"error": …, "message": …}`.
    pub fn body(&self) -> Vec<u8> {
        // Serialising two strings cannot fail; fall back to a fixed body anyway.
        serde_json::to_vec(&Body {
            error: self.code,
            message: &self.message,
        })
        .unwrap_or_else(|_| br#"{"error":"internal","message":"denied"}"#.to_vec())
    }

    /// Sends this denial as the local reply, echoing `request_id`.
    pub fn send<H: HttpHost + ?Sized>(&self, host: &mut H, request_id: Option<&str>) {
        let body = self.body();
        let mut hdrs: Vec<(&str, &str)> = Vec::with_capacity(3 + self.headers.len());
        hdrs.push((headers::CONTENT_TYPE, "application/json"));
        hdrs.push(("cache-control", "no-store"));
        if let Some(id) = request_id {
            hdrs.push((headers::REQUEST_ID, id));
        }
        for (n, v) in &self.headers {
            hdrs.push((n, v.as_str()));
        }
        host.send_response(self.status, &hdrs, &body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    #[test]
    fn body_is_json_with_escaped_message() {
        let d = Denial::bad_request("invalid_body", "field \"x\" is bad");
        let v: serde_json::Value = serde_json::from_slice(&d.body()).unwrap();
        assert_eq!(v["error"], "invalid_body");
        assert_eq!(v["message"], "field \"x\" is bad");
    }

    #[test]
    fn send_echoes_request_id_and_extra_headers() {
        let mut host = FakeHost::new();
        Denial::unavailable("circuit_open", "try later")
            .with_header("retry-after", "3")
            .send(&mut host, Some("rid-1"));
        let r = host.response.as_ref().unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-request-id"), Some("rid-1"));
        assert_eq!(r.header("retry-after"), Some("3"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}
