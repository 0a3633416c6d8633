"""The stack itself: listeners, routes, TLS, and the HCM hardening of envoy/envoy.yaml.tmpl.

Filter behaviour is tested in the filters' own modules; these tests pin what
Envoy's configuration guarantees whatever the filters do.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import uuid

import pytest
import requests

from helpers import (
    HOST,
    LISTENERS,
    TIMEOUT,
    admin_url,
    app_url,
    bare_url,
    echo_stats,
    egress_url,
    h2_request,
    secure_get,
    wait_until,
    web_url,
)

pytestmark = pytest.mark.usefixtures("stack")

PARTNER_SPIFFE = "spiffe://partner.example/ns/partner-a/sa/billing"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def echo_get(url: str, **kwargs) -> dict:
    """GET through a gateway to echo; returns echo's description of the request."""
    resp = requests.get(url, timeout=TIMEOUT, **kwargs)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body.get("service") in ("echo", "partner"), body
    return body


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (requests would normalise what we want to send as is)."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "-1"))
                if length >= 0 and len(rest) >= length:
                    break
    status = int(head.split(b" ", 2)[1])
    return status, headers, rest


# ------------------------------------------------------------------ listeners


@pytest.mark.parametrize("gateway_url", [web_url, app_url, egress_url, bare_url], ids=["web", "app", "egress", "bare"])
def test_health_is_answered_by_envoy_on_every_plain_gateway(gateway_url):
    resp = requests.get(gateway_url("/health"), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"status": "ok"}


def test_health_does_not_reach_echo():
    before = echo_stats()
    assert requests.get(web_url("/health"), timeout=TIMEOUT).status_code == 200
    assert echo_stats() == before


def test_admin_reports_live():
    resp = requests.get(admin_url("/ready"), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.text.strip() == "LIVE"


def test_every_listener_is_bound_to_loopback():
    listeners = requests.get(admin_url("/listeners?format=json"), timeout=TIMEOUT).json()["listener_statuses"]
    bound = {
        item["name"]: (item["local_address"]["socket_address"]["address"], item["local_address"]["socket_address"]["port_value"])
        for item in listeners
    }
    assert {name: bound[name] for name in LISTENERS} == {name: (HOST, port) for name, port in LISTENERS.items()}


def test_public_api_request_reaches_echo_with_its_path_and_query():
    body = echo_get(web_url("/api/v1/public/x?a=1"))
    assert body["method"] == "GET"
    assert body["path"] == "/api/v1/public/x"
    assert body["query"] == "a=1"


def test_bare_gateway_serves_the_web_routes_without_filters():
    body = echo_get(bare_url("/api/v1/public/x"))
    assert body["path"] == "/api/v1/public/x"


def test_egress_forwards_partner_a_paths_unchanged_to_the_partner():
    body = echo_get(egress_url("/partner-a/v1/ping"))
    assert body["service"] == "partner"
    assert body["path"] == "/partner-a/v1/ping"


def test_egress_has_no_route_for_other_paths_and_says_so_in_json():
    resp = requests.get(egress_url("/elsewhere"), timeout=TIMEOUT)
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "not_found", "message": "no route for this path"}
    # like the filters' denials, Envoy's own replies are never cached
    assert resp.headers["cache-control"] == "no-store"


def test_egress_does_not_reveal_internal_addresses_in_x_forwarded_for():
    body = echo_get(egress_url("/partner-a/x"))
    assert "x-forwarded-for" not in body["headers"]


# ---------------------------------------------------------------- request ids


def test_a_request_id_is_generated_and_returned_when_missing():
    resp = requests.get(web_url("/api/v1/public/x"), timeout=TIMEOUT)
    seen = resp.json()["headers"]["x-request-id"]
    assert UUID_RE.match(seen)
    assert resp.headers["x-request-id"] == seen


def test_an_incoming_request_id_is_preserved_end_to_end():
    rid = f"lb-{uuid.uuid4()}"
    resp = requests.get(web_url("/api/v1/public/x"), headers={"x-request-id": rid}, timeout=TIMEOUT)
    assert resp.json()["headers"]["x-request-id"] == rid
    assert resp.headers["x-request-id"] == rid


def test_envoy_local_replies_echo_the_request_id():
    rid = f"lb-{uuid.uuid4()}"
    resp = requests.get(egress_url("/nowhere"), headers={"x-request-id": rid}, timeout=TIMEOUT)
    assert resp.status_code == 404
    assert resp.headers["x-request-id"] == rid


# ------------------------------------------------------------- client address


def test_client_address_is_the_last_x_forwarded_for_entry_that_arrives():
    body = echo_get(web_url("/api/v1/public/x"), headers={"x-forwarded-for": "1.2.3.4"})
    headers = body["headers"]
    # Envoy resolves the client with one trusted hop: the entry the load
    # balancer appended, i.e. the last one that arrived.
    assert headers["x-envoy-external-address"] == "1.2.3.4"
    # It then appends its own peer. For a loopback peer Envoy appends the
    # host's own address (Envoy's "local address"), not 127.0.0.1.
    entries = [e.strip() for e in headers["x-forwarded-for"].split(",")]
    assert entries[0] == "1.2.3.4"
    assert len(entries) == 2
    ipaddress.ip_address(entries[1])


def test_only_the_last_x_forwarded_for_entry_is_trusted():
    body = echo_get(web_url("/api/v1/public/x"), headers={"x-forwarded-for": "6.6.6.6, 1.2.3.4"})
    assert body["headers"]["x-envoy-external-address"] == "1.2.3.4"


def test_without_x_forwarded_for_the_peer_is_the_client():
    body = echo_get(web_url("/api/v1/public/x"))
    assert body["headers"]["x-envoy-external-address"] == "127.0.0.1"


def test_access_log_records_route_and_resolved_client(stack):
    rid = f"log-{uuid.uuid4()}"
    requests.get(web_url("/api/v1/public/logged"), headers={"x-request-id": rid, "x-forwarded-for": "1.2.3.4"}, timeout=TIMEOUT)

    def logged():
        for line in stack.access_log.read_text(encoding="utf-8").splitlines():
            if rid in line:
                return json.loads(line)
        return None

    entry = wait_until(logged, message="the access log line")
    assert entry["route"] == "api"
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/v1/public/logged"
    assert entry["status"] == 200
    assert entry["client"] == "1.2.3.4"
    assert entry["listener"] == LISTENERS["web"]


# -------------------------------------------------------------------- XFCC


@pytest.mark.parametrize("gateway_url", [web_url, app_url, bare_url], ids=["web", "app", "bare"])
def test_a_client_supplied_xfcc_never_reaches_the_upstream(gateway_url):
    before = echo_stats()
    resp = requests.get(
        gateway_url("/api/v1/public/x"),
        headers={"x-forwarded-client-cert": f"By=evil;URI={PARTNER_SPIFFE}"},
        timeout=TIMEOUT,
    )
    if resp.status_code == 200:
        assert "x-forwarded-client-cert" not in resp.json()["headers"]
    else:  # a filter denied the request (e.g. app: no signature); then nothing reached echo
        assert 400 <= resp.status_code < 500, resp.text
        assert echo_stats() == before


# ------------------------------------------------------------------ secure


def test_secure_gateway_completes_the_handshake_with_a_demo_ca_client():
    resp = secure_get("/health")
    # The TLS handshake succeeded and the gateway answered; whether san-authz
    # lets this SAN see /health is that filter's business.
    assert resp.headers["server"] == "demo-gateway"
    assert resp.headers["x-request-id"]
    if resp.status_code == 200:
        assert resp.json() == {"status": "ok"}
    else:
        assert resp.status_code == 403, resp.text
        assert resp.headers["content-type"] == "application/json"


@pytest.mark.parametrize("cert", [None, "other-ca-client"], ids=["no-client-cert", "cert-from-another-ca"])
def test_secure_gateway_refuses_the_handshake(cert):
    before = echo_stats()
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        secure_get("/health", cert=cert)
    assert echo_stats() == before


def test_secure_gateway_forwards_the_verified_client_certificate_only():
    resp = secure_get(
        "/partner/v1/billing/invoices",
        headers={"x-forwarded-client-cert": "By=evil;URI=spiffe://evil.example/x"},
    )
    # The partner may GET here (contract): anything but 200 is a regression.
    assert resp.status_code == 200, (resp.status_code, resp.text)
    xfcc = resp.json()["headers"]["x-forwarded-client-cert"]
    assert f"URI={PARTNER_SPIFFE}" in xfcc
    assert "Hash=" in xfcc and "Cert=" in xfcc and "Subject=" in xfcc
    assert "evil" not in xfcc
    assert resp.json()["headers"]["x-forwarded-proto"] == "https"


# -------------------------------------------------------------- hardening


def test_an_encoded_slash_in_the_path_is_rejected_before_any_upstream():
    before = echo_stats()
    status, headers, body = raw_http(LISTENERS["web"], b"GET /api/v1/public%2F..%2Fusers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "bad_request"
    assert echo_stats() == before


@pytest.mark.parametrize("gateway", ["web", "app", "egress"])
def test_envoy_codec_refusals_are_json_denials(gateway):
    # The codec refuses these before a request id exists: each reply still
    # carries a fresh one (the local-reply mapper's %UNIQUE_ID%).
    ids = set()
    before = echo_stats()
    # HTTP/1.0: Envoy answers 426 itself (before any filter or route)
    status, headers, body = raw_http(LISTENERS[gateway], b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status == 426
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "upgrade_required"
    ids.add(headers["x-request-id"])
    # more than max_headers_count (100) headers: 431
    many = "".join(f"x-h{i}: v\r\n" for i in range(120)).encode()
    status, headers, body = raw_http(
        LISTENERS[gateway], b"GET /api/v1/public/x HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "headers_too_large"
    ids.add(headers["x-request-id"])
    # a malformed request line (lower-case method): 400
    status, headers, body = raw_http(
        LISTENERS[gateway], b"get /api/v1/public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 400
    assert json.loads(body)["error"] == "bad_request"
    ids.add(headers["x-request-id"])
    # transfer codings Envoy does not implement: the codec's 501 becomes 400
    # (bad input, not a gateway failure), saying why
    for coding in (b"gzip, chunked", b"identity", b"chunked, chunked"):
        status, headers, body = raw_http(
            LISTENERS[gateway], b"POST /api/v1/public/x HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: " + coding + b"\r\nConnection: close\r\n\r\n0\r\n\r\n")
        assert status == 400, coding
        assert headers["content-type"] == "application/json"
        doc = json.loads(body)
        assert doc["error"] == "unsupported_transfer_coding" and "transfer" in doc["message"], doc
        ids.add(headers["x-request-id"])
    assert len(ids) == 6 and all(len(i) == 36 for i in ids), ids
    # a WebSocket upgrade: no route accepts one
    path = b"/partner-a/v1/ping" if gateway == "egress" else b"/api/v1/public/x"
    status, headers, body = raw_http(
        LISTENERS[gateway], b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body)["error"] == "upgrade_not_supported"
    assert echo_stats() == before


@pytest.mark.parametrize("gateway", ["web", "app", "egress"])
def test_envoy_refusals_echo_the_request_id_the_client_sent(gateway):
    status, headers, _ = raw_http(
        LISTENERS[gateway], b"GET /api/v1/public%2Fx HTTP/1.1\r\nHost: x\r\nx-request-id: rid-envoy-400\r\n"
        b"Connection: close\r\n\r\n")
    assert status == 400
    assert headers["x-request-id"] == "rid-envoy-400"


@pytest.mark.parametrize("gateway", ["web", "app", "egress"])
def test_trace_is_405_on_every_path(gateway):
    before = echo_stats()
    # (app: /health, the one path replay-guard lets through unsigned; the
    # route answers after the filters)
    path = {"egress": "/partner-a/v1/ping", "app": "/health"}.get(gateway, "/api/v1/public/x")
    resp = requests.request("TRACE", f"http://{HOST}:{LISTENERS[gateway]}{path}",
                            headers={"cookie": "session=secret", "x-request-id": "rid-trace"}, timeout=TIMEOUT)
    assert resp.status_code == 405, resp.text
    assert resp.json()["error"] == "method_not_allowed"
    assert "secret" not in resp.text
    assert resp.headers["x-request-id"] == "rid-trace"
    assert "GET" in resp.headers["allow"]
    # TRACK: HTTP/1.1's parser already refuses the unknown method (400); over
    # HTTP/2, where any token is a method, the route answers 405.
    resp = requests.request("TRACK", f"http://{HOST}:{LISTENERS[gateway]}{path}",
                            headers={"cookie": "session=secret"}, timeout=TIMEOUT)
    assert resp.status_code == 400 and "secret" not in resp.text, resp.text
    for method in ("TRACE", "TRACK", "trace", "Track"):
        status, doc = h2_request(LISTENERS[gateway], method, path, {"cookie": "session=secret"}, b"")
        assert status == 405, (method, status, doc)
        assert doc["error"] == "method_not_allowed"
    assert echo_stats() == before


def test_a_header_name_with_an_underscore_is_rejected():
    before = echo_stats()
    resp = requests.get(web_url("/api/v1/public/x"), headers={"x_user_id": "alice"}, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert resp.json()["error"] == "bad_request"
    assert echo_stats() == before


def test_dot_segments_and_double_slashes_are_normalised_before_routing():
    body = echo_get(web_url("/api/v1/public/a/../b//c"))
    assert body["path"] == "/api/v1/public/b/c"


def test_raw_dot_segments_are_resolved_before_routing():
    # Sent raw: a client library would resolve the dots itself. On bare: this
    # is Envoy's normalisation alone (every gateway has the same settings,
    # see test_envoy_config.py), whatever the filters then decide.
    status, _, body = raw_http(LISTENERS["bare"], b"GET /api/v1/public/../../../health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}  # routed as /health, answered by Envoy
    status, _, body = raw_http(LISTENERS["bare"], b"GET /api/v1/public/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert json.loads(body)["path"] == "/api/admin"


def test_server_header_does_not_advertise_envoy():
    resp = requests.get(web_url("/health"), timeout=TIMEOUT)
    assert resp.headers["server"] == "demo-gateway"


def test_no_envoy_internal_headers_leak_to_clients():
    resp = requests.get(web_url("/api/v1/public/x"), timeout=TIMEOUT)
    assert not [h for h in resp.headers if h.lower().startswith("x-envoy-")]


@pytest.mark.slow
def test_unstable_route_times_out_after_five_seconds_with_a_json_504():
    # The unstable route's breaker is shared by the whole process: if an
    # earlier test left it open, wait it out (its half-open probes succeed
    # and close it) instead of skipping; an open breaker here is a 503, and
    # a regression must fail, not skip.
    wait_until(
        lambda: requests.get(web_url("/api/v1/unstable/ok?status=200"), timeout=TIMEOUT).status_code == 200,
        timeout=20, interval=0.2, message="the unstable breaker to let a request through",
    )
    resp = requests.get(web_url("/api/v1/unstable/slow?delay_ms=8000"), timeout=TIMEOUT)
    assert resp.status_code == 504, (resp.status_code, resp.text)
    assert resp.json() == {"error": "upstream_timeout", "message": "the upstream did not answer in time"}


# ------------------------------------------------------------ the runner


def test_a_second_stack_fails_fast_naming_the_taken_ports(tmp_path):
    from stack import Stack, StackError

    with pytest.raises(StackError, match=r"already in use: .*127\.0\.0\.1:9901 \(admin\)"):
        Stack(log_dir=tmp_path, config_path=tmp_path / "envoy.yaml").start()


def test_upstream_down_is_a_json_503_and_the_services_come_back(stack):
    # On bare (no wasm filter) the 503 is Envoy's own, whatever filters do.
    stack.stop_demo_services()
    try:
        resp = requests.get(bare_url("/api/v1/public/x"), timeout=TIMEOUT)
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {"error": "unavailable", "message": "the upstream is unavailable"}
        assert resp.headers["cache-control"] == "no-store"
    finally:
        stack.start_demo_services()
    assert requests.get(bare_url("/api/v1/public/x"), timeout=TIMEOUT).status_code == 200
