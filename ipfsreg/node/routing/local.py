"""Routers for the Routing V1 server (ipfsreg/routing_v1/server.py).

``LocalRouter`` answers from what the node knows by itself and from the configured HTTP routers:
it provides the blocks it holds, it knows its own and its connected peers' addresses, and it asks
delegated routers (``[routing] http_routers``) for the rest. ``NodeRouter`` (what the server uses)
adds the node's DHT: ``Node.find_providers`` and friends, which ask the HTTP routers beside the
DHT, with ``LocalRouter`` as the fallback for peers and records.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ipfsreg.cid import CID, LIBP2P_KEY
from ipfsreg.node.errors import NodeError

if TYPE_CHECKING:
    from ipfsreg.node.node import Node
    from ipfsreg.node.routing.http_client import HttpRouters


class RoutingUnavailable(NodeError, NotImplementedError):
    """This router cannot do that at all (a value store needs the DHT)."""


@dataclass(frozen=True)
class LocalProvider:
    peer_id: str
    addrs: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=lambda: ["transport-bitswap"])


def _without_peer_id(addr: str) -> str:
    head, sep, _ = addr.rpartition("/p2p/")
    return head if sep else addr


class NoRecord(NodeError, LookupError):
    """No router holds a record for this key."""


class LocalRouter:
    def __init__(self, node: Node, http: HttpRouters | None = None) -> None:
        self._node = node
        self._http = http

    async def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[LocalProvider]:
        """This node, if it holds the block ``cid``; then what the HTTP routers know."""
        found = 0
        if limit > 0 and self._node.datastore.blocks.has(cid):
            found += 1
            yield LocalProvider(self._node.peer_id, [_without_peer_id(a) for a in self._node.listen_addrs()])
        if self._http is None or found >= limit:
            return
        for record in await self._http.find_providers(cid, limit=limit - found):
            if record.peer_id != self._node.peer_id:
                yield LocalProvider(record.peer_id, list(record.addrs), list(record.protocols))

    async def find_peer(self, peer_id: str) -> list[str]:
        """Our listen addresses, a connected peer's connection addresses, else the HTTP routers'."""
        if peer_id == self._node.peer_id:
            return [_without_peer_id(a) for a in self._node.listen_addrs()]
        for peer in self._node.peers():
            if peer.peer_id == peer_id:
                return list(peer.addrs)
        return await self._http.find_peer(peer_id) if self._http is not None else []

    async def get_value(self, key: bytes) -> bytes:
        """An IPNS record from the HTTP routers (checked by their validator)."""
        http = self._http_or_unavailable()
        name = self._ipns_name(key)
        record = await http.get_ipns(name)
        if record is None:
            raise NoRecord(f"no HTTP router holds a valid record for {name}")
        return record

    async def put_value(self, key: bytes, value: bytes) -> None:
        """Publish an IPNS record to the HTTP routers."""
        await self._http_or_unavailable().put_ipns(self._ipns_name(key), value)

    def _http_or_unavailable(self) -> HttpRouters:
        if self._http is None or not self._http.routers or self._http.validator is None:
            raise RoutingUnavailable(
                "records are stored in the DHT, which this node does not run, or in HTTP routers"
                " ([routing] http_routers, checked with an IPNS validator), of which none is configured"
            )
        return self._http

    def _ipns_name(self, key: bytes) -> str:
        self._http_or_unavailable()
        if not key.startswith(b"/ipns/"):
            raise RoutingUnavailable(f"HTTP routers hold IPNS records only, not {key[:20]!r}")
        return CID.v1(LIBP2P_KEY, key[len(b"/ipns/") :]).encode()


class NodeRouter:
    """The Routing V1 server's router once the node runs its DHT: this node if it holds the block,
    then ``Node.find_providers`` (the local provider store, the DHTs and the HTTP routers, at once);
    peers and records from the DHT, then from the HTTP routers (``fallback``)."""

    def __init__(self, node: Node, fallback: LocalRouter) -> None:
        self._node = node
        self._fallback = fallback

    async def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[LocalProvider]:
        found = 0
        if limit > 0 and self._node.datastore.blocks.has(cid):
            found += 1
            yield LocalProvider(self._node.peer_id, [_without_peer_id(a) for a in self._node.listen_addrs()])
        if found >= limit:
            return
        async for provider in self._node.find_providers(cid, limit=limit - found):
            yield LocalProvider(provider.peer_id, list(provider.addrs))

    async def find_peer(self, peer_id: str) -> list[str]:
        if peer_id != self._node.peer_id:
            addrs = await self._node.find_peer(peer_id)
            if addrs:
                return addrs
        return await self._fallback.find_peer(peer_id)

    async def get_value(self, key: bytes) -> bytes:
        from ipfsreg.node.errors import RecordNotFound

        try:
            return await self._node.get_value(key)
        except RecordNotFound:
            try:
                return await self._fallback.get_value(key)
            except RoutingUnavailable:
                raise NoRecord(f"no valid record for {key[:80]!r} in the DHT") from None

    async def put_value(self, key: bytes, value: bytes) -> None:
        await self._node.put_value(key, value)
        with contextlib.suppress(RoutingUnavailable):  # no HTTP routers: the DHT has it
            await self._fallback.put_value(key, value)
