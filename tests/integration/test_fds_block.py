"""fds-block against the real Envoy: entries posted to the demo FDS feed
(127.0.0.1:18082) are picked up by the web and app gateways within the
contract's 5 s, judged on Envoy's resolved client address (the last
x-forwarded-for entry behind the one trusted hop) and on the verified
identity, expire at `expires_at`, and stay in force while the feed is down.

Each test clears the feed (DELETE /v1/blocklist) before and after itself and
uses its own addresses/users, so a list still cached by the gateway cannot
leak into another test.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

import helpers
from helpers import TIMEOUT, admin_url, app_url, echo_stats, service_url, wait_until, web_url

from signing import Signer  # tests/integration/signing.py

FEED = service_url("fds", "/v1/blocklist")
#: The contract's pick-up time for a new entry.
PICKUP = 5.0
#: An address no test blocks (RFC 6598 shared space).
CLEAN = "100.127.0.9"
BLOCKED_BODY = {"error": "blocked", "message": "request blocked"}


# ------------------------------------------------------------------ helpers

def clear_feed() -> None:
    requests.delete(FEED, timeout=TIMEOUT).raise_for_status()


def block(kind: str, value: str, *, api: str | None = None, expires_at: int | None = None,
          reason: str = "integration test") -> dict:
    entry = {"type": kind, "value": value, "expires_at": expires_at, "reason": reason}
    if api is not None:
        entry["api"] = api
    resp = requests.post(FEED, json=entry, timeout=TIMEOUT)
    assert resp.status_code == 201, resp.text
    return resp.json()


def get_from(ip_chain: str, gateway_url=web_url, path: str = "/api/v1/public/fds", **kwargs) -> requests.Response:
    headers = {"x-forwarded-for": ip_chain, **kwargs.pop("headers", {})}
    return requests.get(gateway_url(path), headers=headers, timeout=TIMEOUT, **kwargs)


def signed_app_get(ip_chain: str, path: str = "/api/v1/public/fds") -> requests.Response:
    """A signed GET on the app gateway (replay-guard runs before fds-block
    there, and /health does not run fds-block at all)."""
    authority = f"{helpers.HOST}:{helpers.LISTENERS['app']}"
    headers = Signer.demo(device="fds-ip-dev", user="fds-ip-user").sign("GET", authority, path)
    return requests.get(app_url(path), headers={"x-forwarded-for": ip_chain, "Connection": "close", **headers},
                        timeout=TIMEOUT)


def status_becomes(request, status: int, timeout: float = PICKUP, in_a_row: int = 1) -> requests.Response:
    """Polls `request()` until it answers `status` `in_a_row` times in a row;
    returns the last response."""
    streak: list[requests.Response] = []

    def check() -> bool:
        resp = request()
        if resp.status_code != status:
            streak.clear()
            return False
        streak.append(resp)
        return len(streak) >= in_a_row

    wait_until(check, timeout=timeout, interval=0.05, message=f"HTTP {status} x{in_a_row}")
    return streak[-1]


def now_blocked(request, timeout: float = PICKUP) -> requests.Response:
    """Waits until `request()` is refused with 403 by every worker: each
    worker applies a new list on its own tick, so one 403 may come from the
    worker that fetched it while another still has the previous list.
    Requests open fresh connections, which the kernel spreads over workers."""
    return status_becomes(request, 403, timeout=timeout, in_a_row=8)


def now_allowed(request, timeout: float = PICKUP) -> requests.Response:
    """The counterpart of `now_blocked`: 200 from every worker."""
    return status_becomes(request, 200, timeout=timeout, in_a_row=8)


def assert_blocked(resp: requests.Response) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == BLOCKED_BODY, "the reason must stay in the gateway log"
    assert resp.headers.get("x-request-id")


def metric(name: str) -> int:
    text = requests.get(admin_url("/stats"), params={"filter": name}, timeout=TIMEOUT).text
    m = re.search(rf"^wasmcustom\.{re.escape(name)}: (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def denied(reason: str) -> int:
    """fds_block_denied_total{reason=<reason>}, summed over gateways and
    routes, from /stats/prometheus (labels are tags in the wasm builds,
    Envoy labels natively: the same samples)."""
    text = requests.get(admin_url("/stats/prometheus"), timeout=TIMEOUT).text
    return sum(int(v) for k, labels, v in
               re.findall(r'^(\S*fds_block_denied_total)\{([^}]*)\} (\d+)$', text, re.M)
               if f'reason="{reason}"' in labels)


@pytest.fixture
def feed(stack):
    """A clear FDS feed before and after the test."""
    clear_feed()
    yield
    if stack.demo_services_running():
        clear_feed()


# -------------------------------------------------------------------- tests

def test_ip_entry_blocks_the_resolved_client_address_with_a_generic_403(feed):
    blocked_before = denied("blocked_ip")
    assert get_from("203.0.113.10").status_code == 200
    block("ip", "203.0.113.10", reason="secret reason 7f3a")
    resp = now_blocked(lambda: get_from("203.0.113.10", headers={"x-request-id": "fds-ip-1"}))
    assert_blocked(resp)
    assert resp.headers["x-request-id"] == "fds-ip-1"
    assert "7f3a" not in resp.text
    # the denied request never reached the upstream, not even its headers
    before = echo_stats()
    assert_blocked(get_from("203.0.113.10"))
    assert echo_stats() == before
    # a neighbour address passes, on web and on app
    assert get_from("203.0.113.11").status_code == 200
    assert_blocked(now_blocked(lambda: signed_app_get("203.0.113.10")))
    assert signed_app_get("203.0.113.11").status_code == 200
    # Counted at once in wasm; natively flushed by Envoy's main thread.
    wait_until(lambda: denied("blocked_ip") >= blocked_before + 2, timeout=5, message="the denials counted")
    assert metric("fds_block_entries_ip") >= 1


def test_cidr_entries_block_whole_ranges_ipv4_and_ipv6(feed):
    block("ip", "198.51.100.0/24")
    block("ip", "2001:db8:ab::/48")
    assert_blocked(now_blocked(lambda: get_from("198.51.100.77")))
    assert_blocked(now_blocked(lambda: get_from("2001:db8:ab:cd::1")))
    assert get_from("198.51.101.1").status_code == 200
    assert get_from("2001:db8:ac::1").status_code == 200


def test_a_left_spoofed_x_forwarded_for_is_judged_by_its_last_address(feed):
    block("ip", "203.0.113.20")
    assert_blocked(now_blocked(lambda: get_from("203.0.113.20")))
    # the client prepended a blocked address: the load balancer's entry (last) is clean
    assert get_from(f"203.0.113.20, {CLEAN}").status_code == 200
    # the client's real (last) address is blocked, whatever it claims before it
    assert_blocked(get_from(f"{CLEAN}, 203.0.113.20"))


def test_static_config_entries_block_without_the_feed(feed):
    # examples/config/fds-block/{web,app}.json block 198.18.255.0/24
    assert_blocked(get_from("198.18.255.55"))
    assert_blocked(signed_app_get("198.18.255.55"))
    assert get_from("198.18.254.55").status_code == 200


def test_an_entry_blocks_until_its_expires_at_then_lets_through(feed):
    expires_at = int(time.time()) + 6
    block("ip", "203.0.113.40", expires_at=expires_at)
    assert_blocked(now_blocked(lambda: get_from("203.0.113.40")))
    # no refetch needed: the gateway checks the expiry per request
    resp = now_allowed(lambda: get_from("203.0.113.40"), timeout=expires_at - time.time() + 3)
    assert time.time() >= expires_at - 1, "let through before the entry expired"
    assert resp.json()["path"] == "/api/v1/public/fds"


def test_when_the_feed_is_down_the_last_list_stays_in_force(stack, feed):
    block("ip", "203.0.113.50")
    assert_blocked(now_blocked(lambda: get_from("203.0.113.50")))
    errors_before = metric("fds_block_feed_errors_total")
    stack.stop_demo_services()
    try:
        wait_until(lambda: metric("fds_block_feed_errors_total") >= errors_before + 2, timeout=10,
                   message="feed errors to be counted")
        wait_until(lambda: metric("fds_block_feed_age_seconds") >= 2, timeout=10,
                   message="the feed age gauge to grow")
        for _ in range(5):
            assert_blocked(get_from("203.0.113.50"))
            time.sleep(0.2)
    finally:
        stack.start_demo_services()
    # the restarted feed is empty: the gateways follow it, the age resets
    now_allowed(lambda: get_from("203.0.113.50"))
    wait_until(lambda: metric("fds_block_feed_age_seconds") <= 2, timeout=PICKUP, message="feed age to reset")


def test_health_stays_open_to_a_blocked_address(stack, feed):
    # The /health route turns fds-block off (typed_per_filter_config): a
    # gateway's health check never fails on a block entry or on the fail-closed
    # 503 before a feed list is loaded.
    block("ip", "203.0.113.60")
    assert_blocked(now_blocked(lambda: get_from("203.0.113.60")))
    for gateway_url in (web_url, app_url):
        resp = get_from("203.0.113.60", gateway_url=gateway_url, path="/health")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "ok"}


def test_a_blocked_users_token_is_refused_while_another_user_passes(feed):
    path = "/api/v1/users/fds-someone"
    mallory = helpers.bearer("users:read", sub="fds-mallory")
    alice = helpers.bearer("users:read", sub="fds-alice")
    assert requests.get(web_url(path), headers=mallory, timeout=TIMEOUT).status_code == 200
    block("user", "fds-mallory")
    assert_blocked(now_blocked(lambda: requests.get(web_url(path), headers=mallory, timeout=TIMEOUT)))
    assert requests.get(web_url(path), headers=alice, timeout=TIMEOUT).status_code == 200


def test_a_user_api_block_leaves_that_users_other_apis_open(feed):
    user = "fds-carol"
    orders = helpers.bearer("orders:write", sub=user)
    users = helpers.bearer("users:read", sub=user)

    def post_order() -> requests.Response:
        return requests.post(web_url("/api/v1/orders"), json={"item_id": "a1", "quantity": 1},
                             headers=orders, timeout=TIMEOUT)

    assert post_order().status_code == 200
    block("user_api", user, api="POST /api/v1/orders")
    assert_blocked(now_blocked(post_order))
    resp = requests.get(web_url(f"/api/v1/users/{user}"), headers=users, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    # another user may still order
    other = helpers.bearer("orders:write", sub="fds-dave")
    resp = requests.post(web_url("/api/v1/orders"), json={"item_id": "a1", "quantity": 1},
                         headers=other, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def test_a_user_api_block_holds_for_other_spellings_of_the_api(feed):
    # /api/v1/payments is no gateway route: sanitize's case guard does not
    # know it, and an upstream that folds case serves /api/v1/Payments as
    # it. The block must hold for every spelling.
    user = "fds-frank"
    token = helpers.bearer("", sub=user)

    def pay(path: str) -> requests.Response:
        return requests.post(web_url(path), json={"amount": 1}, headers=token, timeout=TIMEOUT)

    block("user_api", user, api="POST /api/v1/payments")
    assert_blocked(now_blocked(lambda: pay("/api/v1/payments")))
    before = echo_stats()
    for path in ("/api/v1/Payments", "/api/v1/PAYMENTS/7"):
        assert_blocked(pay(path))
    assert echo_stats() == before
    assert pay("/api/v1/paymentsx").status_code == 200


def test_a_device_block_on_the_app_gateway(feed):
    target = "/api/v1/users/fds-erin"
    authority = f"{helpers.HOST}:{helpers.LISTENERS['app']}"

    def signed_get(device: str) -> requests.Response:
        headers = Signer.demo(device=device, user="fds-erin").sign("GET", authority, target)
        return requests.get(app_url(target), headers={"Connection": "close", **headers}, timeout=TIMEOUT)

    assert signed_get("fds-dev-1").status_code == 200
    block("device", "fds-dev-1")
    assert_blocked(now_blocked(lambda: signed_get("fds-dev-1")))
    assert signed_get("fds-dev-2").status_code == 200
    # a user entry applies on the app gateway too (the signed key id's user)
    block("user", "fds-frank")
    frank = Signer.demo(device="fds-dev-3", user="fds-frank")
    assert_blocked(now_blocked(
        lambda: requests.get(app_url(target), headers=frank.sign("GET", authority, target), timeout=TIMEOUT)))
