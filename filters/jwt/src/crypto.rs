//! The signature backend: a `jsonwebtoken` [`CryptoProvider`] that verifies
//! with RustCrypto crates configured for wasm32.
//!
//! Why not `jsonwebtoken`'s own `rust_crypto` feature: it depends on `rsa`
//! with its default features, whose `u64_digit` makes big-integer arithmetic
//! use 64-bit limbs. wasm32 has no 64×64→128 multiply, so every limb product
//! is emulated and RS256 verification costs ~2.5× more than with 32-bit
//! limbs. It also pulls `rand` and HMAC, which a verifier never needs. This
//! provider verifies RS256/384/512 and PS256/384/512 with per-key
//! precomputed Montgomery parameters (src/pkcs1.rs: ~4.5x faster than `rsa`
//! 0.9 in wasm32, which is no longer linked), ES256/ES384 with
//! `p256`/`p384` arithmetic driven by precomputed point tables
//! (src/ecverify.rs), and `ed25519-dalek` (strict verification), and refuses to sign or
//! to verify HMAC: the gateway holds only public keys.
//!
//! `jsonwebtoken` stays the JOSE/claims layer (header, algorithm families,
//! `iss`/`aud`/`exp`/`nbf` validation); it calls [`verifier`] through the
//! process-wide provider that [`install`] sets.

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use signature::Verifier;

/// Installs the provider for this process (VM). Idempotent and cheap: call it
/// before any `jsonwebtoken::decode`.
pub fn install() {
    // Err means a provider is already installed: ours, since nothing else
    // in the module installs one.
    let _ = PROVIDER.install_default();
}

/// The provider: verification only.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        extract_ec_public_key_coordinates: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        compute_digest,
    },
};

fn compute_digest(data: &[u8], h: jsonwebtoken::jwk::ThumbprintHash) -> Vec<u8> {
    use jsonwebtoken::jwk::ThumbprintHash;
    match h {
        ThumbprintHash::SHA256 => Sha256::digest(data).to_vec(),
        ThumbprintHash::SHA384 => Sha384::digest(data).to_vec(),
        ThumbprintHash::SHA512 => Sha512::digest(data).to_vec(),
    }
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

/// Largest RSA modulus accepted (bits); larger keys are refused when loaded.
pub const RSA_MAX_BITS: usize = 4096;
/// Smallest RSA modulus accepted (bits).
pub const RSA_MIN_BITS: usize = 2048;

/// Checks an RSA public key given as big-endian `n` and `e` against the
/// policy: a 2048–4096-bit odd modulus and an odd public exponent of at
/// least 3 that fits 64 bits.
pub fn rsa_key(n: &[u8], e: &[u8]) -> Result<(), String> {
    let bits = crate::pkcs1::modulus_bits(n);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(format!(
            "RSA modulus has {bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} are accepted"
        ));
    }
    crate::pkcs1::PreparedKey::usable(n, e)
        .map(drop)
        .ok_or_else(|| "RSA key has an even modulus or an unusable exponent".to_string())
}

/// RS* (PKCS#1 v1.5) and PS* (PSS) with the key's precomputed Montgomery
/// parameters (src/pkcs1.rs).
struct Rsa {
    key: std::rc::Rc<crate::pkcs1::PreparedKey>,
    hash: crate::pkcs1::Hash,
    pss: bool,
}

impl Verifier<Vec<u8>> for Rsa {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        ok_or_error(if self.pss {
            self.key.verify_pss(self.hash, msg, sig)
        } else {
            self.key.verify(self.hash, msg, sig)
        })
    }
}

impl JwtVerifier for Rsa {
    fn algorithm(&self) -> Algorithm {
        use crate::pkcs1::Hash;
        match (self.pss, self.hash) {
            (false, Hash::Sha256) => Algorithm::RS256,
            (false, Hash::Sha384) => Algorithm::RS384,
            (false, Hash::Sha512) => Algorithm::RS512,
            (true, Hash::Sha256) => Algorithm::PS256,
            (true, Hash::Sha384) => Algorithm::PS384,
            (true, Hash::Sha512) => Algorithm::PS512,
        }
    }
}

/// ES256/ES384 with the key's precomputed point table (src/ecverify.rs).
struct Es256(std::rc::Rc<crate::ecverify::PreparedKey<p256::NistP256>>);
struct Es384(std::rc::Rc<crate::ecverify::PreparedKey<p384::NistP384>>);
struct Ed(ed25519_dalek::VerifyingKey);

fn ok_or_error(ok: bool) -> Result<(), signature::Error> {
    if ok {
        Ok(())
    } else {
        Err(signature::Error::new())
    }
}

impl Verifier<Vec<u8>> for Es256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        // r and s must be in [1, n−1]: r = 0 or s = 0 (the CVE-2022-21449
        // forgery) is refused before any arithmetic.
        ok_or_error(self.0.verify_digest(&Sha256::digest(msg), sig))
    }
}
impl JwtVerifier for Es256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}
impl Verifier<Vec<u8>> for Es384 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        ok_or_error(self.0.verify_digest(&Sha384::digest(msg), sig))
    }
}
impl JwtVerifier for Es384 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES384
    }
}
impl Verifier<Vec<u8>> for Ed {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let s = ed25519_dalek::Signature::from_slice(sig)?;
        // Strict: refuses small-order keys and non-canonical R/s.
        self.0.verify_strict(msg, &s)
    }
}
impl JwtVerifier for Ed {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// `jsonwebtoken`'s verifier factory: one verifier per algorithm and key.
/// HMAC is always refused (the gateway holds no shared secrets, and an HS256
/// token "signed" with an RSA public key must never verify).
pub fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let bad_key = || Error::from(ErrorKind::InvalidKeyFormat);
    match (alg.family(), key.family(), key.kind()) {
        (
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Rsa,
            DecodingKeyKind::RsaModulusExponent { n, e },
        ) => {
            use crate::pkcs1::Hash;
            let (hash, pss) = match alg {
                Algorithm::RS256 => (Hash::Sha256, false),
                Algorithm::RS384 => (Hash::Sha384, false),
                Algorithm::RS512 => (Hash::Sha512, false),
                Algorithm::PS256 => (Hash::Sha256, true),
                Algorithm::PS384 => (Hash::Sha384, true),
                Algorithm::PS512 => (Hash::Sha512, true),
                _ => return Err(ErrorKind::InvalidAlgorithm.into()),
            };
            // The size policy was enforced when the JWKS was loaded
            // (jwks::key_from_jwk); here only the prepared form is fetched,
            // normally from the per-VM cache.
            let key = crate::pkcs1::prepared(n, e).ok_or_else(bad_key)?;
            Ok(Box::new(Rsa { key, hash, pss }))
        }
        (AlgorithmFamily::Ec, AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) => {
            match alg {
                // The point was validated when the JWKS was loaded; here its
                // table is fetched, normally from the per-VM cache.
                Algorithm::ES256 => Ok(Box::new(Es256(
                    crate::ecverify::prepared(point).ok_or_else(bad_key)?,
                ))),
                Algorithm::ES384 => Ok(Box::new(Es384(
                    crate::ecverify::prepared(point).ok_or_else(bad_key)?,
                ))),
                _ => Err(ErrorKind::InvalidAlgorithm.into()),
            }
        }
        (AlgorithmFamily::Ed, AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(x)) => {
            let bytes: [u8; 32] = x.as_slice().try_into().map_err(|_| bad_key())?;
            Ok(Box::new(Ed(ed25519_dalek::VerifyingKey::from_bytes(
                &bytes,
            )
            .map_err(|_| bad_key())?)))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs1::tests::hex;

    #[test]
    fn ps_and_rs_algorithms_dispatch_to_their_padding() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/pss-vectors.json")).unwrap();
        let t = v
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["bits"] == 2048 && t["hash"] == "sha256" && t["salt"] == 32)
            .unwrap();
        let (n, e) = (hex(t["n"].as_str().unwrap()), hex(t["e"].as_str().unwrap()));
        let key = DecodingKey::from_rsa_raw_components(&n, &e);
        let msg = t["msg"].as_str().unwrap().as_bytes();
        let sig = hex(t["sig"].as_str().unwrap());
        let ps = verifier(&Algorithm::PS256, &key).unwrap();
        assert_eq!(ps.algorithm(), Algorithm::PS256);
        assert!(ps.verify(msg, &sig).is_ok());
        assert!(verifier(&Algorithm::PS384, &key)
            .unwrap()
            .verify(msg, &sig)
            .is_err());
        assert!(verifier(&Algorithm::RS256, &key)
            .unwrap()
            .verify(msg, &sig)
            .is_err());
        assert!(verifier(&Algorithm::HS256, &key).is_err());
    }

    #[test]
    fn rsa_key_policy() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/pss-vectors.json")).unwrap();
        let n2049 = hex(v
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["bits"] == 2049)
            .unwrap()["n"]
            .as_str()
            .unwrap());
        assert!(rsa_key(&n2049, &[1, 0, 1]).is_ok());
        assert!(rsa_key(&[[0u8].as_slice(), &n2049].concat(), &[1, 0, 1]).is_ok());
        assert!(rsa_key(&n2049[1..], &[1, 0, 1]).is_err(), "2041 bits");
        assert!(rsa_key(&n2049, &[1]).is_err(), "e = 1");
        assert!(rsa_key(&n2049, &[1, 0, 0]).is_err(), "even e");
        let mut even = n2049.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(rsa_key(&even, &[1, 0, 1]).is_err(), "even n");
        assert!(rsa_key(&vec![0xff; 513], &[1, 0, 1]).is_err(), "4104 bits");
    }
}
