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
    // An escape of a byte >= 0x80: the decoded path must then be UTF-8.
    let mut high = false;
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
                    // `%3B` is `;` to an upstream that decodes before it
                    // splits matrix parameters off.
                    b';' if rules.reject_semicolon => {
                        return Err(invalid("the path contains an encoded ';'"))
                    }
                    0x80..=0xff => high = true,
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
    // Overlong forms (`%c0%ae` for `.`), lone continuation bytes, encoded
    // surrogates: a lax decoder turns them into separators or dots.
    if high
        && percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .is_err()
    {
        return Err(invalid(
            "the path has a percent-encoded sequence that is not UTF-8",
        ));
    }
    for seg in path.split('/').skip(1) {
        // A segment's dot-ness once decoded, with matrix parameters removed
        // (`..;jsessionid=x` is `..` to Tomcat and friends).
        let bare = filter_core::route::segment_without_params(seg);
        let decoded = bare.replace("%2e", ".").replace("%2E", ".");
        if decoded == "." || decoded == ".." {
            return Err(invalid("the path contains a dot-segment"));
        }
        if rules.reject_ambiguous_segments && ambiguous(&decoded) {
            return Err(invalid(
                "a path segment ends with '.' or begins or ends with a space",
            ));
        }
    }
    Ok(())
}

/// A route prefix whose letter case is part of its identity
/// (`path.case_sensitive_prefixes`, every `routes[].prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseGuard {
    /// The prefix as configured.
    exact: String,
    /// The same, case-folded ([`filter_core::route::fold_case`]).
    folded: String,
}

impl CaseGuard {
    /// Adds `prefix` to `guards` unless it is there already.
    pub fn push_new(guards: &mut Vec<CaseGuard>, prefix: &str) {
        if guards.iter().all(|g| g.exact != prefix) {
            guards.push(CaseGuard {
                exact: prefix.to_string(),
                folded: filter_core::route::fold_case(prefix),
            });
        }
    }

    pub fn prefix(&self) -> &str {
        &self.exact
    }
}

/// The guard whose route `path` (no query, already through [`check`])
/// reaches only when letter case and percent-encoding are ignored: such a
/// path would meet none of the route's rules at the gateway and still reach
/// the route's handler upstream if that one folds case or decodes the path
/// before it matches. A path under a guard's exact prefix is never refused
/// (`/api/v1/users/ABC` is `/api/v1/users`'s).
pub fn case_variant<'g>(path: &str, guards: &'g [CaseGuard]) -> Option<&'g CaseGuard> {
    use filter_core::route::{case_folded, may_fold, prefix_matches};
    // The common path: lower case, nothing encoded. It folds to itself, so
    // only a guard with an upper-case letter can be a case variant of it.
    if !may_fold(path) {
        return guards
            .iter()
            .filter(|g| g.exact != g.folded)
            .find(|g| prefix_matches(&g.folded, path) && !prefix_matches(&g.exact, path));
    }
    let folded = case_folded(path);
    guards
        .iter()
        .find(|g| prefix_matches(&g.folded, &folded) && !prefix_matches(&g.exact, path))
}

/// A segment some servers read as another one: a trailing dot (Windows and
/// IIS drop it; `users.` is `users`) or an encoded space at either end
/// (trimmed by path matchers that trim tokens).
fn ambiguous(seg: &str) -> bool {
    let space = |s: &str| s.eq_ignore_ascii_case("%20");
    seg.ends_with('.')
        || seg.get(..3).is_some_and(space)
        || seg.len() >= 3 && seg.get(seg.len() - 3..).is_some_and(space)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guards(prefixes: &[&str]) -> Vec<CaseGuard> {
        let mut g = Vec::new();
        for p in prefixes {
            CaseGuard::push_new(&mut g, p);
        }
        g
    }

    fn variant_of(path: &str, g: &[CaseGuard]) -> Option<String> {
        case_variant(path, g).map(|g| g.prefix().to_string())
    }

    #[test]
    fn a_path_that_matches_a_route_only_when_case_is_ignored_is_a_case_variant() {
        let g = guards(&[
            "/health",
            "/api/",
            "/api/v1/orders",
            "/api/v1/transfers",
            "/api/v1/keys",
        ]);
        for p in [
            "/api/v1/Orders",
            "/api/v1/ORDERS/7",
            "/api/V1/orders",
            "/API/v1/transfers",
            "/Api/anything",
            "/HEALTH",
            "/api/v1/%6Frders",
            "/api/v1/%4Frders",
            "/api/v1/transfer%73",
            // Unicode case folding: the long s and the Kelvin sign.
            "/api/v1/tran%C5%BFfers",
            "/api/v1/%E2%84%AAeys",
        ] {
            assert!(variant_of(p, &g).is_some(), "{p} should be refused");
        }
    }

    #[test]
    fn paths_under_a_guarded_prefix_as_written_or_under_none_pass() {
        let g = guards(&["/health", "/api/", "/api/v1/orders", "/api/v1/Accounts"]);
        for p in [
            "/api/v1/orders",
            "/api/v1/orders/ABC",
            "/api/v1/users/Bob",
            "/health",
            "/Other/Thing",
            "/api/v1/Accounts/7",
            "/api/v1/ordersX",
            "/caf%C3%A9",
        ] {
            assert_eq!(variant_of(p, &g), None, "{p} should pass");
        }
        // A guard with upper case is guarded on the lower-case path too.
        assert_eq!(
            variant_of("/api/v1/accounts/7", &g).as_deref(),
            Some("/api/v1/Accounts")
        );
    }

    #[test]
    fn no_guards_refuse_nothing() {
        assert_eq!(variant_of("/API/V1/ORDERS", &[]), None);
    }

    fn ok(p: &str) -> bool {
        check(p, p.len(), &PathRules::default()).is_ok()
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "/api/v1/users/42",
            "/a/b.c/d..e/%41%20b",
            "/api/v1/caf%C3%A9",
            "/a/.well-known/x",
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
            "/api/v1/public/%c0%ae%c0%ae/x",
            "/a%80",
            "/a%C3",
            "/a%ed%a0%80",
        ] {
            assert!(!ok(p), "{p:?}");
        }
    }

    #[test]
    fn encoded_semicolons_and_ambiguous_segments_are_refused() {
        for p in [
            "/api/v1/users%3b/7",
            "/api/v1/orders%3Bjsessionid=x",
            "/api/v1/users./7",
            "/api/v1/transfers.",
            "/api/v1/users%20/7",
            "/api/v1/%20users/7",
            "/api/..%3b/x",
        ] {
            assert!(!ok(p), "{p}");
        }
        let lenient = PathRules {
            reject_semicolon: false,
            reject_ambiguous_segments: false,
            ..PathRules::default()
        };
        for p in ["/a%3bb", "/a./b", "/a%20"] {
            assert!(check(p, p.len(), &lenient).is_ok(), "{p}");
        }
        assert!(check("/a/..%3Bx/b", 11, &lenient).is_err());
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
