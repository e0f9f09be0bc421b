"""Hostile bitswap peers (written here) against an ipfsreg node that also has an honest peer.

Each hostile peer is a real libp2p host speaking bitswap on loopback: one answers wants with wrong
bytes, one sends blocks nobody asked for, one sends a message over 4 MiB, one never answers, one
claims to have everything and never delivers. The fetch completes from the honest peer (or fails
with BlockFetchTimeout naming the CID when no honest peer exists); the node stays up and serves.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ipfsreg.cid import CID, RAW, encode_varint
from ipfsreg.node.bitswap.message import (
    PROTOCOLS,
    Block,
    BlockPresence,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    WantType,
    decode_message,
    encode_frame,
    encode_message,
)
from ipfsreg.node.errors import BlockFetchTimeout
from ipfsreg.node.host import build_host, host_listen_addrs
from ipfsreg.node.identity import Identity
from ipfsreg.node.node import Node
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all, running_nodes, wait_until

FILE_SIZE = 2_000_000


class Behaviour(enum.Enum):
    WRONG_BYTES = "answers want-block with other bytes under the wanted CID's prefix"
    UNREQUESTED = "sends a block nobody asked for"
    OVERSIZED = "sends a message over 4 MiB"
    SILENT = "never answers"
    LIAR = "answers HAVE to everything, never sends a block"


class HostilePeer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.identity = Identity.generate()
        self.host = build_host(self.identity, ["/ip4/127.0.0.1/tcp/0"])
        self.wants_seen = 0
        for protocol in PROTOCOLS:
            self.host.set_stream_handler(TProtocol(protocol), self._handle)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]), trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def addr(self) -> str:
        return host_listen_addrs(self.host)[0]

    async def _handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        decoder = FrameDecoder()
        try:
            while True:
                decoder.feed(await stream.read(1 << 16))
                for body in decoder.frames():
                    message = decode_message(body)
                    wants = [e for e in message.wantlist if not e.cancel]
                    self.wants_seen += len(wants)
                    if wants:
                        self._nursery.start_soon(self._answer, peer, wants)
        except (StreamEOF, Exception):
            return

    async def _answer(self, peer: ID, wants: list[WantEntry]) -> None:
        reply = Message()
        raw: bytes | None = None
        if self.behaviour is Behaviour.SILENT:
            return
        if self.behaviour is Behaviour.LIAR:
            reply.presences = [BlockPresence(e.cid, PresenceType.HAVE) for e in wants]
        elif self.behaviour is Behaviour.WRONG_BYTES:
            for e in wants:
                if e.want_type == WantType.HAVE:
                    reply.presences.append(BlockPresence(e.cid, PresenceType.HAVE))
                else:
                    reply.blocks.append(Block(e.cid.prefix(), b"certainly not the block you wanted"))
        elif self.behaviour is Behaviour.UNREQUESTED:
            junk = random_bytes(1000, seed=self.wants_seen)
            reply.blocks.append(Block.of(CID.hash(junk, codec=RAW, version=1), junk))
        elif self.behaviour is Behaviour.OVERSIZED:
            big = random_bytes(1024, seed=1) * (4 * 1024 + 1)  # 4 MiB + 1 KiB block
            body = encode_message(Message(blocks=[Block.of(CID.hash(big, codec=RAW, version=1), big)]))
            raw = encode_varint(len(body)) + body
        try:
            stream = await self.host.new_stream(peer, [TProtocol(p) for p in PROTOCOLS])
            await stream.write(raw if raw is not None else encode_frame(reply))
            await stream.close()
        except Exception:
            return  # the victim reset the stream or dropped us: that is the point


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path) as started:
        yield started


async def _start_hostile(nodes: Nodes, behaviour: Behaviour) -> HostilePeer:
    hostile = HostilePeer(behaviour)
    await nodes.nursery.start(hostile.run)
    return hostile


async def _assert_still_serving(nodes: Nodes, victim: Node, cid: CID, data: bytes) -> None:
    later = await nodes.start()
    await later.connect(victim.listen_addrs()[0])
    assert await read_all(later, cid) == data


@pytest.mark.parametrize("behaviour", list(Behaviour), ids=[b.name.lower() for b in Behaviour])
async def test_fetch_completes_from_the_honest_peer_despite_a_hostile_one(
    nodes: Nodes, behaviour: Behaviour
) -> None:
    honest = await nodes.start()
    data = random_bytes(FILE_SIZE, seed=31)
    cid = add_bytes(honest, data)
    hostile = await _start_hostile(nodes, behaviour)
    victim = await nodes.start(want_timeout=1.0, fetch_timeout=20.0)
    await victim.connect(hostile.addr)  # the hostile peer first: it gets asked too
    await victim.connect(honest.listen_addrs()[0])
    with trio.fail_after(30):
        assert await read_all(victim, cid) == data
    if behaviour in (Behaviour.WRONG_BYTES, Behaviour.UNREQUESTED, Behaviour.OVERSIZED):
        await wait_until(lambda: victim.stats().peers_penalised == 1)
        assert victim.client.is_banned(hostile.identity.peer_id)
        await wait_until(lambda: not victim.network.is_connected(hostile.identity.peer_id))
    assert hostile.wants_seen > 0
    assert victim.datastore.blocks.count == 9  # 8 leaves + root, nothing from the hostile peer
    await _assert_still_serving(nodes, victim, cid, data)


@pytest.mark.parametrize("behaviour", list(Behaviour), ids=[b.name.lower() for b in Behaviour])
async def test_fetch_from_only_a_hostile_peer_fails_naming_the_cid_and_node_stays_up(
    nodes: Nodes, behaviour: Behaviour
) -> None:
    victim = await nodes.start(want_timeout=0.5, fetch_timeout=2.0)
    hostile = await _start_hostile(nodes, behaviour)
    await victim.connect(hostile.addr)
    wanted = CID.hash(b"only the hostile peer is asked for this", codec=RAW, version=1)
    with trio.fail_after(10), pytest.raises(BlockFetchTimeout, match=str(wanted)):
        async with victim.block_source() as source:
            await source.get(wanted)
    assert not victim.datastore.blocks.has(wanted)
    served = add_bytes(victim, b"still serving")
    await _assert_still_serving(nodes, victim, served, b"still serving")
