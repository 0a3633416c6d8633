//! passport's decisions as pure functions, no host call: what the request
//! headers get ([`decide_headers`]: the verified identity, the shared cache
//! behind the `SharedData` seam and the clock in; header edits and the next
//! step out) and how a request ends once its context is known
//! ([`resolve`]: edits, and the denial for a refusal). The host adapters
//! (`filter::on_request_headers`, `filter::finish`) apply them, so every
//! build (per-filter module, suite, chain) runs the same code.

use filter_core::headers::PASSPORT;
use filter_core::identity::Identity;
use filter_core::request::Edits;
use filter_core::shared::SharedData;
use filter_core::Denial;

use crate::cache::{self, CacheKey, Entry, Probe};
use crate::config::{Compiled, OnUnknownUser};
use crate::filter::{sign, Finished, Resolution};

/// A request's next step after its headers.
#[derive(Debug, Clone, PartialEq)]
pub enum Headers {
    /// No verified identity (or none with a user): forwarded, no lookup.
    NoIdentity,
    /// Served from the cache.
    Hit,
    /// Waits for a lookup; `coalesced` when one was already under way.
    Wait { key: CacheKey, coalesced: bool },
    /// Ends at once (the cache's negative or failure state).
    Done(Resolved),
}

/// The request-headers decision: the edits first, then the step.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersDecision {
    pub edits: Edits,
    pub step: Headers,
}

/// How a request ends: its header edits, the denial to send (and log), and
/// what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub edits: Edits,
    /// A refusal (in dry run: only logged, the request goes on).
    pub denial: Option<Denial>,
    pub finished: Finished,
}

/// The passport and the entry's headers. Setting replaces every value a
/// client sent under the name; configured headers the entry has no value
/// for are removed, so no client copy survives.
fn forward(cfg: &Compiled, e: &Entry, token: &str, edits: &mut Edits) {
    edits.set.push((PASSPORT.to_string(), token.to_string()));
    for (n, v) in &e.h {
        edits.set.push((n.clone(), v.clone()));
    }
    for (name, _) in &cfg.headers {
        if !e.h.iter().any(|(n, _)| n == name) {
            edits.remove(name);
        }
    }
}

/// Removes the passport header and every configured context header.
fn strip_client_copies(cfg: &Compiled, edits: &mut Edits) {
    edits.remove(PASSPORT);
    for (name, _) in &cfg.headers {
        edits.remove(name);
    }
}

/// The decision on the request headers. `identity`: what a verifying filter
/// handed over (never a client header); `now_ms`: the clock, asked for only
/// when the cache is probed; `waiting_locally`: whether a request on this
/// worker already waits for the same key.
pub fn decide_headers<S: SharedData + ?Sized>(
    cfg: &Compiled,
    store: &S,
    identity: Option<Identity>,
    now_ms: impl FnOnce() -> u64,
    waiting_locally: impl Fn(&CacheKey) -> bool,
) -> HeadersDecision {
    let mut edits = Edits::default();
    // Whatever the client sent under our names never reaches the upstream:
    // on a cache hit `forward` replaces or removes each of them; every other
    // path strips them first.
    let caller = identity.and_then(|i| {
        let user = i.user.filter(|u| !u.is_empty())?;
        Some((user, i.device))
    });
    let Some((user, device)) = caller else {
        strip_client_copies(cfg, &mut edits);
        return HeadersDecision {
            edits,
            step: Headers::NoIdentity,
        };
    };
    let key = CacheKey {
        user,
        device: device.filter(|d| !d.is_empty()),
    };
    if !cfg.path.renders(&key.user, key.device.as_deref()) {
        // An identity the lookup path cannot carry (`..` as a path
        // segment): the issuer is never asked, the caller has no context.
        strip_client_copies(cfg, &mut edits);
        let r = resolve(cfg, &Resolution::Unknown, || 0);
        return HeadersDecision {
            edits,
            step: Headers::Done(r),
        };
    }
    let id = key.id();
    let now = now_ms();
    let index = key.slot(cfg.slots);
    let slot = cache::read_memo(store, &cache::slot_name(&cfg.gateway, index), index);
    let probe = cache::probe(&slot, &id, now, now, cfg);
    if !matches!(probe, Probe::Fresh(_)) {
        strip_client_copies(cfg, &mut edits);
    }
    let step = match probe {
        Probe::Fresh(e) => {
            forward(cfg, e, &e.tok, &mut edits);
            Headers::Hit
        }
        Probe::Unknown => Headers::Done(resolve(cfg, &Resolution::Unknown, || now / 1000)),
        Probe::Failed => {
            let res = Resolution::Unavailable(cache::stale(&slot, &id, now, cfg).cloned());
            Headers::Done(resolve(cfg, &res, || now / 1000))
        }
        Probe::InFlight => Headers::Wait {
            key,
            coalesced: true,
        },
        Probe::Start => {
            let coalesced = waiting_locally(&key);
            Headers::Wait { key, coalesced }
        }
    };
    HeadersDecision { edits, step }
}

/// How a request ends once its context is known. `now_s`: the clock in Unix
/// seconds, asked for only to re-sign a stale passport.
pub fn resolve(cfg: &Compiled, res: &Resolution, now_s: impl FnOnce() -> u64) -> Resolved {
    let mut edits = Edits::default();
    let (denial, finished) = match res {
        Resolution::Passport(e) => {
            forward(cfg, e, &e.tok, &mut edits);
            (None, Finished::Passport)
        }
        Resolution::Unknown => match cfg.on_unknown_user {
            OnUnknownUser::Continue => (None, Finished::UnknownForwarded),
            OnUnknownUser::Deny => (
                Some(Denial::forbidden(
                    "unknown_user",
                    "the caller has no user context",
                )),
                if cfg.dry_run {
                    Finished::UnknownDryRun
                } else {
                    Finished::UnknownDenied
                },
            ),
        },
        Resolution::Unavailable(Some(e)) => {
            // The cached token may have expired: re-sign the cached context
            // with a fresh iat/exp; ctx_iat still says how old it is.
            let tok = sign(cfg, &e.ctx, now_s());
            forward(cfg, e, &tok, &mut edits);
            (None, Finished::Stale)
        }
        Resolution::Unavailable(None) => (
            Some(
                Denial::unavailable(
                    "passport_unavailable",
                    "the user context could not be looked up; retry later",
                )
                .with_header("retry-after", cfg.retry_after.clone()),
            ),
            if cfg.dry_run {
                Finished::UnavailableDryRun
            } else {
                Finished::Unavailable
            },
        ),
    };
    Resolved {
        edits,
        denial,
        finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::lookup_result;
    use crate::filter::tests::config;
    use filter_core::identity::Source;
    use filter_core::shared::MemorySharedData;

    const NOW: u64 = 1_750_000_000_000;

    fn alice() -> Option<Identity> {
        let mut id = Identity::new(Source::Jwt);
        id.user = Some("alice".into());
        Some(id)
    }

    fn entry(cfg: &Compiled) -> Entry {
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "user_id": "alice", "consents": ["marketing"], "risk_level": "low"
        }))
        .unwrap();
        lookup_result(cfg, &key, Some(200), Some(&body), NOW).unwrap()
    }

    #[test]
    fn without_an_identity_the_client_copies_go_and_the_clock_is_not_read() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let d = decide_headers(&cfg, &store, None, || panic!("no clock"), |_| false);
        assert_eq!(d.step, Headers::NoIdentity);
        assert!(d.edits.remove.iter().any(|n| n == PASSPORT));
        assert!(d.edits.set.is_empty());
    }

    #[test]
    fn a_miss_waits_and_a_cached_context_is_forwarded() {
        let cfg = config(|_| {});
        let store = MemorySharedData::new();
        let d = decide_headers(&cfg, &store, alice(), || NOW, |_| false);
        assert!(
            matches!(
                d.step,
                Headers::Wait {
                    coalesced: false,
                    ..
                }
            ),
            "{d:?}"
        );
        let e = entry(&cfg);
        let tok = e.tok.clone();
        let key = CacheKey {
            user: "alice".into(),
            device: None,
        };
        crate::filter::complete(&cfg, &store, &key, &Ok(e), NOW);
        let d = decide_headers(&cfg, &store, alice(), || NOW + 1, |_| false);
        assert_eq!(d.step, Headers::Hit);
        assert!(d.edits.set.contains(&(PASSPORT.to_string(), tok)));
        assert!(d
            .edits
            .set
            .contains(&("x-user-risk".to_string(), "low".to_string())));
    }

    #[test]
    fn an_unknown_user_is_refused_or_in_dry_run_only_logged() {
        let cfg = config(|_| {});
        let r = resolve(&cfg, &Resolution::Unknown, || panic!("no clock"));
        assert_eq!(r.finished, Finished::UnknownDenied);
        assert_eq!(
            r.denial.as_ref().map(|d| (d.status, d.code)),
            Some((403, "unknown_user"))
        );
        let dry = config(|c| c.dry_run = true);
        let r = resolve(&dry, &Resolution::Unknown, || 0);
        assert_eq!(r.finished, Finished::UnknownDryRun);
        assert!(r.denial.is_some(), "logged as a would-deny");
    }

    #[test]
    fn a_stale_context_is_re_signed_at_the_given_time() {
        let cfg = config(|_| {});
        let e = entry(&cfg);
        let r = resolve(&cfg, &Resolution::Unavailable(Some(e.clone())), || {
            NOW / 1000 + 60
        });
        assert_eq!(r.finished, Finished::Stale);
        let tok = r
            .edits
            .set
            .iter()
            .find(|(n, _)| n == PASSPORT)
            .map(|(_, v)| v.clone())
            .unwrap();
        assert_ne!(tok, e.tok, "freshly signed");
        let r = resolve(&cfg, &Resolution::Unavailable(None), || 0);
        assert_eq!(r.denial.map(|d| d.status), Some(503));
    }
}
