"""A router from what the node knows by itself, and from the configured HTTP routers: it provides the
blocks it holds, it knows its own and its connected peers' addresses, and it asks delegated routers
(``[routing] http_routers``) for the rest. It answers the Routing V1 server
(ipfsreg/routing_v1/server.py) until the node's DHT lookups (``Node.find_providers`` and friends,
which ask the HTTP routers beside the DHT) take its place.
"""

from __future__ import annotations

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
