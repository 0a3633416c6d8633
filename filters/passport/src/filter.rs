//! The request side: what a request's headers get, what a lookup's answer
//! becomes, and how a waiting request is finished. The decisions are pure
//! ([`crate::decide`]); [`on_request_headers`] and [`finish`] are their
//! host adapters over [`HttpHost`], tested with the fake host.

use filter_core::decision::{self, Decision};
use filter_core::headers::{METHOD, REQUEST_ID};
use filter_core::identity::Identity;
use filter_core::shared::SharedData;
use filter_core::{Denial, HttpHost};
use serde_json::{Map, Value};

use crate::cache::{self, CacheKey, Entry, Slot, Stored};
use crate::config::Compiled;
use crate::decide::{Headers, Resolved};

/// What happened to a request at its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No verified identity (or none with a user): forwarded, no lookup.
    NoIdentity,
    /// Served from the cache.
    Hit,
    /// Waits for a lookup; `coalesced` when one was already under way.
    Wait { key: CacheKey, coalesced: bool },
    /// Finished at once from the cache's negative or failure state.
    Done(Finished),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Forwarded with a fresh passport.
    Passport,
    /// Forwarded with a stale passport (issuer failing).
    Stale,
    /// Unknown user, denied (403).
    UnknownDenied,
    /// Unknown user, forwarded without a passport.
    UnknownForwarded,
    /// 503 `passport_unavailable`.
    Unavailable,
    /// Dry run: unknown user, would be denied (403); forwarded without a passport.
    UnknownDryRun,
    /// Dry run: would be 503 `passport_unavailable`; forwarded without a passport.
    UnavailableDryRun,
}

impl Finished {
    /// The request goes on to the upstream (with or without a passport).
    pub fn forwarded(self) -> bool {
        !matches!(self, Finished::UnknownDenied | Finished::Unavailable)
    }

    /// The denial code (the metric `reason`) of a denial or dry-run would-deny.
    pub fn denial_reason(self) -> Option<&'static str> {
        match self {
            Finished::UnknownDenied | Finished::UnknownDryRun => Some("unknown_user"),
            Finished::Unavailable | Finished::UnavailableDryRun => Some("passport_unavailable"),
            Finished::Passport | Finished::Stale | Finished::UnknownForwarded => None,
        }
    }

    /// A would-deny of a dry run.
    pub fn dry_run(self) -> bool {
        matches!(self, Finished::UnknownDryRun | Finished::UnavailableDryRun)
    }
}

/// Writes the decision line of a (would-be) denial and, unless in dry
/// run, sends it. Returns whether the request was answered.
fn deny<H: HttpHost + ?Sized>(cfg: &Compiled, host: &mut H, d: &Denial) -> bool {
    // Denial path only: two property reads and one header read.
    let names = decision::route_names(&*host);
    let all = host.request_headers();
    let get = |name: &str| all.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    Decision::denial("passport", get(METHOD).unwrap_or(""), d.status, d.code)
        .dry_run(cfg.dry_run)
        .at(&names)
        .request_id(get(REQUEST_ID))
        .trace_id(decision::trace_id(&all).as_deref())
        .emit();
    if cfg.dry_run {
        return false;
    }
    let rid = get(REQUEST_ID).map(str::to_string);
    d.send(host, rid.as_deref());
    true
}

/// Runs on the request headers: the host adapter of
/// [`crate::decide::decide_headers`] (the identity read from filter state,
/// the clock read only when the cache is probed). `waiting_locally` tells
/// whether a request on this worker already waits for the same key.
pub fn on_request_headers<H, S>(
    cfg: &Compiled,
    host: &mut H,
    store: &S,
    waiting_locally: impl Fn(&CacheKey) -> bool,
) -> Start
where
    H: HttpHost + ?Sized,
    S: SharedData + ?Sized,
{
    let identity = Identity::read(host);
    let d = {
        let h = &*host;
        crate::decide::decide_headers(cfg, store, identity, || now_ms(h), waiting_locally)
    };
    d.edits.apply(host);
    match d.step {
        Headers::NoIdentity => Start::NoIdentity,
        Headers::Hit => Start::Hit,
        Headers::Wait { key, coalesced } => Start::Wait { key, coalesced },
        Headers::Done(r) => Start::Done(apply(cfg, host, r)),
    }
}

/// How a waiting request is finished.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Passport(Entry),
    Unknown,
    /// The lookup failed or timed out; the stale entry when one may be served.
    Unavailable(Option<Entry>),
}

/// Applies a resolution to a request (forward with headers, or answer): the
/// host adapter of [`crate::decide::resolve`].
pub fn finish<H: HttpHost + ?Sized>(cfg: &Compiled, host: &mut H, res: &Resolution) -> Finished {
    let r = {
        let h = &*host;
        crate::decide::resolve(cfg, res, || unix_s(h))
    };
    apply(cfg, host, r)
}

/// Applies a resolved request: its header edits, then its denial (decision
/// log; the reply unless in dry run).
fn apply<H: HttpHost + ?Sized>(cfg: &Compiled, host: &mut H, r: Resolved) -> Finished {
    r.edits.apply(host);
    if let Some(d) = &r.denial {
        deny(cfg, host, d);
    }
    r.finished
}

fn now_ms<H: HttpHost + ?Sized>(host: &H) -> u64 {
    host.now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn unix_s<H: HttpHost + ?Sized>(host: &H) -> u64 {
    host.unix_seconds()
}

/// Signs a passport: the stored claims plus `iat`/`exp` at `now_s`.
pub fn sign(cfg: &Compiled, ctx: &Map<String, Value>, now_s: u64) -> String {
    let mut claims = ctx.clone();
    claims.insert("iat".into(), now_s.into());
    claims.insert("exp".into(), now_s.saturating_add(cfg.token_ttl_s).into());
    cfg.signer.sign(&claims)
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no answer (timeout or connection failure)")]
    NoAnswer,
    #[error("issuer answered {0}")]
    Status(u16),
    #[error("issuer body is missing, too large or not a JSON object")]
    BadBody,
    #[error("issuer answered for another user or device")]
    Mismatch,
    #[error("the context is too large to cache")]
    TooLarge,
}

/// Turns the issuer's answer into a cache entry (signing the passport).
pub fn lookup_result(
    cfg: &Compiled,
    key: &CacheKey,
    status: Option<u16>,
    body: Option<&[u8]>,
    now_ms: u64,
) -> Result<Entry, LookupError> {
    let id = key.id();
    match status {
        None => return Err(LookupError::NoAnswer),
        Some(404) => {
            return Ok(Entry {
                k: id,
                at: now_ms,
                neg: true,
                tok: String::new(),
                ctx: Map::new(),
                h: vec![],
            })
        }
        Some(200) => {}
        Some(s) => return Err(LookupError::Status(s)),
    }
    let body = body
        .filter(|b| b.len() <= cfg.max_response_bytes)
        .ok_or(LookupError::BadBody)?;
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(LookupError::BadBody);
    };
    // The issuer may leave out (or null) who it answered for; if it names
    // them, it must name the identity's user (and device, when the identity
    // has one) as a string: `{"device_id": []}` is no more the verified device
    // than `"d2"` is.
    let names = |field: &str, ours: &str| match obj.get(field) {
        None | Some(Value::Null) => true,
        Some(Value::String(theirs)) => theirs == ours,
        Some(_) => false,
    };
    if !names("user_id", &key.user) {
        return Err(LookupError::Mismatch);
    }
    if let Some(d) = &key.device {
        if !names("device_id", d) {
            return Err(LookupError::Mismatch);
        }
    }
    let now_s = now_ms / 1000;
    let mut ctx = Map::new();
    ctx.insert("iss".into(), cfg.gateway.clone().into());
    ctx.insert("sub".into(), key.user.clone().into());
    if let Some(aud) = &cfg.audience {
        ctx.insert("aud".into(), aud.clone().into());
    }
    ctx.insert("ctx_iat".into(), now_s.into());
    for name in &cfg.claims {
        match obj.get(name) {
            Some(Value::Null) | None => {
                // The verified device stands in when the issuer has none.
                if name == "device_id" {
                    if let Some(d) = &key.device {
                        ctx.insert(name.clone(), d.clone().into());
                    }
                }
            }
            Some(v) => {
                ctx.insert(name.clone(), v.clone());
            }
        }
    }
    let h = cfg
        .headers
        .iter()
        .filter_map(|(name, claim)| header_value(ctx.get(claim)?).map(|v| (name.clone(), v)))
        .collect();
    let tok = sign(cfg, &ctx, now_s);
    Ok(Entry {
        k: id,
        at: now_ms,
        neg: false,
        tok,
        ctx,
        h,
    })
}

/// A claim as a header value: strings as they are, arrays joined with ",",
/// numbers and booleans as JSON; anything that is not a safe header value
/// (control characters, over 1024 bytes) → none.
fn header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect();
            parts?.join(",")
        }
        Value::Null | Value::Object(_) => return None,
    };
    let ok = s.len() <= 1024 && s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
    ok.then_some(s)
}

/// Completes a lookup: stores the outcome for every worker and says how the
/// requests waiting for it end.
pub fn complete<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    key: &CacheKey,
    result: &Result<Entry, LookupError>,
    now_ms: u64,
) -> Resolution {
    let id = key.id();
    let name = cache::slot_name(&cfg.gateway, key.slot(cfg.slots));
    let failure = |store: &S| {
        let slot_before = cache::read(store, &name);
        if let Err(e) = cache::store(
            store,
            &name,
            &id,
            &Stored::Failure { at: now_ms },
            usize::MAX,
        ) {
            log::warn!("passport: recording a failed lookup: {e}");
        }
        Resolution::Unavailable(cache::stale(&slot_before, &id, now_ms, cfg).cloned())
    };
    match result {
        Ok(e) => match cache::store(
            store,
            &name,
            &id,
            &Stored::Entry(e.clone()),
            cfg.max_entry_bytes,
        ) {
            Ok(true) => {
                if e.neg {
                    Resolution::Unknown
                } else {
                    Resolution::Passport(e.clone())
                }
            }
            Ok(false) => {
                log::warn!("passport: {}", LookupError::TooLarge);
                failure(store)
            }
            Err(err) => {
                // The shared store refused: these waiters still get the
                // answer; other workers' waiters time out.
                log::warn!("passport: caching a lookup: {err}");
                if e.neg {
                    Resolution::Unknown
                } else {
                    Resolution::Passport(e.clone())
                }
            }
        },
        Err(_) => failure(store),
    }
}

/// The slot of a key (for the root context's waiter checks).
pub fn slot_of<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    key: &CacheKey,
) -> (String, Slot) {
    let name = cache::slot_name(&cfg.gateway, key.slot(cfg.slots));
    let slot = cache::read(store, &name);
    (name, slot)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{OnUnknownUser, PassportConfig};
    use crate::signer::tests::{demo_pem, verify_with_demo_jwks};
    use filter_core::host::FakeHost;
    use filter_core::identity::{Source, PROPERTY};
    use filter_core::shared::MemorySharedData;

    pub(crate) fn config(edit: impl FnOnce(&mut PassportConfig)) -> Compiled {
        let mut raw: PassportConfig = serde_json::from_value(serde_json::json!({
            "gateway": "web",
            "issuer": {"path": "/v1/context?user={user}&device={device}"},
            "token": {"signing_key": {"kid": "passport-2026-1", "pem": demo_pem()}},
            "headers": [
                {"name": "x-user-consent", "claim": "consents"},
                {"name": "x-user-risk", "claim": "risk_level"}
            ]
        }))
        .unwrap();
        edit(&mut raw);
        Compiled::try_from(raw).unwrap()
    }

    fn identity(user: &str, device: Option<&str>) -> Vec<u8> {
        let mut id = Identity::new(Source::Jwt);
        id.user = Some(user.into());
        id.device = device.map(String::from);
        serde_json::to_vec(&id).unwrap()
    }

    fn request(user: Option<&str>) -> FakeHost {
        let mut h = FakeHost::request("GET", "/api/v1/users/1")
            .with_header("x-passport", "forged")
            .with_header("x-user-risk", "low");
        if let Some(u) = user {
            h = h.with_property(&[PROPERTY], &identity(u, None));
        }
        h
    }

    fn issuer_body(user: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "user_id": user, "device_id": null, "consents": ["marketing", "analytics"],
            "risk_level": "low", "tier": "standard"
        }))
        .unwrap()
    }

    const NOW: u64 = 1_750_000_000_000;

    #[test]
    fn no_identity_means_no_lookup_and_client_copies_are_removed() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let mut h = request(None);
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::NoIdentity
        );
        assert_eq!(h.header("x-passport"), None);
        assert_eq!(h.header("x-user-risk"), None);
        assert!(h.response.is_none());
    }

    #[test]
    fn a_spoofed_identity_header_is_not_an_identity() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let mut h =
            request(None).with_header("x-gateway-identity", r#"{"source":"jwt","user":"alice"}"#);
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::NoIdentity
        );
    }

    #[test]
    fn a_miss_waits_then_the_lookup_result_is_a_verifiable_passport() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let mut h = request(Some("alice"));
        let start = on_request_headers(&cfg, &mut h, &store, |_| false);
        let Start::Wait {
            key,
            coalesced: false,
        } = start
        else {
            panic!("{start:?}")
        };
        let e = lookup_result(&cfg, &key, Some(200), Some(&issuer_body("alice")), NOW).unwrap();
        let res = complete(&cfg, &store, &key, &Ok(e), NOW);
        assert_eq!(finish(&cfg, &mut h, &res), Finished::Passport);
        let (hdr, claims) = verify_with_demo_jwks(h.header("x-passport").unwrap());
        assert_eq!(hdr["kid"], "passport-2026-1");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], "web");
        assert_eq!(
            claims["exp"].as_u64().unwrap(),
            claims["iat"].as_u64().unwrap() + 60
        );
        assert_eq!(
            claims["consents"],
            serde_json::json!(["marketing", "analytics"])
        );
        assert_eq!(claims["risk_level"], "low");
        assert_eq!(claims["tier"], "standard");
        assert!(claims.get("device_id").is_none(), "null device is omitted");
        assert_eq!(h.header("x-user-consent"), Some("marketing,analytics"));
        assert_eq!(h.header("x-user-risk"), Some("low"));
    }

    #[test]
    fn a_second_request_is_a_hit_with_the_same_token() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let e = lookup_result(&cfg, &key, Some(200), Some(&issuer_body("alice")), NOW).unwrap();
        let tok = e.tok.clone();
        complete(&cfg, &store, &key, &Ok(e), NOW);
        let mut h = request(Some("alice"));
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::Hit
        );
        assert_eq!(h.header("x-passport"), Some(tok.as_str()));
        // Another user is a miss.
        let mut h = request(Some("bob"));
        assert!(matches!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::Wait { .. }
        ));
    }

    #[test]
    fn a_hit_replaces_or_removes_every_client_copy_with_few_host_calls() {
        // A configured header the context has no value for must go too.
        let cfg = config(|c| {
            c.headers.push(
                serde_json::from_value(
                    serde_json::json!({"name": "x-user-device", "claim": "device_id"}),
                )
                .unwrap(),
            )
        });
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let e = lookup_result(&cfg, &key, Some(200), Some(&issuer_body("alice")), NOW).unwrap();
        let tok = e.tok.clone();
        complete(&cfg, &store, &key, &Ok(e), NOW);
        let mut h = request(Some("alice"))
            .with_header("x-passport", "second-forged")
            .with_header("x-user-risk", "none")
            .with_header("x-user-consent", "everything")
            .with_header("x-user-device", "trusted-laptop");
        h.calls.set(0);
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::Hit
        );
        let values = |name: &str| -> Vec<String> {
            h.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(values("x-passport"), vec![tok]);
        assert_eq!(values("x-user-risk"), vec!["low".to_string()]);
        assert_eq!(
            values("x-user-consent"),
            vec!["marketing,analytics".to_string()]
        );
        assert!(values("x-user-device").is_empty(), "device_id is null");
        // identity + 3 sets (passport, consent, risk) + 1 remove
        // (x-user-device: no value); no separate strip pass on a hit. (In
        // Envoy the clock read is one more call; FakeHost does not count it.)
        assert_eq!(h.calls.get(), 5);
    }

    #[test]
    fn a_miss_while_a_lookup_is_in_flight_is_coalesced() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let name = cache::slot_name("web", key.slot(cfg.slots));
        assert!(cache::claim(&store, &name, &key.id(), NOW, NOW + 1000, &cfg).unwrap());
        let mut h = request(Some("alice"));
        let start = on_request_headers(&cfg, &mut h, &store, |_| false);
        assert!(
            matches!(
                start,
                Start::Wait {
                    coalesced: true,
                    ..
                }
            ),
            "{start:?}"
        );
        // Same worker, no marker yet: the local registry says coalesced.
        let store = MemorySharedData::new();
        let start = on_request_headers(&cfg, &mut request(Some("alice")), &store, |_| true);
        assert!(
            matches!(
                start,
                Start::Wait {
                    coalesced: true,
                    ..
                }
            ),
            "{start:?}"
        );
    }

    #[test]
    fn unknown_user_is_denied_and_remembered() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "unknown-1".into(),
            device: None,
        };
        let e = lookup_result(&cfg, &key, Some(404), None, NOW).unwrap();
        let res = complete(&cfg, &store, &key, &Ok(e), NOW);
        assert_eq!(res, Resolution::Unknown);
        let mut h = request(Some("unknown-1"));
        assert_eq!(finish(&cfg, &mut h, &res), Finished::UnknownDenied);
        let r = h.response.unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (403, Some("unknown_user"))
        );
        assert_eq!(r.header("x-request-id"), Some("test-rid"));
        // The negative cache answers the next request without a lookup.
        let mut h = request(Some("unknown-1"));
        h.time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW + 10);
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::Done(Finished::UnknownDenied)
        );
    }

    #[test]
    fn unknown_user_may_be_forwarded_without_a_passport() {
        let cfg = config(|c| c.on_unknown_user = OnUnknownUser::Continue);
        let mut h = request(Some("unknown-1"));
        h.remove_request_header("x-passport");
        assert_eq!(
            finish(&cfg, &mut h, &Resolution::Unknown),
            Finished::UnknownForwarded
        );
        assert!(h.response.is_none());
        assert_eq!(h.header("x-passport"), None);
    }

    #[test]
    fn dry_run_forwards_would_be_denials_without_a_passport() {
        let cfg = config(|c| c.dry_run = true);
        for (res, want) in [
            (Resolution::Unknown, Finished::UnknownDryRun),
            (Resolution::Unavailable(None), Finished::UnavailableDryRun),
        ] {
            let mut h = request(Some("alice"));
            h.remove_request_header("x-passport");
            h.remove_request_header("x-user-risk");
            let f = finish(&cfg, &mut h, &res);
            assert_eq!(f, want);
            assert!(f.forwarded() && f.dry_run());
            assert!(h.response.is_none());
            assert_eq!(h.header("x-passport"), None);
            assert_eq!(h.header("x-user-risk"), None);
        }
        assert_eq!(
            Finished::UnknownDryRun.denial_reason(),
            Some("unknown_user")
        );
        assert_eq!(
            Finished::UnavailableDryRun.denial_reason(),
            Some("passport_unavailable")
        );
        assert_eq!(Finished::Stale.denial_reason(), None);
        assert!(!Finished::Unavailable.forwarded());
        // A good lookup still gets its passport in dry run.
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let e = lookup_result(&cfg, &key, Some(200), Some(&issuer_body("alice")), NOW).unwrap();
        let mut h = request(Some("alice"));
        assert_eq!(
            finish(&cfg, &mut h, &Resolution::Passport(e)),
            Finished::Passport
        );
        assert!(h.header("x-passport").is_some_and(|v| v != "forged"));
    }

    #[test]
    fn issuer_failure_is_a_503_with_retry_after() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        for result in [
            lookup_result(&cfg, &key, None, None, NOW),
            lookup_result(&cfg, &key, Some(500), Some(b"{}"), NOW),
            lookup_result(&cfg, &key, Some(200), Some(b"[1]"), NOW),
            lookup_result(&cfg, &key, Some(200), Some(&issuer_body("mallory")), NOW),
        ] {
            assert!(result.is_err());
            let res = complete(&cfg, &store, &key, &result, NOW);
            let mut h = request(Some("alice"));
            assert_eq!(finish(&cfg, &mut h, &res), Finished::Unavailable);
            let r = h.response.unwrap();
            assert_eq!(r.status, 503);
            assert_eq!(r.json()["error"], "passport_unavailable");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        // Within the back-off, the next request fails without a lookup.
        let mut h = request(Some("alice"));
        h.time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW + 100);
        assert_eq!(
            on_request_headers(&cfg, &mut h, &store, |_| false),
            Start::Done(Finished::Unavailable)
        );
    }

    #[test]
    fn issuer_failure_serves_a_re_signed_stale_passport_when_configured() {
        let cfg = config(|c| {
            c.on_issuer_error.serve_stale_for =
                filter_core::duration::ConfigDuration::from_secs(600)
        });
        let store = MemorySharedData::new();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let e = lookup_result(&cfg, &key, Some(200), Some(&issuer_body("alice")), NOW).unwrap();
        complete(&cfg, &store, &key, &Ok(e), NOW);
        let later = NOW + 120_000; // the cached token has expired by now
        let res = complete(&cfg, &store, &key, &Err(LookupError::NoAnswer), later);
        let mut h = request(Some("alice"));
        h.time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(later);
        assert_eq!(finish(&cfg, &mut h, &res), Finished::Stale);
        let (_, claims) = verify_with_demo_jwks(h.header("x-passport").unwrap());
        assert_eq!(claims["iat"].as_u64().unwrap(), later / 1000);
        assert_eq!(claims["ctx_iat"].as_u64().unwrap(), NOW / 1000);
        assert_eq!(h.header("x-user-risk"), Some("low"));
    }

    #[test]
    fn app_identity_keys_by_user_and_device() {
        let cfg = config(|_| {});
        let key = CacheKey {
            user: "u1".into(),
            device: Some("d1".into()),
        };
        assert_eq!(
            cfg.path.render(&key.user, key.device.as_deref()).as_deref(),
            Some("/v1/context?user=u1&device=d1")
        );
        let body = br#"{"user_id":"u1","device_id":"d1","consents":[],"risk_level":"high","tier":"standard"}"#;
        let e = lookup_result(&cfg, &key, Some(200), Some(body), NOW).unwrap();
        assert_eq!(e.ctx["device_id"], "d1");
        assert_eq!(
            e.h,
            vec![
                ("x-user-consent".to_string(), String::new()),
                ("x-user-risk".to_string(), "high".to_string())
            ]
        );
        for other in [
            &br#"{"user_id":"u1","device_id":"d2","consents":[],"risk_level":"high"}"#[..],
            br#"{"user_id":"u1","device_id":["d1"],"risk_level":"high"}"#,
            br#"{"user_id":"u1","device_id":1,"risk_level":"high"}"#,
            br#"{"user_id":["u1"],"device_id":"d1","risk_level":"high"}"#,
            br#"{"user_id":"u2","device_id":"d1","risk_level":"high"}"#,
        ] {
            assert_eq!(
                lookup_result(&cfg, &key, Some(200), Some(other), NOW),
                Err(LookupError::Mismatch),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn unsafe_header_values_are_not_set() {
        assert_eq!(header_value(&Value::String("a\r\nb".into())), None);
        assert_eq!(
            header_value(&serde_json::json!([1, "a", true])),
            Some("1,a,true".into())
        );
        assert_eq!(header_value(&serde_json::json!({"a": 1})), None);
    }

    #[test]
    fn issuer_cannot_override_reserved_claims() {
        let cfg = config(|_| {});
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let body =
            br#"{"user_id":"alice","sub":"root","exp":9999999999,"iss":"evil","risk_level":"low"}"#;
        let e = lookup_result(&cfg, &key, Some(200), Some(body), NOW).unwrap();
        let (_, claims) = verify_with_demo_jwks(&e.tok);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], "web");
        assert!(claims["exp"].as_u64().unwrap() < 9_999_999_999);
    }

    #[test]
    fn oversized_issuer_body_is_an_error() {
        let cfg = config(|c| c.issuer.max_response_bytes = 10);
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        assert_eq!(
            lookup_result(&cfg, &key, Some(200), Some(&issuer_body("alice")), NOW),
            Err(LookupError::BadBody)
        );
    }

    /// Arbitrary issuer answers: each is cached or refused, never a panic;
    /// a passport is always signed by the gateway's key, for the caller's
    /// user and the gateway as issuer, whatever the issuer's body claims; its
    /// forwarded header values are safe header values.
    mod arbitrary_input {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                prop::sample::select(vec![
                    "alice",
                    "mallory",
                    "low",
                    "high",
                    "marketing",
                    "a\r\nx-evil: 1",
                    ""
                ])
                .prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                "[a-z]{1000,1100}".prop_map(Value::from),
            ];
            leaf.prop_recursive(2, 10, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::vec(("[a-z_]{0,8}", inner), 0..3)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            let key = prop::sample::select(vec![
                "user_id",
                "device_id",
                "consents",
                "risk_level",
                "tier",
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "jti",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec((key, value()), 0..8).prop_map(|kv| {
                    let obj: Map<String, Value> =
                        kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    serde_json::to_vec(&Value::Object(obj)).unwrap()
                }),
                prop::collection::vec(any::<u8>(), 0..200),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: filter_core::testing::cases(256), failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn a_passport_always_names_the_caller_and_the_gateway(
                status in prop::option::of(prop::sample::select(vec![200u16, 200, 200, 404, 500, 302])),
                body in prop::option::of(body()),
                device in prop::option::of(prop::sample::select(vec!["dev-1", "dev-2"])),
            ) {
                let cfg = config(|_| {});
                let key = CacheKey { user: "alice".into(), device: device.map(String::from) };
                let Ok(entry) = lookup_result(&cfg, &key, status, body.as_deref(), NOW) else {
                    return Ok(());
                };
                prop_assert_eq!(&entry.k, &key.id());
                if entry.neg {
                    prop_assert_eq!(status, Some(404));
                    return Ok(());
                }
                let (header, claims) = verify_with_demo_jwks(&entry.tok);
                prop_assert_eq!(&header["kid"], "passport-2026-1");
                prop_assert_eq!(&claims["sub"], "alice");
                prop_assert_eq!(&claims["iss"], "web");
                prop_assert!(claims["exp"].as_u64() > claims["iat"].as_u64());
                if let Some(d) = &key.device {
                    prop_assert_eq!(&claims["device_id"], d.as_str());
                }
                for (name, v) in &entry.h {
                    prop_assert!(v.len() <= 1024 && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80), "{}: {:?}", name, v);
                }
            }
        }
    }
}
