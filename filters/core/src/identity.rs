//! The verified caller identity, handed from a verifying filter (jwt,
//! replay-guard, san-authz) to the filters after it (fds-block, passport)
//! through Envoy filter state: `set_property(["gateway_identity"], json)`
//! stores it under the filter-state key `wasm.gateway_identity`, which no
//! client can write and which access logs can read
//! (`%FILTER_STATE(wasm.gateway_identity:PLAIN)%`).
//!
//! Consumers read it with one host call. A request without it has no
//! verified identity, whatever headers it carries.

use serde::{Deserialize, Serialize};

use crate::host::HttpHost;

/// Filter-state path of the identity.
pub const PROPERTY: &str = "gateway_identity";

/// Which filter verified the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A bearer JWT (web gateway).
    Jwt,
    /// An RFC 9421 request signature with a short-lived device key (app gateway).
    Signature,
    /// An mTLS client certificate SAN (secure gateway).
    Mtls,
}

/// A verified identity. Field names are short: it travels on every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Who verified it.
    pub source: Source,
    /// The user id (JWT `sub`, the key id's user), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The device id (the key id's device), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The authorised certificate SAN (mTLS), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
    /// Unix seconds after which the credential is no longer valid (JWT `exp`,
    /// key expiry), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// The key id of the verified request signature (replay-guard), which
    /// e2ee requires of an encrypted body's coding header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

impl Identity {
    pub fn new(source: Source) -> Self {
        Identity {
            source,
            user: None,
            device: None,
            san: None,
            exp: None,
            kid: None,
        }
    }

    /// Stores the identity for the filters after this one.
    pub fn publish<H: HttpHost + ?Sized>(&self, host: &mut H) {
        match serde_json::to_vec(self) {
            Ok(b) => host.set_property(&[PROPERTY], &b),
            Err(e) => log::error!("identity could not be encoded: {e}"),
        }
    }

    /// Reads the identity a verifying filter stored for this request.
    /// Anything unreadable counts as no identity.
    pub fn read<H: HttpHost + ?Sized>(host: &H) -> Option<Identity> {
        let bytes = host.property(&[PROPERTY])?;
        if bytes.is_empty() {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    #[test]
    fn published_identity_reads_back() {
        let mut h = FakeHost::new();
        let mut id = Identity::new(Source::Signature);
        id.user = Some("u1".into());
        id.device = Some("d1".into());
        id.publish(&mut h);
        assert_eq!(Identity::read(&h), Some(id));
    }

    #[test]
    fn absent_or_garbage_is_no_identity() {
        let h = FakeHost::new();
        assert_eq!(Identity::read(&h), None);
        let h = FakeHost::new().with_property(&[PROPERTY], b"not json");
        assert_eq!(Identity::read(&h), None);
    }
}
