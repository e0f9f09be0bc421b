"""Read an OCI Image Layout stored as a UnixFS directory: its index.json, tags and blob CIDs.

Everything awaits only a BlockSource, so a layout pulled by CID works the same whether its blocks
are local or fetched from peers. Blob paths go through ``exporter.resolve_path``, so HAMT-sharded
``blobs/sha256`` directories (images with thousands of blobs) resolve like flat ones.
Malformed layouts raise :class:`LayoutError`; unknown tags and digests :class:`ReferenceNotFound`.
Block fetch failures (``BlockNotFound``, a bitswap timeout) propagate unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from ipfsreg.cid import CID
from ipfsreg.oci.errors import LayoutError, ReferenceNotFound
from ipfsreg.oci.layout import (
    BLOBS_DIR,
    DIGEST_RE,
    INDEX_FILE,
    OCI_INDEX_MEDIA_TYPE,
    OCI_LAYOUT_FILE,
    REF_NAME_ANNOTATION,
)
from ipfsreg.unixfs import exporter
from ipfsreg.unixfs.errors import NotADirectory, PathNotFound, UnixFSError
from ipfsreg.unixfs.exporter import BlockSource

MAX_OCI_LAYOUT_BYTES: Final = 64 * 1024
MAX_INDEX_BYTES: Final = 4 * 1024 * 1024
LATEST: Final = "latest"
OCI_MANIFEST_MEDIA_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True, slots=True)
class LayoutDescriptor:
    """A descriptor from the layout's index.json."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME_ANNOTATION)


@dataclass(frozen=True, slots=True)
class ImageLayout:
    root: CID
    manifests: tuple[LayoutDescriptor, ...]
    index_json: bytes

    @property
    def tags(self) -> list[str]:
        return [d.ref_name for d in self.manifests if d.ref_name is not None]


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    digest: str
    cid: CID  # root of the blob's UnixFS DAG under blobs/<alg>/<hex>
    descriptor: LayoutDescriptor | None  # the index.json entry, when the reference is listed there


async def _read_small_file(source: BlockSource, root: CID, name: str, limit: int) -> bytes:
    try:
        cid = await exporter.resolve_path(source, root, name)
        info = await exporter.stat(source, cid)
        if info.type not in ("file", "raw"):
            raise LayoutError(f"{name} in {root} is a {info.type}, not a file")
        if info.size > limit:
            raise LayoutError(f"{name} in {root} is {info.size} bytes, over the {limit} byte limit")
        parts = [chunk async for chunk in exporter.read_file(source, cid)]
    except PathNotFound:
        raise LayoutError(f"{root} has no {name}: not an OCI image layout") from None
    except NotADirectory:
        raise LayoutError(f"{root} is not a directory: not an OCI image layout") from None
    except UnixFSError as exc:
        raise LayoutError(f"cannot read {name} in {root}: {exc}") from exc
    return b"".join(parts)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LayoutError(f"{what} is not a JSON object")
    return doc


def parse_oci_layout(data: bytes) -> str:
    """The imageLayoutVersion of an ``oci-layout`` file; only 1.x layouts are accepted."""
    version = _json_object(data, OCI_LAYOUT_FILE).get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise LayoutError(f"unsupported imageLayoutVersion {version!r}")
    return version


def _descriptor(value: Any, where: str) -> LayoutDescriptor:
    if not isinstance(value, dict):
        raise LayoutError(f"{where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise LayoutError(f"{where}.mediaType is missing")
    if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
        raise LayoutError(f"{where}.digest is not a sha256 or sha512 digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise LayoutError(f"{where}.size must be a non-negative integer")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise LayoutError(f"{where}.annotations must map strings to strings")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise LayoutError(f"{where}.platform must be an object")
    return LayoutDescriptor(media_type, digest, size, dict(annotations), platform)


def parse_index(data: bytes) -> tuple[LayoutDescriptor, ...]:
    """The manifest descriptors of a layout's ``index.json``."""
    doc = _json_object(data, INDEX_FILE)
    if doc.get("schemaVersion") != 2:
        raise LayoutError("index.json schemaVersion must be 2")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise LayoutError("index.json manifests must be an array")
    return tuple(_descriptor(m, f"index.json manifests[{i}]") for i, m in enumerate(manifests))


async def read_image_layout(source: BlockSource, cid: CID) -> ImageLayout:
    """Check ``oci-layout`` and read ``index.json`` of the layout directory ``cid``."""
    parse_oci_layout(await _read_small_file(source, cid, OCI_LAYOUT_FILE, MAX_OCI_LAYOUT_BYTES))
    index_json = await _read_small_file(source, cid, INDEX_FILE, MAX_INDEX_BYTES)
    return ImageLayout(cid, parse_index(index_json), index_json)


def find_manifest(layout: ImageLayout, reference: str) -> LayoutDescriptor:
    """The index.json descriptor for a tag (its ref name) or a digest listed there.

    ``latest`` falls back to the only manifest of a layout that lists exactly one and tags none
    ``latest``. A tag given to several descriptors is ambiguous and not resolved.
    """
    if DIGEST_RE.fullmatch(reference) is not None:
        for descriptor in layout.manifests:
            if descriptor.digest == reference:
                return descriptor
        raise ReferenceNotFound(reference, "no index.json entry has this digest")
    named = [d for d in layout.manifests if d.ref_name == reference]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise ReferenceNotFound(reference, f"{len(named)} index.json entries carry this ref name")
    if reference == LATEST and len(layout.manifests) == 1:
        return layout.manifests[0]
    raise ReferenceNotFound(reference, f"the layout's tags are {layout.tags}")


def blob_path(digest: str) -> str:
    if DIGEST_RE.fullmatch(digest) is None:
        raise ReferenceNotFound(digest, "not a sha256 or sha512 digest")
    algorithm, hexpart = digest.split(":", 1)
    return f"{BLOBS_DIR}/{algorithm}/{hexpart}"


async def blob_cid(source: BlockSource, layout: ImageLayout, digest: str) -> CID:
    """The root CID of ``blobs/<alg>/<hex>``: any manifest, config or layer in the layout."""
    path = blob_path(digest)
    try:
        return await exporter.resolve_path(source, layout.root, path)
    except PathNotFound:
        raise ReferenceNotFound(digest, f"no {path}") from None
    except UnixFSError as exc:
        raise LayoutError(f"cannot resolve {path} in {layout.root}: {exc}") from exc


async def resolve_reference(source: BlockSource, layout: ImageLayout, reference: str) -> ResolvedReference:
    """A tag or digest -> the blob's digest and CID (and its index.json descriptor when listed).

    Tags resolve through index.json; digests resolve for any manifest (tagged or a child of an index)
    or blob present under ``blobs/``.
    """
    if DIGEST_RE.fullmatch(reference) is not None:
        listed = [d for d in layout.manifests if d.digest == reference]
        cid = await blob_cid(source, layout, reference)
        return ResolvedReference(reference, cid, listed[0] if listed else None)
    descriptor = find_manifest(layout, reference)
    cid = await blob_cid(source, layout, descriptor.digest)
    return ResolvedReference(descriptor.digest, cid, descriptor)


@dataclass(frozen=True, slots=True)
class LayoutManifest:
    digest: str
    media_type: str
    body: bytes
    cid: CID


def _digest_matches(digest: str, body: bytes) -> bool:
    algorithm, hexpart = digest.split(":", 1)
    return hashlib.new(algorithm, body).hexdigest() == hexpart


def manifest_media_type(body: bytes, digest: str) -> str:
    """A manifest's own ``mediaType``; OCI lets it be left out, then its shape decides (index or image)."""
    doc = _json_object(body, f"manifest {digest}")
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if declared is not None:
        raise LayoutError(f"manifest {digest} has a non-string mediaType")
    return OCI_INDEX_MEDIA_TYPE if "manifests" in doc else OCI_MANIFEST_MEDIA_TYPE


async def read_manifest(
    source: BlockSource, layout: ImageLayout, reference: str, *, max_bytes: int = MAX_INDEX_BYTES
) -> LayoutManifest:
    """The bytes and media type of the manifest a tag or digest names, checked against its digest.

    The layout maps digests to CIDs, and nothing but this check ties the bytes under
    ``blobs/sha256/<hex>`` to ``<hex>``: a layout from an untrusted peer could lie. (Blob readers
    must hash what they stream for the same reason.)
    """
    resolved = await resolve_reference(source, layout, reference)
    body = await _read_blob_bytes(source, resolved, max_bytes)
    if not _digest_matches(resolved.digest, body):
        raise LayoutError(f"the bytes under {blob_path(resolved.digest)} do not match {resolved.digest}")
    if resolved.descriptor is not None:
        if resolved.descriptor.size != len(body):
            raise LayoutError(
                f"manifest {resolved.digest} is {len(body)} bytes, index.json says {resolved.descriptor.size}"
            )
        media_type = resolved.descriptor.media_type
    else:
        media_type = manifest_media_type(body, resolved.digest)
    return LayoutManifest(resolved.digest, media_type, body, resolved.cid)


async def _read_blob_bytes(source: BlockSource, resolved: ResolvedReference, limit: int) -> bytes:
    try:
        info = await exporter.stat(source, resolved.cid)
        if info.type not in ("file", "raw"):
            raise LayoutError(f"{blob_path(resolved.digest)} is a {info.type}, not a file")
        if info.size > limit:
            raise LayoutError(f"manifest {resolved.digest} is {info.size} bytes, over the {limit} byte limit")
        return b"".join([chunk async for chunk in exporter.read_file(source, resolved.cid)])
    except UnixFSError as exc:
        raise LayoutError(f"cannot read {blob_path(resolved.digest)}: {exc}") from exc
