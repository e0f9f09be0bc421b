"""Shared handler context and helpers: responses, streamed request bodies, pagination; ``GET /v2/``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio
from quart import Request, Response

from ipfsreg.cid import CID
from ipfsreg.gateway.routes import SourceFactory, open_source
from ipfsreg.mirror.settings import MirrorSettings
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.registry.body import StreamingBody
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.fleet import Fleet
from ipfsreg.registry.priority import bulk_turn
from ipfsreg.registry.private import PrivateContent
from ipfsreg.registry.routes import ALLOWED_METHODS
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import RegistryStore
from ipfsreg.registry.zerocopy import SendableLeaves
from ipfsreg.unixfs.exporter import BlockSource

API_VERSION_HEADER: Final = {"Docker-Distribution-API-Version": "registry/2.0"}


class IpnsResolver(Protocol):
    """What the registry needs of IPNS: a tag's image directory under a name, and a name's tags."""

    async def resolve_tag(self, name: str, repository: str, tag: str) -> CID: ...

    async def tags_of(self, name: str, repository: str) -> list[str]: ...

    async def candidate_images(self, name: str, repository: str) -> list[CID]: ...


@dataclass
class Context:
    store: RegistryStore
    settings: RegistrySettings
    source_factory: SourceFactory | None = None
    """Per-request block sources for pulls by CID (each pull its own bitswap session); None: the store's."""
    mirror: MirrorSettings | None = None
    """Namespaced upstreams (``?ns=``); None: requests with ``ns`` read the local store only."""
    fleet: Fleet | None = None
    """Fleet peers asked for missing blobs before the upstream (None: no p2p node)."""
    mirror_stats: MirrorStats = field(default_factory=MirrorStats)
    privacy: PrivateContent | None = None
    ipns: IpnsResolver | None = None
    """Resolves ``ipns/<name>/<repository>`` tags to image directories (None: such pulls are refused)."""
    sendable_leaves: SendableLeaves = field(default_factory=SendableLeaves)
    """Where recently sent leaves' payloads lie in their blocks (zero-copy blob GETs)."""

    def source_factory_or_shared(self) -> SourceFactory:
        """The per-request factory, or one handing out the store's (already entered) shared source."""
        if self.source_factory is not None:
            return self.source_factory
        shared = SharedSource(self.store.block_source)
        return lambda: shared

    def open_source(self) -> AbstractAsyncContextManager[BlockSource]:
        return open_source(self.source_factory_or_shared())


class SharedSource:
    """A source owned (and entered) elsewhere: exposes only get/prefetch, so nobody enters it again."""

    def __init__(self, inner: BlockSource) -> None:
        self.inner = inner

    async def get(self, cid: CID) -> bytes:
        return await self.inner.get(cid)

    def prefetch(self, cids: Sequence[CID]) -> None:
        self.inner.prefetch(cids)


def make_response(
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes | AsyncIterator[bytes] = b"",
    *,
    content_length: int | None = None,
) -> Response:
    response = Response(body, status=status, headers=headers or {})
    if not any(name.lower() == "content-type" for name in (headers or {})):
        # Quart's default (text/html) would describe a body that is not there (201, 202, 204...).
        del response.headers["Content-Type"]
    if content_length is not None:
        response.content_length = content_length
    elif isinstance(body, bytes):
        response.content_length = len(body)
    response.timeout = None
    return response


def json_response(
    obj: Any,
    status: int = 200,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    body = json.dumps(obj).encode()
    all_headers = {"Content-Type": content_type, **(headers or {})}
    return make_response(status, all_headers, body)


def error_response(error: RegistryError, *, head: bool = False) -> Response:
    headers = {"Content-Type": "application/json", **error.headers}
    body = error.body()
    if head:
        return make_response(error.status, headers, b"", content_length=len(body))
    return make_response(error.status, headers, body)


_READ_TIMED_OUT: Final = "timed out reading the request body"


async def body_chunks(request: Request, read_timeout: float, *, bulk: bool = False) -> AsyncIterator[bytes]:
    """The request body as it arrives; BLOB_UPLOAD_INVALID if the client stalls ``read_timeout``.

    ``bulk`` (an upload's body): each read first takes a bulk turn (ipfsreg/registry/priority.py).
    """
    body = request.body
    if isinstance(body, StreamingBody):
        # The chunks as the server received them: no joining on the event loop.
        while True:
            if bulk:
                await bulk_turn()
            if body.ready:
                chunks = await body.next_chunks()  # returns at once: no timeout scope to pay for
            else:
                with trio.move_on_after(read_timeout) as scope:
                    chunks = await body.next_chunks()
                if scope.cancelled_caught:
                    raise RegistryError("BLOB_UPLOAD_INVALID", {"reason": _READ_TIMED_OUT})
            if not chunks:
                return
            for chunk in chunks:
                yield chunk
    iterator = body.__aiter__()
    while True:
        with trio.move_on_after(read_timeout) as scope:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            raise RegistryError("BLOB_UPLOAD_INVALID", {"reason": _READ_TIMED_OUT})
        yield chunk


async def read_body(request: Request, limit: int, read_timeout: float, *, code: str) -> bytes:
    """Read a whole (small) body, refusing more than ``limit`` bytes with ``code`` and status 413."""
    if request.content_length is not None and request.content_length > limit:
        raise RegistryError(code, {"reason": f"body larger than {limit} bytes"}, status=413)
    parts: list[bytes] = []
    total = 0
    async for chunk in body_chunks(request, read_timeout):
        total += len(chunk)
        if total > limit:
            raise RegistryError(code, {"reason": f"body larger than {limit} bytes"}, status=413)
        parts.append(chunk)
    return b"".join(parts)


def page_size(request: Request, cap: int) -> int:
    """The ``n`` query parameter, capped at ``cap`` (the default when absent)."""
    raw = request.args.get("n")
    if raw is None or raw == "":
        return cap
    try:
        n = int(raw)
    except ValueError:
        raise RegistryError("PAGINATION_NUMBER_INVALID", {"n": raw[:50]}) from None
    if n < 0:
        raise RegistryError("PAGINATION_NUMBER_INVALID", {"n": raw[:50]})
    return min(n, cap)


def allowed_methods(route_kind: str, settings: RegistrySettings) -> tuple[str, ...]:
    """The methods a route family answers on this registry (DELETE only when deletes are enabled)."""
    methods = ALLOWED_METHODS[route_kind]
    if not settings.delete_enabled and route_kind != "upload":  # cancelling an upload is not a delete
        methods = tuple(m for m in methods if m != "DELETE")
    return methods


async def get_base(ctx: Context, request: Request) -> Response:
    """``GET /v2/``: the API version check."""
    if request.method == "HEAD":
        return make_response(200, {"Content-Type": "application/json"}, b"", content_length=2)
    return json_response({})
