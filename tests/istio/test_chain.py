"""The chain build on Istio: istio/generated/<gateway>/chain/.

Each gateway's filters as ONE plugin running chain.wasm (chain_response.wasm
on app, which has e2ee's response steps), configured with the chain's
configuration (envoy/render.py's chain transform: the ordered parts, each
with its filter's own JSON unchanged):

* a WasmPlugin where the chain's pluginConfig (WASMPLUGIN_CONFIG applied to
  each part) holds no request headers for the body (`gatewayctl body-hold
  chain`: each part judged by its filter's own code), else ONE EnvoyFilter
  with allow_on_headers_stop_iteration, the same rule as the per-filter
  WasmPlugins' refusal; a README.md in the folder says which and why;
* the parts are the per-filter chain exactly (names, order, configurations);
* the chain configuration passes `gatewayctl validate chain` (the chain's
  loader and each part's filter) and the chain's JSON Schema; the chain's
  WasmPlugins pass `gatewayctl validate-manifest`, and a part with an unknown
  field or a body rule fails it, naming the field.
The CRD schemas (test_manifests.py), the real Envoy's on_configure
(test_envoy_equivalence.py) and the request bodies (test_wasmplugin_bodies.py)
cover the chain's manifests with the others'.
"""

from __future__ import annotations

import copy
import json
import subprocess

import jsonschema
import pytest
import yaml

import chain
import generate
import oci
from test_manifests import envoy_filter_doc, struct_round_trip

#: What the chain build's Istio output is per gateway: the per-filter
#: WasmPlugins' refusals carry over (web: sanitize's orders body rule; app:
#: replay-guard's Content-Digest, e2ee, sanitize-body's body rule).
EXPECTED_KIND = {"web": "EnvoyFilter", "app": "EnvoyFilter",
                 "secure": "WasmPlugin", "internal": "WasmPlugin", "egress": "WasmPlugin"}


def chain_config_of(doc: dict) -> dict:
    """The chain configuration a chain/ object hands the filter."""
    if doc["kind"] == "WasmPlugin":
        return struct_round_trip(doc["spec"]["pluginConfig"])
    [ext] = [p for p in doc["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
    return json.loads(ext["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])


def test_every_gateway_gets_its_chain_as_one_plugin_of_the_kind_its_bodies_allow(chain_docs, generated, refused):
    assert {g: d["kind"] for g, d in chain_docs.items()} == EXPECTED_KIND
    for gateway, doc in chain_docs.items():
        kind = "wasmplugin" if doc["kind"] == "WasmPlugin" else "envoyfilter"
        files = {p for p in generated if p.startswith(f"{gateway}/chain/")}
        assert files == {f"{gateway}/chain/README.md", f"{gateway}/chain/{kind}.yaml",
                         f"{gateway}/chain/kustomization.yaml"}
        note = generated[f"{gateway}/chain/README.md"]
        assert note.startswith(f"# The {gateway} gateway's chain as ONE {doc['kind']}")
        # the same rule as the per-filter WasmPlugins: refused there, an EnvoyFilter here
        assert (doc["kind"] == "EnvoyFilter") == (gateway in refused)
        kustomization = yaml.safe_load(generated[f"{gateway}/chain/kustomization.yaml"])
        per_filter = yaml.safe_load(generated[f"{gateway}/envoyfilter/kustomization.yaml"])
        assert kustomization["namespace"] == per_filter["namespace"]
        # the same upstreams as the other variants, then the chain's object
        assert kustomization["resources"] == per_filter["resources"][:-1] + [f"{kind}.yaml"]


def test_the_envoyfilter_readme_names_what_holds_the_headers(generated):
    web = generated["web/chain/README.md"]
    assert "filters[0].config.routes[1].body: sanitize: route \"orders\"" in web
    assert "allow_on_headers_stop_iteration" in web and "cannot set it" in web
    app = generated["app/chain/README.md"]
    for field in ("filters[1].config.routes[1]", "filters[1].config.required_components",
                  "filters[2].config.default_mode", "filters[3].config.routes[0].body"):
        assert field in app, field
    assert "sanitize-body: " in app  # the part by its instance name


def test_the_chain_runs_the_per_filter_chain_part_by_part(chains, chain_docs):
    for gateway, doc in chain_docs.items():
        config = chain_config_of(doc)
        # no route names of the local template: Istio's routes are the VirtualServices'
        assert set(config) == {"filters"}, gateway
        parts = config["filters"]
        filters = chains[gateway]
        assert [p.get("instance", p["name"]) for p in parts] == [f.name for f in filters]
        assert [p["name"] for p in parts] == [f.filter for f in filters]
        for p, f in zip(parts, filters, strict=True):
            if doc["kind"] == "WasmPlugin":
                expected = copy.deepcopy(f.config)
                expected.update(generate.WASMPLUGIN_CONFIG.get(f.filter, {}))
            else:  # the EnvoyFilter keeps the example configs unchanged (the flag is set)
                expected = f.config
            assert p["config"] == expected, (gateway, f.name)


def test_the_chain_wasmplugins(chains, chain_docs):
    version, registry = chain.workspace_version(), generate.recorded_registry()
    image = oci.image_for("chain", chain.packaged_modules(chains)["chain"])
    for gateway, doc in chain_docs.items():
        if doc["kind"] != "WasmPlugin":
            continue
        spec, first = doc["spec"], chains[gateway][0]
        assert doc["metadata"]["name"] == f"{gateway}-chain"
        assert doc["metadata"]["namespace"] == generate.GATEWAY_WORKLOADS[gateway]["namespace"]
        assert doc["metadata"]["labels"]["gateway-filters.io/filter"] == "chain"
        assert spec["selector"] == {"matchLabels": generate.GATEWAY_WORKLOADS[gateway]["labels"]}
        # chain.wasm: no gateway with a WasmPlugin has a response filter
        assert spec["url"] == f"oci://{registry}/gateway-filters/chain:{version}"
        assert spec["sha256"] == image.manifest_digest
        assert (spec["phase"], spec["priority"]) == generate.PLACEMENT[first.name] == ("AUTHN", 1000)
        assert spec["pluginName"] == "chain"
        assert spec["failStrategy"] == "FAIL_CLOSE"
        assert spec["type"] == "HTTP" and spec["imagePullPolicy"] == "IfNotPresent"
        wanted = sorted({k for f in chains[gateway] for k in f.env_keys})
        assert [e["name"] for e in spec.get("vmConfig", {}).get("env", [])] == wanted
        assert all(e == {"name": e["name"], "valueFrom": "HOST"} for e in spec.get("vmConfig", {}).get("env", []))
    # internal's oidc reads its client secret from the gateway's environment
    assert chain_docs["internal"]["spec"]["vmConfig"]["env"] == [{"name": "OIDC_CLIENT_SECRET", "valueFrom": "HOST"}]


def test_the_chain_envoyfilters(chains, chain_docs, manifests):
    version, registry = chain.workspace_version(), generate.recorded_registry()
    modules = chain.packaged_modules(chains)
    for gateway, doc in chain_docs.items():
        if doc["kind"] != "EnvoyFilter":
            continue
        # the object name of envoyfilter/ and suite/: applying one replaces the other
        assert doc["metadata"]["name"] == envoy_filter_doc(manifests, gateway)["metadata"]["name"]
        assert doc["spec"]["workloadSelector"] == {"labels": generate.GATEWAY_WORKLOADS[gateway]["labels"]}
        ext = [p for p in doc["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
        http = [p for p in doc["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
        assert len(ext) == len(http) == 1
        assert http[0]["patch"]["operation"] == "INSERT_FIRST"
        name = f"gateway-filters.{gateway}.chain"
        assert ext[0]["patch"]["value"]["name"] == http[0]["patch"]["value"]["name"] == name
        config = ext[0]["patch"]["value"]["typed_config"]["config"]
        assert config["root_id"] == "chain"
        assert config["failure_policy"] == "FAIL_CLOSED"
        assert config["allow_on_headers_stop_iteration"] is True
        image_name = "chain-response" if gateway == "app" else "chain"
        vm = config["vm_config"]
        assert vm["vm_id"] == ("chain_response" if gateway == "app" else "chain")
        assert vm["code"]["remote"]["http_uri"]["uri"] == f"oci://{registry}/gateway-filters/{image_name}:{version}"
        assert vm["code"]["remote"]["sha256"] == oci.image_for(image_name, modules[image_name]).manifest_digest
        wanted = sorted({k for f in chains[gateway] for k in f.env_keys})
        assert sorted(vm["environment_variables"].get("host_env_keys", [])) == wanted
        assert set(vm["environment_variables"]["key_values"]) == {"ISTIO_META_WASM_IMAGE_PULL_POLICY"}
    assert chain_docs["app"]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"][
        "vm_config"]["environment_variables"]["host_env_keys"] == ["REPLAY_GUARD_MASTER_V1"]


def test_the_chain_gets_the_flag_exactly_where_a_part_holds(gateway_chains):
    for c in gateway_chains.values():
        generate.check_body_hold(c)  # the template's flag == gatewayctl body-hold chain on the config
        assert c.allow_on_headers_stop_iteration  # every example config counts unannounced body sizes
        holds = generate.chain_holds(c)
        assert bool(holds) == (c.gateway in ("web", "app")), (c.gateway, holds)


# ---------------------------------------------------------------- gatewayctl

def gatewayctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(generate.gatewayctl()), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False, cwd=chain.REPO)


def test_every_chain_config_passes_gatewayctl_validate_chain(chain_docs, tmp_path):
    for gateway, doc in chain_docs.items():
        path = tmp_path / f"{gateway}.json"
        path.write_text(json.dumps(chain_config_of(doc)), encoding="utf-8")
        result = gatewayctl("validate", "chain", str(path))
        assert result.returncode == 0, (gateway, result.stdout, result.stderr)


def test_gatewayctl_validate_chain_names_a_bad_parts_field(chain_docs, tmp_path):
    config = chain_config_of(chain_docs["secure"])
    config["filters"][1]["config"]["not_a_field"] = True
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = gatewayctl("validate", "chain", str(path))
    assert result.returncode == 1, result.stdout
    assert "filters[1].config" in result.stdout and "not_a_field" in result.stdout, result.stdout


def test_the_chain_config_passes_the_chains_and_each_parts_schema(chain_docs):
    schema = json.loads((chain.REPO / "filters" / "chain" / "config.schema.json").read_text(encoding="utf-8"))
    for gateway, doc in chain_docs.items():
        config = chain_config_of(doc)
        cls = jsonschema.validators.validator_for(schema)
        assert not [e.message for e in cls(schema).iter_errors(config)], gateway
        for part in config["filters"]:
            part_schema = json.loads((chain.REPO / "filters" / part["name"] / "config.schema.json").read_text())
            pcls = jsonschema.validators.validator_for(part_schema)
            assert not [e.message for e in pcls(part_schema).iter_errors(part["config"])], (gateway, part["name"])
        broken = copy.deepcopy(config)
        broken["not_a_field"] = 1
        assert list(cls(schema).iter_errors(broken)), "the chain's schema accepts unknown fields"


def test_validate_manifest_accepts_the_generated_chain_wasmplugins():
    result = gatewayctl("validate-manifest", str(generate.OUT))
    assert result.returncode == 0, result.stdout + result.stderr
    for gateway, kind in EXPECTED_KIND.items():
        if kind == "WasmPlugin":
            assert f"[WasmPlugin {gateway}-chain]" in result.stdout, result.stdout


@pytest.mark.parametrize("mutate, expected", [
    (lambda cfg: cfg["filters"][0]["config"].__setitem__("not_a_field", 1),
     "invalid at `spec.pluginConfig.filters[0].config"),
    (lambda cfg: cfg["filters"][0]["config"].__setitem__("routes", [
        {"name": "upload", "prefix": "/partner-a/upload", "body": {"fields": {}}}]),
     "`spec.pluginConfig.filters[0].config.routes[0].body`"),
    (lambda cfg: cfg["filters"][0]["config"].__setitem__("unknown_length_body", "count"),
     "`spec.pluginConfig.filters[0].config.unknown_length_body`"),
], ids=["unknown-field-in-a-part", "body-rule", "counting-unannounced-bodies"])
def test_validate_manifest_refuses_a_broken_chain_wasmplugin(chain_docs, tmp_path, mutate, expected):
    doc = copy.deepcopy(chain_docs["egress"])
    mutate(doc["spec"]["pluginConfig"])
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = gatewayctl("validate-manifest", str(path))
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout, result.stdout


def test_gatewayctl_body_hold_chain_is_what_the_generator_asks(gateway_chains):
    web = gateway_chains["web"]
    result = gatewayctl("body-hold", "chain", "-", "--json", stdin=json.dumps(generate.plugin_config(web)))
    assert result.returncode == 0, result.stderr
    assert [h["field"] for h in json.loads(result.stdout)] == ["filters[0].config.routes[1].body"]
