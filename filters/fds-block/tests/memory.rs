//! The memory of the block-list index with 100,000 entries, measured with a
//! counting global allocator (`stats_alloc`: bytes allocated minus freed
//! while the index is built).
//!
//! Native (64-bit pointers); on wasm32 pointers and `usize` are half as
//! wide, so the figure is an upper bound for the filter's VM. The mix is the
//! one `bench/gen_config.py` writes: 40% users, 20% devices, 30% IPs (half
//! IPv4 /32, a quarter IPv4 /24, a quarter IPv6 /64), 10% user+API, each
//! with a 20-byte reason. Run with `--nocapture` to see the numbers (they
//! are in docs/filters/fds-block.md).

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use fds_block::entry::{Entry, Kind};
use fds_block::feed::{decode_index, encode_list};
use fds_block::index::Index;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed since `region` started.
fn live(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize + c.bytes_reallocated
}

/// The generator's mix (keep in sync with bench/gen_config.py).
#[allow(clippy::unwrap_used)] // test helper: the mix is valid by construction
fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let reason = format!("fds case #{i:011}");
            let (kind, value, api) = match i % 10 {
                0..=3 => (Kind::User, format!("user-{i:07}"), None),
                4 | 5 => (Kind::Device, format!("device-{i:07}"), None),
                6 => (
                    Kind::Ip,
                    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    None,
                ),
                7 if i % 20 == 7 => (
                    Kind::Ip,
                    format!("100.{}.{}.0/24", 64 + ((i / 20) >> 8), (i / 20) & 255),
                    None,
                ),
                7 => (
                    Kind::Ip,
                    format!("2001:db8:{:x}:{:x}::/64", (i >> 16) & 0xffff, i & 0xffff),
                    None,
                ),
                8 => (
                    Kind::Ip,
                    format!(
                        "10.{}.{}.{}",
                        128 | ((i >> 16) & 127),
                        (i >> 8) & 255,
                        i & 255
                    ),
                    None,
                ),
                _ => (
                    Kind::UserApi,
                    format!("user-{i:07}"),
                    Some("POST /api/v1/orders"),
                ),
            };
            Entry::new(kind, &value, api, None, &reason, Some(i as u64)).unwrap()
        })
        .collect()
}

#[test]
fn index_of_100k_entries_stays_small_and_lookups_stay_cheap() {
    let list = entries(100_000);
    let region = Region::new(GLOBAL);
    let index = Index::build(&list, 0);
    let index_bytes = live(&region);
    let counts = index.counts();
    assert_eq!(counts.total(), 100_000);

    let stored = encode_list(1, 1, &list);
    let region = Region::new(GLOBAL);
    let rebuild = decode_index(&stored, 0, 100_000).unwrap();
    let rebuilt_bytes = live(&region);
    assert_eq!(rebuild.index.counts(), counts);
    drop(rebuild);

    // lookups: a miss on every kind (the common case) and a hit on each
    let t = std::time::Instant::now();
    let rounds = 200_000u32;
    let mut hits = 0u32;
    for i in 0..rounds {
        let ip = std::net::IpAddr::from([192, 168, (i >> 8) as u8, i as u8]);
        hits += u32::from(index.ip(ip, 1).is_some());
        hits += u32::from(index.user("someone-else", 1).is_some());
        hits += u32::from(
            index
                .user_api("someone-else", "POST", "/api/v1/orders", 1)
                .is_some(),
        );
    }
    let per_request = t.elapsed() / rounds;
    assert_eq!(hits, 0);
    assert!(index.ip("10.0.0.6".parse().unwrap(), 1).is_some());
    assert!(index.ip("100.64.0.77".parse().unwrap(), 1).is_some());
    assert!(index.ip("2001:db8:0:11::1".parse().unwrap(), 1).is_some());
    assert!(index.user("user-0000000", 1).is_some());
    assert!(index.device("device-0000004", 1).is_some());
    assert!(index
        .user_api("user-0000009", "POST", "/api/v1/orders", 1)
        .is_some());

    println!(
        "100k entries ({} user, {} device, {} ip, {} user_api): index {:.1} MiB ({} B/entry); \
         shared-data list {:.1} MiB, index rebuilt from it {:.1} MiB; \
         miss lookup (ip+user+user_api) {:?} per request (this build profile)",
        counts.user,
        counts.device,
        counts.ip,
        counts.user_api,
        index_bytes as f64 / 1048576.0,
        index_bytes / 100_000,
        stored.len() as f64 / 1048576.0,
        rebuilt_bytes as f64 / 1048576.0,
        per_request,
    );
    // The documented bound: well under 32 MiB per worker for 100k entries.
    assert!(
        index_bytes < 32 * 1024 * 1024,
        "index uses {index_bytes} bytes"
    );
}
