//! fds-block's decision as a pure function: the request's inputs in, a
//! [`Decision`] out, no host call. Each input is a closure the decision
//! calls at most once and only when a list needs it (the client address for
//! IP entries, the verified identity for user/device entries, the request
//! line for the user's user+API entries), so the host adapter
//! ([`crate::filter::decide`]) reads no more than before, and the same core
//! runs behind every build (per-filter module, suite, chain).

use std::net::IpAddr;

use filter_core::identity::Identity;

use crate::config::{Compiled, UntilLoaded};
use crate::filter::{blocked, Decision, FeedView, Source};
use crate::index::Index;

/// The request, as lazily read inputs.
pub struct Inputs<A, I, R>
where
    A: FnOnce() -> Option<IpAddr>,
    I: FnOnce() -> Option<Identity>,
    R: FnOnce() -> (String, String),
{
    /// Envoy's resolved client address (None: unusable).
    pub address: A,
    /// The verified identity a filter before handed over.
    pub identity: I,
    /// `(method, path without query)`.
    pub request_line: R,
}

/// Decides on a request. `now`: Unix seconds (entries expire against it).
pub fn decide<A, I, R>(
    config: &Compiled,
    feed: FeedView<'_>,
    now: u64,
    inputs: Inputs<A, I, R>,
) -> Decision
where
    A: FnOnce() -> Option<IpAddr>,
    I: FnOnce() -> Option<Identity>,
    R: FnOnce() -> (String, String),
{
    let feed_index = match feed {
        FeedView::Off => None,
        FeedView::Loaded(ix) => Some(ix),
        FeedView::NotLoaded => match config.feed.as_ref().map(|f| f.until_loaded) {
            Some(UntilLoaded::StaticOnly) | None => None,
            Some(UntilLoaded::Deny) => return Decision::Unavailable,
        },
    };
    let lists: [(Option<&Index>, Source); 2] = [
        (Some(&config.static_index), Source::Static),
        (feed_index, Source::Feed),
    ];
    let lists = lists
        .iter()
        .filter_map(|(ix, src)| ix.filter(|ix| !ix.is_empty()).map(|ix| (ix, *src)));

    // 1. The client address (only if any list has IP entries).
    let mut address = Some(inputs.address);
    let mut ip: Option<Option<IpAddr>> = None;
    for (ix, src) in lists.clone() {
        if !ix.has_ip() {
            continue;
        }
        if ip.is_none() {
            ip = Some(address.take().and_then(|f| f()));
        }
        if let Some(hit) = ip.flatten().and_then(|a| ix.ip(a, now)) {
            return Decision::Block(blocked(hit, src));
        }
    }

    // 2. The verified identity (only if any list has identity entries).
    if !lists.clone().any(|(ix, _)| ix.has_identity()) {
        return Decision::Allow;
    }
    let Some(id) = (inputs.identity)() else {
        return Decision::Allow;
    };
    let mut request_line = Some(inputs.request_line);
    let mut method_path: Option<(String, String)> = None;
    for (ix, src) in lists {
        if let Some(user) = id.user.as_deref() {
            if let Some(hit) = ix.user(user, now) {
                return Decision::Block(blocked(hit, src));
            }
        }
        if let Some(device) = id.device.as_deref() {
            if let Some(hit) = ix.device(device, now) {
                return Decision::Block(blocked(hit, src));
            }
        }
        if let Some(user) = id.user.as_deref() {
            if ix.has_user_api(user) {
                if method_path.is_none() {
                    method_path = request_line.take().map(|f| f());
                }
                if let Some((method, path)) = &method_path {
                    if let Some(hit) = ix.user_api(user, method, path, now) {
                        return Decision::Block(blocked(hit, src));
                    }
                }
            }
        }
    }
    Decision::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::entry::Kind;
    use filter_core::identity::Source as IdSource;
    use std::cell::Cell;

    const NOW: u64 = 1_750_000_000;

    fn cfg(entries: &str) -> Compiled {
        load(format!(r#"{{"entries": {entries}}}"#).as_bytes()).unwrap()
    }

    fn user(u: &str) -> Option<Identity> {
        let mut id = Identity::new(IdSource::Jwt);
        id.user = Some(u.into());
        Some(id)
    }

    /// Runs the decision with plain values; counts the inputs it asked for.
    fn run(
        c: &Compiled,
        ip: Option<&str>,
        id: Option<Identity>,
        line: (&str, &str),
    ) -> (Decision, u32) {
        let asked = Cell::new(0);
        let d = decide(
            c,
            FeedView::Off,
            NOW,
            Inputs {
                address: || {
                    asked.set(asked.get() + 1);
                    ip.and_then(|s| s.parse().ok())
                },
                identity: || {
                    asked.set(asked.get() + 1);
                    id
                },
                request_line: || {
                    asked.set(asked.get() + 1);
                    (line.0.to_string(), line.1.to_string())
                },
            },
        );
        (d, asked.get())
    }

    fn kind(d: &Decision) -> Option<Kind> {
        match d {
            Decision::Block(b) => Some(b.kind),
            _ => None,
        }
    }

    #[test]
    fn an_address_in_a_listed_network_is_blocked() {
        let c = cfg(r#"[{"type":"ip","value":"10.0.0.0/8","reason":"x"}]"#);
        let (d, asked) = run(&c, Some("10.1.2.3"), None, ("GET", "/"));
        assert_eq!(kind(&d), Some(Kind::Ip));
        assert_eq!(asked, 1, "the address only");
        assert_eq!(
            run(&c, Some("11.0.0.1"), None, ("GET", "/")).0,
            Decision::Allow
        );
        assert_eq!(run(&c, None, None, ("GET", "/")).0, Decision::Allow);
    }

    #[test]
    fn the_identity_is_asked_for_only_when_a_list_has_identity_entries() {
        let c = cfg(r#"[{"type":"ip","value":"10.0.0.1","reason":"x"}]"#);
        let (d, asked) = run(&c, Some("127.0.0.1"), user("u1"), ("GET", "/"));
        assert_eq!((d, asked), (Decision::Allow, 1));
        let c = cfg(r#"[{"type":"user","value":"u1","reason":"x"}]"#);
        let (d, asked) = run(&c, Some("127.0.0.1"), user("u1"), ("GET", "/"));
        assert_eq!(kind(&d), Some(Kind::User));
        assert_eq!(asked, 1, "the identity only: no IP entries");
        assert_eq!(run(&c, None, user("u2"), ("GET", "/")).0, Decision::Allow);
        assert_eq!(run(&c, None, None, ("GET", "/")).0, Decision::Allow);
    }

    #[test]
    fn a_user_api_block_reads_the_request_line_and_holds_only_that_api() {
        let c =
            cfg(r#"[{"type":"user_api","value":"u1","api":"POST /api/v1/payments","reason":"x"}]"#);
        let (d, asked) = run(&c, None, user("u1"), ("POST", "/api/v1/payments/9"));
        assert_eq!(kind(&d), Some(Kind::UserApi));
        assert_eq!(asked, 2, "identity and request line");
        assert_eq!(
            run(&c, None, user("u1"), ("GET", "/api/v1/payments/9")).0,
            Decision::Allow
        );
        let (d, asked) = run(&c, None, user("u2"), ("POST", "/api/v1/payments"));
        assert_eq!(
            (d, asked),
            (Decision::Allow, 1),
            "another user: no request line read"
        );
    }

    #[test]
    fn an_unloaded_feed_denies_only_when_configured_so() {
        let deny =
            load(br#"{"feed":{"cluster":"fds","path":"/v1/blocklist","until_loaded":"deny"}}"#)
                .unwrap();
        let d = decide(
            &deny,
            FeedView::NotLoaded,
            NOW,
            Inputs {
                address: || None,
                identity: || None,
                request_line: || (String::new(), String::new()),
            },
        );
        assert_eq!(d, Decision::Unavailable);
    }
}
