//! DEMO/TEST ONLY fault controls shared by the dependencies of the gateways
//! (passport issuer, FDS feed, OIDC provider), for the soak's fault schedule
//! (docs/soak.md) and tests that need a dependency to blink:
//!
//! * `POST /_control/down {"ms": N}` on the issuer, the FDS feed or the OIDC
//!   provider: for the next N ms (≤ [`MAX_DOWN_MS`]; 0 ends an outage at
//!   once) that service is down: every request on it, on new and on
//!   already open keep-alive connections, gets its connection closed without
//!   an answer (what a client sees of a crashed process), except this
//!   control itself, so an outage can be ended early. The outage ends by
//!   itself, so a test that dies half-way leaves nothing broken.
//! * `POST /_control/delay_ms {"ms": N}` on the issuer: every context lookup
//!   waits N ms (≤ 30000; 0 turns it off) before answering, on top of a
//!   lookup's own `?delay_ms=` (the OIDC provider has its own
//!   `/_control/delay_ms`, for `/token` and `/jwks`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::http::{self, Resp};

/// Longest outage one `/_control/down` asks for (10 minutes).
pub const MAX_DOWN_MS: u64 = 600_000;

/// The path of the outage control.
pub const DOWN_PATH: &str = "/_control/down";

/// One service's outage: down until a point in time (milliseconds since
/// the process started; 0 = up).
#[derive(Debug)]
pub struct Outage {
    started: Instant,
    down_until_ms: AtomicU64,
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            down_until_ms: AtomicU64::new(0),
        }
    }
}

impl Outage {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Down for `ms` from now (0: up at once).
    pub fn set_down_for(&self, ms: u64) {
        let until = if ms == 0 {
            0
        } else {
            self.now_ms().saturating_add(ms.min(MAX_DOWN_MS))
        };
        self.down_until_ms.store(until, Ordering::SeqCst);
    }

    /// Whether the service is down now.
    pub fn is_down(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Ordering::SeqCst)
    }

    /// Milliseconds of outage left (0 when up).
    pub fn remaining_ms(&self) -> u64 {
        self.down_until_ms
            .load(Ordering::SeqCst)
            .saturating_sub(self.now_ms())
    }
}

/// A global delay (the issuer's `/_control/delay_ms`).
#[derive(Debug, Default)]
pub struct Delay {
    ms: AtomicU64,
}

impl Delay {
    pub fn set(&self, ms: u64) -> u64 {
        let ms = ms.min(http::MAX_DELAY_MS);
        self.ms.store(ms, Ordering::SeqCst);
        ms
    }

    pub fn get(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }

    /// Sleeps for the configured delay, if any.
    pub async fn apply(&self) {
        let ms = self.get();
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MsControl {
    ms: u64,
}

async fn read_ms(req: Request<Incoming>) -> Result<u64, Resp> {
    if req.method() != Method::POST {
        return Err(http::method_not_allowed("POST"));
    }
    let body = http::read_body(req.into_body()).await?;
    serde_json::from_slice::<MsControl>(&body)
        .map(|c| c.ms)
        .map_err(|e| http::error(StatusCode::BAD_REQUEST, "invalid_control", &e.to_string()))
}

/// `POST /_control/down {"ms": N}`.
pub async fn handle_down(outage: &Outage, req: Request<Incoming>) -> Resp {
    match read_ms(req).await {
        Ok(ms) => {
            outage.set_down_for(ms);
            http::json(StatusCode::OK, &json!({ "down_ms": outage.remaining_ms() }))
        }
        Err(resp) => resp,
    }
}

/// `POST /_control/delay_ms {"ms": N}`.
pub async fn handle_delay(delay: &Delay, req: Request<Incoming>) -> Resp {
    match read_ms(req).await {
        Ok(ms) => http::json(StatusCode::OK, &json!({ "delay_ms": delay.set(ms) })),
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_ends_by_itself_or_when_set_to_zero() {
        let outage = Outage::default();
        assert!(!outage.is_down());
        outage.set_down_for(60_000);
        assert!(outage.is_down());
        assert!(outage.remaining_ms() > 59_000);
        outage.set_down_for(0);
        assert!(!outage.is_down());
        outage.set_down_for(1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!outage.is_down(), "a 1 ms outage is over after 5 ms");
    }

    #[test]
    fn an_outage_and_a_delay_are_capped() {
        let outage = Outage::default();
        outage.set_down_for(u64::MAX);
        assert!(outage.remaining_ms() <= MAX_DOWN_MS);
        let delay = Delay::default();
        assert_eq!(delay.set(u64::MAX), http::MAX_DELAY_MS);
        assert_eq!(delay.set(0), 0);
    }
}
