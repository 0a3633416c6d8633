//! jwt's per-request logic: [`decide`] is the whole decision on the request
//! headers as a pure function (a [`RequestView`] in, a [`RequestDecision`]
//! of header edits, identity and denial out; state behind the
//! [`SharedData`] seam), and [`on_request_headers`] the thin adapter that
//! feeds it from an [`HttpHost`] and applies what it decided.

use std::cell::RefCell;
use std::rc::Rc;

use filter_core::decision::{self, RouteNames};
use filter_core::identity::{Identity, Source};
use filter_core::request::{Decision as RequestDecision, Edits, RequestView};
use filter_core::shared::{SharedData, SharedError};
use filter_core::store::{self, Claim, ClaimAnswer, OnUnavailable};
use filter_core::{Denial, HttpHost, Verdict};

use crate::cache::{TokenCache, Verified};
use crate::config::{Compiled, Provider, Requirement, TokenSource};
use crate::jti::{JtiStore, Recorded};
use crate::jwks::KeySet;
use crate::token::{self, TokenError};

/// A provider's current keys, as one worker sees them.
#[derive(Debug, Clone, Default)]
pub struct ProviderKeys {
    /// `None`: no usable JWKS (remote not fetched yet, or too stale).
    pub set: Option<Rc<KeySet>>,
    /// Bumped on every change of `set`; cache entries carry it.
    pub generation: u64,
    /// The set is past its cache lifetime but within `max_stale`.
    pub stale: bool,
}

impl ProviderKeys {
    /// What a worker starts with: an inline JWKS as configured (generation
    /// 1), a remote one as "not fetched yet".
    pub fn initial(keys: &crate::config::Keys) -> Self {
        match keys {
            crate::config::Keys::Inline(set) => ProviderKeys {
                set: Some(set.clone()),
                generation: 1,
                stale: false,
            },
            crate::config::Keys::Remote(_) => ProviderKeys::default(),
        }
    }
}

/// Everything a request needs from its worker.
pub struct Env<'a, S: SharedData + ?Sized> {
    pub cfg: &'a Compiled,
    pub keys: &'a [ProviderKeys],
    pub cache: &'a RefCell<TokenCache>,
    pub shared: &'a S,
    pub jti: &'a JtiStore,
}

/// What happened, for metrics and for the root context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result_,
    /// The verified-token cache answered.
    pub cache_hit: bool,
    /// A signature was verified (cache miss that reached step 3).
    pub signature_checked: bool,
    /// Keys used were stale (remote JWKS past its lifetime).
    pub stale_keys: bool,
    /// An unknown `kid` for this provider: the root may refetch its JWKS.
    pub refetch: Option<usize>,
    /// Denial code or token error code, for logs.
    pub code: Option<&'static str>,
    /// Envoy gateway/route names, read on a denial (for the decision log)
    /// and reused for the metric labels.
    pub names: Option<RouteNames>,
    /// One-time route with a shared store: this replica's `jti` store
    /// already knew the token (refused without a round trip).
    pub local_replay: bool,
    /// One-time route with a shared store: what the store answered.
    pub claim: Option<ClaimAnswer>,
}

/// What [`decide`] asks of the host.
#[allow(
    clippy::large_enum_variant,
    reason = "a transient return value, moved once per request: boxing the decision would add an allocation to every request"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Decided: apply it.
    Done(RequestDecision),
    /// The token is good and the route is one-time: claim its `jti` in the
    /// shared store ([`PendingClaim::claim`], one callout), then
    /// [`finish_claim`] with the answer. Nothing is applied meanwhile.
    Claim(Box<PendingClaim>),
}

/// A verified request on a one-time route, waiting for its `jti` claim.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingClaim {
    pub claim: Claim,
    /// Applied when the claim holds: the identity, forwarded claims, the
    /// token's removal.
    pub allow: Edits,
    /// Due before a refusal (client copies of the claim headers go).
    pub before_deny: Edits,
    issuer: String,
    jti: String,
    exp: u64,
    skew: u64,
}

/// The decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Result_ {
    /// Route needs no token.
    #[default]
    Skipped,
    /// Optional route, no token.
    Anonymous,
    /// Token verified, request passes.
    Allowed,
    /// Refused with a local reply.
    Denied,
    /// Dry run: would have been refused; let through without an identity.
    DryRunDenied,
}

/// A token found in the request and where.
struct Found {
    token: String,
    source: usize,
}

fn header_values<'h>(
    all: &'h [(String, String)],
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    all.iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether a header value carries a token for a source with this scheme
/// prefix (another scheme, e.g. `Basic`, is not ours). Read loosely, since
/// it only decides what to strip: the scheme in any case followed by a space
/// or a tab, in any element of a comma-joined value (Envoy joins repeated
/// `Authorization` lines into one).
fn carries_token(value: &str, prefix: Option<&str>) -> bool {
    value.split(',').any(|part| {
        let v = part.trim();
        match prefix {
            None => !v.is_empty(),
            Some(p) => {
                let scheme = p.trim_end();
                v.get(..scheme.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
                    && (scheme.len() == p.len()
                        || v.get(scheme.len()..)
                            .is_some_and(|rest| rest.starts_with([' ', '\t'])))
            }
        }
    })
}

/// Removes the header sources that carry something token-like
/// ([`carries_token`]) from a request that goes on without a verified token
/// (a `none` route, or an `optional` one where no token was recognised), so
/// no unchecked credential reaches the upstream; unless a provider is set to
/// forward its tokens.
fn strip_unverified_tokens(cfg: &Compiled, all: &[(String, String)], edits: &mut Edits) {
    if cfg.providers.iter().any(|p| p.forward_token) {
        return;
    }
    for s in &cfg.sources {
        if let TokenSource::Header { name, prefix } = s {
            if header_values(all, name).any(|v| carries_token(v, prefix.as_deref())) {
                edits.remove(name);
            }
        }
    }
}

/// Finds the request's token. More than one (repeated header, a header
/// holding two, a second source, a repeated cookie) is an error.
fn find_token(cfg: &Compiled, all: &[(String, String)]) -> Result<Option<Found>, TokenError> {
    let mut found: Option<Found> = None;
    let mut push = |token: &str, source: usize| -> Result<(), TokenError> {
        if found.is_some() {
            return Err(TokenError::MultipleTokens);
        }
        found = Some(Found {
            token: token.to_string(),
            source,
        });
        Ok(())
    };
    for (si, s) in cfg.sources.iter().enumerate() {
        match s {
            TokenSource::Header { name, prefix } => {
                for v in header_values(all, name) {
                    let v = v.trim();
                    let tok = match prefix {
                        None => v,
                        Some(p) => match v.get(..p.len()) {
                            Some(head) if head.eq_ignore_ascii_case(p) => {
                                v.get(p.len()..).unwrap_or("").trim()
                            }
                            // Another scheme (e.g. Basic): not our token.
                            _ => continue,
                        },
                    };
                    if tok.contains([',', ' ', '\t']) {
                        return Err(TokenError::MultipleTokens);
                    }
                    if tok.is_empty() {
                        return Err(TokenError::Malformed);
                    }
                    push(tok, si)?;
                }
            }
            TokenSource::Cookie { name } => {
                for v in header_values(all, "cookie") {
                    for pair in v.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=') {
                            if k == name {
                                push(val.trim_matches('"'), si)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

fn forward_value(v: &serde_json::Value) -> Option<String> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str())
            .collect::<Option<Vec<_>>>()?
            .join(" "),
        _ => return None,
    };
    if s.len() > 4096 || s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    Some(s)
}

/// Verifies a token that is not in the cache (steps 1–3 of [`crate::token`]).
fn verify<S: SharedData + ?Sized>(
    env: &Env<'_, S>,
    token: &str,
    source: usize,
    now: u64,
    out: &mut Outcome,
) -> Result<Verified, TokenError> {
    let cfg = env.cfg;
    let u = token::precheck(token, cfg.max_token_bytes)?;
    let (pi, p) = cfg
        .provider_by_issuer(&u.claims.iss)
        .ok_or(TokenError::Issuer)?;
    source_allowed(cfg, p, source)?;
    let pk = env.keys.get(pi);
    let set = pk.and_then(|k| k.set.clone());
    let key_index = match token::check_claims(&u, p, set.as_deref(), now) {
        Err(TokenError::UnknownKid) => {
            out.refetch = Some(pi);
            return Err(TokenError::UnknownKid);
        }
        Err(TokenError::NoKeys) => {
            out.refetch = Some(pi);
            return Err(TokenError::NoKeys);
        }
        r => r?,
    };
    let set = set.ok_or(TokenError::NoKeys)?;
    out.stale_keys = pk.is_some_and(|k| k.stale);
    out.signature_checked = true;
    token::verify_signature(token, &u, p, &set, key_index)?;
    let forward = p
        .forward_claims
        .iter()
        .filter_map(|f| {
            let v = u.claims.all.get(&f.claim)?;
            match forward_value(v) {
                Some(s) => Some((f.header.clone(), s)),
                None => {
                    log::debug!("jwt: claim {} not forwarded (type or characters)", f.claim);
                    None
                }
            }
        })
        .collect();
    Ok(Verified {
        provider: pi,
        generation: pk.map_or(0, |k| k.generation),
        sub: u.claims.sub,
        exp: u.claims.exp,
        valid_until: u.claims.exp.saturating_add(p.skew_secs),
        jti: u.claims.jti,
        scopes: u.claims.scopes,
        forward,
    })
}

fn source_allowed(cfg: &Compiled, p: &Provider, source: usize) -> Result<(), TokenError> {
    match cfg.sources.get(source) {
        Some(s) if p.sources.contains(s) => Ok(()),
        _ => Err(TokenError::Issuer),
    }
}

/// `WWW-Authenticate` for an invalid token (RFC 6750 §3).
fn invalid_token(challenge: &str, e: &TokenError) -> Denial {
    let desc = e.to_string();
    Denial::unauthorized(
        "invalid_token",
        format!("the bearer token is not valid: {desc}"),
    )
    .with_header(
        "www-authenticate",
        format!("{challenge}, error=\"invalid_token\", error_description=\"{desc}\""),
    )
}

/// A request paused on its `jti` claim: what the adapter needs to finish it
/// when the shared store answers ([`on_claim_answer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub claim: Box<PendingClaim>,
    pub out: Outcome,
    method: String,
    request_id: Option<String>,
    trace_id: Option<String>,
    path: String,
}

/// The request-headers callback: reads the headers once, runs [`decide`]
/// and applies its decision (the thin host adapter; a denial in dry run
/// keeps only the edits). A one-time route with a shared store comes back
/// as [`Verdict::WaitCallout`] with the [`Pending`] claim: the glue sends
/// [`PendingClaim::claim`] and calls [`on_claim_answer`] with the answer.
pub fn on_request_headers<H: HttpHost, S: SharedData + ?Sized>(
    env: &Env<'_, S>,
    host: &mut H,
) -> (Verdict, Outcome, Option<Pending>) {
    let all = host.request_headers();
    let req = RequestView::new(&all);
    // The clock is read only when a token is checked (one host call less on
    // open routes and on requests without a token).
    let (step, mut out) = decide(env, &req, || host.unix_seconds());
    match step {
        Step::Done(decision) => {
            let v = settle(
                env,
                host,
                &decision,
                &mut out,
                (req.method, req.request_id, req.path()),
                || decision::trace_id(&all),
            );
            (v, out, None)
        }
        Step::Claim(claim) => {
            let pending = Pending {
                claim,
                out: out.clone(),
                method: req.method.to_string(),
                request_id: req.request_id.map(str::to_string),
                trace_id: decision::trace_id(&all),
                path: req.path().to_string(),
            };
            (Verdict::WaitCallout, out, Some(pending))
        }
    }
}

/// The shared store answered a paused request's claim (`answer`): decide
/// ([`finish_claim`]) and apply, as [`on_request_headers`] would have.
pub fn on_claim_answer<H: HttpHost, S: SharedData + ?Sized>(
    env: &Env<'_, S>,
    host: &mut H,
    pending: Pending,
    answer: ClaimAnswer,
) -> (Verdict, Outcome) {
    let Pending {
        claim,
        mut out,
        method,
        request_id,
        trace_id,
        path,
    } = pending;
    let now = host.unix_seconds();
    let decision = finish_claim(env, *claim, answer, now, &mut out);
    let v = settle(
        env,
        host,
        &decision,
        &mut out,
        (&method, request_id.as_deref(), &path),
        || trace_id,
    );
    (v, out)
}

/// Applies a decision: the decision log line on a refusal (dry run
/// included), then the edits and, unless in dry run, the local reply.
fn settle<H: HttpHost, S: SharedData + ?Sized>(
    env: &Env<'_, S>,
    host: &mut H,
    decision: &RequestDecision,
    out: &mut Outcome,
    (method, request_id, path): (&str, Option<&str>, &str),
    trace_id: impl FnOnce() -> Option<String>,
) -> Verdict {
    let Some(d) = decision.denial() else {
        return decision.apply(host, request_id);
    };
    let cfg = env.cfg;
    let names = out
        .names
        .get_or_insert_with(|| decision::route_names(&*host));
    // `code` is the reply's error code; `reason` (the token check that
    // failed) is the metric label and stays in the debug log.
    decision::Decision::denial("jwt", method, d.status, d.code)
        .dry_run(cfg.dry_run)
        .at(names)
        .request_id(request_id)
        .trace_id(trace_id().as_deref())
        .emit();
    log::debug!(
        "jwt deny code={} reason={} path={}",
        d.code,
        out.code.unwrap_or("-"),
        path
    );
    if cfg.dry_run {
        if let RequestDecision::Deny(edits, _) = decision {
            edits.apply(host);
        }
        return Verdict::Continue;
    }
    decision.apply(host, request_id)
}

/// The whole decision on the request headers, without a host call: which
/// headers go (client copies of the forwarded claims, unverified tokens),
/// which are set (claims), the identity handed on, or the denial. `now`
/// is the proxy's clock in Unix seconds, asked for only when a token is
/// checked. The token cache and the `jti` store in `env` are the worker's
/// and the process's state (the latter behind the `SharedData` seam).
pub fn decide<S: SharedData + ?Sized>(
    env: &Env<'_, S>,
    req: &RequestView<'_>,
    now: impl FnOnce() -> u64,
) -> (Step, Outcome) {
    let mut out = Outcome::default();
    let cfg = env.cfg;
    let all = req.headers;
    let mut edits = Edits::default();
    // Forwarded-claim headers are ours alone: strip client copies on every route.
    for h in &cfg.forwarded_headers {
        if req.has(h) {
            edits.remove(h);
        }
    }
    let path = req.path();
    let route = cfg.route(req.method, path);
    let requirement = route.map_or(cfg.default_requirement, |r| r.requirement);
    if requirement == Requirement::None {
        // The token is not checked here, and it must not ride along to the
        // upstream either (a public service has no business with a user's
        // bearer token): header sources holding one are removed, as on a
        // verified request, unless a provider is set to forward its tokens.
        strip_unverified_tokens(cfg, all, &mut edits);
        return (done(RequestDecision::Continue(edits)), out);
    }
    let deny = |out: &mut Outcome, edits: Edits, d: Denial| {
        out.result = if cfg.dry_run {
            Result_::DryRunDenied
        } else {
            Result_::Denied
        };
        out.code.get_or_insert(d.code);
        log::debug!("jwt deny rule={}", route.map_or("-", |r| r.name.as_str()));
        RequestDecision::Deny(edits, d)
    };

    let found = match find_token(cfg, all) {
        Ok(f) => f,
        Err(e) => {
            out.code = Some(e.code());
            let d = invalid_token(&cfg.challenge, &e);
            return (done(deny(&mut out, edits, d)), out);
        }
    };
    let Some(found) = found else {
        if requirement == Requirement::Optional {
            // No token this filter recognises (`Bearer<TAB>t`, `Basic x,
            // Bearer t`): the request goes on anonymous, and whatever the
            // header holds goes no further than an unchecked token would.
            strip_unverified_tokens(cfg, all, &mut edits);
            out.result = Result_::Anonymous;
            return (done(RequestDecision::Continue(edits)), out);
        }
        let d = Denial::unauthorized("missing_token", "a bearer token is required")
            .with_header("www-authenticate", cfg.challenge.clone());
        return (done(deny(&mut out, edits, d)), out);
    };

    let now = now();
    let cached = env.cache.borrow_mut().get(&found.token, now, |pi| {
        env.keys.get(pi).map_or(0, |k| k.generation)
    });
    let v = match cached {
        Some(v) => {
            out.cache_hit = true;
            v
        }
        None => match verify(env, &found.token, found.source, now, &mut out) {
            Ok(v) => {
                let v = Rc::new(v);
                env.cache
                    .borrow_mut()
                    .insert(&found.token, (*v).clone(), now);
                v
            }
            Err(e) => {
                out.code = Some(e.code());
                let d = invalid_token(&cfg.challenge, &e);
                return (done(deny(&mut out, edits, d)), out);
            }
        },
    };
    let Some(p) = cfg.providers.get(v.provider) else {
        let d = invalid_token(&cfg.challenge, &TokenError::Issuer);
        return (done(deny(&mut out, edits, d)), out);
    };
    if let Err(e) = source_allowed(cfg, p, found.source) {
        out.code = Some(e.code());
        let d = invalid_token(&cfg.challenge, &e);
        return (done(deny(&mut out, edits, d)), out);
    }

    if let Some(rule) = route.and_then(|r| r.scopes.as_ref()) {
        if !rule.satisfied_by(&v.scopes) {
            let scope = rule.joined();
            let d = Denial::forbidden(
                "insufficient_scope",
                format!("the token lacks the scope this route needs ({scope})"),
            )
            .with_header(
                "www-authenticate",
                format!(
                    "{}, error=\"insufficient_scope\", scope=\"{scope}\"",
                    cfg.challenge
                ),
            );
            return (done(deny(&mut out, edits, d)), out);
        }
    }

    let one_time = route.is_some_and(|r| r.one_time_jti);
    let before_deny = if one_time {
        edits.clone()
    } else {
        Edits::default()
    };
    let allow = allowed_edits(cfg, p, &v, found.source, edits);
    if !one_time {
        out.result = Result_::Allowed;
        return (Step::Done(RequestDecision::Continue(allow)), out);
    }
    let Some(jti) = v.jti.as_deref() else {
        out.code = Some("jti_missing");
        let d = invalid_token(
            &cfg.challenge,
            &TokenError::BadClaims("jti is required on this route"),
        );
        return (done(deny(&mut out, before_deny, d)), out);
    };
    if v.exp.saturating_sub(now) > env.jti.max_lifetime {
        out.code = Some("lifetime_too_long");
        let d = invalid_token(
            &cfg.challenge,
            &TokenError::BadClaims("token lifetime is too long for a one-time route"),
        );
        return (done(deny(&mut out, before_deny, d)), out);
    }
    if cfg.shared_store.is_none() {
        // This process's store alone decides (per replica).
        let r = env
            .jti
            .record(env.shared, &p.issuer, jti, v.exp, p.skew_secs, now);
        return match recorded_denial(cfg, r, &mut out) {
            None => {
                out.result = Result_::Allowed;
                (done(RequestDecision::Continue(allow)), out)
            }
            Some(d) => (done(deny(&mut out, before_deny, d)), out),
        };
    }
    // The first-level cache: a replay this replica has seen is refused
    // without a round trip. It never accepts: the shared store does.
    if let Ok(true) = env
        .jti
        .contains(env.shared, &p.issuer, jti, v.exp, p.skew_secs)
    {
        out.local_replay = true;
        return (done(deny(&mut out, before_deny, replayed(cfg))), out);
    }
    // Remembered until the token has expired for every replica's clock.
    let ttl_secs = v.exp.saturating_add(p.skew_secs).saturating_sub(now).max(1);
    let pending = PendingClaim {
        claim: Claim {
            key: crate::jti::claim_key(&p.issuer, jti),
            ttl_ms: ttl_secs.saturating_mul(1000),
        },
        allow,
        before_deny,
        issuer: p.issuer.clone(),
        jti: jti.to_string(),
        exp: v.exp,
        skew: p.skew_secs,
    };
    (Step::Claim(Box::new(pending)), out)
}

fn done(d: RequestDecision) -> Step {
    Step::Done(d)
}

/// The edits of an allowed request: the identity handed on, claims
/// forwarded, the token dropped (unless its provider forwards it).
fn allowed_edits(
    cfg: &Compiled,
    p: &Provider,
    v: &Verified,
    source: usize,
    mut edits: Edits,
) -> Edits {
    let mut id = Identity::new(Source::Jwt);
    id.user = v.sub.clone();
    id.exp = Some(v.exp);
    edits.identity = Some(id);
    for (name, value) in &v.forward {
        edits.set.push((name.clone(), value.clone()));
    }
    if !p.forward_token {
        if let Some(TokenSource::Header { name, .. }) = cfg.sources.get(source) {
            edits.remove(name);
        }
    }
    edits
}

fn replayed(cfg: &Compiled) -> Denial {
    Denial::unauthorized(
        "token_replayed",
        "this token has already been used on a one-time route",
    )
    .with_header(
        "www-authenticate",
        format!(
            "{}, error=\"invalid_token\", error_description=\"token has already been used\"",
            cfg.challenge
        ),
    )
}

/// The refusal, if any, for what this process's `jti` store recorded.
fn recorded_denial(
    cfg: &Compiled,
    r: Result<Recorded, SharedError>,
    out: &mut Outcome,
) -> Option<Denial> {
    match r {
        Ok(Recorded::Fresh) => None,
        Ok(Recorded::Replayed) => Some(replayed(cfg)),
        Ok(Recorded::LifetimeTooLong) => {
            out.code = Some("lifetime_too_long");
            Some(invalid_token(
                &cfg.challenge,
                &TokenError::BadClaims("token lifetime is too long for a one-time route"),
            ))
        }
        Ok(Recorded::Full { retry_after }) => {
            log::warn!("jwt: jti store bucket full; refusing one-time tokens for {retry_after}s");
            Some(
                Denial::unavailable(
                    "replay_store_full",
                    "one-time tokens cannot be recorded right now",
                )
                .with_header("retry-after", retry_after.to_string()),
            )
        }
        Err(e) => {
            log::error!("jwt: jti store: {e}");
            Some(
                Denial::unavailable(
                    "replay_store_unavailable",
                    "one-time tokens cannot be checked right now",
                )
                .with_header("retry-after", "1"),
            )
        }
    }
}

/// The decision once the shared store has answered a [`PendingClaim`]
/// (`now`: the proxy's clock, Unix seconds). The answer is recorded in this
/// process's `jti` store too, so a replay seen here again is refused
/// without a round trip. No answer in time: 503 `replay_check_unavailable`
/// with `Retry-After`, or, if the config opts into it, this process's
/// store decides alone.
pub fn finish_claim<S: SharedData + ?Sized>(
    env: &Env<'_, S>,
    pending: PendingClaim,
    answer: ClaimAnswer,
    now: u64,
    out: &mut Outcome,
) -> RequestDecision {
    let cfg = env.cfg;
    out.claim = Some(answer);
    let p = &pending;
    let record = || {
        env.jti
            .record(env.shared, &p.issuer, &p.jti, p.exp, p.skew, now)
    };
    let denial = match answer {
        ClaimAnswer::Claimed => {
            // A cache: a full bucket or an unreadable store only costs a
            // round trip on a later replay.
            if let Err(e) = record() {
                log::debug!("jwt: jti cache: {e}");
            }
            None
        }
        ClaimAnswer::Taken => {
            let _ = record();
            Some(replayed(cfg))
        }
        ClaimAnswer::Unavailable => match cfg.shared_store.as_ref().map(|s| s.on_unavailable) {
            Some(OnUnavailable::Local) => recorded_denial(cfg, record(), out),
            _ => Some(store::unavailable_denial()),
        },
    };
    match denial {
        None => {
            out.result = Result_::Allowed;
            RequestDecision::Continue(pending.allow)
        }
        Some(d) => {
            out.result = if cfg.dry_run {
                Result_::DryRunDenied
            } else {
                Result_::Denied
            };
            out.code.get_or_insert(d.code);
            RequestDecision::Deny(pending.before_deny, d)
        }
    }
}
