//! The OIDC provider (18084) — DEMO ONLY: OpenID Connect discovery, the
//! authorization code flow with PKCE (S256 only), `client_secret_basic`,
//! RS256 ID tokens, a JWKS, RP-initiated logout, and test controls that make
//! the next ID token wrong on purpose (for the gateway's security tests).
//!
//! One client (`internal-gateway`), two users (`alice`, `bob`); see
//! [`provider`] for the constants and README.md for the wire reference.

mod jose;
mod page;
mod provider;
mod store;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, PRAGMA, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, Resp};
use jose::RsaKey;
use provider::{AuthorizeError, Form, IdTokenOverride, Provider};

/// The issuer when `--oidc-issuer` is not given.
pub const DEFAULT_ISSUER: &str = "http://localhost:18084";
/// `--oidc-key` default, relative to the current directory.
pub const DEFAULT_KEY_PATH: &str = "examples/keys/oidc-rs256.pem";
/// `--oidc-client-secret-file` default, relative to the current directory.
pub const DEFAULT_SECRET_PATH: &str = "examples/keys/oidc-client-secret";

/// The provider's state: the decisions behind one lock, and the counters.
#[derive(Debug)]
pub struct OidcState {
    provider: Mutex<Provider>,
    token_requests: AtomicU64,
    authorize_requests: AtomicU64,
    logins: AtomicU64,
    logouts: AtomicU64,
}

impl OidcState {
    /// Reads the signing key and the client secret.
    pub fn load(issuer: &str, key_path: &Path, secret_path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(key_path)
            .map_err(|e| format!("--oidc-key {}: {e}", key_path.display()))?;
        let key = RsaKey::from_pkcs8_pem(provider::FILE_KID, &pem)
            .map_err(|e| format!("--oidc-key {}: {e}", key_path.display()))?;
        let secret = std::fs::read_to_string(secret_path)
            .map_err(|e| format!("--oidc-client-secret-file {}: {e}", secret_path.display()))?;
        let secret = secret.trim();
        if secret.is_empty() || secret.contains(char::is_whitespace) {
            return Err(format!(
                "--oidc-client-secret-file {}: expected one non-empty line without spaces",
                secret_path.display()
            ));
        }
        Ok(Self::new(Provider::new(
            issuer.trim_end_matches('/').to_owned(),
            key,
            secret.to_owned(),
        )))
    }

    fn new(provider: Provider) -> Self {
        Self {
            provider: Mutex::new(provider),
            token_requests: AtomicU64::new(0),
            authorize_requests: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            logouts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Provider> {
        // A panic elsewhere cannot leave the provider half-updated in a way
        // that matters for a demo: keep serving.
        self.provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stats(&self) -> Value {
        json!({
            "token_requests": self.token_requests.load(Ordering::SeqCst),
            "authorize_requests": self.authorize_requests.load(Ordering::SeqCst),
            "logins": self.logins.load(Ordering::SeqCst),
            "logouts": self.logouts.load(Ordering::SeqCst),
        })
    }
}

/// Handles one request to the provider.
pub async fn handle(state: &OidcState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match path.as_str() {
        "/.well-known/openid-configuration" => match method {
            Method::GET => {
                let mut resp = http::json(StatusCode::OK, &state.lock().discovery());
                set(&mut resp, CACHE_CONTROL, "public, max-age=300");
                resp
            }
            _ => http::method_not_allowed("GET"),
        },
        "/authorize" => {
            state.authorize_requests.fetch_add(1, Ordering::SeqCst);
            match method {
                Method::GET => {
                    let form = Form::parse(req.uri().query().unwrap_or("").as_bytes());
                    authorize_page(&form)
                }
                Method::POST => match read_form(req).await {
                    Ok(form) => authorize_post(state, &form),
                    Err(_) => html(
                        StatusCode::BAD_REQUEST,
                        page::error("the form could not be read"),
                    ),
                },
                _ => http::method_not_allowed("GET, POST"),
            }
        }
        "/token" => {
            state.token_requests.fetch_add(1, Ordering::SeqCst);
            if method != Method::POST {
                return http::method_not_allowed("POST");
            }
            delay(state).await;
            token(state, req).await
        }
        "/jwks" => match method {
            Method::GET => {
                delay(state).await;
                let mut resp = http::json(StatusCode::OK, &state.lock().jwks());
                set(&mut resp, CACHE_CONTROL, "public, max-age=300");
                resp
            }
            _ => http::method_not_allowed("GET"),
        },
        "/logout" => {
            let form = match method {
                Method::GET => Form::parse(req.uri().query().unwrap_or("").as_bytes()),
                Method::POST => match read_form(req).await {
                    Ok(form) => form,
                    Err(resp) => return resp,
                },
                _ => return http::method_not_allowed("GET, POST"),
            };
            state.logouts.fetch_add(1, Ordering::SeqCst);
            match state.lock().logout_redirect(&form) {
                Some(location) => redirect(&location),
                None => html(StatusCode::OK, page::signed_out()),
            }
        }
        "/stats" => match method {
            Method::GET => http::json(StatusCode::OK, &state.stats()),
            _ => http::method_not_allowed("GET"),
        },
        "/stats/reset" => match method {
            Method::POST => {
                for counter in [
                    &state.token_requests,
                    &state.authorize_requests,
                    &state.logins,
                    &state.logouts,
                ] {
                    counter.store(0, Ordering::SeqCst);
                }
                http::json(StatusCode::OK, &state.stats())
            }
            _ => http::method_not_allowed("POST"),
        },
        p if p.starts_with("/_control/") => {
            if method != Method::POST {
                return http::method_not_allowed("POST");
            }
            control(state, p, req).await
        }
        _ => http::not_found(),
    }
}

fn set(resp: &mut Resp, name: hyper::header::HeaderName, value: &'static str) {
    resp.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

/// An HTML page that no other site may frame or cache.
fn html(status: StatusCode, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    set(&mut resp, CONTENT_TYPE, "text/html; charset=utf-8");
    set(&mut resp, CACHE_CONTROL, "no-store");
    set(&mut resp, hyper::header::X_FRAME_OPTIONS, "DENY");
    set(&mut resp, hyper::header::REFERRER_POLICY, "no-referrer");
    // No form-action: browsers apply it to the redirect after the POST too,
    // and that goes to the client's origin.
    set(
        &mut resp,
        hyper::header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    );
    resp
}

fn redirect(location: &str) -> Resp {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut resp = http::empty(StatusCode::FOUND);
            resp.headers_mut().insert(LOCATION, value);
            set(&mut resp, CACHE_CONTROL, "no-store");
            resp
        }
        // Every location is built from a registered URI plus a form-encoded
        // query, so it is always a valid header value.
        Err(_) => http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "could not build the redirect",
        ),
    }
}

async fn read_form(req: Request<Incoming>) -> Result<Form, Resp> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let body = http::read_body(req.into_body()).await?;
    Ok(Form::parse(&body))
}

/// An OAuth error body (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    let mut resp = http::json(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    set(&mut resp, CACHE_CONTROL, "no-store");
    resp
}

fn refused(err: AuthorizeError) -> Resp {
    match err {
        AuthorizeError::Page(message) => html(StatusCode::BAD_REQUEST, page::error(&message)),
        AuthorizeError::Redirect(location) => redirect(&location),
    }
}

fn authorize_page(form: &Form) -> Resp {
    match provider::validate_authorize(form) {
        Ok(req) => html(StatusCode::OK, page::login(&req, None, "")),
        Err(err) => refused(err),
    }
}

fn authorize_post(state: &OidcState, form: &Form) -> Resp {
    let req = match provider::validate_authorize(form) {
        Ok(req) => req,
        Err(err) => return refused(err),
    };
    let username = form.single("username").ok().flatten().unwrap_or("");
    let password = form.single("password").ok().flatten().unwrap_or("");
    let Some(user) = provider::check_credentials(username, password) else {
        return html(
            StatusCode::OK,
            page::login(&req, Some("Wrong username or password."), username),
        );
    };
    let issued = state.lock().issue_code(&req, user, http::unix_now());
    match issued {
        Ok(location) => {
            state.logins.fetch_add(1, Ordering::SeqCst);
            redirect(&location)
        }
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, page::error(&e)),
    }
}

async fn token(state: &OidcState, req: Request<Incoming>) -> Resp {
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };
    let answer = state
        .lock()
        .token(authorization.as_deref(), &form, http::unix_now());
    match answer {
        Ok(body) => {
            let mut resp = http::json(StatusCode::OK, &body);
            set(&mut resp, CACHE_CONTROL, "no-store");
            set(&mut resp, PRAGMA, "no-cache");
            resp
        }
        Err(err) => {
            let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut resp = oauth_error(status, err.error, &err.description);
            if status == StatusCode::UNAUTHORIZED {
                set(
                    &mut resp,
                    WWW_AUTHENTICATE,
                    "Basic realm=\"demo-oidc\", charset=\"UTF-8\"",
                );
            }
            resp
        }
    }
}

async fn delay(state: &OidcState) {
    let ms = state.lock().delay_ms();
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayControl {
    ms: u64,
}

/// `POST /_control/access_token_ttl {"seconds": N}`: the `expires_in` of
/// the access tokens issued from now on (the gateway's refresh, tested).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlControl {
    seconds: u64,
}

/// DEMO/TEST ONLY controls.
async fn control(state: &OidcState, path: &str, req: Request<Incoming>) -> Resp {
    let body = match http::read_body(req.into_body()).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let invalid = |e: serde_json::Error| {
        http::error(StatusCode::BAD_REQUEST, "invalid_control", &e.to_string())
    };
    match path {
        "/_control/next_id_token" => {
            let over: IdTokenOverride = match serde_json::from_slice(&body) {
                Ok(over) => over,
                Err(e) => return invalid(e),
            };
            if state.lock().needs_other_key(&over) {
                match generate_key().await {
                    Ok(key) => state.lock().set_other_key(key),
                    Err(resp) => return resp,
                }
            }
            state.lock().set_next_id_token(over);
            http::json(StatusCode::OK, &json!({ "next_id_token": "armed" }))
        }
        "/_control/rotate_key" => match generate_key().await {
            Ok(key) => {
                let mut provider = state.lock();
                let kid = provider.rotate(key);
                http::json(
                    StatusCode::OK,
                    &json!({ "kid": kid, "jwks": provider.jwks() }),
                )
            }
            Err(resp) => resp,
        },
        "/_control/delay_ms" => match serde_json::from_slice::<DelayControl>(&body) {
            Ok(DelayControl { ms }) => {
                let ms = ms.min(http::MAX_DELAY_MS);
                state.lock().set_delay_ms(ms);
                http::json(StatusCode::OK, &json!({ "delay_ms": ms }))
            }
            Err(e) => invalid(e),
        },
        "/_control/access_token_ttl" => match serde_json::from_slice::<TtlControl>(&body) {
            Ok(TtlControl { seconds }) => {
                let mut p = state.lock();
                p.set_access_ttl_s(seconds);
                http::json(
                    StatusCode::OK,
                    &json!({ "access_token_ttl": seconds.clamp(1, 86_400) }),
                )
            }
            Err(e) => invalid(e),
        },
        "/_control/reset" => {
            state.lock().reset_controls();
            http::json(StatusCode::OK, &json!({ "reset": true }))
        }
        _ => http::not_found(),
    }
}

/// A fresh RSA key, generated off the async workers.
async fn generate_key() -> Result<RsaKey, Resp> {
    let generated = tokio::task::spawn_blocking(|| RsaKey::generate("pending")).await;
    match generated {
        Ok(Ok(key)) => Ok(key),
        Ok(Err(e)) => Err(http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e,
        )),
        Err(e) => Err(http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests;
