//! The request flow, as a step machine with no proxy-wasm call: [`start`]
//! reads a request and either decides it or names the one callout it needs
//! (the session store, the provider's token endpoint or its JWKS) with the
//! state to resume from; [`resume`] takes the callout's answer and does
//! the same. The glue only sends the callouts and hands the answers back.
//!
//! Paths of the flow (docs/filters/oidc.md has the diagram):
//! * **a protected path with a session cookie**: one `GET` of the session
//!   (which also pushes its idle expiry, `GETEX`), then the path rule
//!   (any user, groups any-of); the upstream gets the identity headers
//!   and not the gateway's cookies;
//! * **no session**: a browser navigation starts a login (the login state
//!   is stored, then 302 to the provider with `state`, `nonce` and a PKCE
//!   S256 challenge, and a pre-login cookie); anything else is 401
//!   `login_required`;
//! * **the callback**: the login state is taken once (`GETDEL`, keyed by
//!   the pre-login cookie), `state` compared, the code redeemed, the ID
//!   token verified ([`crate::idtoken`]), a new session stored under a new
//!   random id, 302 back to the page first asked for;
//! * **logout**: the session deleted, the cookie expired, 302 to the
//!   provider's `end_session_endpoint`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use filter_core::denial::Denial;
use filter_core::host::{HttpHost, Verdict};
use filter_core::store::SessionAnswer;
use percent_encoding::percent_decode_str;

use crate::config::{Access, Compiled, SameSite};
use crate::idtoken::{self, Expect, IdTokenError, Identity};
use crate::provider::{self, ProviderState};

/// Length of a session id or pre-login id in its cookie: 32 random bytes,
/// base64url without padding.
pub const COOKIE_ID_LEN: usize = 43;
/// Longest path kept to return to after login (longer: back to "/").
pub const MAX_RETURN_BYTES: usize = 2048;
/// Largest token endpoint answer read (bytes).
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest session or login record read back from the store (bytes).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// `Retry-After` of a 503 (seconds).
pub const RETRY_AFTER_SECS: &str = "1";

/// What happened, for metrics and the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An open path: no session looked at.
    Open,
    /// A session allowed the request.
    Allowed,
    /// A session allowed the request after its access token was refreshed.
    Refreshed,
    /// No session: 401 `login_required`.
    LoginRequired,
    /// A session without the path's group: 403.
    Forbidden,
    /// A login redirect to the provider was sent.
    LoginStarted,
    /// A callback made a session.
    LoginCompleted,
    /// A callback failed (reason).
    LoginFailed(&'static str),
    /// The session was deleted and the browser sent to the provider's logout.
    Logout,
    /// The session store did not answer: 503.
    StoreUnavailable,
    /// The provider's metadata, keys or token endpoint are unavailable: 503.
    ProviderUnavailable,
    /// Bad request to the gateway's own endpoints (e.g. an unknown host).
    BadRequest,
}

impl Event {
    /// The status a denial of this kind answers (for the decision log).
    pub fn denial_code(self) -> Option<(u16, &'static str)> {
        match self {
            Event::LoginRequired => Some((401, "login_required")),
            Event::Forbidden => Some((403, "forbidden")),
            Event::LoginFailed(_) => Some((401, "login_failed")),
            Event::StoreUnavailable => Some((503, "session_store_unavailable")),
            Event::ProviderUnavailable => Some((503, "provider_unavailable")),
            Event::BadRequest => Some((400, "invalid_request")),
            _ => None,
        }
    }
}

/// A callout the flow needs before it can go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A session-store operation on `/v1/session/<ns>/<hex key>?<query>`.
    Store {
        method: &'static str,
        key: [u8; 32],
        query: String,
        body: Option<Vec<u8>>,
    },
    /// `POST` to the provider's token endpoint (`path`), form body.
    Token { path: String, body: String },
    /// `GET` of the provider's JWKS (`path`).
    Jwks { path: String },
    /// A once-only claim in the session store (`POST /v1/claim`): the lock
    /// that lets one request at a time refresh a session's access token.
    Claim { key: [u8; 32], ttl_ms: u64 },
}

/// The state a paused request resumes from.
#[derive(Debug, Clone)]
pub enum Pending {
    /// Waiting for the session.
    Session {
        access: Access,
        groups_any: Vec<String>,
        key: [u8; 32],
        req: Req,
    },
    /// Waiting for the login state to be stored.
    SaveLogin {
        location: String,
        cookie: String,
        req: Req,
    },
    /// Waiting for the login state of a callback.
    LoadLogin {
        code: String,
        state: String,
        req: Req,
    },
    /// Waiting for the token endpoint.
    Token { login: LoginRecord, req: Req },
    /// Waiting for the JWKS (keys unknown, or an unknown `kid`).
    Keys {
        login: LoginRecord,
        id_token: String,
        grant: Grant,
        req: Req,
    },
    /// Waiting for the refresh lock of a session.
    RefreshLock {
        session: SessionRecord,
        key: [u8; 32],
        req: Req,
    },
    /// Waiting for the token endpoint's refresh.
    Refresh {
        session: SessionRecord,
        key: [u8; 32],
        req: Req,
    },
    /// Waiting for the refreshed session to be stored.
    SaveRefreshed { session: SessionRecord, req: Req },
    /// Waiting for the new session to be stored.
    SaveSession {
        cookie: String,
        return_to: String,
        req: Req,
    },
    /// Waiting for the session to be deleted.
    Logout { req: Req },
}

/// One step of the flow.
#[derive(Debug)]
pub enum Step {
    /// Decided: the verdict for the proxy (the reply is already sent when
    /// it is `Responded`).
    Done(Verdict, Event),
    /// Send `Call`, then [`resume`] with `Pending` and its answer.
    Call(Call, Box<Pending>),
}

/// A callout's answer.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// `:status`, `None` when the call failed (timeout, reset, no host).
    pub status: Option<&'a str>,
    pub body: &'a [u8],
}

/// What the flow may use besides the request.
pub struct Env<'a> {
    pub cfg: &'a Compiled,
    pub provider: &'a mut ProviderState,
    pub now: u64,
    /// Fills the buffer with random bytes; false when the host has none.
    pub random: &'a mut dyn FnMut(&mut [u8]) -> bool,
}

/// What the flow keeps of a request between callouts.
#[derive(Debug, Clone, Default)]
pub struct Req {
    pub method: String,
    /// `:path` with its query.
    pub path: String,
    pub authority: String,
    pub html: bool,
    pub request_id: Option<String>,
}

/// The login state stored between the redirect and the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRecord {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub redirect_uri: String,
    pub return_to: String,
    pub exp: u64,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    /// With `forward_access_token` only: the access token, its expiry and
    /// the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rt: Option<String>,
}

/// The tokens of a token endpoint answer besides the ID token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub at: Option<String>,
    pub at_exp: Option<u64>,
    pub rt: Option<String>,
}

/// What the gateway reads of the token endpoint's answer.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Lifetime assumed for an access token whose answer gave no `expires_in`.
pub const DEFAULT_ACCESS_TTL_SECS: u64 = 300;
/// How long one request holds a session's refresh lock at most.
pub const REFRESH_LOCK_MS: u64 = 10_000;

impl TokenResponse {
    fn parse(body: &[u8]) -> Option<TokenResponse> {
        (body.len() <= MAX_TOKEN_RESPONSE_BYTES)
            .then(|| serde_json::from_slice::<TokenResponse>(body).ok())
            .flatten()
    }

    fn grant(&self, now: u64) -> Grant {
        let usable = |t: &Option<String>| {
            t.clone()
                .filter(|v| !v.is_empty() && v.len() <= 4096 && !v.chars().any(char::is_control))
        };
        let at = usable(&self.access_token);
        Grant {
            at_exp: at
                .as_ref()
                .map(|_| now.saturating_add(self.expires_in.unwrap_or(DEFAULT_ACCESS_TTL_SECS))),
            at,
            rt: usable(&self.refresh_token),
        }
    }
}

/// The store key of a session's refresh lock for its access token `at`:
/// one lock per token being replaced (two tokens issued within the same
/// second still get their own).
pub fn refresh_lock_key(session_key: &[u8; 32], at: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"oidc-refresh:")
        .chain_update(session_key)
        .chain_update(at.as_bytes())
        .finalize()
        .into()
}

/// The store key of a session id (never the id itself).
pub fn session_key(id: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"oidc-session:")
        .chain_update(id.as_bytes())
        .finalize()
        .into()
}

/// The store key of a pre-login id.
pub fn login_key(id: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"oidc-login:")
        .chain_update(id.as_bytes())
        .finalize()
        .into()
}

/// PKCE S256: BASE64URL(SHA256(ASCII(verifier))) (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The value of cookie `name` in a `Cookie` header: the first one, if it
/// has the shape of our ids (anything else is not ours).
pub fn cookie_id<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .filter(|v| {
            v.len() == COOKIE_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The `Cookie` header without the gateway's own cookies (`None`: nothing left).
pub fn without_cookies(header: &str, names: [&str; 2]) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|kv| {
            !kv.is_empty() && {
                let n = kv.split_once('=').map_or(*kv, |(n, _)| n);
                !names.contains(&n)
            }
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The path to come back to after login: the request's own path and
/// query, same origin by construction, and refused (→ "/") when a browser
/// could read it as another origin (`//host`, `/\host`, their encoded
/// forms) or when it is too long.
pub fn safe_return(path: &str) -> String {
    let bad = |p: &str| {
        !p.starts_with('/')
            || p.starts_with("//")
            || p.starts_with("/\\")
            || p.contains('\\')
            || p.chars().any(char::is_control)
    };
    let decoded: String = percent_decode_lossy(path);
    if path.len() > MAX_RETURN_BYTES || bad(path) || bad(&decoded) {
        return "/".to_string();
    }
    path.to_string()
}

fn percent_decode_lossy(s: &str) -> String {
    // Twice: `%252F` must not become `//` one decode later either.
    let once = percent_decode_str(s).decode_utf8_lossy();
    percent_decode_str(&once).decode_utf8_lossy().into_owned()
}

fn cookie_line(name: &str, value: &str, max_age: u64, same_site: SameSite) -> String {
    let ss = match same_site {
        SameSite::Lax => "Lax",
        SameSite::Strict => "Strict",
    };
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={ss}; Max-Age={max_age}")
}

fn random_id(env: &mut Env<'_>, n: usize) -> Option<String> {
    let mut buf = vec![0u8; n];
    (env.random)(&mut buf).then(|| URL_SAFE_NO_PAD.encode(&buf))
}

fn deny<H: HttpHost + ?Sized>(
    host: &mut H,
    req: &Req,
    d: Denial,
    extra: &[(&'static str, String)],
    e: Event,
) -> Step {
    let mut d = d;
    for (n, v) in extra {
        d = d.with_header(n, v.clone());
    }
    d.send(host, req.request_id.as_deref());
    Step::Done(Verdict::Responded, e)
}

fn store_unavailable<H: HttpHost + ?Sized>(host: &mut H, req: &Req) -> Step {
    deny(
        host,
        req,
        Denial::unavailable(
            "session_store_unavailable",
            "the session store cannot be reached right now; retry shortly",
        )
        .with_header("retry-after", RETRY_AFTER_SECS),
        &[],
        Event::StoreUnavailable,
    )
}

fn provider_unavailable<H: HttpHost + ?Sized>(host: &mut H, req: &Req, failed_login: bool) -> Step {
    deny(
        host,
        req,
        Denial::unavailable(
            "provider_unavailable",
            "the identity provider cannot be reached right now; retry shortly",
        )
        .with_header("retry-after", RETRY_AFTER_SECS),
        &[],
        if failed_login {
            Event::LoginFailed("provider_unavailable")
        } else {
            Event::ProviderUnavailable
        },
    )
}

fn login_failed<H: HttpHost + ?Sized>(
    env: &Env<'_>,
    host: &mut H,
    req: &Req,
    code: &'static str,
    message: &'static str,
    reason: &'static str,
) -> Step {
    // The pre-login cookie is spent either way.
    let expire = cookie_line(&env.cfg.login_cookie, "", 0, SameSite::Lax);
    deny(
        host,
        req,
        Denial::unauthorized(code, message),
        &[("set-cookie", expire)],
        Event::LoginFailed(reason),
    )
}

fn redirect<H: HttpHost + ?Sized>(
    host: &mut H,
    location: &str,
    cookies: &[String],
    e: Event,
) -> Step {
    let mut h: Vec<(&str, &str)> = Vec::with_capacity(3 + cookies.len());
    h.push(("location", location));
    h.push(("cache-control", "no-store"));
    for c in cookies {
        h.push(("set-cookie", c.as_str()));
    }
    host.send_response(302, &h, b"");
    Step::Done(Verdict::Responded, e)
}

/// Reads the request, strips what clients may not send, and decides or
/// names the first callout.
pub fn start<H: HttpHost + ?Sized>(env: &mut Env<'_>, host: &mut H) -> Step {
    let cfg = env.cfg;
    let req = Req {
        method: host.request_header(":method").unwrap_or_default(),
        path: host.request_header(":path").unwrap_or_default(),
        authority: host.request_header(":authority").unwrap_or_default(),
        html: host
            .request_header("accept")
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/html")),
        request_id: host.request_header(filter_core::headers::REQUEST_ID),
    };
    // Client copies of the identity headers never go on, on any path.
    for h in [
        &cfg.headers.user_id,
        &cfg.headers.email,
        &cfg.headers.groups,
    ] {
        host.remove_request_header(h);
    }
    if cfg.forward_token_refresh_secs.is_some() {
        // the Authorization the upstream sees is the session's, or none
        host.remove_request_header("authorization");
    }
    let cookies = host.request_header("cookie");
    let cookies = cookies.as_deref();
    let (path, query) = filter_core::route::split_path(&req.path);

    if path == cfg.redirect_path {
        return callback(env, host, req.clone(), query, cookies);
    }
    if path == cfg.logout_path {
        return match cookie_id(cookies, &cfg.session_cookie) {
            Some(id) => Step::Call(
                Call::Store {
                    method: "DELETE",
                    key: session_key(id),
                    query: String::new(),
                    body: None,
                },
                Box::new(Pending::Logout { req }),
            ),
            None => logout_redirect(env, host, &req),
        };
    }
    // The gateway's cookies never reach the upstream.
    if let Some(c) = cookies {
        match without_cookies(c, [&cfg.session_cookie, &cfg.login_cookie]) {
            Some(kept) if kept != c => host.set_request_header("cookie", &kept),
            Some(_) => {}
            None => host.remove_request_header("cookie"),
        }
    }
    let (access, groups_any) = cfg.rule(&req.method, path);
    if access == Access::Open {
        return Step::Done(Verdict::Continue, Event::Open);
    }
    match cookie_id(cookies, &cfg.session_cookie) {
        Some(id) => Step::Call(
            Call::Store {
                method: "GET",
                key: session_key(id),
                query: format!("idle_ms={}", cfg.idle_ms),
                body: None,
            },
            Box::new(Pending::Session {
                access,
                groups_any: groups_any.to_vec(),
                key: session_key(id),
                req,
            }),
        ),
        None => no_session(env, host, req, false),
    }
}

/// Resumes a paused request with its callout's answer.
pub fn resume<H: HttpHost + ?Sized>(
    env: &mut Env<'_>,
    host: &mut H,
    p: Pending,
    a: Answer<'_>,
) -> Step {
    match p {
        Pending::Session {
            access,
            groups_any,
            key,
            req,
        } => match SessionAnswer::from_status(a.status) {
            SessionAnswer::Unavailable => store_unavailable(host, &req),
            SessionAnswer::NotFound => no_session(env, host, req, true),
            SessionAnswer::Ok => {
                let session = (a.body.len() <= MAX_RECORD_BYTES)
                    .then(|| serde_json::from_slice::<SessionRecord>(a.body).ok())
                    .flatten()
                    .filter(|s| s.exp > env.now);
                match session {
                    None => no_session(env, host, req, true),
                    Some(s) => admit(env, host, req, access, &groups_any, s, key),
                }
            }
        },
        Pending::SaveLogin {
            location,
            cookie,
            req,
        } => match SessionAnswer::from_status(a.status) {
            SessionAnswer::Ok => redirect(host, &location, &[cookie], Event::LoginStarted),
            _ => store_unavailable(host, &req),
        },
        Pending::LoadLogin { code, state, req } => match SessionAnswer::from_status(a.status) {
            SessionAnswer::Unavailable => store_unavailable(host, &req),
            SessionAnswer::NotFound => login_failed(
                env,
                host,
                &req,
                "invalid_state",
                "the login is unknown, used or expired; start again",
                "state",
            ),
            SessionAnswer::Ok => {
                let login = (a.body.len() <= MAX_RECORD_BYTES)
                    .then(|| serde_json::from_slice::<LoginRecord>(a.body).ok())
                    .flatten();
                let Some(login) = login else {
                    return login_failed(
                        env,
                        host,
                        &req,
                        "invalid_state",
                        "the login is unknown",
                        "state",
                    );
                };
                let same = bool::from(login.state.as_bytes().ct_eq(state.as_bytes()));
                if !same || login.exp <= env.now {
                    return login_failed(
                        env,
                        host,
                        &req,
                        "invalid_state",
                        "the login state does not match this browser's login",
                        "state",
                    );
                }
                let Some(meta) = env.provider.metadata(env.cfg, env.now) else {
                    return provider_unavailable(host, &req, true);
                };
                let body: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "authorization_code")
                    .append_pair("code", &code)
                    .append_pair("redirect_uri", &login.redirect_uri)
                    .append_pair("code_verifier", &login.verifier)
                    .finish();
                Step::Call(
                    Call::Token {
                        path: meta.token_path.clone(),
                        body,
                    },
                    Box::new(Pending::Token { login, req }),
                )
            }
        },
        Pending::Token { login, req } => match a.status {
            Some("200") => {
                let parsed = TokenResponse::parse(a.body);
                match parsed.as_ref().and_then(|t| t.id_token.clone()) {
                    Some(id_token) => {
                        let grant = parsed.map(|t| t.grant(env.now)).unwrap_or_default();
                        verify_and_store(env, host, login, id_token, grant, req, true)
                    }
                    None => login_failed(
                        env,
                        host,
                        &req,
                        "invalid_id_token",
                        "the provider's answer has no ID token",
                        "token_response",
                    ),
                }
            }
            Some(s) if s.starts_with('4') => login_failed(
                env,
                host,
                &req,
                "invalid_code",
                "the authorization code was refused",
                "code",
            ),
            _ => provider_unavailable(host, &req, true),
        },
        Pending::Keys {
            login,
            id_token,
            grant,
            req,
        } => {
            if a.status == Some("200") {
                if let Ok(k) = provider::parse_jwks(a.body, &env.cfg.algorithms) {
                    env.provider.keys = Some((k, env.now));
                    env.provider.jwks_wanted = false;
                }
            }
            verify_and_store(env, host, login, id_token, grant, req, false)
        }
        Pending::RefreshLock { session, key, req } => {
            let still_valid = session.at_exp.is_some_and(|e| e > env.now);
            match filter_core::store::ClaimAnswer::from_status(a.status) {
                filter_core::store::ClaimAnswer::Claimed => {
                    let meta = env.provider.metadata(env.cfg, env.now);
                    let (Some(meta), Some(rt)) = (meta, session.rt.clone()) else {
                        return use_current(host, &req, &session, still_valid);
                    };
                    let body = form_urlencoded::Serializer::new(String::new())
                        .append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", &rt)
                        .finish();
                    Step::Call(
                        Call::Token {
                            path: meta.token_path.clone(),
                            body,
                        },
                        Box::new(Pending::Refresh { session, key, req }),
                    )
                }
                // another request (on any replica) refreshes it right now
                filter_core::store::ClaimAnswer::Taken => {
                    use_current(host, &req, &session, still_valid)
                }
                filter_core::store::ClaimAnswer::Unavailable => store_unavailable(host, &req),
            }
        }
        Pending::Refresh {
            mut session,
            key,
            req,
        } => {
            let still_valid = session.at_exp.is_some_and(|e| e > env.now);
            match a.status {
                Some("200") => {
                    let grant = TokenResponse::parse(a.body)
                        .map(|t| t.grant(env.now))
                        .unwrap_or_default();
                    let Some(at) = grant.at else {
                        return use_current(host, &req, &session, still_valid);
                    };
                    session.at = Some(at);
                    session.at_exp = grant.at_exp;
                    if grant.rt.is_some() {
                        session.rt = grant.rt;
                    }
                    let body = serde_json::to_vec(&session).unwrap_or_default();
                    Step::Call(
                        Call::Store {
                            method: "PUT",
                            key,
                            query: format!("ttl_ms={}", env.cfg.idle_ms),
                            body: Some(body),
                        },
                        Box::new(Pending::SaveRefreshed { session, req }),
                    )
                }
                // the refresh token is spent or revoked: log in again
                Some(s) if s.starts_with('4') && !still_valid => {
                    log::info!("oidc: refresh refused ({s}); the session needs a new login");
                    no_session(env, host, req, true)
                }
                _ => use_current(host, &req, &session, still_valid),
            }
        }
        Pending::SaveRefreshed { session, req } => match SessionAnswer::from_status(a.status) {
            SessionAnswer::Ok => {
                if let Some(at) = &session.at {
                    host.set_request_header("authorization", &format!("Bearer {at}"));
                }
                Step::Done(Verdict::Continue, Event::Refreshed)
            }
            _ => store_unavailable(host, &req),
        },
        Pending::SaveSession {
            cookie,
            return_to,
            req,
        } => match SessionAnswer::from_status(a.status) {
            SessionAnswer::Ok => {
                let expire_login = cookie_line(&env.cfg.login_cookie, "", 0, SameSite::Lax);
                redirect(
                    host,
                    &return_to,
                    &[cookie, expire_login],
                    Event::LoginCompleted,
                )
            }
            _ => store_unavailable(host, &req),
        },
        Pending::Logout { req } => match SessionAnswer::from_status(a.status) {
            SessionAnswer::Unavailable => store_unavailable(host, &req),
            _ => logout_redirect(env, host, &req),
        },
    }
}

/// No (valid) session: a browser navigation logs in, anything else is 401.
fn no_session<H: HttpHost + ?Sized>(
    env: &mut Env<'_>,
    host: &mut H,
    req: Req,
    stale_cookie: bool,
) -> Step {
    let cfg = env.cfg;
    let expire: Vec<(&'static str, String)> = if stale_cookie {
        vec![(
            "set-cookie",
            cookie_line(&cfg.session_cookie, "", 0, cfg.same_site),
        )]
    } else {
        Vec::new()
    };
    let navigation = req.html && (req.method == "GET" || req.method == "HEAD");
    if !navigation {
        return deny(
            host,
            &req,
            Denial::unauthorized("login_required", "log in first: this path needs a session"),
            &expire,
            Event::LoginRequired,
        );
    }
    if !cfg.hosts.is_empty()
        && !cfg
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&req.authority))
    {
        return deny(
            host,
            &req,
            Denial::bad_request("invalid_request", "this host cannot log in"),
            &[],
            Event::BadRequest,
        );
    }
    let Some(meta) = env.provider.metadata(cfg, env.now) else {
        return provider_unavailable(host, &req, false);
    };
    let authorization_endpoint = meta.authorization_endpoint.clone();
    let (Some(login_id), Some(state), Some(nonce), Some(verifier)) = (
        random_id(env, 32),
        random_id(env, 16),
        random_id(env, 16),
        random_id(env, 32),
    ) else {
        log::error!("oidc: no randomness from the host (random_get failed)");
        return deny(
            host,
            &req,
            Denial::unavailable("internal", "the login cannot start right now")
                .with_header("retry-after", RETRY_AFTER_SECS),
            &[],
            Event::ProviderUnavailable,
        );
    };
    let redirect_uri = format!("https://{}{}", req.authority, cfg.redirect_path);
    let challenge = pkce_challenge(&verifier);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &cfg.scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{authorization_endpoint}{sep}{query}");
    let record = LoginRecord {
        state,
        nonce,
        verifier,
        redirect_uri,
        return_to: safe_return(&req.path),
        exp: env.now.saturating_add(cfg.login_timeout_secs),
    };
    let body = serde_json::to_vec(&record).unwrap_or_default();
    let cookie = cookie_line(
        &cfg.login_cookie,
        &login_id,
        cfg.login_timeout_secs,
        SameSite::Lax,
    );
    Step::Call(
        Call::Store {
            method: "PUT",
            key: login_key(&login_id),
            query: format!("ttl_ms={}", cfg.login_timeout_secs.saturating_mul(1000)),
            body: Some(body),
        },
        Box::new(Pending::SaveLogin {
            location,
            cookie,
            req,
        }),
    )
}

/// The callback: take the login state once.
fn callback<H: HttpHost + ?Sized>(
    env: &mut Env<'_>,
    host: &mut H,
    req: Req,
    query: Option<&str>,
    cookies: Option<&str>,
) -> Step {
    let mut code = None;
    let mut state = None;
    let mut error = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "code" if code.is_none() => code = Some(v.into_owned()),
            "state" if state.is_none() => state = Some(v.into_owned()),
            "error" => error = true,
            _ => {}
        }
    }
    if req.method != "GET" {
        return login_failed(
            env,
            host,
            &req,
            "invalid_request",
            "the callback takes GET",
            "method",
        );
    }
    if error {
        return login_failed(
            env,
            host,
            &req,
            "login_failed",
            "the provider refused the login",
            "provider_error",
        );
    }
    let (Some(code), Some(state)) = (code, state) else {
        return login_failed(
            env,
            host,
            &req,
            "invalid_state",
            "the callback needs code and state",
            "state",
        );
    };
    let Some(login_id) = cookie_id(cookies, &env.cfg.login_cookie) else {
        return login_failed(
            env,
            host,
            &req,
            "invalid_state",
            "this browser did not start a login here",
            "no_login_cookie",
        );
    };
    Step::Call(
        Call::Store {
            method: "GET",
            key: login_key(login_id),
            query: "consume=1".into(),
            body: None,
        },
        Box::new(Pending::LoadLogin { code, state, req }),
    )
}

/// Verifies the ID token and stores a new session (or fetches the keys
/// first, once).
fn verify_and_store<H: HttpHost + ?Sized>(
    env: &mut Env<'_>,
    host: &mut H,
    login: LoginRecord,
    id_token: String,
    grant: Grant,
    req: Req,
    may_fetch_keys: bool,
) -> Step {
    let cfg = env.cfg;
    let now = env.now;
    // The JWKS fetched from this request (at most once per request).
    let jwks_path = env.provider.metadata(cfg, now).map(|m| m.jwks_path.clone());
    let fetch_keys = move |login: LoginRecord, id_token: String, grant: Grant, req: Req| {
        let path = jwks_path.clone()?;
        Some(Step::Call(
            Call::Jwks { path },
            Box::new(Pending::Keys {
                login,
                id_token,
                grant,
                req,
            }),
        ))
    };
    let verified = match env.provider.keys(cfg, now) {
        None if may_fetch_keys => {
            return fetch_keys(login, id_token, grant.clone(), req.clone())
                .unwrap_or_else(|| provider_unavailable(host, &req, true));
        }
        None => return provider_unavailable(host, &req, true),
        Some(keys) => idtoken::verify(
            &id_token,
            &Expect {
                issuer: &cfg.issuer,
                client_id: &cfg.client_id,
                nonce: &login.nonce,
                algorithms: &cfg.algorithms,
                skew_secs: cfg.skew_secs,
                now,
            },
            keys,
        ),
    };
    let identity: Identity = match verified {
        Ok(i) => i,
        Err(IdTokenError::UnknownKid) if may_fetch_keys && env.provider.kid_miss(cfg, now) => {
            return fetch_keys(login, id_token, grant.clone(), req.clone())
                .unwrap_or_else(|| provider_unavailable(host, &req, true));
        }
        Err(e) => {
            log::info!("oidc: ID token refused: {e}");
            return login_failed(
                env,
                host,
                &req,
                "invalid_id_token",
                "the ID token is not valid",
                e.reason(),
            );
        }
    };
    let Some(session_id) = random_id(env, 32) else {
        log::error!("oidc: no randomness from the host (random_get failed)");
        return provider_unavailable(host, &req, true);
    };
    let forward = cfg.forward_token_refresh_secs.is_some();
    let record = SessionRecord {
        sub: identity.sub,
        email: identity.email,
        groups: identity.groups,
        iat: now,
        exp: now.saturating_add(cfg.lifetime_secs),
        at: grant.at.filter(|_| forward),
        at_exp: grant.at_exp.filter(|_| forward),
        rt: grant.rt.filter(|_| forward),
    };
    let body = serde_json::to_vec(&record).unwrap_or_default();
    let cookie = cookie_line(
        &cfg.session_cookie,
        &session_id,
        cfg.lifetime_secs,
        cfg.same_site,
    );
    Step::Call(
        Call::Store {
            method: "PUT",
            key: session_key(&session_id),
            query: format!("ttl_ms={}", cfg.idle_ms),
            body: Some(body),
        },
        Box::new(Pending::SaveSession {
            cookie,
            return_to: login.return_to,
            req,
        }),
    )
}

/// A session allows the request if the path's rule does.
fn admit<H: HttpHost + ?Sized>(
    env: &Env<'_>,
    host: &mut H,
    req: Req,
    access: Access,
    groups_any: &[String],
    s: SessionRecord,
    key: [u8; 32],
) -> Step {
    if access == Access::Groups && !s.groups.iter().any(|g| groups_any.contains(g)) {
        return deny(
            host,
            &req,
            Denial::forbidden("forbidden", "your account may not open this page"),
            &[],
            Event::Forbidden,
        );
    }
    let h = &env.cfg.headers;
    host.set_request_header(&h.user_id, &s.sub);
    if let Some(e) = &s.email {
        host.set_request_header(&h.email, e);
    }
    if !s.groups.is_empty() {
        host.set_request_header(&h.groups, &s.groups.join(","));
    }
    let Some(before) = env.cfg.forward_token_refresh_secs else {
        return Step::Done(Verdict::Continue, Event::Allowed);
    };
    let (Some(at), Some(at_exp)) = (&s.at, s.at_exp) else {
        return Step::Done(Verdict::Continue, Event::Allowed);
    };
    if at_exp > env.now.saturating_add(before) || s.rt.is_none() {
        if at_exp > env.now {
            host.set_request_header("authorization", &format!("Bearer {at}"));
        }
        return Step::Done(Verdict::Continue, Event::Allowed);
    }
    // Due for a refresh: one request at a time per session, on every replica.
    Step::Call(
        Call::Claim {
            key: refresh_lock_key(&key, at),
            ttl_ms: REFRESH_LOCK_MS,
        },
        Box::new(Pending::RefreshLock {
            session: s,
            key,
            req,
        }),
    )
}

/// No refresh now (another request holds the lock, or the provider cannot
/// answer): the current token while it is valid, else 503 and a retry.
fn use_current<H: HttpHost + ?Sized>(
    host: &mut H,
    req: &Req,
    s: &SessionRecord,
    still_valid: bool,
) -> Step {
    match (&s.at, still_valid) {
        (Some(at), true) => {
            host.set_request_header("authorization", &format!("Bearer {at}"));
            Step::Done(Verdict::Continue, Event::Allowed)
        }
        _ => provider_unavailable(host, req, false),
    }
}

/// 302 to the provider's logout (or to the post-logout path when it has
/// none), the session cookie expired.
fn logout_redirect<H: HttpHost + ?Sized>(env: &Env<'_>, host: &mut H, req: &Req) -> Step {
    let cfg = env.cfg;
    let back = format!("https://{}{}", req.authority, cfg.post_logout_path);
    let location = match env
        .provider
        .metadata(cfg, env.now)
        .and_then(|m| m.end_session_endpoint.clone())
    {
        Some(end) => {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("client_id", &cfg.client_id)
                .append_pair("post_logout_redirect_uri", &back)
                .finish();
            let sep = if end.contains('?') { '&' } else { '?' };
            format!("{end}{sep}{q}")
        }
        None => cfg.post_logout_path.clone(),
    };
    let expire = [
        cookie_line(&cfg.session_cookie, "", 0, cfg.same_site),
        cookie_line(&cfg.login_cookie, "", 0, SameSite::Lax),
    ];
    redirect(host, &location, &expire, Event::Logout)
}

#[cfg(test)]
mod tests;
