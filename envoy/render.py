#!/usr/bin/env python3
"""Render envoy/envoy.yaml.tmpl, the one hand-kept Envoy config, for a profile.

    python3 envoy/render.py --profile local              # -> build/envoy/envoy.yaml
    python3 envoy/render.py --profile compose            # -> build/compose/envoy.yaml
    python3 envoy/render.py --profile compose --local-paths -o build/validate/compose.yaml
    python3 envoy/render.py --profile local --extra bench-listeners.yaml -o build/bench/envoy.yaml
    WASM_BUILD=suite .venv/bin/python envoy/render.py --profile local   # or --wasm-build suite

Template syntax (plain text substitution; the result is YAML that Envoy reads):

  ${NAME}             a profile variable (see PROFILES); an unknown name is an error.
  ${json:REL/PATH}    the JSON file <include-root>/REL/PATH (include-root defaults to
                      examples/), parsed (duplicate keys rejected), re-serialised
                      compactly and inlined as ONE JSON string literal, which is also
                      a valid YAML double-quoted scalar. Missing or invalid: an error.
  ${text:REL/PATH}    the one-line text file <include-root>/REL/PATH (a demo secret such as
                      keys/app-master.key), stripped and inlined as one JSON string
                      literal, so that secrets live in their own files and never in
                      the template. Missing, empty, multi-line or non-ASCII: an error.
  # @extra-listeners  a line of its own: replaced by the --extra files (YAML list
  # @extra-clusters   items written at column 0, re-indented to the marker's column).
                      Extra files go through the same substitutions.

Wasm build (--wasm-build, default: the WASM_BUILD environment variable, else
"filters"): "filters" renders the template as written, one module per filter
(<filter>.wasm, one vm_id per filter shared by every gateway); "suite" then
points every block of the seven filter modules at ${WASM_DIR}/suite.wasm with
ONE vm_id ("suite") for the whole process: the module is compiled once and
runs in one VM per worker, each filter of each gateway keeping its root_id and
configuration; the environment variables of all filters are merged into that
VM's config. "chain" replaces each gateway's filter blocks by ONE filter that
runs ${WASM_DIR}/chain.wasm (vm_id "chain"; chain_response.wasm, vm_id
"chain_response", for a gateway with a filter that has response callbacks:
e2ee) with the ordered list of that gateway's filters and their
configurations as its configuration (a filter that appears twice, as the app
gateway's sanitize-body, keeps its Envoy filter name as its instance name);
per-route `disabled` FilterConfigs of those filters become the chain's
`disabled_on_routes`; a listener without wasm filters stays as it is; a wasm
filter the chain cannot run is an error. See docs/chain.md and
docs/performance.md.
"native" replaces the wasm blocks of
each gateway whose filters the native dynamic module serves (NATIVE_FILTERS)
by DynamicModuleFilter blocks (module gateway_native, found by Envoy through
ENVOY_DYNAMIC_MODULES_SEARCH_PATH, which envoy/stack.py points at
build/native), one per filter, same names, same JSON configurations; the
other gateways keep their wasm blocks (docs/native.md). The converted
blocks' VM environment variables (the filters' secrets) must be in Envoy's
own process environment: envoy/stack.py starts Envoy with them, and a
rendered file gets them beside it as <output>.env (docker compose's
env_file; mode 0600).
"native-chain" is the chain transform, then the native one of the chain
blocks: each gateway the native build converts runs as ONE
DynamicModuleFilter (filter_name "chain", the chain's configuration), the
others (the same decision as "native", on the per-filter blocks) stay wasm
chains; environment as for "native" (docs/native.md, "The chain as one
native filter").

Standard library only, so that it runs before any virtualenv exists (the
suite build alone needs PyYAML: the project venv has it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "envoy" / "envoy.yaml.tmpl"
DEFAULT_INCLUDE_ROOT = REPO / "examples"

# Variables whose value is a filesystem path. `--local-paths` replaces only
# these in a non-local profile, so that a compose render can be validated by
# the local Envoy binary without being a different config.
PATH_VARIABLES = ("WASM_DIR", "CERT_DIR", "CONFIG_DIR")


# The modules `make build-wasm` / `build-suite` write (cargo's output after
# filters/wasm-opt/optimize.sh): what the local Envoy, the bench and the tests load.
LOCAL_WASM_DIR = REPO / "build" / "wasm"


def _local_paths() -> dict[str, str]:
    return {
        "WASM_DIR": str(LOCAL_WASM_DIR),
        "CERT_DIR": str(REPO / "examples" / "certs"),
        "CONFIG_DIR": str(REPO / "examples" / "config"),
    }


PROFILES: dict[str, dict[str, str]] = {
    # make run / the integration tests: everything on loopback.
    "local": {
        "LISTEN_ADDR": "127.0.0.1",
        "ADMIN_ADDR": "127.0.0.1",
        "UPSTREAM_HOST": "127.0.0.1",
        "UPSTREAM_DISCOVERY": "STATIC",
        "STORE_HOST": "127.0.0.1",
        **_local_paths(),
    },
    # envoy/docker-compose.yaml: paths are the container's mounts, the demo
    # services are reached by their compose service name.
    "compose": {
        "LISTEN_ADDR": "0.0.0.0",
        "ADMIN_ADDR": "0.0.0.0",
        "UPSTREAM_HOST": "demo-services",
        "UPSTREAM_DISCOVERY": "STRICT_DNS",
        # each Envoy replica's own sidecar; replica 2: gateway-store-2 (--replica)
        "STORE_HOST": "gateway-store",
        "WASM_DIR": "/etc/envoy/wasm",
        "CERT_DIR": "/etc/envoy/certs",
        "CONFIG_DIR": "/etc/envoy/config",
    },
}

DEFAULT_OUTPUT = {
    "local": REPO / "build" / "envoy" / "envoy.yaml",
    "compose": REPO / "build" / "compose" / "envoy.yaml",
}

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
MARKERS = ("# @extra-listeners", "# @extra-clusters")
WASM_BUILDS = ("filters", "suite", "chain", "native", "native-chain")
#: The builds that run the gateway_native dynamic module: their converted
#: blocks' secrets go to Envoy's process environment (<output>.env).
NATIVE_BUILDS = ("native", "native-chain")
#: The per-filter modules that suite.wasm contains (by file name).
SUITE_MODULES = frozenset({
    "sanitize.wasm", "jwt.wasm", "replay_guard.wasm", "e2ee.wasm", "fds_block.wasm",
    "passport.wasm", "route_breaker.wasm", "san_authz.wasm", "oidc.wasm",
})


#: Replicas of the stack (../shared/demo-contract.md): replica 2 runs the same
#: rendered config with every listener port + 100, admin 9902 and its own
#: gateway-store sidecar on 18091.
REPLICAS = (1, 2)
ADMIN_PORT = 9901
STORE_PORT = 18090
LISTENER_PORTS = range(10000, 11000)


def replica_port(port: int, replica: int) -> int:
    """Where replica `replica` serves what replica 1 serves on `port`."""
    if replica not in REPLICAS:
        raise RenderError(f"unknown replica {replica} (known: {REPLICAS})")
    step = replica - 1
    if port == ADMIN_PORT:
        return port + step
    if port == STORE_PORT:
        return port + step
    if port in LISTENER_PORTS:
        return port + 100 * step
    return port


_PORT_VALUE = re.compile(r"(\bport_value:\s*)(\d+)")


def to_replica(text: str, replica: int) -> str:
    """The rendered config `text` as replica `replica` runs it: only the
    listener, admin and sidecar ports differ (replica_port)."""
    if replica == 1:
        return text
    return _PORT_VALUE.sub(lambda m: f"{m.group(1)}{replica_port(int(m.group(2)), replica)}", text)


class RenderError(Exception):
    """The template, a variable, an include or an extra file is wrong."""


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def inline_json(path: Path) -> str:
    """The JSON file at `path` as one JSON string literal (a YAML scalar)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"cannot read included JSON {path}: {exc.strerror}") from exc
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as exc:
        raise RenderError(f"included JSON {path} is invalid: {exc}") from exc
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # A JSON string literal with ensure_ascii: only printable ASCII, escapes
    # YAML understands in double-quoted scalars (\" \\ \n \uXXXX ...).
    return json.dumps(compact, ensure_ascii=True)


def inline_text(path: Path) -> str:
    """The one-line text file at `path`, stripped, as one JSON string literal."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"cannot read included text {path}: {exc}") from exc
    if not text or "\n" in text or not text.isprintable():
        raise RenderError(f"included text {path} must be one non-empty printable line")
    return json.dumps(text, ensure_ascii=True)


def substitute(text: str, variables: Mapping[str, str], include_root: Path, origin: str,
               include_overrides: Mapping[str, Path] | None = None,
               used: set[str] | None = None) -> str:
    """Replace every ${...} in `text`; `origin` names the file in errors.

    include_overrides: REL -> file read instead of include_root/REL (stack.py
    reload --override); `used` collects every REL the text includes."""
    include_overrides = include_overrides or {}

    def include_path(rel: str) -> Path:
        if used is not None:
            used.add(rel)
        return Path(include_overrides[rel]) if rel in include_overrides else include_root / rel

    def replace(match: re.Match[str], line_index: int) -> str:
        body = match.group(1)
        where = f"{origin}:{line_index + 1}"
        if body.startswith("text:"):
            rel = body[len("text:"):]
            if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                raise RenderError(f"{where}: ${{text:...}} needs a relative path inside {include_root}, got {rel!r}")
            return inline_text(include_path(rel))
        if body.startswith("json:"):
            rel = body[len("json:"):]
            if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                raise RenderError(f"{where}: ${{json:...}} needs a relative path inside {include_root}, got {rel!r}")
            return inline_json(include_path(rel))
        if not _NAME.match(body):
            raise RenderError(f"{where}: malformed placeholder ${{{body}}}")
        if body not in variables:
            known = ", ".join(sorted(variables))
            raise RenderError(f"{where}: unknown variable ${{{body}}} (known: {known})")
        return variables[body]

    # Comment lines are documentation: they may show placeholders verbatim.
    out = []
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            out.append(line)
        else:
            out.append(_PLACEHOLDER.sub(lambda m: replace(m, offset), line))
        offset += 1
    return "".join(out)


def _indent(block: str, indent: str) -> str:
    return "".join((indent + line) if line.strip() else line for line in block.splitlines(keepends=True))


def splice(text: str, marker: str, blocks: list[str]) -> str:
    """Replace the single line `marker` with `blocks`, indented to its column."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(hits) != 1:
        raise RenderError(f"template must contain exactly one '{marker}' line, found {len(hits)}")
    i = hits[0]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    body = "".join(_indent(b if b.endswith("\n") else b + "\n", indent) for b in blocks)
    lines[i] = f"{indent}{marker} (begin)\n{body}{indent}{marker} (end)\n" if blocks else lines[i]
    return "".join(lines)


def to_suite(text: str, wasm_dir: str) -> str:
    """The rendered config `text` with every filter of SUITE_MODULES running
    from `wasm_dir`/suite.wasm in ONE VM per worker for the whole process
    (vm_id "suite"): the module is compiled once, every gateway's filters are
    root contexts of that VM (each keeps its root_id and configuration), and
    their shared-data keys and queues are namespaced per filter (jwt.*,
    replay-guard/*, passport/*, route-breaker/*, fds-block/*: filter_core::shared::key), so one vm_id is safe."""
    try:
        import yaml  # noqa: PLC0415 (only the suite build needs it)
    except ImportError as exc:
        raise RenderError("the suite build needs PyYAML: run with the project venv (.venv/bin/python)") from exc
    # A JSON round trip unties YAML aliases: every filter block gets its own copy.
    cfg = json.loads(json.dumps(yaml.safe_load(text)))
    plugins = []
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for net in chain.get("filters", []):
                for http in net.get("typed_config", {}).get("http_filters", []):
                    tc = http.get("typed_config", {})
                    conf = tc.get("config", {})
                    code = conf.get("vm_config", {}).get("code", {}).get("local", {}).get("filename", "")
                    if tc.get("@type", "").endswith(".filters.http.wasm.v3.Wasm") and Path(code).name in SUITE_MODULES:
                        plugins.append(conf)
    if not plugins:
        return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=1 << 20)
    # Envoy shares a VM only between plugins whose vm_config is identical, so
    # the environment of every filter is merged into one (a clash is an error).
    env: dict[str, str] = {}
    host_keys: list[str] = []
    for conf in plugins:
        ev = conf["vm_config"].get("environment_variables", {})
        for k, v in ev.get("key_values", {}).items():
            if env.get(k, v) != v:
                raise RenderError(f"suite build: environment variable {k} differs between filters")
            env[k] = v
        host_keys += [k for k in ev.get("host_env_keys", []) if k not in host_keys]
    vm = {
        "vm_id": "suite",
        "runtime": plugins[0]["vm_config"].get("runtime", "envoy.wasm.runtime.v8"),
        "code": {"local": {"filename": f"{wasm_dir}/suite.wasm"}},
    }
    if env or host_keys:
        vm["environment_variables"] = {**({"key_values": env} if env else {}),
                                       **({"host_env_keys": host_keys} if host_keys else {})}
    for conf in plugins:
        conf["vm_config"] = json.loads(json.dumps(vm))
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=1 << 20)


#: Per-filter module file name -> the filter's name in a chain configuration.
CHAIN_NAMES = {
    "sanitize.wasm": "sanitize", "jwt.wasm": "jwt", "replay_guard.wasm": "replay-guard",
    "e2ee.wasm": "e2ee", "fds_block.wasm": "fds-block", "passport.wasm": "passport",
    "route_breaker.wasm": "route-breaker", "san_authz.wasm": "san-authz", "oidc.wasm": "oidc",
}
#: Filters with response callbacks (filters/chain/src/config.rs
#: RESPONSE_FILTERS): a gateway with one runs chain_response.wasm (which
#: exports the response callbacks), every other gateway chain.wasm (which
#: does not, so Envoy never enters its VM for a response).
CHAIN_RESPONSE_FILTERS = frozenset({"e2ee"})
#: Chain module -> its vm_id (one VM per worker for each module).
CHAIN_MODULES = {"chain.wasm": "chain", "chain_response.wasm": "chain_response"}


def _wasm_module(http: dict) -> str | None:
    """The per-filter module file name an HTTP filter block runs, or None."""
    tc = http.get("typed_config", {})
    if not tc.get("@type", "").endswith(".filters.http.wasm.v3.Wasm"):
        return None
    code = tc.get("config", {}).get("vm_config", {}).get("code", {}).get("local", {}).get("filename", "")
    name = Path(code).name
    return name if name in CHAIN_NAMES else None


def _route_disables(route_config: dict, names: dict[str, str], where: str) -> dict[str, list[str]]:
    """Route name -> chain filters disabled there, from (and removed from) the
    routes' typed_per_filter_config. `names`: Envoy filter name -> chain name."""
    out: dict[str, list[str]] = {}
    seen: dict[str, list[str]] = {}

    def take(tpfc: dict) -> list[str]:
        off = []
        for key in list(tpfc):
            if key in names:
                v = tpfc.pop(key)
                if not (isinstance(v, dict) and v.get("disabled") is True):
                    raise RenderError(f"{where}: chain build: per-route config of {key} other than 'disabled: true' is not supported")
                off.append(names[key])
        return off

    for vh in route_config.get("virtual_hosts", []):
        if take(vh.get("typed_per_filter_config", {})):
            raise RenderError(f"{where}: chain build: a virtual host disables a filter (disable it per route)")
        if vh.get("typed_per_filter_config") == {}:
            del vh["typed_per_filter_config"]
        for r in vh.get("routes", []):
            tpfc = r.get("typed_per_filter_config", {})
            off = sorted(take(tpfc))
            if "typed_per_filter_config" in r and not tpfc:
                del r["typed_per_filter_config"]
            rname = r.get("name")
            if rname is None:
                if off:
                    raise RenderError(f"{where}: chain build: a route that disables a filter needs a name")
                continue
            if seen.setdefault(rname, off) != off:
                raise RenderError(f"{where}: chain build: routes named {rname!r} disable different filters")
            if off:
                out[rname] = off
    return out


def to_chain(text: str, wasm_dir: str) -> str:
    """The rendered config `text` with each HTTP connection manager's wasm
    filter blocks replaced by ONE filter running `wasm_dir`/chain.wasm (vm_id
    "chain", one VM per worker for the process), or chain_response.wasm
    (vm_id "chain_response") when a filter of the gateway has response
    callbacks (CHAIN_RESPONSE_FILTERS): its configuration is
    {"filters": [{"name", "instance"?, "config"}...], "disabled_on_routes"}
    in the gateway's order, each filter's configuration unchanged."""
    try:
        import yaml  # noqa: PLC0415 (only the suite and chain builds need it)
    except ImportError as exc:
        raise RenderError("the chain build needs PyYAML: run with the project venv (.venv/bin/python)") from exc
    cfg = json.loads(json.dumps(yaml.safe_load(text)))
    _chain_cfg(cfg, wasm_dir)
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=1 << 20)


def _chain_cfg(cfg: dict, wasm_dir: str, native: frozenset[int] = frozenset()) -> None:
    """to_chain on the parsed config `cfg`, in place. The connection managers
    whose id() is in `native` get their chain as the native module's `chain`
    filter (native_chain_block) instead of a wasm one (to_native_chain_env)."""
    chains = []
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        for fc in listener.get("filter_chains", []):
            for net in fc.get("filters", []):
                hcm = net.get("typed_config", {})
                filters = hcm.get("http_filters", [])
                idx = [i for i, h in enumerate(filters)
                       if h.get("typed_config", {}).get("@type", "").endswith(".filters.http.wasm.v3.Wasm")]
                # A listener with no gateway filter at all (the bench's no-op
                # floors, tests/bench) is not a gateway: it stays as it is.
                if not any(_wasm_module(filters[i]) is not None for i in idx):
                    continue
                where = f"listener {listener.get('name')}"
                # Every wasm filter of a gateway runs inside its chain: one
                # the chain cannot run is an error, never a silent fallback
                # to per-filter blocks.
                for i in idx:
                    if _wasm_module(filters[i]) is None:
                        raise RenderError(f"{where}: chain build: the chain cannot run wasm filter "
                                          f"{filters[i].get('name')!r} (known modules: {', '.join(sorted(CHAIN_NAMES))})")
                if idx != list(range(idx[0], idx[-1] + 1)):
                    raise RenderError(f"{where}: chain build: the gateway's wasm filters must be adjacent")
                blocks = [filters[i] for i in idx]
                parts, names, stop_iter = [], {}, False
                for h in blocks:
                    conf = h["typed_config"]["config"]
                    chain_name = CHAIN_NAMES[_wasm_module(h)]
                    # A filter that runs twice (the app gateway's
                    # sanitize-body): the Envoy filter's name becomes the
                    # part's instance name (filters/chain/src/config.rs).
                    instance = h.get("name", chain_name)
                    if instance in names:
                        raise RenderError(f"{where}: chain build: two wasm filters named {instance!r}")
                    names[instance] = instance
                    value = conf.get("configuration", {}).get("value", "")
                    try:
                        part = json.loads(value)
                    except ValueError as exc:
                        raise RenderError(f"{where}: {instance}'s configuration is not JSON: {exc}") from exc
                    entry = {"name": chain_name}
                    if instance != chain_name:
                        entry["instance"] = instance
                    entry["config"] = part
                    parts.append(entry)
                    stop_iter = stop_iter or bool(conf.get("allow_on_headers_stop_iteration"))
                    if conf.get("failure_policy", "FAIL_CLOSED") != "FAIL_CLOSED":
                        raise RenderError(f"{where}: chain build: {chain_name} is not FAIL_CLOSED")
                doc: dict = {"filters": parts}
                rc = hcm.get("route_config")
                if rc is not None:
                    off = _route_disables(rc, names, where)
                    if off:
                        doc["disabled_on_routes"] = off
                module = ("chain_response.wasm" if any(p["name"] in CHAIN_RESPONSE_FILTERS for p in parts)
                          else "chain.wasm")
                chain_conf = {
                    "name": f"chain-{listener.get('name')}",
                    "root_id": "chain",
                    "vm_config": {},
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": json.dumps(doc, separators=(",", ":"), ensure_ascii=False),
                    },
                    "failure_policy": "FAIL_CLOSED",
                }
                if stop_iter:
                    chain_conf["allow_on_headers_stop_iteration"] = True
                if id(hcm) in native:
                    typed = native_chain_block(chain_conf, blocks, hcm)
                else:
                    chains.append((chain_conf, [b["typed_config"]["config"] for b in blocks], module))
                    typed = {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": chain_conf,
                    }
                hcm["http_filters"] = filters[: idx[0]] + [{"name": "chain", "typed_config": typed}] + filters[idx[-1] + 1:]
    if not chains:
        return
    # One VM per chain module for every gateway's chain that runs it: one
    # vm_config per module, the filters' environments merged (a clash is an
    # error).
    env: dict[str, str] = {}
    host_keys: list[str] = []
    runtime = "envoy.wasm.runtime.v8"
    for _, confs, _ in chains:
        for conf in confs:
            runtime = conf["vm_config"].get("runtime", runtime)
            ev = conf["vm_config"].get("environment_variables", {})
            for k, v in ev.get("key_values", {}).items():
                if env.get(k, v) != v:
                    raise RenderError(f"chain build: environment variable {k} differs between filters")
                env[k] = v
            host_keys += [k for k in ev.get("host_env_keys", []) if k not in host_keys]
    for chain_conf, _, module in chains:
        vm = {"vm_id": CHAIN_MODULES[module], "runtime": runtime,
              "code": {"local": {"filename": f"{wasm_dir}/{module}"}}}
        if env or host_keys:
            vm["environment_variables"] = {**({"key_values": env} if env else {}),
                                           **({"host_env_keys": host_keys} if host_keys else {})}
        chain_conf["vm_config"] = vm


#: What the dynamic form's watched files hold (ECDS, Envoy's extension
#: config discovery): one TypedExtensionConfig per file.
ECDS_RESOURCE_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
#: The native build's blocks (native_block) are live by ECDS too.
NATIVE_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"


def ecds_name(listener: str, http_filter: str) -> str:
    """The ECDS resource (and HTTP filter) name of `http_filter` on `listener`
    in the dynamic form: "web.sanitize", "app.sanitize-body", "web.chain"."""
    return f"{listener}.{http_filter}"


def ecds_file(name: str) -> str:
    """The watched file of ECDS resource `name`, relative to the ECDS directory."""
    return f"{name}.json"


def ecds_document(resource: dict) -> str:
    """The watched file's text: a DiscoveryResponse with the one resource,
    its version a digest of the resource (Envoy's
    extension_config_discovery.http_filter.<name>.version_text shows it)."""
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    version = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    return json.dumps({"version_info": version, "resources": [resource]}, indent=1, ensure_ascii=False) + "\n"


def to_dynamic(text: str, ecds_dir: os.PathLike[str] | str, node_id: str = "demo-gateway") -> tuple[str, dict[str, str]]:
    """The rendered config `text` (any wasm build) in its dynamic form: every
    wasm HTTP filter (and the native build's DynamicModuleFilter blocks) of
    every static listener is delivered by ECDS from a watched file instead of
    inline, the local twin of Istio's WasmPlugin push.

    Returns (bootstrap text, {file name under ecds_dir: file text}). In the
    bootstrap, the filter `F` of listener `L` becomes the HTTP filter
    ecds_name(L, F) with a `config_discovery` reading ecds_dir/ecds_file(name)
    (a path_config_source: Envoy re-reads the file when one is moved onto it);
    the routes' typed_per_filter_config keys follow the rename. The filter's
    Wasm config itself is unchanged, moved into the file. Envoy needs a node
    id and cluster for ECDS: `node_id`, "demo-gateway" (when the config has no
    node). Listeners, clusters and everything else stay static: a change to
    them still needs a restart."""
    try:
        import yaml  # noqa: PLC0415 (only the dynamic form needs it)
    except ImportError as exc:
        raise RenderError("the dynamic form needs PyYAML: run with the project venv (.venv/bin/python)") from exc
    cfg = json.loads(json.dumps(yaml.safe_load(text)))
    ecds_dir = Path(ecds_dir)
    files: dict[str, str] = {}
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        lname = listener.get("name", "")
        for fc in listener.get("filter_chains", []):
            for net in fc.get("filters", []):
                hcm = net.get("typed_config", {})
                renames: dict[str, str] = {}
                filters = hcm.get("http_filters", [])
                for i, http in enumerate(filters):
                    tc = http.get("typed_config", {})
                    if tc.get("@type") not in (WASM_FILTER_TYPE, NATIVE_FILTER_TYPE):
                        continue
                    name = ecds_name(lname, http.get("name", ""))
                    resource = {"@type": ECDS_RESOURCE_TYPE, "name": name, "typed_config": tc}
                    doc = ecds_document(resource)
                    fname = ecds_file(name)
                    if files.get(fname, doc) != doc:
                        raise RenderError(f"listener {lname}: two filter chains configure {name} differently "
                                          "(the dynamic form names filters by listener)")
                    files[fname] = doc
                    renames[http.get("name", "")] = name
                    rest = {k: v for k, v in http.items() if k not in ("name", "typed_config")}
                    filters[i] = {"name": name, **rest, "config_discovery": {
                        "config_source": {
                            "resource_api_version": "V3",
                            "path_config_source": {"path": str(ecds_dir / fname)},
                        },
                        "type_urls": [tc["@type"]],
                    }}
                rc = hcm.get("route_config")
                if renames and rc is not None:
                    def rename(holder: dict) -> None:
                        tpfc = holder.get("typed_per_filter_config")
                        if tpfc:
                            holder["typed_per_filter_config"] = {renames.get(k, k): v for k, v in tpfc.items()}
                    rename(rc)
                    for vh in rc.get("virtual_hosts", []):
                        rename(vh)
                        for r in vh.get("routes", []):
                            rename(r)
    if files and "node" not in cfg:
        cfg = {"node": {"id": node_id, "cluster": "demo-gateway"}, **cfg}
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=1 << 20), files


def dynamic_header(rendered: str) -> str:
    """The first line of the dynamic bootstrap: the static render's header, marked."""
    first = rendered.splitlines()[0] if rendered else ""
    return (first.replace("# GENERATED by envoy/render.py", "# GENERATED (dynamic form: wasm filter configs by ECDS) by envoy/render.py", 1)
            if first.startswith("# GENERATED") else "# GENERATED by envoy/render.py (dynamic form)") + "\n"


def write_dynamic(bootstrap_path: Path, ecds_dir: Path, bootstrap: str, files: Mapping[str, str],
                  only_changed: bool = False) -> list[str]:
    """Write the dynamic form: each ECDS file atomically (a temporary file in
    the same directory renamed onto it: Envoy reacts to the move and never
    reads half a file), then the bootstrap. only_changed: leave a file whose
    text is already the same alone (no update for Envoy). Returns the names of
    the ECDS files written."""
    ecds_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, text in sorted(files.items()):
        target = ecds_dir / fname
        if only_changed:
            try:
                if target.read_text(encoding="utf-8") == text:
                    continue
            except OSError:
                pass
        write(target, text)
        written.append(fname)
    write(bootstrap_path, bootstrap)
    return written


#: The filters (wasm root_id) the native dynamic module serves like their wasm
#: modules today (root-context ticks and callouts included: jwt's JWKS
#: refresh, fds-block's feed, passport's coalesced lookups; VM environment
#: variables go to Envoy's process environment; san-authz's connection
#: certificate where Envoy sets XFCC from it; replay-guard's reports from
#: one queue per configuration, sent by whichever root ticks first; oidc's
#: discovery fetch at load: a worker's first streams wait for it; docs/native.md).
NATIVE_FILTERS = ("sanitize", "route_breaker", "san_authz", "jwt", "fds_block", "passport", "replay_guard", "e2ee", "oidc")
#: The module's name: Envoy loads lib<name>.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
NATIVE_MODULE = "gateway_native"


def _filter_config(h: dict) -> dict | None:
    """A wasm block's JSON configuration, parsed (None when it is not JSON)."""
    try:
        doc = json.loads(h.get("typed_config", {}).get("config", {}).get("configuration", {}).get("value", "") or "{}")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def block_environment(h: dict) -> dict[str, str]:
    """The variables wasm block `h` sets in its VM (vm_config.environment_variables
    .key_values): natively they must be in Envoy's own environment, which a
    dynamic module shares (the filters read them with std::env::var).
    host_env_keys need nothing: they name variables of Envoy's environment
    already."""
    vm = h.get("typed_config", {}).get("config", {}).get("vm_config", {})
    kv = (vm.get("environment_variables") or {}).get("key_values") or {}
    return {str(k): str(v) for k, v in kv.items()}


def _sets_xfcc_from_connection(hcm: dict) -> bool:
    """Envoy itself writes x-forwarded-client-cert on this connection manager:
    the client's copy dropped, one element from the verified connection, its
    Cert= the peer certificate (so the native host can read
    connection.peer_certificate from it; docs/native.md)."""
    return (hcm.get("forward_client_cert_details") == "SANITIZE_SET"
            and bool((hcm.get("set_current_client_cert_details") or {}).get("cert")))


def _san_authz_source(h: dict) -> str | None:
    """Where san-authz block `h` takes the certificate from (None: not JSON)."""
    doc = _filter_config(h)
    return None if doc is None else (doc.get("identity") or {}).get("source", "connection")


def _native_ready(h: dict, hcm: dict | None = None) -> bool:
    conf = h.get("typed_config", {}).get("config", {})
    root = conf.get("root_id")
    if root not in NATIVE_FILTERS or conf.get("failure_policy", "FAIL_CLOSED") != "FAIL_CLOSED":
        return False
    # A variable must fit a process environment (and an env file: one line).
    if any("\0" in v or "\n" in v or "\0" in k or "=" in k or not k for k, v in block_environment(h).items()):
        return False
    if root == "san_authz":
        # The whole peer certificate (`source: "connection"`, the default)
        # is a wasm-host property with no dynamic-module attribute: natively
        # it is the XFCC element Envoy sets from the verified connection,
        # so only where this connection manager sets it.
        source = _san_authz_source(h)
        return source == "xfcc" or (source == "connection" and _sets_xfcc_from_connection(hcm or {}))
    return True


def native_block(h: dict, hcm: dict | None = None) -> dict:
    """The DynamicModuleFilter typed_config that runs wasm block `h`'s filter
    natively (same root_id, same JSON configuration, same stop-iteration flag;
    san-authz reading the connection's certificate where `hcm`, its
    connection manager, has Envoy set XFCC from it). Its VM's environment
    variables (block_environment) are not in it: they go to Envoy's process
    environment (to_native_env)."""
    conf = h["typed_config"]["config"]
    envelope = {"config": conf.get("configuration", {}).get("value", "")}
    if conf.get("allow_on_headers_stop_iteration"):
        envelope["allow_on_headers_stop_iteration"] = True
    if (conf.get("root_id") == "san_authz" and _san_authz_source(h) == "connection"
            and _sets_xfcc_from_connection(hcm or {})):
        envelope["peer_certificate_from_xfcc"] = True
    return _dynamic_module_block(conf["root_id"], envelope)


def merge_environment(into: dict[str, str], add: Mapping[str, str]) -> list[str]:
    """Adds `add` to the process environment `into` unless a name there
    already has another value; returns those names (nothing added then)."""
    clash = sorted(k for k, v in add.items() if k in into and into[k] != v)
    if not clash:
        into.update(add)
    return clash


def to_native_env(text: str) -> tuple[str, dict[str, str]]:
    """The rendered config `text` with the wasm blocks of every gateway whose
    wasm filters are all NATIVE_FILTERS replaced by DynamicModuleFilter blocks
    of the gateway_native module (same filter names, so per-route `disabled`
    FilterConfigs still apply): filter_name is the wasm root_id, filter_config
    a StringValue holding {"config": <the block's JSON configuration>,
    "allow_on_headers_stop_iteration": <the block's flag>}.

    Also returns the environment the converted blocks need in Envoy's process
    (their VMs' environment_variables.key_values; Envoy must be started with
    it: envoy/stack.py does, render.py -o writes it beside the config as
    <output>.env for docker compose). One process has one environment: a
    gateway whose blocks would need another value for a variable that an
    earlier converted gateway (or another of its own blocks) sets keeps its
    wasm blocks, whose VMs have environments of their own."""
    try:
        import yaml  # noqa: PLC0415 (only the suite, chain and native builds need it)
    except ImportError as exc:
        raise RenderError("the native build needs PyYAML: run with the project venv (.venv/bin/python)") from exc
    cfg = json.loads(json.dumps(yaml.safe_load(text)))
    env: dict[str, str] = {}
    converted = _native_gateways(cfg, env)
    for hcm, wasm in converted:
        for h in wasm:
            h["typed_config"] = native_block(h, hcm)
    if converted:
        strip_native_namespace(cfg)
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=1 << 20), env


def _native_gateways(cfg: dict, env: dict[str, str]) -> list[tuple[dict, list[dict]]]:
    """The connection managers of `cfg` (per-filter wasm blocks) that the
    native build converts, each with its wasm blocks: every wasm filter
    NATIVE_FILTERS-ready, and the blocks' environments fitting one process
    environment with the ones converted before (added to `env`)."""
    out = []
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        for fc in listener.get("filter_chains", []):
            for net in fc.get("filters", []):
                hcm = net.get("typed_config", {})
                filters = hcm.get("http_filters", [])
                wasm = [h for h in filters
                        if h.get("typed_config", {}).get("@type", "").endswith(".filters.http.wasm.v3.Wasm")]
                if not wasm or not all(_native_ready(h, hcm) for h in wasm):
                    continue
                need: dict[str, str] = {}
                if any(merge_environment(need, block_environment(h)) for h in wasm):
                    continue
                if merge_environment(env, need):
                    continue
                out.append((hcm, wasm))
    return out


def native_chain_block(chain_conf: dict, blocks: list[dict], hcm: dict) -> dict:
    """The DynamicModuleFilter typed_config that runs a gateway's chain
    (`chain_conf`, the wasm chain filter's config to_chain wrote from the
    gateway's wasm `blocks`) natively: filter_name "chain", the chain's JSON
    configuration, its stop-iteration flag; san-authz reading the
    connection's certificate where `hcm` has Envoy set XFCC from it."""
    envelope = {"config": chain_conf["configuration"]["value"]}
    if chain_conf.get("allow_on_headers_stop_iteration"):
        envelope["allow_on_headers_stop_iteration"] = True
    if any(h["typed_config"]["config"].get("root_id") == "san_authz" and _san_authz_source(h) == "connection"
           for h in blocks) and _sets_xfcc_from_connection(hcm):
        envelope["peer_certificate_from_xfcc"] = True
    return _dynamic_module_block("chain", envelope)


def _dynamic_module_block(filter_name: str, envelope: dict) -> dict:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": NATIVE_MODULE, "metrics_namespace": "wasmcustom"},
        "filter_name": filter_name,
        "filter_config": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(envelope, separators=(",", ":"), ensure_ascii=False),
        },
    }


def to_native_chain_env(text: str, wasm_dir: str) -> tuple[str, dict[str, str]]:
    """The native-chain build: the gateways the native build converts
    (to_native_env's decision, on the per-filter blocks, the same
    environment) each run as ONE DynamicModuleFilter `chain` block with the
    chain's configuration (to_chain's); the others become wasm chains as in
    the chain build (their VMs' environments from their own blocks only).
    Returns the config and the environment Envoy must run with."""
    try:
        import yaml  # noqa: PLC0415 (only the suite, chain and native builds need it)
    except ImportError as exc:
        raise RenderError("the native-chain build needs PyYAML: run with the project venv (.venv/bin/python)") from exc
    cfg = json.loads(json.dumps(yaml.safe_load(text)))
    env: dict[str, str] = {}
    native = frozenset(id(hcm) for hcm, _ in _native_gateways(cfg, env))
    _chain_cfg(cfg, wasm_dir, native)
    if native:
        strip_native_namespace(cfg)
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=1 << 20), env


#: Envoy 1.40 registers a dynamic module's metrics_namespace (wasmcustom) as a
#: custom stat namespace, stripped from /stats/prometheus names as for wasm,
#: only with this runtime guard on (off by default: the names would read
#: envoy_wasmcustom_<name>). Before every gateway ran natively, a remaining
#: wasm block registered the namespace anyway.
STRIP_NAMESPACE_GUARD = "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix"


def strip_native_namespace(cfg: dict) -> None:
    """Turns STRIP_NAMESPACE_GUARD on in bootstrap `cfg` (a static runtime
    layer, then the admin layer Envoy has by default)."""
    runtime = cfg.setdefault("layered_runtime", {})
    layers = runtime.setdefault("layers", [])
    for layer in layers:
        if layer.get("name") == "gateway_native":
            layer.setdefault("static_layer", {})[STRIP_NAMESPACE_GUARD] = True
            return
    layers.insert(0, {"name": "gateway_native", "static_layer": {STRIP_NAMESPACE_GUARD: True}})
    if not any("admin_layer" in layer for layer in layers):
        layers.append({"name": "admin", "admin_layer": {}})


def to_native(text: str) -> str:
    """to_native_env's config alone."""
    return to_native_env(text)[0]


_ENV_SAFE = re.compile(r"^[A-Za-z0-9+/=_.:@%,-]*$")


def env_file_text(env: Mapping[str, str]) -> str:
    """`env` as a docker compose env_file (NAME=value lines; a value outside
    base64/URL-ish characters single-quoted)."""
    lines = ["# GENERATED by envoy/render.py --wasm-build native: the variables the native",
             "# filters read from Envoy's environment (secrets: keep this file private)."]
    for name, value in sorted(env.items()):
        if not _ENV_SAFE.match(value):
            if "'" in value:
                raise RenderError(f"environment variable {name}: a value with a single quote cannot go to an env file")
            value = f"'{value}'"
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def variables_for(profile: str, local_paths: bool = False, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    if profile not in PROFILES:
        raise RenderError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    values = dict(PROFILES[profile])
    if local_paths:
        values.update(_local_paths())
    for name, value in (overrides or {}).items():
        if name not in values:
            raise RenderError(f"--set {name}: not a variable of profile {profile!r}")
        values[name] = value
    return values


def render(
    profile: str = "local",
    *,
    local_paths: bool = False,
    overrides: Mapping[str, str] | None = None,
    extra_listeners: Iterable[os.PathLike[str] | str] = (),
    extra_clusters: Iterable[os.PathLike[str] | str] = (),
    include_root: os.PathLike[str] | str = DEFAULT_INCLUDE_ROOT,
    template: os.PathLike[str] | str = TEMPLATE,
    wasm_build: str | None = None,
    replica: int = 1,
    include_overrides: Mapping[str, os.PathLike[str] | str] | None = None,
    environment: dict[str, str] | None = None,
) -> str:
    """The rendered Envoy config as text. Raises RenderError on any problem.

    wasm_build: "filters", "suite", "chain", "native" or "native-chain" (module docstring); None reads the
    WASM_BUILD environment variable (default "filters").
    include_overrides: REL -> FILE, an included file (REL relative to the
    include root, e.g. "config/sanitize/web.json") read from FILE instead for
    this render (stack.py reload --override); a REL the render does not
    include is an error.
    environment: when given, filled with the variables the native build's
    converted blocks need in Envoy's process environment (to_native_env;
    empty for the other builds)."""
    wasm_build = wasm_build or os.environ.get("WASM_BUILD") or "filters"
    if wasm_build not in WASM_BUILDS:
        raise RenderError(f"unknown wasm build {wasm_build!r} (known: {', '.join(WASM_BUILDS)})")
    values = variables_for(profile, local_paths, overrides)
    root = Path(include_root)
    swaps = {str(rel): Path(f) for rel, f in (include_overrides or {}).items()}
    used: set[str] = set()
    template_path = Path(template)
    try:
        text = template_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"cannot read template {template_path}: {exc.strerror}") from exc

    def load(paths: Iterable[os.PathLike[str] | str]) -> list[str]:
        blocks = []
        for p in paths:
            p = Path(p)
            try:
                raw = p.read_text(encoding="utf-8")
            except OSError as exc:
                raise RenderError(f"cannot read extra file {p}: {exc.strerror}") from exc
            first = next((ln for ln in raw.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
            if not first.startswith("- "):
                raise RenderError(f"extra file {p}: must be a YAML list whose items start at column 0 ('- name: ...')")
            blocks.append(substitute(raw, values, root, str(p), swaps, used))
        return blocks

    listeners, clusters = load(extra_listeners), load(extra_clusters)
    text = substitute(text, values, root, str(template_path), swaps, used)
    unused = sorted(set(swaps) - used)
    if unused:
        raise RenderError(f"override of {', '.join(unused)}: the render includes no such file "
                          f"(paths are relative to {root}, e.g. config/sanitize/web.json)")
    text = splice(text, MARKERS[0], listeners)
    text = splice(text, MARKERS[1], clusters)
    if wasm_build == "suite":
        text = to_suite(text, values["WASM_DIR"])
    elif wasm_build == "chain":
        text = to_chain(text, values["WASM_DIR"])
    elif wasm_build in NATIVE_BUILDS:
        if wasm_build == "native":
            text, env = to_native_env(text)
        else:
            text, env = to_native_chain_env(text, values["WASM_DIR"])
        if environment is not None:
            environment.update(env)
    text = to_replica(text, replica)
    header = (
        f"# GENERATED by envoy/render.py --profile {profile}"
        f"{' --local-paths' if local_paths else ''}"
        f"{f' --replica {replica}' if replica != 1 else ''}"
        f"{' --wasm-build ' + wasm_build if wasm_build != 'filters' else ''} from envoy/envoy.yaml.tmpl - do not edit.\n"
    )
    return header + text


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same directory, then a rename: readers (Envoy's
    # file watcher among them) see the old file or the new one, never half.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="local")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: per profile under build/; '-' for stdout)")
    parser.add_argument("--local-paths", action="store_true",
                        help=f"use this checkout's paths for {', '.join(PATH_VARIABLES)} (to validate a compose render locally)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override one profile variable")
    parser.add_argument("--extra", action="append", default=[], type=Path, metavar="FILE",
                        help="YAML list of additional listeners, spliced at '# @extra-listeners'")
    parser.add_argument("--extra-clusters", action="append", default=[], type=Path, metavar="FILE",
                        help="YAML list of additional clusters, spliced at '# @extra-clusters'")
    parser.add_argument("--include-root", type=Path, default=DEFAULT_INCLUDE_ROOT,
                        help="directory that ${json:...} paths are relative to (default: examples/)")
    parser.add_argument("--replica", type=int, choices=REPLICAS, default=1,
                        help="2: the second Envoy replica (listener ports + 100, admin 9902, sidecar 18091)")
    parser.add_argument("--wasm-build", choices=WASM_BUILDS, default=None,
                        help="filters: one module per filter; suite: suite.wasm, one VM per worker; "
                             "chain: chain.wasm, one filter per gateway; native: the gateway_native dynamic "
                             "module where it serves the gateway; native-chain: the same gateways as ONE "
                             "native chain filter each (default: $WASM_BUILD, else filters)")
    parser.add_argument("--dynamic", type=Path, metavar="DIR",
                        help="the dynamic form (to_dynamic): every wasm filter's config in its own ECDS file "
                             "under DIR, watched by Envoy; the output is the bootstrap that reads them")
    args = parser.parse_args(argv)

    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name] = value
    env: dict[str, str] = {}
    try:
        text = render(args.profile, local_paths=args.local_paths, overrides=overrides,
                      extra_listeners=args.extra, extra_clusters=args.extra_clusters,
                      include_root=args.include_root, wasm_build=args.wasm_build,
                      replica=args.replica, environment=env)
        env_text = env_file_text(env)
    except RenderError as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 1
    if args.output is not None and str(args.output) == "-":
        sys.stdout.write(text)
        if env:
            print(f"render.py: the native filters need {', '.join(sorted(env))} in Envoy's environment "
                  "(write the config to a file to get them as <output>.env)", file=sys.stderr)
        return 0
    out = args.output or DEFAULT_OUTPUT[args.profile]
    # The native build's process environment beside the config (docker
    # compose reads it as the Envoy service's env_file); none for the others.
    env_path = out.with_suffix(".env")
    if (args.wasm_build or os.environ.get("WASM_BUILD") or "filters") in NATIVE_BUILDS:
        write(env_path, env_text)
        env_path.chmod(0o600)
        if env:
            print(f"render.py: wrote {env_path} ({', '.join(sorted(env))}: start Envoy with them in its "
                  "environment)", file=sys.stderr)
    elif env_path.exists():
        env_path.unlink()
    if args.dynamic is not None:
        try:
            boot, files = to_dynamic(text, args.dynamic.resolve(), node_id=f"demo-gateway-{args.replica}")
        except RenderError as exc:
            print(f"render.py: error: {exc}", file=sys.stderr)
            return 1
        write_dynamic(out, args.dynamic, dynamic_header(text) + boot, files)
        print(f"render.py: wrote {out} and {len(files)} ECDS file(s) under {args.dynamic}", file=sys.stderr)
        return 0
    write(out, text)
    print(f"render.py: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
