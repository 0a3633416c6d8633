//! sanitize's per-request logic, written against [`HttpHost`] so that it runs
//! natively against [`filter_core::host::FakeHost`] and in Envoy through the
//! thin proxy-wasm glue in `lib.rs`.

use filter_core::decision::{self, Decision, RouteNames};
use filter_core::route::split_path;
use filter_core::{headers, Denial, HttpHost, Verdict};

use crate::config::{Compiled, UnknownLengthBody};
use crate::{body, path, query};

/// What happened to a request, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Passed unchanged (headers may have been stripped).
    #[default]
    Allowed,
    /// Passed with its query or body rewritten.
    Rewritten,
    /// Refused with a local reply, or (dry run) would have been.
    Denied,
}

/// How the body is handled after the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum BodyMode {
    /// Nothing to do with the body.
    #[default]
    Pass,
    /// Count it against the limit (no content-length was given).
    Count,
    /// Buffer it and check it against the route's JSON rule.
    Check,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Request {
    route: Option<usize>,
    body_mode: BodyMode,
    limit: u64,
    request_id: Option<String>,
    method: String,
    trace_id: Option<String>,
    pub outcome: Outcome,
    /// Reason code of the last denial (dry run included), for metrics/logs.
    pub denied_code: Option<&'static str>,
    /// Envoy gateway/route names, read once on a denial (two host calls),
    /// reused for the metric labels.
    pub names: Option<RouteNames>,
}

/// `host[:port]` as RFC 9110 §7.2 allows in `Host`/`:authority`, read
/// strictly, so that every component after us sees the same host: a DNS-style
/// name (labels of letters, digits, `-` and `_`, one trailing dot allowed),
/// an IPv4 address in dotted decimal (a name whose last label is numeric
/// must be one: `1.2.3.256`, `1.2.3.4.5` and `0x7f.1` are not), or a
/// bracketed IPv6 literal (no zone id); then optionally `:` and a port
/// 1–65535 without leading zeros. Percent-encodings, user info, a second
/// colon or an empty port are refused.
fn valid_authority(a: &str) -> bool {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match a.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(a), None),
        }
    };
    if let Some(p) = port {
        // 1..=65535 written without leading zeros (`a:080` and `a:0` are
        // read differently by different parsers, or name no port at all).
        // (digits only: u16's parser would also take a leading `+`)
        let port_ok = !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok();
        if !port_ok {
            return false;
        }
    }
    host.is_none_or(valid_host_name)
}

/// A name or dotted-decimal IPv4 address (see [`valid_authority`]).
fn valid_host_name(h: &str) -> bool {
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return false;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 1 && last.get(..2).is_some_and(|x| x.eq_ignore_ascii_case("0x")));
    !numeric || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether a body may be read as JSON: labelled `application/json` or
/// `application/*+json`, or not labelled at all (many clients send JSON
/// without a content type; the body is checked either way), and no
/// `charset` but UTF-8.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json =
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    // JSON on the wire is UTF-8 (RFC 8259 8.1): a body labelled otherwise
    // would be read one way here and another way upstream.
    let utf8 = parts.all(|p| {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        !name.trim().eq_ignore_ascii_case("charset") || {
            let v = value.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
    });
    json && utf8
}

impl Request {
    fn deny<H: HttpHost>(&mut self, cfg: &Compiled, host: &mut H, d: Denial) -> Verdict {
        self.outcome = Outcome::Denied;
        self.denied_code = Some(d.code);
        let names = self
            .names
            .get_or_insert_with(|| decision::route_names(host));
        Decision::denial("sanitize", &self.method, d.status, d.code)
            .dry_run(cfg.dry_run)
            .at(names)
            .request_id(self.request_id.as_deref())
            .trace_id(self.trace_id.as_deref())
            .emit();
        if cfg.dry_run {
            return Verdict::Continue;
        }
        d.send(host, self.request_id.as_deref());
        Verdict::Responded
    }

    /// Request headers arrived.
    pub fn on_headers<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        end_of_stream: bool,
    ) -> Verdict {
        // One host call for every header: we need several and must scan names for prefixes.
        let all = host.request_headers();
        let mut method = "";
        let mut full_path = "";
        let mut content_length: Option<&str> = None;
        let mut content_type: Option<&str> = None;
        let mut content_encoding: Option<&str> = None;
        let mut to_remove: Vec<&str> = Vec::new();
        let mut not_utf8: Option<&str> = None;
        let mut authority: Option<&str> = None;
        for (n, v) in &all {
            // The host hands invalid UTF-8 over as U+FFFD (filter_core::proxy::text).
            if not_utf8.is_none() && v.contains(char::REPLACEMENT_CHARACTER) {
                not_utf8 = Some(n);
            }
            match n.as_str() {
                headers::METHOD => method = v,
                headers::PATH => full_path = v,
                headers::CONTENT_LENGTH => content_length = Some(v),
                headers::CONTENT_TYPE => content_type = Some(v),
                headers::CONTENT_ENCODING => content_encoding = Some(v),
                headers::REQUEST_ID => self.request_id = Some(v.clone()),
                headers::AUTHORITY => authority = Some(v),
                _ => {}
            }
            let named = cfg.remove_exact.iter().any(|e| e == n)
                || cfg
                    .remove_prefixes
                    .iter()
                    .any(|p| n.starts_with(p.as_str()));
            if named && !to_remove.contains(&n.as_str()) {
                to_remove.push(n);
            }
        }
        self.method = method.to_string();
        self.trace_id = decision::trace_id(&all);
        if !cfg.dry_run {
            for n in &to_remove {
                host.remove_request_header(n);
            }
        } else if !to_remove.is_empty() {
            log::info!("sanitize dry-run: would remove headers {to_remove:?}");
        }

        if let Some(name) = not_utf8 {
            // Never forwarded: an upstream would read the bytes its own way.
            return self.deny(
                cfg,
                host,
                Denial::bad_request(
                    "invalid_header",
                    format!("the value of header {name} is not valid UTF-8"),
                ),
            );
        }

        if authority.is_some_and(|a| !valid_authority(a)) {
            // Two Host lines reach us joined ("a,b"): RFC 9112 wants 400,
            // and an upstream would pick either one.
            return self.deny(
                cfg,
                host,
                Denial::bad_request(
                    "invalid_header",
                    "the Host header is not a single valid host[:port]",
                ),
            );
        }

        let (path_part, query_part) = split_path(full_path);
        if let Err(d) = path::check(path_part, full_path.len(), &cfg.path) {
            return self.deny(cfg, host, d);
        }
        if let Some(g) = path::case_variant(path_part, &cfg.case_guards) {
            let d = Denial::bad_request(
                "invalid_path",
                format!(
                    "the path differs from the route {} only by letter case or encoding",
                    g.prefix()
                ),
            );
            return self.deny(cfg, host, d);
        }

        self.route = cfg
            .routes
            .iter()
            .position(|r| r.matcher.matches(method, path_part));
        let route = self.route.and_then(|i| cfg.routes.get(i));
        let rules = route.map_or(&[][..], |r| r.query.as_slice());
        match query::apply(query_part, &cfg.query, rules) {
            Err(d) => return self.deny(cfg, host, d),
            Ok(Some(q)) => {
                let new_path = if q.is_empty() {
                    path_part.to_string()
                } else {
                    format!("{path_part}?{q}")
                };
                self.outcome = Outcome::Rewritten;
                if cfg.dry_run {
                    log::info!("sanitize dry-run: would rewrite query to {q:?}");
                } else {
                    // A signature verifier after us (replay-guard) checks
                    // what the client sent.
                    filter_core::original::save_path(host, full_path);
                    host.set_request_header(headers::PATH, &new_path);
                }
            }
            Ok(None) => {}
        }

        self.limit = route.map_or(cfg.max_body_bytes, |r| r.max_body_bytes);
        let declared: Option<u64> = match content_length {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return self.deny(
                        cfg,
                        host,
                        Denial::bad_request("invalid_request", "invalid content-length"),
                    )
                }
            },
        };
        if declared.is_some_and(|n| n > self.limit) {
            return self.deny(cfg, host, too_large(self.limit));
        }
        let has_body = !end_of_stream && declared != Some(0);
        if has_body && declared.is_none() && cfg.unknown_length_body == UnknownLengthBody::Refuse {
            // Counting would hold the headers (see config::Compiled::body_hold).
            return self.deny(cfg, host, length_required());
        }
        if route.is_some_and(|r| r.body.is_some()) {
            if !has_body {
                return self.deny(
                    cfg,
                    host,
                    Denial::bad_request("invalid_body", "a JSON object body is required"),
                );
            }
            if !is_json(content_type) {
                return self.deny(
                    cfg,
                    host,
                    Denial::bad_request(
                        "unsupported_media_type",
                        "the body must be UTF-8 JSON (content-type: application/json)",
                    ),
                );
            }
            // A compressed body cannot be checked, and what is not checked
            // must not pass: only an identity body meets the JSON rule.
            if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
                return self.deny(
                    cfg,
                    host,
                    Denial::bad_request(
                        "unsupported_media_type",
                        "the body must not be content-encoded (send it uncompressed)",
                    ),
                );
            }
            self.body_mode = BodyMode::Check;
            return if cfg.dry_run {
                Verdict::Continue
            } else {
                Verdict::WaitBody
            };
        }
        if has_body && declared.is_none() {
            // No length announced: hold the headers and count, so an oversized
            // body is refused before the upstream sees anything.
            self.body_mode = BodyMode::Count;
            return if cfg.dry_run {
                Verdict::Continue
            } else {
                Verdict::WaitBody
            };
        }
        Verdict::Continue
    }

    /// Request body data arrived; `buffered` is everything buffered so far.
    pub fn on_body<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        buffered: usize,
        end_of_stream: bool,
    ) -> Verdict {
        if self.outcome == Outcome::Denied && !cfg.dry_run {
            return Verdict::Responded;
        }
        if self.body_mode == BodyMode::Pass {
            return Verdict::Continue;
        }
        if buffered as u64 > self.limit {
            self.body_mode = BodyMode::Pass;
            return self.deny(cfg, host, too_large(self.limit));
        }
        if !end_of_stream {
            return if cfg.dry_run {
                Verdict::Continue
            } else {
                Verdict::WaitBody
            };
        }
        let bytes = match self.rule(cfg) {
            Some(_) if self.body_mode == BodyMode::Check => host.request_body(buffered),
            _ => None,
        };
        self.finish(cfg, host, bytes)
    }

    /// Request trailers arrived: the body is complete, and no body callback
    /// will say so (HTTP/2 and HTTP/1.1 chunked requests can end with
    /// trailers instead of a last DATA frame marked end-of-stream). The body
    /// is checked here exactly as at its end, so trailers never carry a body
    /// past the size limit or the JSON rule.
    pub fn on_trailers<H: HttpHost>(&mut self, cfg: &Compiled, host: &mut H) -> Verdict {
        if self.outcome == Outcome::Denied && !cfg.dry_run {
            return Verdict::Responded;
        }
        if self.body_mode == BodyMode::Pass {
            return Verdict::Continue;
        }
        // One read of at most limit + 1 bytes gives both the size and the body
        // (a host returns what it has when asked for more).
        let want = usize::try_from(self.limit.saturating_add(1)).unwrap_or(usize::MAX);
        let bytes = host.request_body(want).filter(|b| !b.is_empty());
        if bytes.as_ref().map_or(0, Vec::len) as u64 > self.limit {
            self.body_mode = BodyMode::Pass;
            return self.deny(cfg, host, too_large(self.limit));
        }
        self.finish(cfg, host, bytes)
    }

    fn rule<'c>(&self, cfg: &'c Compiled) -> Option<&'c crate::config::JsonBodyRule> {
        self.route
            .and_then(|i| cfg.routes.get(i))
            .and_then(|r| r.body.as_ref())
    }

    /// The whole body is here (`bytes`: read only when a JSON rule applies).
    fn finish<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        bytes: Option<Vec<u8>>,
    ) -> Verdict {
        let mode = std::mem::take(&mut self.body_mode);
        if mode == BodyMode::Count {
            return Verdict::Continue;
        }
        let Some(rule) = self.rule(cfg) else {
            return Verdict::Continue;
        };
        let Some(bytes) = bytes else {
            return self.deny(
                cfg,
                host,
                Denial::bad_request("invalid_body", "a JSON object body is required"),
            );
        };
        match body::check(&bytes, rule) {
            Err(d) => self.deny(cfg, host, d),
            Ok(None) => Verdict::Continue,
            Ok(Some(new_body)) => {
                self.outcome = Outcome::Rewritten;
                if cfg.dry_run {
                    log::info!("sanitize dry-run: would rewrite the body");
                } else {
                    filter_core::original::save_body(host, &bytes);
                    host.replace_request_body(&new_body);
                    // Headers are still held, so the length can follow the new body.
                    host.set_request_header(headers::CONTENT_LENGTH, &new_body.len().to_string());
                }
                Verdict::Continue
            }
        }
    }
}

fn too_large(limit: u64) -> Denial {
    Denial::payload_too_large(format!("the request body exceeds {limit} bytes"))
}

fn length_required() -> Denial {
    Denial::new(
        411,
        "length_required",
        "a request body must announce its size with content-length",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use filter_core::host::FakeHost;

    fn web() -> Compiled {
        load(include_bytes!("../../../examples/config/sanitize/web.json")).unwrap()
    }

    fn headers_only(cfg: &Compiled, host: &mut FakeHost) -> Verdict {
        Request::default().on_headers(cfg, host, true)
    }

    /// Runs a request with a body through both callbacks.
    fn with_body(cfg: &Compiled, host: &mut FakeHost) -> Verdict {
        body_ending(cfg, host, false)
    }

    /// The headers, then the body: ended by its last body callback, or (with
    /// `by_trailers`) by the trailers, after a body callback without
    /// end-of-stream.
    fn body_ending(cfg: &Compiled, host: &mut FakeHost, by_trailers: bool) -> Verdict {
        let mut r = Request::default();
        let v = r.on_headers(cfg, host, false);
        if v != Verdict::WaitBody && v != Verdict::Continue {
            return v;
        }
        let n = host.body.len();
        if !by_trailers {
            return r.on_body(cfg, host, n, true);
        }
        if n > 0 {
            let v = r.on_body(cfg, host, n, false);
            if v != Verdict::WaitBody && v != Verdict::Continue {
                return v;
            }
        }
        r.on_trailers(cfg, host)
    }

    #[test]
    fn a_header_value_that_was_not_utf8_is_refused_before_anything_else() {
        let cfg = web();
        // What the wasm host hands over for a value with a 0xff byte.
        let bad = String::from_utf8_lossy(b"caf\xff").into_owned();
        let mut h = FakeHost::request("GET", "/api/v1/public/x").with_header("x-note", &bad);
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Responded);
        let r = h.response.as_ref().unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"], "invalid_header");
        assert!(r.json()["message"].as_str().unwrap().contains("x-note"));
        // UTF-8 text in a value is fine.
        let mut h = FakeHost::request("GET", "/api/v1/public/x").with_header("x-note", "café");
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Continue);
    }

    #[test]
    fn users_size_is_clamped_as_the_upstream_sees_it() {
        let cfg = web();
        for (q, want) in [
            ("", "20"),
            ("?size=0", "1"),
            ("?size=1000", "100"),
            ("?size=50", "50"),
        ] {
            let mut h = FakeHost::request("GET", &format!("/api/v1/users/7{q}"));
            assert_eq!(headers_only(&cfg, &mut h), Verdict::Continue);
            assert_eq!(
                h.header(":path").unwrap(),
                format!("/api/v1/users/7?size={want}")
            );
        }
    }

    #[test]
    fn rewrites_keep_the_client_originals_for_signature_checks() {
        let cfg = web();
        let mut h = FakeHost::request("GET", "/api/v1/users/7");
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Continue);
        assert_eq!(
            filter_core::original::path(&h).as_deref(),
            Some("/api/v1/users/7")
        );
        let sent = br#"{"item_id": "a", "quantity": 2, "x": 1}"#;
        let mut h = FakeHost::request("POST", "/api/v1/orders")
            .with_header("content-type", "application/json")
            .with_header("content-length", &sent.len().to_string())
            .with_body(sent);
        assert_eq!(with_body(&cfg, &mut h), Verdict::Continue);
        assert_eq!(filter_core::original::body(&h).as_deref(), Some(&sent[..]));
        // nothing rewritten, nothing saved
        let mut h = FakeHost::request("GET", "/api/v1/users/7?size=50");
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Continue);
        assert_eq!(filter_core::original::path(&h), None);
    }

    #[test]
    fn client_identity_headers_never_pass() {
        let cfg = web();
        let mut h = FakeHost::request("GET", "/api/v1/public/x")
            .with_header("x-passport", "forged")
            .with_header("x-user-id", "admin")
            .with_header("x-user-consent", "all")
            .with_header("x-forwarded-client-cert", "By=spiffe://x")
            .with_header("accept", "application/json");
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Continue);
        for n in [
            "x-passport",
            "x-user-id",
            "x-user-consent",
            "x-forwarded-client-cert",
        ] {
            assert_eq!(h.header(n), None, "{n}");
        }
        assert_eq!(h.header("accept"), Some("application/json"));
    }

    #[test]
    fn orders_body_is_stripped_and_length_follows() {
        let cfg = web();
        let mut h = FakeHost::request("POST", "/api/v1/orders")
            .with_header("content-type", "application/json")
            .with_header("content-length", "45")
            .with_body(br#"{"item_id":"a","quantity":2,"admin":true}"#);
        assert_eq!(with_body(&cfg, &mut h), Verdict::Continue);
        assert_eq!(h.body, br#"{"item_id":"a","quantity":2}"#);
        assert_eq!(h.header("content-length"), Some("28"));
    }

    #[test]
    fn invalid_orders_body_is_400_naming_the_field_with_request_id() {
        let cfg = web();
        let mut h = FakeHost::request("POST", "/api/v1/orders")
            .with_header("content-type", "application/json")
            .with_body(br#"{"item_id":"a","quantity":0}"#);
        assert_eq!(with_body(&cfg, &mut h), Verdict::Responded);
        let r = h.response.unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"], "invalid_body");
        assert!(r.json()["message"].as_str().unwrap().contains("quantity"));
        assert_eq!(r.header("x-request-id"), Some("test-rid"));
    }

    /// An open-route GET whose `:authority` is `a`.
    fn with_authority(a: &str) -> FakeHost {
        let mut h = FakeHost::request("GET", "/api/v1/public/x");
        h.headers.retain(|(n, _)| n != ":authority");
        h.headers.push((":authority".into(), a.into()));
        h
    }

    #[test]
    fn a_joined_or_malformed_host_is_400_and_ordinary_hosts_pass() {
        let cfg = web();
        for a in [
            "a.test,b.test",
            "user@gateway.test",
            "gateway.test extra",
            "",
            "a:b:c",
            "::1",
            "[::1",
            "::1]",
            "a:",
            "a:0x50",
            "a:-1",
            "a:99999",
            "a:123456",
            "[::1]x",
            "[::1]:",
            "[zz::1]",
            "a%20b",
            "1.2.3.4.5",
            "1.2.3.256",
            "0x7f.1",
            "01.2.3.4",
            "a..b",
            ".a",
            "a.-",
            "*",
            "a:+80",
            "a:080",
            "a:0",
            "[fe80::1%25eth0]",
        ] {
            let mut h = with_authority(a);
            assert_eq!(headers_only(&cfg, &mut h), Verdict::Responded, "{a:?}");
            let r = h.response.unwrap();
            assert_eq!(
                (r.status, r.json()["error"].as_str()),
                (400, Some("invalid_header")),
                "{a:?}"
            );
        }
        for a in [
            "gateway.test",
            "127.0.0.1:10000",
            "[::1]:10000",
            "[::1]",
            "[2001:db8::7]:443",
            "api_v1.example",
            "gateway.test.",
            "localhost:1",
            "a:65535",
            "10.0.0.1.",
            "[2001:DB8::7]",
            "10.0.0.1",
            "host-1.b2.example:8080",
        ] {
            let mut h = with_authority(a);
            assert_eq!(headers_only(&cfg, &mut h), Verdict::Continue, "{a:?}");
        }
    }

    #[test]
    fn wrong_content_type_is_400_unlabelled_json_is_checked_and_missing_body_400() {
        let cfg = web();
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "application/json; charset=utf-16",
            "application/json;charset=\"ISO-8859-1\"",
        ] {
            let mut h = FakeHost::request("POST", "/api/v1/orders").with_header("content-type", ct);
            assert_eq!(with_body(&cfg, &mut h), Verdict::Responded, "{ct}");
            let r = h.response.unwrap();
            assert_eq!(r.status, 400, "{ct}");
            assert_eq!(r.json()["error"], "unsupported_media_type");
        }
        for ct in [
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/problem+json",
        ] {
            let mut h = FakeHost::request("POST", "/api/v1/orders").with_header("content-type", ct);
            h.body = br#"{"item_id":"a1","quantity":3}"#.to_vec();
            assert_eq!(with_body(&cfg, &mut h), Verdict::Continue, "{ct}");
        }
        // No content type at all: read as JSON and checked like any other.
        let mut h = FakeHost::request("POST", "/api/v1/orders");
        h.body = br#"{"item_id":"a1","quantity":3,"evil":1}"#.to_vec();
        assert_eq!(with_body(&cfg, &mut h), Verdict::Continue);
        assert_eq!(h.body, br#"{"item_id":"a1","quantity":3}"#);
        let mut h = FakeHost::request("POST", "/api/v1/orders");
        h.body = b"not json".to_vec();
        assert_eq!(with_body(&cfg, &mut h), Verdict::Responded);
        let r = h.response.unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("invalid_body"))
        );
        let mut h = FakeHost::request("POST", "/api/v1/orders")
            .with_header("content-type", "application/json");
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Responded);
        assert_eq!(h.response.unwrap().status, 400);
    }

    #[test]
    fn a_content_encoded_body_on_a_json_rule_is_400_and_identity_is_checked() {
        let cfg = web();
        for enc in ["gzip", "br", "deflate, gzip"] {
            let mut h = FakeHost::request("POST", "/api/v1/orders")
                .with_header("content-type", "application/json")
                .with_header("content-encoding", enc);
            assert_eq!(with_body(&cfg, &mut h), Verdict::Responded, "{enc}");
            let r = h.response.unwrap();
            assert_eq!(r.status, 400);
            assert_eq!(r.json()["error"], "unsupported_media_type");
        }
        let mut h = FakeHost::request("POST", "/api/v1/orders")
            .with_header("content-type", "application/json")
            .with_header("content-encoding", "Identity");
        assert_eq!(
            Request::default().on_headers(&cfg, &mut h, false),
            Verdict::WaitBody
        );
    }

    #[test]
    fn declared_oversized_body_is_413_before_any_body() {
        let cfg = web();
        let mut h = FakeHost::request("POST", "/api/v1/public/upload")
            .with_header("content-length", "66560");
        assert_eq!(
            Request::default().on_headers(&cfg, &mut h, false),
            Verdict::Responded
        );
        assert_eq!(h.response.unwrap().status, 413);
    }

    #[test]
    fn unannounced_body_is_held_counted_and_refused_past_the_limit() {
        let cfg = web();
        let mut h = FakeHost::request("POST", "/api/v1/public/upload");
        let mut r = Request::default();
        assert_eq!(r.on_headers(&cfg, &mut h, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&cfg, &mut h, 60_000, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&cfg, &mut h, 70_000, false), Verdict::Responded);
        assert_eq!(h.response.unwrap().status, 413);
    }

    #[test]
    fn announced_small_body_on_a_route_without_rules_is_not_buffered() {
        let cfg = web();
        let mut h =
            FakeHost::request("POST", "/api/v1/public/x").with_header("content-length", "10");
        assert_eq!(
            Request::default().on_headers(&cfg, &mut h, false),
            Verdict::Continue
        );
    }

    #[test]
    fn traversal_is_400() {
        let cfg = web();
        let mut h = FakeHost::request("GET", "/api/v1/public/%2e%2e/users/1");
        assert_eq!(headers_only(&cfg, &mut h), Verdict::Responded);
        assert_eq!(h.response.unwrap().status, 400);
    }

    #[test]
    fn dry_run_lets_everything_through_unchanged() {
        let mut cfg = web();
        cfg.dry_run = true;
        let mut h =
            FakeHost::request("GET", "/api/v1/users/1?size=1000").with_header("x-user-id", "x");
        let mut r = Request::default();
        assert_eq!(r.on_headers(&cfg, &mut h, true), Verdict::Continue);
        assert_eq!(h.header(":path"), Some("/api/v1/users/1?size=1000"));
        assert_eq!(h.header("x-user-id"), Some("x"));
        let mut h = FakeHost::request("GET", "/a/%2e%2e/b");
        let mut r = Request::default();
        assert_eq!(r.on_headers(&cfg, &mut h, true), Verdict::Continue);
        assert_eq!(r.outcome, Outcome::Denied);
        assert!(h.response.is_none());
    }

    #[test]
    fn allowed_request_costs_one_host_call() {
        let cfg = web();
        let mut h = FakeHost::request("GET", "/api/v1/public/x");
        headers_only(&cfg, &mut h);
        assert_eq!(h.calls.get(), 1);
    }

    /// A body finished by trailers (no body callback with end-of-stream).
    fn with_trailers(cfg: &Compiled, host: &mut FakeHost) -> Verdict {
        body_ending(cfg, host, true)
    }

    #[test]
    fn a_body_finished_by_trailers_is_checked_like_any_other() {
        let cfg = web();
        let order = |body: &[u8]| {
            FakeHost::request("POST", "/api/v1/orders")
                .with_header("content-type", "application/json")
                .with_body(body)
        };
        // invalid: refused
        let mut h = order(br#"{"item_id":"a1","quantity":1000}"#);
        assert_eq!(with_trailers(&cfg, &mut h), Verdict::Responded);
        assert_eq!(h.response.as_ref().unwrap().status, 400);
        // unknown member: stripped, length follows
        let mut h = order(br#"{"item_id":"a1","quantity":1,"evil":true}"#);
        assert_eq!(with_trailers(&cfg, &mut h), Verdict::Continue);
        assert_eq!(h.body, br#"{"item_id":"a1","quantity":1}"#);
        assert_eq!(h.header("content-length"), Some("29"));
        // no body at all before the trailers: the JSON body is required
        let mut h = order(b"");
        assert_eq!(with_trailers(&cfg, &mut h), Verdict::Responded);
        assert_eq!(h.response.as_ref().unwrap().json()["error"], "invalid_body");
        // too large, even when it all arrives in one callback before the trailers
        let mut h =
            FakeHost::request("POST", "/api/v1/public/upload").with_body(&vec![b'x'; 70_000]);
        let mut r = Request::default();
        assert_eq!(r.on_headers(&cfg, &mut h, false), Verdict::WaitBody);
        assert_eq!(r.on_trailers(&cfg, &mut h), Verdict::Responded);
        assert_eq!(h.response.as_ref().unwrap().status, 413);
    }

    /// Arbitrary client input (paths, queries, headers, bodies): every request
    /// gets an answer, a denial is always our JSON shape with a 4xx status, and
    /// what passes is already normal: sanitize run again over the request it
    /// forwarded lets it through unchanged.
    mod arbitrary_input {
        use super::*;
        use filter_core::testing::assert_denial;
        use proptest::prelude::*;

        const STATUSES: &[u16] = &[400, 413];

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "api",
                    "v1",
                    "users",
                    "orders",
                    "public",
                    "..",
                    ".",
                    "%2e%2e",
                    "%2E",
                    "%2e",
                    "%252e%252e",
                    "%2f",
                    "%2F",
                    "%5c",
                    "%00",
                    "",
                    ";x=1",
                    "%",
                    "%zz",
                    "\\",
                    "..;",
                    "%c0%ae",
                    "~",
                    "a b",
                    "%20",
                ])
                .prop_map(str::to_string),
                "[a-zA-Z0-9._~%;:@!$&'()*+,=-]{0,12}",
                any::<String>().prop_map(|s| s.chars().take(12).collect()),
            ]
        }

        fn query() -> impl Strategy<Value = String> {
            let name = prop_oneof![
                prop::sample::select(vec!["size", "page", "SIZE", "size%00", ""])
                    .prop_map(str::to_string),
                "[a-z%0-9+]{0,8}",
                any::<String>().prop_map(|s| s.chars().take(8).collect()),
            ];
            let value = prop_oneof![
                "-?[0-9]{0,25}",
                prop::sample::select(vec!["", "%", "1e3", "0x10", "+5", " 7", "20&size=1"])
                    .prop_map(str::to_string),
                any::<String>().prop_map(|s| s.chars().take(16).collect()),
            ];
            prop::collection::vec((name, prop::option::of(value)), 0..6).prop_map(|kv| {
                kv.into_iter()
                    .map(|(k, v)| v.map_or(k.clone(), |v| format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join("&")
            })
        }

        fn path() -> impl Strategy<Value = String> {
            (
                prop_oneof![
                    Just(vec!["api".to_string(), "v1".into(), "users".into()]),
                    Just(vec!["api".to_string(), "v1".into(), "orders".into()]),
                    Just(Vec::new()),
                ],
                prop::collection::vec(segment(), 0..6),
                prop::option::of(query()),
                prop::option::of(Just("#frag".to_string())),
            )
                .prop_map(|(head, tail, q, frag)| {
                    let mut p = format!(
                        "/{}",
                        head.into_iter().chain(tail).collect::<Vec<_>>().join("/")
                    );
                    if let Some(q) = q {
                        p.push('?');
                        p.push_str(&q);
                    }
                    if let Some(f) = frag {
                        p.push_str(&f);
                    }
                    p
                })
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                (1u8..120).prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)),
                "[a-z0-9]{0,70}".prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::vec(
                        (
                            prop::sample::select(vec!["item_id", "quantity", "x", "__proto__", ""])
                                .prop_map(str::to_string),
                            inner
                        ),
                        0..4
                    )
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(Vec::new()),
                json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
                ("[a-z0-9]{0,70}", 0i64..130, prop::option::of(json_value())).prop_map(
                    |(item, q, extra)| {
                        let mut v = serde_json::json!({"item_id": item, "quantity": q});
                        if let (Some(e), Some(o)) = (extra, v.as_object_mut()) {
                            o.insert("extra".into(), e);
                        }
                        serde_json::to_vec(&v).unwrap_or_default()
                    }
                ),
                prop::collection::vec(any::<u8>(), 0..200),
                prop::sample::select(vec![
                    &b"{"[..],
                    b"{\"item_id\":\"a\",\"item_id\":\"b\",\"quantity\":1}",
                    b"{\"item_id\":\"\\ud800\",\"quantity\":1}",
                    b"[]",
                    b"null",
                    b"\xef\xbb\xbf{}",
                    b"{\"quantity\":1e2,\"item_id\":\"x\"}",
                    b"{\"quantity\":1.0,\"item_id\":\"x\"}",
                ])
                .prop_map(<[u8]>::to_vec),
            ]
        }

        fn header() -> impl Strategy<Value = (String, String)> {
            (
                prop_oneof![
                    prop::sample::select(vec![
                        "x-passport",
                        "x-user-id",
                        "X-User-Id",
                        "x-gateway-identity",
                        "x-forwarded-client-cert",
                        "content-type",
                        "content-length",
                        "x-request-id",
                        "x-other",
                        "cookie",
                    ])
                    .prop_map(str::to_string),
                    "x-[a-z-]{0,10}",
                ],
                prop_oneof![
                    prop::sample::select(vec![
                        "application/json",
                        "application/json; charset=utf-8",
                        "application/problem+json",
                        "text/plain",
                        "",
                        "99999999999999999999",
                        "-1",
                        "5"
                    ])
                    .prop_map(str::to_string),
                    "[ -~]{0,30}",
                ],
            )
        }

        /// (verdict, host after the callbacks)
        fn run(
            cfg: &Compiled,
            method: &str,
            path: &str,
            hdrs: &[(String, String)],
            body: &[u8],
            trailers: bool,
        ) -> (Verdict, FakeHost) {
            let mut h = FakeHost::request(method, path).with_body(body);
            for (n, v) in hdrs {
                if n.eq_ignore_ascii_case("x-request-id") {
                    continue; // the test's own id, echoed in denials
                }
                h = h.with_header(n, v);
            }
            let v = if trailers {
                with_trailers(cfg, &mut h)
            } else if body.is_empty() {
                headers_only(cfg, &mut h)
            } else {
                with_body(cfg, &mut h)
            };
            (v, h)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: filter_core::testing::cases(768), failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn every_request_gets_an_answer_and_what_passes_is_already_normal(
                method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "get", "CONNECT", ""]),
                path in path(),
                hdrs in prop::collection::vec(header(), 0..5),
                body in body(),
                trailers in any::<bool>(),
            ) {
                let cfg = web();
                let (v, h) = run(&cfg, method, &path, &hdrs, &body, trailers);
                match v {
                    Verdict::Responded => {
                        assert_denial(h.response.as_ref(), STATUSES, Some("test-rid"));
                    }
                    Verdict::Continue => {
                        prop_assert!(h.response.is_none());
                        // no client copy of a header the gateway asserts survives
                        for (n, _) in &h.headers {
                            prop_assert!(
                                n != "x-passport" && n != "x-forwarded-client-cert"
                                    && !n.starts_with("x-user-") && !n.starts_with("x-gateway-"),
                                "{n} reached the upstream"
                            );
                        }
                        let forwarded = h.header(":path").unwrap_or_default().to_string();
                        let fwd_body = h.body.clone();
                        let kept: Vec<(String, String)> = h.headers.iter()
                            .filter(|(n, _)| !n.starts_with(':') && n != "x-request-id")
                            .cloned().collect();
                        let (v2, h2) = run(&cfg, method, &forwarded, &kept, &fwd_body, false);
                        prop_assert_eq!(v2, Verdict::Continue, "{} -> {} refused the second time", path, forwarded);
                        prop_assert_eq!(h2.header(":path").unwrap_or_default(), forwarded.as_str());
                        prop_assert_eq!(&h2.body, &fwd_body);
                    }
                    other => prop_assert!(false, "unexpected verdict {other:?}"),
                }
            }

            #[test]
            fn an_accepted_order_is_exactly_the_contract_shape(body in body(), trailers in any::<bool>()) {
                let cfg = web();
                let hdrs = vec![("content-type".to_string(), "application/json".to_string())];
                let (v, h) = run(&cfg, "POST", "/api/v1/orders", &hdrs, &body, trailers);
                if v == Verdict::Continue {
                    let sent: serde_json::Value = serde_json::from_slice(&h.body).unwrap_or_default();
                    let obj = sent.as_object();
                    prop_assert!(obj.is_some(), "forwarded body is not an object: {}", String::from_utf8_lossy(&h.body));
                    let obj = obj.unwrap_or_else(|| unreachable!());
                    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    prop_assert_eq!(keys, vec!["item_id", "quantity"]);
                    let item = obj.get("item_id").and_then(|v| v.as_str()).unwrap_or_default();
                    prop_assert!((1..=64).contains(&item.chars().count()));
                    let q = obj.get("quantity").and_then(serde_json::Value::as_i64).unwrap_or(0);
                    prop_assert!((1..=100).contains(&q));
                } else {
                    assert_denial(h.response.as_ref(), STATUSES, Some("test-rid"));
                }
            }
        }
    }
}
