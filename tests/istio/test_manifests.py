"""The generated Istio manifests: current, accepted by Istio's CRDs, faithful to the Envoy chain.

* istio/generated/ equals what istio/generate.py produces from the Envoy
  template, the example configs and the built modules (no drift);
* every manifest passes the CRD's OpenAPI schema (unknown fields rejected) and
  its CEL rules (tests/istio/crd.py), and mutated copies do not;
* sorting each gateway's WasmPlugins the way istiod does (phase, then priority
  descending) gives the chain of envoy/envoy.yaml.tmpl;
* a gateway whose chain would hold request headers for the body under
  WasmPlugin (no allow_on_headers_stop_iteration) gets no WasmPlugin, and a
  REFUSED.md naming the filters, fields and the EnvoyFilter to use; no
  generated WasmPlugin holds them (the filters' own code judges, via gatewayctl);
* every pluginConfig is the example JSON (with WASMPLUGIN_CONFIG applied),
  passes the filter's own JSON Schema (filters/<name>/config.schema.json,
  generated from its Rust config types) and survives the protobuf Struct
  (double) round trip Istio puts it through;
* `sha256` is the manifest digest of the image built from the current module.
The real filters' own config parsers judge the same configs in test_envoy_equivalence.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import jsonschema
import pytest
import yaml

import chain
import crd
import generate
import oci

PHASE_RANK = {p: i for i, p in enumerate(generate.PHASE_ORDER)}
INT32_MIN = -(2**31)


def istio_order(plugins: list[dict]) -> list[dict]:
    """istiod's order: by phase (AUTHN, AUTHZ, STATS, unspecified), then priority descending.

    pilot/pkg/networking/core/listener_builder.go appends the phases in that
    order; pilot/pkg/model/push_context.go sortByPriority sorts each phase by
    priority, highest first, a missing priority counting as MinInt32.
    """
    def key(p: dict) -> tuple[int, int]:
        spec = p["spec"]
        phase = spec.get("phase", "UNSPECIFIED_PHASE")
        prio = spec.get("priority")
        return PHASE_RANK[phase], -(prio if prio is not None else INT32_MIN)
    return sorted(plugins, key=key)


def struct_round_trip(value):
    """What the filter receives: pluginConfig -> google.protobuf.Struct -> protojson.

    Struct numbers are IEEE doubles; Go's protojson prints them like
    JavaScript (integral values below 1e21 without exponent or fraction).
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        d = float(value)
        if math.isfinite(d) and d == int(d) and abs(d) < 1e21:
            return int(d)
        return d
    if isinstance(value, list):
        return [struct_round_trip(v) for v in value]
    return {k: struct_round_trip(v) for k, v in value.items()}


# ----------------------------------------------------------------- freshness

def test_generated_files_are_current(generated):
    problems = generate.stale(generated)
    assert not problems, (
        "istio/generated/ is stale (the chain, an example config or a module changed): "
        "run `make istio` and commit the result\n  " + "\n  ".join(problems))


def test_crd_extract_is_current():
    if not crd.SHARED_CRD_FILE.exists():
        pytest.skip(f"{crd.SHARED_CRD_FILE} absent: validating against the committed extract")
    expected = crd.extract_text()
    if crd.EXTRACT_FILE.read_text(encoding="utf-8") != expected:
        import os
        if os.environ.get("UPDATE_CRDS") == "1":
            crd.EXTRACT_FILE.write_text(expected, encoding="utf-8")
        else:
            pytest.fail(f"{crd.EXTRACT_FILE.name} differs from {crd.SHARED_CRD_FILE}: rerun with UPDATE_CRDS=1")


def test_every_gateway_and_filter_is_covered(chains, plugins, refused, manifests, generated):
    assert set(plugins) == set(chain.GATEWAYS) - set(refused)
    for gateway, filters in chains.items():
        if gateway in refused:
            assert [p for p in generated if p.startswith(f"{gateway}/wasmplugin/")] == [f"{gateway}/wasmplugin/REFUSED.md"]
            continue
        names = sorted(p["metadata"]["name"] for p in plugins[gateway])
        assert names == sorted(f"{gateway}-{f.name}" for f in filters)
    envoy_filters = {d["metadata"]["name"] for d in manifests.values() if d["kind"] == "EnvoyFilter"}
    for gateway in chain.GATEWAYS:
        assert f"gateway-filters-{gateway}" in envoy_filters


# -------------------------------------------------------- CRD schema and CEL

def test_every_manifest_passes_the_crd_schema_and_cel_rules(manifests):
    assert manifests
    failures = {key: errs for key, doc in manifests.items() if (errs := crd.validate(doc))}
    assert not failures, json.dumps(failures, indent=2)


def envoy_filter_doc(manifests, gateway: str, variant: str = "envoyfilter") -> dict:
    """The chain's EnvoyFilter of one variant: istio/generated/<gateway>/<variant>/
    (`envoyfilter`: per-filter images; `suite`: the suite image, one vm_id)."""
    return next(d for k, d in manifests.items() if k.startswith(f"{gateway}/{variant}/envoyfilter.yaml#"))


def _first(manifests, kind, name_part=""):
    return copy.deepcopy(next(d for d in manifests.values() if d["kind"] == kind and name_part in d["metadata"]["name"]))


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"].__setitem__("priorty", 5), "Additional properties are not allowed ('priorty'"),
    (lambda d: d["spec"].__setitem__("phase", "AUTHENTICATION"), "'AUTHENTICATION' is not one of"),
    (lambda d: d["spec"].__setitem__("failStrategy", "FAIL_CLOSED"), "'FAIL_CLOSED' is not one of"),
    (lambda d: d["spec"].__setitem__("sha256", "sha256:" + "0" * 64), "does not match"),
    (lambda d: d["spec"].__setitem__("priority", 2**31), "is greater than the maximum"),
    (lambda d: d["spec"].pop("url"), "'url' is a required property"),
    (lambda d: d["spec"]["selector"].__setitem__("labels", {"istio": "x"}), "Additional properties are not allowed ('labels'"),
    (lambda d: d["metadata"].__setitem__("name", "Web_Sanitize"), "does not match"),
    (lambda d: d["spec"].__setitem__("targetRefs", [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "web"}]),
     "only one of targetRefs or selector can be set"),
    (lambda d: d["spec"]["selector"]["matchLabels"].__setitem__("istio", "ingress*"), "wildcard not allowed in label value match"),
    (lambda d: d["spec"].__setitem__("url", "ftp://registry.example.com/x:1"), "url must have schema one of"),
    (lambda d: d["spec"].__setitem__("vmConfig", {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}),
     "value may only be set when valueFrom is INLINE"),
    (lambda d: d["spec"].__setitem__("vmConfig", {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}),
     "duplicate entry"),
], ids=["unknown-field", "bad-phase", "envoy-spelling-of-fail-strategy", "digest-with-prefix", "priority-over-int32",
        "no-url", "selector-labels-is-not-wasmplugin", "bad-name", "selector-and-targetRefs", "wildcard-label",
        "ftp-url", "host-env-with-value", "duplicate-env"])
def test_a_broken_wasmplugin_fails_validation(manifests, mutate, expected):
    doc = _first(manifests, "WasmPlugin", "secure-sanitize")
    assert crd.validate(doc) == []
    mutate(doc)
    errors = crd.validate(doc)
    assert any(expected in e for e in errors), errors


def test_the_gateway_api_variant_with_target_refs_is_valid(manifests):
    """docs/istio.md: attach to a Kubernetes Gateway with targetRefs instead of the selector."""
    doc = _first(manifests, "WasmPlugin", "secure-sanitize")
    del doc["spec"]["selector"]
    doc["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "secure"}]
    assert crd.validate(doc) == []
    doc["spec"]["targetRefs"][0]["namespace"] = "other"
    assert any("cross namespace" in e for e in crd.validate(doc))


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"]["configPatches"][0].__setitem__("applyTo", "WASM"), "'WASM' is not one of"),
    (lambda d: d["spec"]["configPatches"][-1]["match"].__setitem__("context", "INGRESS"), "'INGRESS' is not one of"),
    (lambda d: d["spec"]["configPatches"][-1]["patch"].__setitem__("operaton", "ADD"), "Additional properties are not allowed"),
    (lambda d: d["spec"]["configPatches"][-1]["match"].__setitem__("waypoint", {"portNumber": 80}),
     "only support waypointMatch when context is WAYPOINT"),
    (lambda d: d["spec"].__setitem__("targetRefs", [{"kind": "Gateway", "name": "web"}]),
     "only one of targetRefs or workloadSelector can be set"),
], ids=["bad-applyTo", "bad-context", "unknown-patch-field", "waypoint-match-on-gateway", "selector-and-targetRefs"])
def test_a_broken_envoyfilter_fails_validation(manifests, mutate, expected):
    doc = _first(manifests, "EnvoyFilter", "gateway-filters-web")
    assert crd.validate(doc) == []
    mutate(doc)
    errors = crd.validate(doc)
    assert any(expected in e for e in errors), errors


def test_a_cel_rule_without_a_python_twin_is_an_error():
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.foo == 1", "message": "m"}]}
    assert "without a Python twin" in crd.cel_errors(schema, {})[0]


# ------------------------------------------------------------- chain order

def test_istio_ordering_reproduces_each_envoy_chain(chains, plugins, would_be_plugins):
    # the generated WasmPlugins, and the refused gateways' would-be ones (the
    # same builder: right as soon as Istio can set the flag)
    for gateway, filters in chains.items():
        for items in (plugins.get(gateway), would_be_plugins[gateway]):
            if items is None:
                continue
            ordered = [p["metadata"]["labels"]["gateway-filters.io/filter"] for p in istio_order(items)]
            assert ordered == [f.name for f in filters], gateway


def test_priorities_are_unique_within_a_phase_on_every_gateway(would_be_plugins):
    for gateway, items in would_be_plugins.items():
        keys = [(p["spec"]["phase"], p["spec"]["priority"]) for p in items]
        assert len(keys) == len(set(keys)), (gateway, keys)


def test_the_envoyfilter_inserts_the_chain_in_order(chains, manifests):
    for gateway, filters in chains.items():
        doc = envoy_filter_doc(manifests, gateway)
        chain_list = ["envoy.filters.http.router"]
        for p in doc["spec"]["configPatches"]:
            if p["applyTo"] != "HTTP_FILTER":
                continue
            name = p["patch"]["value"]["name"]
            if p["patch"]["operation"] == "INSERT_FIRST":
                chain_list.insert(0, name)
            else:
                assert p["patch"]["operation"] == "INSERT_AFTER"
                after = p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                chain_list.insert(chain_list.index(after) + 1, name)
        assert chain_list == [f"gateway-filters.{gateway}.{f.name}" for f in filters] + ["envoy.filters.http.router"]


def test_envoyfilter_keeps_the_settings_wasmplugin_cannot_express(chains, manifests):
    for gateway, filters in chains.items():
        doc = envoy_filter_doc(manifests, gateway)
        configs = {p["patch"]["value"]["name"]: p["patch"]["value"]["typed_config"]["config"]
                   for p in doc["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"}
        for f in filters:
            c = configs[f"gateway-filters.{gateway}.{f.name}"]
            assert c["vm_config"]["vm_id"] == f.vm_id
            assert c["root_id"] == f.root_id
            assert c.get("allow_on_headers_stop_iteration", False) == f.allow_on_headers_stop_iteration
            assert c["failure_policy"] == f.failure_policy == "FAIL_CLOSED"
            assert json.loads(c["configuration"]["value"]) == f.config
            # set exactly where the filter's own code says the config holds the
            # headers for the body (generate.check_body_hold enforces it too)
            assert c.get("allow_on_headers_stop_iteration", False) == bool(generate.body_hold(f.filter, f.config)), f
    # the body-checking filters are the ones that need it
    assert {f.name for fs in chains.values() for f in fs if f.allow_on_headers_stop_iteration} == {
        "sanitize", "replay-guard", "e2ee", "sanitize-body"}


def _without_vm(doc: dict) -> dict:
    out = copy.deepcopy(doc)
    for p in out["spec"]["configPatches"]:
        if p["applyTo"] == "EXTENSION_CONFIG":
            del p["patch"]["value"]["typed_config"]["config"]["vm_config"]
    return out


def test_the_suite_envoyfilter_is_the_same_chain_on_one_shared_vm(chains, manifests):
    version = chain.workspace_version()
    registry = generate.recorded_registry()
    suite_image = oci.image_for(chain.SUITE, chain.packaged_modules(chains)[chain.SUITE])
    for gateway, filters in chains.items():
        per_filter, suite = envoy_filter_doc(manifests, gateway), envoy_filter_doc(manifests, gateway, "suite")
        # same object name, ECDS names, order, root_ids, configs and policies:
        # applying one variant replaces the other in place
        assert _without_vm(suite) == _without_vm(per_filter), gateway
        vms = [p["patch"]["value"]["typed_config"]["config"]["vm_config"]
               for p in suite["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
        assert len(vms) == len(filters)
        # Envoy shares a VM only between identical vm_configs
        assert all(vm == vms[0] for vm in vms), gateway
        vm = vms[0]
        assert vm["vm_id"] == "suite"
        assert vm["code"]["remote"]["http_uri"]["uri"] == f"oci://{registry}/gateway-filters/suite:{version}"
        assert vm["code"]["remote"]["sha256"] == suite_image.manifest_digest
        wanted_keys = sorted({k for f in filters for k in f.env_keys})
        assert sorted(vm["environment_variables"].get("host_env_keys", [])) == wanted_keys
    assert envoy_filter_doc(manifests, "app", "suite")["spec"]["configPatches"][0]["patch"]["value"][
        "typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"] == ["REPLAY_GUARD_MASTER_V1"]


def test_the_suite_kustomization_brings_the_gateways_upstreams(generated):
    for gateway in chain.GATEWAYS:
        suite = yaml.safe_load(generated[f"{gateway}/suite/kustomization.yaml"])
        per_filter = yaml.safe_load(generated[f"{gateway}/envoyfilter/kustomization.yaml"])
        assert suite == per_filter


# ------------------------------------------------------------- WasmPlugin fields

def test_wasmplugin_fields(chains, plugins):
    version = chain.workspace_version()
    registry = generate.recorded_registry()
    for gateway, filters in chains.items():
        if gateway not in plugins:
            continue
        by_filter = {p["metadata"]["labels"]["gateway-filters.io/filter"]: p for p in plugins[gateway]}
        for f in filters:
            spec = by_filter[f.name]["spec"]
            assert spec["url"] == f"oci://{registry}/gateway-filters/{f.name}:{version}"
            assert spec["imagePullPolicy"] == "IfNotPresent"
            assert spec["failStrategy"] == "FAIL_CLOSE"
            assert spec["pluginName"] == f.root_id
            assert spec["selector"] == {"matchLabels": generate.GATEWAY_WORKLOADS[gateway]["labels"]}
            assert by_filter[f.name]["metadata"]["namespace"] == generate.GATEWAY_WORKLOADS[gateway]["namespace"]
            # gateway listeners are CLIENT-mode in istiod: a `mode: SERVER` match would silently drop the plugin
            assert all(m.get("mode") != "SERVER" for m in spec.get("match", []))


def test_sha256_pins_the_image_manifest_digest_of_the_current_module(chains, plugins, manifests):
    images = {name: oci.image_for(name, path) for name, path in chain.packaged_modules(chains).items()}
    for gateway, items in plugins.items():
        by_filter = {p["metadata"]["labels"]["gateway-filters.io/filter"]: p for p in items}
        for f in chains[gateway]:
            image = images[f.name]
            assert by_filter[f.name]["spec"]["sha256"] == image.manifest_digest
            assert by_filter[f.name]["spec"]["sha256"] != image.wasm_sha256  # not the module's own hash
    for doc in manifests.values():
        if doc["kind"] == "EnvoyFilter":
            for p in doc["spec"]["configPatches"]:
                if p["applyTo"] == "EXTENSION_CONFIG":
                    remote = p["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["remote"]
                    name = remote["http_uri"]["uri"].rsplit("/", 1)[1].split(":")[0]
                    assert remote["sha256"] == images[name].manifest_digest


def test_secrets_come_from_the_gateway_environment_never_the_manifest(would_be_plugins, manifests, generated):
    # app is refused as a WasmPlugin (replay-guard holds the headers for the
    # body); the builder still declares the secret as a HOST variable
    replay = [p for p in would_be_plugins["app"] if p["metadata"]["name"] == "app-replay-guard"][0]
    envs = replay["spec"]["vmConfig"]["env"]
    assert envs == [{"name": "REPLAY_GUARD_MASTER_V1", "valueFrom": "HOST"}]
    declared = {s["env"] for s in replay["spec"]["pluginConfig"]["master_secrets"]}
    assert declared == {e["name"] for e in envs}
    app = envoy_filter_doc(manifests, "app")
    keys = {k for p in app["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"
            for k in p["patch"]["value"]["typed_config"]["config"]["vm_config"]["environment_variables"].get(
                "host_env_keys", [])}
    assert keys == {"REPLAY_GUARD_MASTER_V1"}
    # the internal gateway's oidc client secret: the same rule
    oidc = [p for p in would_be_plugins["internal"] if p["metadata"]["name"] == "internal-oidc"][0]
    assert oidc["spec"]["vmConfig"]["env"] == [{"name": "OIDC_CLIENT_SECRET", "valueFrom": "HOST"}]
    assert oidc["spec"]["pluginConfig"]["client_secret_env"] == "OIDC_CLIENT_SECRET"
    for file in ("app-master.key", "oidc-client-secret"):
        secret = (chain.REPO / "examples" / "keys" / file).read_text().strip()
        for path, text in generated.items():
            assert secret not in text, (file, path)


# ------------------------------------------------------------- pluginConfig

def test_plugin_config_is_the_example_json_with_the_wasmplugin_overrides(chains, plugins):
    # the one override: sanitize answers 411 to a body of unannounced size
    # instead of holding the headers to count it
    assert generate.WASMPLUGIN_CONFIG == {"sanitize": {"unknown_length_body": "refuse"}}
    for gateway, items in plugins.items():
        by_filter = {p["metadata"]["labels"]["gateway-filters.io/filter"]: p for p in items}
        for f in chains[gateway]:
            example = json.loads(f.config_file.read_text(encoding="utf-8"))
            example.update(generate.WASMPLUGIN_CONFIG.get(f.filter, {}))
            assert by_filter[f.name]["spec"]["pluginConfig"] == example, f.config_file


# ------------------------------------------------ WasmPlugin and request bodies

def test_the_gateways_whose_chain_holds_request_headers_get_no_wasmplugin(refused, generated):
    # web: sanitize's orders JSON rule; app: replay-guard's Content-Digest
    # check, e2ee's decryption and that JSON rule in sanitize's second pass
    # (sanitize-body, after e2ee). secure and egress hold nothing once
    # sanitize answers 411 to unannounced body sizes.
    assert sorted(refused) == ["app", "web"]
    expected = {
        "web": [("sanitize", "routes[1].body")],
        "app": [("replay-guard", "routes[1]"), ("replay-guard", "required_components"),
                ("e2ee", "routes[1]"), ("e2ee", "routes[2]"), ("e2ee", "default_mode"),
                ("sanitize-body", "routes[0].body")],
    }
    for gateway, refusal in refused.items():
        assert [(f.name, field) for f, field, _ in refusal.holds] == expected[gateway]
        message = str(refusal)
        assert message.startswith(f"{gateway}: no WasmPlugin generated")
        for f, field, reason in refusal.holds:
            assert f"{f.name} ({f.config_file.relative_to(chain.REPO)}) `{field}`: {reason}" in message
        assert "allow_on_headers_stop_iteration" in message
        assert f"kubectl apply -k istio/generated/{gateway}/envoyfilter" in message
        note = generated[f"{gateway}/wasmplugin/REFUSED.md"]
        assert message in note and "no kustomization.yaml" in note
    assert "replay-guard" in str(refused["app"]) and "Content-Digest" in str(refused["app"])
    assert '"orders"' in str(refused["web"])


def test_no_generated_wasmplugin_holds_the_request_headers(plugins):
    # judged by each filter's own code (gatewayctl body-hold -> Compiled::body_hold)
    assert plugins
    for items in plugins.values():
        for p in items:
            name = p["metadata"]["labels"]["gateway-filters.io/filter"]
            kind = "sanitize" if name == "sanitize-body" else name
            assert generate.body_hold(kind, p["spec"]["pluginConfig"]) == [], p["metadata"]["name"]


def test_the_refusal_follows_the_configuration(chains):
    """Derived from each pluginConfig, not from a list of gateways: give
    egress's sanitize a JSON body rule and egress is refused too."""
    images = {name: oci.image_for(name, path) for name, path in chain.packaged_modules(chains).items()}
    registry = generate.recorded_registry()
    egress = chains["egress"]
    assert len(generate.wasm_plugins("egress", egress, images, registry)) == len(egress)
    config = copy.deepcopy(egress[0].config)
    assert egress[0].name == "sanitize"
    config["routes"] = [{"name": "upload", "prefix": "/partner-a/upload", "body": {"fields": {}}}]
    changed = [dataclasses.replace(egress[0], config=config)] + egress[1:]
    with pytest.raises(generate.WasmPluginRefused) as err:
        generate.wasm_plugins("egress", changed, images, registry)
    assert [(f.name, field) for f, field, _ in err.value.holds] == [("sanitize", "routes[0].body")]
    assert "istio/generated/egress/envoyfilter" in str(err.value)
    with pytest.raises(generate.WasmPluginRefused):
        generate.wasm_plugins("web", chains["web"], images, registry)


def test_the_template_sets_the_flag_exactly_where_a_config_holds_the_headers(chains):
    for filters in chains.values():
        for f in filters:
            generate.check_body_hold(f)
    sanitize = chains["web"][0]
    with pytest.raises(SystemExit, match="allow_on_headers_stop_iteration false .* routes\\[1\\].body"):
        generate.check_body_hold(dataclasses.replace(sanitize, allow_on_headers_stop_iteration=False))
    route_breaker = chains["web"][-1]
    with pytest.raises(SystemExit, match="holds the request headers for: nothing"):
        generate.check_body_hold(dataclasses.replace(route_breaker, allow_on_headers_stop_iteration=True))


def test_plugin_config_survives_istios_struct_round_trip(plugins):
    for items in plugins.values():
        for p in items:
            cfg = p["spec"]["pluginConfig"]
            assert json.loads(json.dumps(struct_round_trip(cfg))) == cfg, p["metadata"]["name"]


def _filter_schema(name: str) -> dict:
    path = chain.REPO / "filters" / name / "config.schema.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: every filter ships its generated config schema")
    return json.loads(path.read_text(encoding="utf-8"))


def test_plugin_config_passes_the_filters_own_schema(plugins):
    for items in plugins.values():
        for p in items:
            name = p["metadata"]["labels"]["gateway-filters.io/filter"]
            schema = _filter_schema(name)
            cls = jsonschema.validators.validator_for(schema)
            errors = [e.message for e in cls(schema).iter_errors(p["spec"]["pluginConfig"])]
            assert not errors, (p["metadata"]["name"], errors)


def test_an_unknown_plugin_config_field_fails_the_filters_schema(plugins):
    for items in plugins.values():
        for p in items:
            name = p["metadata"]["labels"]["gateway-filters.io/filter"]
            schema = _filter_schema(name)
            cfg = copy.deepcopy(p["spec"]["pluginConfig"])
            cfg["not_a_field"] = True
            cls = jsonschema.validators.validator_for(schema)
            assert list(cls(schema).iter_errors(cfg)), f"{name}: schema accepts unknown fields"
