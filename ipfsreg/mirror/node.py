"""The p2p node as the mirror's fleet (``ipfsreg.registry.fleet.FleetPeers``): connected peers, digest
CID providers from content routing, ``/ipfsreg/blob/1.0.0`` questions, bitswap sessions, bans.

The registry never speaks libp2p; this adapter is the one place the two meet (built in app.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import trio
from libp2p.peer.id import ID

from ipfsreg.node.blobs.protocol import Answer, Request, digest_cid
from ipfsreg.node.errors import NodeError, ProtocolViolation
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
        """Providers of the digest CID from the node's content routing, each connected first."""
        find = getattr(self.node, "find_providers", None)
        if find is None:  # no content routing in this node: the connected peers are the fleet
            return
        connected = set(self.connected())
        found: Any
        async for found in find(digest_cid(digest), limit=self.provider_limit):
            peer = str(found.peer_id)
            if peer == self.node.peer_id:
                continue
            if peer not in connected and not await self._connect(peer, list(found.addrs)):
                continue
            connected.add(peer)
            yield peer

    async def _connect(self, peer: str, addrs: list[str]) -> bool:
        for addr in addrs:
            full = addr if addr.endswith(f"/p2p/{peer}") else f"{addr}/p2p/{peer}"
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    await self.node.connect(full)
                return True
            except (NodeError, trio.TooSlowError) as exc:
                log.debug("fleet: cannot reach provider %s at %s: %s", peer, addr, exc)
        return False

    def query(self, peer: str, request: Request) -> AbstractAsyncContextManager[AsyncIterator[Answer]]:
        return self.node.blobs.query(peer, request)

    def has_routing(self) -> bool:
        return getattr(self.node, "find_providers", None) is not None and bool(self.connected())

    def provide(self, digest: str) -> None:
        provide = getattr(self.node, "provide", None)
        if provide is not None:
            provide([digest_cid(digest)])

    def block_source(self) -> AbstractAsyncContextManager[BlockSource]:
        return self.node.block_source()

    def received_bytes(self) -> int:
        return self.node.client.stats.block_bytes_received

    async def penalise(self, peer: str, reason: str) -> None:
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            return
        await self.node.client.penalise(peer_id, ProtocolViolation(reason))
