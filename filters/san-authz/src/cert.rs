//! The client certificate itself: PEM/DER decoding, SAN extraction, the
//! validity window, the leaf profile of a TLS client certificate (not a CA,
//! `digitalSignature` and `clientAuth` allowed), the XFCC `Hash=` binding and
//! the issuer's signature against configured CA certificates. Everything the filter
//! decides about a caller comes from here, never from the `URI=`/`DNS=`
//! text of an XFCC element.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, Sequence, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE,
    OID_X509_EXT_KEY_USAGE,
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
    #[error("the certificate is a CA certificate (basicConstraints CA=true), not a client's")]
    CaCertificate,
    #[error("the certificate's keyUsage does not allow digitalSignature")]
    KeyUsage,
    #[error("the certificate's extendedKeyUsage does not allow clientAuth")]
    ExtendedKeyUsage,
    #[error(
        "the certificate's basicConstraints, keyUsage or extendedKeyUsage is invalid or repeated"
    )]
    BadUsageExtension,
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
            CertError::CaCertificate => "ca_certificate",
            CertError::KeyUsage => "key_usage_without_digital_signature",
            CertError::ExtendedKeyUsage => "eku_without_client_auth",
            CertError::BadUsageExtension => "bad_usage_extension",
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

/// The one extension with this OID, parsed: `Ok(None)` when absent; an
/// extension that appears twice (RFC 5280 §4.2 forbids it) or that
/// x509-parser could not parse is an error, never "absent".
fn unique_extension<'c, 'a>(
    cert: &'c X509Certificate<'a>,
    oid: &Oid<'_>,
) -> Result<Option<&'c ParsedExtension<'a>>, CertError> {
    let ext: Option<&X509Extension<'a>> = cert
        .get_extension_unique(oid)
        .map_err(|_| CertError::BadUsageExtension)?;
    match ext.map(X509Extension::parsed_extension) {
        Some(ParsedExtension::ParseError { .. } | ParsedExtension::UnsupportedExtension { .. }) => {
            Err(CertError::BadUsageExtension)
        }
        other => Ok(other),
    }
}

/// The leaf profile of a TLS client certificate: rustls-webpki's
/// end-entity rules for client authentication (no CA as a leaf, clientAuth
/// when an EKU is listed) plus BoringSSL's keyUsage rule for a client key:
///
/// * `basicConstraints` CA=true is refused (a CA certificate is not a
///   client; absent or CA=false is a leaf);
/// * `keyUsage`, when present, must allow `digitalSignature` (the client
///   signs the handshake with this key); absent: no restriction;
/// * `extendedKeyUsage`, when present, must list `id-kp-clientAuth`;
///   `anyExtendedKeyUsage` does not count (webpki and NSS ignore it, and
///   BoringSSL's `ssl_client` purpose check, which Envoy runs on a client
///   certificate, refuses it too); absent: no restriction (RFC 5280
///   §4.2.1.12, and what webpki, Go and BoringSSL accept).
///
/// A repeated or unparsable one of these extensions is refused.
pub fn check_client_leaf(cert: &X509Certificate<'_>) -> Result<(), CertError> {
    match unique_extension(cert, &OID_X509_EXT_BASIC_CONSTRAINTS)? {
        Some(ParsedExtension::BasicConstraints(bc)) if bc.ca => {
            return Err(CertError::CaCertificate)
        }
        None | Some(ParsedExtension::BasicConstraints(_)) => {}
        Some(_) => return Err(CertError::BadUsageExtension),
    }
    match unique_extension(cert, &OID_X509_EXT_KEY_USAGE)? {
        Some(ParsedExtension::KeyUsage(ku)) if !ku.digital_signature() => {
            return Err(CertError::KeyUsage)
        }
        None | Some(ParsedExtension::KeyUsage(_)) => {}
        Some(_) => return Err(CertError::BadUsageExtension),
    }
    match unique_extension(cert, &OID_X509_EXT_EXTENDED_KEY_USAGE)? {
        None => {}
        Some(ParsedExtension::ExtendedKeyUsage(eku)) => {
            // x509-parser 0.18 (asn1-rs 0.7) reads each element of the
            // SEQUENCE as an OID whatever its tag: an INTEGER holding
            // clientAuth's bytes would pass as clientAuth. Only real OIDs.
            let raw = cert
                .get_extension_unique(&OID_X509_EXT_EXTENDED_KEY_USAGE)
                .ok()
                .flatten()
                .map(|e| e.value);
            if !raw.is_some_and(sequence_of_oids) {
                return Err(CertError::BadUsageExtension);
            }
            if !eku.client_auth {
                return Err(CertError::ExtendedKeyUsage);
            }
        }
        Some(_) => return Err(CertError::BadUsageExtension),
    }
    Ok(())
}

/// Is `der` exactly one DER SEQUENCE whose elements are all OBJECT
/// IDENTIFIERs (and at least one: RFC 5280 `SIZE (1..MAX)`)?
fn sequence_of_oids(der: &[u8]) -> bool {
    use x509_parser::asn1_rs::FromDer;
    let Ok((rest, seq)) = Sequence::from_der(der) else {
        return false;
    };
    let mut items: &[u8] = &seq.content;
    if !rest.is_empty() || items.is_empty() {
        return false;
    }
    while !items.is_empty() {
        match Any::from_der(items) {
            Ok((next, any)) if any.tag() == Tag::Oid => items = next,
            _ => return false,
        }
    }
    true
}

/// Checks a DER certificate at `now` (Unix seconds): parseable, inside its
/// validity window, a client leaf ([`check_client_leaf`]), issued by a
/// trusted CA when any is configured, and with at least one URI or DNS SAN
/// (at most `max_sans`).
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
    // Before the issuer's signature: cheap, and every request (a signature
    // cache hit skips only the ECDSA verification).
    check_client_leaf(&cert)?;
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
        let der = der_from_pem(&demo("partner-billing")).unwrap();
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
    fn demo_clients_pass_the_leaf_checks_and_the_server_certificate_does_not() {
        for name in [
            "partner-billing",
            "internal-admin",
            "stranger",
            "other-ca-client",
        ] {
            let der = der_from_pem(&demo(name)).unwrap();
            assert_eq!(
                check_client_leaf(&parse_der(&der).unwrap()),
                Ok(()),
                "{name}"
            );
        }
        // serverAuth only: a server's certificate does not authenticate a client.
        let der = der_from_pem(&demo("server")).unwrap();
        assert_eq!(
            verify(&der, now(), &policy(&["ca"]), &mut cache()),
            Err(CertError::ExtendedKeyUsage)
        );
        // The CA itself presented as a client.
        let der = der_from_pem(&demo("ca")).unwrap();
        assert_eq!(
            verify(&der, now(), &policy(&["ca"]), &mut cache()),
            Err(CertError::CaCertificate)
        );
    }

    /// The leaf profile, on certificates made inside the tests by a CA the
    /// policy trusts (so the issuer check passes and only the profile decides).
    mod leaf_profile {
        use super::*;
        use crate::testcerts::{
            raw_extension, Client, TestCa, BASIC_CONSTRAINTS, EXT_KEY_USAGE, KEY_USAGE,
        };
        use rcgen::{
            BasicConstraints, ExtendedKeyUsagePurpose as Eku, IsCa, KeyUsagePurpose as Ku,
        };

        fn check(ca: &TestCa, client: &Client) -> Result<Verified, CertError> {
            let p = Policy {
                trusted_cas: vec![TrustedCa::from_pem(&ca.pem()).unwrap()],
                max_sans: 32,
            };
            verify(&client.der, now(), &p, &mut cache())
        }

        /// Without trusted_cas (connection mode): the profile is still checked.
        fn check_without_cas(client: &Client) -> Result<Verified, CertError> {
            verify(&client.der, now(), &policy(&[]), &mut cache())
        }

        #[test]
        fn client_leaf_with_the_demo_profile_is_accepted() {
            let ca = TestCa::new();
            let v = check(&ca, &ca.client(|_| {})).unwrap();
            assert_eq!(v.sans.uris, [crate::testcerts::PARTNER]);
        }

        #[test]
        fn leaf_with_ca_true_is_refused() {
            let ca = TestCa::new();
            let leaf = ca.client(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
            assert_eq!(check(&ca, &leaf), Err(CertError::CaCertificate));
            assert_eq!(check_without_cas(&leaf), Err(CertError::CaCertificate));
            let leaf = ca.client(|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.key_usages = vec![Ku::DigitalSignature, Ku::KeyCertSign];
            });
            assert_eq!(check(&ca, &leaf), Err(CertError::CaCertificate));
            assert_eq!(CertError::CaCertificate.reason(), "ca_certificate");
        }

        #[test]
        fn leaf_without_basic_constraints_is_a_leaf() {
            let ca = TestCa::new();
            assert!(check(&ca, &ca.client(|p| p.is_ca = IsCa::NoCa)).is_ok());
        }

        #[test]
        fn leaf_whose_key_usage_lacks_digital_signature_is_refused() {
            let ca = TestCa::new();
            for usages in [
                vec![Ku::KeyEncipherment],
                // static-DH client authentication: not something TLS 1.2
                // ECDHE or 1.3 uses; the client signs CertificateVerify
                vec![Ku::KeyAgreement],
                vec![Ku::ContentCommitment, Ku::KeyCertSign],
            ] {
                let leaf = ca.client(|p| p.key_usages = usages.clone());
                assert_eq!(check(&ca, &leaf), Err(CertError::KeyUsage), "{usages:?}");
                assert_eq!(check_without_cas(&leaf), Err(CertError::KeyUsage));
            }
            assert_eq!(
                CertError::KeyUsage.reason(),
                "key_usage_without_digital_signature"
            );
        }

        #[test]
        fn leaf_with_digital_signature_among_other_key_usages_is_accepted() {
            let ca = TestCa::new();
            let leaf =
                ca.client(|p| p.key_usages = vec![Ku::KeyEncipherment, Ku::DigitalSignature]);
            assert!(check(&ca, &leaf).is_ok());
        }

        #[test]
        fn leaf_without_key_usage_is_accepted() {
            let ca = TestCa::new();
            assert!(check(&ca, &ca.client(|p| p.key_usages.clear())).is_ok());
        }

        #[test]
        fn leaf_without_client_auth_eku_is_refused() {
            let ca = TestCa::new();
            for ekus in [
                vec![Eku::ServerAuth],
                vec![Eku::CodeSigning, Eku::EmailProtection],
                vec![Eku::Other(vec![1, 3, 6, 1, 4, 1, 99999, 1])],
            ] {
                let leaf = ca.client(|p| p.extended_key_usages = ekus.clone());
                assert_eq!(
                    check(&ca, &leaf),
                    Err(CertError::ExtendedKeyUsage),
                    "{ekus:?}"
                );
                assert_eq!(check_without_cas(&leaf), Err(CertError::ExtendedKeyUsage));
            }
            assert_eq!(
                CertError::ExtendedKeyUsage.reason(),
                "eku_without_client_auth"
            );
        }

        #[test]
        fn leaf_with_only_any_extended_key_usage_is_refused() {
            // webpki, NSS and BoringSSL's ssl_client purpose do not let
            // anyExtendedKeyUsage stand in for clientAuth; neither do we.
            let ca = TestCa::new();
            let leaf = ca.client(|p| p.extended_key_usages = vec![Eku::Any]);
            assert_eq!(check(&ca, &leaf), Err(CertError::ExtendedKeyUsage));
        }

        #[test]
        fn leaf_with_client_auth_among_other_ekus_is_accepted() {
            let ca = TestCa::new();
            for ekus in [
                vec![Eku::ServerAuth, Eku::ClientAuth],
                vec![Eku::Any, Eku::ClientAuth],
            ] {
                let leaf = ca.client(|p| p.extended_key_usages = ekus.clone());
                assert!(check(&ca, &leaf).is_ok(), "{ekus:?}");
            }
        }

        #[test]
        fn leaf_without_eku_is_accepted() {
            let ca = TestCa::new();
            let leaf = ca.client(|p| p.extended_key_usages.clear());
            assert!(check(&ca, &leaf).is_ok());
        }

        #[test]
        fn repeated_usage_extension_is_refused() {
            let ca = TestCa::new();
            // rcgen writes its own extension; the raw one repeats it with a
            // value that would pass alone.
            let dup_eku = raw_extension(
                EXT_KEY_USAGE,
                // SEQUENCE { id-kp-clientAuth }
                &[
                    0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
                ],
            );
            let dup_ku = raw_extension(KEY_USAGE, &[0x03, 0x02, 0x07, 0x80]);
            let dup_bc = raw_extension(BASIC_CONSTRAINTS, &[0x30, 0x00]);
            for ext in [dup_eku, dup_ku, dup_bc] {
                let leaf = ca.client(|p| p.custom_extensions = vec![ext.clone()]);
                assert_eq!(check(&ca, &leaf), Err(CertError::BadUsageExtension));
            }
        }

        #[test]
        fn unparsable_usage_extension_is_refused_not_ignored() {
            let ca = TestCa::new();
            // Wrong types, bad lengths, an INTEGER where an OID or a BOOLEAN
            // belongs (one holding clientAuth's bytes, one cA=TRUE): present
            // but unreadable is never taken for absent, nor read leniently.
            for (oid, content) in [
                (KEY_USAGE, &[0x05, 0x00][..]),
                (KEY_USAGE, &[0x03, 0x05, 0x07, 0x80][..]),
                (EXT_KEY_USAGE, &[0x30, 0x03, 0x02, 0x01, 0x01][..]),
                (EXT_KEY_USAGE, &[0x30, 0x05, 0x06, 0x01][..]),
                (EXT_KEY_USAGE, &[0x05, 0x00][..]),
                (
                    EXT_KEY_USAGE,
                    &[
                        0x30, 0x0a, 0x02, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
                    ][..],
                ),
                (BASIC_CONSTRAINTS, &[0x04, 0x00][..]),
                (BASIC_CONSTRAINTS, &[0x30, 0x03, 0x01, 0x01][..]),
                // cA TRUE written as an INTEGER
                (BASIC_CONSTRAINTS, &[0x30, 0x03, 0x02, 0x01, 0xff][..]),
            ] {
                let leaf = ca.client(|p| {
                    p.key_usages.clear();
                    p.extended_key_usages.clear();
                    p.is_ca = IsCa::NoCa;
                    p.custom_extensions = vec![raw_extension(oid, content)];
                });
                assert_eq!(
                    check(&ca, &leaf),
                    Err(CertError::BadUsageExtension),
                    "{oid:?} {content:02x?}"
                );
            }
        }
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
