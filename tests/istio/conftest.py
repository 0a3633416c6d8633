"""Shared fixtures of the Istio packaging tests (tests/istio, run by `make test-istio`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "istio"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import chain  # noqa: E402
import generate  # noqa: E402


@pytest.fixture(scope="session")
def chains() -> dict[str, list[chain.Filter]]:
    return chain.chains()


@pytest.fixture(scope="session")
def generated() -> dict[str, str]:
    """What `make istio` would write now (relative path -> text)."""
    return generate.generate(generate.recorded_registry())


@pytest.fixture(scope="session")
def manifests(generated) -> dict[str, dict]:
    """Every Kubernetes object of the generated files except kustomizations: 'path#i' -> object."""
    out = {}
    for path, text in sorted(generated.items()):
        if not path.endswith(".yaml") or path.endswith("kustomization.yaml"):
            continue
        for i, doc in enumerate(yaml.safe_load_all(text)):
            out[f"{path}#{i}"] = doc
    return out


@pytest.fixture(scope="session")
def refused(chains) -> dict[str, generate.WasmPluginRefused]:
    """gateway -> why it gets no WasmPlugin (its chain holds request headers for the body)."""
    return generate.refusals(chains)


@pytest.fixture(scope="session")
def would_be_plugins(chains) -> dict[str, list[dict]]:
    """gateway -> the WasmPlugins generate.wasm_plugin builds for its chain, the
    refused gateways included (what a WasmPlugin install of them would be)."""
    registry = generate.recorded_registry()
    images = {name: generate.oci.image_for(name, path) for name, path in chain.packaged_modules(chains).items()}
    return {gateway: [generate.wasm_plugin(f, images[f.filter], registry) for f in filters]
            for gateway, filters in chains.items()}


@pytest.fixture(scope="session")
def plugins(manifests) -> dict[str, list[dict]]:
    """gateway -> its generated per-filter WasmPlugins (generation order, the
    chain build's in chain/ left out); refused gateways are absent."""
    out: dict[str, list[dict]] = {}
    for path, doc in manifests.items():
        if doc["kind"] == "WasmPlugin" and not path.split("/")[1] == "chain":
            out.setdefault(doc["metadata"]["labels"]["gateway-filters.io/gateway"], []).append(doc)
    return out


@pytest.fixture(scope="session")
def gateway_chains(chains) -> dict[str, chain.Filter]:
    """gateway -> its chain as ONE filter (the chain build, render.py's chain transform)."""
    return chain.gateway_chains(chains)


@pytest.fixture(scope="session")
def chain_docs(manifests) -> dict[str, dict]:
    """gateway -> the one object of istio/generated/<gateway>/chain/ (a WasmPlugin or an EnvoyFilter)."""
    out: dict[str, dict] = {}
    for path, doc in manifests.items():
        gateway, variant = path.split("/")[:2]
        if variant == "chain":
            assert gateway not in out, f"{gateway}/chain/ holds more than one object"
            out[gateway] = doc
    return out
