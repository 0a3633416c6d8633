"""The internal gateway (10444, replica 10544): HTTPS with the demo server
certificate and no client certificate, sanitize -> oidc -> route-breaker ->
router to the echo service (../shared/demo-contract.md, "Internal gateway").

The requests below that reach the echo carry a logged-in session (the SSO
flow itself is test_oidc.py's); the identity headers the echo sees are the
gateway's own, whatever the client sent.

Also here: the gateway-store sidecars of the running stack serve the oidc
filter's namespace `internal.oidc` end to end (flags, Redis ACL user), with
the session operations the filter uses (GETEX for the idle timeout, GETDEL
for single-use login state) shared by both replicas.
"""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import socket
import ssl
import subprocess

import pytest
import requests

from helpers import CA, HOST, TIMEOUT, denial, echo_stats, wait_until
from sso import login

INTERNAL = {1: "https://localhost:10444", 2: "https://localhost:10544"}
PORT = {1: 10444, 2: 10544}
STORE = {1: "http://127.0.0.1:18090", 2: "http://127.0.0.1:18091"}
REPLICAS = (1, 2)


_SESSION: list[str] = []


def session() -> str:
    """alice's session cookie, logged in once for this module."""
    if not _SESSION:
        _SESSION.append(login("alice"))
    return _SESSION[0]


def get(replica: int, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
    """GET over TLS, trusting only the demo CA, presenting no client
    certificate, with alice's session."""
    h = {"cookie": session(), **(headers or {})}
    return requests.get(INTERNAL[replica] + path, verify=str(CA), timeout=TIMEOUT, headers=h, **kwargs)


def tls_context(alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.mark.parametrize("replica", REPLICAS)
def test_health_answers_200_over_tls_verified_by_the_demo_ca_without_a_client_certificate(stack, replica):
    resp = get(replica, "/health")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ok"}
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers.get("x-request-id")


@pytest.mark.parametrize("replica", REPLICAS)
def test_the_certificate_is_the_demo_server_certificate_for_localhost(stack, replica):
    with socket.create_connection((HOST, PORT[replica]), timeout=TIMEOUT) as raw:
        with tls_context(["http/1.1"]).wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # trusting nothing but the system store: the demo CA's certificate fails
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(INTERNAL[replica] + "/health", timeout=TIMEOUT)


@pytest.mark.parametrize("replica", REPLICAS)
def test_alpn_offers_h2_and_http_1_1(stack, replica):
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        with socket.create_connection((HOST, PORT[replica]), timeout=TIMEOUT) as raw:
            with tls_context(offered).wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == chosen, offered


@pytest.mark.parametrize("replica", REPLICAS)
def test_plain_http_is_refused_and_reaches_nothing(stack, replica):
    before = echo_stats()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{HOST}:{PORT[replica]}/tools/plain", timeout=TIMEOUT)
    # the raw bytes: no HTTP answer at all, the connection is closed
    with socket.create_connection((HOST, PORT[replica]), timeout=TIMEOUT) as conn:
        conn.sendall(b"GET /tools/plain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        try:
            answer = conn.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer[:80]
    assert echo_stats() == before


@pytest.mark.parametrize("replica", REPLICAS)
def test_a_request_reaches_the_echo_service_with_its_path_query_and_request_id(stack, replica):
    before = echo_stats()
    rid = f"internal-{secrets.token_hex(6)}"
    resp = get(replica, "/tools/report?week=12", headers={"x-request-id": rid})
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/tools/report", "week=12")
    assert seen["headers"]["x-request-id"] == rid
    assert resp.headers["x-request-id"] == rid
    assert echo_stats() == before + 1


def test_admin_and_tool_paths_reach_the_echo_and_the_oauth2_paths_are_the_gateways(stack):
    for path in ("/admin/users", "/"):
        resp = get(1, path)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json()["path"] == path
    before = echo_stats()
    resp = get(1, "/oauth2/callback?code=x&state=y")
    assert resp.status_code == 401 and denial(resp)["error"] == "invalid_state"
    assert echo_stats() == before, "the callback is answered by the oidc filter"


@pytest.mark.parametrize("replica", REPLICAS)
def test_client_supplied_identity_headers_never_reach_the_echo_service(stack, replica):
    spoofed = {
        "x-user-id": "alice",
        "X-User-Email": "alice@example.com",
        "x-user-groups": "tools-admin",
        "x-user-anything": "x",
        "x-gateway-identity": "forged",
        "x-forwarded-client-cert": "By=spiffe://x;URI=spiffe://internal.example/ns/tools/sa/admin",
    }
    resp = get(replica, "/admin/users", headers={**spoofed, "x-user-id": "mallory"})
    assert resp.status_code == 200, resp.text
    headers = resp.json()["headers"]
    leaked = {name: headers[name] for name in headers
              if name.startswith(("x-user-", "x-gateway-")) or name == "x-forwarded-client-cert"}
    # only the gateway's own identity headers, with the session's values
    assert leaked == {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-user-groups": "tools-admin"}


def test_client_supplied_identity_headers_are_stripped_over_http2_too(stack):
    # h2 over TLS (ALPN): nghttp speaks it (make test-integration installs it)
    nghttp = shutil.which("nghttp")
    assert nghttp, "nghttp is missing: apt-get install nghttp2-client"
    out = subprocess.run(
        [nghttp, "-H", "x-user-id: mallory", "-H", "x-user-groups: forged", "-H", "x-user-email: a@b",
         "-H", "x-user-anything: x", "-H", f"cookie: {session()}", f"https://localhost:{PORT[1]}/tools/h2"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    # nghttp does not verify the server certificate; what matters is the echo's view
    doc = json.loads(out.stdout[out.stdout.find("{"):])
    assert doc["path"] == "/tools/h2"
    users = {h: v for h, v in doc["headers"].items() if h.startswith("x-user-")}
    assert users == {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-user-groups": "tools-admin"}


def test_sanitize_guards_the_internal_gateway(stack):
    before = echo_stats()
    resp = get(1, "/ADMIN/users")
    assert resp.status_code == 400
    assert denial(resp)["error"] == "invalid_path"
    resp = requests.post(INTERNAL[1] + "/tools/upload", data=b"x" * (64 * 1024 + 1), verify=str(CA), timeout=TIMEOUT)
    assert resp.status_code == 413
    assert denial(resp)["error"] == "body_too_large"
    assert echo_stats() == before


def test_requests_on_the_internal_gateway_are_access_logged(stack):
    rid = f"internal-log-{secrets.token_hex(6)}"
    assert get(1, "/tools/logged", headers={"x-request-id": rid}).status_code == 200

    def logged():
        for line in stack.access_log.read_text(encoding="utf-8").splitlines():
            if rid in line:
                return json.loads(line)
        return None

    entry = wait_until(logged, message="the access log line")
    assert (entry["listener"], entry["route"], entry["path"], entry["status"]) == (10444, "default", "/tools/logged", 200)


# ---------------------------------------------- the session store, end to end


def session_key() -> str:
    return secrets.token_hex(32)


def test_both_sidecars_serve_the_oidc_namespace_with_the_session_operations(stack):
    """The oidc filter's namespace is allow-listed on both replicas' stores
    (stack.py STORE_NAMESPACES) and the Redis ACL user may run the session
    commands it needs: a session written through one replica is read with an
    idle timeout through the other, and single-use login state is handed out
    once across both."""
    def unavailable() -> list[int]:
        return [requests.get(STORE[r] + "/stats", timeout=TIMEOUT).json()["unavailable"] for r in REPLICAS]

    refused_before = unavailable()
    key = session_key()
    path = f"/v1/session/internal.oidc/{key}"
    put = requests.put(STORE[1] + path + "?ttl_ms=5000", data=b"session-of-alice", timeout=TIMEOUT)
    assert put.status_code == 204, put.text
    got = requests.get(STORE[2] + path + "?idle_ms=1800000", timeout=TIMEOUT)
    assert (got.status_code, got.content) == (200, b"session-of-alice")
    pttl = int(stack.redis("PTTL", f"gw:internal.oidc:{key}").lstrip(b":"))
    assert 1_790_000 <= pttl <= 1_800_000, pttl
    assert requests.delete(STORE[2] + path, timeout=TIMEOUT).status_code == 204
    assert requests.get(STORE[1] + path, timeout=TIMEOUT).status_code == 404

    login = f"/v1/session/internal.oidc/{session_key()}"
    assert requests.put(STORE[2] + login + "?ttl_ms=600000", data=b"state", timeout=TIMEOUT).status_code == 204
    first = requests.get(STORE[1] + login + "?consume=1", timeout=TIMEOUT)
    assert (first.status_code, first.content) == (200, b"state")
    again = requests.get(STORE[2] + login + "?consume=1", timeout=TIMEOUT)
    assert again.status_code == 404 and again.json()["error"] == "no_session"

    both = requests.get(STORE[1] + login + "?idle_ms=1000&consume=1", timeout=TIMEOUT)
    assert both.status_code == 400
    for replica in REPLICAS:
        stats = requests.get(STORE[replica] + "/stats", timeout=TIMEOUT).json()
        assert stats["session_touch"] + stats["session_consume"] >= 1, stats
    # a command the ACL refused (NOPERM) would have been a 503
    assert unavailable() == refused_before


def test_an_unlisted_namespace_is_refused_by_the_sidecars(stack):
    for replica in REPLICAS:
        resp = requests.get(f"{STORE[replica]}/v1/session/internal.other/{session_key()}", timeout=TIMEOUT)
        assert resp.status_code == 404 and resp.json()["error"] == "unknown_namespace"


def test_plain_http_client_library_sees_no_http_answer(stack):
    """http.client against the TLS port: the handshake bytes it expects never come."""
    conn = http.client.HTTPConnection(HOST, PORT[2], timeout=TIMEOUT)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()
