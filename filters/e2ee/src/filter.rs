//! e2ee's per-request host adapters: read the request through [`HttpHost`]
//! (the header map once; at the body's end the body and the identity
//! replay-guard handed over), call the pure core in [`crate::decide`],
//! apply the result, and keep what the response side needs (the key, a
//! fresh salt) and what the glue in `lib.rs` counts. Runs natively against
//! [`filter_core::host::FakeHost`] and in Envoy through the thin
//! proxy-wasm glue.

use filter_core::decision::{self, Decision as LogLine, RouteNames};
use filter_core::identity::{Identity, Source};
use filter_core::request::{Decision, Edits, RequestView};
use filter_core::{Denial, HttpHost, Verdict};

use crate::codec::SALT_LEN;
use crate::config::Compiled;
use crate::decide::{self, BodyChunk, HeadersStep, Outcome, ResponseKey};

/// A fresh random salt (WASI `random_get` in Envoy), `None` when the host
/// has no randomness to give.
pub fn fresh_salt() -> Option<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).ok()?;
    Some(salt)
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Request {
    request_id: Option<String>,
    method: String,
    waiting: bool,
    pub outcome: Outcome,
    /// Envoy gateway/route names, read on a denial (decision log) and
    /// reused by the glue for the metric labels.
    pub names: Option<RouteNames>,
    /// Set once the body is decrypted: the key and the fresh salt of the
    /// response.
    pub response: Option<(ResponseKey, [u8; SALT_LEN])>,
    /// Encrypted bytes received and plaintext bytes forwarded.
    pub encrypted_bytes: usize,
    pub plaintext_bytes: usize,
}

impl Request {
    /// Refuses: the decision log line (two property reads, one header
    /// read), then the local reply.
    fn deny<H: HttpHost>(
        &mut self,
        host: &mut H,
        d: Denial,
        headers: Option<&[(String, String)]>,
    ) -> Verdict {
        self.waiting = false;
        self.outcome = Outcome::Denied(d.code);
        let names = decision::route_names(&*host);
        let trace_id = match headers {
            Some(h) => decision::trace_id(h),
            None => decision::trace_id(&host.request_headers()),
        };
        LogLine::denial("e2ee", &self.method, d.status, d.code)
            .at(&names)
            .request_id(self.request_id.as_deref())
            .trace_id(trace_id.as_deref())
            .emit();
        self.names = Some(names);
        Decision::Deny(Edits::default(), d).apply(host, self.request_id.as_deref())
    }

    /// Request headers arrived.
    pub fn on_headers<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        end_of_stream: bool,
    ) -> Verdict {
        let all = host.request_headers();
        let view = RequestView::new(&all);
        match decide::decide_headers(cfg, &view, end_of_stream) {
            HeadersStep::Pass(o) => {
                self.outcome = o;
                Verdict::Continue
            }
            HeadersStep::Deny(d) => {
                self.method = view.method.to_string();
                self.request_id = view.request_id.map(str::to_string);
                self.deny(host, d, Some(&all))
            }
            HeadersStep::WaitBody => {
                self.method = view.method.to_string();
                self.request_id = view.request_id.map(str::to_string);
                self.waiting = true;
                Verdict::WaitBody
            }
        }
    }

    /// Request body data arrived; `buffered` is everything buffered so far.
    pub fn on_body<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        buffered: usize,
        end_of_stream: bool,
    ) -> Verdict {
        if matches!(self.outcome, Outcome::Denied(_)) {
            return Verdict::Responded;
        }
        if !self.waiting {
            return Verdict::Continue;
        }
        match decide::decide_body_chunk(cfg, buffered, end_of_stream) {
            BodyChunk::Wait => Verdict::WaitBody,
            BodyChunk::Refuse(d) => self.deny(host, d, None),
            BodyChunk::Complete => {
                self.waiting = false;
                let body = host.request_body(buffered).unwrap_or_default();
                // The key id replay-guard verified (filter state, which no
                // client can write).
                let kid = Identity::read(&*host)
                    .filter(|i| i.source == Source::Signature)
                    .and_then(|i| i.kid);
                let opened = match decide::decide_body(cfg, &body, kid.as_deref()) {
                    Ok(o) => o,
                    Err(d) => return self.deny(host, d, None),
                };
                // The response salt now, while a refusal is still possible:
                // without randomness no response could be encrypted, and a
                // plaintext response must never leave.
                let Some(salt) = fresh_salt() else {
                    log::error!("e2ee: no randomness from the host (random_get failed)");
                    let d = Denial::unavailable(
                        "encryption_unavailable",
                        "the gateway cannot encrypt the response now; retry later",
                    )
                    .with_header("retry-after", "1");
                    return self.deny(host, d, None);
                };
                self.encrypted_bytes = body.len();
                self.plaintext_bytes = opened.plaintext.len();
                host.replace_request_body(&opened.plaintext);
                opened.edits.apply(host);
                self.response = Some((opened.key, salt));
                self.outcome = Outcome::Decrypted;
                Verdict::Continue
            }
        }
    }

    /// Trailers arrived: the body is complete.
    pub fn on_trailers<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        host: &mut H,
        buffered: usize,
    ) -> Verdict {
        self.on_body(cfg, host, buffered, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::config::load;
    use crate::config::tests::env;
    use filter_core::host::FakeHost;

    const KID: &str = "phone-1:alice:1750000600";

    fn cfg() -> Compiled {
        load(
            br#"{"master_secrets":[{"version":"1","env":"K1"}],
                 "routes":[{"name":"transfers","prefix":"/api/v1/transfers","methods":["POST"],"mode":"required"},
                           {"name":"api","prefix":"/api/v1","mode":"optional"}],
                 "max_body_bytes":4096}"#,
            &env,
        )
        .unwrap()
    }

    fn signed(mut h: FakeHost, kid: &str) -> FakeHost {
        let mut id = Identity::new(Source::Signature);
        id.user = Some("alice".into());
        id.device = Some("phone-1".into());
        id.kid = Some(kid.into());
        id.publish(&mut h);
        h
    }

    fn encrypted(c: &Compiled, plain: &[u8]) -> FakeHost {
        let ikm = codec::ikm(&c.secrets[0].key, KID.as_bytes());
        let body = codec::seal(plain, &ikm, [1; 16], 64, KID.as_bytes()).unwrap();
        let h = FakeHost::request("POST", "/api/v1/transfers")
            .with_header("content-encoding", "aes128gcm")
            .with_header("content-length", &body.len().to_string())
            .with_body(&body);
        signed(h, KID)
    }

    #[test]
    fn an_encrypted_body_reaches_the_upstream_as_plaintext() {
        let c = cfg();
        let plain = br#"{"to":"bob","amount":5}"#;
        let mut h = encrypted(&c, plain);
        let n = h.body.len();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, 10, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, n, true), Verdict::Continue);
        assert_eq!(h.body, plain);
        assert_eq!(h.header("content-encoding"), None);
        assert_eq!(h.header("content-length"), Some("23"));
        assert_eq!(r.outcome, Outcome::Decrypted);
        let (key, salt) = r.response.unwrap();
        assert_eq!(key.keyid, KID);
        assert_ne!(salt, [0; 16]);
        assert!(h.response.is_none());
    }

    #[test]
    fn refusals_answer_json_and_forward_nothing() {
        let c = cfg();
        // plaintext where required
        let mut h =
            FakeHost::request("POST", "/api/v1/transfers").with_header("content-length", "2");
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, false), Verdict::Responded);
        let resp = h.response.unwrap();
        assert_eq!(
            (resp.status, resp.json()["error"].as_str()),
            (400, Some("encryption_required"))
        );
        assert_eq!(resp.header("x-request-id"), Some("test-rid"));
        // a signature for another key id
        let mut h = encrypted(&c, b"x");
        h = signed(h, "phone-2:alice:1750000600");
        let n = h.body.len();
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, false), Verdict::WaitBody);
        assert_eq!(r.on_body(&c, &mut h, n, true), Verdict::Responded);
        assert_eq!(h.response.as_ref().unwrap().status, 401);
        assert_eq!(r.outcome, Outcome::Denied("key_mismatch"));
        assert_eq!(h.header("content-encoding"), Some("aes128gcm"));
        // too large while arriving
        let mut h = encrypted(&c, b"x");
        let mut r = Request::default();
        r.on_headers(&c, &mut h, false);
        assert_eq!(r.on_body(&c, &mut h, 4097, false), Verdict::Responded);
        assert_eq!(h.response.unwrap().status, 413);
    }

    #[test]
    fn no_identity_means_no_key_and_a_plain_optional_body_passes_untouched() {
        let c = cfg();
        let ikm = codec::ikm(&c.secrets[0].key, KID.as_bytes());
        let body = codec::seal(b"x", &ikm, [1; 16], 64, KID.as_bytes()).unwrap();
        let mut h = FakeHost::request("POST", "/api/v1/orders")
            .with_header("content-encoding", "aes128gcm")
            .with_body(&body);
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, false), Verdict::WaitBody);
        assert_eq!(r.on_trailers(&c, &mut h, body.len()), Verdict::Responded);
        assert_eq!(h.response.unwrap().status, 401);

        let mut h = FakeHost::request("POST", "/api/v1/orders").with_body(b"{}");
        let mut r = Request::default();
        assert_eq!(r.on_headers(&c, &mut h, false), Verdict::Continue);
        assert_eq!(r.on_body(&c, &mut h, 2, true), Verdict::Continue);
        assert_eq!((r.outcome, h.body.as_slice()), (Outcome::Plain, &b"{}"[..]));
        assert!(r.response.is_none());
    }
}
