#!/usr/bin/env python3
"""The soak: the demo stack (both Envoy replicas, Redis, the sidecars, the
demo services) under a mixed workload at a fixed rate, with faults injected
on a schedule; every phase's figures and the invariants go to build/soak/
(report.json, report.md, soak.png). Exits 1 when an invariant breaks.

    .venv/bin/python tests/soak/run.py [--duration 180] [--rate 40]
    make soak SOAK_DURATION=1800          # a long one
    make test-soak                        # the short form (make test)

docs/soak.md describes the workload, the fault schedule and the invariants.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "envoy"))
sys.path.insert(0, str(HERE))

import requests  # noqa: E402

import report  # noqa: E402
from helpers import mint_token  # noqa: E402
import workload as wl  # noqa: E402
from stack import Stack, StackError  # noqa: E402

OUT = REPO / "build" / "soak"
LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "gateway-filters-stack.lock"
ECHO = "http://127.0.0.1:18080"
ISSUER = "http://127.0.0.1:18081"
FDS = "http://127.0.0.1:18082"
OIDC = "http://127.0.0.1:18084"
#: The demo provider's access token lifetime during the soak (default 300 s):
#: with the internal gateway's `refresh_before` of 60 s, each session's token
#: is refreshed every minute, so every run exercises the refresh (and its
#: lock across replicas) under load.
ACCESS_TOKEN_TTL = 120
HTTP = requests.Session()
HTTP.trust_env = False


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- faults

Allowed = list[tuple[frozenset[str] | None, int | None, frozenset[tuple[int, str]]]]
ANY = None


def rule(classes: str | None, replica: int | None, *answers: tuple[int, str]):
    cls = None if classes is None else frozenset(classes.split())
    return (cls, replica, frozenset(answers))


#: Classes whose route runs passport (web: after jwt; app: after replay-guard and e2ee).
PASSPORT = "web_cached web_new web_order web_transfer app_get app_order_enc app_transfer_enc app_replay"
#: Classes that claim a one-time jti or an app nonce in Redis.
CLAIMS = "web_transfer app_get app_order_enc app_transfer_enc app_replay app_plain_transfer"
#: Classes that read an SSO session in Redis.
SESSIONS = "sso_request sso_deny_admin sso_login"
#: Envoy's answers when an upstream cannot be reached (its local replies are
#: JSON: `unavailable`; plain text before the mapper: the other three).
UPSTREAM_DOWN = ((503, "unavailable"), (503, "upstream_reset"), (503, "no_healthy_upstream"),
                 (504, "upstream_timeout"))


@dataclass
class Phase:
    name: str
    what: str
    #: (status, code) answers documented for this fault, by class and replica.
    allowed: Allowed = field(default_factory=list)
    start: Callable[["Soak"], None] | None = None
    #: Half-way through the fault (optional).
    mid: Callable[["Soak"], None] | None = None
    end: Callable[["Soak"], None] | None = None
    #: The replay-guard reports of this phase's events can reach the FDS
    #: (false while the FDS is down or restarted: reports are lost, by design).
    reports_checked: bool = True
    #: Share of the phase with the fault on (the rest: recovery).
    fault_share: float = 0.6
    #: Shortest recovery after the fault ends, whatever the phase's length:
    #: the filters' own back-offs (passport's 1 s error back-off, a breaker's
    #: 5 s open state) are over before the next phase judges its answers.
    min_recovery: float = 2.0
    t0: float = 0.0
    t1: float = 0.0
    fault_t0: float = 0.0
    fault_t1: float = 0.0
    notes: list[str] = field(default_factory=list)


def phases() -> list[Phase]:
    return [
        Phase("warm-up", "steady traffic; the RSS baseline is taken at its end"),
        Phase("demo-restart", "the demo-services process (echo, partner, issuer, FDS, OIDC provider) is stopped "
              "(SIGTERM) and started again; the FDS block entry is re-added",
              allowed=[rule(ANY, ANY, *UPSTREAM_DOWN, (503, "passport_unavailable"), (503, "circuit_open")),
                       rule("sso_login", ANY, (0, "connection_error"), (0, "provider_login_failed"),
                            (503, "provider_unavailable")),
                       # the restarted demo provider forgot every grant: a session
                       # whose token is due cannot refresh it (until its re-login)
                       rule(SESSIONS, ANY, (503, "provider_unavailable"), (401, "login_required"))],
              start=lambda s: s.restart_demo_services(), reports_checked=False, fault_share=0.3,
              min_recovery=7.0),
        Phase("issuer-slow", "the passport issuer answers every lookup 250 ms late (its timeout: 500 ms)",
              start=lambda s: s.control(ISSUER, "/_control/delay_ms", 250),
              end=lambda s: s.control(ISSUER, "/_control/delay_ms", 0)),
        Phase("issuer-down", "the passport issuer closes every connection unanswered (POST /_control/down)",
              allowed=[rule(PASSPORT, ANY, (503, "passport_unavailable"))],
              start=lambda s: s.down(ISSUER), end=lambda s: s.up(ISSUER)),
        Phase("fds-down", "the FDS feed closes every connection unanswered: the block list stays, reports are lost",
              start=lambda s: s.fds_down(), end=lambda s: s.up(FDS), reports_checked=False),
        Phase("redis-paused", "redis-server gets SIGSTOP, then SIGCONT",
              allowed=[rule(CLAIMS, ANY, (503, "replay_check_unavailable")),
                       rule(SESSIONS, ANY, (503, "session_store_unavailable"))],
              start=lambda s: s.signal_redis(signal.SIGSTOP), end=lambda s: s.signal_redis(signal.SIGCONT)),
        Phase("redis-restart", "redis-server is stopped (SIGTERM) and started again (append-only file kept)",
              allowed=[rule(CLAIMS, ANY, (503, "replay_check_unavailable")),
                       rule(SESSIONS, ANY, (503, "session_store_unavailable"))],
              start=lambda s: s.stack.stop_redis(), end=lambda s: s.stack.start_redis()),
        Phase("oidc-down", "the OIDC provider closes every connection unanswered (the browser cannot log in); "
              "half-way it answers again but its token endpoint 2.5 s late, past the gateway's 2 s timeout "
              "(the callback fails); sessions keep working throughout",
              allowed=[rule("sso_login", ANY, (0, "connection_error"), (0, "provider_login_failed"),
                            (503, "provider_unavailable")),
                       # a session whose access token expired while no refresh could reach the provider
                       rule(SESSIONS, ANY, (503, "provider_unavailable"))],
              start=lambda s: s.down(OIDC), mid=lambda s: s.oidc_slow_token(),
              end=lambda s: s.control(OIDC, "/_control/delay_ms", 0)),
        Phase("envoy-restart", "Envoy replica 2 is stopped (SIGTERM) and started again; traffic keeps going to it",
              allowed=[rule(ANY, 2, (0, "connection_error"), (503, "blocklist_unavailable"),
                            (503, "upstream_reset")),
                       # a flow that started on replica 1 and crosses to 2
                       rule("sso_login", ANY, (0, "connection_error"))],
              start=lambda s: s.restart_envoy(2), fault_share=0.4),
        Phase("config-push", "a valid sanitize config (web: query.max_params 64 -> 48), then an invalid one "
              "(an unknown field) pushed into both running Envoys (Stack.reload); then the original again",
              start=lambda s: s.push_configs(), end=lambda s: s.restore_configs()),
        Phase("cool-down", "steady traffic; the RSS after the run is taken at its end"),
    ]


# --------------------------------------------------------------------------- the soak

class Soak:
    def __init__(self, stack: Stack, duration: float, rate: float, workers: int, out: Path = OUT):
        self.stack = stack
        self.out = out
        self.duration = duration
        self.rate = rate
        self.started = time.monotonic()
        self.wl = wl.Workload(duration, self.started)
        self.results: list[wl.Result] = []
        self.results_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="soak")
        self.workers = workers
        self.inflight = 0
        self.inflight_cv = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.stop_traffic = threading.Event()
        self.skipped = 0
        self.submitted = 0
        self.rss: list[tuple[float, int, int]] = []          # (t, replica, kB)
        self.echo_base = 0                                    # echo counts of earlier demo-services lives
        self.probe_echo = 0                                   # probe requests the echo answered
        self.reports: dict[tuple, dict] = {}
        self.reports_lock = threading.Lock()
        self.phases = phases()
        self.current = 0
        self.violations: list[str] = []
        self.block_id: str | None = None
        self.refreshes: dict[int, int] = {}

    # ---------------------------------------------------------------- traffic
    def _task(self, name: str) -> None:
        out: list[wl.Result] = []
        try:
            getattr(self.wl, name)(out)
        except Exception as exc:  # noqa: BLE001  (a workload bug must not kill the soak)
            out.append(wl.Result(t=self.wl.now(), cls=name, step="crash", replica=0, status=-1,
                                 code=f"client_exception:{type(exc).__name__}:{exc}"[:200], latency=0.0,
                                 phase=self.current))
        finally:
            with self.results_lock:
                self.results.extend(out)
            with self.inflight_cv:
                self.inflight -= 1
                self.inflight_cv.notify_all()

    def traffic(self) -> None:
        """Open loop: one task every 1/rate s, whatever the answers take;
        a task that finds every worker busy is counted as skipped."""
        plan = wl.schedule()
        interval = 1.0 / self.rate
        n = 0
        nxt = time.monotonic()
        while not self.stop_traffic.is_set():
            now = time.monotonic()
            if now < nxt:
                time.sleep(min(nxt - now, 0.05))
                continue
            nxt += interval
            if nxt < now - 1.0:           # far behind (a stalled client): do not burst
                nxt = now
            if not self.gate.is_set():
                continue
            with self.inflight_cv:
                if self.inflight >= self.workers:
                    self.skipped += 1
                    continue
                self.inflight += 1
            self.pool.submit(self._task, plan[n % len(plan)])
            n += 1
            self.submitted = n

    def quiesce(self) -> None:
        """Stops new tasks and waits for the ones in flight."""
        self.gate.clear()
        with self.inflight_cv:
            self.inflight_cv.wait_for(lambda: self.inflight == 0, timeout=wl.TIMEOUT * 4)

    def resume(self) -> None:
        self.gate.set()

    # ---------------------------------------------------------------- observers
    def sample_rss(self) -> None:
        while not self.stop_traffic.is_set():
            t = time.monotonic() - self.started
            for r in self.stack.replicas:
                try:
                    pid = self.stack.envoy_pid(r)
                    with open(f"/proc/{pid}/status", encoding="ascii") as f:
                        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                    self.rss.append((t, r, kb))
                except (StackError, OSError, StopIteration, ValueError):
                    pass  # replica restarting
            time.sleep(1.0)

    def collect_reports(self) -> None:
        """Merges the FDS feed's stored reports (deduplicated): the feed
        keeps 10,000 and forgets everything when it restarts."""
        try:
            doc = HTTP.get(FDS + "/v1/reports", timeout=5).json()
        except (requests.RequestException, ValueError):
            return
        with self.reports_lock:
            for rep in doc.get("reports", []):
                key = (rep.get("request_id"), rep.get("kind"), rep.get("first_at"), rep.get("count"),
                       rep.get("client"), rep.get("keyid"))
                self.reports[key] = rep

    def report_poller(self) -> None:
        while not self.stop_traffic.wait(3.0):
            if self.gate.is_set():
                self.collect_reports()

    def envoy_counter(self, replica: int, name: str) -> int:
        """The sum of a filter metric over its labels (admin /stats), since
        that replica's Envoy started."""
        status, body = self.stack.admin(f"/stats?filter={name}", replica)
        if status != 200:
            return -1
        return sum(int(line.rsplit(":", 1)[1]) for line in body.decode().splitlines()
                   if name in line and line.rsplit(":", 1)[1].strip().isdigit())

    def echo_count(self) -> int:
        return int(HTTP.get(ECHO + "/_stats", timeout=5).json()["requests"])

    # ---------------------------------------------------------------- suspects
    def suspects_expected(self, upto: int | None = None) -> dict[tuple, int]:
        exp: dict[tuple, int] = {}
        with self.results_lock:
            for r in self.results:
                if r.suspect and (upto is None or r.phase < upto):
                    exp[r.suspect] = exp.get(r.suspect, 0) + 1
        return exp

    def suspects_reported(self) -> tuple[dict[tuple, int], int]:
        got: dict[tuple, int] = {}
        suppressed = 0
        with self.reports_lock:
            for rep in self.reports.values():
                suppressed += int(rep.get("suppressed") or 0)
                if rep.get("kind") == "replay":
                    key = ("replay", rep.get("device"), rep.get("user"))
                elif rep.get("kind") == "invalid_signature":
                    client = str(rep.get("client") or "")
                    key = ("invalid_signature", client.rsplit(":", 1)[0] if client.count(":") == 1 else client)
                else:
                    key = (rep.get("kind"),)
                got[key] = got.get(key, 0) + int(rep.get("count") or 1)
        return got, suppressed

    def wait_reports(self, upto: int, timeout: float = 10.0) -> None:
        """Before a fault that loses reports: wait until every event of the
        earlier phases has reached the FDS (the filters flush every 200 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            self.collect_reports()
            got, _ = self.suspects_reported()
            exp = self.suspects_expected(upto)
            missing = {k: v for k, v in exp.items() if got.get(k, 0) < v and self.phase_of(k) < upto
                       and self.phases[self.phase_of(k)].reports_checked}
            if not missing or time.monotonic() > deadline:
                return
            time.sleep(0.25)

    @staticmethod
    def phase_of(suspect: tuple) -> int:
        if suspect[0] == "replay":
            return int(str(suspect[1]).rsplit("-p", 1)[1])
        return int(str(suspect[1]).split(".")[2])

    # ---------------------------------------------------------------- fault actions
    def control(self, base: str, path: str, ms: int) -> None:
        resp = HTTP.post(base + path, json={"ms": ms}, timeout=5)
        resp.raise_for_status()

    def down(self, base: str) -> None:
        # long enough to outlast the phase; `up` ends it
        self.control(base, "/_control/down", int(self.duration * 1000))

    def fds_down(self) -> None:
        # what the earlier phases reported must be in before the feed goes
        self.wait_reports(self.current)
        self.down(FDS)

    def up(self, base: str) -> None:
        self.control(base, "/_control/down", 0)

    def oidc_slow_token(self) -> None:
        self.up(OIDC)
        self.control(OIDC, "/_control/delay_ms", 2500)

    def signal_redis(self, sig: signal.Signals) -> None:
        os.kill(self.stack.redis_pid(), sig)

    def restart_envoy(self, replica: int) -> None:
        t0 = time.monotonic()
        self.stack.restart_envoy(replica)
        self.note(f"replica {replica} back (ready, every listener accepting) after {time.monotonic() - t0:.1f}s")

    def restart_demo_services(self) -> None:
        self.wait_reports(self.current)
        self.wl.block_active.clear()
        self.quiesce()
        try:
            self.collect_reports()
            self.echo_base += self.echo_count()
            self.stack.stop_demo_services()
        finally:
            self.resume()
        time.sleep(1.0)
        self.stack.start_demo_services()
        self.note("demo services restarted (their state is gone: echo counter, block list, reports, "
                  "the provider's grants)")
        self.ensure_block()
        self.sso_setup()
        self.note("SSO sessions logged in again (the provider forgot their refresh tokens)")

    def sso_setup(self) -> None:
        """Short-lived access tokens (the gateway refreshes them under load,
        on both replicas), then the long-lived sessions of the workload."""
        resp = HTTP.post(OIDC + "/_control/access_token_ttl", json={"seconds": ACCESS_TOKEN_TTL}, timeout=5)
        resp.raise_for_status()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.wl.login_pool()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def ensure_block(self) -> None:
        """Puts the soak's user on the FDS block list and waits until both
        replicas refuse it (the gateways poll the feed)."""
        resp = HTTP.post(FDS + "/v1/blocklist", timeout=5, json={
            "type": "user", "value": wl.BLOCKED_USER, "expires_at": None, "reason": "soak"})
        resp.raise_for_status()
        token = mint_token("users:read", sub=wl.BLOCKED_USER)
        deadline = time.monotonic() + 20
        pending = set(self.stack.replicas)
        while pending and time.monotonic() < deadline:
            for r in sorted(pending):
                try:
                    p = HTTP.get(wl.WEB[r] + "/api/v1/users/1", headers={"authorization": f"Bearer {token}"},
                                 timeout=5)
                except requests.RequestException:
                    continue
                if p.status_code == 200 and "echo" in p.text:
                    self.probe_echo += 1
                elif p.status_code == 403:
                    pending.discard(r)
            time.sleep(0.25)
        if pending:
            raise RuntimeError(f"the FDS block entry never took effect on replica(s) {sorted(pending)}")
        self.wl.block_active.set()

    def push_configs(self) -> None:
        if not hasattr(Stack, "reload"):
            self.note("skipped: no live config (Stack.reload is not there)")
            return
        base = json.loads((REPO / "examples" / "config" / "sanitize" / "web.json").read_text())
        push = self.out / "push"
        push.mkdir(parents=True, exist_ok=True)
        valid = dict(base, query=dict(base["query"], max_params=48))
        (push / "web-valid.json").write_text(json.dumps(valid, indent=2))
        invalid = dict(base, soak_unknown_field=True)
        (push / "web-invalid.json").write_text(json.dumps(invalid, indent=2))
        rel = "config/sanitize/web.json"
        got = self.stack.reload({rel: push / "web-valid.json"})  # type: ignore[attr-defined]
        self.note(f"valid push: {got}")
        if set(got.values()) != {"accepted"}:
            self.violations.append(f"config-push: a valid sanitize config was not accepted by every replica: {got}")
        self.probe_params(denied=True, why="the valid push (max_params 48) in force")
        time.sleep(max(1.0, self.phase_len * 0.2))
        got = self.stack.reload({rel: push / "web-invalid.json"})  # type: ignore[attr-defined]
        self.note(f"invalid push: {got}")
        if set(got.values()) != {"rejected"}:
            self.violations.append(f"config-push: an invalid sanitize config was not rejected by every replica: {got}")
        self.probe_params(denied=True, why="the last good config (max_params 48) still in force after the invalid push")

    def restore_configs(self) -> None:
        if not hasattr(Stack, "reload"):
            return
        got = self.stack.reload()  # type: ignore[attr-defined]
        self.note(f"original config pushed back: {got}")
        if set(got.values()) != {"accepted"}:
            self.violations.append(f"config-push: the original config was not accepted back: {got}")
        self.probe_params(denied=False, why="the original config (max_params 64) back")

    def probe_params(self, denied: bool, why: str, timeout: float = 10.0) -> None:
        """A public web request with 50 query parameters (the workload sends
        at most 2): refused under max_params 48, answered under 64. Polled
        on each replica until it answers as `why` says, at most `timeout` s."""
        query = "&".join(f"p{i}=1" for i in range(50))
        t0 = time.monotonic()
        for r in self.stack.replicas:
            while True:
                try:
                    resp = HTTP.get(f"{wl.WEB[r]}/api/v1/public/soak?{query}", timeout=5)
                    status = resp.status_code
                    if status == 200 and '"service":"echo"' in resp.text.replace(" ", ""):
                        self.probe_echo += 1
                except requests.RequestException:
                    status = 0
                if (400 <= status < 500) if denied else status == 200:
                    break
                if time.monotonic() - t0 > timeout:
                    self.violations.append(f"config-push: replica {r} never showed {why} within {timeout:.0f}s "
                                           f"(50 query parameters answered {status})")
                    return
                time.sleep(0.2)
        self.note(f"{why}: seen on every replica after {time.monotonic() - t0:.1f}s")

    def note(self, text: str) -> None:
        self.phases[self.current].notes.append(text)
        log(f"  {text}")

    # ---------------------------------------------------------------- the schedule
    def run(self) -> None:
        n = len(self.phases)
        # the clock starts with the traffic (not with the logins before it)
        self.started = self.wl.started = time.monotonic()
        steady = max(8.0, self.duration * 0.1) if n > 2 else self.duration / 2
        self.phase_len = max(6.0, (self.duration - 2 * steady) / (n - 2)) if n > 2 else 0.0
        threads = [threading.Thread(target=f, daemon=True, name=f.__name__)
                   for f in (self.traffic, self.sample_rss, self.report_poller)]
        for t in threads:
            t.start()
        for i, ph in enumerate(self.phases):
            self.current = i
            self.wl.phase = i
            length = steady if i in (0, n - 1) else self.phase_len
            ph.t0 = time.monotonic() - self.started
            log(f"phase {i} {ph.name} ({length:.0f}s): {ph.what}")
            if ph.start:
                ph.fault_t0 = time.monotonic() - self.started
                ph.start(self)
            fault_until = self.started + ph.t0 + length * ph.fault_share
            if ph.mid:
                self._sleep_until(self.started + ph.t0 + length * ph.fault_share / 2)
                ph.mid(self)
            self._sleep_until(fault_until)
            if ph.end:
                ph.end(self)
            ph.fault_t1 = time.monotonic() - self.started if ph.start else 0.0
            recovery = max(length * (1 - ph.fault_share), ph.min_recovery if ph.start else 0.0)
            self._sleep_until(self.started + max(ph.t0 + length, (ph.fault_t1 or ph.t0) + recovery))
            ph.t1 = time.monotonic() - self.started
        self.quiesce()
        self.stop_traffic.set()
        self.pool.shutdown(wait=True)
        # the last reports: the filters flush every 200 ms, at 60 a minute a worker
        self.wait_reports(n + 1, timeout=15)

    @staticmethod
    def _sleep_until(t: float) -> None:
        while (left := t - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))


def wasm_panics(log_dir: Path) -> list[str]:
    """Lines of Envoy's logs that show a wasm VM panic or crash."""
    needles = ("panicked at", "wasm trap", "runtimeerror", "unreachable executed", "plugin crash",
               "vm has crashed", "failed: uncaught")
    found = []
    for name in ("envoy.log", "envoy-2.log"):
        path = log_dir / name
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if any(n in line.lower() for n in needles):
                    found.append(f"{name}: {line[:300]}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=float(os.environ.get("SOAK_DURATION", "180")),
                    help="seconds of traffic (default $SOAK_DURATION or 180)")
    ap.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "40")),
                    help="tasks per second (default $SOAK_RATE or 40)")
    ap.add_argument("--workers", type=int, default=32, help="client threads (tasks in flight at most)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-faults", action="store_true",
                    help="steady traffic only (warm-up and cool-down): to measure what rate the stack sustains")
    ap.add_argument("--chart", type=Path, help="also copy the chart there (e.g. docs/img/soak.png)")
    args = ap.parse_args(argv)

    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another test session's stack to finish ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        stack = Stack(log_dir=log_dir, config_path=out / "envoy" / "envoy.yaml", state_dir=out / "state")
        try:
            stack.start()
        except StackError as exc:
            print(f"soak: the demo stack did not start: {exc}", file=sys.stderr)
            return 2
        try:
            soak = Soak(stack, args.duration, args.rate, args.workers, out)
            if args.no_faults:
                soak.phases = [soak.phases[0], soak.phases[-1]]
            soak.sso_setup()
            soak.ensure_block()
            log(f"stack up; {args.duration:.0f}s at {args.rate:g} tasks/s, {len(soak.phases)} phases")
            soak.run()
            echo_total = soak.echo_base + soak.echo_count()
            soak.refreshes = {r: soak.envoy_counter(r, "oidc_token_refreshes_total") for r in stack.replicas}
        except (StackError, RuntimeError, OSError, requests.RequestException) as exc:
            print(f"soak: the run itself failed (a fault could not be injected or undone, or the stack broke): "
                  f"{exc}\nlogs: {log_dir}", file=sys.stderr)
            return 2
        finally:
            stack.stop()
    result = report.build(soak, echo_total, wasm_panics(log_dir), out, args)
    if args.chart:
        args.chart.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "soak.png", args.chart)
    print((out / "report.md").read_text())
    if result["violations"]:
        print("soak: INVARIANT BROKEN:", file=sys.stderr)
        for v in result["violations"]:
            print(f"  - {v}", file=sys.stderr)
        return 1
    print(f"soak: every invariant held ({out / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
