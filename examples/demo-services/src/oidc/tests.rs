//! The provider's flow, natively: validation, codes, tokens, signatures.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;
use sha2::Sha256;

use super::jose::{self, RsaKey};
use super::provider::*;

const PEM: &str = include_str!("../../../keys/oidc-rs256.pem");
const SECRET: &str = "s3cret/with+odd:chars";
const ISSUER: &str = "http://localhost:18084";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const CALLBACK: &str = "https://localhost:10444/oauth2/callback";
const NOW: u64 = 1_800_000_000;

fn provider() -> Provider {
    let key = RsaKey::from_pkcs8_pem(FILE_KID, PEM).unwrap();
    Provider::new(ISSUER.into(), key, SECRET.into())
}

fn form(pairs: &[(&str, &str)]) -> Form {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Form::parse(encoded.as_bytes())
}

fn authorize_params() -> Vec<(&'static str, &'static str)> {
    vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", CALLBACK),
        ("scope", "openid email groups"),
        ("state", "st&te=1"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
}

fn with(
    params: &[(&'static str, &'static str)],
    name: &'static str,
    value: Option<&'static str>,
) -> Form {
    let mut out: Vec<(&str, &str)> = params.iter().filter(|(k, _)| *k != name).copied().collect();
    if let Some(v) = value {
        out.push((name, v));
    }
    form(&out)
}

/// The query parameters of a redirect location.
fn query_of(location: &str) -> Vec<(String, String)> {
    let (_, query) = location.split_once('?').unwrap();
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(location: &str, name: &str) -> Option<String> {
    query_of(location)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// Logs alice in and answers the code.
fn code_for(p: &mut Provider, user: &str) -> String {
    let req = validate_authorize(&form(&authorize_params())).unwrap();
    let who = USERS.iter().find(|u| u.username == user).unwrap();
    let location = p.issue_code(&req, who, NOW).unwrap();
    param(&location, "code").unwrap()
}

fn redeem(p: &mut Provider, code: &str, verifier: &str, now: u64) -> Result<Value, TokenError> {
    p.token(
        Some(&basic(CLIENT_ID, SECRET)),
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ]),
        now,
    )
}

fn refresh(p: &mut Provider, token: &str) -> Result<Value, TokenError> {
    p.token(
        Some(&basic(CLIENT_ID, SECRET)),
        &form(&[("grant_type", "refresh_token"), ("refresh_token", token)]),
        NOW + 10,
    )
}

fn str_of<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap()
}

/// Verifies an RS256 compact JWS with a JWKS, the way a relying party does:
/// the key named by `kid`, rebuilt from `n` and `e`.
fn verify_with_jwks(token: &str, jwks: &Value) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    if header["alg"] != "RS256" {
        return Err("not RS256".into());
    }
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .ok_or("no such kid")?;
    let b = |f: &str| BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(str_of(jwk, f)).unwrap());
    let public = RsaPublicKey::new(b("n"), b("e")).unwrap();
    let signature =
        Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
    let input = format!("{}.{}", parts[0], parts[1]);
    VerifyingKey::<Sha256>::new(public)
        .verify(input.as_bytes(), &signature)
        .map_err(|e| e.to_string())?;
    Ok((header, claims))
}

#[test]
fn id_token_verifies_with_the_jwks_public_key_and_carries_the_claims() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let answer = redeem(&mut p, &code, VERIFIER, NOW + 5).unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 300);
    assert_eq!(answer["scope"], "openid email groups");
    assert!(str_of(&answer, "access_token").len() >= 43);
    assert!(str_of(&answer, "refresh_token").len() >= 43);
    let (header, claims) = verify_with_jwks(str_of(&answer, "id_token"), &p.jwks()).unwrap();
    assert_eq!(
        header,
        serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "demo-oidc-rs256"})
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["azp"], CLIENT_ID);
    assert_eq!(claims["iat"], NOW + 5);
    assert_eq!(claims["exp"], NOW + 5 + 300);
    assert_eq!(claims["auth_time"], NOW);
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["groups"], serde_json::json!(["tools-admin"]));
    assert_eq!(claims["name"], "Alice Example");
    // The JWKS is public material only.
    let jwk = &p.jwks()["keys"][0];
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["alg"], "RS256");
    assert!(jwk.get("d").is_none() && jwk.get("p").is_none());
}

#[test]
fn bob_has_no_groups() {
    let mut p = provider();
    let code = code_for(&mut p, "bob");
    let answer = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let (_, claims) = verify_with_jwks(str_of(&answer, "id_token"), &p.jwks()).unwrap();
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["groups"], serde_json::json!([]));
}

#[test]
fn a_code_is_single_use_and_its_replay_revokes_the_refresh_token() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let first = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let again = redeem(&mut p, &code, VERIFIER, NOW + 1).unwrap_err();
    assert_eq!((again.status, again.error), (400, "invalid_grant"));
    let refreshed = refresh(&mut p, str_of(&first, "refresh_token")).unwrap_err();
    assert_eq!(refreshed.error, "invalid_grant");
}

#[test]
fn a_code_expires_after_60_seconds() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let late = redeem(&mut p, &code, VERIFIER, NOW + 60).unwrap_err();
    assert_eq!(late.error, "invalid_grant");
    let code = code_for(&mut p, "alice");
    assert!(redeem(&mut p, &code, VERIFIER, NOW + 59).is_ok());
}

#[test]
fn a_wrong_or_malformed_verifier_is_invalid_grant_and_burns_the_code() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let wrong = redeem(&mut p, &code, &"a".repeat(43), NOW).unwrap_err();
    assert_eq!((wrong.status, wrong.error), (400, "invalid_grant"));
    assert_eq!(
        redeem(&mut p, &code, VERIFIER, NOW).unwrap_err().error,
        "invalid_grant"
    );
    for bad in ["short", &format!("{VERIFIER}+")] {
        let code = code_for(&mut p, "alice");
        assert_eq!(
            redeem(&mut p, &code, bad, NOW).unwrap_err().error,
            "invalid_grant"
        );
    }
}

#[test]
fn the_redirect_uri_of_the_token_request_must_equal_the_codes() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let err = p
        .token(
            Some(&basic(CLIENT_ID, SECRET)),
            &form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://localhost:10544/oauth2/callback"),
                ("code_verifier", VERIFIER),
            ]),
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.error, "invalid_grant");
}

#[test]
fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let first = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let second = refresh(&mut p, str_of(&first, "refresh_token")).unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    let (_, claims) = verify_with_jwks(str_of(&second, "id_token"), &p.jwks()).unwrap();
    assert!(claims.get("nonce").is_none());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["auth_time"], NOW);
    // The old one is spent; presenting it revokes the new one too.
    let reuse = refresh(&mut p, str_of(&first, "refresh_token")).unwrap_err();
    assert_eq!((reuse.status, reuse.error), (400, "invalid_grant"));
    let revoked = refresh(&mut p, str_of(&second, "refresh_token")).unwrap_err();
    assert_eq!(revoked.error, "invalid_grant");
}

#[test]
fn a_rotated_refresh_token_chain_keeps_working() {
    let mut p = provider();
    let code = code_for(&mut p, "bob");
    let mut answer = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    for _ in 0..3 {
        answer = refresh(&mut p, str_of(&answer, "refresh_token")).unwrap();
    }
    assert_eq!(answer["scope"], "openid email groups");
}

#[test]
fn basic_auth_decodes_url_encoded_parts() {
    assert_eq!(
        parse_basic(&basic("internal-gateway", SECRET)),
        Some(("internal-gateway".into(), SECRET.into()))
    );
    // "a%3Ab:c%2Bd+e" → ("a:b", "c+d e")
    let header = format!("basic {}", STANDARD.encode("a%3Ab:c%2Bd+e"));
    assert_eq!(parse_basic(&header), Some(("a:b".into(), "c+d e".into())));
    assert_eq!(parse_basic("Bearer abc"), None);
    assert_eq!(parse_basic("Basic !!!"), None);
    assert_eq!(
        parse_basic(&format!("Basic {}", STANDARD.encode("nocolon"))),
        None
    );
}

#[test]
fn client_authentication_is_basic_with_the_right_secret() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ]);
    for auth in [
        None,
        Some(basic(CLIENT_ID, "wrong")),
        Some(basic("other-client", SECRET)),
        // The raw secret without the RFC 6749 form-encoding still matches
        // here only if it needs no encoding; ours does.
        Some(format!(
            "Basic {}",
            STANDARD.encode(format!("{CLIENT_ID}:{SECRET}x"))
        )),
    ] {
        let err = p.token(auth.as_deref(), &body, NOW).unwrap_err();
        assert_eq!((err.status, err.error), (401, "invalid_client"));
    }
    // A failed client authentication does not consume the code.
    assert!(redeem(&mut p, &code, VERIFIER, NOW).is_ok());
    // client_secret_post next to Basic: refused.
    let code = code_for(&mut p, "alice");
    let err = p
        .token(
            Some(&basic(CLIENT_ID, SECRET)),
            &form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", VERIFIER),
                ("client_secret", SECRET),
            ]),
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.error, "invalid_request");
}

#[test]
fn unknown_grant_types_and_missing_parameters_are_refused() {
    let mut p = provider();
    let auth = basic(CLIENT_ID, SECRET);
    let err = p
        .token(Some(&auth), &form(&[("grant_type", "password")]), NOW)
        .unwrap_err();
    assert_eq!(err.error, "unsupported_grant_type");
    let err = p.token(Some(&auth), &form(&[]), NOW).unwrap_err();
    assert_eq!(err.error, "invalid_request");
    let err = p
        .token(
            Some(&auth),
            &form(&[
                ("grant_type", "authorization_code"),
                ("grant_type", "refresh_token"),
            ]),
            NOW,
        )
        .unwrap_err();
    assert_eq!(err.error, "invalid_request");
}

#[test]
fn redirect_uri_must_match_a_registered_one_exactly_and_is_never_redirected_to_otherwise() {
    let params = authorize_params();
    for bad in [
        "https://localhost:10444/oauth2/callback/",
        "https://localhost:10444/oauth2/callback?x=1",
        "https://LOCALHOST:10444/oauth2/callback",
        "http://localhost:10444/oauth2/callback",
        "https://localhost:10444/oauth2/callbac",
        "https://evil.example/oauth2/callback",
        "",
    ] {
        let err = validate_authorize(&with(&params, "redirect_uri", Some(bad))).unwrap_err();
        assert!(matches!(err, AuthorizeError::Page(_)), "{bad}: {err:?}");
    }
    let err = validate_authorize(&with(&params, "redirect_uri", None)).unwrap_err();
    assert!(matches!(err, AuthorizeError::Page(_)));
    let err = validate_authorize(&with(&params, "client_id", Some("other"))).unwrap_err();
    assert!(matches!(err, AuthorizeError::Page(_)));
    // A repeated redirect_uri cannot be trusted either.
    let mut twice = params.clone();
    twice.push(("redirect_uri", "https://evil.example/cb"));
    assert!(matches!(
        validate_authorize(&form(&twice)).unwrap_err(),
        AuthorizeError::Page(_)
    ));
    // Both registered ones are accepted.
    for good in REDIRECT_URIS {
        let mut ok: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| *k != "redirect_uri")
            .copied()
            .collect();
        ok.push(("redirect_uri", good));
        assert_eq!(validate_authorize(&form(&ok)).unwrap().redirect_uri, good);
    }
}

#[test]
fn other_errors_go_back_to_the_client_with_the_state() {
    let params = authorize_params();
    let cases: [(&str, Option<&'static str>, &str); 7] = [
        ("response_type", None, "invalid_request"),
        ("response_type", Some("token"), "unsupported_response_type"),
        ("scope", Some("email"), "invalid_scope"),
        ("code_challenge", None, "invalid_request"),
        ("code_challenge_method", None, "invalid_request"),
        ("code_challenge_method", Some("plain"), "invalid_request"),
        ("code_challenge", Some("too-short"), "invalid_request"),
    ];
    for (name, value, error) in cases {
        let Err(AuthorizeError::Redirect(location)) =
            validate_authorize(&with(&params, name, value))
        else {
            panic!("{name}={value:?} should redirect");
        };
        assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
        assert_eq!(param(&location, "error").as_deref(), Some(error), "{name}");
        assert_eq!(param(&location, "state").as_deref(), Some("st&te=1"));
    }
    // No state in the request: none in the error either.
    let Err(AuthorizeError::Redirect(location)) = validate_authorize(&form(&[
        ("client_id", CLIENT_ID),
        ("redirect_uri", CALLBACK),
    ])) else {
        panic!("should redirect");
    };
    assert_eq!(param(&location, "state"), None);
}

#[test]
fn a_login_redirects_with_a_url_encoded_code_and_state() {
    let mut p = provider();
    let req = validate_authorize(&form(&authorize_params())).unwrap();
    assert_eq!(req.scope, "openid email groups");
    let location = p.issue_code(&req, &USERS[0], NOW).unwrap();
    assert!(location.starts_with(&format!("{CALLBACK}?code=")));
    assert!(location.contains("&state=st%26te%3D1"), "{location}");
    let code = param(&location, "code").unwrap();
    assert!(URL_SAFE_NO_PAD.decode(&code).unwrap().len() >= 16);
    // Without state, no state parameter.
    let stateless = with(&authorize_params(), "state", None);
    let req = validate_authorize(&stateless).unwrap();
    let location = p.issue_code(&req, &USERS[0], NOW).unwrap();
    assert!(!location.contains("state="));
    assert_ne!(param(&location, "code").unwrap(), code);
}

#[test]
fn credentials_are_checked() {
    assert_eq!(
        check_credentials("alice", "alice-password").map(|u| u.username),
        Some("alice")
    );
    assert_eq!(
        check_credentials("bob", "bob-password").map(|u| u.username),
        Some("bob")
    );
    assert!(check_credentials("alice", "bob-password").is_none());
    assert!(check_credentials("alice", "").is_none());
    assert!(check_credentials("mallory", "x").is_none());
}

#[test]
fn test_controls_apply_to_the_next_token_only() {
    let mut p = provider();
    p.set_next_id_token(IdTokenOverride {
        alg: Some(OverrideAlg::HS256),
        ..IdTokenOverride::default()
    });
    let code = code_for(&mut p, "alice");
    let hs = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let token = str_of(&hs, "id_token");
    assert!(verify_with_jwks(token, &p.jwks()).is_err());
    let header = token.split('.').next().unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(header).unwrap(),
        br#"{"alg":"HS256","typ":"JWT"}"#
    );
    // Cleared: the next one is correct again.
    let code = code_for(&mut p, "alice");
    let ok = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    assert!(verify_with_jwks(str_of(&ok, "id_token"), &p.jwks()).is_ok());

    p.set_next_id_token(IdTokenOverride {
        iss: Some("https://evil.example".into()),
        aud: Some("someone-else".into()),
        exp_offset_s: Some(-30),
        nonce: Some("forged".into()),
        omit: vec!["email".into(), "groups".into()],
        ..IdTokenOverride::default()
    });
    let code = code_for(&mut p, "alice");
    let odd = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let (_, claims) = verify_with_jwks(str_of(&odd, "id_token"), &p.jwks()).unwrap();
    assert_eq!(claims["iss"], "https://evil.example");
    assert_eq!(claims["aud"], "someone-else");
    assert_eq!(claims["exp"], NOW - 30);
    assert_eq!(claims["nonce"], "forged");
    assert!(claims.get("email").is_none() && claims.get("groups").is_none());

    p.set_next_id_token(IdTokenOverride {
        alg: Some(OverrideAlg::None),
        ..IdTokenOverride::default()
    });
    let code = code_for(&mut p, "alice");
    let none = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    assert!(str_of(&none, "id_token").ends_with('.'));
}

#[test]
fn the_control_json_is_strict() {
    let parsed: IdTokenOverride =
        serde_json::from_str(r#"{"alg":"none","omit":["nonce"],"exp_offset_s":-5}"#).unwrap();
    assert_eq!(parsed.alg, Some(OverrideAlg::None));
    assert!(serde_json::from_str::<IdTokenOverride>(r#"{"alg":"RS512"}"#).is_err());
    assert!(serde_json::from_str::<IdTokenOverride>(r#"{"bogus":1}"#).is_err());
}

#[test]
fn rotation_and_the_other_key() {
    let mut p = provider();
    // One generated key serves as both the rotated key and the "other" one.
    let fresh = RsaKey::generate("pending").unwrap();
    p.set_other_key(fresh.clone());
    p.set_next_id_token(IdTokenOverride {
        sign_with_other_key: true,
        ..IdTokenOverride::default()
    });
    let code = code_for(&mut p, "alice");
    let other = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let token = str_of(&other, "id_token");
    // Same kid as the published key, but the JWKS does not verify it.
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], FILE_KID);
    assert!(verify_with_jwks(token, &p.jwks()).is_err());

    let kid = p.rotate(fresh);
    assert_eq!(kid, "demo-oidc-rs256-1");
    let kids: Vec<Value> = p.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    assert_eq!(kids, vec!["demo-oidc-rs256-1", "demo-oidc-rs256"]);
    let code = code_for(&mut p, "alice");
    let rotated = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let (header, _) = verify_with_jwks(str_of(&rotated, "id_token"), &p.jwks()).unwrap();
    assert_eq!(header["kid"], "demo-oidc-rs256-1");
    // A token of the previous key still verifies (logout hint), and reset
    // returns to the file key alone.
    assert!(p
        .verify_id_token_hint(str_of(&rotated, "id_token"))
        .is_some());
    p.reset_controls();
    let kids = p.jwks()["keys"].as_array().unwrap().len();
    assert_eq!(kids, 1);
    assert_eq!(p.jwks()["keys"][0]["kid"], FILE_KID);
}

#[test]
fn logout_redirects_only_to_registered_uris() {
    let p = provider();
    let to = |pairs: &[(&str, &str)]| p.logout_redirect(&form(pairs));
    assert_eq!(
        to(&[
            ("post_logout_redirect_uri", "https://localhost:10444/"),
            ("state", "a b")
        ])
        .as_deref(),
        Some("https://localhost:10444/?state=a+b")
    );
    assert_eq!(
        to(&[("post_logout_redirect_uri", "https://localhost:10544/")]).as_deref(),
        Some("https://localhost:10544/")
    );
    assert_eq!(
        to(&[("post_logout_redirect_uri", "https://evil.example/")]),
        None
    );
    assert_eq!(to(&[]), None);
    assert_eq!(
        to(&[
            ("post_logout_redirect_uri", "https://localhost:10444/"),
            ("client_id", "other")
        ]),
        None
    );
    assert_eq!(
        to(&[
            ("post_logout_redirect_uri", "https://localhost:10444/"),
            ("id_token_hint", "x.y.z")
        ]),
        None
    );
}

#[test]
fn the_logout_hint_must_be_one_of_our_id_tokens() {
    let mut p = provider();
    let code = code_for(&mut p, "alice");
    let answer = redeem(&mut p, &code, VERIFIER, NOW).unwrap();
    let hint = str_of(&answer, "id_token");
    assert_eq!(
        p.logout_redirect(&form(&[
            ("post_logout_redirect_uri", "https://localhost:10444/"),
            ("id_token_hint", hint),
        ]))
        .as_deref(),
        Some("https://localhost:10444/")
    );
}

#[test]
fn the_discovery_document_points_at_the_issuer() {
    let doc = provider().discovery();
    assert_eq!(doc["issuer"], ISSUER);
    assert_eq!(
        doc["authorization_endpoint"],
        "http://localhost:18084/authorize"
    );
    assert_eq!(doc["token_endpoint"], "http://localhost:18084/token");
    assert_eq!(doc["jwks_uri"], "http://localhost:18084/jwks");
    assert_eq!(doc["end_session_endpoint"], "http://localhost:18084/logout");
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic"])
    );
}

#[test]
fn codes_are_bounded() {
    let mut p = provider();
    let req = validate_authorize(&form(&authorize_params())).unwrap();
    let first = param(&p.issue_code(&req, &USERS[0], NOW).unwrap(), "code").unwrap();
    for _ in 0..MAX_ENTRIES {
        p.issue_code(&req, &USERS[0], NOW).unwrap();
    }
    // The oldest was evicted to make room.
    assert_eq!(
        redeem(&mut p, &first, VERIFIER, NOW).unwrap_err().error,
        "invalid_grant"
    );
}

#[test]
fn the_signature_helper_agrees_with_jose_verify() {
    let key = RsaKey::from_pkcs8_pem(FILE_KID, PEM).unwrap();
    let token = jose::compact(&serde_json::json!({"a": 1}), &jose::Signing::Rs256(&key)).unwrap();
    assert_eq!(
        jose::verify_rs256(&token, &[&key]),
        Some(serde_json::json!({"a": 1}))
    );
    let payload = token.split('.').nth(1).unwrap();
    let tampered = token.replacen(payload, &jose::b64u(br#"{"a":2}"#), 1);
    assert!(jose::verify_rs256(&tampered, &[&key]).is_none());
}
