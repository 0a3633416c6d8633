"""Small helpers shared by the integration tests (import them from here).

Everything talks to loopback only: the gateways and the demo services of the
stack that the session fixture `stack` (conftest.py) runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "envoy"))

from stack import ADMIN_PORT, HOST, LISTENERS, SERVICES  # noqa: E402
from render import replica_port  # noqa: E402

CERTS = REPO / "examples" / "certs"
CA = CERTS / "ca.pem"

T = TypeVar("T")

#: Default timeout of one HTTP call in the tests (seconds).
TIMEOUT = 10


def gateway_url(gateway: str, path: str = "/", replica: int = 1) -> str:
    """URL of `path` on a gateway listener: web, app, egress, secure, internal,
    bare; of the second Envoy replica with replica=2 (render.replica_port)."""
    port = replica_port(LISTENERS[gateway], replica)
    if gateway in ("secure", "internal"):
        # The demo server certificate is issued for localhost.
        return f"https://localhost:{port}{path}"
    return f"http://{HOST}:{port}{path}"


def replica_urls(gateway: str) -> dict[int, str]:
    """The gateway's base URL on each Envoy replica: {1: ..., 2: ...}."""
    return {r: gateway_url(gateway, "", r) for r in (1, 2)}


def web_url(path: str = "/") -> str:
    return gateway_url("web", path)


def app_url(path: str = "/") -> str:
    return gateway_url("app", path)


def egress_url(path: str = "/") -> str:
    return gateway_url("egress", path)


def bare_url(path: str = "/") -> str:
    return gateway_url("bare", path)


def secure_url(path: str = "/") -> str:
    return gateway_url("secure", path)


def service_url(service: str, path: str = "/") -> str:
    """URL of a demo service reached directly, bypassing Envoy."""
    return f"http://{HOST}:{SERVICES[service]}{path}"


def admin_url(path: str = "/") -> str:
    return f"http://{HOST}:{ADMIN_PORT}{path}"


def echo_stats() -> int:
    """Requests whose headers reached the echo service so far (GET /_stats)."""
    resp = requests.get(service_url("echo", "/_stats"), timeout=TIMEOUT)
    resp.raise_for_status()
    return int(resp.json()["requests"])


def client_cert(name: str) -> tuple[str, str]:
    """(certificate, key) paths of a demo client certificate, e.g. 'partner-billing'."""
    return str(CERTS / f"{name}.pem"), str(CERTS / f"{name}.key")


def secure_get(path: str, cert: str | None = "partner-billing", **kwargs) -> requests.Response:
    """GET on the mTLS gateway, presenting the named demo client certificate."""
    return requests.get(
        secure_url(path),
        cert=client_cert(cert) if cert else None,
        verify=str(CA),
        timeout=kwargs.pop("timeout", TIMEOUT),
        **kwargs,
    )


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll `check` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# ------------------------------------------------------------ filter helpers
# Shared by the filters' test modules: addresses, demo tokens, echo's counter,
# denial shape.

KEYS = REPO / "examples" / "keys"
WEB = "http://127.0.0.1:10000"
APP = "http://127.0.0.1:10001"
EGRESS = "http://127.0.0.1:10002"
SECURE = "https://localhost:10443"
INTERNAL = "https://localhost:10444"
BARE = "http://127.0.0.1:10009"
ADMIN = "http://127.0.0.1:9901"
ECHO = "http://127.0.0.1:18080"
ISSUER = "http://127.0.0.1:18081"
FDS = "http://127.0.0.1:18082"

ISS = "https://issuer.demo.local"
AUD = "demo-api"


def mint_token(scope: str = "", sub: str = "user-1", kid: str = "demo-rs256", ttl: int = 300, **claims) -> str:
    """A demo JWT signed with the committed demo keys (RS256 or ES256)."""
    import time
    import uuid

    import jwt  # PyJWT

    alg = "ES256" if "es256" in kid else "RS256"
    key = (KEYS / f"jwt-{alg.lower()}.pem").read_text()
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + ttl, "jti": uuid.uuid4().hex}
    if scope:
        body["scope"] = scope
    body.update(claims)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def bearer(scope: str = "", **kw) -> dict:
    """An Authorization header with a fresh demo token."""
    return {"authorization": f"Bearer {mint_token(scope, **kw)}"}


def echo_count() -> int:
    """Requests whose headers reached the echo service so far (alias of echo_stats)."""
    return echo_stats()


def denial(resp: requests.Response) -> dict:
    """The JSON denial body, asserting its shape."""
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) >= {"error", "message"}, body
    return body


def seen(resp: requests.Response) -> dict:
    """What the echo upstream reported it received."""
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.json()


def h2_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes,
               trailers: dict[str, str] | None = None) -> tuple[int, dict | None]:
    """One HTTP/2 (h2c prior knowledge) request with `nghttp`, optionally
    ending with trailers instead of a last DATA frame marked end-of-stream
    (requests/urllib cannot send request trailers). Returns the status and the
    JSON body (None when it is not JSON). `make test` installs nghttp
    (Debian package nghttp2-client)."""
    nghttp = shutil.which("nghttp")
    assert nghttp, "nghttp is missing: `make test-integration` installs it (apt-get install nghttp2-client)"
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        cmd = [nghttp, "-v", "-H", f":method: {method}", "-d", f.name]
        for name, value in headers.items():
            cmd += ["-H", f"{name.lower()}: {value}"]
        for name, value in (trailers or {}).items():
            cmd += [f"--trailer={name.lower()}: {value}"]
        cmd.append(f"http://{HOST}:{port}{path}")
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    out = run.stdout
    status = re.search(r"recv \(stream_id=\d+\) :status: (\d+)", out)
    assert status, (out[-2000:], run.stderr[-500:])
    doc = None
    start = out.find('{"')
    if start >= 0:
        try:
            doc, _ = json.JSONDecoder().raw_decode(out[start:])
        except ValueError:
            doc = None
    return int(status.group(1)), doc


def wasm_build() -> str:
    """The build the stack runs (envoy/render.py reads the same variable)."""
    import os  # noqa: PLC0415

    return os.environ.get("WASM_BUILD") or "filters"


def native_build() -> bool:
    """The stack runs the native module: each filter its own native filter
    (`native`) or each gateway one native chain filter (`native-chain`)."""
    return wasm_build() in ("native", "native-chain")


def set_filter_config(hcm: dict, name: str, config: dict) -> bool:
    """Sets filter `name`'s JSON configuration in a rendered HTTP connection
    manager: its own wasm block (per-filter and suite builds) or its part of
    the gateway's chain filter (chain build: {"filters": [{"name", "config"}]})
    or its DynamicModuleFilter block (native build: the envelope's "config";
    native-chain: its part of the chain in the envelope's "config").
    Returns whether the filter is in that manager."""
    found = False
    for f in hcm["http_filters"]:
        typed = f.get("typed_config", {})
        conf = typed.get("config", {})
        if f["name"] == name and typed.get("@type", "").endswith(".DynamicModuleFilter"):
            envelope = json.loads(typed["filter_config"]["value"])
            envelope["config"] = json.dumps(config)
            typed["filter_config"]["value"] = json.dumps(envelope)
            found = True
        elif f["name"] == name:
            conf["configuration"]["value"] = json.dumps(config)
            found = True
        elif f["name"] == "chain":
            # The wasm chain's configuration, or the native chain's envelope
            # around it (native-chain build).
            native = typed.get("@type", "").endswith(".DynamicModuleFilter")
            envelope = json.loads(typed["filter_config"]["value"]) if native else None
            chain = json.loads(envelope["config"] if native else conf["configuration"]["value"])
            for part in chain["filters"]:
                # A part's name in the chain: its instance name
                # (sanitize-body), else its filter's.
                if part.get("instance", part["name"]) == name:
                    part["config"] = config
                    found = True
            if native:
                envelope["config"] = json.dumps(chain)
                typed["filter_config"]["value"] = json.dumps(envelope)
            else:
                conf["configuration"]["value"] = json.dumps(chain)
    return found


def running_http_filters(listener: str) -> list[dict]:
    """The HTTP filters the running Envoy (replica 1) serves on `listener`,
    each as {"name", "typed_config"} with the filter's name as the template
    has it (an ECDS resource is named `<listener>.<name>`): a filter delivered through ECDS (the
    stack's dynamic form, docs/operations.md "Live configuration") resolved
    to the config Envoy runs, from the ECDS section of the config dump."""
    dump = requests.get(admin_url("/config_dump"), timeout=TIMEOUT).json()
    listeners = [c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")]
    [found] = [s["listener"] for l in listeners for s in l.get("static_listeners", [])
               if s["listener"]["name"] == listener]
    ecds = {f["ecds_filter"]["name"]: f["ecds_filter"]["typed_config"]
            for c in dump["configs"] if c["@type"].endswith("EcdsConfigDump")
            for f in c.get("ecds_filters", [])}
    manager = found["filter_chains"][0]["filters"][0]["typed_config"]
    out = []
    for f in manager["http_filters"]:
        if "config_discovery" in f:
            # The ECDS resource wraps the filter's own config in a
            # TypedExtensionConfig: {"name", "typed_config"}.
            resource = ecds[f["name"]]
            out.append({"name": f["name"].removeprefix(listener + "."),
                        "typed_config": resource.get("typed_config", resource)})
        else:
            out.append({"name": f["name"], "typed_config": f.get("typed_config", {})})
    return out
