//! The path a rule is matched against. Envoy normalises `:path` before the
//! filters run (`normalize_path`, `merge_slashes`, encoded slashes
//! rejected) and sanitize refuses what still looks like a trick; this is the
//! last line: a path that cannot be brought into one unambiguous form is
//! refused here too, so no spelling of `/internal/` can pass as another
//! prefix.

use std::fmt::Write;

/// RFC 3986 unreserved characters, the only ones decoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises the path part of `:path` (no query): percent-encoded
/// unreserved characters decoded, other escapes upper-cased, empty segments
/// merged. `None` (refuse) for anything ambiguous: no leading `/`, a
/// backslash, a control or non-ASCII byte, a bad escape, an encoded `/`,
/// `\` or `%`, or a `.`/`..` segment (also as `..;params`).
pub fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            0x00..=0x20 | 0x7f..=0xff | b'\\' => return None,
            b'%' => {
                let h = b.get(i + 1).copied().and_then(hex)?;
                let l = b.get(i + 2).copied().and_then(hex)?;
                let v = h * 16 + l;
                if unreserved(v) {
                    out.push(char::from(v));
                } else if matches!(v, b'/' | b'\\' | b'%') || v < 0x20 || v == 0x7f {
                    return None;
                } else {
                    let _ = write!(out, "%{v:02X}");
                }
                i += 3;
                continue;
            }
            _ => out.push(char::from(c)),
        }
        i += 1;
    }
    let trailing = out.len() > 1 && out.ends_with('/');
    let mut norm = String::with_capacity(out.len());
    for seg in out.split('/').filter(|s| !s.is_empty()) {
        let bare = seg.split(';').next().unwrap_or("");
        if bare == "." || bare == ".." {
            return None;
        }
        norm.push('/');
        norm.push_str(seg);
    }
    if norm.is_empty() || trailing {
        norm.push('/');
    }
    Some(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_are_unchanged() {
        for p in [
            "/",
            "/partner/v1/billing/",
            "/internal/a/b",
            "/a;x=1/b",
            "/a%20b",
        ] {
            assert_eq!(normalise(p).as_deref(), Some(p), "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_slashes_merged() {
        assert_eq!(normalise("/%69nternal/x").as_deref(), Some("/internal/x"));
        assert_eq!(normalise("//internal//x/").as_deref(), Some("/internal/x/"));
        assert_eq!(normalise("/a%2fb"), None);
        assert_eq!(normalise("/a%3fb").as_deref(), Some("/a%3Fb"));
    }

    #[test]
    fn traversal_tricks_are_refused() {
        for p in [
            "/partner/v1/billing/../../../internal/x",
            "/partner/v1/billing/%2e%2e/%2e%2e/%2e%2e/internal/x",
            "/partner/v1/billing/%2E./x",
            "/partner/v1/billing/..;/..;/..;/internal/x",
            "/partner/v1/billing/.;x/y",
            "/partner/v1/billing/%2f..%2finternal",
            "/partner/v1/billing/%5c..%5cinternal",
            "/partner/v1/billing\\..\\internal",
            "/partner/v1/billing/%252e%252e/internal",
            "/partner/v1/billing/%",
            "/partner/v1/billing/%zz",
            "/a%00",
            "/caf\u{e9}",
            "internal/x",
            "",
        ] {
            assert_eq!(normalise(p), None, "{p:?}");
        }
    }
}
