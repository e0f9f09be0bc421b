"""A router from what the node knows by itself: it provides the blocks it holds, it knows its own
and its connected peers' addresses. It answers the Routing V1 server (ipfsreg/routing_v1/server.py)
until the node's DHT lookups (``Node.find_providers`` and friends) take its place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ipfsreg.cid import CID
from ipfsreg.node.errors import NodeError

if TYPE_CHECKING:
    from ipfsreg.node.node import Node


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


class LocalRouter:
    def __init__(self, node: Node) -> None:
        self._node = node

    async def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[LocalProvider]:
        """This node, if it holds the block ``cid``."""
        if limit > 0 and self._node.datastore.blocks.has(cid):
            yield LocalProvider(self._node.peer_id, [_without_peer_id(a) for a in self._node.listen_addrs()])

    async def find_peer(self, peer_id: str) -> list[str]:
        """Our listen addresses, or a connected peer's connection addresses; [] for anyone else."""
        if peer_id == self._node.peer_id:
            return [_without_peer_id(a) for a in self._node.listen_addrs()]
        for peer in self._node.peers():
            if peer.peer_id == peer_id:
                return list(peer.addrs)
        return []

    async def get_value(self, key: bytes) -> bytes:
        raise RoutingUnavailable("records are stored and found in the DHT, which this node does not run")

    async def put_value(self, key: bytes, value: bytes) -> None:
        raise RoutingUnavailable("records are stored and found in the DHT, which this node does not run")
