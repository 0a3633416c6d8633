use super::*;
use crate::config::tests::compiled;
use crate::idtoken::tests as tok;
use crate::provider::{Doc, ProviderState};
use filter_core::host::FakeHost;

const NOW: u64 = 1_800_000_000;

const DISCOVERY: &str = r#"{
    "issuer": "http://localhost:18084",
    "authorization_endpoint": "http://localhost:18084/authorize",
    "token_endpoint": "http://localhost:18084/token",
    "jwks_uri": "http://localhost:18084/jwks",
    "end_session_endpoint": "http://localhost:18084/logout"
}"#;

fn ready_provider(cfg: &Compiled) -> ProviderState {
    let mut p = ProviderState::default();
    p.started(1, Doc::Discovery);
    p.on_answer(cfg, 1, Some("200"), DISCOVERY.as_bytes(), NOW)
        .unwrap()
        .unwrap();
    p.started(2, Doc::Jwks);
    p.on_answer(cfg, 2, Some("200"), tok::jwks_json("k1").as_bytes(), NOW)
        .unwrap()
        .unwrap();
    p
}

/// Deterministic "random" bytes: a counter.
fn counter() -> impl FnMut(&mut [u8]) -> bool {
    let mut n = 0u8;
    move |b: &mut [u8]| {
        for x in b.iter_mut() {
            n = n.wrapping_add(1);
            *x = n;
        }
        true
    }
}

/// The fake token endpoint: form body in, status and body out.
type TokenEndpoint<'a> = dyn FnMut(&str) -> (Option<&'static str>, Vec<u8>) + 'a;

struct World {
    cfg: Compiled,
    provider: ProviderState,
    /// The fake session store: hex key → value.
    store: std::collections::HashMap<[u8; 32], Vec<u8>>,
    /// The fake store's once-only claims.
    claims: std::collections::HashSet<[u8; 32]>,
    store_down: bool,
    now: u64,
}

impl World {
    fn new() -> Self {
        let cfg = compiled();
        let provider = ready_provider(&cfg);
        World {
            cfg,
            provider,
            store: Default::default(),
            claims: Default::default(),
            store_down: false,
            now: NOW,
        }
    }

    /// Runs a request through the flow, answering store callouts from the
    /// fake store and provider callouts with `token`.
    fn run(
        &mut self,
        host: &mut FakeHost,
        token: &mut TokenEndpoint<'_>,
    ) -> (Verdict, Event, Vec<Call>) {
        let mut rnd = counter();
        let mut calls = Vec::new();
        let mut env = Env {
            cfg: &self.cfg,
            provider: &mut self.provider,
            now: self.now,
            random: &mut rnd,
        };
        let mut step = start(&mut env, host);
        loop {
            match step {
                Step::Done(v, e) => return (v, e, calls),
                Step::Call(call, p) => {
                    let (status, body): (Option<&str>, Vec<u8>) = match &call {
                        Call::Store { .. } if self.store_down => (None, Vec::new()),
                        Call::Store {
                            method,
                            key,
                            query,
                            body,
                        } => match *method {
                            "PUT" => {
                                self.store.insert(*key, body.clone().unwrap_or_default());
                                (Some("204"), Vec::new())
                            }
                            "GET" => {
                                let v = if query == "consume=1" {
                                    self.store.remove(key)
                                } else {
                                    self.store.get(key).cloned()
                                };
                                match v {
                                    Some(v) => (Some("200"), v),
                                    None => (Some("404"), Vec::new()),
                                }
                            }
                            "DELETE" => {
                                self.store.remove(key);
                                (Some("204"), Vec::new())
                            }
                            _ => unreachable!(),
                        },
                        Call::Claim { key, .. } => {
                            if self.claims.insert(*key) {
                                (Some("201"), Vec::new())
                            } else {
                                (Some("409"), Vec::new())
                            }
                        }
                        Call::Token { body, .. } => token(body),
                        Call::Jwks { .. } => (Some("200"), tok::jwks_json("k1").into_bytes()),
                    };
                    calls.push(call);
                    step = resume(
                        &mut env,
                        host,
                        *p,
                        Answer {
                            status,
                            body: &body,
                        },
                    );
                }
            }
        }
    }
}

impl World {
    /// A browser navigation to "/" without a session: the gateway's
    /// redirect location and the answered request (its pre-login cookie).
    fn begin_login(&mut self) -> (String, FakeHost) {
        let mut h = browser("/");
        self.run(&mut h, &mut |_| unreachable!());
        let loc = h
            .response
            .as_ref()
            .unwrap()
            .header("location")
            .unwrap()
            .to_string();
        (loc, h)
    }
}

fn browser(path: &str) -> FakeHost {
    let mut h =
        FakeHost::request("GET", path).with_header("accept", "text/html,application/xhtml+xml");
    h.set_request_header(":authority", "localhost:10444");
    h
}

fn set_cookies(h: &FakeHost) -> Vec<String> {
    h.response
        .as_ref()
        .map(|r| {
            r.headers
                .iter()
                .filter(|(n, _)| n == "set-cookie")
                .map(|(_, v)| v.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A whole login; returns the session cookie pair (`name=value`).
fn login(w: &mut World, page: &str, id_token_for: &mut dyn FnMut(&str) -> String) -> String {
    let mut h = browser(page);
    let (v, e, _) = w.run(&mut h, &mut |_| unreachable!());
    assert_eq!((v, e), (Verdict::Responded, Event::LoginStarted));
    let r = h.response.clone().unwrap();
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with("http://localhost:18084/authorize?"),
        "{loc}"
    );
    assert_eq!(
        query_param(&loc, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&loc, "redirect_uri").as_deref(),
        Some("https://localhost:10444/oauth2/callback")
    );
    let state = query_param(&loc, "state").unwrap();
    let nonce = query_param(&loc, "nonce").unwrap();
    let login_cookie = set_cookies(&h).pop().unwrap();
    assert!(login_cookie.starts_with("__Host-gw-login="));
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(login_cookie.contains(attr), "{login_cookie}");
    }

    let mut cb = browser(&format!("/oauth2/callback?code=c-1&state={state}"))
        .with_header("cookie", &cookie_value(&login_cookie));
    let challenge = query_param(&loc, "code_challenge").unwrap();
    let (v, e, calls) = w.run(&mut cb, &mut |body| {
        let verifier = form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "code_verifier")
            .unwrap()
            .1
            .into_owned();
        assert_eq!(pkce_challenge(&verifier), challenge, "PKCE S256");
        let t = id_token_for(&nonce);
        (
            Some("200"),
            serde_json::json!({"id_token": t, "access_token": "a"})
                .to_string()
                .into_bytes(),
        )
    });
    assert_eq!(
        (v, e),
        (Verdict::Responded, Event::LoginCompleted),
        "{calls:?} {:?}",
        cb.response
    );
    let r = cb.response.clone().unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(page));
    let cookies = set_cookies(&cb);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("__Host-gw-session="))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(cookies
        .iter()
        .any(|c| c.starts_with("__Host-gw-login=;") && c.contains("Max-Age=0")));
    cookie_value(session)
}

fn alice(nonce: &str) -> String {
    let mut c = tok::claims(NOW);
    c["nonce"] = nonce.into();
    tok::sign(serde_json::json!({"alg": "RS256", "kid": "k1"}), c, 1)
}

fn bob(nonce: &str) -> String {
    let mut c = tok::claims(NOW);
    c["nonce"] = nonce.into();
    c["sub"] = "bob".into();
    c["email"] = "bob@example.com".into();
    c["groups"] = serde_json::json!([]);
    tok::sign(serde_json::json!({"alg": "RS256", "kid": "k1"}), c, 1)
}

#[test]
fn login_then_pages_then_logout() {
    let mut w = World::new();
    let session = login(&mut w, "/tools/dash?x=1", &mut alice);

    let mut page = browser("/admin/users")
        .with_header("cookie", &format!("theme=dark; {session}"))
        .with_header("x-user-id", "mallory")
        .with_header("x-user-groups", "tools-admin");
    let (v, e, calls) = w.run(&mut page, &mut |_| unreachable!());
    assert_eq!((v, e), (Verdict::Continue, Event::Allowed));
    assert!(
        matches!(&calls[..], [Call::Store { method: "GET", query, .. }] if query.starts_with("idle_ms="))
    );
    assert_eq!(page.header("x-user-id"), Some("alice"));
    assert_eq!(page.header("x-user-email"), Some("alice@example.com"));
    assert_eq!(page.header("x-user-groups"), Some("tools-admin"));
    assert_eq!(
        page.header("cookie"),
        Some("theme=dark"),
        "the gateway's cookie stays at the gateway"
    );

    let mut out = browser("/oauth2/logout").with_header("cookie", &session);
    let (v, e, _) = w.run(&mut out, &mut |_| unreachable!());
    assert_eq!((v, e), (Verdict::Responded, Event::Logout));
    let r = out.response.clone().unwrap();
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with("http://localhost:18084/logout?"));
    assert_eq!(
        query_param(loc, "post_logout_redirect_uri").as_deref(),
        Some("https://localhost:10444/")
    );
    assert!(set_cookies(&out)
        .iter()
        .any(|c| c.starts_with("__Host-gw-session=;") && c.contains("Max-Age=0")));

    // the old cookie is dead
    let mut again = FakeHost::request("GET", "/tools/dash").with_header("cookie", &session);
    let (_, e, _) = w.run(&mut again, &mut |_| unreachable!());
    assert_eq!(e, Event::LoginRequired);
    assert_eq!(again.response.unwrap().status, 401);
}

#[test]
fn bob_is_forbidden_from_admin_but_not_elsewhere() {
    let mut w = World::new();
    let session = login(&mut w, "/", &mut bob);
    let mut admin = browser("/admin/").with_header("cookie", &session);
    let (_, e, _) = w.run(&mut admin, &mut |_| unreachable!());
    assert_eq!(e, Event::Forbidden);
    let r = admin.response.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden"))
    );
    let mut page = browser("/tools").with_header("cookie", &session);
    let (v, _, _) = w.run(&mut page, &mut |_| unreachable!());
    assert_eq!(v, Verdict::Continue);
    assert_eq!(page.header("x-user-id"), Some("bob"));
    assert_eq!(page.header("x-user-groups"), None);
}

#[test]
fn no_session_api_call_is_401_and_open_path_passes_stripped() {
    let mut w = World::new();
    let mut api = FakeHost::request("GET", "/tools/api").with_header("accept", "application/json");
    let (_, e, calls) = w.run(&mut api, &mut |_| unreachable!());
    assert_eq!(e, Event::LoginRequired);
    assert!(calls.is_empty());
    let r = api.response.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("login_required"))
    );
    assert_eq!(r.header("x-request-id"), Some("test-rid"));

    let mut health = FakeHost::request("GET", "/health")
        .with_header("x-user-id", "mallory")
        .with_header("x-user-email", "m@evil")
        .with_header("cookie", "__Host-gw-session=forged");
    let (v, e, calls) = w.run(&mut health, &mut |_| unreachable!());
    assert_eq!((v, e), (Verdict::Continue, Event::Open));
    assert!(calls.is_empty());
    assert_eq!(health.header("x-user-id"), None);
    assert_eq!(health.header("x-user-email"), None);
    assert_eq!(health.header("cookie"), None);
}

#[test]
fn login_csrf_state_must_match_this_browser_and_is_single_use() {
    let mut w = World::new();
    let (loc, h) = w.begin_login();
    let state = query_param(&loc, "state").unwrap();
    let login_cookie = cookie_value(&set_cookies(&h)[0]);

    // no pre-login cookie (the attacker's link in the victim's browser)
    let mut cb = browser(&format!("/oauth2/callback?code=c&state={state}"));
    let (_, e, calls) = w.run(&mut cb, &mut |_| unreachable!());
    assert_eq!(e, Event::LoginFailed("no_login_cookie"));
    assert!(calls.is_empty());
    assert_eq!(cb.response.unwrap().status, 401);

    // wrong state: refused, and the login state is spent
    let mut cb =
        browser("/oauth2/callback?code=c&state=other").with_header("cookie", &login_cookie);
    let (_, e, _) = w.run(&mut cb, &mut |_| unreachable!());
    assert_eq!(e, Event::LoginFailed("state"));
    let mut cb = browser(&format!("/oauth2/callback?code=c&state={state}"))
        .with_header("cookie", &login_cookie);
    let (_, e, _) = w.run(&mut cb, &mut |_| unreachable!());
    assert_eq!(e, Event::LoginFailed("state"), "single use");
}

#[test]
fn a_refused_code_or_a_bad_id_token_creates_no_session() {
    for (answer, reason) in [
        (
            (Some("400"), br#"{"error":"invalid_grant"}"#.to_vec()),
            "code",
        ),
        (
            (Some("200"), br#"{"access_token":"x"}"#.to_vec()),
            "token_response",
        ),
    ] {
        let mut w = World::new();
        let (loc, h) = w.begin_login();
        let state = query_param(&loc, "state").unwrap();
        let mut cb = browser(&format!("/oauth2/callback?code=c&state={state}"))
            .with_header("cookie", &cookie_value(&set_cookies(&h)[0]));
        let a = answer.clone();
        let (_, e, _) = w.run(&mut cb, &mut |_| a.clone());
        assert_eq!(e, Event::LoginFailed(reason));
        assert!(w.store.is_empty(), "no session, login state spent");
    }
    // nonce of another login
    let mut w = World::new();
    let (loc, h) = w.begin_login();
    let state = query_param(&loc, "state").unwrap();
    let mut cb = browser(&format!("/oauth2/callback?code=c&state={state}"))
        .with_header("cookie", &cookie_value(&set_cookies(&h)[0]));
    let (_, e, _) = w.run(&mut cb, &mut |_| {
        (
            Some("200"),
            serde_json::json!({"id_token": alice("other")})
                .to_string()
                .into_bytes(),
        )
    });
    assert_eq!(e, Event::LoginFailed("nonce"));
    assert!(w.store.is_empty());
    // provider down at the token endpoint
    let mut w = World::new();
    let (loc, h) = w.begin_login();
    let state = query_param(&loc, "state").unwrap();
    let mut cb = browser(&format!("/oauth2/callback?code=c&state={state}"))
        .with_header("cookie", &cookie_value(&set_cookies(&h)[0]));
    let (_, e, _) = w.run(&mut cb, &mut |_| (None, Vec::new()));
    assert_eq!(e, Event::LoginFailed("provider_unavailable"));
    assert_eq!(cb.response.unwrap().status, 503);
}

#[test]
fn an_unknown_kid_fetches_the_keys_once() {
    let mut w = World::new();
    w.provider.keys = Some((
        crate::provider::parse_jwks(tok::jwks_json("old").as_bytes(), &w.cfg.algorithms).unwrap(),
        NOW - 3600,
    ));
    let _session = login(&mut w, "/", &mut alice);
    assert!(w
        .provider
        .keys(&w.cfg, NOW)
        .unwrap()
        .keys
        .iter()
        .any(|k| k.kid.as_deref() == Some("k1")));
}

#[test]
fn the_store_down_fails_closed_with_503() {
    let mut w = World::new();
    let session = login(&mut w, "/", &mut alice);
    w.store_down = true;
    for mut h in [
        browser("/tools").with_header("cookie", &session),
        browser("/tools"),
        browser("/oauth2/logout").with_header("cookie", &session),
    ] {
        let (_, e, _) = w.run(&mut h, &mut |_| unreachable!());
        assert_eq!(e, Event::StoreUnavailable);
        let r = h.response.unwrap();
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (503, Some("session_store_unavailable"))
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // the open path does not need the store
    let mut h = FakeHost::request("GET", "/health");
    assert_eq!(w.run(&mut h, &mut |_| unreachable!()).1, Event::Open);
}

#[test]
fn expired_sessions_and_tampered_cookies_are_no_session() {
    let mut w = World::new();
    let session = login(&mut w, "/", &mut alice);
    let mut tampered = session.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut h = FakeHost::request("GET", "/x").with_header("cookie", &tampered);
    assert_eq!(
        w.run(&mut h, &mut |_| unreachable!()).1,
        Event::LoginRequired
    );
    w.now = NOW + 8 * 3600;
    let mut h = FakeHost::request("GET", "/x").with_header("cookie", &session);
    assert_eq!(
        w.run(&mut h, &mut |_| unreachable!()).1,
        Event::LoginRequired
    );
}

#[test]
fn return_paths_never_leave_the_origin() {
    for (p, want) in [
        ("/tools?a=1", "/tools?a=1"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("/%2f/evil.example", "/"),
        ("/%5Cevil.example", "/"),
        ("/%252F%252Fevil.example", "/"),
        ("https://evil.example", "/"),
        ("/a\u{7}b", "/"),
    ] {
        assert_eq!(safe_return(p), want, "{p}");
    }
    assert_eq!(safe_return(&format!("/{}", "a".repeat(3000))), "/");
}

#[test]
fn cookies_are_parsed_strictly_and_removed_precisely() {
    let id = "A".repeat(43);
    let h = format!("a=1; __Host-gw-session={id}; b=2");
    assert_eq!(cookie_id(Some(&h), "__Host-gw-session"), Some(id.as_str()));
    assert_eq!(
        cookie_id(Some("__Host-gw-session=short"), "__Host-gw-session"),
        None
    );
    assert_eq!(
        cookie_id(
            Some(&format!("x__Host-gw-session={id}")),
            "__Host-gw-session"
        ),
        None
    );
    assert_eq!(
        without_cookies(&h, ["__Host-gw-session", "__Host-gw-login"]).as_deref(),
        Some("a=1; b=2")
    );
    assert_eq!(
        without_cookies(
            "__Host-gw-login=x",
            ["__Host-gw-session", "__Host-gw-login"]
        ),
        None
    );
}

#[test]
fn pkce_matches_rfc_7636_appendix_b() {
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn no_metadata_yet_is_503_for_a_login_but_sessions_still_work() {
    let mut w = World::new();
    let session = login(&mut w, "/", &mut alice);
    w.provider = ProviderState::default();
    let mut h = browser("/x");
    assert_eq!(
        w.run(&mut h, &mut |_| unreachable!()).1,
        Event::ProviderUnavailable
    );
    let mut h = browser("/x").with_header("cookie", &session);
    assert_eq!(w.run(&mut h, &mut |_| unreachable!()).1, Event::Allowed);
}

fn forwarding_world() -> World {
    let mut doc: serde_json::Value = serde_json::from_str(crate::config::tests::EXAMPLE).unwrap();
    doc["forward_access_token"] = serde_json::json!({"refresh_before": "60s"});
    let cfg = crate::config::load(doc.to_string().as_bytes(), &crate::config::tests::env).unwrap();
    let provider = ready_provider(&cfg);
    World {
        cfg,
        provider,
        store: Default::default(),
        claims: Default::default(),
        store_down: false,
        now: NOW,
    }
}

fn form(body: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A token endpoint that answers the code with a1/r1 and each refresh
/// token rN with a(N+1)/r(N+1), refusing a refresh token used twice.
fn token_endpoint(
    used: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
) -> impl FnMut(&str) -> (Option<&'static str>, Vec<u8>) {
    move |body: &str| {
        let answer = |n: usize, id_token: Option<String>| {
            let mut v = serde_json::json!({"access_token": format!("a{n}"), "expires_in": 300,
                                           "refresh_token": format!("r{n}"), "token_type": "Bearer"});
            if let Some(t) = id_token {
                v["id_token"] = t.into();
            }
            (Some("200"), v.to_string().into_bytes())
        };
        match form(body, "grant_type").as_deref() {
            Some("refresh_token") => {
                let rt = form(body, "refresh_token").unwrap();
                if used.borrow().contains(&rt) {
                    return (Some("400"), br#"{"error":"invalid_grant"}"#.to_vec());
                }
                used.borrow_mut().push(rt.clone());
                let n: usize = rt.trim_start_matches('r').parse().unwrap();
                answer(n + 1, None)
            }
            _ => answer(1, Some(alice("PLACEHOLDER"))),
        }
    }
}

#[test]
fn the_access_token_goes_upstream_and_is_refreshed_once_before_it_expires() {
    let mut w = forwarding_world();
    let used = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    // the login: the token endpoint's id_token must carry the login's nonce
    let (loc, h) = w.begin_login();
    let (state, nonce) = (
        query_param(&loc, "state").unwrap(),
        query_param(&loc, "nonce").unwrap(),
    );
    let mut cb = browser(&format!("/oauth2/callback?code=c&state={state}"))
        .with_header("cookie", &cookie_value(&set_cookies(&h)[0]));
    let mut endpoint = token_endpoint(used.clone());
    let (_, e, _) = w.run(&mut cb, &mut |body| {
        let (st, b) = endpoint(body);
        let text = String::from_utf8(b)
            .unwrap()
            .replace(&alice("PLACEHOLDER"), &alice(&nonce));
        (st, text.into_bytes())
    });
    assert_eq!(e, Event::LoginCompleted);
    let session = cookie_value(
        set_cookies(&cb)
            .iter()
            .find(|c| c.starts_with("__Host-gw-session="))
            .unwrap(),
    );

    let mut page = browser("/tools")
        .with_header("cookie", &session)
        .with_header("authorization", "Basic forged");
    let (_, e, calls) = w.run(&mut page, &mut |_| unreachable!());
    assert_eq!((e, calls.len()), (Event::Allowed, 1));
    assert_eq!(page.header("authorization"), Some("Bearer a1"));

    // 250 s later the token is within refresh_before (60 s) of its expiry
    w.now = NOW + 250;
    let mut endpoint = token_endpoint(used.clone());
    let mut page = browser("/tools").with_header("cookie", &session);
    let (_, e, calls) = w.run(&mut page, &mut endpoint);
    assert_eq!(e, Event::Refreshed, "{calls:?}");
    assert_eq!(page.header("authorization"), Some("Bearer a2"));
    assert!(matches!(
        &calls[..],
        [
            Call::Store { .. },
            Call::Claim { .. },
            Call::Token { .. },
            Call::Store { method: "PUT", .. }
        ]
    ));
    // the refreshed session serves the next request with no refresh
    let mut page = browser("/tools").with_header("cookie", &session);
    let (_, e, calls) = w.run(&mut page, &mut |_| unreachable!());
    assert_eq!((e, calls.len()), (Event::Allowed, 1));
    assert_eq!(page.header("authorization"), Some("Bearer a2"));
    assert_eq!(
        *used.borrow(),
        vec!["r1".to_string()],
        "each refresh token used once"
    );

    // another request holds the refresh lock: the current token while it is valid
    w.now = NOW + 250 + 250;
    let lock = w
        .store
        .keys()
        .copied()
        .find(|k| serde_json::from_slice::<SessionRecord>(&w.store[k]).is_ok());
    let rec: SessionRecord = serde_json::from_slice(&w.store[&lock.unwrap()]).unwrap();
    w.claims
        .insert(refresh_lock_key(&lock.unwrap(), rec.at.as_deref().unwrap()));
    let mut page = browser("/tools").with_header("cookie", &session);
    let (_, e, calls) = w.run(&mut page, &mut |_| unreachable!());
    assert_eq!(e, Event::Allowed, "{calls:?}");
    assert_eq!(page.header("authorization"), Some("Bearer a2"));
    // ...and once it has expired, 503 and a retry rather than no token
    w.now = NOW + 250 + 301;
    let mut page = FakeHost::request("GET", "/tools").with_header("cookie", &session);
    let (_, e, _) = w.run(&mut page, &mut |_| unreachable!());
    assert_eq!(e, Event::ProviderUnavailable);
    assert_eq!(page.response.unwrap().status, 503);
}

#[test]
fn without_forwarding_no_token_is_kept_and_client_authorization_passes() {
    let mut w = World::new();
    let session = login(&mut w, "/", &mut alice);
    assert!(w
        .store
        .values()
        .all(|v| !String::from_utf8_lossy(v).contains("\"at\"")));
    let mut page = browser("/x")
        .with_header("cookie", &session)
        .with_header("authorization", "Basic tool");
    w.run(&mut page, &mut |_| unreachable!());
    assert_eq!(page.header("authorization"), Some("Basic tool"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_requests_never_panic(path in "\\PC{0,64}", cookie in "\\PC{0,80}", accept in "\\PC{0,20}") {
        let mut w = World::new();
        let mut h = FakeHost::request("GET", &path).with_header("cookie", &cookie).with_header("accept", &accept);
        let _ = w.run(&mut h, &mut |_| (Some("500"), Vec::new()));
    }
}
