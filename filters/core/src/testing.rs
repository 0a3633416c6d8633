//! Helpers shared by the filter crates' tests (feature `testing`, enabled
//! only from their `[dev-dependencies]`, so no filter module carries it).

use std::path::Path;

/// Asserts that `<manifest_dir>/config.schema.json` is `schema`, pretty
/// printed with a trailing newline; with `UPDATE_SCHEMAS` set it rewrites the
/// file first. `package` names the crate in the hint.
#[allow(clippy::panic)]
pub fn assert_schema_current<T: serde::Serialize + ?Sized>(
    manifest_dir: &str,
    package: &str,
    schema: &T,
) {
    let path = Path::new(manifest_dir).join("config.schema.json");
    let want = match serde_json::to_string_pretty(schema) {
        Ok(s) => s + "\n",
        Err(e) => panic!("schema of {package} does not serialise: {e}"),
    };
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        if let Err(e) = std::fs::write(&path, &want) {
            panic!("cannot write {}: {e}", path.display());
        }
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: run `UPDATE_SCHEMAS=1 cargo test -p {package}`",
        path.display()
    );
}

/// Asserts that `resp` is one of our denials: a status from `statuses`, a
/// JSON body that is exactly `{"error": code, "message": text}` (both
/// non-empty strings), `content-type: application/json`, and the request's
/// `x-request-id` echoed when `request_id` is given. Returns the error code.
#[allow(clippy::panic)]
pub fn assert_denial(
    resp: Option<&crate::host::SentResponse>,
    statuses: &[u16],
    request_id: Option<&str>,
) -> String {
    let Some(resp) = resp else {
        panic!("no local reply was sent");
    };
    let body = String::from_utf8_lossy(&resp.body);
    assert!(
        statuses.contains(&resp.status),
        "status {} not in {statuses:?}: {body}",
        resp.status
    );
    assert_eq!(
        resp.header(crate::headers::CONTENT_TYPE),
        Some("application/json")
    );
    if let Some(id) = request_id {
        assert_eq!(resp.header(crate::headers::REQUEST_ID), Some(id));
    }
    let json = resp.json();
    let Some(obj) = json.as_object() else {
        panic!("denial body is not a JSON object: {body}");
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message"], "{body}");
    let code = obj
        .get("error")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let message = obj
        .get("message")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    assert!(!code.is_empty() && !message.is_empty(), "{body}");
    code.to_string()
}

/// Cases per property test: `PROPTEST_CASES` when set (to explore further),
/// else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
