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
# The suite build (filters/suite, `make build-suite`): all the filters in one
# module, packaged as one more image beside the per-filter ones.
SUITE = "suite"
# The chain build (filters/chain, `make build-chain`): a gateway's filters in
# ONE Envoy filter; module -> image name (the module's stem with `-`, as for
# replay_guard.wasm -> replay-guard). chain_response.wasm runs a gateway with
# a filter that has response callbacks (e2ee: app), chain.wasm every other.
CHAIN_IMAGES = {"chain.wasm": "chain", "chain_response.wasm": "chain-response"}
# The chain's Envoy filter name in a rendered chain config (envoy/render.py).
CHAIN = "chain"
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
    # The per-filter build whatever WASM_BUILD says (make exports it).
    doc = yaml.safe_load(render.render(profile="local", wasm_build="filters"))
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
    """image name -> module: every filter's (modules()) plus the suite's and
    the chain build's two, beside the per-filter modules (`make build-suite`
    writes suite.wasm, `make build-chain` chain.wasm and chain_response.wasm)."""
    out = modules(all_chains)
    dirs = {p.parent for p in out.values()}
    if len(dirs) != 1:
        raise SystemExit(f"the filter modules are in several directories: {sorted(map(str, dirs))}")
    directory = dirs.pop()
    out[SUITE] = directory / f"{SUITE}.wasm"
    for module, image in CHAIN_IMAGES.items():
        out[image] = directory / module
    return out


def is_chain(f: Filter) -> bool:
    """Whether `f` is a gateway's whole chain (gateway_chains), not one filter."""
    return f.wasm.name in CHAIN_IMAGES


def gateway_chains(all_chains: dict[str, list[Filter]] | None = None) -> dict[str, Filter]:
    """gateway -> its chain as ONE Filter, as the chain build runs it: what
    envoy/render.py's chain transform (`--wasm-build chain`, the local
    stack's WASM_BUILD=chain) makes of the gateway's filter blocks: root_id,
    vm_id, module (chain.wasm, or chain_response.wasm for a gateway with a
    response filter), allow_on_headers_stop_iteration (any part's) and the
    configuration, the ordered parts each with its filter's JSON unchanged.

    Two things differ from the local render, on purpose:
    * `disabled_on_routes` is dropped: it names the template's routes, and on
      Istio the routes are the VirtualServices' (the per-filter variants run
      every filter on every route too; docs/istio.md);
    * env_keys are the names the gateway's own parts read (the local render
      merges every gateway's into one VM config, secret values included):
      on Istio they come from the gateway's environment (host_env_keys or
      `valueFrom: HOST`), never from the manifest.
    Checked against chains(): the same parts, in the same order, with the
    same configurations."""
    per_filter = all_chains or chains()
    doc = yaml.safe_load(render.render(profile="local", wasm_build="chain"))
    listeners = {item["name"]: item for item in doc["static_resources"]["listeners"]}
    out: dict[str, Filter] = {}
    for gateway in GATEWAYS:
        hcm = listeners[gateway]["filter_chains"][0]["filters"][0]["typed_config"]
        blocks = [h for h in hcm["http_filters"] if h["name"] == CHAIN]
        if len(blocks) != 1:
            raise SystemExit(f"{gateway}: render.py's chain build gave {len(blocks)} chain filters, not one")
        cfg = blocks[0]["typed_config"]["config"]
        config = json.loads(cfg["configuration"]["value"])
        config.pop("disabled_on_routes", None)
        parts = [(p.get("instance", p["name"]), p["config"]) for p in config["filters"]]
        filters = per_filter[gateway]
        if parts != [(f.name, f.config) for f in filters]:
            raise SystemExit(f"{gateway}: the chain's parts {[n for n, _ in parts]} are not the chain "
                             f"{[f.name for f in filters]} of the per-filter build")
        keys: list[str] = []
        for f in filters:
            keys += [k for k in f.env_keys if k not in keys]
        wasm = Path(cfg["vm_config"]["code"]["local"]["filename"])
        if wasm.name not in CHAIN_IMAGES:
            raise SystemExit(f"{gateway}: unknown chain module {wasm}")
        out[gateway] = Filter(
            gateway=gateway,
            name=CHAIN,
            root_id=cfg.get("root_id", ""),
            vm_id=cfg["vm_config"].get("vm_id", ""),
            wasm=wasm,
            config=config,
            config_file=render.TEMPLATE,
            failure_policy=cfg.get("failure_policy", "UNSPECIFIED"),
            allow_on_headers_stop_iteration=bool(cfg.get("allow_on_headers_stop_iteration", False)),
            env_keys=tuple(sorted(keys)),
        )
    return out
