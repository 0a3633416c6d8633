//! Compact JWS, ES256 (ECDSA P-256 + SHA-256, RFC 7518 §3.4): the
//! passport's signature. The key is parsed once, at configure time; signing
//! is deterministic (RFC 6979), so the VM needs no random source.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use filter_core::config::ConfigError;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey as EcKey};
use p256::pkcs8::DecodePrivateKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ES256 private key: its `kid` and where the PKCS#8 PEM comes from,
/// exactly one of `pem` (inline; demo only) or `env` (an environment
/// variable of the Wasm VM: Envoy `vm_config.environment_variables`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// The `kid` header of every passport signed with this key.
    pub kid: String,
    /// The PKCS#8 PEM itself. Demo only: a config is not a secret store.
    #[serde(default)]
    pub pem: Option<String>,
    /// Name of the VM environment variable that holds the PKCS#8 PEM
    /// (`vm_config.environment_variables.key_values` or `host_env_keys`).
    #[serde(default)]
    pub env: Option<String>,
}

/// The signing key and its precomputed protected header.
pub struct Signer {
    kid: String,
    key: EcKey,
    /// base64url of `{"alg":"ES256","typ":"JWT","kid":...}` followed by '.'.
    header: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself.
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(kid: &str, pem: &str) -> Result<Self, String> {
        if kid.is_empty()
            || kid.len() > 128
            || kid
                .bytes()
                .any(|b| !(0x21..0x7f).contains(&b) || b == b'"' || b == b'\\')
        {
            return Err(
                "kid must be 1-128 printable ASCII characters without quotes or backslashes".into(),
            );
        }
        // Tolerate a PEM whose line breaks were written as the two characters
        // `\n` (a common accident when a PEM goes through an env variable).
        let pem = if pem.contains("\\n") {
            pem.replace("\\n", "\n")
        } else {
            pem.to_string()
        };
        let key = EcKey::from_pkcs8_pem(pem.trim())
            .map_err(|_| "not a PKCS#8 PEM P-256 private key".to_string())?;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let header = URL_SAFE_NO_PAD.encode(header.to_string()) + ".";
        Ok(Signer {
            kid: kid.to_string(),
            key,
            header,
        })
    }

    /// The signer a config names: the inline PEM or the VM environment
    /// variable (exactly one of them).
    pub fn from_config(k: &SigningKey) -> Result<Self, ConfigError> {
        let pem = match (&k.pem, &k.env) {
            (Some(pem), None) => pem.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                ConfigError::at(
                    "token.signing_key.env",
                    format!("environment variable {var:?} is not set in the Wasm VM (vm_config.environment_variables)"),
                )
            })?,
            _ => {
                return Err(ConfigError::at(
                    "token.signing_key",
                    "set exactly one of `pem` and `env`",
                ))
            }
        };
        let field = if k.pem.is_some() {
            "token.signing_key.pem"
        } else {
            "token.signing_key.env"
        };
        Signer::from_pem(&k.kid, &pem).map_err(|e| {
            if e.starts_with("kid") {
                ConfigError::at("token.signing_key.kid", e)
            } else {
                ConfigError::at(field, e)
            }
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `header.payload.signature` for a claims object.
    pub fn sign(&self, claims: &serde_json::Map<String, serde_json::Value>) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&self.header);
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let sig: Signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut token);
        token
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::VerifyingKey;

    pub(crate) fn demo_pem() -> String {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/keys/passport-es256.pem"
        );
        std::fs::read_to_string(p).unwrap()
    }

    /// Verifies a compact ES256 JWS against the demo JWKS, returning (header, claims).
    pub(crate) fn verify_with_demo_jwks(token: &str) -> (serde_json::Value, serde_json::Value) {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/keys/passport-jwks.json"
        );
        let jwks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .expect("kid in the JWKS");
        let bare =
            serde_json::json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]});
        let pk = p256::PublicKey::from_jwk_str(&bare.to_string()).unwrap();
        let vk = VerifyingKey::from(pk);
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("signature verifies");
        let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        (header, claims)
    }

    #[test]
    fn signed_token_verifies_with_the_published_jwks() {
        let s = Signer::from_pem("passport-2026-1", &demo_pem()).unwrap();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        let t = s.sign(&claims);
        let (h, c) = verify_with_demo_jwks(&t);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["kid"], "passport-2026-1");
        assert_eq!(c["sub"], "alice");
    }

    #[test]
    fn pem_with_escaped_newlines_is_accepted() {
        let pem = demo_pem().replace('\n', "\\n");
        assert!(Signer::from_pem("k", &pem).is_ok());
    }

    #[test]
    fn garbage_key_and_bad_kid_are_refused() {
        assert!(Signer::from_pem("k", "not a pem").is_err());
        assert!(Signer::from_pem("a\"b", &demo_pem()).is_err());
    }

    #[test]
    fn env_key_that_is_not_set_names_the_field() {
        let k = SigningKey {
            kid: "k".into(),
            pem: None,
            env: Some("PASSPORT_TEST_UNSET_VAR".into()),
        };
        assert_eq!(
            Signer::from_config(&k).unwrap_err().path,
            "token.signing_key.env"
        );
        let both = SigningKey {
            kid: "k".into(),
            pem: Some(demo_pem()),
            env: Some("X".into()),
        };
        assert_eq!(
            Signer::from_config(&both).unwrap_err().path,
            "token.signing_key"
        );
    }

    #[test]
    fn env_key_is_read_from_the_environment() {
        std::env::set_var("PASSPORT_TEST_KEY_SET", demo_pem());
        let k = SigningKey {
            kid: "k".into(),
            pem: None,
            env: Some("PASSPORT_TEST_KEY_SET".into()),
        };
        assert_eq!(Signer::from_config(&k).unwrap().kid(), "k");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Signer::from_pem("k", &demo_pem()).unwrap();
        assert!(!format!("{s:?}").contains("key"));
    }
}
