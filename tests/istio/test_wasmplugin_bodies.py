"""Request bodies on the Istio gateways, in the real Envoy, without the flag.

istiod builds a WasmPlugin's Wasm filter without `allow_on_headers_stop_iteration`
(it cannot be set). Without it, proxy-wasm-cpp-host turns a filter's pause on
the request headers into StopAllIterationAndWatermark and Envoy's filter
manager keeps the body away from that filter until it continues: a filter
that holds the headers while it reads the body waits forever. istio/generate.py
therefore emits no WasmPlugin for a chain that would hold them (web: sanitize's
orders JSON rule; app: that rule and replay-guard's Content-Digest), and sets
sanitize's `unknown_length_body: "refuse"` in every WasmPlugin (411 instead of
holding the headers to count a body of unannounced size).

This starts the real Envoy (.venv) with, per gateway, two listeners routed to
a recording upstream in this process:

* `wasmplugin-<gw>`: the chain as istiod builds it from the WasmPlugins
  (test_envoy_equivalence.wasm_filter_from_plugin: no flag). For web and app,
  which get no WasmPlugin, the WasmPlugins generate.wasm_plugin would build:
  what a hand-made WasmPlugin install of them would run;
* `envoyfilter-<gw>`: the chain of the gateway's EnvoyFilter (the flag where
  envoy/envoy.yaml.tmpl sets it), the output the refusal points to.

* `chain-<gw>`: the chain build's one plugin (istio/generated/<gw>/chain/):
  its WasmPlugin without the flag (secure, internal, egress) or its
  EnvoyFilter with it (web, app); for web and app also `chainwp-<gw>`, the
  chain WasmPlugin generate.wasm_plugin would build, which the generator
  refuses: what a hand-made chain WasmPlugin of them would run;

and proves, for each body behaviour, which holds: it works without the flag,
or the gateway's WasmPlugin is refused and the would-be chain indeed never
answers (asserted with a short timeout), while the EnvoyFilter answers it.
Every call has a timeout; nothing here waits for Envoy's own timeouts.
"""

from __future__ import annotations

import http.client
import json
import re
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import chain
import generate
from test_envoy_equivalence import (ENVOY, HCM_TYPE, ROUTER, chain_filters, filters_from_envoyfilter,
                                    wasm_filter_from_plugin)
from test_manifests import envoy_filter_doc, istio_order

sys.path.insert(0, str(chain.REPO / "tests" / "integration"))
from signing import Signer  # noqa: E402  (independent RFC 9421 signer)

CERTS = chain.REPO / "examples" / "certs"
#: An answer Envoy gives in milliseconds gets this long (a loaded 2-core machine).
PROMPT = 5.0
#: How long a request the flag-off chain holds is watched for an answer that must not come.
HANG = 3.0
AUTHORITY = "gw.example"
SMALL = b'{"item_id":"a","quantity":1}'
OVERSIZED = b'{"x":"' + b"a" * 70_000 + b'"}'  # > max_body_bytes (65536) on every gateway


# ------------------------------------------------------------------ upstream

class Upstream(ThreadingHTTPServer):
    """Records every request that reaches it: (method, path, headers, body)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = b""
            while (size := int(self.rfile.readline().split(b";")[0].strip(), 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:
            self.server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        out = b'{"upstream":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _any

    def log_message(self, *args):  # quiet
        pass


# --------------------------------------------------------------------- Envoy

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listener(name: str, port: int, http_filters: list[dict], tls: bool) -> dict:
    hcm = {
        "@type": HCM_TYPE, "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}}]}]},
        "http_filters": http_filters + [ROUTER],
    }
    chain_ = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if tls:  # the secure gateway: mTLS, san-authz reads the verified certificate
        chain_["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(CERTS / "server.pem")},
                                      "private_key": {"filename": str(CERTS / "server.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(CERTS / "ca.pem")}}}}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain_]}


def _static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


class Gateways:
    """The running Envoy: listener name -> port, and the upstream."""

    def __init__(self, ports: dict[str, int], upstream: Upstream, config: dict):
        self.ports, self.upstream, self.config = ports, upstream, config

    def wasm_filters(self, listener: str) -> list[dict]:
        for item in self.config["static_resources"]["listeners"]:
            if item["name"] == listener:
                hcm = item["filter_chains"][0]["filters"][0]["typed_config"]
                return [f["typed_config"]["config"] for f in hcm["http_filters"] if f["name"] != ROUTER["name"]]
        raise KeyError(listener)


@pytest.fixture(scope="module")
def gateways(manifests, plugins, would_be_plugins, refused, chains, chain_docs, gateway_chains, tmp_path_factory):
    if not ENVOY.exists():
        pytest.fail(f"{ENVOY} missing: run `make venv`")
    modules = chain.packaged_modules(chains)
    upstream = Upstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    closed = _free_port()  # fds and issuer: nothing listens (the filters' callouts fail fast)
    listeners, ports = [], {}
    for gateway in chain.GATEWAYS:
        source = would_be_plugins[gateway] if gateway in refused else plugins[gateway]
        variants = {
            f"wasmplugin-{gateway}": [wasm_filter_from_plugin(p, modules) for p in istio_order(source)],
            f"envoyfilter-{gateway}": filters_from_envoyfilter(envoy_filter_doc(manifests, gateway), modules),
            f"chain-{gateway}": chain_filters(chain_docs[gateway], modules),
        }
        if gateway in refused:
            c = gateway_chains[gateway]
            would_be = generate.wasm_plugin(c, generate.oci.image_for(c.filter, modules[c.filter]),
                                            generate.recorded_registry())
            variants[f"chainwp-{gateway}"] = [wasm_filter_from_plugin(would_be, modules)]
        for name, filters in variants.items():
            ports[name] = _free_port()
            listeners.append(_listener(name, ports[name], filters, tls=gateway == "secure"))
    admin = _free_port()
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": [
            _static_cluster("upstream", upstream.server_address[1]),
            _static_cluster("fds", closed), _static_cluster("issuer", closed)]},
    }
    tmp = tmp_path_factory.mktemp("wasmplugin-bodies")
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = dict(os.environ)
    env["REPLAY_GUARD_MASTER_V1"] = (chain.REPO / "examples" / "keys" / "app-master.key").read_text().strip()
    env["OIDC_CLIENT_SECRET"] = (chain.REPO / "examples" / "keys" / "oidc-client-secret").read_text().strip()
    log = (tmp / "envoy.log").open("w")
    proc = subprocess.Popen(
        [str(ENVOY), "-c", str(tmp / "envoy.yaml"), "--disable-hot-restart", "--concurrency", "1",
         "--log-level", "warn", "--component-log-level", "wasm:info"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail("envoy exited: " + (tmp / "envoy.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("envoy not ready in 120 s: " + (tmp / "envoy.log").read_text()[-3000:])
            time.sleep(0.1)
        yield Gateways(ports, upstream, config)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        upstream.shutdown()


# ------------------------------------------------------------------ requests

def _connection(gw: Gateways, listener: str, timeout: float) -> http.client.HTTPConnection:
    port = gw.ports[listener]
    if listener.endswith("-secure"):
        ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        ctx.load_cert_chain(str(CERTS / "partner-billing.pem"), str(CERTS / "partner-billing.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
        # the demo server certificate is issued for localhost
        conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout),
                                    server_hostname="localhost")
        return conn
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def post(gw: Gateways, listener: str, path: str, body: bytes, *, chunked: bool = False,
         headers: dict[str, str] | None = None, timeout: float = PROMPT):
    """(status, JSON body, seconds), or None when no answer came within `timeout`."""
    conn = _connection(gw, listener, timeout)
    hdrs = {"host": AUTHORITY, "content-type": "application/json", **(headers or {})}
    start = time.monotonic()
    try:
        if chunked:  # HTTP/1.1 chunked: no content-length announces the size
            half = len(body) // 2
            conn.request("POST", path, body=iter([body[:half], body[half:]]), headers=hdrs, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
    except (TimeoutError, socket.timeout):
        return None
    finally:
        conn.close()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    return resp.status, doc, time.monotonic() - start


def answered(result, status: int, error: str | None = None) -> dict | None:
    assert result is not None, f"no answer in {PROMPT} s (expected {status})"
    got, doc, seconds = result
    assert got == status, (got, doc)
    if error is not None:
        assert doc == {"error": error, "message": doc["message"]}, doc
    assert seconds < PROMPT
    return doc


def no_answer(gw: Gateways, listener: str, path: str, body: bytes, headers: dict[str, str] | None = None):
    """The request is held and never answered; its headers never reach the upstream."""
    before = gw.upstream.count()
    result = post(gw, listener, path, body, headers=headers, timeout=HANG)
    assert result is None, f"{listener} {path}: answered {result[:2]} without the flag"
    assert gw.upstream.count() == before, "the upstream saw a request whose body was not judged"


def signed(path: str, body: bytes, digest_of: bytes | None = None) -> dict[str, str]:
    """Signature headers for POST `path`; `digest_of` signs a Content-Digest of other bytes."""
    return Signer.demo().sign("POST", AUTHORITY, path, digest_of if digest_of is not None else body)


# --------------------------------------------------------------------- tests

def test_only_the_envoyfilter_chains_carry_the_flag(gateways, refused):
    for gateway in chain.GATEWAYS:
        for cfg in gateways.wasm_filters(f"wasmplugin-{gateway}"):
            assert "allow_on_headers_stop_iteration" not in cfg, (gateway, cfg["name"])
        flagged = {c["root_id"] for c in gateways.wasm_filters(f"envoyfilter-{gateway}")
                   if c.get("allow_on_headers_stop_iteration")}
        assert flagged == ({"sanitize", "replay_guard", "e2ee"} if gateway == "app" else {"sanitize"}), gateway
        # the chain build: one filter, the flag only on the EnvoyFilter of a refused gateway
        [one] = gateways.wasm_filters(f"chain-{gateway}")
        assert one["root_id"] == "chain"
        assert one.get("allow_on_headers_stop_iteration", False) == (gateway in refused), gateway
        if gateway in refused:
            [would_be] = gateways.wasm_filters(f"chainwp-{gateway}")
            assert "allow_on_headers_stop_iteration" not in would_be
    assert sorted(refused) == ["app", "web"]


GENERATED = [("egress", "/partner-a/orders"), ("secure", "/partner/v1/billing/orders")]


@pytest.mark.parametrize("kind", ["wasmplugin", "chain"])
@pytest.mark.parametrize("gateway, path", GENERATED, ids=[g for g, _ in GENERATED])
def test_a_generated_wasmplugin_chain_answers_every_body_without_the_flag(gateways, gateway, path, kind):
    """kind: the per-filter WasmPlugins, or the chain build's one WasmPlugin."""
    listener = f"{kind}-{gateway}"
    up = gateways.upstream
    before = up.count()
    # a body of unannounced size, small or oversized: 411 at the headers (no hold)
    answered(post(gateways, listener, path, SMALL, chunked=True), 411, "length_required")
    answered(post(gateways, listener, path, OVERSIZED, chunked=True), 411, "length_required")
    # an announced oversized body: 413 at the headers
    answered(post(gateways, listener, path, OVERSIZED), 413, "body_too_large")
    assert up.count() == before, "a refused body reached the upstream"
    # an announced body within the limit passes whole, its length intact
    doc = answered(post(gateways, listener, path, SMALL), 200)
    assert doc == {"upstream": True}
    method, seen_path, headers, body = up.seen[-1]
    assert (method, seen_path, body, headers.get("content-length")) == ("POST", path, SMALL, str(len(SMALL)))
    if gateway == "secure":  # san-authz ran on the verified certificate
        assert headers.get("x-gateway-client-san") == "spiffe://partner.example/ns/partner-a/sa/billing"


@pytest.mark.parametrize("gateway, path", GENERATED, ids=[g for g, _ in GENERATED])
def test_the_same_gateway_as_envoyfilter_counts_bodies_of_unannounced_size(gateways, gateway, path):
    """The difference WASMPLUGIN_CONFIG makes: with the flag, sanitize holds and counts."""
    listener = f"envoyfilter-{gateway}"
    up = gateways.upstream
    before = up.count()
    answered(post(gateways, listener, path, OVERSIZED, chunked=True), 413, "body_too_large")
    assert up.count() == before
    answered(post(gateways, listener, path, SMALL, chunked=True), 200)
    assert up.seen[-1][3] == SMALL


def h2_post(gw: Gateways, listener: str, path: str, body: bytes, *, announce: bool) -> tuple[int, bytes]:
    """POST over HTTP/2 (h2c prior knowledge) with nghttp: with `announce` a
    content-length, else the body in DATA frames and no content-length.

    The status is read from the response HEADERS frame as nghttp logs it
    (`-v`): a gateway that answers before the upload ends then resets the
    stream, and a client that reports that reset as its error (curl does,
    now and then: "Stream error in the HTTP/2 framing layer") would hide the
    answer that came first."""
    nghttp = shutil.which("nghttp")
    assert nghttp, "nghttp is missing: `make test-istio` installs it (apt-get install nghttp2-client)"
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        cmd = [nghttp, "-v", "-H", ":method: POST", "-H", f":authority: {AUTHORITY}",
               "-H", "content-type: application/json", "-d", f.name,
               *([] if announce else ["--no-content-length"]),
               f"http://127.0.0.1:{gw.ports[listener]}{path}"]
        run = subprocess.run(cmd, capture_output=True, timeout=PROMPT + 5, check=False)
    out = run.stdout.decode(errors="replace")
    status = re.search(r"recv \(stream_id=\d+\) :status: (\d+)", out)
    assert status, (out[-2000:], run.stderr.decode(errors="replace")[-500:])
    start = out.find('{"')
    body_out = b""
    if start >= 0:
        try:
            doc, _ = json.JSONDecoder().raw_decode(out[start:])
            body_out = json.dumps(doc).encode()
        except ValueError:
            pass
    return int(status.group(1)), body_out


def test_http2_bodies_without_content_length_get_411_from_the_egress_wasmplugin(gateways):
    path, up = "/partner-a/orders", gateways.upstream
    before = up.count()
    status, out = h2_post(gateways, "wasmplugin-egress", path, SMALL, announce=False)
    assert (status, json.loads(out)["error"]) == (411, "length_required")
    assert up.count() == before
    status, _ = h2_post(gateways, "wasmplugin-egress", path, SMALL, announce=True)
    assert status == 200 and up.seen[-1][3] == SMALL
    # the EnvoyFilter holds the headers and counts the stream instead
    status, _ = h2_post(gateways, "envoyfilter-egress", path, SMALL, announce=False)
    assert status == 200 and up.seen[-1][3] == SMALL


def test_web_as_wasmplugin_would_hang_on_the_orders_body_rule(gateways, refused):
    """web is refused (sanitize routes[1].body): the would-be chain never judges the
    body; the EnvoyFilter judges it at once. Unannounced sizes get 411 either way
    round: that part alone would work."""
    assert [(f.name, field) for f, field, _ in refused["web"].holds] == [("sanitize", "routes[1].body")]
    bad = b'{"item_id":"a","quantity":0}'
    no_answer(gateways, "wasmplugin-web", "/api/v1/orders", bad)
    no_answer(gateways, "wasmplugin-web", "/api/v1/orders", SMALL)
    doc = answered(post(gateways, "envoyfilter-web", "/api/v1/orders", bad), 400, "invalid_body")
    assert "quantity" in doc["message"]
    # the chain build: a chain WasmPlugin would hang the same way; the
    # generated chain EnvoyFilter (the flag set) judges the body at once
    no_answer(gateways, "chainwp-web", "/api/v1/orders", bad)
    doc = answered(post(gateways, "chain-web", "/api/v1/orders", bad), 400, "invalid_body")
    assert "quantity" in doc["message"]
    answered(post(gateways, "chain-web", "/api/v1/orders", SMALL), 401)
    answered(post(gateways, "chain-web", "/api/v1/public/x", OVERSIZED, chunked=True), 413, "body_too_large")
    # a valid body passes sanitize and meets jwt (no token): judged, not held
    answered(post(gateways, "envoyfilter-web", "/api/v1/orders", SMALL), 401)
    answered(post(gateways, "wasmplugin-web", "/api/v1/public/x", OVERSIZED, chunked=True), 411, "length_required")
    answered(post(gateways, "envoyfilter-web", "/api/v1/public/x", OVERSIZED, chunked=True), 413, "body_too_large")


def test_app_as_wasmplugin_would_hang_on_the_content_digest_and_the_body_rule(gateways, refused):
    """app is refused (replay-guard routes[1] and required_components; e2ee,
    which reads every body that may be encrypted; sanitize-body's orders
    rule): replay-guard holds every signed body for its Content-Digest; the
    EnvoyFilter checks it at once."""
    assert [(f.name, field) for f, field, _ in refused["app"].holds] == [
        ("replay-guard", "routes[1]"), ("replay-guard", "required_components"),
        ("e2ee", "routes[1]"), ("e2ee", "routes[2]"), ("e2ee", "default_mode"),
        ("sanitize-body", "routes[0].body")]
    path = "/api/v1/public/upload"
    forged = signed(path, SMALL, digest_of=b'{"other":"body"}')
    no_answer(gateways, "wasmplugin-app", path, SMALL, headers=forged)
    no_answer(gateways, "wasmplugin-app", path, SMALL, headers=signed(path, SMALL))
    answered(post(gateways, "envoyfilter-app", path, SMALL, headers=signed(path, SMALL, digest_of=b'{"other":"body"}')),
             401, "digest_invalid")
    # the chain build (chain_response.wasm): the chain WasmPlugin would hang,
    # the generated chain EnvoyFilter checks the digest at once
    no_answer(gateways, "chainwp-app", path, SMALL, headers=signed(path, SMALL))
    answered(post(gateways, "chain-app", path, SMALL, headers=signed(path, SMALL, digest_of=b'{"other":"body"}')),
             401, "digest_invalid")
    bad = b'{"item_id":"a","quantity":0}'
    no_answer(gateways, "wasmplugin-app", "/api/v1/orders", bad, headers=signed("/api/v1/orders", bad))
    # The body rule (sanitize-body) comes after replay-guard's nonce claim;
    # no gateway-store sidecar runs beside this Envoy, so the claim fails
    # closed first: an answer at once all the same, where the WasmPlugin
    # chain gives none.
    answered(post(gateways, "envoyfilter-app", "/api/v1/orders", bad, headers=signed("/api/v1/orders", bad)),
             503, "replay_check_unavailable")
    answered(post(gateways, "chain-app", "/api/v1/orders", bad, headers=signed("/api/v1/orders", bad)),
             503, "replay_check_unavailable")


def test_the_refused_gateways_generate_no_wasmplugin(generated, refused):
    for gateway in refused:
        files = sorted(p for p in generated if p.startswith(f"{gateway}/wasmplugin/"))
        assert files == [f"{gateway}/wasmplugin/REFUSED.md"]
        assert f"istio/generated/{gateway}/envoyfilter" in generated[files[0]]
    assert generate.refusals(chain.chains()).keys() == refused.keys()


@pytest.mark.parametrize("kind", ["wasmplugin", "envoyfilter", "chain"])
def test_the_internal_gateway_judges_bodies_before_sso_and_sends_nothing_without_a_session(gateways, kind):
    """The internal gateway's sanitize answers bodies the same way (411/413,
    or counted with the flag); a body within the limit then meets oidc, which
    needs a session (none here: 401 login_required) and forwards nothing."""
    listener, path = f"{kind}-internal", "/tools/orders"
    up = gateways.upstream
    before = up.count()
    if kind in ("wasmplugin", "chain"):  # internal's chain is a WasmPlugin (no flag)
        answered(post(gateways, listener, path, SMALL, chunked=True), 411, "length_required")
    else:
        answered(post(gateways, listener, path, OVERSIZED, chunked=True), 413, "body_too_large")
        answered(post(gateways, listener, path, SMALL, chunked=True), 401, "login_required")
    answered(post(gateways, listener, path, OVERSIZED), 413, "body_too_large")
    answered(post(gateways, listener, path, SMALL), 401, "login_required")
    assert up.count() == before, "nothing reached the upstream"
