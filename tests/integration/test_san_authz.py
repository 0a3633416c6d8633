"""san-authz against the real Envoy.

* The secure gateway (10443, this Envoy terminates mTLS, `source: connection`)
  with the demo client certificates: the contract's allow list, the SAN handed
  to the upstream, spoofed XFCC and SAN headers, traversal tricks.
* The XFCC mode (`source: xfcc`, examples/config/san-authz/behind-edge.json):
  a private Envoy running the shipped secure chain as it would run behind a
  trusted TLS-terminating hop (plain HTTP in, XFCC forwarded as the hop sent
  it). The test plays the hop, so it can present certificates no TLS
  handshake would accept: expired, or from another CA.
* The leaf profile (a client's certificate, not a CA's, with clientAuth and
  digitalSignature where it lists usages), in both modes, with certificates
  made on the spot and signed with the committed demo CA key.
"""

from __future__ import annotations

import copy
import datetime
import json
import socket
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import requests
import yaml

from helpers import (
    CA,
    CERTS,
    REPO,
    TIMEOUT,
    admin_url,
    client_cert,
    denial,
    echo_stats,
    secure_url,
    seen,
    set_filter_config,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("stack")

PARTNER = "spiffe://partner.example/ns/partner-a/sa/billing"
ADMIN = "spiffe://internal.example/ns/tools/sa/admin"
STRANGER = "spiffe://stranger.example/ns/nowhere/sa/nobody"
SAN_HEADER = "x-gateway-client-san"
BEHIND_EDGE = REPO / "examples" / "config" / "san-authz" / "behind-edge.json"


def call(method: str, path: str, cert: str | None = "partner-billing", **kw) -> requests.Response:
    return requests.request(
        method,
        secure_url(path),
        cert=client_cert(cert) if cert else None,
        verify=str(CA),
        timeout=TIMEOUT,
        **kw,
    )


def assert_forbidden(resp: requests.Response) -> None:
    assert resp.status_code == 403, (resp.status_code, resp.text)
    body = denial(resp)
    assert body["error"] == "forbidden"
    for leak in ("spiffe", "partner", "internal", "stranger", "rule"):
        assert leak not in resp.text, resp.text
    assert resp.headers.get("x-request-id")


def metric(name: str, admin: str | None = None, **labels: str) -> int:
    """The sum of the samples of counter `name` in /stats/prometheus whose
    labels include `labels` (gateway/route/reason are the bootstrap's tags
    for the wasm builds, Envoy labels for the native one: the same samples)."""
    url = f"{admin}/stats/prometheus" if admin else admin_url("/stats/prometheus")
    text = requests.get(url, timeout=TIMEOUT).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base.endswith(name) and all(w in rest for w in want) and value.strip().isdigit():
            total += int(value)
    return total


# ------------------------------------------------------------ the contract


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_partner_may_get_and_post_under_billing_and_upstream_sees_its_san(method):
    resp = call(method, "/partner/v1/billing/invoices?page=2", json={"a": 1} if method == "POST" else None)
    got = seen(resp)
    assert got["method"] == method
    assert got["headers"][SAN_HEADER] == PARTNER
    assert f"URI={PARTNER}" in got["headers"]["x-forwarded-client-cert"]


def test_partner_delete_is_403_and_never_reaches_the_upstream():
    before = echo_stats()
    resp = call("DELETE", "/partner/v1/billing/invoices/7", headers={"x-request-id": "san-rid-1"})
    assert_forbidden(resp)
    assert resp.headers["x-request-id"] == "san-rid-1"
    assert echo_stats() == before


@pytest.mark.parametrize("path", ["/internal/", "/internal/tools/x", "/partner/v1/billingx", "/partner/v2/billing/x", "/"])
def test_partner_is_403_outside_its_prefix(path):
    assert_forbidden(call("GET", path))


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_internal_admin_may_do_anything_under_internal(method):
    got = seen(call(method, "/internal/tools/reindex", cert="internal-admin"))
    assert got["path"] == "/internal/tools/reindex"
    assert got["headers"][SAN_HEADER] == ADMIN


def test_internal_admin_is_403_outside_internal():
    assert_forbidden(call("GET", "/partner/v1/billing/invoices", cert="internal-admin"))


@pytest.mark.parametrize("path", ["/partner/v1/billing/invoices", "/internal/x", "/health", "/"])
def test_stranger_is_403_everywhere(path):
    before = echo_stats()
    assert_forbidden(call("GET", path, cert="stranger"))
    assert echo_stats() == before


def test_no_client_certificate_fails_the_handshake():
    before = echo_stats()
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        call("GET", "/partner/v1/billing/invoices", cert=None)
    assert echo_stats() == before


def test_a_client_supplied_xfcc_claiming_the_admin_does_not_open_internal():
    # Even with the admin's real certificate text and hash: the client does
    # not hold the admin's key, and only the TLS peer certificate counts.
    admin_element = xfcc_element(read_pem("internal-admin"), uri_text=ADMIN)
    for forged in (f"By=spiffe://gw;URI={ADMIN}", admin_element, f"{admin_element},{admin_element}"):
        assert_forbidden(call("GET", "/internal/x", headers={"x-forwarded-client-cert": forged}))


def test_a_client_supplied_san_header_is_replaced_by_the_verified_san():
    got = seen(call("GET", "/partner/v1/billing/x", headers={SAN_HEADER: ADMIN}))
    assert got["headers"][SAN_HEADER] == PARTNER


def raw_tls(path: str, cert: str = "partner-billing", method: str = "GET") -> int:
    """Status of a request whose path is sent byte for byte (requests would
    resolve dot-segments itself)."""
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.load_cert_chain(*client_cert(cert))
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", 10443), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path",
    [
        "/partner/v1/billing/../../../internal/x",
        "/partner/v1/billing/%2e%2e/%2e%2e/%2e%2e/internal/x",
        "/partner/v1/billing/%2E%2E/%2E%2E/%2E%2E/internal/x",
        "/partner/v1/billing/..;/..;/..;/internal/x",
        "/partner/v1/billing/%2f..%2f..%2f..%2finternal/x",
        "/partner/v1/billing/..%5c..%5c..%5cinternal/x",
        "/partner/v1/billing/%252e%252e/%252e%252e/%252e%252e/internal/x",
        "/partner/v1/billing/./../../../internal/x",
        "//internal/x",
        "/%69nternal/x",
        "/partner/v1/billing/..\\..\\..\\internal/x",
    ],
)
def test_traversal_tricks_toward_internal_are_never_200(path):
    before = echo_stats()
    status = raw_tls(path)
    assert status != 200, path
    assert status in (400, 403, 404), (path, status)
    assert echo_stats() == before


def test_denials_are_counted():
    before = metric("san_authz_denied_total")
    assert_forbidden(call("GET", "/internal/x", cert="stranger"))
    wait_until(lambda: metric("san_authz_denied_total") > before, timeout=5, message="the denied counter")


# -------------------------------------------------------------- XFCC mode


def read_pem(name: str) -> str:
    return (CERTS / f"{name}.pem").read_text()


def xfcc_element(pem: str, uri_text: str | None = None, with_hash: bool = True, hash_hex: str | None = None) -> str:
    """An XFCC element as Envoy writes it for a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    parts = []
    if with_hash:
        parts.append(f"Hash={hash_hex or digest.finalize().hex()}")
    parts.append('Cert="' + urllib.parse.quote(pem, safe="") + '"')
    parts.append('Subject="CN=test"')
    if uri_text:
        parts.append(f"URI={uri_text}")
    return ";".join(parts)


def make_cert(
    san: str,
    *,
    days_from: int,
    days_to: int,
    ca: str | None = "ca",
    is_ca: bool = False,
    key_usage: set[str] | None = None,
    eku: list | None = None,
    key_path: Path | None = None,
) -> str:
    """A client certificate with `san`, valid from/to the given day offsets,
    signed by the demo CA (`ca="ca"`), another committed CA, or (None) a key
    made up on the spot that claims to be the demo CA. basicConstraints
    CA=`is_ca`; keyUsage with the named bits (`cryptography`'s argument
    names, e.g. "digital_signature") and extendedKeyUsage with the given
    OIDs, each only when given. With `key_path`, the private key is written
    there (PEM) so that the certificate can be presented in a handshake."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    if ca is None:
        # A made-up key under the demo CA's own name: only the signature differs.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.load_pem_x509_certificate(CA.read_bytes()).subject
    else:
        ca_key = serialization.load_pem_private_key((CERTS / f"{ca}.key").read_bytes(), None)
        ca_name = x509.load_pem_x509_certificate((CERTS / f"{ca}.pem").read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client (DEMO ONLY)")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days_from))
        .not_valid_after(now + datetime.timedelta(days=days_to))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if key_usage is not None:
        bits = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        assert key_usage <= set(bits), key_usage
        cert = cert.add_extension(x509.KeyUsage(**{b: b in key_usage for b in bits}), critical=True)
    if eku is not None:
        cert = cert.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = cert.sign(ca_key, hashes.SHA256())
    if key_path is not None:
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class EdgeGateway:
    """A private Envoy: the shipped secure chain (sanitize -> san-authz ->
    route-breaker -> router) with san-authz's behind-edge.json, listening on
    plain HTTP with XFCC forwarded as the trusted hop set it."""

    def __init__(self, stack, workdir: Path):
        cfg = yaml.safe_load(Path(stack.config_path).read_text())
        secure = copy.deepcopy(next(lis for lis in cfg["static_resources"]["listeners"] if lis["name"] == "secure"))
        secure["name"] = "secure-behind-edge"
        secure["address"]["socket_address"]["port_value"] = 0
        chain = secure["filter_chains"][0]
        chain.pop("transport_socket")
        hcm = chain["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "secure_behind_edge"
        hcm["forward_client_cert_details"] = "ALWAYS_FORWARD_ONLY"
        hcm.pop("set_current_client_cert_details", None)
        found = set_filter_config(hcm, "san-authz", json.loads(BEHIND_EDGE.read_text()))
        assert found, "san-authz is not in the secure chain"
        cfg["static_resources"]["listeners"] = [secure]
        cfg["admin"]["address"]["socket_address"]["port_value"] = 0
        self.admin_file = workdir / "admin-address"
        path = workdir / "envoy-behind-edge.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / "envoy-behind-edge.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "envoy"), "-c", str(path), "--concurrency", "1",
             "--disable-hot-restart", "--log-level", "warn", "--component-log-level", "wasm:info",
             "--admin-address-path", str(self.admin_file)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self.admin = "http://" + wait_until(self._admin_address, timeout=60, message="the behind-edge Envoy admin")
            self.port = wait_until(self._listener_port, timeout=60, message="the behind-edge listener")
        except AssertionError:
            self.stop()
            raise AssertionError(self.log_path.read_text()[-3000:])

    def _admin_address(self) -> str | None:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        text = self.admin_file.read_text().strip() if self.admin_file.exists() else ""
        return text or None

    def _listener_port(self) -> int | None:
        try:
            body = requests.get(f"{self.admin}/listeners?format=json", timeout=2).json()
        except requests.RequestException:
            return None
        for lis in body.get("listener_statuses", []):
            port = lis.get("local_address", {}).get("socket_address", {}).get("port_value")
            if port:
                return int(port)
        return None

    def get(self, path: str, xfcc: str | list[str] | None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if isinstance(xfcc, list):  # several header lines
            return self._raw(path, [("x-forwarded-client-cert", v) for v in xfcc])
        if xfcc is not None:
            headers["x-forwarded-client-cert"] = xfcc
        return requests.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=TIMEOUT, **kw)

    def _raw(self, path: str, headers: list[tuple[str, str]]) -> requests.Response:
        # requests joins repeated headers itself; send the lines as they are.
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{lines}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        resp = requests.Response()
        resp.status_code = int(data.split(b" ", 2)[1])
        resp._content = data.split(b"\r\n\r\n", 1)[1]
        return resp

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def edge(stack, tmp_path_factory):
    gw = EdgeGateway(stack, tmp_path_factory.mktemp("san-authz"))
    try:
        yield gw
    finally:
        gw.stop()


def test_xfcc_mode_accepts_a_valid_demo_certificate_from_the_hop(edge):
    resp = edge.get("/partner/v1/billing/invoices", xfcc_element(read_pem("partner-billing"), PARTNER))
    assert seen(resp)["headers"][SAN_HEADER] == PARTNER


def test_xfcc_mode_refuses_an_expired_certificate(edge):
    expired = make_cert(PARTNER, days_from=-30, days_to=-1)
    before = echo_stats()
    assert_forbidden(edge.get("/partner/v1/billing/invoices", xfcc_element(expired, PARTNER)))
    assert echo_stats() == before
    # The same, still valid: accepted (so it is the date that was refused).
    fresh = make_cert(PARTNER, days_from=-1, days_to=1)
    assert edge.get("/partner/v1/billing/invoices", xfcc_element(fresh, PARTNER)).status_code == 200


def test_xfcc_mode_refuses_a_certificate_not_yet_valid(edge):
    future = make_cert(PARTNER, days_from=1, days_to=30)
    assert_forbidden(edge.get("/partner/v1/billing/invoices", xfcc_element(future, PARTNER)))


@pytest.mark.parametrize("issuer", ["other-ca", None], ids=["committed-other-ca", "fresh-ca-with-demo-ca-name"])
def test_xfcc_mode_refuses_a_certificate_from_another_ca(edge, issuer):
    before = metric("san_authz_certificate_rejected_total", edge.admin)
    pem = make_cert(PARTNER, days_from=-1, days_to=30, ca=issuer)
    assert_forbidden(edge.get("/partner/v1/billing/invoices", xfcc_element(pem, PARTNER)))
    # Counted at once in wasm; natively flushed to Envoy by its main thread.
    wait_until(lambda: metric("san_authz_certificate_rejected_total", edge.admin) > before, timeout=5,
               message="the rejected-certificate counter")


def test_xfcc_mode_refuses_the_committed_other_ca_client(edge):
    assert_forbidden(edge.get("/partner/v1/billing/invoices", xfcc_element(read_pem("other-ca-client"), PARTNER)))


def test_xfcc_mode_never_trusts_the_uri_text(edge):
    # The stranger's real certificate, with URI= text claiming the admin.
    assert_forbidden(edge.get("/internal/x", xfcc_element(read_pem("stranger"), ADMIN)))
    # URI= without a certificate.
    assert_forbidden(edge.get("/internal/x", f"By=spiffe://edge;URI={ADMIN}"))


def test_xfcc_mode_checks_hash_and_requires_it(edge):
    pem = read_pem("partner-billing")
    assert_forbidden(edge.get("/partner/v1/billing/x", xfcc_element(pem, PARTNER, hash_hex="00" * 32)))
    assert_forbidden(edge.get("/partner/v1/billing/x", xfcc_element(pem, PARTNER, with_hash=False)))


def test_xfcc_mode_uses_only_the_last_element(edge):
    admin = xfcc_element(read_pem("internal-admin"), ADMIN)
    stranger = xfcc_element(read_pem("stranger"), ADMIN)
    assert_forbidden(edge.get("/internal/x", f"{admin},{stranger}"))
    assert edge.get("/internal/x", [admin, stranger]).status_code == 403
    assert seen(edge.get("/internal/x", f"{stranger},{admin}"))["headers"][SAN_HEADER] == ADMIN


def test_xfcc_mode_without_xfcc_or_with_garbage_is_403(edge):
    assert_forbidden(edge.get("/partner/v1/billing/x", None))
    assert_forbidden(edge.get("/partner/v1/billing/x", 'Cert="unterminated'))


# ------------------------------------------------------- the leaf profile
#
# A client certificate must be a client's: not a CA (basicConstraints
# CA=true), keyUsage (when present) allowing digitalSignature,
# extendedKeyUsage (when present) listing clientAuth. The certificates are
# made here, signed with the committed demo CA key, so they pass every other
# check (issuer, validity, SAN: the partner's).


def _eku(name: str):
    from cryptography.x509.oid import ExtendedKeyUsageOID

    return {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH,
            "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}[name]


#: name -> (make_cert arguments, the reason san-authz denies it with)
LEAF_VIOLATIONS = {
    "ca-true": (dict(is_ca=True, key_usage={"digital_signature", "key_cert_sign"}, eku=["client"]),
                "ca_certificate"),
    "eku-server-auth-only": (dict(key_usage={"digital_signature"}, eku=["server"]), "eku_without_client_auth"),
    "eku-any-only": (dict(key_usage={"digital_signature"}, eku=["any"]), "eku_without_client_auth"),
    "key-usage-without-digital-signature": (dict(key_usage={"key_encipherment"}, eku=["client"]),
                                            "key_usage_without_digital_signature"),
    "key-usage-key-agreement-only": (dict(key_usage={"key_agreement"}, eku=["client"]),
                                     "key_usage_without_digital_signature"),
}


def leaf(san: str = PARTNER, key_path: Path | None = None, **kw) -> str:
    if "eku" in kw:
        kw["eku"] = [_eku(e) for e in kw["eku"]]
    return make_cert(san, days_from=-1, days_to=30, key_path=key_path, **kw)


def denied(reason: str, admin: str | None = None) -> int:
    """san_authz_denied_total{reason=<reason>}, summed over gateways and routes."""
    return metric("san_authz_denied_total", admin, reason=reason)


def present(tmp_path: Path, name: str, pem: str) -> tuple[str, str]:
    """(certificate, key) files of a generated certificate whose key `leaf`
    wrote to tmp_path/<name>.key."""
    cert = tmp_path / f"{name}.pem"
    cert.write_text(pem)
    return str(cert), str(tmp_path / f"{name}.key")


def test_a_ca_certificate_from_the_demo_ca_is_403_on_the_secure_gateway_and_never_reaches_the_upstream(tmp_path):
    # Envoy's handshake accepts it (the demo CA issued it, and BoringSSL
    # does not refuse CA=true on a client's leaf): san-authz is what stops it.
    kw, reason = LEAF_VIOLATIONS["ca-true"]
    ca_leaf = present(tmp_path, "ca-true", leaf(key_path=tmp_path / "ca-true.key", **kw))
    before, reason_before = echo_stats(), denied(reason)
    rejected_before = metric("san_authz_certificate_rejected_total")
    resp = requests.get(secure_url("/partner/v1/billing/invoices"), cert=ca_leaf, verify=str(CA),
                        headers={"x-request-id": "san-rid-leaf"}, timeout=TIMEOUT)
    assert_forbidden(resp)
    assert resp.headers["x-request-id"] == "san-rid-leaf"
    assert echo_stats() == before
    wait_until(lambda: denied(reason) > reason_before, timeout=5, message=f"denied_total{{reason={reason}}}")
    wait_until(lambda: metric("san_authz_certificate_rejected_total") > rejected_before, timeout=5,
               message="the rejected-certificate counter")
    # Control: the same SAN and issuer, CA=false, is the partner.
    ok = present(tmp_path, "ok", leaf(key_path=tmp_path / "ok.key", **dict(kw, is_ca=False)))
    resp = requests.get(secure_url("/partner/v1/billing/invoices"), cert=ok, verify=str(CA), timeout=TIMEOUT)
    assert seen(resp)["headers"][SAN_HEADER] == PARTNER


@pytest.mark.parametrize(
    ("violation", "refused_by"),
    [
        # Envoy's certificate verification (BoringSSL's "ssl_client"
        # purpose): extendedKeyUsage without clientAuth, anyExtendedKeyUsage
        # not counting.
        ("eku-server-auth-only", "fail_verify_error"),
        ("eku-any-only", "fail_verify_error"),
        # BoringSSL's own check of the client's CertificateVerify: the key
        # that signs it must allow digitalSignature (keyAgreement does not do).
        ("key-usage-without-digital-signature", "connection_error"),
        ("key-usage-key-agreement-only", "connection_error"),
    ],
)
def test_a_client_certificate_without_client_usage_fails_the_secure_handshake(tmp_path, violation, refused_by):
    # san-authz refuses the same certificates in xfcc mode (below), where no
    # handshake of ours saw them.
    kw, _ = LEAF_VIOLATIONS[violation]
    files = present(tmp_path, violation, leaf(key_path=tmp_path / f"{violation}.key", **kw))
    before, errors = echo_stats(), secure_ssl_stat(refused_by)
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        requests.get(secure_url("/partner/v1/billing/invoices"), cert=files, verify=str(CA), timeout=TIMEOUT)
    assert echo_stats() == before
    wait_until(lambda: secure_ssl_stat(refused_by) > errors, timeout=5,
               message=f"listener 10443 ssl.{refused_by}")


def secure_ssl_stat(name: str) -> int:
    """An Envoy TLS counter of the 10443 listener (ssl.<name>)."""
    suffix = f"_10443.ssl.{name}"
    text = requests.get(admin_url("/stats"), params={"filter": suffix}, timeout=TIMEOUT).text
    return sum(int(v) for k, _, v in (line.partition(": ") for line in text.splitlines()) if k.endswith(suffix))


@pytest.mark.parametrize("violation", sorted(LEAF_VIOLATIONS))
def test_xfcc_mode_refuses_a_certificate_that_is_not_a_client_leaf(edge, violation):
    kw, reason = LEAF_VIOLATIONS[violation]
    pem = leaf(**kw)
    before, reason_before = echo_stats(), denied(reason, edge.admin)
    assert_forbidden(edge.get("/partner/v1/billing/invoices", xfcc_element(pem, PARTNER)))
    assert echo_stats() == before
    wait_until(lambda: denied(reason, edge.admin) > reason_before, timeout=5,
               message=f"denied_total{{reason={reason}}}")


def test_xfcc_mode_accepts_a_client_leaf_with_or_without_usage_extensions(edge):
    for kw in (dict(key_usage={"digital_signature"}, eku=["client"]), dict(eku=["server", "client"]), {}):
        resp = edge.get("/partner/v1/billing/invoices", xfcc_element(leaf(**kw), PARTNER))
        assert seen(resp)["headers"][SAN_HEADER] == PARTNER, kw
