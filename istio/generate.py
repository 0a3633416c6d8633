#!/usr/bin/env python3
"""Generate the Istio manifests of every gateway into istio/generated/.

    python3 istio/generate.py                                  # (make istio) rewrite istio/generated/
    python3 istio/generate.py --registry ghcr.io/acme          # another registry (recorded in images.json)
    python3 istio/generate.py --check                          # exit 1 if istio/generated/ is stale

Inputs, never copied by hand:
  * envoy/envoy.yaml.tmpl (through envoy/render.py): each gateway's chain, in
    order, with root_id, vm_id, failure policy, allow_on_headers_stop_iteration,
    VM environment variable names, the referenced upstream clusters; and the
    chain build's configuration of it (render.py's chain transform);
  * examples/config/<filter>/<file>.json: each filter's configuration (the one
    the template inlines) -> `pluginConfig`, unchanged;
  * build/wasm/<lib>.wasm: the built modules (`make build-wasm`,
    `make build-suite` for suite.wasm, `make build-chain` for chain.wasm and
    chain_response.wasm) -> the OCI image manifest digest
    (istio/oci.py, same bytes as `make images`) -> `sha256`.

Outputs (docs/istio.md explains each):
  istio/generated/images.json                         registry, tag, digests and sizes per image
  istio/generated/<gw>/wasmplugin/                    one WasmPlugin per filter + kustomization.yaml, or,
                                                      for a chain that holds request headers for the body
                                                      (below), only REFUSED.md saying why
  istio/generated/<gw>/envoyfilter/                   the same chain as ONE EnvoyFilter (ECDS, vm_id,
                                                      allow_on_headers_stop_iteration) + kustomization.yaml
  istio/generated/<gw>/suite/                         that EnvoyFilter on the suite image (suite.wasm, one
                                                      vm_id for the chain) + kustomization.yaml
  istio/generated/<gw>/chain/                         the chain build: the gateway's filters as ONE plugin
                                                      (chain.wasm, or chain_response.wasm for app), a
                                                      WasmPlugin, or where the chain holds request headers
                                                      for the body an EnvoyFilter; README.md says which
                                                      and why + kustomization.yaml
  istio/generated/<gw>/upstreams/                     EnvoyFilter adding the clusters the filter configs
                                                      name (fds, issuer), when the gateway needs any

WasmPlugin and request bodies: istiod builds a WasmPlugin's Envoy Wasm filter
without `allow_on_headers_stop_iteration` (it cannot be set), and without it a
filter that holds the request headers while it reads the body never gets the
body (proxy-wasm-cpp-host turns its pause into StopAllIterationAndWatermark):
the request waits until Envoy's timeouts. So every WasmPlugin's pluginConfig is
asked, through `gatewayctl body-hold` (the filter crate's own
`Compiled::body_hold`), which of its settings hold the headers; a gateway with
any gets no WasmPlugin at all (a partial chain would skip a check), and its
wasmplugin/REFUSED.md names the filters, the fields and the EnvoyFilter to use.
`WASMPLUGIN_CONFIG` first switches sanitize's count of unannounced body sizes
(which holds) to its 411 answer (which does not). The chain build follows the
same rule with one plugin: its pluginConfig (WASMPLUGIN_CONFIG applied to each
part) is judged by `gatewayctl body-hold chain`, and a chain that holds gets
the chain as one EnvoyFilter (the flag set) instead of a WasmPlugin.

Standard library + PyYAML; cargo builds gatewayctl.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chain  # noqa: E402
import oci  # noqa: E402

OUT = chain.REPO / "istio" / "generated"
DEFAULT_REGISTRY = "registry.example.com"

# Where each gateway runs: namespace and the gateway Deployment's pod labels.
# Convention (docs/istio.md): install each gateway with the Istio `gateway`
# Helm chart, release name istio-<kind>gateway[-<gateway>]; the chart labels the
# pods `istio: <release name without "istio-">`. The egress gateway keeps
# Istio's conventional name.
GATEWAY_WORKLOADS: dict[str, dict] = {
    "web": {"namespace": "istio-ingress", "labels": {"istio": "ingressgateway-web"}},
    "app": {"namespace": "istio-ingress", "labels": {"istio": "ingressgateway-app"}},
    "secure": {"namespace": "istio-ingress", "labels": {"istio": "ingressgateway-secure"}},
    # internal web tools behind SSO: an ingress gateway of its own (TLS with
    # the tools' server certificate, no client certificate; the oidc filter).
    "internal": {"namespace": "istio-ingress", "labels": {"istio": "ingressgateway-internal"}},
    "egress": {"namespace": "istio-egress", "labels": {"istio": "egressgateway"}},
}

# Namespace of the services behind the clusters that the filter configs name
# (the demo services: fds, issuer): <cluster>.<namespace>.svc.cluster.local.
UPSTREAM_NAMESPACE = "gateway-demo"

# Istio runs WasmPlugins phase by phase (AUTHN, then Istio's authn filter, AUTHZ,
# then Istio's RBAC, STATS, UNSPECIFIED; pilot/pkg/networking/core/listener_builder.go),
# and within a phase by DESCENDING priority. One number per filter, the same on
# every gateway; the tests check that sorting by (phase, -priority) gives each
# gateway's chain exactly as envoy/envoy.yaml.tmpl has it.
PLACEMENT: dict[str, tuple[str, int]] = {
    "sanitize": ("AUTHN", 1000),  # first: cleans what every later filter reads
    "jwt": ("AUTHN", 900),  # verifies the credential, publishes the identity
    "replay-guard": ("AUTHN", 800),  # (app) the credential of the app gateway
    "e2ee": ("AUTHN", 700),  # (app) decrypts under the key id replay-guard verified
    "oidc": ("AUTHN", 850),  # (internal) the SSO session, before anything reads the identity
    "sanitize-body": ("AUTHN", 600),  # (app) sanitize's JSON body rules, on e2ee's plaintext
    "san-authz": ("AUTHZ", 1000),  # (secure) certificate SAN -> host/path/method rules
    "fds-block": ("AUTHZ", 900),  # block lists on the verified identity
    "passport": ("STATS", 1000),  # after every authz (Istio's RBAC too): no passport for a denied request
    "route-breaker": ("STATS", 900),  # last before Istio's stats/router, sees upstream outcomes
}
PHASE_ORDER = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")

# What a WasmPlugin's pluginConfig changes from the example config. istiod
# cannot set allow_on_headers_stop_iteration, so sanitize must not hold the
# headers to count a body of unannounced size: it answers 411 instead
# (docs/filters/sanitize.md, `unknown_length_body`). Anything else that still
# holds the headers refuses the gateway's WasmPlugins (module docstring).
WASMPLUGIN_CONFIG: dict[str, dict] = {
    "sanitize": {"unknown_length_body": "refuse"},
}

FAIL_STRATEGY = {"FAIL_CLOSED": "FAIL_CLOSE", "UNSPECIFIED": "FAIL_CLOSE", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}

WASM_TYPE = chain.WASM_TYPE
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
HCM = "envoy.filters.network.http_connection_manager"
PART_OF = {"app.kubernetes.io/part-of": "gateway-filters"}


# --------------------------------------------------------------------- helpers

class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # noqa: D102 - never emit &anchors/*aliases
        return True


def dump(docs: list[dict], header: str) -> str:
    body = "---\n".join(
        yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
        for d in docs
    )
    return header + body


def header(*sources: str) -> str:
    lines = ["# GENERATED by istio/generate.py (`make istio`): do not edit.", "# Sources:"]
    lines += [f"#   {s}" for s in sources]
    return "\n".join(lines) + "\n"


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(chain.REPO))
    except ValueError:
        return str(path)


def oci_url(registry: str, image: oci.Image) -> str:
    return f"oci://{registry}/{image.reference}"


def clusters_named(value: object) -> set[str]:
    """Every string under a "cluster" key of a filter configuration."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "cluster" and isinstance(v, str):
                found.add(v)
            else:
                found |= clusters_named(v)
    elif isinstance(value, list):
        for v in value:
            found |= clusters_named(v)
    return found


def plugin_name(f: chain.Filter) -> str:
    return f"{f.gateway}-{f.name}"


def labels(f_gateway: str, filter_name: str | None = None) -> dict[str, str]:
    out = dict(PART_OF)
    out["gateway-filters.io/gateway"] = f_gateway
    if filter_name:
        out["gateway-filters.io/filter"] = filter_name
    return out


# ------------------------------------------------------- body hold (gatewayctl)

@functools.lru_cache(maxsize=1)
def gatewayctl() -> Path:
    """target/release/gatewayctl, built (or found current) by cargo once per run."""
    cargo = os.environ.get("CARGO", "cargo")
    try:
        subprocess.run([cargo, "build", "--release", "-q", "-p", "gatewayctl"], cwd=chain.REPO, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"cannot build gatewayctl (it judges which configs hold request headers): {e}") from e
    return chain.REPO / "target" / "release" / "gatewayctl"


@functools.lru_cache(maxsize=None)
def _body_hold(filter_name: str, config_json: str) -> tuple[tuple[str, str], ...]:
    proc = subprocess.run([str(gatewayctl()), "body-hold", filter_name, "-", "--json"], input=config_json,
                          capture_output=True, text=True, check=False, cwd=chain.REPO)
    if proc.returncode != 0:
        raise SystemExit(f"gatewayctl body-hold {filter_name}: {proc.stdout.strip()} {proc.stderr.strip()}")
    return tuple((h["field"], h["reason"]) for h in json.loads(proc.stdout))


def ctl_name(f: chain.Filter) -> str:
    """The name gatewayctl knows `f` by: the filter, or `chain` for a gateway's chain."""
    return chain.CHAIN if chain.is_chain(f) else f.filter


def body_hold(filter_name: str, config: dict) -> list[tuple[str, str]]:
    """(field, reason) of every setting of `config` that makes the filter hold
    the request headers while it reads the body: the filter's own Rust code
    decides (`gatewayctl body-hold`, Compiled::body_hold). Empty: the config
    runs correctly without allow_on_headers_stop_iteration."""
    return list(_body_hold(filter_name, json.dumps(config, sort_keys=True)))


def plugin_config(f: chain.Filter) -> dict:
    """The WasmPlugin's pluginConfig: the example config with WASMPLUGIN_CONFIG
    applied (for a chain: to each part, by its filter's name)."""
    out = copy.deepcopy(f.config)
    if chain.is_chain(f):
        for part in out["filters"]:
            part["config"].update(copy.deepcopy(WASMPLUGIN_CONFIG.get(part["name"], {})))
    else:
        out.update(copy.deepcopy(WASMPLUGIN_CONFIG.get(f.filter, {})))
    return out


def placement(f: chain.Filter) -> tuple[str, int]:
    """(phase, priority) of f's WasmPlugin; a chain's is its first filter's."""
    if chain.is_chain(f):
        first = f.config["filters"][0]
        return PLACEMENT[first.get("instance", first["name"])]
    return PLACEMENT[f.name]


class WasmPluginRefused(Exception):
    """A gateway whose chain holds request headers for the body under WasmPlugin."""

    def __init__(self, gateway: str, holds: list[tuple[chain.Filter, str, str]]):
        self.gateway = gateway
        self.holds = holds  # (filter, field, reason)
        super().__init__(refusal_message(gateway, holds))


def refusal_message(gateway: str, holds: list[tuple[chain.Filter, str, str]]) -> str:
    lines = [f"{gateway}: no WasmPlugin generated: its chain holds the request headers while it reads the body:"]
    for f, field, reason in holds:
        lines.append(f"  {f.name} ({rel(f.config_file)}) `{field}`: {reason}")
    lines += [
        "That needs Envoy's allow_on_headers_stop_iteration: true on the Wasm filter, which a WasmPlugin",
        "cannot set (istiod builds the filter without it): the body would never reach the filter and the",
        "request would wait until Envoy's timeouts. Use the EnvoyFilter, which sets it:",
        f"  kubectl apply -k istio/generated/{gateway}/envoyfilter   (or istio/generated/{gateway}/suite)",
        "(docs/istio.md, \"WasmPlugin and request bodies\")",
    ]
    return "\n".join(lines)


def check_body_hold(f: chain.Filter) -> None:
    """The Envoy template must set allow_on_headers_stop_iteration exactly on the
    filters whose configuration holds the headers (else the local stack and
    the EnvoyFilter would hang, or set a flag nothing needs)."""
    holds = body_hold(ctl_name(f), f.config)
    if bool(holds) != f.allow_on_headers_stop_iteration:
        fields = ", ".join(field for field, _ in holds) or "nothing"
        raise SystemExit(
            f"envoy/envoy.yaml.tmpl: {f.gateway}/{f.name} has allow_on_headers_stop_iteration "
            f"{str(f.allow_on_headers_stop_iteration).lower()} but its configuration ({rel(f.config_file)}) "
            f"holds the request headers for: {fields}")


def wasm_plugins(gateway: str, filters: list[chain.Filter], images: dict[str, oci.Image], registry: str) -> list[dict]:
    """The gateway's WasmPlugins, or WasmPluginRefused when any pluginConfig
    would hold the request headers for the body (all or nothing: a chain
    without one of its filters would skip that filter's checks)."""
    holds = [(f, field, reason) for f in filters for field, reason in body_hold(f.filter, plugin_config(f))]
    if holds:
        raise WasmPluginRefused(gateway, holds)
    return [wasm_plugin(f, images[f.filter], registry) for f in filters]


def refusals(chains: dict[str, list[chain.Filter]]) -> dict[str, WasmPluginRefused]:
    """gateway -> why it gets no WasmPlugin (gateways that get them are absent)."""
    out = {}
    for gateway, filters in chains.items():
        holds = [(f, field, reason) for f in filters for field, reason in body_hold(f.filter, plugin_config(f))]
        if holds:
            out[gateway] = WasmPluginRefused(gateway, holds)
    return out


REFUSED_NOTE = """# No WasmPlugin for the {gateway} gateway

GENERATED by istio/generate.py (`make istio`): do not edit.

```
{message}
```

This directory has no kustomization.yaml on purpose: `kubectl apply -k` of it
fails instead of installing a gateway whose body checks would hang.
"""


# ---------------------------------------------------------------- WasmPlugin

def wasm_plugin(f: chain.Filter, image: oci.Image, registry: str) -> dict:
    phase, priority = placement(f)
    where = GATEWAY_WORKLOADS[f.gateway]
    spec: dict = {
        "selector": {"matchLabels": dict(where["labels"])},
        "url": oci_url(registry, image),
        # the image MANIFEST digest: what istio-agent compares (docs/istio.md)
        "sha256": image.manifest_digest,
        "imagePullPolicy": "IfNotPresent",
        "phase": phase,
        "priority": priority,
        "type": "HTTP",
        "pluginName": f.root_id,
        "failStrategy": FAIL_STRATEGY[f.failure_policy],
    }
    if f.env_keys:
        # Secrets come from the gateway's environment (a Kubernetes Secret in
        # the gateway Deployment), never from the manifest.
        spec["vmConfig"] = {"env": [{"name": k, "valueFrom": "HOST"} for k in f.env_keys]}
    spec["pluginConfig"] = plugin_config(f)
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": plugin_name(f), "namespace": where["namespace"], "labels": labels(f.gateway, f.name)},
        "spec": spec,
    }


# --------------------------------------------------------------- EnvoyFilter

def ecds_name(f: chain.Filter) -> str:
    return f"gateway-filters.{f.gateway}.{f.name}"


def vm_block(vm_id: str, env_keys: list[str], image: oci.Image, registry: str) -> dict:
    """A `vm_config`: the oci:// image pinned by its manifest digest, and the
    VM environment variables read from the gateway's own environment."""
    env: dict = {"key_values": {"ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent"}}
    if env_keys:
        env["host_env_keys"] = list(env_keys)
    return {
        "vm_id": vm_id,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"remote": {
            "http_uri": {"uri": oci_url(registry, image), "cluster": "_", "timeout": "30s"},
            "sha256": image.manifest_digest,
        }},
        "environment_variables": env,
    }


def filter_vm(f: chain.Filter, image: oci.Image, registry: str) -> dict:
    """The per-filter build's VM: the filter's own vm_id and image."""
    return vm_block(f.vm_id, list(f.env_keys), image, registry)


def suite_vm(filters: list[chain.Filter], image: oci.Image, registry: str) -> dict:
    """The suite build's VM, the SAME block for every filter of the gateway:
    Envoy shares a VM only between plugins whose vm_id and vm_config are
    identical, so the environment is the union of the filters' (the host keys
    replay-guard reads on app). One vm_id per gateway pod: the module is
    compiled once and every worker runs one VM for the whole chain."""
    keys: list[str] = []
    for f in filters:
        keys += [k for k in f.env_keys if k not in keys]
    return vm_block(chain.SUITE, keys, image, registry)


def extension_config(f: chain.Filter, vm_config: dict) -> dict:
    """The Envoy Wasm filter config of `f`, served over ECDS; istio-agent fetches
    the oci:// image, checks `sha256` and rewrites `remote` to a local file."""
    config: dict = {
        "name": f.name,
        "root_id": f.root_id,
        "vm_config": copy.deepcopy(vm_config),
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(f.config, separators=(",", ":"), ensure_ascii=False),
        },
        "failure_policy": f.failure_policy,
    }
    if f.allow_on_headers_stop_iteration:
        config["allow_on_headers_stop_iteration"] = True
    return {"name": ecds_name(f), "typed_config": {"@type": WASM_TYPE, "config": config}}


def envoy_filter(gateway: str, filters: list[chain.Filter], vms: list[dict]) -> dict:
    """The chain as one EnvoyFilter; vms[i] is filters[i]'s vm_config (filter_vm
    for the per-filter build, the one suite_vm block for the suite build). Both
    variants have the same object and ECDS names: applying one replaces the other."""
    where = GATEWAY_WORKLOADS[gateway]
    patches: list[dict] = [
        {"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "ADD", "value": extension_config(f, vm)}}
        for f, vm in zip(filters, vms, strict=True)
    ]
    previous: str | None = None
    for f in filters:
        filter_match: dict = {"name": HCM}
        if previous is not None:
            filter_match["subFilter"] = {"name": previous}
        patches.append({
            "applyTo": "HTTP_FILTER",
            "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": filter_match}}},
            "patch": {
                # the first filter goes first in the chain, every next one right after the previous
                "operation": "INSERT_FIRST" if previous is None else "INSERT_AFTER",
                "value": {
                    "name": ecds_name(f),
                    "config_discovery": {
                        # wait for the extension (no traffic without the filter)
                        "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                        # RBAC: istio-agent answers a failed module fetch with a
                        # deny-all RBAC filter (allow-all only for FAIL_OPEN)
                        "type_urls": [WASM_TYPE, RBAC_TYPE],
                    },
                },
            },
        })
        previous = ecds_name(f)
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": f"gateway-filters-{gateway}", "namespace": where["namespace"], "labels": labels(gateway)},
        "spec": {"workloadSelector": {"labels": dict(where["labels"])}, "configPatches": patches},
    }


# ------------------------------------------------------------- chain build

def chain_holds(c: chain.Filter) -> list[tuple[str, str]]:
    """(field, reason) of every setting of the chain's WasmPlugin pluginConfig
    that holds the request headers for the body (`gatewayctl body-hold chain`:
    each part judged by its filter, fields `filters[i].config.<field>`)."""
    return body_hold(chain.CHAIN, plugin_config(c))


def chain_wasm_plugin(c: chain.Filter, image: oci.Image, registry: str) -> dict:
    """The gateway's chain as ONE WasmPlugin, or WasmPluginRefused when its
    pluginConfig holds the request headers for the body."""
    holds = chain_holds(c)
    if holds:
        raise WasmPluginRefused(c.gateway, [(c, field, reason) for field, reason in holds])
    return wasm_plugin(c, image, registry)


def chain_envoy_filter(c: chain.Filter, image: oci.Image, registry: str) -> dict:
    """The gateway's chain as ONE EnvoyFilter: one ECDS resource
    (gateway-filters.<gw>.chain: the chain's vm_id, its image, the flag where
    a part holds) inserted first in the HCM. Same object name as
    ../envoyfilter/ and ../suite/: applying one replaces the others."""
    return envoy_filter(c.gateway, [c], [vm_block(c.vm_id, list(c.env_keys), image, registry)])


CHAIN_WASMPLUGIN_NOTE = """# The {gateway} gateway's chain as ONE WasmPlugin

GENERATED by istio/generate.py (`make istio`): do not edit.

`wasmplugin.yaml` runs the {gateway} gateway's filters ({parts}) in ONE
Envoy filter: the `{image}` image ({module}, the chain build, docs/chain.md),
`pluginConfig` = the chain's configuration (each part its filter's
configuration as in ../wasmplugin/, `WASMPLUGIN_CONFIG` of
istio/generate.py applied), placed where the first filter goes
({phase}, priority {priority}).

Why a WasmPlugin: no part of this chain holds the request headers while it
reads the body (`gatewayctl body-hold chain`), so it runs correctly without
`allow_on_headers_stop_iteration`, which a WasmPlugin cannot set.

Apply `kubectl apply -k istio/generated/{gateway}/chain` INSTEAD of
../wasmplugin/, ../envoyfilter/ or ../suite/ (delete the one installed
first: together they would run the filters twice). docs/istio.md,
"The chain build on Istio".
"""

CHAIN_ENVOYFILTER_NOTE = """# The {gateway} gateway's chain as ONE EnvoyFilter (no WasmPlugin)

GENERATED by istio/generate.py (`make istio`): do not edit.

`envoyfilter.yaml` runs the {gateway} gateway's filters ({parts}) in ONE
Envoy filter: the `{image}` image ({module}, vm_id `{vm_id}`, the chain build,
docs/chain.md), its configuration the chain's (each part its filter's example
configuration, unchanged), with `allow_on_headers_stop_iteration: true`.

Why not a WasmPlugin: the chain holds the request headers while it reads the
body, which needs that flag, and a WasmPlugin cannot set it (the request
would wait until Envoy's timeouts):

```
{holds}
```

The EnvoyFilter has the object name of ../envoyfilter/ and ../suite/
(`gateway-filters-{gateway}`): applying one replaces the other in place.
Do not combine it with WasmPlugins of the same gateway. docs/istio.md,
"The chain build on Istio".
"""


SUITE_NOTE = (
    "# The suite build: the same chain, ECDS names and object name as ../envoyfilter/,\n"
    "# every filter running from the suite image in ONE VM per worker (vm_id suite;\n"
    "# WasmPlugin cannot set vm_id). Apply this directory OR ../envoyfilter/ (the same\n"
    "# EnvoyFilter name: one replaces the other), not with ../wasmplugin/ (docs/istio.md).\n"
)


def upstreams_filter(gateway: str, clusters: list[dict]) -> dict:
    where = GATEWAY_WORKLOADS[gateway]
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": f"gateway-filters-{gateway}-upstreams", "namespace": where["namespace"], "labels": labels(gateway)},
        "spec": {
            "workloadSelector": {"labels": dict(where["labels"])},
            "configPatches": [
                {"applyTo": "CLUSTER", "match": {"context": "GATEWAY"}, "patch": {"operation": "ADD", "value": c}}
                for c in clusters
            ],
        },
    }


# Clusters that are a sidecar container of the gateway pod itself, reached on
# loopback (docs/istio.md, "Shared state"): the gateway-store in front of Redis.
SIDECAR_CLUSTERS = frozenset({"gateway_store"})


def mesh_cluster(local: dict) -> dict:
    """The template's cluster, pointed at the Kubernetes Service of the same
    name, or, for a sidecar of the gateway pod, left on loopback."""
    out = copy.deepcopy(local)
    if local["name"] in SIDECAR_CLUSTERS:
        out["type"] = "STATIC"
        return out
    out["type"] = "STRICT_DNS"
    for group in out["load_assignment"]["endpoints"]:
        for ep in group["lb_endpoints"]:
            # a Service name is a DNS label: oidc_provider -> oidc-provider
            service = local["name"].replace("_", "-")
            ep["endpoint"]["address"]["socket_address"]["address"] = f"{service}.{UPSTREAM_NAMESPACE}.svc.cluster.local"
    return out


def template_clusters() -> dict[str, dict]:
    doc = yaml.safe_load(chain.render.render(profile="local", wasm_build="filters"))
    return {c["name"]: c for c in doc["static_resources"]["clusters"]}


def kustomization(namespace: str, resources: list[str]) -> dict:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": resources,
    }


# ------------------------------------------------------------------- generate

def generate(registry: str = DEFAULT_REGISTRY) -> dict[str, str]:
    """relative path under istio/generated -> file content."""
    chains = chain.chains()
    whole = chain.gateway_chains(chains)
    mods = chain.packaged_modules(chains)
    missing = sorted(set(mods) - set(PLACEMENT) - {chain.SUITE} - set(chain.CHAIN_IMAGES.values()))
    if missing:
        raise SystemExit(f"no phase/priority for {missing}: add them to PLACEMENT in istio/generate.py")
    images = {name: oci.image_for(name, path) for name, path in mods.items()}
    tclusters = template_clusters()
    files: dict[str, str] = {}

    summary = {
        "registry": registry,
        "tag": chain.workspace_version(),
        "note": "generated by istio/generate.py; image_size = manifest + config + layer bytes",
        "images": {name: images[name].summary() for name in sorted(images)},
    }
    files["images.json"] = json.dumps(summary, indent=2) + "\n"

    for filters in chains.values():
        for f in filters:
            check_body_hold(f)
    for c in whole.values():
        check_body_hold(c)
    refused = refusals(chains)

    for gateway, filters in chains.items():
        ns = GATEWAY_WORKLOADS[gateway]["namespace"]
        needed = sorted(set().union(*(clusters_named(f.config) for f in filters))) if filters else []
        unknown = [c for c in needed if c not in tclusters]
        if unknown:
            raise SystemExit(f"{gateway}: filter configs name clusters {unknown} that envoy/envoy.yaml.tmpl lacks")
        upstream_dirs: list[str] = []
        if needed:
            files[f"{gateway}/upstreams/upstreams.yaml"] = dump(
                [upstreams_filter(gateway, [mesh_cluster(tclusters[c]) for c in needed])],
                header("envoy/envoy.yaml.tmpl (clusters " + ", ".join(needed) + ")"),
            )
            files[f"{gateway}/upstreams/kustomization.yaml"] = dump(
                [kustomization(ns, ["upstreams.yaml"])], header("istio/generate.py"))
            upstream_dirs = ["../upstreams"]

        if gateway in refused:
            files[f"{gateway}/wasmplugin/REFUSED.md"] = REFUSED_NOTE.format(
                gateway=gateway, message=str(refused[gateway]))
        else:
            plugin_files = []
            for f, plugin in zip(filters, wasm_plugins(gateway, filters, images, registry), strict=True):
                name = f"{plugin_name(f)}.yaml"
                overridden = sorted(WASMPLUGIN_CONFIG.get(f.filter, {}))
                files[f"{gateway}/wasmplugin/{name}"] = dump(
                    [plugin],
                    header(f"envoy/envoy.yaml.tmpl (listener {gateway}, filter {f.name})",
                           rel(f.config_file) + " (pluginConfig"
                           + (f"; {', '.join(overridden)} from WASMPLUGIN_CONFIG in istio/generate.py)"
                              if overridden else ")"),
                           f"{rel(f.wasm)} -> image sha256:{images[f.filter].manifest_digest}"),
                )
                plugin_files.append(name)
            files[f"{gateway}/wasmplugin/kustomization.yaml"] = dump(
                [kustomization(ns, upstream_dirs + plugin_files)], header("istio/generate.py"))

        sources = (f"envoy/envoy.yaml.tmpl (listener {gateway}: " + " -> ".join(f.name for f in filters) + ")",
                   *(rel(f.config_file) for f in filters))
        files[f"{gateway}/envoyfilter/envoyfilter.yaml"] = dump(
            [envoy_filter(gateway, filters, [filter_vm(f, images[f.filter], registry) for f in filters])],
            header(*sources),
        )
        files[f"{gateway}/envoyfilter/kustomization.yaml"] = dump(
            [kustomization(ns, upstream_dirs + ["envoyfilter.yaml"])], header("istio/generate.py"))
        suite = images[chain.SUITE]
        files[f"{gateway}/suite/envoyfilter.yaml"] = dump(
            [envoy_filter(gateway, filters, [suite_vm(filters, suite, registry)] * len(filters))],
            header(*sources, f"{rel(mods[chain.SUITE])} -> image sha256:{suite.manifest_digest}") + SUITE_NOTE,
        )
        files[f"{gateway}/suite/kustomization.yaml"] = dump(
            [kustomization(ns, upstream_dirs + ["envoyfilter.yaml"])], header("istio/generate.py"))

        c = whole[gateway]
        image = images[c.filter]
        chain_sources = (f"envoy/envoy.yaml.tmpl (listener {gateway}) through envoy/render.py --wasm-build chain "
                         "(the chain's configuration)",
                         *(rel(f.config_file) for f in filters),
                         f"{rel(c.wasm)} -> image sha256:{image.manifest_digest}")
        note = dict(gateway=gateway, parts=" -> ".join(f.name for f in filters), image=image.reference,
                    module=c.wasm.name, vm_id=c.vm_id)
        try:
            plugin = chain_wasm_plugin(c, image, registry)
        except WasmPluginRefused as refusal:
            files[f"{gateway}/chain/envoyfilter.yaml"] = dump(
                [chain_envoy_filter(c, image, registry)], header(*chain_sources))
            files[f"{gateway}/chain/README.md"] = CHAIN_ENVOYFILTER_NOTE.format(
                **note, holds="\n".join(f"{field}: {reason}" for _, field, reason in refusal.holds))
            chain_file = "envoyfilter.yaml"
        else:
            phase, priority = placement(c)
            files[f"{gateway}/chain/wasmplugin.yaml"] = dump(
                [plugin], header(*chain_sources[:-1], "pluginConfig: WASMPLUGIN_CONFIG in istio/generate.py "
                                 "applied to the parts", chain_sources[-1]))
            files[f"{gateway}/chain/README.md"] = CHAIN_WASMPLUGIN_NOTE.format(
                **note, phase=phase, priority=priority)
            chain_file = "wasmplugin.yaml"
        files[f"{gateway}/chain/kustomization.yaml"] = dump(
            [kustomization(ns, upstream_dirs + [chain_file])], header("istio/generate.py"))
    return files


def recorded_registry() -> str:
    try:
        return json.loads((OUT / "images.json").read_text(encoding="utf-8"))["registry"]
    except (OSError, ValueError, KeyError):
        return DEFAULT_REGISTRY


def stale(files: dict[str, str]) -> list[str]:
    """What differs between `files` and istio/generated/ (missing, changed, extra)."""
    problems = []
    on_disk = {str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file()} if OUT.exists() else set()
    for path, text in sorted(files.items()):
        target = OUT / path
        if not target.exists():
            problems.append(f"missing: {path}")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"changed: {path}")
    problems += [f"extra: {p}" for p in sorted(on_disk - set(files))]
    return problems


def write(files: dict[str, str]) -> None:
    if OUT.exists():
        for p in sorted(OUT.rglob("*"), reverse=True):
            if p.is_file():
                p.unlink()
            elif p.is_dir():
                p.rmdir()
    for path, text in files.items():
        target = OUT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", help=f"image registry host[/path] (default: the one in images.json, else {DEFAULT_REGISTRY})")
    parser.add_argument("--check", action="store_true", help="only report whether istio/generated/ is current")
    args = parser.parse_args(argv)
    files = generate(args.registry or recorded_registry())
    if args.check:
        problems = stale(files)
        for p in problems:
            print(p)
        if problems:
            print("istio/generated/ is stale: run `make istio`")
            return 1
        print("istio/generated/ is current")
        return 0
    write(files)
    print(f"wrote {len(files)} files under {rel(OUT)}")
    for refusal in refusals(chain.chains()).values():
        print(refusal, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
