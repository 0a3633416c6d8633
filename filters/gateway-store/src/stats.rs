//! The counters behind `GET /stats`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters since start-up.
#[derive(Debug, Default)]
pub struct Stats {
    /// Claim requests that passed validation (each one reached the store's
    /// queue).
    pub claims: AtomicU64,
    /// Claims answered 201.
    pub claimed: AtomicU64,
    /// Claims answered 409 (the key was already claimed).
    pub conflicts: AtomicU64,
    /// Requests answered 503 `store_unavailable` (Redis did not answer in time
    /// or failed).
    pub unavailable: AtomicU64,
    /// Claims that Redis granted after their request had been answered 503,
    /// and that the store therefore deleted again (compare-and-delete).
    pub late_released: AtomicU64,
    /// Valid `GET /v1/session/...` requests without a query (`GET`).
    pub session_get: AtomicU64,
    /// Valid `GET /v1/session/...?idle_ms=N` requests (`GETEX`).
    pub session_touch: AtomicU64,
    /// Valid `GET /v1/session/...?consume=1` requests (`GETDEL`).
    pub session_consume: AtomicU64,
    /// Valid `PUT /v1/session/...` requests.
    pub session_set: AtomicU64,
    /// Valid `DELETE /v1/session/...` requests.
    pub session_delete: AtomicU64,
    /// Requests refused before any Redis command (400, 404, 405, 408, 413).
    pub bad_requests: AtomicU64,
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// The counters as a JSON object, names as in the docs.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "claims": get(&self.claims),
            "claimed": get(&self.claimed),
            "conflicts": get(&self.conflicts),
            "unavailable": get(&self.unavailable),
            "late_released": get(&self.late_released),
            "session_get": get(&self.session_get),
            "session_touch": get(&self.session_touch),
            "session_consume": get(&self.session_consume),
            "session_set": get(&self.session_set),
            "session_delete": get(&self.session_delete),
            "bad_requests": get(&self.bad_requests),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_every_counter() {
        let stats = Stats::default();
        bump(&stats.claims);
        bump(&stats.late_released);
        bump(&stats.session_consume);
        let json = stats.to_json();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), 11);
        assert_eq!(json["claims"], 1);
        assert_eq!(json["late_released"], 1);
        assert_eq!(json["session_consume"], 1);
        assert_eq!(json["session_touch"], 0);
        assert_eq!(json["bad_requests"], 0);
    }
}
