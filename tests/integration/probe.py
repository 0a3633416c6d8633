"""A test-only listener (127.0.0.1:10019, "probe") for filter settings the
shipped gateways do not use, so the real Envoy can show what they do:

* jwt with an `optional` route (`/opt/`): a request without a token the
  filter recognises goes on anonymous, and must carry no credential on;
* passport looking identities up by a path template
  (`/v1/users/{user}/context`, which the demo issuer serves): an identity
  that would be a dot-segment there is never looked up.

The shipped web configs are the base (same keys, same issuer), changed only
where the probe needs it. The file is spliced into the test stack's Envoy
config (render.py's extra listeners); `make run` never carries it. The VM
configs are the template's anchors, so the probe runs whatever build
(`WASM_BUILD`) the rest of the stack runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import REPO

PROBE_PORT = 10019
PROBE = f"http://127.0.0.1:{PROBE_PORT}"
CONFIG = REPO / "examples" / "config"


def jwt_config() -> dict:
    cfg = json.loads((CONFIG / "jwt" / "web.json").read_text(encoding="utf-8"))
    cfg["routes"] = [
        {"name": "optional", "prefix": "/opt/", "requirement": "optional"},
    ] + cfg["routes"]
    return cfg


def passport_config() -> dict:
    cfg = json.loads((CONFIG / "passport" / "web.json").read_text(encoding="utf-8"))
    cfg["gateway"] = "probe"
    cfg["issuer"]["path"] = "/v1/users/{user}/context"
    return cfg


def _plugin(name: str, root_id: str, vm_anchor: str, config: dict) -> str:
    value = json.dumps(json.dumps(config))  # a YAML double-quoted scalar holding the JSON
    return f"""        - name: {name}
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            config:
              name: {name}
              root_id: {root_id}
              vm_config: *{vm_anchor}
              configuration:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {value}
              failure_policy: FAIL_CLOSED
"""


def write_listener(path: Path) -> Path:
    """Writes the probe listener (a render.py extra file) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""# test-only probe listener (tests/integration/probe.py)
- name: probe
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {PROBE_PORT} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: probe
        normalize_path: true
        merge_slashes: true
        generate_request_id: true
        route_config:
          name: probe
          virtual_hosts:
          - name: probe
            domains: ["*"]
            routes:
            - match: {{ prefix: / }}
              route: {{ cluster: echo, timeout: 15s }}
        http_filters:
{_plugin("jwt", "jwt", "jwt_vm", jwt_config())}{_plugin("passport", "passport", "passport_vm", passport_config())}        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
            suppress_envoy_headers: true
""",
        encoding="utf-8",
    )
    return path
