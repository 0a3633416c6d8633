"""Live configuration: the filters' configurations pushed into the running
Envoys (ECDS from watched files, envoy/render.py's dynamic form) by
`Stack.reload` / `python envoy/stack.py reload` (`make reload`).

The change pushed is sanitize's web config with one more header to strip
(`x-live-probe`): the echo reflects what it received, so whether the header
reached the upstream shows which config served a request. The invalid push
adds an unknown field, which sanitize's on_configure refuses
(deny_unknown_fields). Every test ends with the shipped configs pushed back
(the autouse fixture), so later modules meet the stack as it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from helpers import REPO, TIMEOUT, echo_stats, wait_until, wasm_build

WEB_SANITIZE = "config/sanitize/web.json"
PROBE_HEADER = "x-live-probe"
GATEWAYCTL = REPO / "target" / "release" / "gatewayctl"


def ecds_name() -> str:
    """The ECDS resource that carries web's sanitize config in this build."""
    return "web.chain" if wasm_build() in ("chain", "native-chain") else "web.sanitize"


@pytest.fixture(autouse=True)
def restore(stack):
    """Whatever a test pushed, the shipped configs are pushed back after it."""
    yield
    assert stack.reload() == {1: "accepted", 2: "accepted"}


def sanitize_variant(tmp_path: Path, **changes) -> Path:
    cfg = json.loads((REPO / "examples" / WEB_SANITIZE).read_text(encoding="utf-8"))
    cfg["remove_headers"]["exact"].append(PROBE_HEADER)
    cfg.update(changes)
    path = tmp_path / "web-sanitize.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def probe_reaches_upstream(stack, replica: int, path: str = "/api/v1/public/live") -> bool:
    resp = requests.get(stack.url("web", path, replica), headers={PROBE_HEADER: "1", "connection": "close"},
                        timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return PROBE_HEADER in resp.json()["headers"]


def counters(stack, replica: int) -> dict[str, int]:
    return stack.ecds_stats(replica)[ecds_name()]


def test_the_stack_serves_every_wasm_filter_config_by_ecds(stack):
    for r in (1, 2):
        stats = stack.ecds_stats(r)
        assert ecds_name() in stats
        assert all(c.get("update_success", 0) >= 1 and c.get("update_rejected", 0) == 0 for c in stats.values()), stats
        dump = requests.get(stack.admin_url("/config_dump", r), timeout=TIMEOUT).json()
        ecds = next(c for c in dump["configs"] if c["@type"].endswith("EcdsConfigDump"))
        assert {f["ecds_filter"]["name"] for f in ecds["ecds_filters"]} == set(stats)


def test_a_valid_change_takes_effect_on_both_replicas(stack, tmp_path):
    assert probe_reaches_upstream(stack, 1) and probe_reaches_upstream(stack, 2)
    before = {r: counters(stack, r) for r in (1, 2)}

    started = time.monotonic()
    assert stack.reload({WEB_SANITIZE: sanitize_variant(tmp_path)}) == {1: "accepted", 2: "accepted"}
    assert time.monotonic() - started < 5, "a valid change takes effect within a few seconds"

    for r in (1, 2):
        # reload() returned after the stat moved: the next request sees the new config.
        assert not probe_reaches_upstream(stack, r)
        after = counters(stack, r)
        assert after["update_success"] == before[r]["update_success"] + 1
        assert after["update_rejected"] == before[r]["update_rejected"]
    assert stack.last_reload[1] == {ecds_name(): "accepted"}


def test_an_in_flight_request_finishes_across_a_reload(stack, tmp_path):
    results: dict[int, requests.Response | BaseException] = {}

    def slow(replica: int) -> None:
        try:
            results[replica] = requests.get(
                stack.url("web", "/api/v1/unstable/live?delay_ms=3000", replica),
                headers={PROBE_HEADER: "1", "connection": "close"}, timeout=TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            results[replica] = exc

    seen = echo_stats()
    threads = [threading.Thread(target=slow, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    # Both requests passed the filters and wait at the echo.
    wait_until(lambda: echo_stats() >= seen + 2, timeout=5, message="the slow requests to reach the echo")

    assert stack.reload({WEB_SANITIZE: sanitize_variant(tmp_path)}) == {1: "accepted", 2: "accepted"}
    assert all(t.is_alive() for t in threads), "the slow requests must still be in flight after the reload"
    for r in (1, 2):
        assert not probe_reaches_upstream(stack, r)  # new requests: the new config

    for t in threads:
        t.join(TIMEOUT)
    for r in (1, 2):
        resp = results[r]
        assert isinstance(resp, requests.Response), resp
        assert resp.status_code == 200, resp.text
        # It was checked by the config it started with (the header got through).
        assert resp.json()["headers"].get(PROBE_HEADER) == "1"


def test_an_invalid_change_is_refused_and_the_old_config_keeps_serving(stack, tmp_path):
    assert stack.reload({WEB_SANITIZE: sanitize_variant(tmp_path)}) == {1: "accepted", 2: "accepted"}
    before = {r: counters(stack, r) for r in (1, 2)}
    bad = tmp_path / "bad.json"
    cfg = json.loads((REPO / "examples" / WEB_SANITIZE).read_text(encoding="utf-8"))
    cfg["no_such_field"] = True
    bad.write_text(json.dumps(cfg), encoding="utf-8")

    assert stack.reload({WEB_SANITIZE: bad}) == {1: "rejected", 2: "rejected"}

    for r in (1, 2):
        after = counters(stack, r)
        assert after["update_rejected"] == before[r]["update_rejected"] + 1
        assert after["config_fail"] == before[r]["config_fail"] + 1
        assert after["update_success"] == before[r]["update_success"]
        # The config accepted before still serves: the probe header is stripped.
        assert not probe_reaches_upstream(stack, r)
        # The filter's own refusal names the field in Envoy's log.
        assert any("invalid config" in line and "no_such_field" in line for line in stack.last_reload_log[r]), \
            stack.last_reload_log
    # The watched file went back to what runs (a restart starts with it).
    ecds_file = stack.ecds_dir_of(1) / f"{ecds_name()}.json"
    assert "no_such_field" not in ecds_file.read_text(encoding="utf-8")

    # drift: the render (on disk) against what runs.
    if not GATEWAYCTL.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "gatewayctl"], cwd=REPO, check=True)
    for r in (1, 2):
        proc = subprocess.run([str(GATEWAYCTL), "--repo", str(REPO), "drift", "--admin", stack.admin_url("", r),
                               "--rendered", str(stack.config_path_of(r))],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        drift = [line for line in proc.stdout.splitlines() if line.startswith("DRIFT ")]
        # Envoy's dump shows the refused config; the stat the running version.
        filt = "chain" if wasm_build() in ("chain", "native-chain") else "sanitize"
        assert len(drift) == 1, proc.stdout
        assert drift[0].startswith(f"DRIFT web/{filt}: Envoy refused the config it read last (ECDS {ecds_name()} "), \
            proc.stdout

    # Pushing the shipped config again: every replica reads what runs, no drift.
    assert stack.reload() == {1: "accepted", 2: "accepted"}
    for r in (1, 2):
        proc = subprocess.run([str(GATEWAYCTL), "--repo", str(REPO), "drift", "--admin", stack.admin_url("", r),
                               "--rendered", str(stack.config_path_of(r))],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "no drift" in proc.stdout, proc.stdout + proc.stderr


def test_make_reload_prints_each_replicas_verdict_and_fails_on_a_rejection(stack, tmp_path):
    cli = [sys.executable, str(REPO / "envoy" / "stack.py"), "reload", "--config", str(stack.config_path)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_body_bytes": "lots"}), encoding="utf-8")

    refused = subprocess.run([*cli, "--override", f"{WEB_SANITIZE}={bad}"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"replica 1 (admin {stack.admin_url('', 1)}): rejected ({ecds_name()} rejected)" in refused.stdout
    assert f"replica 2 (admin {stack.admin_url('', 2)}): rejected ({ecds_name()} rejected)" in refused.stdout

    unknown = subprocess.run([*cli, "--override", f"config/sanitize/nope.json={bad}"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "includes no such file" in unknown.stderr, unknown.stderr

    same = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "replica 1" in same.stdout and "replica 2" in same.stdout and "accepted" in same.stdout


# ------------------------------------------------------------------ render.py's dynamic form

@pytest.mark.parametrize("build", ["filters", "suite", "chain"])
def test_the_dynamic_form_moves_every_wasm_filter_into_its_own_ecds_file(build, tmp_path):
    import render  # envoy/render.py (on sys.path via helpers)
    import yaml

    static = render.render("local", wasm_build=build)
    boot, files = render.to_dynamic(static, tmp_path)
    cfg, dyn = yaml.safe_load(static), yaml.safe_load(boot)
    assert dyn["node"]["id"] and dyn["node"]["cluster"]
    moved = 0
    for lis_static, lis in zip(cfg["static_resources"]["listeners"], dyn["static_resources"]["listeners"]):
        hcm_static = lis_static["filter_chains"][0]["filters"][0]["typed_config"]
        hcm = lis["filter_chains"][0]["filters"][0]["typed_config"]
        renamed = set()
        for before, after in zip(hcm_static["http_filters"], hcm["http_filters"]):
            if before.get("typed_config", {}).get("@type") != render.WASM_FILTER_TYPE:
                assert after == before
                continue
            moved += 1
            renamed.add(before["name"])
            assert after["name"] == f"{lis['name']}.{before['name']}" and "typed_config" not in after
            source = after["config_discovery"]["config_source"]["path_config_source"]["path"]
            assert source == str(tmp_path / f"{after['name']}.json")
            doc = json.loads(files[f"{after['name']}.json"])
            # The filter's Wasm config moves unchanged.
            assert doc["resources"] == [{"@type": render.ECDS_RESOURCE_TYPE, "name": after["name"],
                                         "typed_config": before["typed_config"]}]
        # Per-route settings follow the rename (the bare listener's routes
        # name filters it does not run: left alone).
        for vh in hcm.get("route_config", {}).get("virtual_hosts", []):
            for route in [vh, *vh.get("routes", [])]:
                assert not set(route.get("typed_per_filter_config", {})) & renamed, route
    assert moved == len(files) > 0


def test_an_override_the_render_does_not_include_is_an_error(tmp_path):
    import render

    with pytest.raises(render.RenderError, match="includes no such file"):
        render.render("local", include_overrides={"config/sanitize/nope.json": tmp_path / "x.json"})
