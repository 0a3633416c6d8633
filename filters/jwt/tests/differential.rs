//! Differential tests of the hand-written signature verifiers (src/pkcs1.rs:
//! RS256/384/512 and PS256/384/512; src/ecverify.rs: ES256/ES384) against
//! the RustCrypto reference verifiers (`rsa` 0.9, `p256`/`p384` 0.13), both
//! fed the same keys, messages and signatures. The assertion throughout:
//! **ours accepts exactly when the reference accepts**. Ours is reached the
//! way a token's signature reaches it (JWK → `jwks::key_from_jwk` →
//! `crypto::verifier`), so the key policy and the algorithm dispatch are
//! inside what is compared.
//!
//! One intended difference, pinned by its own test below
//! (`pss_refuses_a_representative_longer_than_the_encoded_message`): for a
//! modulus of 8·j + 1 bits the PSS encoded message is one octet shorter than
//! the modulus, and RFC 8017 §8.1.2 step 2c (I2OSP(m, emLen)) makes a
//! signature whose representative does not fit that octet string invalid.
//! `rsa` 0.9 drops the extra octet without looking at it; we refuse. Only
//! the private key's holder can make such a signature, so it is a
//! conformance gap of the reference, not a forgery.
//!
//! ECDSA and high S: the reference (`ecdsa` 0.16) accepts both `(r, s)` and
//! `(r, n − s)`; JWS (RFC 7518 §3.4) does not ask for low S, and ours
//! accepts both too. The tests assert that agreement.
//!
//! Keys: two fresh 2048-bit RSA keys per run (from `PROPTEST_RNG_SEED`, so
//! `make test` is repeatable and another seed brings other keys), plus the
//! TEST-ONLY fixture keys (2049 bits, e = 3, 3072, 4096 bits;
//! tests/fixtures/gen.sh), which take 15-30 s each to generate in the test
//! profile. ECDSA keys are drawn per case.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::OnceLock;

use common::{crv, ec_jwk, ours, reference_ec, reference_rsa, rsa_jwk, RSA_ALGS};
use jsonwebtoken::Algorithm;
use proptest::prelude::*;
use proptest::sample::Index;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use sha2::{Digest, Sha256, Sha384, Sha512};

// ---------------------------------------------------------------- helpers

/// The seed `make test` fixes (Makefile `PROPTEST_RNG_SEED`), or its default.
fn seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: filter_core::testing::cases(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `x` as exactly `len` big-endian bytes, `None` if it does not fit.
fn be(x: &BigUint, len: usize) -> Option<Vec<u8>> {
    let b = x.to_bytes_be();
    let b = if b == [0] { Vec::new() } else { b };
    let pad = len.checked_sub(b.len())?;
    Some([vec![0u8; pad], b].concat())
}

fn flip(bytes: &mut [u8], at: &Index, bit: u8) {
    let i = at.index(bytes.len());
    bytes[i] ^= 1 << (bit % 8);
}

// -------------------------------------------------------------------- RSA

struct RsaKey {
    name: String,
    private: RsaPrivateKey,
    n: Vec<u8>,
    e: Vec<u8>,
    /// Modulus length in bits and bytes.
    bits: usize,
    k: usize,
}

impl RsaKey {
    fn new(name: &str, private: RsaPrivateKey) -> Self {
        let n = private.n().to_bytes_be();
        RsaKey {
            name: name.to_string(),
            e: private.e().to_bytes_be(),
            bits: private.n().bits(),
            k: n.len(),
            n,
            private,
        }
    }

    fn n_int(&self) -> BigUint {
        BigUint::from_bytes_be(&self.n)
    }

    /// The reference signer.
    fn sign(&self, alg: Algorithm, msg: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
        use rsa::{pkcs1v15, pss};
        let p = self.private.clone();
        let sig = match alg {
            Algorithm::RS256 => pkcs1v15::SigningKey::<Sha256>::new(p).sign(msg).to_vec(),
            Algorithm::RS384 => pkcs1v15::SigningKey::<Sha384>::new(p).sign(msg).to_vec(),
            Algorithm::RS512 => pkcs1v15::SigningKey::<Sha512>::new(p).sign(msg).to_vec(),
            Algorithm::PS256 => pss::SigningKey::<Sha256>::new(p)
                .sign_with_rng(rng, msg)
                .to_vec(),
            Algorithm::PS384 => pss::SigningKey::<Sha384>::new(p)
                .sign_with_rng(rng, msg)
                .to_vec(),
            Algorithm::PS512 => pss::SigningKey::<Sha512>::new(p)
                .sign_with_rng(rng, msg)
                .to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sig.len(), self.k);
        sig
    }

    /// The representative `s^e mod n` as k bytes (what a verifier recovers).
    fn open(&self, sig: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(sig).modpow(&BigUint::from_bytes_be(&self.e), &self.n_int());
        be(&m, self.k).unwrap()
    }

    /// A raw signature of the representative `m` (reduced mod n): `s` with
    /// `s^e ≡ m`. How the tests sign encodings no signer would make.
    fn raw_sign(&self, m: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(m) % self.n_int();
        let s =
            rsa::hazmat::rsa_decrypt_and_check(&self.private, None::<&mut ChaCha8Rng>, &m).unwrap();
        be(&s, self.k).unwrap()
    }

    /// Ours, on this key as published.
    fn ours(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        ours(alg, &rsa_jwk(&self.n, &self.e), msg, sig)
    }

    fn reference(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        reference_rsa(alg, &self.n, &self.e, msg, sig)
    }

    /// The reference's verdict corrected by the one intended difference (see
    /// the crate doc): for PSS with emLen = k − 1, a representative whose
    /// first octet is not zero is invalid (RFC 8017 §8.1.2 step 2c).
    fn expected(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        let verdict = self.reference(alg, msg, sig);
        if verdict && is_pss(alg) && self.bits % 8 == 1 && sig.len() == self.k {
            return self.open(sig)[0] == 0;
        }
        verdict
    }
}

fn is_pss(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512)
}

/// Index into [`rsa_keys`]: the fresh 2048-bit keys are drawn most often
/// (signing with the 3072/4096-bit keys costs 50-130 ms in the test profile).
const KEY_WEIGHTS: [usize; 12] = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5];

fn rsa_keys() -> &'static [RsaKey] {
    static KEYS: OnceLock<Vec<RsaKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Two fresh keys, one per core (2-5 s each in the test profile).
        let fresh: Vec<RsaPrivateKey> = std::thread::scope(|s| {
            let workers: Vec<_> = (1..=2u64)
                .map(|i| {
                    s.spawn(move || {
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(seed().wrapping_mul(31).wrapping_add(i));
                        RsaPrivateKey::new(&mut rng, 2048).unwrap()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let pem = |s: &str| RsaPrivateKey::from_pkcs8_pem(s).unwrap();
        let mut keys: Vec<RsaKey> = fresh
            .into_iter()
            .enumerate()
            .map(|(i, k)| RsaKey::new(&format!("fresh-2048-{i}"), k))
            .collect();
        keys.push(RsaKey::new(
            "fixture-2048-e3",
            pem(include_str!("fixtures/differential-rsa-2048-e3.pem")),
        ));
        keys.push(RsaKey::new(
            "fixture-2049",
            pem(include_str!("fixtures/differential-rsa-2049.pem")),
        ));
        keys.push(RsaKey::new(
            "fixture-3072",
            pem(include_str!("fixtures/differential-rsa-3072.pem")),
        ));
        keys.push(RsaKey::new(
            "fixture-4096",
            pem(include_str!("fixtures/differential-rsa-4096.pem")),
        ));
        assert_eq!(
            keys.iter()
                .map(|k| (k.bits, k.e.clone()))
                .collect::<Vec<_>>(),
            [
                (2048, vec![1, 0, 1]),
                (2048, vec![1, 0, 1]),
                (2048, vec![3]),
                (2049, vec![1, 0, 1]),
                (3072, vec![1, 0, 1]),
                (4096, vec![1, 0, 1]),
            ]
        );
        keys
    })
}

/// One change to a valid (key, message, signature) triple.
#[derive(Debug, Clone)]
enum RsaChange {
    None,
    SigBit(Index, u8),
    MsgBit(Index, u8),
    /// A bit of the published modulus or exponent.
    NBit(Index, u8),
    EBit(u8),
    DropFirst,
    DropLast,
    PrependZero,
    AppendZero,
    /// Verified as another RS*/PS* algorithm.
    OtherAlg(Index),
    /// s + n: congruent to the valid signature, not below n.
    PlusN,
    /// A bit of the encoded message (`s^e mod n`), signed again with the
    /// private key: a well-formed signature of a malformed encoding.
    EncodedBit(Index, u8),
    /// The same in the octets whose structure the padding checks first:
    /// the leading 00/01 (or PSS's masked top bits) and the trailing octet.
    EncodedEdgeBit(bool, u8),
}

fn rsa_change() -> impl Strategy<Value = RsaChange> {
    prop_oneof![
        2 => Just(RsaChange::None),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| RsaChange::SigBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| RsaChange::MsgBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| RsaChange::NBit(i, b)),
        1 => (0u8..24).prop_map(RsaChange::EBit),
        1 => Just(RsaChange::DropFirst),
        1 => Just(RsaChange::DropLast),
        1 => Just(RsaChange::PrependZero),
        1 => Just(RsaChange::AppendZero),
        2 => any::<Index>().prop_map(RsaChange::OtherAlg),
        1 => Just(RsaChange::PlusN),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| RsaChange::EncodedBit(i, b)),
        2 => (any::<bool>(), any::<u8>()).prop_map(|(f, b)| RsaChange::EncodedEdgeBit(f, b)),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    /// Random key (of the pool), algorithm and message; a reference-made
    /// signature, then one change. Ours agrees with the reference on every
    /// case, and both accept the unchanged signature.
    #[test]
    fn rsa_verifiers_agree_with_the_rsa_crate(
        key in prop::sample::select(KEY_WEIGHTS.to_vec()),
        alg in prop::sample::select(RSA_ALGS.to_vec()),
        msg in prop::collection::vec(any::<u8>(), 0..300),
        change in rsa_change(),
        rng_seed in any::<u64>(),
    ) {
        let key = &rsa_keys()[key];
        let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
        let sig = key.sign(alg, &msg, &mut rng);
        let (mut n, mut e, mut msg2, mut sig2, mut alg2) =
            (key.n.clone(), key.e.clone(), msg.clone(), sig.clone(), alg);
        match &change {
            RsaChange::None => {}
            RsaChange::SigBit(i, b) => flip(&mut sig2, i, *b),
            RsaChange::MsgBit(i, b) => {
                if msg2.is_empty() { msg2.push(0) } else { flip(&mut msg2, i, *b) }
            }
            RsaChange::NBit(i, b) => flip(&mut n, i, *b),
            RsaChange::EBit(b) => {
                let v = BigUint::from_bytes_be(&e) ^ (BigUint::from(1u8) << usize::from(*b));
                e = v.to_bytes_be();
            }
            RsaChange::DropFirst => { sig2.remove(0); }
            RsaChange::DropLast => { sig2.pop(); }
            RsaChange::PrependZero => sig2.insert(0, 0),
            RsaChange::AppendZero => sig2.push(0),
            RsaChange::OtherAlg(i) => alg2 = RSA_ALGS[i.index(RSA_ALGS.len())],
            RsaChange::PlusN => {
                let s = BigUint::from_bytes_be(&sig) + key.n_int();
                // wider than k bytes when s + n ≥ 2^(8k): then a length error
                sig2 = be(&s, key.k).unwrap_or_else(|| s.to_bytes_be());
            }
            RsaChange::EncodedBit(i, b) => {
                let mut m = key.open(&sig);
                flip(&mut m, i, *b);
                sig2 = key.raw_sign(&m);
            }
            RsaChange::EncodedEdgeBit(first, b) => {
                let mut m = key.open(&sig);
                let at = if *first { usize::from(*b / 8) % 3 } else { key.k - 1 };
                m[at] ^= 1 << (b % 8);
                sig2 = key.raw_sign(&m);
            }
        }
        let jwk = rsa_jwk(&n, &e);
        let got = ours(alg2, &jwk, &msg2, &sig2);
        let want = if (n.as_slice(), e.as_slice()) == (key.n.as_slice(), key.e.as_slice()) {
            key.expected(alg2, &msg2, &sig2)
        } else {
            reference_rsa(alg2, &n, &e, &msg2, &sig2)
        };
        prop_assert_eq!(got, want, "key {} {:?} as {:?}, change {:?}", key.name, alg, alg2, change);
        if matches!(change, RsaChange::None) {
            prop_assert!(got, "an unchanged signature must verify");
        }
    }
}

/// Signature values at the edges, for every key and algorithm: 0, 1, 2,
/// n − 1, n, n + 1, all ones, s + n (congruent to a valid signature), a
/// valid signature one octet too long or short, and empty. Ours agrees with
/// the reference and refuses them all.
#[test]
fn rsa_edge_signature_values_agree_with_the_rsa_crate_and_are_refused() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut checked = 0;
    for key in rsa_keys() {
        let n = key.n_int();
        let one = BigUint::from(1u8);
        let all_ones = (BigUint::from(1u8) << (8 * key.k)) - &one;
        for alg in RSA_ALGS {
            let valid = key.sign(alg, b"edge values", &mut rng);
            assert!(
                key.ours(alg, b"edge values", &valid) && key.reference(alg, b"edge values", &valid)
            );
            let s = BigUint::from_bytes_be(&valid);
            let mut sigs: Vec<(&str, Vec<u8>)> = vec![
                ("0", vec![0; key.k]),
                ("1", be(&one, key.k).unwrap()),
                ("2", be(&BigUint::from(2u8), key.k).unwrap()),
                ("n-1", be(&(&n - &one), key.k).unwrap()),
                ("n", key.n.clone()),
                ("n+1", be(&(&n + &one), key.k).unwrap()),
                ("all ones", be(&all_ones, key.k).unwrap()),
                ("empty", vec![]),
                ("one octet", vec![1]),
                ("00 || valid", [vec![0], valid.clone()].concat()),
                ("valid || 00", [valid.clone(), vec![0]].concat()),
                ("valid without its first octet", valid[1..].to_vec()),
                ("valid without its last octet", valid[..key.k - 1].to_vec()),
                ("0 of k+1 octets", vec![0; key.k + 1]),
                ("0 of k-1 octets", vec![0; key.k - 1]),
            ];
            if let Some(b) = be(&(&s + &n), key.k) {
                sigs.push(("s+n", b));
            }
            if let Some(b) = be(&(&n + &n), key.k) {
                sigs.push(("2n", b));
            }
            for (what, sig) in &sigs {
                let got = key.ours(alg, b"edge values", sig);
                let want = key.reference(alg, b"edge values", sig);
                assert_eq!(got, want, "{} {alg:?} {what}", key.name);
                assert!(!got, "{} {alg:?} {what} must be refused", key.name);
                checked += 1;
            }
        }
    }
    assert!(checked >= 6 * 6 * 15, "{checked}");
}

/// PKCS#1 v1.5 encodings no honest signer makes, signed with the private
/// key so that only the padding check can refuse them: the forgeries of
/// the Bleichenbacher '06 family need a verifier that parses (garbage after
/// the hash, short padding), plus a DigestInfo without its NULL (Wycheproof
/// calls that one "acceptable"; neither verifier accepts it), block type 2,
/// and the wrong hash's DigestInfo.
#[test]
fn rsa_pkcs1_malformed_encodings_agree_with_the_rsa_crate_and_are_refused() {
    const SHA256_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA256_INFO_NO_NULL: [u8; 17] = [
        0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x04, 0x20,
    ];
    let msg = b"header.payload";
    let h = Sha256::digest(msg).to_vec();
    // EM = 00 01 FF.. 00 T, with `garbage` octets after T
    let encode = |k: usize, bt: u8, info: &[u8], garbage: usize| -> Vec<u8> {
        let t = [info, &h].concat();
        let ps = k - 3 - t.len() - garbage;
        let fill = if bt == 1 { 0xff } else { 0x5a };
        [vec![0, bt], vec![fill; ps], vec![0], t, vec![0xab; garbage]].concat()
    };
    for key in rsa_keys() {
        let k = key.k;
        let honest = encode(k, 1, &SHA256_INFO, 0);
        let sig = key.raw_sign(&honest);
        assert!(key.ours(Algorithm::RS256, msg, &sig), "{}", key.name);
        assert!(key.reference(Algorithm::RS256, msg, &sig));
        let mut short_ps = honest.clone();
        // PS of 7 octets: 00 01 FF*7 00 T, the rest moved left, zeros appended
        short_ps.drain(2..2 + (k - 3 - 51 - 7));
        short_ps.resize(k, 0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage after the hash", encode(k, 1, &SHA256_INFO, 8)),
            ("missing NULL", encode(k, 1, &SHA256_INFO_NO_NULL, 0)),
            ("block type 2", encode(k, 2, &SHA256_INFO, 0)),
            ("short PS, zeros after", short_ps),
            ("no leading zero", {
                let mut m = honest.clone();
                m[0] = 1;
                m[1] = 0xff;
                m
            }),
        ];
        for (what, em) in cases {
            let sig = key.raw_sign(&em);
            for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::PS256] {
                let got = key.ours(alg, msg, &sig);
                assert_eq!(
                    got,
                    key.reference(alg, msg, &sig),
                    "{} {what} {alg:?}",
                    key.name
                );
                assert!(!got, "{} {what} {alg:?}", key.name);
            }
        }
    }
}

/// Every bit of the octets the padding checks by structure, flipped in the
/// encoded message and signed again with the private key: the first two
/// (PKCS#1's `00 01`; PSS's masked top bits, and for the 2049-bit key the
/// octet in front of the encoded message) and the last (PSS's `0xbc`). On
/// a 2048-bit and the 2049-bit key: ours agrees with the reference (save
/// the intended difference) and refuses every one.
#[test]
fn rsa_structural_bits_of_the_encoding_agree_with_the_rsa_crate_and_are_refused() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let msg = b"structure";
    let mut checked = 0;
    for key in rsa_keys()
        .iter()
        .filter(|k| k.name == "fresh-2048-0" || k.bits == 2049)
    {
        for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::PS512] {
            let m = key.open(&key.sign(alg, msg, &mut rng));
            for at in [0, 1, key.k - 1] {
                for bit in 0..8 {
                    let mut bad = m.clone();
                    bad[at] ^= 1 << bit;
                    let sig = key.raw_sign(&bad);
                    let got = key.ours(alg, msg, &sig);
                    assert_eq!(
                        got,
                        key.expected(alg, msg, &sig),
                        "{} {alg:?} octet {at} bit {bit}",
                        key.name
                    );
                    assert!(!got, "{} {alg:?} octet {at} bit {bit}", key.name);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 3 * 8);
}

/// The one intended difference (crate doc): a 2049-bit key has emLen =
/// k − 1 = 256 for PSS, so the recovered representative's first octet must
/// be zero. Signed with the private key: m' = 2^2048 + EM, EM a valid PSS
/// encoding. `rsa` 0.9 drops that octet unread and accepts; RFC 8017
/// §8.1.2 step 2c (I2OSP(m, emLen) → "integer too large") and we refuse.
#[test]
fn pss_refuses_a_representative_longer_than_the_encoded_message() {
    let key = rsa_keys().iter().find(|k| k.bits == 2049).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut found = false;
    for i in 0..64 {
        let msg = format!("2049 {i}");
        let sig = key.sign(Algorithm::PS256, msg.as_bytes(), &mut rng);
        let mut m = key.open(&sig);
        assert_eq!(m[0], 0);
        m[0] = 1;
        if BigUint::from_bytes_be(&m) >= key.n_int() {
            continue; // m' must be below n to be a representative
        }
        let forged = key.raw_sign(&m);
        assert_eq!(key.open(&forged), m);
        assert!(!key.ours(Algorithm::PS256, msg.as_bytes(), &forged));
        assert!(
            key.reference(Algorithm::PS256, msg.as_bytes(), &forged),
            "rsa now refuses it too: the exception in RsaKey::expected can go"
        );
        found = true;
        break;
    }
    assert!(found);
}

/// Why the reference is `rsa`'s typed `pss::VerifyingKey`: its untyped
/// `RsaPublicKey::verify(Pss::new::<D>(), ..)` (0.9) skips the `s < n`
/// check (RFC 8017 §5.2.2 step 1), so s + n verifies there. Ours and the
/// typed path refuse it.
#[test]
fn pss_refuses_s_plus_n_as_the_typed_reference_does() {
    let key = rsa_keys().iter().find(|k| k.bits == 2049).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let msg = b"s plus n";
    let sig = key.sign(Algorithm::PS256, msg, &mut rng);
    // k = 257 octets hold n < 2^2049 twice over
    let plus_n = be(&(BigUint::from_bytes_be(&sig) + key.n_int()), key.k).unwrap();
    assert!(!key.ours(Algorithm::PS256, msg, &plus_n));
    assert!(!key.reference(Algorithm::PS256, msg, &plus_n));
    let untyped = rsa::RsaPublicKey::new(key.n_int(), BigUint::from_bytes_be(&key.e))
        .unwrap()
        .verify(rsa::Pss::new::<Sha256>(), &Sha256::digest(msg), &plus_n);
    assert!(
        untyped.is_ok(),
        "rsa's untyped PSS verify now checks s < n: this note can go"
    );
}

// ------------------------------------------------------------------ ECDSA

/// One of the two JWS curves, with what the tests need to know about it.
struct Curve {
    /// Field element / scalar length in bytes.
    len: usize,
    n: BigUint,
    p: BigUint,
}

fn curve(alg: Algorithm) -> Curve {
    use p256::elliptic_curve::ff::PrimeField as _;
    let hex = |s: &str| BigUint::parse_bytes(s.as_bytes(), 16).unwrap();
    let one = BigUint::from(1u8);
    match alg {
        // n = (n − 1) + 1, n − 1 being the scalar −1
        Algorithm::ES256 => Curve {
            len: 32,
            n: BigUint::from_bytes_be(&(-p256::Scalar::ONE).to_repr()) + one,
            p: hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
        },
        Algorithm::ES384 => Curve {
            len: 48,
            n: BigUint::from_bytes_be(&(-p384::Scalar::ONE).to_repr()) + one,
            p: hex(concat!(
                "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "feffffffff0000000000000000ffffffff"
            )),
        },
        other => panic!("{other:?}"),
    }
}

/// A signing key made from `secret` (`None` if it is not a scalar in
/// [1, n − 1]), its SEC1 uncompressed public point and a deterministic
/// (RFC 6979) signature of `msg` in `r ‖ s` form.
fn ec_sign(alg: Algorithm, secret: &[u8], msg: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use p256::ecdsa::signature::Signer as _;
    match alg {
        Algorithm::ES256 => {
            let sk = p256::ecdsa::SigningKey::from_slice(secret).ok()?;
            let sig: p256::ecdsa::Signature = sk.sign(msg);
            let sec1 = sk.verifying_key().to_encoded_point(false);
            Some((sec1.as_bytes().to_vec(), sig.to_bytes().to_vec()))
        }
        Algorithm::ES384 => {
            let sk = p384::ecdsa::SigningKey::from_slice(secret).ok()?;
            let sig: p384::ecdsa::Signature = sk.sign(msg);
            let sec1 = sk.verifying_key().to_encoded_point(false);
            Some((sec1.as_bytes().to_vec(), sig.to_bytes().to_vec()))
        }
        other => panic!("{other:?}"),
    }
}

/// The message digest as an integer mod n (the digest is as long as n for
/// both JWS pairings, so there is no truncation).
fn ec_digest(alg: Algorithm, msg: &[u8]) -> BigUint {
    match alg {
        Algorithm::ES256 => BigUint::from_bytes_be(&Sha256::digest(msg)),
        _ => BigUint::from_bytes_be(&Sha384::digest(msg)),
    }
}

fn ours_ec(alg: Algorithm, sec1: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ec_jwk(crv(alg), sec1).is_some_and(|jwk| ours(alg, &jwk, msg, sig))
}

/// Edge values for r or s: 0, 1, 2, n − 2, n − 1, n, n + 1, p − 1, p,
/// p + 1, all ones, and `valid + n` (congruent to the valid value).
fn ec_edges(c: &Curve, valid: &BigUint) -> Vec<(String, BigUint)> {
    let one = BigUint::from(1u8);
    let two = BigUint::from(2u8);
    let all_ones = (BigUint::from(1u8) << (8 * c.len)) - &one;
    vec![
        ("0".into(), BigUint::from(0u8)),
        ("1".into(), one.clone()),
        ("2".into(), two.clone()),
        ("n-2".into(), &c.n - &two),
        ("n-1".into(), &c.n - &one),
        ("n".into(), c.n.clone()),
        ("n+1".into(), &c.n + &one),
        ("p-1".into(), &c.p - &one),
        ("p".into(), c.p.clone()),
        ("p+1".into(), &c.p + &one),
        ("all ones".into(), all_ones),
        ("valid+n".into(), valid + &c.n),
    ]
}

#[derive(Debug, Clone)]
enum EcChange {
    None,
    /// (r, n − s): the other valid signature of the pair.
    HighS,
    SigBit(Index, u8),
    MsgBit(Index, u8),
    /// A bit of the public point's x ‖ y.
    KeyBit(Index, u8),
    DropFirst,
    DropLast,
    PrependZero,
    AppendZero,
    SwapRS,
    /// r or s replaced by an edge value ([`ec_edges`]).
    R(Index),
    S(Index),
    /// r = −e·d⁻¹ mod n, so that u1·G + u2·Q is the point at infinity.
    Infinity,
    /// Verified on the other curve (an ES384 signature as ES256, …).
    OtherCurve,
}

fn ec_change() -> impl Strategy<Value = EcChange> {
    prop_oneof![
        2 => Just(EcChange::None),
        2 => Just(EcChange::HighS),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| EcChange::SigBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| EcChange::MsgBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| EcChange::KeyBit(i, b)),
        1 => Just(EcChange::DropFirst),
        1 => Just(EcChange::DropLast),
        1 => Just(EcChange::PrependZero),
        1 => Just(EcChange::AppendZero),
        1 => Just(EcChange::SwapRS),
        2 => any::<Index>().prop_map(EcChange::R),
        2 => any::<Index>().prop_map(EcChange::S),
        1 => Just(EcChange::Infinity),
        1 => Just(EcChange::OtherCurve),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Random key, message and curve; a reference-made signature, then one
    /// change. Ours agrees with `p256`/`p384` on every case; both accept
    /// the unchanged and the high-S signature.
    #[test]
    fn ecdsa_verifiers_agree_with_p256_and_p384(
        alg in prop::sample::select(vec![Algorithm::ES256, Algorithm::ES384]),
        secret in prop::collection::vec(any::<u8>(), 48),
        msg in prop::collection::vec(any::<u8>(), 0..300),
        change in ec_change(),
    ) {
        let c = curve(alg);
        let secret = &secret[..c.len];
        let Some((sec1, sig)) = ec_sign(alg, secret, &msg) else {
            return Err(TestCaseError::reject("not a scalar"));
        };
        let r = BigUint::from_bytes_be(&sig[..c.len]);
        let s = BigUint::from_bytes_be(&sig[c.len..]);
        let (mut key2, mut msg2, mut sig2, mut alg2) = (sec1.clone(), msg.clone(), sig.clone(), alg);
        let rs = |r: &BigUint, s: &BigUint| -> Option<Vec<u8>> {
            Some([be(r, c.len)?, be(s, c.len)?].concat())
        };
        match &change {
            EcChange::None => {}
            EcChange::HighS => sig2 = rs(&r, &(&c.n - &s)).unwrap(),
            EcChange::SigBit(i, b) => flip(&mut sig2, i, *b),
            EcChange::MsgBit(i, b) => {
                if msg2.is_empty() { msg2.push(0) } else { flip(&mut msg2, i, *b) }
            }
            EcChange::KeyBit(i, b) => flip(&mut key2[1..], i, *b),
            EcChange::DropFirst => { sig2.remove(0); }
            EcChange::DropLast => { sig2.pop(); }
            EcChange::PrependZero => sig2.insert(0, 0),
            EcChange::AppendZero => sig2.push(0),
            EcChange::SwapRS => sig2 = rs(&s, &r).unwrap(),
            EcChange::R(i) => {
                let edges = ec_edges(&c, &r);
                let (_, v) = &edges[i.index(edges.len())];
                // a value wider than the field (valid + n may be): its own bytes
                sig2 = rs(v, &s).unwrap_or_else(|| [v.to_bytes_be(), be(&s, c.len).unwrap()].concat());
            }
            EcChange::S(i) => {
                let edges = ec_edges(&c, &s);
                let (_, v) = &edges[i.index(edges.len())];
                sig2 = rs(&r, v).unwrap_or_else(|| [be(&r, c.len).unwrap(), v.to_bytes_be()].concat());
            }
            EcChange::Infinity => {
                let d = BigUint::from_bytes_be(secret);
                let d_inv = d.modpow(&(&c.n - BigUint::from(2u8)), &c.n);
                let e = ec_digest(alg, &msg) % &c.n;
                let r_inf = (&c.n - (e * d_inv) % &c.n) % &c.n;
                sig2 = rs(&r_inf, &s).unwrap();
            }
            EcChange::OtherCurve => {
                alg2 = if alg == Algorithm::ES256 { Algorithm::ES384 } else { Algorithm::ES256 };
            }
        }
        let got = ours_ec(alg2, &key2, &msg2, &sig2);
        let want = reference_ec(alg2, &key2, &msg2, &sig2);
        prop_assert_eq!(got, want, "{:?} as {:?}, change {:?}", alg, alg2, change);
        if matches!(change, EcChange::None | EcChange::HighS) {
            prop_assert!(got, "the valid signature and its high-S twin verify");
        }
        if matches!(change, EcChange::Infinity) {
            prop_assert!(!got);
        }
    }
}

/// Every pair of edge values for (r, s), with a valid signature's r and s
/// among them, on both curves: ours agrees with the reference, and accepts
/// only (r, s) and (r, n − s).
#[test]
fn ecdsa_edge_values_of_r_and_s_agree_with_p256_and_p384() {
    for alg in [Algorithm::ES256, Algorithm::ES384] {
        let c = curve(alg);
        let (sec1, sig) = ec_sign(alg, &[7; 48][..c.len], b"edges").unwrap();
        let r = BigUint::from_bytes_be(&sig[..c.len]);
        let s = BigUint::from_bytes_be(&sig[c.len..]);
        let mut rs_values = ec_edges(&c, &r);
        rs_values.push(("r".into(), r.clone()));
        rs_values.push(("s".into(), s.clone()));
        rs_values.push(("n-s".into(), &c.n - &s));
        let mut accepted = Vec::new();
        for (rn, rv) in &rs_values {
            for (sn, sv) in &rs_values {
                let (Some(rb), Some(sb)) = (be(rv, c.len), be(sv, c.len)) else {
                    continue;
                };
                let sig = [rb, sb].concat();
                let got = ours_ec(alg, &sec1, b"edges", &sig);
                assert_eq!(
                    got,
                    reference_ec(alg, &sec1, b"edges", &sig),
                    "{alg:?} r={rn} s={sn}"
                );
                if got {
                    accepted.push(format!("{rn},{sn}"));
                }
            }
        }
        assert_eq!(accepted, ["r,s", "r,n-s"], "{alg:?}");
    }
}

/// Valid signatures whose r (or s) has a leading zero octet: the fixed
/// width form verifies, the form without the zero (one octet short) does
/// not, on both sides.
#[test]
fn ecdsa_leading_zero_octets_keep_the_fixed_width() {
    for alg in [Algorithm::ES256, Algorithm::ES384] {
        let c = curve(alg);
        for half in [0, 1] {
            let secret = [9u8; 48];
            let (sec1, msg, sig) = (0u32..5000)
                .find_map(|i| {
                    let msg = format!("leading zero {i}").into_bytes();
                    let (sec1, sig) = ec_sign(alg, &secret[..c.len], &msg)?;
                    (sig[half * c.len] == 0).then_some((sec1, msg, sig))
                })
                .expect("about one signature in 256 has a leading zero");
            assert!(ours_ec(alg, &sec1, &msg, &sig));
            assert!(reference_ec(alg, &sec1, &msg, &sig));
            let mut short = sig.clone();
            short.remove(half * c.len);
            assert!(!ours_ec(alg, &sec1, &msg, &short));
            assert!(!reference_ec(alg, &sec1, &msg, &short));
        }
    }
}
