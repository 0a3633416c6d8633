//! # e2ee: encrypted bodies on the app gateway
//!
//! Runs on the app gateway after replay-guard (which verifies the request
//! signature over the encrypted bytes) and before the filters that judge
//! the body in plaintext, and enforces, per route (`required`, `optional`,
//! `off`):
//! * request bodies in the `aes128gcm` content coding of RFC 8188, whose
//!   coding header names as `keyid` the key id of the verified request
//!   signature; input keying material HMAC-SHA256(master secret,
//!   `"aes128gcm:"` + key id), from the master secrets replay-guard uses
//!   (every configured version tried, or the one the key id names);
//! * the body is decrypted whole (bounded: body size, record size, record
//!   count) with the headers held, so a refused request reaches the
//!   upstream not at all; the upstream gets the plaintext, no
//!   `Content-Encoding: aes128gcm`, and a `content-length` that matches;
//! * `required` routes refuse plaintext (400 `encryption_required`); a
//!   malformed coding is 400 `invalid_encryption`; another key id than the
//!   signature's, or a body that does not authenticate, is 401;
//! * the upstream's response to a decrypted request goes back encrypted
//!   with the same key and a fresh salt, record by record as it arrives
//!   (at most one record of plaintext held per stream); local replies
//!   (denials) stay plain JSON.
//!
//! The coding is [`codec`] (RustCrypto's `aes-gcm` and `hkdf` under our
//! RFC 8188 framing), the decisions are [`decide`] (no host call), the
//! request adapters [`filter`]; the proxy-wasm glue below only moves data.
//! Config reference: `docs/filters/e2ee.md`.

pub mod codec;
pub mod config;
pub mod decide;
pub mod filter;

#[cfg(any(target_arch = "wasm32", gateway_native))]
mod wasm {
    use std::rc::Rc;

    use filter_core::proxy::{self, ProxyHost};
    use filter_core::Verdict;
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

    use crate::codec::Encoder;
    use crate::config::{self, Compiled};
    use crate::decide::{self, Outcome, ResponseStep};
    use crate::filter::Request;

    filter_core::filter_entry!(root);

    fn root(_context_id: u32) -> Box<dyn RootContext> {
        Box::new(Root::default())
    }

    /// Labelled decision counters (docs/operations.md), defined on first use.
    const DECRYPTED: &str = "e2ee_decrypted_total";
    const DENIED: &str = "e2ee_denied_total";

    filter_core::metric_set! {
        struct Metrics {
            plain: counter("e2ee_plain_total"),
            decrypted_bytes: counter("e2ee_decrypted_bytes_total"),
            encrypted_request_bytes: counter("e2ee_request_encrypted_bytes_total"),
            responses: counter("e2ee_responses_encrypted_total"),
            response_bytes: counter("e2ee_response_plaintext_bytes_total"),
            responses_plain: counter("e2ee_responses_plain_total"),
            truncated: counter("e2ee_responses_truncated_total"),
        }
    }

    fn increment_by(id: Option<u32>, n: usize) {
        if let (Some(id), Ok(n @ 1..)) = (id, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    #[derive(Default)]
    struct Root {
        config: Option<Rc<Compiled>>,
        metrics: Option<Rc<Metrics>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let env = |name: &str| std::env::var(name).ok();
            let Some(c) = proxy::load_plugin_config("e2ee", |b| config::load(b, &env)) else {
                return false;
            };
            log::info!(
                "e2ee: configured with {} route rule(s), {} secret version(s), bodies up to {} bytes",
                c.routes.len(),
                c.secrets.len(),
                c.max_body_bytes
            );
            self.config = Some(Rc::new(c));
            self.metrics = Some(Rc::new(Metrics::define()));
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Http {
                config: self.config.clone()?,
                metrics: self.metrics.clone()?,
                req: Request::default(),
                buffered: 0,
                counted: false,
                encoder: None,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Http {
        config: Rc<Compiled>,
        metrics: Rc<Metrics>,
        req: Request,
        buffered: usize,
        counted: bool,
        /// The response's encoder, once its headers said it is encrypted.
        encoder: Option<Encoder>,
    }

    impl Http {
        /// Counts the request's outcome once.
        fn after(&mut self, v: Verdict) -> Action {
            if !self.counted && self.req.outcome != Outcome::Pending {
                self.counted = true;
                let labelled = |req: &Request, name: &str, reason: Option<&str>| {
                    let names = req
                        .names
                        .clone()
                        .unwrap_or_else(|| filter_core::decision::route_names(&ProxyHost));
                    let mut tags = vec![
                        ("gateway", names.gateway.as_str()),
                        ("route", names.route.as_str()),
                    ];
                    if let Some(r) = reason {
                        tags.push(("reason", r));
                    }
                    proxy::increment_tagged(name, &tags);
                };
                match self.req.outcome {
                    Outcome::Plain => proxy::increment(self.metrics.plain),
                    Outcome::Decrypted => {
                        labelled(&self.req, DECRYPTED, None);
                        increment_by(self.metrics.decrypted_bytes, self.req.plaintext_bytes);
                        increment_by(
                            self.metrics.encrypted_request_bytes,
                            self.req.encrypted_bytes,
                        );
                    }
                    Outcome::Denied(code) => labelled(&self.req, DENIED, Some(code)),
                    Outcome::Off | Outcome::Pending => {}
                }
            }
            proxy::action(v)
        }
    }

    impl Context for Http {}

    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            let v = self
                .req
                .on_headers(&self.config, &mut ProxyHost, end_of_stream);
            self.after(v)
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.buffered = body_size;
            let v = self
                .req
                .on_body(&self.config, &mut ProxyHost, body_size, end_of_stream);
            self.after(v)
        }

        fn on_http_request_trailers(&mut self, _n: usize) -> Action {
            let v = self
                .req
                .on_trailers(&self.config, &mut ProxyHost, self.buffered);
            self.after(v)
        }

        fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
            let Some((key, salt)) = self.req.response.take() else {
                return Action::Continue;
            };
            let headers: Vec<(String, String)> =
                hostcalls::get_map_bytes(MapType::HttpResponseHeaders)
                    .map(|m| m.into_iter().map(|(n, v)| (n, proxy::text(v))).collect())
                    .unwrap_or_default();
            // Envoy's response code details: `via_upstream` when the
            // upstream answered; a local reply (a denial by a filter after
            // this one, Envoy's own 503) has another and stays plain.
            let from_upstream = hostcalls::get_property(vec!["response", "code_details"])
                .ok()
                .flatten()
                .is_some_and(|d| d == b"via_upstream");
            match decide::decide_response_headers(
                &self.config,
                &headers,
                key.keyid.len(),
                from_upstream,
                end_of_stream,
            ) {
                ResponseStep::Plain => proxy::increment(self.metrics.responses_plain),
                ResponseStep::Encrypt(edits) => {
                    let Some(enc) = Encoder::new(
                        &key.ikm,
                        salt,
                        self.config.response_record_size,
                        key.keyid.as_bytes(),
                    ) else {
                        return Action::Continue;
                    };
                    for n in &edits.remove {
                        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, n, None);
                    }
                    for (n, v) in &edits.set {
                        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, n, Some(v));
                    }
                    proxy::increment(self.metrics.responses);
                    self.encoder = Some(enc);
                }
            }
            Action::Continue
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            let Some(enc) = self.encoder.as_mut() else {
                return Action::Continue;
            };
            let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let mut out = Vec::with_capacity(chunk.len() + enc.held() + 64);
            enc.push(&chunk, &mut out);
            if end_of_stream {
                if let Some(enc) = self.encoder.take() {
                    increment_by(self.metrics.response_bytes, enc.plain_bytes as usize);
                    enc.finish(&mut out);
                }
            }
            // Replace this chunk with its records; what is held stays in
            // the encoder until the next chunk or the end.
            let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out);
            Action::Continue
        }

        fn on_http_response_trailers(&mut self, _n: usize) -> Action {
            // The body ended with trailers: proxy-wasm cannot add body
            // bytes here, so the last record is never sent and the client
            // sees a truncated coding (which RFC 8188 makes detectable).
            if self.encoder.take().is_some() {
                proxy::increment(self.metrics.truncated);
                log::warn!("e2ee: an encrypted response ended with trailers; its last record could not be sent");
            }
            Action::Continue
        }
    }
}

/// The root context of this filter, for a module that links several filters
/// and dispatches on the plugin's `root_id` (filters/suite; docs/performance.md).
#[cfg(any(target_arch = "wasm32", gateway_native))]
pub fn root_context(context_id: u32) -> Box<dyn proxy_wasm::traits::RootContext> {
    wasm::new_root(context_id)
}
