"""replay-guard on the app gateway (10001), against the real Envoy.

Requests are signed by tests/integration/signing.py, an implementation that
shares no code with the filter. Every refusal is checked to be a 401 JSON
denial that never reached the echo upstream, not even its headers.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import time

import pytest
import requests

from helpers import APP, FDS, LISTENERS, TIMEOUT, denial, echo_stats, h2_request, seen, wait_until
from signing import Signer

AUTHORITY = "127.0.0.1:10001"


def fresh_signer(**kw) -> Signer:
    """A signer with a device id of its own, so its reports can be found."""
    return Signer.demo(device=f"dev-{secrets.token_hex(4)}", **kw)


def send(method: str, target: str, headers: dict[str, str], body: bytes | None = None) -> requests.Response:
    """One request on a fresh connection (no session), headers as given."""
    h = {"Connection": "close", **headers}
    if body is not None:
        h.setdefault("Content-Type", "application/json")
    return requests.request(method, APP + target, headers=h, data=body, timeout=TIMEOUT)


def refused(resp: requests.Response, code: str, before: int) -> dict:
    """A 401 denial with `code`, and the upstream saw nothing."""
    assert resp.status_code == 401, (resp.status_code, resp.text)
    body = denial(resp)
    assert body["error"] == code, body
    assert resp.headers.get("x-request-id"), resp.headers
    assert echo_stats() == before, "a refused request reached the upstream"
    return body


@pytest.fixture()
def before(stack) -> int:
    return echo_stats()


def test_a_signed_request_with_a_method_the_route_does_not_take_is_405(stack, before):
    # A valid signature does not let PATCH /api/v1/orders skip the POST body
    # rule: the shared web/app routes answer other methods with 405.
    s = fresh_signer()
    body = b'{"item_id":"a-1","quantity":1000,"evil":1}'
    r = send("PATCH", "/api/v1/orders", s.sign("PATCH", AUTHORITY, "/api/v1/orders", body), body)
    assert r.status_code == 405, (r.status_code, r.text)
    assert r.headers["allow"] == "POST"
    assert denial(r)["error"] == "method_not_allowed"
    assert echo_stats() == before


def test_signed_get_and_post_pass(stack):
    s = fresh_signer()
    r = send("GET", "/api/v1/users/7?size=10", s.sign("GET", AUTHORITY, "/api/v1/users/7?size=10"))
    assert seen(r)["path"] == "/api/v1/users/7"
    body = b'{"item_id":"a-1","quantity":2}'
    r = send("POST", "/api/v1/orders", s.sign("POST", AUTHORITY, "/api/v1/orders", body), body)
    assert json.loads(seen(r)["body"]) == {"item_id": "a-1", "quantity": 2}


def test_what_sanitize_rewrites_is_verified_as_the_client_sent_it(stack):
    s = fresh_signer()
    # no size: sanitize adds size=20 after the client signed
    r = send("GET", "/api/v1/users/7", s.sign("GET", AUTHORITY, "/api/v1/users/7"))
    assert "size=20" in seen(r)["query"]
    # spaces and an unknown field: sanitize re-encodes and strips
    body = b'{"item_id": "a-1", "quantity": 2, "extra": true}'
    r = send("POST", "/api/v1/orders", s.sign("POST", AUTHORITY, "/api/v1/orders", body), body)
    assert json.loads(seen(r)["body"]) == {"item_id": "a-1", "quantity": 2}


def test_health_is_open(stack):
    assert requests.get(APP + "/health", timeout=TIMEOUT).status_code == 200
    # Like the web gateway's: Envoy answers it, whatever the method.
    for method in ("HEAD", "POST"):
        assert requests.request(method, APP + "/health", timeout=TIMEOUT).status_code == 200, method


def test_unsigned_api_request_is_refused(stack, before):
    refused(send("GET", "/api/v1/users/7?size=10", {}), "signature_missing", before)


def test_replay_on_fresh_connections_is_refused_and_reported(stack, before):
    s = fresh_signer()
    headers = s.sign("GET", AUTHORITY, "/api/v1/users/7?size=10")
    assert send("GET", "/api/v1/users/7?size=10", headers).status_code == 200
    before = echo_stats()
    # several fresh connections: Envoy's two workers share the nonce store
    for _ in range(4):
        refused(send("GET", "/api/v1/users/7?size=10", headers), "replay", before)

    def report():
        reports = requests.get(FDS + "/v1/reports", timeout=TIMEOUT).json()["reports"]
        return [r for r in reports if r.get("device") == s.device and r.get("kind") == "replay"]

    found = wait_until(report, timeout=5, message="a replay report at the FDS service")
    assert found[0]["source"] == "replay-guard"
    assert found[0]["path"] == "/api/v1/users/7"


@pytest.mark.parametrize("offset", [-600, 600])
def test_created_ten_minutes_off_is_refused(stack, before, offset):
    s = fresh_signer()
    headers = s.sign("GET", AUTHORITY, "/api/v1/users/7", created=int(time.time()) + offset)
    refused(send("GET", "/api/v1/users/7", headers), "signature_stale", before)


@pytest.mark.parametrize(
    "signed, sent",
    [
        (("GET", "/api/v1/users/7?size=10"), ("GET", "/api/v1/users/8?size=10")),
        (("GET", "/api/v1/users/7?size=10"), ("DELETE", "/api/v1/users/7?size=10")),
        (("GET", "/api/v1/users/7?size=10"), ("GET", "/api/v1/users/7?size=11")),
    ],
    ids=["path", "method", "query"],
)
def test_altered_after_signing_is_refused(stack, before, signed, sent):
    headers = fresh_signer().sign(signed[0], AUTHORITY, signed[1])
    refused(send(sent[0], sent[1], headers), "signature_invalid", before)


def test_altered_body_is_refused_before_the_upstream_sees_headers(stack, before):
    body = b'{"item_id":"a-1","quantity":2}'
    headers = fresh_signer().sign("POST", AUTHORITY, "/api/v1/orders", body)
    refused(send("POST", "/api/v1/orders", headers, b'{"item_id":"a-1","quantity":9}'), "digest_invalid", before)


def test_digest_present_but_not_covered_is_refused(stack, before):
    body = b'{"item_id":"a-1","quantity":2}'
    s = fresh_signer()
    headers = s.sign("POST", AUTHORITY, "/api/v1/orders", body, components=["@method", "@authority", "@path"])
    assert "Content-Digest" in headers
    refused(send("POST", "/api/v1/orders", headers, body), "digest_missing", before)
    # and a body with no digest at all
    headers = s.sign("POST", AUTHORITY, "/api/v1/orders", body, digest=False)
    refused(send("POST", "/api/v1/orders", headers, body), "digest_missing", before)


def send_chunked(target: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked (no content-length), on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", LISTENERS["app"], timeout=TIMEOUT)
    try:
        conn.request("POST", target, body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_an_empty_chunked_body_is_no_body_and_a_real_one_needs_its_digest(stack, before):
    s = fresh_signer()
    target = "/api/v1/public/chunked"
    # empty chunked body, no digest: like content-length: 0, it passes
    status, doc = send_chunked(target, s.sign("POST", AUTHORITY, target, digest=False), [])
    assert status == 200, doc
    assert doc["body"] == ""
    # a chunked body without a digest: refused, and the upstream saw nothing
    now = echo_stats()
    status, doc = send_chunked(target, s.sign("POST", AUTHORITY, target, digest=False), [b'{"a":', b"1}"])
    assert status == 401, doc
    assert doc["error"] == "digest_missing"
    assert echo_stats() == now
    # with its digest covered, the same chunked body passes
    body = b'{"a":1}'
    status, doc = send_chunked(target, s.sign("POST", AUTHORITY, target, body), [body[:3], body[3:]])
    assert status == 200, doc


def test_expired_key_id_is_refused(stack, before):
    s = fresh_signer()
    headers = s.sign("GET", AUTHORITY, "/api/v1/users/7", key_id=s.key_id(expiry=int(time.time()) - 1))
    refused(send("GET", "/api/v1/users/7", headers), "key_expired", before)


def test_a_key_id_with_a_far_expiry_is_honoured(stack):
    # The contract refuses only a key whose expiry has passed; the shipped
    # config sets no max_key_lifetime (only the master secret mints key ids).
    s = fresh_signer()
    headers = s.sign("GET", AUTHORITY, "/api/v1/users/7", key_id=s.key_id(expiry=9_999_999_999))
    resp = send("GET", "/api/v1/users/7", headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["path"] == "/api/v1/users/7"


def test_wrong_master_secret_is_refused(stack, before):
    s = Signer(master=base64.b64decode(base64.b64encode(b"\x07" * 32)), device="dev-wrong-master")
    refused(send("GET", "/api/v1/users/7", s.sign("GET", AUTHORITY, "/api/v1/users/7")), "signature_invalid", before)


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda h: h.pop("Signature"), "signature_missing"),
        (lambda h: h.pop("Signature-Input"), "signature_missing"),
        (lambda h: h.__setitem__("Signature", "app=not-a-byte-sequence"), "signature_malformed"),
        (lambda h: h.__setitem__("Signature-Input", 'app=("@method"'), "signature_malformed"),
        (lambda h: h.__setitem__("Signature-Input", h["Signature-Input"].split(";nonce=")[0]), "signature_malformed"),
    ],
    ids=["no-signature", "no-input", "bad-signature", "bad-input", "no-nonce"],
)
def test_missing_or_malformed_signature_headers_are_refused(stack, before, mutate, code):
    headers = fresh_signer().sign("GET", AUTHORITY, "/api/v1/users/7")
    mutate(headers)
    refused(send("GET", "/api/v1/users/7", headers), code, before)


def test_an_http2_body_ending_with_trailers_is_digested_whole(stack):
    body = b'{"item_id":"a1","quantity":2}'
    s = fresh_signer()
    headers = {"content-type": "application/json", **s.sign("POST", AUTHORITY, "/api/v1/orders", body)}
    status, doc = h2_request(LISTENERS["app"], "POST", "/api/v1/orders", headers, body, trailers={"x-checksum": "1"})
    assert status == 200, doc
    assert json.loads(doc["body"]) == json.loads(body)
    # the same signature over another body: the digest catches it at the trailers
    before = echo_stats()
    headers = {"content-type": "application/json", **s.sign("POST", AUTHORITY, "/api/v1/orders", body)}
    status, doc = h2_request(LISTENERS["app"], "POST", "/api/v1/orders", headers,
                             b'{"item_id":"a1","quantity":9}', trailers={"x-checksum": "1"})
    assert status == 401 and doc["error"] == "digest_invalid", doc
    assert echo_stats() == before


def test_a_flood_by_one_device_does_not_hide_another_devices_replay(stack):
    """Found by a probe: ~15 invalid signatures and replays in a few seconds
    emptied a worker's report bucket (burst 10) and a replay by another
    device never reached the FDS service. Events are now coalesced per
    suspect and sent at the rate limit, longest waiting first
    (docs/filters/replay-guard.md, "Reports")."""
    flooder, other = fresh_signer(), fresh_signer()
    # Invalid signatures are charged to the client address (their key id is
    # unverified): a test-only address behind the trusted hop finds them.
    addr = f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
    xff = {"x-forwarded-for": addr}
    target = "/api/v1/users/7?size=10"
    # One keep-alive connection, so every event lands on one Envoy worker
    # (one report queue): the case the probe found.
    with requests.Session() as s:
        def call(headers: dict[str, str], path: str = target) -> requests.Response:
            return s.get(APP + path, headers={**xff, **headers}, timeout=TIMEOUT)

        used = flooder.sign("GET", AUTHORITY, target)
        assert call(used).status_code == 200
        started = time.monotonic()
        for _ in range(10):
            bad = flooder.sign("GET", AUTHORITY, target)
            r = call(bad, "/api/v1/users/8?size=10")  # signed for /users/7
            assert r.status_code == 401 and denial(r)["error"] == "signature_invalid", r.text
            r = call(used)
            assert r.status_code == 401 and denial(r)["error"] == "replay", r.text
        flood_seconds = time.monotonic() - started
        victim = other.sign("GET", AUTHORITY, target)
        assert call(victim).status_code == 200
        r = call(victim)
        assert r.status_code == 401 and denial(r)["error"] == "replay", r.text
        replayed_at = time.monotonic()

    def reports() -> list[dict]:
        return requests.get(FDS + "/v1/reports", timeout=TIMEOUT).json()["reports"]

    def others() -> list[dict]:
        return [r for r in reports() if r.get("device") == other.device and r.get("kind") == "replay"]

    found = wait_until(others, timeout=5, interval=0.05, message="the other device's replay report")
    latency = time.monotonic() - replayed_at
    assert latency < 3, f"the other device's report took {latency:.1f}s"
    assert len(found) == 1 and found[0]["count"] == 1, found
    assert found[0]["verified"] is True and found[0]["user"] == other.user

    # The flooder's 10 replays and its address's 10 invalid signatures all
    # arrive, coalesced: fewer reports than events, the counts add up.
    def flood() -> tuple[list[dict], list[dict]] | None:
        all_reports = reports()
        replays = [r for r in all_reports if r.get("device") == flooder.device and r.get("kind") == "replay"]
        invalid = [r for r in all_reports
                   if r.get("kind") == "invalid_signature" and (r.get("client") or "").rsplit(":", 1)[0] == addr]
        done = sum(r["count"] for r in replays) >= 10 and sum(r["count"] for r in invalid) >= 10
        return (replays, invalid) if done else None

    replays, invalid = wait_until(flood, timeout=10, message="every flood event counted at the FDS service")
    assert sum(r["count"] for r in replays) == 10, replays
    assert sum(r["count"] for r in invalid) == 10, invalid
    for r in replays + invalid:
        assert r["source"] == "replay-guard" and r["count"] >= 1, r
        assert r["at"] == r["first_at"] <= r["last_at"], r
        assert r["path"] in ("/api/v1/users/7", "/api/v1/users/8"), r
    assert all(r["verified"] is False and r["device"] is None for r in invalid), invalid
    # The unverified suspect's sample is the key id it claimed.
    assert all(r["keyid"].startswith(flooder.device + ":") for r in invalid), invalid
    # At one report per suspect per 200 ms tick, a flood shorter than nine
    # ticks cannot yield one report per event.
    if flood_seconds < 1.8:
        assert len(replays) < 10 and len(invalid) < 10, (flood_seconds, replays, invalid)
