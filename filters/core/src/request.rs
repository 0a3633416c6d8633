//! The pure decision seam: a filter reads the request from a [`RequestView`]
//! (the header map read once), decides, and returns a [`Decision`]: the
//! header writes, the identity hand-over and, for a denial, the reply. The
//! host adapter applies it with [`Decision::apply`]. A decision function
//! makes no host call, so the same core runs behind every host (one Envoy
//! filter per concern, one per gateway in the chain build, the native
//! build), is tested natively with plain values, and can be fuzzed.

use crate::denial::Denial;
use crate::headers;
use crate::host::{HttpHost, Verdict};
use crate::identity::Identity;
use crate::route::split_path;

/// The request headers as one read of the header map gave them (names
/// lower case, pseudo-headers included), with the ones every filter needs
/// picked out.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub headers: &'a [(String, String)],
    pub method: &'a str,
    /// `:path` as it arrived (query included).
    pub full_path: &'a str,
    pub authority: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

impl<'a> RequestView<'a> {
    /// One pass over the headers.
    pub fn new(headers: &'a [(String, String)]) -> Self {
        let mut v = RequestView {
            headers,
            method: "",
            full_path: "",
            authority: None,
            request_id: None,
        };
        for (n, val) in headers {
            match n.as_str() {
                headers::METHOD => v.method = val,
                headers::PATH => v.full_path = val,
                headers::AUTHORITY => v.authority = Some(val),
                headers::REQUEST_ID => v.request_id = Some(val),
                _ => {}
            }
        }
        v
    }

    /// The path without query or fragment.
    pub fn path(&self) -> &'a str {
        split_path(self.full_path).0
    }

    /// Every value of header `name` (lower case), in order.
    pub fn values(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

/// What a decision asks of the request headers, applied in this order:
/// removals, then replacements, then the identity hand-over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edits {
    /// Header names to remove (every value).
    pub remove: Vec<String>,
    /// Headers to set, replacing every earlier value.
    pub set: Vec<(String, String)>,
    /// The verified identity for the filters after this one.
    pub identity: Option<Identity>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.identity.is_none()
    }

    /// Removes `name` unless it is already listed.
    pub fn remove(&mut self, name: &str) {
        if !self.remove.iter().any(|n| n == name) {
            self.remove.push(name.to_string());
        }
    }

    /// Applies the edits to the host's request headers and filter state.
    pub fn apply<H: HttpHost + ?Sized>(&self, host: &mut H) {
        for n in &self.remove {
            host.remove_request_header(n);
        }
        for (n, v) in &self.set {
            host.set_request_header(n, v);
        }
        if let Some(id) = &self.identity {
            id.publish(host);
        }
    }
}

/// A filter's decision on the request headers.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Pass the request on, after the edits.
    Continue(Edits),
    /// Refuse it: the edits that were due before the refusal (a header
    /// strip that applies to every request) and the reply.
    Deny(Edits, Denial),
}

impl Decision {
    /// Applies the decision through the host: edits, then, for a denial,
    /// the local reply (which echoes `request_id`).
    pub fn apply<H: HttpHost + ?Sized>(&self, host: &mut H, request_id: Option<&str>) -> Verdict {
        match self {
            Decision::Continue(e) => {
                e.apply(host);
                Verdict::Continue
            }
            Decision::Deny(e, d) => {
                e.apply(host);
                d.send(host, request_id);
                Verdict::Responded
            }
        }
    }

    /// The denial, if any.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Deny(_, d) => Some(d),
            Decision::Continue(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::identity::Source;

    #[test]
    fn a_view_picks_the_common_headers_out_in_one_pass() {
        let h = FakeHost::request("POST", "/a/b?x=1").with_header("x-a", "1");
        let v = RequestView::new(&h.headers);
        assert_eq!(
            (v.method, v.full_path, v.path()),
            ("POST", "/a/b?x=1", "/a/b")
        );
        assert_eq!(v.authority, Some("gateway.test"));
        assert_eq!(v.request_id, Some("test-rid"));
        assert!(v.has("x-a") && !v.has("x-b"));
        assert_eq!(v.values("x-a").collect::<Vec<_>>(), vec!["1"]);
    }

    #[test]
    fn applying_a_decision_edits_then_replies() {
        let mut h = FakeHost::request("GET", "/").with_header("x-drop", "1");
        let mut e = Edits::default();
        e.remove("x-drop");
        e.remove("x-drop");
        e.set.push(("x-user-id".into(), "u".into()));
        let mut id = Identity::new(Source::Jwt);
        id.user = Some("u".into());
        e.identity = Some(id);
        assert_eq!(e.remove.len(), 1);
        let v = Decision::Continue(e.clone()).apply(&mut h, Some("rid"));
        assert_eq!(v, Verdict::Continue);
        assert_eq!(h.header("x-drop"), None);
        assert_eq!(h.header("x-user-id"), Some("u"));
        assert_eq!(
            Identity::read(&h).and_then(|i| i.user).as_deref(),
            Some("u")
        );
        let d = Decision::Deny(Edits::default(), Denial::forbidden("no", "no"));
        assert_eq!(d.apply(&mut h, Some("rid")), Verdict::Responded);
        assert_eq!(h.response.map(|r| r.status), Some(403));
    }
}
