"""e2ee on the NATIVE module (WASM_BUILD=native), against the real Envoy.

The shipped app gateway keeps its wasm modules under the native build
(fds-block and passport need root ticks the native host lacks), so these
tests use the test stack's cut app gateway (tests/integration/native_app.py,
127.0.0.1:10060): sanitize -> replay-guard (reports off) -> e2ee ->
sanitize-body -> route-breaker, every one a DynamicModuleFilter of
libgateway_native.so, the master secret in Envoy's process environment
(render.to_native_env, envoy/stack.py). They prove on the native host's
body callbacks what test_e2ee.py proves on wasm: request decryption (whole,
multi-record, chunked across record boundaries, HTTP/2 with trailers), the
streamed re-encryption of the answer (one record at a time, Content-Length
corrected), every refusal before the upstream, and e2ee's AES-GCM being
ring's (`native-aead`). Skipped on the wasm builds.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time

import pytest
import requests

import ece
from helpers import (KEYS, TIMEOUT, admin_url, echo_stats, h2_request, native_build, running_http_filters, wait_until,
                     wasm_build)
from native_app import APP_NATIVE, APP_NATIVE_PORT
from test_e2ee import ORDER, Client, h2_status, refused, send_raw

pytestmark = pytest.mark.skipif(not native_build(), reason="the native builds' listener (WASM_BUILD=native, native-chain)")

PORT = APP_NATIVE_PORT


def client(**kw) -> Client:
    return Client(port=PORT, **kw)


@pytest.fixture()
def before(stack) -> int:
    return echo_stats()


def test_the_cut_app_gateway_runs_every_filter_natively(stack):
    """What Envoy serves on 10060: the five filters as DynamicModuleFilter
    blocks of the gateway_native module, no wasm filter left (native-chain:
    ONE DynamicModuleFilter, the chain, running the five in that order)."""
    filters = running_http_filters(APP_NATIVE)
    names = [f["name"] for f in filters]
    if wasm_build() == "native-chain":
        assert names == ["chain", "envoy.filters.http.router"], names
        tc = filters[0]["typed_config"]
        assert tc["filter_name"] == "chain"
        parts = json.loads(json.loads(tc["filter_config"]["value"])["config"])["filters"]
        assert [p.get("instance", p["name"]) for p in parts] == [
            "sanitize", "replay-guard", "e2ee", "sanitize-body", "route-breaker"]
    else:
        assert names == ["sanitize", "replay-guard", "e2ee", "sanitize-body", "route-breaker",
                         "envoy.filters.http.router"], names
    for f in filters[:-1]:
        tc = f["typed_config"]
        assert tc["@type"].endswith("dynamic_modules.v3.DynamicModuleFilter"), (f["name"], tc["@type"])
        assert tc["dynamic_module_config"]["name"] == "gateway_native"
    # The master secret is not in the native config: it is in Envoy's environment.
    secret = (KEYS / "app-master.key").read_text().strip()
    assert secret not in json.dumps(filters)


def test_an_encrypted_order_is_decrypted_and_its_answer_encrypted_natively(stack):
    c = client()
    resp = c.post("/api/v1/orders", ORDER)
    seen = c.open(resp)
    assert json.loads(seen["body"]) == {"item_id": "a-1", "quantity": 2}
    assert "content-encoding" not in seen["headers"]
    assert int(seen["headers"]["content-length"]) == len(seen["body"])
    assert int(resp.headers["content-length"]) == len(resp.content)
    # a fresh salt per answer
    salts = {c.post("/api/v1/orders", ORDER).content[:16] for _ in range(3)}
    assert len(salts) == 3


def test_plaintext_json_rules_and_required_encryption(stack, before):
    c = client()
    refused(c.post("/api/v1/orders", b'{"item_id": "a-1", "quantity": 0}'), 400, "invalid_body", before)
    refused(c.send("POST", "/api/v1/transfers", b'{"to":"bob"}', encrypted=False), 400, "encryption_required", before)
    resp = c.send("POST", "/api/v1/orders", b'{"item_id":"p","quantity":1}', encrypted=False)
    assert resp.status_code == 200 and "content-encoding" not in resp.headers
    assert json.loads(resp.json()["body"]) == {"item_id": "p", "quantity": 1}


@pytest.mark.parametrize("rs", [18, 19, 64, 1000])
def test_multi_record_bodies_decrypt_natively(stack, rs):
    c = client()
    plain = json.dumps({"to": "bob", "memo": "x" * 300}).encode()
    assert c.open(c.post("/api/v1/transfers", plain, rs=rs))["body"].encode() == plain


def test_a_chunked_upload_split_across_record_boundaries_natively(stack):
    c = client()
    plain = json.dumps({"to": "carol", "memo": "y" * 2000}).encode()
    body = c.encrypt(plain, rs=100)
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=TIMEOUT)
    conn.putrequest("POST", "/api/v1/transfers", skip_accept_encoding=True)
    for k, v in c.headers("POST", "/api/v1/transfers", body).items():
        conn.putheader(k, v)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    sizes, i, n = [37, 101, 150, 7, 333], 0, 0
    while i < len(body):
        part = body[i:i + sizes[n % len(sizes)]]
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        i, n = i + len(part), n + 1
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == 200, raw[:300]
    assert json.loads(ece.decrypt(raw, c.key)[0])["body"].encode() == plain


def test_an_http2_body_ending_with_trailers_natively(stack, before):
    c = client()
    body = c.encrypt(b'{"to":"bob","amount":7}', rs=30)
    headers = c.headers("POST", "/api/v1/transfers", body)
    del headers["Connection"]
    assert h2_status(headers, body, port=PORT) == 200
    before = echo_stats()
    wrong = client().encrypt(b'{"to":"bob"}')
    headers = c.headers("POST", "/api/v1/transfers", wrong)
    del headers["Connection"]
    status, doc = h2_request(PORT, "POST", "/api/v1/transfers", headers, wrong, trailers={"x-checksum": "1"})
    assert status == 401 and doc["error"] == "key_mismatch", doc
    assert echo_stats() == before


def test_a_large_answer_streams_back_in_records_natively(stack):
    """60 KB reflected by the echo: Envoy hands the native filter the answer
    in several body callbacks; each is replaced by the records it completes
    (4096-byte records: 15 of them), the length corrected."""
    c = client()
    plain = json.dumps({"to": "dave", "memo": "z" * 60_000}).encode()
    resp = c.post("/api/v1/transfers", plain, rs=16384)
    seen = c.open(resp)
    assert seen["body"].encode() == plain
    answer, hdr = ece.decrypt(resp.content, c.key)
    assert hdr.rs == 4096
    records = -(-(len(resp.content) - 21 - len(hdr.key_id)) // 4096)
    assert records >= 15, records
    assert int(resp.headers.get("content-length", len(resp.content))) == len(resp.content)


@pytest.mark.parametrize("case", ["short header", "rs 17", "too many records", "delimiter 3",
                                  "cut at a record boundary"])
def test_a_malformed_coding_is_400_natively(stack, before, case):
    c = client()
    kid = c.kid.encode()
    salt = secrets.token_bytes(16)
    hdr = ece.header(salt, 64, kid)
    good = c.encrypt(b"x" * 200, rs=64, salt=salt)
    body = {
        "short header": good[:20],
        "rs 17": ece.header(salt, 17, kid) + good[len(hdr):],
        "too many records": c.encrypt(b"r" * 1100, rs=18),
        "delimiter 3": c.encrypt(b"abc", rs=64, salt=salt, delimiters=[3]),
        "cut at a record boundary": good[:len(hdr) + 64 * 2],
    }[case]
    refused(send_raw(c, body), 400, "invalid_encryption", before)


def test_another_key_a_flipped_byte_a_tampered_body_and_a_replay_are_refused_natively(stack, before):
    c, other = client(), client()
    refused(send_raw(c, other.encrypt(b'{"to":"eve"}')), 401, "key_mismatch", before)
    refused(send_raw(c, c.encrypt(b'{"to":"eve"}', key=other.key)), 401, "decryption_failed", before)
    flipped = bytearray(c.encrypt(b'{"to":"eve"}'))
    flipped[-5] ^= 0x40
    refused(send_raw(c, bytes(flipped)), 401, "decryption_failed", before)
    # replay-guard (native too) checks the digest over the bytes as sent
    body = c.encrypt(b'{"to":"eve"}')
    headers = c.headers("POST", "/api/v1/transfers", body)
    tampered = bytearray(body)
    tampered[-1] ^= 1
    refused(requests.post(c.base + "/api/v1/transfers", headers=headers, data=bytes(tampered), timeout=TIMEOUT),
            401, "digest_invalid", before)
    # a captured request: once, then a replay
    first = requests.post(c.base + "/api/v1/transfers", headers=headers, data=body, timeout=TIMEOUT)
    assert json.loads(c.open(first)["body"]) == {"to": "eve"}
    before = echo_stats()
    refused(requests.post(c.base + "/api/v1/transfers", headers=headers, data=body, timeout=TIMEOUT),
            401, "replay", before)


def test_an_encrypted_body_too_large_is_413_natively(stack, before):
    c = client()
    refused(send_raw(c, c.encrypt(b"q" * 70_000, rs=65536)), 413, "body_too_large", before)


def test_an_upstream_error_is_encrypted_natively(stack):
    c = client()
    resp = c.post("/api/v1/unstable/e2ee?status=500", b'{"x":1}')
    assert resp.status_code == 500
    assert resp.headers.get("content-encoding") == "aes128gcm"
    assert json.loads(ece.decrypt(resp.content, c.key)[0])["path"] == "/api/v1/unstable/e2ee"


def prom(name: str) -> int:
    """The sum of every series of `name` on /stats/prometheus (the native
    counters flush from the main thread: poll)."""
    text = requests.get(admin_url("/stats/prometheus"), timeout=TIMEOUT).text
    total = 0
    for line in text.splitlines():
        m = re.match(rf"^(?:\w+_)?{re.escape(name)}(?:\{{[^}}]*\}})? (\d+)", line)
        if m:
            total += int(m.group(1))
    return total


def settled(*names: str) -> tuple[int, ...]:
    """The counters once the earlier tests' increments are flushed: two
    reads 50 ms apart that agree (the native host flushes a quiet
    configuration's counters one main-loop turn later, a busy one at most
    every 20 ms)."""
    last = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = tuple(prom(n) for n in names)
        if now == last:
            return now
        last = now
        time.sleep(0.05)
    raise AssertionError(f"{names} still moving after 5 s")


def test_the_native_counters_count_decryptions_bytes_and_answers(stack):
    c = client()
    d0, b0, r0 = settled("e2ee_decrypted_total", "e2ee_decrypted_bytes_total", "e2ee_responses_encrypted_total")
    plain = b'{"to":"bob","amount":3}'
    c.open(c.post("/api/v1/transfers", plain))
    wait_until(lambda: prom("e2ee_responses_encrypted_total") > r0, timeout=5, message="the native counters flushed")
    assert prom("e2ee_decrypted_total") == d0 + 1
    assert prom("e2ee_decrypted_bytes_total") == b0 + len(plain)
    assert prom("e2ee_responses_encrypted_total") == r0 + 1
