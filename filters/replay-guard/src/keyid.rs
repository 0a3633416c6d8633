//! Short-lived app keys: key id `<device>:<user>:<expiry>[:<version>]`
//! (ids in `[A-Za-z0-9_-]`, expiry in Unix seconds, version naming a master
//! secret), key = HMAC-SHA256(master secret, key id as UTF-8). The gateway
//! stores no per-device key: it derives the key from the id it receives.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::is_id;

/// Longest device or user id.
pub const MAX_ID_LEN: usize = 64;

/// A key id, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId<'a> {
    pub device: &'a str,
    pub user: &'a str,
    /// Unix seconds after which the key is refused.
    pub expiry: u64,
    /// The master secret version, when the key id names one.
    pub version: Option<&'a str>,
}

/// Why a key id is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdError {
    #[error("malformed key id")]
    Malformed,
    #[error("the key has expired")]
    Expired,
    #[error("the key's lifetime is longer than allowed")]
    TooLong,
}

impl<'a> KeyId<'a> {
    /// Parses `<device>:<user>:<expiry>[:<version>]`.
    pub fn parse(s: &'a str) -> Result<Self, KeyIdError> {
        let mut it = s.split(':');
        let device = it.next().ok_or(KeyIdError::Malformed)?;
        let user = it.next().ok_or(KeyIdError::Malformed)?;
        let expiry = it.next().ok_or(KeyIdError::Malformed)?;
        let version = it.next();
        if it.next().is_some() || !is_id(device, MAX_ID_LEN) || !is_id(user, MAX_ID_LEN) {
            return Err(KeyIdError::Malformed);
        }
        if expiry.is_empty() || expiry.len() > 12 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyIdError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| KeyIdError::Malformed)?;
        if let Some(v) = version {
            if !is_id(v, 16) {
                return Err(KeyIdError::Malformed);
            }
        }
        Ok(KeyId {
            device,
            user,
            expiry,
            version,
        })
    }

    /// Refuses a key whose expiry has passed (`expiry <= now`) or lies more
    /// than `max_lifetime` seconds ahead.
    pub fn check_time(&self, now: u64, max_lifetime: u64) -> Result<(), KeyIdError> {
        if self.expiry <= now {
            return Err(KeyIdError::Expired);
        }
        if self.expiry - now > max_lifetime {
            return Err(KeyIdError::TooLong);
        }
        Ok(())
    }
}

/// The key of `key_id` under `master`: HMAC-SHA256(master, key id UTF-8).
pub fn derive_key(master: &[u8], key_id: &str) -> [u8; 32] {
    hmac_sha256(master, key_id.as_bytes())
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; the error branch cannot happen.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_and_four_field_key_ids_parse() {
        let k = KeyId::parse("dev-1:user_7:1750000600").unwrap();
        assert_eq!(
            (k.device, k.user, k.expiry, k.version),
            ("dev-1", "user_7", 1_750_000_600, None)
        );
        let k = KeyId::parse("d:u:1:v2").unwrap();
        assert_eq!(k.version, Some("v2"));
    }

    #[test]
    fn malformed_key_ids_are_refused() {
        for bad in [
            "",
            "d",
            "d:u",
            "d:u:",
            "d:u:x1",
            "d:u:-1",
            "d u:u:1",
            "d:u:1:",
            "d:u:1:v:x",
            "d:ü:1",
            ":u:1",
            "d:u:1234567890123",
            "d:u:1:v/2",
        ] {
            assert_eq!(KeyId::parse(bad), Err(KeyIdError::Malformed), "{bad}");
        }
        let long = format!("{}:u:1", "d".repeat(65));
        assert_eq!(KeyId::parse(&long), Err(KeyIdError::Malformed));
    }

    #[test]
    fn expired_and_overlong_keys_are_refused() {
        let k = KeyId::parse("d:u:1000").unwrap();
        assert_eq!(k.check_time(1000, 3600), Err(KeyIdError::Expired));
        assert_eq!(k.check_time(999, 3600), Ok(()));
        assert_eq!(k.check_time(10, 60), Err(KeyIdError::TooLong));
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
