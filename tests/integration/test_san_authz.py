"""san-authz against the real Envoy.

* The secure gateway (10443, this Envoy terminates mTLS, `source: connection`)
  with the demo client certificates: the contract's allow list, the SAN handed
  to the upstream, spoofed XFCC and SAN headers, traversal tricks.
* The XFCC mode (`source: xfcc`, examples/config/san-authz/behind-edge.json):
  a private Envoy running the shipped secure chain as it would run behind a
  trusted TLS-terminating hop (plain HTTP in, XFCC forwarded as the hop sent
  it). The test plays the hop, so it can present certificates no TLS
  handshake would accept: expired, or from another CA.
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


def metric(name: str, admin: str | None = None) -> int:
    url = f"{admin}/stats" if admin else admin_url("/stats")
    text = requests.get(url, params={"filter": name}, timeout=TIMEOUT).text
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key.endswith(name) and value.strip().isdigit():
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


def make_cert(san: str, *, days_from: int, days_to: int, ca: str | None = "ca") -> str:
    """A client certificate with `san`, valid from/to the given day offsets,
    signed by the demo CA (`ca="ca"`), another committed CA, or (None) a key
    made up on the spot that claims to be the demo CA."""
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
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
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
        found = False
        for f in hcm["http_filters"]:
            if f["name"] == "san-authz":
                f["typed_config"]["config"]["configuration"]["value"] = json.dumps(json.loads(BEHIND_EDGE.read_text()))
                found = True
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
    assert metric("san_authz_certificate_rejected_total", edge.admin) > before


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
