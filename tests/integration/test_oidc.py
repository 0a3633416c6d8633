"""SSO on the internal gateway (10444, replica 10544): the oidc filter in the
real Envoy against the demo OIDC provider (18084) and the real Redis behind
the gateway-store sidecars (../shared/demo-contract.md, "Internal gateway
(10444)"; docs/filters/oidc.md has the security table these tests back).

Cookies are handled by hand (no cookie jar): each test sees exactly which
cookie the gateway set and which one the browser sends back.
"""

from __future__ import annotations

import re
import secrets
import time
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from helpers import TIMEOUT, denial, echo_stats, seen, wait_until
from sso import (LOGIN, PROVIDER, SESSION, cookie_pair, finish_login, get, login, provider_login, set_cookies,
                 start_login)

ADMIN = {1: "http://127.0.0.1:9901", 2: "http://127.0.0.1:9902"}

def counter(replica: int, name: str) -> int:
    text = requests.get(f"{ADMIN[replica]}/stats?filter={name}", timeout=TIMEOUT).text
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if name in line)


def counter_reaches(replicas: tuple[int, ...], name: str, target: int) -> int:
    """The sum of counter `name` over `replicas` once it reached `target`
    (polled: natively a count reaches /stats one main-thread turn after the
    request, docs/native.md)."""
    return wait_until(lambda: (n := sum(counter(r, name) for r in replicas)) >= target and n,
                      timeout=5.0, message=f"{name} >= {target}")


def settled(replicas: tuple[int, ...], name: str) -> int:
    """The sum of counter `name` over `replicas` once the earlier requests'
    counts have reached /stats: two reads 50 ms apart that agree (natively a
    quiet configuration's counts are flushed one main-loop turn later, a
    busy one's at most every 20 ms; docs/native.md)."""
    last = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = sum(counter(r, name) for r in replicas)
        if now == last:
            return now
        last = now
        time.sleep(0.05)
    raise AssertionError(f"{name} still moving after 5 s")


def session_keys(stack) -> int:
    reply = stack.redis("EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "gw:internal.oidc:*")
    assert reply.startswith(b":"), reply
    return int(reply[1:])


def control(path: str, body: dict | None = None) -> None:
    r = requests.post(PROVIDER + path, json=body or {}, timeout=TIMEOUT)
    assert r.status_code in (200, 204), (path, r.status_code, r.text)


@pytest.fixture(autouse=True)
def _provider_controls_reset(stack):
    control("/_control/reset")
    yield
    control("/_control/reset")


# ----------------------------------------------------------------- the contract


def test_health_is_open_and_api_calls_without_a_session_are_401(stack):
    r = get(1, "/health")
    assert r.status_code == 200, r.text
    before = echo_stats()
    r = get(1, "/tools/api", headers={"accept": "application/json"})
    assert r.status_code == 401 and denial(r)["error"] == "login_required", r.text
    assert echo_stats() == before, "a refused request never reaches the echo"


def test_a_browser_without_a_session_is_sent_to_the_provider_with_pkce(stack):
    authorize, login_cookie = start_login()
    q = parse_qs(urlsplit(authorize).query)
    assert q["response_type"] == ["code"] and q["client_id"] == ["internal-gateway"]
    assert q["redirect_uri"] == ["https://localhost:10444/oauth2/callback"]
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert len(q["state"][0]) >= 22 and len(q["nonce"][0]) >= 22
    assert "openid" in q["scope"][0].split()
    r = get(1, "/tools/dash")
    line = set_cookies(r)[LOGIN]
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attr in line, line


def test_alice_logs_in_and_the_upstream_sees_her_identity_only(stack):
    authorize, login_cookie = start_login(path="/tools/dash?x=1")
    r = finish_login(provider_login(authorize, "alice"), login_cookie)
    assert r.status_code == 302 and r.headers["location"] == "/tools/dash?x=1", (r.status_code, r.headers)
    line = set_cookies(r)[SESSION]
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attr in line, line
    value = cookie_pair(line).split("=", 1)[1]
    assert len(value) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", value), "opaque, >= 128 random bits"
    assert "Max-Age=0" in set_cookies(r)[LOGIN], "the pre-login cookie is spent"

    session = cookie_pair(line)
    r = get(1, "/tools/dash?x=1", cookie=f"theme=dark; {session}",
            headers={"x-user-id": "mallory", "x-user-groups": "tools-admin", "x-user-email": "m@evil"})
    assert r.status_code == 200, r.text
    h = seen(r)["headers"]
    assert h["x-user-id"] == "alice"
    assert h["x-user-email"] == "alice@example.com"
    assert h["x-user-groups"] == "tools-admin"
    assert h.get("cookie") == "theme=dark", "the gateway's cookie never reaches the tool"


def test_admin_needs_tools_admin(stack):
    alice, bob = login("alice"), login("bob")
    assert get(1, "/admin/", cookie=alice).status_code == 200
    r = get(1, "/admin/users", cookie=bob)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    r = get(1, "/tools", cookie=bob)
    assert r.status_code == 200 and seen(r)["headers"]["x-user-id"] == "bob"
    assert "x-user-groups" not in seen(r)["headers"]


def test_a_session_works_on_both_replicas_and_logout_ends_it_on_both(stack):
    session = login("alice", replica=1)
    other = login("alice", replica=2)
    assert get(2, "/tools", cookie=session).status_code == 200
    assert get(1, "/tools", cookie=other).status_code == 200
    r = get(2, "/oauth2/logout", cookie=session)
    assert r.status_code == 302, r.text
    loc = r.headers["location"]
    assert loc.startswith(PROVIDER + "/logout?"), loc
    assert parse_qs(urlsplit(loc).query)["post_logout_redirect_uri"] == ["https://localhost:10544/"]
    assert "Max-Age=0" in set_cookies(r)[SESSION]
    for replica in (1, 2):
        r = get(replica, "/tools", cookie=session, headers={"accept": "application/json"})
        assert r.status_code == 401 and r.json()["error"] == "login_required", (replica, r.text)
        # the other session of the same user is untouched
        assert get(replica, "/tools", cookie=other).status_code == 200


# ------------------------------------------------------------------ security


def test_login_csrf_state_is_bound_to_the_browser_and_single_use(stack):
    authorize, login_cookie = start_login()
    callback = provider_login(authorize, "alice")
    # the victim's browser: no pre-login cookie (the attacker's link)
    r = finish_login(callback, "")
    assert r.status_code == 401 and r.json()["error"] == "invalid_state", r.text
    # another browser's pre-login cookie
    _, other_cookie = start_login()
    r = finish_login(callback, other_cookie)
    assert r.status_code == 401 and r.json()["error"] == "invalid_state", r.text
    # a forged state with the right cookie (and the state is then spent)
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    r = finish_login(forged, login_cookie)
    assert r.status_code == 401 and r.json()["error"] == "invalid_state"
    r = finish_login(callback, login_cookie)
    assert r.status_code == 401 and r.json()["error"] == "invalid_state", "single use"


def test_a_code_replay_is_refused(stack):
    authorize, login_cookie = start_login()
    callback = provider_login(authorize, "alice")
    assert finish_login(callback, login_cookie).status_code == 302
    r = finish_login(callback, login_cookie)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("attack", [
    {"alg": "none"},
    {"alg": "HS256"},
    {"sign_with_other_key": True},
    {"aud": "someone-else"},
    {"iss": "http://evil.example"},
    {"exp_offset_s": -600},
    {"nonce": "not-the-logins-nonce"},
], ids=lambda a: next(iter(a)))
def test_id_token_attacks_create_no_session(stack, attack):
    authorize, login_cookie = start_login()
    callback = provider_login(authorize, "alice")
    keys = session_keys(stack)
    control("/_control/next_id_token", attack)
    r = finish_login(callback, login_cookie)
    assert r.status_code == 401 and r.json()["error"] == "invalid_id_token", (attack, r.status_code, r.text)
    assert SESSION not in set_cookies(r)
    assert session_keys(stack) == keys - 1, "the login state is spent and no session is stored"


@pytest.mark.parametrize("path", [
    "//evil.example", "/\\evil.example", "/%2F%2Fevil.example", "/%5Cevil.example",
    "/%2f%2fevil.example/x", "/https://evil.example",
])
def test_open_redirects_stay_on_the_gateway(stack, path):
    r = get(1, path)
    if r.status_code != 302:
        assert 400 <= r.status_code < 500, (path, r.status_code)  # sanitize refused it: no redirect at all
        return
    authorize = r.headers["location"]
    assert authorize.startswith(PROVIDER + "/authorize?")
    login_cookie = cookie_pair(set_cookies(r)[LOGIN])
    r = finish_login(provider_login(authorize, "alice"), login_cookie)
    assert r.status_code == 302
    loc = r.headers["location"]
    assert loc.startswith("/") and not loc.startswith("//") and "\\" not in loc, loc
    assert urlsplit(urljoin("https://localhost:10444/x", loc)).netloc == "localhost:10444", loc


def test_login_makes_a_new_session_id(stack):
    forged = f"{SESSION}={secrets.token_urlsafe(32)}"
    authorize, login_cookie = start_login(cookie=forged)
    r = finish_login(provider_login(authorize, "alice"), f"{login_cookie}; {forged}")
    session = cookie_pair(set_cookies(r)[SESSION])
    assert session != forged
    assert get(1, "/tools", cookie=forged, headers={"accept": "application/json"}).status_code == 401


def test_tampered_or_unknown_cookies_are_no_session(stack):
    session = login()
    name, value = session.split("=", 1)
    flipped = value[:-1] + ("A" if value[-1] != "A" else "B")
    for bad in (f"{name}={flipped}", f"{name}=x", f"{name}={value}x"):
        r = get(1, "/tools", cookie=bad, headers={"accept": "application/json"})
        assert r.status_code == 401 and r.json()["error"] == "login_required", bad


def test_identity_headers_are_the_gateways_on_every_path(stack):
    """Client copies never pass: with bob's session (who has no groups and so
    gets no x-user-groups of the gateway's) a spoofed group header is gone,
    and /health (answered by Envoy itself) is reached without any."""
    spoof = {"x-user-id": "mallory", "x-user-email": "m@evil", "x-user-groups": "tools-admin"}
    bob = login("bob")
    h = seen(get(1, "/tools", cookie=bob, headers=spoof))["headers"]
    assert (h["x-user-id"], h["x-user-email"]) == ("bob", "bob@example.com")
    assert "x-user-groups" not in h, h
    assert get(1, "/admin/", cookie=bob, headers=spoof).status_code == 403, "a header is no group"
    assert get(1, "/health", headers=spoof).status_code == 200


def test_redis_paused_is_503_session_store_unavailable_and_open_paths_answer(stack):
    session = login()
    before = echo_stats()
    assert stack.redis("CLIENT", "PAUSE", "2000", "ALL") == b"+OK"
    try:
        r = get(1, "/tools", cookie=session)
        assert r.status_code == 503 and r.json()["error"] == "session_store_unavailable", r.text
        assert r.headers.get("retry-after")
        r = get(2, "/tools", cookie=session)
        assert r.status_code == 503, "no per-replica cache: both replicas at once"
        assert get(1, "/health").status_code == 200
        assert echo_stats() == before, "nothing reached the echo (/health is answered by Envoy)"
    finally:
        wait_until(lambda: stack.redis("PING", timeout=5) == b"+PONG", timeout=10)
    assert wait_until(lambda: get(1, "/tools", cookie=session).status_code == 200, timeout=10)


def test_a_slow_token_endpoint_is_503_provider_unavailable_and_creates_no_session(stack):
    authorize, login_cookie = start_login()
    callback = provider_login(authorize, "alice")
    control("/_control/delay_ms", {"ms": 3000})
    r = finish_login(callback, login_cookie)
    assert r.status_code == 503 and r.json()["error"] == "provider_unavailable", r.text
    assert SESSION not in set_cookies(r)


def test_a_rotated_provider_key_is_fetched_on_the_first_unknown_kid(stack):
    assert login() is not None
    control("/_control/rotate_key")
    before = counter(1, "oidc_logins_completed_total") + counter(2, "oidc_logins_completed_total")
    # both replicas, every worker: each fetches the new JWKS when it meets the new kid
    for replica in (1, 2, 1, 2):
        assert login(replica=replica)
    after = counter_reaches((1, 2), "oidc_logins_completed_total", before + 4)
    assert after == before + 4


def test_metrics_count_logins_and_failures(stack):
    started = counter(1, "oidc_logins_started_total")
    failed = counter(1, "oidc_logins_failed_total")
    login(replica=1)
    _, login_cookie = start_login()
    finish_login("https://localhost:10444/oauth2/callback?code=x&state=y", login_cookie)
    counter_reaches((1,), "oidc_logins_started_total", started + 2)
    counter_reaches((1,), "oidc_logins_failed_total", failed + 1)
    text = requests.get(f"{ADMIN[1]}/stats?filter=oidc_logins_failed", timeout=TIMEOUT).text
    assert "state" in text, text
    # the decision counter, labelled like every filter's (docs/operations.md)
    prom = requests.get(f"{ADMIN[1]}/stats/prometheus", timeout=TIMEOUT).text
    # (natively Envoy prefixes its namespace: envoy_wasmcustom_oidc_denied_total)
    denied = [line for line in prom.splitlines() if re.match(r"(\w+_)?oidc_denied_total\{", line)]
    assert any('gateway="internal"' in line and 'reason="login_failed"' in line for line in denied), denied


def test_login_round_trip_is_quick(stack):
    """Not a benchmark: a login is a handful of callouts, well under a second."""
    t = time.monotonic()
    login()
    assert time.monotonic() - t < 3.0


def test_the_access_token_goes_upstream_and_is_refreshed_once_per_session(stack):
    """forward_access_token: the session's access token reaches the tool as
    Authorization: Bearer (never the client's), refreshed with the refresh
    token before it expires. With 30 s tokens and refresh_before 60 s every
    request is due: concurrent requests refresh one at a time (a refresh
    lock in Redis), and since the provider revokes the whole session when a
    refresh token is used twice (RFC 9700), every request still succeeding
    afterwards proves no refresh token was used twice."""
    control("/_control/access_token_ttl", {"seconds": 30})
    session = login()
    r = get(1, "/tools", cookie=session, headers={"authorization": "Basic forged"})
    first = seen(r)["headers"]["authorization"]
    assert first.startswith("Bearer ") and "forged" not in first
    tokens_before = requests.get(PROVIDER + "/stats", timeout=TIMEOUT).json()["token_requests"]
    # (the request above refreshed too: its count may reach /stats later)
    refreshed = settled((1, 2), "oidc_token_refreshes_total")

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: get(1 + i % 2, "/tools", cookie=session), range(16)))
    assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers if a.status_code != 200]
    seen_tokens = {a.json()["headers"]["authorization"] for a in answers}
    assert first not in seen_tokens or len(seen_tokens) > 1, "the token was refreshed"
    tokens_after = requests.get(PROVIDER + "/stats", timeout=TIMEOUT).json()["token_requests"]
    assert tokens_after > tokens_before, "the token was refreshed"
    after = counter_reaches((1, 2), "oidc_token_refreshes_total", refreshed + tokens_after - tokens_before)
    assert tokens_after - tokens_before == after - refreshed, "one token call per refresh"
    r = get(2, "/tools", cookie=session)
    assert r.status_code == 200 and r.json()["headers"]["authorization"].startswith("Bearer ")
