"""Build an image's IPFS address: a UnixFS directory laid out as an OCI Image Layout over existing blob DAGs.

The directory is exactly what ``ipfs add -r`` gives for the same layout written to disk::

    oci-layout              {"imageLayoutVersion":"1.0.0"}
    index.json              one descriptor per tag, annotated org.opencontainers.image.ref.name
    blobs/<alg>/<hex>       every manifest, config and layer of the image (an index's children too)

Blob entries link the blobs' existing UnixFS DAGs by CID (nothing is copied); only the directory nodes
and the two small JSON files are new blocks. This module is pure: the caller hands in what the blobs
are (:class:`LayoutBlob`) and the manifest bodies, and stores the returned blocks.

The JSON bytes are fixed so the CID is reproducible: compact separators, ASCII only, keys in the
order written below, no trailing newline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ipfsreg.cid import CID
from ipfsreg.oci.errors import LayoutError, ManifestInvalid
from ipfsreg.oci.manifest import ParsedManifest, parse_manifest
from ipfsreg.unixfs.directory import DirectoryOptions, build_any_directory
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.importer import Block, ImportOptions, import_bytes

OCI_LAYOUT_FILE: Final = "oci-layout"
INDEX_FILE: Final = "index.json"
BLOBS_DIR: Final = "blobs"
IMAGE_LAYOUT_VERSION: Final = "1.0.0"
OCI_INDEX_MEDIA_TYPE: Final = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION: Final = "org.opencontainers.image.ref.name"
OCI_LAYOUT_BYTES: Final = b'{"imageLayoutVersion":"1.0.0"}'

DIGEST_RE: Final = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
# The distribution tag grammar: the layout's ref names are registry tags.
TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# Deeper nesting than any real image (index -> manifest); guards against a self-referencing index.
MAX_INDEX_DEPTH: Final = 8
DEFAULT_IMPORT_OPTIONS: Final = ImportOptions()  # Kubo's `ipfs add` defaults (CIDv0)


@dataclass(frozen=True, slots=True)
class LayoutBlob:
    """A blob already stored as a UnixFS file DAG."""

    digest: str  # "sha256:<hex>"
    media_type: str
    size: int  # content bytes
    cid: CID  # root of its UnixFS DAG
    dag_size: int  # cumulative DAG size: the Tsize a directory link to it carries


@dataclass(frozen=True, slots=True)
class LayoutResult:
    root: CID
    blocks: tuple[Block, ...]
    """New blocks to store, children first, root last: directory nodes, oci-layout, index.json."""
    dag_size: int
    """Cumulative size of the whole layout DAG (blobs included), as a link to it would carry."""
    index_json: bytes
    blob_digests: tuple[str, ...]
    """Every digest under blobs/, sorted."""


def check_digest(digest: str) -> str:
    if DIGEST_RE.fullmatch(digest) is None:
        raise LayoutError(f"{digest[:150]!r} is not a sha256 or sha512 digest")
    return digest


def index_json_bytes(refs: Sequence[tuple[str, LayoutBlob]]) -> bytes:
    """The layout's index.json: one descriptor per (tag, manifest), in the given order."""
    manifests: list[dict[str, Any]] = []
    seen: set[str] = set()
    for tag, manifest in refs:
        if TAG_RE.fullmatch(tag) is None:
            raise LayoutError(f"{tag[:150]!r} is not a valid tag")
        if tag in seen:
            raise LayoutError(f"tag {tag!r} appears twice in one layout")
        seen.add(tag)
        manifests.append(
            {
                "mediaType": manifest.media_type,
                "digest": check_digest(manifest.digest),
                "size": manifest.size,
                "annotations": {REF_NAME_ANNOTATION: tag},
            }
        )
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": manifests}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def _parse(digest: str, body: bytes, media_type: str) -> ParsedManifest:
    try:
        return parse_manifest(body, media_type)
    except ManifestInvalid as exc:
        raise LayoutError(f"manifest {digest} is invalid: {exc}") from None


def referenced_digests(
    roots: Sequence[LayoutBlob],
    blobs: Mapping[str, LayoutBlob],
    manifest_bodies: Mapping[str, bytes],
) -> list[str]:
    """Every digest the layout must hold: the tagged manifests, their configs and layers, and for an
    index each child manifest and its blobs, recursively (first-seen order)."""
    ordered: dict[str, None] = {}
    # (digest, media type, depth)
    stack: list[tuple[str, str, int]] = [(m.digest, m.media_type, 0) for m in reversed(roots)]
    while stack:
        digest, media_type, depth = stack.pop()
        check_digest(digest)
        if digest in ordered:
            continue
        ordered[digest] = None
        body = manifest_bodies.get(digest)
        if body is None:
            raise LayoutError(f"the body of manifest {digest} was not supplied")
        parsed = _parse(digest, body, media_type)
        for blob in parsed.blobs:
            ordered.setdefault(check_digest(str(blob.digest)), None)
        if parsed.manifests and depth + 1 >= MAX_INDEX_DEPTH:
            raise LayoutError(f"index {digest} nests more than {MAX_INDEX_DEPTH} levels")
        stack.extend((str(child.digest), child.media_type, depth + 1) for child in reversed(parsed.manifests))
    missing = [digest for digest in ordered if digest not in blobs]
    if missing:
        raise LayoutError(f"{len(missing)} referenced blob(s) are not available: {', '.join(missing[:5])}")
    return list(ordered)


def build_layout(
    refs: Sequence[tuple[str, LayoutBlob]],
    blobs: Mapping[str, LayoutBlob],
    manifest_bodies: Mapping[str, bytes],
    options: ImportOptions = DEFAULT_IMPORT_OPTIONS,
) -> LayoutResult:
    """An OCI Image Layout holding several tagged manifests (index.json lists them in ``refs`` order).

    ``blobs`` maps every referenced digest (manifests included) to its stored DAG; it may hold more
    (a lookup over the whole store). ``manifest_bodies`` maps each tagged manifest's digest, and each
    child manifest's of an index, to its bytes. ``options`` must be the blobs' import options so the
    small files and directories match ``ipfs add -r`` with the same flags.
    Raises LayoutError for an invalid tag or manifest, or a referenced blob not supplied.
    """
    if not refs:
        raise LayoutError("a layout needs at least one tagged manifest")
    digests = referenced_digests([manifest for _, manifest in refs], blobs, manifest_bodies)
    new_blocks: list[Block] = []
    by_algorithm: dict[str, dict[str, tuple[CID, int]]] = {}
    for digest in digests:
        blob = blobs[digest]
        if blob.digest != digest:
            raise LayoutError(f"blob supplied for {digest} says it is {blob.digest}")
        algorithm, hexpart = digest.split(":", 1)
        by_algorithm.setdefault(algorithm, {})[hexpart] = (blob.cid, blob.dag_size)
    dir_options = DirectoryOptions.for_import(options)
    try:
        blobs_entries: dict[str, tuple[CID, int]] = {}
        for algorithm in sorted(by_algorithm):
            blocks, cid, size = build_any_directory(by_algorithm[algorithm], dir_options)
            new_blocks.extend(blocks)
            blobs_entries[algorithm] = (cid, size)
        blocks, blobs_cid, blobs_size = build_any_directory(blobs_entries, dir_options)
        new_blocks.extend(blocks)
        index_json = index_json_bytes(refs)
        root_entries = {BLOBS_DIR: (blobs_cid, blobs_size)}
        for name, data in ((INDEX_FILE, index_json), (OCI_LAYOUT_FILE, OCI_LAYOUT_BYTES)):
            file_blocks, result = import_bytes(data, options)
            new_blocks.extend(file_blocks)
            root_entries[name] = (result.cid, result.dag_size)
        blocks, root, dag_size = build_any_directory(root_entries, dir_options)
    except UnixFSError as exc:
        raise LayoutError(f"cannot build the layout directory: {exc}") from exc
    new_blocks.extend(blocks)
    return LayoutResult(root, tuple(new_blocks), dag_size, index_json, tuple(sorted(digests)))


def build_image_layout(
    manifest: LayoutBlob,
    tag: str,
    blobs: Mapping[str, LayoutBlob],
    manifest_bodies: Mapping[str, bytes],
    options: ImportOptions = DEFAULT_IMPORT_OPTIONS,
) -> LayoutResult:
    """The layout of one tagged image or index (see :func:`build_layout`)."""
    return build_layout([(tag, manifest)], blobs, manifest_bodies, options)
