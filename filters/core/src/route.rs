//! Route matching shared by every filter: a path prefix that respects segment
//! boundaries plus an optional method set, evaluated on Envoy's normalised
//! `:path` without its query.

use crate::config::ConfigError;

/// A compiled route rule: a path prefix (or, with `exact`, the whole path)
/// plus a method set. Every filter's route rules compile to this one type,
/// so a path means the same thing to every filter of a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatcher {
    prefix: String,
    /// The path must be `prefix` itself (an open `/health` must not open
    /// `/health/anything`).
    exact: bool,
    /// Upper-case methods; empty means any method.
    methods: Vec<String>,
}

impl RouteMatcher {
    /// Compiles a matcher; `path` names the config field for errors.
    ///
    /// `prefix` must start with `/`. A prefix matches at segment boundaries:
    /// `/api/v1/orders` matches `/api/v1/orders` and `/api/v1/orders/7` but
    /// not `/api/v1/ordersx`; a prefix ending in `/` matches everything below it.
    pub fn new(path: &str, prefix: &str, methods: &[String]) -> Result<Self, ConfigError> {
        if !prefix.starts_with('/') {
            return Err(ConfigError::at(
                format!("{path}.prefix"),
                "must start with '/'",
            ));
        }
        if prefix.contains(['?', '#']) {
            return Err(ConfigError::at(
                format!("{path}.prefix"),
                "must not contain '?' or '#'",
            ));
        }
        let mut ms = Vec::with_capacity(methods.len());
        for (i, m) in methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::at(
                    format!("{path}.methods[{i}]"),
                    format!("method {m:?} must be an upper-case token such as GET"),
                ));
            }
            ms.push(m.clone());
        }
        Ok(RouteMatcher {
            prefix: prefix.to_string(),
            exact: false,
            methods: ms,
        })
    }

    /// A matcher of the path `path` itself, nothing below it
    /// ([`RouteMatcher::new`] with `exact`).
    #[must_use]
    pub fn exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }

    /// Whether only the path itself matches.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The methods it is limited to (upper case); empty: any method.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// Does the request (method, path without query) fall under this route?
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.matches_path(path)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }

    /// Path part only: the path itself when exact, else [`prefix_matches`].
    pub fn matches_path(&self, path: &str) -> bool {
        if self.exact {
            return path == self.prefix;
        }
        prefix_matches(&self.prefix, path)
    }
}

/// Does `path` lie under `prefix`? The prefix must end at a segment
/// boundary: the end of the path or `/`; a prefix ending in `/` covers
/// everything below it. Matrix parameters (`;` or an encoded `%3B` up to the
/// end of a segment) are ignored: `/api/v1/orders;x=1` and
/// `/api/v1/users%3bx/7` are `/api/v1/orders` and `/api/v1/users/7` to
/// upstreams that drop path parameters (Tomcat, Spring), so a rule tied to
/// the path must apply to them too (sanitize refuses both forms by default).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if path.contains(';') || path.contains("%3b") || path.contains("%3B") {
        return plain_prefix_matches(prefix, &without_matrix_params(path));
    }
    plain_prefix_matches(prefix, path)
}

fn plain_prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// `path` with every segment cut at its first `;` or `%3B`.
fn without_matrix_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment_without_params(seg));
    }
    out
}

/// One path segment without its matrix parameters: cut at the first `;` or
/// `%3B` (either case), as an upstream that drops path parameters reads it.
pub fn segment_without_params(seg: &str) -> &str {
    let end = [";", "%3b", "%3B"]
        .iter()
        .filter_map(|m| seg.find(m))
        .min()
        .unwrap_or(seg.len());
    seg.get(..end).unwrap_or(seg)
}

/// Unicode case folding of one string, as a case-insensitive matcher reads
/// it: ASCII letters lower-cased, and every other character upper-cased then
/// lower-cased (`ſ` → `S` → `s`, the Kelvin sign → `k`, `ı` → `i`).
pub fn fold_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_uppercase().flat_map(char::to_lowercase));
        }
    }
    out
}

/// A path as an upstream that decodes before it matches and ignores letter
/// case reads it: percent-decoded (invalid UTF-8 lossily), then
/// [`fold_case`]d. Two paths such an upstream serves alike compare equal.
pub fn case_folded(path: &str) -> String {
    fold_case(&percent_encoding::percent_decode_str(path).decode_utf8_lossy())
}

/// Whether `path` needs [`case_folded`] at all: without an upper-case ASCII
/// letter or a `%` (non-ASCII bytes are not in an Envoy-normalised path) it
/// folds to itself.
pub fn may_fold(path: &str) -> bool {
    path.bytes().any(|b| b.is_ascii_uppercase() || b == b'%')
}

/// Splits `:path` into the path and the query (without `?`).
pub fn split_path(full: &str) -> (&str, Option<&str>) {
    let no_fragment = full.split_once('#').map_or(full, |(p, _)| p);
    match no_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (no_fragment, None),
    }
}

#[cfg(test)]
mod exact_tests {
    use super::*;

    #[test]
    fn an_exact_rule_matches_the_path_itself_only() {
        let m = RouteMatcher::new("r", "/health", &["GET".into()])
            .unwrap()
            .exact(true);
        assert!(m.matches("GET", "/health"));
        for p in ["/health/x", "/health;x", "/healthz", "/health/"] {
            assert!(!m.matches("GET", p), "{p}");
        }
        assert!(!m.matches("POST", "/health"));
        let prefix = RouteMatcher::new("r", "/health", &[]).unwrap();
        assert!(prefix.matches("POST", "/health/x") && !prefix.is_exact());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(prefix: &str, methods: &[&str]) -> RouteMatcher {
        let ms: Vec<String> = methods.iter().map(|s| s.to_string()).collect();
        RouteMatcher::new("routes[0]", prefix, &ms).unwrap()
    }

    #[test]
    fn prefix_matches_at_segment_boundaries_only() {
        let r = m("/api/v1/orders", &[]);
        assert!(r.matches("POST", "/api/v1/orders"));
        assert!(r.matches("POST", "/api/v1/orders/7"));
        assert!(r.matches("POST", "/api/v1/orders;x=1"));
        assert!(!r.matches("POST", "/api/v1/ordersx"));
        assert!(!r.matches("POST", "/api/v1/order"));
    }

    #[test]
    fn prefix_with_trailing_slash_matches_below_it() {
        let r = m("/api/v1/users/", &["GET"]);
        assert!(r.matches("GET", "/api/v1/users/42"));
        assert!(!r.matches("GET", "/api/v1/users"));
        assert!(!r.matches("POST", "/api/v1/users/42"));
    }

    #[test]
    fn matrix_parameters_literal_or_encoded_do_not_dodge_a_prefix() {
        let users = m("/api/v1/users/", &["GET"]);
        let orders = m("/api/v1/orders", &[]);
        for p in [
            "/api/v1/users;x/7",
            "/api/v1/users%3b/7",
            "/api/v1/users%3Bjsessionid=1/7",
            "/api;a/v1/users/7",
        ] {
            assert!(users.matches("GET", p), "{p}");
        }
        for p in ["/api/v1/orders%3b", "/api/v1/orders%3Bx=1/9"] {
            assert!(orders.matches("POST", p), "{p}");
        }
        assert!(!orders.matches("POST", "/api/v1/ordersx;y"));
        assert!(!users.matches("GET", "/api/v1/usersx%3b/7"));
    }

    #[test]
    fn bad_prefix_and_method_are_config_errors() {
        assert_eq!(
            RouteMatcher::new("r", "api", &[]).unwrap_err().path,
            "r.prefix"
        );
        assert_eq!(
            RouteMatcher::new("r", "/a", &["get".into()])
                .unwrap_err()
                .path,
            "r.methods[0]"
        );
    }

    #[test]
    fn split_path_separates_query_and_drops_fragment() {
        assert_eq!(split_path("/a?b=1"), ("/a", Some("b=1")));
        assert_eq!(split_path("/a"), ("/a", None));
        assert_eq!(split_path("/a#x"), ("/a", None));
        assert_eq!(split_path("/a?"), ("/a", Some("")));
    }
}
