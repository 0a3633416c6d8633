//! Reports of invalid signatures and replays to the FDS service: the event,
//! its JSON body, and the per-worker token bucket that keeps an attack from
//! turning the gateway into a flood. Sending is the glue's job (one
//! `dispatch_http_call` from the root context, never awaited).

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// The signature did not verify (HMAC mismatch).
    InvalidSignature,
    /// The signature verified but the body does not match its digest.
    DigestMismatch,
    /// A verified signature whose nonce was already used.
    Replay,
}

/// One suspicious event, as the FDS service receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub source: &'static str,
    pub kind: ReportKind,
    /// The key id the request claimed (verified only for `replay` and `digest_mismatch`).
    pub keyid: String,
    pub device: Option<String>,
    pub user: Option<String>,
    pub verified: bool,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Envoy's resolved client address.
    pub client: Option<String>,
    pub request_id: Option<String>,
    /// Unix seconds.
    pub at: u64,
    /// Reports this worker dropped (rate limit) since its previous report.
    pub suppressed: u64,
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
    /// Dropped since the last allowed report.
    pub suppressed: u64,
}

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter {
            burst,
            per_minute,
            tokens: u64::from(burst) * 60_000,
            last_ms: 0,
            suppressed: 0,
        }
    }

    /// Takes a token at `now_ms`; `Some(suppressed_before)` when allowed.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if self.last_ms == 0 || elapsed > 0 {
            let cap = u64::from(self.burst) * 60_000;
            self.tokens =
                (self.tokens + elapsed.saturating_mul(u64::from(self.per_minute))).min(cap);
            self.last_ms = now_ms;
        }
        if self.tokens >= 60_000 {
            self.tokens -= 60_000;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
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
        assert!((0..3).all(|_| r.allow(t0).is_some()));
        assert_eq!(r.allow(t0), None);
        assert_eq!(r.allow(t0 + 500), None);
        // 60/min = one per second
        assert_eq!(r.allow(t0 + 1000), Some(2));
        assert_eq!(r.allow(t0 + 1000), None);
    }

    #[test]
    fn a_flood_sends_at_most_burst_plus_rate() {
        let mut r = RateLimiter::new(60, 10);
        let sent = (0..100_000u64)
            .filter(|i| r.allow(5_000_000 + i / 100).is_some())
            .count(); // 100k attempts within one second
        assert_eq!(sent, 10, "the burst, and no refill before a full second");
    }

    #[test]
    fn report_body_is_json_with_kind_in_snake_case() {
        let rep = Report {
            source: "replay-guard",
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
            suppressed: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&rep.body()).unwrap();
        assert_eq!(v["kind"], "replay");
        assert_eq!(v["source"], "replay-guard");
    }
}
