"""The Routing V1 HTTP API on the registry port: ``/routing/v1/providers/{cid}``, ``/peers/{peer-id}``
and ``/ipns/{name}`` (GET and PUT), answered through an injected :class:`Router`.

The router is the node's (``find_providers``, ``find_peer``, ``get_value``, ``put_value``); this
module speaks HTTP and JSON only, never libp2p. Records and filters are ipfsreg/routing_v1/records.py.
JSON answers hold up to 100 records; ``Accept: application/x-ndjson`` streams every record as it
is found (the lookup runs in a task of the app's nursery and hands records over a channel, so no
nursery or cancel scope is held across a ``yield`` of the body). Every lookup is bounded by
``lookup_timeout``; errors are short text/plain bodies with the spec's status codes (422 for a
malformed CID or peer ID, 400 for a bad IPNS record, 406 for an unacceptable IPNS content type,
501 where the router cannot do what is asked).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ipfsreg.cid import CID, CIDError
from ipfsreg.routing_v1.ipns import MAX_RECORD_SIZE, ipns_key
from ipfsreg.routing_v1.ipns import cache_headers as ipns_cache_headers
from ipfsreg.routing_v1.records import (
    BITSWAP,
    IPNS_RECORD,
    JSON,
    JSON_RECORD_LIMIT,
    NDJSON,
    Filters,
    PeerRecord,
    RecordError,
    apply_filters,
    cache_headers,
    encode_json,
    encode_ndjson,
    parse_filters,
    parse_peer_id,
    peer_record,
)

log = logging.getLogger(__name__)

STREAM_BUFFER: Final = 16  # records found ahead of the socket
NDJSON_RECORD_LIMIT: Final = 1000  # a stream ends after this many records


class Provider(Protocol):
    @property
    def peer_id(self) -> str: ...

    @property
    def addrs(self) -> list[str]: ...


class Router(Protocol):
    """What the node offers (names as in the DHT API); lookups end by themselves in bounded time."""

    def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[Provider]: ...

    async def find_peer(self, peer_id: str) -> list[str]: ...

    async def get_value(self, key: bytes) -> bytes: ...

    async def put_value(self, key: bytes, value: bytes) -> None: ...


class RecordValidator(Protocol):
    """An IPNS record validator (the ipns layer's): ``validate`` raises on an invalid record."""

    def validate(self, key: bytes, value: bytes) -> None: ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int: ...


@dataclass(frozen=True)
class RoutingServerSettings:
    lookup_timeout: float = 30.0


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = (message + "\n").encode()
    response = Response(
        body, status=status, headers={"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    )
    response.content_length = len(body)
    return response


def _wants_ndjson() -> bool:
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip().lower() == NDJSON for part in accept.split(","))


def _accepts(media_type: str) -> bool:
    accept = request.headers.get("Accept", "")
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()}
    return media_type in kinds or "*/*" in kinds or "application/*" in kinds


def register_routing_v1(
    app: QuartTrio,
    router: Router,
    *,
    validator: RecordValidator | None = None,
    not_found: tuple[type[BaseException], ...] = (KeyError, LookupError),
    unavailable: tuple[type[BaseException], ...] = (NotImplementedError,),
    refused: tuple[type[BaseException], ...] = (),
    settings: RoutingServerSettings | None = None,
) -> None:
    """Add the ``/routing/v1/`` routes to ``app``.

    ``validator`` checks IPNS records put through the API (without one, PUT answers 501: an
    unchecked record is never stored). ``not_found`` are the router's "no such record" errors;
    ``refused`` its errors for a valid record it will not store (a better one is stored: 409).
    """
    timeout = (settings or RoutingServerSettings()).lookup_timeout

    async def providers(cid: str) -> Response:
        try:
            key = CID.parse(cid)
            filters = _filters()
        except (CIDError, RecordError) as exc:
            return _text(422, f"invalid request: {exc}")

        async def lookup(limit: int) -> AsyncIterator[PeerRecord]:
            async for found in router.find_providers(key, limit=limit):
                try:
                    yield peer_record(
                        found.peer_id, found.addrs, getattr(found, "protocols", None) or [BITSWAP]
                    )
                except RecordError as exc:
                    log.debug("routing v1: skipping a provider of %s: %s", cid, exc)

        return await _answer("Providers", lookup, filters)

    async def peers(peer_id: str) -> Response:
        try:
            wanted = parse_peer_id(peer_id)
            filters = _filters()
        except RecordError as exc:
            return _text(422, f"invalid request: {exc}")

        async def lookup(limit: int) -> AsyncIterator[PeerRecord]:
            try:
                addrs = await router.find_peer(wanted)
            except not_found:
                return
            except unavailable:
                return
            if addrs:
                yield peer_record(wanted, addrs)

        return await _answer("Peers", lookup, filters)

    async def _answer(kind: str, lookup: Any, filters: Filters) -> Response:
        if _wants_ndjson():
            return _stream(kind, lookup, filters)
        records: list[PeerRecord] = []
        with trio.move_on_after(timeout):
            async for record in lookup(JSON_RECORD_LIMIT):
                kept = apply_filters(record, filters)
                if kept is not None and all(r.peer_id != kept.peer_id for r in records):
                    records.append(kept)
                    if len(records) >= JSON_RECORD_LIMIT:
                        break
        body = encode_json(kind, records)
        response = Response(body, status=200, headers={"Content-Type": JSON, **cache_headers(bool(records))})
        response.content_length = len(body)
        return response

    def _stream(kind: str, lookup: Any, filters: Filters) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            send, receive = trio.open_memory_channel[bytes](STREAM_BUFFER)
            scope = trio.CancelScope()

            async def produce() -> None:
                seen: set[str] = set()
                with scope, trio.move_on_after(timeout):
                    async with send:
                        try:
                            async for record in lookup(NDJSON_RECORD_LIMIT):
                                kept = apply_filters(record, filters)
                                if kept is None or kept.peer_id in seen:
                                    continue
                                seen.add(kept.peer_id)
                                await send.send(encode_ndjson(kept))
                                if len(seen) >= NDJSON_RECORD_LIMIT:
                                    return
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        except Exception:
                            log.exception("routing v1: %s lookup failed", kind)

            async with receive:
                app.nursery.start_soon(produce)
                try:
                    async for line in receive:
                        yield line
                finally:
                    scope.cancel()

        # A streamed answer may end empty; it is cached as one with results would be, for a while.
        response = Response(lines(), status=200, headers={"Content-Type": NDJSON, **cache_headers(True)})
        response.timeout = None
        return response

    async def get_ipns(name: str) -> Response:
        try:
            key = ipns_key(name)
        except RecordError as exc:
            return _text(400, f"invalid IPNS name: {exc}")
        if not _accepts(IPNS_RECORD):
            return _text(406, f"an IPNS record is sent as {IPNS_RECORD}: ask with Accept: {IPNS_RECORD}")
        try:
            with trio.fail_after(timeout):
                record = await router.get_value(key)
        except not_found:
            return _text(404, f"no IPNS record found for {name}")
        except trio.TooSlowError:
            return _text(404, f"no IPNS record found for {name} within {timeout:g}s")
        except unavailable as exc:
            return _text(501, f"IPNS records cannot be resolved here: {exc}")
        if validator is not None:
            try:
                validator.validate(key, record)
            except Exception as exc:
                log.info("routing v1: the record found for %s is invalid: %s", name, exc)
                return _text(404, f"no valid IPNS record found for {name}")
        response = Response(
            record, status=200, headers={"Content-Type": IPNS_RECORD, **ipns_cache_headers(record)}
        )
        response.content_length = len(record)
        return response

    async def put_ipns(name: str) -> Response:
        try:
            key = ipns_key(name)
        except RecordError as exc:
            return _text(400, f"invalid IPNS name: {exc}")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != IPNS_RECORD:
            return _text(406, f"send the IPNS record with Content-Type: {IPNS_RECORD}")
        declared = request.content_length
        if declared is not None and declared > MAX_RECORD_SIZE:
            return _text(400, f"an IPNS record is at most {MAX_RECORD_SIZE} bytes, this one {declared}")
        record = await _read_limited(MAX_RECORD_SIZE)
        if record is None:
            return _text(400, f"an IPNS record is at most {MAX_RECORD_SIZE} bytes")
        if validator is None:
            return _text(501, "IPNS records cannot be published here: no IPNS validator is configured")
        try:
            validator.validate(key, record)
        except Exception as exc:
            return _text(400, f"invalid IPNS record for {name}: {exc}")
        try:
            with trio.fail_after(timeout):
                await router.put_value(key, record)
        except trio.TooSlowError:
            return _text(504, f"publishing the IPNS record took longer than {timeout:g}s")
        except unavailable as exc:
            return _text(501, f"IPNS records cannot be published here: {exc}")
        except refused as exc:
            return _text(409, f"the IPNS record for {name} was not stored: {exc}")
        return Response(b"", status=200)

    async def unknown(path: str = "") -> Response:
        return _text(400, f"unknown Routing V1 path /routing/v1/{path}")

    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("/routing/v1/providers/<cid>", "routing_v1_providers", {"GET": providers}),
        ("/routing/v1/peers/<peer_id>", "routing_v1_peers", {"GET": peers}),
        ("/routing/v1/ipns/<name>", "routing_v1_ipns", {"GET": get_ipns, "PUT": put_ipns}),
        ("/routing/v1/", "routing_v1_root", {"GET": unknown}),
        ("/routing/v1/<path:path>", "routing_v1_unknown", {"GET": unknown}),
    ]
    for rule, endpoint, views in routes:
        app.add_url_rule(rule, endpoint, _dispatch(views), methods=ALL_METHODS)


#: Every method is routed here, so that what the API does not do is answered 501 (the spec), never
#: by the framework's HTML 405 page; OPTIONS is the CORS preflight.
ALL_METHODS: Final = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
CORS: Final = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, PUT, OPTIONS"}


def _dispatch(views: dict[str, Any]) -> Any:
    async def view(**kwargs: str) -> Response:
        method = request.method
        if method == "OPTIONS":
            response = Response(b"", status=204)
        elif method in views or (method == "HEAD" and "GET" in views):
            response = await views[method if method in views else "GET"](**kwargs)
        else:
            allowed = ", ".join(sorted(views))
            response = _text(501, f"{method} is not supported here (supported: {allowed})")
        response.headers.update(CORS)
        return response

    return view


def _filters() -> Filters:
    return parse_filters(request.args.get("filter-addrs"), request.args.get("filter-protocols"))


async def _read_limited(limit: int) -> bytes | None:
    """The request body, or None once it grows past ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.body:
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
