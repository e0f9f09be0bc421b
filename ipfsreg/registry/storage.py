"""Registry storage: blobs as UnixFS DAGs in the blockstore plus the registry's LevelDB indexes.

Keyspaces (all in the node's one LevelDB, so a blob's last blocks and the index entries that
make it visible commit in one atomic batch):

- ``reg.blobs``      ``<digest>`` -> varint(size) + root CID bytes       (global digest -> DAG index)
- ``reg.repoblobs``  ``<repo>\\0<digest>`` -> b""                         (repository membership of blobs)
- ``reg.manifests``  ``<repo>\\0<digest>`` -> JSON {mediaType, size, subject, children}
- ``reg.tags``       ``<repo>\\0<tag>`` -> ``<digest>``
- ``reg.referrers``  ``<repo>\\0<subject digest>\\0<digest>`` -> JSON descriptor
- ``reg.repos``      ``<repo>`` -> b""                                    (catalog)
- ``reg.uploads``    ``<uuid>`` -> len(meta) + JSON meta + importer snapshot
- ``reg.images``     ``<repo>\\0<tag>`` -> JSON {digest, cid}: the tag's image published on IPFS, an
  OCI Image Layout directory over the blob DAGs (written in the same batch as the tag move, so a tag
  never points at a stale image directory; a tag whose image cannot be laid out has no entry)

Uploads stream through the sha256 hasher and the UnixFS importer in worker threads (hashlib and
the importer release the GIL on large buffers); the resulting blocks are committed to the
datastore (leaf bytes appended to pack files, pointers and small blocks in one LevelDB batch) in
batches of ``flush_bytes``, also in worker threads (plyvel releases the GIL while writing), one
batch at a time per upload, so the blob's index batch always commits after all its leaf batches.
At the end of every chunk the importer's snapshot is stored in the same batch as its last
blocks, so a session resumes after a restart by restoring the importer and re-hashing the bytes
already stored (``written_subtrees`` + ``buffered``).

Memory: the bytes of all uploads in flight (pieces read and not yet committed) share one budget,
``upload_memory_bytes`` (:class:`MemoryBudget`); an upload that would pass it waits before
reading more of its body (its client is read more slowly), after flushing what it holds so that
waiting uploads never hold each other up.

Garbage collection safety: every upload holds a datastore lease on the blocks it has flushed
until the blob is committed (then the blob index reaches them) or the upload is cancelled,
broken or evicted from memory (a persisted session's record reaches them through
``live_roots``). Without it a collection starting between a flush and the blob's commit would
sweep the leaves of a scratch upload (monolithic ``POST ?digest=``, pull-through fetches),
which has no persisted record.

``on_blocks_stored`` (e.g. the node's ``notify_new_blocks``) is called on the trio thread with
the CIDs of every batch of blocks an upload or manifest commits, so peers waiting for them over
bitswap learn of them at once. ``on_committed`` (e.g. the node's ``provide``) is called with the
CIDs of what became addressable content once it has committed: every blob root, manifest and
published image directory, however it arrived (push, pull-through, pull by CID, import).
"""

from __future__ import annotations

import json
import logging
import struct
import time
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ipfsreg.blockstore import BlockstoreError, Datastore, WriteBatch
from ipfsreg.blockstore.store import Lease
from ipfsreg.cid import CID, decode_varint, encode_varint
from ipfsreg.excgroups import leaves
from ipfsreg.node.blobs.protocol import digest_cid
from ipfsreg.oci.blobs import layout_blob
from ipfsreg.oci.errors import LayoutError
from ipfsreg.oci.layout import LayoutBlob, LayoutResult, build_image_layout
from ipfsreg.registry.digests import Digest, Hasher, new_hasher, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.manifest import ParsedManifest, parse_manifest, referrer_descriptor
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource, LocalBlockSource, read_file
from ipfsreg.unixfs.importer import Block, FileImporter, ImportOptions, import_bytes

log = logging.getLogger(__name__)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a pipeline: its first leaf that is not a cancellation."""
    errors = leaves(group)
    for error in errors:
        if not isinstance(error, trio.Cancelled):
            return error
    return errors[0] if errors else group


_SEP: Final = b"\0"
_UPLOAD_HEADER: Final = struct.Struct(">I")
# Bytes gathered from the request body before one worker-thread hand-off.
_PIECE_BYTES: Final = 1024 * 1024
# Idle sessions leave memory after this many seconds; their saved state restores them on demand.
LIVE_IDLE_SECONDS: Final = 60.0
# Retry-After of a 429 when every session in memory is busy (they end within a request) and when a
# client has too many open sessions (those end when finished, cancelled or expired).
BUSY_RETRY_SECONDS: Final = 1
CLIENT_RETRY_SECONDS: Final = 60
# Expired sessions are purged at most this often when a client reaches its cap.
_PURGE_EVERY_SECONDS: Final = 60.0

BlocksStored = Callable[[list[CID]], None]
# Called with the batch that will commit these blocks (e.g. to mark them private in the same batch).
BatchTagger = Callable[[WriteBatch, list[CID]], None]
# A batch of an upload's blocks on its way to LevelDB (None: nothing to write), its CIDs, and the
# memory-budget bytes of the pieces whose blocks it completes (given back once it is committed).
_Batch = tuple[WriteBatch | None, list[CID], int]


@dataclass
class _Held:
    bytes: int = 0


class MemoryBudget:
    """Bytes of upload data in flight (read, hashed, chunked, not yet committed) across all uploads.

    ``acquire`` waits while taking ``n`` more would pass the limit (one piece always passes when
    nothing is held, so no piece is too large); ``release`` gives bytes back and wakes the waiters.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lot = trio.lowlevel.ParkingLot()

    def would_wait(self, n: int) -> bool:
        return self.limit > 0 and self.used > 0 and self.used + n > self.limit

    async def acquire(self, n: int) -> None:
        while self.would_wait(n):
            await self._lot.park()
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        if n:
            self.used -= n
            self._lot.unpark_all()


TagsChanged = Callable[[str], None]


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    cid: CID
    size: int


@dataclass(frozen=True)
class ManifestInfo:
    digest: Digest
    cid: CID
    size: int
    media_type: str
    subject: str | None = None
    children: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageInfo:
    """A tag's image on IPFS: ``cid`` is its OCI Image Layout directory."""

    name: str
    tag: str
    digest: Digest
    cid: CID


@dataclass
class Upload:
    """An upload session; ``offset`` is the number of bytes received and stored so far.

    ``lease`` holds every block the upload has flushed against garbage collection until the blob
    is committed or the upload is dropped (see the module docstring).
    """

    uuid: str
    repo: str
    importer: FileImporter
    hasher: Hasher
    offset: int
    started: float
    updated: float
    lock: trio.Lock = field(default_factory=trio.Lock)
    pending: list[Block] = field(default_factory=list)
    pending_bytes: int = 0
    broken: bool = False
    lease: Lease | None = None
    # The mirror's hooks: ``tag_blocks`` sees every batch of the upload's blocks before it commits,
    # ``on_commit`` gets the blocks of each batch, in order, once they are stored (and servable).
    tag_blocks: BatchTagger | None = None
    on_commit: Callable[[list[Block]], None] | None = None
    committing: list[list[Block]] = field(default_factory=list)
    # Announce the finished blob to ``on_committed`` (content routing); a private namespace's is not.
    announce: bool = True
    client: str = ""
    """Who opened the session (``user:NAME`` or ``addr:IP``), for the per-client cap."""


def _blob_value(info: BlobInfo) -> bytes:
    return encode_varint(info.size) + info.cid.to_bytes()


def _decode_blob_value(digest: Digest, raw: bytes) -> BlobInfo:
    size, pos = decode_varint(raw)
    return BlobInfo(digest, CID.decode(raw[pos:]), size)


def _record_meta(raw: bytes) -> dict[str, Any] | None:
    """The JSON metadata of an upload record, None when it is damaged."""
    try:
        (meta_len,) = _UPLOAD_HEADER.unpack_from(raw)
        meta = json.loads(raw[_UPLOAD_HEADER.size : _UPLOAD_HEADER.size + meta_len])
    except (struct.error, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _record_client(raw: bytes) -> str:
    meta = _record_meta(raw)
    return str(meta.get("client", "")) if meta is not None else ""


def _rkey(repo: str, *parts: str) -> bytes:
    return _SEP.join([repo.encode(), *(p.encode() for p in parts)])


# Index encodings shared with images.py (pulls record what they fetched in the same keyspaces).
encode_blob_value = _blob_value
repo_key = _rkey


def _decode_image(key: bytes, raw: bytes) -> ImageInfo:
    repo, tag = key.split(_SEP, 1)
    value = json.loads(raw)
    return ImageInfo(repo.decode(), tag.decode(), parse_digest(value["digest"]), CID.parse(value["cid"]))


class RegistryStore:
    """Everything the HTTP handlers need from storage, over one :class:`Datastore`."""

    def __init__(
        self,
        datastore: Datastore,
        *,
        block_source: BlockSource | None = None,
        import_options: ImportOptions | None = None,
        flush_bytes: int = 4 * 1024 * 1024,
        upload_ttl: float = 24 * 3600.0,
        max_blob_bytes: int = 0,
        on_blocks_stored: BlocksStored | None = None,
        on_committed: BlocksStored | None = None,
        send_committed: Callable[[], Awaitable[None]] | None = None,
        max_live_uploads: int = 1000,
        max_uploads_per_client: int = 1000,
        upload_memory_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.datastore = datastore
        self.on_blocks_stored = on_blocks_stored
        self.on_committed = on_committed
        self.send_committed = send_committed
        self.local_source: BlockSource = LocalBlockSource(datastore.blocks)
        self.block_source: BlockSource = block_source if block_source is not None else self.local_source
        self.import_options = import_options if import_options is not None else ImportOptions()
        self.flush_bytes = flush_bytes
        self.upload_ttl = upload_ttl
        self.max_blob_bytes = max_blob_bytes
        self.blobs = datastore.keyspace("reg.blobs")
        self.repo_blobs = datastore.keyspace("reg.repoblobs")
        self.manifests = datastore.keyspace("reg.manifests")
        self.tags = datastore.keyspace("reg.tags")
        self.referrers = datastore.keyspace("reg.referrers")
        self.repos = datastore.keyspace("reg.repos")
        self.uploads = datastore.keyspace("reg.uploads")
        self.published = datastore.keyspace("reg.images")
        self.memory = MemoryBudget(upload_memory_bytes)
        self.max_live_uploads = max_live_uploads
        self.max_uploads_per_client = max_uploads_per_client
        # Sessions in memory, least recently used first (eviction takes them from the front).
        self._live: OrderedDict[str, Upload] = OrderedDict()
        # Open (persisted, unfinished) sessions per client; counted from the records on first use.
        self._open: dict[str, int] | None = None
        self._last_purge = 0.0
        self.on_tags_changed: TagsChanged | None = None
        """Called on the trio thread with a repository whose tags moved or went away (IPNS republishing)."""

    # --- blobs ---------------------------------------------------------------------------

    def blob_info(self, digest: Digest) -> BlobInfo | None:
        """The global digest -> DAG entry, whatever repository holds it."""
        raw = self.blobs.get(digest.key())
        return None if raw is None else _decode_blob_value(digest, raw)

    def repo_has_blob(self, repo: str, digest: Digest) -> bool:
        return self.repo_blobs.get(_rkey(repo, str(digest))) is not None

    def stat_blob(self, repo: str, digest: Digest) -> BlobInfo:
        info = self.blob_info(digest) if self.repo_has_blob(repo, digest) else None
        if info is None:
            raise RegistryError("BLOB_UNKNOWN", {"digest": str(digest)})
        return info

    def read(self, cid: CID, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return read_file(self.block_source, cid, offset, length)

    async def read_all(self, cid: CID) -> bytes:
        parts = [chunk async for chunk in self.read(cid)]
        return b"".join(parts)

    def delete_blob(self, repo: str, digest: Digest) -> None:
        """Remove the blob from ``repo``; its blocks stay for other blobs, repos and GC."""
        if not self.repo_has_blob(repo, digest):
            raise RegistryError("BLOB_UNKNOWN", {"digest": str(digest)})
        self.repo_blobs.delete(_rkey(repo, str(digest)))

    def mount_blob(self, repo: str, digest: Digest, from_repo: str | None) -> BlobInfo | None:
        """Link an existing blob into ``repo``; None when it cannot be mounted.

        With ``from_repo`` the blob must belong to that repository; without it any stored blob
        with this digest is mounted (the spec's automatic content discovery).
        """
        if from_repo is not None and not self.repo_has_blob(from_repo, digest):
            return None
        info = self.blob_info(digest)
        if info is None:
            return None
        with self.datastore.batch() as batch:
            self._link_blob(batch, repo, info)
        return info

    def _link_blob(self, batch: WriteBatch, repo: str, info: BlobInfo) -> None:
        batch.put(self.repo_blobs, _rkey(repo, str(info.digest)), b"")
        batch.put(self.repos, repo.encode(), b"")

    # --- uploads -------------------------------------------------------------------------

    def evict_idle_uploads(self, idle_seconds: float = LIVE_IDLE_SECONDS) -> int:
        """Drop idle, unlocked sessions from memory (their state is saved); return how many.

        Sessions are kept least recently used first: the scan stops at the first one used within
        ``idle_seconds`` (those after it were used later).
        """
        now = time.time()
        idle: list[str] = []
        for key, upload in self._live.items():
            if now - upload.updated <= idle_seconds:
                break
            if self._evictable(upload):
                idle.append(key)
        for key in idle:
            self._release(self._live.pop(key))
        return len(idle)

    @staticmethod
    def _evictable(upload: Upload) -> bool:
        return not upload.lock.locked() and not upload.pending

    def _make_room(self) -> None:
        """Keep at most ``max_live_uploads`` sessions in memory: evict the least recently used idle
        one to its saved state, or refuse with 429 when all of them are in use."""
        if self.max_live_uploads <= 0 or len(self._live) < self.max_live_uploads:
            return
        for key, upload in self._live.items():
            if self._evictable(upload):
                self._release(self._live.pop(key))
                return
        raise RegistryError(
            "TOOMANYREQUESTS",
            {"reason": f"all {len(self._live)} upload sessions in memory are busy"},
            headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
        )

    def _keep_live(self, upload: Upload) -> None:
        """Hold ``upload`` in memory as the most recently used session."""
        self._make_room()
        self._live[upload.uuid] = upload

    @property
    def live_uploads(self) -> int:
        return len(self._live)

    def _open_counts(self) -> dict[str, int]:
        if self._open is None:
            counts: dict[str, int] = {}
            for _key, raw in self.uploads.items():
                client = _record_client(raw)
                counts[client] = counts.get(client, 0) + 1
            self._open = counts
        return self._open

    def _opened(self, client: str) -> None:
        counts = self._open_counts()
        counts[client] = counts.get(client, 0) + 1

    def _closed(self, client: str) -> None:
        """A persisted session of ``client`` ended (finished, cancelled, expired)."""
        if self._open is None:
            return
        left = self._open.get(client, 0) - 1
        if left > 0:
            self._open[client] = left
        else:
            self._open.pop(client, None)

    def open_uploads(self, client: str) -> int:
        """How many unfinished sessions ``client`` has open (in memory or saved)."""
        return self._open_counts().get(client, 0)

    def _check_client_cap(self, client: str) -> None:
        cap = self.max_uploads_per_client
        if cap <= 0 or self.open_uploads(client) < cap:
            return
        now = time.monotonic()
        if now - self._last_purge >= _PURGE_EVERY_SECONDS:
            self._last_purge = now
            self.purge_expired_uploads()
            if self.open_uploads(client) < cap:
                return
        raise RegistryError(
            "TOOMANYREQUESTS",
            {"reason": f"{cap} upload sessions are already open for this client; finish or cancel some"},
            headers={"Retry-After": str(CLIENT_RETRY_SECONDS)},
        )

    async def new_upload(self, repo: str, client: str = "") -> Upload:
        """Start an upload session, persisted at once so it survives a restart.

        Raises TOOMANYREQUESTS (429, Retry-After) when ``client`` already has
        ``max_uploads_per_client`` open sessions, or when every session in memory is busy.
        """
        self._check_client_cap(client)
        self.evict_idle_uploads()
        self._make_room()
        now = time.time()
        upload = Upload(
            uuid=str(uuidlib.uuid4()),
            repo=repo,
            importer=FileImporter(self.import_options),
            hasher=new_hasher("sha256"),
            offset=0,
            started=now,
            updated=now,
            lease=Lease(self.datastore),
            client=client,
        )
        batch = self.datastore.batch()
        batch.put(self.uploads, upload.uuid.encode(), self._upload_record(upload))
        self._opened(client)  # before the write: concurrent POSTs count it against the cap
        try:
            # In a worker thread, as every commit of an upload: another upload's commit may hold
            # the datastore's write lock for a while, and the event loop must not wait for it.
            await self._commit(batch, [])
        except BaseException:
            self._closed(client)
            self._release(upload)
            raise
        self._live[upload.uuid] = upload
        return upload

    def scratch_upload(self, repo: str) -> Upload:
        """An unpersisted upload for a monolithic POST ?digest= (it finishes in one request)."""
        now = time.time()
        return Upload(
            uuid="",
            repo=repo,
            importer=FileImporter(self.import_options),
            hasher=new_hasher("sha256"),
            offset=0,
            started=now,
            updated=now,
            lease=Lease(self.datastore),
        )

    def _upload_record(self, upload: Upload) -> bytes:
        meta = json.dumps(
            {
                "repo": upload.repo,
                "offset": upload.offset,
                "started": upload.started,
                "updated": upload.updated,
                "client": upload.client,
            }
        ).encode()
        return _UPLOAD_HEADER.pack(len(meta)) + meta + upload.importer.snapshot()

    async def get_upload(self, repo: str, upload_id: str) -> Upload:
        """The live session, restored from LevelDB (re-hashing its stored bytes) if needed."""
        upload = self._live.get(upload_id)
        if upload is not None and not upload.broken:
            if upload.repo != repo:
                raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id})
            if self._expired(upload.updated):
                self.cancel_upload(upload)
                raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id, "reason": "expired"})
            self._live.move_to_end(upload_id)
            return upload
        raw = self.uploads.get(upload_id.encode()) if upload_id else None
        if raw is None:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id[:100]})
        try:
            (meta_len,) = _UPLOAD_HEADER.unpack_from(raw)
            meta = json.loads(raw[_UPLOAD_HEADER.size : _UPLOAD_HEADER.size + meta_len])
            if meta["repo"] != repo:
                raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id})
            if self._expired(float(meta["updated"])):
                with self.datastore.batch() as batch:
                    batch.delete(self.uploads, upload_id.encode())
                self._closed(str(meta.get("client", "")))
                raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id, "reason": "expired"})
            importer = FileImporter.restore(raw[_UPLOAD_HEADER.size + meta_len :])
            hasher = new_hasher("sha256")
            rehashed = await self._rehash(importer, hasher)
        except (struct.error, ValueError, KeyError, TypeError, UnixFSError, BlockstoreError) as exc:
            # A damaged record or missing blocks: the session cannot continue, but stays for inspection.
            raise RegistryError(
                "BLOB_UPLOAD_INVALID", {"uuid": upload_id, "reason": f"cannot resume upload: {exc}"}
            ) from exc
        if rehashed != int(meta["offset"]):
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                {
                    "uuid": upload_id,
                    "reason": f"stored upload holds {rehashed} bytes, expected {meta['offset']}",
                },
            )
        importer.compact()
        restored = Upload(
            uuid=upload_id,
            repo=repo,
            importer=importer,
            hasher=hasher,
            offset=int(meta["offset"]),
            started=float(meta["started"]),
            updated=float(meta["updated"]),
            lease=Lease(self.datastore),
            client=str(meta.get("client", "")),
        )
        if upload is not None:
            restored.lock = upload.lock  # keep waiters of a broken session serialised
            self._live.pop(upload_id, None)
        self._keep_live(restored)
        return restored

    async def lock_upload(self, repo: str, upload_id: str) -> Upload:
        """Acquire the session's lock (caller releases ``upload.lock``); retried if it broke meanwhile."""
        while True:
            upload = await self.get_upload(repo, upload_id)
            await upload.lock.acquire()
            if not upload.broken:
                return upload
            upload.lock.release()
            if self._live.get(upload_id) is None and self.uploads.get(upload_id.encode()) is None:
                raise RegistryError("BLOB_UPLOAD_UNKNOWN", {"uuid": upload_id[:100]})

    async def _rehash(self, importer: FileImporter, hasher: Hasher) -> int:
        total = 0
        for cid, _ in importer.written_subtrees():
            async for chunk in read_file(self.local_source, cid):
                hasher.update(chunk)
                total += len(chunk)
        tail = importer.buffered()
        hasher.update(tail)
        return total + len(tail)

    def _expired(self, updated: float) -> bool:
        return self.upload_ttl > 0 and time.time() - updated > self.upload_ttl

    def _release(self, upload: Upload) -> None:
        """Drop the upload's lease: its blocks are indexed, recorded in its session, or garbage."""
        if upload.lease is not None:
            upload.lease.release()

    def cancel_upload(self, upload: Upload) -> None:
        self._live.pop(upload.uuid, None)
        already = upload.broken and self.uploads.get(upload.uuid.encode()) is None
        upload.broken = True
        self._release(upload)
        if upload.uuid and not already:
            with self.datastore.batch() as batch:
                batch.delete(self.uploads, upload.uuid.encode())
            self._closed(upload.client)

    def purge_expired_uploads(self) -> int:
        """Drop every session idle for longer than the TTL; return how many."""
        expired: list[bytes] = []
        for key, raw in self.uploads.items():
            meta = _record_meta(raw)
            if meta is not None and self._expired(float(meta.get("updated", 0))):
                expired.append(key)
                self._closed(str(meta.get("client", "")))
        if expired:
            with self.datastore.batch() as batch:
                for key in expired:
                    batch.delete(self.uploads, key)
            for key in expired:
                dropped = self._live.pop(key.decode(), None)
                if dropped is not None:
                    dropped.broken = True
                    self._release(dropped)
        return len(expired)

    def iter_uploads(self) -> Iterator[str]:
        for key, _ in self.uploads.items():
            yield key.decode()

    async def append(self, upload: Upload, body: AsyncIterator[bytes], *, max_bytes: int = 0) -> int:
        """Stream ``body`` into the session; return the bytes appended.

        Three stages run side by side, each at most one piece ahead of the next: this task reads
        the body, a second hashes and chunks it in a worker thread, a third commits the resulting
        block batches in another worker thread. Network, hashing and LevelDB writes overlap
        (hashlib and plyvel release the GIL), and at most a few MiB are in flight.

        On any failure the session's in-memory state is dropped, so the next request resumes
        from the last persisted chunk; the stored data is never half-updated.
        """
        appended = 0
        held = _Held()
        try:
            async with trio.open_nursery() as nursery:
                pieces_in, pieces_out = trio.open_memory_channel[list[bytes]](1)
                batches_in, batches_out = trio.open_memory_channel[_Batch](1)
                nursery.start_soon(self._hash_pieces, upload, pieces_out, batches_in)
                nursery.start_soon(self._commit_batches, upload, batches_out, held)
                async with pieces_in:
                    appended = await self._read_pieces(upload, body, pieces_in, max_bytes, held)
        except BaseExceptionGroup as group:
            self.discard_chunk(upload)
            raise _first_error(group) from None
        except BaseException:
            self.discard_chunk(upload)
            raise
        finally:
            self.memory.release(held.bytes)
        upload.offset += appended
        upload.updated = time.time()
        return appended

    async def _read_pieces(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        pieces: trio.MemorySendChannel[list[bytes]],
        max_bytes: int,
        held: _Held,
    ) -> int:
        """Stage 1: gather the body into pieces of about ``_PIECE_BYTES``, enforcing size limits.

        Each piece takes its bytes from the store's memory budget before it goes on (``held``
        until its blocks are committed): past the budget, bodies are read more slowly.
        """
        appended = 0
        piece: list[bytes] = []
        piece_len = 0
        async for data in body:
            if not data:
                continue
            appended += len(data)
            if max_bytes and appended > max_bytes:
                raise RegistryError(
                    "SIZE_INVALID", {"reason": f"chunk larger than {max_bytes} bytes"}, status=413
                )
            if self.max_blob_bytes and upload.offset + appended > self.max_blob_bytes:
                raise RegistryError(
                    "SIZE_INVALID",
                    {"reason": f"blob larger than {self.max_blob_bytes} bytes"},
                    status=413,
                )
            piece.append(data)
            piece_len += len(data)
            if piece_len >= _PIECE_BYTES:
                await self._take_memory(piece_len, pieces, held)
                await pieces.send(piece)
                piece, piece_len = [], 0
        if piece:
            await self._take_memory(piece_len, pieces, held)
            await pieces.send(piece)
        return appended

    async def _take_memory(self, size: int, pieces: trio.MemorySendChannel[list[bytes]], held: _Held) -> None:
        """Take ``size`` bytes of the memory budget for the next piece. Before waiting, ask stage 2
        to flush what this upload holds (an empty piece): every waiting upload then gives all its
        bytes back once they are committed, so waiting uploads never hold each other up for good."""
        if self.memory.would_wait(size) and held.bytes:
            await pieces.send([])
        await self.memory.acquire(size)
        held.bytes += size

    async def _hash_pieces(
        self,
        upload: Upload,
        pieces: trio.MemoryReceiveChannel[list[bytes]],
        batches: trio.MemorySendChannel[_Batch],
    ) -> None:
        """Stage 2: hash and chunk each piece; hand full batches of blocks to the committer.

        An empty piece asks for a flush now (stage 1 is about to wait for memory): whatever this
        upload holds of the budget then goes back as soon as it is committed.
        """
        ingested = 0  # budget bytes of the pieces chunked since the last batch
        async with batches:
            async for piece in pieces:
                if piece:
                    await self._ingest(upload, piece)
                    ingested += sum(len(data) for data in piece)
                if piece and upload.pending_bytes < self.flush_bytes:
                    continue
                if upload.pending:
                    batch = self.datastore.batch()
                    cids = self._put_pending(upload, batch)
                    await batches.send((batch, cids, ingested))
                    ingested = 0
                elif not piece and ingested:
                    await batches.send((None, [], ingested))  # in order, after earlier commits
                    ingested = 0

    async def _commit_batches(
        self, upload: Upload, batches: trio.MemoryReceiveChannel[_Batch], held: _Held
    ) -> None:
        """Stage 3: commit the upload's block batches in order, one at a time; the bytes of their
        pieces go back to the memory budget (the importer's partial chunk, at most one chunk per
        upload, is not counted)."""
        async for batch, cids, size in batches:
            if batch is not None:
                await self._commit(batch, cids)
                self._committed(upload)
            freed = min(size, held.bytes)
            held.bytes -= freed
            self.memory.release(freed)

    async def _ingest(self, upload: Upload, piece: list[bytes]) -> None:
        """Hash and chunk ``piece`` (the body's chunks as received, never joined) in a worker thread."""

        def work() -> list[Block]:
            blocks: list[Block] = []
            for data in piece:
                upload.hasher.update(data)
                blocks.extend(upload.importer.write(data))
            return blocks

        size = sum(len(data) for data in piece)
        blocks = await trio.to_thread.run_sync(work) if size >= 65536 else work()
        for block in blocks:
            upload.pending.append(block)
            upload.pending_bytes += len(block.data)

    async def _flush(self, upload: Upload) -> None:
        """Commit the upload's pending blocks in a batch of their own (leased until the blob commits)."""
        if not upload.pending:
            return
        batch = self.datastore.batch()
        cids = self._put_pending(upload, batch)
        await self._commit(batch, cids)
        self._committed(upload)

    @staticmethod
    def _put_pending(upload: Upload, batch: WriteBatch) -> list[CID]:
        """Move the pending blocks into ``batch`` and the upload's lease; return their CIDs."""
        cids: list[CID] = []
        for block in upload.pending:
            batch.put_block(block.cid, block.data, verify=False)
            if upload.lease is not None:
                upload.lease.add(block.cid)  # before the commit: no collection sees them unheld
            cids.append(block.cid)
        if upload.tag_blocks is not None and cids:
            upload.tag_blocks(batch, cids)
        if upload.on_commit is not None:
            upload.committing.append(upload.pending)
        upload.pending = []
        upload.pending_bytes = 0
        return cids

    @staticmethod
    def _committed(upload: Upload) -> None:
        """The upload's oldest uncommitted batch is stored: tell its ``on_commit`` hook."""
        if upload.on_commit is not None and upload.committing:
            blocks = upload.committing.pop(0)
            try:
                upload.on_commit(blocks)
            except Exception:
                log.exception("an upload's on_commit hook failed for %d blocks", len(blocks))

    async def _commit(self, batch: WriteBatch, cids: list[CID]) -> None:
        """Commit ``batch`` in a worker thread, then announce its blocks.

        The thread is not abandoned on cancellation, so when this returns or raises the batch has
        either committed or failed: callers never race their own commit.
        """
        await trio.to_thread.run_sync(batch.commit)
        self._announce(cids)

    def _announce(self, cids: list[CID]) -> None:
        if self.on_blocks_stored is None or not cids:
            return
        try:
            self.on_blocks_stored(cids)
        except Exception:
            # The blocks are stored whatever a listener does; a failing one must not fail the write.
            log.exception("on_blocks_stored callback failed for %d blocks", len(cids))

    def committed(self, cids: list[CID]) -> None:
        """Tell ``on_committed`` that ``cids`` (blob roots, manifests, image directories) are stored."""
        if self.on_committed is None or not cids:
            return
        try:
            self.on_committed(cids)
        except Exception:
            # The content is stored whatever a listener does; a failing one must not fail the write.
            log.exception("on_committed callback failed for %d CIDs", len(cids))

    async def committed_sent(self) -> None:
        """Before a push is answered: ``send_committed`` (e.g. the node's ``send_announced``) puts what
        ``on_committed`` queued on the wire, so that whoever the 201 prompts finds it announced."""
        if self.send_committed is None:
            return
        try:
            await self.send_committed()
        except Exception:  # the content is stored and queued for announcement whatever happens here
            log.exception("send_committed failed")

    def discard_chunk(self, upload: Upload) -> None:
        """Forget the in-memory progress of a failed chunk; the session resumes from its last save."""
        upload.broken = True
        upload.pending = []
        upload.pending_bytes = 0
        if self._live.get(upload.uuid) is upload:
            del self._live[upload.uuid]
        self._release(upload)

    async def save_upload(self, upload: Upload) -> None:
        """Persist the session's remaining blocks and importer snapshot in one batch (end of a chunk).

        The session then waits for its next chunk holding only its partial chunk's bytes.
        """
        try:
            batch = self.datastore.batch()
            cids = self._put_pending(upload, batch)
            batch.put(self.uploads, upload.uuid.encode(), self._upload_record(upload))
            await self._commit(batch, cids)
            self._committed(upload)
        except BaseException:
            self.discard_chunk(upload)
            raise
        upload.importer.compact()

    async def finish_upload(self, upload: Upload, digest: Digest) -> BlobInfo:
        """Complete the DAG, check the digest and make the blob visible in one atomic batch.

        Every earlier leaf batch of the upload has committed by now (``append`` awaits each), so
        the index entry commits after all the blob's blocks.
        """
        try:
            blocks, result = await trio.to_thread.run_sync(upload.importer.finish)
            upload.pending.extend(blocks)
            if digest.algorithm == "sha256":
                actual = upload.hasher.hexdigest()
            else:
                # Other algorithms are checked by re-reading the stored DAG (rare: sha512).
                await self._flush(upload)
                hasher = new_hasher(digest.algorithm)
                async for chunk in read_file(self.local_source, result.cid):
                    hasher.update(chunk)
                actual = hasher.hexdigest()
        except BaseException:
            self.discard_chunk(upload)
            raise
        if actual != digest.hex:
            self.cancel_upload(upload)
            raise RegistryError(
                "DIGEST_INVALID", {"digest": str(digest), "actual": f"{digest.algorithm}:{actual}"}
            )
        existing = self.blob_info(digest)
        info = existing if existing is not None else BlobInfo(digest, result.cid, result.size)
        if info.size != upload.offset:
            self.cancel_upload(upload)
            raise RegistryError("SIZE_INVALID", {"digest": str(digest), "size": upload.offset})
        try:
            batch = self.datastore.batch(sync=True)
            cids = self._put_pending(upload, batch)
            if existing is None:
                batch.put(self.blobs, digest.key(), _blob_value(info))
            self._link_blob(batch, upload.repo, info)
            if upload.uuid:
                batch.delete(self.uploads, upload.uuid.encode())
            await self._commit(batch, cids)
            self._committed(upload)
        finally:
            self._live.pop(upload.uuid, None)
            upload.broken = True
            self._release(upload)  # after the commit: the blob index now reaches every block
        if upload.uuid:
            self._closed(upload.client)
        if upload.announce:
            # Its root, and the digest CID fleet mirrors look it up by (it names the blob, not a block).
            self.committed([info.cid, digest_cid(str(digest))])
            await self.committed_sent()
        return info

    # --- manifests -----------------------------------------------------------------------

    def manifest_info(self, repo: str, digest: Digest) -> ManifestInfo | None:
        raw = self.manifests.get(_rkey(repo, str(digest)))
        if raw is None:
            return None
        meta = json.loads(raw)
        blob = self.blob_info(digest)
        if blob is None:
            return None
        return ManifestInfo(
            digest,
            blob.cid,
            blob.size,
            meta["mediaType"],
            meta.get("subject"),
            tuple(meta.get("children", ())),
        )

    def resolve_tag(self, repo: str, tag: str) -> Digest | None:
        raw = self.tags.get(_rkey(repo, tag))
        return None if raw is None else parse_digest(raw.decode())

    def resolve(self, repo: str, reference: str | Digest) -> ManifestInfo:
        """Manifest by tag or digest in ``repo``, or MANIFEST_UNKNOWN."""
        digest = reference if isinstance(reference, Digest) else self.resolve_tag(repo, reference)
        info = self.manifest_info(repo, digest) if digest is not None else None
        if info is None:
            raise RegistryError("MANIFEST_UNKNOWN", {"reference": str(reference)})
        return info

    def _import_bytes(self, data: bytes) -> tuple[list[Block], CID, int, int]:
        blocks, result = import_bytes(data, self.import_options)
        return blocks, result.cid, result.size, result.dag_size

    async def put_manifest(
        self,
        repo: str,
        body: bytes,
        content_type: str | None,
        *,
        tag: str | None,
        digest: Digest | None,
        tag_blocks: BatchTagger | None = None,
        announce: bool = True,
    ) -> tuple[Digest, ParsedManifest]:
        """Validate and store a manifest; move ``tag`` to it. Everything commits in one batch.

        ``tag_blocks`` sees that batch and the CIDs of the blocks it stores before it commits."""
        parsed = parse_manifest(body, content_type)
        algorithm = digest.algorithm if digest is not None else "sha256"
        hasher = new_hasher(algorithm)
        hasher.update(body)
        actual = Digest(algorithm, hasher.hexdigest())
        if digest is not None and actual != digest:
            raise RegistryError("DIGEST_INVALID", {"digest": str(digest), "actual": str(actual)})
        for blob in parsed.blobs:
            if not self.repo_has_blob(repo, blob.digest):
                raise RegistryError("MANIFEST_BLOB_UNKNOWN", {"digest": str(blob.digest)})
        for child in parsed.manifests:
            if self.manifests.get(_rkey(repo, str(child.digest))) is None:
                raise RegistryError("MANIFEST_BLOB_UNKNOWN", {"digest": str(child.digest)})
        existing = self.blob_info(actual)
        blocks: list[Block] = []
        fresh: dict[str, LayoutBlob] = {}
        if existing is None:
            blocks, cid, size, dag_size = await trio.to_thread.run_sync(self._import_bytes, body)
            stored = BlobInfo(actual, cid, size)
            fresh[str(actual)] = LayoutBlob(str(actual), parsed.media_type, size, cid, dag_size)
        else:
            stored = existing
        layout = None
        if tag is not None:
            layout = await self._try_image_layout(repo, tag, actual, body, parsed.media_type, fresh)
        meta: dict[str, Any] = {"mediaType": parsed.media_type, "size": len(body)}
        if parsed.subject is not None:
            meta["subject"] = str(parsed.subject.digest)
        if parsed.manifests:
            meta["children"] = [str(c.digest) for c in parsed.manifests]
        if parsed.blobs:
            meta["blobs"] = [str(b.digest) for b in parsed.blobs]
        batch = self.datastore.batch(sync=True)
        cids = [block.cid for block in blocks]
        try:
            for block in blocks:
                batch.put_block(block.cid, block.data, verify=False)
            if existing is None:
                batch.put(self.blobs, actual.key(), _blob_value(stored))
            batch.put(self.manifests, _rkey(repo, str(actual)), json.dumps(meta).encode())
            if tag is not None:
                batch.put(self.tags, _rkey(repo, tag), actual.key())
                cids.extend(self._put_image(batch, repo, tag, actual, layout))
            if parsed.subject is not None:
                descriptor = referrer_descriptor(parsed, actual, len(body))
                batch.put(
                    self.referrers,
                    _rkey(repo, str(parsed.subject.digest), str(actual)),
                    json.dumps(descriptor).encode(),
                )
            batch.put(self.repos, repo.encode(), b"")
            if tag_blocks is not None and cids:
                tag_blocks(batch, cids)
        except BaseException:
            batch.discard()
            raise
        # Everything is in this one batch (each tag move carries its own image), so committing it
        # off the trio thread keeps a tag and its published image in step.
        await self._commit(batch, cids)
        if announce:
            image = [layout.root] if layout is not None else []
            self.committed([stored.cid, digest_cid(str(actual)), *image])
            await self.committed_sent()
        if tag is not None:
            self.tags_changed(repo)
        return actual, parsed

    # --- images on IPFS ------------------------------------------------------------------

    async def _stored_layout_blob(self, digest: Digest, media_type: str) -> LayoutBlob:
        info = self.blob_info(digest)
        if info is None:
            raise LayoutError(f"blob {digest} is not stored")
        try:
            return await layout_blob(self.local_source, str(digest), media_type, info.size, info.cid)
        except BlockstoreError as exc:
            raise LayoutError(f"blob {digest} is not stored completely: {exc}") from exc

    async def image_layout(
        self,
        repo: str,
        tag: str,
        digest: Digest,
        body: bytes,
        media_type: str,
        fresh: dict[str, LayoutBlob] | None = None,
    ) -> LayoutResult:
        """The OCI Image Layout of manifest ``digest`` (bytes ``body``) tagged ``tag``, over stored blobs.

        ``fresh`` describes blobs whose blocks are not stored yet (the manifest being pushed).
        Raises LayoutError when a referenced blob or child manifest is not available locally.
        """
        blobs: dict[str, LayoutBlob] = dict(fresh or {})
        bodies: dict[str, bytes] = {str(digest): body}
        if str(digest) not in blobs:
            blobs[str(digest)] = await self._stored_layout_blob(digest, media_type)
        stack = [(body, media_type)]
        while stack:
            manifest_body, manifest_type = stack.pop()
            try:
                parsed = parse_manifest(manifest_body, manifest_type)
            except RegistryError as exc:
                raise LayoutError(f"a manifest of the image is invalid: {exc}") from None
            for blob in parsed.blobs:
                if str(blob.digest) not in blobs:
                    blobs[str(blob.digest)] = await self._stored_layout_blob(blob.digest, blob.media_type)
            for child in parsed.manifests:
                key = str(child.digest)
                if key in bodies:
                    continue
                if self.manifests.get(_rkey(repo, key)) is None:
                    raise LayoutError(f"child manifest {key} is not in {repo}")
                child_blob = await self._stored_layout_blob(child.digest, child.media_type)
                blobs[key] = child_blob
                bodies[key] = await self._read_local(child_blob.cid)
                stack.append((bodies[key], child.media_type))
        top = blobs[str(digest)]
        manifest = LayoutBlob(top.digest, media_type, top.size, top.cid, top.dag_size)
        return build_image_layout(manifest, tag, blobs, bodies, self.import_options)

    async def _read_local(self, cid: CID) -> bytes:
        return b"".join([chunk async for chunk in read_file(self.local_source, cid)])

    async def _try_image_layout(
        self, repo: str, tag: str, digest: Digest, body: bytes, media_type: str, fresh: dict[str, LayoutBlob]
    ) -> LayoutResult | None:
        try:
            return await self.image_layout(repo, tag, digest, body, media_type, fresh)
        except (LayoutError, BlockstoreError, UnixFSError) as exc:
            # The tag still moves (the push is valid); it just has no IPFS image until its blobs are back.
            log.warning("%s:%s (%s) is not published on IPFS: %s", repo, tag, digest, exc)
            return None

    def _put_image(
        self, batch: WriteBatch, repo: str, tag: str, digest: Digest, layout: LayoutResult | None
    ) -> list[CID]:
        """In the tag move's batch: store the layout's new blocks and point the tag's image at it.

        Returns the CIDs of the blocks put in ``batch``.
        """
        key = _rkey(repo, tag)
        if layout is None:
            batch.delete(self.published, key)
            return []
        for block in layout.blocks:
            batch.put_block(block.cid, block.data, verify=False)
        value = {"digest": str(digest), "cid": str(layout.root)}
        batch.put(self.published, key, json.dumps(value).encode())
        return [block.cid for block in layout.blocks]

    async def publish(self, repo: str, tag: str) -> CID:
        """(Re)build and store the image directory of ``repo:tag``; return its CID.

        Raises MANIFEST_UNKNOWN for an unknown tag and LayoutError when the image's blobs are not all
        stored locally. The tag is re-read just before the commit: if a push moved it meanwhile, the
        new target is published instead, so the entry always matches the tag.
        """
        while True:
            info = self.resolve(repo, tag)
            body = await self._read_local(info.cid)
            layout = await self.image_layout(repo, tag, info.digest, body, info.media_type)
            # Check and commit under the commit lock: a tag move committing in a worker thread
            # (put_manifest) lands either before the check (seen: retry) or after this commit.
            with self.datastore.exclusive():
                if self.resolve_tag(repo, tag) != info.digest:
                    continue
                with self.datastore.batch(sync=True) as batch:
                    cids = self._put_image(batch, repo, tag, info.digest, layout)
            self._announce(cids)
            self.committed([layout.root])
            self.tags_changed(repo)
            return layout.root

    def image(self, repo: str, tag: str) -> ImageInfo | None:
        raw = self.published.get(_rkey(repo, tag))
        return None if raw is None else _decode_image(_rkey(repo, tag), raw)

    def image_cid(self, repo: str, tag: str) -> CID | None:
        """The CID of ``repo:tag``'s image directory, or None if it is not published."""
        image = self.image(repo, tag)
        return None if image is None else image.cid

    def images(self) -> list[ImageInfo]:
        """Every published image: name, tag, manifest digest and directory CID, by name then tag."""
        return [_decode_image(key, raw) for key, raw in self.published.items()]

    def delete_manifest(self, repo: str, digest: Digest) -> None:
        """Delete a manifest by digest with every tag pointing to it and its referrers entry."""
        info = self.manifest_info(repo, digest)
        if info is None:
            raise RegistryError("MANIFEST_UNKNOWN", {"digest": str(digest)})
        with self.datastore.batch(sync=True) as batch:
            batch.delete(self.manifests, _rkey(repo, str(digest)))
            for key, value in self.tags.items(_rkey(repo, "")):
                if value == digest.key():
                    batch.delete(self.tags, key)
                    batch.delete(self.published, key)
            if info.subject is not None:
                batch.delete(self.referrers, _rkey(repo, info.subject, str(digest)))
        self.tags_changed(repo)

    def delete_tag(self, repo: str, tag: str) -> None:
        if self.tags.get(_rkey(repo, tag)) is None:
            raise RegistryError("MANIFEST_UNKNOWN", {"tag": tag})
        with self.datastore.batch(sync=True) as batch:
            batch.delete(self.tags, _rkey(repo, tag))
            batch.delete(self.published, _rkey(repo, tag))
        self.tags_changed(repo)

    def tags_changed(self, repo: str) -> None:
        """Tell ``on_tags_changed`` that ``repo``'s tags changed (a failing listener is only logged)."""
        if self.on_tags_changed is None:
            return
        try:
            self.on_tags_changed(repo)
        except Exception:
            log.exception("on_tags_changed callback failed for %s", repo)

    # --- garbage collection support -----------------------------------------------------

    def _referenced_digests(self) -> set[bytes]:
        """Digests some repository holds, or some stored manifest references (kept even if unlinked)."""
        referenced: set[bytes] = set()
        for key, _ in self.repo_blobs.items():
            referenced.add(key.rsplit(_SEP, 1)[1])
        for key, raw in self.manifests.items():
            referenced.add(key.rsplit(_SEP, 1)[1])
            meta = json.loads(raw)
            referenced.update(d.encode() for d in (*meta.get("blobs", ()), *meta.get("children", ())))
        return referenced

    def live_roots(self) -> Iterator[CID]:
        """DAG roots garbage collection must keep (with everything below them).

        Every blob and manifest some repository holds, every blob a stored manifest references
        (a client may delete a layer before its manifest), and the written subtrees of every
        unfinished upload session (their remaining bytes live in the session's snapshot).
        """
        referenced = self._referenced_digests()
        for key, raw in self.blobs.items():
            if key in referenced:
                yield _decode_blob_value(parse_digest(key.decode()), raw).cid
        for key, raw in self.published.items():
            yield _decode_image(key, raw).cid
        for _, raw in self.uploads.items():
            (meta_len,) = _UPLOAD_HEADER.unpack_from(raw)
            importer = FileImporter.restore(raw[_UPLOAD_HEADER.size + meta_len :])
            for cid, _ in importer.written_subtrees():
                yield cid

    def unreferenced_blobs(self) -> list[BlobInfo]:
        """Indexed blobs no repository holds any more (candidates for garbage collection)."""
        referenced = self._referenced_digests()
        return [
            _decode_blob_value(parse_digest(key.decode()), raw)
            for key, raw in self.blobs.items()
            if key not in referenced
        ]

    def forget_blob(self, batch: WriteBatch, digest: Digest) -> None:
        """Drop a blob's digest index entry in ``batch`` (GC does so with the blocks it deletes)."""
        batch.delete(self.blobs, digest.key())

    # --- listings ------------------------------------------------------------------------

    def repo_exists(self, repo: str) -> bool:
        return self.repos.get(repo.encode()) is not None

    def list_tags(self, repo: str, *, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` tags after ``last`` in lexical order, and whether more follow."""
        prefix = _rkey(repo, "")
        start = prefix + last.encode() if last else None
        out: list[str] = []
        for key, _ in self.tags.items(prefix, start=start):
            if len(out) == limit:
                return out, True
            out.append(key[len(prefix) :].decode())
        return out, False

    def list_repos(
        self, *, last: str | None, limit: int, prefix: str = "", skip_prefix: str | None = None
    ) -> tuple[list[str], bool]:
        """Up to ``limit`` repositories starting with ``prefix`` after ``last``, and whether more
        follow; names starting with ``skip_prefix`` are left out."""
        start = last.encode() if last else None
        out: list[str] = []
        for key in self._repo_keys(prefix.encode(), start, skip_prefix.encode() if skip_prefix else None):
            if len(out) == limit:
                return out, True
            out.append(key.decode())
        return out, False

    def _repo_keys(self, prefix: bytes, start: bytes | None, skip: bytes | None) -> Iterator[bytes]:
        """Repository names under ``prefix`` after ``start`` in order, skipping the ones under ``skip``."""
        for key, _ in self.repos.items(prefix, start=start):
            if skip is not None and key.startswith(skip):
                # Names are ASCII: every name under ``skip`` sorts before skip + 0xff.
                for after, _ in self.repos.items(prefix, start=skip + b"\xff"):
                    yield after
                return
            yield key

    def list_referrers(self, repo: str, subject: Digest, artifact_type: str | None) -> list[dict[str, Any]]:
        prefix = _rkey(repo, str(subject), "")
        out: list[dict[str, Any]] = []
        for _, value in self.referrers.items(prefix):
            descriptor = json.loads(value)
            if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                out.append(descriptor)
        return out
