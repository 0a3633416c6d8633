"""route-breaker against the real Envoy (``--concurrency 2``).

The web gateway's breaker on ``GET /api/v1/unstable/...`` (contract: failure
rate >= 50 % over the last 10 calls, at least 5, or slow calls > 300 ms >= 50 %;
open 5 s; then 2 half-open probes). The echo service obeys ``?status=NNN`` and
``?delay_ms=N`` there.

The breaker's state is shared by every worker and outlives a test, so every
test starts from a known window (closed, ten successes: `fresh_window`) and
ends with the breaker closed again (the autouse fixture polls until it is),
so that no other module meets an open breaker on that path. Every request
goes on a fresh connection, so both workers take part.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from helpers import (
    TIMEOUT,
    admin_url,
    denial,
    echo_stats,
    egress_url,
    wait_until,
    web_url,
)

pytestmark = pytest.mark.usefixtures("stack")

UNSTABLE = "/api/v1/unstable/breaker"
WAIT_S = 5  # wait_duration_in_open_state of examples/config/route-breaker/web.json


def get(path: str, **kwargs) -> requests.Response:
    """One GET on a new connection (requests.get opens a fresh session)."""
    headers = {"connection": "close", **kwargs.pop("headers", {})}
    return requests.get(web_url(path), headers=headers, timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def tagged(name: str, gateway: str, route: str) -> str:
    """The stat name of a breaker's metric labelled gateway/route
    (filter_core::metrics; /stats/prometheus shows `name{gateway,route}`)."""
    return f"gateway=.={gateway};.;route=.={route};.;{name}"


def stat(name: str) -> int:
    """A custom wasm metric from Envoy's admin (`wasmcustom.<name>`)."""
    resp = requests.get(admin_url("/stats"), params={"filter": f"^wasmcustom\\.{name}$"}, timeout=TIMEOUT)
    resp.raise_for_status()
    for line in resp.text.splitlines():
        key, _, value = line.partition(": ")
        if key == f"wasmcustom.{name}":
            return int(value)
    raise AssertionError(f"metric {name} not found in {resp.text!r}")


def state() -> int:
    """0 closed, 1 open, 2 half-open."""
    return stat(tagged("route_breaker_state", "web", "unstable"))


def becomes(read, expected: int, what: str) -> None:
    """Waits until `read()` is `expected`: a wasm filter's metrics change at
    once, the native build's a main-thread flush later (at most every 20 ms
    per configuration under load; docs/native.md, metrics)."""
    wait_until(lambda: read() == expected, timeout=2, interval=0.02, message=f"{what} == {expected}")


def state_becomes(expected: int) -> None:
    becomes(state, expected, "route_breaker_state")


def stat_becomes(name: str, expected: int) -> None:
    becomes(lambda: stat(name), expected, name)


def fresh_window() -> None:
    """Poll until the breaker is closed and its window holds ten successes.

    An open breaker is waited out; its half-open probes succeed and close it.
    Twelve consecutive successes while closed fill the ten-call window.
    """
    streak = 0

    def step() -> bool:
        nonlocal streak
        resp = get(f"{UNSTABLE}?status=200")
        streak = streak + 1 if resp.status_code == 200 and state() == 0 else 0
        return streak >= 12

    wait_until(step, timeout=WAIT_S * 4, interval=0.1, message="the unstable breaker to close")


@pytest.fixture(autouse=True)
def leave_the_breaker_closed():
    yield
    fresh_window()


def open_breaker() -> None:
    """From a fresh window, five failures open it (5 of the last 10 = 50 %)."""
    fresh_window()
    for i in range(5):
        resp = get(f"{UNSTABLE}?status=500")
        assert resp.status_code == 500, (i, resp.status_code, resp.text)
    state_becomes(1)


def assert_circuit_open(resp: requests.Response) -> int:
    assert resp.status_code == 503, (resp.status_code, resp.text)
    body = denial(resp)
    assert body["error"] == "circuit_open", body
    retry_after = int(resp.headers["retry-after"])
    assert 1 <= retry_after <= WAIT_S, retry_after
    return retry_after


def test_half_the_last_ten_calls_failing_opens_the_breaker():
    fresh_window()
    for i in range(4):
        assert get(f"{UNSTABLE}?status=503").status_code == 503 and state() == 0, i
    opened = stat(tagged("route_breaker_opened_total", "web", "unstable"))
    # The fifth failure is still answered by the upstream, and opens it.
    resp = get(f"{UNSTABLE}?status=500")
    assert resp.status_code == 500 and resp.json()["service"] == "echo"
    state_becomes(1)
    stat_becomes(tagged("route_breaker_opened_total", "web", "unstable"), opened + 1)
    stat_becomes(tagged("route_breaker_failure_rate_percent", "web", "unstable"), 50)


def test_an_open_breaker_answers_at_the_edge_without_waiting_for_the_upstream():
    open_breaker()
    before = echo_stats()
    rejected = stat(tagged("route_breaker_rejected_total", "web", "unstable"))
    started = time.monotonic()
    resp = get(f"{UNSTABLE}?delay_ms=2000", headers={"x-request-id": "breaker-rid-1"})
    elapsed = time.monotonic() - started
    assert_circuit_open(resp)
    assert elapsed < 0.5, elapsed
    assert resp.headers.get("x-request-id") == "breaker-rid-1"
    assert echo_stats() == before, "the upstream saw the rejected request"
    stat_becomes(tagged("route_breaker_rejected_total", "web", "unstable"), rejected + 1)


def test_an_open_breaker_sheds_head_like_get():
    open_breaker()
    before = echo_stats()
    resp = requests.head(web_url(f"{UNSTABLE}?status=500"), headers={"x-request-id": "breaker-head"},
                         timeout=TIMEOUT)
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-request-id"] == "breaker-head"
    assert echo_stats() == before


def test_an_open_breaker_sheds_every_method():
    """A POST to a failing route would reach the failing upstream as a GET
    would: the breaker guards the route, not one method."""
    open_breaker()
    before = echo_stats()
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        resp = requests.request(method, web_url(f"{UNSTABLE}?status=500"), json={}, timeout=TIMEOUT)
        assert resp.status_code == 503, (method, resp.text)
        assert resp.json()["error"] == "circuit_open"
    assert echo_stats() == before


def test_every_worker_rejects_once_it_is_open():
    open_breaker()
    before = echo_stats()
    # Ten fresh connections: Envoy spreads them over both workers.
    for _ in range(10):
        assert_circuit_open(get(f"{UNSTABLE}?status=200"))
    assert echo_stats() == before


def test_other_routes_and_gateways_are_unaffected_by_an_open_breaker():
    open_breaker()
    assert get("/api/v1/public/ping").status_code == 200
    resp = requests.get(egress_url("/partner-a/ping"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def test_after_the_wait_two_good_probes_close_it():
    open_breaker()
    retry_after = assert_circuit_open(get(f"{UNSTABLE}?status=200"))
    transitions = stat(tagged("route_breaker_transitions_total", "web", "unstable"))
    # Only rejections until the wait is over: poll, each poll a probe attempt.
    first = wait_until(
        lambda: (r := get(f"{UNSTABLE}?status=200")).status_code == 200 and r,
        timeout=retry_after + 2,
        interval=0.1,
        message="the first half-open probe",
    )
    assert first.json()["service"] == "echo"
    state_becomes(2)  # half-open, one probe in, one to go
    assert get(f"{UNSTABLE}?status=200").status_code == 200
    state_becomes(0)
    # closed -> ... : open -> half_open, half_open -> closed
    stat_becomes(tagged("route_breaker_transitions_total", "web", "unstable"), transitions + 2)
    # Closed with a fresh window: four failures do not reopen it.
    for _ in range(4):
        assert get(f"{UNSTABLE}?status=500").status_code == 500
    assert state() == 0


def test_half_open_admits_two_probes_across_workers_and_slow_probes_reopen_it():
    open_breaker()
    retry_after = assert_circuit_open(get(f"{UNSTABLE}?status=200"))
    # Nothing observable changes when the wait ends (the transition happens
    # on the next request), so wait out the Retry-After the breaker gave.
    time.sleep(retry_after + 0.2)
    before = echo_stats()
    results: list[int] = []
    probes = [
        threading.Thread(target=lambda: results.append(get(f"{UNSTABLE}?delay_ms=1200").status_code))
        for _ in range(2)
    ]
    for t in probes:
        t.start()
    wait_until(lambda: echo_stats() >= before + 2, timeout=5, message="both probes at the upstream")
    # Both permits are taken: a third caller is refused while they run.
    third = get(f"{UNSTABLE}?status=200")
    assert third.status_code == 503 and denial(third)["error"] == "circuit_open"
    assert third.headers["retry-after"] == "1"
    for t in probes:
        t.join(timeout=TIMEOUT)
    assert results == [200, 200]
    # Both probes were slow (> 300 ms): 100 % slow calls, open again.
    state_becomes(1)
    assert_circuit_open(get(f"{UNSTABLE}?status=200"))


def test_slow_calls_alone_open_it():
    fresh_window()
    for i in range(5):
        resp = get(f"{UNSTABLE}?delay_ms=400")
        assert resp.status_code == 200, (i, resp.text)
    state_becomes(1)
    stat_becomes(tagged("route_breaker_slow_call_rate_percent", "web", "unstable"), 50)
    assert_circuit_open(get(f"{UNSTABLE}?status=200"))


def test_the_breaker_is_wired_on_every_gateway():
    for name in (
        tagged("route_breaker_state", "web", "unstable"),
        tagged("route_breaker_state", "app", "unstable"),
        tagged("route_breaker_state", "secure", "partner"),
        tagged("route_breaker_state", "secure", "internal"),
        tagged("route_breaker_state", "egress", "partner-a"),
    ):
        assert stat(name) in (0, 1, 2), name


def test_egress_breaker_counts_the_partner_calls():
    before = stat(tagged("route_breaker_calls_total", "egress", "partner-a"))
    resp = requests.get(egress_url("/partner-a/v1/quote"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    # Natively a flush later (native-chain: the egress chain's one
    # configuration may have flushed sanitize's counter a moment before).
    becomes(lambda: stat(tagged("route_breaker_calls_total", "egress", "partner-a")), before + 1,
            "route_breaker_calls_total{egress,partner-a}")


def test_egress_strips_internal_headers_before_the_partner():
    resp = requests.get(
        egress_url("/partner-a/v1/orders?id=7"),
        headers={
            "x-passport": "eyJhbGciOiJFUzI1NiJ9.e30.sig",
            "x-user-id": "user-1",
            "x-user-risk": "low",
            "authorization": "Bearer internal-token",
            "cookie": "session=abc",
            "x-partner-trace": "keep-me",
        },
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["service"] == "partner", body
    assert body["path"] == "/partner-a/v1/orders"
    seen = body["headers"]
    for name in ("x-passport", "x-user-id", "x-user-risk", "authorization", "cookie"):
        assert name not in seen, (name, seen)
    assert seen.get("x-partner-trace") == "keep-me"
