//! Native tests of the whole request path: tokens minted here with the demo
//! keys (and attacker keys), run through `filter::on_request_headers` with
//! `FakeHost` and `MemorySharedData`.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use filter_core::host::FakeHost;
use filter_core::identity::{Identity, Source};
use filter_core::shared::MemorySharedData;
use filter_core::Verdict;
use serde_json::{json, Value};
use sha2::Sha256;
use signature::{SignatureEncoding, Signer};

use crate::cache::TokenCache;
use crate::config::{self, Compiled};
use crate::filter::{on_request_headers, Env, Outcome, ProviderKeys, Result_};
use crate::jti::JtiStore;

const RS_PEM: &str = include_str!("../../../examples/keys/jwt-rs256.pem");
const ES_PEM: &str = include_str!("../../../examples/keys/jwt-es256.pem");
const ATTACKER_RS_PEM: &str = include_str!("../tests/fixtures/attacker-rs256.pem");
const WEB: &str = include_str!("../../../examples/config/jwt/web.json");
const JWKS: &str = include_str!("../../../examples/keys/jwks.json");
const ISS: &str = "https://issuer.demo.local";

/// The tests' clock: fixed, so no test depends on when it runs (a token
/// minted "now" is checked at the same "now", whatever the wall clock says).
const NOW: u64 = 1_900_000_000;

fn now() -> u64 {
    NOW
}

fn clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn enc(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

fn rs_sign(pem: &str, msg: &[u8]) -> Vec<u8> {
    use rsa::pkcs8::DecodePrivateKey;
    let k = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
    rsa::pkcs1v15::SigningKey::<Sha256>::new(k)
        .sign(msg)
        .to_vec()
}

fn es_sign(pem: &str, msg: &[u8]) -> Vec<u8> {
    use p256::pkcs8::DecodePrivateKey;
    let k = p256::ecdsa::SigningKey::from_pkcs8_pem(pem).unwrap();
    let s: p256::ecdsa::Signature = k.sign(msg);
    s.to_bytes().to_vec()
}

/// Signs raw header/payload JSON text (so tests can write duplicates).
fn sign_raw(header: &str, payload: &str) -> String {
    let h: Value = serde_json::from_str(header).unwrap_or(json!({}));
    let msg = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = match h["alg"].as_str() {
        Some("ES256") => es_sign(ES_PEM, msg.as_bytes()),
        _ => rs_sign(RS_PEM, msg.as_bytes()),
    };
    format!("{msg}.{}", B64.encode(sig))
}

fn claims(scope: &str) -> Value {
    let n = now();
    json!({"iss": ISS, "aud": "demo-api", "sub": "user-42", "exp": n + 600, "iat": n, "scope": scope})
}

fn rs256(c: &Value) -> String {
    let h = json!({"alg": "RS256", "kid": "demo-rs256", "typ": "JWT"});
    let msg = format!("{}.{}", enc(&h), enc(c));
    format!("{msg}.{}", B64.encode(rs_sign(RS_PEM, msg.as_bytes())))
}

fn es256(c: &Value) -> String {
    let h = json!({"alg": "ES256", "kid": "demo-es256", "typ": "JWT"});
    let msg = format!("{}.{}", enc(&h), enc(c));
    format!("{msg}.{}", B64.encode(es_sign(ES_PEM, msg.as_bytes())))
}

struct World {
    cfg: Compiled,
    keys: Vec<ProviderKeys>,
    cache: RefCell<TokenCache>,
    shared: MemorySharedData,
    jti: JtiStore,
}

impl World {
    fn from(cfg: Compiled) -> Self {
        let keys = cfg
            .providers
            .iter()
            .map(|p| ProviderKeys::initial(&p.keys))
            .collect();
        let jti = JtiStore::new(cfg.jti_max_entries, cfg.jti_max_lifetime.as_secs());
        let shared = MemorySharedData::new();
        jti.ensure_keys(&shared).unwrap();
        World {
            cache: RefCell::new(TokenCache::new(cfg.cache_entries)),
            cfg,
            keys,
            shared,
            jti,
        }
    }

    /// The shipped web config with this replica's `jti` store alone (no
    /// shared store): every test but the shared-store ones.
    fn web() -> Self {
        let mut v: Value = serde_json::from_str(WEB).unwrap();
        v.as_object_mut().unwrap().remove("shared_store");
        Self::from(config::load(v.to_string().as_bytes()).unwrap())
    }

    /// The shipped web config as it is, shared store included, with
    /// `on_unavailable` as given.
    fn web_shared(on_unavailable: &str) -> Self {
        let mut v: Value = serde_json::from_str(WEB).unwrap();
        v["shared_store"]["on_unavailable"] = on_unavailable.into();
        Self::from(config::load(v.to_string().as_bytes()).unwrap())
    }

    fn env(&self) -> Env<'_, MemorySharedData> {
        Env {
            cfg: &self.cfg,
            keys: &self.keys,
            cache: &self.cache,
            shared: &self.shared,
            jti: &self.jti,
        }
    }

    fn run(&self, host: &mut FakeHost) -> (Verdict, Outcome) {
        host.time = clock();
        let env = Env {
            cfg: &self.cfg,
            keys: &self.keys,
            cache: &self.cache,
            shared: &self.shared,
            jti: &self.jti,
        };
        let (v, o, pending) = on_request_headers(&env, host);
        assert!(pending.is_none(), "a claim in a local-store test");
        (v, o)
    }

    /// Runs a request with a bearer token, returns (status or 0 when passed, host).
    fn bearer(&self, method: &str, path: &str, token: &str) -> (u16, FakeHost) {
        let mut h = FakeHost::request(method, path)
            .with_header("authorization", &format!("Bearer {token}"));
        let (v, _) = self.run(&mut h);
        let status = match v {
            Verdict::Continue => 0,
            _ => h.response.as_ref().map_or(999, |r| r.status),
        };
        (status, h)
    }
}

#[test]
fn valid_rs256_and_es256_tokens_pass_with_the_right_scope() {
    let w = World::web();
    for t in [rs256(&claims("users:read")), es256(&claims("users:read"))] {
        let (s, h) = w.bearer("GET", "/api/v1/users/7", &t);
        assert_eq!(s, 0, "{:?}", h.response);
        // Authorization removed, identity published, claims forwarded.
        assert_eq!(h.header("authorization"), None);
        let id = Identity::read(&h).unwrap();
        assert_eq!(id.source, Source::Jwt);
        assert_eq!(id.user.as_deref(), Some("user-42"));
        assert!(id.exp.is_some());
        assert_eq!(h.header("x-user-id"), Some("user-42"));
    }
}

#[test]
fn a_token_without_a_usable_subject_is_401_before_any_signature_check() {
    let w = World::web();
    let long = "u".repeat(1025);
    for sub in [
        None,
        Some(json!("")),
        Some(json!(" user-1")),
        Some(json!("user-1 ")),
        Some(json!("a\r\nx-evil: 1")),
        Some(json!("a\u{0}b")),
        Some(json!(long)),
        Some(json!(42)),
    ] {
        let mut c = claims("users:read");
        match &sub {
            None => {
                c.as_object_mut().unwrap().remove("sub");
            }
            Some(v) => c["sub"] = v.clone(),
        }
        let mut h = FakeHost::request("GET", "/api/v1/users/7")
            .with_header("authorization", &format!("Bearer {}", es256(&c)));
        let (v, o) = w.run(&mut h);
        assert_eq!(v, Verdict::Responded, "{sub:?}");
        assert!(!o.signature_checked, "{sub:?}");
        let r = h.response.unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_token")),
            "{sub:?}"
        );
    }
    // A subject with inner spaces or non-ASCII letters is fine.
    for sub in ["user 1", "usér-1", &"u".repeat(1024)] {
        let mut c = claims("users:read");
        c["sub"] = json!(sub);
        let (s, h) = w.bearer("GET", "/api/v1/users/7", &rs256(&c));
        assert_eq!(s, 0, "{sub}: {:?}", h.response);
    }
}

#[test]
fn missing_token_is_401_with_a_bare_challenge() {
    let w = World::web();
    let mut h = FakeHost::request("GET", "/api/v1/users/7");
    let (v, o) = w.run(&mut h);
    assert_eq!(v, Verdict::Responded);
    assert_eq!(o.result, Result_::Denied);
    let r = h.response.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "missing_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"demo-api\"")
    );
    assert_eq!(r.header("x-request-id"), Some("test-rid"));
}

#[test]
fn open_routes_need_no_token_and_ignore_bad_ones() {
    let w = World::web();
    for (m, p) in [
        ("GET", "/health"),
        ("GET", "/api/v1/public/x"),
        ("GET", "/api/v1/unstable/x"),
    ] {
        let (s, _) = w.bearer(m, p, "garbage");
        assert_eq!(s, 0, "{m} {p}");
    }
}

#[test]
fn open_routes_do_not_forward_a_bearer_token_either() {
    let w = World::web();
    let t = rs256(&claims("users:read"));
    for (m, p) in [
        ("GET", "/api/v1/public/x"),
        ("POST", "/api/v1/unstable/x"),
        ("GET", "/health"),
    ] {
        let (s, h) = w.bearer(m, p, &t);
        assert_eq!(s, 0, "{m} {p}");
        assert_eq!(h.header("authorization"), None, "{m} {p}");
        let (_, h) = w.bearer(m, p, "garbage");
        assert_eq!(
            h.header("authorization"),
            None,
            "{m} {p}: unchecked, still a bearer token"
        );
    }
    // Another scheme is not ours: left for the upstream.
    let mut h = FakeHost::request("GET", "/api/v1/public/x")
        .with_header("authorization", "Basic dXNlcjpwdw==");
    assert_eq!(w.run(&mut h).0, Verdict::Continue);
    assert_eq!(h.header("authorization"), Some("Basic dXNlcjpwdw=="));
    // Two lines, one of them a bearer token: the header goes, both lines.
    let mut h = FakeHost::request("GET", "/api/v1/public/x")
        .with_header("authorization", "Basic dXNlcjpwdw==")
        .with_header("authorization", &format!("bearer {t}"));
    assert_eq!(w.run(&mut h).0, Verdict::Continue);
    assert_eq!(h.header("authorization"), None);
    // As Envoy hands them over: repeated lines joined with ',', or a tab
    // after the scheme (a split()-based upstream parser reads both).
    for v in [
        format!("Basic x,Bearer {t}"),
        format!("Bearer\t{t}"),
        format!("BEARER  {t}"),
    ] {
        let mut h = FakeHost::request("GET", "/api/v1/public/x").with_header("authorization", &v);
        assert_eq!(w.run(&mut h).0, Verdict::Continue);
        assert_eq!(h.header("authorization"), None, "{v:?}");
    }
    let mut h =
        FakeHost::request("GET", "/api/v1/public/x").with_header("authorization", "Bearerish x");
    w.run(&mut h);
    assert_eq!(h.header("authorization"), Some("Bearerish x"));
    // A provider that forwards its tokens keeps them on open routes as well.
    let mut v: Value = serde_json::from_str(WEB).unwrap();
    v["providers"][0]["forward_token"] = true.into();
    let w = World::from(config::load(v.to_string().as_bytes()).unwrap());
    let (_, h) = w.bearer("GET", "/api/v1/public/x", &t);
    assert_eq!(
        h.header("authorization"),
        Some(format!("Bearer {t}").as_str())
    );
}

#[test]
fn the_open_health_route_is_exact() {
    let w = World::web();
    assert_eq!(w.bearer("GET", "/health", "garbage").0, 0);
    for p in ["/health/x", "/health/api/v1/users/7"] {
        let mut h = FakeHost::request("POST", p);
        w.run(&mut h);
        assert_eq!(h.response.map(|r| r.status), Some(401), "{p}");
    }
}

#[test]
fn unknown_routes_default_to_required() {
    let w = World::web();
    let mut h = FakeHost::request("GET", "/api/v2/anything");
    w.run(&mut h);
    assert_eq!(h.response.unwrap().status, 401);
    let (s, _) = w.bearer("DELETE", "/api/v1/orders", &rs256(&claims("")));
    assert_eq!(s, 0, "any valid token on the /api/ catch-all");
}

#[test]
fn dry_run_lets_would_be_denials_through_without_identity_or_claims() {
    let mut cfg = config::load(WEB.as_bytes()).unwrap();
    cfg.dry_run = true;
    let w = World::from(cfg);
    // No token: would be 401 missing_token.
    let mut h = FakeHost::request("GET", "/api/v1/users/7").with_header("x-user-id", "forged");
    let (v, o) = w.run(&mut h);
    assert_eq!((v, o.result), (Verdict::Continue, Result_::DryRunDenied));
    assert_eq!(o.code, Some("missing_token"));
    assert!(h.response.is_none());
    assert_eq!(Identity::read(&h), None);
    assert_eq!(h.header("x-user-id"), None, "client copies still stripped");
    // A valid token without the scope: would be 403, passes, no identity, no claims.
    let (s, h) = w.bearer("POST", "/api/v1/orders", &rs256(&claims("users:read")));
    assert_eq!(s, 0);
    assert!(h.response.is_none());
    assert_eq!(Identity::read(&h), None);
    assert_eq!(h.header("x-user-id"), None);
    // A good request is unaffected.
    let (s, h) = w.bearer("GET", "/api/v1/users/7", &rs256(&claims("users:read")));
    assert_eq!(s, 0);
    assert!(Identity::read(&h).is_some());
}

#[test]
fn missing_scope_is_403_insufficient_scope() {
    let w = World::web();
    let (s, h) = w.bearer("POST", "/api/v1/orders", &rs256(&claims("users:read")));
    assert_eq!(s, 403);
    let r = h.response.unwrap();
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"demo-api\", error=\"insufficient_scope\", scope=\"orders:write\"")
    );
    let (s, _) = w.bearer(
        "POST",
        "/api/v1/orders",
        &rs256(&claims("users:read orders:write")),
    );
    assert_eq!(s, 0);
}

#[test]
fn one_time_route_accepts_each_jti_once_and_refuses_tokens_without_jti() {
    let w = World::web();
    let mut c = claims("transfers:write");
    c["jti"] = "t-1".into();
    let t = rs256(&c);
    assert_eq!(w.bearer("POST", "/api/v1/transfers", &t).0, 0);
    let (s, h) = w.bearer("POST", "/api/v1/transfers", &t);
    assert_eq!(s, 401);
    assert_eq!(h.response.unwrap().json()["error"], "token_replayed");
    // The cache does not bypass the jti check, and other routes still accept it.
    assert_eq!(w.bearer("GET", "/api/v1/other", &t).0, 0);
    let (s, h) = w.bearer(
        "POST",
        "/api/v1/transfers",
        &rs256(&claims("transfers:write")),
    );
    assert_eq!(s, 401);
    assert_eq!(h.response.unwrap().json()["error"], "invalid_token");
}

/// One-time routes with the shared store (Redis behind the gateway-store
/// sidecar): the claim callout's answer decides, this replica's store is
/// only a first-level cache.
mod shared_store {
    use super::*;
    use crate::filter::{on_claim_answer, Pending};
    use filter_core::store::ClaimAnswer;

    fn transfer(w: &World, jti: &str) -> (FakeHost, Verdict, Option<Pending>) {
        let mut c = claims("transfers:write");
        c["jti"] = jti.into();
        let mut h = FakeHost::request("POST", "/api/v1/transfers")
            .with_header("authorization", &format!("Bearer {}", rs256(&c)))
            .with_header("x-user-id", "spoofed");
        h.time = clock();
        let (v, _, p) = on_request_headers(&w.env(), &mut h);
        (h, v, p)
    }

    fn answer(w: &World, h: &mut FakeHost, p: Pending, a: ClaimAnswer) -> (Verdict, Outcome) {
        on_claim_answer(&w.env(), h, p, a)
    }

    #[test]
    fn a_one_time_route_waits_for_its_claim_and_nothing_is_applied_meanwhile() {
        let w = World::web_shared("deny");
        let (h, v, p) = transfer(&w, "s-1");
        assert_eq!(v, Verdict::WaitCallout);
        let p = p.unwrap();
        // the key is a hash of issuer and jti; remembered until exp + skew
        assert_eq!(p.claim.claim.key, crate::jti::claim_key(ISS, "s-1"));
        let skew = w.cfg.providers[0].skew_secs;
        assert_eq!(p.claim.claim.ttl_ms, (600 + skew) * 1000);
        let store = w.cfg.shared_store.as_ref().unwrap();
        let call = store.claim_callout(&p.claim.claim);
        assert_eq!(call.cluster, "gateway_store");
        assert!(call.headers[1].1.starts_with("/v1/claim/web.jwt/"));
        // nothing applied, nothing recorded yet
        assert_eq!(h.header("x-user-id"), Some("spoofed"));
        assert!(h.header("authorization").is_some());
        assert!(h.response.is_none());
        assert!(!w
            .jti
            .contains(&w.shared, ISS, "s-1", NOW + 600, skew)
            .unwrap());
    }

    #[test]
    fn claimed_continues_with_the_identity_and_a_later_replay_is_refused_here_without_a_claim() {
        let w = World::web_shared("deny");
        let (mut h, _, p) = transfer(&w, "s-2");
        let (v, o) = answer(&w, &mut h, p.unwrap(), ClaimAnswer::Claimed);
        assert_eq!(
            (v, o.result, o.claim),
            (
                Verdict::Continue,
                Result_::Allowed,
                Some(ClaimAnswer::Claimed)
            )
        );
        assert_eq!(h.header("x-user-id"), Some("user-42"));
        assert_eq!(h.header("authorization"), None);
        assert_eq!(Identity::read(&h).unwrap().user.as_deref(), Some("user-42"));
        // the same token again on this replica: the first-level cache refuses it
        let (h, v, p) = transfer(&w, "s-2");
        assert!(p.is_none());
        assert_eq!(v, Verdict::Responded);
        assert_eq!(h.response.unwrap().json()["error"], "token_replayed");
    }

    #[test]
    fn taken_elsewhere_is_a_replay_and_is_remembered_here() {
        let w = World::web_shared("deny");
        let (mut h, _, p) = transfer(&w, "s-3");
        let (v, o) = answer(&w, &mut h, p.unwrap(), ClaimAnswer::Taken);
        assert_eq!((v, o.result), (Verdict::Responded, Result_::Denied));
        let r = h.response.clone().unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("token_replayed"))
        );
        // the client's copy of the claim header went even so
        assert_eq!(h.header("x-user-id"), None);
        let (_, _, p) = transfer(&w, "s-3");
        assert!(p.is_none(), "known here: no second round trip");
    }

    #[test]
    fn no_answer_is_503_with_retry_after_and_burns_nothing() {
        let w = World::web_shared("deny");
        let (mut h, _, p) = transfer(&w, "s-4");
        let (v, o) = answer(&w, &mut h, p.unwrap(), ClaimAnswer::Unavailable);
        assert_eq!(
            (v, o.code),
            (Verdict::Responded, Some("replay_check_unavailable"))
        );
        let r = h.response.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "replay_check_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
        // the retry asks the store again (nothing was recorded here)
        let (mut h, v, p) = transfer(&w, "s-4");
        assert_eq!(v, Verdict::WaitCallout);
        let (v, _) = answer(&w, &mut h, p.unwrap(), ClaimAnswer::Claimed);
        assert_eq!(v, Verdict::Continue);
    }

    #[test]
    fn the_local_fallback_decides_on_this_replica_alone_when_the_store_is_down() {
        let w = World::web_shared("local");
        let (mut h, _, p) = transfer(&w, "s-5");
        let (v, _) = answer(&w, &mut h, p.unwrap(), ClaimAnswer::Unavailable);
        assert_eq!(v, Verdict::Continue);
        let (h, v, p) = transfer(&w, "s-5");
        assert!(p.is_none());
        assert_eq!(v, Verdict::Responded);
        assert_eq!(h.response.unwrap().json()["error"], "token_replayed");
    }

    #[test]
    fn routes_that_need_no_claim_never_wait() {
        let w = World::web_shared("deny");
        let mut c = claims("users:read transfers:write");
        c["jti"] = "s-6".into();
        let t = rs256(&c);
        for (m, path) in [
            ("GET", "/api/v1/users/1"),
            ("GET", "/health"),
            ("GET", "/api/v1/public/x"),
        ] {
            let mut h =
                FakeHost::request(m, path).with_header("authorization", &format!("Bearer {t}"));
            h.time = clock();
            let (v, _, p) = on_request_headers(&w.env(), &mut h);
            assert!(p.is_none(), "{path}");
            assert_eq!(v, Verdict::Continue, "{path}");
        }
        // refusals before the claim (scope) send no callout either
        let mut c = claims("users:read");
        c["jti"] = "s-7".into();
        let mut h = FakeHost::request("POST", "/api/v1/transfers")
            .with_header("authorization", &format!("Bearer {}", rs256(&c)));
        h.time = clock();
        let (v, _, p) = on_request_headers(&w.env(), &mut h);
        assert!(p.is_none());
        assert_eq!(
            (v, h.response.map(|r| r.status)),
            (Verdict::Responded, Some(403))
        );
    }
}

#[test]
fn a_scope_refusal_does_not_burn_the_jti() {
    let w = World::web();
    let mut c = claims("users:read");
    c["jti"] = "t-2".into();
    assert_eq!(w.bearer("POST", "/api/v1/transfers", &rs256(&c)).0, 403);
    c["scope"] = "transfers:write".into();
    c["jti"] = "t-2".into();
    assert_eq!(w.bearer("POST", "/api/v1/transfers", &rs256(&c)).0, 0);
}

#[test]
fn repeated_token_is_served_from_the_cache() {
    let w = World::web();
    let t = rs256(&claims("users:read"));
    let mut h = FakeHost::request("GET", "/api/v1/users/1")
        .with_header("authorization", &format!("Bearer {t}"));
    let (_, o1) = w.run(&mut h);
    assert!(o1.signature_checked && !o1.cache_hit);
    let mut h = FakeHost::request("GET", "/api/v1/users/1")
        .with_header("authorization", &format!("Bearer {t}"));
    let (v, o2) = w.run(&mut h);
    assert_eq!(v, Verdict::Continue);
    assert!(o2.cache_hit && !o2.signature_checked);
    assert_eq!(h.header("x-user-id"), Some("user-42"));
}

#[test]
fn client_copies_of_forwarded_headers_are_stripped_on_every_route() {
    let w = World::web();
    let mut h = FakeHost::request("GET", "/health").with_header("x-user-id", "admin");
    w.run(&mut h);
    assert_eq!(h.header("x-user-id"), None);
    assert!(Identity::read(&h).is_none());
}

/// Every attack of the issue: 401, never a panic.
#[test]
fn attacks_are_refused_with_401() {
    let w = World::web();
    let n = now();
    let good = claims("users:read");
    let good_h = r#"{"alg":"RS256","kid":"demo-rs256"}"#;
    let payload = serde_json::to_string(&good).unwrap();
    let valid = rs256(&good);
    let parts: Vec<&str> = valid.split('.').collect();

    let mut attacks: Vec<(&str, String, &str)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = format!(
            "{}.{}.",
            B64.encode(format!(r#"{{"alg":"{alg}","kid":"demo-rs256"}}"#)),
            B64.encode(&payload)
        );
        attacks.push(("alg none (empty sig)", t.clone(), "malformed"));
        attacks.push(("alg none (sig)", format!("{t}AAAA"), "alg_none"));
    }
    // HS256 with the RSA public key (the JWKS n) as the HMAC secret.
    {
        use hmac::{Hmac, Mac};
        let msg = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"HS256","kid":"demo-rs256"}"#),
            B64.encode(&payload)
        );
        let mut m = Hmac::<Sha256>::new_from_slice(JWKS.as_bytes()).unwrap();
        m.update(msg.as_bytes());
        let t = format!("{msg}.{}", B64.encode(m.finalize().into_bytes()));
        attacks.push(("HS256 algorithm confusion", t, "alg_not_allowed"));
    }
    // RS256 header on the EC key, ES256 header on the RSA key.
    attacks.push((
        "alg not bound to key",
        sign_raw(r#"{"alg":"ES256","kid":"demo-rs256"}"#, &payload),
        "alg_not_allowed",
    ));
    attacks.push((
        "PS256 on an RS256-only key",
        sign_raw(r#"{"alg":"PS256","kid":"demo-rs256"}"#, &payload),
        "alg_not_allowed",
    ));
    // ECDSA all-zero signature (CVE-2022-21449).
    {
        let msg = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"ES256","kid":"demo-es256"}"#),
            B64.encode(&payload)
        );
        attacks.push((
            "ECDSA zero signature",
            format!("{msg}.{}", B64.encode([0u8; 64])),
            "signature",
        ));
    }
    // A valid signature from another key under our kid.
    {
        let msg = format!("{}.{}", B64.encode(good_h), B64.encode(&payload));
        let t = format!(
            "{msg}.{}",
            B64.encode(rs_sign(ATTACKER_RS_PEM, msg.as_bytes()))
        );
        attacks.push(("another RSA key under our kid", t, "signature"));
        let other = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let msg = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"ES256","kid":"demo-es256"}"#),
            B64.encode(&payload)
        );
        let s: p256::ecdsa::Signature = other.sign(msg.as_bytes());
        attacks.push((
            "another EC key under our kid",
            format!("{msg}.{}", B64.encode(s.to_bytes())),
            "signature",
        ));
    }
    // Embedded-key headers: the attacker's key is never used.
    for hdr in ["jku", "x5u", "jwk", "x5c"] {
        let other = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let val = match hdr {
            "jwk" => r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}"#.to_string(),
            "x5c" => r#"["MIIB"]"#.to_string(),
            _ => r#""https://attacker.example/keys""#.to_string(),
        };
        let h = format!(r#"{{"alg":"ES256","kid":"demo-es256","{hdr}":{val}}}"#);
        let msg = format!("{}.{}", B64.encode(&h), B64.encode(&payload));
        let s: p256::ecdsa::Signature = other.sign(msg.as_bytes());
        attacks.push((
            "embedded key header",
            format!("{msg}.{}", B64.encode(s.to_bytes())),
            "signature",
        ));
    }
    attacks.push((
        "unknown crit",
        sign_raw(
            r#"{"alg":"RS256","kid":"demo-rs256","crit":["exp2"],"exp2":1}"#,
            &payload,
        ),
        "crit",
    ));
    attacks.push((
        "nested JWT (cty)",
        sign_raw(
            r#"{"alg":"RS256","kid":"demo-rs256","cty":"JWT"}"#,
            &payload,
        ),
        "nested",
    ));
    {
        let inner = rs256(&good);
        let msg = format!("{}.{}", B64.encode(good_h), B64.encode(&inner));
        let t = format!("{msg}.{}", B64.encode(rs_sign(RS_PEM, msg.as_bytes())));
        attacks.push(("nested JWT (payload)", t, "nested"));
    }
    attacks.push((
        "duplicate alg",
        sign_raw(
            r#"{"alg":"RS256","alg":"none","kid":"demo-rs256"}"#,
            &payload,
        ),
        "duplicate_member",
    ));
    attacks.push((
        "duplicate kid",
        sign_raw(r#"{"alg":"RS256","kid":"x","kid":"demo-rs256"}"#, &payload),
        "duplicate_member",
    ));
    {
        let dup = payload.replacen('{', r#"{"sub":"admin","#, 1);
        attacks.push((
            "duplicate claim",
            sign_raw(good_h, &dup),
            "duplicate_member",
        ));
    }
    // Non-canonical base64url: padding, standard alphabet, non-zero trailing bits.
    attacks.push((
        "padding",
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        "bad_encoding",
    ));
    {
        let mut sig = parts[2].to_string();
        let last = sig.pop().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let i = alphabet.find(last).unwrap();
        // 256-byte signature → last char carries 4 significant bits + 2 zero bits.
        sig.push(alphabet.as_bytes()[(i & !3) | 1] as char);
        attacks.push((
            "non-zero trailing bits",
            format!("{}.{}.{sig}", parts[0], parts[1]),
            "bad_encoding",
        ));
        let std = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            parts[2].replace('-', "+").replace('_', "/")
        );
        if std != valid {
            attacks.push(("standard base64 alphabet", std, "bad_encoding"));
        }
    }
    attacks.push((
        "oversized",
        format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]),
        "too_large",
    ));
    attacks.push(("four parts", format!("{valid}.x"), "malformed"));
    attacks.push((
        "JWE-like",
        format!(
            "{}.{}.{}.{}.{}",
            parts[0], parts[1], parts[2], parts[1], parts[2]
        ),
        "malformed",
    ));
    {
        let mut c = good.clone();
        c["exp"] = (n + 600).to_string().into();
        attacks.push(("exp as a string", rs256(&c), "bad_claims"));
        let mut c = good.clone();
        c["aud"] = json!([1, 2]);
        attacks.push(("aud of wrong type", rs256(&c), "bad_claims"));
        let mut c = good.clone();
        c["iss"] = "https://evil.example".into();
        attacks.push(("wrong iss", rs256(&c), "issuer"));
        let mut c = good.clone();
        c["aud"] = "other-api".into();
        attacks.push(("wrong aud", rs256(&c), "audience"));
        let mut c = good.clone();
        c["exp"] = (n - 61).into();
        attacks.push(("expired beyond skew", rs256(&c), "expired"));
        let mut c = good.clone();
        c["nbf"] = (n + 120).into();
        attacks.push(("nbf beyond skew", rs256(&c), "not_yet_valid"));
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("exp");
        attacks.push(("no exp", rs256(&c), "bad_claims"));
    }
    attacks.push((
        "unknown kid",
        sign_raw(r#"{"alg":"RS256","kid":"rotated-away"}"#, &payload),
        "unknown_kid",
    ));
    attacks.push((
        "kid of wrong type",
        sign_raw(r#"{"alg":"RS256","kid":7}"#, &payload),
        "bad_header",
    ));
    attacks.push((
        "typ JWE",
        sign_raw(
            r#"{"alg":"RS256","kid":"demo-rs256","typ":"JOSE+JSON"}"#,
            &payload,
        ),
        "bad_header",
    ));

    for (name, token, code) in &attacks {
        let mut h = FakeHost::request("GET", "/api/v1/users/1")
            .with_header("authorization", &format!("Bearer {token}"));
        let (v, o) = w.run(&mut h);
        assert_eq!(v, Verdict::Responded, "{name} passed");
        let r = h.response.as_ref().unwrap();
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.json()["error"], "invalid_token", "{name}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{name}"
        );
        assert_eq!(o.code, Some(*code), "{name}");
        if *code != "signature" {
            assert!(
                !o.signature_checked,
                "{name}: refused only after a signature check"
            );
        }
    }
    // Sanity: the unmodified token passes.
    assert_eq!(w.bearer("GET", "/api/v1/users/1", &valid).0, 0);
}

#[test]
fn within_skew_is_accepted() {
    let w = World::web();
    let mut c = claims("users:read");
    c["exp"] = (now() - 30).into();
    c["nbf"] = (now() + 30).into();
    assert_eq!(w.bearer("GET", "/api/v1/users/1", &rs256(&c)).0, 0);
}

#[test]
fn two_tokens_in_one_request_are_refused() {
    let w = World::web();
    let t = rs256(&claims("users:read"));
    // Repeated header.
    let mut h = FakeHost::request("GET", "/api/v1/users/1")
        .with_header("authorization", &format!("Bearer {t}"))
        .with_header("authorization", &format!("Bearer {t}"));
    w.run(&mut h);
    assert_eq!(h.response.as_ref().unwrap().status, 401);
    // Two in one header value.
    let (s, h) = w.bearer("GET", "/api/v1/users/1", &format!("{t}, Bearer {t}"));
    assert_eq!(s, 401);
    assert!(h
        .response
        .unwrap()
        .header("www-authenticate")
        .unwrap()
        .contains("more than one token"));
}

#[test]
fn optional_routes_pass_without_token_but_not_with_a_bad_one() {
    let mut v: Value = serde_json::from_str(WEB).unwrap();
    v["routes"] = json!([{"name": "opt", "prefix": "/opt", "requirement": "optional"}]);
    let w = World::from(config::load(v.to_string().as_bytes()).unwrap());
    let mut h = FakeHost::request("GET", "/opt/x");
    let (verdict, o) = w.run(&mut h);
    assert_eq!((verdict, o.result), (Verdict::Continue, Result_::Anonymous));
    assert_eq!(w.bearer("GET", "/opt/x", "a.b.c").0, 401);
    assert_eq!(w.bearer("GET", "/opt/x", &es256(&claims(""))).0, 0);
}

#[test]
fn optional_routes_strip_credentials_they_did_not_recognise() {
    let mut v: Value = serde_json::from_str(WEB).unwrap();
    v["routes"] = json!([{"name": "opt", "prefix": "/opt", "requirement": "optional"}]);
    let w = World::from(config::load(v.to_string().as_bytes()).unwrap());
    // The filter reads `Bearer <token>` only; a lax upstream parser reads
    // these as bearer tokens too, unverified: they must not reach it.
    for value in [
        "Bearer\tforged".to_string(),
        "Basic x, Bearer forged".to_string(),
        "Basic x,Bearer forged".to_string(),
        "bearer\tforged".to_string(),
    ] {
        let mut h = FakeHost::request("GET", "/opt/x").with_header("authorization", &value);
        let (verdict, o) = w.run(&mut h);
        assert_eq!(
            (verdict, o.result),
            (Verdict::Continue, Result_::Anonymous),
            "{value:?}"
        );
        assert_eq!(
            h.header("authorization"),
            None,
            "{value:?} reached the upstream"
        );
    }
    // Another scheme alone is not ours: it is left for the upstream.
    let mut h =
        FakeHost::request("GET", "/opt/x").with_header("authorization", "Basic dXNlcjpwdw==");
    assert_eq!(w.run(&mut h).0, Verdict::Continue);
    assert_eq!(h.header("authorization"), Some("Basic dXNlcjpwdw=="));
    // A verified token on an optional route is dropped as on a required one.
    let (s, h) = w.bearer("GET", "/opt/x", &es256(&claims("")));
    assert_eq!(s, 0);
    assert_eq!(h.header("authorization"), None);
}

#[test]
fn cookie_source_and_forward_token() {
    let mut v: Value = serde_json::from_str(WEB).unwrap();
    v["providers"][0]["sources"] =
        json!([{"cookie": {"name": "at"}}, {"header": {"name": "x-token"}}]);
    v["providers"][0]["forward_token"] = true.into();
    let w = World::from(config::load(v.to_string().as_bytes()).unwrap());
    let t = es256(&claims(""));
    let mut h = FakeHost::request("GET", "/api/x").with_header("cookie", &format!("a=1; at={t}"));
    assert_eq!(w.run(&mut h).0, Verdict::Continue);
    let mut h = FakeHost::request("GET", "/api/x").with_header("x-token", &t);
    assert_eq!(w.run(&mut h).0, Verdict::Continue);
    assert!(h.header("x-token").is_some(), "forward_token keeps it");
    let mut h = FakeHost::request("GET", "/api/x")
        .with_header("x-token", &t)
        .with_header("cookie", &format!("at={t}"));
    w.run(&mut h);
    assert_eq!(h.response.unwrap().status, 401, "two sources");
    // Bearer is no longer a source.
    assert_eq!(w.bearer("GET", "/api/x", &t).0, 401);
}

#[test]
fn a_provider_without_keys_refuses_and_asks_for_a_refetch() {
    let mut v: Value = serde_json::from_str(WEB).unwrap();
    v["providers"][0]["jwks"] = json!({"remote": {"cluster": "jwks", "path": "/jwks"}});
    let w = World::from(config::load(v.to_string().as_bytes()).unwrap());
    let mut h = FakeHost::request("GET", "/api/x")
        .with_header("authorization", &format!("Bearer {}", rs256(&claims(""))));
    let (_, o) = w.run(&mut h);
    assert_eq!(h.response.unwrap().status, 401);
    assert_eq!(o.code, Some("no_keys"));
    assert_eq!(o.refetch, Some(0));
}

#[test]
fn unknown_kid_asks_for_a_refetch_without_crypto() {
    let w = World::web();
    let payload = serde_json::to_string(&claims("")).unwrap();
    let t = sign_raw(r#"{"alg":"RS256","kid":"new-key"}"#, &payload);
    let mut h =
        FakeHost::request("GET", "/api/x").with_header("authorization", &format!("Bearer {t}"));
    let (_, o) = w.run(&mut h);
    assert_eq!(o.refetch, Some(0));
    assert!(!o.signature_checked);
}

#[test]
fn a_key_set_change_invalidates_cached_tokens() {
    let mut w = World::web();
    let t = rs256(&claims(""));
    assert_eq!(w.bearer("GET", "/api/x", &t).0, 0);
    // Rotation: the RSA key disappears.
    let set = crate::jwks::parse(
        json!({"keys": [serde_json::from_str::<Value>(JWKS).unwrap()["keys"][1]]})
            .to_string()
            .as_bytes(),
        &w.cfg.providers[0].algorithms,
        crate::jwks::Strictness::Strict,
    )
    .unwrap();
    w.keys[0] = ProviderKeys {
        set: Some(std::rc::Rc::new(set)),
        generation: 2,
        stale: false,
    };
    assert_eq!(w.bearer("GET", "/api/x", &t).0, 401);
}

#[test]
fn every_token_error_message_is_safe_in_a_quoted_header() {
    use crate::token::TokenError as E;
    for e in [
        E::TooLarge,
        E::Malformed,
        E::BadEncoding,
        E::BadHeader("x"),
        E::DuplicateMember,
        E::AlgNone,
        E::AlgNotAllowed,
        E::Crit,
        E::Nested,
        E::BadClaims("x"),
        E::Issuer,
        E::Audience,
        E::Expired,
        E::NotYetValid,
        E::UnknownKid,
        E::AmbiguousKey,
        E::NoKeys,
        E::Signature,
        E::MultipleTokens,
    ] {
        assert!(e
            .to_string()
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'));
    }
}

#[test]
fn expired_cache_entries_are_not_used() {
    let w = World::web();
    let mut c = claims("");
    c["exp"] = (now() - 55).into(); // valid for 5 more seconds (skew 60)
    let t = rs256(&c);
    assert_eq!(w.bearer("GET", "/api/x", &t).0, 0);
    let mut h =
        FakeHost::request("GET", "/api/x").with_header("authorization", &format!("Bearer {t}"));
    let env = Env {
        cfg: &w.cfg,
        keys: &w.keys,
        cache: &w.cache,
        shared: &w.shared,
        jti: &w.jti,
    };
    h.time = clock() + Duration::from_secs(10);
    let (v, o, _) = on_request_headers(&env, &mut h);
    assert_eq!(v, Verdict::Responded);
    assert!(!o.cache_hit);
}

/// Arbitrary bearer tokens: no token that the demo keys did not sign passes,
/// whatever its shape, and every refusal is a well-formed 401 with an RFC 6750
/// challenge (never a panic, never a 5xx).
mod arbitrary_input {
    use super::*;
    use filter_core::testing::assert_denial;
    use proptest::prelude::*;

    thread_local! {
        static WORLD: World = World::web();
        static VALID: (String, String) = (rs256(&claims("users:read")), es256(&claims("users:read")));
    }

    fn refused_with_401(token: &str) -> Result<(), TestCaseError> {
        WORLD.with(|w| {
            let (status, h) = w.bearer("GET", "/api/v1/users/1", token);
            prop_assert_eq!(status, 401, "token passed or got another status: {}", token);
            assert_denial(h.response.as_ref(), &[401], Some("test-rid"));
            let challenge = h
                .response
                .as_ref()
                .and_then(|r| r.header("www-authenticate"))
                .unwrap_or_default();
            prop_assert!(challenge.starts_with("Bearer"), "{}", challenge);
            Ok(())
        })
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(Value::from(now() + 600)),
            Just(Value::from((now() + 600).to_string())),
            prop::sample::select(vec![
                "RS256",
                "ES256",
                "HS256",
                "none",
                "NONE",
                "nOnE",
                "PS256",
                "ES384",
                "EdDSA",
                "RS1",
                "demo-rs256",
                "demo-es256",
                ISS,
                "demo-api",
                "users:read",
                "JWT",
                "",
            ])
            .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ]
    }

    fn json_object() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "alg", "kid", "typ", "crit", "jku", "x5u", "jwk", "x5c", "cty", "b64", "iss", "aud",
            "sub", "exp", "nbf", "iat", "jti", "scope", "",
        ]);
        let value = json_leaf().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::vec(("[a-z]{0,4}", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        prop_oneof![
            // raw text, so that duplicate members and odd spacing occur too
            prop::collection::vec((key, value), 0..7).prop_map(|kv| {
                let members: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| {
                        format!("\"{k}\":{}", serde_json::to_string(&v).unwrap_or_default())
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
            any::<String>(),
        ]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            json_object().prop_map(|j| B64.encode(j)),
            "[A-Za-z0-9_=+/.-]{0,40}",
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| B64.encode(b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: filter_core::testing::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn no_token_the_demo_keys_did_not_sign_passes(
            parts in prop::collection::vec(segment(), 0..6),
            prefix in prop::sample::select(vec!["", " ", "  "]),
        ) {
            refused_with_401(&format!("{prefix}{}", parts.join(".")))?;
        }

        #[test]
        fn any_change_to_one_character_of_a_valid_token_is_refused(
            es in any::<bool>(),
            at in any::<prop::sample::Index>(),
            with in prop::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()
            ),
        ) {
            let token = VALID.with(|(rs, es256)| if es { es256.clone() } else { rs.clone() });
            let mut chars: Vec<char> = token.chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != with);
            chars[i] = with;
            let mutated: String = chars.into_iter().collect();
            refused_with_401(&mutated)?;
        }
    }

    #[test]
    fn the_unmutated_tokens_pass() {
        WORLD.with(|w| {
            VALID.with(|(rs, es)| {
                assert_eq!(w.bearer("GET", "/api/v1/users/1", rs).0, 0);
                assert_eq!(w.bearer("GET", "/api/v1/users/1", es).0, 0);
            })
        });
    }
}

/// The pure core, without a host: plain values in, a decision out.
mod decide {
    use super::*;
    use crate::filter::decide;
    use filter_core::request::{Decision, RequestView};

    fn run(w: &World, headers: &[(&str, &str)]) -> (Decision, Outcome) {
        let all: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let env = Env {
            cfg: &w.cfg,
            keys: &w.keys,
            cache: &w.cache,
            shared: &w.shared,
            jti: &w.jti,
        };
        match decide(&env, &RequestView::new(&all), now) {
            (crate::filter::Step::Done(d), o) => (d, o),
            (crate::filter::Step::Claim(_), _) => panic!("a claim"),
        }
    }

    #[test]
    fn a_verified_token_becomes_edits_and_an_identity() {
        let w = World::web();
        let t = format!("Bearer {}", rs256(&claims("users:read")));
        let (d, o) = run(
            &w,
            &[
                (":method", "GET"),
                (":path", "/api/v1/users/1"),
                ("authorization", &t),
                ("x-user-id", "forged"),
            ],
        );
        assert_eq!(o.result, Result_::Allowed);
        let Decision::Continue(e) = d else {
            panic!("denied: {d:?}")
        };
        assert!(e.remove.contains(&"authorization".to_string()));
        assert!(
            e.remove.contains(&"x-user-id".to_string()),
            "client copy stripped"
        );
        assert!(e
            .set
            .contains(&("x-user-id".to_string(), "user-42".to_string())));
        assert_eq!(e.identity.and_then(|i| i.user).as_deref(), Some("user-42"));
    }

    #[test]
    fn a_missing_scope_is_a_403_denial_and_no_identity() {
        let w = World::web();
        let t = format!("Bearer {}", rs256(&claims("")));
        let (d, o) = run(
            &w,
            &[
                (":method", "GET"),
                (":path", "/api/v1/users/1"),
                ("authorization", &t),
            ],
        );
        assert_eq!(o.result, Result_::Denied);
        let Decision::Deny(e, denial) = d else {
            panic!("allowed")
        };
        assert_eq!((denial.status, denial.code), (403, "insufficient_scope"));
        assert!(e.identity.is_none());
    }

    #[test]
    fn an_open_route_never_reads_the_clock() {
        let w = World::web();
        let all = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/api/v1/public/x".to_string()),
            ("authorization".to_string(), "Bearer x".to_string()),
        ];
        let env = Env {
            cfg: &w.cfg,
            keys: &w.keys,
            cache: &w.cache,
            shared: &w.shared,
            jti: &w.jti,
        };
        let (d, _) = decide(&env, &RequestView::new(&all), || -> u64 {
            panic!("the clock was read on an open route")
        });
        let crate::filter::Step::Done(Decision::Continue(e)) = d else {
            panic!("denied")
        };
        assert_eq!(e.remove, vec!["authorization".to_string()]);
    }
}
