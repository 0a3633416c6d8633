"""Secrets for native filters (docs/native.md, "Secrets"), and e2ee's AES-GCM.

A wasm block gives its filter's secrets to its VM (vm_config
.environment_variables.key_values); a dynamic module shares Envoy's process
environment, where the filters read them (std::env::var). render.py's
to_native_env converts such a gateway and returns the variables; the stack
starts Envoy with them, `render.py -o` writes them to <output>.env (docker
compose's env_file). One process has one environment: a gateway that would
need another value for a variable already set keeps its wasm blocks.

The rendering checks need no module; the load checks need
`make build-native-module` (make test-native builds it first).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "build" / "native" / "libgateway_native.so"
sys.path.insert(0, str(REPO / "envoy"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import native_app  # noqa: E402  (tests/integration/native_app.py)
import render  # noqa: E402  (envoy/render.py)

SECRET = (REPO / "examples" / "keys" / "app-master.key").read_text().strip()
VAR = "REPLAY_GUARD_MASTER_V1"
#: The shipped internal gateway's oidc client secret (natively in Envoy's environment too).
OIDC = {"OIDC_CLIENT_SECRET": (REPO / "examples" / "keys" / "oidc-client-secret").read_text().strip()}


def lite(tmp_path: Path, name: str, port: int, secret: str | None = None, reports: bool = False) -> Path:
    """An extra listener file: the cut app gateway (native_app), optionally
    with another value of the master secret or replay-guard's reports on."""
    cfg = yaml.safe_load(render.render("local", wasm_build="filters"))
    lis = native_app.app_lite_listener(cfg, name, port)
    for h in lis["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
        conf = h.get("typed_config", {}).get("config", {})
        kv = conf.get("vm_config", {}).get("environment_variables", {}).get("key_values")
        if kv and secret is not None:
            kv[VAR] = secret
        if reports and conf.get("root_id") == "replay_guard":
            app = [x for x in cfg["static_resources"]["listeners"] if x["name"] == "app"][0]
            [orig] = [f for f in app["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                      if f["name"] == "replay-guard"]
            conf["configuration"] = orig["typed_config"]["config"]["configuration"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(native_app.dump_items([lis]))
    return path


def kinds(text: str) -> dict[str, list[str]]:
    """listener -> the @type tails of its HTTP filters."""
    cfg = yaml.safe_load(text)
    return {lis["name"]: [h["typed_config"]["@type"].rsplit(".", 1)[-1]
                          for h in lis["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]]
            for lis in cfg["static_resources"]["listeners"]}


def test_a_gateway_with_vm_variables_converts_and_its_variables_go_to_the_environment(tmp_path):
    env: dict[str, str] = {}
    text = render.render("local", wasm_build="native", extra_listeners=[lite(tmp_path, "lite", 10060)],
                         environment=env)
    k = kinds(text)
    assert k["lite"] == ["DynamicModuleFilter"] * 5 + ["Router"]
    assert env == {VAR: SECRET, **OIDC}
    assert SECRET not in yaml.safe_dump(
        [x for x in yaml.safe_load(text)["static_resources"]["listeners"] if x["name"] == "lite"])
    # the shipped app gateway runs natively too, with the same secret
    assert "Wasm" not in k["app"] and "DynamicModuleFilter" in k["app"]


def test_the_shipped_gateways_need_the_app_master_secret_and_the_oidc_client_secret():
    """The app gateway's replay-guard and e2ee share one master secret
    variable; the internal gateway's oidc has its client secret; every
    shipped gateway runs natively."""
    env: dict[str, str] = {}
    k = kinds(render.render("local", wasm_build="native", environment=env))
    assert env == {VAR: SECRET, **OIDC}
    assert all("Wasm" not in filters for filters in k.values()), k
    assert k["internal"] == ["DynamicModuleFilter"] * 3 + ["Router"]


def test_a_gateway_needing_another_value_of_a_variable_keeps_its_wasm_blocks(tmp_path):
    env: dict[str, str] = {}
    a, b = lite(tmp_path, "lite", 10060), lite(tmp_path, "lite_other", 10061, secret="b3RoZXI=" * 6)
    k = kinds(render.render("local", wasm_build="native", extra_listeners=[a, b], environment=env))
    assert k["lite"][0] == "DynamicModuleFilter"
    assert "Wasm" in k["lite_other"] and "DynamicModuleFilter" not in k["lite_other"]
    assert env == {VAR: SECRET, **OIDC}
    # the same value twice: both convert, one variable
    env2: dict[str, str] = {}
    c = lite(tmp_path, "lite_same", 10062)
    k = kinds(render.render("local", wasm_build="native", extra_listeners=[a, c], environment=env2))
    assert k["lite_same"][0] == "DynamicModuleFilter" and env2 == {VAR: SECRET, **OIDC}


def test_replay_guard_with_reports_is_native_ready(tmp_path):
    """Its reports leave from one queue per configuration that the main
    thread's root drains on time (filters/replay-guard, `Outbox`)."""
    k = kinds(render.render("local", wasm_build="native",
                            extra_listeners=[lite(tmp_path, "lite", 10060, reports=True)]))
    assert "Wasm" not in k["lite"] and "DynamicModuleFilter" in k["lite"]


def test_render_writes_the_environment_beside_the_config_and_removes_it_for_wasm(tmp_path):
    out = tmp_path / "envoy.yaml"
    extra = lite(tmp_path, "lite", 10060)
    py = str(REPO / ".venv" / "bin" / "python")
    subprocess.run([py, str(REPO / "envoy" / "render.py"), "--wasm-build", "native", "--extra", str(extra),
                    "-o", str(out)], check=True, capture_output=True)
    env_file = tmp_path / "envoy.env"
    assert f"{VAR}={SECRET}" in env_file.read_text().splitlines()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    subprocess.run([py, str(REPO / "envoy" / "render.py"), "--wasm-build", "filters", "-o", str(out)],
                   check=True, capture_output=True)
    assert not env_file.exists()


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "envoy"), "--mode", "validate", "--disable-hot-restart",
         "--log-level", "info", "-c", str(config)],
        capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != VAR},
             "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(MODULE.parent), **env},
    )


def test_the_native_filters_read_their_secret_from_envoys_environment(tmp_path):
    if not MODULE.exists():
        pytest.fail(f"{MODULE} missing: run `make build-native-module`")
    env: dict[str, str] = {}
    cfg = tmp_path / "native.yaml"
    cfg.write_text(render.render("local", wasm_build="native", extra_listeners=[lite(tmp_path, "lite", 10060)],
                                 environment=env))
    ok = validate(cfg, env)
    log = ok.stdout + ok.stderr
    assert ok.returncode == 0, log[-3000:]
    assert "native log replay_guard: replay-guard: configured" in log
    assert "native log e2ee: e2ee: configured" in log
    # without it, the filter refuses its configuration, naming the field
    bad = validate(cfg, {})
    log = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert f"invalid config at `master_secrets[0].env`: environment variable {VAR} is not set" in log


def test_the_module_links_rings_aes_gcm_for_e2ee():
    """e2ee's codec in the module is built with `native-aead` (ring's
    AES-GCM), not RustCrypto's: the module carries ring's AES-GCM code."""
    if not MODULE.exists():
        pytest.fail(f"{MODULE} missing: run `make build-native-module`")
    data = MODULE.read_bytes()
    assert b"ring-0.17" in data and b"aead/aes_gcm" in data
