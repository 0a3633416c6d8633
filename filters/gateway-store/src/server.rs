//! HTTP: HTTP/1.1 and h2c (prior knowledge) on one port, each request routed
//! by [`crate::api::route`] and answered in JSON.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::api::{self, Method, Namespaces, Operation, Refusal};
use crate::stats::bump;
use crate::store::{Claim, Store, Unavailable};

/// Largest request head (request line and headers) on HTTP/1.1, and header
/// list on HTTP/2: 431 beyond.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Concurrent streams per HTTP/2 connection.
pub const MAX_H2_STREAMS: u32 = 256;
/// A client must send its request head within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request needs.
#[derive(Debug)]
pub struct App {
    pub store: Arc<Store>,
    pub namespaces: Namespaces,
    pub timeout_ms: u64,
    pub max_ttl_ms: u64,
    pub max_value_bytes: usize,
}

/// One response body type for every answer.
pub type Resp = Response<Full<Bytes>>;

/// Answers one request.
pub async fn handle<B>(app: Arc<App>, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let method = Method::from_name(req.method().as_str());
    let op = api::route(
        method,
        req.uri().path(),
        req.uri().query(),
        &app.namespaces,
        app.max_ttl_ms,
    );
    let op = match op {
        Ok(op) => op,
        Err(refusal) => return refused(&app, &refusal),
    };
    let deadline = started
        + api::effective_deadline(
            app.timeout_ms,
            req.headers()
                .get("x-deadline-ms")
                .map(HeaderValue::as_bytes),
        );
    let stats = &app.store.stats;
    match op {
        Operation::Claim { key, ttl_ms } => match app.store.claim(key, ttl_ms, deadline).await {
            Ok(Claim::Claimed) => {
                bump(&stats.claimed);
                json(StatusCode::CREATED, &serde_json::json!({"claimed": true}))
            }
            Ok(Claim::Conflict) => {
                bump(&stats.conflicts);
                json(StatusCode::CONFLICT, &serde_json::json!({"claimed": false}))
            }
            Err(Unavailable) => unavailable(&app),
        },
        Operation::SessionPut { key, ttl_ms } => {
            bump(&stats.session_set);
            let value = match read_body(&app, req, deadline).await {
                Ok(value) => value,
                Err(resp) => return resp,
            };
            match app.store.session_put(key, value, ttl_ms, deadline).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(Unavailable) => unavailable(&app),
            }
        }
        Operation::SessionGet { key } => {
            bump(&stats.session_get);
            session_value(&app, app.store.session_get(key, deadline).await)
        }
        Operation::SessionTouch { key, idle_ms } => {
            bump(&stats.session_touch);
            session_value(&app, app.store.session_touch(key, idle_ms, deadline).await)
        }
        Operation::SessionConsume { key } => {
            bump(&stats.session_consume);
            session_value(&app, app.store.session_consume(key, deadline).await)
        }
        Operation::SessionDelete { key } => {
            bump(&stats.session_delete);
            match app.store.session_delete(key, deadline).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(Unavailable) => unavailable(&app),
            }
        }
        Operation::Health => match app.store.ping(deadline).await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"redis": "ok"})),
            Err(Unavailable) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"redis": "unavailable"}),
            ),
        },
        Operation::Stats => json(StatusCode::OK, &stats.to_json()),
    }
}

/// The body of a `PUT`, at most `--max-value-bytes` (413 beyond, checked on
/// `Content-Length` before reading), read before the deadline (408 after).
async fn read_body<B>(app: &App, req: Request<B>, deadline: Instant) -> Result<Bytes, Resp>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        bump(&app.store.stats.bad_requests);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the value is larger than --max-value-bytes",
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > app.max_value_bytes as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), app.max_value_bytes);
    match tokio::time::timeout_at(deadline, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => {
            bump(&app.store.stats.bad_requests);
            Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("cannot read the body: {e}"),
            ))
        }
        Err(_elapsed) => {
            bump(&app.store.stats.bad_requests);
            Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the body did not arrive before the deadline",
            ))
        }
    }
}

/// The answer of a session read: 200 with the stored bytes, 404 `no_session`,
/// or 503.
fn session_value(app: &App, read: Result<Option<Vec<u8>>, Unavailable>) -> Resp {
    match read {
        Ok(Some(value)) => {
            let mut resp = Response::new(Full::new(Bytes::from(value)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no_session",
            "no value under this key",
        ),
        Err(Unavailable) => unavailable(app),
    }
}

fn refused(app: &App, refusal: &Refusal) -> Resp {
    bump(&app.store.stats.bad_requests);
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = error(status, refusal.code(), refusal.message());
    if let Refusal::MethodNotAllowed { allow } = refusal {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

fn unavailable(app: &App) -> Resp {
    bump(&app.store.stats.unavailable);
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "redis did not answer before the deadline",
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A bound listener: TCP or a Unix socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

/// An accepted connection.
enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Conn, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Conn::Unix(s), "unix socket".to_string()))
            }
        }
    }
}

/// Accepts connections forever, at most `max_connections` at once (further
/// clients wait in the listen backlog), serving HTTP/1.1 and h2c.
pub async fn serve(listener: Listener, app: Arc<App>, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let builder = Arc::new(builder);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // e.g. too many open files: back off briefly and go on.
                eprintln!("gateway-store: accept error: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(handle(app, req).await) }
            });
            let served = match stream {
                Conn::Tcp(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                Conn::Unix(s) => builder.serve_connection(TokioIo::new(s), svc).await,
            };
            if let Err(e) = served {
                // A client closing its keep-alive connection is not news.
                let quiet = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_incomplete_message() || e.is_closed());
                if !quiet {
                    eprintln!("gateway-store: connection from {peer}: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use redis::IntoConnectionInfo;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// An app whose Redis is a closed port: every refusal below must be
    /// decided without it.
    fn app() -> Arc<App> {
        let redis = "redis://127.0.0.1:1".into_connection_info().unwrap();
        let store = Store::new(StoreConfig {
            redis,
            max_in_flight: 4,
        })
        .unwrap();
        Arc::new(App {
            store: Arc::new(store),
            namespaces: Namespaces::new(["web.jwt".to_owned()]).unwrap(),
            timeout_ms: 80,
            max_ttl_ms: 1000,
            max_value_bytes: 8,
        })
    }

    fn request(method: &str, uri: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    }

    async fn body_json(resp: Resp) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn refusals_are_json_and_counted() {
        let app = app();
        let cases = [
            ("GET", "/nope".to_owned(), 404, "not_found"),
            (
                "GET",
                format!("/v1/claim/web.jwt/{KEY}"),
                405,
                "method_not_allowed",
            ),
            (
                "POST",
                format!("/v1/claim/other/{KEY}?ttl_ms=5"),
                404,
                "unknown_namespace",
            ),
            (
                "POST",
                "/v1/claim/web.jwt/abc?ttl_ms=5".to_owned(),
                400,
                "bad_request",
            ),
            (
                "POST",
                format!("/v1/claim/web.jwt/{KEY}?ttl_ms=0"),
                400,
                "bad_request",
            ),
            (
                "POST",
                format!("/v1/claim/web.jwt/{KEY}?ttl_ms=1001"),
                400,
                "bad_request",
            ),
            (
                "GET",
                format!("/v1/session/web.jwt/{KEY}?idle_ms=1001"),
                400,
                "bad_request",
            ),
            (
                "GET",
                format!("/v1/session/web.jwt/{KEY}?idle_ms=5&consume=1"),
                400,
                "bad_request",
            ),
            (
                "GET",
                format!("/v1/session/web.jwt/{KEY}?consume=2"),
                400,
                "bad_request",
            ),
        ];
        for (method, uri, status, code) in &cases {
            let resp = handle(Arc::clone(&app), request(method, uri, b"")).await;
            assert_eq!(resp.status().as_u16(), *status, "{method} {uri}");
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
            let json = body_json(resp).await;
            assert_eq!(json["error"], *code, "{method} {uri}");
        }
        let stats = app.store.stats.to_json();
        assert_eq!(stats["bad_requests"], cases.len());
        assert_eq!(stats["claims"], 0, "nothing refused reached the store");
        assert_eq!(stats["session_touch"], 0);
        assert_eq!(stats["session_consume"], 0);
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_allowed_ones() {
        let resp = handle(
            app(),
            request("POST", &format!("/v1/session/web.jwt/{KEY}"), b""),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, PUT, DELETE");
    }

    #[tokio::test]
    async fn a_value_over_the_limit_is_413_before_redis() {
        let app = app();
        let uri = format!("/v1/session/web.jwt/{KEY}?ttl_ms=5");
        let resp = handle(Arc::clone(&app), request("PUT", &uri, b"123456789")).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_json(resp).await["error"], "payload_too_large");
    }

    #[tokio::test]
    async fn redis_down_is_503_store_unavailable_within_the_deadline() {
        let app = app();
        let started = std::time::Instant::now();
        let mut req = request("POST", &format!("/v1/claim/web.jwt/{KEY}?ttl_ms=5"), b"");
        req.headers_mut()
            .insert("x-deadline-ms", HeaderValue::from_static("30"));
        let resp = handle(Arc::clone(&app), req).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        assert_eq!(body_json(resp).await["error"], "store_unavailable");
        assert!(started.elapsed() < Duration::from_secs(2));
        let stats = app.store.stats.to_json();
        assert_eq!(
            (stats["claims"].as_u64(), stats["unavailable"].as_u64()),
            (Some(1), Some(1))
        );

        let resp = handle(Arc::clone(&app), request("GET", "/healthz", b"")).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body_json(resp).await,
            serde_json::json!({"redis": "unavailable"})
        );
    }

    #[tokio::test]
    async fn session_touch_and_consume_are_503_when_redis_is_down() {
        let app = app();
        for query in ["idle_ms=1000", "consume=1"] {
            let uri = format!("/v1/session/web.jwt/{KEY}?{query}");
            let mut req = request("GET", &uri, b"");
            req.headers_mut()
                .insert("x-deadline-ms", HeaderValue::from_static("30"));
            let resp = handle(Arc::clone(&app), req).await;
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{query}");
            assert_eq!(resp.headers()[RETRY_AFTER], "1");
            assert_eq!(body_json(resp).await["error"], "store_unavailable");
        }
        let stats = app.store.stats.to_json();
        assert_eq!(stats["session_touch"], 1);
        assert_eq!(stats["session_consume"], 1);
        assert_eq!(stats["session_get"], 0);
        assert_eq!(stats["unavailable"], 2);
    }

    #[tokio::test]
    async fn stats_answer_without_redis() {
        let resp = handle(app(), request("GET", "/stats", b"")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_json(resp).await["claims"], 0);
    }
}
