"""e2ee on the app gateway (10001), against the real Envoy.

Bodies are encrypted and responses decrypted by tests/integration/ece.py
(Python `cryptography`: AESGCM + HKDF), requests signed by signing.py; both
share no code with the filters. Chain: sanitize -> replay-guard -> e2ee ->
sanitize-body -> fds-block -> passport -> route-breaker -> router.

Every refusal is checked to be a plain JSON denial that never reached the
echo upstream, not even its headers (its /_stats counter).
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time

import jwt
import pytest
import requests

import ece
from helpers import (APP, running_http_filters, FDS, KEYS, LISTENERS, TIMEOUT, admin_url, denial, echo_stats, h2_request, service_url,
                     wait_until, wasm_build)
from signing import Signer, content_digest

AUTHORITY = "127.0.0.1:10001"
MASTER = ece.demo_master()
PASSPORT_JWKS = {k["kid"]: jwt.PyJWK(k) for k in json.loads((KEYS / "passport-jwks.json").read_text())["keys"]}


class Client:
    """An app: one device key (key id fixed for the test), signing and encrypting,
    talking to the gateway on `port` (the app gateway; test_e2ee_native.py:
    the native one)."""

    def __init__(self, port: int = LISTENERS["app"], **kw):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.authority = f"127.0.0.1:{port}"
        self.signer = Signer.demo(device=f"e2ee-{secrets.token_hex(4)}", **kw)
        self.kid = self.signer.key_id()
        self.key = ece.ikm(MASTER, self.kid)

    def encrypt(self, plain: bytes, rs: int = 4096, kid: str | None = None, key: bytes | None = None, **kw) -> bytes:
        return ece.encrypt(plain, key or self.key, kid or self.kid, rs=rs, **kw)

    def headers(self, method: str, target: str, body: bytes | None, encrypted: bool = True) -> dict[str, str]:
        h = {"Connection": "close", **self.signer.sign(method, self.authority, target, body, key_id=self.kid)}
        if body is not None:
            h["Content-Type"] = "application/json"
        if encrypted:
            h["Content-Encoding"] = "aes128gcm"
        return h

    def send(self, method: str, target: str, body: bytes | None, encrypted: bool = True) -> requests.Response:
        return requests.request(method, self.base + target, headers=self.headers(method, target, body, encrypted),
                                data=body, timeout=TIMEOUT)

    def post(self, target: str, plain: bytes, **kw) -> requests.Response:
        return self.send("POST", target, self.encrypt(plain, **kw))

    def open(self, resp: requests.Response) -> dict:
        """The echo's report inside an encrypted 200 answer."""
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])
        assert resp.headers.get("content-encoding") == "aes128gcm", resp.headers
        plain, hdr = ece.decrypt(resp.content, self.key)
        assert hdr.key_id == self.kid.encode()
        return json.loads(plain)


@pytest.fixture()
def before(stack) -> int:
    return echo_stats()


def refused(resp: requests.Response, status: int, code: str, before: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert "content-encoding" not in resp.headers, resp.headers
    body = denial(resp)
    assert body["error"] == code, body
    assert resp.headers.get("x-request-id")
    assert echo_stats() == before, "a refused request reached the upstream"
    return body


ORDER = b'{"item_id": "a-1", "quantity": 2, "extra": "stripped"}'


def test_an_encrypted_order_reaches_the_echo_as_plaintext_and_its_answer_comes_back_encrypted(stack):
    c = Client()
    resp = c.post("/api/v1/orders", ORDER)
    seen = c.open(resp)
    # sanitize-body judged (and re-encoded) the plaintext, after e2ee
    assert json.loads(seen["body"]) == {"item_id": "a-1", "quantity": 2}
    assert "content-encoding" not in seen["headers"]
    assert int(seen["headers"]["content-length"]) == len(seen["body"])
    # the echo sends a content-length: corrected to the encrypted length
    assert int(resp.headers["content-length"]) == len(resp.content)


def test_every_response_has_a_fresh_salt(stack):
    c = Client()
    salts = {c.post("/api/v1/orders", ORDER).content[:16] for _ in range(4)}
    assert len(salts) == 4


def test_the_json_rules_judge_the_plaintext(stack, before):
    c = Client()
    resp = c.post("/api/v1/orders", b'{"item_id": "a-1", "quantity": 0}')
    refused(resp, 400, "invalid_body", before)


def test_transfers_require_an_encrypted_body(stack, before):
    c = Client()
    body = b'{"to": "bob", "amount": 10}'
    refused(c.send("POST", "/api/v1/transfers", body, encrypted=False), 400, "encryption_required", before)
    refused(c.send("POST", "/api/v1/transfers", None, encrypted=False), 400, "encryption_required", before)
    gz = c.headers("POST", "/api/v1/transfers", body, encrypted=False) | {"Content-Encoding": "gzip"}
    refused(requests.post(APP + "/api/v1/transfers", headers=gz, data=body, timeout=TIMEOUT), 400,
            "encryption_required", before)
    seen = c.open(c.post("/api/v1/transfers", body))
    assert json.loads(seen["body"]) == {"to": "bob", "amount": 10}


def test_other_routes_take_plaintext_too(stack):
    c = Client()
    resp = c.send("POST", "/api/v1/orders", b'{"item_id":"p","quantity":1}', encrypted=False)
    assert resp.status_code == 200 and "content-encoding" not in resp.headers
    assert json.loads(resp.json()["body"]) == {"item_id": "p", "quantity": 1}


@pytest.mark.parametrize("rs", [18, 19, 64, 1000])
def test_multi_record_bodies_decrypt(stack, rs):
    c = Client()
    plain = json.dumps({"to": "bob", "memo": "x" * 300}).encode()
    seen = c.open(c.post("/api/v1/transfers", plain, rs=rs))
    assert seen["body"].encode() == plain


def test_a_chunked_upload_split_across_record_boundaries(stack):
    c = Client()
    plain = json.dumps({"to": "carol", "memo": "y" * 2000}).encode()
    body = c.encrypt(plain, rs=100)
    headers = c.headers("POST", "/api/v1/transfers", body)
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=TIMEOUT)
    conn.putrequest("POST", "/api/v1/transfers", skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    # chunks of 37, 101, 150 ... bytes: none aligned with a 100-byte record
    sizes, i, n = [37, 101, 150, 7, 333], 0, 0
    while i < len(body):
        size = sizes[n % len(sizes)]
        part = body[i:i + size]
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        i, n = i + size, n + 1
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    raw = resp.read()
    assert resp.status == 200, raw[:300]
    plain_resp, _ = ece.decrypt(raw, c.key)
    assert json.loads(plain_resp)["body"].encode() == plain
    conn.close()


def h2_status(headers: dict[str, str], body: bytes, port: int = LISTENERS["app"]) -> int:
    """An HTTP/2 POST ending with trailers (nghttp, like helpers.h2_request,
    whose text decoding an encrypted answer would break): the status."""
    import shutil
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        cmd = [shutil.which("nghttp") or "nghttp", "-v", "-H", ":method: POST", "-d", f.name,
               "--trailer=x-checksum: 1"]
        for name, value in headers.items():
            cmd += ["-H", f"{name.lower()}: {value}"]
        cmd.append(f"http://127.0.0.1:{port}/api/v1/transfers")
        out = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=False).stdout
    m = re.search(rb"recv \(stream_id=\d+\) :status: (\d+)", out)
    assert m, out[-2000:]
    return int(m.group(1))


def test_an_http2_encrypted_body_ending_with_trailers_is_decrypted_at_the_trailers(stack, before):
    c = Client()
    body = c.encrypt(b'{"to":"bob","amount":7}', rs=30)
    headers = c.headers("POST", "/api/v1/transfers", body)
    del headers["Connection"]
    assert h2_status(headers, body) == 200
    before = echo_stats()
    other = Client()
    wrong = other.encrypt(b'{"to":"bob"}')
    headers = c.headers("POST", "/api/v1/transfers", wrong)
    del headers["Connection"]
    status, doc = h2_request(LISTENERS["app"], "POST", "/api/v1/transfers", headers, wrong, trailers={"x-checksum": "1"})
    assert status == 401 and doc["error"] == "key_mismatch", doc
    assert echo_stats() == before


def test_a_large_response_streams_back_in_records(stack):
    # 60 KB of plaintext into the echo, which reflects it: several 4096-byte
    # records back.
    c = Client()
    plain = json.dumps({"to": "dave", "memo": "z" * 60_000}).encode()
    resp = c.post("/api/v1/transfers", plain, rs=16384)
    seen = c.open(resp)
    assert seen["body"].encode() == plain
    assert len(resp.content) > 60_000 + 14 * 17


def resign(c: Client, target: str, body: bytes) -> dict[str, str]:
    """Headers for `body` as it is (a malformed coding still carries a valid
    signature: e2ee, not replay-guard, must refuse it)."""
    return c.headers("POST", target, body)


def send_raw(c: Client, body: bytes, target: str = "/api/v1/transfers") -> requests.Response:
    return requests.post(c.base + target, headers=resign(c, target, body), data=body, timeout=TIMEOUT)


@pytest.mark.parametrize("case", ["short header", "keyid cut", "no record", "short record", "rs 17",
                                  "rs over the limit", "too many records", "delimiter 1 at the end",
                                  "delimiter 3", "no delimiter", "delimiter 2 before the end",
                                  "cut at a record boundary"])
def test_a_malformed_coding_is_400_invalid_encryption(stack, before, case):
    c = Client()
    kid = c.kid.encode()
    salt = secrets.token_bytes(16)
    hdr = ece.header(salt, 64, kid)
    good = c.encrypt(b"x" * 200, rs=64, salt=salt)
    body = {
        "short header": good[:20],
        "keyid cut": good[:21 + len(kid) - 1],
        "no record": hdr,
        "short record": good[:len(hdr) + 16],
        "rs 17": ece.header(salt, 17, kid) + good[len(hdr):],
        "rs over the limit": ece.header(salt, 70_000, kid) + good[len(hdr):],
        "too many records": c.encrypt(b"r" * 1100, rs=18),
        "delimiter 1 at the end": c.encrypt(b"abc", rs=64, salt=salt, delimiters=[1]),
        "delimiter 3": c.encrypt(b"abc", rs=64, salt=salt, delimiters=[3]),
        "no delimiter": c.encrypt(b"abc", rs=64, salt=salt, delimiters=[0]),
        "delimiter 2 before the end": c.encrypt(b"a" * 47 + b"b", rs=64, salt=salt, delimiters=[2, 2]),
        "cut at a record boundary": good[:len(hdr) + 64 * 2],
    }[case]
    refused(send_raw(c, body), 400, "invalid_encryption", before)


def test_a_body_for_another_key_id_is_401(stack, before):
    c, other = Client(), Client()
    body = other.encrypt(b'{"to":"eve"}')
    refused(send_raw(c, body), 401, "key_mismatch", before)
    # the right key id in the header, the bytes under another key
    body = c.encrypt(b'{"to":"eve"}', key=other.key)
    refused(send_raw(c, body), 401, "decryption_failed", before)
    # a flipped byte inside the record (signature and digest over the flipped bytes)
    good = bytearray(c.encrypt(b'{"to":"eve"}'))
    good[-5] ^= 0x40
    refused(send_raw(c, bytes(good)), 401, "decryption_failed", before)
    # truncated inside the last record: it no longer authenticates
    refused(send_raw(c, c.encrypt(b'{"to":"eve","memo":"long enough"}')[:-3]), 401, "decryption_failed", before)


def test_a_tampered_body_is_refused_by_replay_guard_first(stack, before):
    c = Client()
    body = c.encrypt(b'{"to":"eve"}')
    headers = c.headers("POST", "/api/v1/transfers", body)
    tampered = bytearray(body)
    tampered[-1] ^= 1
    resp = requests.post(APP + "/api/v1/transfers", headers=headers, data=bytes(tampered), timeout=TIMEOUT)
    refused(resp, 401, "digest_invalid", before)


def test_an_encrypted_body_too_large_is_413(stack, before):
    c = Client()
    body = c.encrypt(b"q" * 70_000, rs=65536)
    resp = send_raw(c, body)
    refused(resp, 413, "body_too_large", before)


def test_a_captured_encrypted_request_cannot_be_replayed(stack, before):
    c = Client()
    body = c.encrypt(b'{"to":"bob","amount":1}')
    headers = c.headers("POST", "/api/v1/transfers", body)
    first = requests.post(APP + "/api/v1/transfers", headers=headers, data=body, timeout=TIMEOUT)
    assert first.status_code == 200
    before = echo_stats()
    refused(requests.post(APP + "/api/v1/transfers", headers=headers, data=body, timeout=TIMEOUT),
            401, "replay", before)

    def report():
        reports = requests.get(FDS + "/v1/reports", timeout=TIMEOUT).json()["reports"]
        return [r for r in reports if r.get("device") == c.signer.device and r.get("kind") == "replay"]

    found = wait_until(report, timeout=5, message="a replay report at the FDS service")
    assert found[0]["user"] == c.signer.user and found[0]["verified"] is True


def test_the_passport_of_an_encrypted_request_is_the_keys_user_and_device(stack):
    c = Client(user=f"e2ee-user-{secrets.token_hex(3)}")
    plain_seen = c.send("GET", "/api/v1/users/42?size=5", None, encrypted=False).json()
    seen = c.open(c.post("/api/v1/transfers", b'{"to":"bob"}'))

    def claims(doc: dict) -> dict:
        token = doc["headers"]["x-passport"]
        key = PASSPORT_JWKS[jwt.get_unverified_header(token)["kid"]]
        return jwt.decode(token, key=key, algorithms=["ES256"])

    a, b = claims(plain_seen), claims(seen)
    assert (b["sub"], b["device_id"]) == (a["sub"], a["device_id"]) == (c.signer.user, c.signer.device)


def test_fds_block_refuses_an_encrypted_request_by_its_device_and_the_denial_stays_plain(stack):
    feed = service_url("fds", "/v1/blocklist")
    c = Client()
    entry = {"type": "device", "value": c.signer.device, "expires_at": None, "reason": "e2ee test"}
    assert requests.post(feed, json=entry, timeout=TIMEOUT).status_code == 201
    try:
        def blocked():
            r = c.post("/api/v1/transfers", b'{"to":"bob"}')
            # (a list: a 4xx Response is falsy)
            return [r] if r.status_code == 403 else None

        [resp] = wait_until(blocked, timeout=6, message="the device block to apply")
        assert "content-encoding" not in resp.headers
        assert denial(resp)["error"] == "blocked"
    finally:
        requests.delete(feed, timeout=TIMEOUT)


def test_an_upstream_error_response_is_encrypted_too(stack):
    c = Client()
    resp = c.post("/api/v1/unstable/e2ee?status=500", b'{"x":1}')
    assert resp.status_code == 500
    assert resp.headers.get("content-encoding") == "aes128gcm"
    assert json.loads(ece.decrypt(resp.content, c.key)[0])["path"] == "/api/v1/unstable/e2ee"


def stat(name: str) -> int:
    """Every sample of counter `name` in /stats/prometheus, summed (labels
    are tags in the wasm builds, Envoy labels natively: the same samples)."""
    text = requests.get(admin_url("/stats/prometheus"), timeout=TIMEOUT).text
    total = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if re.search(rf"(^|_){re.escape(name)}$", key.partition("{")[0]) and value.isdigit():
            total += int(value)
    return total


def settled(names: tuple[str, ...]) -> tuple[int, ...]:
    """The counters once they stop moving: natively a request's counts reach
    Envoy a main-thread turn after it was answered (docs/native.md), so an
    earlier test's last counts may still be on their way."""
    last: list[tuple[int, ...]] = []

    def still():
        last.append(tuple(stat(n) for n in names))
        return len(last) >= 3 and last[-1] == last[-2] == last[-3] and last[-1]

    return wait_until(still, timeout=5, interval=0.05, message="the e2ee counters to settle")


def test_metrics_count_decryptions_refusals_and_bytes(stack):
    c = Client()
    d0, b0, r0 = settled(("e2ee_decrypted_total", "e2ee_decrypted_bytes_total", "e2ee_responses_encrypted_total"))
    c.open(c.post("/api/v1/transfers", b'{"to":"bob","amount":3}'))
    n0 = stat("e2ee_denied_total")
    c.send("POST", "/api/v1/transfers", b"{}", encrypted=False)
    wait_until(lambda: stat("e2ee_denied_total") > n0, timeout=5, message="the denial counted")
    wait_until(lambda: stat("e2ee_responses_encrypted_total") > r0, timeout=5, message="the answer counted")
    assert stat("e2ee_decrypted_total") == d0 + 1
    assert stat("e2ee_decrypted_bytes_total") == b0 + len(b'{"to":"bob","amount":3}')
    assert stat("e2ee_responses_encrypted_total") == r0 + 1


def test_the_readme_walkthrough_with_gatewayctl(stack, tmp_path):
    """key-id, encrypt, sign --key-id, decrypt: the CLI the README uses
    against the real gateway."""
    import subprocess

    from helpers import REPO

    g = str(REPO / "target" / "release" / "gatewayctl")

    def ctl(*args: str, data: bytes | None = None) -> bytes:
        return subprocess.run([g, *args], input=data, capture_output=True, check=True, timeout=TIMEOUT).stdout

    kid = ctl("key-id", "--device", f"cli-{secrets.token_hex(3)}").decode().strip()
    body = ctl("encrypt", "--key-id", kid, data=b'{"item_id":"a1","quantity":2,"note":"stripped"}')
    (tmp_path / "order.bin").write_bytes(body)
    sig = ctl("sign", "POST", APP + "/api/v1/orders", "--key-id", kid, "--body-file", str(tmp_path / "order.bin"))
    headers = dict(line.split(": ", 1) for line in sig.decode().splitlines())
    headers |= {"content-type": "application/json", "content-encoding": "aes128gcm"}
    resp = requests.post(APP + "/api/v1/orders", headers=headers, data=body, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.headers["content-encoding"] == "aes128gcm"
    seen = json.loads(ctl("decrypt", "--key-id", kid, data=resp.content))
    assert json.loads(seen["body"]) == {"item_id": "a1", "quantity": 2}


def test_an_encrypted_request_decrypted_on_one_replica_is_a_replay_on_the_other(stack):
    # The replicas accept the same Host (contract): the request signed for
    # 127.0.0.1:10001 is valid on 10101 once, and e2ee there decrypts it.
    c = Client()
    body = c.encrypt(b'{"to":"bob","amount":4}')
    headers = c.headers("POST", "/api/v1/transfers", body)
    headers["Host"] = AUTHORITY
    first = requests.post("http://127.0.0.1:10101/api/v1/transfers", headers=headers, data=body, timeout=TIMEOUT)
    assert json.loads(c.open(first)["body"]) == {"to": "bob", "amount": 4}
    before = echo_stats()
    refused(requests.post(APP + "/api/v1/transfers", headers=headers, data=body, timeout=TIMEOUT),
            401, "replay", before)


def test_the_running_app_gateway_has_e2ee_in_its_filters(stack):
    """What the running Envoy serves on 10001 (its config dump): under the
    chain build ONE wasm filter, chain_response.wasm (the module that
    exports e2ee's response steps) running the whole gateway, sanitize-body
    a named instance of sanitize; natively e2ee's DynamicModuleFilter block
    (native-chain: the native chain block running the whole gateway);
    under the others, e2ee's own filter."""
    running = running_http_filters("app")
    if wasm_build() == "native-chain":
        # ONE native filter, the chain, running the whole gateway.
        native = [f for f in running if f["typed_config"].get("@type", "").endswith("DynamicModuleFilter")]
        assert [f["typed_config"]["filter_name"] for f in native] == ["chain"]
        parts = json.loads(json.loads(native[0]["typed_config"]["filter_config"]["value"])["config"])["filters"]
        assert [p.get("instance", p["name"]) for p in parts] == [
            "sanitize", "replay-guard", "e2ee", "sanitize-body", "fds-block", "passport", "route-breaker"]
        assert not [f for f in running if f["typed_config"].get("@type", "").endswith("wasm.v3.Wasm")]
        return
    if wasm_build() == "native":
        native = [f["typed_config"]["filter_name"] for f in running
                  if f["typed_config"].get("@type", "").endswith("DynamicModuleFilter")]
        assert native == ["sanitize", "replay_guard", "e2ee", "sanitize", "fds_block", "passport", "route_breaker"]
        return
    wasm = [f for f in running if f["typed_config"].get("@type", "").endswith("wasm.v3.Wasm")]
    if wasm_build() != "chain":
        assert "e2ee" in [f["name"] for f in wasm]
        return
    assert [f["name"] for f in wasm] == ["chain"], "the app gateway runs exactly one wasm filter"
    conf = wasm[0]["typed_config"]["config"]
    assert conf["vm_config"]["vm_id"] == "chain_response"
    parts = json.loads(conf["configuration"]["value"])["filters"]
    assert [p.get("instance", p["name"]) for p in parts] == [
        "sanitize", "replay-guard", "e2ee", "sanitize-body", "fds-block", "passport", "route-breaker"]
