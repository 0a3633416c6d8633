//! The seam between a filter's request logic and the proxy.
//!
//! Request logic is written against [`HttpHost`]; on wasm32 the
//! `proxy::ProxyHost` adapter implements it with proxy-wasm host calls, and in
//! native tests [`FakeHost`] records what the logic did. Host failures are
//! absorbed here: a read that fails is `None`, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the filter tells the proxy to do with the request after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the request on to the next filter.
    Continue,
    /// Hold the request (headers included) until the body callback decides.
    WaitBody,
    /// Hold the request until an asynchronous call (HTTP callout, timer) resumes it.
    WaitCallout,
    /// A local reply has been sent; stop processing.
    Responded,
}

/// Access to the current HTTP request, as seen by a filter.
pub trait HttpHost {
    /// All request headers (names lower case, pseudo-headers included).
    fn request_headers(&self) -> Vec<(String, String)>;
    /// One request header.
    fn request_header(&self, name: &str) -> Option<String>;
    /// Sets (replaces) a request header.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a request header value (keeps existing ones).
    fn add_request_header(&mut self, name: &str, value: &str);
    /// Removes a request header (all its values).
    fn remove_request_header(&mut self, name: &str);
    /// The buffered request body, `size` bytes from the start.
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the whole buffered request body.
    fn replace_request_body(&mut self, body: &[u8]);
    /// Sends a local reply; the request does not reach the upstream.
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// A host property (e.g. `["source", "address"]`), or a value another
    /// filter stored for this request with [`HttpHost::set_property`].
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Stores a per-request value in Envoy's filter state (key `wasm.<path>`),
    /// readable by the filters after this one and by access logs, and
    /// writable by no client.
    fn set_property(&mut self, path: &[&str], value: &[u8]);
    /// Wall-clock time as the proxy sees it.
    fn now(&self) -> SystemTime;

    /// Replaces the whole request header map (the chain build's batched
    /// write, filter_core::context). By default one call per header.
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        let mut names: Vec<String> = self.request_headers().into_iter().map(|(n, _)| n).collect();
        names.dedup();
        for n in names {
            self.remove_request_header(&n);
        }
        for (n, v) in headers {
            self.add_request_header(n, v);
        }
    }

    /// Seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

/// A local reply recorded by [`FakeHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SentResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An in-memory host for native tests of request logic.
#[derive(Debug, Clone)]
pub struct FakeHost {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub response: Option<SentResponse>,
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    pub time: SystemTime,
    /// Counts host calls, so tests can keep hot paths cheap.
    pub calls: std::cell::Cell<u32>,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost {
            headers: Vec::new(),
            body: Vec::new(),
            response: None,
            properties: Vec::new(),
            time: UNIX_EPOCH + Duration::from_secs(1_750_000_000),
            calls: std::cell::Cell::new(0),
        }
    }

    /// A request with method, path and `x-request-id: test-rid`.
    pub fn request(method: &str, path: &str) -> Self {
        let mut h = Self::new();
        h.headers.push((":method".into(), method.into()));
        h.headers.push((":path".into(), path.into()));
        h.headers.push((":authority".into(), "gateway.test".into()));
        h.headers.push(("x-request-id".into(), "test-rid".into()));
        h
    }

    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    #[must_use]
    pub fn with_body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    #[must_use]
    pub fn with_property(mut self, path: &[&str], value: &[u8]) -> Self {
        self.properties
            .push((path.iter().map(|s| s.to_string()).collect(), value.to_vec()));
        self
    }

    /// First value of a header as the upstream would see it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn tick(&self) {
        self.calls.set(self.calls.get() + 1);
    }
}

impl HttpHost for FakeHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        self.tick();
        self.headers.clone()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.tick();
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        if vals.is_empty() {
            None
        } else {
            // Envoy joins repeated headers with "," when one value is asked for.
            Some(vals.join(","))
        }
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.tick();
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_string()));
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        self.tick();
        self.headers.push((name.to_string(), value.to_string()));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.tick();
        self.headers.retain(|(n, _)| n != name);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.tick();
        Some(self.body.iter().take(size).copied().collect())
    }
    fn replace_request_body(&mut self, body: &[u8]) {
        self.tick();
        self.body = body.to_vec();
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.tick();
        self.response = Some(SentResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.tick();
        self.properties
            .iter()
            .find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|(_, v)| v.clone())
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.tick();
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.properties.retain(|(p, _)| *p != key);
        self.properties.push((key, value.to_vec()));
    }
    fn now(&self) -> SystemTime {
        self.time
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        self.tick();
        self.headers = headers.to_vec();
    }
}
