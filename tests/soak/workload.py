"""The soak's mixed workload: one function per request class, over every
gateway and both replicas (docs/soak.md).

Each class sends one request (or a short flow: a transfer and its replay, a
login and its logout) and records every HTTP exchange as a `Result`: the
class, the replica, the status, the denial code (the JSON `error`, or a
label for what is not a gateway denial), the latency, and whether the echo
upstream answered it (its JSON report came back: the request reached it).
Whether an answer is right is judged later, per phase (report.py), from the
class's normal answer and the phase's documented fault answers.

It uses the integration tests' helpers only: demo tokens (helpers.mint_token),
the RFC 9421 signer (signing.py), the RFC 8188 coder (ece.py) and the SSO
steps without a browser (sso.py).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

import requests

import ece
import sso
from helpers import CA, client_cert, mint_token, replica_urls
from signing import Signer

#: Both replicas of each gateway (replica 2: every port + 100).
WEB = replica_urls("web")
APP = replica_urls("app")
EGRESS = replica_urls("egress")
SECURE = replica_urls("secure")
INTERNAL = replica_urls("internal")
#: The replicas sit behind one load balancer: an app request is signed for
#: this authority whichever replica gets it.
AUTHORITY = "127.0.0.1:10001"
MASTER = ece.demo_master()
#: The user the soak puts on the FDS block list (web: JWT `sub`).
BLOCKED_USER = "soak-blocked"
TIMEOUT = 10.0
JSON_ACCEPT = {"accept": "application/json"}


def other(replica: int) -> int:
    return 2 if replica == 1 else 1


@dataclass
class Result:
    t: float            # seconds since the soak started (when the request was sent)
    cls: str            # request class (CLASSES)
    step: str           # the exchange within the class ("main", "replay", "logout", ...)
    replica: int
    status: int         # 0: no HTTP answer (connection refused/reset, client timeout)
    code: str           # JSON denial `error`, "echo"/"partner" (the upstream answered), or a label
    latency: float      # seconds
    reached_echo: bool = False
    #: A replay (of a one-time token or a signed request) that was ACCEPTED.
    replay_accepted: bool = False
    #: A replay-guard event the FDS must see: ("replay", device, user) or
    #: ("invalid_signature", client address).
    suspect: tuple | None = None
    phase: int = -1


def _code(resp: requests.Response) -> str:
    """The denial code of an answer, or what answered."""
    ctype = resp.headers.get("content-type", "")
    if "json" in ctype:
        try:
            body = resp.json()
        except ValueError:
            return "bad_json"
        if isinstance(body, dict):
            if body.get("service") in ("echo", "partner"):
                return body["service"]
            if isinstance(body.get("error"), str):
                return body["error"]
        return "json"
    if resp.status_code in (301, 302, 303, 307, 308):
        return "redirect"
    if resp.status_code >= 500:
        # Envoy's own plain-text answers: "upstream connect error ...",
        # "no healthy upstream", "upstream request timeout".
        text = resp.text[:200].lower()
        if "no healthy upstream" in text:
            return "no_healthy_upstream"
        if "timeout" in text:
            return "upstream_timeout"
        return "upstream_reset"
    return "non_json"


class Workload:
    """The request classes and their shared state (cached tokens, signers,
    SSO sessions). Thread-safe: every worker thread has its own HTTP sessions."""

    def __init__(self, duration: float, started: float):
        self.started = started
        self.local = threading.local()
        ttl = int(duration) + 900
        self.ttl = ttl
        #: Tokens reused by every request of web_cached (the passport and
        #: verification caches warm), one per subject.
        self.cached_tokens = [mint_token("users:read orders:write", sub=f"soak-cached-{i}", ttl=ttl,
                                         kid="demo-rs256" if i % 2 else "demo-es256") for i in range(8)]
        self.counter = itertools.count()
        self.alternate: dict[str, int] = {}
        self.alternate_lock = threading.Lock()
        #: SSO sessions: (user, cookie pair), logged in by `login_pool`.
        self.sessions: dict[str, str] = {}
        #: The current phase (set by the scheduler): names the suspects of
        #: replay-guard events, so each phase's reports can be checked apart.
        self.phase = 0
        #: Whether the FDS block entry is in force on both replicas (false
        #: while the demo services restart and the entry is re-added).
        self.block_active = threading.Event()

    # ------------------------------------------------------------ plumbing
    def session(self, kind: str) -> requests.Session:
        s = getattr(self.local, kind, None)
        if s is None:
            s = requests.Session()
            s.trust_env = False
            if kind in ("secure", "stranger"):
                s.cert = client_cert("partner-billing" if kind == "secure" else "stranger")
            if kind in ("secure", "stranger", "internal"):
                s.verify = str(CA)
            setattr(self.local, kind, s)
        return s

    def now(self) -> float:
        return time.monotonic() - self.started

    def call(self, out: list[Result], cls: str, step: str, replica: int, kind: str, method: str, url: str,
             **kw) -> tuple[Result, requests.Response | None]:
        t0 = time.monotonic()
        res = Result(t=t0 - self.started, cls=cls, step=step, replica=replica, status=0, code="", latency=0.0,
                     phase=self.phase)
        resp = None
        try:
            resp = self.session(kind).request(method, url, timeout=TIMEOUT, allow_redirects=False, **kw)
            res.status = resp.status_code
            res.code = _code(resp)
            res.reached_echo = res.code == "echo"
        except requests.Timeout:
            res.code = "client_timeout"
        except requests.RequestException:
            res.code = "connection_error"
        res.latency = time.monotonic() - t0
        out.append(res)
        return res, resp

    def nth(self, key: str) -> int:
        """0, 1, 2, ... per key (thread-safe)."""
        with self.alternate_lock:
            n = self.alternate.get(key, 0)
            self.alternate[key] = n + 1
        return n

    def replica(self, cls: str) -> int:
        """Each class alternates between the replicas on its own."""
        return 1 + self.nth(cls) % 2

    # ------------------------------------------------------------ web (JWT)
    def web_cached(self, out: list[Result]) -> None:
        r = self.replica("web_cached")
        token = self.cached_tokens[next(self.counter) % len(self.cached_tokens)]
        self.call(out, "web_cached", "main", r, "web", "GET", WEB[r] + "/api/v1/users/7?size=10",
                  headers={"authorization": f"Bearer {token}"})

    def web_new(self, out: list[Result]) -> None:
        r = self.replica("web_new")
        n = next(self.counter)
        # 64 subjects: the passport cache (30 s) misses now and then
        token = mint_token("users:read", sub=f"soak-user-{n % 64}", kid="demo-rs256" if n % 2 else "demo-es256")
        self.call(out, "web_new", "main", r, "web", "GET", WEB[r] + "/api/v1/users/3",
                  headers={"authorization": f"Bearer {token}"})

    def web_order(self, out: list[Result]) -> None:
        r = self.replica("web_order")
        token = self.cached_tokens[next(self.counter) % len(self.cached_tokens)]
        self.call(out, "web_order", "main", r, "web", "POST", WEB[r] + "/api/v1/orders",
                  headers={"authorization": f"Bearer {token}"},
                  json={"item_id": "soak", "quantity": 2, "extra": "stripped"})

    def web_transfer(self, out: list[Result]) -> None:
        """A one-time transfer, then the same token again on the OTHER replica."""
        r = self.replica("web_transfer")
        token = mint_token("transfers:write", sub="soak-payer", jti=secrets.token_hex(12))
        h = {"authorization": f"Bearer {token}"}
        first, _ = self.call(out, "web_transfer", "main", r, "web", "POST", WEB[r] + "/api/v1/transfers", headers=h,
                             json={"amount": 1})
        if not 200 <= first.status < 300:
            return  # not used (Redis down, replica restarting): a second send would be no replay
        res, _ = self.call(out, "web_transfer", "replay", other(r), "web", "POST", WEB[other(r)] + "/api/v1/transfers",
                           headers=h, json={"amount": 1})
        res.replay_accepted = 200 <= res.status < 300

    def web_denied(self, out: list[Result]) -> None:
        """One denial of each kind in turn (the classes web_deny_*)."""
        kinds: list[tuple[str, Callable[[int], tuple[str, str, dict]]]] = [
            ("web_deny_notoken", lambda r: ("GET", "/api/v1/users/1", {})),
            ("web_deny_scope", lambda r: ("GET", "/api/v1/users/1",
                                          {"headers": {"authorization": "Bearer " + mint_token("orders:write")}})),
            ("web_deny_body", lambda r: ("POST", "/api/v1/orders",
                                         {"headers": {"authorization": "Bearer " + self.cached_tokens[0]},
                                          "json": {"item_id": "x", "quantity": 1000}})),
            ("web_deny_case", lambda r: ("POST", "/api/v1/Orders",
                                         {"headers": {"authorization": "Bearer " + self.cached_tokens[0]},
                                          "json": {"item_id": "x", "quantity": 1}})),
            ("web_deny_big", lambda r: ("POST", "/api/v1/orders",
                                        {"headers": {"authorization": "Bearer " + self.cached_tokens[0],
                                                     "content-type": "application/json"},
                                         "data": b'{"item_id":"' + b"x" * (70 * 1024) + b'"}'})),
            ("web_deny_expired", lambda r: ("GET", "/api/v1/users/1",
                                            {"headers": {"authorization": "Bearer " + mint_token(
                                                "users:read", iat=int(time.time()) - 900, nbf=int(time.time()) - 900,
                                                exp=int(time.time()) - 600)}})),
            ("web_deny_blocked", lambda r: ("GET", "/api/v1/users/1",
                                            {"headers": {"authorization": "Bearer " + mint_token(
                                                "users:read", sub=BLOCKED_USER)}})),
        ]
        cls, build = kinds[self.nth("web_denied.kind") % len(kinds)]
        if cls == "web_deny_blocked" and not self.block_active.is_set():
            cls, build = kinds[0]
        r = self.replica("web_denied")
        method, path, kw = build(r)
        self.call(out, cls, "main", r, "web", method, WEB[r] + path, **kw)

    def web_unstable(self, out: list[Result]) -> None:
        """The breaker's route, failing on purpose: the echo's 500, then the
        breaker's 503 `circuit_open` (per replica, per worker)."""
        r = self.replica("web_unstable")
        self.call(out, "web_unstable", "main", r, "web", "GET", WEB[r] + "/api/v1/unstable/soak?status=500")

    # ------------------------------------------------------------ app (signed, E2EE)
    def _signer(self, tag: str) -> tuple[Signer, str]:
        s = Signer.demo(device=f"soak-{tag}", user="soak", lifetime=self.ttl)
        return s, s.key_id()

    def app_get(self, out: list[Result]) -> None:
        r = self.replica("app_get")
        s, kid = self._signer("get")
        h = {"host": AUTHORITY, **s.sign("GET", AUTHORITY, "/api/v1/users/7?size=5", key_id=kid)}
        self.call(out, "app_get", "main", r, "app", "GET", APP[r] + "/api/v1/users/7?size=5", headers=h)

    def _encrypted(self, out: list[Result], cls: str, r: int, path: str, plain: bytes) -> None:
        s, kid = self._signer("enc")
        key = ece.ikm(MASTER, kid)
        body = ece.encrypt(plain, key, kid)
        h = {"host": AUTHORITY, "content-type": "application/json", "content-encoding": "aes128gcm",
             **s.sign("POST", AUTHORITY, path, body, key_id=kid)}
        res, resp = self.call(out, cls, "main", r, "app", "POST", APP[r] + path, headers=h, data=body)
        if resp is not None and resp.status_code == 200:
            # the answer to an encrypted request comes back encrypted
            try:
                doc = json.loads(ece.decrypt(resp.content, key)[0])
                res.code = doc.get("service", "json") if isinstance(doc, dict) else "json"
                if res.code == "echo" and doc.get("body") and json.loads(doc["body"]) != json.loads(plain):
                    res.code = "echo_body_mismatch"
            except Exception:  # noqa: BLE001  (anything undecryptable is a wrong answer)
                res.code = "undecryptable_response"
            res.reached_echo = res.code in ("echo", "echo_body_mismatch")

    def app_order_enc(self, out: list[Result]) -> None:
        self._encrypted(out, "app_order_enc", self.replica("app_order_enc"), "/api/v1/orders",
                        b'{"item_id":"soak","quantity":3}')

    def app_transfer_enc(self, out: list[Result]) -> None:
        self._encrypted(out, "app_transfer_enc", self.replica("app_transfer_enc"), "/api/v1/transfers",
                        b'{"amount":5}')

    def app_replay(self, out: list[Result]) -> None:
        """A signed request, then the very same bytes on the OTHER replica:
        a replay (401, reported to the FDS under this phase's device)."""
        r = self.replica("app_replay")
        device = f"soak-replay-p{self.phase}"
        s = Signer.demo(device=device, user="soak", lifetime=self.ttl)
        h = {"host": AUTHORITY, **s.sign("GET", AUTHORITY, "/api/v1/users/9")}
        first, _ = self.call(out, "app_replay", "main", r, "app", "GET", APP[r] + "/api/v1/users/9", headers=h)
        if not 200 <= first.status < 300:
            return  # not accepted: a second send would be no replay
        res, _ = self.call(out, "app_replay", "replay", other(r), "app", "GET", APP[other(r)] + "/api/v1/users/9",
                           headers=h)
        res.replay_accepted = 200 <= res.status < 300
        if res.status == 401 and res.code == "replay":
            res.suspect = ("replay", device, "soak")

    def app_badsig(self, out: list[Result]) -> None:
        """A signature made with the wrong key, from this phase's client
        address (the trusted load balancer's X-Forwarded-For)."""
        r = self.replica("app_badsig")
        client = f"10.99.{self.phase}.1"
        s = Signer.demo(device="soak-forger", user="soak", lifetime=self.ttl)
        s.master = b"not-the-master-secret"
        h = {"host": AUTHORITY, "x-forwarded-for": client, **s.sign("GET", AUTHORITY, "/api/v1/users/1")}
        res, _ = self.call(out, "app_badsig", "main", r, "app", "GET", APP[r] + "/api/v1/users/1", headers=h)
        if res.status == 401 and res.code == "signature_invalid":
            res.suspect = ("invalid_signature", client)

    def app_plain_transfer(self, out: list[Result]) -> None:
        r = self.replica("app_plain_transfer")
        s, kid = self._signer("plain")
        body = b'{"amount":1}'
        h = {"host": AUTHORITY, "content-type": "application/json",
             **s.sign("POST", AUTHORITY, "/api/v1/transfers", body, key_id=kid)}
        self.call(out, "app_plain_transfer", "main", r, "app", "POST", APP[r] + "/api/v1/transfers", headers=h,
                  data=body)

    # ------------------------------------------------------------ secure (mTLS), egress
    def secure_ok(self, out: list[Result]) -> None:
        r = self.replica("secure_ok")
        self.call(out, "secure_ok", "main", r, "secure", "GET", SECURE[r] + "/partner/v1/billing/invoices")

    def secure_denied(self, out: list[Result]) -> None:
        r = self.replica("secure_denied")
        self.call(out, "secure_denied", "main", r, "stranger", "GET", SECURE[r] + "/partner/v1/billing/invoices")

    def egress(self, out: list[Result]) -> None:
        r = self.replica("egress")
        res, resp = self.call(out, "egress", "main", r, "web", "GET", EGRESS[r] + "/partner-a/orders",
                              headers={"authorization": "Bearer leak", "x-passport": "leak",
                                       "x-user-id": "leak", "cookie": "s=leak"})
        if resp is not None and res.code == "partner":
            seen = resp.json().get("headers", {})
            if any(h in seen for h in ("authorization", "x-passport", "x-user-id", "cookie")):
                res.code = "internal_header_leaked"

    # ------------------------------------------------------------ internal (SSO)
    def login(self, user: str, replica: int, out: list[Result] | None = None) -> str | None:
        """A whole login without a browser (sso.py's steps); the session
        cookie pair, or None (recorded in `out` when given)."""
        t0 = time.monotonic()
        res = Result(t=t0 - self.started, cls="sso_login", step="login", replica=replica, status=0, code="",
                     latency=0.0, phase=self.phase)
        cookie = None
        try:
            first = sso.get(replica, "/tools/soak")
            if first.status_code != 302 or not first.headers.get("location", "").startswith(sso.PROVIDER):
                res.status, res.code = first.status_code, _code(first)
            else:
                login_cookie = sso.cookie_pair(sso.set_cookies(first)[sso.LOGIN])
                try:
                    callback = sso.provider_login(first.headers["location"], user)
                except (AssertionError, requests.RequestException):
                    # the browser's own exchange with the provider (not the gateway)
                    res.code = "provider_login_failed"
                    callback = None
                if callback is not None:
                    resp = sso.finish_login(callback, login_cookie)
                    res.status, res.code = resp.status_code, _code(resp)
                    if resp.status_code == 302 and sso.SESSION in sso.set_cookies(resp):
                        cookie = sso.cookie_pair(sso.set_cookies(resp)[sso.SESSION])
                        res.code = "logged_in"
        except requests.RequestException:
            res.code = "connection_error"
        res.latency = time.monotonic() - t0
        if out is not None:
            out.append(res)
        return cookie

    def login_pool(self) -> None:
        """The long-lived sessions every sso_request uses (before the run,
        and again when the provider has forgotten its grants)."""
        fresh = {}
        for user in ("alice", "bob"):
            cookie = self.login(user, 1)
            if cookie is None:
                raise RuntimeError(f"cannot log {user} in on the internal gateway")
            fresh[user] = cookie
        self.sessions = fresh

    def sso_request(self, out: list[Result]) -> None:
        r = self.replica("sso_request")
        self.call(out, "sso_request", "main", r, "internal", "GET", INTERNAL[r] + "/tools/report",
                  headers={**JSON_ACCEPT, "cookie": self.sessions["alice"]})

    def sso_denied(self, out: list[Result]) -> None:
        r = self.replica("sso_denied")
        if next(self.counter) % 2:
            self.call(out, "sso_deny_admin", "main", r, "internal", "GET", INTERNAL[r] + "/admin/users",
                      headers={**JSON_ACCEPT, "cookie": self.sessions["bob"]})
        else:
            self.call(out, "sso_deny_nosession", "main", r, "internal", "GET", INTERNAL[r] + "/tools/report",
                      headers=JSON_ACCEPT)

    def sso_login(self, out: list[Result]) -> None:
        """A new login on one replica, its session used on the other, the
        logout, and the old cookie refused on the other replica."""
        r = self.replica("sso_login")
        cookie = self.login("alice", r, out)
        if cookie is None:
            return
        self.call(out, "sso_login", "use", other(r), "internal", "GET", INTERNAL[other(r)] + "/tools/after-login",
                  headers={**JSON_ACCEPT, "cookie": cookie})
        res, _ = self.call(out, "sso_login", "logout", r, "internal", "GET", INTERNAL[r] + "/oauth2/logout",
                           headers={"cookie": cookie})
        if res.status == 302:
            after, _ = self.call(out, "sso_login", "after_logout", other(r), "internal", "GET",
                                 INTERNAL[other(r)] + "/tools/after-logout", headers={**JSON_ACCEPT, "cookie": cookie})
            after.replay_accepted = 200 <= after.status < 300


#: Request classes and their weights (per 100 tasks). A task of a flow
#: class sends several requests.
MIX: list[tuple[str, int]] = [
    ("web_cached", 18), ("web_new", 8), ("web_order", 6), ("web_transfer", 6), ("web_denied", 10),
    ("web_unstable", 2),
    ("app_get", 10), ("app_order_enc", 6), ("app_transfer_enc", 4), ("app_replay", 4), ("app_badsig", 2),
    ("app_plain_transfer", 1),
    ("secure_ok", 5), ("secure_denied", 2), ("egress", 5),
    ("sso_request", 7), ("sso_denied", 3), ("sso_login", 1),
]


def schedule() -> list[str]:
    """One round of 100 tasks, the classes interleaved (smooth weighted
    round robin), so every second of traffic carries the whole mix."""
    weights = dict(MIX)
    current = {k: 0 for k in weights}
    total = sum(weights.values())
    out = []
    for _ in range(total):
        for k in current:
            current[k] += weights[k]
        best = max(current, key=lambda k: current[k])
        current[best] -= total
        out.append(best)
    return out


#: The normal answers of each class, step by step (report.py judges every
#: result against these, or the phase's documented fault answers).
NORMAL: dict[str, dict[str, set[tuple[int, str]]]] = {
    "web_cached": {"main": {(200, "echo")}},
    "web_new": {"main": {(200, "echo")}},
    "web_order": {"main": {(200, "echo")}},
    "web_transfer": {"main": {(200, "echo")}, "replay": {(401, "token_replayed")}},
    "web_deny_notoken": {"main": {(401, "missing_token")}},
    "web_deny_scope": {"main": {(403, "insufficient_scope")}},
    "web_deny_body": {"main": {(400, "invalid_body")}},
    "web_deny_case": {"main": {(400, "invalid_path")}},
    "web_deny_big": {"main": {(413, "body_too_large")}},
    "web_deny_expired": {"main": {(401, "invalid_token")}},
    "web_deny_blocked": {"main": {(403, "blocked")}},
    "web_unstable": {"main": {(500, "echo"), (503, "circuit_open")}},
    "app_get": {"main": {(200, "echo")}},
    "app_order_enc": {"main": {(200, "echo")}},
    "app_transfer_enc": {"main": {(200, "echo")}},
    "app_replay": {"main": {(200, "echo")}, "replay": {(401, "replay")}},
    "app_badsig": {"main": {(401, "signature_invalid")}},
    "app_plain_transfer": {"main": {(400, "encryption_required")}},
    "secure_ok": {"main": {(200, "echo")}},
    "secure_denied": {"main": {(403, "forbidden")}},
    "egress": {"main": {(200, "partner")}},
    "sso_request": {"main": {(200, "echo")}},
    "sso_deny_admin": {"main": {(403, "forbidden")}},
    "sso_deny_nosession": {"main": {(401, "login_required")}},
    "sso_login": {"login": {(302, "logged_in")}, "use": {(200, "echo")}, "logout": {(302, "redirect")},
                  "after_logout": {(401, "login_required")}},
}
