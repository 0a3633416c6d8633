//! The remote-JWKS refresh loop of one worker, as a pure state machine.
//!
//! The root context drives it and only moves data: on every tick it calls
//! [`Refresher::tick`] and starts the HTTP fetches it is told to start
//! (`dispatch_http_call`), reporting each with [`Refresher::started`]; when
//! a fetch answers it hands status and body to [`Refresher::on_response`].
//! Everything else (which document is loaded, when it goes stale or
//! expires, who may fetch, what a response means) is decided here, over the
//! [`SharedData`] seam, and tested natively.
//!
//! Per provider with remote keys the loop:
//! 1. loads the process-wide copy (`jwt/jwks.v1/<name>`, see
//!    [`crate::remote`]) when its fetch time differs from the loaded one
//!    (generation bumped, so cached verifications with the old keys die);
//! 2. marks the loaded set stale past `cache_duration`, and drops it past
//!    `cache_duration + max_stale` (tokens of that provider then fail
//!    closed, logged once until keys are usable again);
//! 3. asks for a fetch when the copy is missing, older than 80 % of
//!    `cache_duration`, or a token named an unknown `kid`, unless one of
//!    this worker's fetches is in flight or another worker holds the lease.

use std::collections::HashMap;
use std::rc::Rc;

use filter_core::shared::SharedData;

use crate::config::{Compiled, Keys};
use crate::filter::ProviderKeys;
use crate::jwks::{self, Strictness};
use crate::remote::{self, Freshness};

/// What a fetch response led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The token is not one of this worker's fetches.
    NotOurs,
    /// Stored for every worker (and loaded here); `bytes` of JWKS.
    Stored { provider: usize, bytes: usize },
    /// Not usable: a status other than 200, a document without a usable
    /// key, or a store that refused it. The old keys stay.
    Failed { provider: usize, reason: String },
}

/// A fetch's answer as the host delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The call token `dispatch_http_call` returned.
    pub token: u32,
    /// `:status` ("" when the call failed without a response).
    pub status: &'a str,
    /// The body (empty when it was too large to read,
    /// [`jwks::MAX_JWKS_BYTES`]).
    pub body: &'a [u8],
}

/// One worker's refresh state (per provider, indexed like
/// `Compiled::providers`).
#[derive(Debug, Default)]
pub struct Refresher {
    /// Fetch time of the JWKS loaded in this worker.
    loaded_at: Vec<Option<u64>>,
    /// A fetch of this worker is in flight.
    in_flight: Vec<bool>,
    /// The "keys expired" error was logged (once per outage).
    warned_expired: Vec<bool>,
    /// In-flight fetches: call token → provider index.
    calls: HashMap<u32, usize>,
}

impl Refresher {
    /// For `providers` providers, nothing loaded or in flight.
    pub fn new(providers: usize) -> Self {
        Refresher {
            loaded_at: vec![None; providers],
            in_flight: vec![false; providers],
            warned_expired: vec![false; providers],
            calls: HashMap::new(),
        }
    }

    /// Steps 1–3 above for every remote provider. `kid_miss[i]`: a token of
    /// provider `i` named an unknown `kid` since the last tick. Returns the
    /// providers whose fetch this worker must start now (it holds their
    /// lease).
    pub fn tick<S: SharedData + ?Sized>(
        &mut self,
        cfg: &Compiled,
        keys: &mut [ProviderKeys],
        kid_miss: &[bool],
        store: &S,
        now: u64,
    ) -> Vec<usize> {
        let fetched = self.reload(cfg, keys, store, now);
        let mut fetch = Vec::new();
        for (pi, p) in cfg.providers.iter().enumerate() {
            let Keys::Remote(r) = &p.keys else { continue };
            let fetched_at = fetched.get(pi).copied().flatten();
            // 3. Fetch?
            let miss = kid_miss.get(pi).copied().unwrap_or(false);
            let busy = self.in_flight.get(pi).copied().unwrap_or(false);
            if busy || !remote::wants_fetch(r, fetched_at, now, miss) {
                continue;
            }
            match remote::take_lease(store, &p.name, now, remote::lease_secs(r)) {
                Ok(true) => fetch.push(pi),
                Ok(false) => {}
                Err(e) => log::warn!("jwt: JWKS lease for {}: {e}", p.name),
            }
        }
        fetch
    }

    /// Steps 1–2: loads newer shared copies and ages what is loaded.
    /// Returns each provider's shared copy's fetch time.
    fn reload<S: SharedData + ?Sized>(
        &mut self,
        cfg: &Compiled,
        keys: &mut [ProviderKeys],
        store: &S,
        now: u64,
    ) -> Vec<Option<u64>> {
        let mut fetched = vec![None; cfg.providers.len()];
        for (pi, p) in cfg.providers.iter().enumerate() {
            let Keys::Remote(r) = &p.keys else { continue };
            let raw = store
                .get(&remote::entry_key(&p.name))
                .ok()
                .and_then(|(v, _)| v);
            let entry = raw.as_deref().and_then(remote::decode_entry);
            let fetched_at = entry.map(|(t, _)| t);
            // 1. A newer document than the loaded one.
            if let Some((t, body)) = entry {
                if self.loaded_at.get(pi).copied().flatten() != Some(t) {
                    match jwks::parse(body, &p.algorithms, Strictness::SkipBadKeys) {
                        Ok(set) => {
                            if let Some(k) = keys.get_mut(pi) {
                                k.set = Some(Rc::new(set));
                                k.generation = k.generation.wrapping_add(1);
                            }
                            if let Some(l) = self.loaded_at.get_mut(pi) {
                                *l = Some(t);
                            }
                        }
                        Err(e) => log::warn!("jwt: shared JWKS of {} unusable: {e}", p.name),
                    }
                }
            }
            // 2. Freshness of what is loaded.
            if let Some(t) = self.loaded_at.get(pi).copied().flatten() {
                let f = remote::freshness(r, t, now);
                if let Some(k) = keys.get_mut(pi) {
                    k.stale = f == Freshness::Stale;
                    let warned = self.warned_expired.get_mut(pi);
                    if f == Freshness::Expired {
                        if k.set.is_some() {
                            k.set = None;
                            k.generation = k.generation.wrapping_add(1);
                            if let Some(w) = warned {
                                if !std::mem::replace(w, true) {
                                    log::error!(
                                        "jwt: JWKS of {} is older than its stale limit; refusing its tokens",
                                        p.name
                                    );
                                }
                            }
                        }
                    } else if let Some(w) = warned {
                        *w = false;
                    }
                }
            }
            if let Some(f) = fetched.get_mut(pi) {
                *f = fetched_at;
            }
        }
        fetched
    }

    /// The fetch of `provider` started as call `token`.
    pub fn started(&mut self, token: u32, provider: usize) {
        self.calls.insert(token, provider);
        if let Some(f) = self.in_flight.get_mut(provider) {
            *f = true;
        }
    }

    /// A fetch answered. A usable document is stored for every worker and
    /// loaded here at once.
    pub fn on_response<S: SharedData + ?Sized>(
        &mut self,
        answer: Answer<'_>,
        cfg: &Compiled,
        keys: &mut [ProviderKeys],
        store: &S,
        now: u64,
    ) -> Response {
        let Answer {
            token,
            status,
            body,
        } = answer;
        let Some(pi) = self.calls.remove(&token) else {
            return Response::NotOurs;
        };
        if let Some(f) = self.in_flight.get_mut(pi) {
            *f = false;
        }
        let Some(p) = cfg.providers.get(pi) else {
            return Response::NotOurs;
        };
        let failed = |reason: String| Response::Failed {
            provider: pi,
            reason,
        };
        if status != "200" {
            return failed(format!("answered status {status:?}"));
        }
        if let Err(e) = jwks::parse(body, &p.algorithms, Strictness::SkipBadKeys) {
            return failed(format!("the document is unusable: {e}"));
        }
        let entry = remote::encode_entry(now, body);
        if let Err(e) = store.set(&remote::entry_key(&p.name), &entry, None) {
            return failed(format!("storing it failed: {e}"));
        }
        // Load it here now (the other workers do on their next tick); no
        // fetch starts from here (a lease taken here would go unused).
        self.reload(cfg, keys, store, now);
        Response::Stored {
            provider: pi,
            bytes: body.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::shared::MemorySharedData;
    use serde_json::json;

    const JWKS: &str = include_str!("../../../examples/keys/jwks.json");

    /// The shipped remote-JWKS config: cache 300 s (refresh after 240 s),
    /// stale for 600 s more, retries every 5 s.
    fn config() -> Compiled {
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../../examples/config/jwt/web-remote-jwks.json"
        ))
        .unwrap();
        v["providers"][0]["jwks"]["remote"]["cache_duration"] = json!("300s");
        v["providers"][0]["jwks"]["remote"]["max_stale"] = json!("600s");
        v["providers"][0]["jwks"]["remote"]["retry_interval"] = json!("5s");
        crate::config::load(v.to_string().as_bytes()).unwrap()
    }

    struct Worker {
        r: Refresher,
        keys: Vec<ProviderKeys>,
    }

    impl Worker {
        fn new(cfg: &Compiled, store: &MemorySharedData) -> Self {
            for p in &cfg.providers {
                remote::ensure_keys(store, &p.name).unwrap();
            }
            Worker {
                r: Refresher::new(cfg.providers.len()),
                keys: cfg
                    .providers
                    .iter()
                    .map(|p| ProviderKeys::initial(&p.keys))
                    .collect(),
            }
        }
        /// A worker that fetched the JWKS at t = 1000 (call 1).
        fn loaded(cfg: &Compiled, store: &MemorySharedData) -> Self {
            let mut w = Worker::new(cfg, store);
            assert_eq!(w.tick(cfg, store, 1000, false), vec![0]);
            w.r.started(1, 0);
            w.answer(cfg, store, 1, "200", JWKS, 1000);
            w
        }

        fn tick(
            &mut self,
            cfg: &Compiled,
            store: &MemorySharedData,
            now: u64,
            miss: bool,
        ) -> Vec<usize> {
            self.r.tick(cfg, &mut self.keys, &[miss], store, now)
        }
        fn answer(
            &mut self,
            cfg: &Compiled,
            store: &MemorySharedData,
            token: u32,
            status: &str,
            body: &str,
            now: u64,
        ) -> Response {
            let answer = Answer {
                token,
                status,
                body: body.as_bytes(),
            };
            self.r.on_response(answer, cfg, &mut self.keys, store, now)
        }
    }

    #[test]
    fn a_worker_without_keys_fetches_once_and_loads_what_it_fetched() {
        let cfg = config();
        let store = MemorySharedData::new();
        let mut w = Worker::new(&cfg, &store);
        assert!(w.keys[0].set.is_none(), "no keys before the first fetch");
        assert_eq!(w.tick(&cfg, &store, 1000, false), vec![0]);
        w.r.started(7, 0);
        assert_eq!(
            w.tick(&cfg, &store, 1001, false),
            Vec::<usize>::new(),
            "in flight"
        );
        let got = w.answer(&cfg, &store, 7, "200", JWKS, 1001);
        assert_eq!(
            got,
            Response::Stored {
                provider: 0,
                bytes: JWKS.len()
            }
        );
        let k = &w.keys[0];
        assert!(k.set.is_some() && !k.stale);
        assert_eq!(k.generation, 1);
    }

    #[test]
    fn one_fetch_serves_every_worker_and_only_the_lease_holder_fetches() {
        let cfg = config();
        let store = MemorySharedData::new();
        let mut a = Worker::new(&cfg, &store);
        let mut b = Worker::new(&cfg, &store);
        assert_eq!(a.tick(&cfg, &store, 1000, false), vec![0]);
        assert_eq!(
            b.tick(&cfg, &store, 1000, false),
            Vec::<usize>::new(),
            "a holds the lease"
        );
        a.r.started(1, 0);
        a.answer(&cfg, &store, 1, "200", JWKS, 1000);
        assert_eq!(b.tick(&cfg, &store, 1001, false), Vec::<usize>::new());
        assert!(b.keys[0].set.is_some(), "b loads the shared copy");
    }

    #[test]
    fn a_failed_fetch_keeps_the_old_keys_and_is_retried_after_the_lease() {
        let cfg = config();
        let store = MemorySharedData::new();
        let mut w = Worker::loaded(&cfg, &store);
        // Due for a refresh at 80 % of 300 s.
        assert_eq!(w.tick(&cfg, &store, 1239, false), Vec::<usize>::new());
        assert_eq!(w.tick(&cfg, &store, 1240, false), vec![0]);
        for (status, body) in [
            ("503", "{}"),
            ("200", "not json"),
            ("200", r#"{"keys":[]}"#),
        ] {
            w.r.started(2, 0);
            let got = w.answer(&cfg, &store, 2, status, body, 1241);
            assert!(
                matches!(got, Response::Failed { provider: 0, .. }),
                "{status} {body}: {got:?}"
            );
            assert!(w.keys[0].set.is_some(), "the old keys stay");
        }
        // The lease (5 s retry, +1) blocks a new fetch until it runs out.
        assert_eq!(w.tick(&cfg, &store, 1245, false), Vec::<usize>::new());
        assert_eq!(w.tick(&cfg, &store, 1247, false), vec![0]);
    }

    #[test]
    fn keys_go_stale_then_expire_and_tokens_fail_closed() {
        let cfg = config();
        let store = MemorySharedData::new();
        let mut w = Worker::loaded(&cfg, &store);
        let generation = w.keys[0].generation;
        w.r.started(99, 0); // every later fetch stays in flight (never answers)
        w.tick(&cfg, &store, 1300, false);
        assert!(
            w.keys[0].stale && w.keys[0].set.is_some(),
            "past cache_duration: stale"
        );
        w.tick(&cfg, &store, 1900, false);
        assert!(w.keys[0].set.is_none(), "past max_stale: dropped");
        assert_eq!(
            w.keys[0].generation,
            generation + 1,
            "cached verifications die"
        );
        w.tick(&cfg, &store, 1901, false);
        assert_eq!(w.keys[0].generation, generation + 1, "dropped once");
        // A fetch that succeeds brings them back.
        w.answer(&cfg, &store, 99, "200", JWKS, 1902);
        assert!(w.keys[0].set.is_some() && !w.keys[0].stale);
    }

    #[test]
    fn an_unknown_kid_asks_for_a_fetch_before_the_refresh_is_due() {
        let cfg = config();
        let store = MemorySharedData::new();
        let mut w = Worker::loaded(&cfg, &store);
        assert_eq!(w.tick(&cfg, &store, 1010, false), Vec::<usize>::new());
        assert_eq!(w.tick(&cfg, &store, 1010, true), vec![0]);
        // ... but no more often than the lease allows (a kid flood).
        w.r.started(2, 0);
        w.answer(&cfg, &store, 2, "503", "", 1011);
        assert_eq!(w.tick(&cfg, &store, 1012, true), Vec::<usize>::new());
    }

    #[test]
    fn a_response_to_a_call_it_did_not_start_is_ignored() {
        let cfg = config();
        let store = MemorySharedData::new();
        let mut w = Worker::new(&cfg, &store);
        assert_eq!(
            w.answer(&cfg, &store, 42, "200", JWKS, 1000),
            Response::NotOurs
        );
        assert!(w.keys[0].set.is_none());
    }
}
