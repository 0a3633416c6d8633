//! Shared by the verifier tests (tests/differential.rs, tests/wycheproof.rs):
//! our verifiers reached the way a token's signature reaches them, and the
//! RustCrypto reference verifiers they are compared with.
#![allow(dead_code)] // each test file uses its own part

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use sha2::{Sha256, Sha384, Sha512};
use signature::Verifier;

pub const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An RSA public key as a JWKS publishes it (big-endian `n` and `e`).
pub fn rsa_jwk(n: &[u8], e: &[u8]) -> Jwk {
    serde_json::from_value(serde_json::json!({"kty": "RSA", "n": b64(n), "e": b64(e)})).unwrap()
}

/// An EC public key as a JWKS publishes it, from a SEC1 uncompressed point
/// (`04 ‖ x ‖ y`); `None` if it is not one.
pub fn ec_jwk(crv: &str, sec1: &[u8]) -> Option<Jwk> {
    let (tag, xy) = sec1.split_first()?;
    if *tag != 4 || xy.is_empty() || xy.len() % 2 != 0 {
        return None;
    }
    let (x, y) = xy.split_at(xy.len() / 2);
    Some(
        serde_json::from_value(
            serde_json::json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)}),
        )
        .unwrap(),
    )
}

/// Our verdict: the key loaded the way a JWKS key is loaded
/// (`jwks::key_from_jwk`: RSA size/exponent policy, EC point validation),
/// then verified by the verifier `jsonwebtoken` is handed for `alg`
/// (`crypto::verifier`: src/pkcs1.rs for RS*/PS*, src/ecverify.rs for ES*).
/// A key that does not load verifies nothing.
pub fn ours(alg: Algorithm, jwk: &Jwk, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = jwt::jwks::key_from_jwk(jwk, &[alg]) else {
        return false;
    };
    match jwt::crypto::verifier(&alg, &key.decoding) {
        Ok(v) => v.verify(msg, &sig.to_vec()).is_ok(),
        Err(_) => false,
    }
}

/// The `rsa` crate's verdict through its typed verifying keys
/// (`pkcs1v15::VerifyingKey<D>`, `pss::VerifyingKey<D>` with a salt as long
/// as the hash, RFC 7518 §3.5). Not `RsaPublicKey::verify(Pss, ..)`: in rsa
/// 0.9 that path skips the `s < n` check (see tests/differential.rs).
pub fn reference_rsa(alg: Algorithm, n: &[u8], e: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use rsa::{pkcs1v15, pss, BigUint, RsaPublicKey};
    let Ok(key) = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e)) else {
        return false;
    };
    // Both conversions are infallible (any octets are an integer).
    let (Ok(p1), Ok(ps)) = (
        pkcs1v15::Signature::try_from(sig),
        pss::Signature::try_from(sig),
    ) else {
        return false;
    };
    let ok = match alg {
        Algorithm::RS256 => pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(msg, &p1),
        Algorithm::RS384 => pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(msg, &p1),
        Algorithm::RS512 => pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(msg, &p1),
        Algorithm::PS256 => pss::VerifyingKey::<Sha256>::new(key).verify(msg, &ps),
        Algorithm::PS384 => pss::VerifyingKey::<Sha384>::new(key).verify(msg, &ps),
        Algorithm::PS512 => pss::VerifyingKey::<Sha512>::new(key).verify(msg, &ps),
        other => panic!("not an RSA algorithm: {other:?}"),
    };
    ok.is_ok()
}

/// `p256`/`p384`'s verdict (`ecdsa` 0.16's `VerifyingKey::verify` over the
/// fixed-size `r ‖ s` form JWS uses). It accepts high-S signatures, as JWS
/// does (RFC 7518 §3.4 asks for no low-S normalisation), and so do we.
pub fn reference_ec(alg: Algorithm, sec1: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match alg {
        Algorithm::ES256 => {
            let (Ok(k), Ok(s)) = (
                p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1),
                p256::ecdsa::Signature::from_slice(sig),
            ) else {
                return false;
            };
            k.verify(msg, &s).is_ok()
        }
        Algorithm::ES384 => {
            let (Ok(k), Ok(s)) = (
                p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1),
                p384::ecdsa::Signature::from_slice(sig),
            ) else {
                return false;
            };
            k.verify(msg, &s).is_ok()
        }
        other => panic!("not an ECDSA algorithm: {other:?}"),
    }
}

/// The JWK curve name of an ES algorithm.
pub fn crv(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "P-256",
        Algorithm::ES384 => "P-384",
        other => panic!("not an ECDSA algorithm: {other:?}"),
    }
}
