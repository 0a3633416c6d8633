//! The HTTP API as a pure function: method, path and query in, the one
//! store operation they name (or the refusal) out. No I/O here: whatever this
//! refuses never becomes a Redis command.

use std::time::Duration;

/// Length of a key: a SHA-256 in lower-case hex. Filters send hashes only, so
/// no bearer token, nonce or client string is ever stored or logged as a key.
pub const KEY_HEX_LEN: usize = 64;

/// Longest namespace accepted at start-up.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Most namespaces one store serves.
pub const MAX_NAMESPACES: usize = 64;

/// Longest query string looked at (`ttl_ms=` or `idle_ms=` plus 19 digits
/// fits easily).
pub const MAX_QUERY_LEN: usize = 64;

/// Prefix of every Redis key this service touches; the ACL user is limited to
/// `~gw:*`.
pub const KEY_PREFIX: &str = "gw";

/// A request the API accepts, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/claim/{ns}/{key}?ttl_ms=N`: `SET key id NX PX N`.
    Claim { key: StoreKey, ttl_ms: u64 },
    /// `PUT /v1/session/{ns}/{key}?ttl_ms=N`: `SET key body PX N`.
    SessionPut { key: StoreKey, ttl_ms: u64 },
    /// `GET /v1/session/{ns}/{key}`: `GET key`.
    SessionGet { key: StoreKey },
    /// `GET /v1/session/{ns}/{key}?idle_ms=N`: `GETEX key PX N` (read the
    /// value and push its idle expiry in one round trip).
    SessionTouch { key: StoreKey, idle_ms: u64 },
    /// `GET /v1/session/{ns}/{key}?consume=1`: `GETDEL key` (the value is
    /// returned once: single-use state, atomic across replicas).
    SessionConsume { key: StoreKey },
    /// `DELETE /v1/session/{ns}/{key}`: `DEL key`.
    SessionDelete { key: StoreKey },
    /// `GET /healthz`: `PING`.
    Health,
    /// `GET /stats`: the counters, no Redis command.
    Stats,
}

/// Why a request is refused before any Redis command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 404 `not_found`: no such route.
    NotFound,
    /// 405 `method_not_allowed`, with the `Allow` header value.
    MethodNotAllowed { allow: &'static str },
    /// 404 `unknown_namespace`: the namespace is not one of `--namespace`.
    UnknownNamespace,
    /// 400 `bad_request`, with what is wrong.
    BadRequest(&'static str),
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotFound | Refusal::UnknownNamespace => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::BadRequest(_) => 400,
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::UnknownNamespace => "unknown_namespace",
            Refusal::BadRequest(_) => "bad_request",
        }
    }

    /// The `message` of the JSON body.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::NotFound => "no such route",
            Refusal::MethodNotAllowed { .. } => "method not allowed on this route",
            Refusal::UnknownNamespace => "namespace not served by this store",
            Refusal::BadRequest(why) => why,
        }
    }
}

/// A validated Redis key, `gw:{ns}:{64 hex}`. Only [`route`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKey(String);

impl StoreKey {
    /// The Redis key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The namespaces this store serves, checked at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Validates the `--namespace` values: 1 to [`MAX_NAMESPACES`] distinct
    /// names of 1 to [`MAX_NAMESPACE_LEN`] characters from `[a-z0-9._-]`,
    /// starting with a letter or digit. No `:`, so one namespace's keys can
    /// never be written through another (`gw:{ns}:{key}` splits one way only).
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> Result<Self, String> {
        let mut list: Vec<String> = Vec::new();
        for name in names {
            if !valid_namespace(&name) {
                return Err(format!(
                    "--namespace {name:?}: use 1 to {MAX_NAMESPACE_LEN} characters from [a-z0-9._-], starting with a letter or digit"
                ));
            }
            if list.contains(&name) {
                return Err(format!("--namespace {name:?} given twice"));
            }
            list.push(name);
        }
        if list.is_empty() {
            return Err("at least one --namespace is required".into());
        }
        if list.len() > MAX_NAMESPACES {
            return Err(format!("at most {MAX_NAMESPACES} --namespace values"));
        }
        Ok(Self(list))
    }

    /// Whether `ns` is served.
    pub fn contains(&self, ns: &str) -> bool {
        self.0.iter().any(|n| n == ns)
    }

    /// The names, in the order given.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

fn valid_namespace(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_lowercase() || first.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.len() <= MAX_NAMESPACE_LEN
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Whether `key` is exactly 64 lower-case hex characters.
pub fn valid_key(key: &str) -> bool {
    key.len() == KEY_HEX_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// HTTP methods the API distinguishes; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Other,
}

impl Method {
    /// Maps a method name (case-sensitive, as HTTP says).
    pub fn from_name(name: &str) -> Self {
        match name {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// The route table. `query` is the raw query string without `?` (`None` when
/// the target has none). Checks run in this order: the path's shape (404),
/// the method (405), the namespace (404 `unknown_namespace`), the key, then
/// the query and the TTL (400).
pub fn route(
    method: Method,
    path: &str,
    query: Option<&str>,
    namespaces: &Namespaces,
    max_ttl_ms: u64,
) -> Result<Operation, Refusal> {
    match path {
        "/healthz" => {
            return match method {
                Method::Get => Ok(Operation::Health),
                _ => Err(Refusal::MethodNotAllowed { allow: "GET" }),
            }
        }
        "/stats" => {
            return match method {
                Method::Get => Ok(Operation::Stats),
                _ => Err(Refusal::MethodNotAllowed { allow: "GET" }),
            }
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(Refusal::NotFound);
    };
    let mut segments = rest.split('/');
    let (Some(kind), Some(ns), Some(key), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(Refusal::NotFound);
    };
    if ns.is_empty() || key.is_empty() {
        return Err(Refusal::NotFound);
    }
    enum Kind {
        Claim,
        SessionPut,
        SessionGet,
        SessionDelete,
    }
    let op = match (kind, method) {
        ("claim", Method::Post) => Kind::Claim,
        ("claim", _) => return Err(Refusal::MethodNotAllowed { allow: "POST" }),
        ("session", Method::Put) => Kind::SessionPut,
        ("session", Method::Get) => Kind::SessionGet,
        ("session", Method::Delete) => Kind::SessionDelete,
        ("session", _) => {
            return Err(Refusal::MethodNotAllowed {
                allow: "GET, PUT, DELETE",
            })
        }
        _ => return Err(Refusal::NotFound),
    };
    if !namespaces.contains(ns) {
        return Err(Refusal::UnknownNamespace);
    }
    if !valid_key(key) {
        return Err(Refusal::BadRequest(
            "the key must be exactly 64 lower-case hex characters (a SHA-256)",
        ));
    }
    let key = StoreKey(format!("{KEY_PREFIX}:{ns}:{key}"));
    Ok(match op {
        Kind::Claim => Operation::Claim {
            ttl_ms: ttl_from_query(query, max_ttl_ms)?,
            key,
        },
        Kind::SessionPut => Operation::SessionPut {
            ttl_ms: ttl_from_query(query, max_ttl_ms)?,
            key,
        },
        Kind::SessionGet => match session_read(query, max_ttl_ms)? {
            SessionRead::Plain => Operation::SessionGet { key },
            SessionRead::Touch(idle_ms) => Operation::SessionTouch { key, idle_ms },
            SessionRead::Consume => Operation::SessionConsume { key },
        },
        Kind::SessionDelete => {
            no_query(query)?;
            Operation::SessionDelete { key }
        }
    })
}

fn no_query(query: Option<&str>) -> Result<(), Refusal> {
    match query {
        None | Some("") => Ok(()),
        Some(_) => Err(Refusal::BadRequest("this route takes no query parameters")),
    }
}

/// How a session `GET` reads, from its query.
enum SessionRead {
    /// No query: `GET`.
    Plain,
    /// `idle_ms=N`: `GETEX PX N`.
    Touch(u64),
    /// `consume=1`: `GETDEL`.
    Consume,
}

/// A session `GET` takes no query, or exactly `idle_ms=N` (`1 <= N <=
/// max_ttl_ms`, as a TTL), or exactly `consume=1`; both together is refused
/// with its own message (a consumed value has no expiry to push), anything
/// else as any unknown query.
fn session_read(query: Option<&str>, max_ttl_ms: u64) -> Result<SessionRead, Refusal> {
    const WANT: &str =
        "the query must be empty, exactly idle_ms=N with 1 <= N <= --max-ttl-ms, or exactly consume=1";
    let query = match query {
        None | Some("") => return Ok(SessionRead::Plain),
        Some(q) if q.len() > MAX_QUERY_LEN => return Err(Refusal::BadRequest(WANT)),
        Some(q) => q,
    };
    let named = |want: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(want))
    };
    if named("idle_ms") && named("consume") {
        return Err(Refusal::BadRequest(
            "idle_ms and consume are mutually exclusive",
        ));
    }
    if query == "consume=1" {
        return Ok(SessionRead::Consume);
    }
    match query.strip_prefix("idle_ms=").and_then(parse_decimal) {
        Some(ms) if (1..=max_ttl_ms).contains(&ms) => Ok(SessionRead::Touch(ms)),
        _ => Err(Refusal::BadRequest(WANT)),
    }
}

/// The query must be exactly `ttl_ms=N`, `1 <= N <= max_ttl_ms`, `N` in
/// plain decimal digits.
fn ttl_from_query(query: Option<&str>, max_ttl_ms: u64) -> Result<u64, Refusal> {
    const WANT: &str = "the query must be exactly ttl_ms=N with 1 <= N <= --max-ttl-ms";
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_LEN {
        return Err(Refusal::BadRequest(WANT));
    }
    let Some(value) = query.strip_prefix("ttl_ms=") else {
        return Err(Refusal::BadRequest(WANT));
    };
    match parse_decimal(value) {
        Some(ttl) if (1..=max_ttl_ms).contains(&ttl) => Ok(ttl),
        _ => Err(Refusal::BadRequest(WANT)),
    }
}

/// Plain ASCII decimal digits (no sign, no spaces), at most 19 of them, so
/// the value always fits in `u64` (and in Redis's signed 64-bit `PX`).
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The time a request may take: `--timeout-ms`, or less when the caller sends
/// a valid `x-deadline-ms` (decimal, at least 1). A missing, malformed or
/// larger header leaves `--timeout-ms`: a caller can shorten the wait, never
/// lengthen it.
pub fn effective_deadline(timeout_ms: u64, header: Option<&[u8]>) -> Duration {
    let asked = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(parse_decimal)
        .filter(|&ms| ms >= 1);
    Duration::from_millis(asked.map_or(timeout_ms, |ms| ms.min(timeout_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn namespaces() -> Namespaces {
        Namespaces::new(["web.jwt".to_owned(), "app.replay-guard".to_owned()]).unwrap()
    }

    fn go(method: &str, path: &str, query: Option<&str>) -> Result<Operation, Refusal> {
        route(
            Method::from_name(method),
            path,
            query,
            &namespaces(),
            86_400_000,
        )
    }

    fn key(ns: &str) -> StoreKey {
        StoreKey(format!("gw:{ns}:{KEY}"))
    }

    #[test]
    fn claim_routes_to_set_nx_with_the_namespaced_key() {
        assert_eq!(
            go(
                "POST",
                &format!("/v1/claim/web.jwt/{KEY}"),
                Some("ttl_ms=1000")
            ),
            Ok(Operation::Claim {
                key: key("web.jwt"),
                ttl_ms: 1000
            })
        );
    }

    #[test]
    fn session_methods_route_to_their_operations() {
        let path = format!("/v1/session/app.replay-guard/{KEY}");
        assert_eq!(
            go("PUT", &path, Some("ttl_ms=5")),
            Ok(Operation::SessionPut {
                key: key("app.replay-guard"),
                ttl_ms: 5
            })
        );
        assert_eq!(
            go("GET", &path, None),
            Ok(Operation::SessionGet {
                key: key("app.replay-guard")
            })
        );
        assert_eq!(
            go("DELETE", &path, Some("")),
            Ok(Operation::SessionDelete {
                key: key("app.replay-guard")
            })
        );
    }

    #[test]
    fn health_and_stats_are_get_only() {
        assert_eq!(go("GET", "/healthz", None), Ok(Operation::Health));
        assert_eq!(go("GET", "/stats", None), Ok(Operation::Stats));
        assert_eq!(
            go("POST", "/healthz", None),
            Err(Refusal::MethodNotAllowed { allow: "GET" })
        );
        assert_eq!(
            go("DELETE", "/stats", None),
            Err(Refusal::MethodNotAllowed { allow: "GET" })
        );
    }

    #[test]
    fn unknown_paths_are_404_never_an_operation() {
        for path in [
            "/",
            "",
            "/v1",
            "/v1/",
            "/v2/claim/web.jwt/x",
            "/v1/claim",
            "/v1/claim/web.jwt",
            "/v1/claim/web.jwt/",
            "/v1/claim//abc",
            &format!("/v1/claim/web.jwt/{KEY}/"),
            &format!("/v1/claim/web.jwt/{KEY}/extra"),
            &format!("/v1/keys/web.jwt/{KEY}"),
            &format!("/v1/CLAIM/web.jwt/{KEY}"),
            "/healthz/",
            "/HEALTHZ",
            "/v1/eval/web.jwt/flushall",
        ] {
            assert_eq!(
                go("POST", path, Some("ttl_ms=1")),
                Err(Refusal::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn wrong_methods_are_405_with_allow() {
        let claim = format!("/v1/claim/web.jwt/{KEY}");
        for m in ["GET", "PUT", "DELETE", "PATCH", "post", "HEAD"] {
            assert_eq!(
                go(m, &claim, Some("ttl_ms=1")),
                Err(Refusal::MethodNotAllowed { allow: "POST" }),
                "{m}"
            );
        }
        let session = format!("/v1/session/web.jwt/{KEY}");
        for m in ["POST", "PATCH", "HEAD", "OPTIONS"] {
            assert_eq!(
                go(m, &session, None),
                Err(Refusal::MethodNotAllowed {
                    allow: "GET, PUT, DELETE"
                }),
                "{m}"
            );
        }
    }

    #[test]
    fn unknown_namespace_is_404() {
        for ns in [
            "web",
            "web.jwt2",
            "WEB.JWT",
            "internal.oidc",
            "gw",
            "web.jwt:x",
        ] {
            let refused = go("POST", &format!("/v1/claim/{ns}/{KEY}"), Some("ttl_ms=1"));
            assert_eq!(refused, Err(Refusal::UnknownNamespace), "{ns}");
            assert_eq!(Refusal::UnknownNamespace.status(), 404);
        }
    }

    #[test]
    fn keys_must_be_64_lower_case_hex() {
        let upper = KEY.to_ascii_uppercase();
        let short = &KEY[..63];
        let long = format!("{KEY}0");
        let not_hex = format!("{}g", &KEY[..63]);
        let star = format!("{}*", &KEY[..63]);
        let colon = format!("{}:", &KEY[..63]);
        let encoded = format!("{}%41", &KEY[..61]);
        for bad in [
            upper.as_str(),
            short,
            &long,
            &not_hex,
            &star,
            &colon,
            &encoded,
            "eyJhbGciOi",
        ] {
            let refused = go(
                "POST",
                &format!("/v1/claim/web.jwt/{bad}"),
                Some("ttl_ms=1"),
            );
            assert!(
                matches!(refused, Err(Refusal::BadRequest(_))),
                "{bad}: {refused:?}"
            );
            let refused = go("GET", &format!("/v1/session/web.jwt/{bad}"), None);
            assert!(matches!(refused, Err(Refusal::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn ttl_must_be_within_one_and_max() {
        let path = format!("/v1/claim/web.jwt/{KEY}");
        for q in [
            None,
            Some(""),
            Some("ttl_ms="),
            Some("ttl_ms=0"),
            Some("ttl_ms=86400001"),
            Some("ttl_ms=-1"),
            Some("ttl_ms=+5"),
            Some("ttl_ms=1.5"),
            Some("ttl_ms= 5"),
            Some("ttl_ms=99999999999999999999"),
            Some("ttl_ms=5&ttl_ms=6"),
            Some("ttl_ms=5&x=1"),
            Some("x=1&ttl_ms=5"),
            Some("TTL_MS=5"),
        ] {
            let refused = go("POST", &path, q);
            assert!(
                matches!(refused, Err(Refusal::BadRequest(_))),
                "{q:?}: {refused:?}"
            );
            let refused = go("PUT", &format!("/v1/session/web.jwt/{KEY}"), q);
            assert!(matches!(refused, Err(Refusal::BadRequest(_))), "{q:?}");
        }
        assert!(go("POST", &path, Some("ttl_ms=86400000")).is_ok());
        assert!(go("POST", &path, Some("ttl_ms=1")).is_ok());
        assert!(go("POST", &path, Some("ttl_ms=0001")).is_ok());
    }

    #[test]
    fn session_get_takes_only_idle_ms_or_consume_and_delete_no_query() {
        let path = format!("/v1/session/web.jwt/{KEY}");
        for q in [
            "ttl_ms=5",
            "x",
            "consume",
            "consume=",
            "consume=0",
            "consume=true",
            "consume=1&consume=1",
            "consume=1&x=1",
            "idle_ms",
            "idle_ms=",
            "idle_ms=0",
            "idle_ms=86400001",
            "idle_ms=-1",
            "idle_ms=+5",
            "idle_ms=1.5",
            "idle_ms=99999999999999999999",
            "idle_ms=5&idle_ms=6",
            "idle_ms=5&x=1",
            "IDLE_MS=5",
            "Consume=1",
        ] {
            let refused = go("GET", &path, Some(q));
            assert!(
                matches!(refused, Err(Refusal::BadRequest(m)) if !m.contains("mutually")),
                "{q:?}: {refused:?}"
            );
        }
        assert!(matches!(
            go("DELETE", &path, Some("x")),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            go("DELETE", &path, Some("consume=1")),
            Err(Refusal::BadRequest(_))
        ));
        let long = format!("idle_ms=5&{}", "x".repeat(MAX_QUERY_LEN));
        assert!(matches!(
            go("GET", &path, Some(&long)),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn session_get_with_idle_ms_routes_to_getex_bounded_like_a_ttl() {
        let path = format!("/v1/session/internal.oidc/{KEY}");
        let ns = Namespaces::new(["internal.oidc".to_owned()]).unwrap();
        let get = |q: &str| route(Method::Get, &path, Some(q), &ns, 86_400_000);
        let key = key("internal.oidc");
        for (q, idle_ms) in [
            ("idle_ms=1", 1),
            ("idle_ms=1800000", 1_800_000),
            ("idle_ms=86400000", 86_400_000),
            ("idle_ms=0001", 1),
        ] {
            assert_eq!(
                get(q),
                Ok(Operation::SessionTouch {
                    key: key.clone(),
                    idle_ms
                }),
                "{q}"
            );
        }
    }

    #[test]
    fn session_get_with_consume_routes_to_getdel() {
        let path = format!("/v1/session/web.jwt/{KEY}");
        assert_eq!(
            go("GET", &path, Some("consume=1")),
            Ok(Operation::SessionConsume {
                key: key("web.jwt")
            })
        );
    }

    #[test]
    fn idle_ms_and_consume_together_are_refused_as_mutually_exclusive() {
        let path = format!("/v1/session/web.jwt/{KEY}");
        for q in [
            "idle_ms=5&consume=1",
            "consume=1&idle_ms=5",
            "idle_ms=0&consume=0",
            "consume&idle_ms",
            "x=1&consume=1&idle_ms=5",
        ] {
            assert_eq!(
                go("GET", &path, Some(q)),
                Err(Refusal::BadRequest(
                    "idle_ms and consume are mutually exclusive"
                )),
                "{q}"
            );
        }
    }

    #[test]
    fn namespaces_are_validated_at_start_up() {
        let ok = |v: &[&str]| Namespaces::new(v.iter().map(|s| (*s).to_owned()));
        assert!(ok(&["web.jwt", "app.replay-guard", "internal.oidc", "a", "0_x"]).is_ok());
        assert!(ok(&[]).is_err());
        assert!(ok(&["web.jwt", "web.jwt"]).is_err());
        for bad in [
            "", "Web", "web:jwt", "web/jwt", "-web", ".web", "we b", "gw*", "é",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad:?}");
        }
        assert!(ok(&[&"a".repeat(64)]).is_ok());
        assert!(ok(&[&"a".repeat(65)]).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("ns{i}")).collect();
        assert!(Namespaces::new(many).is_err());
    }

    #[test]
    fn deadline_header_only_shortens() {
        let d = |h: Option<&str>| effective_deadline(80, h.map(str::as_bytes)).as_millis();
        assert_eq!(d(None), 80);
        assert_eq!(d(Some("30")), 30);
        assert_eq!(d(Some("1")), 1);
        assert_eq!(d(Some("80")), 80);
        assert_eq!(d(Some("5000")), 80);
        for bad in [
            "0",
            "",
            "-5",
            "abc",
            "30ms",
            " 30",
            "99999999999999999999999",
        ] {
            assert_eq!(d(Some(bad)), 80, "{bad:?}");
        }
        assert_eq!(effective_deadline(80, Some(b"\xff")).as_millis(), 80);
    }

    #[test]
    fn refusals_map_to_status_and_code() {
        assert_eq!(Refusal::NotFound.status(), 404);
        assert_eq!(Refusal::NotFound.code(), "not_found");
        assert_eq!(Refusal::MethodNotAllowed { allow: "GET" }.status(), 405);
        assert_eq!(Refusal::BadRequest("x").status(), 400);
        assert_eq!(Refusal::BadRequest("x").message(), "x");
        assert_eq!(Refusal::UnknownNamespace.code(), "unknown_namespace");
    }
}
