//! JWKS → verification keys, each bound to the algorithms it may verify.
//!
//! A key's algorithms are the intersection of
//! * what its type allows (`RSA` → RS256/384/512 and PS256/384/512, `EC`
//!   P-256 → ES256, P-384 → ES384, `OKP` Ed25519 → EdDSA),
//! * its own `alg` member when it has one,
//! * the provider's `algorithms` allow-list.
//!
//! Symmetric (`oct`) keys are refused: a gateway holding an HMAC secret could
//! be tricked into verifying an HS256 token "signed" with a public key, and
//! shared secrets have no place at an edge. Keys whose `use` is not `sig` or
//! whose `key_ops` lacks `verify` are refused too, as are RSA moduli outside
//! 2048–4096 bits and EC points that are not on their curve.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::crypto;

/// Most keys accepted in one JWKS (more → the set is refused).
pub const MAX_KEYS: usize = 32;
/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// Algorithms this key may verify (never empty).
    pub algs: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

/// The usable keys of a JWKS.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// The key a token names: by `kid`, or, for a token without `kid`, the
    /// only key of the set that allows `alg` (several → none: ambiguous).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                None => Lookup::UnknownKid,
                Some(k) if k.algs.contains(&alg) => Lookup::Found(k),
                Some(_) => Lookup::AlgNotAllowed,
            },
            None => {
                let mut it = self.keys.iter().filter(|k| k.algs.contains(&alg));
                match (it.next(), it.next()) {
                    (Some(k), None) => Lookup::Found(k),
                    (None, _) => Lookup::AlgNotAllowed,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Result of a key lookup.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Key),
    UnknownKid,
    AlgNotAllowed,
    Ambiguous,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// A JWKS that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not a JSON object with a \"keys\" array: {0}")]
    Shape(String),
    #[error("JWKS has more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("key {index} ({kid}): {reason}")]
    BadKey {
        index: usize,
        kid: String,
        reason: String,
    },
    #[error("JWKS has no key usable with the allowed algorithms")]
    NoUsableKey,
    #[error("two keys share kid {0:?}")]
    DuplicateKid(String),
}

/// How strictly to treat keys that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Inline JWKS in the config: any bad key is a config error.
    Strict,
    /// Remote JWKS: bad keys are skipped (logged), as long as one is usable.
    SkipBadKeys,
}

/// Parses a JWKS document. `allowed` is the provider's allow-list.
pub fn parse(bytes: &[u8], allowed: &[Algorithm], mode: Strictness) -> Result<KeySet, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let raw: RawSet = serde_json::from_slice(bytes).map_err(|e| JwksError::Shape(e.to_string()))?;
    parse_values(raw.keys, allowed, mode)
}

/// Same as [`parse`], from an already parsed `keys` array.
pub fn parse_values(
    keys: Vec<serde_json::Value>,
    allowed: &[Algorithm],
    mode: Strictness,
) -> Result<KeySet, JwksError> {
    if keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    let mut out = KeySet::default();
    for (index, v) in keys.into_iter().enumerate() {
        let kid_hint = v
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or("no kid")
            .to_string();
        match key_from_value(v, allowed) {
            Ok(key) => {
                if let Some(kid) = &key.kid {
                    if out.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                        return Err(JwksError::DuplicateKid(kid.clone()));
                    }
                }
                out.keys.push(key);
            }
            Err(reason) => match mode {
                Strictness::Strict => {
                    return Err(JwksError::BadKey {
                        index,
                        kid: kid_hint,
                        reason,
                    })
                }
                Strictness::SkipBadKeys => {
                    log::warn!("jwt: JWKS key {index} ({kid_hint}) skipped: {reason}");
                }
            },
        }
    }
    if out.keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(out)
}

fn key_from_value(v: serde_json::Value, allowed: &[Algorithm]) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(v).map_err(|e| format!("not a usable JWK: {e}"))?;
    key_from_jwk(&jwk, allowed)
}

fn key_alg(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Builds one key from a parsed JWK, validating it fully (a key that loads
/// here verifies without surprises later).
pub fn key_from_jwk(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Key, String> {
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err("\"use\" is not \"sig\"".into());
        }
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n).map_err(|e| format!("n: {e}"))?;
            let e = b64(&p.e).map_err(|e| format!("e: {e}"))?;
            crypto::rsa_key(&n, &e)?;
            // Montgomery parameters for RS* and PS*, computed now rather
            // than on the first token (~1.3 ms in wasm32); kept per VM
            // (src/pkcs1.rs). EC keys get their tables on first use.
            crate::pkcs1::prepared(&n, &e).ok_or("RSA key unusable for PKCS#1 v1.5")?;
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let mut point = vec![0x04];
            point.extend(b64(&p.x).map_err(|e| format!("x: {e}"))?);
            point.extend(b64(&p.y).map_err(|e| format!("y: {e}"))?);
            match p.curve {
                EllipticCurve::P256 => {
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| "not a P-256 point")?;
                    &[Algorithm::ES256]
                }
                EllipticCurve::P384 => {
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| "not a P-384 point")?;
                    &[Algorithm::ES384]
                }
                _ => return Err("unsupported curve (P-256 and P-384 are)".into()),
            }
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve (Ed25519 is)".into());
            }
            let x = b64(&p.x).map_err(|e| format!("x: {e}"))?;
            let x: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| "Ed25519 key is not 32 bytes")?;
            ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "not an Ed25519 point")?;
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted".into());
        }
    };
    let declared = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(key_alg(a).ok_or("\"alg\" is not a signature algorithm")?),
    };
    let algs: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
        .collect();
    if algs.is_empty() {
        return Err("no allowed algorithm fits this key".into());
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algs,
        decoding,
    })
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../../examples/keys/jwks.json");
    const ALL: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    #[test]
    fn demo_jwks_loads_with_each_key_bound_to_its_alg() {
        let set = parse(DEMO.as_bytes(), ALL, Strictness::Strict).unwrap();
        assert_eq!(set.keys.len(), 2);
        assert!(matches!(
            set.find(Some("demo-rs256"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("demo-rs256"), Algorithm::ES256),
            Lookup::AlgNotAllowed
        ));
        assert!(matches!(
            set.find(Some("demo-rs256"), Algorithm::PS256),
            Lookup::AlgNotAllowed
        ));
        assert!(matches!(
            set.find(Some("demo-es256"), Algorithm::ES256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("nope"), Algorithm::ES256),
            Lookup::UnknownKid
        ));
    }

    #[test]
    fn symmetric_keys_are_refused() {
        let j = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(matches!(
            parse(j, ALL, Strictness::Strict),
            Err(JwksError::BadKey { .. })
        ));
        assert_eq!(
            parse(j, ALL, Strictness::SkipBadKeys).unwrap_err(),
            JwksError::NoUsableKey
        );
    }

    #[test]
    fn small_rsa_and_off_curve_points_are_refused() {
        // 512-bit modulus.
        let j = br#"{"keys":[{"kty":"RSA","kid":"s","n":"xE2vnZb4g-Nq1XcL6jC_3OQyA4tR2JNxB5Q1q9mF8kC2k8mQZQbNw2qg1V1b2C2S1E5pQyM6w3v8g9mJm1tL0w","e":"AQAB"}]}"#;
        assert!(parse(j, ALL, Strictness::Strict).is_err());
        let j = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;
        assert!(parse(j, ALL, Strictness::Strict).is_err());
    }

    #[test]
    fn allow_list_narrows_keys_and_empty_result_is_an_error() {
        let set = parse(
            DEMO.as_bytes(),
            &[Algorithm::ES256],
            Strictness::SkipBadKeys,
        )
        .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(parse(DEMO.as_bytes(), &[Algorithm::ES256], Strictness::Strict).is_err());
    }

    #[test]
    fn duplicate_kids_and_encryption_keys_are_refused() {
        let v: serde_json::Value = serde_json::from_str(DEMO).unwrap();
        let k = v["keys"][1].clone();
        let dup = serde_json::json!({"keys": [k.clone(), k.clone()]});
        assert!(matches!(
            parse(dup.to_string().as_bytes(), ALL, Strictness::Strict),
            Err(JwksError::DuplicateKid(_))
        ));
        let mut enc = k;
        enc["use"] = "enc".into();
        let set = serde_json::json!({"keys": [enc]});
        assert!(parse(set.to_string().as_bytes(), ALL, Strictness::Strict).is_err());
    }

    #[test]
    fn key_without_kid_is_found_only_when_unambiguous() {
        let v: serde_json::Value = serde_json::from_str(DEMO).unwrap();
        let mut a = v["keys"][0].clone();
        a.as_object_mut().unwrap().remove("kid");
        let set = parse_values(vec![a.clone()], ALL, Strictness::Strict).unwrap();
        assert!(matches!(set.find(None, Algorithm::RS256), Lookup::Found(_)));
        let mut b = a.clone();
        b["alg"] = "RS256".into();
        let set = parse_values(vec![a, b], ALL, Strictness::Strict).unwrap();
        assert!(matches!(
            set.find(None, Algorithm::RS256),
            Lookup::Ambiguous
        ));
    }
}
