"""`bench_jwt_direct` (bench/test only; docs/native.md "Floors"): jwt's pure
request path straight against Envoy's dynamic-module callbacks, measured
against the module's jwt (its proxy-wasm glue over the native host) in
docs/performance.md. These tests prove the comparison is of equal work, on
the REAL Envoy: one Envoy, two listeners with the same jwt configuration
(the web gateway's, minus `shared_store`), one running the module's `jwt`,
one `bench_jwt_direct`, both in front of a small echo upstream (this file)
that reflects the headers it received. A route-level header copies the
identity filter state jwt hands to later filters (`wasm.gateway_identity`)
into the upstream request, so that is compared too.

Needs `make build-native-module`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "build" / "native" / "libgateway_native.so"
ENVOY = REPO / ".venv" / "bin" / "envoy"
sys.path.insert(0, str(REPO / "tests" / "integration"))

from helpers import mint_token  # noqa: E402  (tests/integration/helpers.py)

WEB_JWT = json.loads((REPO / "examples" / "config" / "jwt" / "web.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Echo(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits += 1
        body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def jwt_config(**changes) -> dict:
    c = json.loads(json.dumps(WEB_JWT))
    c.pop("shared_store")
    c.update(changes)
    return c


def block(filter_name: str, conf: dict) -> dict:
    return {"name": "jwt", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "gateway_native", "metrics_namespace": "wasmcustom"},
        "filter_name": filter_name,
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps({"config": json.dumps(conf)})}}}


def listener(name: str, port: int, filt: dict) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                             ".HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {"name": name, "virtual_hosts": [{
                        "name": name, "domains": ["*"],
                        "routes": [{"name": "all", "match": {"prefix": "/"}, "route": {"cluster": "echo"},
                                    "request_headers_to_add": [{"header": {
                                        "key": "x-seen-identity",
                                        "value": "%FILTER_STATE(wasm.gateway_identity:PLAIN)%"}}]}]}]},
                    "http_filters": [filt, {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def bootstrap(admin: int, echo: int, listeners: list[dict]) -> dict:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": listeners, "clusters": [{
                "name": "echo", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": echo}}}}]}]}}]}}


def envoy_env() -> dict[str, str]:
    return {**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(MODULE.parent)}


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    if not MODULE.exists():
        pytest.fail(f"{MODULE} missing: run `make build-native-module`")
    echo = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    admin, module, direct = free_port(), free_port(), free_port()
    conf = jwt_config()
    cfg = tmp_path_factory.mktemp("direct") / "envoy.yaml"
    cfg.write_text(json.dumps(bootstrap(admin, echo.server_address[1], [
        listener("module", module, block("jwt", conf)),
        listener("direct", direct, block("bench_jwt_direct", conf))])))
    proc, log = start_envoy(cfg, admin)
    try:
        yield {"module": module, "direct": direct, "admin": admin, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        echo.shutdown()


def start_envoy(cfg: Path, admin: int) -> tuple[subprocess.Popen, Path]:
    """Envoy on `cfg` (its log beside it), once its admin says /ready; on a
    failed start it is stopped and the log's tail is the assertion."""
    log = cfg.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen([str(ENVOY), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                                 "--base-id", str(admin), "--log-level", "info"],
                                stdout=out, stderr=subprocess.STDOUT, env=envoy_env())
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                    return proc, log
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=10)
        raise


def get(port: int, path: str, headers: dict | None = None) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}, timeout=5)


def upstream_view(resp: requests.Response) -> dict:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    h = resp.json()["headers"]
    # per-request (and per-listener: host) values, not what the filters decided
    return {k: v for k, v in h.items() if k not in ("host", "x-request-id", "x-envoy-expected-rq-timeout-ms")}


def test_the_cached_token_reaches_the_upstream_as_the_modules_jwt_sends_it(envoy):
    token = mint_token("users:read", sub="user-7")
    headers = {"authorization": f"Bearer {token}", "x-user-id": "forged"}
    seen = {}
    for name in ("module", "direct"):
        before = Echo.hits
        for _ in range(3):  # the second and third are cache hits
            resp = get(envoy[name], "/api/v1/users/1", headers)
            seen[name] = upstream_view(resp)
        assert Echo.hits == before + 3
    assert seen["direct"] == seen["module"]
    d = seen["direct"]
    assert "authorization" not in d  # the token goes no further
    assert d["x-user-id"] == "user-7"  # the claim, not the client's copy
    assert d["x-user-scope"] == "users:read"
    identity = json.loads(d["x-seen-identity"])
    assert identity["user"] == "user-7" and identity["exp"] > time.time()


def test_a_bad_token_gets_the_same_json_401_as_the_modules_jwt(envoy):
    before = Echo.hits
    answers = {}
    for name in ("module", "direct"):
        resp = get(envoy[name], "/api/v1/users/1", {"authorization": "Bearer not.a.jwt", "x-request-id": "rid-1"})
        assert resp.status_code == 401
        assert resp.headers["content-type"].startswith("application/json")
        answers[name] = (resp.json(), resp.headers.get("www-authenticate"))
    assert Echo.hits == before
    assert answers["direct"] == answers["module"]
    body, challenge = answers["direct"]
    assert body["error"] == "invalid_token" and body["message"]
    assert challenge.startswith('Bearer realm="demo-api", error="invalid_token"')
    # no token at all, and the wrong scope: the same answers too
    for path, hdrs, status in (("/api/v1/users/1", {}, 401),
                               ("/api/v1/users/1", {"authorization": f"Bearer {mint_token('orders:write')}"}, 403)):
        got = [get(envoy[n], path, hdrs) for n in ("module", "direct")]
        assert [r.status_code for r in got] == [status, status]
        assert got[0].json() == got[1].json()
    assert Echo.hits == before


def test_the_direct_path_counts_jwts_outcomes(envoy):
    token = mint_token("users:read")
    for _ in range(2):
        assert get(envoy["direct"], "/api/v1/users/1", {"authorization": f"Bearer {token}"}).status_code == 200
    assert get(envoy["direct"], "/api/v1/users/1", {"authorization": "Bearer x"}).status_code == 401

    def stats() -> str:
        return requests.get(f"http://127.0.0.1:{envoy['admin']}/stats/prometheus", timeout=5).text

    def has(text: str, *parts: str) -> bool:
        return any(all(p in line for p in parts) and not line.endswith(" 0")
                   for line in text.splitlines() if not line.startswith("#"))

    deadline = time.monotonic() + 10
    while True:
        text = stats()
        if (has(text, "jwt_cache_hit_total") and has(text, "jwt_signature_checked_total")
                and has(text, "jwt_denied_total", 'reason="malformed"')):
            break
        assert time.monotonic() < deadline, [line for line in text.splitlines() if "jwt_" in line]
        time.sleep(0.05)


@pytest.mark.parametrize("conf, field", [
    (dict(WEB_JWT), "routes[5].one_time_jti"),
    ({**jwt_config(), "providers": [{**WEB_JWT["providers"][0], "jwks": {"remote": {
        "cluster": "echo", "path": "/jwks.json"}}}]}, "providers[0].jwks.remote"),
])
def test_what_the_direct_path_does_not_do_is_refused_at_load_naming_the_field(tmp_path, conf, field):
    if not MODULE.exists():
        pytest.fail(f"{MODULE} missing: run `make build-native-module`")
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(json.dumps(bootstrap(free_port(), free_port(), [
        listener("direct", free_port(), block("bench_jwt_direct", conf))])))
    r = subprocess.run([str(ENVOY), "--mode", "validate", "--disable-hot-restart", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=120, env=envoy_env())
    log = r.stdout + r.stderr
    assert r.returncode != 0, log[-2000:]
    assert f"invalid config at `{field}`: bench_jwt_direct" in log, log[-3000:]
    # the module's own jwt takes both
    cfg.write_text(cfg.read_text().replace('"bench_jwt_direct"', '"jwt"'))
    ok = subprocess.run([str(ENVOY), "--mode", "validate", "--disable-hot-restart", "-c", str(cfg)],
                        capture_output=True, text=True, timeout=120, env=envoy_env())
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]
