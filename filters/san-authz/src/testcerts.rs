//! Tests only: a throwaway CA and client certificates made with `rcgen`
//! inside the tests, so that each leaf-profile case (CA=true, keyUsage,
//! extendedKeyUsage, repeated or broken extensions) is a certificate that
//! really exists, signed by a CA the test trusts, not a committed fixture.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DnType,
    ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The partner's SPIFFE ID, the SAN every generated client carries.
pub const PARTNER: &str = "spiffe://partner.example/ns/partner-a/sa/billing";

/// A CA made up for one test (EC P-256, CA=true, keyCertSign).
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "san-authz test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A client certificate: the partner's URI SAN, basicConstraints
    /// CA=false, keyUsage digitalSignature, extendedKeyUsage clientAuth (the
    /// profile of the demo clients), after `edit` changed what it wants.
    pub fn client(&self, edit: impl FnOnce(&mut CertificateParams)) -> Client {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "san-authz test client");
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(PARTNER).unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Client {
            pem: cert.pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A generated client certificate.
pub struct Client {
    pub pem: String,
    pub der: Vec<u8>,
}

/// An extension with this OID and raw DER content (for repeated or broken
/// extensions that rcgen would not write by itself).
pub fn raw_extension(oid: &[u64], content: &[u8]) -> CustomExtension {
    CustomExtension::from_oid_content(oid, content.to_vec())
}

/// id-ce-keyUsage.
pub const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
/// id-ce-extKeyUsage.
pub const EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
/// id-ce-basicConstraints.
pub const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
