//! replay-guard's pure decision core: the request headers (a
//! [`RequestView`], read once) and the body bytes in, a [`Ruling`] out. No
//! function here makes an [`filter_core::HttpHost`] call: the clock (`now`),
//! the `:path` sanitize saved ([`filter_core::original`]) and the body come
//! in as values, and the nonce store is the [`SharedData`] seam. The host
//! adapters in [`crate::filter`] (and the chain build) read the request,
//! call these functions and apply the result with
//! [`filter_core::request::Decision::apply`].
//!
//! A request goes through up to three steps:
//! 1. [`decide_headers`]: route, signature parameters, key id, coverage and
//!    HMAC. A request with a body to come waits for it
//!    ([`HeadersStep::WaitBody`] with the [`BodyState`] of the verified
//!    signature); any other request is decided here.
//! 2. [`decide_body_chunk`] on every body callback: an unexpected or
//!    oversized body is refused at once; otherwise wait until the body is
//!    complete.
//! 3. [`decide_body`] once it is: `Content-Digest`, nonce, identity.

use filter_core::identity::{Identity, Source};
use filter_core::request::{Decision, Edits, RequestView};
use filter_core::route::split_path;
use filter_core::shared::SharedData;
use filter_core::store::{self, Claim, ClaimAnswer, OnUnavailable};
use filter_core::{headers, Denial};

use crate::config::Compiled;
use crate::digest;
use crate::keyid::{derive_key, KeyId, KeyIdError};
use crate::nonce::{self, NonceError};
use crate::report::{Event, ReportKind};
use crate::sig::{self, SigError};

pub const SIGNATURE_INPUT: &str = "signature-input";
pub const SIGNATURE: &str = "signature";
pub const CONTENT_DIGEST: &str = "content-digest";

/// What happened to a request, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Not decided yet (waiting for the body).
    #[default]
    Pending,
    /// An open route: no signature needed.
    Open,
    /// Signature, digest and nonce all good.
    Verified,
    /// Refused; the code says why.
    Denied(&'static str),
    /// Dry run: would have been refused (code), let through without an identity.
    DryRunDenied(&'static str),
}

/// A signature that verified, as the body step needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub keyid: String,
    pub device: String,
    pub user: String,
    /// The key's expiry (Unix seconds), handed on as the identity's `exp`.
    pub expiry: u64,
    pub nonce: String,
    /// The signature's `created` (Unix seconds), which picks the nonce bucket.
    pub created: u64,
    /// The expected digest: the `Content-Digest` field, when the signature
    /// covers it.
    pub digest: Option<String>,
}

/// A request whose signature verified, waiting for its body: everything
/// [`decide_body_chunk`] and [`decide_body`] need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyState {
    pub verified: Verified,
    /// No `content-length` and no covered digest: the body that follows
    /// must turn out empty (an empty chunked body, or HTTP/2 with an empty
    /// last DATA frame, is no body, as `content-length: 0` is not).
    pub body_must_be_empty: bool,
    /// For a report from the body step.
    pub method: String,
    /// The path (without query) the signature covered.
    pub path: String,
    pub request_id: Option<String>,
}

impl BodyState {
    /// Whether [`decide_body`] looks at the body bytes (a covered digest);
    /// when not, the adapter need not read the body and passes `&[]`.
    pub fn needs_body(&self) -> bool {
        self.verified.digest.is_some()
    }
}

/// A decided request.
#[derive(Debug, Clone, PartialEq)]
pub struct Ruling {
    /// What the host applies: the identity hand-over, or the denial. In dry
    /// run a refusal is `Continue` with no edits (no identity).
    pub decision: Decision,
    pub outcome: Outcome,
    /// A suspicious event to queue for the FDS service ([`crate::coalesce`]).
    /// `client` is `None`: the client address is a host property, which the
    /// adapter reads only when there is a report. Never set in dry run.
    pub report: Option<Event>,
    /// Dry run: the refusal that was decided and not sent, for the decision
    /// log line.
    pub dry_run_denial: Option<Denial>,
    /// With a shared store: what it answered about the nonce (metrics).
    pub claim: Option<ClaimAnswer>,
    /// With a shared store: this replica's nonce store already knew the
    /// nonce (refused without a round trip).
    pub local_replay: bool,
}

impl Ruling {
    fn open() -> Self {
        Ruling {
            decision: Decision::Continue(Edits::default()),
            outcome: Outcome::Open,
            report: None,
            dry_run_denial: None,
            claim: None,
            local_replay: false,
        }
    }

    /// Refuses the request, or in dry run lets it through without an
    /// identity or a report.
    fn refuse(dry_run: bool, d: Denial, report: Option<Event>) -> Self {
        if dry_run {
            return Ruling {
                decision: Decision::Continue(Edits::default()),
                outcome: Outcome::DryRunDenied(d.code),
                report: None,
                dry_run_denial: Some(d),
                claim: None,
                local_replay: false,
            };
        }
        Ruling {
            outcome: Outcome::Denied(d.code),
            decision: Decision::Deny(Edits::default(), d),
            report,
            dry_run_denial: None,
            claim: None,
            local_replay: false,
        }
    }

    /// The refusal decided, sent or (dry run) not: what the decision log
    /// line reports.
    pub fn denial(&self) -> Option<&Denial> {
        self.decision.denial().or(self.dry_run_denial.as_ref())
    }
}

/// The result of the headers step.
#[allow(
    clippy::large_enum_variant,
    reason = "a transient return value, moved once per callback: boxing would add an allocation and gain nothing"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum HeadersStep {
    /// Decided at the headers.
    Done(Ruling),
    /// The signature verified and a body may follow: hold the headers until
    /// the body is checked (a request that fails reaches the upstream not
    /// at all).
    WaitBody(BodyState),
    /// Verified, no body: the nonce must be claimed in the shared store
    /// first ([`finish_claim`] with the answer).
    Claim(Box<PendingNonce>),
}

/// What [`decide_body`] asks of the host.
#[allow(
    clippy::large_enum_variant,
    reason = "a transient return value, moved once per callback: boxing would add an allocation and gain nothing"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum BodyStep {
    /// Decided: apply it.
    Done(Ruling),
    /// Signature and digest verify: claim the nonce in the shared store
    /// ([`PendingNonce::claim`], one callout), then [`finish_claim`] with
    /// the answer. Nothing is applied meanwhile.
    Claim(Box<PendingNonce>),
}

/// A verified request waiting for its nonce claim.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingNonce {
    pub claim: Claim,
    verified: Verified,
    method: String,
    path: String,
    request_id: Option<String>,
}

/// The result of one body callback before the body is complete.
#[allow(
    clippy::large_enum_variant,
    reason = "a transient return value, moved once per callback: boxing would add an allocation and gain nothing"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum BodyChunk {
    /// Keep buffering.
    Wait,
    /// The body is complete: call [`decide_body`] with it.
    Complete,
    /// Refused (or, in dry run, released) before the body is complete.
    Refuse(Ruling),
}

fn unauthorized(code: &'static str, message: &'static str) -> Denial {
    Denial::unauthorized(code, message).with_header("www-authenticate", "Signature")
}

fn digest_missing() -> Denial {
    unauthorized(
        "digest_missing",
        "a request with a body must carry a Content-Digest covered by the signature",
    )
}

fn sig_denial(e: &SigError) -> Denial {
    match e {
        SigError::Missing => unauthorized(
            "signature_missing",
            "the request must carry Signature-Input and Signature headers",
        ),
        SigError::Malformed(_) | SigError::AbsentComponent(_) => unauthorized(
            "signature_malformed",
            "the signature headers are malformed or name a component the request lacks",
        ),
        SigError::UnsupportedAlg => unauthorized(
            "signature_malformed",
            "the signature algorithm is not supported (hmac-sha256)",
        ),
        SigError::MissingParam(_) => unauthorized(
            "signature_malformed",
            "the signature must carry created, nonce and keyid parameters",
        ),
    }
}

/// The request a report describes.
struct Subject<'a> {
    method: &'a str,
    path: &'a str,
    request_id: Option<&'a str>,
    now: u64,
}

impl Subject<'_> {
    fn event(&self, kind: ReportKind, keyid: &str, who: Option<(&str, &str)>) -> Event {
        Event {
            kind,
            keyid: keyid.chars().take(200).collect(),
            device: who.map(|(d, _)| d.to_string()),
            user: who.map(|(_, u)| u.to_string()),
            verified: who.is_some(),
            method: self.method.to_string(),
            path: self.path.chars().take(512).collect(),
            client: None,
            request_id: self.request_id.map(str::to_string),
            at: self.now,
        }
    }
}

/// The headers step. `original_path` is the `:path` sanitize saved before
/// rewriting it ([`filter_core::original::path`]), which the signature
/// covers; `now` is Unix seconds; `end_of_stream` says the headers end the
/// request (no body). A request that ends here is decided through
/// [`decide_body`] with an empty body.
pub fn decide_headers<S: SharedData + ?Sized>(
    cfg: &Compiled,
    req: &RequestView<'_>,
    original_path: Option<&str>,
    store: &S,
    now: u64,
    end_of_stream: bool,
) -> HeadersStep {
    let refuse = |d: Denial| HeadersStep::Done(Ruling::refuse(cfg.dry_run, d, None));
    let mut scheme = "";
    let mut content_length: Option<&str> = None;
    let mut sig_input: Vec<&str> = Vec::new();
    let mut sig_value: Vec<&str> = Vec::new();
    let mut digest_field: Vec<&str> = Vec::new();
    for (n, v) in req.headers {
        match n.as_str() {
            ":scheme" => scheme = v,
            headers::CONTENT_LENGTH => content_length = Some(v),
            SIGNATURE_INPUT => sig_input.push(v),
            SIGNATURE => sig_value.push(v),
            CONTENT_DIGEST => digest_field.push(v),
            _ => {}
        }
    }
    // The signature covers what the client sent: sanitize saves the
    // original :path before it rewrites the query.
    let full_path = original_path.unwrap_or(req.full_path);
    let (path, query) = split_path(full_path);
    let route = cfg.route(req.method, path);
    if route.is_some_and(|r| r.open) {
        return HeadersStep::Done(Ruling::open());
    }
    let required = route.map_or(&cfg.default_components, |r| &r.components);

    // Repeated fields combine with "," (RFC 9110 §5.3); dictionaries allow it.
    let join = |v: &[&str]| (!v.is_empty()).then(|| v.join(", "));
    let sig = match sig::parse(
        join(&sig_input).as_deref(),
        join(&sig_value).as_deref(),
        cfg.label.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => return refuse(sig_denial(&e)),
    };

    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    let (max_age, max_skew) = (
        i64::try_from(cfg.max_age).unwrap_or(i64::MAX),
        i64::try_from(cfg.max_skew).unwrap_or(i64::MAX),
    );
    if sig.created < 0
        || sig.created > now_i.saturating_add(max_skew)
        || sig.created < now_i.saturating_sub(max_age)
    {
        return refuse(unauthorized(
            "signature_stale",
            "the signature's created time is outside the accepted window",
        ));
    }
    if let Some(exp) = sig.expires {
        if exp <= now_i || exp < sig.created {
            return refuse(unauthorized(
                "signature_expired",
                "the signature has expired",
            ));
        }
    }
    let nonce_len = sig.nonce.chars().count();
    if nonce_len < cfg.min_nonce_length || nonce_len > cfg.max_nonce_length {
        return refuse(unauthorized(
            "signature_malformed",
            "the signature's nonce has an unacceptable length",
        ));
    }
    let key = match KeyId::parse(&sig.keyid) {
        Ok(k) => k,
        Err(_) => {
            return refuse(unauthorized(
                "key_invalid",
                "the key id must be <device>:<user>:<expiry>[:<version>]",
            ))
        }
    };
    match key.check_time(now, cfg.max_key_lifetime) {
        Ok(()) => {}
        Err(KeyIdError::Expired) => {
            return refuse(unauthorized("key_expired", "the signing key has expired"))
        }
        Err(_) => {
            return refuse(unauthorized(
                "key_invalid",
                "the signing key's lifetime is too long",
            ))
        }
    }

    let covers = |name: &str| sig.components.iter().any(|c| c == name);
    if !required.iter().all(|c| covers(c)) {
        return refuse(unauthorized(
            "signature_coverage",
            "the signature does not cover the components this route requires",
        ));
    }
    if query.is_some() && !(covers("@query") || covers("@request-target") || covers("@target-uri"))
    {
        return refuse(unauthorized(
            "signature_coverage",
            "the signature must cover @query",
        ));
    }
    // A body is announced by a non-zero content-length; without one, a
    // body may still follow (chunked, HTTP/2) or turn out empty.
    let has_body = !end_of_stream && content_length.is_some_and(|l| l.trim() != "0");
    let length_unknown = !end_of_stream && content_length.is_none();
    let digest_covered = covers(CONTENT_DIGEST);
    if (has_body || !digest_field.is_empty()) && !digest_covered {
        return refuse(digest_missing());
    }

    let view = sig::RequestView {
        method: req.method,
        authority: req.authority.unwrap_or(""),
        scheme,
        path,
        query,
        headers: req.headers,
    };
    let base = match sig::signature_base(&sig, &view) {
        Ok(b) => b,
        Err(e) => return refuse(sig_denial(&e)),
    };
    let secrets: Vec<&[u8]> = match key.version {
        Some(v) => match cfg.secrets.iter().find(|s| s.version == v) {
            Some(s) => vec![s.key.as_slice()],
            None => {
                return refuse(unauthorized(
                    "key_invalid",
                    "the key id names an unknown key version",
                ))
            }
        },
        None => cfg.secrets.iter().map(|s| s.key.as_slice()).collect(),
    };
    // Every candidate is computed (no early exit): the time does not
    // tell which secret matched.
    let mut ok = false;
    for master in secrets {
        let k = derive_key(master, &sig.keyid);
        ok |= sig::verify_hmac(&k, base.as_bytes(), &sig.value);
    }
    if !ok {
        let subject = Subject {
            method: req.method,
            path,
            request_id: req.request_id,
            now,
        };
        let report = subject.event(ReportKind::InvalidSignature, &sig.keyid, None);
        return HeadersStep::Done(Ruling::refuse(
            cfg.dry_run,
            unauthorized("signature_invalid", "the request signature does not verify"),
            Some(report),
        ));
    }

    let state = BodyState {
        verified: Verified {
            keyid: sig.keyid.clone(),
            device: key.device.to_string(),
            user: key.user.to_string(),
            expiry: key.expiry,
            nonce: sig.nonce.clone(),
            created: u64::try_from(sig.created).unwrap_or(0),
            digest: digest_covered.then(|| digest_field.join(", ")),
        },
        body_must_be_empty: length_unknown && !digest_covered,
        method: req.method.to_string(),
        path: path.to_string(),
        request_id: req.request_id.map(str::to_string),
    };
    if !end_of_stream {
        return HeadersStep::WaitBody(state);
    }
    match decide_body(cfg, state, &[], store, now) {
        BodyStep::Done(r) => HeadersStep::Done(r),
        BodyStep::Claim(p) => HeadersStep::Claim(p),
    }
}

/// One body callback while the headers are held; `buffered` is the size of
/// everything buffered so far.
pub fn decide_body_chunk(
    cfg: &Compiled,
    state: &BodyState,
    buffered: usize,
    end_of_stream: bool,
) -> BodyChunk {
    if state.body_must_be_empty && buffered > 0 {
        return BodyChunk::Refuse(Ruling::refuse(cfg.dry_run, digest_missing(), None));
    }
    if buffered as u64 > cfg.max_body_bytes {
        return BodyChunk::Refuse(Ruling::refuse(
            cfg.dry_run,
            Denial::payload_too_large("the request body is too large to verify"),
            None,
        ));
    }
    if end_of_stream {
        BodyChunk::Complete
    } else {
        BodyChunk::Wait
    }
}

/// The complete body: `Content-Digest` (against `body`, the bytes the
/// client sent: sanitize's saved original when it re-encoded the body; only
/// looked at when [`BodyState::needs_body`]), then the nonce: recorded in
/// `store` (a replay is refused), or, with a shared store, checked there
/// first and then claimed in the shared store ([`BodyStep::Claim`]); then
/// the identity hand-over.
pub fn decide_body<S: SharedData + ?Sized>(
    cfg: &Compiled,
    state: BodyState,
    body: &[u8],
    store: &S,
    now: u64,
) -> BodyStep {
    let BodyState {
        verified: v,
        method,
        path,
        request_id,
        ..
    } = state;
    let subject = Subject {
        method: &method,
        path: &path,
        request_id: request_id.as_deref(),
        now,
    };
    let who = Some((v.device.as_str(), v.user.as_str()));
    if let Some(field) = &v.digest {
        if let Err(e) = digest::check(field, body) {
            let report = (e == digest::DigestError::Mismatch)
                .then(|| subject.event(ReportKind::DigestMismatch, &v.keyid, who));
            let d = match e {
                digest::DigestError::Mismatch => unauthorized(
                    "digest_invalid",
                    "the body does not match its Content-Digest",
                ),
                _ => unauthorized(
                    "digest_invalid",
                    "the Content-Digest is malformed or uses no supported algorithm (sha-256, sha-512)",
                ),
            };
            return BodyStep::Done(Ruling::refuse(cfg.dry_run, d, report));
        }
    }
    if cfg.shared_store.is_none() {
        // This process's store alone decides (per replica).
        return BodyStep::Done(local_ruling(cfg, store, v, &subject));
    }
    // The first-level cache: a replay this replica has seen is refused
    // without a round trip. It never accepts: the shared store does.
    if nonce::contains(&cfg.store, store, &v.keyid, &v.nonce, v.created) {
        return BodyStep::Done(replay(cfg, &subject, &v, true));
    }
    // Remembered while the `created` check would still accept the
    // signature, on any replica's clock.
    let until = v
        .created
        .saturating_add(cfg.max_age)
        .saturating_add(cfg.max_skew)
        .saturating_add(1);
    let claim = Claim {
        key: nonce::claim_key(&v.keyid, &v.nonce),
        ttl_ms: until.saturating_sub(now).max(1).saturating_mul(1000),
    };
    BodyStep::Claim(Box::new(PendingNonce {
        claim,
        verified: v,
        method,
        path,
        request_id,
    }))
}

/// The ruling once the shared store has answered a [`PendingNonce`]
/// (`now`: the proxy's clock). A replay it refused is recorded in `store`
/// too, so the same replay seen here again is refused without a round trip. No answer in
/// time: 503 `replay_check_unavailable` with `Retry-After` (no report: the
/// client did nothing wrong), or, if the config opts into it, this
/// process's store decides alone.
pub fn finish_claim<S: SharedData + ?Sized>(
    cfg: &Compiled,
    pending: PendingNonce,
    answer: ClaimAnswer,
    store: &S,
    now: u64,
) -> Ruling {
    let PendingNonce {
        verified: v,
        method,
        path,
        request_id,
        ..
    } = pending;
    let subject = Subject {
        method: &method,
        path: &path,
        request_id: request_id.as_deref(),
        now,
    };
    let mut ruling = match answer {
        // First use: nothing is written here (the cache holds the replays
        // the shared store refused, so legitimate traffic pays no
        // shared-data write and keeps the keys it reads small).
        ClaimAnswer::Claimed => allowed(v),
        ClaimAnswer::Taken => {
            // A cache: a full key only costs another round trip next time.
            if let Err(e) = nonce::record(&cfg.store, store, &v.keyid, &v.nonce, v.created) {
                log::debug!("replay-guard: nonce cache: {e}");
            }
            replay(cfg, &subject, &v, false)
        }
        ClaimAnswer::Unavailable => match cfg.shared_store.as_ref().map(|s| s.on_unavailable) {
            Some(OnUnavailable::Local) => local_ruling(cfg, store, v, &subject),
            _ => Ruling::refuse(cfg.dry_run, store::unavailable_denial(), None),
        },
    };
    ruling.claim = Some(answer);
    ruling
}

/// The nonce recorded in this process's store alone, and the ruling.
fn local_ruling<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    v: Verified,
    subject: &Subject<'_>,
) -> Ruling {
    match nonce::record(&cfg.store, store, &v.keyid, &v.nonce, v.created) {
        Ok(()) => allowed(v),
        Err(NonceError::Replay) => replay(cfg, subject, &v, false),
        Err(e) => {
            // Our store's trouble, not the client's credential: 503 with
            // Retry-After (like jwt's full jti store). A full key frees
            // when the current `created` bucket ends.
            log::warn!("replay-guard: nonce store refused a nonce: {e}");
            let retry = match e {
                NonceError::Full => {
                    let b = cfg.store.bucket.max(1);
                    b - subject.now % b
                }
                _ => 1,
            };
            let d = Denial::unavailable(
                "replay_check_unavailable",
                "the nonce could not be recorded; retry later with a new signature",
            )
            .with_header("retry-after", retry.to_string());
            Ruling::refuse(cfg.dry_run, d, None)
        }
    }
}

/// A replayed nonce: 401 and a report.
fn replay(cfg: &Compiled, subject: &Subject<'_>, v: &Verified, local: bool) -> Ruling {
    let who = Some((v.device.as_str(), v.user.as_str()));
    let report = subject.event(ReportKind::Replay, &v.keyid, who);
    let mut r = Ruling::refuse(
        cfg.dry_run,
        unauthorized("replay", "this signature's nonce was already used"),
        Some(report),
    );
    r.local_replay = local;
    r
}

/// Everything verified: the signer's identity goes to the filters after.
fn allowed(v: Verified) -> Ruling {
    let mut id = Identity::new(Source::Signature);
    id.user = Some(v.user);
    id.device = Some(v.device);
    id.exp = Some(v.expiry);
    // e2ee decrypts only a body whose coding names this key id.
    id.kid = Some(v.keyid);
    Ruling {
        decision: Decision::Continue(Edits {
            identity: Some(id),
            ..Edits::default()
        }),
        outcome: Outcome::Verified,
        report: None,
        dry_run_denial: None,
        claim: None,
        local_replay: false,
    }
}
