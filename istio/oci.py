#!/usr/bin/env python3
"""Build one OCI image per wasm filter (and of the suite and chain builds), reproducibly, without a container daemon.

    python3 istio/oci.py                       # every filter of the chains, the suite, chain, chain-response -> build/images/<name>/
    python3 istio/oci.py --out DIR sanitize    # some filters, elsewhere

The image is Istio's "compat" Wasm image (the shape istio-agent's fetcher
accepts, pkg/wasm/imagefetcher.go `extractOCIStandardImage`; see docs/istio.md):

  manifest  application/vnd.oci.image.manifest.v1+json
  config    application/vnd.oci.image.config.v1+json  {"architecture": "wasm", "os": "wasip1", rootfs ...}
  layer     application/vnd.oci.image.layer.v1.tar+gzip, ONE layer, a tar holding ONLY `plugin.wasm`

Istio reads the LAST layer, requires exactly that media type (a raw wasm layer
or an uncompressed `...tar` layer is rejected: "invalid media type"), gunzips
it and takes the tar entry whose base name is `plugin.wasm`.

Reproducible: the same module gives the same bytes and so the same digests
(tar entry mode 0644, uid/gid 0, no user/group names, mtime 0, USTAR format;
gzip level 9 with mtime 0, no file name; JSON with sorted keys and no spaces;
config `created` fixed at the epoch; no timestamps or host data anywhere). The
gzip bytes come from the system zlib: the digests are stable for a given
zlib (the deflate output of zlib 1.2.x/1.3.x at one level is stable; zlib-ng
produces different bytes).

Each image is written as an OCI image layout (oci-layout, index.json,
blobs/sha256/...) with the tag = the Cargo workspace version, ready for
`skopeo copy oci:build/images/<filter>:<tag> docker://<registry>/gateway-filters/<filter>:<tag>`.

Standard library only (+ PyYAML through istio/chain.py to find the modules).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chain  # noqa: E402

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
WASM_FILE = "plugin.wasm"  # the name Istio's compat fetcher looks for
REPOSITORY = "gateway-filters"  # <registry>/gateway-filters/<filter>:<tag>
CREATED = "1970-01-01T00:00:00Z"
DEFAULT_OUT = chain.REPO / "build" / "images"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes) -> bytes:
    """A tar with the single entry plugin.wasm, every header field fixed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(WASM_FILE)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_fixed(data: bytes) -> bytes:
    """gzip with no name and mtime 0 (header bytes independent of time and host)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass(frozen=True)
class Image:
    name: str  # filter name
    tag: str
    wasm_sha256: str
    wasm_size: int
    blobs: dict[str, bytes]  # hex digest -> content (config, layer, manifest)
    manifest_digest: str  # hex; what a registry reports and what Istio's `sha256` pins
    manifest_size: int
    config_digest: str
    layer_digest: str
    layer_size: int
    diff_id: str  # sha256 of the uncompressed tar

    @property
    def size(self) -> int:
        """Bytes a registry stores for this image: manifest + config + layer."""
        return sum(len(b) for b in self.blobs.values())

    @property
    def reference(self) -> str:
        return f"{REPOSITORY}/{self.name}:{self.tag}"

    def summary(self) -> dict[str, object]:
        return {
            "repository": f"{REPOSITORY}/{self.name}",
            "tag": self.tag,
            "manifest_digest": f"sha256:{self.manifest_digest}",
            "config_digest": f"sha256:{self.config_digest}",
            "layer_digest": f"sha256:{self.layer_digest}",
            "layer_diff_id": f"sha256:{self.diff_id}",
            "layer_size": self.layer_size,
            "image_size": self.size,
            "wasm_sha256": self.wasm_sha256,
            "wasm_size": self.wasm_size,
        }


def build_image(name: str, wasm: bytes, tag: str) -> Image:
    tar = layer_tar(wasm)
    layer = gzip_fixed(tar)
    diff_id = sha256_hex(tar)
    config = canonical_json({
        "architecture": "wasm",
        "os": "wasip1",
        "created": CREATED,
        "config": {
            "Labels": {
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": tag,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": CREATED, "created_by": f"istio/oci.py: {WASM_FILE} ({name})"}],
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{sha256_hex(config)}", "size": len(config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": f"sha256:{sha256_hex(layer)}", "size": len(layer)}],
        "annotations": {
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": tag,
        },
    })
    blobs = {sha256_hex(b): b for b in (config, layer, manifest)}
    return Image(
        name=name, tag=tag,
        wasm_sha256=sha256_hex(wasm), wasm_size=len(wasm),
        blobs=blobs,
        manifest_digest=sha256_hex(manifest), manifest_size=len(manifest),
        config_digest=sha256_hex(config),
        layer_digest=sha256_hex(layer), layer_size=len(layer),
        diff_id=diff_id,
    )


def image_for(name: str, wasm_path: Path, tag: str | None = None) -> Image:
    try:
        wasm = wasm_path.read_bytes()
    except OSError as exc:
        build = ("make build-suite" if name == chain.SUITE
                 else "make build-chain" if name in chain.CHAIN_IMAGES.values() else "make build-wasm")
        raise SystemExit(f"{name}: cannot read {wasm_path} ({exc.strerror}); run `{build}` first") from exc
    return build_image(name, wasm, tag or chain.workspace_version())


def write_layout(image: Image, directory: Path) -> None:
    """An OCI image layout holding this one image, tagged image.tag (replaces `directory`)."""
    if directory.exists():
        shutil.rmtree(directory)
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    for digest, data in sorted(image.blobs.items()):
        (blob_dir / digest).write_bytes(data)
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": f"sha256:{image.manifest_digest}",
            "size": image.manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": image.tag},
        }],
    }
    (directory / "index.json").write_bytes(canonical_json(index))


def build_all(out: Path, names: list[str] | None = None) -> list[Image]:
    mods = chain.packaged_modules()
    unknown = sorted(set(names or []) - set(mods))
    if unknown:
        raise SystemExit(f"unknown filter(s) {unknown}; known: {sorted(mods)}")
    images = []
    for name, path in mods.items():
        if names and name not in names:
            continue
        image = image_for(name, path)
        write_layout(image, out / name)
        images.append(image)
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("filters", nargs="*", help="filter names, `suite`, `chain` or `chain-response` (default: all of them)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the layouts (default build/images)")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    images = build_all(args.out, args.filters)
    if args.json:
        print(json.dumps({i.name: i.summary() for i in images}, indent=2))
        return 0
    print(f"{'image':<36} {'manifest digest (Istio sha256)':<71} {'image':>9} {'wasm':>9}")
    for i in images:
        print(f"{i.reference:<36} sha256:{i.manifest_digest} {i.size:>9} {i.wasm_size:>9}")
    print(f"OCI layouts under {args.out} (sizes in bytes; image = manifest + config + gzip layer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
