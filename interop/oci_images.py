"""Writes OCI image layouts (single images and multi-arch indexes) for interop tests and benchmarks.

Layouts are written file by file (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``) so the
bytes are known exactly: a test can check that a round trip through the registry is byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


class OCILayout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.index: list[dict[str, Any]] = []

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return self.root / "blobs" / algorithm / hexpart

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_blob_file(self, source: Path, media_type: str) -> Descriptor:
        """Move a large file into the layout as a blob, hashing it in a stream."""
        hasher = hashlib.sha256()
        with source.open("rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
        digest = "sha256:" + hasher.hexdigest()
        size = source.stat().st_size
        os.replace(source, self.blob_path(digest))
        return Descriptor(media_type, digest, size)

    def add_image(
        self, layers: list[Descriptor], *, architecture: str = "amd64", os_name: str = "linux"
    ) -> Descriptor:
        """Write a config and a manifest for ``layers``; return the manifest's descriptor."""
        config = {
            "architecture": architecture,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
            "config": {"Cmd": ["/bin/sh"]},
        }
        config_desc = self.add_blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        return self.add_blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)

    def add_index(self, manifests: list[tuple[Descriptor, dict[str, str]]]) -> Descriptor:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [desc.to_json(platform=platform) for desc, platform in manifests],
        }
        return self.add_blob(json.dumps(index, sort_keys=True).encode(), OCI_INDEX)

    def tag(self, descriptor: Descriptor, name: str) -> None:
        self.index.append(descriptor.to_json(annotations={REF_NAME: name}))
        self.write_index()

    def write_index(self) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index}
        (self.root / "index.json").write_text(json.dumps(doc))


def tar_layer(files: dict[str, bytes], *, compress: bool = True) -> bytes:
    """A reproducible layer tarball (fixed mtimes and owners), gzip-compressed by default."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def random_tar_file(path: Path, size: int, *, seed: int = 0) -> None:
    """Write an uncompressed tar holding one file of ``size`` random bytes, in a stream.

    Random bytes do not compress or dedupe, like real compressed layers.
    """

    class _Stream(io.RawIOBase):
        def __init__(self) -> None:
            self.remaining = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), self.remaining, 1 << 20)
            if n <= 0:
                return 0
            buffer[:n] = os.urandom(n)
            self.remaining -= n
            return n

    with path.open("wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data-{seed}.bin")
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BufferedReader(_Stream(), buffer_size=1 << 20))


def write_single_image(root: Path, tag: str = "latest", *, layers: int = 2) -> Descriptor:
    """A small linux/amd64 image with ``layers`` gzip layers, tagged ``tag``."""
    layout = OCILayout(root)
    descs = [
        layout.add_blob(
            tar_layer({f"file{i}.txt": f"layer {i}\n".encode() * (i + 1), f"rand{i}": os.urandom(300_000)}),
            OCI_LAYER_GZIP,
        )
        for i in range(layers)
    ]
    manifest = layout.add_image(descs)
    layout.tag(manifest, tag)
    return manifest


def write_multiarch_image(root: Path, tag: str = "multi") -> Descriptor:
    """An index over linux/amd64 and linux/arm64 images, tagged ``tag``."""
    layout = OCILayout(root)
    entries: list[tuple[Descriptor, dict[str, str]]] = []
    for arch in ("amd64", "arm64"):
        layer = layout.add_blob(tar_layer({f"arch-{arch}": arch.encode() * 1000}), OCI_LAYER_GZIP)
        manifest = layout.add_image([layer], architecture=arch)
        entries.append((manifest, {"architecture": arch, "os": "linux"}))
    index = layout.add_index(entries)
    layout.tag(index, tag)
    return index


def write_large_image(root: Path, layer_sizes: list[int], tag: str = "latest") -> Descriptor:
    """An image of uncompressed tar layers of the given sizes (benchmarks), written in a stream."""
    layout = OCILayout(root)
    descs = []
    for i, size in enumerate(layer_sizes):
        scratch = root / f"layer-{i}.tmp"
        random_tar_file(scratch, size, seed=i + 1)
        descs.append(layout.add_blob_file(scratch, OCI_LAYER_TAR))
    manifest = layout.add_image(descs)
    layout.tag(manifest, tag)
    return manifest


def layout_blobs(root: Path) -> dict[str, bytes]:
    """Every blob in a layout, by digest (for byte-identical comparisons of small layouts)."""
    out = {}
    for path in sorted((root / "blobs" / "sha256").iterdir()):
        out["sha256:" + path.name] = path.read_bytes()
    return out
