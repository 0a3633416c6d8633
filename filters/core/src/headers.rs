//! Header names the filters agree on. All lower case, as Envoy hands them over.

/// Request id set (or preserved) by Envoy's connection manager; echoed on every denial.
pub const REQUEST_ID: &str = "x-request-id";
pub const CONTENT_TYPE: &str = "content-type";
pub const CONTENT_LENGTH: &str = "content-length";
pub const CONTENT_ENCODING: &str = "content-encoding";
pub const AUTHORIZATION: &str = "authorization";
pub const PATH: &str = ":path";
pub const METHOD: &str = ":method";
pub const AUTHORITY: &str = ":authority";
/// The gateway-signed user/device context forwarded to upstreams (passport filter).
pub const PASSPORT: &str = "x-passport";
/// Client certificate details; only the secure listener's Envoy may set it.
pub const XFCC: &str = "x-forwarded-client-cert";
/// Prefix of the identity headers that verifying filters set for the filters
/// after them; verifying filters always strip client copies first.
pub const GATEWAY_IDENTITY_PREFIX: &str = "x-gateway-";
