//! `token`: a demo JWT for the web gateway, signed with the committed demo
//! keys (examples/keys/jwt-rs256.pem, jwt-es256.pem; DEMO ONLY).

use std::path::Path;

use anyhow::{bail, Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// Issuer and audience the web gateway's jwt config trusts.
pub const ISSUER: &str = "https://issuer.demo.local";
pub const AUDIENCE: &str = "demo-api";

/// What to put in the token.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub scope: &'a str,
    pub sub: &'a str,
    pub kid: &'a str,
    pub ttl: u64,
    /// `auto`: a random jti; `none`: no jti; anything else: that value.
    pub jti: &'a str,
    pub now: u64,
}

/// Random hex (for jti and nonces).
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Mints the token with the key under `keys` that `kid` names.
pub fn mint(keys: &Path, r: &Request<'_>) -> Result<String> {
    let (alg, file) = match r.kid {
        "demo-rs256" => (Algorithm::RS256, "jwt-rs256.pem"),
        "demo-es256" => (Algorithm::ES256, "jwt-es256.pem"),
        other => bail!("unknown kid {other:?} (demo-rs256 or demo-es256)"),
    };
    let path = keys.join(file);
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .with_context(|| format!("{} is not a usable PEM key", path.display()))?;
    let mut header = Header::new(alg);
    header.kid = Some(r.kid.to_string());
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), json!(ISSUER));
    claims.insert("aud".into(), json!(AUDIENCE));
    claims.insert("sub".into(), json!(r.sub));
    claims.insert("iat".into(), json!(r.now));
    claims.insert("nbf".into(), json!(r.now.saturating_sub(5)));
    claims.insert("exp".into(), json!(r.now + r.ttl));
    if !r.scope.is_empty() {
        claims.insert("scope".into(), json!(r.scope));
    }
    match r.jti {
        "none" => {}
        "auto" => {
            claims.insert("jti".into(), json!(random_hex(16)?));
        }
        v => {
            claims.insert("jti".into(), json!(v));
        }
    }
    jsonwebtoken::encode(&header, &claims, &key).context("signing the token")
}
