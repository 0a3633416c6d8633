"""envoy/render.py's native conversion of the secure gateway (docs/native.md).

san-authz reads the connection's whole peer certificate
(`connection.peer_certificate`, `identity.source: "connection"`), which no
dynamic-module attribute carries. Natively it is read from the
x-forwarded-client-cert element Envoy itself writes from the verified
connection, so the conversion is allowed only where the connection manager
makes Envoy write it (`forward_client_cert_details: SANITIZE_SET` with
`set_current_client_cert_details.cert: true`: a client's own XFCC is
dropped first). Pure render checks: no module or Envoy needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "envoy"))

import render  # noqa: E402  (envoy/render.py)


def secure_filters(text: str) -> list[dict]:
    cfg = yaml.safe_load(text)
    secure = next(lis for lis in cfg["static_resources"]["listeners"] if lis["name"] == "secure")
    return secure["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def envelope(h: dict) -> dict:
    return json.loads(h["typed_config"]["filter_config"]["value"])


def test_the_secure_gateway_runs_natively_reading_the_certificate_envoy_sets_in_xfcc():
    filters = secure_filters(render.render("local", wasm_build="native"))
    blocks = {h["typed_config"]["filter_name"]: h for h in filters
              if h["typed_config"]["@type"].endswith("DynamicModuleFilter")}
    assert set(blocks) == {"sanitize", "san_authz", "route_breaker"}
    assert envelope(blocks["san_authz"])["peer_certificate_from_xfcc"] is True
    assert json.loads(envelope(blocks["san_authz"])["config"])["identity"]["source"] == "connection"
    # Only san-authz reads the certificate.
    assert "peer_certificate_from_xfcc" not in envelope(blocks["sanitize"])


def test_a_connection_manager_that_does_not_set_xfcc_keeps_the_secure_gateway_on_wasm():
    cfg = yaml.safe_load(render.render("local", wasm_build="filters"))
    secure = next(lis for lis in cfg["static_resources"]["listeners"] if lis["name"] == "secure")
    hcm = secure["filter_chains"][0]["filters"][0]["typed_config"]
    for xfcc in ({"forward_client_cert_details": "SANITIZE"},
                 {"forward_client_cert_details": "APPEND_FORWARD"},
                 {"set_current_client_cert_details": {"subject": True, "uri": True}}):
        variant = json.loads(json.dumps(cfg))
        vhcm = next(lis for lis in variant["static_resources"]["listeners"]
                    if lis["name"] == "secure")["filter_chains"][0]["filters"][0]["typed_config"]
        vhcm.update(xfcc)
        filters = secure_filters(render.to_native(yaml.safe_dump(variant)))
        kinds = {h["typed_config"]["@type"].rsplit(".", 1)[-1] for h in filters if h["name"] != "envoy.filters.http.router"}
        assert kinds == {"Wasm"}, (xfcc, kinds)
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"


def gateways(text: str) -> dict[str, list[dict]]:
    """Listener name -> its HTTP filters but the router (gateways only: a
    listener with none, bare, is left out)."""
    cfg = yaml.safe_load(text)
    out = {}
    for lis in cfg["static_resources"]["listeners"]:
        hs = [h for h in lis["filter_chains"][0]["filters"][0]["typed_config"].get("http_filters", [])
              if h["name"] != "envoy.filters.http.router"]
        if hs:
            out[lis["name"]] = hs
    return out


def test_native_chain_runs_each_gateway_the_native_build_converts_as_one_native_chain_filter():
    """WASM_BUILD=native-chain: the gateways the native build converts (the
    same decision, the same environment) each become ONE DynamicModuleFilter
    `chain` carrying the wasm chain's configuration; any other would stay a
    wasm chain, its VM environment its own filters' only."""
    native_env: dict[str, str] = {}
    native = gateways(render.render("local", wasm_build="native", environment=native_env))
    chain = gateways(render.render("local", wasm_build="chain"))
    env: dict[str, str] = {}
    nc = gateways(render.render("local", wasm_build="native-chain", environment=env))
    assert env == native_env and env, "the same secrets go to Envoy's environment"
    converted = {g for g, hs in native.items() if all(h["typed_config"]["@type"].endswith("DynamicModuleFilter")
                                                     for h in hs)}
    assert converted >= {"web", "app", "secure", "egress"}
    for g, hs in nc.items():
        assert [h["name"] for h in hs] == ["chain"], (g, hs)
        tc = hs[0]["typed_config"]
        wasm_conf = chain[g][0]["typed_config"]["config"]
        if g in converted:
            assert tc["@type"].endswith("DynamicModuleFilter"), g
            assert tc["filter_name"] == "chain"
            assert tc["dynamic_module_config"] == {"name": "gateway_native", "metrics_namespace": "wasmcustom"}
            env_ = envelope(hs[0])
            assert json.loads(env_["config"]) == json.loads(wasm_conf["configuration"]["value"]), g
            assert env_.get("allow_on_headers_stop_iteration", False) == wasm_conf.get(
                "allow_on_headers_stop_iteration", False), g
            # Only the secure gateway's san-authz reads the certificate.
            assert env_.get("peer_certificate_from_xfcc", False) == (g == "secure"), g
        else:
            assert tc["@type"].endswith("wasm.v3.Wasm"), g
            kv = tc["config"]["vm_config"].get("environment_variables", {}).get("key_values", {})
            assert not set(kv) & set(env), (g, "a native gateway's secret in a wasm VM")
    # Every shipped gateway runs natively since oidc does: the wasm-chain
    # branch above is for a gateway a render keeps on wasm (a filter not in
    # NATIVE_FILTERS, a clashing secret).
    assert converted >= {"web", "app", "secure", "egress", "internal"}
def test_the_native_render_keeps_prometheus_names_those_of_wasm():
    """Envoy 1.40 strips a dynamic module's metrics_namespace (wasmcustom)
    from /stats/prometheus names only under a runtime guard that is off by
    default (`envoy_wasmcustom_<name>` otherwise); a wasm block registered the
    namespace as long as one remained. The native render turns the guard on
    (a static runtime layer) and keeps the admin layer Envoy has by default."""
    layers = yaml.safe_load(render.render("local", wasm_build="native"))["layered_runtime"]["layers"]
    assert layers == [
        {"name": "gateway_native", "static_layer": {render.STRIP_NAMESPACE_GUARD: True}},
        {"name": "admin", "admin_layer": {}},
    ]
    assert "layered_runtime" not in yaml.safe_load(render.render("local", wasm_build="filters"))
    nc = yaml.safe_load(render.render("local", wasm_build="native-chain"))["layered_runtime"]["layers"]
    assert nc == layers, "native-chain: the same guard"
