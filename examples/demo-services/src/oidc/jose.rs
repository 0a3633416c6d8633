//! Compact JWS for the demo provider: RS256 with the `rsa` crate, HS256 with
//! `hmac`, the JWK of a public key, and the PKCE S256 transform. Assembled by
//! hand (RFC 7515 §7.1) on purpose: `jsonwebtoken` must not be a dependency
//! of this crate (see Cargo.toml).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Smallest RSA modulus accepted for a signing key.
pub const MIN_RSA_BITS: usize = 2048;

/// An RSA signing key and the `kid` it is published under.
#[derive(Debug, Clone)]
pub struct RsaKey {
    pub kid: String,
    key: RsaPrivateKey,
}

impl RsaKey {
    /// Reads a PKCS#8 PEM RSA private key of at least [`MIN_RSA_BITS`].
    pub fn from_pkcs8_pem(kid: &str, pem: &str) -> Result<Self, String> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| format!("not a PKCS#8 PEM RSA private key: {e}"))?;
        Self::new(kid, key)
    }

    /// A fresh random key of [`MIN_RSA_BITS`] (seconds of CPU in debug builds).
    pub fn generate(kid: &str) -> Result<Self, String> {
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, MIN_RSA_BITS)
            .map_err(|e| format!("RSA key generation failed: {e}"))?;
        Self::new(kid, key)
    }

    fn new(kid: &str, key: RsaPrivateKey) -> Result<Self, String> {
        if key.size() * 8 < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {} bits, at least {MIN_RSA_BITS} needed",
                key.size() * 8
            ));
        }
        Ok(Self {
            kid: kid.to_owned(),
            key,
        })
    }

    /// The public half.
    pub fn public(&self) -> RsaPublicKey {
        self.key.to_public_key()
    }

    /// The public JWK (RFC 7517/7518): `kty`, `kid`, `use`, `alg`, `n`, `e`.
    pub fn jwk(&self) -> Value {
        let public = self.public();
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": b64u(&public.n().to_bytes_be()),
            "e": b64u(&public.e().to_bytes_be()),
        })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `input` (blinded with OsRng).
    pub fn sign_rs256(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        signer
            .try_sign_with_rng(&mut rand_core::OsRng, input)
            .map(|sig| sig.to_vec())
            .map_err(|e| format!("RS256 signing failed: {e}"))
    }
}

/// How the next ID token is signed.
#[derive(Debug, Clone)]
pub enum Signing<'a> {
    /// RS256 with this key; the header's `kid` is the key's.
    Rs256(&'a RsaKey),
    /// RS256 with `key`, but the header claims `kid` (a key not in the JWKS).
    Rs256As { key: &'a RsaKey, kid: &'a str },
    /// HS256 with this secret (the key-confusion attack; test control only).
    Hs256(&'a [u8]),
    /// `{"alg":"none"}` and an empty signature (test control only).
    None,
}

/// The compact JWS of `claims` (RFC 7515 §7.1).
pub fn compact(claims: &Value, signing: &Signing<'_>) -> Result<String, String> {
    let header = match signing {
        Signing::Rs256(key) => json!({"alg": "RS256", "typ": "JWT", "kid": key.kid}),
        Signing::Rs256As { kid, .. } => json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        Signing::Hs256(_) => json!({"alg": "HS256", "typ": "JWT"}),
        Signing::None => json!({"alg": "none"}),
    };
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let payload = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    let input = format!("{}.{}", b64u(&header), b64u(&payload));
    let signature = match signing {
        Signing::Rs256(key) | Signing::Rs256As { key, .. } => key.sign_rs256(input.as_bytes())?,
        Signing::Hs256(secret) => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).map_err(|e| format!("HS256 key: {e}"))?;
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Signing::None => Vec::new(),
    };
    Ok(format!("{input}.{}", b64u(&signature)))
}

/// The claims of an RS256 compact JWS whose signature verifies with one of
/// `keys` (the key whose `kid` the header names). `None` otherwise.
pub fn verify_rs256(token: &str, keys: &[&RsaKey]) -> Option<Value> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "RS256" {
        return None;
    }
    let kid = header.get("kid")?.as_str()?;
    let key = keys.iter().find(|k| k.kid == kid)?;
    let signature = Signature::try_from(URL_SAFE_NO_PAD.decode(signature).ok()?.as_slice()).ok()?;
    let (input, _) = token.rsplit_once('.')?;
    VerifyingKey::<Sha256>::new(key.public())
        .verify(input.as_bytes(), &signature)
        .ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// BASE64URL without padding.
pub fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of a verifier: BASE64URL(SHA256(ASCII(verifier))).
pub fn s256_challenge(verifier: &str) -> String {
    b64u(&Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43..=128 characters of `[A-Za-z0-9-._~]`.
pub fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge is BASE64URL of 32 bytes: 43 characters of `[A-Za-z0-9-_]`.
pub fn is_valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        // RFC 7636 Appendix B: the verifier and the S256 challenge it gives.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(is_valid_verifier(verifier));
        let challenge = s256_challenge(verifier);
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(is_valid_s256_challenge(&challenge));
    }

    #[test]
    fn verifier_alphabet_and_length_are_enforced() {
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(is_valid_verifier(&"a".repeat(128)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(is_valid_verifier(&format!("{}-._~", "a".repeat(40))));
        assert!(!is_valid_verifier(&format!("{}+/=", "a".repeat(40))));
        assert!(!is_valid_verifier(&format!("{} ", "a".repeat(43))));
        assert!(!is_valid_s256_challenge(&"a".repeat(44)));
        assert!(!is_valid_s256_challenge(&format!("{}.", "a".repeat(42))));
    }

    #[test]
    fn none_and_hs256_tokens_have_the_announced_headers() {
        let claims = json!({"sub": "alice"});
        let none = compact(&claims, &Signing::None).unwrap();
        assert!(none.ends_with('.'));
        let header = none.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"none"}"#
        );
        let hs = compact(&claims, &Signing::Hs256(b"secret")).unwrap();
        let (input, sig) = hs.rsplit_once('.').unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(input.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(sig).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
    }
}
