//! The lookup structure built from a list of entries.
//!
//! * users, devices: one `HashMap` each (exact match, O(1));
//! * IP/CIDR: one `HashMap<network bits, _>` per prefix length that occurs in
//!   the list, probed longest first: at most 33 (IPv4) or 129 (IPv6) hash
//!   probes, in practice as many as there are distinct prefix lengths (a
//!   handful). Overlapping networks and per-entry expiry need no special
//!   care: an expired longest match simply falls through to the next length;
//! * user+API: `HashMap<user, Vec<rule>>`; only that user's few rules are
//!   scanned.
//!
//! Several entries for the same key merge into one: the one that lasts
//! longest wins (a never-expiring entry beats any expiry).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::entry::{Api, Entry, Kind};

/// What is kept per key: when it stops applying and what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Unix seconds; `u64::MAX` for never.
    pub expires_at: u64,
    /// The feed entry id (`None` for static entries).
    pub id: Option<u64>,
    pub reason: Box<str>,
}

impl Meta {
    fn of(e: &Entry) -> Meta {
        Meta {
            expires_at: e.expires_at.unwrap_or(u64::MAX),
            id: e.id,
            reason: e.reason.as_str().into(),
        }
    }
    pub fn live_at(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

fn merge(slot: &mut Meta, new: Meta) {
    if new.expires_at > slot.expires_at {
        *slot = new;
    }
}

#[derive(Debug, Clone)]
struct ApiRule {
    api: Api,
    meta: Meta,
}

/// Entry counts by kind (after merging duplicates: distinct keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub user: usize,
    pub device: usize,
    pub ip: usize,
    pub user_api: usize,
}

impl Counts {
    pub fn get(&self, k: Kind) -> usize {
        match k {
            Kind::User => self.user,
            Kind::Device => self.device,
            Kind::Ip => self.ip,
            Kind::UserApi => self.user_api,
        }
    }
    pub fn total(&self) -> usize {
        self.user + self.device + self.ip + self.user_api
    }
}

/// The compiled block list.
#[derive(Debug, Clone, Default)]
pub struct Index {
    users: HashMap<Box<str>, Meta>,
    devices: HashMap<Box<str>, Meta>,
    /// prefix length (longest first) → network bits → meta.
    v4: BTreeMap<Reverse<u8>, HashMap<u32, Meta>>,
    v6: BTreeMap<Reverse<u8>, HashMap<u128, Meta>>,
    user_apis: HashMap<Box<str>, Vec<ApiRule>>,
    user_api_rules: usize,
}

/// A match: which entry blocks the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a> {
    pub kind: Kind,
    /// The key that matched (user/device id, network, `user METHOD /prefix`).
    pub key: String,
    pub meta: &'a Meta,
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

impl Index {
    /// Builds an index from validated entries, skipping those already
    /// expired at `now`.
    pub fn build<'a>(entries: impl IntoIterator<Item = &'a Entry>, now: u64) -> Index {
        let mut ix = Index::default();
        for e in entries {
            if e.live_at(now) {
                ix.insert(e);
            }
        }
        ix
    }

    pub fn insert(&mut self, e: &Entry) {
        let meta = Meta::of(e);
        match e.kind {
            Kind::User => insert_exact(&mut self.users, &e.value, meta),
            Kind::Device => insert_exact(&mut self.devices, &e.value, meta),
            Kind::Ip => match e.net {
                Some(IpNet::V4(n)) => {
                    let t = self.v4.entry(Reverse(n.prefix_len())).or_default();
                    insert_net(t, u32::from(n.network()), meta);
                }
                Some(IpNet::V6(n)) => {
                    let t = self.v6.entry(Reverse(n.prefix_len())).or_default();
                    insert_net(t, u128::from(n.network()), meta);
                }
                None => {}
            },
            Kind::UserApi => {
                let Some(api) = &e.api else { return };
                let rules = self.user_apis.entry(e.value.as_str().into()).or_default();
                match rules.iter_mut().find(|r| r.api == *api) {
                    Some(r) => merge(&mut r.meta, meta),
                    None => {
                        rules.push(ApiRule {
                            api: api.clone(),
                            meta,
                        });
                        self.user_api_rules += 1;
                    }
                }
            }
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            user: self.users.len(),
            device: self.devices.len(),
            ip: self.v4.values().map(HashMap::len).sum::<usize>()
                + self.v6.values().map(HashMap::len).sum::<usize>(),
            user_api: self.user_api_rules,
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.has_ip() && !self.has_identity()
    }

    /// Any user, device or user+API entry? (Tells the caller whether the
    /// identity is worth reading.)
    pub fn has_identity(&self) -> bool {
        !self.users.is_empty() || !self.devices.is_empty() || !self.user_apis.is_empty()
    }

    /// Any user+API rule for this user? (Tells the caller whether the method
    /// and path are worth reading.)
    pub fn has_user_api(&self, user: &str) -> bool {
        self.user_apis.contains_key(user)
    }

    pub fn has_ip(&self) -> bool {
        !self.v4.is_empty() || !self.v6.is_empty()
    }

    pub fn user(&self, user: &str, now: u64) -> Option<Hit<'_>> {
        let m = self.users.get(user).filter(|m| m.live_at(now))?;
        Some(Hit {
            kind: Kind::User,
            key: user.to_string(),
            meta: m,
        })
    }

    pub fn device(&self, device: &str, now: u64) -> Option<Hit<'_>> {
        let m = self.devices.get(device).filter(|m| m.live_at(now))?;
        Some(Hit {
            kind: Kind::Device,
            key: device.to_string(),
            meta: m,
        })
    }

    /// Longest live network containing `ip`.
    pub fn ip(&self, ip: IpAddr, now: u64) -> Option<Hit<'_>> {
        let ip = canonical_ip(ip);
        match ip {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                self.v4.iter().find_map(|(Reverse(len), t)| {
                    let net = mask4(bits, *len);
                    t.get(&net).filter(|m| m.live_at(now)).map(|m| Hit {
                        kind: Kind::Ip,
                        key: format!("{}/{len}", std::net::Ipv4Addr::from(net)),
                        meta: m,
                    })
                })
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                self.v6.iter().find_map(|(Reverse(len), t)| {
                    let net = mask6(bits, *len);
                    t.get(&net).filter(|m| m.live_at(now)).map(|m| Hit {
                        kind: Kind::Ip,
                        key: format!("{}/{len}", std::net::Ipv6Addr::from(net)),
                        meta: m,
                    })
                })
            }
        }
    }

    /// A live user+API rule of `user` covering (method, path without query).
    pub fn user_api(&self, user: &str, method: &str, path: &str, now: u64) -> Option<Hit<'_>> {
        let rules = self.user_apis.get(user)?;
        rules
            .iter()
            .find(|r| r.meta.live_at(now) && r.api.matches(method, path))
            .map(|r| Hit {
                kind: Kind::UserApi,
                key: format!("{user} {}", r.api.to_spec()),
                meta: &r.meta,
            })
    }
}

fn insert_exact(map: &mut HashMap<Box<str>, Meta>, key: &str, meta: Meta) {
    match map.get_mut(key) {
        Some(slot) => merge(slot, meta),
        None => {
            map.insert(key.into(), meta);
        }
    }
}

fn insert_net<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Meta>, key: K, meta: Meta) {
    match map.get_mut(&key) {
        Some(slot) => merge(slot, meta),
        None => {
            map.insert(key, meta);
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is judged as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: Kind, value: &str, api: Option<&str>, exp: Option<u64>) -> Entry {
        Entry::new(kind, value, api, exp, "r", Some(1)).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn users_and_devices_match_exactly() {
        let ix = Index::build(
            &[
                e(Kind::User, "mallory", None, None),
                e(Kind::Device, "dev-1", None, None),
            ],
            0,
        );
        assert!(ix.user("mallory", 5).is_some());
        assert!(ix.user("Mallory", 5).is_none());
        assert!(ix.user("dev-1", 5).is_none());
        assert!(ix.device("dev-1", 5).is_some());
        assert_eq!(
            ix.counts(),
            Counts {
                user: 1,
                device: 1,
                ip: 0,
                user_api: 0
            }
        );
    }

    #[test]
    fn cidrs_match_longest_prefix_first_and_ipv6_too() {
        let ix = Index::build(
            &[
                e(Kind::Ip, "198.51.100.0/24", None, None),
                e(Kind::Ip, "198.51.100.7", None, None),
                e(Kind::Ip, "2001:db8:1::/48", None, None),
                e(Kind::Ip, "0.0.0.0/0", None, Some(10)),
            ],
            0,
        );
        assert_eq!(
            ix.ip(ip("198.51.100.7"), 20).unwrap().key,
            "198.51.100.7/32"
        );
        assert_eq!(
            ix.ip(ip("198.51.100.8"), 20).unwrap().key,
            "198.51.100.0/24"
        );
        assert!(ix.ip(ip("198.51.101.8"), 20).is_none());
        // the /0 applies until it expires
        assert_eq!(ix.ip(ip("9.9.9.9"), 5).unwrap().key, "0.0.0.0/0");
        assert!(ix.ip(ip("2001:db8:1:ffff::1"), 20).is_some());
        assert!(ix.ip(ip("2001:db8:2::1"), 20).is_none());
        assert!(ix.ip(ip("::ffff:198.51.100.9"), 20).is_some(), "mapped v4");
    }

    #[test]
    fn an_expired_longest_match_falls_through_to_a_live_shorter_one() {
        let ix = Index::build(
            &[
                e(Kind::Ip, "10.0.0.1", None, Some(100)),
                e(Kind::Ip, "10.0.0.0/8", None, None),
            ],
            0,
        );
        assert_eq!(ix.ip(ip("10.0.0.1"), 50).unwrap().key, "10.0.0.1/32");
        assert_eq!(ix.ip(ip("10.0.0.1"), 150).unwrap().key, "10.0.0.0/8");
    }

    #[test]
    fn entries_expire_at_request_time_without_a_rebuild() {
        let ix = Index::build(&[e(Kind::User, "u", None, Some(100))], 0);
        assert!(ix.user("u", 99).is_some());
        assert!(ix.user("u", 100).is_none());
    }

    #[test]
    fn entries_expired_at_build_time_are_left_out() {
        let ix = Index::build(&[e(Kind::User, "u", None, Some(100))], 200);
        assert!(ix.is_empty());
    }

    #[test]
    fn duplicates_merge_to_the_longest_lasting() {
        let ix = Index::build(
            &[
                e(Kind::User, "u", None, Some(100)),
                e(Kind::User, "u", None, None),
                e(Kind::User, "u", None, Some(50)),
            ],
            0,
        );
        assert_eq!(ix.counts().user, 1);
        assert!(ix.user("u", 1_000_000).is_some());
    }

    #[test]
    fn user_api_blocks_only_that_api_for_that_user() {
        let ix = Index::build(
            &[e(Kind::UserApi, "alice", Some("POST /api/v1/orders"), None)],
            0,
        );
        assert!(ix.has_user_api("alice"));
        assert!(!ix.has_user_api("bob"));
        assert!(ix.user_api("alice", "POST", "/api/v1/orders", 1).is_some());
        assert!(ix.user_api("alice", "GET", "/api/v1/orders", 1).is_none());
        assert!(ix
            .user_api("alice", "GET", "/api/v1/users/alice", 1)
            .is_none());
        assert!(ix.user_api("bob", "POST", "/api/v1/orders", 1).is_none());
        assert!(ix.user("alice", 1).is_none());
    }
}
