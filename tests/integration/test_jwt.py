"""jwt filter on the web gateway (10000), against the real Envoy.

Tokens are minted here with PyJWT and the committed demo keys (or forged by
hand for the attack list). Every refusal is checked on the wire: status,
`WWW-Authenticate` (RFC 6750), the JSON denial, and that the echo upstream
never saw the request.

The remote-JWKS tests at the end run their own small Envoy (loopback, free
ports) in front of a JWKS served by a Python http.server in this process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import (
    AUD,
    ISS,
    KEYS,
    REPO,
    TIMEOUT,
    denial,
    echo_stats,
    mint_token,
    seen,
    wait_until,
    web_url,
)

import render  # envoy/render.py (on sys.path via helpers)

REALM = 'Bearer realm="demo-api"'


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims(scope: str = "users:read", **extra) -> dict:
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "user-7", "iat": now, "exp": now + 300, "scope": scope,
         "jti": uuid.uuid4().hex}
    c.update(extra)
    return c


def rs_key():
    return serialization.load_pem_private_key((KEYS / "jwt-rs256.pem").read_bytes(), None)


def es_key():
    return serialization.load_pem_private_key((KEYS / "jwt-es256.pem").read_bytes(), None)


def sign_raw(header_json: str, payload_json: str, key=None) -> str:
    """Signs raw JSON text (so a test can write duplicate members)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    msg = f"{b64(header_json.encode())}.{b64(payload_json.encode())}".encode()
    key = key or rs_key()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    else:
        der = key.sign(msg, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{msg.decode()}.{b64(sig)}"


def get(path: str, token: str | None = None, method: str = "GET", **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return requests.request(method, web_url(path), headers=headers, timeout=TIMEOUT, **kw)


def assert_invalid_token(resp: requests.Response) -> None:
    assert resp.status_code == 401, (resp.status_code, resp.text)
    challenge = resp.headers.get("www-authenticate", "")
    assert challenge.startswith(REALM) and 'error="invalid_token"' in challenge, challenge
    assert denial(resp)["error"] in ("invalid_token", "token_replayed")
    assert resp.headers.get("x-request-id")


# ------------------------------------------------------------- contract routes


def test_open_routes_need_no_token(stack):
    assert get("/health").status_code == 200
    assert get("/api/v1/public/items").status_code == 200


def test_open_routes_do_not_pass_a_bearer_token_on(stack):
    """No token is checked on an open route, and none rides along to its upstream."""
    token = mint_token("users:read", sub="alice")
    for path in ("/api/v1/public/items", "/api/v1/unstable/items"):
        hdrs = seen(get(path, token))["headers"]
        assert "authorization" not in hdrs, path
        assert "x-user-id" not in hdrs, path
    hdrs = seen(get("/api/v1/public/items", headers={"authorization": "Basic dXNlcjpwdw=="}))["headers"]
    assert hdrs["authorization"] == "Basic dXNlcjpwdw==", "another scheme is not ours to drop"
    # a tab after the scheme still reads as a bearer token to split()-based parsers
    hdrs = seen(get("/api/v1/public/items", headers={"authorization": f"Bearer\t{token}"}))["headers"]
    assert "authorization" not in hdrs


def test_optional_routes_pass_on_no_credential_they_did_not_verify(stack):
    """On an `optional` route (the probe listener, tests/integration/probe.py)
    a request without a token the filter recognises goes on anonymous; what
    a lax upstream parser would read as a bearer token goes no further."""
    from probe import PROBE  # noqa: PLC0415

    def probe(headers: dict[str, str]) -> requests.Response:
        return requests.get(PROBE + "/opt/items", headers=headers, timeout=TIMEOUT)

    for value in ("Bearer\tforged.token.x", "Basic x, Bearer forged.token.x", "bearer\tforged"):
        resp = probe({"authorization": value})
        assert resp.status_code == 200, (value, resp.text)
        hdrs = seen(resp)["headers"]
        assert "authorization" not in hdrs, f"{value!r} reached the upstream"
        assert "x-user-id" not in hdrs, value
    hdrs = seen(probe({"authorization": "Basic dXNlcjpwdw=="}))["headers"]
    assert hdrs["authorization"] == "Basic dXNlcjpwdw==", "another scheme is not ours to drop"
    # A recognised token is verified: a bad one is refused, a good one passes
    # with the identity and without the token.
    assert probe({"authorization": "Bearer a.b.c"}).status_code == 401
    hdrs = seen(probe({"authorization": f"Bearer {mint_token('', sub='opt-user')}"}))["headers"]
    assert hdrs.get("x-user-id") == "opt-user"
    assert "authorization" not in hdrs


def test_only_health_itself_is_open(stack):
    before = echo_stats()
    assert get("/health").status_code == 200
    for path in ("/health/x", "/health/api/v1/users/7"):
        resp = get(path, method="POST", data="x")
        assert resp.status_code == 401, (path, resp.text)
        assert denial(resp)["error"] == "missing_token"
    assert echo_stats() == before


def test_missing_token_is_401_with_a_bare_bearer_challenge(stack):
    before = echo_stats()
    resp = get("/api/v1/users/1")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == REALM
    assert denial(resp)["error"] == "missing_token"
    assert echo_stats() == before, "a denied request reached the upstream"


@pytest.mark.parametrize("kid", ["demo-rs256", "demo-es256"])
def test_valid_token_with_scope_reaches_echo_with_identity_headers(stack, kid):
    token = mint_token("users:read", sub="alice", kid=kid)
    body = seen(get("/api/v1/users/1", token, headers={"x-user-id": "mallory"}))
    hdrs = body["headers"]
    assert hdrs.get("x-user-id") == "alice"
    assert hdrs.get("x-user-scope") == "users:read"
    assert "authorization" not in hdrs, "the token must not reach the upstream"


def test_wrong_scope_is_403_insufficient_scope(stack):
    before = echo_stats()
    resp = get("/api/v1/orders", mint_token("users:read"), method="POST",
               json={"item_id": "a", "quantity": 1})
    assert resp.status_code == 403
    assert resp.headers["www-authenticate"] == (
        f'{REALM}, error="insufficient_scope", scope="orders:write"')
    assert denial(resp)["error"] == "insufficient_scope"
    assert echo_stats() == before


def test_orders_with_scope_pass(stack):
    resp = get("/api/v1/orders", mint_token("orders:write"), method="POST",
               json={"item_id": "a", "quantity": 1})
    assert resp.status_code == 200, resp.text


def test_transfer_token_is_accepted_once_even_on_a_new_connection(stack):
    token = mint_token("transfers:write")
    with requests.Session() as s1:
        r1 = s1.post(web_url("/api/v1/transfers"), headers={"authorization": f"Bearer {token}"},
                     json={"amount": 1}, timeout=TIMEOUT)
    assert r1.status_code == 200, r1.text
    before = echo_stats()
    with requests.Session() as s2:
        r2 = s2.post(web_url("/api/v1/transfers"), headers={"authorization": f"Bearer {token}"},
                     json={"amount": 1}, timeout=TIMEOUT)
    assert_invalid_token(r2)
    assert denial(r2)["error"] == "token_replayed"
    assert echo_stats() == before


def test_transfer_token_without_jti_is_refused(stack):
    c = claims("transfers:write")
    del c["jti"]
    token = pyjwt.encode(c, (KEYS / "jwt-rs256.pem").read_text(), algorithm="RS256",
                         headers={"kid": "demo-rs256"})
    assert_invalid_token(get("/api/v1/transfers", token, method="POST", json={}))


def test_unknown_api_routes_need_a_token(stack):
    assert get("/api/v2/whatever").status_code == 401
    assert get("/api/v2/whatever", mint_token()).status_code == 200


@pytest.mark.parametrize("method,path,scope,allow", [
    ("PUT", "/api/v1/transfers", "transfers:write", "POST"),
    ("PATCH", "/api/v1/orders", "orders:write", "POST"),
    ("GET", "/api/v1/orders/7", "orders:write", "POST"),
    ("DELETE", "/api/v1/users/1", "users:read", "GET, HEAD"),
    ("POST", "/api/v1/users", "users:read", "GET, HEAD"),
])
def test_a_method_the_scoped_route_does_not_name_is_405_and_never_forwarded(
        stack, method, path, scope, allow):
    # The filters' rules select by method; a method they do not name meets
    # only the token-required catch-all. Without the routes' 405 a PUT would
    # skip the one-time jti and a PATCH the orders body rule.
    token = mint_token(scope)
    before = echo_stats()
    for _ in range(2):
        resp = get(path, token, method=method, json={"item_id": "a", "quantity": 1000, "evil": 1})
        assert resp.status_code == 405, (resp.status_code, resp.text)
        assert resp.headers["allow"] == allow
        assert denial(resp)["error"] == "method_not_allowed"
        assert resp.headers.get("x-request-id")
    assert echo_stats() == before, "a 405 reached the upstream"


def test_a_transfer_token_refused_for_its_method_is_still_unused(stack):
    token = mint_token("transfers:write")
    assert get("/api/v1/transfers", token, method="PUT", json={}).status_code == 405
    assert get("/api/v1/transfers", token, method="POST", json={}).status_code == 200
    assert denial(get("/api/v1/transfers", token, method="POST", json={}))["error"] == "token_replayed"


def test_head_on_users_needs_the_read_scope_like_get(stack):
    assert get("/api/v1/users/1", mint_token("orders:write"), method="HEAD").status_code == 403
    resp = get("/api/v1/users/1", mint_token("users:read"), method="HEAD")
    assert resp.status_code == 200 and resp.content == b""
    # the collection path itself is under the same rule (segment-aware prefix)
    assert get("/api/v1/users", mint_token("orders:write")).status_code == 403
    assert seen(get("/api/v1/users?size=500", mint_token("users:read")))["query"] == "size=100"


def test_spoofed_identity_header_on_an_open_route_is_stripped(stack):
    body = seen(get("/api/v1/public/x", headers={"x-user-id": "admin", "x-user-scope": "all"}))
    assert "x-user-id" not in body["headers"]
    assert "x-user-scope" not in body["headers"]


# ------------------------------------------------------------------ attacks


def _attacks() -> list[tuple[str, str]]:
    good = claims()
    payload = json.dumps(good, separators=(",", ":"))
    valid = pyjwt.encode(good, (KEYS / "jwt-rs256.pem").read_text(), algorithm="RS256",
                         headers={"kid": "demo-rs256"})
    h, p, s = valid.split(".")
    out: list[tuple[str, str]] = []
    for alg in ("none", "None", "NONE", "nOnE"):
        out.append((f"alg {alg}", f"{b64json({'alg': alg, 'kid': 'demo-rs256'})}.{p}."))
        out.append((f"alg {alg} with sig", f"{b64json({'alg': alg, 'kid': 'demo-rs256'})}.{p}.{s}"))
    # HS256 "signed" with the RSA public key (algorithm confusion).
    pub_pem = rs_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    msg = f"{b64json({'alg': 'HS256', 'kid': 'demo-rs256', 'typ': 'JWT'})}.{p}"
    out.append(("HS256 with the RSA public key",
                f"{msg}.{b64(hmac.new(pub_pem, msg.encode(), hashlib.sha256).digest())}"))
    # ECDSA all-zero signature (CVE-2022-21449).
    msg = f"{b64json({'alg': 'ES256', 'kid': 'demo-es256'})}.{p}"
    out.append(("ECDSA zero signature", f"{msg}.{b64(bytes(64))}"))
    # A valid signature from another key under our kid.
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out.append(("another RSA key, our kid", sign_raw('{"alg":"RS256","kid":"demo-rs256"}', payload, other_rsa)))
    other_ec = ec.generate_private_key(ec.SECP256R1())
    out.append(("another EC key, our kid", sign_raw('{"alg":"ES256","kid":"demo-es256"}', payload, other_ec)))
    # Embedded key headers: never fetched or trusted.
    nums = other_ec.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}
    for name, val in (("jwk", jwk), ("jku", "http://127.0.0.1:1/jwks"), ("x5u", "http://127.0.0.1:1/c"),
                      ("x5c", ["MIIB"])):
        hdr = json.dumps({"alg": "ES256", "kid": "demo-es256", name: val})
        out.append((f"{name} header", sign_raw(hdr, payload, other_ec)))
    out.append(("unknown crit", sign_raw('{"alg":"RS256","kid":"demo-rs256","crit":["x-new"],"x-new":1}', payload)))
    out.append(("nested JWT", sign_raw('{"alg":"RS256","kid":"demo-rs256","cty":"JWT"}', valid)))
    out.append(("duplicate alg", sign_raw('{"alg":"RS256","kid":"demo-rs256","alg":"none"}', payload)))
    out.append(("duplicate claim", sign_raw('{"alg":"RS256","kid":"demo-rs256"}',
                                            payload.replace("{", '{"sub":"admin",', 1))))
    out.append(("padded base64url", f"{h}=.{p}.{s}"))
    last = s[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = alphabet[(alphabet.index(last) & ~3) | 1]
    out.append(("non-canonical trailing bits", f"{h}.{p}.{s[:-1]}{tweaked}"))
    out.append(("oversized token", f"{h}.{'A' * 9000}.{s}"))
    for name, change in (
        ("exp as a string", {"exp": str(good["exp"])}),
        ("wrong iss", {"iss": "https://evil.example"}),
        ("wrong aud", {"aud": "other-api"}),
        ("expired beyond skew", {"exp": int(time.time()) - 120}),
        ("nbf beyond skew", {"nbf": int(time.time()) + 120}),
        ("empty sub", {"sub": ""}),
        ("sub with a leading space", {"sub": " user-7"}),
        ("sub with CR LF", {"sub": "user-7\r\nx-evil: 1"}),
        ("sub not a string", {"sub": 7}),
    ):
        c = dict(good, **change)
        out.append((name, pyjwt.encode(c, (KEYS / "jwt-rs256.pem").read_text(), algorithm="RS256",
                                       headers={"kid": "demo-rs256"})))
    no_sub = {k: v for k, v in good.items() if k != "sub"}
    out.append(("no sub", pyjwt.encode(no_sub, (KEYS / "jwt-rs256.pem").read_text(), algorithm="RS256",
                                       headers={"kid": "demo-rs256"})))
    return out


def test_every_attack_is_a_401_that_never_reaches_the_upstream(stack):
    before = echo_stats()
    failures = []
    for name, token in _attacks():
        resp = get("/api/v1/users/1", token)
        try:
            assert_invalid_token(resp)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)
    assert echo_stats() == before


def test_two_tokens_in_one_request_are_refused(stack):
    t = mint_token("users:read")
    # Two Authorization headers (requests sends a list as repeated headers via http.client).
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", 10000, timeout=TIMEOUT)
    conn.putrequest("GET", "/api/v1/users/1")
    conn.putheader("authorization", f"Bearer {t}")
    conn.putheader("authorization", f"Bearer {t}")
    conn.endheaders()
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status == 401 and body["error"] == "invalid_token"
    assert_invalid_token(get("/api/v1/users/1", f"{t}, Bearer {t}"))


# ------------------------------------------------------------- remote JWKS

ENVOY = REPO / ".venv" / "bin" / "envoy"
WASM = render.LOCAL_WASM_DIR / "jwt.wasm"
REMOTE_CONFIG = REPO / "examples" / "config" / "jwt" / "web-remote-jwks.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JwksServer:
    """Serves a JWKS on loopback and counts the fetches."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.fetches = 0
        self.up = True
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.fetches += 1
                if not outer.up:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def remote_envoy(tmp_path):
    if not ENVOY.exists() or not WASM.exists():
        pytest.skip("needs .venv/bin/envoy and a built jwt.wasm (make build venv)")
    jwks = json.loads((KEYS / "jwks.json").read_text())
    server = JwksServer(jwks)
    cfg = json.loads(REMOTE_CONFIG.read_text())
    remote = cfg["providers"][0]["jwks"]["remote"]
    remote.update(cache_duration="10s", max_stale="6s", retry_interval="1s")
    port, admin = free_port(), free_port()
    yaml_text = f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: web
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                direct_response: {{ status: 200, body: {{ inline_string: ok }} }}
          http_filters:
          - name: jwt
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: jwt
                root_id: jwt
                vm_config:
                  vm_id: jwt
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {WASM} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(json.dumps(cfg))}
                failure_policy: FAIL_CLOSED
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: jwks
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: jwks
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {server.port} }} }} }} }}] }}]
"""
    path = tmp_path / "envoy-remote-jwks.yaml"
    path.write_text(yaml_text)
    log = open(tmp_path / "envoy.log", "w")
    proc = subprocess.Popen([str(ENVOY), "-c", str(path), "--concurrency", "2", "--disable-hot-restart",
                             "-l", "warn", "--component-log-level", "wasm:info"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "admin": f"http://127.0.0.1:{admin}", "server": server,
               "proc": proc, "log": tmp_path / "envoy.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        server.close()


def _status(base: str, token: str) -> int:
    try:
        return requests.get(f"{base}/api/x", headers={"authorization": f"Bearer {token}"}, timeout=5).status_code
    except requests.RequestException:
        return 0


def _counter(admin: str, name: str) -> int:
    text = requests.get(f"{admin}/stats?filter={name}", timeout=5).text
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if name in line)


def test_remote_jwks_is_fetched_once_served_stale_then_dropped(remote_envoy):
    env = remote_envoy
    token = mint_token("users:read")
    wait_until(lambda: _status(env["url"], token) == 200, timeout=30, message="remote JWKS loaded")
    fetched_at = time.monotonic()
    # Two workers, one fetch (the lease in shared data).
    assert env["server"].fetches == 1, env["server"].fetches
    # The endpoint goes down: valid tokens keep working while stale.
    env["server"].up = False
    time.sleep(max(0.0, 11 - (time.monotonic() - fetched_at)))
    assert _status(env["url"], mint_token("users:read")) == 200
    assert _counter(env["admin"], "jwt_jwks_stale_served_total") >= 1
    # Past cache_duration + max_stale: tokens are refused (fail closed), not 5xx.
    wait_until(lambda: _status(env["url"], mint_token("users:read")) == 401, timeout=15,
               message="stale JWKS dropped")
    assert _counter(env["admin"], "jwt_jwks_fetch_failed_total") >= 1


def test_unknown_kid_triggers_a_rate_limited_refetch(remote_envoy):
    env = remote_envoy
    wait_until(lambda: _status(env["url"], mint_token("users:read")) == 200, timeout=30, message="remote JWKS loaded")
    # Rotate: a new EC key is published after the gateway loaded the JWKS.
    new = ec.generate_private_key(ec.SECP256R1())
    nums = new.public_key().public_numbers()
    env["server"].doc = {"keys": env["server"].doc["keys"] + [{
        "kty": "EC", "crv": "P-256", "kid": "rotated-1", "alg": "ES256", "use": "sig",
        "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}]}
    pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    token = pyjwt.encode(claims(), pem, algorithm="ES256", headers={"kid": "rotated-1"})
    before = env["server"].fetches
    # A burst of unknown-kid requests: refused at first, then accepted after one refetch.
    codes = [_status(env["url"], token) for _ in range(20)]
    assert codes[0] == 401
    wait_until(lambda: _status(env["url"], token) == 200, timeout=10, message="refetch after unknown kid")
    assert env["server"].fetches - before <= 3, "refetches must be rate limited, not one per request"
