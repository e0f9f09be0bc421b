"""Test support for tests/oci: handcrafted images imported into memory and the same layout written to disk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipfsreg.blockstore import BlockNotFound
from ipfsreg.cid import CID
from ipfsreg.oci.layout import LayoutBlob
from ipfsreg.unixfs.importer import Block, ImportOptions, import_bytes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class DictSource:
    """A BlockSource over a dict of blocks that counts gets."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self.gets = 0

    def add(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            self.blocks[block.cid.multihash] = block.data

    async def get(self, cid: CID) -> bytes:
        self.gets += 1
        try:
            return self.blocks[cid.multihash]
        except KeyError:
            raise BlockNotFound(cid) from None

    def prefetch(self, cids: Sequence[CID]) -> None:
        return None


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


@dataclass
class ImageStore:
    """Blobs imported as UnixFS files into ``source``; what a registry would hand the layout builder."""

    options: ImportOptions = field(default_factory=ImportOptions)
    source: DictSource = field(default_factory=DictSource)
    blobs: dict[str, LayoutBlob] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)

    def add(self, data: bytes, media_type: str) -> LayoutBlob:
        blocks, result = import_bytes(data, self.options)
        self.source.add(blocks)
        blob = LayoutBlob(digest_of(data), media_type, len(data), result.cid, result.dag_size)
        self.blobs[blob.digest] = blob
        self.data[blob.digest] = data
        return blob

    def image(
        self,
        layers: Sequence[bytes],
        *,
        arch: str = "amd64",
        manifest_type: str = OCI_MANIFEST,
        config_type: str = OCI_CONFIG,
        layer_type: str = OCI_LAYER,
    ) -> LayoutBlob:
        config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}}).encode()
        self.add(config, config_type)
        for layer in layers:
            self.add(layer, layer_type)
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": descriptor(config, config_type),
            "layers": [descriptor(layer, layer_type) for layer in layers],
        }
        return self.add(json.dumps(manifest, indent=2).encode(), manifest_type)

    def index(self, children: Sequence[tuple[LayoutBlob, str]], *, index_type: str = OCI_INDEX) -> LayoutBlob:
        doc = {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": child.size,
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for child, arch in children
            ],
        }
        return self.add(json.dumps(doc).encode(), index_type)

    def write_layout(self, root: Path, digests: Sequence[str], index_json: bytes, oci_layout: bytes) -> None:
        """The same layout as files, as `ipfs add -r` would read it."""
        for digest in digests:
            algorithm, hexpart = digest.split(":", 1)
            path = root / "blobs" / algorithm / hexpart
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.data[digest])
        (root / "index.json").write_bytes(index_json)
        (root / "oci-layout").write_bytes(oci_layout)
