"""The app gateway cut to the filters the native build serves: a listener
for proving e2ee (and replay-guard) on the native module with the real
Envoy, and for measuring them natively against wasm (tests/bench/run.py).

The shipped app gateway (10001) also runs fds-block and passport, which need
root-context ticks and callouts the native host does not run yet, so under
WASM_BUILD=native it keeps its wasm modules (a gateway converts whole or
not at all, docs/native.md). This listener is that gateway's listener as
rendered (same HTTP settings, routes, filter configs and VM environment),
minus fds-block and passport, with replay-guard's `reports` off (sent from
the root tick):

    sanitize -> replay-guard -> e2ee -> sanitize-body -> route-breaker -> router

Every wasm filter left is native-ready, so render.py's ordinary rule
(to_native_env) converts the whole listener under WASM_BUILD=native,
carrying replay-guard's and e2ee's master secret
(REPLAY_GUARD_MASTER_V1) to Envoy's process environment. Test-only: the
test stack splices it in under WASM_BUILD=native (conftest.py), `make run`
never carries it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

#: 127.0.0.1:10060 (replica 2: 10160): the cut app gateway in the test stack.
APP_NATIVE_PORT = 10060
APP_NATIVE = "app_native"
#: The app gateway's filters that need what the native host lacks (ticks).
DROPPED = ("fds-block", "passport")


def app_lite_listener(cfg: dict, name: str, port: int, stat_prefix: str | None = None) -> dict:
    """The rendered app listener of `cfg` (a parsed render, any build whose
    app gateway still has its wasm blocks) renamed `name` on `port`, without
    DROPPED and with replay-guard's reports off."""
    app = next(lis for lis in cfg["static_resources"]["listeners"] if lis["name"] == "app")
    lis = copy.deepcopy(app)
    lis["name"] = name
    lis["address"]["socket_address"]["port_value"] = port
    for fc in lis["filter_chains"]:
        for net in fc["filters"]:
            tc = net.get("typed_config", {})
            if "stat_prefix" in tc:
                tc["stat_prefix"] = stat_prefix or name
            if "http_filters" not in tc:
                continue
            kept = []
            for h in tc["http_filters"]:
                if h.get("name") in DROPPED:
                    continue
                conf = h.get("typed_config", {}).get("config", {})
                if conf.get("root_id") == "replay_guard":
                    value = conf["configuration"]
                    doc = json.loads(value["value"])
                    doc.pop("reports", None)
                    value["value"] = json.dumps(doc, separators=(",", ":"))
                kept.append(h)
            tc["http_filters"] = kept
    return lis


def write_listener(path: Path, overrides: dict[str, str] | None = None,
                   include_root: str | None = None) -> Path:
    """Writes the cut app listener (render.py extra file, wasm blocks) to
    `path`, from the filters build's render with the stack's variables."""
    import render  # noqa: PLC0415 (envoy/render.py, on sys.path through helpers)
    import yaml  # noqa: PLC0415 (the venv has it)

    kw = {"include_root": include_root} if include_root else {}
    cfg = yaml.safe_load(render.render("local", wasm_build="filters", overrides=overrides or {}, **kw))
    item = app_lite_listener(cfg, APP_NATIVE, APP_NATIVE_PORT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# test-only: the app gateway cut to native-ready filters (tests/integration/native_app.py)\n"
                    + dump_items([item]))
    return path


def dump_items(items: list[dict]) -> str:
    """Listeners as a render.py extra file: YAML without anchors (two
    extra files' `&id001` would clash once spliced into one document)."""
    import yaml  # noqa: PLC0415 (the venv has it)

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # noqa: ARG002
            return True

    return yaml.dump(items, Dumper=NoAliases, sort_keys=False, width=1 << 20, default_flow_style=False)
