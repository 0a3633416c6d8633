"""sanitize against the real Envoy: what the upstream sees, and what never reaches it."""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
import shutil
import subprocess
import uuid

import pytest
import requests

from helpers import (
    CA,
    HOST,
    LISTENERS,
    REPO,
    TIMEOUT,
    bearer,
    client_cert,
    denial,
    echo_stats,
    egress_url,
    h2_request,
    secure_get,
    seen,
    web_url,
)

pytestmark = pytest.mark.usefixtures("stack")

ENVOY = REPO / ".venv" / "bin" / "envoy"


@pytest.mark.parametrize("query,want", [("", "20"), ("?size=0", "1"), ("?size=1000", "100"), ("?size=50", "50"),
                                        ("?size=99999999999999999999999", "100"), ("?size=abc", "20")])
def test_users_size_is_clamped_as_the_upstream_sees_it(query, want):
    resp = requests.get(web_url(f"/api/v1/users/7{query}"), headers=bearer("users:read"), timeout=TIMEOUT)
    assert seen(resp)["query"] == f"size={want}"


def test_repeated_size_collapses_to_one_value_and_other_params_pass_intact():
    resp = requests.get(
        web_url("/api/v1/users/7?size=5&q=a%20b&size=500"), headers=bearer("users:read"), timeout=TIMEOUT
    )
    assert seen(resp)["query"] == "size=5&q=a%20b"


def test_client_identity_headers_never_reach_the_upstream_on_an_open_route():
    forged = {
        "x-passport": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
        "x-user-id": "admin",
        "x-user-consent": "all",
        "x-gateway-identity": "admin",
        "x-forwarded-client-cert": "By=spiffe://internal.example/ns/tools/sa/admin",
        "x-device-id": "someone-elses-phone",
        "x-original-url": "/api/v1/users/1",
        "x-rewrite-url": "/api/v1/users/1",
        "x-http-method-override": "DELETE",
        "x-method-override": "DELETE",
        "x-forwarded-host": "evil.example",
        "x-harmless": "kept",
    }
    headers = seen(requests.get(web_url("/api/v1/public/whoami"), headers=forged, timeout=TIMEOUT))["headers"]
    assert headers.get("x-passport") != forged["x-passport"]
    for name in ("x-user-id", "x-user-consent", "x-gateway-identity", "x-forwarded-client-cert",
                 "x-device-id", "x-original-url", "x-rewrite-url", "x-http-method-override",
                 "x-method-override", "x-forwarded-host"):
        assert name not in headers, name
    assert headers["x-harmless"] == "kept"


def test_egress_strips_internal_headers_and_keeps_a_harmless_one():
    sent = {
        "authorization": "Bearer secret",
        "proxy-authorization": "Basic c2VjcmV0",
        "cookie": "session=1",
        "x-passport": "p",
        "x-user-id": "u1",
        "x-forwarded-for": "10.1.2.3",
        "forwarded": "for=10.1.2.3",
        "x-real-ip": "10.1.2.3",
        "x-harmless": "kept",
    }
    got = requests.get(egress_url("/partner-a/v1/ping"), headers=sent, timeout=TIMEOUT)
    headers = seen(got)["headers"]
    # Credentials, identity and internal addressing (the client's own and the
    # one Envoy adds, x-envoy-external-address) never leave.
    for name in ("authorization", "proxy-authorization", "cookie", "x-passport", "x-user-id",
                 "x-forwarded-for", "forwarded", "x-real-ip", "x-envoy-external-address"):
        assert name not in headers, name
    assert headers["x-harmless"] == "kept"


def test_orders_body_reaches_the_upstream_with_unknown_fields_stripped():
    body = {"item_id": "sku-1", "quantity": 3, "price": 0, "admin": True}
    resp = requests.post(web_url("/api/v1/orders"), json=body, headers=bearer("orders:write"), timeout=TIMEOUT)
    got = seen(resp)
    assert json.loads(got["body"]) == {"item_id": "sku-1", "quantity": 3}
    assert got["headers"]["content-length"] == str(len(got["body"]))


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"item_id":"sku-1"}', "quantity"),
        ('{"item_id":"sku-1","quantity":0}', "quantity"),
        ('{"item_id":"sku-1","quantity":101}', "quantity"),
        ('{"item_id":"sku-1","quantity":"3"}', "quantity"),
        ('{"item_id":"sku-1","quantity":1.5}', "quantity"),
        ('{"item_id":42,"quantity":1}', "item_id"),
        ('{"item_id":"' + "x" * 65 + '","quantity":1}', "item_id"),
        ('{"quantity":1}', "item_id"),
        ('{"item_id":"a","quantity":1,"quantity":1000}', "quantity"),
        ("[1,2,3]", None),
        ("{not json", None),
        ("", None),
    ],
)
def test_invalid_orders_body_is_400_naming_the_field_and_never_reaches_the_upstream(body, field):
    rid = str(uuid.uuid4())
    before = echo_stats()
    resp = requests.post(
        web_url("/api/v1/orders"),
        data=body.encode(),
        headers={"content-type": "application/json", "x-request-id": rid, **bearer("orders:write")},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 400, resp.text
    d = denial(resp)
    assert d["error"] == "invalid_body"
    if field:
        assert f"`{field}`" in d["message"]
    assert resp.headers["x-request-id"] == rid
    assert echo_stats() == before, "the denied request's headers reached the upstream"


def test_an_http2_body_ending_with_trailers_is_checked_like_any_other():
    # HTTP/2 lets a request end with trailers instead of a DATA frame marked
    # end-of-stream: no body callback says "complete", the trailers do.
    headers = {"content-type": "application/json", **bearer("orders:write")}
    before = echo_stats()
    status, doc = h2_request(LISTENERS["web"], "POST", "/api/v1/orders", headers,
                             b'{"item_id":"a1","quantity":1000}', trailers={"x-checksum": "1"})
    assert status == 400, doc
    assert doc["error"] == "invalid_body" and "quantity" in doc["message"], doc
    assert echo_stats() == before, "an invalid body reached the upstream"
    status, doc = h2_request(LISTENERS["web"], "POST", "/api/v1/orders", headers,
                             b'{"item_id":"a1","quantity":3,"evil":true}', trailers={"x-checksum": "1"})
    assert status == 200, doc
    assert json.loads(doc["body"]) == {"item_id": "a1", "quantity": 3}, doc
    status, doc = h2_request(LISTENERS["web"], "POST", "/api/v1/public/upload", {}, b"x" * 70_000,
                             trailers={"x-checksum": "1"})
    assert status == 413, doc


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_orders_with_a_non_json_content_type_is_400(content_type):
    before = echo_stats()
    resp = requests.post(
        web_url("/api/v1/orders"),
        data='{"item_id":"a","quantity":1}',
        headers={"content-type": content_type, **bearer("orders:write")},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 400
    assert denial(resp)["error"] == "unsupported_media_type"
    assert echo_stats() == before


def test_an_unlabelled_orders_body_is_read_as_json_and_checked():
    # requests' data= sends no content-type: the body is still JSON, and checked.
    resp = requests.post(web_url("/api/v1/orders"), data=b'{"item_id":"a","quantity":2,"evil":1}',
                         headers=bearer("orders:write"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert json.loads(seen(resp)["body"]) == {"item_id": "a", "quantity": 2}
    before = echo_stats()
    resp = requests.post(web_url("/api/v1/orders"), data=b"item_id=a&quantity=2",
                         headers=bearer("orders:write"), timeout=TIMEOUT)
    assert resp.status_code == 400
    assert denial(resp)["error"] == "invalid_body"
    assert echo_stats() == before


def test_a_gzip_orders_body_is_400_never_forwarded_unchecked():
    before = echo_stats()
    resp = requests.post(
        web_url("/api/v1/orders"),
        data=gzip.compress(b'{"item_id":"a","quantity":1000,"evil":1}'),
        headers={"content-type": "application/json", "content-encoding": "gzip",
                 **bearer("orders:write")},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 400
    assert denial(resp)["error"] == "unsupported_media_type"
    assert echo_stats() == before


@pytest.mark.parametrize("path", ["/api/v1/public/upload", "/api/v1/orders"])
def test_65_kib_body_is_413_before_the_upstream_sees_anything(path):
    before = echo_stats()
    resp = requests.post(
        web_url(path),
        data=b"x" * (65 * 1024),
        headers={"content-type": "application/json", **bearer("orders:write")},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 413
    assert denial(resp)["error"] == "body_too_large"
    assert echo_stats() == before


def test_chunked_body_without_length_is_counted_and_refused_past_the_limit():
    def chunks():
        for _ in range(17):
            yield b"y" * 4096  # 68 KiB in all, no content-length

    before = echo_stats()
    resp = requests.post(web_url("/api/v1/public/upload"), data=chunks(), timeout=TIMEOUT)
    assert resp.status_code == 413
    assert echo_stats() == before


def test_small_chunked_body_passes_whole():
    def chunks():
        yield b"hello "
        yield b"world"

    resp = requests.post(web_url("/api/v1/public/upload"), data=chunks(), timeout=TIMEOUT)
    assert seen(resp)["body"] == "hello world"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/public/%252e%252e/users/1",
        "/api/v1/public/%5c..%5cusers",
        "/api/v1/public/a%00b",
        "/api/v1/public/a%0d%0ab",
    ],
)
def test_tricks_that_survive_envoy_normalisation_are_400(path):
    before = echo_stats()
    resp = requests.get(web_url(path), timeout=TIMEOUT)
    assert resp.status_code == 400, (path, resp.status_code, resp.text)
    assert denial(resp)["error"] in ("invalid_path", "bad_request")
    assert echo_stats() == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/public/../users/1",
        "/api/v1/public/%2e%2e/users/1",
        "/api/v1/public/.%2e/users/1",
        "/api/v1/public/%2E%2E/users/1",
        "/api/v1/public//../users/1",
        "/api/v1/public/./../users/1",
        # Envoy's normaliser resolves "..;" as ".." itself
        "/api/v1/public/..;/users/1",
    ],
)
def test_traversal_never_reaches_a_protected_prefix_unauthenticated(path):
    # requests would normalise "../" itself: send the path as written.
    s = requests.Session()
    req = requests.Request("GET", web_url("/")).prepare()
    req.url = web_url(path)
    resp = s.send(req, timeout=TIMEOUT)
    if resp.status_code == 200:
        assert not resp.json()["path"].startswith("/api/v1/users"), resp.text
    else:
        assert resp.status_code in (400, 401, 403, 404), resp.status_code


@pytest.mark.parametrize("method,path,body", [
    # a rule tied to a path must not be dodged with a matrix parameter
    ("POST", "/api/v1/orders;x=1", {"item_id": 5, "quantity": 100000, "admin": True}),
    ("GET", "/api/v1/users;x/1?size=100000", None),
    ("POST", "/api/v1/transfers;jsessionid=1", {"amount": 1}),
])
def test_a_semicolon_in_the_path_is_400_before_any_other_filter(method, path, body):
    before = echo_stats()
    resp = requests.request(method, web_url(path), json=body, timeout=TIMEOUT,
                            headers=bearer("users:read"))
    assert resp.status_code == 400, (path, resp.status_code, resp.text)
    assert resp.json() == {"error": "invalid_path", "message": "the path contains ';'"}
    assert echo_stats() == before


def _send_as_written(method: str, path: str, **kw) -> requests.Response:
    s = requests.Session()
    req = requests.Request(method, web_url("/"), **kw).prepare()
    req.url = web_url(path)
    return s.send(req, timeout=TIMEOUT)


@pytest.mark.parametrize("method,path,body,message", [
    # an encoded ';' is a matrix parameter to an upstream that decodes first
    ("GET", "/api/v1/users%3b/7", None, "the path contains an encoded ';'"),
    ("POST", "/api/v1/orders%3Bjsessionid=x", {"item_id": "a", "quantity": 100000, "admin": True},
     "the path contains an encoded ';'"),
    ("POST", "/api/v1/transfers%3B", {"amount": 1}, "the path contains an encoded ';'"),
    # trailing dots and padded spaces are dropped by some servers
    ("GET", "/api/v1/users./7", None, "a path segment ends with '.' or begins or ends with a space"),
    ("GET", "/api/v1/users%20/7", None, "a path segment ends with '.' or begins or ends with a space"),
    ("POST", "/api/v1/orders.", {"item_id": "a", "quantity": 100000},
     "a path segment ends with '.' or begins or ends with a space"),
    # overlong UTF-8 ("%c0%ae" is '.' to a lax decoder), lone bytes
    ("GET", "/api/v1/public/%c0%ae%c0%ae/users/1", None,
     "the path has a percent-encoded sequence that is not UTF-8"),
    ("GET", "/api/v1/public/a%ff", None, "the path has a percent-encoded sequence that is not UTF-8"),
])
def test_path_forms_an_upstream_reads_as_another_path_are_400(method, path, body, message):
    # A valid token without the route's scope: before these were refused,
    # `/api/v1/users%3b/7` reached the upstream with it (no rule matched).
    before = echo_stats()
    resp = _send_as_written(method, path, json=body, headers=bearer(""))
    assert resp.status_code == 400, (path, resp.status_code, resp.text)
    assert resp.json() == {"error": "invalid_path", "message": message}
    assert echo_stats() == before


def test_ordinary_encoded_paths_still_pass():
    resp = _send_as_written("GET", "/api/v1/public/caf%C3%A9/a%20b/.well-known/v1.2")
    assert resp.status_code == 200, resp.text
    assert resp.json()["path"].startswith("/api/v1/public/caf%C3%A9/a%20b/.well-known/v1.2")


def test_two_host_lines_are_400_not_joined_for_the_upstream():
    before = echo_stats()
    conn = http.client.HTTPConnection(HOST, LISTENERS["web"], timeout=TIMEOUT)
    try:
        conn.putrequest("GET", "/api/v1/public/x", skip_host=True)
        conn.putheader("Host", "gateway.example")
        conn.putheader("Host", "evil.example")
        conn.putheader("x-request-id", "rid-two-hosts")
        conn.endheaders()
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
        rid = resp.getheader("x-request-id")
    finally:
        conn.close()
    assert status == 400, body
    assert json.loads(body) == {"error": "invalid_header",
                                "message": "the Host header is not a single valid host[:port]"}
    assert rid == "rid-two-hosts"
    assert echo_stats() == before


def test_an_orders_body_labelled_with_another_charset_is_400():
    before = echo_stats()
    resp = requests.post(web_url("/api/v1/orders"), data='{"item_id":"a","quantity":1}',
                         headers={"content-type": "application/json; charset=utf-16",
                                  **bearer("orders:write")}, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    assert denial(resp)["error"] == "unsupported_media_type"
    assert echo_stats() == before
    resp = requests.post(web_url("/api/v1/orders"), data='{"item_id":"a","quantity":1}',
                         headers={"content-type": "application/json; charset=UTF-8",
                                  **bearer("orders:write")}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def test_an_over_long_uri_is_400_uri_too_long():
    resp = requests.get(web_url("/api/v1/public/" + "a" * 5000), timeout=TIMEOUT)
    assert resp.status_code == 400
    assert resp.json()["error"] == "uri_too_long"


def test_query_limits_are_enforced():
    resp = requests.get(web_url("/api/v1/public/x?" + "&".join(f"p{i}=1" for i in range(65))), timeout=TIMEOUT)
    assert resp.status_code == 400
    assert denial(resp)["error"] == "invalid_query"
    resp = requests.get(web_url("/api/v1/public/x?q=" + "a" * 1025), timeout=TIMEOUT)
    assert resp.status_code == 400


@pytest.mark.parametrize("query", ["a=%0d%0a", "a=%00", "q=x%0ay", "%0a=1", "a=%7f", "a=%c0%80", "a=%ff"])
def test_encoded_control_characters_in_the_query_are_400(query):
    before = echo_stats()
    resp = requests.get(web_url(f"/api/v1/public/x?{query}"), headers={"x-request-id": "ctl-rid"}, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert denial(resp)["error"] == "invalid_query"
    assert resp.headers["x-request-id"] == "ctl-rid"
    assert echo_stats() == before


def test_sanitize_counters_are_exported(stack):
    requests.get(web_url("/api/v1/public/a%zz"), timeout=TIMEOUT)
    status, body = stack.admin("/stats?filter=sanitize_")
    assert status == 200
    stats = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
    # wasm: the tag-encoded name ends with the metric's; native: the
    # labelled counter is `wasmcustom.sanitize_denied_total.gateway.<g>...`
    # (docs/native.md, metrics).
    denied = [int(v) for k, v in stats.items()
              if k.endswith("sanitize_denied_total") or k.startswith("wasmcustom.sanitize_denied_total.")]
    assert denied and sum(denied) >= 1, stats


def test_a_broken_sanitize_config_is_refused_by_envoy_naming_the_field(tmp_path):
    root = tmp_path / "examples"
    shutil.copytree(REPO / "examples", root, ignore=shutil.ignore_patterns("demo-services", "target"))
    (root / "config" / "sanitize" / "web.json").write_text('{"routes":[{"name":"x","prefix":"api/v1"}]}')
    out = tmp_path / "envoy.yaml"
    subprocess.run(
        ["python3", str(REPO / "envoy" / "render.py"), "--profile", "local", "--include-root", str(root), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [str(ENVOY), "--mode", "validate", "--disable-hot-restart", "-c", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config at `routes[0].prefix`" in log, log[-2000:]


# One byte that is not UTF-8 in a header value (HTTP allows obs-text, and
# Envoy passes it on). proxy-wasm's Rust SDK unwraps String::from_utf8 in its
# string header getters: such a value used to trap sanitize's VM, and the
# fail-closed chain then answered 503 to every request of that worker.
NOT_UTF8 = [("web", "/health"), ("app", "/health"), ("egress", "/partner-a/v1/ping"),
            ("secure", "/partner/v1/billing/x")]


def _send_raw_header(gateway: str, path: str, value: bytes) -> tuple[int, dict, bytes]:
    port = LISTENERS[gateway]
    if gateway == "secure":
        ctx = ssl.create_default_context(cafile=str(CA))
        ctx.load_cert_chain(*client_cert("partner-billing"))
        conn = http.client.HTTPSConnection("localhost", port, timeout=TIMEOUT, context=ctx)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", path)
        conn.putheader("x-request-id", "rid-not-utf8")
        conn.putheader("x-note", value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("gateway,path", NOT_UTF8)
def test_a_header_value_that_is_not_utf8_is_400_and_the_gateway_keeps_serving(gateway, path):
    for _ in range(4):  # four new connections: the kernel spreads them over the workers
        status, headers, body = _send_raw_header(gateway, path, b"caf\xff")
        assert status == 400, body
        assert json.loads(body) == {"error": "invalid_header",
                                    "message": "the value of header x-note is not valid UTF-8"}
        assert headers["x-request-id"] == "rid-not-utf8"
    # The same header as UTF-8 text passes, on every worker.
    for _ in range(4):
        status, _, body = _send_raw_header(gateway, path, "café".encode())
        assert status == 200, body


# Paths are case-sensitive (contract): a path that matches a route only when
# letter case (or percent-encoding) is ignored meets none of that route's
# rules at the gateway, yet an upstream that folds case (Spring, IIS) serves
# it as the route. Found by a probe: with a users:read token, POST
# /api/v1/Orders with an invalid body and POST /api/v1/Transfers reached the
# upstream unchanged.
CASE_VARIANTS = [
    ("POST", "/api/v1/Orders", {"item_id": "x", "quantity": 100000, "evil": 1}, "/api/v1/orders"),
    ("POST", "/api/v1/ORDERS", {"item_id": "x", "quantity": 100000}, "/api/v1/orders"),
    # Envoy decodes unreserved escapes (%4F is 'O') before anyone sees it.
    ("POST", "/api/v1/%4Frders", {"item_id": "x", "quantity": 100000}, "/api/v1/orders"),
    ("POST", "/api/v1/Transfers", {"amount": 1}, "/api/v1/transfers"),
    ("POST", "/API/v1/transfers", {"amount": 1}, "/api/"),
    ("GET", "/api/V1/users/7", None, "/api/v1/users"),
    ("GET", "/api/v1/Users/7?size=1000", None, "/api/v1/users"),
    ("GET", "/HEALTH", None, "/health"),
    ("GET", "/Api/v1/public/x", None, "/api/"),
    # Unicode case folding (Java's equalsIgnoreCase): the long s is an 's'.
    ("POST", "/api/v1/tran%C5%BFfers", {"amount": 1}, "/api/v1/transfers"),
]


@pytest.mark.parametrize("method,path,body,route", CASE_VARIANTS)
def test_a_path_that_differs_from_a_route_only_by_case_is_400_on_web(method, path, body, route):
    before = echo_stats()
    resp = _send_as_written(method, path, json=body, headers=bearer("users:read"))
    assert resp.status_code == 400, (path, resp.status_code, resp.text)
    assert resp.json() == {
        "error": "invalid_path",
        "message": f"the path differs from the route {route} only by letter case or encoding",
    }
    assert resp.headers.get("x-request-id")
    assert echo_stats() == before, f"{path} reached the upstream"


@pytest.mark.parametrize("method,path,body,route", CASE_VARIANTS[:5])
def test_a_signed_case_variant_is_400_on_app(method, path, body, route):
    from signing import Signer  # noqa: PLC0415

    raw = json.dumps(body).encode() if body is not None else None
    headers = Signer.demo(device=f"dev-{uuid.uuid4().hex[:8]}").sign(method, "127.0.0.1:10001", path, raw)
    if raw is not None:
        headers["content-type"] = "application/json"
    before = echo_stats()
    s = requests.Session()
    req = requests.Request(method, "http://127.0.0.1:10001/", headers=headers, data=raw).prepare()
    req.url = "http://127.0.0.1:10001" + path
    resp = s.send(req, timeout=TIMEOUT)
    assert resp.status_code == 400, (path, resp.status_code, resp.text)
    assert resp.json()["error"] == "invalid_path"
    assert echo_stats() == before, f"{path} reached the upstream"


def test_a_case_variant_is_400_on_egress_and_secure():
    before = echo_stats()
    resp = requests.get(egress_url("/Partner-A/x"), timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_path"
    resp = secure_get("/Internal/x", cert="internal-admin")
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_path"
    assert echo_stats() == before


def test_letter_case_below_a_route_prefix_is_the_upstream_s_business():
    # Ids and names under a route keep their case: only the route's own
    # prefix is case-sensitive.
    resp = requests.get(web_url("/api/v1/users/AbC-7"), headers=bearer("users:read"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert seen(resp)["path"] == "/api/v1/users/AbC-7"
    resp = requests.get(web_url("/api/v1/public/Docs/README"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
