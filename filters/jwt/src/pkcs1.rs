//! RSA signature verification for JWS: RSASSA-PKCS1-v1_5 (RS256/384/512)
//! and RSASSA-PSS (PS256/384/512), with the key's Montgomery parameters
//! computed once, when the key is loaded.
//!
//! Why not the `rsa` crate on this path: `rsa` 0.9 exponentiates with a
//! generic 4-bit-window `modpow` over heap-allocated big integers and derives
//! the Montgomery constants on every call. In wasm32 under V8 that is ~1.05 ms
//! per RS256 verification; computing the constants alone costs ~1.3 ms there.
//! Here the arithmetic is `crypto-bigint`'s fixed-width Montgomery form (the
//! same crate the `p256`/`p384` verifiers already use, 32-bit limbs on
//! wasm32, no allocation), the constants are precomputed per key, and the
//! public exponent is applied by plain square-and-multiply (16 squarings and
//! one multiplication for e = 65537). Measured with
//! `examples/verify_bench.rs` under V8: ~330 µs per RS256 verification.
//!
//! Both paddings start with the same RSAVP1 step: a signature of the wrong
//! length or not below the modulus is refused before any arithmetic (RFC
//! 8017 §8.2.2 steps 1–2, §8.1.2 steps 1–2).
//!
//! PKCS#1 v1.5 ([`PreparedKey::verify`]) is checked the way RFC 8017 §8.2.2
//! specifies, by *encoding*: the expected `EM = 0x00 0x01 FF…FF 0x00
//! DigestInfo(hash) H` is built and compared with the whole recovered block,
//! so there is no parser to fool (the Bleichenbacher '06 class of forgeries
//! needs one).
//!
//! PSS ([`PreparedKey::verify_pss`]) is EMSA-PSS-VERIFY (§9.1.2) step by
//! step, with the parameters RFC 7518 §3.5 fixes for JWS: MGF1 over the same
//! hash and a salt exactly as long as the hash (a signature with another
//! salt length is refused). When the modulus has 8·j + 1 bits the encoded
//! message is one octet shorter than the modulus, and that leading octet
//! must be zero (§8.1.2 step 2c).
//!
//! The `rsa` crate is not linked into the module; it is the reference the
//! tests compare with (tests/differential.rs), next to Wycheproof's vectors
//! (tests/wycheproof.rs).
//!
//! The exponentiation is variable-time only in the public exponent; nothing
//! here handles a secret.

use std::cell::RefCell;
use std::rc::Rc;

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, Uint, U2048, U3072, U4096};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The hash of an RS* or PS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The hash of the concatenated `parts`.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// Output length in bytes.
    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// DER `DigestInfo` prefix (RFC 8017 §9.2, note 1) and the hash of `msg`.
    fn digest_info(self, msg: &[u8]) -> (&'static [u8], Vec<u8>) {
        match self {
            Hash::Sha256 => (
                &[
                    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
                    0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
                ],
                Sha256::digest(msg).to_vec(),
            ),
            Hash::Sha384 => (
                &[
                    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
                    0x02, 0x02, 0x05, 0x00, 0x04, 0x30,
                ],
                Sha384::digest(msg).to_vec(),
            ),
            Hash::Sha512 => (
                &[
                    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
                    0x02, 0x03, 0x05, 0x00, 0x04, 0x40,
                ],
                Sha512::digest(msg).to_vec(),
            ),
        }
    }
}

/// A modulus of one fixed width with its Montgomery parameters.
struct Modulus<const L: usize> {
    n: Uint<L>,
    params: DynResidueParams<L>,
}

impl<const L: usize> Modulus<L>
where
    Uint<L>: Encoding,
{
    /// `n_be`: the modulus, big-endian, at most `Uint::<L>::BYTES` bytes.
    fn new(n_be: &[u8]) -> Option<Self> {
        let n = uint_from_be::<L>(n_be)?;
        // `new_checked` is deprecated only in favour of a future `new` with
        // the same contract; today's `new` panics on an even modulus.
        #[allow(deprecated)]
        let params = Option::<DynResidueParams<L>>::from(DynResidueParams::new_checked(&n))?;
        Some(Self { n, params })
    }

    /// `s^e mod n` as `k` big-endian bytes, or `None` if `s` is not below `n`.
    fn public_op(&self, sig: &[u8], e: u64, k: usize) -> Option<Vec<u8>> {
        let s = uint_from_be::<L>(sig)?;
        if s >= self.n {
            return None;
        }
        let x = DynResidue::new(&s, self.params);
        let mut z = x;
        // Square-and-multiply from the bit below e's most significant one.
        let top = 63 - e.leading_zeros();
        for bit in (0..top).rev() {
            z = z.square();
            if (e >> bit) & 1 == 1 {
                z = z.mul(&x);
            }
        }
        let out = z.retrieve().to_be_bytes();
        let out = out.as_ref();
        // The result is below n < 2^(8k): the leading bytes are zero.
        out.get(out.len().checked_sub(k)?..).map(<[u8]>::to_vec)
    }
}

/// Big-endian bytes into a `Uint<L>` (left-padded), `None` if too long.
fn uint_from_be<const L: usize>(be: &[u8]) -> Option<Uint<L>> {
    let width = Uint::<L>::BYTES;
    let pad = width.checked_sub(be.len())?;
    let mut buf = vec![0u8; width];
    buf.get_mut(pad..)?.copy_from_slice(be);
    Some(Uint::<L>::from_be_slice(&buf))
}

/// Boxed: the widths differ by 1.5 KiB and a key lives behind an `Rc` anyway.
enum Width {
    B2048(Box<Modulus<{ U2048::LIMBS }>>),
    B3072(Box<Modulus<{ U3072::LIMBS }>>),
    B4096(Box<Modulus<{ U4096::LIMBS }>>),
}

/// An RSA public key ready for PKCS#1 v1.5 and PSS verification.
pub struct PreparedKey {
    /// Modulus length in bytes (the signature length).
    k: usize,
    /// Modulus length in bits.
    mod_bits: usize,
    e: u64,
    width: Width,
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey")
            .field("bits", &(self.k * 8))
            .field("e", &self.e)
            .finish()
    }
}

impl PreparedKey {
    /// From big-endian `n` and `e` (leading zero bytes allowed). `None` for
    /// an even or oversized modulus, or an exponent below 3, even, or wider
    /// than 64 bits. Size policy (2048–4096 bits) is the caller's
    /// ([`crate::crypto::rsa_key`] checks it when a JWKS is loaded).
    pub fn new(n: &[u8], e: &[u8]) -> Option<Self> {
        let (n, e) = Self::usable(n, e)?;
        let k = n.len();
        let mod_bits = modulus_bits(n);
        let width = if k <= U2048::BYTES {
            Width::B2048(Box::new(Modulus::new(n)?))
        } else if k <= U3072::BYTES {
            Width::B3072(Box::new(Modulus::new(n)?))
        } else if k <= U4096::BYTES {
            Width::B4096(Box::new(Modulus::new(n)?))
        } else {
            return None;
        };
        Some(Self {
            k,
            mod_bits,
            e,
            width,
        })
    }

    /// The modulus without leading zeros and the exponent, if [`Self::new`]
    /// would accept them: an odd modulus of at most 4096 bits, an odd
    /// exponent from 3 up to 64 bits. Cheap (no Montgomery parameters): the
    /// check a JWKS load runs on every RSA key.
    pub fn usable<'a>(n: &'a [u8], e: &[u8]) -> Option<(&'a [u8], u64)> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        if e.len() > 8 || n.len() > U4096::BYTES || n.last().is_none_or(|b| b & 1 == 0) {
            return None;
        }
        let e = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if e < 3 || e & 1 == 0 {
            return None;
        }
        Some((n, e))
    }

    /// `sig^e mod n` as `k` bytes, `None` for a signature of the wrong
    /// length or not below n (RFC 8017 §8.1.2 step 1, §5.2.2).
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.k {
            return None;
        }
        match &self.width {
            Width::B2048(m) => m.public_op(sig, self.e, self.k),
            Width::B3072(m) => m.public_op(sig, self.e, self.k),
            Width::B4096(m) => m.public_op(sig, self.e, self.k),
        }
    }

    /// Verifies an RSASSA-PSS signature (RFC 8017 §8.1.2 and EMSA-PSS-VERIFY,
    /// §9.1.2) with MGF1 over the same hash and a salt as long as the hash,
    /// the parameters JWA fixes for PS256/384/512 (RFC 7518 §3.5).
    pub fn verify_pss(&self, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        self.pss(hash, msg, sig).is_some()
    }

    fn pss(&self, hash: Hash, msg: &[u8], sig: &[u8]) -> Option<()> {
        let m = self.public_op(sig)?;
        let em_bits = self.mod_bits.checked_sub(1)?;
        let em_len = em_bits.div_ceil(8);
        // I2OSP(m, emLen): when emLen = k − 1 the first byte must be zero.
        let em = m.get(self.k.checked_sub(em_len)?..)?;
        if m.len() > em_len && m.first() != Some(&0) {
            return None;
        }
        let h_len = hash.len();
        let s_len = h_len;
        // Steps 3–5.
        let db_len = em_len.checked_sub(h_len + 1)?;
        if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
            return None;
        }
        let masked_db = em.get(..db_len)?;
        let h = em.get(db_len..db_len + h_len)?;
        // Step 6: the bits above emBits are zero.
        let top_mask = 0xffu8 >> (8 * em_len - em_bits);
        if masked_db.first()? & !top_mask != 0 {
            return None;
        }
        // Steps 7–9: DB = maskedDB xor MGF1(H, len).
        let mut db = masked_db.to_vec();
        let mut counter = 0u32;
        let mut at = 0;
        while at < db_len {
            let block = hash.digest(&[h, &counter.to_be_bytes()]);
            for (d, m) in db.get_mut(at..)?.iter_mut().zip(block.iter()) {
                *d ^= m;
            }
            at += block.len();
            counter += 1;
        }
        *db.first_mut()? &= top_mask;
        // Step 10: PS (zeros) then 0x01, then the salt.
        let ps_len = em_len - h_len - s_len - 2;
        if db.get(..ps_len)?.iter().any(|b| *b != 0) || db.get(ps_len) != Some(&0x01) {
            return None;
        }
        let salt = db.get(db_len - s_len..)?;
        // Steps 12–14.
        let m_hash = hash.digest(&[msg]);
        let h2 = hash.digest(&[&[0u8; 8], &m_hash, salt]);
        (h2.as_slice() == h).then_some(())
    }

    /// Verifies `sig` over `msg` (RFC 8017 §8.2.2, EMSA-PKCS1-v1_5 by
    /// encoding and comparing).
    pub fn verify(&self, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        let (prefix, h) = hash.digest_info(msg);
        let t_len = prefix.len() + h.len();
        // emLen < tLen + 11: "intended encoded message length too short".
        let Some(ps_len) = self.k.checked_sub(t_len + 3) else {
            return false;
        };
        if ps_len < 8 {
            return false;
        }
        let mut want = Vec::with_capacity(self.k);
        want.extend_from_slice(&[0x00, 0x01]);
        want.resize(2 + ps_len, 0xff);
        want.push(0x00);
        want.extend_from_slice(prefix);
        want.extend_from_slice(&h);
        want == em
    }
}

/// The bit length of a big-endian integer (leading zero bytes allowed).
pub fn modulus_bits(n: &[u8]) -> usize {
    let n = strip_zeros(n);
    (n.len() * 8).saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// Most prepared keys kept per VM (a JWKS holds at most 32 keys; several
/// providers and key rotations fit). Beyond it the oldest is dropped and
/// prepared again if it is used again (~1.3 ms in wasm32).
pub const MAX_PREPARED: usize = 128;

type Entry = (Vec<u8>, Vec<u8>, Rc<PreparedKey>);

thread_local! {
    /// Prepared keys by (n, e) bytes. jsonwebtoken hands the verifier the
    /// raw components of the key on every token, so the Montgomery
    /// parameters are looked up here by content (never by address).
    static PREPARED: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// The prepared form of (n, e): from the per-VM cache, or computed and kept.
pub fn prepared(n: &[u8], e: &[u8]) -> Option<Rc<PreparedKey>> {
    let hit = PREPARED.with(|c| {
        c.borrow()
            .iter()
            .find(|(kn, ke, _)| kn.as_slice() == n && ke.as_slice() == e)
            .map(|(_, _, k)| k.clone())
    });
    if hit.is_some() {
        return hit;
    }
    let key = Rc::new(PreparedKey::new(n, e)?);
    PREPARED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= MAX_PREPARED {
            c.remove(0);
        }
        c.push((n.to_vec(), e.to_vec(), key.clone()));
    });
    Some(key)
}

/// Keys currently prepared in this VM (tests, metrics).
pub fn prepared_count() -> usize {
    PREPARED.with(|c| c.borrow().len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;
    use serde_json::Value;

    /// Signatures made by OpenSSL (via Python `cryptography`) for 2048-,
    /// 3072- and 4096-bit keys and the three hashes: an independent signer.
    const VECTORS: &str = include_str!("../tests/fixtures/pkcs1-vectors.json");

    /// Hex to bytes (test vectors; also used by crypto.rs and ecverify.rs tests).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// (prepared key, the same key for the `rsa` crate, hash, message, signature)
    type Vector = (PreparedKey, rsa::RsaPublicKey, Hash, Vec<u8>, Vec<u8>);

    /// Each vector of a fixture file, with its JSON entry (for fields such
    /// as `salt` that only some files have).
    fn vectors_from(json: &str) -> Vec<(Vector, Value)> {
        let v: Value = serde_json::from_str(json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let n = hex(t["n"].as_str().unwrap());
                let e = hex(t["e"].as_str().unwrap());
                let hash = match t["hash"].as_str().unwrap() {
                    "sha256" => Hash::Sha256,
                    "sha384" => Hash::Sha384,
                    _ => Hash::Sha512,
                };
                let rk = rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                )
                .unwrap();
                let vector = (
                    PreparedKey::new(&n, &e).unwrap(),
                    rk,
                    hash,
                    t["msg"].as_str().unwrap().as_bytes().to_vec(),
                    hex(t["sig"].as_str().unwrap()),
                );
                (vector, t.clone())
            })
            .collect()
    }

    fn vectors() -> Vec<Vector> {
        vectors_from(VECTORS).into_iter().map(|(v, _)| v).collect()
    }

    /// The `rsa` crate's verdict: PKCS#1 v1.5, or PSS with salt = hash length.
    /// (Its untyped `verify` path: for PSS that one does not check s < n;
    /// tests/differential.rs compares with the typed verifying keys.)
    fn rsa_crate_verifies(
        k: &rsa::RsaPublicKey,
        h: Hash,
        pss: bool,
        msg: &[u8],
        sig: &[u8],
    ) -> bool {
        fn with<D>(k: &rsa::RsaPublicKey, pss: bool, msg: &[u8], sig: &[u8]) -> bool
        where
            D: 'static
                + Digest
                + sha2::digest::DynDigest
                + Send
                + Sync
                + sha2::digest::const_oid::AssociatedOid,
        {
            let hashed = D::digest(msg);
            if pss {
                k.verify(rsa::Pss::new::<D>(), &hashed, sig).is_ok()
            } else {
                k.verify(rsa::Pkcs1v15Sign::new::<D>(), &hashed, sig)
                    .is_ok()
            }
        }
        match h {
            Hash::Sha256 => with::<Sha256>(k, pss, msg, sig),
            Hash::Sha384 => with::<Sha384>(k, pss, msg, sig),
            Hash::Sha512 => with::<Sha512>(k, pss, msg, sig),
        }
    }

    #[test]
    fn openssl_signatures_verify_at_every_size_and_hash() {
        let vs = vectors();
        assert_eq!(vs.len(), 9);
        for (k, _, h, msg, sig) in &vs {
            assert!(k.verify(*h, msg, sig), "{k:?} {h:?}");
        }
    }

    #[test]
    fn agrees_with_the_rsa_crate_on_tampering() {
        for (k, rk, h, msg, sig) in vectors() {
            // Wrong hash, wrong message, every byte of the signature flipped
            // in turn (sampled), truncated, extended, zero, all-ones, n itself.
            for other in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
                assert_eq!(
                    k.verify(other, &msg, &sig),
                    rsa_crate_verifies(&rk, other, false, &msg, &sig)
                );
            }
            assert!(!k.verify(h, b"another message", &sig));
            for i in (0..sig.len()).step_by(29) {
                let mut bad = sig.clone();
                bad[i] ^= 0x01;
                assert!(!k.verify(h, &msg, &bad), "flip at {i}");
                assert!(!rsa_crate_verifies(&rk, h, false, &msg, &bad));
            }
            assert!(!k.verify(h, &msg, &sig[1..]));
            let mut long = sig.clone();
            long.push(0);
            assert!(!k.verify(h, &msg, &long));
            assert!(!k.verify(h, &msg, &vec![0u8; sig.len()]));
            assert!(!k.verify(h, &msg, &vec![0xffu8; sig.len()]));
            let n = rk.n().to_bytes_be();
            assert!(!k.verify(h, &msg, &n), "s = n must be refused");
        }
    }

    /// RSASSA-PSS signatures made by OpenSSL (tests/fixtures/gen.sh).
    const PSS_VECTORS: &str = include_str!("../tests/fixtures/pss-vectors.json");

    #[test]
    fn pss_openssl_signatures_verify_and_other_salt_lengths_do_not() {
        let mut seen = 0;
        for ((key, rk, hash, msg, sig), t) in vectors_from(PSS_VECTORS) {
            let msg = msg.as_slice();
            let jwa_salt = t["salt"].as_u64().unwrap() as usize == hash.len();
            assert_eq!(key.verify_pss(hash, msg, &sig), jwa_salt, "{t}");
            assert_eq!(rsa_crate_verifies(&rk, hash, true, msg, &sig), jwa_salt);
            // not a PKCS#1 v1.5 signature, nor one over another hash or message
            assert!(!key.verify(hash, msg, &sig));
            for other in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
                if other != hash {
                    assert!(!key.verify_pss(other, msg, &sig));
                }
            }
            assert!(!key.verify_pss(hash, b"another message", &sig));
            // every 13th byte flipped: refused by both
            for pos in (0..sig.len()).step_by(13) {
                let mut bad = sig.clone();
                bad[pos] ^= 0x41;
                assert!(!key.verify_pss(hash, msg, &bad));
                assert!(!rsa_crate_verifies(&rk, hash, true, msg, &bad));
            }
            seen += usize::from(jwa_salt);
        }
        assert_eq!(seen, 12, "4 key sizes (with 2049 bits) x 3 hashes");
    }

    #[test]
    fn e_equal_one_would_expose_the_padding_and_is_refused() {
        // With e = 1 the "signature" is the padded block itself.
        let n = hex(&vectors_n(0));
        assert!(PreparedKey::new(&n, &[1]).is_none());
        assert!(PreparedKey::new(&n, &[2]).is_none());
        assert!(PreparedKey::new(&n, &[0, 1, 0, 1]).is_some());
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(PreparedKey::new(&even, &[1, 0, 1]).is_none());
        assert!(PreparedKey::new(&vec![0xff; 513], &[1, 0, 1]).is_none());
    }

    fn vectors_n(i: usize) -> String {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        v[i]["n"].as_str().unwrap().to_string()
    }

    #[test]
    fn the_cache_finds_keys_by_content_and_stays_bounded() {
        let n = hex(&vectors_n(0));
        let a = prepared(&n, &[1, 0, 1]).unwrap();
        let b = prepared(&n.clone(), &[1, 0, 1]).unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        assert!(prepared_count() <= MAX_PREPARED);
    }
}
