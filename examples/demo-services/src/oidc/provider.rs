//! The provider's decisions, without HTTP: the registered client and users,
//! authorization-request validation, codes, tokens, ID tokens and the test
//! controls. Every method takes `now` (Unix seconds) so tests drive time.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::jose::{self, RsaKey, Signing};
use super::store::Bounded;

/// The one registered client.
pub const CLIENT_ID: &str = "internal-gateway";
/// Its display name on the login page.
pub const CLIENT_NAME: &str = "Internal tools gateway";
/// Its redirect URIs (exact match, RFC 6749 §3.1.2.3 and OIDC Core §3.1.2.1).
pub const REDIRECT_URIS: [&str; 2] = [
    "https://localhost:10444/oauth2/callback",
    "https://localhost:10544/oauth2/callback",
];
/// Where RP-initiated logout may send the browser back to (exact match).
pub const POST_LOGOUT_REDIRECT_URIS: [&str; 2] =
    ["https://localhost:10444/", "https://localhost:10544/"];
/// The kid of the key read from `--oidc-key`.
pub const FILE_KID: &str = "demo-oidc-rs256";

/// Lifetime of an authorization code.
pub const CODE_TTL_S: u64 = 60;
/// Lifetime of an access token and of an ID token.
pub const TOKEN_TTL_S: u64 = 300;
/// Lifetime of a refresh token (and how long a redeemed code is remembered,
/// so that a replay can still revoke what it issued).
pub const REFRESH_TTL_S: u64 = 8 * 3600;
/// Cap of each of the three maps (codes, access tokens, refresh tokens).
pub const MAX_ENTRIES: usize = 10_000;
/// Longest `state`, `nonce` or `scope` accepted in an authorization request.
pub const MAX_PARAM_LEN: usize = 1024;
/// Scopes the provider knows; others in a request are ignored.
pub const SCOPES: [&str; 4] = ["openid", "email", "profile", "groups"];

/// A demo user.
#[derive(Debug)]
pub struct User {
    pub username: &'static str,
    password: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// The demo users (DEMO ONLY: passwords in the source).
pub const USERS: [User; 2] = [
    User {
        username: "alice",
        password: "alice-password",
        email: "alice@example.com",
        name: "Alice Example",
        groups: &["tools-admin"],
    },
    User {
        username: "bob",
        password: "bob-password",
        email: "bob@example.com",
        name: "Bob Example",
        groups: &[],
    },
];

/// Checks a username and password, comparing against every user in
/// constant time per comparison.
pub fn check_credentials(username: &str, password: &str) -> Option<&'static User> {
    let mut found = None;
    for u in &USERS {
        let name_ok = u.username.as_bytes().ct_eq(username.as_bytes());
        let pass_ok = u.password.as_bytes().ct_eq(password.as_bytes());
        if bool::from(name_ok & pass_ok) {
            found = Some(u);
        }
    }
    found
}

/// Decoded `application/x-www-form-urlencoded` pairs (a query or a body).
#[derive(Debug, Default, Clone)]
pub struct Form(Vec<(String, String)>);

/// A parameter that was sent more than once (RFC 6749 §3.1: MUST NOT).
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated(pub String);

impl Form {
    pub fn parse(bytes: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `name`, `None` when absent, an error when repeated.
    pub fn single(&self, name: &str) -> Result<Option<&str>, Repeated> {
        let mut values = self.0.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(Repeated(name.to_owned()));
        }
        Ok(first)
    }
}

/// A validated authorization request (the registered client and redirect URI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// The scopes requested that the provider knows, in request order.
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
}

impl AuthRequest {
    /// The parameters the login form carries in hidden inputs.
    pub fn hidden_fields(&self) -> Vec<(&'static str, &str)> {
        let mut fields = vec![
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("scope", self.scope.as_str()),
            ("code_challenge", self.code_challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if let Some(state) = &self.state {
            fields.push(("state", state));
        }
        if let Some(nonce) = &self.nonce {
            fields.push(("nonce", nonce));
        }
        fields
    }
}

/// Why an authorization request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    /// The client or the redirect URI cannot be trusted: a 400 page, never a
    /// redirect (RFC 6749 §4.1.2.1, first paragraph).
    Page(String),
    /// Anything else: back to the client with `error` (RFC 6749 §4.1.2.1).
    Redirect(String),
}

/// `redirect_uri` with `params` appended to its query (form-encoded).
pub fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    format!("{redirect_uri}{sep}{query}")
}

/// Validates an authorization request (GET query or POST form).
pub fn validate_authorize(form: &Form) -> Result<AuthRequest, AuthorizeError> {
    let page = |r: Repeated| AuthorizeError::Page(format!("`{}` is repeated", r.0));
    let client_id = form.single("client_id").map_err(page)?;
    if client_id != Some(CLIENT_ID) {
        return Err(AuthorizeError::Page(match client_id {
            None => "`client_id` is missing".into(),
            Some(c) => format!("unknown client `{c}`"),
        }));
    }
    let redirect_uri = form.single("redirect_uri").map_err(page)?;
    let Some(redirect_uri) = redirect_uri.filter(|r| REDIRECT_URIS.contains(r)) else {
        return Err(AuthorizeError::Page(match redirect_uri {
            None => "`redirect_uri` is missing".into(),
            Some(r) => format!("`{r}` is not a registered redirect_uri of this client"),
        }));
    };
    // From here on errors go back to the (registered) client.
    // A repeated state is not echoed (there is no one value to echo).
    let echoed_state = form.single("state").ok().flatten();
    let back = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(state) = echoed_state {
            params.push(("state", state));
        }
        AuthorizeError::Redirect(redirect_with(redirect_uri, &params))
    };
    let invalid = |r: Repeated| back("invalid_request", &format!("`{}` is repeated", r.0));
    let state = form.single("state").map_err(invalid)?;
    match form.single("response_type").map_err(invalid)? {
        None => return Err(back("invalid_request", "`response_type` is missing")),
        Some("code") => {}
        Some(_) => {
            return Err(back(
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
    }
    let scope = form.single("scope").map_err(invalid)?.unwrap_or("");
    let requested: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    if !requested.contains(&"openid") {
        return Err(back("invalid_scope", "the scope must contain `openid`"));
    }
    let mut granted: Vec<&str> = Vec::new();
    for s in requested {
        if SCOPES.contains(&s) && !granted.contains(&s) {
            granted.push(s);
        }
    }
    let code_challenge = form.single("code_challenge").map_err(invalid)?;
    let method = form.single("code_challenge_method").map_err(invalid)?;
    let Some(code_challenge) = code_challenge else {
        return Err(back(
            "invalid_request",
            "PKCE is required: `code_challenge` is missing",
        ));
    };
    if method != Some("S256") {
        return Err(back(
            "invalid_request",
            "`code_challenge_method` must be S256",
        ));
    }
    if !jose::is_valid_s256_challenge(code_challenge) {
        return Err(back(
            "invalid_request",
            "`code_challenge` is not BASE64URL of 32 bytes",
        ));
    }
    let nonce = form.single("nonce").map_err(invalid)?;
    for (name, value) in [("state", state), ("nonce", nonce), ("scope", Some(scope))] {
        if value.is_some_and(|v| v.len() > MAX_PARAM_LEN) {
            return Err(back(
                "invalid_request",
                &format!("`{name}` is longer than {MAX_PARAM_LEN} bytes"),
            ));
        }
    }
    Ok(AuthRequest {
        client_id: CLIENT_ID.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        scope: granted.join(" "),
        state: state.map(str::to_owned),
        nonce: nonce.map(str::to_owned),
        code_challenge: code_challenge.to_owned(),
    })
}

/// `Authorization: Basic` (RFC 7617) with the RFC 6749 §2.3.1 encoding: both
/// parts form-urlencoded before base64. Answers (client_id, secret).
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn form_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// An error answer of the token endpoint (RFC 6749 §5.2).
#[derive(Debug, PartialEq, Eq)]
pub struct TokenError {
    /// 400, or 401 for `invalid_client`.
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

fn grant_error(error: &'static str, description: impl Into<String>) -> TokenError {
    TokenError {
        status: 400,
        error,
        description: description.into(),
    }
}

/// DEMO/TEST ONLY: how the next ID token deviates from a correct one.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdTokenOverride {
    pub alg: Option<OverrideAlg>,
    #[serde(default)]
    pub sign_with_other_key: bool,
    pub iss: Option<String>,
    pub aud: Option<String>,
    pub exp_offset_s: Option<i64>,
    pub nonce: Option<String>,
    #[serde(default)]
    pub omit: Vec<String>,
}

/// The algorithms a test can force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OverrideAlg {
    #[serde(rename = "none")]
    None,
    HS256,
}

#[derive(Debug)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    user: &'static User,
    scope: String,
    auth_time: u64,
    expires_at: u64,
    /// Set by the first redemption attempt: a code is presented once.
    redeemed: bool,
}

#[derive(Debug)]
struct AccessGrant {
    // Kept for what an introspection or userinfo endpoint would need.
    #[allow(dead_code)]
    user: &'static User,
    family: String,
}

#[derive(Debug)]
struct RefreshGrant {
    client_id: String,
    user: &'static User,
    scope: String,
    auth_time: u64,
    /// The code the chain of refresh tokens started from.
    family: String,
    /// Rotated away: presenting it again revokes the whole family.
    used: bool,
}

/// The provider's whole mutable state.
#[derive(Debug)]
pub struct Provider {
    issuer: String,
    client_secret: String,
    file_key: RsaKey,
    current: RsaKey,
    previous: Option<RsaKey>,
    rotations: u64,
    other_key: Option<RsaKey>,
    next_id_token: Option<IdTokenOverride>,
    delay_ms: u64,
    /// Lifetime of the access tokens issued from now on (test control).
    access_ttl_s: u64,
    codes: Bounded<CodeGrant>,
    access: Bounded<AccessGrant>,
    refresh: Bounded<RefreshGrant>,
}

/// 32 random bytes, BASE64URL (256 bits: codes and tokens).
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(jose::b64u(&bytes))
}

impl Provider {
    pub fn new(issuer: String, file_key: RsaKey, client_secret: String) -> Self {
        Self {
            issuer,
            client_secret,
            current: file_key.clone(),
            file_key,
            previous: None,
            rotations: 0,
            other_key: None,
            next_id_token: None,
            delay_ms: 0,
            access_ttl_s: TOKEN_TTL_S,
            codes: Bounded::new(MAX_ENTRIES),
            access: Bounded::new(MAX_ENTRIES),
            refresh: Bounded::new(MAX_ENTRIES),
        }
    }

    /// The discovery document (OpenID Connect Discovery 1.0 §3).
    pub fn discovery(&self) -> Value {
        let iss = &self.issuer;
        json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks"),
            "end_session_endpoint": format!("{iss}/logout"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "scopes_supported": SCOPES,
            "claims_supported": ["iss", "sub", "aud", "azp", "exp", "iat", "auth_time",
                                 "nonce", "email", "email_verified", "groups", "name"],
        })
    }

    /// The JWKS: the current key and, after a rotation, the previous one.
    pub fn jwks(&self) -> Value {
        let mut keys = vec![self.current.jwk()];
        if let Some(previous) = &self.previous {
            keys.push(previous.jwk());
        }
        json!({ "keys": keys })
    }

    /// The keys a token of ours may be signed with (those in the JWKS).
    fn published_keys(&self) -> Vec<&RsaKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .collect()
    }

    /// A successful login: a fresh code for `req` and `user`, and the
    /// redirect that carries it (with `state` when the request had one).
    pub fn issue_code(
        &mut self,
        req: &AuthRequest,
        user: &'static User,
        now: u64,
    ) -> Result<String, String> {
        let code = random_token()?;
        let grant = CodeGrant {
            client_id: req.client_id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.clone(),
            nonce: req.nonce.clone(),
            user,
            scope: req.scope.clone(),
            auth_time: now,
            expires_at: now + CODE_TTL_S,
            redeemed: false,
        };
        self.codes
            .insert(code.clone(), grant, now + REFRESH_TTL_S, now);
        let mut params = vec![("code", code.as_str())];
        if let Some(state) = &req.state {
            params.push(("state", state));
        }
        Ok(redirect_with(&req.redirect_uri, &params))
    }

    /// Authenticates the client (`client_secret_basic` only).
    fn authenticate(&self, authorization: Option<&str>, form: &Form) -> Result<(), TokenError> {
        let unauthorized = |description: &str| TokenError {
            status: 401,
            error: "invalid_client",
            description: description.to_owned(),
        };
        let Some((id, secret)) = authorization.and_then(parse_basic) else {
            return Err(unauthorized(
                "client authentication with HTTP Basic (client_secret_basic) is required",
            ));
        };
        let id_ok = id.as_bytes().ct_eq(CLIENT_ID.as_bytes());
        let secret_ok = secret.as_bytes().ct_eq(self.client_secret.as_bytes());
        if !bool::from(id_ok & secret_ok) {
            return Err(unauthorized("unknown client or wrong secret"));
        }
        let repeated =
            |r: Repeated| grant_error("invalid_request", format!("`{}` is repeated", r.0));
        if form.single("client_secret").map_err(repeated)?.is_some() {
            return Err(grant_error(
                "invalid_request",
                "one client authentication method per request (client_secret_basic only)",
            ));
        }
        if form
            .single("client_id")
            .map_err(repeated)?
            .is_some_and(|c| c != CLIENT_ID)
        {
            return Err(grant_error(
                "invalid_request",
                "`client_id` differs from the authenticated client",
            ));
        }
        Ok(())
    }

    /// The token endpoint (RFC 6749 §3.2): the JSON of a successful answer.
    pub fn token(
        &mut self,
        authorization: Option<&str>,
        form: &Form,
        now: u64,
    ) -> Result<Value, TokenError> {
        self.authenticate(authorization, form)?;
        let repeated =
            |r: Repeated| grant_error("invalid_request", format!("`{}` is repeated", r.0));
        match form.single("grant_type").map_err(repeated)? {
            Some("authorization_code") => self.redeem_code(form, now),
            Some("refresh_token") => self.refresh(form, now),
            Some(other) => Err(grant_error(
                "unsupported_grant_type",
                format!("grant_type `{other}` is not supported"),
            )),
            None => Err(grant_error("invalid_request", "`grant_type` is missing")),
        }
    }

    fn redeem_code(&mut self, form: &Form, now: u64) -> Result<Value, TokenError> {
        let repeated =
            |r: Repeated| grant_error("invalid_request", format!("`{}` is repeated", r.0));
        let code = form.single("code").map_err(repeated)?;
        let redirect_uri = form.single("redirect_uri").map_err(repeated)?;
        let verifier = form.single("code_verifier").map_err(repeated)?;
        let (Some(code), Some(redirect_uri)) = (code, redirect_uri) else {
            return Err(grant_error(
                "invalid_request",
                "`code` and `redirect_uri` are required",
            ));
        };
        let Some(grant) = self.codes.get_mut(code, now) else {
            return Err(grant_error("invalid_grant", "unknown or expired code"));
        };
        if grant.redeemed {
            // RFC 6749 §4.1.2: a code used twice revokes what it issued.
            let family = code.to_owned();
            self.revoke_family(&family);
            return Err(grant_error("invalid_grant", "the code was already used"));
        }
        grant.redeemed = true;
        if grant.expires_at <= now {
            return Err(grant_error("invalid_grant", "the code has expired"));
        }
        if grant.client_id != CLIENT_ID {
            return Err(grant_error(
                "invalid_grant",
                "the code belongs to another client",
            ));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(grant_error(
                "invalid_grant",
                "`redirect_uri` differs from the authorization request's",
            ));
        }
        let Some(verifier) = verifier.filter(|v| jose::is_valid_verifier(v)) else {
            return Err(grant_error(
                "invalid_grant",
                "`code_verifier` is missing or not 43..128 characters of [A-Za-z0-9-._~]",
            ));
        };
        let challenge = jose::s256_challenge(verifier);
        if !bool::from(challenge.as_bytes().ct_eq(grant.code_challenge.as_bytes())) {
            return Err(grant_error(
                "invalid_grant",
                "`code_verifier` does not match the code_challenge",
            ));
        }
        let (user, scope, auth_time, nonce) = (
            grant.user,
            grant.scope.clone(),
            grant.auth_time,
            grant.nonce.clone(),
        );
        self.issue_tokens(
            user,
            &scope,
            auth_time,
            nonce.as_deref(),
            code.to_owned(),
            now,
        )
    }

    fn refresh(&mut self, form: &Form, now: u64) -> Result<Value, TokenError> {
        let repeated =
            |r: Repeated| grant_error("invalid_request", format!("`{}` is repeated", r.0));
        let Some(token) = form.single("refresh_token").map_err(repeated)? else {
            return Err(grant_error("invalid_request", "`refresh_token` is missing"));
        };
        let requested_scope = form.single("scope").map_err(repeated)?;
        let Some(grant) = self.refresh.get_mut(token, now) else {
            return Err(grant_error(
                "invalid_grant",
                "unknown or expired refresh token",
            ));
        };
        if grant.used {
            // Reuse of a rotated refresh token (RFC 9700 §4.14.2): revoke
            // every token of its family.
            let family = grant.family.clone();
            self.revoke_family(&family);
            return Err(grant_error(
                "invalid_grant",
                "the refresh token was already used",
            ));
        }
        if grant.client_id != CLIENT_ID {
            return Err(grant_error(
                "invalid_grant",
                "the refresh token belongs to another client",
            ));
        }
        let scope = match requested_scope {
            None => grant.scope.clone(),
            Some(requested) => {
                let granted: Vec<&str> = grant.scope.split(' ').collect();
                let narrowed: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
                if !narrowed.iter().all(|s| granted.contains(s)) || !narrowed.contains(&"openid") {
                    return Err(grant_error(
                        "invalid_scope",
                        "the scope must contain `openid` and no scope beyond the original grant",
                    ));
                }
                narrowed.join(" ")
            }
        };
        grant.used = true;
        let (user, auth_time, family) = (grant.user, grant.auth_time, grant.family.clone());
        self.issue_tokens(user, &scope, auth_time, None, family, now)
    }

    /// Forgets every access and refresh token issued from one code.
    fn revoke_family(&mut self, family: &str) {
        self.access.retain(|g| g.family != family);
        self.refresh.retain(|g| g.family != family);
    }

    fn issue_tokens(
        &mut self,
        user: &'static User,
        scope: &str,
        auth_time: u64,
        nonce: Option<&str>,
        family: String,
        now: u64,
    ) -> Result<Value, TokenError> {
        let internal = |e: String| TokenError {
            status: 500,
            error: "server_error",
            description: e,
        };
        let id_token = self
            .id_token(user, auth_time, nonce, now)
            .map_err(internal)?;
        let access_token = random_token().map_err(internal)?;
        let refresh_token = random_token().map_err(internal)?;
        self.access.insert(
            access_token.clone(),
            AccessGrant {
                user,
                family: family.clone(),
            },
            now + self.access_ttl_s,
            now,
        );
        self.refresh.insert(
            refresh_token.clone(),
            RefreshGrant {
                client_id: CLIENT_ID.to_owned(),
                user,
                scope: scope.to_owned(),
                auth_time,
                family,
                used: false,
            },
            now + REFRESH_TTL_S,
            now,
        );
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.access_ttl_s,
            "id_token": id_token,
            "refresh_token": refresh_token,
            "scope": scope,
        }))
    }

    /// The correct claims of an ID token for `user`.
    pub fn id_token_claims(
        &self,
        user: &User,
        auth_time: u64,
        nonce: Option<&str>,
        now: u64,
    ) -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(user.username));
        claims.insert("aud".into(), json!(CLIENT_ID));
        claims.insert("azp".into(), json!(CLIENT_ID));
        claims.insert("exp".into(), json!(now + TOKEN_TTL_S));
        claims.insert("iat".into(), json!(now));
        claims.insert("auth_time".into(), json!(auth_time));
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        claims.insert("email".into(), json!(user.email));
        claims.insert("email_verified".into(), json!(true));
        claims.insert("groups".into(), json!(user.groups));
        claims.insert("name".into(), json!(user.name));
        claims
    }

    /// Signs an ID token, applying (and clearing) the test override if any.
    fn id_token(
        &mut self,
        user: &User,
        auth_time: u64,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, String> {
        let mut claims = self.id_token_claims(user, auth_time, nonce, now);
        let over = self.next_id_token.take().unwrap_or_default();
        if let Some(iss) = &over.iss {
            claims.insert("iss".into(), json!(iss));
        }
        if let Some(aud) = &over.aud {
            claims.insert("aud".into(), json!(aud));
        }
        if let Some(offset) = over.exp_offset_s {
            let exp = i64::try_from(now)
                .unwrap_or(i64::MAX)
                .saturating_add(offset);
            claims.insert("exp".into(), json!(exp));
        }
        if let Some(nonce) = &over.nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        for name in &over.omit {
            claims.remove(name);
        }
        let claims = Value::Object(claims);
        let signing = match (over.alg, over.sign_with_other_key, &self.other_key) {
            (Some(OverrideAlg::None), _, _) => Signing::None,
            (Some(OverrideAlg::HS256), _, _) => Signing::Hs256(self.client_secret.as_bytes()),
            (None, true, Some(other)) => Signing::Rs256As {
                key: other,
                kid: &self.current.kid,
            },
            (None, true, None) => return Err("the other key was not generated".into()),
            (None, false, _) => Signing::Rs256(&self.current),
        };
        jose::compact(&claims, &signing)
    }

    /// The claims of an ID token this provider signed with a published key
    /// for the client (expiry not checked: a logout hint may be expired).
    pub fn verify_id_token_hint(&self, token: &str) -> Option<Value> {
        let claims = jose::verify_rs256(token, &self.published_keys())?;
        let ours = claims.get("iss").and_then(Value::as_str) == Some(self.issuer.as_str())
            && claims.get("aud").and_then(Value::as_str) == Some(CLIENT_ID);
        ours.then_some(claims)
    }

    /// RP-initiated logout: where to send the browser, if anywhere.
    pub fn logout_redirect(&self, form: &Form) -> Option<String> {
        let target = form.single("post_logout_redirect_uri").ok()??;
        if !POST_LOGOUT_REDIRECT_URIS.contains(&target) {
            return None;
        }
        if let Some(client) = form.single("client_id").ok()? {
            if client != CLIENT_ID {
                return None;
            }
        }
        if let Some(hint) = form.single("id_token_hint").ok()? {
            self.verify_id_token_hint(hint)?;
        }
        let state = form.single("state").ok()?;
        Some(match state {
            Some(state) => redirect_with(target, &[("state", state)]),
            None => target.to_owned(),
        })
    }

    // ---- DEMO/TEST ONLY controls

    /// Whether the next ID token override needs the other key generated.
    pub fn needs_other_key(&self, over: &IdTokenOverride) -> bool {
        over.sign_with_other_key && self.other_key.is_none()
    }

    /// Installs the key that is not in the JWKS (`sign_with_other_key`).
    pub fn set_other_key(&mut self, key: RsaKey) {
        self.other_key = Some(key);
    }

    pub fn set_next_id_token(&mut self, over: IdTokenOverride) {
        self.next_id_token = Some(over);
    }

    /// Makes `key` current (kid `demo-oidc-rs256-<n>`); the current one
    /// becomes the previous one. Answers the new kid.
    pub fn rotate(&mut self, mut key: RsaKey) -> String {
        self.rotations += 1;
        key.kid = format!("{FILE_KID}-{}", self.rotations);
        let old = std::mem::replace(&mut self.current, key);
        self.previous = Some(old);
        self.current.kid.clone()
    }

    /// Lifetime of the access tokens issued from now on (1 s .. 1 day).
    pub fn set_access_ttl_s(&mut self, s: u64) {
        self.access_ttl_s = s.clamp(1, 86_400);
    }

    pub fn set_delay_ms(&mut self, ms: u64) {
        self.delay_ms = ms;
    }

    pub fn delay_ms(&self) -> u64 {
        self.delay_ms
    }

    /// Clears every control and returns to the file key (tokens stay).
    pub fn reset_controls(&mut self) {
        self.current = self.file_key.clone();
        self.previous = None;
        self.next_id_token = None;
        self.delay_ms = 0;
        self.access_ttl_s = TOKEN_TTL_S;
    }
}
