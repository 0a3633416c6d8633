//! e2ee in the native build, straight on the dynamic-module callbacks
//! (issue 26's fixed cost; docs/native.md "e2ee straight on the
//! callbacks"). e2ee's own configuration loader, its pure request path
//! (`e2ee::filter::Request`: `decide_headers`, `decide_body`, the decision
//! log, the JSON denials) and its response coding (`decide_response_headers`,
//! `codec::Encoder`) run over an [`HttpHost`] written on the callbacks: no
//! proxy-wasm encodings, no SDK dispatcher, no root or HTTP context. This is
//! e2ee's only glue besides its proxy-wasm one (filters/e2ee/src/lib.rs,
//! which the wasm builds and the native chain run): the same steps, hook by
//! hook, and the same counters, checked against each other by the
//! integration tests on both builds (tests/integration/test_e2ee*.py).
//!
//! e2ee needs nothing a root context gives (no ticks, no callouts, no
//! shared data), so nothing is lost: per worker thread and configuration
//! the compiled configuration and the counter ids (as its glue keeps per
//! VM); per stream the request's state and the response's encoder.
//!
//! Fail closed: a panic in a request hook is contained and answered 503
//! `filter_failed` (as the host answers for any filter); in a response hook
//! of an encrypted answer, the rest of the answer is dropped, never sent in
//! plaintext.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

use e2ee::codec::Encoder;
use e2ee::config::Compiled;
use e2ee::decide::{self, Outcome, ResponseStep};
use e2ee::filter::Request;
use filter_core::Verdict;

use crate::callbacks::{text_headers, CallbackHost, Labelled, PerThread};
use crate::ffi::{envoy, FilterPtr};
use crate::host::{self, Config};

const RESPONSE_HEADERS: u32 = 2;
/// e2ee's counters (its glue's `Metrics`, filters/e2ee/src/lib.rs), by name.
const COUNTERS: [&str; 7] = [
    "e2ee_plain_total",
    "e2ee_decrypted_bytes_total",
    "e2ee_request_encrypted_bytes_total",
    "e2ee_responses_encrypted_total",
    "e2ee_response_plaintext_bytes_total",
    "e2ee_responses_plain_total",
    "e2ee_responses_truncated_total",
];
const PLAIN: usize = 0;
const DECRYPTED_BYTES: usize = 1;
const ENCRYPTED_REQUEST_BYTES: usize = 2;
const RESPONSES: usize = 3;
const RESPONSE_BYTES: usize = 4;
const RESPONSES_PLAIN: usize = 5;
const TRUNCATED: usize = 6;
/// Labelled decision counters (crate::metrics::LABELLED).
const DECRYPTED: &str = "e2ee_decrypted_total";
const DENIED: &str = "e2ee_denied_total";
const CODE_DETAILS: &[&[u8]] = &[b"response", b"code_details"];

/// e2ee's configuration, as its glue loads it; `None`: refused, logged with
/// the field named.
fn load(c: &Config) -> Option<Compiled> {
    let env = |name: &str| std::env::var(name).ok();
    match e2ee::config::load(&c.envelope().config, &env) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            host::log(4, format!("e2ee: {e}").as_bytes());
            None
        }
    }
}

/// Main thread, inside `config_new`: checks the configuration and defines
/// e2ee's counters on it (Envoy takes new metrics only then). `false`:
/// refused (logged, field named).
pub fn configure(c: &Config) -> bool {
    let _as = host::LogAs::new("e2ee");
    let Some(cfg) = load(c) else {
        return false;
    };
    host::log(
        2,
        format!(
            "e2ee: configured with {} route rule(s), {} secret version(s), bodies up to {} bytes",
            cfg.routes.len(),
            cfg.secrets.len(),
            cfg.max_body_bytes
        )
        .as_bytes(),
    );
    for name in COUNTERS {
        host::define_config_counter(c, name);
    }
    true
}

/// One worker's state for one configuration (e2ee's glue: one per VM).
struct State {
    cfg: Compiled,
    /// [`COUNTERS`]' ids in the host's registry.
    ids: [u32; COUNTERS.len()],
    labelled: Labelled,
}

impl State {
    /// The registry id of counter `COUNTERS[i]`.
    fn id(&self, i: usize) -> u32 {
        self.ids.get(i).copied().unwrap_or(0)
    }
}

thread_local! {
    static STATES: PerThread<State> = PerThread::default();
}

fn state(c: &Arc<Config>) -> Option<Rc<State>> {
    STATES.with(|m| {
        m.get(c, || {
            let _as = host::LogAs::new("e2ee");
            let cfg = load(c)?;
            let mut ids = [0u32; COUNTERS.len()];
            for (id, name) in ids.iter_mut().zip(COUNTERS) {
                *id = host::counter_id(name).unwrap_or(0);
            }
            Some(State {
                cfg,
                ids,
                labelled: Labelled::default(),
            })
        })
    })
}

/// One stream of an e2ee block.
pub struct Http {
    /// `None`: the configuration did not load on this worker (every request
    /// hook answers 503, as the host does for a filter without a context).
    st: Option<Rc<State>>,
    inner: RefCell<Inner>,
    /// A response hook of an encrypted answer failed: what is left of the
    /// answer is dropped.
    failed: Cell<bool>,
}

#[derive(Default)]
struct Inner {
    req: Request,
    buffered: usize,
    counted: bool,
    /// The response's encoder, once its headers said it is encrypted.
    encoder: Option<Encoder>,
}

/// Worker thread: a new stream of an e2ee block.
pub fn new_stream(c: &Arc<Config>) -> Http {
    Http {
        st: state(c),
        inner: RefCell::new(Inner::default()),
        failed: Cell::new(false),
    }
}

/// Which hook a request-side call is (its statuses differ).
#[derive(Clone, Copy)]
enum Hook {
    Headers,
    Body,
    Trailers,
}

fn status(c: &Config, hook: Hook, v: Verdict) -> u32 {
    match (hook, v) {
        (Hook::Headers, Verdict::Continue) => host::CONTINUE,
        (Hook::Headers, Verdict::Responded) => host::STOP_ITERATION,
        (Hook::Headers, _) if c.envelope().allow_on_headers_stop_iteration => host::STOP_ITERATION,
        (Hook::Headers, _) => host::STOP_ALL,
        (Hook::Body, Verdict::Continue) => host::CONTINUE,
        (Hook::Body, Verdict::Responded) => host::BODY_STOP_NO_BUFFER,
        (Hook::Body, _) => host::BODY_STOP_AND_BUFFER,
        (Hook::Trailers, Verdict::Continue) => host::CONTINUE,
        (Hook::Trailers, _) => 1,
    }
}

/// A request hook: e2ee's pure step over the callbacks, its counting, then
/// the local reply it asked for (after every borrow is released: Envoy
/// re-enters this stream's response hooks synchronously). A panic is
/// contained: 503 `filter_failed`.
fn request_hook(
    c: &Config,
    http: &Http,
    f: FilterPtr,
    hook: Hook,
    step: impl FnOnce(&Compiled, &mut Inner, &mut CallbackHost) -> Verdict,
) -> u32 {
    let _as = host::LogAs::new("e2ee");
    let Some(st) = http.st.as_ref() else {
        host::send_failure(f, "e2ee");
        return status(c, hook, Verdict::Responded);
    };
    let mut d = CallbackHost::new(f, "e2ee");
    d.in_body = matches!(hook, Hook::Body);
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut inner = http.inner.borrow_mut();
        let v = step(&st.cfg, &mut inner, &mut d);
        count_outcome(c, st, &mut inner, &d);
        v
    }));
    match run {
        Ok(v) => {
            if d.send_reply() {
                return status(c, hook, Verdict::Responded);
            }
            status(c, hook, v)
        }
        Err(_) => {
            host::log(4, b"e2ee: panic (contained)");
            host::send_failure(f, "e2ee");
            status(c, hook, Verdict::Responded)
        }
    }
}

pub fn request_headers(c: &Config, http: &Http, f: FilterPtr, eos: bool) -> u32 {
    request_hook(c, http, f, Hook::Headers, |cfg, inner, d| {
        inner.req.on_headers(cfg, d, eos)
    })
}

pub fn request_body(c: &Config, http: &Http, f: FilterPtr, eos: bool) -> u32 {
    request_hook(c, http, f, Hook::Body, |cfg, inner, d| {
        inner.buffered = host::hook_body_size(f, true);
        inner.req.on_body(cfg, d, inner.buffered, eos)
    })
}

pub fn request_trailers(c: &Config, http: &Http, f: FilterPtr) -> u32 {
    request_hook(c, http, f, Hook::Trailers, |cfg, inner, d| {
        inner.req.on_trailers(cfg, d, inner.buffered)
    })
}

/// The glue's `after`: the request's outcome counted once.
fn count_outcome(c: &Config, st: &State, inner: &mut Inner, d: &CallbackHost) {
    if inner.counted || inner.req.outcome == Outcome::Pending {
        return;
    }
    inner.counted = true;
    match inner.req.outcome {
        Outcome::Plain => host::count(c, &[st.id(PLAIN)]),
        Outcome::Decrypted => {
            let mut by = Vec::with_capacity(3);
            if let Some(l) = labelled(st, &inner.req, d, DECRYPTED, None) {
                by.push((l, 1));
            }
            by.push((st.id(DECRYPTED_BYTES), inner.req.plaintext_bytes));
            by.push((st.id(ENCRYPTED_REQUEST_BYTES), inner.req.encrypted_bytes));
            host::count_by(c, &by);
        }
        Outcome::Denied(code) => {
            if let Some(l) = labelled(st, &inner.req, d, DENIED, Some(code)) {
                host::count(c, &[l]);
            }
        }
        Outcome::Off | Outcome::Pending => {}
    }
}

/// The id of labelled counter `name` for this request's gateway and route
/// (the names a denial already read, or two attribute reads).
fn labelled(
    st: &State,
    req: &Request,
    d: &CallbackHost,
    name: &str,
    reason: Option<&str>,
) -> Option<u32> {
    let names = req
        .names
        .clone()
        .unwrap_or_else(|| filter_core::decision::route_names(d));
    st.labelled.id(name, &names, reason)
}

/// The response headers: an answer to a decrypted request, from the
/// upstream, goes back encrypted (the glue's `on_http_response_headers`).
pub fn response_headers(c: &Config, http: &Http, f: FilterPtr, eos: bool) -> u32 {
    let _as = host::LogAs::new("e2ee");
    let Some(st) = http.st.as_ref() else {
        return host::CONTINUE;
    };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut inner = http.inner.borrow_mut();
        let Some((key, salt)) = inner.req.response.take() else {
            return;
        };
        let headers = text_headers(f, RESPONSE_HEADERS);
        // `via_upstream` when the upstream answered; a local reply (a denial
        // by a filter after this one, Envoy's own 503) stays plain.
        let from_upstream = host::property(Some(f), "e2ee", false, CODE_DETAILS)
            .is_some_and(|d| d == b"via_upstream");
        match decide::decide_response_headers(
            &st.cfg,
            &headers,
            key.keyid.len(),
            from_upstream,
            eos,
        ) {
            ResponseStep::Plain => host::count(c, &[st.id(RESPONSES_PLAIN)]),
            ResponseStep::Encrypt(edits) => {
                let Some(enc) = Encoder::new(
                    &key.ikm,
                    salt,
                    st.cfg.response_record_size,
                    key.keyid.as_bytes(),
                ) else {
                    return;
                };
                for n in &edits.remove {
                    envoy::set_header(f, RESPONSE_HEADERS, n.as_bytes(), None);
                }
                for (n, v) in &edits.set {
                    envoy::set_header(f, RESPONSE_HEADERS, n.as_bytes(), Some(v.as_bytes()));
                }
                host::count(c, &[st.id(RESPONSES)]);
                inner.encoder = Some(enc);
            }
        }
    }));
    if run.is_err() {
        host::log(
            4,
            b"e2ee: panic in the response headers (contained); the answer's body is dropped",
        );
        http.failed.set(true);
    }
    host::CONTINUE
}

/// A chunk of the response body: replaced by its records; what is held
/// stays in the encoder until the next chunk or the end.
pub fn response_body(c: &Config, http: &Http, f: FilterPtr, eos: bool) -> u32 {
    let _as = host::LogAs::new("e2ee");
    if http.failed.get() {
        host::replace_body_in(f, false, true, &[]);
        return host::CONTINUE;
    }
    let Some(st) = http.st.as_ref() else {
        return host::CONTINUE;
    };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut inner = http.inner.borrow_mut();
        let Some(enc) = inner.encoder.as_mut() else {
            return;
        };
        let chunk = host::body_in(f, false, true);
        let mut out = Vec::with_capacity(chunk.len() + enc.held() + 64);
        enc.push(&chunk, &mut out);
        if eos {
            if let Some(enc) = inner.encoder.take() {
                let n = usize::try_from(enc.plain_bytes).unwrap_or(usize::MAX);
                host::count_by(c, &[(st.id(RESPONSE_BYTES), n)]);
                enc.finish(&mut out);
            }
        }
        host::replace_body_in(f, false, true, &out);
    }));
    if run.is_err() {
        host::log(
            4,
            b"e2ee: panic in the response body (contained); the rest of the answer is dropped",
        );
        http.failed.set(true);
        host::replace_body_in(f, false, true, &[]);
    }
    host::CONTINUE
}

/// The body ended with trailers: the last record cannot be added here, so
/// the client sees a truncated coding (which RFC 8188 makes detectable).
pub fn response_trailers(c: &Config, http: &Http) -> u32 {
    let _as = host::LogAs::new("e2ee");
    let Some(st) = http.st.as_ref() else {
        return host::CONTINUE;
    };
    let had = http
        .inner
        .try_borrow_mut()
        .ok()
        .and_then(|mut i| i.encoder.take())
        .is_some();
    if had {
        host::count(c, &[st.id(TRUNCATED)]);
        host::log(
            3,
            b"e2ee: an encrypted response ended with trailers; its last record could not be sent",
        );
    }
    host::CONTINUE
}
