//! The provider's metadata: its discovery document (OpenID Connect
//! Discovery 1.0) and its JWKS, fetched through an Envoy cluster, kept per
//! worker, refreshed on a timer, served stale within `max_stale` while the
//! provider cannot be reached. Pure: the glue sends the fetches this asks
//! for and hands the answers back.

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::config::Compiled;
use jwt::jwks::{self, KeySet, Strictness};

/// Largest discovery document accepted (bytes).
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// Scheme, authority and path of an http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    /// `host[:port]`, as written.
    pub authority: String,
    /// The path and query (`/` when empty).
    pub path: String,
}

impl Origin {
    /// Parses `http(s)://authority[/path]`; no userinfo, no fragment, no
    /// query (an issuer has none; endpoints may have a query: see
    /// [`Origin::parse_endpoint`]).
    pub fn parse(url: &str) -> Option<Origin> {
        let o = Origin::parse_endpoint(url)?;
        (!o.path.contains('?')).then_some(o)
    }

    /// Like [`Origin::parse`], a query allowed.
    pub fn parse_endpoint(url: &str) -> Option<Origin> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        if url.contains('#') || url.chars().any(|c| c.is_control() || c == ' ' || c == '\\') {
            return None;
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Some(Origin {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            path,
        })
    }

    fn same_origin(&self, other: &Origin) -> bool {
        self.scheme == other.scheme && self.authority.eq_ignore_ascii_case(&other.authority)
    }
}

#[derive(Deserialize)]
struct RawDiscovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// What the gateway uses of the discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Browser-facing: the login redirect goes there (absolute URL).
    pub authorization_endpoint: String,
    /// Fetched through the cluster: its path and query.
    pub token_path: String,
    /// Fetched through the cluster: its path and query.
    pub jwks_path: String,
    /// Browser-facing, optional.
    pub end_session_endpoint: Option<String>,
}

/// Parses and checks a discovery document against the configuration.
pub fn parse_discovery(c: &Compiled, body: &[u8]) -> Result<Metadata, String> {
    if body.len() > MAX_DISCOVERY_BYTES {
        return Err(format!(
            "discovery document over {MAX_DISCOVERY_BYTES} bytes"
        ));
    }
    let raw: RawDiscovery =
        serde_json::from_slice(body).map_err(|e| format!("discovery document: {e}"))?;
    // OpenID Connect Discovery 1.0 §4.3: the issuer must be identical.
    if raw.issuer != c.issuer {
        return Err(format!(
            "discovery document names issuer {:?}, configured {:?}",
            raw.issuer, c.issuer
        ));
    }
    if let Some(m) = &raw.code_challenge_methods_supported {
        if !m.iter().any(|x| x == "S256") {
            return Err("the provider does not support PKCE S256".into());
        }
    }
    let backchannel = |what: &str, url: &str| -> Result<String, String> {
        let o =
            Origin::parse_endpoint(url).ok_or_else(|| format!("{what} {url:?} is not a URL"))?;
        if !o.same_origin(&c.issuer_origin) {
            return Err(format!(
                "{what} {url:?} is not on the issuer's origin (the gateway reaches only {})",
                c.issuer_origin.authority
            ));
        }
        Ok(o.path)
    };
    let browser = |what: &str, url: &str| -> Result<String, String> {
        let o =
            Origin::parse_endpoint(url).ok_or_else(|| format!("{what} {url:?} is not a URL"))?;
        if o.scheme == "http" && c.issuer_origin.scheme == "https" {
            return Err(format!("{what} {url:?} downgrades to http"));
        }
        Ok(url.to_string())
    };
    Ok(Metadata {
        authorization_endpoint: browser("authorization_endpoint", &raw.authorization_endpoint)?,
        token_path: backchannel("token_endpoint", &raw.token_endpoint)?,
        jwks_path: backchannel("jwks_uri", &raw.jwks_uri)?,
        end_session_endpoint: match raw.end_session_endpoint {
            Some(u) => Some(browser("end_session_endpoint", &u)?),
            None => None,
        },
    })
}

/// Parses a JWKS for the configured ID-token algorithms (bad keys skipped,
/// as for jwt's remote JWKS, as long as one is usable).
pub fn parse_jwks(body: &[u8], algs: &[Algorithm]) -> Result<KeySet, String> {
    jwks::parse(body, algs, Strictness::SkipBadKeys).map_err(|e| e.to_string())
}

/// Which document a fetch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    Discovery,
    Jwks,
}

/// A worker's view of the provider.
#[derive(Debug, Default)]
pub struct ProviderState {
    pub metadata: Option<(Metadata, u64)>,
    pub keys: Option<(KeySet, u64)>,
    /// A fetch in flight (its callout token), at most one at a time.
    pub in_flight: Option<(u32, Doc)>,
    /// Earliest time of the next try after a failure or a kid miss.
    pub next_try: u64,
    /// The JWKS should be fetched again early (an unknown `kid`).
    pub jwks_wanted: bool,
}

impl ProviderState {
    /// The metadata, unless older than `max_stale` past its refresh.
    pub fn metadata(&self, c: &Compiled, now: u64) -> Option<&Metadata> {
        self.metadata
            .as_ref()
            .filter(|(_, at)| fresh_enough(c, *at, now))
            .map(|(m, _)| m)
    }

    /// The keys, unless older than `max_stale` past their refresh.
    pub fn keys(&self, c: &Compiled, now: u64) -> Option<&KeySet> {
        self.keys
            .as_ref()
            .filter(|(_, at)| fresh_enough(c, *at, now))
            .map(|(k, _)| k)
    }

    /// What to fetch now, if anything (one document at a time: discovery
    /// first, then the JWKS it names).
    pub fn due(&self, c: &Compiled, now: u64) -> Option<Doc> {
        if self.in_flight.is_some() || now < self.next_try {
            return None;
        }
        let stale = |at: u64| now >= at.saturating_add(c.refresh_secs);
        match (&self.metadata, &self.keys) {
            (None, _) => Some(Doc::Discovery),
            (Some((_, at)), _) if stale(*at) => Some(Doc::Discovery),
            (Some(_), None) => Some(Doc::Jwks),
            (Some(_), Some((_, at))) if stale(*at) || self.jwks_wanted => Some(Doc::Jwks),
            _ => None,
        }
    }

    /// A fetch has started.
    pub fn started(&mut self, token: u32, doc: Doc) {
        self.in_flight = Some((token, doc));
    }

    /// A fetch could not start.
    pub fn not_started(&mut self, c: &Compiled, now: u64) {
        self.next_try = now.saturating_add(c.retry_secs);
    }

    /// The answer to fetch `token`: `None` if it is not ours, else what
    /// happened, for the log.
    pub fn on_answer(
        &mut self,
        c: &Compiled,
        token: u32,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Option<Result<Doc, (Doc, String)>> {
        let (t, doc) = self.in_flight?;
        if t != token {
            return None;
        }
        self.in_flight = None;
        let outcome = if status != Some("200") {
            Err(format!(
                "status {}",
                status.unwrap_or("none (timeout or reset)")
            ))
        } else {
            match doc {
                Doc::Discovery => parse_discovery(c, body).map(|m| {
                    // A new JWKS location: fetch it now.
                    let moved = self
                        .metadata
                        .as_ref()
                        .is_none_or(|(old, _)| old.jwks_path != m.jwks_path);
                    if moved {
                        self.keys = None;
                    }
                    self.metadata = Some((m, now));
                }),
                Doc::Jwks => parse_jwks(body, &c.algorithms).map(|k| {
                    self.keys = Some((k, now));
                    self.jwks_wanted = false;
                }),
            }
        };
        Some(match outcome {
            Ok(()) => Ok(doc),
            Err(e) => {
                self.next_try = now.saturating_add(c.retry_secs);
                if doc == Doc::Jwks {
                    // asked again at the next try only
                    self.jwks_wanted = false;
                }
                Err((doc, e))
            }
        })
    }

    /// An ID token named a `kid` the keys do not have: fetch the JWKS again
    /// at the next opportunity (at most once per `retry_interval`).
    pub fn kid_miss(&mut self, c: &Compiled, now: u64) -> bool {
        let recent = self
            .keys
            .as_ref()
            .is_some_and(|(_, at)| now < at.saturating_add(c.retry_secs));
        if recent || self.jwks_wanted {
            return false;
        }
        self.jwks_wanted = true;
        true
    }
}

fn fresh_enough(c: &Compiled, at: u64, now: u64) -> bool {
    now < at
        .saturating_add(c.refresh_secs)
        .saturating_add(c.max_stale_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::compiled;

    const DISCOVERY: &str = r#"{
        "issuer": "http://localhost:18084",
        "authorization_endpoint": "http://localhost:18084/authorize",
        "token_endpoint": "http://localhost:18084/token",
        "jwks_uri": "http://localhost:18084/jwks?v=1",
        "end_session_endpoint": "http://localhost:18084/logout",
        "code_challenge_methods_supported": ["S256"]
    }"#;

    #[test]
    fn origins() {
        let o = Origin::parse("https://sso.example.com").unwrap();
        assert_eq!(
            (o.authority.as_str(), o.path.as_str()),
            ("sso.example.com", "/")
        );
        let o = Origin::parse("http://h:1/realms/x").unwrap();
        assert_eq!(o.path, "/realms/x");
        for bad in [
            "ftp://h",
            "http://",
            "http://u@h/",
            "http://h/#x",
            "http://h/?q",
            "h/x",
            "http://h\\x",
        ] {
            assert!(Origin::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            Origin::parse_endpoint("http://h?x=1").unwrap().path,
            "/?x=1"
        );
    }

    #[test]
    fn discovery_is_checked_against_the_config() {
        let c = compiled();
        let m = parse_discovery(&c, DISCOVERY.as_bytes()).unwrap();
        assert_eq!(m.token_path, "/token");
        assert_eq!(m.jwks_path, "/jwks?v=1");
        assert_eq!(m.authorization_endpoint, "http://localhost:18084/authorize");
        let swap = |from: &str, to: &str| DISCOVERY.replace(from, to);
        for (doc, why) in [
            (
                swap(
                    "\"issuer\": \"http://localhost:18084\"",
                    "\"issuer\": \"http://evil\"",
                ),
                "issuer",
            ),
            (
                swap("/token\"", "/token\"")
                    .replace("http://localhost:18084/token", "http://evil/token"),
                "origin",
            ),
            (swap("[\"S256\"]", "[\"plain\"]"), "S256"),
            ("{}".to_string(), "discovery"),
        ] {
            let e = parse_discovery(&c, doc.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{e} / {why}");
        }
    }

    #[test]
    fn fetch_schedule_discovery_then_jwks_then_refresh() {
        let c = compiled();
        let mut s = ProviderState::default();
        assert_eq!(s.due(&c, 100), Some(Doc::Discovery));
        s.started(7, Doc::Discovery);
        assert_eq!(s.due(&c, 100), None, "one at a time");
        assert_eq!(s.on_answer(&c, 8, Some("200"), b"", 100), None, "not ours");
        assert_eq!(
            s.on_answer(&c, 7, Some("200"), DISCOVERY.as_bytes(), 100),
            Some(Ok(Doc::Discovery))
        );
        assert_eq!(s.due(&c, 100), Some(Doc::Jwks));
        s.started(9, Doc::Jwks);
        let r = s.on_answer(&c, 9, None, b"", 101).unwrap();
        assert!(r.is_err());
        assert_eq!(s.due(&c, 102), None, "retry waits");
        assert_eq!(s.due(&c, 106), Some(Doc::Jwks));
        // metadata served stale within max_stale, then dropped
        assert!(s.metadata(&c, 100 + 300 + 24 * 3600 - 1).is_some());
        assert!(s.metadata(&c, 100 + 300 + 24 * 3600).is_none());
    }
}
