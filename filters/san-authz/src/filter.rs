//! san-authz's per-request logic: [`decide`] is the whole decision on the
//! request headers as a pure function (a [`RequestView`], the connection's
//! certificate and the clock in, header edits, identity and denial out), and
//! [`Request::on_headers`] the thin adapter that feeds it from an
//! [`HttpHost`] and applies it (the proxy-wasm glue in `lib.rs` calls that).

use filter_core::decision::{self, RouteNames};
use filter_core::identity::{Identity, Source as IdSource};
use filter_core::request::{Decision as RequestDecision, Edits, RequestView};
use filter_core::{headers, Denial, HttpHost, Verdict};

use crate::cert::{self, CertError, SignatureCache};
use crate::config::{Compiled, Rule, Source};
use crate::path;
use crate::san::{authority_host, Sans};
use crate::xfcc;

/// Filter-state path of the connection's verified peer certificate (PEM),
/// as Envoy exposes it to wasm.
pub const PEER_CERTIFICATE: [&str; 2] = ["connection", "peer_certificate"];

/// What happened to a request, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Allowed by a rule; identity published.
    #[default]
    Allowed,
    /// Refused with a local reply.
    Denied,
    /// Would have been refused; let through (dry run), no identity.
    DryRunDenied,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub outcome: Outcome,
    /// Why it was (or would have been) denied: a snake_case reason.
    pub reason: Option<&'static str>,
    /// True when the certificate itself was refused (not merely unauthorised).
    pub certificate_rejected: bool,
    /// The rule that allowed it.
    pub rule: Option<String>,
    /// The authorised SAN.
    pub san: Option<String>,
}

/// The first rule (in order) that allows `method` on `path` at `host` for
/// a certificate with `sans`, and the SAN it matched.
pub fn authorise<'r, 's>(
    rules: &'r [Rule],
    sans: &'s Sans,
    method: &str,
    host: Option<&str>,
    path: &str,
) -> Option<(&'r Rule, &'s str)> {
    rules.iter().find_map(|rule| {
        let host_ok =
            rule.hosts.is_empty() || host.is_some_and(|h| rule.hosts.iter().any(|p| p.matches(h)));
        if !host_ok || !rule.paths.iter().any(|p| p.matches(method, path)) {
            return None;
        }
        rule.sans
            .iter()
            .find_map(|m| m.first_match(sans))
            .map(|san| (rule, san))
    })
}

/// Why no certificate could be taken from the request.
fn xfcc_refusal(e: &xfcc::XfccError) -> &'static str {
    match e {
        xfcc::XfccError::TooManyElements(_) => "xfcc_too_many_elements",
        _ => "xfcc_malformed",
    }
}

/// The DER client certificate, from the connection or the trusted XFCC
/// element, `Hash=` checked.
fn certificate(
    cfg: &Compiled,
    peer_certificate: impl FnOnce() -> Option<Vec<u8>>,
    xfcc_values: &[&str],
) -> Result<Vec<u8>, (&'static str, bool)> {
    let cert_err = |e: CertError| (e.reason(), true);
    match cfg.source {
        Source::Connection => {
            let pem = peer_certificate()
                .filter(|b| !b.is_empty())
                .ok_or(cert_err(CertError::Missing))?;
            let pem = String::from_utf8(pem).map_err(|_| cert_err(CertError::Pem))?;
            cert::der_from_pem(&pem).map_err(cert_err)
        }
        Source::Xfcc => {
            if xfcc_values.is_empty() {
                return Err(cert_err(CertError::Missing));
            }
            let total: usize = xfcc_values.iter().map(|v| v.len() + 1).sum();
            if total > cfg.max_xfcc_bytes {
                return Err(("xfcc_too_large", true));
            }
            // Repeated header lines form one comma-separated list.
            let joined = xfcc_values.join(",");
            let element = xfcc::last_element(&joined, cfg.max_xfcc_elements)
                .map_err(|e| (xfcc_refusal(&e), true))?;
            let encoded = element
                .single("cert")
                .map_err(|()| ("xfcc_ambiguous", true))?
                .ok_or(("xfcc_without_cert", true))?;
            let hash = element
                .single("hash")
                .map_err(|()| ("xfcc_ambiguous", true))?;
            let pem = percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .map_err(|_| cert_err(CertError::Pem))?;
            let der = cert::der_from_pem(&pem).map_err(cert_err)?;
            match hash {
                Some(h) if !h.eq_ignore_ascii_case(&cert::sha256_hex(&der)) => {
                    Err(cert_err(CertError::HashMismatch))
                }
                None if cfg.require_hash => Err(("xfcc_without_hash", true)),
                _ => Ok(der),
            }
        }
    }
}

/// What [`decide`] decided, beyond the request decision itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The header edits, the identity and, for a refusal, the reply.
    pub decision: RequestDecision,
    /// Why it is refused (the metric `reason`).
    pub reason: Option<&'static str>,
    /// The certificate itself was refused (not merely unauthorised).
    pub certificate_rejected: bool,
    /// The rule that allowed it, and the SAN it matched.
    pub rule: Option<String>,
    pub san: Option<String>,
    /// Debug-log context of a refusal (the certificate's SANs, the request).
    pub context: String,
}

/// The whole decision on the request headers, without a host call: the
/// client's copy of the SAN header removed on every request, the
/// certificate taken (from `peer_certificate`, the connection's PEM, read
/// only in `connection` mode, or the trusted XFCC element) and verified at
/// `now` (Unix seconds, asked for only once a certificate is found), the
/// path normalised, the first rule that allows it; then the SAN header and
/// the identity for the filters after this one, or the refusal.
pub fn decide(
    cfg: &Compiled,
    cache: &mut SignatureCache,
    req: &RequestView<'_>,
    peer_certificate: impl FnOnce() -> Option<Vec<u8>>,
    now: impl FnOnce() -> i64,
) -> Decided {
    let mut edits = Edits::default();
    // Whatever happens next, a client's copy of the SAN header never passes.
    if let Some(h) = &cfg.upstream_san_header {
        if req.has(h) {
            edits.remove(h);
        }
    }
    let refuse = |edits: Edits, reason, rejected, denial: Denial, context: String| Decided {
        decision: RequestDecision::Deny(edits, denial),
        reason: Some(reason),
        certificate_rejected: rejected,
        rule: None,
        san: None,
        context,
    };
    let forbidden = || {
        Denial::forbidden(
            "forbidden",
            "the client certificate does not allow this request",
        )
    };
    let xfcc_values: Vec<&str> = req.values(headers::XFCC).collect();
    let der = match certificate(cfg, peer_certificate, &xfcc_values) {
        Ok(d) => d,
        Err((reason, rejected)) => {
            return refuse(edits, reason, rejected, forbidden(), String::new())
        }
    };
    let verified = match cert::verify(&der, now(), &cfg.policy, cache) {
        Ok(v) => v,
        Err(e) => return refuse(edits, e.reason(), true, forbidden(), String::new()),
    };
    let sans_ctx = || {
        format!(
            "uri_sans={:?} dns_sans={:?}",
            verified.sans.uris, verified.sans.dns
        )
    };
    let method = req.method;
    let Some(norm) = path::normalise(req.path()) else {
        return refuse(
            edits,
            "invalid_path",
            false,
            Denial::bad_request("invalid_path", "the request path is not acceptable"),
            sans_ctx(),
        );
    };
    let req_host = authority_host(req.authority.unwrap_or(""));
    let Some((rule, san)) = authorise(
        &cfg.rules,
        &verified.sans,
        method,
        req_host.as_deref(),
        &norm,
    ) else {
        let ctx = format!("{} method={method:?} path={norm:?}", sans_ctx());
        return refuse(edits, "no_rule", false, forbidden(), ctx);
    };
    if let Some(h) = &cfg.upstream_san_header {
        edits.set.push((h.clone(), san.to_string()));
    }
    let mut id = Identity::new(IdSource::Mtls);
    id.san = Some(san.to_string());
    id.exp = u64::try_from(verified.not_after).ok();
    edits.identity = Some(id);
    Decided {
        decision: RequestDecision::Continue(edits),
        reason: None,
        certificate_rejected: false,
        rule: Some(rule.name.clone()),
        san: Some(san.to_string()),
        context: String::new(),
    }
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Request {
    request_id: Option<String>,
    pub decision: Decision,
    /// Envoy gateway/route names, read on a denial (decision log) and
    /// reused by the glue for the metric labels.
    pub names: Option<RouteNames>,
}

impl Request {
    /// Request headers arrived: the host adapter of [`decide`] (one read of
    /// the header map; the decision applied, or in dry run only its edits).
    pub fn on_headers<H: HttpHost>(
        &mut self,
        cfg: &Compiled,
        cache: &mut SignatureCache,
        host: &mut H,
    ) -> Verdict {
        let all = host.request_headers();
        let req = RequestView::new(&all);
        self.request_id = req.request_id.map(str::to_string);
        let d = {
            let h = &*host;
            decide(
                cfg,
                cache,
                &req,
                || {
                    (cfg.source == Source::Connection)
                        .then(|| h.property(&PEER_CERTIFICATE))
                        .flatten()
                },
                || i64::try_from(h.unix_seconds()).unwrap_or(i64::MAX),
            )
        };
        self.decision.rule = d.rule.clone();
        self.decision.san = d.san.clone();
        let RequestDecision::Deny(edits, denial) = &d.decision else {
            self.decision.outcome = Outcome::Allowed;
            return d.decision.apply(host, req.request_id);
        };
        let reason = d.reason.unwrap_or("unknown");
        self.decision.reason = Some(reason);
        self.decision.certificate_rejected = d.certificate_rejected;
        // The decision line (denial path only: two property reads); `code`
        // is the reply's error code, the finer `reason` is the metric label
        // and stays in the debug line with the certificate's SANs.
        let names = decision::route_names(&*host);
        decision::Decision::denial("san-authz", req.method, denial.status, denial.code)
            .dry_run(cfg.dry_run)
            .at(&names)
            .request_id(self.request_id.as_deref())
            .trace_id(decision::trace_id(&all).as_deref())
            .emit();
        self.names = Some(names);
        log::debug!(
            "san-authz {} status={} reason={reason} {} request_id={}",
            if cfg.dry_run { "would deny" } else { "deny" },
            denial.status,
            d.context,
            self.request_id.as_deref().unwrap_or("-")
        );
        if cfg.dry_run {
            self.decision.outcome = Outcome::DryRunDenied;
            edits.apply(host);
            return Verdict::Continue;
        }
        self.decision.outcome = Outcome::Denied;
        d.decision.apply(host, req.request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use filter_core::host::FakeHost;
    use std::time::{Duration, UNIX_EPOCH};

    fn demo(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../../examples/certs/{name}.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn secure() -> Compiled {
        load(include_bytes!(
            "../../../examples/config/san-authz/secure.json"
        ))
        .unwrap()
    }

    fn behind_edge() -> Compiled {
        load(include_bytes!(
            "../../../examples/config/san-authz/behind-edge.json"
        ))
        .unwrap()
    }

    fn now_host(method: &str, path: &str) -> FakeHost {
        let mut h = FakeHost::request(method, path);
        h.time = std::time::SystemTime::now();
        h
    }

    /// A request over a TLS connection whose peer presented `cert`.
    fn over_mtls(cert: &str, method: &str, path: &str) -> FakeHost {
        now_host(method, path).with_property(&PEER_CERTIFICATE, demo(cert).as_bytes())
    }

    /// An XFCC element as Envoy writes it for `cert`.
    fn xfcc_for(pem: &str, uri_text: &str) -> String {
        let der = cert::der_from_pem(pem).unwrap();
        let enc: String =
            percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        format!(
            "Hash={};Cert=\"{enc}\";Subject=\"CN=x\";URI={uri_text}",
            cert::sha256_hex(&der)
        )
    }

    fn run(cfg: &Compiled, h: &mut FakeHost) -> (Verdict, Decision) {
        let mut r = Request::default();
        let mut cache = SignatureCache::new(4);
        let v = r.on_headers(cfg, &mut cache, h);
        (v, r.decision)
    }

    fn status(cfg: &Compiled, h: &mut FakeHost) -> u16 {
        match run(cfg, h).0 {
            Verdict::Continue => 200,
            _ => h.response.as_ref().unwrap().status,
        }
    }

    const PARTNER: &str = "spiffe://partner.example/ns/partner-a/sa/billing";
    const ADMIN: &str = "spiffe://internal.example/ns/tools/sa/admin";

    fn view_headers(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "localhost".to_string()),
        ];
        h.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        h
    }

    fn now_s() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    #[test]
    fn the_pure_decision_allows_with_the_san_and_the_identity() {
        let cfg = secure();
        let all = view_headers("GET", "/partner/v1/billing/x", &[]);
        let mut cache = SignatureCache::new(4);
        let pem = demo("partner-billing");
        let d = decide(
            &cfg,
            &mut cache,
            &RequestView::new(&all),
            || Some(pem.into_bytes()),
            now_s,
        );
        assert_eq!(d.san.as_deref(), Some(PARTNER));
        let RequestDecision::Continue(edits) = &d.decision else {
            panic!("{d:?}")
        };
        let id = edits.identity.as_ref().unwrap();
        assert_eq!(
            (id.source, id.san.as_deref()),
            (IdSource::Mtls, Some(PARTNER))
        );
    }

    #[test]
    fn the_pure_decision_refuses_without_reading_the_clock_when_there_is_no_certificate() {
        let cfg = secure();
        let all = view_headers("GET", "/partner/v1/billing/x", &[]);
        let mut cache = SignatureCache::new(4);
        let d = decide(
            &cfg,
            &mut cache,
            &RequestView::new(&all),
            || None,
            || panic!("the clock is read only once a certificate is found"),
        );
        assert_eq!(d.reason, Some(CertError::Missing.reason()));
        assert!(d.certificate_rejected);
        assert_eq!(d.decision.denial().map(|x| x.status), Some(403));
    }

    #[test]
    fn a_refusal_of_the_pure_decision_still_strips_the_client_san_header() {
        // behind-edge.json: XFCC mode, and this request has none.
        let cfg = behind_edge();
        let h = cfg.upstream_san_header.clone().unwrap();
        let all = view_headers("DELETE", "/nowhere", &[(h.as_str(), "spoofed")]);
        let mut cache = SignatureCache::new(4);
        let d = decide(&cfg, &mut cache, &RequestView::new(&all), || None, now_s);
        let RequestDecision::Deny(edits, _) = &d.decision else {
            panic!("{d:?}")
        };
        assert_eq!(edits.remove, vec![h]);
        assert!(edits.identity.is_none());
    }

    #[test]
    fn partner_may_get_and_post_billing_only() {
        let cfg = secure();
        for (m, p, want) in [
            ("GET", "/partner/v1/billing/invoices", 200),
            ("POST", "/partner/v1/billing/invoices?x=1", 200),
            ("DELETE", "/partner/v1/billing/invoices", 403),
            ("GET", "/partner/v1/billingx", 403),
            ("GET", "/partner/v1/billing", 403),
            ("GET", "/internal/x", 403),
            ("GET", "/", 403),
        ] {
            let mut h = over_mtls("partner-billing", m, p);
            assert_eq!(status(&cfg, &mut h), want, "{m} {p}");
        }
    }

    #[test]
    fn admin_may_do_anything_under_internal_only() {
        let cfg = secure();
        for (m, p, want) in [
            ("GET", "/internal/x", 200),
            ("DELETE", "/internal/a/b", 200),
            ("GET", "/partner/v1/billing/x", 403),
            ("GET", "/internalx", 403),
        ] {
            let mut h = over_mtls("internal-admin", m, p);
            assert_eq!(status(&cfg, &mut h), want, "{m} {p}");
        }
    }

    #[test]
    fn stranger_is_denied_with_a_json_403_that_names_no_internals() {
        let cfg = secure();
        let mut h = over_mtls("stranger", "GET", "/partner/v1/billing/x");
        let (v, d) = run(&cfg, &mut h);
        assert_eq!(v, Verdict::Responded);
        assert_eq!(d.reason, Some("no_rule"));
        let r = h.response.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.header("x-request-id"), Some("test-rid"));
        let body = String::from_utf8(r.body.clone()).unwrap();
        assert_eq!(r.json()["error"], "forbidden");
        for leak in ["spiffe", "rule", "stranger", "partner", "internal"] {
            assert!(!body.contains(leak), "{body}");
        }
    }

    #[test]
    fn allowed_request_publishes_identity_and_san_header_replacing_client_copy() {
        let cfg = secure();
        let mut h = over_mtls("partner-billing", "GET", "/partner/v1/billing/x")
            .with_header("x-gateway-client-san", ADMIN);
        let (v, d) = run(&cfg, &mut h);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(d.san.as_deref(), Some(PARTNER));
        assert_eq!(d.rule.as_deref(), Some("partner-billing"));
        let vals: Vec<_> = h
            .headers
            .iter()
            .filter(|(n, _)| n == "x-gateway-client-san")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(vals, [PARTNER]);
        let id = Identity::read(&h).unwrap();
        assert_eq!(id.source, IdSource::Mtls);
        assert_eq!(id.san.as_deref(), Some(PARTNER));
        assert!(id.exp.unwrap() > 1_700_000_000);
    }

    #[test]
    fn denied_request_drops_client_san_header_and_publishes_nothing() {
        let cfg = secure();
        let mut h =
            over_mtls("stranger", "GET", "/internal/x").with_header("x-gateway-client-san", ADMIN);
        run(&cfg, &mut h);
        assert_eq!(h.header("x-gateway-client-san"), None);
        assert_eq!(Identity::read(&h), None);
    }

    #[test]
    fn connection_mode_ignores_a_client_xfcc_claiming_admin() {
        let cfg = secure();
        let forged = xfcc_for(&demo("internal-admin"), ADMIN);
        let mut h = over_mtls("partner-billing", "GET", "/internal/x")
            .with_header("x-forwarded-client-cert", &forged);
        assert_eq!(status(&cfg, &mut h), 403);
    }

    #[test]
    fn connection_mode_without_peer_certificate_is_denied() {
        let cfg = secure();
        let mut h = now_host("GET", "/internal/x");
        let (_, d) = run(&cfg, &mut h);
        assert_eq!(d.reason, Some("no_certificate"));
        assert!(d.certificate_rejected);
        assert_eq!(h.response.unwrap().status, 403);
    }

    #[test]
    fn expired_connection_certificate_is_denied() {
        let cfg = secure();
        let mut h = over_mtls("partner-billing", "GET", "/partner/v1/billing/x");
        h.time = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let (_, d) = run(&cfg, &mut h);
        assert_eq!(d.reason, Some("expired"));
    }

    #[test]
    fn traversal_toward_internal_is_never_allowed() {
        let cfg = secure();
        for p in [
            "/partner/v1/billing/../../../internal/x",
            "/partner/v1/billing/%2e%2e/%2e%2e/%2e%2e/internal/x",
            "/partner/v1/billing/..;/..;/..;/internal/x",
            "/partner/v1/billing/%2f..%2f..%2finternal",
        ] {
            let mut h = over_mtls("partner-billing", "GET", p);
            assert_ne!(status(&cfg, &mut h), 200, "{p}");
        }
    }

    #[test]
    fn xfcc_mode_takes_the_certificate_from_the_last_element() {
        let cfg = behind_edge();
        let partner = xfcc_for(&demo("partner-billing"), PARTNER);
        let mut h = now_host("GET", "/partner/v1/billing/x")
            .with_header("x-forwarded-client-cert", &partner);
        let (v, d) = run(&cfg, &mut h);
        assert_eq!(v, Verdict::Continue, "{d:?}");
        assert_eq!(d.san.as_deref(), Some(PARTNER));

        // A client-added element first, the hop's element last: only the last counts.
        let admin = xfcc_for(&demo("internal-admin"), ADMIN);
        let stranger = xfcc_for(&demo("stranger"), ADMIN);
        let mut h = now_host("GET", "/internal/x")
            .with_header("x-forwarded-client-cert", &format!("{admin},{stranger}"));
        assert_eq!(status(&cfg, &mut h), 403);
        // Same, as two header lines.
        let mut h = now_host("GET", "/internal/x")
            .with_header("x-forwarded-client-cert", &admin)
            .with_header("x-forwarded-client-cert", &stranger);
        assert_eq!(status(&cfg, &mut h), 403);
    }

    #[test]
    fn xfcc_uri_text_is_never_trusted() {
        let cfg = behind_edge();
        // The stranger's certificate, with URI= text claiming the admin.
        let forged = xfcc_for(&demo("stranger"), ADMIN);
        let mut h = now_host("GET", "/internal/x").with_header("x-forwarded-client-cert", &forged);
        assert_eq!(status(&cfg, &mut h), 403);
        // URI= alone, no certificate.
        let mut h = now_host("GET", "/internal/x")
            .with_header("x-forwarded-client-cert", &format!("By=x;URI={ADMIN}"));
        let (_, d) = run(&cfg, &mut h);
        assert_eq!(d.reason, Some("xfcc_without_cert"));
    }

    #[test]
    fn xfcc_hash_must_match_and_is_required_when_configured() {
        let cfg = behind_edge();
        let good = xfcc_for(&demo("partner-billing"), PARTNER);
        let wrong = format!("Hash={}{}", "0".repeat(64), &good[69..]);
        let mut h =
            now_host("GET", "/partner/v1/billing/x").with_header("x-forwarded-client-cert", &wrong);
        assert_eq!(run(&cfg, &mut h).1.reason, Some("hash_mismatch"));
        let no_hash = &good[70..];
        assert!(no_hash.starts_with("Cert="), "{no_hash}");
        let mut h = now_host("GET", "/partner/v1/billing/x")
            .with_header("x-forwarded-client-cert", no_hash);
        assert_eq!(run(&cfg, &mut h).1.reason, Some("xfcc_without_hash"));
    }

    #[test]
    fn xfcc_certificate_from_another_ca_is_denied() {
        let cfg = behind_edge();
        let other = xfcc_for(&demo("other-ca-client"), PARTNER);
        let mut h =
            now_host("GET", "/partner/v1/billing/x").with_header("x-forwarded-client-cert", &other);
        let (_, d) = run(&cfg, &mut h);
        assert_eq!(d.reason, Some("untrusted_issuer"));
        assert_eq!(h.response.unwrap().status, 403);
    }

    /// Every leaf-profile violation, on a certificate the source would
    /// otherwise accept: denied with the usual 403 body, reason named,
    /// counted as a certificate rejection, no identity, no SAN header.
    fn assert_leaf_refused(cfg: &Compiled, mut h: FakeHost, reason: &str) {
        h = h.with_header("x-gateway-client-san", PARTNER);
        let (v, d) = run(cfg, &mut h);
        assert_eq!(v, Verdict::Responded, "{reason}");
        assert_eq!(d.reason, Some(reason));
        assert!(d.certificate_rejected);
        let r = h.response.as_ref().unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["error"], "forbidden");
        assert_eq!(h.header("x-gateway-client-san"), None);
        assert_eq!(Identity::read(&h), None);
    }

    mod leaf_profile {
        use super::*;
        use crate::testcerts::{Client, TestCa};
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa,
            KeyUsagePurpose as Ku,
        };

        type Edit = fn(&mut CertificateParams);

        /// Each violation, the reason it is denied with.
        const VIOLATIONS: [(Edit, &str); 4] = [
            (
                |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
                "ca_certificate",
            ),
            (
                |p| p.key_usages = vec![Ku::KeyEncipherment],
                "key_usage_without_digital_signature",
            ),
            (
                |p| p.extended_key_usages = vec![Eku::ServerAuth],
                "eku_without_client_auth",
            ),
            (
                |p| p.extended_key_usages = vec![Eku::Any],
                "eku_without_client_auth",
            ),
        ];

        fn with_peer(leaf: &Client) -> FakeHost {
            now_host("GET", "/partner/v1/billing/x")
                .with_property(&PEER_CERTIFICATE, leaf.pem.as_bytes())
        }

        fn with_xfcc(leaf: &Client) -> FakeHost {
            now_host("GET", "/partner/v1/billing/x")
                .with_header("x-forwarded-client-cert", &xfcc_for(&leaf.pem, PARTNER))
        }

        /// behind-edge.json with the test's CA in place of the demo CA.
        fn behind_edge_trusting(ca: &TestCa) -> Compiled {
            let mut cfg: serde_json::Value = serde_json::from_slice(include_bytes!(
                "../../../examples/config/san-authz/behind-edge.json"
            ))
            .unwrap();
            cfg["identity"]["trusted_cas"] = serde_json::json!([ca.pem()]);
            load(cfg.to_string().as_bytes()).unwrap()
        }

        #[test]
        fn connection_certificate_violating_the_leaf_profile_is_refused() {
            let ca = TestCa::new();
            // The well-formed client passes (secure.json checks no issuer:
            // the handshake did), so each refusal below is the profile's.
            let good = ca.client(|_| {});
            assert_eq!(run(&secure(), &mut with_peer(&good)).0, Verdict::Continue);
            for (edit, reason) in VIOLATIONS {
                assert_leaf_refused(&secure(), with_peer(&ca.client(edit)), reason);
            }
        }

        #[test]
        fn xfcc_certificate_violating_the_leaf_profile_is_refused() {
            let ca = TestCa::new();
            let cfg = behind_edge_trusting(&ca);
            let good = ca.client(|_| {});
            let (v, d) = run(&cfg, &mut with_xfcc(&good));
            assert_eq!(v, Verdict::Continue, "{d:?}");
            for (edit, reason) in VIOLATIONS {
                assert_leaf_refused(&cfg, with_xfcc(&ca.client(edit)), reason);
            }
        }

        #[test]
        fn dry_run_lets_a_leaf_violation_through_without_identity() {
            let ca = TestCa::new();
            let mut cfg = secure();
            cfg.dry_run = true;
            let leaf = ca.client(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
            let mut h = with_peer(&leaf);
            let (v, d) = run(&cfg, &mut h);
            assert_eq!((v, d.outcome), (Verdict::Continue, Outcome::DryRunDenied));
            assert_eq!(d.reason, Some("ca_certificate"));
            assert_eq!(Identity::read(&h), None);
        }
    }

    #[test]
    fn malformed_or_oversized_xfcc_is_denied() {
        let cfg = behind_edge();
        for (value, reason) in [
            ("Cert=\"unterminated", "xfcc_malformed"),
            ("Cert=abc;Cert=def", "xfcc_ambiguous"),
            ("Cert=not-a-pem", "unreadable_certificate"),
        ] {
            let mut h = now_host("GET", "/partner/v1/billing/x")
                .with_header("x-forwarded-client-cert", value);
            assert_eq!(run(&cfg, &mut h).1.reason, Some(reason), "{value}");
        }
        let big = "a".repeat(cfg.max_xfcc_bytes + 1);
        let mut h = now_host("GET", "/partner/v1/billing/x")
            .with_header("x-forwarded-client-cert", &format!("By={big}"));
        assert_eq!(run(&cfg, &mut h).1.reason, Some("xfcc_too_large"));
        let many = vec!["By=a"; cfg.max_xfcc_elements + 1].join(",");
        let mut h =
            now_host("GET", "/partner/v1/billing/x").with_header("x-forwarded-client-cert", &many);
        assert_eq!(run(&cfg, &mut h).1.reason, Some("xfcc_too_many_elements"));
    }

    #[test]
    fn dry_run_lets_denials_through_without_identity() {
        let mut cfg = secure();
        cfg.dry_run = true;
        let mut h =
            over_mtls("stranger", "GET", "/internal/x").with_header("x-gateway-client-san", ADMIN);
        let (v, d) = run(&cfg, &mut h);
        assert_eq!(v, Verdict::Continue);
        assert_eq!(d.outcome, Outcome::DryRunDenied);
        assert!(h.response.is_none());
        assert_eq!(h.header("x-gateway-client-san"), None);
        assert_eq!(Identity::read(&h), None);
    }

    #[test]
    fn a_denial_reads_the_route_names_for_its_labels_and_an_allow_does_not() {
        let cfg = secure();
        let mut h = over_mtls("stranger", "GET", "/internal/x")
            .with_property(&["xds", "virtual_host_name"], b"secure")
            .with_property(&["xds", "route_name"], b"internal");
        let mut r = Request::default();
        let v = r.on_headers(&cfg, &mut SignatureCache::new(4), &mut h);
        assert_eq!(v, Verdict::Responded);
        let names = r.names.unwrap();
        assert_eq!(
            (names.gateway.as_str(), names.route.as_str()),
            ("secure", "internal")
        );
        let mut h = over_mtls("internal-admin", "GET", "/health");
        let mut r = Request::default();
        let v = r.on_headers(&cfg, &mut SignatureCache::new(4), &mut h);
        assert_eq!((v, r.names), (Verdict::Continue, None));
    }

    #[test]
    fn health_is_open_to_the_known_clients_only_and_only_exactly() {
        let cfg = secure();
        for (cert, p, want) in [
            ("partner-billing", "/health", 200),
            ("internal-admin", "/health", 200),
            ("partner-billing", "/health/x", 403),
            ("partner-billing", "/healthz", 403),
            ("stranger", "/health", 403),
        ] {
            let mut h = over_mtls(cert, "GET", p);
            assert_eq!(status(&cfg, &mut h), want, "{cert} {p}");
        }
        let mut h = over_mtls("partner-billing", "POST", "/health");
        assert_eq!(status(&cfg, &mut h), 403);
    }

    #[test]
    fn hosts_restrict_a_rule() {
        let cfg = load(
            br#"{"rules":[{"name":"r","sans":[{"spiffe_trust_domain":"partner.example"}],
                 "hosts":["api.example","*.partner.test"],"paths":[{"prefix":"/"}]}]}"#,
        )
        .unwrap();
        for (authority, want) in [
            ("api.example", 200),
            ("API.example:10443", 200),
            ("x.partner.test", 200),
            ("partner.test", 403),
            ("localhost:10443", 403),
        ] {
            let mut h = over_mtls("partner-billing", "GET", "/x");
            h.set_request_header(":authority", authority);
            assert_eq!(status(&cfg, &mut h), want, "{authority}");
        }
    }

    #[test]
    fn rules_are_an_allow_list_and_order_only_picks_the_reported_rule() {
        let cfg = load(
            br#"{"rules":[
                {"name":"narrow","sans":[{"exact":"spiffe://partner.example/ns/partner-a/sa/billing"}],"paths":[{"prefix":"/a/","methods":["GET"]}]},
                {"name":"wide","sans":[{"spiffe_path_prefix":{"trust_domain":"partner.example","path_prefix":"/ns/partner-a"}}],"paths":[{"prefix":"/"}]}
            ]}"#,
        )
        .unwrap();
        let mut h = over_mtls("partner-billing", "GET", "/a/x");
        assert_eq!(run(&cfg, &mut h).1.rule.as_deref(), Some("narrow"));
        let mut h = over_mtls("partner-billing", "DELETE", "/a/x");
        assert_eq!(run(&cfg, &mut h).1.rule.as_deref(), Some("wide"));
    }

    #[test]
    fn allowed_request_costs_four_host_calls() {
        let cfg = secure();
        let mut h = over_mtls("partner-billing", "GET", "/partner/v1/billing/x");
        run(&cfg, &mut h);
        // headers, peer certificate, set SAN header, publish identity
        assert_eq!(h.calls.get(), 4);
    }

    /// Arbitrary XFCC headers and peer certificates: every request gets an
    /// answer, denials are well formed, a client's XFCC never lends it an
    /// identity, and behind a trusted edge no altered certificate or hash
    /// passes for the partner's.
    mod arbitrary_input {
        use super::*;
        use filter_core::testing::assert_denial;
        use proptest::prelude::*;

        fn element() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS", "x", "",
            ]);
            let value = prop_oneof![
                Just(format!(
                    "\"{}\"",
                    percent_encoding::utf8_percent_encode(
                        &demo("partner-billing"),
                        percent_encoding::NON_ALPHANUMERIC
                    )
                )),
                Just(PARTNER.to_string()),
                Just(format!("\"{PARTNER}\"")),
                Just(
                    "\"-----BEGIN%20CERTIFICATE-----%0AAAAA%0A-----END%20CERTIFICATE-----\""
                        .to_string()
                ),
                "[0-9a-f]{0,64}",
                "[ -~]{0,40}",
                any::<String>(),
            ];
            prop::collection::vec((key, value), 0..5).prop_map(|kv| {
                kv.into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(";")
            })
        }

        fn xfcc() -> impl Strategy<Value = String> {
            prop::collection::vec(element(), 0..3).prop_map(|e| e.join(","))
        }

        fn peer_cert() -> impl Strategy<Value = Option<Vec<u8>>> {
            prop::option::of(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..400),
                (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, b)| {
                    let mut pem = demo("partner-billing").into_bytes();
                    let i = at.index(pem.len());
                    pem[i] = b;
                    pem
                }),
                Just(demo("stranger").into_bytes()),
            ])
        }

        fn answer(cfg: &Compiled, h: &mut FakeHost) -> Result<Verdict, TestCaseError> {
            let (v, _) = run(cfg, h);
            match v {
                Verdict::Continue => prop_assert!(h.response.is_none()),
                Verdict::Responded => {
                    assert_denial(h.response.as_ref(), &[400, 403], Some("test-rid"));
                }
                other => prop_assert!(false, "unexpected verdict {:?}", other),
            }
            Ok(v)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: filter_core::testing::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn every_request_gets_an_answer(
                header in prop::option::of(xfcc()),
                cert in peer_cert(),
                method in prop::sample::select(vec!["GET", "POST", "DELETE"]),
                path in prop::sample::select(vec!["/partner/v1/billing/x", "/internal/x", "/"]),
            ) {
                for cfg in [secure(), behind_edge()] {
                    let mut h = now_host(method, path);
                    if let Some(x) = &header {
                        h = h.with_header("x-forwarded-client-cert", x);
                    }
                    if let Some(c) = &cert {
                        h = h.with_property(&PEER_CERTIFICATE, c);
                    }
                    answer(&cfg, &mut h)?;
                }
            }

            #[test]
            fn a_client_xfcc_never_lends_an_identity(header in xfcc()) {
                // the connection's certificate is the stranger's: whatever XFCC the
                // client adds, nothing is allowed
                let mut h = over_mtls("stranger", "GET", "/partner/v1/billing/x")
                    .with_header("x-forwarded-client-cert", &header);
                prop_assert_eq!(answer(&secure(), &mut h)?, Verdict::Responded);
            }

            #[test]
            fn behind_the_edge_an_altered_hash_or_certificate_is_refused(
                at in any::<prop::sample::Index>(),
                with in prop::sample::select(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%\";=,".chars().collect::<Vec<_>>()
                ),
            ) {
                let pem = demo("partner-billing");
                let element = xfcc_for(&pem, PARTNER);
                // only the Hash and Cert values are mutated: Subject and URI are
                // text that the filter does not trust anyway
                let signed_end = element.find(";Subject").unwrap_or(element.len());
                let mut chars: Vec<char> = element.chars().collect();
                let i = at.index(signed_end);
                prop_assume!(chars[i] != with);
                chars[i] = with;
                let mutated: String = chars.into_iter().collect();
                // a change that leaves the same certificate and hash (one line
                // break for another, text after the END line: RFC 7468 lets a
                // parser ignore it; a key's or hex digit's case) is not an alteration
                let payload = |x: &str| -> Option<(String, Vec<u8>)> {
                    // keys and hex digits in either case mean the same
                    let value = |key: &str| {
                        x.split(';').find_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            k.eq_ignore_ascii_case(key).then_some(v)
                        })
                    };
                    let hash = value("Hash")?.to_ascii_lowercase();
                    let cert = value("Cert")?;
                    let text = percent_encoding::percent_decode_str(cert.trim_matches('"')).decode_utf8().ok()?;
                    Some((hash, cert::der_from_pem(&text).ok()?))
                };
                prop_assume!(payload(&mutated) != payload(&element));
                let mut h = now_host("GET", "/partner/v1/billing/x").with_header("x-forwarded-client-cert", &mutated);
                prop_assert_eq!(answer(&behind_edge(), &mut h)?, Verdict::Responded, "{}", mutated);
            }
        }

        #[test]
        fn the_unaltered_element_passes_behind_the_edge() {
            let element = xfcc_for(&demo("partner-billing"), PARTNER);
            let mut h = now_host("GET", "/partner/v1/billing/x")
                .with_header("x-forwarded-client-cert", &element);
            assert_eq!(status(&behind_edge(), &mut h), 200);
        }
    }
}
