//! Reports of invalid signatures and replays to the FDS service: the event
//! the request logic records ([`Event`]), the JSON body the FDS service
//! receives ([`Report`]), and the per-worker token bucket ([`RateLimiter`])
//! that keeps an attack from turning the gateway into a flood. Events are
//! coalesced per suspect before they are sent ([`crate::coalesce`]).
//! Sending is the glue's job (one `dispatch_http_call` from the root
//! context, never awaited).

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// The signature did not verify (HMAC mismatch).
    InvalidSignature,
    /// The signature verified but the body does not match its digest.
    DigestMismatch,
    /// A verified signature whose nonce was already used.
    Replay,
}

/// One suspicious event, as the request logic saw it (and, as a report's
/// sample, as the FDS service receives it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: ReportKind,
    /// The key id the request claimed (verified only when `verified`).
    pub keyid: String,
    /// The verified device (`None` when the key id is only claimed).
    pub device: Option<String>,
    /// The verified user (`None` when the key id is only claimed).
    pub user: Option<String>,
    /// The signature verified, so `device` and `user` are the key's.
    pub verified: bool,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Envoy's resolved client address (`ip:port`).
    pub client: Option<String>,
    pub request_id: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// One report, as the FDS service receives it: one suspect, one or more of
/// its events. `sample` describes one request: the first event this
/// report counts. The JSON shape is a superset of the
/// one-event-per-report shape (`count`, `first_at`, `last_at` were added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub source: &'static str,
    /// The first event this report counts, its fields inline (`kind`,
    /// `keyid`, `device`, `user`, `verified`, `method`, `path`, `client`,
    /// `request_id`, `at` = `first_at`): the one-event shape, unchanged.
    #[serde(flatten)]
    pub sample: Event,
    /// Events this worker dropped (pending table full, report not sent)
    /// since its previous report, whatever their suspect: counted in no
    /// report's `count`.
    pub suppressed: u64,
    /// Events of this suspect this report stands for (at least 1): those
    /// since the previous report of the same suspect from this worker.
    pub count: u64,
    /// Unix seconds of the first and last of those events.
    pub first_at: u64,
    pub last_at: u64,
}

impl Report {
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A token bucket: `burst` tokens, refilled at `per_minute`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    burst: u32,
    per_minute: u32,
    /// Tokens × 60000 (milli-token-minutes) so refills stay integral.
    tokens: u64,
    last_ms: u64,
}

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            burst,
            per_minute,
            tokens: u64::from(burst) * 60_000,
            last_ms: 0,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if self.last_ms == 0 || elapsed > 0 {
            let cap = u64::from(self.burst) * 60_000;
            self.tokens = self
                .tokens
                .saturating_add(elapsed.saturating_mul(u64::from(self.per_minute)))
                .min(cap);
            self.last_ms = now_ms;
        }
    }

    /// Whether a token is available at `now_ms`, without taking it.
    pub fn ready(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= 60_000
    }

    /// Takes a token at `now_ms`; false when the bucket is empty.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        if self.ready(now_ms) {
            self.tokens -= 60_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut r = RateLimiter::new(60, 3);
        let t0 = 1_000_000;
        assert!((0..3).all(|_| r.allow(t0)));
        assert!(!r.allow(t0));
        assert!(!r.allow(t0 + 500));
        // 60/min = one per second
        assert!(r.allow(t0 + 1000));
        assert!(!r.allow(t0 + 1000));
    }

    #[test]
    fn a_flood_sends_at_most_burst_plus_rate() {
        let mut r = RateLimiter::new(60, 10);
        let sent = (0..100_000u64)
            .filter(|i| r.allow(5_000_000 + i / 100))
            .count(); // 100k attempts within one second
        assert_eq!(sent, 10, "the burst, and no refill before a full second");
    }

    #[test]
    fn ready_does_not_take_a_token() {
        let mut r = RateLimiter::new(60, 1);
        assert!(r.ready(1_000) && r.ready(1_000));
        assert!(r.allow(1_000));
        assert!(!r.ready(1_000));
    }

    #[test]
    fn report_body_is_json_with_kind_in_snake_case_and_the_coalescing_fields() {
        let rep = Report {
            source: "replay-guard",
            sample: Event {
                kind: ReportKind::Replay,
                keyid: "d:u:1".into(),
                device: Some("d".into()),
                user: Some("u".into()),
                verified: true,
                method: "GET".into(),
                path: "/api/v1/x".into(),
                client: None,
                request_id: Some("r".into()),
                at: 1,
            },
            suppressed: 0,
            count: 3,
            first_at: 1,
            last_at: 2,
        };
        let v: serde_json::Value = serde_json::from_slice(&rep.body()).unwrap();
        assert_eq!(v["kind"], "replay");
        assert_eq!(v["source"], "replay-guard");
        // Every field of the one-event shape is still there.
        for f in [
            "keyid",
            "device",
            "user",
            "verified",
            "method",
            "path",
            "client",
            "request_id",
            "at",
            "suppressed",
        ] {
            assert!(v.get(f).is_some(), "{f} missing: {v}");
        }
        assert_eq!(
            (
                v["count"].as_u64(),
                v["first_at"].as_u64(),
                v["last_at"].as_u64()
            ),
            (Some(3), Some(1), Some(2))
        );
    }
}
