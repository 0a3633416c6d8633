"""`bench_claim_direct` (bench/test only; docs/performance.md "The claim
without Envoy's HTTP client"): an experiment measuring a once-only claim made
over a Redis connection the module owns instead of a callout through Envoy's
HTTP client and the gateway-store sidecar. These tests hold it to what the
measurement needs: on the REAL Envoy and a real `redis-server`, every request
is claimed in Redis (one key each, with its TTL) before it reaches the
upstream, a Redis that does not answer is 503 `replay_check_unavailable`
with nothing forwarded, and a client that gives up while its claim is in
flight leaves Envoy serving (the scheduler's lifetime rule in
filters/native/src/claim.rs).

Needs `make build-native-module` and `redis-server` (`make redis`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_native_jwt_direct as jd  # noqa: E402  (its Envoy/echo helpers)

REDIS = shutil.which(os.environ.get("REDIS_SERVER", "redis-server"))


class EchoServer(ThreadingHTTPServer):
    # The echo answers HTTP/1.0 (a connection per request): room for the
    # concurrent test's connections in the listen backlog (default 5).
    request_queue_size = 128


def redis_cli(port: int, *args: str) -> str:
    """One inline command over a raw socket; the reply's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"*"):  # an array: read until every element is in
            n = int(data.split(b"\r\n", 1)[0][1:])
            while data.count(b"\r\n") < 1 + 2 * max(n, 0):
                data += s.recv(65536)
        return data.decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not jd.MODULE.exists():
        pytest.fail(f"{jd.MODULE} missing: run `make build-native-module`")
    if REDIS is None:
        pytest.fail("redis-server missing: run `make redis`")
    tmp = tmp_path_factory.mktemp("claim")
    rport = jd.free_port()
    redis = subprocess.Popen([REDIS, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = EchoServer(("127.0.0.1", 0), jd.Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    admin, port = jd.free_port(), jd.free_port()
    # a long timeout: the "client gone" test keeps claims waiting on a stopped Redis
    conf = {"redis_url": f"redis://127.0.0.1:{rport}/", "ttl_ms": 60000, "timeout_ms": 3000}
    filt = jd.block("bench_claim_direct", conf)
    filt["name"] = "claim"
    cfg = tmp / "envoy.yaml"
    cfg.write_text(json.dumps(jd.bootstrap(admin, echo.server_address[1], [jd.listener("claim", port, filt)])))
    proc = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis_cli(rport, "PING").startswith("+PONG"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)
        proc, log = jd.start_envoy(cfg, admin)
        yield {"port": port, "redis": rport, "redis_proc": redis, "envoy": proc, "log": log}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        redis.send_signal(signal.SIGCONT)
        redis.terminate()
        redis.wait(timeout=10)
        echo.shutdown()


def claim_keys(rport: int) -> int:
    return int(redis_cli(rport, "DBSIZE").strip().lstrip(":"))


def test_every_request_is_claimed_in_redis_before_it_reaches_the_upstream(stack):
    before_keys, before_hits = claim_keys(stack["redis"]), jd.Echo.hits
    r = jd.get(stack["port"], "/x")
    assert r.status_code == 200, r.text
    assert jd.Echo.hits == before_hits + 1
    assert claim_keys(stack["redis"]) == before_keys + 1
    keys = redis_cli(stack["redis"], "KEYS", "gw:bench.claim:*")
    key = [line for line in keys.split("\r\n") if line.startswith("gw:bench.claim:")][0]
    ttl = int(redis_cli(stack["redis"], "PTTL", key).strip().lstrip(":"))
    assert 0 < ttl <= 60000


def test_concurrent_claims_each_get_their_own_key_and_answer(stack):
    before_keys, before_hits = claim_keys(stack["redis"]), jd.Echo.hits
    with ThreadPoolExecutor(16) as pool:
        resps = list(pool.map(lambda _: jd.get(stack["port"], "/y"), range(200)))
    codes = [r.status_code for r in resps]
    assert codes == [200] * 200, {r.text for r in resps if r.status_code != 200}
    assert jd.Echo.hits == before_hits + 200
    assert claim_keys(stack["redis"]) == before_keys + 200


def test_a_client_gone_while_its_claim_waits_leaves_envoy_serving(stack):
    rp = stack["redis_proc"]
    rp.send_signal(signal.SIGSTOP)  # claims wait in the module's pipeline
    try:
        socks = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", stack["port"]), timeout=2)
            s.sendall(b"GET /gone HTTP/1.1\r\nhost: x\r\n\r\n")
            socks.append(s)
        time.sleep(0.3)  # the requests are in Envoy, waiting on their claims
        for s in socks:
            s.close()  # the streams are destroyed while their claims wait
        time.sleep(0.3)
    finally:
        rp.send_signal(signal.SIGCONT)
    r = jd.get(stack["port"], "/after")
    assert r.status_code == 200, r.text
    assert stack["envoy"].poll() is None, stack["log"].read_text()[-3000:]


def test_no_answer_from_redis_is_503_and_nothing_is_forwarded(stack):
    rp = stack["redis_proc"]
    before_hits = jd.Echo.hits
    rp.terminate()
    rp.wait(timeout=10)
    r = jd.get(stack["port"], "/z")
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "replay_check_unavailable"
    assert jd.Echo.hits == before_hits
    assert stack["envoy"].poll() is None
