//! Defence in depth on the request path. Envoy has already normalised it;
//! anything below that still reaches the filter is a trick aimed at an
//! upstream that decodes or splits paths differently, and is refused.

use filter_core::Denial;

use crate::config::PathRules;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn invalid(msg: &'static str) -> Denial {
    Denial::bad_request("invalid_path", msg)
}

/// Checks the path part of `:path` (no query). `full_len` is the length of
/// the whole `:path`, query included.
pub fn check(path: &str, full_len: usize, rules: &PathRules) -> Result<(), Denial> {
    if full_len > rules.max_length {
        // 400 rather than 414: the contract's denials are 400/401/403/413/503.
        return Err(Denial::bad_request(
            "uri_too_long",
            "the request URI is too long",
        ));
    }
    if !path.starts_with('/') {
        return Err(invalid("the path must start with '/'"));
    }
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b.get(i).copied().unwrap_or(0);
        match c {
            0x00..=0x1f | 0x7f..=0xff => {
                return Err(invalid("the path contains a control or non-ASCII byte"))
            }
            b'\\' => return Err(invalid("the path contains a backslash")),
            b';' if rules.reject_semicolon => return Err(invalid("the path contains ';'")),
            b'%' => {
                let (h, l) = (b.get(i + 1).copied(), b.get(i + 2).copied());
                let v = match (h.and_then(hex), l.and_then(hex)) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(invalid("the path has an invalid percent-encoding")),
                };
                match v {
                    b'/' | b'\\' => {
                        return Err(invalid("the path contains an encoded slash or backslash"))
                    }
                    0x00..=0x1f | 0x7f => {
                        return Err(invalid("the path contains an encoded control character"))
                    }
                    // "%25" followed by an encoded separator or dot: a double encoding.
                    b'%' => {
                        let rest = b.get(i + 3..i + 5).unwrap_or(&[]);
                        if let [h2, l2] = rest {
                            if let (Some(h2), Some(l2)) = (hex(*h2), hex(*l2)) {
                                if matches!(h2 * 16 + l2, b'.' | b'/' | b'\\' | b'%') {
                                    return Err(invalid(
                                        "the path contains a double-encoded character",
                                    ));
                                }
                            }
                        }
                    }
                    _ => {}
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    for seg in path.split('/').skip(1) {
        // A segment's dot-ness once decoded, with matrix parameters removed
        // (`..;jsessionid=x` is `..` to Tomcat and friends).
        let bare = seg.split(';').next().unwrap_or("");
        let decoded = bare.replace("%2e", ".").replace("%2E", ".");
        if decoded == "." || decoded == ".." {
            return Err(invalid("the path contains a dot-segment"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> bool {
        check(p, p.len(), &PathRules::default()).is_ok()
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "/api/v1/users/42",
            "/a/b.c/d..e/%41%20b",
            "/files/report.v2.json",
        ] {
            assert!(ok(p), "{p}");
        }
    }

    #[test]
    fn encoded_and_literal_traversal_is_refused() {
        for p in [
            "/api/../internal",
            "/api/./x",
            "/api/%2e%2e/internal",
            "/api/%2E./internal",
            "/api/.%2e",
            "/api/..;/internal",
            "/api/..;jsessionid=1/internal",
            "/api/%2fetc",
            "/api/%5Cetc",
            "/api\\..\\internal",
            "/api/%252e%252e/internal",
            "/api/%252F",
        ] {
            assert!(!ok(p), "{p}");
        }
    }

    #[test]
    fn control_characters_and_bad_escapes_are_refused() {
        for p in [
            "/a\u{1}b",
            "/a%00",
            "/a%0d%0aSet-Cookie",
            "/a%zz",
            "/a%4",
            "/a%",
            "/caf\u{e9}",
        ] {
            assert!(!ok(p), "{p:?}");
        }
    }

    #[test]
    fn long_uri_is_400_and_semicolons_are_refused_unless_allowed() {
        let long = format!("/{}", "a".repeat(5000));
        let d = check(&long, long.len(), &PathRules::default()).unwrap_err();
        assert_eq!((d.status, d.code), (400, "uri_too_long"));
        assert!(check("/api/v1/orders;x=1", 18, &PathRules::default()).is_err());
        let lenient = PathRules {
            reject_semicolon: false,
            ..PathRules::default()
        };
        assert!(check("/a;b", 4, &lenient).is_ok());
        assert!(check("/a/..;/b", 8, &lenient).is_err());
    }
}
