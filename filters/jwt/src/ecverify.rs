//! ECDSA verification (ES256, ES384) with precomputed point tables.
//!
//! Why not `p256`/`p384`'s own `VerifyingKey::verify` on this path: in the
//! 0.13 releases it computes `u1·G + u2·Q` as two separate constant-time
//! scalar multiplications (4-bit windows, each window selected from a table
//! of 16 points in constant time, no precomputed base-point table), and
//! inverts `s` by a constant-time exponentiation. Constant time protects
//! secrets; a verifier has none (the key, the signature and the message are
//! all public), which is why libsecp256k1, OpenSSL and BoringSSL verify in
//! variable time. Here the same curve arithmetic (`p256`/`p384`'s complete
//! projective formulas, field and scalar types, the scalar's variable-time
//! inversion) is driven differently:
//!
//! - each scalar is written in width-w NAF (digits zero or odd, about one in
//!   w + 1 non-zero), and its digits are cut into [`PIECES`] runs of equal
//!   length L, so `u·P = Σₖ 2^(kL)·(run k)·P` needs only L doublings when
//!   the points `2^(kL)·P` are precomputed;
//! - the generator's tables (odd multiples up to 127 of `2^(kL)·G`, w = 8)
//!   are computed once per VM and curve;
//! - a key's tables (odd multiples up to 31 of `2^(kL)·Q`, w = 6) are
//!   computed once per key and cached per VM by the key's encoded point, like
//!   the RSA keys of src/pkcs1.rs;
//! - one chain of L doublings (65 for P-256 instead of 2 × 256) serves both
//!   scalars and all runs (Straus–Shamir interleaving); each non-zero digit
//!   costs one addition.
//!
//! In V8 an ES256 signature step (through `jsonwebtoken::decode`) takes
//! ~0.39 ms against ~1.3 ms with `p256::ecdsa::VerifyingKey` (measured with
//! `examples/verify_bench.rs`, `make bench-verify`).
//!
//! The verification equation is the one of SEC 1 §4.1.4 / FIPS 186-5 §6.4.2
//! exactly: r and s in [1, n−1], `e` the digest reduced mod n,
//! `R = (e·s⁻¹)·G + (r·s⁻¹)·Q`, refuse R = ∞, accept iff `x(R) mod n = r`.
//! Tests check it against the crates' own verifier on valid, tampered and
//! edge-case signatures, and against RFC 6979's published signature.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::elliptic_curve::group::{Curve as _, Group};
use p256::elliptic_curve::ops::{Invert, Reduce};
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::{CurveArithmetic, FieldBytes, PrimeCurve};

/// Width of the generator's NAF digits: 2^(8−2) = 64 points per table.
const W_G: u32 = 8;
/// Width of the key's NAF digits: 2^(6−2) = 16 points per table.
const W_Q: u32 = 6;
/// Runs each scalar's digits are cut into (tables per point).
pub const PIECES: usize = 4;

/// The odd multiples of `2^(kL)·P` for k in 0..PIECES.
type Tables<P> = Vec<Vec<P>>;

/// A curve this module verifies on: p256's NIST P-256 and p384's P-384.
pub trait Curve: PrimeCurve + CurveArithmetic {
    /// The generator's tables for this curve, computed once per VM.
    fn g_tables() -> &'static Tables<Self::ProjectivePoint>;
    /// This curve's per-VM cache of prepared keys.
    fn with_cache<R>(f: impl FnOnce(&mut Vec<(Vec<u8>, Rc<PreparedKey<Self>>)>) -> R) -> R;
    /// Decodes and validates a SEC1 point (on the curve, not the identity).
    fn decode_point(sec1: &[u8]) -> Option<Self::AffinePoint>;
}

macro_rules! curve {
    ($curve:ty, $krate:ident) => {
        impl Curve for $curve {
            fn g_tables() -> &'static Tables<Self::ProjectivePoint> {
                static TABLES: OnceLock<Tables<$krate::ProjectivePoint>> = OnceLock::new();
                TABLES.get_or_init(|| tables::<$curve>($krate::ProjectivePoint::GENERATOR, W_G))
            }
            fn with_cache<R>(f: impl FnOnce(&mut Vec<(Vec<u8>, Rc<PreparedKey<Self>>)>) -> R) -> R {
                thread_local! {
                    static CACHE: RefCell<Vec<(Vec<u8>, Rc<PreparedKey<$curve>>)>> =
                        const { RefCell::new(Vec::new()) };
                }
                CACHE.with(|c| f(&mut c.borrow_mut()))
            }
            fn decode_point(sec1: &[u8]) -> Option<Self::AffinePoint> {
                $krate::PublicKey::from_sec1_bytes(sec1)
                    .ok()
                    .map(|k| *k.as_affine())
            }
        }
    };
}
curve!(p256::NistP256, p256);
curve!(p384::NistP384, p384);

/// Length L of each run of NAF digits: a scalar of b bits has b + 1 digits.
fn run_len<C: Curve>() -> usize {
    (field_len::<C>() * 8 + PIECES) / PIECES
}

/// For k in 0..PIECES: `2^(kL)·P, 3·2^(kL)·P, …, (2^(w−1) − 1)·2^(kL)·P`,
/// the odd multiples a width-w NAF digit of run k selects.
fn tables<C: Curve>(p: C::ProjectivePoint, w: u32) -> Tables<C::ProjectivePoint> {
    let count = 1usize << (w - 2);
    let mut base = p;
    let mut out = Vec::with_capacity(PIECES);
    for piece in 0..PIECES {
        let two = base.double();
        let mut cur = base;
        let mut odd = Vec::with_capacity(count);
        for _ in 0..count {
            odd.push(cur);
            cur += two;
        }
        out.push(odd);
        if piece + 1 < PIECES {
            for _ in 0..run_len::<C>() {
                base = base.double();
            }
        }
    }
    out
}

/// A public key ready for verification: its tables.
pub struct PreparedKey<C: Curve> {
    q_tables: Tables<C::ProjectivePoint>,
}

/// Most prepared keys kept per VM and curve (each ~6 KiB for P-256, ~9 KiB
/// for P-384); beyond it the oldest is dropped and prepared again if used
/// (~0.5 ms in wasm32).
pub const MAX_PREPARED: usize = 64;

/// The prepared form of a SEC1-encoded key: from the per-VM cache, or
/// decoded, validated and kept. `None` if the point is not a valid key.
pub fn prepared<C: Curve>(sec1: &[u8]) -> Option<Rc<PreparedKey<C>>> {
    let hit = C::with_cache(|c| {
        c.iter()
            .find(|(k, _)| k.as_slice() == sec1)
            .map(|(_, p)| p.clone())
    });
    if hit.is_some() {
        return hit;
    }
    let q = C::decode_point(sec1)?;
    let key = Rc::new(PreparedKey::<C> {
        q_tables: tables::<C>(q.into(), W_Q),
    });
    C::with_cache(|c| {
        if c.len() >= MAX_PREPARED {
            c.remove(0);
        }
        c.push((sec1.to_vec(), key.clone()));
    });
    Some(key)
}

impl<C: Curve> PreparedKey<C> {
    /// Verifies a fixed-size `r ‖ s` signature over a digest whose length is
    /// the curve's field size (SHA-256 for P-256, SHA-384 for P-384, as JWA
    /// pairs them).
    pub fn verify_digest(&self, digest: &[u8], sig: &[u8]) -> bool {
        let n = field_len::<C>();
        if digest.len() != n || sig.len() != 2 * n {
            return false;
        }
        let (Some(r), Some(s)) = (
            sig.get(..n).and_then(scalar::<C>),
            sig.get(n..).and_then(scalar::<C>),
        ) else {
            return false;
        };
        let Some(digest) = field_bytes::<C>(digest) else {
            return false;
        };
        let e = <C::Scalar as Reduce<C::Uint>>::reduce_bytes(&digest);
        let Some(s_inv) = Option::<C::Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let u1 = e * s_inv;
        let u2 = r * s_inv;
        let point = self.lincomb(&u1, &u2);
        if bool::from(point.is_identity()) {
            return false;
        }
        let x = point.to_affine().x();
        <C::Scalar as Reduce<C::Uint>>::reduce_bytes(&x) == r
    }

    /// `u1·G + u2·Q` (variable time: public inputs only).
    fn lincomb(&self, u1: &C::Scalar, u2: &C::Scalar) -> C::ProjectivePoint {
        let d1 = wnaf(u1.to_repr().as_ref(), W_G);
        let d2 = wnaf(u2.to_repr().as_ref(), W_Q);
        let len = run_len::<C>();
        let mut acc = C::ProjectivePoint::identity();
        let mut started = false;
        for j in (0..len).rev() {
            if started {
                acc = acc.double();
            }
            for (digits, tables) in [(&d1, C::g_tables()), (&d2, &self.q_tables)] {
                for (k, table) in tables.iter().enumerate() {
                    let d = digits.get(k * len + j).copied().unwrap_or(0);
                    if d == 0 {
                        continue;
                    }
                    // |d| < 2^(w−1): the lookup cannot miss.
                    if let Some(p) = table.get(usize::from(d.unsigned_abs() >> 1)) {
                        if d > 0 {
                            acc += p;
                        } else {
                            acc -= p;
                        }
                        started = true;
                    }
                }
            }
        }
        acc
    }
}

fn field_len<C: Curve>() -> usize {
    FieldBytes::<C>::default().len()
}

/// `bytes` as the curve's field-size array, if it has that length.
fn field_bytes<C: Curve>(bytes: &[u8]) -> Option<FieldBytes<C>> {
    let mut out = FieldBytes::<C>::default();
    if out.len() != bytes.len() {
        return None;
    }
    out.copy_from_slice(bytes);
    Some(out)
}

/// A big-endian scalar in [1, n−1], or `None`.
fn scalar<C: Curve>(bytes: &[u8]) -> Option<C::Scalar> {
    let repr = field_bytes::<C>(bytes)?;
    let s = Option::<C::Scalar>::from(C::Scalar::from_repr(repr))?;
    if bool::from(s.is_zero()) {
        None
    } else {
        Some(s)
    }
}

/// Width-`w` non-adjacent form of a big-endian integer: little-endian digits,
/// each zero or odd with |d| < 2^(w−1), any w consecutive of them holding at
/// most one non-zero, and Σ dᵢ·2ⁱ = the integer. One digit more than the
/// integer has bits, for the final carry.
pub fn wnaf(be: &[u8], w: u32) -> Vec<i8> {
    let bits = be.len() * 8;
    let bit = |i: usize| -> u32 {
        if i >= bits {
            return 0;
        }
        let byte = be.get(be.len() - 1 - i / 8).copied().unwrap_or(0);
        u32::from((byte >> (i % 8)) & 1)
    };
    let mut digits = vec![0i8; bits + 1];
    let width = 1u32 << w;
    let mut carry = 0u32;
    let mut i = 0;
    while i <= bits {
        if bit(i) == carry {
            // The running value is even here: a zero digit.
            i += 1;
            continue;
        }
        let mut window = carry;
        for j in 0..w {
            window += bit(i + j as usize) << j;
        }
        // window is odd: pick the odd residue in (−2^(w−1), 2^(w−1)).
        let digit = if window < width / 2 {
            carry = 0;
            window as i32
        } else {
            carry = 1;
            window as i32 - width as i32
        };
        if let Some(d) = digits.get_mut(i) {
            *d = digit as i8;
        }
        i += w as usize;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::ecdsa::signature::Signer;
    use sha2::{Digest, Sha256, Sha384};

    fn scalar_from_digits<C: Curve>(d: &[i8]) -> C::Scalar
where {
        let mut acc = C::Scalar::ZERO;
        for digit in d.iter().rev() {
            acc = acc.double();
            let m = C::Scalar::from(u64::from(digit.unsigned_abs()));
            if *digit > 0 {
                acc += m;
            } else if *digit < 0 {
                acc -= m;
            }
        }
        acc
    }

    fn check_wnaf(be: &[u8], w: u32) {
        let d = wnaf(be, w);
        assert_eq!(d.len(), be.len() * 8 + 1);
        for (i, x) in d.iter().enumerate() {
            if *x != 0 {
                assert!(x % 2 != 0 && i32::from(x.unsigned_abs()) < (1 << (w - 1)));
                // at most one non-zero digit in any w consecutive ones
                for y in d.iter().skip(i + 1).take(w as usize - 1) {
                    assert_eq!(*y, 0, "{be:02x?} w={w}");
                }
            }
        }
        // Exact integer reconstruction, checked as i128 pieces would be
        // awkward: compare in the scalar field for inputs below n, and as a
        // big integer (bytes) by recomposing with carries otherwise.
        let mut limbs = vec![0i64; be.len() * 8 + 1];
        for (i, x) in d.iter().enumerate() {
            limbs[i] = i64::from(*x);
        }
        // Recompose Σ dᵢ·2ⁱ into little-endian bytes with signed carries.
        let mut out = vec![0u8; be.len() + 1];
        let mut carry: i64 = 0;
        for (byte_i, o) in out.iter_mut().enumerate() {
            let mut v = carry;
            for b in 0..8 {
                if let Some(x) = limbs.get(byte_i * 8 + b) {
                    v += x << b;
                }
            }
            *o = v.rem_euclid(256) as u8;
            carry = v.div_euclid(256);
        }
        assert_eq!(carry, 0);
        let mut want: Vec<u8> = be.iter().rev().copied().collect();
        want.push(0);
        assert_eq!(out, want, "{be:02x?} w={w}");
    }

    #[test]
    fn wnaf_recomposes_every_edge() {
        let n256: Vec<u8> = (p256::Scalar::ZERO - p256::Scalar::ONE).to_repr().to_vec();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![0; 32],
            vec![0xff; 32],
            n256.clone(),
            {
                let mut v = vec![0; 32];
                v[31] = 1;
                v
            },
            {
                let mut v = vec![0; 32];
                v[0] = 0x80;
                v
            },
            vec![0xaa; 32],
            vec![0x55; 32],
            vec![0x7f; 48],
        ];
        for i in 0u32..300 {
            cases.push(Sha256::digest(i.to_be_bytes()).to_vec());
            cases.push(Sha384::digest(i.to_be_bytes()).to_vec());
        }
        for c in &cases {
            for w in 2..=8 {
                check_wnaf(c, w);
            }
        }
        // And in the field, for the P-256 order minus one.
        let d = wnaf(&n256, W_G);
        assert_eq!(
            scalar_from_digits::<p256::NistP256>(&d),
            p256::Scalar::ZERO - p256::Scalar::ONE
        );
    }

    fn p256_key(i: u32) -> p256::ecdsa::SigningKey {
        let seed = Sha256::digest(format!("p256 key {i}"));
        p256::ecdsa::SigningKey::from_slice(&seed).unwrap()
    }

    #[test]
    fn p256_agrees_with_the_crate_on_valid_and_tampered_signatures() {
        for i in 0..60u32 {
            let sk = p256_key(i);
            let vk = *sk.verifying_key();
            let sec1 = vk.to_encoded_point(false);
            let key = prepared::<p256::NistP256>(sec1.as_bytes()).unwrap();
            let msg = format!("header.payload-{i}");
            let sig: p256::ecdsa::Signature = sk.sign(msg.as_bytes());
            let digest = Sha256::digest(msg.as_bytes());
            let bytes = sig.to_bytes();
            assert!(key.verify_digest(&digest, &bytes), "key {i}");
            // high-s form of the same signature: ECDSA accepts it, so does JWS
            let high = p256::ecdsa::Signature::from_scalars(sig.r(), -*sig.s()).unwrap();
            assert_eq!(
                key.verify_digest(&digest, &high.to_bytes()),
                vk.verify_prehash(&digest, &high).is_ok()
            );
            // flip each byte of the signature in turn, and of the digest
            for pos in (0..64).step_by(7) {
                let mut bad = bytes.to_vec();
                bad[pos] ^= 1 << (pos % 8);
                let theirs = p256::ecdsa::Signature::from_slice(&bad)
                    .map(|s| vk.verify_prehash(&digest, &s).is_ok())
                    .unwrap_or(false);
                assert_eq!(key.verify_digest(&digest, &bad), theirs);
                assert!(!theirs);
            }
            let mut d2 = digest.to_vec();
            d2[(i as usize) % 32] ^= 0x80;
            assert!(!key.verify_digest(&d2, &bytes));
            // another key's signature
            let other = prepared::<p256::NistP256>(
                p256_key(i + 1000)
                    .verifying_key()
                    .to_encoded_point(true)
                    .as_bytes(),
            )
            .unwrap();
            assert!(!other.verify_digest(&digest, &bytes));
        }
    }

    #[test]
    fn p384_agrees_with_the_crate() {
        for i in 0..20u32 {
            let seed = Sha384::digest(format!("p384 key {i}"));
            let sk = p384::ecdsa::SigningKey::from_slice(&seed).unwrap();
            let vk = *sk.verifying_key();
            let key = prepared::<p384::NistP384>(vk.to_encoded_point(false).as_bytes()).unwrap();
            let msg = format!("p384 message {i}");
            let sig: p384::ecdsa::Signature = sk.sign(msg.as_bytes());
            let digest = Sha384::digest(msg.as_bytes());
            assert!(key.verify_digest(&digest, &sig.to_bytes()));
            let mut bad = sig.to_bytes().to_vec();
            bad[(i as usize * 5) % 96] ^= 4;
            assert!(!key.verify_digest(&digest, &bad));
            // a P-384 signature never passes as P-256 input and vice versa
            assert!(!key.verify_digest(&digest[..32], &sig.to_bytes()[..64]));
        }
    }

    #[test]
    fn refuses_out_of_range_and_malformed_signatures() {
        let sk = p256_key(7);
        let sec1 = sk.verifying_key().to_encoded_point(false);
        let key = prepared::<p256::NistP256>(sec1.as_bytes()).unwrap();
        let digest = Sha256::digest(b"m");
        let n: Vec<u8> = {
            // n itself: (n − 1) + 1 does not fit a scalar; build its bytes
            let mut v = (p256::Scalar::ZERO - p256::Scalar::ONE).to_repr().to_vec();
            *v.last_mut().unwrap() += 1;
            v
        };
        let one = {
            let mut v = vec![0u8; 32];
            v[31] = 1;
            v
        };
        for (r, s) in [
            (vec![0u8; 32], one.clone()), // r = 0
            (one.clone(), vec![0u8; 32]), // s = 0 (CVE-2022-21449)
            (n.clone(), one.clone()),     // r = n
            (one.clone(), n.clone()),     // s = n
            (vec![0xff; 32], one.clone()),
        ] {
            let sig = [r, s].concat();
            assert!(!key.verify_digest(&digest, &sig));
        }
        assert!(!key.verify_digest(&digest, &[0u8; 64]));
        assert!(!key.verify_digest(&digest, &[1u8; 63]));
        assert!(!key.verify_digest(&digest[..31], &[1u8; 64]));
        // invalid keys are refused when prepared
        assert!(prepared::<p256::NistP256>(&[4u8; 65]).is_none());
        assert!(prepared::<p256::NistP256>(&[0u8]).is_none());
        assert!(prepared::<p256::NistP256>(b"").is_none());
    }

    #[test]
    fn known_answer_rfc6979_p256_sha256() {
        // RFC 6979 A.2.5, P-256 with SHA-256, message "sample": an
        // independent signer's output.
        let x = "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721";
        let r = "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716";
        let s = "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8";
        let hex = crate::pkcs1::tests::hex;
        let sk = p256::ecdsa::SigningKey::from_slice(&hex(x)).unwrap();
        let sec1 = sk.verifying_key().to_encoded_point(false);
        let key = prepared::<p256::NistP256>(sec1.as_bytes()).unwrap();
        let sig = [hex(r), hex(s)].concat();
        assert!(key.verify_digest(&Sha256::digest(b"sample"), &sig));
        assert!(!key.verify_digest(&Sha256::digest(b"test"), &sig));
    }

    /// Scalars whose digits sit where the table code changes gear: 0, 1,
    /// 2, 3, n − 1, n − 2, and 2^i, 2^i − 1 and n − 2^i for i at the bottom,
    /// around each run boundary k·L and at the top bits.
    fn edge_scalars<C: Curve>() -> Vec<C::Scalar> {
        let bits = field_len::<C>() * 8;
        let l = run_len::<C>();
        let mut at = vec![0, 1, 7, 8, bits - 2, bits - 1];
        for k in 1..PIECES {
            at.extend([k * l - 1, k * l, k * l + 1]);
        }
        let pow = |i: usize| {
            let mut b = FieldBytes::<C>::default();
            let len = b.len();
            b[len - 1 - i / 8] |= 1 << (i % 8);
            Option::<C::Scalar>::from(C::Scalar::from_repr(b)).unwrap()
        };
        let one = C::Scalar::ONE;
        let mut out = vec![
            C::Scalar::ZERO,
            one,
            C::Scalar::from(2),
            C::Scalar::from(3),
            -one,
            -one - one,
        ];
        for i in at {
            let p = pow(i);
            out.extend([p, p - one, -p]);
        }
        out
    }

    /// A scalar of the property test: one of [`edge_scalars`] or random
    /// bytes reduced mod n.
    #[derive(Debug, Clone)]
    enum ScalarChoice {
        Edge(proptest::sample::Index),
        Random(Vec<u8>),
    }

    fn pick<C: Curve>(c: &ScalarChoice) -> C::Scalar {
        match c {
            ScalarChoice::Edge(i) => {
                let e = edge_scalars::<C>();
                e[i.index(e.len())]
            }
            ScalarChoice::Random(b) => {
                let bytes = field_bytes::<C>(&b[..field_len::<C>()]).unwrap();
                <C::Scalar as Reduce<C::Uint>>::reduce_bytes(&bytes)
            }
        }
    }

    /// A key's point `Q = d·G` (d from bytes, reduced) and its tables.
    fn test_key<C: Curve>(d: &[u8]) -> (C::ProjectivePoint, PreparedKey<C>) {
        let d = pick::<C>(&ScalarChoice::Random(d.to_vec()));
        let q = C::ProjectivePoint::generator() * d;
        (
            q,
            PreparedKey::<C> {
                q_tables: tables::<C>(q, W_Q),
            },
        )
    }

    /// `lincomb` (tables, wNAF runs, one doubling chain) against the
    /// crates' own scalar multiplication `u1·G + u2·Q`.
    fn lincomb_agrees<C: Curve>(
        (q, key): &(C::ProjectivePoint, PreparedKey<C>),
        u1: C::Scalar,
        u2: C::Scalar,
    ) -> bool {
        key.lincomb(&u1, &u2) == C::ProjectivePoint::generator() * u1 + *q * u2
    }

    #[test]
    fn lincomb_agrees_with_the_crates_on_every_edge_scalar() {
        fn run<C: Curve>() {
            let key = test_key::<C>(&[0x5a; 48]);
            let edges = edge_scalars::<C>();
            let z = C::Scalar::ZERO;
            for (i, u) in edges.iter().enumerate() {
                let other = edges[(i * 7 + 3) % edges.len()];
                for (u1, u2) in [(*u, z), (z, *u), (*u, other)] {
                    assert!(lincomb_agrees::<C>(&key, u1, u2), "edge {i}");
                }
            }
        }
        run::<p256::NistP256>();
        run::<p384::NistP384>();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: filter_core::testing::cases(64),
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn lincomb_agrees_with_the_crates_scalar_multiplication(
            p384 in proptest::prelude::any::<bool>(),
            d in proptest::collection::vec(proptest::prelude::any::<u8>(), 48),
            u1 in scalar_choice(),
            u2 in scalar_choice(),
        ) {
            type P256 = p256::NistP256;
            type P384 = p384::NistP384;
            let ok = if p384 {
                lincomb_agrees::<P384>(&test_key::<P384>(&d), pick::<P384>(&u1), pick::<P384>(&u2))
            } else {
                lincomb_agrees::<P256>(&test_key::<P256>(&d), pick::<P256>(&u1), pick::<P256>(&u2))
            };
            proptest::prop_assert!(ok);
        }
    }

    fn scalar_choice() -> impl proptest::strategy::Strategy<Value = ScalarChoice> {
        use proptest::prelude::*;
        prop_oneof![
            any::<proptest::sample::Index>().prop_map(ScalarChoice::Edge),
            proptest::collection::vec(any::<u8>(), 48).prop_map(ScalarChoice::Random),
        ]
    }

    #[test]
    fn keys_are_cached_by_content_with_a_bound() {
        let sec1 = p256_key(1).verifying_key().to_encoded_point(false);
        let a = prepared::<p256::NistP256>(sec1.as_bytes()).unwrap();
        let b = prepared::<p256::NistP256>(sec1.as_bytes()).unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        for i in 0..(MAX_PREPARED as u32 + 5) {
            prepared::<p256::NistP256>(
                p256_key(5000 + i)
                    .verifying_key()
                    .to_encoded_point(true)
                    .as_bytes(),
            )
            .unwrap();
        }
        assert_eq!(p256::NistP256::with_cache(|c| c.len()), MAX_PREPARED);
    }
}
