//! The passport issuer (18081): a deterministic user/device context lookup.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::fault;
use crate::http::{self, Resp};

/// State of the issuer: how many lookups it served.
#[derive(Debug, Default)]
pub struct IssuerState {
    calls: AtomicU64,
    /// DEMO/TEST ONLY: `POST /_control/delay_ms` delays every lookup.
    delay: fault::Delay,
}

/// Handles one request to the issuer.
pub async fn handle(state: &IssuerState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let method = req.method();

    if path == "/v1/context" {
        if method != Method::GET {
            return http::method_not_allowed("GET");
        }
        state.calls.fetch_add(1, Ordering::SeqCst);
        let user = http::query_param(query, "user");
        state.delay.apply().await;
        return lookup(user, query).await;
    }
    if let Some(user) = user_from_path(path) {
        if method != Method::GET {
            return http::method_not_allowed("GET");
        }
        state.calls.fetch_add(1, Ordering::SeqCst);
        state.delay.apply().await;
        return lookup(Some(user), query).await;
    }
    if path == "/_control/delay_ms" {
        return fault::handle_delay(&state.delay, req).await;
    }
    match (path, method) {
        ("/stats", &Method::GET) => http::json(
            StatusCode::OK,
            &json!({ "calls": state.calls.load(Ordering::SeqCst) }),
        ),
        ("/stats", _) => http::method_not_allowed("GET"),
        ("/stats/reset", &Method::POST) => {
            state.calls.store(0, Ordering::SeqCst);
            http::json(StatusCode::OK, &json!({ "calls": 0 }))
        }
        ("/stats/reset", _) => http::method_not_allowed("POST"),
        _ => http::not_found(),
    }
}

/// `/v1/users/<user-id>/context` → the decoded user id.
fn user_from_path(path: &str) -> Option<String> {
    let id = path.strip_prefix("/v1/users/")?.strip_suffix("/context")?;
    (!id.is_empty() && !id.contains('/')).then(|| http::path_decode(id))
}

async fn lookup(user: Option<String>, query: &str) -> Resp {
    http::apply_delay(query).await;
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return http::error(
            StatusCode::BAD_REQUEST,
            "missing_user",
            "query parameter `user` is required",
        );
    };
    let device = http::query_param(query, "device").filter(|d| !d.is_empty());
    match context(&user, device.as_deref()) {
        Some(ctx) => http::json(StatusCode::OK, &ctx),
        None => http::error(StatusCode::NOT_FOUND, "not_found", "unknown user"),
    }
}

/// The deterministic context of a user, `None` for unknown users
/// (ids starting with `unknown`).
pub fn context(user: &str, device: Option<&str>) -> Option<Value> {
    if user.starts_with("unknown") {
        return None;
    }
    Some(json!({
        "user_id": user,
        "device_id": device,
        "consents": consents(user),
        "risk_level": risk_level(user),
        "tier": "standard",
    }))
}

/// Users whose id ends with an even digit consented to analytics only;
/// everyone else to marketing and analytics.
pub fn consents(user: &str) -> &'static [&'static str] {
    let ends_even = user
        .chars()
        .last()
        .and_then(|c| c.to_digit(10))
        .is_some_and(|d| d % 2 == 0);
    if ends_even {
        &["analytics"]
    } else {
        &["marketing", "analytics"]
    }
}

/// `risky*` → high, `suspect*` → medium, everyone else → low.
pub fn risk_level(user: &str) -> &'static str {
    if user.starts_with("risky") {
        "high"
    } else if user.starts_with("suspect") {
        "medium"
    } else {
        "low"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_context() {
        let ctx = context("alice", Some("phone-1")).unwrap_or_default();
        assert_eq!(
            ctx,
            json!({
                "user_id": "alice",
                "device_id": "phone-1",
                "consents": ["marketing", "analytics"],
                "risk_level": "low",
                "tier": "standard",
            })
        );
        let ctx = context("risky-42", None).unwrap_or_default();
        assert_eq!(ctx.get("device_id"), Some(&Value::Null));
        assert_eq!(ctx.get("consents"), Some(&json!(["analytics"])));
        assert_eq!(ctx.get("risk_level"), Some(&json!("high")));
        assert_eq!(risk_level("suspect-1"), "medium");
        assert_eq!(consents("user-7"), ["marketing", "analytics"]);
        assert!(context("unknown-1", None).is_none());
    }

    #[test]
    fn user_in_path() {
        assert_eq!(
            user_from_path("/v1/users/al%20ice/context").as_deref(),
            Some("al ice")
        );
        assert_eq!(user_from_path("/v1/users//context"), None);
        assert_eq!(user_from_path("/v1/users/a/b/context"), None);
        assert_eq!(user_from_path("/v1/users/a"), None);
    }
}
