//! The per-request decision, written against [`HttpHost`] so that it runs
//! natively under [`filter_core::host::FakeHost`].
//!
//! Inputs, all from channels no client can write:
//! * the client address: Envoy's resolved downstream address, the host
//!   property `source.address` (with `use_remote_address` and
//!   `xff_num_trusted_hops: 1`, Envoy sets it from the last
//!   `x-forwarded-for` entry; the filter never parses that header);
//! * the verified identity ([`Identity::read`]: the user and device that
//!   jwt or replay-guard published in filter state);
//! * `:method` and `:path`, read only when the user has user+API entries.

use std::net::{IpAddr, SocketAddr};

use filter_core::decision::{self, RouteNames};
use filter_core::headers;
use filter_core::host::{HttpHost, Verdict};
use filter_core::identity::Identity;
use filter_core::route::split_path;
use filter_core::Denial;

use crate::config::Compiled;
use crate::entry::Kind;
use crate::index::{Hit, Index};

/// Host property holding Envoy's resolved client address (`ip:port`).
pub const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];

/// The feed's list as this worker has it.
#[derive(Debug, Clone, Copy)]
pub enum FeedView<'a> {
    /// No feed configured.
    Off,
    /// A feed is configured but no list has been loaded yet.
    NotLoaded,
    Loaded(&'a Index),
}

/// Where the matching entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Static,
    Feed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Feed => "feed",
        }
    }
}

/// A request that an entry blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub kind: Kind,
    pub key: String,
    pub id: Option<u64>,
    pub reason: String,
    pub source: Source,
}

/// What the filter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Block(Blocked),
    /// The feed's list is not loaded yet and `until_loaded` is `deny`.
    Unavailable,
}

pub(crate) fn blocked(hit: Hit<'_>, source: Source) -> Blocked {
    Blocked {
        kind: hit.kind,
        key: hit.key,
        id: hit.meta.id,
        reason: hit.meta.reason.to_string(),
        source,
    }
}

/// Parses `source.address`: `ip:port`, `[v6]:port`, or a bare address.
pub fn parse_address(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.parse::<IpAddr>().ok()
}

/// Decides on a request over the host (the adapter of [`crate::decide`]):
/// each input is read from the host only when the decision needs it (the
/// client address when a list has IP entries, the identity when a list has
/// identity entries, `:method`/`:path` when the user has user+API entries).
/// `now`: Unix seconds (entries expire against it).
pub fn decide<H: HttpHost + ?Sized>(
    host: &H,
    config: &Compiled,
    feed: FeedView<'_>,
    now: u64,
) -> Decision {
    crate::decide::decide(
        config,
        feed,
        now,
        crate::decide::Inputs {
            address: || {
                let raw = host.property(&SOURCE_ADDRESS);
                let ip = raw.as_deref().and_then(parse_address);
                match ip {
                    Some(ip) => log::debug!("fds-block: client address {ip}"),
                    None => log::warn!(
                        "fds-block: unusable source.address {:?}; IP entries cannot apply",
                        raw.as_deref().map(String::from_utf8_lossy)
                    ),
                }
                ip
            },
            identity: || Identity::read(host),
            request_line: || {
                let method = host.request_header(headers::METHOD).unwrap_or_default();
                let full = host.request_header(headers::PATH).unwrap_or_default();
                (method, split_path(&full).0.to_string())
            },
        },
    )
}

/// What [`on_request_headers`] did, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub decision: Decision,
    /// The block was only logged (dry run).
    pub dry_run: bool,
    /// Envoy gateway/route names, read for the decision log of a (would-be)
    /// denial and reused for the metric labels; `None` when allowed.
    pub names: Option<RouteNames>,
}

/// The metric `reason` of a denial: `blocked_<kind>` (`blocked_user`,
/// `blocked_device`, `blocked_ip`, `blocked_user_api`) or
/// `blocklist_unavailable`; `None` for an allowed request.
pub fn reason(d: &Decision) -> Option<&'static str> {
    match d {
        Decision::Allow => None,
        Decision::Block(b) => Some(match b.kind {
            Kind::User => "blocked_user",
            Kind::Device => "blocked_device",
            Kind::Ip => "blocked_ip",
            Kind::UserApi => "blocked_user_api",
        }),
        Decision::Unavailable => Some("blocklist_unavailable"),
    }
}

/// Writes the decision line of a (would-be) denial; returns the names read.
fn log_decision<H: HttpHost + ?Sized>(
    host: &H,
    dry_run: bool,
    status: u16,
    code: &str,
    request_id: Option<&str>,
) -> RouteNames {
    let names = decision::route_names(host);
    let all = host.request_headers();
    let method = all
        .iter()
        .find(|(n, _)| n == headers::METHOD)
        .map_or("", |(_, v)| v.as_str());
    decision::Decision::denial("fds-block", method, status, code)
        .dry_run(dry_run)
        .at(&names)
        .request_id(request_id)
        .trace_id(decision::trace_id(&all).as_deref())
        .emit();
    names
}

/// The generic denial: the reason stays in the gateway log.
pub fn blocked_denial() -> Denial {
    Denial::forbidden("blocked", "request blocked")
}

/// Runs the decision and applies it: 403 (or, in dry run, a log line only)
/// for a blocked request, 503 + `Retry-After` while the list is not loaded.
pub fn on_request_headers<H: HttpHost + ?Sized>(
    host: &mut H,
    config: &Compiled,
    feed: FeedView<'_>,
    now: u64,
) -> Outcome {
    let decision = decide(host, config, feed, now);
    let mut names = None;
    let verdict = match &decision {
        Decision::Allow => Verdict::Continue,
        Decision::Block(b) => {
            let rid = host.request_header(headers::REQUEST_ID);
            let d = blocked_denial();
            names = Some(log_decision(
                host,
                config.dry_run,
                d.status,
                d.code,
                rid.as_deref(),
            ));
            // The details (which entry, the key) stay out of the decision
            // line: the key is a user id or a client address.
            log::debug!(
                "fds-block: {} request_id={} kind={} key={:?} source={} entry={} reason={:?}",
                if config.dry_run {
                    "dry-run, would block"
                } else {
                    "blocked"
                },
                rid.as_deref().unwrap_or("-"),
                b.kind.as_str(),
                b.key,
                b.source.as_str(),
                b.id.map_or_else(|| "-".to_string(), |i| i.to_string()),
                b.reason,
            );
            if config.dry_run {
                Verdict::Continue
            } else {
                d.send(host, rid.as_deref());
                Verdict::Responded
            }
        }
        Decision::Unavailable => {
            let rid = host.request_header(headers::REQUEST_ID);
            log::warn!(
                "fds-block: block list not loaded yet, refusing request_id={}",
                rid.as_deref().unwrap_or("-")
            );
            let d = Denial::unavailable(
                "blocklist_unavailable",
                "the block list is not available yet",
            )
            .with_header("retry-after", "1");
            names = Some(log_decision(
                host,
                config.dry_run,
                d.status,
                d.code,
                rid.as_deref(),
            ));
            if config.dry_run {
                Verdict::Continue
            } else {
                d.send(host, rid.as_deref());
                Verdict::Responded
            }
        }
    };
    Outcome {
        verdict,
        dry_run: config.dry_run && decision != Decision::Allow,
        decision,
        names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::entry::Entry;
    use filter_core::host::FakeHost;
    use filter_core::identity::{Source as IdSource, PROPERTY};

    const NOW: u64 = 1_750_000_000;

    fn feed_index(entries: &[(Kind, &str, Option<&str>, Option<u64>)]) -> Index {
        let es: Vec<Entry> = entries
            .iter()
            .enumerate()
            .map(|(i, (k, v, a, x))| {
                Entry::new(*k, v, *a, *x, "fraud ring", Some(i as u64 + 1)).unwrap()
            })
            .collect();
        Index::build(&es, NOW)
    }

    fn with_identity(h: FakeHost, user: Option<&str>, device: Option<&str>) -> FakeHost {
        let mut id = Identity::new(IdSource::Jwt);
        id.user = user.map(Into::into);
        id.device = device.map(Into::into);
        let mut h = h;
        id.publish(&mut h);
        h
    }

    fn from(ip: &str) -> FakeHost {
        FakeHost::request("GET", "/api/v1/users/1")
            .with_property(&SOURCE_ADDRESS, format!("{ip}:0").as_bytes())
    }

    fn feed_cfg() -> Compiled {
        load(br#"{"feed": {"cluster": "fds"}}"#).unwrap()
    }

    #[test]
    fn blocked_ip_gets_a_generic_403_with_the_request_id() {
        let ix = feed_index(&[(Kind::Ip, "203.0.113.7", None, None)]);
        let mut h = from("203.0.113.7");
        let out = on_request_headers(&mut h, &feed_cfg(), FeedView::Loaded(&ix), NOW);
        assert_eq!(out.verdict, Verdict::Responded);
        let r = h.response.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "blocked", "message": "request blocked"})
        );
        assert_eq!(r.header("x-request-id"), Some("test-rid"));
        assert!(
            !String::from_utf8_lossy(&r.body).contains("fraud"),
            "reason must not leak"
        );
    }

    #[test]
    fn cidr_and_ipv6_addresses_are_matched() {
        let ix = feed_index(&[
            (Kind::Ip, "198.51.100.0/24", None, None),
            (Kind::Ip, "2001:db8::/32", None, None),
        ]);
        let c = feed_cfg();
        for (addr, blocked) in [
            ("198.51.100.200", true),
            ("198.51.101.1", false),
            ("[2001:db8::5]", true),
            ("[2001:db9::5]", false),
        ] {
            let h = from(addr);
            let d = decide(&h, &c, FeedView::Loaded(&ix), NOW);
            assert_eq!(matches!(d, Decision::Block(_)), blocked, "{addr}");
        }
    }

    #[test]
    fn the_filter_ignores_x_forwarded_for_and_trusts_source_address() {
        let ix = feed_index(&[(Kind::Ip, "203.0.113.7", None, None)]);
        let h = from("192.0.2.1").with_header("x-forwarded-for", "203.0.113.7");
        assert_eq!(
            decide(&h, &feed_cfg(), FeedView::Loaded(&ix), NOW),
            Decision::Allow
        );
    }

    #[test]
    fn blocked_user_is_refused_and_another_user_passes() {
        let ix = feed_index(&[(Kind::User, "mallory", None, None)]);
        let c = feed_cfg();
        let h = with_identity(from("192.0.2.1"), Some("mallory"), None);
        let Decision::Block(b) = decide(&h, &c, FeedView::Loaded(&ix), NOW) else {
            panic!("not blocked")
        };
        assert_eq!(
            (b.kind, b.key.as_str(), b.id, b.source),
            (Kind::User, "mallory", Some(1), Source::Feed)
        );
        let h = with_identity(from("192.0.2.1"), Some("alice"), None);
        assert_eq!(decide(&h, &c, FeedView::Loaded(&ix), NOW), Decision::Allow);
    }

    #[test]
    fn a_client_header_claiming_an_identity_is_ignored() {
        let ix = feed_index(&[(Kind::User, "mallory", None, None)]);
        // no published identity: headers do not count
        let h = from("192.0.2.1")
            .with_header("x-gateway-user", "mallory")
            .with_header("x-user-id", "mallory");
        assert_eq!(
            decide(&h, &feed_cfg(), FeedView::Loaded(&ix), NOW),
            Decision::Allow
        );
    }

    #[test]
    fn device_block_applies_to_the_signed_device() {
        let ix = feed_index(&[(Kind::Device, "dev-9", None, None)]);
        let h = with_identity(from("192.0.2.1"), Some("bob"), Some("dev-9"));
        assert!(
            matches!(decide(&h, &feed_cfg(), FeedView::Loaded(&ix), NOW), Decision::Block(b) if b.kind == Kind::Device)
        );
    }

    #[test]
    fn user_api_block_leaves_other_apis_open_for_that_user() {
        let ix = feed_index(&[(Kind::UserApi, "alice", Some("POST /api/v1/orders"), None)]);
        let c = feed_cfg();
        let post = with_identity(
            FakeHost::request("POST", "/api/v1/orders?x=1"),
            Some("alice"),
            None,
        );
        assert!(
            matches!(decide(&post, &c, FeedView::Loaded(&ix), NOW), Decision::Block(b) if b.kind == Kind::UserApi)
        );
        let get = with_identity(
            FakeHost::request("GET", "/api/v1/users/alice"),
            Some("alice"),
            None,
        );
        assert_eq!(
            decide(&get, &c, FeedView::Loaded(&ix), NOW),
            Decision::Allow
        );
        let bob = with_identity(
            FakeHost::request("POST", "/api/v1/orders"),
            Some("bob"),
            None,
        );
        assert_eq!(
            decide(&bob, &c, FeedView::Loaded(&ix), NOW),
            Decision::Allow
        );
    }

    #[test]
    fn expired_entries_let_the_request_through() {
        let ix = feed_index(&[(Kind::User, "u", None, Some(NOW + 5))]);
        let h = with_identity(FakeHost::request("GET", "/"), Some("u"), None);
        assert!(matches!(
            decide(&h, &feed_cfg(), FeedView::Loaded(&ix), NOW + 4),
            Decision::Block(_)
        ));
        assert_eq!(
            decide(&h, &feed_cfg(), FeedView::Loaded(&ix), NOW + 5),
            Decision::Allow
        );
    }

    #[test]
    fn static_entries_apply_with_or_without_a_feed() {
        let c =
            load(br#"{"entries": [{"type": "ip", "value": "192.0.2.0/24", "reason": "static"}]}"#)
                .unwrap();
        let Decision::Block(b) = decide(&from("192.0.2.9"), &c, FeedView::Off, NOW) else {
            panic!("not blocked")
        };
        assert_eq!((b.source, b.reason.as_str()), (Source::Static, "static"));
    }

    #[test]
    fn before_the_first_load_the_default_is_a_503_with_retry_after() {
        let mut h = from("192.0.2.9");
        let out = on_request_headers(&mut h, &feed_cfg(), FeedView::NotLoaded, NOW);
        assert_eq!(out.decision, Decision::Unavailable);
        let r = h.response.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"], "blocklist_unavailable");
    }

    #[test]
    fn static_only_until_loaded_judges_on_static_entries() {
        let c = load(
            br#"{"feed": {"cluster": "fds", "until_loaded": "static_only"},
                          "entries": [{"type": "user", "value": "s"}]}"#,
        )
        .unwrap();
        assert_eq!(
            decide(&from("192.0.2.9"), &c, FeedView::NotLoaded, NOW),
            Decision::Allow
        );
        let h = with_identity(from("192.0.2.9"), Some("s"), None);
        assert!(matches!(
            decide(&h, &c, FeedView::NotLoaded, NOW),
            Decision::Block(_)
        ));
    }

    #[test]
    fn dry_run_logs_and_lets_through() {
        let c = load(br#"{"dry_run": true, "entries": [{"type": "ip", "value": "192.0.2.9"}]}"#)
            .unwrap();
        let mut h = from("192.0.2.9");
        let out = on_request_headers(&mut h, &c, FeedView::Off, NOW);
        assert_eq!(out.verdict, Verdict::Continue);
        assert!(out.dry_run);
        assert!(h.response.is_none());
        assert_eq!(reason(&out.decision), Some("blocked_ip"));
    }

    #[test]
    fn a_denial_reads_the_route_names_for_its_labels() {
        let c = load(br#"{"entries": [{"type": "ip", "value": "192.0.2.9"}]}"#).unwrap();
        let mut h = from("192.0.2.9")
            .with_property(&["xds", "virtual_host_name"], b"web")
            .with_property(&["xds", "route_name"], b"api");
        let out = on_request_headers(&mut h, &c, FeedView::Off, NOW);
        assert_eq!(out.verdict, Verdict::Responded);
        assert!(!out.dry_run);
        assert_eq!(reason(&out.decision), Some("blocked_ip"));
        let names = out.names.unwrap();
        assert_eq!(
            (names.gateway.as_str(), names.route.as_str()),
            ("web", "api")
        );
        let mut h = from("192.0.2.1");
        let out = on_request_headers(&mut h, &c, FeedView::Off, NOW);
        assert_eq!((reason(&out.decision), out.names), (None, None));
        let mut h = from("192.0.2.1");
        let out = on_request_headers(&mut h, &feed_cfg(), FeedView::NotLoaded, NOW);
        assert_eq!(reason(&out.decision), Some("blocklist_unavailable"));
        assert!(out.names.is_some());
    }

    #[test]
    fn a_clean_request_costs_two_host_calls_at_most() {
        let ix = feed_index(&[
            (Kind::Ip, "203.0.113.7", None, None),
            (Kind::User, "m", None, None),
        ]);
        let mut h = with_identity(from("192.0.2.1"), Some("alice"), None);
        h.calls.set(0);
        let out = on_request_headers(&mut h, &feed_cfg(), FeedView::Loaded(&ix), NOW);
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(h.calls.get(), 2, "source.address + identity");
    }

    #[test]
    fn an_empty_list_costs_no_host_call() {
        let ix = Index::default();
        let mut h = from("192.0.2.1");
        h.calls.set(0);
        on_request_headers(&mut h, &feed_cfg(), FeedView::Loaded(&ix), NOW);
        assert_eq!(h.calls.get(), 0);
    }

    #[test]
    fn source_address_forms() {
        assert_eq!(
            parse_address(b"10.0.0.1:443"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_address(b"[::1]:0"), Some("::1".parse().unwrap()));
        assert_eq!(
            parse_address(b"10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_address(b"garbage"), None);
        let _ = PROPERTY;
    }

    /// Arbitrary addresses, block lists, identities and feed bodies: the IP
    /// index blocks exactly the addresses inside its networks (checked
    /// against a plain bit-mask reference), and nothing panics.
    mod arbitrary_input {
        use super::*;
        use filter_core::testing::assert_denial;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        /// An address, and a network as (base, prefix length).
        fn v4() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
                // near the networks below, so that matches are common
                (0u32..512).prop_map(|a| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + a))),
            ]
        }

        fn v6() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                any::<u16>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_u128 << 96 | u128::from(a)
                ))),
                // IPv4-mapped: judged as the IPv4 address
                any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
            ]
        }

        fn network() -> impl Strategy<Value = (IpAddr, u8)> {
            prop_oneof![
                (v4(), 0u8..=32).prop_map(|(a, l)| (a, l)),
                (v6(), 0u8..=128).prop_map(|(a, l)| (a, l)),
            ]
        }

        /// The reference: an IPv4-mapped IPv6 address is its IPv4 address,
        /// and a mapped network of prefix ≥ 96 the IPv4 network (docs:
        /// fds-block "ip"); then plain bit masks.
        fn contains(net: (IpAddr, u8), addr: IpAddr) -> bool {
            let addr = match addr {
                IpAddr::V6(v) => v.to_ipv4_mapped().map_or(addr, IpAddr::V4),
                IpAddr::V4(_) => addr,
            };
            let (base, len) = match net {
                (IpAddr::V6(_), l) if l >= 96 => match cleared(net) {
                    IpAddr::V6(b) => b
                        .to_ipv4_mapped()
                        .map_or((IpAddr::V6(b), l), |v4| (IpAddr::V4(v4), l - 96)),
                    v4 => (v4, l),
                },
                _ => net,
            };
            // same family, and the same network once the host bits are cleared
            match (base, addr) {
                (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                    cleared((base, len)) == cleared((addr, len))
                }
                _ => false,
            }
        }

        fn text(net: (IpAddr, u8)) -> String {
            // the network's own base address (host bits cleared), as a feed writes it
            format!("{}/{}", cleared(net), net.1)
        }

        fn cleared((base, len): (IpAddr, u8)) -> IpAddr {
            match base {
                IpAddr::V4(b) => {
                    let mask = if len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(len))
                    };
                    IpAddr::V4(Ipv4Addr::from(u32::from(b) & mask))
                }
                IpAddr::V6(b) => {
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - u32::from(len))
                    };
                    IpAddr::V6(Ipv6Addr::from(u128::from(b) & mask))
                }
            }
        }

        fn address_property(a: IpAddr) -> String {
            match a {
                IpAddr::V4(v) => format!("{v}:443"),
                IpAddr::V6(v) => format!("[{v}]:443"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: filter_core::testing::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn an_address_is_blocked_exactly_when_a_listed_network_holds_it(
                nets in prop::collection::vec(network(), 0..12),
                addrs in prop::collection::vec(prop_oneof![v4(), v6()], 1..8),
            ) {
                let entries: Vec<Entry> = nets
                    .iter()
                    .map(|n| Entry::new(Kind::Ip, &text(*n), None, None, "test", None).unwrap())
                    .collect();
                let ix = Index::build(&entries, NOW);
                let c = feed_cfg();
                for a in addrs {
                    let want = nets.iter().any(|n| contains(*n, a));
                    let h = FakeHost::request("GET", "/api/v1/users/1")
                        .with_property(&SOURCE_ADDRESS, address_property(a).as_bytes());
                    let got = matches!(decide(&h, &c, FeedView::Loaded(&ix), NOW), Decision::Block(_));
                    prop_assert_eq!(got, want, "{} in {:?}", a, nets.iter().map(|n| text(*n)).collect::<Vec<_>>());
                }
            }

            #[test]
            fn any_request_gets_an_answer(
                source in prop::option::of(prop_oneof![
                    "[0-9a-f:.\\[\\]%]{0,40}",
                    any::<String>(),
                ]),
                identity in prop::option::of(prop::collection::vec(any::<u8>(), 0..80)),
                method in prop::sample::select(vec!["GET", "POST", "", "get"]),
                path in "[ -~]{0,40}",
            ) {
                let ix = feed_index(&[
                    (Kind::Ip, "203.0.113.0/24", None, None),
                    (Kind::User, "mallory", None, None),
                    (Kind::Device, "dev-1", None, None),
                    (Kind::UserApi, "bob", Some("POST /api/v1/transfers"), None),
                ]);
                let mut h = FakeHost::request(method, &format!("/{path}"));
                if let Some(s) = &source {
                    h = h.with_property(&SOURCE_ADDRESS, s.as_bytes());
                }
                if let Some(id) = &identity {
                    h = h.with_property(&[PROPERTY], id);
                }
                let out = on_request_headers(&mut h, &feed_cfg(), FeedView::Loaded(&ix), NOW);
                match out.verdict {
                    Verdict::Continue => prop_assert!(h.response.is_none()),
                    Verdict::Responded => {
                        assert_denial(h.response.as_ref(), &[403], Some("test-rid"));
                    }
                    other => prop_assert!(false, "unexpected verdict {:?}", other),
                }
            }

            #[test]
            fn any_feed_body_is_parsed_or_refused(
                body in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..300),
                    prop::collection::vec(
                        (
                            prop::sample::select(vec!["user", "ip", "device", "user_api", "x", ""]),
                            prop_oneof!["[ -~]{0,30}".prop_map(serde_json::Value::from), any::<i64>().prop_map(serde_json::Value::from), Just(serde_json::Value::Null)],
                            prop::option::of("[ -~]{0,30}"),
                            prop::option::of(any::<i64>()),
                        ),
                        0..6,
                    )
                    .prop_map(|es| {
                        let entries: Vec<serde_json::Value> = es
                            .into_iter()
                            .map(|(t, v, api, exp)| serde_json::json!({"type": t, "value": v, "api": api, "expires_at": exp, "reason": "r"}))
                            .collect();
                        serde_json::to_vec(&serde_json::json!({"version": 3, "entries": entries})).unwrap()
                    }),
                ],
            ) {
                if let Ok(parsed) = crate::feed::parse(&body, 1000, NOW) {
                    let _ = Index::build(&parsed.entries, NOW);
                }
                let _ = crate::feed::decode_index(&body, NOW, 1000);
            }
        }
    }
}
