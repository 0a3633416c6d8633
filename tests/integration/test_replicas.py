"""Two Envoy replicas, one Redis: the once-only guarantees hold across
replicas (../shared/demo-contract.md, "Shared state across replicas").

Replica 1 serves the contract's ports, replica 2 the same rendered config on
every port + 100 (admin 9902); each has its own gateway-store sidecar (18090,
18091) in front of the one real redis-server (16379). A one-time `jti` and an
app nonce are claimed there once (SET NX PX), so a request accepted by one
replica is a replay on the other, also after a replica restarts; when Redis
cannot answer in time the routes that need it fail closed (503 +
Retry-After) and nothing reaches the echo, while every other route answers.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import pytest
import requests

from helpers import CA, TIMEOUT, denial, echo_stats, mint_token, replica_urls, seen, wait_until
from signing import Signer

WEB = replica_urls("web")
APP = replica_urls("app")
INTERNAL = replica_urls("internal")
STORE = {1: "http://127.0.0.1:18090", 2: "http://127.0.0.1:18091"}
ADMIN = {1: "http://127.0.0.1:9901", 2: "http://127.0.0.1:9902"}
#: The replicas sit behind one load balancer: both take the same Host.
AUTHORITY = "127.0.0.1:10001"
ISS = "https://issuer.demo.local"


def transfer(replica: int, token: str) -> requests.Response:
    return requests.post(WEB[replica] + "/api/v1/transfers", json={"amount": 1},
                         headers={"authorization": f"Bearer {token}", "connection": "close"}, timeout=TIMEOUT)


def one_time_token() -> tuple[str, str]:
    jti = secrets.token_hex(8)
    return mint_token("transfers:write", jti=jti), jti


def signed_get(replica: int, signer: Signer, headers: dict[str, str] | None = None) -> requests.Response:
    h = {"Host": AUTHORITY, "connection": "close",
         **(headers or signer.sign("GET", AUTHORITY, "/api/v1/users/7"))}
    return requests.get(APP[replica] + "/api/v1/users/7", headers=h, timeout=TIMEOUT)


def counter(replica: int, name: str) -> int:
    text = requests.get(f"{ADMIN[replica]}/stats?filter={name}", timeout=TIMEOUT).text
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if name in line)


def store_stats(replica: int) -> dict:
    return requests.get(STORE[replica] + "/stats", timeout=TIMEOUT).json()


def refused(resp: requests.Response, status: int, code: str, before: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = denial(resp)
    assert body["error"] == code, body
    assert echo_stats() == before, "a refused request reached the upstream"
    return body


def unavailable(resp: requests.Response, before: int) -> None:
    refused(resp, 503, "replay_check_unavailable", before)
    assert resp.headers.get("retry-after") == "1", resp.headers


def test_both_replicas_redis_and_the_sidecars_are_up(stack):
    assert stack.redis("PING") == b"+PONG"
    for r in (1, 2):
        assert requests.get(WEB[r] + "/health", timeout=TIMEOUT).status_code == 200
        assert requests.get(INTERNAL[r] + "/health", verify=str(CA), timeout=TIMEOUT).status_code == 200
        assert requests.get(ADMIN[r] + "/ready", timeout=TIMEOUT).text.strip() == "LIVE"
        health = requests.get(STORE[r] + "/healthz", timeout=TIMEOUT)
        assert health.status_code == 200, health.text


@pytest.mark.parametrize("first, second", [(1, 2), (2, 1)], ids=["10000-then-10100", "10100-then-10000"])
def test_a_one_time_token_accepted_on_one_replica_is_refused_on_the_other(stack, first, second):
    token, _ = one_time_token()
    claimed = counter(second, "jwt_store_replayed_total")
    assert seen(transfer(first, token))["path"] == "/api/v1/transfers"
    before = echo_stats()
    body = refused(transfer(second, token), 401, "token_replayed", before)
    assert "already been used" in body["message"]
    # Polled: the native build flushes its counters a main-thread turn later.
    wait_until(lambda: counter(second, "jwt_store_replayed_total") == claimed + 1, timeout=5,
               message="jwt_store_replayed_total +1")
    # the replica that refused it now knows it (its own cache, no round trip)
    local = counter(second, "jwt_store_local_replay_total")
    refused(transfer(second, token), 401, "token_replayed", before)
    wait_until(lambda: counter(second, "jwt_store_local_replay_total") == local + 1, timeout=5,
               message="jwt_store_local_replay_total +1")
    # and the first refuses it as well (it wrote nothing for the first use:
    # Redis answers)
    refused(transfer(first, token), 401, "token_replayed", before)


@pytest.mark.parametrize("first, second", [(1, 2), (2, 1)], ids=["10001-then-10101", "10101-then-10001"])
def test_a_signed_request_accepted_on_one_replica_is_a_replay_on_the_other(stack, first, second):
    s = Signer.demo(device=f"dev-{secrets.token_hex(4)}")
    headers = s.sign("GET", AUTHORITY, "/api/v1/users/7")
    assert seen(signed_get(first, s, headers))["headers"]["host"] == AUTHORITY
    before = echo_stats()
    refused(signed_get(second, s, headers), 401, "replay", before)
    refused(signed_get(first, s, headers), 401, "replay", before)


def test_redis_keeps_only_hashed_namespaced_keys_and_the_sidecar_user_is_narrow(stack):
    token, jti = one_time_token()
    assert transfer(1, token).status_code == 200
    key = "gw:web.jwt:" + hashlib.sha256(f"{ISS}\0{jti}".encode()).hexdigest()
    assert stack.redis("EXISTS", key) == b":1"
    ttl = int(stack.redis("PTTL", key)[1:])
    assert 290_000 < ttl <= 365_000, ttl  # the token's 300 s of life plus the provider's skew
    # the value is the sidecar's claim id, never the token or the jti
    reply = stack.redis("GET", key)
    assert reply.startswith(b"$"), reply
    # the sidecars' Redis user may touch gw:* keys with its few commands only
    for cmd in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "requirepass"), ("GET", "other:key")):
        reply = stack_redis_as_store(stack, *cmd)
        assert reply.startswith(b"-NOPERM"), (cmd, reply)
    # the sidecar serves its operations only
    assert requests.post(STORE[1] + "/v1/claim/evil/" + "0" * 64 + "?ttl_ms=1000", timeout=TIMEOUT).status_code == 404
    assert requests.post(STORE[1] + "/v1/claim/web.jwt/not-a-hash?ttl_ms=1000", timeout=TIMEOUT).status_code == 400
    assert requests.get(STORE[1] + "/v1/command/FLUSHALL", timeout=TIMEOUT).status_code == 404


def stack_redis_as_store(stack, *args: str) -> bytes:
    from stack import STORE_REDIS_USER, redis_command

    return redis_command(*args, password=stack.redis_password, user=STORE_REDIS_USER)


def test_redis_paused_fails_the_claims_closed_and_other_routes_keep_answering(stack):
    token, _ = one_time_token()
    s = Signer.demo(device=f"dev-{secrets.token_hex(4)}")
    signed = s.sign("GET", AUTHORITY, "/api/v1/users/7")
    released = store_stats(1)["late_released"]
    before = echo_stats()
    # CLIENT PAUSE ALL holds every command, CLIENT UNPAUSE included, until
    # it ends: pause long enough for the checks below, then wait it out.
    assert stack.redis("CLIENT", "PAUSE", "3000", "ALL") == b"+OK"
    try:
        started = time.monotonic()
        unavailable(transfer(1, token), before)
        assert time.monotonic() - started < 1.0, "the claim must fail within its timeout"
        unavailable(signed_get(2, s, signed), before)
        # routes that need no claim do not wait on Redis
        users = requests.get(WEB[1] + "/api/v1/users/1", headers={"authorization": f"Bearer {mint_token('users:read')}"},
                             timeout=TIMEOUT)
        assert users.status_code == 200, users.text
        assert requests.get(APP[2] + "/health", timeout=TIMEOUT).status_code == 200
        before = echo_stats()
    finally:
        wait_until(lambda: _pong(stack), timeout=10, message="Redis to answer again")
    # The claim that arrived during the pause executed after it; the sidecar
    # released it again, so the refused request consumed nothing.
    wait_until(lambda: store_stats(1)["late_released"] > released, timeout=10,
               message="the late claim to be released")
    wait_until(lambda: transfer(2, token).status_code == 200, timeout=10, message="claims to work again")
    assert seen(signed_get(1, s, signed))["path"] == "/api/v1/users/7"
    assert echo_stats() > before


def _pong(stack) -> bool:
    try:
        return stack.redis("PING", timeout=5) == b"+PONG"
    except OSError:
        return False


def test_redis_down_then_back_needs_no_envoy_restart_and_remembers_its_claims(stack):
    token, _ = one_time_token()
    assert transfer(1, token).status_code == 200
    stack.stop_redis()
    try:
        before = echo_stats()
        fresh, _ = one_time_token()
        unavailable(transfer(1, fresh), before)
        unavailable(transfer(2, fresh), before)
        s = Signer.demo(device=f"dev-{secrets.token_hex(4)}")
        unavailable(signed_get(1, s), before)
        assert requests.get(WEB[2] + "/health", timeout=TIMEOUT).status_code == 200
        assert requests.get(STORE[1] + "/healthz", timeout=TIMEOUT).status_code == 503
        wait_until(lambda: counter(1, "jwt_store_unavailable_total") >= 1, timeout=5,
                   message="jwt_store_unavailable_total >= 1")
    finally:
        stack.start_redis()
    wait_until(lambda: transfer(2, fresh).status_code == 200, timeout=15, message="claims to work again")
    # what Redis claimed before it stopped is still claimed (append-only file)
    before = echo_stats()
    refused(transfer(2, token), 401, "token_replayed", before)


def test_a_restarted_replica_keeps_refusing_what_redis_remembers(stack):
    token, _ = one_time_token()
    s = Signer.demo(device=f"dev-{secrets.token_hex(4)}")
    signed = s.sign("GET", AUTHORITY, "/api/v1/users/7")
    assert transfer(2, token).status_code == 200
    assert signed_get(2, s, signed).status_code == 200
    stack.restart_envoy(2)
    before = echo_stats()
    # its own memory is gone: Redis answers
    refused(transfer(2, token), 401, "token_replayed", before)
    refused(signed_get(2, s, signed), 401, "replay", before)
    wait_until(lambda: counter(2, "jwt_store_replayed_total") == 1, timeout=5,
               message="jwt_store_replayed_total == 1")


def test_a_replica_whose_sidecar_is_down_fails_closed_while_the_other_serves(stack):
    stack.stop_store(1)
    try:
        token, _ = one_time_token()
        before = echo_stats()
        unavailable(transfer(1, token), before)
        assert transfer(2, token).status_code == 200
    finally:
        stack.start_store(1)
    before = echo_stats()
    refused(transfer(1, token), 401, "token_replayed", before)
