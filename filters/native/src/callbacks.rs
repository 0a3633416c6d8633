//! What the filters served straight on the dynamic-module callbacks share
//! (crate::e2ee_direct, shipped; crate::direct, a bench experiment): the
//! [`HttpHost`] their pure request paths run over, per-thread state per
//! configuration, and labelled counters by name. No proxy-wasm encodings,
//! no SDK dispatcher, no context.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use filter_core::decision::RouteNames;
use filter_core::HttpHost;

use crate::ffi::{envoy, FilterPtr};
use crate::host::{self, Config, REQUEST_HEADERS};

/// A local reply: status, headers, body.
pub type Reply = (u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

/// The request as a filter's pure path sees it, straight over the callbacks.
pub struct CallbackHost {
    pub f: FilterPtr,
    /// The filter name its property reads go out as (`root_id`).
    pub filter: &'static str,
    /// Inside the request body hook: the body is what is buffered plus what
    /// arrived (elsewhere, what is buffered).
    pub in_body: bool,
    /// A local reply asked for, sent once the filter's code has returned
    /// ([`CallbackHost::send_reply`]): Envoy re-enters the stream's response
    /// hooks synchronously, which must not meet a borrowed state.
    pub reply: Option<Reply>,
}

impl CallbackHost {
    pub fn new(f: FilterPtr, filter: &'static str) -> Self {
        CallbackHost {
            f,
            filter,
            in_body: false,
            reply: None,
        }
    }

    /// Sends the local reply asked for, if any: whether there was one.
    pub fn send_reply(&mut self) -> bool {
        match self.reply.take() {
            Some((status, headers, body)) => {
                envoy::send_response(self.f, u32::from(status), &headers, &body, b"");
                true
            }
            None => false,
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Header map `kind` as text pairs (one copy out of Envoy's storage).
pub fn text_headers(f: FilterPtr, kind: u32) -> Vec<(String, String)> {
    envoy::with_headers(f, kind, |pairs| {
        pairs.iter().map(|(k, v)| (lossy(k), lossy(v))).collect()
    })
}

impl HttpHost for CallbackHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        text_headers(self.f, REQUEST_HEADERS)
    }
    fn request_header(&self, name: &str) -> Option<String> {
        host::joined(envoy::header_values(
            self.f,
            REQUEST_HEADERS,
            name.as_bytes(),
        ))
        .map(|v| lossy(&v))
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        envoy::set_header(
            self.f,
            REQUEST_HEADERS,
            name.as_bytes(),
            Some(value.as_bytes()),
        );
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        envoy::add_header(self.f, REQUEST_HEADERS, name.as_bytes(), value.as_bytes());
    }
    fn remove_request_header(&mut self, name: &str) {
        envoy::set_header(self.f, REQUEST_HEADERS, name.as_bytes(), None);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        let mut b = host::body_in(self.f, true, self.in_body);
        b.truncate(size);
        Some(b)
    }
    fn replace_request_body(&mut self, body: &[u8]) {
        host::replace_body_in(self.f, true, self.in_body, body);
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        self.reply = Some((status, headers, body.to_vec()));
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let segments: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
        host::property(Some(self.f), self.filter, false, &segments)
    }
    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        let segments: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
        host::set_filter_state_property(self.f, &segments, value);
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Per worker thread: configuration address → (configuration, that
/// thread's state of type `T`), as a filter's glue keeps per VM.
pub struct PerThread<T>(RefCell<Entries<T>>);

/// Configuration address → (configuration, state).
type Entries<T> = HashMap<usize, (Weak<Config>, Rc<T>)>;

impl<T> Default for PerThread<T> {
    fn default() -> Self {
        PerThread(RefCell::new(HashMap::new()))
    }
}

impl<T> PerThread<T> {
    /// This thread's state for `c`, made by `make` the first time (`None`:
    /// it could not be, logged by `make`). Entries of destroyed
    /// configurations are dropped when a new one is made.
    pub fn get(&self, c: &Arc<Config>, make: impl FnOnce() -> Option<T>) -> Option<Rc<T>> {
        let key = Arc::as_ptr(c) as usize;
        if let Some((_, s)) = self.0.borrow().get(&key) {
            return Some(s.clone());
        }
        let s = Rc::new(make()?);
        let mut m = self.0.borrow_mut();
        m.retain(|_, (w, _)| w.strong_count() > 0);
        m.insert(key, (Arc::downgrade(c), s.clone()));
        Some(s)
    }
}

/// Labelled counter ids by full name, per worker and configuration
/// (bounded: `MAX_TAGGED_METRICS` names, then the bare name).
#[derive(Default)]
pub struct Labelled(RefCell<HashMap<String, u32>>);

impl Labelled {
    /// The id of counter `name` labelled with `names` (and `reason`).
    pub fn id(&self, name: &str, names: &RouteNames, reason: Option<&str>) -> Option<u32> {
        let mut tags = vec![
            ("gateway", names.gateway.as_str()),
            ("route", names.route.as_str()),
        ];
        if let Some(r) = reason {
            tags.push(("reason", r));
        }
        let full = filter_core::metrics::tagged(name, &tags);
        let mut m = self.0.borrow_mut();
        if let Some(id) = m.get(&full) {
            return Some(*id);
        }
        let key = if m.len() >= filter_core::metrics::MAX_TAGGED_METRICS {
            name.to_string()
        } else {
            full
        };
        if let Some(id) = m.get(&key) {
            return Some(*id);
        }
        let id = host::counter_id(&key)?;
        m.insert(key, id);
        Some(id)
    }
}
