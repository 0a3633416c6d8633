//! SAN matching: SPIFFE IDs parsed strictly, and the matchers a rule uses to
//! recognise a certificate's Subject Alternative Names.

/// The SANs of a verified certificate that rules can match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sans {
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns: Vec<String>,
}

impl Sans {
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty() && self.dns.is_empty()
    }
    pub fn len(&self) -> usize {
        self.uris.len() + self.dns.len()
    }
}

/// A SPIFFE ID (`spiffe://<trust domain>/<path>`), validated per the SPIFFE
/// ID specification: lower-case trust domain of `[a-z0-9.-_]`, path segments
/// of `[A-Za-z0-9.-_]`, no empty, `.` or `..` segment, no trailing slash, no
/// query, fragment, port or user info, at most 2048 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    /// Empty (the trust domain itself) or `/seg/seg…`.
    pub path: &'a str,
}

impl<'a> SpiffeId<'a> {
    pub fn parse(uri: &'a str) -> Option<SpiffeId<'a>> {
        if uri.len() > 2048 {
            return None;
        }
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !valid_trust_domain(td) {
            return None;
        }
        if !path.is_empty() {
            for seg in path.split('/').skip(1) {
                if seg.is_empty()
                    || seg == "."
                    || seg == ".."
                    || !seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                {
                    return None;
                }
            }
        }
        Some(SpiffeId {
            trust_domain: td,
            path,
        })
    }
}

/// A SPIFFE trust domain name: `[a-z0-9.-_]+`.
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// A compiled SAN matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanMatcher {
    /// A URI SAN equal to this string, byte for byte.
    ExactUri(String),
    /// A DNS SAN equal to this name, ASCII case-insensitively.
    Dns(String),
    /// Any valid SPIFFE ID URI SAN in this trust domain.
    SpiffeTrustDomain(String),
    /// A valid SPIFFE ID URI SAN in this trust domain whose path is this
    /// prefix or lies below it, at segment boundaries (`/ns/a` matches
    /// `/ns/a` and `/ns/a/sa/x`, not `/ns/ab`).
    SpiffePathPrefix {
        trust_domain: String,
        /// Starts with `/`, no trailing `/`.
        path_prefix: String,
    },
}

impl SanMatcher {
    /// Does one URI SAN match?
    pub fn matches_uri(&self, uri: &str) -> bool {
        match self {
            SanMatcher::ExactUri(want) => uri == want,
            SanMatcher::Dns(_) => false,
            SanMatcher::SpiffeTrustDomain(td) => {
                SpiffeId::parse(uri).is_some_and(|id| id.trust_domain == td)
            }
            SanMatcher::SpiffePathPrefix {
                trust_domain,
                path_prefix,
            } => SpiffeId::parse(uri).is_some_and(|id| {
                id.trust_domain == trust_domain
                    && id
                        .path
                        .strip_prefix(path_prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
        }
    }

    /// Does one DNS SAN match?
    pub fn matches_dns(&self, name: &str) -> bool {
        match self {
            SanMatcher::Dns(want) => name.eq_ignore_ascii_case(want),
            _ => false,
        }
    }

    /// The first SAN (URI SANs first, then DNS, certificate order) that this
    /// matcher accepts.
    pub fn first_match<'s>(&self, sans: &'s Sans) -> Option<&'s str> {
        sans.uris
            .iter()
            .find(|u| self.matches_uri(u))
            .or_else(|| sans.dns.iter().find(|d| self.matches_dns(d)))
            .map(String::as_str)
    }
}

/// A compiled host pattern: `api.example` (exact) or `*.example` (any name
/// ending in `.example`, as Envoy's virtual-host wildcards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// The host of an `:authority`: port and trailing dot removed, lower case.
/// `None` when it is not a plausible host (empty, user info, bad port).
pub fn authority_host(authority: &str) -> Option<String> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: "[::1]" or "[::1]:443".
        let end = rest.find(']')?;
        let (inside, after) = rest.split_at(end);
        let after = after.get(1..).unwrap_or("");
        if !(after.is_empty() || port_ok(after)) {
            return None;
        }
        return Some(format!("[{}]", inside.to_ascii_lowercase()));
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) => {
                if !port_ok(&format!(":{port}")) {
                    return None;
                }
                h
            }
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn port_ok(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans(uris: &[&str], dns: &[&str]) -> Sans {
        Sans {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn spiffe_ids_parse_strictly() {
        let id = SpiffeId::parse("spiffe://partner.example/ns/partner-a/sa/billing").unwrap();
        assert_eq!(id.trust_domain, "partner.example");
        assert_eq!(id.path, "/ns/partner-a/sa/billing");
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().path, "");
        for bad in [
            "spiffe://",
            "spiffe:///path",
            "spiffe://Partner.example/a",
            "spiffe://td:443/a",
            "spiffe://user@td/a",
            "spiffe://td/a/",
            "spiffe://td//a",
            "spiffe://td/a/../b",
            "spiffe://td/./b",
            "spiffe://td/a?x=1",
            "spiffe://td/a#f",
            "spiffe://td/a%2Fb",
            "SPIFFE://td/a",
            "https://td/a",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn exact_uri_matcher_is_byte_exact_and_ignores_dns_sans() {
        let m = SanMatcher::ExactUri("spiffe://partner.example/ns/partner-a/sa/billing".into());
        assert!(m.matches_uri("spiffe://partner.example/ns/partner-a/sa/billing"));
        assert!(!m.matches_uri("spiffe://partner.example/ns/partner-a/sa/billing/x"));
        assert!(!m.matches_uri("spiffe://PARTNER.example/ns/partner-a/sa/billing"));
        assert!(!m.matches_dns("spiffe://partner.example/ns/partner-a/sa/billing"));
    }

    #[test]
    fn cert_with_dns_san_does_not_match_a_uri_matcher_and_vice_versa() {
        let s = sans(&[], &["partner.example"]);
        assert_eq!(
            SanMatcher::SpiffeTrustDomain("partner.example".into()).first_match(&s),
            None
        );
        let s = sans(&["partner.example"], &[]);
        assert_eq!(
            SanMatcher::Dns("partner.example".into()).first_match(&s),
            None
        );
        let s = sans(&[], &["API.Partner.Example"]);
        assert_eq!(
            SanMatcher::Dns("api.partner.example".into()).first_match(&s),
            Some("API.Partner.Example")
        );
    }

    #[test]
    fn trust_domain_matcher_needs_a_valid_spiffe_id_in_that_domain() {
        let m = SanMatcher::SpiffeTrustDomain("partner.example".into());
        assert!(m.matches_uri("spiffe://partner.example/ns/x"));
        assert!(m.matches_uri("spiffe://partner.example"));
        assert!(!m.matches_uri("spiffe://partner.example.evil/ns/x"));
        assert!(!m.matches_uri("spiffe://evil.partner.example/ns/x"));
        assert!(!m.matches_uri("spiffe://partner.example/ns/../x"));
        assert!(!m.matches_uri("spiffe://partner.example:1/ns/x"));
    }

    #[test]
    fn path_prefix_matcher_respects_segment_boundaries() {
        let m = SanMatcher::SpiffePathPrefix {
            trust_domain: "partner.example".into(),
            path_prefix: "/ns/partner-a".into(),
        };
        assert!(m.matches_uri("spiffe://partner.example/ns/partner-a"));
        assert!(m.matches_uri("spiffe://partner.example/ns/partner-a/sa/billing"));
        assert!(!m.matches_uri("spiffe://partner.example/ns/partner-ab/sa/billing"));
        assert!(!m.matches_uri("spiffe://other.example/ns/partner-a/sa/billing"));
        assert!(!m.matches_uri("spiffe://partner.example/ns/partner-a/../b"));
    }

    #[test]
    fn first_match_prefers_uri_sans_in_certificate_order() {
        let s = sans(&["https://x", "spiffe://td/a", "spiffe://td/b"], &["td"]);
        assert_eq!(
            SanMatcher::SpiffeTrustDomain("td".into()).first_match(&s),
            Some("spiffe://td/a")
        );
    }

    #[test]
    fn authority_hosts_lose_port_and_case() {
        assert_eq!(
            authority_host("localhost:10443").as_deref(),
            Some("localhost")
        );
        assert_eq!(
            authority_host("API.Example.").as_deref(),
            Some("api.example")
        );
        assert_eq!(authority_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(authority_host("a@b"), None);
        assert_eq!(authority_host("a:x"), None);
        assert_eq!(authority_host(""), None);
        assert_eq!(authority_host(":80"), None);
    }

    #[test]
    fn host_patterns() {
        let w = HostPattern::Suffix(".example".into());
        assert!(w.matches("a.example"));
        assert!(w.matches("a.b.example"));
        assert!(!w.matches(".example"));
        assert!(!w.matches("example"));
        assert!(!w.matches("aexample"));
        assert!(HostPattern::Exact("api.example".into()).matches("api.example"));
    }
}
