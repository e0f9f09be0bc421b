"""Delegated routing client: asks Routing V1 HTTP endpoints (``[routing] http_routers``) for providers,
peers and IPNS records, all routers in parallel, each answer bounded in time and size and checked.

Everything a router sends is validated (ipfsreg/routing_v1/records.py): a record with a bad peer ID
is skipped (logged), addresses that are not multiaddrs are dropped, a body over its size limit or
that is not the JSON it should be ends that router's answer (HttpRoutingError, logged), and a
router that does not answer within ``timeout`` is left behind. One router failing never fails a
lookup; the others' answers stand.

    async with HttpRouters(["https://delegated.example"], timeout=10) as routers:
        providers = await routers.find_providers(cid)              # [PeerRecord], deduplicated
        await routers.providers_into(cid, send_channel)            # or streamed, for a DHT merge
        addrs = await routers.find_peer("12D3KooW...")
        record = await routers.get_ipns("k51...")                  # bytes or None
        await routers.put_ipns("k51...", record)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Final, Protocol
from urllib.parse import quote

import httpx
import trio

from ipfsreg.cid import CID
from ipfsreg.node.errors import NodeError
from ipfsreg.routing_v1.ipns import MAX_RECORD_SIZE, ipns_key
from ipfsreg.routing_v1.records import (
    IPNS_RECORD,
    JSON,
    NDJSON,
    Filters,
    PeerRecord,
    RecordError,
    decode_json,
    decode_ndjson_line,
    parse_peer_id,
)

log = logging.getLogger(__name__)

#: Largest JSON body read from a router (100 records with many addresses fit in far less).
MAX_JSON_BODY: Final = 1024 * 1024
#: Largest NDJSON line, and the most bytes of one NDJSON stream.
MAX_NDJSON_LINE: Final = 64 * 1024
MAX_NDJSON_BODY: Final = 4 * 1024 * 1024
#: Most lines read from one NDJSON stream (each costs a peer ID and multiaddr parse).
MAX_NDJSON_LINES: Final = 1000


class HttpRoutingError(NodeError):
    """A Routing V1 router answered with an error status, or with something that is not its API."""


class RecordValidator(Protocol):
    def validate(self, key: bytes, value: bytes) -> None: ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int: ...


class HttpRouter:
    """One Routing V1 endpoint (``base_url`` without ``/routing/v1``)."""

    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client

    def __repr__(self) -> str:
        return f"<HttpRouter {self.base_url}>"

    def _url(self, *parts: str) -> str:
        return self.base_url + "/routing/v1/" + "/".join(quote(p, safe="") for p in parts)

    async def providers(self, cid: CID, *, filters: Filters | None = None) -> AsyncIterator[PeerRecord]:
        """The router's provider records for ``cid`` as they arrive (NDJSON when it streams)."""
        async for record in self._records("Providers", self._url("providers", cid.to_v1().encode()), filters):
            yield record

    async def peers(self, peer_id: str, *, filters: Filters | None = None) -> AsyncIterator[PeerRecord]:
        async for record in self._records("Peers", self._url("peers", parse_peer_id(peer_id)), filters):
            yield record

    async def _records(self, kind: str, url: str, filters: Filters | None) -> AsyncIterator[PeerRecord]:
        headers = {"Accept": f"{NDJSON}, {JSON};q=0.9"}
        params = filters.query() if filters is not None else {}
        async with self._client.stream("GET", url, headers=headers, params=params) as response:
            if response.status_code == 404:  # the spec: read as 200 with no results
                return
            if response.status_code != 200:
                text = (await _read_capped(response, 512)).decode("utf-8", "replace").strip()
                raise HttpRoutingError(f"{url}: HTTP {response.status_code} {text[:200]}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type == NDJSON:
                async for line in _lines(response, url):
                    try:
                        record = decode_ndjson_line(line)
                    except RecordError as exc:
                        log.info("routing: %s sent a bad record (skipped): %s", url, exc)
                        continue
                    if record is not None:
                        yield record
                return
            if content_type != JSON:
                raise HttpRoutingError(f"{url}: answered {content_type or 'no content type'}, not {JSON}")
            body = await _read_capped(response, MAX_JSON_BODY)
            if len(body) > MAX_JSON_BODY:
                raise HttpRoutingError(f"{url}: JSON body over {MAX_JSON_BODY} bytes")
            try:
                records, skipped = decode_json(kind, body)
            except RecordError as exc:
                raise HttpRoutingError(f"{url}: {exc}") from None
            for reason in skipped:
                log.info("routing: %s sent a bad record (skipped): %s", url, reason)
            for record in records:
                yield record

    async def get_ipns(self, name: str) -> bytes | None:
        """The record the router holds for ``name`` (unvalidated: the caller checks it), or None."""
        url = self._url("ipns", name)
        async with self._client.stream("GET", url, headers={"Accept": IPNS_RECORD}) as response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise HttpRoutingError(f"{url}: HTTP {response.status_code}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type != IPNS_RECORD:
                return None  # the spec: any other content type means "no record"
            body = await _read_capped(response, MAX_RECORD_SIZE)
            if len(body) > MAX_RECORD_SIZE:
                raise HttpRoutingError(f"{url}: IPNS record over {MAX_RECORD_SIZE} bytes")
            return body

    async def put_ipns(self, name: str, record: bytes) -> None:
        url = self._url("ipns", name)
        response = await self._client.put(url, content=record, headers={"Content-Type": IPNS_RECORD})
        if response.status_code != 200:
            raise HttpRoutingError(f"{url}: HTTP {response.status_code} {response.text[:200].strip()}")


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the body (one more than allowed tells the caller it was over)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            break
    return bytes(body[: limit + 1])


async def _lines(response: httpx.Response, url: str) -> AsyncIterator[bytes]:
    pending = bytearray()
    total = 0
    count = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > MAX_NDJSON_BODY:
            raise HttpRoutingError(f"{url}: NDJSON stream over {MAX_NDJSON_BODY} bytes")
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end])
            del pending[: end + 1]
            count += 1
            if count > MAX_NDJSON_LINES:
                raise HttpRoutingError(f"{url}: NDJSON stream of more than {MAX_NDJSON_LINES} records")
            yield line
        if len(pending) > MAX_NDJSON_LINE:
            raise HttpRoutingError(f"{url}: NDJSON line over {MAX_NDJSON_LINE} bytes")
    if pending.strip():
        yield bytes(pending)


class HttpRouters:
    """Every configured router, asked in parallel; owns the HTTP client (use ``async with``)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 10.0,
        validator: RecordValidator | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.validator = validator
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport, trust_env=False
        )
        self.routers = [HttpRouter(url, self._client) for url in urls]

    async def __aenter__(self) -> HttpRouters:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def providers_into(
        self,
        cid: CID,
        send: trio.MemorySendChannel[PeerRecord],
        *,
        limit: int = 20,
        filters: Filters | None = None,
    ) -> None:
        """Send each provider found by any router into ``send`` (each peer once, at most ``limit``),
        then close it; returns within ``timeout``."""
        seen: set[str] = set()
        async with send:
            with trio.move_on_after(self.timeout):
                async with trio.open_nursery() as nursery:

                    async def ask(router: HttpRouter) -> None:
                        try:
                            async for record in router.providers(cid, filters=filters):
                                if record.peer_id in seen:
                                    continue
                                seen.add(record.peer_id)
                                await send.send(record)
                                if len(seen) >= limit:
                                    nursery.cancel_scope.cancel()
                                    return
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            nursery.cancel_scope.cancel()
                        except (HttpRoutingError, httpx.HTTPError) as exc:
                            log.info("routing: providers of %s from %s failed: %s", cid, router.base_url, exc)

                    for router in self.routers:
                        nursery.start_soon(ask, router)

    async def find_providers(
        self, cid: CID, *, limit: int = 20, filters: Filters | None = None
    ) -> list[PeerRecord]:
        """Providers of ``cid`` from every router (each peer once), within ``timeout``."""
        send, receive = trio.open_memory_channel[PeerRecord](limit)
        found: list[PeerRecord] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: self.providers_into(cid, send, limit=limit, filters=filters))
            async with receive:
                async for record in receive:
                    found.append(record)
        return found

    async def find_peer(self, peer_id: str) -> list[str]:
        """The addresses every router knows for ``peer_id`` (only records of that very peer count)."""
        wanted = parse_peer_id(peer_id)
        addrs: list[str] = []

        async def ask(router: HttpRouter) -> None:
            try:
                async for record in router.peers(wanted):
                    if record.peer_id != wanted:
                        log.info(
                            "routing: %s answered for %s with %s (ignored)",
                            router.base_url,
                            wanted,
                            record.peer_id,
                        )
                        continue
                    addrs.extend(a for a in record.addrs if a not in addrs)
            except (HttpRoutingError, httpx.HTTPError) as exc:
                log.info("routing: peer %s from %s failed: %s", wanted, router.base_url, exc)

        with trio.move_on_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for router in self.routers:
                    nursery.start_soon(ask, router)
        return addrs

    async def get_ipns(self, name: str) -> bytes | None:
        """The best valid record any router holds for ``name``, or None.

        Records are checked with the validator (one that fails is skipped, logged) and the best is
        picked with its ``select``; without a validator no record is trusted and this raises.
        """
        if self.validator is None:
            raise HttpRoutingError("IPNS records from HTTP routers need a validator to be trusted")
        validator = self.validator
        key = ipns_key(name)
        records: list[bytes] = []

        async def ask(router: HttpRouter) -> None:
            try:
                record = await router.get_ipns(name)
            except (HttpRoutingError, httpx.HTTPError) as exc:
                log.info("routing: IPNS %s from %s failed: %s", name, router.base_url, exc)
                return
            if record is None:
                return
            try:
                validator.validate(key, record)
            except Exception as exc:
                log.info("routing: %s sent an invalid IPNS record for %s: %s", router.base_url, name, exc)
                return
            records.append(record)

        with trio.move_on_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for router in self.routers:
                    nursery.start_soon(ask, router)
        if not records:
            return None
        return records[validator.select(key, records)]

    async def put_ipns(self, name: str, record: bytes) -> int:
        """Publish ``record`` to every router; the number that took it. HttpRoutingError if none did."""
        ipns_key(name)  # a bad name fails here, before anything is sent
        accepted = 0
        errors: list[str] = []

        async def put(router: HttpRouter) -> None:
            nonlocal accepted
            try:
                await router.put_ipns(name, record)
                accepted += 1
            except (HttpRoutingError, httpx.HTTPError) as exc:
                errors.append(f"{router.base_url}: {exc}")

        with trio.move_on_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for router in self.routers:
                    nursery.start_soon(put, router)
        if self.routers and not accepted:
            raise HttpRoutingError(
                "no HTTP router took the IPNS record: " + ("; ".join(errors) or "timed out")
            )
        return accepted
