"""Mounts the trustless gateway on an existing QuartTrio app: ``GET|HEAD /ipfs/<cid>[/path]`` (and
``/ipns/<name>[/path]`` when given an IPNS resolver).

A BlockSource may be a plain object or an async context manager that must be entered before use
(the node's bitswap-backed source owns a nursery of prefetch tasks). The path is resolved inside the
view with one opened source; a streamed body runs in a producer task in the app's nursery with a
source of its own, handing chunks to the response through a small channel. That keeps every
nursery and cancel scope inside one task, never suspended across a ``yield`` of the response body.
When the client goes away the producer is cancelled and its source closed.

``Cache-Control: only-if-cached`` requests are answered from the local blocks only (the
``local_source_factory``): a root or path block that is not stored answers 412 Precondition
Failed at once, with no body, as the path gateway spec asks; nothing is fetched from peers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ipfsreg.blockstore import BlockNotFound
from ipfsreg.gateway.errors import BadRequest, GatewayError
from ipfsreg.gateway.handler import BodyStream, GatewayResponse, error_body, handle_request
from ipfsreg.gateway.settings import GatewaySettings
from ipfsreg.ipns.record import InvalidName, IpnsError, NameNotFound
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource

log = logging.getLogger(__name__)

GATEWAY_METHODS: Final = ["GET", "HEAD"]
DEFAULT_SETTINGS: Final = GatewaySettings()
STREAM_BUFFER_CHUNKS: Final = 4  # chunks (up to a block each) produced ahead of the socket

SourceFactory = Callable[[], BlockSource | AbstractAsyncContextManager[BlockSource]]


@asynccontextmanager
async def open_source(factory: SourceFactory) -> AsyncIterator[BlockSource]:
    """The factory's source, entered if it is an async context manager."""
    made = factory()
    if isinstance(made, AbstractAsyncContextManager):
        async with made as source:
            yield source
    else:
        yield made


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


@dataclass(frozen=True, slots=True)
class _Done:
    """Sent after the last chunk: a channel that ends without it was cut short (e.g. at shutdown)."""


class StreamAborted(Exception):
    """The producer of a streamed body stopped before the end (it was cancelled)."""


def stream_body(nursery: trio.Nursery, factory: SourceFactory, body: BodyStream) -> AsyncIterator[bytes]:
    """Run ``body`` in a task of ``nursery`` with its own source; iterate the result to get its chunks.

    Nothing starts until the first iteration. An exception in the producer is re-raised to the
    iterator (the response is cut short); closing the iterator cancels the producer.
    """

    async def chunks() -> AsyncIterator[bytes]:
        send, receive = trio.open_memory_channel[bytes | _Failed | _Done](STREAM_BUFFER_CHUNKS)
        scope = trio.CancelScope()

        async def produce() -> None:
            with scope:
                async with send:
                    try:
                        async with open_source(factory) as source:
                            async for chunk in body(source):
                                await send.send(chunk)
                        await send.send(_Done())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the response is gone
                    except Exception as exc:
                        try:
                            await send.send(_Failed(exc))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return

        async with receive:
            nursery.start_soon(produce)
            try:
                async for item in receive:
                    if isinstance(item, _Failed):
                        raise item.error
                    if isinstance(item, _Done):
                        return
                    yield item
                raise StreamAborted("the response body's producer stopped before the end")
            finally:
                scope.cancel()

    return chunks()


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def _error(error: GatewayError, head: bool) -> Response:
    body = error_body(error)
    headers = {"Content-Type": "text/plain; charset=utf-8", **error.headers}
    response = Response(b"" if head else body, status=error.status, headers=headers)
    response.content_length = len(body)
    return response


def _only_if_cached(cache_control: str) -> bool:
    return any(part.strip().lower() == "only-if-cached" for part in cache_control.split(","))


class IpnsRecords(Protocol):
    """What ``/ipns/`` needs: the best valid record of a name (raises ``ipfsreg.ipns`` errors)."""

    async def resolve_name(self, name: str) -> tuple[bytes, str, int]: ...  # (record, value, ttl seconds)


IPNS_RECORD_TYPE: Final = "application/vnd.ipfs.ipns-record"


def register_gateway(
    app: QuartTrio,
    source_factory: SourceFactory,
    *,
    settings: GatewaySettings = DEFAULT_SETTINGS,
    not_found: tuple[type[BaseException], ...] = (BlockNotFound,),
    local_source_factory: SourceFactory | None = None,
    ipns: IpnsRecords | None = None,
) -> None:
    """Add the gateway routes under ``/ipfs/`` to ``app`` (nothing if ``settings.enabled`` is off).

    With ``ipns``, ``/ipns/<name>`` answers ``?format=ipns-record`` (or ``Accept:
    application/vnd.ipfs.ipns-record``) with the name's signed record, and ``/ipns/<name>/<path>``
    serves ``<record value>/<path>`` as ``/ipfs/`` would.

    ``source_factory`` is called for each request (twice for a streamed one: once to resolve the path,
    once for the body's producer task) and may return a BlockSource or an async context manager of one.
    Exceptions of the ``not_found`` types raised before the response starts (root or path blocks
    unavailable) become 404; pass the node's fetch-timeout error too so "no peer has it" is a 404.
    ``local_source_factory`` (blocks stored here, nothing fetched) serves ``only-if-cached`` requests;
    without it they use ``source_factory`` like any other.
    """
    if not settings.enabled:
        return

    def to_quart(response: GatewayResponse, head: bool, factory: SourceFactory) -> Response:
        body: bytes | AsyncIterator[bytes]
        if head:
            # a HEAD of a streamed response has no Content-Length, as its GET has none
            body = _no_body() if response.content_length is None and response.status == 200 else b""
        elif isinstance(response.body, bytes):
            body = response.body
        else:
            body = stream_body(app.nursery, factory, response.body)
        quart_response = Response(body, status=response.status, headers=response.headers)
        if response.content_length is not None:
            quart_response.content_length = response.content_length
        elif isinstance(body, bytes) and not head:
            quart_response.content_length = len(body)
        quart_response.timeout = None  # CAR and file bodies stream for as long as they take
        return quart_response

    async def serve_ipfs_path(content_path: str, head: bool, extra: dict[str, str]) -> Response:
        query = {key: request.args.get(key, "") for key in request.args}
        headers = {key.lower(): value for key, value in request.headers.items()}
        cached_only = local_source_factory is not None and _only_if_cached(headers.get("cache-control", ""))
        factory = local_source_factory if cached_only and local_source_factory else source_factory
        try:
            async with open_source(factory) as source:
                response = await handle_request(
                    source,
                    request.method,
                    content_path,
                    query,
                    headers,
                    deserialized=settings.deserialized,
                )
            response.headers.update(extra)
        except GatewayError as exc:
            return _error(exc, head)
        except not_found as exc:
            if cached_only:
                return Response(b"", status=412)  # not stored here, and the client asked for no fetch
            return _error(GatewayError(f"content not found: {exc}", status=404), head)
        except UnixFSError as exc:
            log.info("gateway: malformed DAG for %s: %s", content_path, exc)
            return _error(GatewayError(f"cannot process the DAG: {exc}", status=502), head)
        return to_quart(response, head, factory)

    def encoded_path() -> str:
        raw_path: bytes = request.scope.get("raw_path") or request.path.encode()
        return raw_path.decode("latin-1").split("?", 1)[0]

    async def gateway(path: str = "") -> Response:
        head = request.method == "HEAD"
        encoded = encoded_path()
        if not encoded.startswith("/ipfs/") or encoded == "/ipfs/":
            return _error(BadRequest("missing CID: expected /ipfs/<cid>[/path]"), head)
        return await serve_ipfs_path(encoded[len("/ipfs/") :], head, {})

    async def ipns_gateway(path: str = "") -> Response:
        head = request.method == "HEAD"
        assert ipns is not None
        name, _, rest = encoded_path()[len("/ipns/") :].partition("/")
        if not name:
            return _error(BadRequest("missing name: expected /ipns/<name>[/path]"), head)
        wants_record = request.args.get("format") == "ipns-record" or IPNS_RECORD_TYPE in request.headers.get(
            "Accept", ""
        )
        try:
            raw, value, ttl = await ipns.resolve_name(name)
        except IpnsError as exc:
            status = 400 if isinstance(exc, InvalidName) else 404 if isinstance(exc, NameNotFound) else 502
            return _error(GatewayError(f"cannot resolve /ipns/{name}: {exc}", status=status), head)
        if wants_record:
            if rest:
                return _error(BadRequest("an ipns-record request names no path"), head)
            headers = {
                "Content-Type": IPNS_RECORD_TYPE,
                "Content-Disposition": f'attachment; filename="{name}.ipns-record"',
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": f"public, max-age={ttl}",
            }
            response = Response(b"" if head else raw, status=200, headers=headers)
            response.content_length = len(raw)
            return response
        if not value.startswith("/ipfs/"):
            return _error(GatewayError(f"/ipns/{name} points at {value[:200]}, not /ipfs/", status=502), head)
        target = value[len("/ipfs/") :].rstrip("/") + ("/" + rest if rest else "")
        return await serve_ipfs_path(target, head, {"X-Ipfs-Path": encoded_path()})

    if ipns is not None:
        app.add_url_rule("/ipns/", "ipns_gateway_root", ipns_gateway, methods=GATEWAY_METHODS)
        app.add_url_rule("/ipns/<path:path>", "ipns_gateway", ipns_gateway, methods=GATEWAY_METHODS)
    app.add_url_rule("/ipfs/", "ipfs_gateway_root", gateway, methods=GATEWAY_METHODS)
    app.add_url_rule("/ipfs/<path:path>", "ipfs_gateway", gateway, methods=GATEWAY_METHODS)
