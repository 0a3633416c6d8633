//! Token verification, cheapest checks first.
//!
//! 1. **Shape** ([`precheck`]): size limit, three base64url parts of
//!    canonical encoding, a JOSE header that is a JSON object without
//!    duplicate members, a known asymmetric `alg` (`none` in any casing,
//!    HMAC and anything else refused), no `crit`, `cty` (nested JWT), `enc`
//!    (JWE), `zip` or `b64`; `jku`/`x5u`/`jwk`/`x5c` are ignored, never
//!    fetched or trusted. The payload must be a JSON object without
//!    duplicate members whose registered claims have the right JSON types.
//! 2. **Policy on the unverified claims** ([`check_claims`]): a trusted
//!    `iss`, an accepted `aud`, `exp`/`nbf`/`iat` within the clock skew, a
//!    known `kid` whose key allows the `alg`.
//! 3. **Signature** ([`verify_signature`]): `jsonwebtoken::decode` with the
//!    provider's `Validation` for that algorithm, backed by
//!    [`crate::crypto`]; it re-checks `iss`/`aud` on the verified token
//!    (the times were checked in step 2 against the proxy's clock, on the
//!    same signed bytes: no second clock).
//!
//! A forged-token flood is therefore mostly refused in steps 1–2, which
//! cost a base64 decode and a small JSON parse, never an RSA operation.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::config::Provider;
use crate::jwks::{KeySet, Lookup};

/// Why a token was refused. `code()` is for logs and metrics; `describe()`
/// goes to the client in `error_description` and names no internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than the limit")]
    TooLarge,
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("token part is not canonical base64url")]
    BadEncoding,
    #[error("JOSE header is invalid: {0}")]
    BadHeader(&'static str),
    #[error("duplicate member in the JOSE header or claims")]
    DuplicateMember,
    #[error("algorithm none is not accepted")]
    AlgNone,
    #[error("algorithm is not accepted")]
    AlgNotAllowed,
    #[error("unsupported critical header parameter")]
    Crit,
    #[error("nested or encrypted tokens are not accepted")]
    Nested,
    #[error("claims are invalid: {0}")]
    BadClaims(&'static str),
    #[error("issuer is not trusted")]
    Issuer,
    #[error("audience is not accepted")]
    Audience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("signing key is unknown")]
    UnknownKid,
    #[error("signing key is ambiguous (no kid)")]
    AmbiguousKey,
    #[error("no verification keys are available")]
    NoKeys,
    #[error("signature is invalid")]
    Signature,
    #[error("more than one token in the request")]
    MultipleTokens,
}

impl TokenError {
    /// Stable short code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::BadEncoding => "bad_encoding",
            TokenError::BadHeader(_) => "bad_header",
            TokenError::DuplicateMember => "duplicate_member",
            TokenError::AlgNone => "alg_none",
            TokenError::AlgNotAllowed => "alg_not_allowed",
            TokenError::Crit => "crit",
            TokenError::Nested => "nested",
            TokenError::BadClaims(_) => "bad_claims",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::AmbiguousKey => "ambiguous_key",
            TokenError::NoKeys => "no_keys",
            TokenError::Signature => "signature",
            TokenError::MultipleTokens => "multiple_tokens",
        }
    }

    /// Did this error cost a signature verification? (metrics)
    pub fn after_crypto(&self) -> bool {
        matches!(self, TokenError::Signature)
    }
}

/// A JSON object whose top-level members are unique.
#[derive(Debug, Default)]
pub struct UniqueObject(pub BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UniqueObject, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: serde_json::Value = m.next_value()?;
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom(DUPLICATE));
                    }
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

const DUPLICATE: &str = "duplicate member";

fn unique_object(bytes: &[u8]) -> Result<UniqueObject, TokenError> {
    serde_json::from_slice::<UniqueObject>(bytes).map_err(|e| {
        if e.to_string().starts_with(DUPLICATE) {
            TokenError::DuplicateMember
        } else {
            TokenError::BadClaims("not a JSON object")
        }
    })
}

/// The unverified contents of a well-formed token.
#[derive(Debug)]
pub struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Claims,
}

/// Registered claims with their types checked, plus the whole claim set.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub iss: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub scopes: Vec<String>,
    pub all: BTreeMap<String, serde_json::Value>,
}

/// Longest accepted `sub`, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    // URL_SAFE_NO_PAD refuses padding and non-zero trailing bits, so each
    // byte string has exactly one accepted encoding.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::BadEncoding)
}

fn parse_alg(s: &str) -> Result<Algorithm, TokenError> {
    if s.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    Ok(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(TokenError::AlgNotAllowed),
    })
}

fn numeric_date(v: &serde_json::Value, what: &'static str) -> Result<u64, TokenError> {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(u)
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e12).contains(&f) => Ok(f as u64),
                    _ => Err(TokenError::BadClaims(what)),
                }
            }
        }
        _ => Err(TokenError::BadClaims(what)),
    }
}

fn opt_string(
    m: &BTreeMap<String, serde_json::Value>,
    k: &str,
    what: &'static str,
) -> Result<Option<String>, TokenError> {
    match m.get(k) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::BadClaims(what)),
    }
}

/// Step 1: shape, header and claim types. No key, no crypto.
pub fn precheck(token: &str, max_bytes: usize) -> Result<Unverified, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header = unique_object(&b64(h)?).map_err(|e| match e {
        TokenError::DuplicateMember => e,
        _ => TokenError::BadHeader("not a JSON object"),
    })?;
    let header = header.0;
    let alg = match header.get("alg") {
        Some(serde_json::Value::String(a)) => parse_alg(a)?,
        Some(_) => return Err(TokenError::BadHeader("alg is not a string")),
        None => return Err(TokenError::BadHeader("alg is missing")),
    };
    if header.contains_key("crit") || header.contains_key("b64") {
        return Err(TokenError::Crit);
    }
    if header.contains_key("cty") || header.contains_key("enc") || header.contains_key("zip") {
        return Err(TokenError::Nested);
    }
    if let Some(t) = header.get("typ") {
        let ok = t.as_str().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            matches!(
                t.as_str(),
                "jwt" | "at+jwt" | "application/jwt" | "application/at+jwt"
            )
        });
        if !ok {
            return Err(TokenError::BadHeader("typ is not JWT"));
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(serde_json::Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(TokenError::BadHeader("kid is not a short string")),
    };
    // `jku`, `x5u`, `jwk`, `x5c`, `x5t`: deliberately ignored. Keys come from
    // the provider's JWKS only.

    let payload = b64(p)?;
    if payload.first() != Some(&b'{')
        && payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
    {
        // A nested JWT (or anything else) as the payload.
        return Err(TokenError::Nested);
    }
    let all = unique_object(&payload)?.0;
    let iss = opt_string(&all, "iss", "iss is not a string")?
        .ok_or(TokenError::BadClaims("iss is missing"))?;
    let aud = match all.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(a)) if !a.is_empty() && a.len() <= 32 => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::BadClaims("aud is not a string array"))?,
        Some(_) => return Err(TokenError::BadClaims("aud is not a string or string array")),
        None => return Err(TokenError::BadClaims("aud is missing")),
    };
    let exp = numeric_date(
        all.get("exp")
            .ok_or(TokenError::BadClaims("exp is missing"))?,
        "exp is not a number",
    )?;
    let nbf = all
        .get("nbf")
        .map(|v| numeric_date(v, "nbf is not a number"))
        .transpose()?;
    let iat = all
        .get("iat")
        .map(|v| numeric_date(v, "iat is not a number"))
        .transpose()?;
    // RFC 9068 makes `sub` required in an access token, and the subject is
    // what every filter after jwt keys on (x-user-id, fds-block's user
    // entries, the passport): a token without a usable one is refused, so
    // the header and the passport never disagree about who the caller is.
    let sub = opt_string(&all, "sub", "sub is not a string")?
        .ok_or(TokenError::BadClaims("sub is missing"))?;
    if sub.is_empty()
        || sub.len() > MAX_SUBJECT_BYTES
        || sub.trim() != sub
        || sub.chars().any(char::is_control)
    {
        return Err(TokenError::BadClaims(
            "sub is empty, too long, or has surrounding spaces or control characters",
        ));
    }
    let sub = Some(sub);
    let jti = opt_string(&all, "jti", "jti is not a string")?;
    let scopes = match opt_string(&all, "scope", "scope is not a string")? {
        None => Vec::new(),
        Some(s) => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if jti.as_ref().is_some_and(|j| j.is_empty() || j.len() > 256) {
        return Err(TokenError::BadClaims("jti is empty or too long"));
    }
    // The signature must decode too (cheap; the verifier decodes it again).
    b64(s)?;
    Ok(Unverified {
        alg,
        kid,
        claims: Claims {
            iss,
            aud,
            exp,
            nbf,
            iat,
            sub,
            jti,
            scopes,
            all,
        },
    })
}

/// Step 2: the provider's policy on the unverified claims and the key choice.
/// Returns the index of the chosen key in `keys`.
pub fn check_claims(
    u: &Unverified,
    p: &Provider,
    keys: Option<&KeySet>,
    now: u64,
) -> Result<usize, TokenError> {
    if u.claims.iss != p.issuer {
        return Err(TokenError::Issuer);
    }
    if !p.algorithms.contains(&u.alg) {
        return Err(TokenError::AlgNotAllowed);
    }
    if !u.claims.aud.iter().any(|a| p.audiences.contains(a)) {
        return Err(TokenError::Audience);
    }
    let skew = p.skew_secs;
    if u.claims.exp.saturating_add(skew) <= now {
        return Err(TokenError::Expired);
    }
    if u.claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(skew))
    {
        return Err(TokenError::NotYetValid);
    }
    if u.claims
        .iat
        .is_some_and(|iat| iat > now.saturating_add(skew))
    {
        return Err(TokenError::NotYetValid);
    }
    let keys = keys.ok_or(TokenError::NoKeys)?;
    match keys.find(u.kid.as_deref(), u.alg) {
        Lookup::Found(k) => Ok(keys
            .keys
            .iter()
            .position(|x| std::ptr::eq(x, k))
            .unwrap_or(0)),
        Lookup::UnknownKid => Err(TokenError::UnknownKid),
        Lookup::AlgNotAllowed => Err(TokenError::AlgNotAllowed),
        Lookup::Ambiguous => Err(TokenError::AmbiguousKey),
    }
}

/// Step 3: the signature, with `jsonwebtoken` and our crypto provider.
pub fn verify_signature(
    token: &str,
    u: &Unverified,
    p: &Provider,
    keys: &KeySet,
    key_index: usize,
) -> Result<(), TokenError> {
    crate::crypto::install();
    let key = keys.keys.get(key_index).ok_or(TokenError::NoKeys)?;
    let validation = p.validation(u.alg).ok_or(TokenError::AlgNotAllowed)?;
    match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.decoding, validation) {
        Ok(_) => Ok(()),
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind as K;
            Err(match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer => TokenError::Issuer,
                K::InvalidAudience => TokenError::Audience,
                K::InvalidAlgorithm => TokenError::AlgNotAllowed,
                _ => TokenError::Signature,
            })
        }
    }
}
