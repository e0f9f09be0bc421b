"""Images on IPFS, storage level: pull an image directory by CID; import layouts and `docker save` tarballs.

An image's IPFS address is an OCI Image Layout directory (see ``ipfsreg.oci.layout``); RegistryStore
publishes one per tag. This module goes the other way, for ``ipfs/<cid>`` repositories and the CLI:

- :func:`fetch_manifest` / :func:`fetch_blob` read a layout through any BlockSource (a network one
  fetches missing blocks over bitswap), checking every manifest and blob against its digest, and
  record what was read under a repository so the next pull is served from local blocks.
- :func:`pull_image` brings a whole image into ``name:tag``; :func:`tag_image_from_cid` does the same
  from local blocks only (after ``ipfsreg import image.car``); :func:`mirror_image` fetches a whole
  image into its own ``ipfs/<cid>`` repository (``ipfsreg pull /ipfs/<cid>`` without NAME:TAG).
- :func:`import_layout_dir` / :func:`import_docker_save` stream an OCI layout directory or a
  ``docker save`` tarball from disk into a repository. A docker save tarball becomes an OCI image
  manifest: its config JSON is an OCI config as it stands, and its layers are uncompressed tars
  (``application/vnd.oci.image.layer.v1.tar``), whose digests are the config's ``rootfs.diff_ids``.

Every block read while a pull runs is held by a datastore lease, so garbage collection cannot take
it before the pull has indexed it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Final, Protocol

import trio

from ipfsreg.blockstore.store import Lease
from ipfsreg.cid import CID, DAG_PB
from ipfsreg.oci.errors import LayoutError, ReferenceNotFound
from ipfsreg.oci.reader import (
    LATEST,
    ImageLayout,
    LayoutManifest,
    blob_cid,
    find_manifest,
    manifest_media_type,
    parse_index,
    parse_oci_layout,
    read_image_layout,
    read_manifest,
)
from ipfsreg.registry.digests import Digest, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.manifest import ParsedManifest, parse_manifest
from ipfsreg.registry.names import check_name, ipfs_repository_name, is_valid_tag
from ipfsreg.registry.storage import BlobInfo, RegistryStore, encode_blob_value, repo_key
from ipfsreg.unixfs import dagpb, exporter
from ipfsreg.unixfs.exporter import BlockSource

READ_BYTES: Final = 1024 * 1024
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class BlobMismatch(LayoutError):
    """The bytes under ``blobs/<alg>/<hex>`` do not hash to that digest (a lying or damaged layout)."""


@dataclass(frozen=True)
class PulledImage:
    name: str
    tag: str
    digest: Digest
    cid: CID  # the image directory as published under name:tag
    blobs: int  # blobs (manifests included) read and verified


class LeasedSource:
    """A BlockSource that holds every block it reads or prefetches in ``lease`` (against GC)."""

    def __init__(self, inner: BlockSource, lease: Lease) -> None:
        self.inner = inner
        self.lease = lease

    async def get(self, cid: CID) -> bytes:
        self.lease.add(cid)
        return await self.inner.get(cid)

    def prefetch(self, cids: Sequence[CID]) -> None:
        for cid in cids:
            self.lease.add(cid)
        self.inner.prefetch(cids)


@contextmanager
def leased(store: RegistryStore, source: BlockSource) -> Iterator[LeasedSource]:
    with store.datastore.lease() as lease:
        yield LeasedSource(source, lease)


async def verified_chunks(source: BlockSource, cid: CID, digest: Digest) -> AsyncIterator[bytes]:
    """The bytes of file ``cid``, hashed as they stream; the last chunk is held back until the digest
    matches, so a wrong blob ends in :class:`BlobMismatch`, never in a complete wrong body."""
    hasher = hashlib.new(digest.algorithm)
    held: bytes | None = None
    async for chunk in exporter.read_file(source, cid):
        if not chunk:
            continue
        hasher.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if hasher.hexdigest() != digest.hex:
        raise BlobMismatch(f"the bytes at {cid} do not match {digest}")
    if held is not None:
        yield held


# --- recording what was pulled -----------------------------------------------------------------


def record_blob(
    store: RegistryStore, repo: str, digest: Digest, cid: CID, size: int, *, replace: bool = False
) -> BlobInfo:
    """Index a verified, fully stored blob DAG under ``repo``.

    An existing index entry for the digest wins (its CID stays the blob's address) unless ``replace``:
    the caller found that entry's DAG incomplete and has just read this one whole.
    """
    existing = None if replace else store.blob_info(digest)
    info = existing if existing is not None else BlobInfo(digest, cid, size)
    with store.datastore.batch() as batch:
        if existing is None:
            batch.put(store.blobs, digest.key(), encode_blob_value(info))
        batch.put(store.repo_blobs, repo_key(repo, str(digest)), b"")
        batch.put(store.repos, repo.encode(), b"")
    store.committed([info.cid])
    return info


def record_manifest(
    store: RegistryStore,
    repo: str,
    manifest: LayoutManifest,
    *,
    tag: str | None = None,
    image: CID | None = None,
) -> None:
    """Index a verified manifest (its DAG stored) under ``repo``, optionally moving ``tag`` to it.

    With ``image`` the tag's image entry points at that layout directory (for ``ipfs/<cid>``
    repositories: the directory itself).
    """
    parsed = parse_manifest(manifest.body, manifest.media_type)
    digest = parse_digest(manifest.digest)
    existing = store.blob_info(digest)
    meta: dict[str, Any] = {"mediaType": parsed.media_type, "size": len(manifest.body)}
    if parsed.subject is not None:
        meta["subject"] = str(parsed.subject.digest)
    if parsed.manifests:
        meta["children"] = [str(c.digest) for c in parsed.manifests]
    if parsed.blobs:
        meta["blobs"] = [str(b.digest) for b in parsed.blobs]
    with store.datastore.batch(sync=True) as batch:
        if existing is None:
            batch.put(
                store.blobs,
                digest.key(),
                encode_blob_value(BlobInfo(digest, manifest.cid, len(manifest.body))),
            )
        batch.put(store.manifests, repo_key(repo, str(digest)), json.dumps(meta).encode())
        if tag is not None:
            batch.put(store.tags, repo_key(repo, tag), digest.key())
            if image is not None:
                value = {"digest": str(digest), "cid": str(image)}
                batch.put(store.published, repo_key(repo, tag), json.dumps(value).encode())
        batch.put(store.repos, repo.encode(), b"")
    store.committed([manifest.cid, *([image] if image is not None and tag is not None else [])])
    if tag is not None:
        store.tags_changed(repo)


# --- ipfs/<cid> repositories ------------------------------------------------------------------


async def fetch_manifest(
    store: RegistryStore, source: BlockSource, root: CID, reference: str
) -> tuple[ImageLayout, LayoutManifest]:
    """Read manifest ``reference`` (tag or digest) of layout ``root`` and record it, with an index's
    child manifests, under ``ipfs/<root>`` (a tag moves there; ``latest`` names a lone manifest).

    Raises LayoutError (ReferenceNotFound for an unknown reference); fetch errors propagate.
    """
    layout, manifest, children = await _read_manifests(source, root, reference)
    _record_manifests(store, root, reference, manifest, children)
    return layout, manifest


async def _read_manifests(
    source: BlockSource, root: CID, reference: str
) -> tuple[ImageLayout, LayoutManifest, list[LayoutManifest]]:
    """Manifest ``reference`` of layout ``root`` and, for an index, every manifest below it, verified."""
    layout = await read_image_layout(source, root)
    manifest = await read_manifest(source, layout, reference, max_bytes=MAX_MANIFEST_BYTES)
    children: list[LayoutManifest] = []
    pending = [manifest]
    while pending:
        parsed = _parse(pending.pop())
        for child in parsed.manifests:
            if any(c.digest == str(child.digest) for c in children):
                continue
            fetched = await read_manifest(source, layout, str(child.digest), max_bytes=MAX_MANIFEST_BYTES)
            children.append(fetched)
            pending.append(fetched)
    return layout, manifest, children


def _record_manifests(
    store: RegistryStore,
    root: CID,
    reference: str,
    manifest: LayoutManifest,
    children: Sequence[LayoutManifest],
) -> None:
    """Index ``manifest`` and its ``children`` under ``ipfs/<root>``; a tag ``reference`` moves last."""
    repo = ipfs_repository_name(root)
    for child_manifest in children:
        record_manifest(store, repo, child_manifest)
    is_tag = not reference.startswith(("sha256:", "sha512:"))
    record_manifest(store, repo, manifest, tag=reference if is_tag else None, image=root if is_tag else None)


def _parse(manifest: LayoutManifest) -> ParsedManifest:
    try:
        return parse_manifest(manifest.body, manifest.media_type)
    except RegistryError as exc:
        raise LayoutError(f"manifest {manifest.digest} is invalid: {exc}") from None


async def locate_blob(source: BlockSource, root: CID, digest: Digest) -> tuple[CID, int]:
    """The DAG root and byte size of ``blobs/<alg>/<hex>`` in layout ``root``."""
    layout = await read_image_layout(source, root)
    cid = await blob_cid(source, layout, str(digest))
    info = await exporter.stat(source, cid)
    if info.type not in ("file", "raw"):
        raise LayoutError(f"blob {digest} in {root} is a {info.type}, not a file")
    return cid, info.size


async def fetch_blob(
    store: RegistryStore, source: BlockSource, repo: str, digest: Digest, cid: CID, size: int
) -> AsyncIterator[bytes]:
    """Stream blob ``digest`` from DAG ``cid``, verified (see :func:`verified_chunks`); once all of
    it has been read and matched, it is indexed under ``repo`` so it is then served locally."""
    with leased(store, source) as held:
        async for chunk in verified_chunks(held, cid, digest):
            yield chunk
        record_blob(store, repo, digest, cid, size)


# --- whole images -------------------------------------------------------------------------------


def own_tag(layout: ImageLayout) -> str:
    """The reference ``pull /ipfs/CID`` takes when none is given: the tag of the layout's only image
    (its ``org.opencontainers.image.ref.name``), else ``latest`` (which names a lone untagged image)."""
    if len(layout.manifests) == 1:
        ref_name = layout.manifests[0].ref_name
        if ref_name is not None and is_valid_tag(ref_name):
            return ref_name
    return LATEST


def _tag_of(layout: ImageLayout, reference: str) -> str:
    """The tag of an image pulled by ``reference`` (a tag or digest of the layout) when none is asked for."""
    ref_name = find_manifest(layout, reference).ref_name
    return ref_name if ref_name is not None and is_valid_tag(ref_name) else LATEST


async def mirror_image(
    store: RegistryStore, source: BlockSource, root: CID, ref: str | None = None
) -> PulledImage:
    """Fetch image ``ref`` of layout ``root`` whole (manifests and blobs, verified) and record it under
    ``ipfs/<root>``, so this node serves it, and its blocks to peers, without the network.

    ``ref`` None: the layout's own tag (:func:`own_tag`)."""
    repo = ipfs_repository_name(root)
    with leased(store, source) as held:
        if ref is None:
            ref = own_tag(await read_image_layout(held, root))
        _, manifest, children = await _read_manifests(held, root, ref)
        digests: dict[str, None] = {}
        for parsed in map(_parse, [manifest, *children]):
            for blob in parsed.blobs:
                digests.setdefault(str(blob.digest), None)
        fetched = 0
        for digest_text in digests:
            digest = parse_digest(digest_text)
            if store.repo_has_blob(repo, digest):
                continue
            cid, size = await locate_blob(held, root, digest)
            async for _ in fetch_blob(store, held, repo, digest, cid, size):
                pass
            fetched += 1
        # Recorded last: the image is listed (and its tag resolves) only once every blob is here.
        _record_manifests(store, root, ref, manifest, children)
    return PulledImage(repo, ref, parse_digest(manifest.digest), root, fetched)


def _pick_reference(layout: ImageLayout, ref: str | None, tag: str) -> str:
    if ref is not None:
        return ref
    try:
        find_manifest(layout, tag)
        return tag
    except ReferenceNotFound:
        return LATEST


async def pull_image(
    store: RegistryStore, source: BlockSource, cid: CID, ref: str | None, name: str, tag: str | None
) -> PulledImage:
    """Fetch image ``ref`` of layout ``cid`` (every manifest and blob, verified) into ``name:tag``.

    ``ref`` is a tag of the layout or a manifest digest; None means ``tag`` if the layout has it,
    else its only manifest. ``tag`` None means the layout's own tag of that image (its ref name;
    ``latest`` when it has none). The tag moves and the image is published in one batch at the end;
    the returned CID is the image directory as this registry publishes it (equal to ``cid`` when
    both were built with the same importer settings and the same ref name).
    """
    check_name(name)
    if name.startswith("ipfs/"):
        raise RegistryError("DENIED", {"name": name, "reason": "ipfs/<cid> repositories are read-only"})
    if tag is not None and not is_valid_tag(tag):
        raise RegistryError("TAG_INVALID", {"tag": tag[:150]})
    count = 0
    with leased(store, source) as held:
        layout = await read_image_layout(held, cid)
        if tag is None:
            reference = ref if ref is not None else own_tag(layout)
            tag = _tag_of(layout, reference)
        else:
            reference = _pick_reference(layout, ref, tag)
        top = await read_manifest(held, layout, reference, max_bytes=MAX_MANIFEST_BYTES)
        manifests: list[LayoutManifest] = []
        order = [top]
        while order:  # children before parents, so every manifest is recorded after what it names
            manifest = order.pop()
            manifests.insert(0, manifest)
            for child in _parse(manifest).manifests:
                if all(m.digest != str(child.digest) for m in manifests + order):
                    order.append(
                        await read_manifest(held, layout, str(child.digest), max_bytes=MAX_MANIFEST_BYTES)
                    )
        seen: set[str] = set()
        for manifest in manifests:
            for blob in _parse(manifest).blobs:
                if str(blob.digest) in seen:
                    continue
                seen.add(str(blob.digest))
                info = store.blob_info(blob.digest)
                if info is not None and await _complete_locally(store, info):
                    record_blob(store, name, blob.digest, info.cid, info.size)
                    continue
                blob_root = await blob_cid(held, layout, str(blob.digest))
                size = 0
                async for chunk in verified_chunks(held, blob_root, blob.digest):
                    size += len(chunk)
                record_blob(store, name, blob.digest, blob_root, size, replace=info is not None)
                count += 1
        for manifest in manifests:
            if manifest is top:
                continue
            record_manifest(store, name, manifest)
        digest = parse_digest(top.digest)
        await store.put_manifest(name, top.body, top.media_type, tag=tag, digest=digest)
    image = store.image(name, tag)
    if image is None or image.digest != digest:
        raise LayoutError(f"{name}:{tag} could not be published on IPFS")
    return PulledImage(name, tag, digest, image.cid, count + len(manifests))


async def _complete_locally(store: RegistryStore, info: BlobInfo) -> bool:
    """Whether every block of the blob's DAG is stored here (a blob indexed by a partial pull may not be)."""
    stack = [info.cid]
    local = store.local_source
    while stack:
        cid = stack.pop()
        if not store.datastore.blocks.has(cid):
            return False
        if cid.codec == DAG_PB:
            stack.extend(link.cid for link in dagpb.decode(await local.get(cid)).links)
    return True


async def tag_image_from_cid(
    store: RegistryStore, cid: CID, name: str, tag: str | None, ref: str | None = None
) -> PulledImage:
    """Tag an image whose blocks are all stored locally (e.g. imported from a CAR) as ``name:tag``."""
    return await pull_image(store, store.local_source, cid, ref, name, tag)


# --- imports from disk --------------------------------------------------------------------------


def _open_path(path: Path) -> Readable:
    return path.open("rb")


async def _file_chunks(fileobj: Readable) -> AsyncIterator[bytes]:
    while True:
        data = await trio.to_thread.run_sync(fileobj.read, READ_BYTES)
        if not data:
            return
        yield data


async def _import_blob(
    store: RegistryStore, repo: str, digest: Digest, open_file: Callable[[], Readable]
) -> BlobInfo:
    """Stream a file into ``repo`` as blob ``digest`` (checked) unless it is stored already."""
    existing = store.blob_info(digest)
    if existing is not None and await _complete_locally(store, existing):
        return record_blob(store, repo, digest, existing.cid, existing.size)
    upload = store.scratch_upload(repo)
    fileobj = await trio.to_thread.run_sync(open_file)
    try:
        await store.append(upload, _file_chunks(fileobj))
    finally:
        fileobj.close()
    return await store.finish_upload(upload, digest)


async def import_layout_dir(
    store: RegistryStore, path: str | Path, name: str, tag: str, ref: str | None = None
) -> PulledImage:
    """Import image ``ref`` (default: ``tag`` if the layout names it, else its only manifest) of the OCI
    layout directory ``path`` into ``name:tag``; files stream from disk, each checked against its digest."""
    root = Path(path)
    check_name(name)
    if not is_valid_tag(tag):
        raise RegistryError("TAG_INVALID", {"tag": tag[:150]})
    try:
        parse_oci_layout((root / "oci-layout").read_bytes())
        index_json = (root / "index.json").read_bytes()
    except OSError as exc:
        raise LayoutError(f"{root} is not an OCI image layout: {exc}") from None
    layout = ImageLayout(CID.hash(index_json), parse_index(index_json), index_json)
    reference = _pick_reference(layout, ref, tag)
    if reference.startswith(("sha256:", "sha512:")):
        top_digest, top_type = reference, None
    else:
        descriptor = find_manifest(layout, reference)
        top_digest, top_type = descriptor.digest, descriptor.media_type

    def blob_file(digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return root / "blobs" / algorithm / hexpart

    def read_manifest_file(digest: str) -> bytes:
        file = blob_file(digest)
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise LayoutError(f"manifest {digest} is over {MAX_MANIFEST_BYTES} bytes")
        body = file.read_bytes()
        algorithm, hexpart = digest.split(":", 1)
        if hashlib.new(algorithm, body).hexdigest() != hexpart:
            raise BlobMismatch(f"{file} does not match {digest}")
        return body

    count = 0
    done: set[str] = set()

    async def import_manifest(digest: str, media_type: str | None, tagged: bool) -> None:
        nonlocal count
        body = read_manifest_file(digest)
        kind = media_type or manifest_media_type(body, digest)
        parsed = parse_manifest(body, kind)
        for blob in parsed.blobs:
            if str(blob.digest) not in done:
                file = blob_file(str(blob.digest))
                await _import_blob(store, name, blob.digest, partial(_open_path, file))
                done.add(str(blob.digest))
                count += 1
        for child in parsed.manifests:
            if str(child.digest) not in done:
                await import_manifest(str(child.digest), child.media_type, False)
                done.add(str(child.digest))
        await store.put_manifest(name, body, kind, tag=tag if tagged else None, digest=parse_digest(digest))
        count += 1

    await import_manifest(top_digest, top_type, True)
    image = store.image(name, tag)
    if image is None:
        raise LayoutError(f"{name}:{tag} could not be published on IPFS")
    return PulledImage(name, tag, image.digest, image.cid, count)


def _docker_save_entry(tar: tarfile.TarFile) -> tuple[str, list[str]]:
    """The config path and layer paths of the (first) image in a docker save tarball's manifest.json."""
    try:
        member = tar.extractfile("manifest.json")
    except KeyError:
        raise LayoutError("not a docker save tarball: no manifest.json") from None
    if member is None:
        raise LayoutError("manifest.json in the tarball is not a file")
    try:
        doc = json.loads(member.read(MAX_MANIFEST_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise LayoutError("manifest.json must be a non-empty array of images")
    config, layers = doc[0].get("Config"), doc[0].get("Layers")
    if (
        not isinstance(config, str)
        or not isinstance(layers, list)
        or not all(isinstance(x, str) for x in layers)
    ):
        raise LayoutError("manifest.json's image needs a Config path and a list of Layers paths")
    return config, layers


def _hash_member(tar_path: Path, member: str) -> tuple[str, int]:
    """sha256 and size of one tarball member, read in pieces (runs in a worker thread)."""
    with tarfile.open(tar_path) as tar:
        fileobj = tar.extractfile(member)
        if fileobj is None:
            raise LayoutError(f"{member} in {tar_path} is not a file")
        hasher = hashlib.sha256()
        size = 0
        while data := fileobj.read(READ_BYTES):
            hasher.update(data)
            size += len(data)
    return "sha256:" + hasher.hexdigest(), size


def _open_member(tar_path: Path, member: str) -> Readable:
    tar = tarfile.open(tar_path)  # noqa: SIM115 - closed by the returned reader
    fileobj = tar.extractfile(member)
    if fileobj is None:
        tar.close()
        raise LayoutError(f"{member} in {tar_path} is not a file")
    return _MemberFile(tar, fileobj)


class _MemberFile:
    """A tar member's reader that closes its tarball too."""

    def __init__(self, tar: tarfile.TarFile, fileobj: IO[bytes]) -> None:
        self.tar = tar
        self.fileobj = fileobj

    def read(self, size: int = -1) -> bytes:
        return self.fileobj.read(size)

    def close(self) -> None:
        self.fileobj.close()
        self.tar.close()


async def import_docker_save(store: RegistryStore, tar_path: str | Path, name: str, tag: str) -> PulledImage:
    """Import the image of a ``docker save`` tarball into ``name:tag`` as an OCI image manifest.

    Each layer is read twice from disk (once to learn its digest, once streamed into the store), so no
    layer is ever held in memory. The config is checked against the layers' ``rootfs.diff_ids``.
    """
    path = Path(tar_path)
    check_name(name)
    if not is_valid_tag(tag):
        raise RegistryError("TAG_INVALID", {"tag": tag[:150]})

    def read_entry() -> tuple[str, list[str], bytes]:
        try:
            with tarfile.open(path) as tar:
                config_path, layers = _docker_save_entry(tar)
                member = tar.extractfile(config_path)
                if member is None:
                    raise LayoutError(f"{config_path} in {path} is not a file")
                return config_path, layers, member.read(MAX_MANIFEST_BYTES + 1)
        except (OSError, tarfile.TarError, KeyError) as exc:
            raise LayoutError(f"cannot read the docker save tarball {path}: {exc}") from None

    _, layer_paths, config = await trio.to_thread.run_sync(read_entry)
    if len(config) > MAX_MANIFEST_BYTES:
        raise LayoutError(f"the image config is over {MAX_MANIFEST_BYTES} bytes")
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LayoutError(f"the image config has no rootfs.diff_ids: {exc}") from None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_paths):
        raise LayoutError(
            f"the config's rootfs.diff_ids do not list one digest per layer ({len(layer_paths)} layers)"
        )
    config_digest = Digest("sha256", hashlib.sha256(config).hexdigest())
    await _import_blob_bytes(store, name, config_digest, config)
    layers: list[dict[str, Any]] = []
    for layer_path, diff_id in zip(layer_paths, diff_ids, strict=True):
        try:
            digest, size = await trio.to_thread.run_sync(_hash_member, path, layer_path)
        except (OSError, tarfile.TarError, KeyError) as exc:
            raise LayoutError(f"cannot read layer {layer_path}: {exc}") from None
        if digest != diff_id:
            raise BlobMismatch(f"layer {layer_path} is {digest}, the config's diff_id says {diff_id}")
        await _import_blob(store, name, parse_digest(digest), partial(_open_member, path, layer_path))
        layers.append({"mediaType": OCI_LAYER_TAR, "digest": digest, "size": size})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": str(config_digest), "size": len(config)},
        "layers": layers,
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    manifest_digest, _ = await store.put_manifest(name, body, OCI_MANIFEST, tag=tag, digest=None)
    image = store.image(name, tag)
    if image is None:
        raise LayoutError(f"{name}:{tag} could not be published on IPFS")
    return PulledImage(name, tag, manifest_digest, image.cid, len(layers) + 2)


async def _import_blob_bytes(store: RegistryStore, repo: str, digest: Digest, data: bytes) -> BlobInfo:
    async def once() -> AsyncIterator[bytes]:
        yield data

    upload = store.scratch_upload(repo)
    await store.append(upload, once())
    return await store.finish_upload(upload, digest)
