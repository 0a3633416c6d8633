//! e2ee's pure decision core: the request headers (a [`RequestView`], read
//! once), the body bytes and the verified signature's key id in, a decision
//! out; the response headers in, the edits of an encrypted response out.
//! No function here makes a host call.
//!
//! A request goes through up to three steps:
//! 1. [`decide_headers`]: the route's mode and the request's
//!    `Content-Encoding`. A plaintext request passes (or, where encryption
//!    is required, is refused); an `aes128gcm` body is waited for
//!    ([`HeadersStep::WaitBody`]) with the headers held.
//! 2. [`decide_body_chunk`] on every body callback: a body over the limit
//!    is refused at once; otherwise wait until it is complete.
//! 3. [`decide_body`] once it is: the coding's key id against the
//!    signature's, the records decrypted; the plaintext, with the header
//!    edits (no `content-encoding`, `content-length` of the plaintext), or
//!    the refusal.
//!
//! A response to a decrypted request: [`decide_response_headers`] says
//! whether it is encrypted (it came from the upstream and has a body) and
//! how its headers change; then a [`crate::codec::Encoder`] encrypts the
//! body chunk by chunk.

use filter_core::request::{Edits, RequestView};
use filter_core::{headers, Denial};

use crate::codec::{self, CodingError, Ikm};
use crate::config::{Compiled, Mode};

/// The content coding this filter decodes.
pub const AES128GCM: &str = "aes128gcm";

/// What happened to a request, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Not decided yet (waiting for the body).
    #[default]
    Pending,
    /// A route with mode `off`.
    Off,
    /// No `aes128gcm` body where that is allowed: passed as it is.
    Plain,
    /// An `aes128gcm` body decrypted and handed on as plaintext.
    Decrypted,
    /// Refused; the code says why.
    Denied(&'static str),
}

/// The decision on the request headers.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadersStep {
    /// Nothing to do (mode `off`, or a plaintext request where allowed).
    Pass(Outcome),
    /// Refused.
    Deny(Denial),
    /// An `aes128gcm` body follows: hold the headers until it is decrypted.
    WaitBody,
}

/// The request's `Content-Encoding`, as far as e2ee cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// No content coding.
    None,
    /// Exactly `aes128gcm`.
    Aes128Gcm,
    /// `aes128gcm` together with other codings: we decode only a body whose
    /// one coding is `aes128gcm`.
    Mixed,
    /// Other codings only.
    Other,
}

fn coding(view: &RequestView) -> Coding {
    let mut aes = 0usize;
    let mut other = 0usize;
    for v in view.values(headers::CONTENT_ENCODING) {
        for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case(AES128GCM) {
                aes += 1;
            } else {
                other += 1;
            }
        }
    }
    match (aes, other) {
        (0, 0) => Coding::None,
        (1, 0) => Coding::Aes128Gcm,
        (0, _) => Coding::Other,
        _ => Coding::Mixed,
    }
}

pub(crate) fn encryption_required() -> Denial {
    Denial::bad_request(
        "encryption_required",
        "this route requires a body encrypted with Content-Encoding: aes128gcm",
    )
}

pub(crate) fn invalid(message: &'static str) -> Denial {
    Denial::bad_request("invalid_encryption", message)
}

fn too_large(max: u64) -> Denial {
    Denial::payload_too_large(format!("the encrypted body exceeds {max} bytes"))
}

/// The refusal for a coding error: 401 when the sender does not hold the
/// key of the signature's key id, 400 for a malformed coding.
pub fn coding_denial(e: CodingError) -> Denial {
    match e {
        CodingError::KeyMismatch => Denial::unauthorized("key_mismatch", e.message())
            .with_header("www-authenticate", "Signature"),
        CodingError::Authentication => Denial::unauthorized("decryption_failed", e.message())
            .with_header("www-authenticate", "Signature"),
        _ => invalid(e.message()),
    }
}

/// The request headers arrived. `end_of_stream`: no body follows.
pub fn decide_headers(cfg: &Compiled, view: &RequestView, end_of_stream: bool) -> HeadersStep {
    let mode = cfg.mode(view.method, view.path());
    if mode == Mode::Off {
        return HeadersStep::Pass(Outcome::Off);
    }
    match coding(view) {
        Coding::Aes128Gcm => {}
        Coding::Mixed => {
            return HeadersStep::Deny(invalid(
                "aes128gcm must be the only content coding of the request body",
            ))
        }
        Coding::None | Coding::Other => {
            return match mode {
                Mode::Required => HeadersStep::Deny(encryption_required()),
                _ => HeadersStep::Pass(Outcome::Plain),
            }
        }
    }
    if end_of_stream {
        return HeadersStep::Deny(invalid(CodingError::ShortHeader.message()));
    }
    let declared = view
        .values(headers::CONTENT_LENGTH)
        .next()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > cfg.max_body_bytes => HeadersStep::Deny(too_large(cfg.max_body_bytes)),
        Some(0) => HeadersStep::Deny(invalid(CodingError::ShortHeader.message())),
        _ => HeadersStep::WaitBody,
    }
}

/// A body callback while the body is awaited.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyChunk {
    /// Wait for more.
    Wait,
    /// Refused (too large).
    Refuse(Denial),
    /// The body is complete: call [`decide_body`].
    Complete,
}

/// `buffered` bytes of the encrypted body have arrived.
pub fn decide_body_chunk(cfg: &Compiled, buffered: usize, end_of_stream: bool) -> BodyChunk {
    if buffered as u64 > cfg.max_body_bytes {
        BodyChunk::Refuse(too_large(cfg.max_body_bytes))
    } else if end_of_stream {
        BodyChunk::Complete
    } else {
        BodyChunk::Wait
    }
}

/// A decrypted request body and the key the response is encrypted with.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The plaintext for the upstream.
    pub plaintext: Vec<u8>,
    /// The header edits that go with it: `content-encoding` removed,
    /// `content-length` set to the plaintext's length.
    pub edits: Edits,
    /// The response key: the IKM of the key id and the key id itself.
    pub key: ResponseKey,
}

/// The key a response is encrypted with (the request's).
#[derive(Clone, PartialEq, Eq)]
pub struct ResponseKey {
    pub ikm: Ikm,
    pub keyid: String,
}

impl std::fmt::Debug for ResponseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResponseKey({}, <redacted>)", self.keyid)
    }
}

/// The complete encrypted body. `verified_kid` is the key id of the
/// request signature that replay-guard verified (the identity it hands
/// over), `None` when there is none.
pub fn decide_body(
    cfg: &Compiled,
    body: &[u8],
    verified_kid: Option<&str>,
) -> Result<Opened, Denial> {
    let mut candidates: Vec<Ikm> = Vec::new();
    let (plaintext, index) = codec::open_indexed(body, &cfg.limits, |kid| {
        let Some(expected) = verified_kid else {
            return Err(CodingError::KeyMismatch);
        };
        if kid != expected.as_bytes() {
            return Err(CodingError::KeyMismatch);
        }
        candidates = cfg
            .secrets_for(expected)
            .map(|s| codec::ikm(&s.key, kid))
            .collect();
        Ok(candidates.clone())
    })
    .map_err(coding_denial)?;
    let Some(ikm) = candidates.get(index).copied() else {
        return Err(coding_denial(CodingError::Authentication));
    };
    let mut edits = Edits::default();
    edits.remove(headers::CONTENT_ENCODING);
    edits.set.push((
        headers::CONTENT_LENGTH.to_string(),
        plaintext.len().to_string(),
    ));
    Ok(Opened {
        plaintext,
        edits,
        key: ResponseKey {
            ikm,
            keyid: verified_kid.unwrap_or_default().to_string(),
        },
    })
}

/// What to do with a response to a decrypted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseStep {
    /// Leave it as it is: a local reply (denials stay plain JSON), or a
    /// response without a body.
    Plain,
    /// Encrypt the body; apply these header edits first.
    Encrypt(ResponseEdits),
}

/// Header edits of an encrypted response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseEdits {
    /// Headers to remove.
    pub remove: Vec<&'static str>,
    /// Headers to set (replacing every value).
    pub set: Vec<(&'static str, String)>,
}

/// Response headers computed from the plaintext body, which would let an
/// observer confirm a guess of it: removed from an encrypted response.
pub const PLAINTEXT_DERIVED: [&str; 4] = ["content-digest", "repr-digest", "digest", "content-md5"];

/// The response headers of a request whose body was decrypted.
/// `from_upstream`: the upstream answered (Envoy's response code details
/// `via_upstream`), not a filter or Envoy itself. `end_of_stream`: no body
/// follows.
pub fn decide_response_headers(
    cfg: &Compiled,
    response: &[(String, String)],
    keyid_len: usize,
    from_upstream: bool,
    end_of_stream: bool,
) -> ResponseStep {
    if !from_upstream || end_of_stream {
        return ResponseStep::Plain;
    }
    let mut status = None;
    let mut length = None;
    let mut codings: Vec<&str> = Vec::new();
    for (n, v) in response {
        match n.as_str() {
            ":status" => status = v.trim().parse::<u16>().ok(),
            headers::CONTENT_LENGTH => length = v.trim().parse::<u64>().ok(),
            headers::CONTENT_ENCODING => {
                codings.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()))
            }
            _ => {}
        }
    }
    // No body by definition (RFC 9110 §6.4.1).
    if matches!(status, Some(100..=199 | 204 | 304)) {
        return ResponseStep::Plain;
    }
    let mut e = ResponseEdits::default();
    // An already-encoded body (gzip, ...) is encrypted as it is: the
    // codings are listed in the order they were applied.
    codings.push(AES128GCM);
    e.set.push((headers::CONTENT_ENCODING, codings.join(", ")));
    match length {
        Some(n) => e.set.push((
            headers::CONTENT_LENGTH,
            codec::encrypted_len(n, cfg.response_record_size, keyid_len).to_string(),
        )),
        None => e.remove.push(headers::CONTENT_LENGTH),
    }
    e.remove.extend(PLAINTEXT_DERIVED);
    ResponseStep::Encrypt(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::config::tests::env;
    use filter_core::host::FakeHost;

    const KID: &str = "phone-1:alice:1750000600";

    fn cfg() -> Compiled {
        load(
            br#"{"master_secrets":[{"version":"1","env":"K1"},{"version":"0","env":"K0"}],
                 "default_mode":"required",
                 "routes":[{"name":"transfers","prefix":"/api/v1/transfers","methods":["POST"],"mode":"required"},
                           {"name":"api","prefix":"/api/v1","mode":"optional"},
                           {"name":"health","prefix":"/health","mode":"off"}],
                 "max_body_bytes":4096,"max_records":8,"max_record_size":2048}"#,
            &env,
        )
        .unwrap()
    }

    fn master(c: &Compiled, version: &str) -> Vec<u8> {
        c.secrets
            .iter()
            .find(|s| s.version == version)
            .unwrap()
            .key
            .clone()
    }

    fn headers(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = FakeHost::request(method, path);
        for (n, v) in extra {
            h = h.with_header(n, v);
        }
        h.headers
    }

    fn step(method: &str, path: &str, extra: &[(&str, &str)], eos: bool) -> HeadersStep {
        let h = headers(method, path, extra);
        decide_headers(&cfg(), &RequestView::new(&h), eos)
    }

    fn code(s: HeadersStep) -> &'static str {
        match s {
            HeadersStep::Deny(d) => d.code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plaintext_where_required_is_refused_and_elsewhere_passes() {
        let ct = [
            ("content-type", "application/json"),
            ("content-length", "2"),
        ];
        assert_eq!(
            code(step("POST", "/api/v1/transfers", &ct, false)),
            "encryption_required"
        );
        assert_eq!(
            code(step("POST", "/api/v1/transfers", &[], true)),
            "encryption_required"
        );
        assert_eq!(
            code(step(
                "POST",
                "/api/v1/transfers",
                &[("content-encoding", "gzip")],
                false
            )),
            "encryption_required"
        );
        assert_eq!(
            step("POST", "/api/v1/orders", &ct, false),
            HeadersStep::Pass(Outcome::Plain)
        );
        assert_eq!(
            step(
                "GET",
                "/health",
                &[("content-encoding", "aes128gcm")],
                false
            ),
            HeadersStep::Pass(Outcome::Off)
        );
        assert_eq!(
            code(step("GET", "/elsewhere", &[], true)),
            "encryption_required"
        );
    }

    #[test]
    fn an_aes128gcm_body_is_held_and_its_shape_checked_at_the_headers() {
        let aes = ("content-encoding", "AES128GCM");
        assert_eq!(
            step("POST", "/api/v1/transfers", &[aes], false),
            HeadersStep::WaitBody
        );
        assert_eq!(
            step(
                "POST",
                "/api/v1/orders",
                &[aes, ("content-length", "100")],
                false
            ),
            HeadersStep::WaitBody
        );
        assert_eq!(
            code(step("POST", "/api/v1/orders", &[aes], true)),
            "invalid_encryption"
        );
        assert_eq!(
            code(step(
                "POST",
                "/api/v1/orders",
                &[aes, ("content-length", "0")],
                false
            )),
            "invalid_encryption"
        );
        assert_eq!(
            code(step(
                "POST",
                "/api/v1/orders",
                &[aes, ("content-length", "4097")],
                false
            )),
            "body_too_large"
        );
        assert_eq!(
            code(step(
                "POST",
                "/api/v1/orders",
                &[("content-encoding", "gzip, aes128gcm")],
                false
            )),
            "invalid_encryption"
        );
        assert_eq!(
            code(step(
                "POST",
                "/api/v1/orders",
                &[
                    ("content-encoding", "aes128gcm"),
                    ("content-encoding", "aes128gcm")
                ],
                false
            )),
            "invalid_encryption"
        );
    }

    #[test]
    fn body_chunks_are_counted_against_the_limit() {
        let c = cfg();
        assert_eq!(decide_body_chunk(&c, 10, false), BodyChunk::Wait);
        assert_eq!(decide_body_chunk(&c, 4096, true), BodyChunk::Complete);
        assert!(
            matches!(decide_body_chunk(&c, 4097, false), BodyChunk::Refuse(d) if d.status == 413)
        );
    }

    fn sealed(c: &Compiled, version: &str, kid: &str, plain: &[u8], rs: u32) -> Vec<u8> {
        let ikm = codec::ikm(&master(c, version), kid.as_bytes());
        codec::seal(plain, &ikm, [5; 16], rs, kid.as_bytes()).unwrap()
    }

    #[test]
    fn a_body_under_the_signature_key_id_decrypts_with_either_secret() {
        let c = cfg();
        for v in ["1", "0"] {
            let body = sealed(&c, v, KID, br#"{"item_id":"a","quantity":1}"#, 30);
            let o = decide_body(&c, &body, Some(KID)).unwrap();
            assert_eq!(o.plaintext, br#"{"item_id":"a","quantity":1}"#);
            assert_eq!(o.edits.remove, ["content-encoding"]);
            assert_eq!(
                o.edits.set,
                [("content-length".to_string(), "28".to_string())]
            );
            assert_eq!(o.key.ikm, codec::ikm(&master(&c, v), KID.as_bytes()));
            assert_eq!(o.key.keyid, KID);
        }
        // A versioned key id uses its version's secret only.
        let kid1 = format!("{KID}:1");
        let body = sealed(&c, "0", &kid1, b"x", 64);
        assert_eq!(
            decide_body(&c, &body, Some(&kid1)).unwrap_err().code,
            "decryption_failed"
        );
        let body = sealed(&c, "1", &kid1, b"x", 64);
        assert_eq!(decide_body(&c, &body, Some(&kid1)).unwrap().plaintext, b"x");
    }

    #[test]
    fn another_key_id_or_no_signature_is_401_and_a_bad_shape_400() {
        let c = cfg();
        let body = sealed(&c, "1", KID, b"hello", 64);
        let d = decide_body(&c, &body, Some("phone-2:alice:1750000600")).unwrap_err();
        assert_eq!((d.status, d.code), (401, "key_mismatch"));
        let d = decide_body(&c, &body, None).unwrap_err();
        assert_eq!((d.status, d.code), (401, "key_mismatch"));
        let mut flipped = body.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let d = decide_body(&c, &flipped, Some(KID)).unwrap_err();
        assert_eq!((d.status, d.code), (401, "decryption_failed"));
        let d = decide_body(&c, &body[..10], Some(KID)).unwrap_err();
        assert_eq!((d.status, d.code), (400, "invalid_encryption"));
        // 9 records of 1 byte: over max_records (8)
        let many = sealed(&c, "1", KID, b"123456789", 18);
        assert_eq!(
            decide_body(&c, &many, Some(KID)).unwrap_err().code,
            "invalid_encryption"
        );
        // rs over max_record_size (2048)
        let big_rs = sealed(&c, "1", KID, b"x", 4096);
        assert_eq!(
            decide_body(&c, &big_rs, Some(KID)).unwrap_err().code,
            "invalid_encryption"
        );
    }

    fn resp(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        extra
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_upstream_response_with_a_body_is_encrypted_with_corrected_headers() {
        let c = cfg();
        let r = resp(&[
            (":status", "200"),
            ("content-length", "100"),
            ("content-digest", "sha-256=:x:"),
        ]);
        let ResponseStep::Encrypt(e) = decide_response_headers(&c, &r, KID.len(), true, false)
        else {
            panic!()
        };
        assert!(e.set.contains(&("content-encoding", "aes128gcm".into())));
        let want = codec::encrypted_len(100, 4096, KID.len()).to_string();
        assert!(e.set.contains(&("content-length", want)));
        assert!(e.remove.contains(&"content-digest"));
        // Unknown length: removed; gzip stays, aes128gcm goes on top.
        let r = resp(&[(":status", "200"), ("content-encoding", "gzip")]);
        let ResponseStep::Encrypt(e) = decide_response_headers(&c, &r, 3, true, false) else {
            panic!()
        };
        assert!(e
            .set
            .contains(&("content-encoding", "gzip, aes128gcm".into())));
        assert!(e.remove.contains(&"content-length"));
    }

    #[test]
    fn local_replies_and_bodyless_responses_stay_plain() {
        let c = cfg();
        let r = resp(&[(":status", "403"), ("content-type", "application/json")]);
        assert_eq!(
            decide_response_headers(&c, &r, 3, false, false),
            ResponseStep::Plain
        );
        let r = resp(&[(":status", "200")]);
        assert_eq!(
            decide_response_headers(&c, &r, 3, true, true),
            ResponseStep::Plain
        );
        for s in ["204", "304"] {
            let r = resp(&[(":status", s)]);
            assert_eq!(
                decide_response_headers(&c, &r, 3, true, false),
                ResponseStep::Plain
            );
        }
    }
}
