"""Bitswap server (decision engine): answers peers' wants from the blockstore, fairly.

Each peer has a ledger (its wantlist) and a queue of wants not yet answered (each message's new
wants queued highest priority first). Peers with queued work wait in a round-robin; a worker
takes the next peer, answers one message's worth of its queue (blocks are added until
``target_message_size`` is reached), then puts it at the back. A peer that wants thousands of
blocks therefore gets one message per turn like everyone else. Cancels remove the want from
the ledger, so a cancelled want still in the queue is skipped. Wants for blocks we do
not have stay in the ledger and are answered when the block arrives (``notify_new_blocks``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from ipfsreg.blockstore import Blockstore
from ipfsreg.cid import CID
from ipfsreg.node.bitswap.message import (
    Block,
    BlockPresence,
    Message,
    PresenceType,
    WantEntry,
    WantType,
    encoded_block_size,
)
from ipfsreg.node.bitswap.network import BitswapNetwork
from ipfsreg.node.errors import BitswapError, ProtocolViolation
from ipfsreg.node.settings import NodeSettings

logger = logging.getLogger(__name__)


@dataclass
class ServerStats:
    blocks_sent: int = 0
    block_bytes_sent: int = 0
    haves_sent: int = 0
    dont_haves_sent: int = 0
    messages_sent: int = 0


@dataclass
class _Ledger:
    wants: dict[bytes, WantEntry] = field(default_factory=dict)  # CID bytes -> entry
    queue: deque[bytes] = field(default_factory=deque)  # wants to answer, in arrival order
    queued: set[bytes] = field(default_factory=set)
    free_lanes: list[int] = field(default_factory=list)  # outgoing streams not sending right now
    blocks_sent: int = 0
    bytes_sent: int = 0


def _by_priority(entry: WantEntry) -> int:
    return -entry.priority


class BitswapServer:
    def __init__(self, blockstore: Blockstore, network: BitswapNetwork, settings: NodeSettings) -> None:
        self.blockstore = blockstore
        self.network = network
        self.settings = settings
        self.stats = ServerStats()
        self._ledgers: dict[ID, _Ledger] = {}
        self._ready: deque[ID] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        # Blocks answered as if we lacked them (the mirror's private content outside a private swarm).
        self.withhold: Callable[[CID], bool] | None = None

    # --- input -------------------------------------------------------------------------------

    def receive_wantlist(self, peer: ID, message: Message) -> None:
        """Apply a peer's wantlist changes; ProtocolViolation if its wantlist grows past the limit."""
        if not message.wantlist and not message.full:
            return
        ledger = self._ledger(peer)
        if message.full:
            ledger.wants.clear()
        fresh: list[WantEntry] = []
        for entry in message.wantlist:
            key = entry.cid.to_bytes()
            if entry.cancel:
                ledger.wants.pop(key, None)
                continue
            ledger.wants[key] = entry
            if key not in ledger.queued:
                ledger.queued.add(key)
                fresh.append(entry)
        # Highest priority first: Kubo numbers a reader's wants in the order it needs them, but
        # lists them in any order; answering the next-needed block first keeps its reader busy.
        fresh.sort(key=_by_priority)
        ledger.queue.extend(entry.cid.to_bytes() for entry in fresh)
        if len(ledger.wants) > self.settings.max_wants_per_peer:
            self.peer_disconnected(peer)
            raise ProtocolViolation(
                f"wantlist of {len(ledger.wants)} entries exceeds {self.settings.max_wants_per_peer}"
            )
        self._mark_ready(peer, ledger)

    def notify_new_blocks(self, cids: Iterable[CID]) -> None:
        """Blocks just stored: queue answers for peers that wanted them."""
        keys = [c.to_bytes() for c in cids]
        for peer, ledger in self._ledgers.items():
            changed = False
            for key in keys:
                if key in ledger.wants and key not in ledger.queued:
                    ledger.queued.add(key)
                    ledger.queue.append(key)
                    changed = True
            if changed:
                self._mark_ready(peer, ledger)

    def _ledger(self, peer: ID) -> _Ledger:
        ledger = self._ledgers.get(peer)
        if ledger is None:
            # Lane 0 carries the client's wants; answers use lanes 1..N, side by side.
            lanes = range(max(1, self.settings.server_streams_per_peer), 0, -1)
            ledger = self._ledgers[peer] = _Ledger(free_lanes=list(lanes))
        return ledger

    def peer_disconnected(self, peer: ID) -> None:
        self._ledgers.pop(peer, None)

    def wantlist_of(self, peer: ID) -> list[WantEntry]:
        ledger = self._ledgers.get(peer)
        return [] if ledger is None else list(ledger.wants.values())

    def _mark_ready(self, peer: ID, ledger: _Ledger) -> None:
        if ledger.queue and ledger.free_lanes and peer not in self._ready:
            self._ready.append(peer)
            self._lot.unpark()

    # --- workers -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.settings.server_workers)):
                nursery.start_soon(self._worker)
            task_status.started()

    async def _worker(self) -> None:
        while True:
            while not self._ready:
                await self._lot.park()
            peer = self._ready.popleft()
            ledger = self._ledgers.get(peer)
            if ledger is None or not ledger.free_lanes:
                continue
            lane = ledger.free_lanes.pop()
            try:
                message = self._next_message(peer, ledger)
                # More to answer and a free lane: another worker may build the next message meanwhile.
                self._mark_ready(peer, ledger)
                if message is not None:
                    await self._send(peer, ledger, message, lane)
            finally:
                ledger.free_lanes.append(lane)
                if self._ledgers.get(peer) is ledger:
                    self._mark_ready(peer, ledger)

    def _next_message(self, peer: ID, ledger: _Ledger) -> Message | None:
        """Answer wants from the head of the peer's queue, up to one message's worth."""
        settings = self.settings
        has_presences = self.network.supports_have(peer)
        message = Message()
        size = 0
        while ledger.queue and size < settings.target_message_size:
            key = ledger.queue[0]
            entry = ledger.wants.get(key)
            if entry is None:  # cancelled since it was queued
                ledger.queue.popleft()
                ledger.queued.discard(key)
                continue
            cid = entry.cid
            withheld = self.withhold is not None and self.withhold(cid)
            if entry.want_type == WantType.BLOCK:
                data = None if withheld else self.blockstore.get_or_none(cid)
                if data is not None and len(data) > settings.max_block_size:
                    data = None  # too big to send: as good as not having it
                if data is not None and not has_presences and cid.version != 0:
                    data = None  # 1.0.0 carries no prefix: the peer would take it for a CIDv0 block
                if data is not None:
                    block_size = encoded_block_size(cid, len(data))
                    # Fill up to the target, overshooting by at most this block, never past the limit.
                    if message.blocks and size + block_size > settings.max_message_size - 1024:
                        break
                    message.blocks.append(Block.of(cid, data))
                    size += block_size
                    del ledger.wants[key]
                elif entry.send_dont_have and has_presences:
                    message.presences.append(BlockPresence(cid, PresenceType.DONT_HAVE))
                    size += len(key) + 4
            elif not withheld and self.blockstore.has(cid):
                message.presences.append(BlockPresence(cid, PresenceType.HAVE))
                size += len(key) + 4
                del ledger.wants[key]
            elif entry.send_dont_have:
                message.presences.append(BlockPresence(cid, PresenceType.DONT_HAVE))
                size += len(key) + 4
            ledger.queue.popleft()
            ledger.queued.discard(key)
        return None if message.is_empty() else message

    async def _send(self, peer: ID, ledger: _Ledger, message: Message, lane: int) -> None:
        try:
            await self.network.send(peer, message, lane=lane)
        except BitswapError as exc:
            logger.debug("bitswap server: %s", exc)
            return
        stats = self.stats
        stats.messages_sent += 1
        for block in message.blocks:
            stats.blocks_sent += 1
            stats.block_bytes_sent += len(block.data)
            ledger.blocks_sent += 1
            ledger.bytes_sent += len(block.data)
        for presence in message.presences:
            if presence.type == PresenceType.HAVE:
                stats.haves_sent += 1
            else:
                stats.dont_haves_sent += 1
