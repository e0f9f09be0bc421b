"""The mirror / pull-through cache: what the manifest and blob handlers ask when a pull misses locally.

Where misses go (see ``ipfsreg.mirror.rules`` for the matching itself):

- A request with ``?ns=REGISTRY`` (containerd's mirror parameter, the OCI distribution-spec's
  registry proxying) reads repository ``REGISTRY/<name>``; its misses go to the upstream that
  ``[[mirror.upstream]]`` (or ``[mirror] default_url``) gives for that registry and name. A name
  whose first component is a mirrored registry (``docker.io/library/x``, how CRI-O and podman ask a
  mirror with a path) is the same repository. Tags therefore never collide across registries;
  blobs and blocks are shared (same digest, same bytes). Responses carry ``OCI-Namespace``.
- A request without either uses ``[registry] upstream`` (distribution's ``proxy.remoteurl``): one
  upstream for unqualified names, as before. It also serves ``?ns=<its own host>`` when no
  ``[[mirror.upstream]]`` names that host (containerd pulling ``HOST/repo`` through this mirror).
- A namespaced repository without an upstream is served from the local store and fleet peers only.

Design (blobs are fetched lazily, as distribution's proxy does):

- Manifests. A miss (or a proxied tag whose TTL ran out: then a ``HEAD`` upstream decides whether it
  moved) fetches the manifest upstream *by digest*, with every manifest media type accepted, and
  keeps it as *pending* in ``reg.proxy.pending`` (``<repo>\\0<digest>`` -> its bytes and media
  type), outside the registry's own indexes: ``RegistryStore.put_manifest`` needs a manifest's blobs
  present, and they arrive only when clients pull them. Which digest a proxied tag names, and when
  that was last checked upstream, is in ``reg.proxy.tags``. Pending manifests are served from there
  as fetched, whatever the Accept (the rule of ``handlers/manifests.py``). When the last blob (or
  child manifest) a pending manifest references is stored, the manifest is *promoted*: stored by
  ``put_manifest`` with each proxied tag naming it (an ordinary local image from then on: listed,
  published on IPFS, garbage-collection safe). A manifest by digest is asked of fleet peers first
  (it is a blob there), then of the upstream.
- Tags. When the upstream cannot answer (unreachable, 5xx, or silent for ``upstream_timeout``), a
  tag it once named is served from its last known digest, and the response says so:
  ``Ipfsreg-Tag-Stale: <seconds since the upstream last confirmed it>`` (with ``Warning: 110``). An
  upstream that answers 404 has dropped the tag: it is a miss.
- Blobs. A GET miss starts one fetch task in the app's nursery. Its bytes come from fleet peers
  first (``ipfsreg.registry.fleet``), else from the upstream, continuing at the byte where a failed
  source stopped; they go through an unpersisted registry upload (``scratch_upload`` / ``append`` /
  ``finish_upload``: hashed and chunked into the blob's UnixFS DAG exactly once, the digest checked)
  and, through a small channel, to the client. The blob becomes visible only when its whole DAG is
  committed and its digest checked; the client's last piece is sent only after that, so a client
  never receives a whole blob with wrong bytes, and a finished pull means a stored blob. A client
  that leaves mid-way detaches (one that takes no bytes for ``CLIENT_STALL_SECONDS`` is dropped):
  the task finishes storing the blob either way. Concurrent requests for a blob being fetched wait
  for that fetch, then read the stored copy. A Range request on a miss waits for the whole blob,
  then reads its range locally. A blob already stored for another repository is linked into this
  one at once, except for the single-upstream cache and private namespaces, which link it only
  once their upstream confirms (``HEAD``) that this repository holds it.
- Bounds. A miss nobody can serve is answered 404 (``MANIFEST_UNKNOWN`` / ``BLOB_UNKNOWN``, with the
  reason in ``detail``) within ``peer_timeout + upstream_timeout`` (+ ``claim_settle``) seconds; the
  single-upstream cache keeps distribution's 503 for an unreachable upstream.
- Writes (push, delete) are refused with UNSUPPORTED by the single-upstream cache, as distribution's
  proxy does, and for requests with ``?ns=``; a mirror's own unqualified repositories take pushes.

Not done here: ``tags/list`` shows only promoted tags (distribution's proxy lists the upstream's);
blobs are never expired (garbage collection decides what goes, as for pushed images).
"""

from __future__ import annotations

import contextvars
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import trio
from quart import current_app

from ipfsreg.blockstore import WriteBatch
from ipfsreg.cid import CID
from ipfsreg.excgroups import leaves
from ipfsreg.mirror.rules import mirrored_namespaces, route
from ipfsreg.mirror.settings import MirrorSettings
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.node.blobs.protocol import digest_cid
from ipfsreg.registry.digests import Digest, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.fleet import Fleet, InFlight, PeerFailed
from ipfsreg.registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)
from ipfsreg.registry.names import canonical_namespace
from ipfsreg.registry.private import PrivateContent
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import BatchTagger, BlobInfo, RegistryStore
from ipfsreg.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

# Asked of the upstream for every manifest: the cache keeps (and serves) what the tag really names.
UPSTREAM_ACCEPT: Final = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
# Chunks of a streamed blob buffered between the fetch task and a slow client.
STREAM_BUFFER_CHUNKS: Final = 16
# A client that takes no bytes for this long is dropped (its response cut short), so it cannot
# hold up the fetch that other requests for the same blob wait for.
CLIENT_STALL_SECONDS: Final = 120.0
TAG_STALE_HEADER: Final = "Ipfsreg-Tag-Stale"
NAMESPACE_HEADER: Final = "OCI-Namespace"
_SEP: Final = b"\0"
_HEADER: Final = struct.Struct(">I")
EXTENSION: Final = "ipfsreg.registry.proxy"

T = TypeVar("T")


# --- the request being served ------------------------------------------------------------------


@dataclass
class RequestScope:
    """What the mirror knows of the request being served: its namespace, headers to add."""

    namespace: str = ""  # the registry (``ns``, or a name's first component); "" for neither
    from_query: bool = False  # given as ?ns= (then OCI-Namespace is sent)
    headers: dict[str, str] = field(default_factory=dict)


_SCOPE: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "ipfsreg_mirror_scope", default=None
)


def enter_scope(scope: RequestScope) -> None:
    """Make ``scope`` the current request's (the registry's request handler calls this first)."""
    _SCOPE.set(scope)


def current_scope() -> RequestScope:
    scope = _SCOPE.get()
    return scope if scope is not None else RequestScope()


def response_headers() -> dict[str, str]:
    """Headers the mirror adds to the current request's response (namespace, stale tag)."""
    scope = _SCOPE.get()
    if scope is None:
        return {}
    headers = dict(scope.headers)
    if scope.from_query and scope.namespace:
        headers[NAMESPACE_HEADER] = scope.namespace
    return headers


# --- answers -----------------------------------------------------------------------------------


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
    """A blob answered while it is fetched: ``body`` streams it (None for HEAD)."""

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


@dataclass(frozen=True)
class Target:
    """One repository as the cache sees it: where its misses go."""

    repo: str  # the repository in the store
    namespace: str  # the registry it mirrors ("" for the single-upstream cache)
    remote: str  # its name at the upstream
    client: UpstreamClient | None  # None: local store and fleet peers only
    tag_ttl: float
    private: bool = False
    check_membership: bool = False  # link a blob stored for another repository only once upstream says so

    @property
    def misses_are_404(self) -> bool:
        return bool(self.namespace)

    @property
    def upstream_name(self) -> str:
        return self.client.base_url if self.client is not None else "no upstream"


@dataclass(eq=False)
class _Fetch:
    target: Target
    digest: Digest
    done: trio.Event = field(default_factory=trio.Event)
    stored: BlobInfo | None = None
    error: BaseException | None = None
    detached: bool = False
    client_dropped: bool = False
    flight: InFlight | None = None
    source: str = "upstream"
    peers_used: list[str] = field(default_factory=list)


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


def upstream_error(
    exc: UpstreamError, unknown_code: str, detail: dict[str, str], *, unavailable_is_404: bool = False
) -> RegistryError:
    """The OCI error a client gets for an upstream failure."""
    detail = {**detail, "upstream": exc.message[:500]}
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(unknown_code, detail)
    if isinstance(exc, UpstreamUnauthorized):
        return RegistryError("DENIED", detail, message="the upstream registry refused access")
    if unavailable_is_404:
        # A mirror's miss: the runtime then asks the registry itself (containerd tries its next host).
        return RegistryError(
            unknown_code, {**detail, "reason": "no peer has it and the upstream cannot give it"}
        )
    if isinstance(exc, UpstreamUnavailable):
        return RegistryError("UNAVAILABLE", detail, message="the upstream registry is unavailable")
    return RegistryError("UNAVAILABLE", detail, message="bad answer from the upstream registry", status=502)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    errors = leaves(group)
    for error in errors:
        if not isinstance(error, trio.Cancelled):
            return error
    return errors[0] if errors else group


class PullThrough:
    """The cache logic over one :class:`RegistryStore`: targets, records, manifest and blob misses.

    ``nursery`` owns the blob fetch tasks (the app's nursery: a fetch outlives the request that
    started it when the client leaves).
    """

    def __init__(
        self,
        store: RegistryStore,
        *,
        nursery: trio.Nursery,
        legacy: RegistrySettings | None = None,
        mirror: MirrorSettings | None = None,
        fleet: Fleet | None = None,
        stats: MirrorStats | None = None,
        privacy: PrivateContent | None = None,
        clock: Callable[[], float] = time.time,
        client_stall_timeout: float = CLIENT_STALL_SECONDS,
    ) -> None:
        self.store = store
        self.nursery = nursery
        self.legacy = legacy if legacy is not None and legacy.upstream else None
        self.mirror = mirror if mirror is not None else MirrorSettings()
        self.fleet = fleet if self.mirror.peers else None
        self.stats = stats if stats is not None else MirrorStats()
        self.privacy = privacy
        self.clock = clock
        self.client_stall_timeout = client_stall_timeout
        self.tag_ttl = self.legacy.upstream_tag_ttl if self.legacy is not None else self.mirror.tag_ttl
        self.max_manifest_bytes = (legacy or RegistrySettings()).max_manifest_bytes
        self.pending = store.datastore.keyspace("reg.proxy.pending")
        self.proxied_tags = store.datastore.keyspace("reg.proxy.tags")
        self._clients: dict[tuple[str, str, str, str], UpstreamClient] = {}
        self._fetches: dict[Digest, _Fetch] = {}
        self._tag_locks: dict[tuple[str, str], trio.Lock] = {}
        self._promote_lock = trio.Lock()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    @property
    def fetches_in_flight(self) -> int:
        return len(self._fetches)

    async def wait_fetches(self) -> None:
        """Return once no blob fetch is running (those started meanwhile included)."""
        while self._fetches:
            await next(iter(self._fetches.values())).done.wait()

    # --- targets -------------------------------------------------------------------------

    def _client(
        self, url: str, username: str, password: str, token_file: Any, *, legacy: bool
    ) -> UpstreamClient:
        key = (url, username, password, str(token_file or ""))
        client = self._clients.get(key)
        if client is None:
            timeout = self.mirror.upstream_timeout or 60.0
            client = UpstreamClient(
                url,
                username=username,
                password=password,
                token_file=token_file,
                max_manifest_bytes=self.max_manifest_bytes,
                timeout=60.0 if legacy else timeout,
                connect_timeout=min(10.0, timeout),
            )
            self._clients[key] = client
        return client

    def _legacy_client(self) -> UpstreamClient:
        assert self.legacy is not None
        legacy = self.legacy
        return self._client(
            legacy.upstream, legacy.upstream_username, legacy.upstream_password, None, legacy=True
        )

    def _is_legacy(self, namespace: str) -> bool:
        """``namespace`` names the host of ``[registry] upstream``."""
        return (
            self.legacy is not None
            and canonical_namespace(urlsplit(self.legacy.upstream).netloc) == namespace
        )

    def target(self, namespace: str, repo: str) -> Target | None:
        """How misses of ``repo`` (a store name, ``<namespace>/<name>`` when namespaced) are served."""
        if not namespace:
            if self.legacy is None:
                return None
            return Target(repo, "", repo, self._legacy_client(), self.tag_ttl, check_membership=True)
        name = repo[len(namespace) + 1 :] if repo.startswith(namespace + "/") else repo
        found = route(self.mirror, namespace, name)
        if found is None and namespace not in mirrored_namespaces(self.mirror) and self._is_legacy(namespace):
            # containerd with the single upstream as its registry sends ?ns=<that registry's host>.
            return Target(repo, namespace, name, self._legacy_client(), self.tag_ttl, check_membership=True)
        if found is None:
            return Target(repo, namespace, name, None, self.mirror.tag_ttl)
        client = self._client(found.url, found.username, found.password, found.token_file, legacy=False)
        ttl = found.tag_ttl if found.tag_ttl is not None else self.mirror.tag_ttl
        return Target(
            repo, namespace, found.remote, client, ttl, private=found.private, check_membership=found.private
        )

    async def _upstream(self, target: Target, call: Callable[[UpstreamClient], Awaitable[T]]) -> T:
        """One upstream request, bounded by ``upstream_timeout``; UpstreamUnavailable without an upstream."""
        client = target.client
        if client is None:
            raise UpstreamUnavailable(f"no upstream is configured for {target.namespace or 'this registry'}")
        bound = self.mirror.upstream_timeout or float("inf")
        with trio.move_on_after(bound):
            return await call(client)
        raise UpstreamUnavailable(f"upstream {client.base_url} did not answer within {bound:g}s")

    def _miss(self, target: Target, exc: UpstreamError, code: str, detail: dict[str, str]) -> RegistryError:
        return upstream_error(exc, code, detail, unavailable_is_404=target.misses_are_404)

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

    async def manifest(self, target: Target, reference: str | Digest) -> ProxiedManifest | None:
        """The answer to a manifest GET/HEAD, or None when the local store should answer as usual.

        Served as fetched, whatever the request's Accept (the rule of handlers/manifests.py)."""
        repo = target.repo
        if isinstance(reference, Digest):
            if self.store.manifest_info(repo, reference) is not None:
                return None
            return await self._load(target, reference)
        digest = await self._resolve_tag(target, reference)
        if digest is None:
            return None
        if (
            self.store.manifest_info(repo, digest) is not None
            and self.store.resolve_tag(repo, reference) == digest
        ):
            return None
        return await self._load(target, digest)

    async def _resolve_tag(self, target: Target, tag: str) -> Digest | None:
        """The digest ``tag`` names now (checked upstream when its TTL ran out); None for local tags."""
        repo = target.repo
        record = self.tag_record(repo, tag)
        if record is None and self.store.resolve_tag(repo, tag) is not None:
            return None  # this registry's own tag (pushed, or from before it was a cache)
        ttl = self.tag_ttl if not target.namespace else target.tag_ttl
        if record is not None and self.clock() - record.checked < ttl:
            return record.digest
        lock = self._tag_locks.setdefault((repo, tag), trio.Lock())
        async with lock:
            record = self.tag_record(repo, tag)
            if record is not None and self.clock() - record.checked < ttl:
                return record.digest
            try:
                return await self._refresh_tag(target, tag)
            except UpstreamError as exc:
                if record is None or isinstance(exc, UpstreamNotFound):
                    raise self._miss(target, exc, "MANIFEST_UNKNOWN", {"reference": tag}) from exc
                age = max(0, int(self.clock() - record.checked))
                log.warning(
                    "upstream check of %s:%s failed, serving the last known digest (%ds old): %s",
                    repo,
                    tag,
                    age,
                    exc,
                )
                self.stats.stale_tags += 1
                scope = current_scope()
                scope.headers[TAG_STALE_HEADER] = str(age)
                scope.headers["Warning"] = '110 ipfsreg "Response is Stale"'
                return record.digest
            finally:
                if not lock.statistics().tasks_waiting:
                    self._tag_locks.pop((repo, tag), None)

    async def _refresh_tag(self, target: Target, tag: str) -> Digest:
        repo = target.repo
        head = await self._upstream(target, lambda c: c.head_manifest(target.remote, tag, UPSTREAM_ACCEPT))
        digest = _digest(head.digest) if head.digest is not None else None
        if digest is None:
            fetched = await self._upstream(
                target, lambda c: c.get_manifest(target.remote, tag, UPSTREAM_ACCEPT)
            )
            digest = _digest(fetched.digest)
            await self._keep(repo, digest, fetched.media_type, fetched.body)
        elif self.store.manifest_info(repo, digest) is None and self.pending_manifest(repo, digest) is None:
            body, media_type = await self._fetch_manifest(target, digest)  # peers first, then upstream
            await self._keep(repo, digest, media_type, body)
        self._put_tag_record(repo, tag, TagRecord(digest, self.clock()))
        await self._promote_ready(target)
        info = self.store.manifest_info(repo, digest)
        if info is not None and self.store.resolve_tag(repo, tag) != digest:
            # Already stored (under another tag or by digest): move the local tag to it.
            body = await self.store.read_all(info.cid)
            await self._store_manifest(target, digest, info.media_type, body, [tag])
        return digest

    async def _load(self, target: Target, digest: Digest) -> ProxiedManifest:
        """A manifest by digest: local, pending, fetched from the upstream now, or from a peer."""
        repo = target.repo
        info = self.store.manifest_info(repo, digest)
        if info is not None:
            return ProxiedManifest(await self.store.read_all(info.cid), info.media_type, digest, info.cid)
        pending = self.pending_manifest(repo, digest)
        if pending is not None:
            return pending
        try:
            body, media_type = await self._fetch_manifest(target, digest)
        except UpstreamError as exc:
            raise self._miss(target, exc, "MANIFEST_UNKNOWN", {"digest": str(digest)}) from exc
        await self._keep(repo, digest, media_type, body)
        await self._promote_ready(target)
        info = self.store.manifest_info(repo, digest)
        cid = info.cid if info is not None else None
        return ProxiedManifest(body, media_type, digest, cid)

    async def _fetch_manifest(self, target: Target, digest: Digest) -> tuple[bytes, str]:
        """A manifest by digest (bytes, media type) not kept for this repository yet; UpstreamError.

        Peers first here too (a manifest is a blob in every ipfsreg): a fleet pulling one image asks
        its upstream for the manifest about once, and manifest GETs are what registries rate-limit.
        """
        found = await self._manifest_elsewhere(target, digest)
        if found is not None:
            return found
        fetched = await self._upstream(
            target, lambda c: c.get_manifest(target.remote, str(digest), UPSTREAM_ACCEPT)
        )
        return fetched.body, fetched.media_type

    async def _manifest_elsewhere(self, target: Target, digest: Digest) -> tuple[bytes, str] | None:
        """A manifest by digest without the upstream: stored here for another repository (by digest:
        the same bytes), or held by a fleet peer (manifests are blobs there too, fetched like one)."""
        info = self.store.blob_info(digest)
        if info is not None and not target.private and self.privacy and self.privacy.is_private_blob(digest):
            return None  # a private namespace's: only its upstream says this repository may have it
        if info is None and self.fleet is not None:
            have = await self.fleet.find_have(str(digest))
            if have is not None and have.size <= self.max_manifest_bytes:
                info = await self._blob_from_peers(target, digest)
        if info is None or info.size > self.max_manifest_bytes:
            return None
        body = await self.store.read_all(info.cid)
        try:
            media_type = parse_manifest(body, None).media_type
        except RegistryError:
            return None
        return body, media_type

    async def _blob_from_peers(self, target: Target, digest: Digest) -> BlobInfo | None:
        """Store blob ``digest`` in ``target``'s repository from fleet peers only; None if none has it."""
        if self.fleet is None:
            return None
        fetch = _Fetch(
            Target(target.repo, target.namespace, target.remote, None, 0.0, target.private), digest
        )
        while (running := self._fetches.get(digest)) is not None:
            await running.done.wait()
        if self.store.blob_info(digest) is not None:
            return self.store.blob_info(digest)
        self._fetches[digest] = fetch
        send, receive = trio.open_memory_channel[bytes](0)
        send.close()
        receive.close()
        fetch.detached = True
        try:
            await self.nursery.start(self._run_fetch, fetch, send)
        except (RegistryError, UpstreamError):
            return None
        await fetch.done.wait()
        return fetch.stored

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

    async def _promote_ready(self, target: Target) -> None:
        """Store every pending manifest of the repository whose blobs and child manifests are all local."""
        async with self._promote_lock:
            progress = True
            while progress:
                progress = False
                for digest in self.pending_digests(target.repo):
                    if await self._promote(target, digest):
                        progress = True

    async def _promote(self, target: Target, digest: Digest) -> bool:
        repo = target.repo
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
                target, digest, pending.media_type, pending.body, self._tags_naming(repo, digest)
            )
        except RegistryError as exc:
            # Stays pending (and served from there); the next stored blob tries again.
            log.warning("cannot store %s@%s fetched through the cache: %s", repo, digest, exc)
            return False
        with self.store.datastore.batch(sync=True) as batch:
            batch.delete(self.pending, _key(repo, str(digest)))
        return True

    def _tagger(self, target: Target, digest: Digest | None = None) -> BatchTagger | None:
        """Marks a private target's blocks (and blob) private, clears the marks a public one shares."""
        privacy = self.privacy
        if privacy is None:
            return None
        if not target.private:
            return privacy.clear_blocks

        def mark(batch: WriteBatch, cids: list[CID]) -> None:
            privacy.mark_blocks(batch, cids)
            if digest is not None:
                privacy.mark_blob(batch, digest)

        return mark

    async def _store_manifest(
        self, target: Target, digest: Digest, media_type: str, body: bytes, tags: list[str]
    ) -> None:
        """``put_manifest`` once per tag (each publishes its image directory), or once untagged."""
        targets: list[str | None] = [*tags] if tags else [None]
        for tag in targets:
            await self.store.put_manifest(
                target.repo,
                body,
                media_type,
                tag=tag,
                digest=digest,
                tag_blocks=self._tagger(target, digest),
                announce=not target.private,
            )

    # --- blobs ---------------------------------------------------------------------------

    async def blob(self, target: Target, digest: Digest, *, head: bool, ranged: bool) -> ProxiedBlob | None:
        """The answer to a blob GET/HEAD missing locally, or None once the local store can answer."""
        store, repo = self.store, target.repo
        if store.repo_has_blob(repo, digest) and store.blob_info(digest) is not None:
            return None
        while (running := self._fetches.get(digest)) is not None:
            await running.done.wait()
        if store.repo_has_blob(repo, digest) and store.blob_info(digest) is not None:
            return None
        if store.blob_info(digest) is not None:
            await self._link(target, digest)
            return None
        if head:
            return ProxiedBlob(digest, await self._stat(target, digest), None)
        if self._fetches.get(digest) is not None:
            return await self.blob(target, digest, head=head, ranged=ranged)  # one started while we asked
        fetch = _Fetch(target, digest)
        self._fetches[digest] = fetch  # before any await: concurrent requests wait for this fetch
        send, receive = trio.open_memory_channel[bytes](STREAM_BUFFER_CHUNKS)
        if ranged:
            # A range of a blob not yet stored: store it whole, then the local path serves the range.
            fetch.detached = True
            send.close()
            receive.close()
        self.stats.miss(target.namespace)
        size = await self.nursery.start(self._run_fetch, fetch, send)
        if ranged:
            await fetch.done.wait()
            if fetch.stored is None:
                raise self._fetch_error(fetch)
            return None
        return ProxiedBlob(digest, size, _client_body(fetch, receive))

    async def _link(self, target: Target, digest: Digest) -> None:
        """Link a blob stored for another repository into ``target``'s (see the module docstring)."""
        private_here = self.privacy is not None and self.privacy.is_private_blob(digest)
        if target.check_membership or (private_here and not target.private):
            # Only the upstream says whether this repository holds it (a private blob stays private).
            try:
                await self._upstream(target, lambda c: c.stat_blob(target.remote, str(digest)))
            except UpstreamError as exc:
                raise self._miss(target, exc, "BLOB_UNKNOWN", {"digest": str(digest)}) from exc
        info = self.store.mount_blob(target.repo, digest, None)
        public_now = info is not None and private_here and not target.private
        if (
            public_now
            and info is not None
            and self.privacy
            and await self.privacy.make_public(digest, info.cid)
        ):
            self.store.committed([info.cid, digest_cid(str(digest))])  # public now: announced like others

    async def _stat(self, target: Target, digest: Digest) -> int | None:
        """The size of a blob missing here (HEAD): the upstream's answer, else a fleet peer's."""
        try:
            return await self._upstream(target, lambda c: c.stat_blob(target.remote, str(digest)))
        except UpstreamError as exc:
            if self.fleet is not None and not isinstance(exc, UpstreamNotFound | UpstreamUnauthorized):
                have = await self.fleet.find_have(str(digest))
                if have is not None:
                    return have.size
            raise self._miss(target, exc, "BLOB_UNKNOWN", {"digest": str(digest)}) from exc

    def _fetch_error(self, fetch: _Fetch) -> RegistryError:
        error = fetch.error
        if isinstance(error, RegistryError):
            return error
        if isinstance(error, UpstreamError):
            return self._miss(fetch.target, error, "BLOB_UNKNOWN", {"digest": str(fetch.digest)})
        return RegistryError("UNAVAILABLE", {"digest": str(fetch.digest), "reason": repr(error)[:500]})

    async def _run_fetch(
        self,
        fetch: _Fetch,
        send: trio.MemorySendChannel[bytes],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fetch one blob into the store, feeding its bytes to ``send`` while a client reads them."""
        started = False
        target, digest = fetch.target, fetch.digest
        fleet = self.fleet
        if fleet is not None:
            fetch.flight = fleet.begin(str(digest), private=target.private)
        try:
            async with trio.open_nursery() as nursery:
                chunks_in, chunks_out = trio.open_memory_channel[bytes](4)
                size = await nursery.start(self._produce, fetch, chunks_in)
                task_status.started(size)
                started = True
                await self._store_stream(fetch, chunks_out, send)
        except BaseExceptionGroup as group:
            error = _first_error(group)
            fetch.error = error
            if not started:
                raise self._as_registry_error(fetch, error) from None
            log.warning("fetch of %s@%s failed: %s", target.repo, digest, error)
        except Exception as exc:
            fetch.error = exc
            if not started:
                raise self._as_registry_error(fetch, exc) from None
            log.warning("fetch of %s@%s failed: %s", target.repo, digest, exc)
        finally:
            if self._fetches.get(digest) is fetch:
                del self._fetches[digest]
            if fetch.flight is not None and fleet is not None:
                if fetch.stored is not None:
                    fetch.flight.finish(fetch.stored.cid, fetch.stored.size)
                else:
                    fetch.flight.fail(str(fetch.error or "the fetch stopped"))
                fleet.end(fetch.flight)
            fetch.done.set()
            send.close()

    def _as_registry_error(self, fetch: _Fetch, error: BaseException) -> BaseException:
        if isinstance(error, UpstreamError):
            return self._miss(fetch.target, error, "BLOB_UNKNOWN", {"digest": str(fetch.digest)})
        return error

    async def _store_stream(
        self,
        fetch: _Fetch,
        chunks: trio.MemoryReceiveChannel[bytes],
        send: trio.MemorySendChannel[bytes],
    ) -> None:
        """Import the produced bytes into a scratch upload while forwarding them to the client."""
        target, digest = fetch.target, fetch.digest
        upload = self.store.scratch_upload(target.repo)
        upload.tag_blocks = self._tagger(target, digest)
        upload.announce = not target.private  # a private namespace's content stays off the DHT
        if fetch.flight is not None:
            upload.on_commit = fetch.flight.add_blocks
        # The client's last piece waits until the blob is committed (and its manifests promoted):
        # a client that has every byte finds the blob stored.
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
            async for chunk in chunks:
                if held:
                    await forward(held.pop())
                held.append(chunk)
                yield chunk

        await self.store.append(upload, tee())
        try:
            stored = await self.store.finish_upload(upload, digest)
        except RegistryError:
            if fetch.peers_used and self.fleet is not None:
                for peer in fetch.peers_used:  # the bytes they sent were not the blob's
                    await self.fleet.peers.penalise(peer, f"sent bytes that are not blob {digest}")
            raise
        fetch.stored = stored
        if self.privacy is not None and not target.private:
            await self.privacy.make_public(digest, stored.cid)
        self.stats.blobs[fetch.source] += 1
        log.info(
            "blob %s for %s: %d bytes from %s%s",
            digest,
            target.repo,
            stored.size,
            fetch.source,
            f" ({', '.join(fetch.peers_used)})" if fetch.peers_used else "",
        )
        try:
            await self._promote_ready(target)
        except (RegistryError, UpstreamError, OSError) as exc:
            log.warning("promoting manifests of %s after blob %s failed: %s", target.repo, digest, exc)
        if held:
            await forward(held.pop())

    async def _produce(
        self,
        fetch: _Fetch,
        out: trio.MemorySendChannel[bytes],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the blob's bytes to ``out``: fleet peers first, then the upstream where they stopped."""
        target, digest = fetch.target, fetch.digest
        offset = 0
        announced = False
        serving: str | None = None  # the peer whose bytes flow now (None: the upstream)

        def announce(size: int | None) -> None:
            nonlocal announced
            if not announced:
                announced = True
                if fetch.flight is not None:
                    fetch.flight.start(size)
                task_status.started(size)

        async def emit(chunk: bytes) -> None:
            nonlocal offset
            if serving is not None and serving not in fetch.peers_used:
                fetch.peers_used.append(serving)
            await out.send(chunk)
            # Counted once delivered: a send cancelled by a failing source delivered nothing, and the
            # next source must start at exactly the byte the store has.
            offset += len(chunk)
            self.stats.add_bytes(fetch.source, len(chunk))

        async with out:
            fleet, flight = self.fleet, fetch.flight
            if fleet is not None and flight is not None:
                async with aclosing(fleet.supplies(flight)) as supplies:
                    async for supply in supplies:
                        fetch.source, serving = "peer", supply.peer
                        try:
                            await supply.pump(emit, offset, announce)
                            if supply.coordinated:
                                self.stats.coordinated += 1
                            return
                        except PeerFailed as exc:
                            self.stats.peer_failures += 1
                            log.warning(
                                "fleet: %s (blob %s, at byte %d); trying the next source", exc, digest, offset
                            )
                            if exc.lied:
                                await fleet.peers.penalise(exc.peer, str(exc))
            fetch.source, serving = "upstream", None
            if target.client is None:
                raise RegistryError(
                    "BLOB_UNKNOWN",
                    {"digest": str(digest), "reason": "no peer has it and there is no upstream for it"},
                )
            async with target.client.open_blob(target.remote, str(digest), start=offset) as upstream:
                announce(upstream.size)
                async for chunk in upstream.chunks():
                    await emit(chunk)


def _digest(text: str) -> Digest:
    try:
        return parse_digest(text)
    except RegistryError as exc:
        raise UpstreamError(f"upstream announced an unusable digest {text[:200]!r}", status=502) from exc


async def _client_body(fetch: _Fetch, receive: trio.MemoryReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    """The client's view of a fetch; raises (cutting the response short) unless the blob was stored."""
    async with receive:
        async for chunk in receive:
            yield chunk
    await fetch.done.wait()
    if fetch.client_dropped:
        raise _StreamFailed(f"the client took no bytes of {fetch.digest} for too long")
    if fetch.stored is None:
        raise _StreamFailed(f"fetching {fetch.digest} failed: {fetch.error!r}")


@dataclass
class Bound:
    """The cache and the target of the current request."""

    proxy: PullThrough
    target: Target

    async def manifest(self, reference: str | Digest) -> ProxiedManifest | None:
        return await self.proxy.manifest(self.target, reference)

    async def blob(self, digest: Digest, *, head: bool, ranged: bool) -> ProxiedBlob | None:
        return await self.proxy.blob(self.target, digest, head=head, ranged=ranged)

    def served_locally(self, size: int) -> None:
        self.proxy.stats.hit(self.target.namespace)
        self.proxy.stats.add_bytes("local", size)
        self.proxy.stats.blobs["local"] += 1


def pull_through(ctx: Any, repo: str) -> Bound | None:
    """The app's cache bound to ``repo`` for this request, or None when misses are just misses."""
    scope = current_scope()
    if not scope.namespace and not ctx.settings.upstream:
        return None
    app: Any = current_app._get_current_object()  # type: ignore[attr-defined]
    proxy: PullThrough | None = app.extensions.get(EXTENSION)
    if proxy is None or proxy.store is not ctx.store:
        proxy = PullThrough(
            ctx.store,
            nursery=app.nursery,
            legacy=ctx.settings,
            mirror=ctx.mirror,
            fleet=ctx.fleet,
            stats=ctx.mirror_stats,
            privacy=ctx.privacy,
        )
        app.extensions[EXTENSION] = proxy
        app.after_serving_funcs.append(proxy.aclose)
    target = proxy.target(scope.namespace, repo)
    return None if target is None else Bound(proxy, target)


def refuse_writes(settings: RegistrySettings) -> None:
    """A pull-through cache takes no pushes or deletes (distribution answers UNSUPPORTED too);
    neither do requests through ``?ns=`` (they name another registry's repositories)."""
    if current_scope().from_query:
        raise RegistryError(
            "UNSUPPORTED", {"reason": "?ns= is for pulls through the mirror: push to the registry itself"}
        )
    if settings.upstream:
        raise RegistryError(
            "UNSUPPORTED",
            {"reason": "this registry is a pull-through cache: push to its upstream instead"},
        )
