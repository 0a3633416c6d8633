//! RFC 9530 `Content-Digest`: a structured-field dictionary of algorithm →
//! byte sequence, checked against the body the gateway received. `sha-256`
//! and `sha-512` are understood; every understood digest present must match
//! (constant-time compare), other algorithms are ignored, and a field with
//! no understood algorithm is refused.

use sfv::{Dictionary, ListEntry, Parser, Version};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Why a digest does not vouch for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("Content-Digest is malformed")]
    Malformed,
    #[error("Content-Digest names no supported algorithm (sha-256, sha-512)")]
    NoSupportedAlgorithm,
    #[error("the body does not match its Content-Digest")]
    Mismatch,
}

/// Checks `field` (the Content-Digest value) against `body`.
pub fn check(field: &str, body: &[u8]) -> Result<(), DigestError> {
    if field.len() > 1024 {
        return Err(DigestError::Malformed);
    }
    let dict = Parser::new(field)
        .with_version(Version::Rfc8941)
        .parse::<Dictionary>()
        .map_err(|_| DigestError::Malformed)?;
    let mut checked = 0;
    for (alg, entry) in &dict {
        let expected: Vec<u8> = match alg.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let ListEntry::Item(item) = entry else {
            return Err(DigestError::Malformed);
        };
        let Some(got) = item.bare_item.as_byte_sequence() else {
            return Err(DigestError::Malformed);
        };
        if got.len() != expected.len() || !bool::from(expected.ct_eq(got)) {
            return Err(DigestError::Mismatch);
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(DigestError::NoSupportedAlgorithm);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = br#"{"hello": "world"}"#;

    #[test]
    fn rfc_9530_sha_256_example_verifies_byte_for_byte() {
        // RFC 9530 Appendix B: `{"hello": "world"}` has
        // sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:
        check(
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            HELLO,
        )
        .unwrap();
        // and RFC 9421's test request carries the sha-512 of the same body.
        check(
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            HELLO,
        )
        .unwrap();
    }

    #[test]
    fn every_understood_digest_must_match() {
        let both = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:AAAA:";
        assert_eq!(check(both, HELLO), Err(DigestError::Mismatch));
        assert_eq!(
            check(
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
                b"{}"
            ),
            Err(DigestError::Mismatch)
        );
    }

    #[test]
    fn unknown_only_or_malformed_digests_are_refused() {
        assert_eq!(
            check("md5=:AAAA:", HELLO),
            Err(DigestError::NoSupportedAlgorithm)
        );
        assert_eq!(check("sha-256=abc", HELLO), Err(DigestError::Malformed));
        assert_eq!(check("sha-256=:***:", HELLO), Err(DigestError::Malformed));
        assert_eq!(
            check(
                "SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
                HELLO
            ),
            Err(DigestError::Malformed)
        );
        assert_eq!(
            check(
                "md5=:AAAA:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
                HELLO
            ),
            Ok(())
        );
    }
}
