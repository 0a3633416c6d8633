//! The client certificate itself: PEM/DER decoding, SAN extraction, the
//! validity window, the XFCC `Hash=` binding and (optionally) the issuer's
//! signature against configured CA certificates. Everything the filter
//! decides about a caller comes from here, never from the `URI=`/`DNS=`
//! text of an XFCC element.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;

use crate::san::Sans;

/// Why a certificate was not accepted. Logged and counted; never sent to
/// the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no client certificate")]
    Missing,
    #[error("the certificate is not valid PEM")]
    Pem,
    #[error("the certificate is not valid DER X.509")]
    Der,
    #[error("Hash= does not match the certificate")]
    HashMismatch,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate has no URI or DNS SAN")]
    NoSan,
    #[error("the certificate has more than {0} SANs")]
    TooManySans(usize),
    #[error("the certificate's SAN extension is invalid")]
    BadSanExtension,
    #[error("the certificate was not issued by a trusted CA")]
    UntrustedIssuer,
}

impl CertError {
    /// A short snake_case reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::Missing => "no_certificate",
            CertError::Pem | CertError::Der => "unreadable_certificate",
            CertError::HashMismatch => "hash_mismatch",
            CertError::NotYetValid => "not_yet_valid",
            CertError::Expired => "expired",
            CertError::NoSan => "no_san",
            CertError::TooManySans(_) => "too_many_sans",
            CertError::BadSanExtension => "bad_san_extension",
            CertError::UntrustedIssuer => "untrusted_issuer",
        }
    }
}

/// What a verified certificate tells about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sans: Sans,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// A CA certificate whose signature the filter checks (`trusted_cas`).
#[derive(Debug, Clone)]
pub struct TrustedCa {
    subject_raw: Vec<u8>,
    not_before: i64,
    not_after: i64,
    key: CaKey,
}

#[derive(Debug, Clone)]
enum CaKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl TrustedCa {
    /// Compiles one PEM CA certificate: it must be a CA (basicConstraints
    /// CA=true) with an EC P-256 or P-384 key.
    pub fn from_pem(pem: &str) -> Result<TrustedCa, String> {
        let der = der_from_pem(pem).map_err(|e| e.to_string())?;
        let cert = parse_der(&der).map_err(|e| e.to_string())?;
        if !cert.is_ca() {
            return Err("the certificate is not a CA (basicConstraints CA=true)".into());
        }
        let spki = cert.public_key();
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err("only EC P-256 and P-384 CA keys are supported".into());
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let point: &[u8] = spki.subject_public_key.data.as_ref();
        let key = match curve {
            Some(c) if c == OID_EC_P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(CaKey::P256)
                .map_err(|_| "invalid P-256 public key".to_string())?,
            Some(c) if c == OID_NIST_EC_P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(CaKey::P384)
                .map_err(|_| "invalid P-384 public key".to_string())?,
            _ => return Err("only EC P-256 and P-384 CA keys are supported".into()),
        };
        let validity = cert.validity();
        Ok(TrustedCa {
            subject_raw: cert.subject().as_raw().to_vec(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            key,
        })
    }

    /// Did this CA sign `cert`, and is the CA itself valid at `now`? On
    /// success, the CA's `notAfter`.
    fn signed(&self, cert: &X509Certificate<'_>, now: i64) -> Option<i64> {
        if cert.issuer().as_raw() != self.subject_raw.as_slice()
            || now < self.not_before
            || now > self.not_after
        {
            return None;
        }
        let tbs: &[u8] = cert.tbs_certificate.as_ref();
        let sig: &[u8] = cert.signature_value.data.as_ref();
        let alg = &cert.signature_algorithm.algorithm;
        let ok = match &self.key {
            CaKey::P256(k) if *alg == OID_SIG_ECDSA_WITH_SHA256 => {
                p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify(tbs, &s).is_ok())
            }
            CaKey::P384(k) if *alg == OID_SIG_ECDSA_WITH_SHA384 => {
                p384::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify(tbs, &s).is_ok())
            }
            _ => false,
        };
        ok.then_some(self.not_after)
    }
}

/// Certificates whose issuer signature has been verified, keyed by the
/// SHA-256 of their DER, so that a caller's certificate costs one ECDSA
/// verification per worker rather than one per request (about 2 ms in
/// wasm). Bounded: at most `capacity` entries, the oldest evicted first;
/// only certificates that passed the check are ever inserted. An entry
/// keeps the verifying CA's `notAfter` and stops counting after it. The
/// certificate's own validity window is checked on every request.
#[derive(Debug, Default)]
pub struct SignatureCache {
    entries: HashMap<[u8; 32], i64>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl SignatureCache {
    pub fn new(capacity: usize) -> Self {
        SignatureCache {
            entries: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
        }
    }

    fn hit(&self, key: &[u8; 32], now: i64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|ca_not_after| now <= *ca_not_after)
    }

    fn insert(&mut self, key: [u8; 32], ca_not_after: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, ca_not_after).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decodes the first PEM block of a text, which must be a `CERTIFICATE`
/// (RFC 7468 §2: base64 between the encapsulation boundaries, whitespace and
/// line breaks ignored).
///
/// Why not `x509_parser::pem`: it decodes with `data-encoding`, whose generic
/// decoder compiles to one 31 KB wasm function that V8's optimising compiler
/// (Envoy compiles every module eagerly with TurboFan) needs ~110 ms for:
/// 10% of the suite module's start-up. The base64 here is the `base64`
/// crate the workspace already uses; only the boundaries are matched here.
pub fn der_from_pem(pem: &str) -> Result<Vec<u8>, CertError> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let start = pem.find(BEGIN).ok_or(CertError::Pem)?;
    let after = pem.get(start + BEGIN.len()..).ok_or(CertError::Pem)?;
    let (label, rest) = after.split_once(DASHES).ok_or(CertError::Pem)?;
    if label != "CERTIFICATE" {
        return Err(CertError::Pem);
    }
    let end = format!("-----END {label}-----");
    let (body, _) = rest.split_once(end.as_str()).ok_or(CertError::Pem)?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(der) if !der.is_empty() => Ok(der),
        _ => Err(CertError::Pem),
    }
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        _ => Err(CertError::Der),
    }
}

/// Lower-case hex SHA-256 of the DER, as Envoy writes XFCC `Hash=`.
pub fn sha256_hex(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What [`verify`] checks beyond parsing.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// When not empty, the certificate must be signed directly by one of these.
    pub trusted_cas: Vec<TrustedCa>,
    /// Certificates with more URI + DNS SANs are refused.
    pub max_sans: usize,
}

/// Checks a DER certificate at `now` (Unix seconds): parseable, inside its
/// validity window, issued by a trusted CA when any is configured, and with
/// at least one URI or DNS SAN (at most `max_sans`).
pub fn verify(
    der: &[u8],
    now: i64,
    policy: &Policy,
    cache: &mut SignatureCache,
) -> Result<Verified, CertError> {
    let cert = parse_der(der)?;
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    if now < validity.not_before.timestamp() {
        return Err(CertError::NotYetValid);
    }
    if now > not_after {
        return Err(CertError::Expired);
    }
    if !policy.trusted_cas.is_empty() {
        let key: [u8; 32] = Sha256::digest(der).into();
        if !cache.hit(&key, now) {
            let ca_not_after = policy
                .trusted_cas
                .iter()
                .find_map(|ca| ca.signed(&cert, now))
                .ok_or(CertError::UntrustedIssuer)?;
            cache.insert(key, ca_not_after);
        }
    }
    let mut sans = Sans::default();
    let ext = cert
        .subject_alternative_name()
        .map_err(|_| CertError::BadSanExtension)?;
    if let Some(ext) = ext {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(u) => sans.uris.push((*u).to_string()),
                GeneralName::DNSName(d) => sans.dns.push((*d).to_string()),
                _ => {}
            }
            if sans.len() > policy.max_sans {
                return Err(CertError::TooManySans(policy.max_sans));
            }
        }
    }
    if sans.is_empty() {
        return Err(CertError::NoSan);
    }
    Ok(Verified { sans, not_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn demo(name: &str) -> String {
        let p = format!(
            "{}/../../examples/certs/{name}.pem",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&p).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn cache() -> SignatureCache {
        SignatureCache::new(0)
    }

    fn policy(cas: &[&str]) -> Policy {
        Policy {
            trusted_cas: cas
                .iter()
                .map(|n| TrustedCa::from_pem(&demo(n)).unwrap())
                .collect(),
            max_sans: 32,
        }
    }

    #[test]
    fn demo_partner_certificate_yields_its_spiffe_san() {
        let der = der_from_pem(&demo("partner-billing")).unwrap();
        let v = verify(&der, now(), &policy(&["ca"]), &mut cache()).unwrap();
        assert_eq!(
            v.sans.uris,
            ["spiffe://partner.example/ns/partner-a/sa/billing"]
        );
        assert!(v.sans.dns.is_empty());
        assert!(v.not_after > now());
    }

    #[test]
    fn certificate_from_another_ca_is_untrusted() {
        let der = der_from_pem(&demo("other-ca-client")).unwrap();
        assert_eq!(
            verify(&der, now(), &policy(&["ca"]), &mut cache()),
            Err(CertError::UntrustedIssuer)
        );
        assert!(verify(&der, now(), &policy(&["other-ca"]), &mut cache()).is_ok());
        assert!(verify(&der, now(), &policy(&["ca", "other-ca"]), &mut cache()).is_ok());
        // Without trusted_cas no issuer check is made (the TLS layer did it).
        assert!(verify(&der, now(), &policy(&[]), &mut cache()).is_ok());
    }

    #[test]
    fn validity_window_is_enforced() {
        let der = der_from_pem(&demo("stranger")).unwrap();
        let p = policy(&[]);
        let v = verify(&der, now(), &p, &mut cache()).unwrap();
        assert_eq!(
            verify(&der, v.not_after + 1, &p, &mut cache()),
            Err(CertError::Expired)
        );
        assert_eq!(
            verify(&der, 0, &p, &mut cache()),
            Err(CertError::NotYetValid)
        );
    }

    #[test]
    fn tampered_certificate_fails_the_signature_check() {
        let mut der = der_from_pem(&demo("partner-billing")).unwrap();
        // Flip a byte inside the TBS part (the subject public key, near the middle).
        let i = der.len() / 2;
        der[i] ^= 0x01;
        let r = verify(&der, now(), &policy(&["ca"]), &mut cache());
        assert!(
            matches!(r, Err(CertError::UntrustedIssuer) | Err(CertError::Der)),
            "{r:?}"
        );
    }

    #[test]
    fn verified_signatures_are_cached_by_certificate_hash_and_bounded() {
        let p = policy(&["ca"]);
        let mut c = SignatureCache::new(2);
        for name in ["partner-billing", "internal-admin", "stranger", "stranger"] {
            let der = der_from_pem(&demo(name)).unwrap();
            assert!(verify(&der, now(), &p, &mut c).is_ok());
        }
        assert_eq!(c.len(), 2);
        // A refused certificate is never cached.
        let other = der_from_pem(&demo("other-ca-client")).unwrap();
        assert_eq!(
            verify(&other, now(), &p, &mut c),
            Err(CertError::UntrustedIssuer)
        );
        assert!(!c.hit(&Sha256::digest(&other).into(), now()));
        // A cached certificate still has its own validity checked.
        let der = der_from_pem(&demo("stranger")).unwrap();
        let key: [u8; 32] = Sha256::digest(&der).into();
        assert!(c.hit(&key, now()));
        assert_eq!(
            verify(&der, 4_000_000_000, &p, &mut c),
            Err(CertError::Expired)
        );
        // An entry stops counting after its CA's notAfter.
        assert!(!c.hit(&key, p.trusted_cas[0].not_after + 1));
    }

    #[test]
    fn leaf_is_not_accepted_as_a_trusted_ca() {
        assert!(TrustedCa::from_pem(&demo("partner-billing")).is_err());
        assert!(TrustedCa::from_pem("nope").is_err());
    }

    #[test]
    fn san_count_is_bounded() {
        let der = der_from_pem(&demo("server")).unwrap();
        let p = Policy {
            trusted_cas: vec![],
            max_sans: 0,
        };
        assert_eq!(
            verify(&der, now(), &p, &mut cache()),
            Err(CertError::TooManySans(0))
        );
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(
            der_from_pem("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"),
            Err(CertError::Pem)
        );
        assert_eq!(der_from_pem(""), Err(CertError::Pem));
        let p = policy(&[]);
        assert_eq!(verify(b"", 0, &p, &mut cache()), Err(CertError::Der));
        assert_eq!(
            verify(&[0x30, 0x03, 0x02, 0x01, 0x01], 0, &p, &mut cache()),
            Err(CertError::Der)
        );
        let mut der = der_from_pem(&demo("stranger")).unwrap();
        der.push(0);
        assert_eq!(verify(&der, now(), &p, &mut cache()), Err(CertError::Der));
    }

    #[test]
    fn hash_is_lower_hex_sha256() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn pem_blocks_other_than_one_certificate_are_refused() {
        let good = demo("partner-billing");
        let der = der_from_pem(&good).unwrap();
        assert!(parse_der(&der).is_ok());
        // CRLF line ends and indentation are whitespace.
        assert_eq!(der_from_pem(&good.replace('\n', "\r\n  ")).unwrap(), der);
        assert!(der_from_pem(&good.replace("CERTIFICATE", "PRIVATE KEY")).is_err());
        assert!(der_from_pem(&good.replace("-----END CERTIFICATE-----", "")).is_err());
        assert!(
            der_from_pem("-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----").is_err()
        );
        assert!(der_from_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----").is_err());
        assert!(der_from_pem("").is_err());
        assert!(der_from_pem("-----BEGIN ").is_err());
    }
}
