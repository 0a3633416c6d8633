"""Push the images to a real registry on loopback and pull them back (skopeo + docker-registry).

A throwaway `docker-registry` (Debian's build of distribution/registry) listens
on 127.0.0.1:<free port> with its storage in a temp dir; `skopeo copy` pushes
each OCI layout from build/images/ (`make images`), the registry's answer is
compared with what the manifests pin, and `skopeo copy` pulls each image back
into an OCI layout where istio-agent's extraction (tests/istio/test_oci.py,
a port of its fetcher) must give back the built module byte for byte.

`make test-istio` installs both tools with apt-get when missing and sets
REQUIRE_REGISTRY_TOOLS=1; without the tools and that variable, the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import chain
import generate
import oci
from test_oci import istio_extract, read_layout

IMAGES = oci.DEFAULT_OUT


def _tools() -> None:
    missing = [t for t in ("skopeo", "docker-registry") if shutil.which(t) is None]
    if missing:
        if os.environ.get("REQUIRE_REGISTRY_TOOLS") == "1":
            pytest.fail(f"{missing} not installed (make test-istio installs them)")
        pytest.skip(f"{missing} not installed: run `make test-istio`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    _tools()
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }), encoding="utf-8")
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    base = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://{base}/v2/", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("docker-registry did not start: " + (root / "registry.log").read_text(errors="replace")[-2000:])
        time.sleep(0.1)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"skopeo {' '.join(args)}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pushed(registry) -> dict[str, dict]:
    """filter -> {ref, manifest digest the registry reports, raw manifest}, after pushing build/images/."""
    tag = chain.workspace_version()
    out = {}
    for name in chain.packaged_modules():
        layout = IMAGES / name
        if not (layout / "index.json").exists():
            pytest.fail(f"{layout} missing: run `make images`")
        ref = f"docker://{registry}/{oci.REPOSITORY}/{name}:{tag}"
        skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", ref)
        raw = skopeo("inspect", "--tls-verify=false", "--raw", ref)
        digest = json.loads(skopeo("inspect", "--tls-verify=false", ref))["Digest"]
        out[name] = {"ref": ref, "digest": digest, "manifest": json.loads(raw), "raw": raw}
    return out


def test_the_layouts_are_the_current_modules():
    for name, path in chain.packaged_modules().items():
        _, manifest, blobs = read_layout(IMAGES / name)
        assert istio_extract(manifest, blobs) == path.read_bytes(), f"build/images/{name} is stale: run `make images`"


def test_registry_keeps_the_manifest_byte_for_byte(pushed):
    for name, p in pushed.items():
        local = (IMAGES / name / "blobs" / "sha256" / p["digest"].split(":", 1)[1])
        assert local.exists(), f"{name}: the registry's digest {p['digest']} is not the layout's manifest"
        assert p["raw"].encode() == local.read_bytes()


def test_pushed_digest_is_what_the_manifests_pin(pushed):
    summary = json.loads((generate.OUT / "images.json").read_text(encoding="utf-8"))["images"]
    pins: dict[str, set[str]] = {}
    for path in generate.OUT.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "WasmPlugin":
                image = doc["spec"]["url"].rsplit("/", 1)[1].split(":")[0]
                pins.setdefault(image, set()).add(doc["spec"]["sha256"])
            elif doc and doc.get("kind") == "EnvoyFilter":
                for patch in doc["spec"]["configPatches"]:
                    if patch["applyTo"] == "EXTENSION_CONFIG":
                        remote = patch["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["remote"]
                        image = remote["http_uri"]["uri"].rsplit("/", 1)[1].split(":")[0]
                        pins.setdefault(image, set()).add(remote["sha256"])
    for name, p in pushed.items():
        assert p["digest"] == summary[name]["manifest_digest"]
        assert pins[name] == {p["digest"].split(":", 1)[1]}, name
        assert [layer["digest"] for layer in p["manifest"]["layers"]] == [summary[name]["layer_digest"]]


def test_pulled_images_give_back_the_built_module(pushed, tmp_path):
    tag = chain.workspace_version()
    modules = chain.packaged_modules()
    for name, p in pushed.items():
        dest = tmp_path / name
        skopeo("copy", "--quiet", "--src-tls-verify=false", p["ref"], f"oci:{dest}:{tag}")
        _, manifest, blobs = read_layout(dest)
        assert istio_extract(manifest, blobs) == modules[name].read_bytes(), name
        # and in skopeo's plain `dir:` form: the one layer unpacks to plugin.wasm
        plain = tmp_path / f"{name}-dir"
        skopeo("copy", "--quiet", "--src-tls-verify=false", p["ref"], f"dir:{plain}")
        layer = plain / p["manifest"]["layers"][0]["digest"].split(":", 1)[1]
        assert istio_extract(p["manifest"], {layer.name: layer.read_bytes()}) == modules[name].read_bytes()
