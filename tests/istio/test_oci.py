"""The OCI images of istio/oci.py: reproducible, and in the shape Istio's fetcher accepts.

`istio_extract` is a line-by-line port of istio-agent's fetcher
(pkg/wasm/imagefetcher.go: PrepareFetch's binaryFetcher, extractDockerImage,
extractOCIStandardImage, extractWasmPluginBinary, extractOCIArtifactImage), so
the images are judged by Istio's rules, including the shapes it rejects.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

import chain
import oci

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_ARTIFACT_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


class Rejected(Exception):
    pass


def _plugin_wasm(layer: bytes) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r:") as tar:
            for member in tar:
                if Path(member.name).name == "plugin.wasm":
                    return tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise Rejected(f"failed to parse layer as tar.gz: {exc}") from exc
    raise Rejected("plugin.wasm not found in the archive")


def istio_extract(manifest: dict, blobs: dict[str, bytes]) -> bytes:
    layers = manifest.get("layers", [])

    def blob(desc):
        return blobs[desc["digest"].split(":", 1)[1]]

    if manifest.get("mediaType") == DOCKER_MANIFEST:
        if not layers:
            raise Rejected("number of layers must be greater than zero")
        if layers[-1]["mediaType"] != DOCKER_LAYER:
            raise Rejected(f"invalid media type {layers[-1]['mediaType']}")
        return _plugin_wasm(blob(layers[-1]))
    errors = []
    # compat variant: the LAST layer, application/vnd.oci.image.layer.v1.tar+gzip
    try:
        if not layers:
            raise Rejected("number of layers must be greater than zero")
        if layers[-1]["mediaType"] != oci.LAYER_MEDIA_TYPE:
            raise Rejected(f"invalid media type {layers[-1]['mediaType']} (expect {oci.LAYER_MEDIA_TYPE})")
        return _plugin_wasm(blob(layers[-1]))
    except Rejected as exc:
        errors.append(f"could not parse as compat variant: {exc}")
    # oci variant: exactly 2 layers, one of them the raw wasm
    if len(layers) != 2:
        errors.append(f"could not parse as oci variant: number of layers must be 2 but got {len(layers)}")
    else:
        for desc in layers:
            if desc["mediaType"] == WASM_ARTIFACT_LAYER:
                return blob(desc)
        errors.append("could not parse as oci variant: could not find the layer of Wasm binary")
    raise Rejected("; ".join(errors))


def read_layout(directory: Path) -> tuple[dict, dict, dict[str, bytes]]:
    index = json.loads((directory / "index.json").read_bytes())
    blobs = {p.name: p.read_bytes() for p in (directory / "blobs" / "sha256").iterdir()}
    manifest = json.loads(blobs[index["manifests"][0]["digest"].split(":", 1)[1]])
    return index, manifest, blobs


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("images")
    oci.build_all(out)
    return {p.name: p for p in out.iterdir()}


def test_one_image_per_filter_and_one_of_the_suite_and_each_chain_module(layouts):
    assert set(layouts) == set(chain.packaged_modules())
    assert set(layouts) == {"sanitize", "jwt", "replay-guard", "e2ee", "fds-block", "passport", "san-authz",
                            "route-breaker", "oidc", "suite", "chain", "chain-response"}


def test_same_module_gives_the_same_bytes(tmp_path):
    wasm = b"\0asm\x01\0\0\0" + bytes(range(256)) * 64
    a, b = oci.build_image("x", wasm, "1.0.0"), oci.build_image("x", wasm, "1.0.0")
    assert a.blobs == b.blobs and a.manifest_digest == b.manifest_digest
    oci.write_layout(a, tmp_path / "a")
    oci.write_layout(b, tmp_path / "b")
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    assert oci.build_image("x", wasm + b"\0", "1.0.0").manifest_digest != a.manifest_digest


def test_layouts_on_disk_are_reproducible(layouts, tmp_path):
    again = tmp_path / "again"
    oci.build_all(again)
    for name, directory in layouts.items():
        assert read_layout(directory) == read_layout(again / name)


def test_layout_shape_and_digests(layouts):
    for name, directory in layouts.items():
        assert json.loads((directory / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
        index, manifest, blobs = read_layout(directory)
        for digest, data in blobs.items():
            assert hashlib.sha256(data).hexdigest() == digest
        assert index["manifests"][0]["mediaType"] == oci.MANIFEST_MEDIA_TYPE
        assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == chain.workspace_version()
        assert manifest["mediaType"] == oci.MANIFEST_MEDIA_TYPE
        assert manifest["config"]["mediaType"] == oci.CONFIG_MEDIA_TYPE
        assert [layer["mediaType"] for layer in manifest["layers"]] == [oci.LAYER_MEDIA_TYPE]
        layer = blobs[manifest["layers"][0]["digest"].split(":", 1)[1]]
        assert manifest["layers"][0]["size"] == len(layer)
        config = json.loads(blobs[manifest["config"]["digest"].split(":", 1)[1]])
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()]
        assert config["created"] == "1970-01-01T00:00:00Z"


def test_layer_is_one_plugin_wasm_with_fixed_metadata(layouts):
    for name, directory in layouts.items():
        _, manifest, blobs = read_layout(directory)
        layer = blobs[manifest["layers"][0]["digest"].split(":", 1)[1]]
        assert layer[:2] == b"\x1f\x8b" and layer[4:8] == b"\0\0\0\0"  # gzip, mtime 0
        assert layer[3] & 0x08 == 0  # no file name in the gzip header
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r:") as tar:
            members = tar.getmembers()
        assert [(m.name, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, m.isreg()) for m in members] == [
            ("plugin.wasm", 0o644, 0, 0, "", "", 0, True)]


def test_istios_fetcher_accepts_every_image_and_extracts_the_module(layouts):
    modules = chain.packaged_modules()
    for name, directory in layouts.items():
        _, manifest, blobs = read_layout(directory)
        assert istio_extract(manifest, blobs) == modules[name].read_bytes()


def _single_layer_image(layer: bytes, media_type: str) -> tuple[dict, dict[str, bytes]]:
    digest = hashlib.sha256(layer).hexdigest()
    return ({"schemaVersion": 2, "mediaType": oci.MANIFEST_MEDIA_TYPE,
             "layers": [{"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(layer)}]},
            {digest: layer})


def test_istios_fetcher_rejects_the_shapes_we_do_not_build():
    wasm = b"\0asm\x01\0\0\0"
    raw = _single_layer_image(wasm, WASM_ARTIFACT_LAYER)  # one raw wasm layer (a plain `oras push`)
    with pytest.raises(Rejected, match="invalid media type .*number of layers must be 2 but got 1"):
        istio_extract(*raw)
    tar = oci.layer_tar(wasm)  # an uncompressed tar layer
    with pytest.raises(Rejected, match="invalid media type application/vnd.oci.image.layer.v1.tar "):
        istio_extract(*_single_layer_image(tar, "application/vnd.oci.image.layer.v1.tar"))
    # and ours is accepted
    assert istio_extract(*_single_layer_image(oci.gzip_fixed(tar), oci.LAYER_MEDIA_TYPE)) == wasm
