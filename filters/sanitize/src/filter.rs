//! sanitize's per-request adapter, written against [`HttpHost`] so that it
//! runs natively against [`filter_core::host::FakeHost`] and in Envoy
//! through the thin proxy-wasm glue in `lib.rs`: it reads the headers once,
//! asks the pure core ([`crate::decide`]) and applies the answer (or, in a
//! dry run, only logs it), and emits the decision log.

use filter_core::decision::{self, RouteNames};
use filter_core::request::{Decision, RequestView};
use filter_core::{Denial, HttpHost, Verdict};

use crate::config::Compiled;
use crate::decide::{decide_body, decide_headers, BodyDecision, BodyState};

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

/// Per-request state.
#[derive(Debug, Default)]
pub struct Request {
    /// Set while the body is held (or, in a dry run, watched).
    body: Option<BodyState>,
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

impl Request {
    fn deny<H: HttpHost>(&mut self, cfg: &Compiled, host: &mut H, d: Denial) -> Verdict {
        self.outcome = Outcome::Denied;
        self.denied_code = Some(d.code);
        let names = self
            .names
            .get_or_insert_with(|| decision::route_names(host));
        decision::Decision::denial("sanitize", &self.method, d.status, d.code)
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

    /// Holds the headers for the body, or (dry run) lets them go on.
    fn wait(cfg: &Compiled) -> Verdict {
        if cfg.dry_run {
            Verdict::Continue
        } else {
            Verdict::WaitBody
        }
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
        let view = RequestView::new(&all);
        self.request_id = view.request_id.map(str::to_string);
        self.method = view.method.to_string();
        self.trace_id = decision::trace_id(&all);
        let d = decide_headers(cfg, &view, end_of_stream);

        if !cfg.dry_run {
            d.apply_edits(host);
        } else {
            let remove = &d.edits().remove;
            if !remove.is_empty() {
                log::info!("sanitize dry-run: would remove headers {remove:?}");
            }
            if let Some(r) = &d.rewrite {
                log::info!("sanitize dry-run: would rewrite query to {:?}", r.query);
            }
        }
        if d.rewrite.is_some() {
            self.outcome = Outcome::Rewritten;
        }
        if let Decision::Deny(_, denial) = d.decision {
            return self.deny(cfg, host, denial);
        }
        self.body = d.body;
        match self.body {
            Some(_) => Self::wait(cfg),
            None => Verdict::Continue,
        }
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
        let Some(state) = self.body else {
            return Verdict::Continue;
        };
        let size = buffered as u64;
        let bytes = if state.needs_bytes(size, end_of_stream) {
            host.request_body(buffered)
        } else {
            None
        };
        let d = decide_body(cfg, &state, size, bytes.as_deref(), end_of_stream);
        self.apply_body(cfg, host, d)
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
        let Some(state) = self.body else {
            return Verdict::Continue;
        };
        // One read of at most limit + 1 bytes gives both the size and the body
        // (a host returns what it has when asked for more).
        let want = usize::try_from(state.limit.saturating_add(1)).unwrap_or(usize::MAX);
        let bytes = host.request_body(want).filter(|b| !b.is_empty());
        let size = bytes.as_ref().map_or(0, Vec::len) as u64;
        let d = decide_body(cfg, &state, size, bytes.as_deref(), true);
        self.apply_body(cfg, host, d)
    }

    /// Applies a body decision; the body step is over unless it waits.
    fn apply_body<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        d: BodyDecision<'_>,
    ) -> Verdict {
        if d != BodyDecision::Wait {
            self.body = None;
        }
        match d {
            BodyDecision::Wait => Self::wait(cfg),
            BodyDecision::Continue => Verdict::Continue,
            BodyDecision::Deny(denial) => self.deny(cfg, host, denial),
            BodyDecision::Rewrite(r) => {
                self.outcome = Outcome::Rewritten;
                if cfg.dry_run {
                    log::info!("sanitize dry-run: would rewrite the body");
                } else {
                    r.apply(host);
                }
                Verdict::Continue
            }
        }
    }
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
