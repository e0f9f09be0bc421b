"""Where the IPNS service puts and finds records: the node's DHT and the HTTP routers, seen as one.

The service sees one :class:`ValueRouting`. In a server it is a :class:`RecordRouting` over

- the node's DHT (``Node.put_value`` / ``Node.get_value``: PUT_VALUE / GET_VALUE under the binary
  key ``/ipns/<multihash>``, as Kubo; every record checked by the node's ``/ipns/`` validator), and
- when ``[routing] http_routers`` are configured, those routers (Routing V1
  ``PUT|GET /routing/v1/ipns/{name}``, through :class:`HttpRecordRouting`).

A put goes to every route at once and counts the peers and routers that stored the record; it
fails only when nothing stored it and some route failed. A get asks every route at once (each
bounds itself: the DHT lookup by ``[routing] lookup_timeout``, the routers by ``http_timeout``),
checks each answer with the IPNS validator and returns the best valid one (highest sequence, then
longest validity; between equals the DHT's, as it is listed first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from ipfsreg.ipns.record import InvalidRecord, IpnsError, IpnsName, NameNotFound
from ipfsreg.node.errors import RecordNotFound

log = logging.getLogger(__name__)


@runtime_checkable
class ValueRouting(Protocol):
    """Puts and gets records by routing key, as ``Node.put_value`` / ``Node.get_value`` do."""

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store ``value`` under ``key``; how many peers (or routers) stored it."""
        ...

    async def get_value(self, key: bytes) -> bytes:
        """The best record for ``key``; raises (any exception) when there is none."""
        ...


class RouteFailed(IpnsError):
    """No route stored a record, and at least one of them failed; the message says how each did."""


class IpnsRecordRouters(Protocol):
    """The HTTP routers' IPNS calls (``ipfsreg.node.routing.http_client.HttpRouters``)."""

    @property
    def routers(self) -> Sequence[object]: ...

    async def get_ipns(self, name: str) -> bytes | None: ...

    async def put_ipns(self, name: str, record: bytes) -> int: ...


class HttpRecordRouting:
    """:class:`ValueRouting` over Routing V1 HTTP routers, for ``/ipns/`` keys only."""

    def __init__(self, routers: IpnsRecordRouters) -> None:
        self._routers = routers

    async def put_value(self, key: bytes, value: bytes) -> int:
        return await self._routers.put_ipns(str(IpnsName.from_routing_key(key)), value)

    async def get_value(self, key: bytes) -> bytes:
        name = IpnsName.from_routing_key(key)
        record = await self._routers.get_ipns(str(name))
        if record is None:
            count = len(self._routers.routers)
            raise NameNotFound(f"none of the {count} HTTP routers has a record of {name}")
        return record


class RecordValidator(Protocol):
    def validate(self, key: bytes, value: bytes) -> None: ...

    def select(self, key: bytes, values: Sequence[bytes]) -> int: ...


@dataclass(frozen=True)
class Route:
    name: str  # for messages: "DHT", "HTTP routers"
    routing: ValueRouting


def _is_miss(exc: Exception) -> bool:
    return isinstance(exc, (RecordNotFound, NameNotFound))


class RecordRouting:
    """Several routes as one :class:`ValueRouting` (see the module docstring); the first is preferred."""

    def __init__(self, routes: Sequence[Route], validator: RecordValidator) -> None:
        if not routes:
            raise ValueError("RecordRouting needs at least one route")
        self.routes = list(routes)
        self.validator = validator

    async def put_value(self, key: bytes, value: bytes) -> int:
        stored: dict[str, int] = {}
        failed: dict[str, str] = {}

        async def one(route: Route) -> None:
            try:
                stored[route.name] = await route.routing.put_value(key, value)
            except Exception as exc:  # each route's errors are its own; the others still count
                failed[route.name] = str(exc) or type(exc).__name__

        async with trio.open_nursery() as nursery:
            for route in self.routes:
                nursery.start_soon(one, route)
        total = sum(stored.values())
        for name, reason in failed.items():
            log.warning("ipns: putting a record to the %s failed: %s", name, reason)
        if total == 0 and failed:
            outcomes = [f"{name}: stored by none" for name in stored] + [
                f"{name}: {reason}" for name, reason in failed.items()
            ]
            raise RouteFailed("the record was stored nowhere (" + "; ".join(outcomes) + ")")
        return total

    async def get_value(self, key: bytes) -> bytes:
        name = IpnsName.from_routing_key(key)
        found: list[tuple[int, bytes]] = []
        failed: list[str] = []
        rejected: list[str] = []

        async def one(index: int, route: Route) -> None:
            try:
                value = await route.routing.get_value(key)
            except Exception as exc:  # not found, unreachable, or the route failed: the others count
                if not _is_miss(exc):
                    failed.append(f"the {route.name} failed: {exc or type(exc).__name__}")
                return
            try:
                self.validator.validate(key, value)
            except Exception as exc:
                log.warning("ipns: the %s answered for %s with an invalid record: %s", route.name, name, exc)
                rejected.append(f"the {route.name} answered with an invalid record: {exc}")
                return
            found.append((index, value))

        async with trio.open_nursery() as nursery:
            for index, route in enumerate(self.routes):
                nursery.start_soon(one, index, route)
        if not found:
            if rejected:
                raise InvalidRecord("; ".join(rejected))
            where = " or the ".join(route.name for route in self.routes)
            detail = f" ({'; '.join(sorted(failed))})" if failed else ""
            raise NameNotFound(f"no record of {name} in the {where}{detail}")
        values = [value for _, value in sorted(found, key=lambda item: item[0])]
        return values[self.validator.select(key, values)]
