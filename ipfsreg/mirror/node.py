"""The p2p node as the mirror's fleet (``ipfsreg.registry.fleet.FleetPeers``): connected peers, digest
CID providers from content routing, ``/ipfsreg/blob/1.0.0`` questions, bitswap sessions, bans.

The registry never speaks libp2p; this adapter is the one place the two meet (built in app.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

from libp2p.peer.id import ID

from ipfsreg.cid import CID
from ipfsreg.node.blobs.protocol import Answer, Request, digest_cid
from ipfsreg.node.errors import ProtocolViolation
from ipfsreg.node.node import Node
from ipfsreg.unixfs.exporter import BlockSource

log = logging.getLogger(__name__)

PROVIDER_LIMIT: Final = 20
CONNECT_TIMEOUT: Final = 3.0


class NodeFleetPeers:
    def __init__(self, node: Node, *, provider_limit: int = PROVIDER_LIMIT) -> None:
        self.node = node
        self.provider_limit = provider_limit

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    def connected(self) -> list[str]:
        client = self.node.client
        return [
            peer.to_base58()
            for peer in self.node.network.connected_peers()
            if not client.is_banned(peer) and peer.to_base58() != self.node.peer_id
        ]

    async def find_providers(self, digest: str) -> AsyncIterator[str]:
        """Providers of the digest CID (the node's DHTs and content routers), each connected first."""
        async for found in self.node.find_providers(digest_cid(digest), limit=self.provider_limit):
            if found.peer_id != self.node.peer_id and await self.node._connect_provider(found):
                yield found.peer_id

    def query(self, peer: str, request: Request) -> AbstractAsyncContextManager[AsyncIterator[Answer]]:
        return self.node.blobs.query(peer, request)

    def has_routing(self) -> bool:
        # The DHTs reach peers this node is not connected to only through those it is connected to.
        return bool(self.connected())

    def provide(self, digest: str) -> None:
        self.node.provide([digest_cid(digest)])

    def block_source(
        self, route: Callable[[CID], str | None] | None = None
    ) -> AbstractAsyncContextManager[BlockSource]:
        source = self.node.block_source()
        if route is not None:
            peer_ids: dict[str, ID] = {}

            def routed(cid: CID) -> ID | None:
                peer = route(cid)
                if peer is None:
                    return None
                if peer not in peer_ids:
                    try:
                        peer_ids[peer] = ID.from_base58(peer)
                    except ValueError:
                        return None
                return peer_ids[peer]

            source.session.route = routed
        return source

    def received_bytes(self) -> int:
        return self.node.client.stats.block_bytes_received

    async def penalise(self, peer: str, reason: str) -> None:
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            return
        await self.node.client.penalise(peer_id, ProtocolViolation(reason))
