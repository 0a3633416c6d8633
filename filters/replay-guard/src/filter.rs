//! replay-guard's per-request host adapters: read the request through
//! [`HttpHost`] (the header map once, the `:path` and body sanitize saved,
//! the clock), call the pure decision core in [`decide`], apply its
//! [`Ruling`], and keep what the glue in `lib.rs` needs for metrics and
//! reports ([`Request::outcome`], [`Request::report`], [`Request::names`]).
//! Runs natively against [`filter_core::host::FakeHost`] /
//! [`filter_core::shared::MemorySharedData`] and in Envoy through the thin
//! proxy-wasm glue.
//!
//! Order of checks (cheap and client-independent first; nothing is recorded
//! before the signature verifies):
//! 1. route: open routes pass untouched;
//! 2. `Signature-Input` / `Signature` parsed, label chosen, parameters read;
//! 3. `created` window, `expires`, nonce length;
//! 4. key id syntax, expiry, lifetime;
//! 5. coverage: the route's components, `@query` when there is a query,
//!    `content-digest` when there is a body or a digest header;
//! 6. HMAC over the signature base with the derived key(s), constant time;
//! 7. (body) buffered with the headers held; `Content-Digest` checked;
//! 8. nonce recorded in the shared store (replay → 401);
//! 9. identity published for fds-block and passport; the request continues.

pub mod decide;

use filter_core::decision::{self, Decision, RouteNames};
use filter_core::request::RequestView;
use filter_core::shared::SharedData;
use filter_core::{original, HttpHost, Verdict};

use crate::config::Compiled;
use crate::report::Event;

pub use decide::{
    decide_body, decide_body_chunk, decide_headers, finish_claim, BodyChunk, BodyState, BodyStep,
    HeadersStep, Outcome, PendingNonce, Ruling, Verified, CONTENT_DIGEST, SIGNATURE,
    SIGNATURE_INPUT,
};
use filter_core::store::ClaimAnswer;

/// Per-request state.
#[derive(Debug, Default)]
pub struct Request {
    request_id: Option<String>,
    method: String,
    /// The verified signature while the headers are held for the body.
    pending: Option<BodyState>,
    pub outcome: Outcome,
    /// A suspicious event for the FDS service, taken by the glue (which
    /// coalesces events per suspect, [`crate::coalesce`]).
    pub report: Option<Event>,
    /// Envoy gateway/route names, read on a denial (decision log) and
    /// reused by the glue for the metric labels.
    pub names: Option<RouteNames>,
    /// A verified request waiting for its nonce claim in the shared store:
    /// taken by the glue ([`Request::take_claim`]), which sends it and
    /// calls [`Request::on_claim_answer`].
    claim: Option<Box<PendingNonce>>,
    /// What the shared store answered (metrics).
    pub claim_answer: Option<ClaimAnswer>,
    /// The first-level cache refused a replay without a round trip.
    pub local_replay: bool,
}

impl Request {
    /// Applies a ruling: the report (with the client address, one property
    /// read), the decision log line on a refusal (dry run included; two
    /// property reads, and the header map unless `headers` is given), then
    /// the identity hand-over or the local reply.
    fn settle<H: HttpHost>(
        &mut self,
        host: &mut H,
        ruling: Ruling,
        headers: Option<&[(String, String)]>,
    ) -> Verdict {
        let Ruling {
            decision: apply,
            outcome,
            report,
            dry_run_denial,
            claim,
            local_replay,
        } = ruling;
        self.outcome = outcome;
        self.claim_answer = claim;
        self.local_replay = local_replay;
        if let Some(mut event) = report {
            event.client = host
                .property(&["source", "address"])
                .and_then(|b| String::from_utf8(b).ok());
            self.report = Some(event);
        } else if dry_run_denial.is_some() {
            self.report = None;
        }
        if let Some(d) = apply.denial().or(dry_run_denial.as_ref()) {
            self.pending = None;
            // Denial path only: two property reads (and one header read).
            let names = decision::route_names(&*host);
            let trace_id = match headers {
                Some(h) => decision::trace_id(h),
                None => decision::trace_id(&host.request_headers()),
            };
            Decision::denial("replay-guard", &self.method, d.status, d.code)
                .dry_run(dry_run_denial.is_some())
                .at(&names)
                .request_id(self.request_id.as_deref())
                .trace_id(trace_id.as_deref())
                .emit();
            self.names = Some(names);
        }
        apply.apply(host, self.request_id.as_deref())
    }

    /// Request headers arrived.
    pub fn on_headers<H: HttpHost, S: SharedData + ?Sized>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        store: &S,
        end_of_stream: bool,
    ) -> Verdict {
        let all = host.request_headers();
        let view = RequestView::new(&all);
        self.method = view.method.to_string();
        self.request_id = view.request_id.map(str::to_string);
        // The signature covers what the client sent: sanitize saves the
        // original :path before it rewrites the query.
        let saved = original::path(host);
        let now = host.unix_seconds();
        match decide_headers(cfg, &view, saved.as_deref(), store, now, end_of_stream) {
            HeadersStep::WaitBody(state) => {
                // Hold the headers until the body is checked: a request
                // that fails reaches the upstream not at all.
                self.pending = Some(state);
                Verdict::WaitBody
            }
            HeadersStep::Done(ruling) => self.settle(host, ruling, Some(&all)),
            HeadersStep::Claim(p) => {
                self.claim = Some(p);
                Verdict::WaitCallout
            }
        }
    }

    /// The pending nonce claim, for the glue to send (once).
    pub fn take_claim(&mut self) -> Option<Box<PendingNonce>> {
        self.claim.take()
    }

    /// The shared store answered the claim the glue took: decide and apply.
    pub fn on_claim_answer<H: HttpHost, S: SharedData + ?Sized>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        store: &S,
        pending: PendingNonce,
        answer: ClaimAnswer,
    ) -> Verdict {
        let now = host.unix_seconds();
        let ruling = finish_claim(cfg, pending, answer, store, now);
        self.settle(host, ruling, None)
    }

    /// Request body data arrived; `buffered` is everything buffered so far.
    pub fn on_body<H: HttpHost, S: SharedData + ?Sized>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        store: &S,
        buffered: usize,
        end_of_stream: bool,
    ) -> Verdict {
        if matches!(self.outcome, Outcome::Denied(_)) {
            return Verdict::Responded;
        }
        let Some(state) = &self.pending else {
            return Verdict::Continue;
        };
        match decide_body_chunk(cfg, state, buffered, end_of_stream) {
            BodyChunk::Wait => Verdict::WaitBody,
            BodyChunk::Refuse(ruling) => self.settle(host, ruling, None),
            BodyChunk::Complete => {
                let Some(state) = self.pending.take() else {
                    return Verdict::Continue;
                };
                // sanitize saves the client's body before it re-encodes it.
                let body = if state.needs_body() {
                    original::body(host)
                        .or_else(|| host.request_body(cfg.max_body_bytes as usize))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let now = host.unix_seconds();
                match decide_body(cfg, state, &body, store, now) {
                    BodyStep::Done(ruling) => self.settle(host, ruling, None),
                    BodyStep::Claim(p) => {
                        self.claim = Some(p);
                        Verdict::WaitCallout
                    }
                }
            }
        }
    }

    /// Trailers arrived: the body is complete.
    pub fn on_trailers<H: HttpHost, S: SharedData + ?Sized>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        store: &S,
        buffered: usize,
    ) -> Verdict {
        self.on_body(cfg, host, store, buffered, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::keyid::hmac_sha256;
    use crate::report::ReportKind;
    use base64::Engine;
    use filter_core::host::FakeHost;
    use filter_core::identity::{Identity, Source};
    use filter_core::shared::MemorySharedData;
    use sha2::{Digest, Sha256};

    const MASTER_B64: &str = "6uVwr+zo9rh/CyU3BUNq4p0/wad99gc4EK4KZJgK1wc=";
    const OLD_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const NOW: u64 = 1_750_000_000;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }
    fn master() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(MASTER_B64)
            .unwrap()
    }

    fn cfg() -> Compiled {
        let env = |n: &str| match n {
            "V2" => Some(MASTER_B64.to_string()),
            "V1" => Some(OLD_B64.to_string()),
            _ => None,
        };
        load(
            br#"{
              "master_secrets": [{"version": "v2", "env": "V2"}, {"version": "v1", "env": "V1"}],
              "routes": [
                {"name": "health", "prefix": "/health", "exact": true, "open": true},
                {"name": "api", "prefix": "/api/v1/"}
              ],
              "nonce_store": {"max_entries": 4160, "shards": 4},
              "max_body_bytes": 1024,
              "reports": {"cluster": "fds"}
            }"#,
            &env,
        )
        .unwrap()
    }

    fn store(c: &Compiled) -> MemorySharedData {
        let s = MemorySharedData::new();
        c.store.create_keys(&s).unwrap();
        s
    }

    /// An independent signer: builds the base by hand.
    struct Signer {
        method: &'static str,
        path: String,
        body: Option<Vec<u8>>,
        keyid: String,
        nonce: String,
        created: u64,
        components: Vec<&'static str>,
        master: Vec<u8>,
        digest_header: bool,
    }

    impl Signer {
        fn get(path: &str) -> Self {
            let has_q = path.contains('?');
            let mut components = vec!["@method", "@authority", "@path"];
            if has_q {
                components.push("@query");
            }
            Signer {
                method: "GET",
                path: path.into(),
                body: None,
                keyid: format!("phone-1:alice:{}", NOW + 600),
                nonce: "nonce-0001".into(),
                created: NOW,
                components,
                master: master(),
                digest_header: false,
            }
        }
        fn post(path: &str, body: &[u8]) -> Self {
            let mut s = Self::get(path);
            s.method = "POST";
            s.body = Some(body.to_vec());
            s.components.push("content-digest");
            s.digest_header = true;
            s
        }
        fn host(&self) -> FakeHost {
            let mut h = FakeHost::request(self.method, &self.path);
            h.time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW);
            let digest = self
                .body
                .as_ref()
                .map(|b| format!("sha-256=:{}:", b64(&Sha256::digest(b))));
            let (path, query) = match self.path.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (self.path.clone(), None),
            };
            let mut lines = String::new();
            for c in &self.components {
                let v = match *c {
                    "@method" => self.method.to_string(),
                    "@authority" => "gateway.test".to_string(),
                    "@path" => path.clone(),
                    "@query" => format!("?{}", query.clone().unwrap_or_default()),
                    "content-digest" => digest.clone().unwrap_or_default(),
                    other => panic!("{other}"),
                };
                lines.push_str(&format!("\"{c}\": {v}\n"));
            }
            let list: Vec<String> = self.components.iter().map(|c| format!("\"{c}\"")).collect();
            let params = format!(
                "({});created={};keyid=\"{}\";nonce=\"{}\"",
                list.join(" "),
                self.created,
                self.keyid,
                self.nonce
            );
            let base = format!("{lines}\"@signature-params\": {params}");
            let key = hmac_sha256(&self.master, self.keyid.as_bytes());
            let sig = hmac_sha256(&key, base.as_bytes());
            h = h
                .with_header("signature-input", &format!("app={params}"))
                .with_header("signature", &format!("app=:{}:", b64(&sig)));
            if let (true, Some(d)) = (self.digest_header, digest) {
                h = h.with_header("content-digest", &d);
            }
            if let Some(b) = &self.body {
                h = h
                    .with_header("content-length", &b.len().to_string())
                    .with_body(b);
            }
            h
        }
    }

    /// Runs headers (and body) through the filter.
    fn run(c: &Compiled, s: &MemorySharedData, h: &mut FakeHost) -> (Verdict, Request) {
        let mut r = Request::default();
        let has_body = !h.body.is_empty();
        let v = r.on_headers(c, h, s, !has_body);
        if v != Verdict::WaitBody {
            return (v, r);
        }
        let n = h.body.len();
        let v = r.on_body(c, h, s, n, true);
        (v, r)
    }

    fn denied(c: &Compiled, s: &MemorySharedData, h: &mut FakeHost) -> (String, Request) {
        let (v, r) = run(c, s, h);
        assert_eq!(v, Verdict::Responded, "{:?}", r.outcome);
        let resp = h.response.as_ref().unwrap();
        assert_eq!(resp.status, 401, "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.header("x-request-id"), Some("test-rid"));
        let code = resp.json()["error"].as_str().unwrap().to_string();
        assert!(resp.json()["message"].as_str().is_some());
        (code, r)
    }

    /// The config above with a shared store.
    fn shared_cfg(on_unavailable: &str) -> Compiled {
        let mut c = cfg();
        c.shared_store = Some(
            serde_json::from_value::<filter_core::store::SharedStoreConfig>(serde_json::json!({
                "cluster": "gateway_store", "namespace": "app.replay-guard",
                "on_unavailable": on_unavailable
            }))
            .unwrap()
            .compile("shared_store")
            .unwrap(),
        );
        c
    }

    /// Headers and body with a shared store, up to the claim.
    fn run_to_claim(c: &Compiled, s: &MemorySharedData, h: &mut FakeHost) -> (Verdict, Request) {
        run(c, s, h)
    }

    #[test]
    fn with_a_shared_store_a_verified_request_waits_for_its_nonce_claim() {
        let (c, s) = (shared_cfg("deny"), store(&cfg()));
        // no body: claimed from the headers step
        let mut h = Signer::get("/api/v1/users/7").host();
        let (v, mut r) = run_to_claim(&c, &s, &mut h);
        assert_eq!(v, Verdict::WaitCallout);
        assert!(h.response.is_none() && Identity::read(&h).is_none());
        let p = r.take_claim().unwrap();
        assert!(r.take_claim().is_none(), "taken once");
        assert_eq!(
            p.claim.key,
            crate::nonce::claim_key("phone-1:alice:1750000600", "nonce-0001")
        );
        // remembered while `created` is inside the window, plus skew
        assert_eq!(p.claim.ttl_ms, (c.max_age + c.max_skew + 1) * 1000);
        let v = r.on_claim_answer(&c, &mut h, &s, *p, ClaimAnswer::Claimed);
        assert_eq!((v, r.outcome), (Verdict::Continue, Outcome::Verified));
        assert_eq!(r.claim_answer, Some(ClaimAnswer::Claimed));
        assert_eq!(Identity::read(&h).unwrap().user.as_deref(), Some("alice"));
        // the same request again on this replica: refused from the cache
        let mut h = Signer::get("/api/v1/users/7").host();
        let (v, r) = run_to_claim(&c, &s, &mut h);
        assert_eq!(v, Verdict::Responded);
        assert!(r.local_replay);
        assert_eq!(h.response.unwrap().json()["error"], "replay");
        assert_eq!(r.report.unwrap().kind, ReportKind::Replay);
        // with a body: claimed after the digest step
        let mut signer = Signer::post("/api/v1/orders", br#"{"quantity":1}"#);
        signer.nonce = "nonce-0002".into();
        let mut h = signer.host();
        let (v, mut r) = run_to_claim(&c, &s, &mut h);
        assert_eq!(v, Verdict::WaitCallout);
        assert!(r.take_claim().is_some());
    }

    #[test]
    fn a_nonce_claimed_on_another_replica_is_a_reported_replay() {
        let (c, s) = (shared_cfg("deny"), store(&cfg()));
        let mut h = Signer::get("/api/v1/users/7").host();
        let (_, mut r) = run_to_claim(&c, &s, &mut h);
        let p = r.take_claim().unwrap();
        assert_eq!(
            r.on_claim_answer(&c, &mut h, &s, *p, ClaimAnswer::Taken),
            Verdict::Responded
        );
        assert_eq!(r.outcome, Outcome::Denied("replay"));
        assert_eq!(h.response.as_ref().unwrap().status, 401);
        let rep = r.report.unwrap();
        assert_eq!((rep.kind, rep.verified), (ReportKind::Replay, true));
    }

    #[test]
    fn no_answer_from_the_shared_store_is_503_with_retry_after_unless_the_local_fallback_is_chosen()
    {
        let (c, s) = (shared_cfg("deny"), store(&cfg()));
        let mut h = Signer::get("/api/v1/users/7").host();
        let (_, mut r) = run_to_claim(&c, &s, &mut h);
        let p = r.take_claim().unwrap();
        r.on_claim_answer(&c, &mut h, &s, *p, ClaimAnswer::Unavailable);
        let resp = h.response.unwrap();
        assert_eq!((resp.status, resp.header("retry-after")), (503, Some("1")));
        assert_eq!(resp.json()["error"], "replay_check_unavailable");
        assert!(r.report.is_none(), "not the client's fault: no report");
        // nothing was burnt: the retry asks again
        let mut h = Signer::get("/api/v1/users/7").host();
        assert_eq!(run_to_claim(&c, &s, &mut h).0, Verdict::WaitCallout);

        let c = shared_cfg("local");
        let s = store(&c);
        for expected in [Verdict::Continue, Verdict::Responded] {
            let mut h = Signer::get("/api/v1/users/7").host();
            let (v, mut r) = run_to_claim(&c, &s, &mut h);
            let v = match r.take_claim() {
                Some(p) => r.on_claim_answer(&c, &mut h, &s, *p, ClaimAnswer::Unavailable),
                None => v,
            };
            assert_eq!(v, expected);
        }
    }

    #[test]
    fn a_valid_get_passes_and_publishes_the_identity() {
        let (c, s) = (cfg(), store(&cfg()));
        let mut h = Signer::get("/api/v1/users/7?size=10").host();
        let (v, r) = run(&c, &s, &mut h);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(r.outcome, Outcome::Verified);
        assert!(h.response.is_none());
        let id = Identity::read(&h).unwrap();
        assert_eq!(id.source, Source::Signature);
        assert_eq!(id.device.as_deref(), Some("phone-1"));
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.exp, Some(NOW + 600));
    }

    #[test]
    fn a_valid_post_holds_the_headers_until_the_digest_is_checked() {
        let (c, s) = (cfg(), store(&cfg()));
        let body = br#"{"item_id":"a","quantity":2}"#;
        let mut h = Signer::post("/api/v1/orders", body).host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, &s, 5, false), Verdict::WaitBody);
        assert_eq!(
            Identity::read(&h),
            None,
            "no identity before the body is checked"
        );
        assert_eq!(
            r.on_body(&c, &mut h, &s, body.len(), true),
            Verdict::Continue
        );
        assert_eq!(r.outcome, Outcome::Verified);
    }

    #[test]
    fn a_replayed_nonce_is_refused_and_reported() {
        let (c, s) = (cfg(), store(&cfg()));
        let signer = Signer::get("/api/v1/users/7");
        assert_eq!(run(&c, &s, &mut signer.host()).0, Verdict::Continue);
        let (code, r) = denied(&c, &s, &mut signer.host());
        assert_eq!(code, "replay");
        let rep = r.report.unwrap();
        assert_eq!(rep.kind, ReportKind::Replay);
        assert_eq!(rep.device.as_deref(), Some("phone-1"));
        assert!(rep.verified);
    }

    #[test]
    fn created_outside_the_window_is_refused_both_ways() {
        let (c, s) = (cfg(), store(&cfg()));
        for created in [NOW - 600, NOW + 600, NOW - 301, NOW + 31] {
            let mut signer = Signer::get("/api/v1/users/7");
            signer.created = created;
            assert_eq!(
                denied(&c, &s, &mut signer.host()).0,
                "signature_stale",
                "{created}"
            );
        }
        for created in [NOW - 300, NOW + 30] {
            let mut signer = Signer::get("/api/v1/users/7");
            signer.created = created;
            signer.nonce = format!("nonce-{created}");
            assert_eq!(
                run(&c, &s, &mut signer.host()).0,
                Verdict::Continue,
                "{created}"
            );
        }
    }

    #[test]
    fn altered_method_path_or_query_breaks_the_signature_and_is_reported() {
        let (c, s) = (cfg(), store(&cfg()));
        let signer = Signer::get("/api/v1/users/7?size=10");
        for (name, value) in [
            (":path", "/api/v1/users/8?size=10"),
            (":path", "/api/v1/users/7?size=11"),
            (":method", "DELETE"),
            (":authority", "evil.test"),
        ] {
            let mut h = signer.host();
            h.headers.retain(|(n, _)| n != name);
            h.headers.push((name.into(), value.into()));
            let (code, r) = denied(&c, &s, &mut h);
            assert_eq!(code, "signature_invalid", "{name}={value}");
            let rep = r.report.unwrap();
            assert_eq!(rep.kind, ReportKind::InvalidSignature);
            assert!(!rep.verified);
        }
        // the failures recorded no nonce: the genuine request still passes
        assert_eq!(run(&c, &s, &mut signer.host()).0, Verdict::Continue);
    }

    #[test]
    fn a_body_of_unknown_length_needs_a_digest_only_if_it_is_not_empty() {
        let (c, s) = (cfg(), store(&cfg()));
        // POST without content-length or digest (chunked, HTTP/2): the
        // headers are held; an empty body passes like content-length: 0.
        let mut signer = Signer::post("/api/v1/public/x", b"");
        signer.components.retain(|c| *c != "content-digest");
        signer.digest_header = false;
        signer.body = None;
        let mut h = signer.host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, &s, 0, true), Verdict::Continue);
        assert_eq!(r.outcome, Outcome::Verified);
        // The same with a nonce of its own and any byte of body: refused as
        // soon as the byte arrives, before the rest.
        signer.nonce = "nonce-0002".into();
        let mut h = signer.host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, &s, 1, false), Verdict::Responded);
        assert_eq!(h.response.unwrap().json()["error"], "digest_missing");
    }

    #[test]
    fn an_altered_body_fails_its_digest() {
        let (c, s) = (cfg(), store(&cfg()));
        let mut h = Signer::post("/api/v1/orders", br#"{"quantity":1}"#).host();
        h.body = br#"{"quantity":9}"#.to_vec();
        let (code, r) = denied(&c, &s, &mut h);
        assert_eq!(code, "digest_invalid");
        assert_eq!(r.report.unwrap().kind, ReportKind::DigestMismatch);
    }

    #[test]
    fn a_body_without_a_covered_digest_is_refused_before_it_is_read() {
        let (c, s) = (cfg(), store(&cfg()));
        // digest header sent but not covered
        let mut signer = Signer::post("/api/v1/orders", b"{}");
        signer.components.retain(|c| *c != "content-digest");
        let mut h = signer.host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::Responded);
        assert_eq!(h.response.unwrap().json()["error"], "digest_missing");
        // no digest header at all
        signer.digest_header = false;
        assert_eq!(denied(&c, &s, &mut signer.host()).0, "digest_missing");
        // a GET carrying an uncovered digest header
        let mut h = Signer::get("/api/v1/users/7")
            .host()
            .with_header("content-digest", "sha-256=:AA==:");
        assert_eq!(denied(&c, &s, &mut h).0, "digest_missing");
    }

    #[test]
    fn a_query_must_be_covered_when_present() {
        let (c, s) = (cfg(), store(&cfg()));
        let mut signer = Signer::get("/api/v1/users/7?size=10");
        signer.components.retain(|c| *c != "@query");
        assert_eq!(denied(&c, &s, &mut signer.host()).0, "signature_coverage");
        let mut signer = Signer::get("/api/v1/users/7");
        signer.components.retain(|c| *c != "@authority");
        assert_eq!(denied(&c, &s, &mut signer.host()).0, "signature_coverage");
    }

    #[test]
    fn expired_or_malformed_key_ids_are_refused() {
        let (c, s) = (cfg(), store(&cfg()));
        let cases = [
            (format!("phone-1:alice:{}", NOW - 1), "key_expired"),
            (format!("phone-1:alice:{NOW}"), "key_expired"),
            ("phone-1:alice".to_string(), "key_invalid"),
            (format!("phone 1:alice:{}", NOW + 60), "key_invalid"),
            (format!("phone-1:alice:{}:v9", NOW + 60), "key_invalid"),
        ];
        for (keyid, want) in cases {
            let mut signer = Signer::get("/api/v1/users/7");
            signer.keyid = keyid.clone();
            assert_eq!(denied(&c, &s, &mut signer.host()).0, want, "{keyid}");
        }
    }

    #[test]
    fn a_far_expiry_is_honoured_unless_max_key_lifetime_caps_it() {
        let far = format!("phone-1:alice:{}", 9_999_999_999u64);
        let s = store(&cfg());
        let mut signer = Signer::get("/api/v1/users/7");
        signer.keyid = far.clone();
        assert_eq!(run(&cfg(), &s, &mut signer.host()).0, Verdict::Continue);

        let env = |n: &str| (n == "V2").then(|| MASTER_B64.to_string());
        let capped = load(
            br#"{"master_secrets": [{"version": "v2", "env": "V2"}], "max_key_lifetime": "24h",
                 "routes": [{"name": "api", "prefix": "/api/v1/"}]}"#,
            &env,
        )
        .unwrap();
        let s = store(&capped);
        for (expiry, want) in [(NOW + 90_000, Some("key_invalid")), (NOW + 3600, None)] {
            let mut signer = Signer::get("/api/v1/users/7");
            signer.keyid = format!("phone-1:alice:{expiry}");
            match want {
                Some(code) => assert_eq!(denied(&capped, &s, &mut signer.host()).0, code),
                None => assert_eq!(run(&capped, &s, &mut signer.host()).0, Verdict::Continue),
            }
        }
    }

    #[test]
    fn a_wrong_master_secret_is_an_invalid_signature() {
        let (c, s) = (cfg(), store(&cfg()));
        let mut signer = Signer::get("/api/v1/users/7");
        signer.master = vec![7; 32];
        assert_eq!(denied(&c, &s, &mut signer.host()).0, "signature_invalid");
    }

    #[test]
    fn every_configured_secret_version_verifies_and_a_named_version_is_the_only_one_tried() {
        let (c, s) = (cfg(), store(&cfg()));
        let old = base64::engine::general_purpose::STANDARD
            .decode(OLD_B64)
            .unwrap();
        let mut signer = Signer::get("/api/v1/users/7");
        signer.master = old.clone();
        assert_eq!(run(&c, &s, &mut signer.host()).0, Verdict::Continue);
        let mut signer = Signer::get("/api/v1/users/7");
        signer.master = old;
        signer.keyid = format!("phone-1:alice:{}:v1", NOW + 60);
        signer.nonce = "nonce-v1".into();
        assert_eq!(run(&c, &s, &mut signer.host()).0, Verdict::Continue);
        signer.keyid = format!("phone-1:alice:{}:v2", NOW + 60);
        signer.nonce = "nonce-v2".into();
        assert_eq!(denied(&c, &s, &mut signer.host()).0, "signature_invalid");
    }

    #[test]
    fn missing_or_malformed_signature_headers_are_refused() {
        let (c, s) = (cfg(), store(&cfg()));
        let mut h = FakeHost::request("GET", "/api/v1/users/7");
        assert_eq!(denied(&c, &s, &mut h).0, "signature_missing");
        let base = Signer::get("/api/v1/users/7").host();
        for (name, value) in [
            ("signature-input", "app=(\"@method\""),
            ("signature", "app=not-bytes"),
            ("signature-input", "app=(\"@method\" \"@authority\" \"@path\");created=1750000000;keyid=\"phone-1:alice:1750000600\""),
            ("signature-input", "app=(\"@method\" \"@authority\" \"@path\");created=1750000000;nonce=\"short\";keyid=\"phone-1:alice:1750000600\""),
        ] {
            let mut h = base.clone();
            h.headers.retain(|(n, _)| n != name);
            h.headers.push((name.into(), value.into()));
            assert_eq!(denied(&c, &s, &mut h).0, "signature_malformed", "{value}");
        }
        let mut h = base.clone();
        h.headers.retain(|(n, _)| n != "signature");
        assert_eq!(denied(&c, &s, &mut h).0, "signature_missing");
    }

    #[test]
    fn unmatched_routes_need_a_signature_and_open_routes_do_not() {
        let (c, s) = (cfg(), store(&cfg()));
        let mut h = FakeHost::request("GET", "/health");
        let (v, r) = run(&c, &s, &mut h);
        assert_eq!((v, r.outcome), (Verdict::Continue, Outcome::Open));
        assert_eq!(Identity::read(&h), None);
        for path in ["/other", "/health/x", "/healthz"] {
            let mut h = FakeHost::request("GET", path);
            assert_eq!(denied(&c, &s, &mut h).0, "signature_missing", "{path}");
        }
    }

    #[test]
    fn what_sanitize_rewrote_is_verified_as_the_client_sent_it() {
        let (c, s) = (cfg(), store(&cfg()));
        // sanitize added ?size=20 to a request signed without a query
        let mut h = Signer::get("/api/v1/users/7").host();
        original::save_path(&mut h, "/api/v1/users/7");
        h.set_request_header(":path", "/api/v1/users/7?size=20");
        assert_eq!(run(&c, &s, &mut h).0, Verdict::Continue);
        // sanitize re-encoded the body
        let sent = br#"{"item_id": "a", "quantity": 2, "x": 1}"#;
        let mut signer = Signer::post("/api/v1/orders", sent);
        signer.nonce = "nonce-0002".into();
        let mut h = signer.host();
        original::save_body(&mut h, sent);
        h.body = br#"{"item_id":"a","quantity":2}"#.to_vec();
        assert_eq!(run(&c, &s, &mut h).0, Verdict::Continue);
    }

    #[test]
    fn a_full_nonce_store_fails_closed_with_a_503_and_retry_after() {
        let c = cfg();
        let s = store(&c);
        let mut refused = 0;
        for i in 0..2000 {
            let mut signer = Signer::get("/api/v1/users/7");
            signer.nonce = format!("nonce-{i:06}");
            let mut h = signer.host();
            let (v, _) = run(&c, &s, &mut h);
            if v == Verdict::Responded {
                let resp = h.response.unwrap();
                assert_eq!(resp.status, 503);
                assert_eq!(resp.json()["error"], "replay_check_unavailable");
                let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=c.store.bucket).contains(&retry), "{retry}");
                refused += 1;
            }
        }
        // 4 shards × 80 per key in one time bucket
        assert_eq!(2000 - refused, c.store.per_key * 4);
    }

    #[test]
    fn a_body_too_large_to_verify_is_413() {
        let (c, s) = (cfg(), store(&cfg()));
        let body = vec![b'x'; 2000];
        let mut h = Signer::post("/api/v1/orders", &body).host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, &s, 2000, false), Verdict::Responded);
        assert_eq!(h.response.unwrap().status, 413);
    }

    #[test]
    fn a_body_finished_by_trailers_is_checked() {
        let (c, s) = (cfg(), store(&cfg()));
        let body = b"{}";
        let mut h = Signer::post("/api/v1/orders", body).host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, &s, 2, false), Verdict::WaitBody);
        assert_eq!(r.on_trailers(&c, &mut h, &s, 2), Verdict::Continue);
    }

    #[test]
    fn dry_run_lets_would_be_denials_through_without_identity_or_report() {
        let mut c = cfg();
        c.dry_run = true;
        let s = store(&c);
        // Unsigned: would be signature_missing.
        let mut h = FakeHost::request("GET", "/api/v1/users/7")
            .with_header("x-request-id", "test-rid")
            .with_property(&["xds", "route_name"], b"api")
            .with_property(&["xds", "virtual_host_name"], b"app");
        let (v, r) = run(&c, &s, &mut h);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(r.outcome, Outcome::DryRunDenied("signature_missing"));
        assert!(h.response.is_none());
        assert_eq!(Identity::read(&h), None);
        let names = r.names.unwrap();
        assert_eq!(
            (names.gateway.as_str(), names.route.as_str()),
            ("app", "api")
        );
        // A replay: would be refused, passes, no identity, no report.
        let signer = Signer::get("/api/v1/users/7");
        let (_, r) = run(&c, &s, &mut signer.host());
        assert_eq!(r.outcome, Outcome::Verified);
        let mut h = signer.host();
        let (v, r) = run(&c, &s, &mut h);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(r.outcome, Outcome::DryRunDenied("replay"));
        assert!(r.report.is_none());
        assert!(h.response.is_none());
        assert_eq!(Identity::read(&h), None);
        // A body too large to verify: released, not 413.
        let body = vec![b'x'; 2000];
        let mut h = Signer::post("/api/v1/orders", &body).host();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, &s, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, &s, 2000, false), Verdict::Continue);
        assert_eq!(r.outcome, Outcome::DryRunDenied("body_too_large"));
        assert!(h.response.is_none());
        assert_eq!(r.on_body(&c, &mut h, &s, 2500, true), Verdict::Continue);
        assert_eq!(Identity::read(&h), None);
    }

    #[test]
    fn the_adapter_reads_the_header_map_once_and_a_denial_at_the_headers_reuses_it() {
        let (c, s) = (cfg(), store(&cfg()));
        // open: the header map and the saved :path
        let mut h = FakeHost::request("GET", "/health");
        run(&c, &s, &mut h);
        assert_eq!(h.calls.get(), 2);
        // verified: + the identity hand-over
        let mut h = Signer::get("/api/v1/users/7").host();
        run(&c, &s, &mut h);
        assert_eq!(h.calls.get(), 3);
        // refused at the headers: + route names (2) + the reply; the trace
        // id comes from the header map already read
        let mut h = FakeHost::request("GET", "/api/v1/users/7");
        run(&c, &s, &mut h);
        assert_eq!(h.calls.get(), 5);
        // a replay: + the client address for the report
        let mut h = Signer::get("/api/v1/users/7").host();
        run(&c, &s, &mut h);
        assert_eq!(h.calls.get(), 6);
    }

    /// The decision core called directly: header lists, body bytes, the
    /// clock and the original path as plain values, no host.
    mod decision_core {
        use super::*;
        use filter_core::request::{Decision, Edits};
        use filter_core::Denial;

        /// The signed request's header list (the `FakeHost` only builds it).
        fn headers(signer: &Signer) -> Vec<(String, String)> {
            signer.host().headers
        }

        fn headers_step(
            c: &Compiled,
            s: &MemorySharedData,
            hs: &[(String, String)],
            end_of_stream: bool,
        ) -> HeadersStep {
            decide_headers(c, &RequestView::new(hs), None, s, NOW, end_of_stream)
        }

        fn ruling(step: HeadersStep) -> Ruling {
            match step {
                HeadersStep::Done(r) => r,
                HeadersStep::WaitBody(state) => panic!("waits for a body: {state:?}"),
                HeadersStep::Claim(p) => panic!("a claim: {p:?}"),
            }
        }

        fn body_ruling(step: BodyStep) -> Ruling {
            match step {
                BodyStep::Done(r) => r,
                BodyStep::Claim(p) => panic!("a claim: {p:?}"),
            }
        }

        fn denial(r: &Ruling) -> &Denial {
            match &r.decision {
                Decision::Deny(edits, d) => {
                    assert!(edits.is_empty(), "{edits:?}");
                    d
                }
                Decision::Continue(_) => panic!("continued: {r:?}"),
            }
        }

        #[test]
        fn a_valid_signed_get_continues_with_the_signer_identity_and_no_report() {
            let (c, s) = (cfg(), store(&cfg()));
            let hs = headers(&Signer::get("/api/v1/users/7?size=10"));
            let r = ruling(headers_step(&c, &s, &hs, true));
            assert_eq!(r.outcome, Outcome::Verified);
            assert_eq!((r.report, r.dry_run_denial), (None, None));
            let Decision::Continue(Edits {
                remove,
                set,
                identity: Some(id),
            }) = r.decision
            else {
                panic!("{:?}", r.decision);
            };
            assert!(remove.is_empty() && set.is_empty());
            assert_eq!(id.source, Source::Signature);
            assert_eq!(id.device.as_deref(), Some("phone-1"));
            assert_eq!(id.user.as_deref(), Some("alice"));
            assert_eq!(id.exp, Some(NOW + 600));
        }

        #[test]
        fn the_same_signed_get_a_second_time_is_a_reported_replay() {
            let (c, s) = (cfg(), store(&cfg()));
            let hs = headers(&Signer::get("/api/v1/users/7"));
            let first = ruling(headers_step(&c, &s, &hs, true));
            assert_eq!(first.outcome, Outcome::Verified);
            let again = ruling(headers_step(&c, &s, &hs, true));
            assert_eq!(again.outcome, Outcome::Denied("replay"));
            let d = denial(&again);
            assert_eq!((d.status, d.code), (401, "replay"));
            assert_eq!(
                d.headers,
                vec![("www-authenticate", "Signature".to_string())]
            );
            let rep = again.report.unwrap();
            assert_eq!(rep.kind, ReportKind::Replay);
            assert!(rep.verified);
            assert_eq!(
                (rep.device.as_deref(), rep.user.as_deref()),
                (Some("phone-1"), Some("alice"))
            );
            assert_eq!(
                (rep.method.as_str(), rep.path.as_str()),
                ("GET", "/api/v1/users/7")
            );
            assert_eq!(rep.request_id.as_deref(), Some("test-rid"));
            assert_eq!(rep.at, NOW);
            assert_eq!(rep.client, None, "the adapter fills the client address in");
        }

        #[test]
        fn a_signed_post_waits_with_its_expected_digest_and_a_body_that_does_not_match_it_is_denied(
        ) {
            let (c, s) = (cfg(), store(&cfg()));
            let sent = br#"{"quantity":1}"#;
            let hs = headers(&Signer::post("/api/v1/orders", sent));
            let HeadersStep::WaitBody(state) = headers_step(&c, &s, &hs, false) else {
                panic!("decided at the headers");
            };
            let expected = format!("sha-256=:{}:", b64(&Sha256::digest(sent)));
            assert_eq!(state.verified.digest.as_deref(), Some(expected.as_str()));
            assert!(state.needs_body() && !state.body_must_be_empty);
            assert_eq!(decide_body_chunk(&c, &state, 5, false), BodyChunk::Wait);
            assert_eq!(
                decide_body_chunk(&c, &state, sent.len(), true),
                BodyChunk::Complete
            );
            let r = body_ruling(decide_body(
                &c,
                state.clone(),
                br#"{"quantity":9}"#,
                &s,
                NOW,
            ));
            assert_eq!(r.outcome, Outcome::Denied("digest_invalid"));
            assert_eq!(denial(&r).status, 401);
            let rep = r.report.unwrap();
            assert_eq!(rep.kind, ReportKind::DigestMismatch);
            assert!(rep.verified);
            // the refusal recorded no nonce: the body as signed still passes
            let r = body_ruling(decide_body(&c, state, sent, &s, NOW));
            assert_eq!(r.outcome, Outcome::Verified);
        }

        #[test]
        fn a_body_chunk_past_max_body_bytes_is_refused_with_413_before_the_body_is_complete() {
            let (c, s) = (cfg(), store(&cfg()));
            let hs = headers(&Signer::post("/api/v1/orders", b"{}"));
            let HeadersStep::WaitBody(state) = headers_step(&c, &s, &hs, false) else {
                panic!("decided at the headers");
            };
            let BodyChunk::Refuse(r) = decide_body_chunk(&c, &state, 1025, false) else {
                panic!("not refused");
            };
            assert_eq!(
                (denial(&r).status, denial(&r).code),
                (413, "body_too_large")
            );
        }

        #[test]
        fn an_expired_key_id_is_denied_at_the_headers_without_a_report() {
            let (c, s) = (cfg(), store(&cfg()));
            let mut signer = Signer::get("/api/v1/users/7");
            signer.keyid = format!("phone-1:alice:{}", NOW - 1);
            let r = ruling(headers_step(&c, &s, &headers(&signer), true));
            assert_eq!(r.outcome, Outcome::Denied("key_expired"));
            let d = denial(&r);
            assert_eq!(
                (d.status, d.code, d.message.as_ref()),
                (401, "key_expired", "the signing key has expired")
            );
            assert_eq!(r.report, None);
        }

        #[test]
        fn the_original_path_handed_over_by_sanitize_is_what_is_verified() {
            let (c, s) = (cfg(), store(&cfg()));
            let mut hs = headers(&Signer::get("/api/v1/users/7"));
            for (n, v) in &mut hs {
                if n == ":path" {
                    *v = "/api/v1/users/7?size=20".into();
                }
            }
            let view = RequestView::new(&hs);
            let r = ruling(decide_headers(&c, &view, None, &s, NOW, true));
            assert_eq!(r.outcome, Outcome::Denied("signature_coverage"));
            let r = ruling(decide_headers(
                &c,
                &view,
                Some("/api/v1/users/7"),
                &s,
                NOW,
                true,
            ));
            assert_eq!(r.outcome, Outcome::Verified);
        }

        #[test]
        fn an_open_route_continues_without_edits() {
            let (c, s) = (cfg(), store(&cfg()));
            let hs = FakeHost::request("GET", "/health").headers;
            let r = ruling(headers_step(&c, &s, &hs, true));
            assert_eq!(r.outcome, Outcome::Open);
            assert_eq!(r.decision, Decision::Continue(Edits::default()));
        }

        #[test]
        fn in_dry_run_a_refusal_continues_without_identity_or_report_and_keeps_the_denial_for_the_log(
        ) {
            let mut c = cfg();
            c.dry_run = true;
            let s = store(&c);
            let hs = headers(&Signer::get("/api/v1/users/7"));
            assert_eq!(
                ruling(headers_step(&c, &s, &hs, true)).outcome,
                Outcome::Verified
            );
            let r = ruling(headers_step(&c, &s, &hs, true));
            assert_eq!(r.outcome, Outcome::DryRunDenied("replay"));
            assert_eq!(r.decision, Decision::Continue(Edits::default()));
            assert_eq!(r.report, None);
            assert_eq!(
                r.denial().map(|d| (d.status, d.code)),
                Some((401, "replay"))
            );
        }
    }

    /// Arbitrary signature headers and bodies: nothing the demo master secret
    /// did not sign passes, every refusal is a well-formed 401 (413 for a
    /// body too large to verify), and no input panics.
    mod arbitrary_input {
        use super::*;
        use filter_core::testing::assert_denial;
        use proptest::prelude::*;

        fn header_value() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "app=(\"@method\" \"@authority\" \"@path\");created=1750000000;keyid=\"phone-1:alice:1750000600\";nonce=\"n1\"",
                    "app=();created=1750000000;keyid=\"a:b:1750000600\";nonce=\"n\"",
                    "app=:AAAA:", "app=:", "app=", "=", "app=(", "app=(\"@method\"", "a=1, a=2",
                    "app=(\"@method\");created=-1", "app=(\"@method\");created=99999999999999999999999",
                    "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:", "sha-256=:", "sha-512=:AA==:",
                ])
                .prop_map(str::to_string),
                "[ -~]{0,80}",
                any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: filter_core::testing::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn nothing_unsigned_passes_and_every_refusal_is_well_formed(
                input in prop::option::of(header_value()),
                signature in prop::option::of(header_value()),
                digest in prop::option::of(header_value()),
                body in prop::collection::vec(any::<u8>(), 0..64),
                post in any::<bool>(),
            ) {
                let c = cfg();
                let s = store(&c);
                let mut h = FakeHost::request(if post { "POST" } else { "GET" }, "/api/v1/users/7");
                h.time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW);
                for (name, v) in [("signature-input", &input), ("signature", &signature), ("content-digest", &digest)] {
                    if let Some(v) = v {
                        h = h.with_header(name, v);
                    }
                }
                if post && !body.is_empty() {
                    h = h.with_header("content-length", &body.len().to_string()).with_body(&body);
                }
                let (v, r) = run(&c, &s, &mut h);
                prop_assert_eq!(v, Verdict::Responded, "{:?}", r.outcome);
                assert_denial(h.response.as_ref(), &[401, 413], Some("test-rid"));
                prop_assert_eq!(Identity::read(&h), None);
            }

            #[test]
            fn any_change_to_one_character_of_a_signed_request_is_refused(
                which in 0usize..3,
                at in any::<prop::sample::Index>(),
                with in prop::sample::select(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/:;,\"()@".chars().collect::<Vec<_>>()
                ),
            ) {
                let (c, s) = (cfg(), store(&cfg()));
                let mut h = Signer::post("/api/v1/orders?x=1", br#"{"item_id":"a","quantity":2}"#).host();
                let name = ["signature-input", "signature", "content-digest"][which];
                let Some(slot) = h.headers.iter_mut().find(|(n, _)| n == name) else {
                    return Err(TestCaseError::fail(format!("no {name}")));
                };
                let mut chars: Vec<char> = slot.1.chars().collect();
                let i = at.index(chars.len());
                prop_assume!(chars[i] != with);
                chars[i] = with;
                let original = slot.1.clone();
                slot.1 = chars.into_iter().collect();
                let mutated = slot.1.clone();
                // RFC 8941 §4.2.7: a parser SHOULD NOT fail on non-zero pad
                // bits, so a byte sequence that decodes to the same bytes is
                // the same value, not an alteration
                let bytes = |v: &str| {
                    use base64::engine::{general_purpose::GeneralPurpose, GeneralPurposeConfig};
                    let lenient = GeneralPurpose::new(
                        &base64::alphabet::STANDARD,
                        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
                    );
                    let inner = v.split_once("=:").and_then(|(_, r)| r.strip_suffix(':'))?;
                    lenient.decode(inner).ok().map(|b| (v.split_once("=:").map(|(k, _)| k.to_string()), b))
                };
                prop_assume!(name == "signature-input" || bytes(&mutated).is_none() || bytes(&mutated) != bytes(&original));
                let (v, r) = run(&c, &s, &mut h);
                prop_assert_eq!(v, Verdict::Responded, "{}: {} passed ({:?})", name, mutated, r.outcome);
                assert_denial(h.response.as_ref(), &[401], Some("test-rid"));
            }
        }

        #[test]
        fn the_unmutated_request_passes() {
            let (c, s) = (cfg(), store(&cfg()));
            let mut h =
                Signer::post("/api/v1/orders?x=1", br#"{"item_id":"a","quantity":2}"#).host();
            assert_eq!(run(&c, &s, &mut h).0, Verdict::Continue);
        }
    }
}
