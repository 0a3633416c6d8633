//! `sign`: RFC 9421 signature headers for the app gateway, the scheme of
//! docs/filters/replay-guard.md (and tests/integration/signing.py):
//!
//! * key id `<device>:<user>:<expiry>`, key = HMAC-SHA256(master, key id);
//! * label `app`, components `@method @authority @path`, `@query` when the
//!   target has one, `content-digest` (RFC 9530 sha-256) with a body;
//! * parameters `created`, `keyid`, `nonce`; `hmac-sha256` over the
//!   signature base.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use anyhow::{bail, Result};

type HmacSha256 = Hmac<Sha256>;

/// The signature label the demo uses.
pub const LABEL: &str = "app";

/// A request to sign.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// Path and query as sent (`/api/v1/users/7?size=10`).
    pub target: &'a str,
    pub body: Option<&'a [u8]>,
    pub key_id: &'a str,
    pub created: u64,
    pub nonce: &'a str,
}

fn sf_string(s: &str) -> Result<String> {
    if s.chars().any(|c| !(' '..='~').contains(&c)) {
        bail!("not a structured-field string: {s:?}");
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// Checks `<device>:<user>:<expiry>` (ids in `[A-Za-z0-9_-]`).
pub fn check_key_id(key_id: &str) -> Result<()> {
    let parts: Vec<&str> = key_id.split(':').collect();
    let id = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match parts.as_slice() {
        [d, u, e] | [d, u, e, _] if id(d) && id(u) && e.parse::<u64>().is_ok() => Ok(()),
        _ => bail!("key id {key_id:?} is not <device>:<user>:<expiry> with ids in [A-Za-z0-9_-]"),
    }
}

/// RFC 9530 `Content-Digest` (sha-256) of `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// The headers (name, value) that sign `r` with `master`.
pub fn sign(master: &[u8], r: &Request<'_>) -> Result<Vec<(String, String)>> {
    check_key_id(r.key_id)?;
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (r.target, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    let mut headers = Vec::new();
    let mut components: Vec<(&str, String)> = vec![
        ("@method", r.method.to_ascii_uppercase()),
        ("@authority", r.authority.to_ascii_lowercase()),
        ("@path", path.to_string()),
    ];
    if let Some(q) = query {
        components.push(("@query", format!("?{q}")));
    }
    if let Some(body) = r.body {
        let d = content_digest(body);
        components.push(("content-digest", d.clone()));
        headers.push(("Content-Digest".to_string(), d));
    }
    let mut params = String::from("(");
    params.push_str(
        &components
            .iter()
            .map(|(c, _)| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(" "),
    );
    params.push(')');
    params.push_str(&format!(
        ";created={};keyid={};nonce={}",
        r.created,
        sf_string(r.key_id)?,
        sf_string(r.nonce)?
    ));
    let mut base = String::new();
    for (c, v) in &components {
        base.push_str(&format!("\"{c}\": {v}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    let derived = {
        let mut m = HmacSha256::new_from_slice(master).map_err(|e| anyhow::anyhow!("{e}"))?;
        m.update(r.key_id.as_bytes());
        m.finalize().into_bytes()
    };
    let mut m = HmacSha256::new_from_slice(&derived).map_err(|e| anyhow::anyhow!("{e}"))?;
    m.update(base.as_bytes());
    let sig = STANDARD.encode(m.finalize().into_bytes());
    headers.push(("Signature-Input".to_string(), format!("{LABEL}={params}")));
    headers.push(("Signature".to_string(), format!("{LABEL}=:{sig}:")));
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_input_lists_the_contract_components() {
        let h = sign(
            b"0123456789abcdef0123456789abcdef",
            &Request {
                method: "post",
                authority: "127.0.0.1:10001",
                target: "/api/v1/orders?x=1",
                body: Some(b"{}"),
                key_id: "phone-1:alice:1750000600",
                created: 1_750_000_000,
                nonce: "n0nce-123",
            },
        )
        .unwrap();
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(
            get("Signature-Input"),
            r#"app=("@method" "@authority" "@path" "@query" "content-digest");created=1750000000;keyid="phone-1:alice:1750000600";nonce="n0nce-123""#
        );
        assert!(get("Signature").starts_with("app=:") && get("Signature").ends_with(':'));
        assert_eq!(
            get("Content-Digest"),
            "sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:"
        );
    }

    #[test]
    fn agrees_with_the_python_reference_signer() {
        // tests/integration/signing.py, demo master secret, same inputs.
        let master = STANDARD
            .decode("6uVwr+zo9rh/CyU3BUNq4p0/wad99gc4EK4KZJgK1wc=")
            .unwrap();
        let h = sign(
            &master,
            &Request {
                method: "POST",
                authority: "127.0.0.1:10001",
                target: "/api/v1/orders?x=1",
                body: Some(br#"{"item_id":"a","quantity":1}"#),
                key_id: "phone-1:alice:1750000600",
                created: 1_750_000_000,
                nonce: "n0nce-123",
            },
        )
        .unwrap();
        let sig = h.iter().find(|(k, _)| k == "Signature").unwrap();
        assert_eq!(sig.1, "app=:9AgVkYSgZiulvBUdEdXpuKf0kakb6foC+lSOx6g702o=:");
    }

    #[test]
    fn bad_key_ids_are_refused() {
        assert!(check_key_id("phone-1:alice:1750000600").is_ok());
        assert!(check_key_id("phone 1:alice:1").is_err());
        assert!(check_key_id("phone-1:alice").is_err());
        assert!(check_key_id("phone-1:alice:soon").is_err());
    }
}
