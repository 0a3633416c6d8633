//! ID-token validation (OpenID Connect Core 1.0 §3.1.3.7), on the jwt
//! filter's verifier: its strict JOSE precheck (no `none`, no HMAC, no
//! duplicate members, canonical base64url), its JWKS keys and its
//! RustCrypto signature backend. The checks here are the ID token's own:
//! issuer, audience and `azp`, expiry and issue time against the proxy's
//! clock, and the `nonce` of the login that asked for it.

use jsonwebtoken::Validation;
use subtle::ConstantTimeEq;

use jwt::jwks::{KeySet, Lookup};
use jwt::token::{self, TokenError};

/// Largest ID token accepted (bytes).
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;
/// Most groups kept from the `groups` claim.
pub const MAX_GROUPS: usize = 64;
/// Longest `sub`, `email` or group kept (bytes).
pub const MAX_VALUE_BYTES: usize = 256;

/// What the session keeps of a valid ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

/// Why an ID token is refused (the reason label of
/// `oidc_logins_failed_total`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("{0}")]
    Token(TokenError),
    #[error("audience does not include the client")]
    Audience,
    #[error("azp is not the client")]
    AuthorizedParty,
    #[error("nonce does not match the login")]
    Nonce,
    #[error("the signing key is unknown")]
    UnknownKid,
    #[error("claim {0} is missing or unusable")]
    Claim(&'static str),
}

impl IdTokenError {
    /// Short code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IdTokenError::Token(TokenError::AlgNone | TokenError::AlgNotAllowed) => "algorithm",
            IdTokenError::Token(TokenError::Issuer) => "issuer",
            IdTokenError::Token(TokenError::Expired) => "expired",
            IdTokenError::Token(TokenError::NotYetValid) => "not_yet_valid",
            IdTokenError::Token(TokenError::Signature) => "signature",
            IdTokenError::Token(_) => "malformed",
            IdTokenError::Audience => "audience",
            IdTokenError::AuthorizedParty => "azp",
            IdTokenError::Nonce => "nonce",
            IdTokenError::UnknownKid => "unknown_kid",
            IdTokenError::Claim(_) => "claims",
        }
    }
}

/// What the token must say.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub algorithms: &'a [jsonwebtoken::Algorithm],
    pub skew_secs: u64,
    pub now: u64,
}

fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_VALUE_BYTES && !v.chars().any(char::is_control)
}

/// Validates `id_token`; on success the identity it carries.
pub fn verify(id_token: &str, e: &Expect<'_>, keys: &KeySet) -> Result<Identity, IdTokenError> {
    let u = token::precheck(id_token, MAX_ID_TOKEN_BYTES).map_err(IdTokenError::Token)?;
    if !e.algorithms.contains(&u.alg) {
        return Err(IdTokenError::Token(TokenError::AlgNotAllowed));
    }
    let c = &u.claims;
    if c.iss != e.issuer {
        return Err(IdTokenError::Token(TokenError::Issuer));
    }
    if !c.aud.iter().any(|a| a == e.client_id) {
        return Err(IdTokenError::Audience);
    }
    // §3.1.3.7 item 4/5: with several audiences azp must be present; when
    // present it must be the client.
    match c.all.get("azp") {
        Some(serde_json::Value::String(azp)) if azp == e.client_id => {}
        Some(_) => return Err(IdTokenError::AuthorizedParty),
        None if c.aud.len() > 1 => return Err(IdTokenError::AuthorizedParty),
        None => {}
    }
    if c.exp.saturating_add(e.skew_secs) <= e.now {
        return Err(IdTokenError::Token(TokenError::Expired));
    }
    if c.iat
        .is_some_and(|iat| iat > e.now.saturating_add(e.skew_secs))
        || c.nbf
            .is_some_and(|nbf| nbf > e.now.saturating_add(e.skew_secs))
    {
        return Err(IdTokenError::Token(TokenError::NotYetValid));
    }
    let nonce_ok = match c.all.get("nonce") {
        Some(serde_json::Value::String(n)) => bool::from(n.as_bytes().ct_eq(e.nonce.as_bytes())),
        _ => false,
    };
    if !nonce_ok {
        return Err(IdTokenError::Nonce);
    }
    let key = match keys.find(u.kid.as_deref(), u.alg) {
        Lookup::Found(k) => k,
        Lookup::UnknownKid => return Err(IdTokenError::UnknownKid),
        Lookup::AlgNotAllowed => return Err(IdTokenError::Token(TokenError::AlgNotAllowed)),
        Lookup::Ambiguous => return Err(IdTokenError::Token(TokenError::AmbiguousKey)),
    };
    jwt::crypto::install();
    let mut v = Validation::new(u.alg);
    // Time claims, issuer and audience are checked above, against the
    // proxy's clock; the signature is what is left.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    jsonwebtoken::decode::<serde::de::IgnoredAny>(id_token, &key.decoding, &v)
        .map_err(|_| IdTokenError::Token(TokenError::Signature))?;

    let sub = c
        .sub
        .clone()
        .filter(|s| header_safe(s))
        .ok_or(IdTokenError::Claim("sub"))?;
    let email = match c.all.get("email") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if header_safe(s) => Some(s.clone()),
        Some(_) => return Err(IdTokenError::Claim("email")),
    };
    let groups = match c.all.get("groups") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) if a.len() <= MAX_GROUPS => {
            let mut g = Vec::with_capacity(a.len());
            for v in a {
                match v {
                    serde_json::Value::String(s) if header_safe(s) && !s.contains(',') => {
                        g.push(s.clone());
                    }
                    _ => return Err(IdTokenError::Claim("groups")),
                }
            }
            g
        }
        Some(_) => return Err(IdTokenError::Claim("groups")),
    };
    Ok(Identity { sub, email, groups })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::traits::PublicKeyParts;
    use rsa::RsaPrivateKey;
    use sha2::Sha256;
    use std::sync::OnceLock;

    pub(crate) fn rsa_key(seed: u64) -> &'static RsaPrivateKey {
        static KEYS: OnceLock<[RsaPrivateKey; 2]> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            use rand_chacha::rand_core::SeedableRng;
            let mk = |s| {
                let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(s);
                RsaPrivateKey::new(&mut rng, 2048).unwrap()
            };
            [mk(1), mk(2)]
        });
        &keys[usize::from(seed != 1)]
    }

    pub(crate) fn jwks_json(kid: &str) -> String {
        let k = rsa_key(1).to_public_key();
        serde_json::json!({"keys": [{
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(k.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(k.e().to_bytes_be()),
        }]})
        .to_string()
    }

    pub(crate) fn keys() -> KeySet {
        crate::provider::parse_jwks(
            jwks_json("k1").as_bytes(),
            &[jsonwebtoken::Algorithm::RS256],
        )
        .unwrap()
    }

    pub(crate) fn sign(header: serde_json::Value, claims: serde_json::Value, key: u64) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{h}.{p}");
        let sk = SigningKey::<Sha256>::new(rsa_key(key).clone());
        let sig = sk.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    pub(crate) fn claims(now: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": "http://localhost:18084", "sub": "alice", "aud": "internal-gateway",
            "azp": "internal-gateway", "exp": now + 300, "iat": now, "nonce": "n-1",
            "email": "alice@example.com", "groups": ["tools-admin"]
        })
    }

    pub(crate) fn good(now: u64) -> String {
        sign(
            serde_json::json!({"alg": "RS256", "kid": "k1"}),
            claims(now),
            1,
        )
    }

    const NOW: u64 = 1_800_000_000;

    fn expect() -> Expect<'static> {
        Expect {
            issuer: "http://localhost:18084",
            client_id: "internal-gateway",
            nonce: "n-1",
            algorithms: &[jsonwebtoken::Algorithm::RS256],
            skew_secs: 60,
            now: NOW,
        }
    }

    #[test]
    fn a_good_token_gives_the_identity() {
        let id = verify(&good(NOW), &expect(), &keys()).unwrap();
        assert_eq!(id.sub, "alice");
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, vec!["tools-admin".to_string()]);
    }

    #[test]
    fn every_attack_is_refused_with_its_reason() {
        let with = |k: &str, v: serde_json::Value| {
            let mut c = claims(NOW);
            c[k] = v;
            sign(serde_json::json!({"alg": "RS256", "kid": "k1"}), c, 1)
        };
        let none = {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
            let p = URL_SAFE_NO_PAD.encode(claims(NOW).to_string());
            format!("{h}.{p}.")
        };
        let hs256 = {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k1"}"#);
            let p = URL_SAFE_NO_PAD.encode(claims(NOW).to_string());
            format!("{h}.{p}.AAAA")
        };
        let other_key = sign(
            serde_json::json!({"alg": "RS256", "kid": "k1"}),
            claims(NOW),
            2,
        );
        let unknown_kid = sign(
            serde_json::json!({"alg": "RS256", "kid": "k9"}),
            claims(NOW),
            1,
        );
        let mut tampered = good(NOW);
        tampered.insert(tampered.len() / 2, 'A');
        let cases = [
            (none, "malformed-or-algorithm"),
            (hs256, "algorithm"),
            (other_key, "signature"),
            (unknown_kid, "unknown_kid"),
            (with("iss", "http://evil".into()), "issuer"),
            (with("aud", "someone-else".into()), "audience"),
            (
                with("aud", serde_json::json!(["internal-gateway", "x"])),
                "ok-multi",
            ),
            (with("azp", "x".into()), "azp"),
            (with("exp", (NOW - 61).into()), "expired"),
            (with("iat", (NOW + 120).into()), "not_yet_valid"),
            (with("nonce", "n-2".into()), "nonce"),
            (with("nonce", serde_json::Value::Null), "nonce"),
            (with("sub", "a".repeat(300).into()), "claims"),
            (with("groups", serde_json::json!(["a,b"])), "claims"),
            (with("groups", "tools-admin".into()), "claims"),
            (tampered, "malformed-or-signature"),
        ];
        for (t, want) in cases {
            let got = verify(&t, &expect(), &keys());
            match want {
                "ok-multi" => assert!(got.is_ok(), "aud array with azp = client: {got:?}"),
                "malformed-or-algorithm" => {
                    let r = got.unwrap_err().reason();
                    assert!(r == "malformed" || r == "algorithm", "{r}");
                }
                "malformed-or-signature" => {
                    let r = got.unwrap_err().reason();
                    assert!(r == "malformed" || r == "signature", "{r}");
                }
                _ => assert_eq!(got.map_err(|e| e.reason()), Err(want)),
            }
        }
    }

    #[test]
    fn several_audiences_need_azp() {
        let mut c = claims(NOW);
        c["aud"] = serde_json::json!(["internal-gateway", "x"]);
        c.as_object_mut().unwrap().remove("azp");
        let t = sign(serde_json::json!({"alg": "RS256", "kid": "k1"}), c, 1);
        assert_eq!(
            verify(&t, &expect(), &keys()).unwrap_err(),
            IdTokenError::AuthorizedParty
        );
    }
}
