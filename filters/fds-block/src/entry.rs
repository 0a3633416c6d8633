//! One block-list entry, validated: the same rules for static config entries
//! and for entries that arrive from the FDS feed.

use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest accepted `value` (user id, device id, address), in bytes.
pub const MAX_VALUE_LEN: usize = 256;
/// Longest accepted `api` (`"METHOD /path-prefix"`), in bytes.
pub const MAX_API_LEN: usize = 512;
/// Reasons longer than this are cut (at a character boundary): they are only
/// ever logged, and the bound keeps 100,000 entries small.
pub const MAX_REASON_LEN: usize = 128;

/// What an entry blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A verified user id (JWT `sub` on web, the key id's user on app).
    User,
    /// A verified device id (the app gateway's signing key's device).
    Device,
    /// A client address or CIDR (IPv4 or IPv6), matched against Envoy's
    /// resolved downstream address.
    Ip,
    /// A verified user on one API only: `api` is `"METHOD /path-prefix"`.
    UserApi,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::User, Kind::Device, Kind::Ip, Kind::UserApi];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Device => "device",
            Kind::Ip => "ip",
            Kind::UserApi => "user_api",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The API part of a `user_api` entry: a method (or any) and a path prefix
/// matched at segment boundaries (`/api/v1/orders` covers `/api/v1/orders/7`
/// and `/api/v1/orders;x`, but not `/api/v1/ordersx`; a prefix ending in `/` covers everything below).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Api {
    /// Upper-case method; `None` for `*` (any method).
    pub method: Option<Box<str>>,
    pub prefix: Box<str>,
}

impl Api {
    /// Parses `"METHOD /path-prefix"` (`METHOD` upper case, or `*`).
    pub fn parse(s: &str) -> Result<Api, String> {
        if s.len() > MAX_API_LEN {
            return Err(format!("api is longer than {MAX_API_LEN} bytes"));
        }
        let (method, prefix) = s
            .split_once(' ')
            .ok_or_else(|| format!("api {s:?} must be \"METHOD /path-prefix\""))?;
        let method = match method {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Some(m.into()),
            m => {
                return Err(format!(
                    "api method {m:?} must be upper case (e.g. POST) or *"
                ))
            }
        };
        if !prefix.starts_with('/')
            || prefix
                .bytes()
                .any(|b| b == b'?' || b == b'#' || b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "api path prefix {prefix:?} must start with '/' and hold no space, '?' or '#'"
            ));
        }
        Ok(Api {
            method,
            prefix: prefix.into(),
        })
    }

    /// Does a request (method, path without query) fall under this API?
    /// A `GET` entry covers `HEAD` too: HEAD asks for what GET answers,
    /// without the content (RFC 9110 §9.3.2), so it must not dodge a block.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if let Some(m) = &self.method {
            if **m != *method && !(&**m == "GET" && method == "HEAD") {
                return false;
            }
        }
        if filter_core::route::prefix_matches(&self.prefix, path) {
            return true;
        }
        // A block on an API holds for every spelling an upstream may serve
        // as that API: other letter case (case-insensitive frameworks) and
        // percent-encoded letters. Blocking more is the safe direction.
        use filter_core::route::{case_folded, may_fold, prefix_matches};
        if may_fold(path) || may_fold(&self.prefix) {
            return prefix_matches(&case_folded(&self.prefix), &case_folded(path));
        }
        false
    }

    pub fn to_spec(&self) -> String {
        format!("{} {}", self.method.as_deref().unwrap_or("*"), self.prefix)
    }
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// User or device id as given; for `ip` the normalised network
    /// (`10.1.2.3` → `10.1.2.3/32`, `10.1.2.3/8` → `10.0.0.0/8`).
    pub value: String,
    pub net: Option<IpNet>,
    pub api: Option<Api>,
    /// Unix seconds from which the entry no longer applies; `None`: never.
    pub expires_at: Option<u64>,
    /// Why (logged on a block, never sent to the client).
    pub reason: String,
    /// The feed's entry id; `None` for static entries.
    pub id: Option<u64>,
}

impl Entry {
    /// Validates the parts of an entry; the error is a sentence without the
    /// field path (the caller knows where the entry came from).
    pub fn new(
        kind: Kind,
        value: &str,
        api: Option<&str>,
        expires_at: Option<u64>,
        reason: &str,
        id: Option<u64>,
    ) -> Result<Entry, (&'static str, String)> {
        if value.is_empty() {
            return Err(("value", "must not be empty".into()));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(("value", format!("is longer than {MAX_VALUE_LEN} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(("value", "must not contain control characters".into()));
        }
        let mut net = None;
        let value = match kind {
            Kind::Ip => {
                let n = parse_net(value).ok_or_else(|| {
                    (
                        "value",
                        format!("{value:?} is not an IPv4/IPv6 address or CIDR"),
                    )
                })?;
                net = Some(n);
                n.to_string()
            }
            _ => value.to_string(),
        };
        let api = match (kind, api) {
            (Kind::UserApi, Some(a)) => Some(Api::parse(a).map_err(|e| ("api", e))?),
            (Kind::UserApi, None) => {
                return Err(("api", "is required for a user_api entry".into()));
            }
            (_, Some(_)) => {
                return Err(("api", "is only allowed on a user_api entry".into()));
            }
            (_, None) => None,
        };
        Ok(Entry {
            kind,
            value,
            net,
            api,
            expires_at,
            reason: truncate(reason, MAX_REASON_LEN).to_string(),
            id,
        })
    }

    /// Still in force at `now` (Unix seconds)?
    pub fn live_at(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// An address or CIDR, normalised to its network (host bits cleared);
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d[/96+n]`) becomes IPv4.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    Some(canonical_net(net).trunc())
}

fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n);
                }
            }
        }
    }
    net
}

/// The longest prefix of `s` of at most `max` bytes that ends at a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_block_holds_for_other_letter_case_and_encodings() {
        let a = Api::parse("POST /api/v1/payments").unwrap();
        for p in [
            "/api/v1/payments",
            "/api/v1/Payments/7",
            "/API/V1/PAYMENTS",
            "/api/v1/%70ayments",
        ] {
            assert!(a.matches("POST", p), "{p}");
        }
        for p in ["/api/v1/paymentsx", "/api/v1/Orders"] {
            assert!(!a.matches("POST", p), "{p}");
        }
        assert!(!a.matches("GET", "/API/v1/payments"));
    }

    #[test]
    fn ip_values_are_normalised_to_their_network() {
        let e = Entry::new(Kind::Ip, "10.1.2.3/8", None, None, "", None).unwrap();
        assert_eq!(e.value, "10.0.0.0/8");
        let e = Entry::new(Kind::Ip, "10.1.2.3", None, None, "", None).unwrap();
        assert_eq!(e.value, "10.1.2.3/32");
        let e = Entry::new(Kind::Ip, "2001:db8::1/32", None, None, "", None).unwrap();
        assert_eq!(e.value, "2001:db8::/32");
        let e = Entry::new(Kind::Ip, "::ffff:192.0.2.9", None, None, "", None).unwrap();
        assert_eq!(e.value, "192.0.2.9/32");
    }

    #[test]
    fn bad_ip_values_are_refused() {
        for bad in [
            "10.0.0.256",
            "10.0.0.0/33",
            "example.com",
            "10.0.0.1:80",
            "::/129",
        ] {
            assert!(
                Entry::new(Kind::Ip, bad, None, None, "", None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn api_is_required_for_user_api_and_refused_elsewhere() {
        assert_eq!(
            Entry::new(Kind::UserApi, "u", None, None, "", None)
                .unwrap_err()
                .0,
            "api"
        );
        assert_eq!(
            Entry::new(Kind::User, "u", Some("GET /"), None, "", None)
                .unwrap_err()
                .0,
            "api"
        );
        assert!(Entry::new(
            Kind::UserApi,
            "u",
            Some("POST /api/v1/orders"),
            None,
            "",
            None
        )
        .is_ok());
    }

    #[test]
    fn api_spec_must_be_method_space_prefix() {
        for bad in [
            "POST",
            "post /a",
            "POST a",
            "POST /a?b",
            "POST /a b",
            " /a",
            "POST  /a",
        ] {
            assert!(Api::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Api::parse("* /a").unwrap().method, None);
    }

    #[test]
    fn api_matches_method_and_prefix_at_segment_boundaries() {
        let a = Api::parse("POST /api/v1/orders").unwrap();
        assert!(a.matches("POST", "/api/v1/orders"));
        assert!(a.matches("POST", "/api/v1/orders/7"));
        assert!(!a.matches("POST", "/api/v1/ordersx"));
        assert!(a.matches("POST", "/api/v1/orders;jsessionid=1"));
        assert!(!a.matches("GET", "/api/v1/orders"));
        let any = Api::parse("* /api/v1/users/").unwrap();
        assert!(any.matches("DELETE", "/api/v1/users/1"));
        assert!(!any.matches("GET", "/api/v1/users"));
    }

    #[test]
    fn a_get_entry_also_blocks_head_but_not_the_reverse() {
        let get = Api::parse("GET /api/v1/users").unwrap();
        assert!(get.matches("HEAD", "/api/v1/users/7"));
        assert!(!get.matches("POST", "/api/v1/users/7"));
        let head = Api::parse("HEAD /api/v1/users").unwrap();
        assert!(!head.matches("GET", "/api/v1/users/7"));
    }

    #[test]
    fn empty_long_or_control_values_are_refused() {
        assert!(Entry::new(Kind::User, "", None, None, "", None).is_err());
        assert!(Entry::new(Kind::User, &"u".repeat(257), None, None, "", None).is_err());
        assert!(Entry::new(Kind::Device, "d\n1", None, None, "", None).is_err());
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let r = "é".repeat(100);
        let e = Entry::new(Kind::User, "u", None, None, &r, None).unwrap();
        assert!(e.reason.len() <= MAX_REASON_LEN);
        assert!(e.reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn expiry_is_exclusive() {
        let e = Entry::new(Kind::User, "u", None, Some(100), "", None).unwrap();
        assert!(e.live_at(99));
        assert!(!e.live_at(100));
    }
}
