//! Master secrets read from the environment at configure time: the shape
//! and the checks replay-guard (signature keys) and e2ee (body keys) share,
//! so that both filters accept exactly the same secret versions and a
//! rotation (add a version, move clients, drop the old one) is configured
//! the same way in both.
//!
//! A secret is never in the JSON configuration itself, only the name of the
//! environment variable that holds it (standard base64, at least
//! [`MIN_SECRET_BYTES`] bytes decoded): the VM's environment in the wasm
//! builds (`vm_config.environment_variables`), Envoy's in the native one.

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Most secret versions one configuration lists.
pub const MAX_SECRETS: usize = 4;
/// Shortest secret accepted, decoded (HMAC-SHA256's block-sized key).
pub const MIN_SECRET_BYTES: usize = 32;

/// One master secret version.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MasterSecret {
    /// Version name, `[A-Za-z0-9_-]{1,16}`; a key id's optional 4th field selects it.
    pub version: String,
    /// Environment variable holding the secret, standard base64 (at least 32
    /// bytes decoded). Read once at configure time.
    pub env: String,
}

/// A decoded master secret (its bytes never printed).
#[derive(Clone)]
pub struct Secret {
    pub version: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.version)
    }
}

fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks `list` (the `master_secrets` field) and reads each secret through
/// `env` (`std::env::var` in the filters); errors name the field.
pub fn compile(
    list: &[MasterSecret],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Secret>, ConfigError> {
    if list.is_empty() || list.len() > MAX_SECRETS {
        return Err(ConfigError::at(
            "master_secrets",
            format!("must list between 1 and {MAX_SECRETS} secrets"),
        ));
    }
    let mut secrets = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let at = format!("master_secrets[{i}]");
        if !is_version(&s.version) {
            return Err(ConfigError::at(
                format!("{at}.version"),
                "must be 1-16 characters of [A-Za-z0-9_-]",
            ));
        }
        if list.iter().take(i).any(|p| p.version == s.version) {
            return Err(ConfigError::at(format!("{at}.version"), "named twice"));
        }
        if s.env.is_empty() || s.env.contains(['=', '\0']) {
            return Err(ConfigError::at(
                format!("{at}.env"),
                "must be an environment variable name",
            ));
        }
        let Some(raw) = env(&s.env) else {
            return Err(ConfigError::at(
                format!("{at}.env"),
                format!("environment variable {} is not set", s.env),
            ));
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|_| {
                ConfigError::at(
                    format!("{at}.env"),
                    format!("environment variable {} is not standard base64", s.env),
                )
            })?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::at(
                format!("{at}.env"),
                format!(
                    "the secret in {} must be at least {MIN_SECRET_BYTES} bytes",
                    s.env
                ),
            ));
        }
        secrets.push(Secret {
            version: s.version.clone(),
            key,
        });
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(version: &str, env: &str) -> MasterSecret {
        MasterSecret {
            version: version.into(),
            env: env.into(),
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "GOOD" => Some(base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
            "OTHER" => Some(format!(
                " {} \n",
                base64::engine::general_purpose::STANDARD.encode([9u8; 40])
            )),
            "SHORT" => Some(base64::engine::general_purpose::STANDARD.encode([1u8; 31])),
            "NOTB64" => Some("not base64!".into()),
            _ => None,
        }
    }

    fn err(list: &[MasterSecret]) -> String {
        let e = compile(list, &env).unwrap_err();
        format!("{}: {}", e.path, e.message)
    }

    #[test]
    fn versions_are_read_in_order_and_never_printed() {
        let s = compile(&[ms("v2", "OTHER"), ms("v1", "GOOD")], &env).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].version.as_str(), s[0].key.len()), ("v2", 40));
        assert_eq!(s[1].key, vec![7u8; 32]);
        assert_eq!(format!("{:?}", s[1]), "Secret(v1, <redacted>)");
    }

    #[test]
    fn every_refusal_names_its_field() {
        assert_eq!(
            err(&[]),
            "master_secrets: must list between 1 and 4 secrets"
        );
        let five: Vec<_> = (0..5).map(|i| ms(&format!("v{i}"), "GOOD")).collect();
        assert!(err(&five).starts_with("master_secrets: "));
        assert!(err(&[ms("", "GOOD")]).starts_with("master_secrets[0].version: "));
        assert!(err(&[ms("v 1", "GOOD")]).starts_with("master_secrets[0].version: "));
        assert!(err(&[ms(&"v".repeat(17), "GOOD")]).starts_with("master_secrets[0].version: "));
        assert_eq!(
            err(&[ms("v1", "GOOD"), ms("v1", "OTHER")]),
            "master_secrets[1].version: named twice"
        );
        assert!(err(&[ms("v1", "A=B")]).starts_with("master_secrets[0].env: must be"));
        assert_eq!(
            err(&[ms("v1", "UNSET")]),
            "master_secrets[0].env: environment variable UNSET is not set"
        );
        assert!(err(&[ms("v1", "NOTB64")]).ends_with("is not standard base64"));
        assert!(err(&[ms("v1", "SHORT")]).ends_with("must be at least 32 bytes"));
    }
}
