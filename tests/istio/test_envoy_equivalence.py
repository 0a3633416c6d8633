"""What Istio would hand Envoy, checked by the real Envoy and the real filters.

No cluster here, so this test does istiod's and istio-agent's translation
itself, following their code (pilot/pkg/model/extensions.go buildWasmConfig /
buildVMConfig; pkg/wasm/convert.go rewriteVMConfig):

* WasmPlugin -> Wasm filter `<ns>.<name>`, root_id = pluginName, configuration =
  StringValue(protojson of pluginConfig as a Struct), runtime v8, INLINE env ->
  key_values, HOST env -> host_env_keys, failStrategy -> failure_policy, in
  istiod's phase/priority order; the oci:// module becomes the built file;
* EnvoyFilter -> its EXTENSION_CONFIG typed configs in its HTTP_FILTER patch
  order, the remote code rewritten to the local module and ISTIO_META_* keys
  stripped (what istio-agent does), plus the upstream CLUSTER patches; both
  variants, the per-filter images and the suite image (one vm_id);
* the chain build (istio/generated/<gw>/chain/): its one WasmPlugin or its one
  EnvoyFilter, translated the same way, on chain.wasm / chain_response.wasm.

`envoy --mode validate` then loads every module and runs its on_configure with
that configuration, so each pluginConfig is judged by the filter's own Rust
config types (deny_unknown_fields), not by a copy of them.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import chain
from test_manifests import envoy_filter_doc, istio_order, struct_round_trip

ENVOY = chain.REPO / ".venv" / "bin" / "envoy"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


def wasm_filter_from_plugin(plugin: dict, modules: dict[str, Path]) -> dict:
    spec = plugin["spec"]
    # The module is the image's (sanitize-body runs sanitize's image).
    name = spec["url"].rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    env = {"key_values": {}}
    host_keys = [e["name"] for e in spec.get("vmConfig", {}).get("env", []) if e.get("valueFrom") == "HOST"]
    for e in spec.get("vmConfig", {}).get("env", []):
        if e.get("valueFrom", "INLINE") == "INLINE":
            env["key_values"][e["name"]] = e.get("value", "")
    if host_keys:
        env["host_env_keys"] = host_keys
    if not env["key_values"]:
        del env["key_values"]
    config = {
        "name": f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}",
        "root_id": spec.get("pluginName", ""),
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(modules[name])}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(struct_round_trip(spec.get("pluginConfig", {})))},
        "failure_policy": FAILURE_POLICY[spec.get("failStrategy", "FAIL_CLOSE")],
    }
    if env:
        config["vm_config"]["environment_variables"] = env
    return {"name": config["name"], "typed_config": {"@type": chain.WASM_TYPE, "config": config}}


def filters_from_envoyfilter(doc: dict, modules: dict[str, Path]) -> list[dict]:
    ext = {}
    for p in doc["spec"]["configPatches"]:
        if p["applyTo"] == "EXTENSION_CONFIG":
            value = copy.deepcopy(p["patch"]["value"])
            vm = value["typed_config"]["config"]["vm_config"]
            image = vm["code"]["remote"]["http_uri"]["uri"].rsplit("/", 1)[1].split(":")[0]
            vm["code"] = {"local": {"filename": str(modules[image])}}
            env = vm.get("environment_variables", {})
            env["key_values"] = {k: v for k, v in env.get("key_values", {}).items() if not k.startswith("ISTIO_META_")}
            if not env["key_values"]:
                del env["key_values"]
            ext[value["name"]] = value
    names: list[str] = []
    for p in doc["spec"]["configPatches"]:
        if p["applyTo"] == "HTTP_FILTER":
            name = p["patch"]["value"]["name"]
            if p["patch"]["operation"] == "INSERT_FIRST":
                names.insert(0, name)
            else:
                after = p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                names.insert(names.index(after) + 1, name)
    return [ext[n] for n in names]


def listener(name: str, port: int, http_filters: list[dict]) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": HCM_TYPE, "stat_prefix": name,
                             "route_config": {"name": name, "virtual_hosts": [
                                 {"name": name, "domains": ["*"], "routes": [
                                     {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                             "http_filters": http_filters + [ROUTER]},
        }]}],
    }


def chain_filters(doc: dict, modules: dict[str, Path]) -> list[dict]:
    """The Envoy HTTP filter(s) istiod/istio-agent make of a chain/ object."""
    if doc["kind"] == "WasmPlugin":
        return [wasm_filter_from_plugin(doc, modules)]
    return filters_from_envoyfilter(doc, modules)


def bootstrap(manifests: dict[str, dict], plugins: dict[str, list[dict]], chains, only: str | None = None,
              chain_docs: dict[str, dict] | None = None) -> dict:
    modules = chain.packaged_modules(chains)
    listeners, clusters = [], {}
    port = 20000
    for gateway in chain.GATEWAYS:
        if only and gateway != only:
            continue
        if gateway in plugins:  # a gateway refused as WasmPlugin has none (test_wasmplugin_bodies.py)
            listeners.append(listener(f"wasmplugin-{gateway}", port,
                                      [wasm_filter_from_plugin(p, modules) for p in istio_order(plugins[gateway])]))
        listeners.append(listener(f"envoyfilter-{gateway}", port + 1,
                                  filters_from_envoyfilter(envoy_filter_doc(manifests, gateway), modules)))
        listeners.append(listener(f"suite-{gateway}", port + 2,
                                  filters_from_envoyfilter(envoy_filter_doc(manifests, gateway, "suite"), modules)))
        if chain_docs is not None:
            listeners.append(listener(f"chain-{gateway}", port + 3, chain_filters(chain_docs[gateway], modules)))
        port += 4
        for d in manifests.values():
            if d["kind"] == "EnvoyFilter" and d["metadata"]["name"] == f"gateway-filters-{gateway}-upstreams":
                for p in d["spec"]["configPatches"]:
                    clusters[p["patch"]["value"]["name"]] = p["patch"]["value"]
    return {"static_resources": {"listeners": listeners, "clusters": list(clusters.values())}}


def envoy_validate(config: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "istio-equivalent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = dict(os.environ)
    # the HOST environment variable the gateway Deployment sets from a Secret
    env["REPLAY_GUARD_MASTER_V1"] = (chain.REPO / "examples" / "keys" / "app-master.key").read_text().strip()
    env["OIDC_CLIENT_SECRET"] = (chain.REPO / "examples" / "keys" / "oidc-client-secret").read_text().strip()
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "--disable-hot-restart", "--log-level", "warn",
         "--component-log-level", "wasm:info", "-c", str(path)],
        capture_output=True, text=True, timeout=180, check=False, env=env,
    )


@pytest.fixture(scope="module", autouse=True)
def _envoy():
    if not ENVOY.exists():
        pytest.fail(f"{ENVOY} missing: run `make venv`")


def test_what_istio_would_configure_passes_envoy_validate(manifests, plugins, chains, chain_docs, tmp_path):
    config = bootstrap(manifests, plugins, chains, chain_docs=chain_docs)
    chain_listeners = [item["name"] for item in config["static_resources"]["listeners"] if item["name"].startswith("chain-")]
    assert chain_listeners == [f"chain-{g}" for g in chain.GATEWAYS]
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("gateway", ["secure", "app"])
def test_an_unknown_field_in_a_chain_part_is_refused_by_that_filter_inside_the_chain(
        manifests, plugins, chains, chain_docs, gateway, tmp_path):
    """secure: the chain's WasmPlugin (pluginConfig); app: the chain's
    EnvoyFilter on chain_response.wasm. The chain loads each part with its
    filter's own loader in Envoy's on_configure, and the error names the part
    and the field."""
    broken = copy.deepcopy(chain_docs)
    doc = broken[gateway]
    if doc["kind"] == "WasmPlugin":
        doc["spec"]["pluginConfig"]["filters"][1]["config"]["not_a_field"] = True
    else:
        config = doc["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["configuration"]
        value = json.loads(config["value"])
        value["filters"][1]["config"]["not_a_field"] = True
        config["value"] = json.dumps(value)
    result = envoy_validate(bootstrap(manifests, plugins, chains, only=gateway, chain_docs=broken), tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "not_a_field" in out, out[-3000:]  # the part's filter names the field
    assert "chain: filters[1]" in out, out[-3000:]  # the chain names the part


def test_an_unknown_plugin_config_field_is_refused_by_the_filter_itself(manifests, plugins, chains, tmp_path):
    broken = copy.deepcopy(plugins)
    target = next(p for p in broken["secure"] if p["metadata"]["name"] == "secure-san-authz")
    target["spec"]["pluginConfig"]["not_a_field"] = True
    result = envoy_validate(bootstrap(manifests, broken, chains, only="secure"), tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "istio-ingress.secure-san-authz" in out, out[-3000:]
    assert "not_a_field" in out, out[-3000:]  # the filter's own error names the field
