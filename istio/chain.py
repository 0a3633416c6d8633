"""The gateway filter chains, read from the ONE Envoy config source.

`envoy/envoy.yaml.tmpl` (rendered by `envoy/render.py`) is the hand-kept copy
of every gateway's filter chain: order, root_id, vm_id, failure policy,
`allow_on_headers_stop_iteration`, VM environment variables and the filter
configuration (an example JSON file inlined by the renderer). Everything under
istio/ is derived from it, so the Istio manifests and the OCI images cannot
drift from what the local stack and its tests run.

Standard library + PyYAML.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "config"
sys.path.insert(0, str(REPO / "envoy"))

import render  # noqa: E402  (envoy/render.py)

# The gateways of the portfolio, in the contract's order (the Envoy listener
# of the same name carries each one's chain).
GATEWAYS = ("web", "app", "secure", "internal", "egress")
# The suite build (filters/suite, `make build-suite`): all eight filters in one
# module, packaged as one more image beside the per-filter ones.
SUITE = "suite"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = "envoy.filters.http.router"


@dataclass(frozen=True)
class Filter:
    """One wasm filter of one gateway's chain, as the Envoy config sets it."""

    gateway: str
    name: str  # Envoy filter name = WasmPlugin name stem (sanitize-body: sanitize's second pass)
    root_id: str
    vm_id: str
    wasm: Path  # the built module (vm_config.code.local.filename)
    config: dict  # the parsed JSON configuration
    config_file: Path  # the example JSON it came from
    failure_policy: str
    allow_on_headers_stop_iteration: bool
    env_keys: tuple[str, ...] = field(default=())  # VM environment variable names

    @property
    def lib_name(self) -> str:
        return self.wasm.stem

    @property
    def filter(self) -> str:
        """The filter it runs = example dir = image name (the module's crate:
        replay_guard.wasm -> replay-guard); the Envoy name for most filters,
        not for a second instance such as the app gateway's sanitize-body."""
        return self.wasm.stem.replace("_", "-")


def workspace_version() -> str:
    """[workspace.package] version of Cargo.toml: the images' tag."""
    data = tomllib.loads((REPO / "Cargo.toml").read_text(encoding="utf-8"))
    return str(data["workspace"]["package"]["version"])


def _example_for(filter_name: str, gateway: str, config: dict) -> Path:
    """The example JSON file whose content the renderer inlined."""
    directory = EXAMPLES / filter_name
    candidates = sorted(directory.glob("*.json"))
    # prefer <gateway>.json when two files carry the same JSON
    candidates.sort(key=lambda p: p.stem != gateway)
    for path in candidates:
        if json.loads(path.read_text(encoding="utf-8")) == config:
            return path
    raise SystemExit(f"{gateway}/{filter_name}: the inlined configuration matches no file in {directory}")


def chains() -> dict[str, list[Filter]]:
    """gateway -> its wasm filters in chain order (router excluded)."""
    doc = yaml.safe_load(render.render(profile="local"))
    listeners = {item["name"]: item for item in doc["static_resources"]["listeners"]}
    out: dict[str, list[Filter]] = {}
    for gateway in GATEWAYS:
        if gateway not in listeners:
            raise SystemExit(f"envoy/envoy.yaml.tmpl has no listener {gateway!r}")
        hcm = listeners[gateway]["filter_chains"][0]["filters"][0]["typed_config"]
        filters: list[Filter] = []
        for item in hcm["http_filters"]:
            if item["name"] == ROUTER:
                continue
            typed = item["typed_config"]
            if typed.get("@type") != WASM_TYPE:
                raise SystemExit(f"{gateway}: non-wasm filter {item['name']!r} cannot be packaged for Istio")
            cfg = typed["config"]
            vm = cfg["vm_config"]
            config = json.loads(cfg["configuration"]["value"])
            module = Path(vm["code"]["local"]["filename"])
            env = vm.get("environment_variables") or {}
            env_keys = tuple(sorted(set(env.get("key_values", {})) | set(env.get("host_env_keys", []))))
            filters.append(Filter(
                gateway=gateway,
                name=item["name"],
                root_id=cfg.get("root_id", ""),
                vm_id=vm.get("vm_id", ""),
                wasm=Path(vm["code"]["local"]["filename"]),
                config=config,
                config_file=_example_for(module.stem.replace("_", "-"), gateway, config),
                failure_policy=cfg.get("failure_policy", "UNSPECIFIED"),
                allow_on_headers_stop_iteration=bool(cfg.get("allow_on_headers_stop_iteration", False)),
                env_keys=env_keys,
            ))
        out[gateway] = filters
    return out


def modules(all_chains: dict[str, list[Filter]] | None = None) -> dict[str, Path]:
    """filter -> built wasm module, for every filter of any chain (first-seen order)."""
    out: dict[str, Path] = {}
    for filters in (all_chains or chains()).values():
        for f in filters:
            if out.setdefault(f.filter, f.wasm) != f.wasm:
                raise SystemExit(f"filter {f.filter!r} uses two modules: {out[f.filter]} and {f.wasm}")
    return out


def packaged_modules(all_chains: dict[str, list[Filter]] | None = None) -> dict[str, Path]:
    """image name -> module: every filter's (modules()) plus the suite's,
    suite.wasm beside the per-filter modules (`make build-suite` writes it)."""
    out = modules(all_chains)
    dirs = {p.parent for p in out.values()}
    if len(dirs) != 1:
        raise SystemExit(f"the filter modules are in several directories: {sorted(map(str, dirs))}")
    out[SUITE] = dirs.pop() / f"{SUITE}.wasm"
    return out
