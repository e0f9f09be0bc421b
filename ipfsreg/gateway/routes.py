"""Mounts the trustless gateway on an existing Quart app: ``GET|HEAD /ipfs/<cid>[/path]`` only."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

from quart import Quart, Response, request

from ipfsreg.blockstore import BlockNotFound
from ipfsreg.gateway.errors import BadRequest, GatewayError
from ipfsreg.gateway.handler import GatewayResponse, error_body, handle_request
from ipfsreg.gateway.settings import GatewaySettings
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource

log = logging.getLogger(__name__)

GATEWAY_METHODS: Final = ["GET", "HEAD"]
DEFAULT_SETTINGS: Final = GatewaySettings()


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def _to_quart(response: GatewayResponse, head: bool) -> Response:
    body: bytes | AsyncIterator[bytes] = b"" if head else response.body
    if head and response.content_length is None and response.status == 200:
        body = _no_body()  # a HEAD of a streamed response: no Content-Length, as its GET has none
    quart_response = Response(body, status=response.status, headers=response.headers)
    if response.content_length is not None:
        quart_response.content_length = response.content_length
    elif isinstance(body, bytes) and not head:
        quart_response.content_length = len(body)
    quart_response.timeout = None  # CAR and file bodies stream for as long as they take
    return quart_response


def _error(error: GatewayError, head: bool) -> Response:
    body = error_body(error)
    headers = {"Content-Type": "text/plain; charset=utf-8", **error.headers}
    return _to_quart(GatewayResponse(error.status, headers, body, len(body)), head)


def register_gateway(
    app: Quart,
    source_factory: Callable[[], BlockSource],
    *,
    settings: GatewaySettings = DEFAULT_SETTINGS,
    not_found: tuple[type[BaseException], ...] = (BlockNotFound,),
) -> None:
    """Add the trustless gateway routes under ``/ipfs/`` to ``app`` (nothing if ``settings.enabled`` is off).

    ``source_factory`` is called once per request for the BlockSource to read (local blocks, or one
    that fetches missing blocks from peers). Exceptions of the ``not_found`` types raised before the
    response starts (root or path blocks unavailable) become 404; pass the node's fetch-timeout error
    here too so "no peer has it" is a 404 as well.
    """

    if not settings.enabled:
        return

    async def gateway(path: str = "") -> Response:
        head = request.method == "HEAD"
        raw_path: bytes = request.scope.get("raw_path") or request.path.encode()
        encoded = raw_path.decode("latin-1").split("?", 1)[0]
        if not encoded.startswith("/ipfs/") or encoded == "/ipfs/":
            return _error(BadRequest("missing CID: expected /ipfs/<cid>[/path]"), head)
        query = {key: request.args.get(key, "") for key in request.args}
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            response = await handle_request(
                source_factory(),
                request.method,
                encoded[len("/ipfs/") :],
                query,
                headers,
                deserialized=settings.deserialized,
            )
        except GatewayError as exc:
            return _error(exc, head)
        except not_found as exc:
            return _error(GatewayError(f"content not found: {exc}", status=404), head)
        except UnixFSError as exc:
            log.info("gateway: malformed DAG for %s: %s", encoded, exc)
            return _error(GatewayError(f"cannot process the DAG: {exc}", status=502), head)
        return _to_quart(response, head)

    app.add_url_rule("/ipfs/", "ipfs_gateway_root", gateway, methods=GATEWAY_METHODS)
    app.add_url_rule("/ipfs/<path:path>", "ipfs_gateway", gateway, methods=GATEWAY_METHODS)
