"""Operations (docs/operations.md): labelled filter metrics in
/stats/prometheus, one decision log line per denial, sanitize's dry run, and
`gatewayctl drift` against a live Envoy.

The dry-run and drift checks need an Envoy whose config differs from the
repository's. The contract fixes the session stack's ports, so that variant
runs beside it: the SAME template rendered by envoy/render.py with a copy of
examples/ (sanitize's web config switched to dry_run) and every listener and
the admin moved into 26000-26099. It uses the session stack's demo services.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from helpers import REPO, TIMEOUT, admin_url, bearer, wait_until, wasm_build, web_url

ENVOY = REPO / ".venv" / "bin" / "envoy"
GATEWAYCTL = REPO / "target" / "release" / "gatewayctl"
LOG = REPO / "build" / "test-logs" / "envoy.log"

#: The variant's ports: contract port -> 260xx.
VARIANT_PORTS = {10000: 26000, 10001: 26001, 10002: 26002, 10443: 26043, 10009: 26009, 9901: 26099}
VARIANT_WEB = "http://127.0.0.1:26000"
VARIANT_ADMIN = "http://127.0.0.1:26099"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(admin: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of /stats/prometheus: (name, labels, value)."""
    text = requests.get(f"{admin}/stats/prometheus", timeout=TIMEOUT).text
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def decision_lines(log: Path, request_id: str) -> list[dict]:
    """The decision log records (JSON after the Envoy prefix) of one request."""
    out = []
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if '"event":"gateway_denial"' in line and request_id in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


# ------------------------------------------------------------------ metrics + logs

def test_denials_and_decisions_are_counted_with_gateway_route_and_reason_labels(stack):
    before = scrape(admin_url())
    assert requests.get(web_url("/api/v1/public/%252e%252e/x"), timeout=TIMEOUT).status_code == 400
    assert requests.get(web_url("/api/v1/users/7"), timeout=TIMEOUT).status_code == 401
    assert requests.get(web_url("/api/v1/users/7"), headers=bearer("users:read"), timeout=TIMEOUT).status_code == 200

    def grew():
        now = scrape(admin_url())
        checks = [
            ("sanitize_denied_total", dict(gateway="web", route="api", reason="invalid_path")),
            ("sanitize_rewritten_total", dict(gateway="web", route="api")),
            ("jwt_denied_total", dict(gateway="web", route="api", reason="missing_token")),
            ("jwt_allowed_total", {}),
        ]
        return all(value(now, n, **lab) > value(before, n, **lab) for n, lab in checks)

    wait_until(grew, timeout=5, message="labelled sanitize and jwt counters to grow")
    names = {n for n, _, _ in scrape(admin_url())}
    # Exported under exactly the filter's name: no envoy_ prefix, no mangled tags.
    assert not any("=" in n or ";" in n for n in names)
    assert {"sanitize_denied_total", "jwt_denied_total"} <= names
    assert not any("wasmcustom" in n for n in names)
    # Envoy's per-route stats (stat_prefix) feed the dashboards' rates and latency.
    assert any(n.startswith("envoy_vhost_route_upstream_rq") for n in names), sorted(names)[:50]


def test_every_filter_counts_its_denials_with_the_documented_labels(stack):
    """One denial from each filter (docs/operations.md, "Every filter's metrics"),
    then /stats/prometheus has each filter's counter with gateway, route and reason."""
    from helpers import app_url, client_cert, egress_url, CA, secure_url

    before = scrape(admin_url())
    rids = {}

    def rid(filter_name: str) -> dict:
        rids[filter_name] = f"ops-{filter_name}-{uuid.uuid4()}"
        return {"x-request-id": rids[filter_name]}

    # replay-guard: an unsigned request on the app gateway.
    resp = requests.get(app_url("/api/v1/users/7"), headers=rid("replay-guard"), timeout=TIMEOUT)
    assert resp.status_code == 401 and resp.json()["error"] == "signature_missing", resp.text
    # e2ee: a signed plaintext transfer where encryption is required.
    from signing import Signer
    body = b'{"to":"bob"}'
    signed = Signer.demo(device="ops-e2ee").sign("POST", "127.0.0.1:10001", "/api/v1/transfers", body)
    resp = requests.post(app_url("/api/v1/transfers"), data=body, timeout=TIMEOUT,
                         headers={**signed, "content-type": "application/json", **rid("e2ee")})
    assert resp.status_code == 400 and resp.json()["error"] == "encryption_required", resp.text
    # fds-block: the static demo entry 198.18.255.0/24 (examples/config/fds-block/web.json).
    resp = requests.get(web_url("/api/v1/public/ops"), headers={"x-forwarded-for": "198.18.255.77", **rid("fds-block")},
                        timeout=TIMEOUT)
    assert resp.status_code == 403 and resp.json()["error"] == "blocked", resp.text
    # passport: a verified user the demo issuer does not know.
    user = f"unknown-{uuid.uuid4().hex[:12]}-1"
    resp = requests.get(web_url("/api/v1/users/7"), headers={**bearer("users:read", sub=user), **rid("passport")},
                        timeout=TIMEOUT)
    assert resp.status_code == 403 and resp.json()["error"] == "unknown_user", resp.text
    # san-authz: a client certificate no rule allows.
    resp = requests.get(secure_url("/internal/x"), cert=client_cert("stranger"), verify=str(CA),
                        headers=rid("san-authz"), timeout=TIMEOUT)
    assert resp.status_code == 403, resp.text
    # san-authz allowed + route-breaker calls: a good call on each.
    assert requests.get(secure_url("/partner/v1/billing/x"), cert=client_cert("partner-billing"), verify=str(CA),
                        timeout=TIMEOUT).status_code == 200
    assert requests.get(egress_url("/partner-a/v1/quote"), timeout=TIMEOUT).status_code == 200

    checks = [
        ("replay_guard_denied_total", dict(gateway="app", route="api", reason="signature_missing")),
        ("e2ee_denied_total", dict(gateway="app", route="api", reason="encryption_required")),
        ("fds_block_denied_total", dict(gateway="web", route="api", reason="blocked_ip")),
        ("passport_denied_total", dict(gateway="web", route="api", reason="unknown_user")),
        ("san_authz_denied_total", dict(gateway="secure", route="secure", reason="no_rule")),
        ("san_authz_allowed_total", dict(gateway="secure", route="secure")),
        ("route_breaker_calls_total", dict(gateway="egress", route="partner-a")),
    ]

    def grew():
        now = scrape(admin_url())
        return all(value(now, n, **lab) > value(before, n, **lab) for n, lab in checks)

    wait_until(grew, timeout=5, message="every filter's labelled counter to grow")
    now = scrape(admin_url())
    names = {n for n, _, _ in now}
    assert not any("=" in n or ";" in n or "wasmcustom" in n for n in names)
    # route-breaker: every breaker's gauges and counters carry gateway/route.
    for gateway, route in [("web", "unstable"), ("app", "unstable"), ("secure", "partner"), ("egress", "partner-a")]:
        for name in ("route_breaker_state", "route_breaker_rejected_total", "route_breaker_failure_rate_percent"):
            assert any(n == name and lab.get("gateway") == gateway and lab.get("route") == route
                       for n, lab, _ in now), (name, gateway, route)
    # The old name-suffix and per-kind names are gone.
    assert not any(n.startswith(("route_breaker_state_", "fds_block_blocked_")) for n in names), sorted(names)
    # Each denial wrote exactly one decision line, by the filter that denied.
    for filter_name, request_id in rids.items():
        lines = wait_until(lambda: decision_lines(LOG, request_id), timeout=5, message=f"{filter_name}'s line")
        assert [rec["filter"] for rec in lines] == [filter_name], lines
        assert lines[0]["dry_run"] is False and lines[0]["request_id"] == request_id


def test_every_denial_writes_one_decision_line_joinable_with_the_trace(stack):
    rid = f"ops-{uuid.uuid4()}"
    trace = uuid.uuid4().hex
    token = bearer("orders:write")["authorization"]
    resp = requests.get(
        web_url("/api/v1/users/7"),
        headers={"x-request-id": rid, "traceparent": f"00-{trace}-00f067aa0ba902b7-01", "authorization": token},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 403
    lines = wait_until(lambda: decision_lines(LOG, rid), timeout=5, message="the decision log line")
    assert len(lines) == 1, lines
    rec = lines[0]
    assert rec == {
        "event": "gateway_denial", "filter": "jwt", "dry_run": False, "gateway": "web", "route": "api",
        "method": "GET", "status": 403, "code": "insufficient_scope", "request_id": rid, "trace_id": trace,
    }
    # Nothing secret: not the token, not any part of it.
    raw = next(line for line in LOG.read_text().splitlines() if rid in line and "gateway_denial" in line)
    assert token.split()[1][:20] not in raw

    rid = f"ops-{uuid.uuid4()}"
    b3 = uuid.uuid4().hex[:16]
    requests.get(web_url("/api/v1/public/%252e%252e/x"), headers={"x-request-id": rid, "x-b3-traceid": b3}, timeout=TIMEOUT)
    rec = wait_until(lambda: decision_lines(LOG, rid), timeout=5, message="sanitize's line")[0]
    assert (rec["filter"], rec["status"], rec["code"], rec["trace_id"]) == ("sanitize", 400, "invalid_path", b3)


# ------------------------------------------------------------------ the variant Envoy

def _gatewayctl() -> Path:
    if not GATEWAYCTL.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "gatewayctl"], cwd=REPO, check=True)
    return GATEWAYCTL


def _feed_loaded(admin: str) -> bool:
    """fds-block published a feed list in this Envoy (fds_block_feed_updates_total > 0)."""
    text = requests.get(f"{admin}/stats?filter=fds_block_feed_updates_total", timeout=1).text
    return any(int(line.rsplit(":", 1)[1]) > 0 for line in text.splitlines() if ":" in line)


@pytest.fixture(scope="module")
def variant(stack, tmp_path_factory):
    """The repository's Envoy config with sanitize's web config in dry run, on 260xx."""
    tmp = tmp_path_factory.mktemp("variant")
    root = tmp / "examples"
    shutil.copytree(REPO / "examples", root, ignore=shutil.ignore_patterns("demo-services", "target"))
    web = root / "config" / "sanitize" / "web.json"
    cfg = json.loads(web.read_text())
    cfg["dry_run"] = True
    web.write_text(json.dumps(cfg, indent=2))
    rendered = tmp / "rendered.yaml"
    subprocess.run(
        ["python3", str(REPO / "envoy" / "render.py"), "--profile", "local", "--include-root", str(root), "-o", str(rendered)],
        check=True, capture_output=True,
    )
    text = rendered.read_text()
    for old, new in VARIANT_PORTS.items():
        text, n = re.subn(rf"port_value: {old}\b", f"port_value: {new}", text)
        assert n >= 1, old
    config = tmp / "envoy.yaml"
    config.write_text(text)
    # The native build: the filters' secrets go to Envoy's own environment
    # (render.py -o writes them beside the config, docs/native.md "Secrets").
    env = dict(os.environ)
    env_file = rendered.with_suffix(".env")
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value[1:-1] if value.startswith("'") and value.endswith("'") else value
    log_path = tmp / "envoy.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
         "--log-level", "warn", "--component-log-level", "wasm:info,dynamic_modules:info"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env,
    )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"variant Envoy exited: {log_path.read_text()[-3000:]}")
        try:
            # ... and fds-block has its first feed list (before it, the web
            # gateway answers 503 blocklist_unavailable: docs/filters/fds-block.md;
            # a native Envoy is ready within milliseconds, before the first poll).
            return requests.get(f"{VARIANT_ADMIN}/ready", timeout=1).status_code == 200 and \
                requests.get(f"{VARIANT_WEB}/health", timeout=1).status_code == 200 and \
                _feed_loaded(VARIANT_ADMIN)
        except requests.RequestException:
            return False

    try:
        wait_until(ready, timeout=60, interval=0.2, message="the variant Envoy")
        yield {"log": log_path, "admin": VARIANT_ADMIN, "web": VARIANT_WEB}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_sanitize_dry_run_lets_a_would_be_denial_through_and_counts_it(variant):
    labels = dict(gateway="web", route="api", reason="invalid_path")
    before = value(scrape(variant["admin"]), "sanitize_dry_run_denied_total", **labels)
    rid = f"dry-{uuid.uuid4()}"
    resp = requests.get(f"{variant['web']}/api/v1/public/%252e%252e/x", headers={"x-request-id": rid}, timeout=TIMEOUT)
    # The enforcing gateway answers 400 for this path; the dry run lets it reach the upstream.
    assert resp.status_code == 200, resp.text
    assert resp.json()["path"].startswith("/api/v1/public/")
    wait_until(lambda: value(scrape(variant["admin"]), "sanitize_dry_run_denied_total", **labels) > before,
               timeout=5, message="sanitize_dry_run_denied_total to grow")
    assert value(scrape(variant["admin"]), "sanitize_denied_total", gateway="web") == 0
    rec = wait_until(lambda: decision_lines(variant["log"], rid), timeout=5, message="the dry-run line")[0]
    assert rec["dry_run"] is True and rec["code"] == "invalid_path" and rec["status"] == 400


def test_drift_reports_nothing_for_the_stack_the_repository_renders(stack):
    # The test stack runs the repository's render plus the tests' probe
    # listener (tests/integration/probe.py), which drift is told about.
    probe = [arg for f in stack.extra_listeners for arg in ("--extra", str(f))]
    proc = subprocess.run([str(_gatewayctl()), "--repo", str(REPO), "drift", "--admin", admin_url().rstrip("/"),
                           *probe],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no drift" in proc.stdout


def test_drift_names_the_listener_filter_and_field_that_changed(variant):
    proc = subprocess.run([str(_gatewayctl()), "--repo", str(REPO), "drift", "--admin", variant["admin"]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    drift = [line for line in proc.stdout.splitlines() if line.startswith("DRIFT ")]
    if wasm_build() in ("chain", "native-chain"):
        # One Envoy filter per gateway (a wasm one, or the native module's
        # chain block): the field is sanitize's part of it.
        expected = "DRIFT web/chain: configuration filters[0].config.dry_run: repository (absent) / live true"
    else:
        expected = "DRIFT web/sanitize: configuration dry_run: repository (absent) / live true"
    assert drift == [expected], proc.stdout
    # The master secret in the VM environment is never printed.
    secret = (REPO / "examples" / "keys" / "app-master.key").read_text().strip()
    assert secret not in proc.stdout + proc.stderr
