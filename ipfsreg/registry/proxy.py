"""Pull-through cache (``registry.upstream``, distribution's ``proxy.remoteurl``): what the manifest and
blob handlers ask when a pull misses locally.

Design (blobs are fetched lazily, as distribution's proxy does):

- Manifests. A miss (or a proxied tag whose ``upstream_tag_ttl`` ran out: then a ``HEAD`` upstream
  decides whether it moved) fetches the manifest upstream *by digest*, with every manifest media
  type accepted, and keeps it as *pending* in ``reg.proxy.pending`` (``<repo>\\0<digest>`` -> its
  bytes and media type), outside the registry's own indexes: ``RegistryStore.put_manifest`` needs a
  manifest's blobs present, and they arrive only when clients pull them. Which digest a proxied tag
  names, and when that was last checked upstream, is in ``reg.proxy.tags``. Pending manifests are
  served from there (with the registry's Accept negotiation: a client that cannot read an index gets
  its linux/amd64 child). When the last blob (or child manifest) a pending manifest references is
  stored, the manifest is *promoted*: stored by ``put_manifest`` with each proxied tag naming it (so
  from then on it is an ordinary local image, listed, published, garbage-collection safe) and its
  pending record dropped. When the upstream cannot answer, a tag it once named is served from the
  cache (as distribution's proxy does).
- Blobs. A GET miss starts one fetch task in the app's nursery: the upstream bytes (digest checked
  while they stream) go through an unpersisted registry upload (``scratch_upload`` / ``append`` /
  ``finish_upload``: hashed and chunked into the blob's UnixFS DAG exactly once) and, through a
  small channel, to the client. The blob becomes visible only when its whole DAG is committed; the
  client's last piece is sent only after that, so a finished pull means a stored blob. A client
  that leaves mid-way detaches (one that takes no bytes for ``CLIENT_STALL_SECONDS`` is dropped, its
  response cut short): the task finishes storing the blob either way. Concurrent requests for a
  blob being fetched wait for that fetch, then read the stored copy. A Range request on a miss
  waits for the whole blob, then reads its range locally. A blob already stored for another
  repository is linked into this one once the upstream confirms (``HEAD``) that this one holds it.
- Writes (push, delete) are refused with UNSUPPORTED, as distribution's proxy does.

Not done here: ``tags/list`` shows only promoted tags (distribution's proxy lists the upstream's);
blobs are never expired (garbage collection decides what goes, as for pushed images).
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from quart import current_app

from ipfsreg.cid import CID
from ipfsreg.registry.digests import Digest, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import BlobInfo, RegistryStore
from ipfsreg.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

# Asked of the upstream for every manifest: the cache keeps what the tag really names and does the
# Accept negotiation itself.
UPSTREAM_ACCEPT: Final = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
# Chunks of a streamed blob buffered between the fetch task and a slow client.
STREAM_BUFFER_CHUNKS: Final = 16
# A client that takes no bytes for this long is dropped (its response cut short), so it cannot
# hold up the fetch that other requests for the same blob wait for.
CLIENT_STALL_SECONDS: Final = 120.0
_SEP: Final = b"\0"
_HEADER: Final = struct.Struct(">I")
EXTENSION: Final = "ipfsreg.registry.proxy"


@dataclass(frozen=True)
class ProxiedManifest:
    """A manifest to answer with: its bytes, media type, digest and, once stored locally, its CID."""

    body: bytes
    media_type: str
    digest: Digest
    cid: CID | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": self.media_type,
            "Docker-Content-Digest": str(self.digest),
            "ETag": f'"{self.digest}"',
        }
        if self.cid is not None:
            headers["X-Ipfs-Path"] = f"/ipfs/{self.cid}"
        return headers


@dataclass(frozen=True)
class ProxiedBlob:
    """A blob answered from the upstream: ``body`` streams it (None for HEAD)."""

    digest: Digest
    size: int | None
    body: AsyncIterator[bytes] | None

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": str(self.digest),
            "ETag": f'"{self.digest}"',
            "Cache-Control": "max-age=31536000",
        }


@dataclass(frozen=True)
class TagRecord:
    digest: Digest
    checked: float


@dataclass(eq=False)
class _Fetch:
    repo: str
    digest: Digest
    done: trio.Event = field(default_factory=trio.Event)
    stored: BlobInfo | None = None
    error: BaseException | None = None
    detached: bool = False
    client_dropped: bool = False


class _StreamFailed(Exception):
    """The blob's fetch stopped before the blob was stored (the client's body is cut short)."""


def _key(repo: str, part: str) -> bytes:
    return repo.encode() + _SEP + part.encode()


def _encode_pending(media_type: str, body: bytes) -> bytes:
    meta = json.dumps({"mediaType": media_type}).encode()
    return _HEADER.pack(len(meta)) + meta + body


def _decode_pending(raw: bytes) -> tuple[str, bytes]:
    (length,) = _HEADER.unpack_from(raw)
    meta = json.loads(raw[_HEADER.size : _HEADER.size + length])
    return str(meta["mediaType"]), raw[_HEADER.size + length :]


def upstream_error(exc: UpstreamError, unknown_code: str, detail: dict[str, str]) -> RegistryError:
    """The OCI error a client gets for an upstream failure."""
    detail = {**detail, "upstream": exc.message[:500]}
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(unknown_code, detail)
    if isinstance(exc, UpstreamUnauthorized):
        return RegistryError("DENIED", detail, message="the upstream registry refused access")
    if isinstance(exc, UpstreamUnavailable):
        return RegistryError("UNAVAILABLE", detail, message="the upstream registry is unavailable")
    return RegistryError("UNAVAILABLE", detail, message="bad answer from the upstream registry", status=502)


class PullThrough:
    """The cache logic over one :class:`RegistryStore` and one :class:`UpstreamClient`.

    ``nursery`` owns the blob fetch tasks (the app's nursery: a fetch outlives the request that
    started it when the client leaves).
    """

    def __init__(
        self,
        store: RegistryStore,
        client: UpstreamClient,
        *,
        nursery: trio.Nursery,
        tag_ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
        client_stall_timeout: float = CLIENT_STALL_SECONDS,
    ) -> None:
        self.store = store
        self.client = client
        self.nursery = nursery
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.client_stall_timeout = client_stall_timeout
        self.pending = store.datastore.keyspace("reg.proxy.pending")
        self.proxied_tags = store.datastore.keyspace("reg.proxy.tags")
        self._fetches: dict[Digest, _Fetch] = {}
        self._tag_locks: dict[tuple[str, str], trio.Lock] = {}
        self._promote_lock = trio.Lock()

    @classmethod
    def from_settings(
        cls, store: RegistryStore, settings: RegistrySettings, nursery: trio.Nursery
    ) -> PullThrough:
        client = UpstreamClient(
            settings.upstream,
            username=settings.upstream_username,
            password=settings.upstream_password,
            max_manifest_bytes=settings.max_manifest_bytes,
        )
        return cls(store, client, nursery=nursery, tag_ttl=settings.upstream_tag_ttl)

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def fetches_in_flight(self) -> int:
        return len(self._fetches)

    async def wait_fetches(self) -> None:
        """Return once no blob fetch is running (those started meanwhile included)."""
        while self._fetches:
            await next(iter(self._fetches.values())).done.wait()

    # --- records -------------------------------------------------------------------------

    def tag_record(self, repo: str, tag: str) -> TagRecord | None:
        raw = self.proxied_tags.get(_key(repo, tag))
        if raw is None:
            return None
        doc = json.loads(raw)
        return TagRecord(parse_digest(doc["digest"]), float(doc["checked"]))

    def _put_tag_record(self, repo: str, tag: str, record: TagRecord) -> None:
        value = json.dumps({"digest": str(record.digest), "checked": record.checked}).encode()
        with self.store.datastore.batch(sync=True) as batch:
            batch.put(self.proxied_tags, _key(repo, tag), value)

    def pending_manifest(self, repo: str, digest: Digest) -> ProxiedManifest | None:
        raw = self.pending.get(_key(repo, str(digest)))
        if raw is None:
            return None
        media_type, body = _decode_pending(raw)
        return ProxiedManifest(body, media_type, digest)

    def pending_digests(self, repo: str) -> list[Digest]:
        prefix = repo.encode() + _SEP
        return [parse_digest(key[len(prefix) :].decode()) for key, _ in self.pending.items(prefix)]

    def _tags_naming(self, repo: str, digest: Digest) -> list[str]:
        prefix = repo.encode() + _SEP
        tags: list[str] = []
        for key, raw in self.proxied_tags.items(prefix):
            if json.loads(raw)["digest"] == str(digest):
                tags.append(key[len(prefix) :].decode())
        return tags

    # --- manifests -----------------------------------------------------------------------

    async def manifest(self, repo: str, reference: str | Digest) -> ProxiedManifest | None:
        """The answer to a manifest GET/HEAD, or None when the local store should answer as usual.

        Served as fetched, whatever the request's Accept (the rule of handlers/manifests.py)."""
        if isinstance(reference, Digest):
            if self.store.manifest_info(repo, reference) is not None:
                return None
            return await self._load(repo, reference)
        digest = await self._resolve_tag(repo, reference)
        if digest is None:
            return None
        if (
            self.store.manifest_info(repo, digest) is not None
            and self.store.resolve_tag(repo, reference) == digest
        ):
            return None
        return await self._load(repo, digest)

    async def _resolve_tag(self, repo: str, tag: str) -> Digest | None:
        """The digest ``tag`` names now (checked upstream when its TTL ran out); None for local tags."""
        record = self.tag_record(repo, tag)
        if record is None and self.store.resolve_tag(repo, tag) is not None:
            return None  # this registry's own tag (from before it was a cache)
        if record is not None and self.clock() - record.checked < self.tag_ttl:
            return record.digest
        lock = self._tag_locks.setdefault((repo, tag), trio.Lock())
        async with lock:
            record = self.tag_record(repo, tag)
            if record is not None and self.clock() - record.checked < self.tag_ttl:
                return record.digest
            try:
                return await self._refresh_tag(repo, tag)
            except UpstreamError as exc:
                if record is None:
                    raise upstream_error(exc, "MANIFEST_UNKNOWN", {"reference": tag}) from exc
                log.warning("upstream check of %s:%s failed, serving the cached copy: %s", repo, tag, exc)
                return record.digest
            finally:
                if not lock.statistics().tasks_waiting:
                    self._tag_locks.pop((repo, tag), None)

    async def _refresh_tag(self, repo: str, tag: str) -> Digest:
        head = await self.client.head_manifest(repo, tag, UPSTREAM_ACCEPT)
        digest = _digest(head.digest) if head.digest is not None else None
        if digest is None or (
            self.store.manifest_info(repo, digest) is None and self.pending_manifest(repo, digest) is None
        ):
            fetched = await self.client.get_manifest(repo, str(digest) if digest else tag, UPSTREAM_ACCEPT)
            digest = _digest(fetched.digest)
            await self._keep(repo, digest, fetched.media_type, fetched.body)
        self._put_tag_record(repo, tag, TagRecord(digest, self.clock()))
        await self._promote_ready(repo)
        info = self.store.manifest_info(repo, digest)
        if info is not None and self.store.resolve_tag(repo, tag) != digest:
            # Already stored (under another tag or by digest): move the local tag to it.
            body = await self.store.read_all(info.cid)
            await self._store_manifest(repo, digest, info.media_type, body, [tag])
        return digest

    async def _load(self, repo: str, digest: Digest) -> ProxiedManifest:
        """A manifest by digest: local, pending, or fetched from the upstream now."""
        info = self.store.manifest_info(repo, digest)
        if info is not None:
            return ProxiedManifest(await self.store.read_all(info.cid), info.media_type, digest, info.cid)
        pending = self.pending_manifest(repo, digest)
        if pending is not None:
            return pending
        try:
            fetched = await self.client.get_manifest(repo, str(digest), UPSTREAM_ACCEPT)
        except UpstreamError as exc:
            raise upstream_error(exc, "MANIFEST_UNKNOWN", {"digest": str(digest)}) from exc
        await self._keep(repo, digest, fetched.media_type, fetched.body)
        await self._promote_ready(repo)
        info = self.store.manifest_info(repo, digest)
        cid = info.cid if info is not None else None
        return ProxiedManifest(fetched.body, fetched.media_type, digest, cid)

    async def _keep(self, repo: str, digest: Digest, media_type: str, body: bytes) -> None:
        """Record a fetched manifest as pending (it must parse: the cache serves only what it can store)."""
        try:
            parse_manifest(body, media_type or None)
        except RegistryError as exc:
            raise RegistryError(
                "UNAVAILABLE",
                {"digest": str(digest), "upstream": f"unusable manifest: {exc}"},
                message="bad answer from the upstream registry",
                status=502,
            ) from exc
        with self.store.datastore.batch(sync=True) as batch:
            batch.put(self.pending, _key(repo, str(digest)), _encode_pending(media_type, body))

    async def _promote_ready(self, repo: str) -> None:
        """Store every pending manifest of ``repo`` whose blobs and child manifests are all local."""
        async with self._promote_lock:
            progress = True
            while progress:
                progress = False
                for digest in self.pending_digests(repo):
                    if await self._promote(repo, digest):
                        progress = True

    async def _promote(self, repo: str, digest: Digest) -> bool:
        pending = self.pending_manifest(repo, digest)
        if pending is None:
            return False
        parsed = parse_manifest(pending.body, pending.media_type)
        if not all(self.store.repo_has_blob(repo, blob.digest) for blob in parsed.blobs):
            return False
        if not all(self.store.manifest_info(repo, child.digest) is not None for child in parsed.manifests):
            return False
        try:
            await self._store_manifest(
                repo, digest, pending.media_type, pending.body, self._tags_naming(repo, digest)
            )
        except RegistryError as exc:
            # Stays pending (and served from there); the next stored blob tries again.
            log.warning("cannot store %s@%s fetched through the cache: %s", repo, digest, exc)
            return False
        with self.store.datastore.batch(sync=True) as batch:
            batch.delete(self.pending, _key(repo, str(digest)))
        return True

    async def _store_manifest(
        self, repo: str, digest: Digest, media_type: str, body: bytes, tags: list[str]
    ) -> None:
        """``put_manifest`` once per tag (each publishes its image directory), or once untagged."""
        targets: list[str | None] = [*tags] if tags else [None]
        for tag in targets:
            await self.store.put_manifest(repo, body, media_type, tag=tag, digest=digest)

    # --- blobs ---------------------------------------------------------------------------

    async def blob(self, repo: str, digest: Digest, *, head: bool, ranged: bool) -> ProxiedBlob | None:
        """The answer to a blob GET/HEAD missing locally, or None once the local store can answer."""
        store = self.store
        if store.repo_has_blob(repo, digest) and store.blob_info(digest) is not None:
            return None
        while (running := self._fetches.get(digest)) is not None:
            await running.done.wait()
        if store.repo_has_blob(repo, digest) and store.blob_info(digest) is not None:
            return None
        if store.blob_info(digest) is not None:
            # Stored for another repository: link it here once the upstream says this one holds it.
            await self._stat(repo, digest)
            store.mount_blob(repo, digest, None)
            return None
        if head:
            return ProxiedBlob(digest, await self._stat(repo, digest), None)
        if self._fetches.get(digest) is not None:
            return await self.blob(repo, digest, head=head, ranged=ranged)  # one started while we asked
        fetch = _Fetch(repo, digest)
        self._fetches[digest] = fetch
        send, receive = trio.open_memory_channel[bytes](STREAM_BUFFER_CHUNKS)
        if ranged:
            # A range of a blob not yet stored: store it whole, then the local path serves the range.
            fetch.detached = True
            send.close()
            receive.close()
        try:
            size = await self.nursery.start(self._run_fetch, fetch, send)
        except UpstreamError as exc:
            raise upstream_error(exc, "BLOB_UNKNOWN", {"digest": str(digest)}) from exc
        if ranged:
            await fetch.done.wait()
            if fetch.stored is None:
                raise _fetch_error(fetch)
            return None
        return ProxiedBlob(digest, size, _client_body(fetch, receive))

    async def _stat(self, repo: str, digest: Digest) -> int | None:
        try:
            return await self.client.stat_blob(repo, str(digest))
        except UpstreamError as exc:
            raise upstream_error(exc, "BLOB_UNKNOWN", {"digest": str(digest)}) from exc

    async def _run_fetch(
        self,
        fetch: _Fetch,
        send: trio.MemorySendChannel[bytes],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fetch one blob into the store, feeding its bytes to ``send`` while a client reads them."""
        started = False
        try:
            async with self.client.open_blob(fetch.repo, str(fetch.digest)) as upstream:
                task_status.started(upstream.size)
                started = True
                upload = self.store.scratch_upload(fetch.repo)
                # The client's last piece waits until the blob is committed (and its manifests
                # promoted): a client that has every byte finds the blob stored.
                held: list[bytes] = []

                async def forward(chunk: bytes) -> None:
                    if fetch.detached:
                        return
                    try:
                        with trio.move_on_after(self.client_stall_timeout) as stalled:
                            await send.send(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        fetch.detached = True  # the client left: keep storing the blob
                        return
                    if stalled.cancelled_caught:
                        fetch.detached = fetch.client_dropped = True
                        send.close()

                async def tee() -> AsyncIterator[bytes]:
                    async for chunk in upstream.chunks():
                        if held:
                            await forward(held.pop())
                        held.append(chunk)
                        yield chunk

                await self.store.append(upload, tee())
                fetch.stored = await self.store.finish_upload(upload, fetch.digest)
            try:
                await self._promote_ready(fetch.repo)
            except (RegistryError, UpstreamError, OSError) as exc:
                log.warning(
                    "promoting manifests of %s after blob %s failed: %s", fetch.repo, fetch.digest, exc
                )
            if held:
                await forward(held.pop())
        except Exception as exc:
            fetch.error = exc
            if not started:
                raise  # nursery.start re-raises it in the request that asked
            log.warning("pull-through fetch of %s@%s failed: %s", fetch.repo, fetch.digest, exc)
        finally:
            if self._fetches.get(fetch.digest) is fetch:
                del self._fetches[fetch.digest]
            fetch.done.set()
            send.close()


def _digest(text: str) -> Digest:
    try:
        return parse_digest(text)
    except RegistryError as exc:
        raise UpstreamError(f"upstream announced an unusable digest {text[:200]!r}", status=502) from exc


def _fetch_error(fetch: _Fetch) -> RegistryError:
    error = fetch.error
    if isinstance(error, RegistryError):
        return error
    if isinstance(error, UpstreamError):
        return upstream_error(error, "BLOB_UNKNOWN", {"digest": str(fetch.digest)})
    return RegistryError("UNAVAILABLE", {"digest": str(fetch.digest), "reason": repr(error)[:500]})


async def _client_body(fetch: _Fetch, receive: trio.MemoryReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    """The client's view of a fetch; raises (cutting the response short) unless the blob was stored."""
    async with receive:
        async for chunk in receive:
            yield chunk
    await fetch.done.wait()
    if fetch.client_dropped:
        raise _StreamFailed(f"the client took no bytes of {fetch.digest} for too long")
    if fetch.stored is None:
        raise _StreamFailed(f"fetching {fetch.digest} from the upstream failed: {fetch.error!r}")


def pull_through(store: RegistryStore, settings: RegistrySettings) -> PullThrough | None:
    """The app's cache (made on first use, in the serving app's nursery), or None without an upstream."""
    if not settings.upstream:
        return None
    app: Any = current_app._get_current_object()  # type: ignore[attr-defined]
    proxy: PullThrough | None = app.extensions.get(EXTENSION)
    if proxy is None or proxy.store is not store:
        proxy = PullThrough.from_settings(store, settings, app.nursery)
        app.extensions[EXTENSION] = proxy
        app.after_serving_funcs.append(proxy.aclose)
    return proxy


def refuse_writes(settings: RegistrySettings) -> None:
    """A pull-through cache takes no pushes or deletes (distribution answers UNSUPPORTED too)."""
    if settings.upstream:
        raise RegistryError(
            "UNSUPPORTED",
            {"reason": "this registry is a pull-through cache: push to its upstream instead"},
        )
