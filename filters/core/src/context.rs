//! The chain build's request context: ONE per request, shared by every
//! filter of a gateway that runs as one Envoy filter (filters/chain).
//!
//! Each filter keeps talking to its host through [`HttpHost`]; inside the
//! chain that host is a [`RequestContext`] in front of the real one
//! ([`RequestContext::host`]), which
//! * reads the request header map once (on the first header read) and
//!   serves every later read from that copy, with the chain's own edits
//!   applied to it, so each filter sees exactly what the filters before it
//!   left (sanitize's rewrites before jwt, jwt's edits before passport);
//! * keeps header writes in the copy and applies them together
//!   ([`RequestContext::flush`]) before the request goes on or a local
//!   reply leaves, either as the fewest single-header calls (the names
//!   written since the last flush whose values differ from what the host
//!   has) or as one replacement of the whole map ([`HeaderWrites`]);
//! * keeps the values filters hand each other through filter state (the
//!   verified identity, the client's original `:path` and body) in VM
//!   memory ([`LOCAL_PROPERTIES`]), unless the chain is told to export one
//!   for readers outside it (access logs);
//! * reads the clock once per callback ([`RequestContext::begin_callback`])
//!   and host properties that cannot change during a request (the client
//!   address, the route and virtual host names) once per request.
//!
//! Everything here is plain Rust; the wasm side (filter_core::proxy) only
//! installs the context for the request being served.

use std::cell::{Cell, RefCell};
use std::time::SystemTime;

use crate::host::HttpHost;
use crate::identity;
use crate::original;

/// Filter-state paths the chain's filters hand each other. Inside the chain
/// they stay in VM memory: nothing outside the chain reads them unless the
/// chain exports them ([`RequestContext::export`]).
pub const LOCAL_PROPERTIES: [&str; 3] = [
    identity::PROPERTY,
    original::PATH_PROPERTY,
    original::BODY_PROPERTY,
];

/// Host properties whose value is fixed for the life of a request (the
/// connection's addresses, the matched route): read once per request.
const STABLE_PREFIXES: [&str; 4] = ["source", "destination", "connection", "xds"];

/// How the collected header writes reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderWrites {
    /// One call per changed header name (remove, replace, or remove and
    /// add each value): the fewest single-header calls.
    #[default]
    Each,
    /// One replacement of the whole request header map.
    Map,
}

/// The per-request context of the chain build.
#[derive(Debug, Default)]
pub struct RequestContext {
    /// The header map has been read (into `current`).
    loaded: Cell<bool>,
    /// The header map as the filters left it so far.
    current: RefCell<Vec<(String, String)>>,
    /// The header names written since the last flush, each with its values
    /// as they were at the last flush (what the host has): the flush writes
    /// the names whose values differ, without keeping a second copy of the
    /// whole map.
    touched: RefCell<Vec<(String, Vec<String>)>>,
    /// A write happened since the last flush.
    dirty: bool,
    /// Values of [`LOCAL_PROPERTIES`] set by the chain's filters.
    local: Vec<(String, Vec<u8>)>,
    /// Stable host properties read so far (None: the host had none).
    memo: RefCell<Vec<(String, Option<Vec<u8>>)>>,
    /// The clock of the current callback.
    now: Cell<Option<SystemTime>>,
    /// A local reply has been sent.
    responded: bool,
    /// The length of the body a filter put in place of the request body
    /// (e2ee's plaintext, sanitize's rewrite), until the chain hands it to
    /// the filters after it ([`RequestContext::take_replaced_body`]).
    replaced_body: Option<usize>,
    writes: HeaderWrites,
    /// Local properties also written to Envoy's filter state.
    export: Vec<String>,
}

fn path_key(path: &[&str]) -> String {
    path.join(".")
}

impl RequestContext {
    pub fn new(writes: HeaderWrites, export: Vec<String>) -> Self {
        RequestContext {
            writes,
            export,
            ..RequestContext::default()
        }
    }

    /// A new callback of the request: the clock is read again (once).
    pub fn begin_callback(&mut self) {
        self.now.set(None);
    }

    /// Whether a filter has sent a local reply.
    pub fn responded(&self) -> bool {
        self.responded
    }

    /// The new length of the request body if a filter replaced it since
    /// the last call: the size the filters after it get, as Envoy would
    /// give separate filters.
    pub fn take_replaced_body(&mut self) -> Option<usize> {
        self.replaced_body.take()
    }

    /// Whether header writes wait for [`RequestContext::flush`].
    pub fn has_pending_writes(&self) -> bool {
        self.dirty
    }

    /// The context as the [`HttpHost`] the filters see, in front of `raw`.
    pub fn host<'a, H: HttpHost + ?Sized>(&'a mut self, raw: &'a mut H) -> ContextHost<'a, H> {
        ContextHost { ctx: self, raw }
    }

    fn load<H: HttpHost + ?Sized>(&self, raw: &H) {
        if !self.loaded.get() {
            *self.current.borrow_mut() = raw.request_headers();
            self.loaded.set(true);
        }
    }

    /// Remembers the values `name` has in the host (as of the last flush)
    /// before its first write since then.
    fn touch(&self, name: &str) {
        let mut touched = self.touched.borrow_mut();
        if touched.iter().any(|(n, _)| n == name) {
            return;
        }
        let was = self
            .current
            .borrow()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect();
        touched.push((name.to_string(), was));
    }

    /// Applies the collected header writes to `raw` (nothing to do: no host
    /// call).
    pub fn flush<H: HttpHost + ?Sized>(&mut self, raw: &mut H) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let touched = self.touched.take();
        let current = self.current.borrow();
        match self.writes {
            HeaderWrites::Map => raw.set_request_headers(&current),
            HeaderWrites::Each => {
                // Only the names written since the last flush, compared in
                // place with what the host has: writes that cancel out cost
                // no call, and no copy of the map is kept for the diff.
                for (name, was) in &touched {
                    let now: Vec<&str> = current
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .collect();
                    if was.iter().map(String::as_str).eq(now.iter().copied()) {
                        continue;
                    }
                    match now.as_slice() {
                        [] => raw.remove_request_header(name),
                        [one] => raw.set_request_header(name, one),
                        many => {
                            raw.remove_request_header(name);
                            for v in many {
                                raw.add_request_header(name, v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`RequestContext`] in front of the real host `raw`: what each filter of
/// the chain gets as its [`HttpHost`].
pub struct ContextHost<'a, H: HttpHost + ?Sized> {
    ctx: &'a mut RequestContext,
    raw: &'a mut H,
}

impl<H: HttpHost + ?Sized> HttpHost for ContextHost<'_, H> {
    fn request_headers(&self) -> Vec<(String, String)> {
        self.ctx.load(&*self.raw);
        self.ctx.current.borrow().clone()
    }

    fn request_header(&self, name: &str) -> Option<String> {
        if !self.ctx.loaded.get() {
            // One header before anyone needed the map: one read of it alone.
            return self.raw.request_header(name);
        }
        // Envoy answers a single-header read with the first value.
        self.ctx
            .current
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.ctx.load(&*self.raw);
        self.ctx.touch(name);
        let mut cur = self.ctx.current.borrow_mut();
        match cur.iter().position(|(n, _)| n == name) {
            Some(i) => {
                // Envoy's replace keeps the first entry's place and drops the others.
                if let Some(slot) = cur.get_mut(i) {
                    slot.1 = value.to_string();
                }
                let mut seen = 0usize;
                cur.retain(|(n, _)| {
                    if n == name {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => cur.push((name.to_string(), value.to_string())),
        }
        drop(cur);
        self.ctx.dirty = true;
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        self.ctx.load(&*self.raw);
        self.ctx.touch(name);
        self.ctx
            .current
            .borrow_mut()
            .push((name.to_string(), value.to_string()));
        self.ctx.dirty = true;
    }

    fn remove_request_header(&mut self, name: &str) {
        self.ctx.load(&*self.raw);
        if !self.ctx.current.borrow().iter().any(|(n, _)| n == name) {
            return;
        }
        self.ctx.touch(name);
        let mut cur = self.ctx.current.borrow_mut();
        let before = cur.len();
        cur.retain(|(n, _)| n != name);
        let changed = cur.len() != before;
        drop(cur);
        if changed {
            self.ctx.dirty = true;
        }
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.raw.request_body(size)
    }

    fn replace_request_body(&mut self, body: &[u8]) {
        self.ctx.replaced_body = Some(body.len());
        self.raw.replace_request_body(body);
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.ctx.flush(self.raw);
        self.ctx.responded = true;
        self.raw.send_response(status, headers, body);
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path_key(path);
        if LOCAL_PROPERTIES.contains(&key.as_str()) {
            return self
                .ctx
                .local
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone());
        }
        if !is_stable(path) {
            return self.raw.property(path);
        }
        if let Some((_, v)) = self.ctx.memo.borrow().iter().find(|(k, _)| *k == key) {
            return v.clone();
        }
        let v = self.raw.property(path);
        self.ctx.memo.borrow_mut().push((key, v.clone()));
        v
    }

    fn set_property(&mut self, path: &[&str], value: &[u8]) {
        let key = path_key(path);
        if LOCAL_PROPERTIES.contains(&key.as_str()) {
            self.ctx.local.retain(|(k, _)| *k != key);
            self.ctx.local.push((key.clone(), value.to_vec()));
            if !self.ctx.export.contains(&key) {
                return;
            }
        }
        self.raw.set_property(path, value);
    }

    fn now(&self) -> SystemTime {
        if let Some(t) = self.ctx.now.get() {
            return t;
        }
        let t = self.raw.now();
        self.ctx.now.set(Some(t));
        t
    }

    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        self.ctx.load(&*self.raw);
        let names: Vec<String> = self
            .ctx
            .current
            .borrow()
            .iter()
            .chain(headers.iter())
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            self.ctx.touch(n);
        }
        *self.ctx.current.borrow_mut() = headers.to_vec();
        self.ctx.dirty = true;
    }
}

/// Whether `path` is read once per request ([`STABLE_PREFIXES`]).
pub fn is_stable(path: &[&str]) -> bool {
    path.first().is_some_and(|p| STABLE_PREFIXES.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::identity::{Identity, Source};

    fn req() -> FakeHost {
        FakeHost::request("GET", "/a?size=500")
            .with_header("x-drop", "1")
            .with_header("x-multi", "a")
            .with_header("x-multi", "b")
    }

    #[test]
    fn the_header_map_is_read_once_and_reads_see_earlier_writes() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        {
            let mut h = ctx.host(&mut raw);
            let all = h.request_headers();
            assert_eq!(all.len(), 7);
            h.remove_request_header("x-drop");
            h.set_request_header(":path", "/a?size=100");
            h.set_request_header("x-user", "u");
            assert_eq!(h.request_header("x-drop"), None);
            assert_eq!(h.request_header(":path").as_deref(), Some("/a?size=100"));
            // A single read answers the first value, as Envoy does.
            assert_eq!(h.request_header("x-multi").as_deref(), Some("a"));
            assert!(h
                .request_headers()
                .iter()
                .any(|(n, v)| n == "x-user" && v == "u"));
        }
        // One host call so far: the map read; nothing written yet.
        assert_eq!(raw.calls.get(), 1);
        assert_eq!(raw.header("x-drop"), Some("1"));
        assert!(ctx.has_pending_writes());
        ctx.flush(&mut raw);
        // The fewest calls: one remove, two sets.
        assert_eq!(raw.calls.get(), 4);
        assert_eq!(raw.header("x-drop"), None);
        assert_eq!(raw.header(":path"), Some("/a?size=100"));
        assert_eq!(raw.header("x-user"), Some("u"));
        ctx.flush(&mut raw);
        assert_eq!(raw.calls.get(), 4, "nothing new to write");
    }

    #[test]
    fn a_replaced_body_reports_its_new_length_once() {
        let mut raw = FakeHost::request("POST", "/a").with_body(b"ciphertext-bytes");
        let mut ctx = RequestContext::default();
        assert_eq!(ctx.take_replaced_body(), None);
        ctx.host(&mut raw).replace_request_body(b"plain");
        assert_eq!(raw.body, b"plain");
        assert_eq!(ctx.take_replaced_body(), Some(5));
        assert_eq!(ctx.take_replaced_body(), None);
    }

    #[test]
    fn writes_that_cancel_out_cost_no_call() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        {
            let mut h = ctx.host(&mut raw);
            h.set_request_header("x-tmp", "1");
            h.remove_request_header("x-tmp");
            h.set_request_header("x-drop", "1");
        }
        ctx.flush(&mut raw);
        assert_eq!(raw.calls.get(), 1);
    }

    #[test]
    fn each_flush_writes_against_what_the_host_has_then() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        ctx.host(&mut raw).set_request_header("x-drop", "2");
        ctx.flush(&mut raw);
        assert_eq!((raw.calls.get(), raw.header("x-drop")), (2, Some("2")));
        // Back to the value of the first read: the host has "2" now.
        ctx.host(&mut raw).set_request_header("x-drop", "1");
        // Removing a header that is not there is no write at all.
        ctx.host(&mut raw).remove_request_header("x-none");
        ctx.flush(&mut raw);
        assert_eq!((raw.calls.get(), raw.header("x-drop")), (3, Some("1")));
    }

    #[test]
    fn a_whole_map_set_by_a_filter_is_written_by_name() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        {
            let mut h = ctx.host(&mut raw);
            let mut all = h.request_headers();
            all.retain(|(n, _)| n != "x-drop");
            all.push(("x-new".into(), "n".into()));
            h.set_request_headers(&all);
        }
        ctx.flush(&mut raw);
        // the read, one remove, one set
        assert_eq!(raw.calls.get(), 3);
        assert_eq!(
            (raw.header("x-drop"), raw.header("x-new")),
            (None, Some("n"))
        );
        assert_eq!(raw.header("x-multi"), Some("a"));
    }

    #[test]
    fn a_replaced_multi_value_header_keeps_one_value() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        ctx.host(&mut raw).set_request_header("x-multi", "c");
        ctx.flush(&mut raw);
        let vals: Vec<_> = raw
            .headers
            .iter()
            .filter(|(n, _)| n == "x-multi")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(vals, vec!["c"]);
    }

    #[test]
    fn added_values_are_written_by_name() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        ctx.host(&mut raw).add_request_header("x-multi", "c");
        ctx.flush(&mut raw);
        let vals: Vec<_> = raw
            .headers
            .iter()
            .filter(|(n, _)| n == "x-multi")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(vals, vec!["a", "b", "c"]);
    }

    #[test]
    fn the_map_mode_writes_the_whole_map_once() {
        let mut raw = req();
        let mut ctx = RequestContext::new(HeaderWrites::Map, Vec::new());
        {
            let mut h = ctx.host(&mut raw);
            h.remove_request_header("x-drop");
            h.set_request_header("x-a", "1");
            h.set_request_header("x-b", "2");
        }
        ctx.flush(&mut raw);
        assert_eq!(raw.calls.get(), 2);
        assert_eq!(raw.header("x-drop"), None);
        assert_eq!(
            (raw.header("x-a"), raw.header("x-b")),
            (Some("1"), Some("2"))
        );
    }

    #[test]
    fn a_local_reply_applies_the_writes_first() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        {
            let mut h = ctx.host(&mut raw);
            h.remove_request_header("x-drop");
            h.send_response(403, &[], b"{}");
        }
        assert!(ctx.responded());
        assert_eq!(raw.header("x-drop"), None);
        assert_eq!(raw.response.as_ref().map(|r| r.status), Some(403));
    }

    #[test]
    fn the_identity_and_the_originals_stay_in_vm_memory() {
        let mut raw = req();
        let mut ctx = RequestContext::default();
        {
            let mut h = ctx.host(&mut raw);
            assert_eq!(Identity::read(&h), None);
            let mut id = Identity::new(Source::Jwt);
            id.user = Some("u1".into());
            id.publish(&mut h);
            original::save_path(&mut h, "/orig");
            assert_eq!(
                Identity::read(&h).and_then(|i| i.user).as_deref(),
                Some("u1")
            );
            assert_eq!(original::path(&h).as_deref(), Some("/orig"));
        }
        assert_eq!(raw.calls.get(), 0, "no host call for the hand-over");
        assert!(raw.properties.is_empty());
    }

    #[test]
    fn an_exported_identity_also_reaches_filter_state() {
        let mut raw = req();
        let mut ctx = RequestContext::new(HeaderWrites::Each, vec![identity::PROPERTY.into()]);
        let mut id = Identity::new(Source::Mtls);
        id.san = Some("spiffe://x".into());
        id.publish(&mut ctx.host(&mut raw));
        assert_eq!(Identity::read(&raw), Some(id));
    }

    #[test]
    fn stable_properties_and_the_clock_are_served_from_memory() {
        let mut raw = req().with_property(&["source", "address"], b"10.0.0.1:5");
        let mut ctx = RequestContext::default();
        assert!(is_stable(&["xds", "route_name"]));
        assert!(!is_stable(&["response", "code"]));
        let v = ctx.host(&mut raw).property(&["source", "address"]);
        assert_eq!(v.as_deref(), Some(&b"10.0.0.1:5"[..]));
        let calls = raw.calls.get();
        let again = ctx.host(&mut raw).property(&["source", "address"]);
        assert_eq!(again, v);
        assert_eq!(ctx.host(&mut raw).property(&["xds", "route_name"]), None);
        assert_eq!(ctx.host(&mut raw).property(&["xds", "route_name"]), None);
        assert_eq!(raw.calls.get(), calls + 1, "one read per stable property");
        ctx.host(&mut raw).property(&["response", "code"]);
        ctx.host(&mut raw).property(&["response", "code"]);
        assert_eq!(raw.calls.get(), calls + 3, "others are read each time");
        raw.time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(7);
        let t = ctx.host(&mut raw).now();
        raw.time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(8);
        assert_eq!(ctx.host(&mut raw).now(), t, "one clock per callback");
        ctx.begin_callback();
        assert_ne!(ctx.host(&mut raw).now(), t);
    }
}
