"""Arbitrary client input through the real Envoy and the real modules.

The native property tests (`arbitrary_input` in each filter crate) drive the
request logic over a fake host; this sends the same kind of input (odd
paths and queries, junk credentials and signatures, client copies of the
headers the gateway asserts, junk bodies) through every gateway of the
stack, from a fixed seed, and checks what a wasm panic or a partial forward
would break:

* no answer is a 5xx (a panicking filter takes its worker's VM down, and
  the fail-closed filters then answer 503 on that worker);
* every JSON answer that is not the upstream's is our denial,
  `{"error", "message"}` with the request id echoed;
* no client copy of an asserted header (`x-passport`, `x-user-*`,
  `x-gateway-*`, a client XFCC) reaches the upstream, on any route;
* afterwards every gateway still serves valid requests on both workers, and
  Envoy's log has no panic.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl

import pytest

from helpers import CA, HOST, LISTENERS, TIMEOUT, client_cert, h2_request, mint_token
from signing import Signer

pytestmark = pytest.mark.usefixtures("stack")

SEED = 20261123
REQUESTS_PER_GATEWAY = 120

SEGMENTS = [
    "api", "v1", "users", "orders", "public", "transfers", "..", ".", "%2e%2e", "%2E", "%252e", "%2f",
    "%5c", "%00", "", ";x=1", "%", "%zz", "..;", "%c0%ae", "~", "%20", "a+b", "x" * 300,
]
PREFIXES = ["/api/v1/users/", "/api/v1/orders", "/api/v1/public/", "/api/v1/transfers", "/health",
            "/partner-a/", "/partner/v1/billing/", "/internal/", "/"]
ASSERTED = ["x-passport", "x-user-id", "x-user-risk", "x-user-consent", "x-gateway-identity",
            "x-forwarded-client-cert"]
HEADERS = ["authorization", "cookie", "signature-input", "signature", "content-digest", "content-type",
           "x-forwarded-for", *ASSERTED]
VALUES = [
    "Bearer ", "Bearer a.b.c", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "bearer x", "Basic Zm9vOmJhcg==",
    'app=("@method" "@authority" "@path");created=1;keyid="a:b:1";nonce="n"', "app=:AAAA:", "app=(", "sha-256=:AAAA:",
    "application/json", "application/json; charset=utf-8", "text/plain",
    'By=spiffe://x;Hash=00;URI=spiffe://partner.example/ns/partner-a/sa/billing', "203.0.113.7, 10.0.0.1", "admin",
    "0" * 40,
]


def junk(rng: random.Random, n: int) -> str:
    """Printable ASCII (what HTTP/1.1 header values and targets may carry)."""
    return "".join(chr(rng.randrange(0x21, 0x7f)) for _ in range(rng.randrange(n + 1)))


def target(rng: random.Random) -> str:
    path = rng.choice(PREFIXES) + "/".join(rng.choice(SEGMENTS) if rng.random() < 0.7 else junk(rng, 10)
                                           for _ in range(rng.randrange(4)))
    path = path.replace("#", "%23").replace("?", "%3F")
    if rng.random() < 0.5:
        params = []
        for _ in range(rng.randrange(5)):
            name = rng.choice(["size", "page", "status", "", junk(rng, 6)])
            value = rng.choice(["20", "-1", "1000", "99999999999999999999", "", "%", junk(rng, 12)])
            params.append(f"{name}={value}")
        path += "?" + "&".join(params).replace("#", "%23")
    return path


def request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes | None]:
    method = rng.choice(["GET", "GET", "POST", "PUT", "DELETE", "PATCH"])
    headers = {}
    for _ in range(rng.randrange(5)):
        name = rng.choice(HEADERS)
        headers[name] = rng.choice(VALUES) if rng.random() < 0.6 else junk(rng, 60)
        if rng.random() < 0.1:
            # obs-text: bytes 0x80-0xff (http.client sends str as latin-1),
            # mostly not UTF-8; sanitize refuses those with 400 invalid_header.
            headers[name] += "".join(chr(rng.randrange(0x80, 0x100)) for _ in range(rng.randrange(1, 4)))
    body = None
    if method in ("POST", "PUT", "PATCH") and rng.random() < 0.8:
        body = rng.choice([
            b'{"item_id":"a1","quantity":1}',
            b'{"item_id":"a1","quantity":1000}',
            b'{"item_id":"a1","quantity":1,"extra":{"x":[1,2,3]}}',
            b"{", b"[]", b"null", b"\xef\xbb\xbf{}",
            bytes(rng.randrange(256) for _ in range(rng.randrange(200))),
            b"x" * rng.choice([10, 70_000]),
        ])
    return method, target(rng), headers, body


def connection(gateway: str) -> http.client.HTTPConnection:
    port = LISTENERS[gateway]
    if gateway == "secure":
        ctx = ssl.create_default_context(cafile=str(CA))
        ctx.load_cert_chain(*client_cert("partner-billing"))
        return http.client.HTTPSConnection("localhost", port, timeout=TIMEOUT, context=ctx)
    return http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)


def send(gateway: str, method: str, path: str, headers: dict[str, str],
         body: bytes | None) -> tuple[int, dict[str, str], bytes]:
    conn = connection(gateway)
    try:
        conn.request(method, path, body=body, headers={"x-request-id": "arbitrary-rid", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_answer(gateway: str, req: tuple, status: int, headers: dict[str, str], body: bytes) -> None:
    what = f"{gateway}: {req[0]} {req[1]!r} headers={req[2]!r}"
    assert status < 500, f"{what} -> {status} {body[:300]!r}"
    if not headers.get("content-type", "").startswith("application/json"):
        return  # Envoy's own answers (404 no route, codec 400s) are plain text
    doc = json.loads(body)
    if status >= 400:
        assert set(doc) == {"error", "message"}, f"{what} -> {status} {doc}"
        assert headers.get("x-request-id") == "arbitrary-rid", f"{what} -> {headers}"
    elif isinstance(doc, dict) and isinstance(doc.get("headers"), dict):
        # the echo/partner upstream describes what reached it
        upstream = doc["headers"]
        for name in ASSERTED:
            if name in req[2]:
                assert upstream.get(name) != req[2][name], f"{what}: the client's {name} reached the upstream"
        if gateway != "secure":
            assert "x-forwarded-client-cert" not in upstream, f"{what}: an XFCC reached the upstream"


@pytest.mark.parametrize("gateway", ["web", "app", "secure", "egress"])
def test_arbitrary_requests_get_well_formed_answers(gateway, stack):
    rng = random.Random(f"{SEED}-{gateway}")
    for _ in range(REQUESTS_PER_GATEWAY):
        req = request(rng)
        status, headers, body = send(gateway, *req)
        check_answer(gateway, req, status, headers, body)
    assert_every_gateway_still_serves_and_nothing_panicked(stack)


@pytest.mark.parametrize("gateway", ["web", "app", "egress"])
def test_arbitrary_http2_requests_ending_with_trailers_get_well_formed_answers(gateway, stack):
    # HTTP/2 (h2c) and a body finished by trailers: the path through each
    # filter's trailers callback, or past a filter that has none
    rng = random.Random(f"{SEED}-h2-{gateway}")
    for _ in range(REQUESTS_PER_GATEWAY // 4):
        method, path, headers, body = request(rng)
        # nghttp computes content-length itself and cannot send an empty value
        headers = {k: v for k, v in headers.items() if k != "content-length" and v.strip()}
        status, doc = h2_request(LISTENERS[gateway], method, path, headers, body or b"", trailers={"x-t": "1"})
        what = f"{gateway} h2: {method} {path!r} headers={headers!r}"
        assert status < 500, f"{what} -> {status} {doc}"
        if status >= 400 and isinstance(doc, dict) and "error" in doc:
            assert set(doc) == {"error", "message"}, f"{what} -> {doc}"
        if status == 200 and isinstance(doc, dict) and path.startswith("/api/v1/orders") and method == "POST":
            # whatever reached the upstream on the orders route passed the JSON rule
            sent = json.loads(doc.get("body") or "null")
            assert isinstance(sent, dict) and set(sent) == {"item_id", "quantity"}, f"{what} -> {doc}"
    assert_every_gateway_still_serves_and_nothing_panicked(stack)


def assert_every_gateway_still_serves_and_nothing_panicked(stack) -> None:
    """After a storm: every gateway still answers on fresh connections (spread
    over both workers), and no VM panicked. Each storm test calls it on its
    own, so the check holds whatever order or subset of tests runs."""
    token = mint_token("users:read")
    signer = Signer.demo()
    for _ in range(8):
        assert send("web", "GET", "/api/v1/users/1", {"authorization": f"Bearer {token}"}, None)[0] == 200
        signed = signer.sign("GET", f"{HOST}:{LISTENERS['app']}", "/api/v1/users/1")
        assert send("app", "GET", "/api/v1/users/1", signed, None)[0] == 200
        assert send("secure", "GET", "/partner/v1/billing/x", {}, None)[0] == 200
        assert send("egress", "GET", "/partner-a/x", {}, None)[0] == 200
    log = stack.envoy_log.read_text(encoding="utf-8", errors="replace") if stack.envoy_log else ""
    assert "panicked" not in log, [line for line in log.splitlines() if "panicked" in line][:5]
