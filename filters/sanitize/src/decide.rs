//! sanitize's pure decision core: the request headers as one read gave
//! them ([`RequestView`]) in, a [`HeadersDecision`] out; then, when the body
//! is held, the body's size and (once it is complete) its bytes in, a
//! [`BodyDecision`] out. Nothing here calls the host: what to remove and
//! rewrite, the client's originals to hand over to a signature verifier
//! ([`filter_core::original`]) and the refusal are all data, applied by the
//! adapter ([`crate::filter::Request`] in the per-filter build, or a chain
//! that runs several filters over one header read). Dry run is the
//! adapter's business too: the core always says what enforcing would do.

use filter_core::request::{Decision, Edits, RequestView};
use filter_core::route::split_path;
use filter_core::{headers, Denial, HttpHost, Verdict};

use crate::config::{Compiled, UnknownLengthBody};
use crate::{body, path, query};

/// sanitize's decision on the request headers.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersDecision {
    /// The header edits (removals of the configured headers, and the new
    /// `:path` when the query was rewritten) and, for a refusal, the reply.
    /// A refusal keeps the edits decided before it, as the per-filter build
    /// always applied them.
    pub decision: Decision,
    /// Set when the query was rewritten (the new `:path` is in the edits).
    pub rewrite: Option<QueryRewrite>,
    /// Set when the headers must be held for the body: what the body step
    /// needs. `None`: the body (if any) passes unread.
    pub body: Option<BodyState>,
}

/// A query rewrite (clamps, defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRewrite {
    /// The `:path` as the client sent it, handed over to a signature
    /// verifier after us (`filter_core::original::save_path`).
    pub original_path: String,
    /// The new query (empty: the query is dropped).
    pub query: String,
}

/// What the body step needs from the header step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyState {
    pub step: BodyStep,
    /// The body size limit of the request's route (or the global one).
    pub limit: u64,
}

/// What is done with a held body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStep {
    /// Count it against the limit (no `content-length` was given).
    Count,
    /// Read it whole and check it against the JSON rule of
    /// `Compiled::routes[route]`.
    Check { route: usize },
}

impl BodyState {
    /// Whether [`decide_body`] needs the body's bytes for a callback with
    /// `size` bytes buffered: only once it is complete, within the limit,
    /// and when a JSON rule reads it (a counted body is never copied out of
    /// the host).
    pub fn needs_bytes(&self, size: u64, end_of_stream: bool) -> bool {
        end_of_stream && size <= self.limit && matches!(self.step, BodyStep::Check { .. })
    }
}

/// sanitize's decision on (part of) a held body.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyDecision<'a> {
    /// More is to come: keep holding.
    Wait,
    /// The body passes as it is.
    Continue,
    /// The body passes rewritten.
    Rewrite(BodyRewrite<'a>),
    /// Refused.
    Deny(Denial),
}

/// A JSON body rewritten (unknown fields stripped, re-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRewrite<'a> {
    /// The body as the client sent it, handed over to a signature verifier
    /// after us (`filter_core::original::save_body`).
    pub original: &'a [u8],
    /// The body to forward; `content-length` follows it.
    pub body: Vec<u8>,
}

impl BodyRewrite<'_> {
    /// Hands the original over, replaces the body and sets its length (the
    /// headers are still held, so the length can follow).
    pub fn apply<H: HttpHost + ?Sized>(&self, host: &mut H) {
        filter_core::original::save_body(host, self.original);
        host.replace_request_body(&self.body);
        host.set_request_header(headers::CONTENT_LENGTH, &self.body.len().to_string());
    }
}

impl HeadersDecision {
    /// The header edits, refusal or not.
    pub fn edits(&self) -> &Edits {
        match &self.decision {
            Decision::Continue(e) | Decision::Deny(e, _) => e,
        }
    }

    /// The refusal, if any.
    pub fn denial(&self) -> Option<&Denial> {
        self.decision.denial()
    }

    /// Applies the header edits in the order the per-filter build always
    /// made its host calls: removals, the original `:path` hand-over, then
    /// the new `:path`.
    pub fn apply_edits<H: HttpHost + ?Sized>(&self, host: &mut H) {
        let e = self.edits();
        for n in &e.remove {
            host.remove_request_header(n);
        }
        if let Some(r) = &self.rewrite {
            filter_core::original::save_path(host, &r.original_path);
        }
        for (n, v) in &e.set {
            host.set_request_header(n, v);
        }
    }

    /// Applies the whole decision (enforcing; no decision log): the edits,
    /// then the reply for a refusal (echoing `request_id`), else whether the
    /// headers are held for the body.
    pub fn apply<H: HttpHost + ?Sized>(&self, host: &mut H, request_id: Option<&str>) -> Verdict {
        self.apply_edits(host);
        match (&self.decision, self.body) {
            (Decision::Deny(_, d), _) => {
                d.send(host, request_id);
                Verdict::Responded
            }
            (Decision::Continue(_), Some(_)) => Verdict::WaitBody,
            (Decision::Continue(_), None) => Verdict::Continue,
        }
    }
}

/// Decides on the request headers (`end_of_stream`: they end the request).
/// Checks, in order: header values that were not UTF-8, the `Host`, the
/// path, case variants of a guarded prefix, the query (limits and the
/// route's rules, possibly rewriting it), the declared size, and the body's
/// framing, type and encoding when the route has a JSON rule.
pub fn decide_headers(
    cfg: &Compiled,
    req: &RequestView<'_>,
    end_of_stream: bool,
) -> HeadersDecision {
    let mut edits = Edits::default();
    let mut rewrite = None;
    match decide(cfg, req, end_of_stream, &mut edits, &mut rewrite) {
        Ok(body) => HeadersDecision {
            decision: Decision::Continue(edits),
            rewrite,
            body,
        },
        Err(d) => HeadersDecision {
            decision: Decision::Deny(edits, d),
            rewrite,
            body: None,
        },
    }
}

fn decide(
    cfg: &Compiled,
    req: &RequestView<'_>,
    end_of_stream: bool,
    edits: &mut Edits,
    rewrite: &mut Option<QueryRewrite>,
) -> Result<Option<BodyState>, Denial> {
    let mut content_length: Option<&str> = None;
    let mut content_type: Option<&str> = None;
    let mut content_encoding: Option<&str> = None;
    let mut not_utf8: Option<&str> = None;
    for (n, v) in req.headers {
        // The host hands invalid UTF-8 over as U+FFFD (filter_core::proxy::text).
        if not_utf8.is_none() && v.contains(char::REPLACEMENT_CHARACTER) {
            not_utf8 = Some(n);
        }
        match n.as_str() {
            headers::CONTENT_LENGTH => content_length = Some(v),
            headers::CONTENT_TYPE => content_type = Some(v),
            headers::CONTENT_ENCODING => content_encoding = Some(v),
            _ => {}
        }
        let named = cfg.remove_exact.iter().any(|e| e == n)
            || cfg
                .remove_prefixes
                .iter()
                .any(|p| n.starts_with(p.as_str()));
        if named {
            edits.remove(n);
        }
    }

    if let Some(name) = not_utf8 {
        // Never forwarded: an upstream would read the bytes its own way.
        return Err(Denial::bad_request(
            "invalid_header",
            format!("the value of header {name} is not valid UTF-8"),
        ));
    }

    if req.authority.is_some_and(|a| !valid_authority(a)) {
        // Two Host lines reach us joined ("a,b"): RFC 9112 wants 400,
        // and an upstream would pick either one.
        return Err(Denial::bad_request(
            "invalid_header",
            "the Host header is not a single valid host[:port]",
        ));
    }

    let full_path = req.full_path;
    let (path_part, query_part) = split_path(full_path);
    path::check(path_part, full_path.len(), &cfg.path)?;
    if let Some(g) = path::case_variant(path_part, &cfg.case_guards) {
        return Err(Denial::bad_request(
            "invalid_path",
            format!(
                "the path differs from the route {} only by letter case or encoding",
                g.prefix()
            ),
        ));
    }

    let route_index = cfg
        .routes
        .iter()
        .position(|r| r.matcher.matches(req.method, path_part));
    let route = route_index.and_then(|i| cfg.routes.get(i));
    let rules = route.map_or(&[][..], |r| r.query.as_slice());
    if let Some(q) = query::apply(query_part, &cfg.query, rules)? {
        let new_path = if q.is_empty() {
            path_part.to_string()
        } else {
            format!("{path_part}?{q}")
        };
        edits.set.push((headers::PATH.to_string(), new_path));
        *rewrite = Some(QueryRewrite {
            original_path: full_path.to_string(),
            query: q,
        });
    }

    let limit = route.map_or(cfg.max_body_bytes, |r| r.max_body_bytes);
    let declared: Option<u64> = match content_length {
        None => None,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Err(Denial::bad_request(
                    "invalid_request",
                    "invalid content-length",
                ))
            }
        },
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let has_body = !end_of_stream && declared != Some(0);
    if has_body && declared.is_none() && cfg.unknown_length_body == UnknownLengthBody::Refuse {
        // Counting would hold the headers (see config::Compiled::body_hold).
        return Err(length_required());
    }
    if let Some(i) = route_index.filter(|_| route.is_some_and(|r| r.body.is_some())) {
        if !has_body {
            return Err(Denial::bad_request(
                "invalid_body",
                "a JSON object body is required",
            ));
        }
        if !is_json(content_type) {
            return Err(Denial::bad_request(
                "unsupported_media_type",
                "the body must be UTF-8 JSON (content-type: application/json)",
            ));
        }
        // A compressed body cannot be checked, and what is not checked
        // must not pass: only an identity body meets the JSON rule.
        if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
            return Err(Denial::bad_request(
                "unsupported_media_type",
                "the body must not be content-encoded (send it uncompressed)",
            ));
        }
        return Ok(Some(BodyState {
            step: BodyStep::Check { route: i },
            limit,
        }));
    }
    if has_body && declared.is_none() {
        // No length announced: hold the headers and count, so an oversized
        // body is refused before the upstream sees anything.
        return Ok(Some(BodyState {
            step: BodyStep::Count,
            limit,
        }));
    }
    Ok(None)
}

/// Decides on a held body: `size` bytes are buffered so far and, when
/// [`BodyState::needs_bytes`] said so, `body` holds them (`None`: not read,
/// or nothing came). Past the limit it is 413 (also before the end: nothing
/// more is held); before the end it waits; at the end a counted body passes
/// and a checked one must meet its route's JSON rule.
pub fn decide_body<'a>(
    cfg: &Compiled,
    state: &BodyState,
    size: u64,
    body: Option<&'a [u8]>,
    end_of_stream: bool,
) -> BodyDecision<'a> {
    if size > state.limit {
        return BodyDecision::Deny(too_large(state.limit));
    }
    if !end_of_stream {
        return BodyDecision::Wait;
    }
    let BodyStep::Check { route } = state.step else {
        return BodyDecision::Continue;
    };
    let Some(rule) = cfg.routes.get(route).and_then(|r| r.body.as_ref()) else {
        return BodyDecision::Continue;
    };
    let Some(bytes) = body else {
        return BodyDecision::Deny(Denial::bad_request(
            "invalid_body",
            "a JSON object body is required",
        ));
    };
    match body::check(bytes, rule) {
        Err(d) => BodyDecision::Deny(d),
        Ok(None) => BodyDecision::Continue,
        Ok(Some(new_body)) => BodyDecision::Rewrite(BodyRewrite {
            original: bytes,
            body: new_body,
        }),
    }
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

    /// A request's header map as one read gives it.
    fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "gateway.test".to_string()),
            ("x-request-id".to_string(), "rid".to_string()),
        ];
        h.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        h
    }

    fn decide(method: &str, path: &str, extra: &[(&str, &str)], eos: bool) -> HeadersDecision {
        decide_headers(
            &web(),
            &RequestView::new(&request(method, path, extra)),
            eos,
        )
    }

    #[test]
    fn the_headers_a_gateway_asserts_are_removed_and_nothing_else_is_touched() {
        let d = decide(
            "GET",
            "/api/v1/public/x",
            &[
                ("x-passport", "forged"),
                ("x-user-id", "admin"),
                ("x-user-id", "again"),
                ("x-gateway-identity", "x"),
                ("accept", "application/json"),
            ],
            true,
        );
        let mut want = Edits::default();
        for n in ["x-passport", "x-user-id", "x-gateway-identity"] {
            want.remove(n);
        }
        assert_eq!(d.decision, Decision::Continue(want));
        assert_eq!((d.rewrite, d.body), (None, None));
    }

    #[test]
    fn a_size_past_the_clamp_rewrites_the_path_and_keeps_the_clients_for_the_verifier() {
        let d = decide("GET", "/api/v1/users/7?size=1000", &[], true);
        assert_eq!(
            d.edits().set,
            vec![(":path".to_string(), "/api/v1/users/7?size=100".to_string())]
        );
        assert_eq!(
            d.rewrite,
            Some(QueryRewrite {
                original_path: "/api/v1/users/7?size=1000".into(),
                query: "size=100".into(),
            })
        );
        // applied: the hand-over is a filter-state write, the rewrite a header set
        let mut h = FakeHost::request("GET", "/api/v1/users/7?size=1000");
        assert_eq!(d.apply(&mut h, Some("rid")), Verdict::Continue);
        assert_eq!(h.header(":path"), Some("/api/v1/users/7?size=100"));
        assert_eq!(
            filter_core::original::path(&h).as_deref(),
            Some("/api/v1/users/7?size=1000")
        );
        // in range: nothing to rewrite
        let d = decide("GET", "/api/v1/users/7?size=50", &[], true);
        assert_eq!((d.edits().is_empty(), d.rewrite), (true, None));
    }

    #[test]
    fn a_path_that_differs_from_a_route_only_by_case_is_refused_and_the_strip_still_applies() {
        let d = decide("GET", "/API/v1/Users/7", &[("x-user-id", "admin")], true);
        let denial = d.denial().unwrap();
        assert_eq!((denial.status, denial.code), (400, "invalid_path"));
        assert!(denial.message.contains("letter case"), "{}", denial.message);
        assert_eq!(d.edits().remove, vec!["x-user-id".to_string()]);
        assert_eq!(d.body, None);
    }

    #[test]
    fn an_order_is_held_for_its_body_and_an_unknown_field_is_stripped_from_it() {
        let cfg = web();
        let d = decide(
            "POST",
            "/api/v1/orders",
            &[("content-type", "application/json")],
            false,
        );
        let state = d.body.unwrap();
        assert_eq!(state.step, BodyStep::Check { route: 1 });
        assert_eq!(state.limit, 65536);
        let sent = br#"{"item_id":"a","quantity":2,"admin":true}"#;
        let size = sent.len() as u64;
        // partway: no bytes needed, keep holding
        assert!(!state.needs_bytes(size, false));
        assert_eq!(
            decide_body(&cfg, &state, size, None, false),
            BodyDecision::Wait
        );
        assert!(state.needs_bytes(size, true));
        assert_eq!(
            decide_body(&cfg, &state, size, Some(sent), true),
            BodyDecision::Rewrite(BodyRewrite {
                original: sent,
                body: br#"{"item_id":"a","quantity":2}"#.to_vec(),
            })
        );
        // an exact order passes unchanged; no body at all is refused
        let exact = br#"{"item_id":"a","quantity":2}"#;
        assert_eq!(
            decide_body(&cfg, &state, exact.len() as u64, Some(exact), true),
            BodyDecision::Continue
        );
        let BodyDecision::Deny(d) = decide_body(&cfg, &state, 0, None, true) else {
            panic!("an absent body passed");
        };
        assert_eq!((d.status, d.code), (400, "invalid_body"));
    }

    #[test]
    fn a_body_past_the_limit_is_413_whether_declared_or_counted() {
        let cfg = web();
        // declared: refused at the headers
        let d = decide(
            "POST",
            "/api/v1/public/upload",
            &[("content-length", "65537")],
            false,
        );
        let denial = d.denial().unwrap();
        assert_eq!((denial.status, denial.code), (413, "body_too_large"));
        // counted: held, then refused as soon as the count passes the limit
        let d = decide("POST", "/api/v1/public/upload", &[], false);
        let state = d.body.unwrap();
        assert_eq!(
            state,
            BodyState {
                step: BodyStep::Count,
                limit: 65536
            }
        );
        assert!(
            !state.needs_bytes(65536, true),
            "a counted body is never read"
        );
        assert_eq!(
            decide_body(&cfg, &state, 65536, None, true),
            BodyDecision::Continue
        );
        let BodyDecision::Deny(d) = decide_body(&cfg, &state, 65537, None, false) else {
            panic!("an oversized body was held on");
        };
        assert_eq!(d.status, 413);
        assert_eq!(d.message, "the request body exceeds 65536 bytes");
    }
}
