//! What the client originally sent, for a verifier that runs after a filter
//! that rewrites the request.
//!
//! sanitize runs first on every gateway and may rewrite the query (clamps)
//! and the JSON body (unknown fields stripped, re-encoded). A request
//! signature (replay-guard) covers what the client sent, so before such a
//! rewrite sanitize stores the original `:path` / body in Envoy filter state
//! (`wasm.original_path`, `wasm.original_body`), which no client can write;
//! the verifier reads them back and falls back to the current request when
//! nothing was rewritten.

use crate::host::HttpHost;

/// Filter-state path of the `:path` as the client sent it.
pub const PATH_PROPERTY: &str = "original_path";
/// Filter-state path of the body as the client sent it.
pub const BODY_PROPERTY: &str = "original_body";

/// Stores the client's `:path` before a rewrite.
pub fn save_path<H: HttpHost + ?Sized>(host: &mut H, path: &str) {
    host.set_property(&[PATH_PROPERTY], path.as_bytes());
}

/// Stores the client's body before a rewrite.
pub fn save_body<H: HttpHost + ?Sized>(host: &mut H, body: &[u8]) {
    host.set_property(&[BODY_PROPERTY], body);
}

/// The client's `:path`, when a filter before rewrote it.
pub fn path<H: HttpHost + ?Sized>(host: &H) -> Option<String> {
    host.property(&[PATH_PROPERTY])
        .filter(|b| !b.is_empty())
        .and_then(|b| String::from_utf8(b).ok())
}

/// The client's body, when a filter before rewrote it.
pub fn body<H: HttpHost + ?Sized>(host: &H) -> Option<Vec<u8>> {
    host.property(&[BODY_PROPERTY])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    #[test]
    fn saved_originals_read_back_and_absent_means_none() {
        let mut h = FakeHost::new();
        assert_eq!(path(&h), None);
        assert_eq!(body(&h), None);
        save_path(&mut h, "/a?b=1");
        save_body(&mut h, b"{}");
        assert_eq!(path(&h).as_deref(), Some("/a?b=1"));
        assert_eq!(body(&h).as_deref(), Some(&b"{}"[..]));
    }
}
