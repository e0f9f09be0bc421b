"""Hostile DHT peers (written here) beside honest ones, against an ipfsreg node on a loopback LAN DHT.

Each hostile peer is a real libp2p host serving /ipfs/lan/kad/1.0.0 on loopback: one names closer
peers that do not exist (some refuse connections, some accept and never speak), one answers
GET_PROVIDERS with providers that never answer, one floods ADD_PROVIDER, one sends malformed
messages. Lookups still end within their bound and find the honest provider, the provider store
stays within its limits, the node drops the peer that sent garbage, and it keeps serving.
"""

from __future__ import annotations

import enum
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from multiaddr import Multiaddr

from ipfsreg.cid import CID, encode_varint
from ipfsreg.node.errors import BlockFetchTimeout
from ipfsreg.node.host import build_host, host_listen_addrs
from ipfsreg.node.identity import Identity
from ipfsreg.node.node import Node
from ipfsreg.node.routing.message import (
    PROTOCOL_LAN,
    FrameReader,
    Message,
    MessageType,
    PeerEntry,
    decode_message,
    encode_frame,
)
from ipfsreg.node.testing import LOOPBACK_ROUTING, Nodes, add_bytes, random_bytes, read_all, running_nodes


def _ip4_tcp(port: int) -> bytes:
    return b"\x04\x7f\x00\x00\x01\x06" + port.to_bytes(2, "big")


def _fake_peer_id() -> bytes:
    return b"\x12\x20" + os.urandom(32)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there now: connections are refused


class Tarpit:
    """A TCP listener that accepts and never says a word (a peer that never answers)."""

    def __init__(self) -> None:
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        held: list[trio.SocketStream] = []

        async def hold(stream: trio.SocketStream) -> None:
            held.append(stream)
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, hold, listeners)
            task_status.started()


class Behaviour(enum.Enum):
    BOGUS_CLOSER = "names closer peers that do not exist"
    SILENT_PROVIDERS = "names providers that never answer"
    FLOOD = "floods ADD_PROVIDER"
    MALFORMED = "answers with malformed messages after passing the lookup check"


class HostileDHTPeer:
    def __init__(self, behaviour: Behaviour, tarpit: Tarpit) -> None:
        self.behaviour = behaviour
        self.tarpit = tarpit
        self.identity = Identity.generate()
        self.host = build_host(self.identity, ["/ip4/127.0.0.1/tcp/0"])
        self.requests = 0
        self.host.set_stream_handler(TProtocol(PROTOCOL_LAN), self._handle)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            task_status.started()
            await trio.sleep_forever()

    @property
    def addr(self) -> str:
        return host_listen_addrs(self.host)[0]

    def _bogus_peers(self, count: int) -> list[PeerEntry]:
        peers = []
        for i in range(count):
            port = self.tarpit.port if i % 2 else _closed_port()
            peers.append(PeerEntry(_fake_peer_id(), (_ip4_tcp(port),)))
        return peers

    def _answer(self, request: Message) -> bytes:
        self.requests += 1
        me = PeerEntry(self.identity.peer_id.to_bytes(), (Multiaddr(self.addr.split("/p2p/")[0]).to_bytes(),))
        if request.key == self.identity.peer_id.to_bytes():
            return encode_frame(Message(request.type, closer_peers=[me]))  # pass Kubo's lookup check
        if self.behaviour is Behaviour.MALFORMED:
            garbage = [b"\x08\x63", b"\x12\xff\xff\x03abc", encode_varint(100) + b"\x0a"]
            return encode_varint(len(garbage[self.requests % 2])) + garbage[self.requests % 2]
        if self.behaviour is Behaviour.SILENT_PROVIDERS and request.type is MessageType.GET_PROVIDERS:
            liars = [PeerEntry(_fake_peer_id(), (_ip4_tcp(self.tarpit.port),)) for _ in range(30)]
            return encode_frame(Message(request.type, key=request.key, provider_peers=liars))
        return encode_frame(Message(request.type, key=request.key, closer_peers=self._bogus_peers(40)))

    async def _handle(self, stream: INetStream) -> None:
        reader = FrameReader()
        try:
            while True:
                try:
                    chunk = await stream.read(65536)
                except StreamEOF:
                    break
                if not chunk:
                    break
                reader.feed(chunk)
                for body in reader.frames():
                    request = decode_message(body)
                    if request.type is not MessageType.ADD_PROVIDER:
                        await stream.write(self._answer(request))
            await stream.close()
        except Exception:
            await stream.reset()

    async def flood(self, victim: Node, count: int) -> None:
        """ADD_PROVIDER for ``count`` random keys on one stream (each names this peer, as it must)."""
        peer = victim.identity.peer_id
        await self.host.connect(_info(victim))
        stream = await self.host.new_stream(peer, [TProtocol(PROTOCOL_LAN)])
        me = PeerEntry(self.identity.peer_id.to_bytes(), (Multiaddr(self.addr.split("/p2p/")[0]).to_bytes(),))
        frames = [
            encode_frame(
                Message(MessageType.ADD_PROVIDER, key=CID.hash(os.urandom(16)).multihash, provider_peers=[me])
            )
            for _ in range(count)
        ]
        for start in range(0, count, 500):
            await stream.write(b"".join(frames[start : start + 500]))
        await stream.close()


def _info(node: Node) -> PeerInfo:
    return info_from_p2p_addr(Multiaddr(node.listen_addrs()[0]))


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path / "nodes") as started:
        yield started


async def _hostile(nodes: Nodes, behaviour: Behaviour) -> HostileDHTPeer:
    tarpit = Tarpit()
    await nodes.nursery.start(tarpit.run)
    peer = HostileDHTPeer(behaviour, tarpit)
    await nodes.nursery.start(peer.run)
    return peer


async def _until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - the node's tasks change what is checked
            await trio.sleep(0.05)


async def _settle_table(node: Node, *peers: Node | HostileDHTPeer) -> None:
    """Wait until each of ``peers`` is in the node's table, or was dropped from it (garbage)."""
    dht = node.routing.dhts[0]
    ids = [p.identity.peer_id for p in peers]
    with trio.fail_after(20):
        while not all(p.to_bytes() in dht.table or dht.is_banned(p) for p in ids):  # noqa: ASYNC110
            await trio.sleep(0.05)


ROUTING = replace(LOOPBACK_ROUTING, lookup_timeout=3.0, request_timeout=1.0, dial_timeout=1.0)


async def _network(nodes: Nodes, *hostile: HostileDHTPeer) -> tuple[Node, Node]:
    """An honest provider and the victim, which also knows the hostile peers."""
    honest = await nodes.start(routing=ROUTING)
    victim = await nodes.start(
        routing=replace(ROUTING, bootstrap=[honest.listen_addrs()[0], *(p.addr for p in hostile)]),
        fetch_timeout=6.0,
    )
    await _settle_table(victim, honest, *hostile)
    return honest, victim


@pytest.mark.parametrize(
    "behaviour", [Behaviour.BOGUS_CLOSER, Behaviour.SILENT_PROVIDERS, Behaviour.MALFORMED]
)
async def test_lookups_end_within_their_bound_and_find_the_honest_provider(
    nodes: Nodes, behaviour: Behaviour
) -> None:
    hostile = [await _hostile(nodes, behaviour) for _ in range(3)]
    honest, victim = await _network(nodes, *hostile)
    data = random_bytes(400_000, seed=31)
    cid = add_bytes(honest, data)
    await honest.routing.provide_now(cid)
    # The record the victim got from that provide would answer locally: find it through the DHT.
    await _until(lambda: bool(victim.routing.providers.get(cid.multihash)))
    victim.routing.providers.remove(cid.multihash, honest.identity.peer_id.to_bytes())
    await victim.host.disconnect(honest.identity.peer_id)
    with trio.fail_after(ROUTING.lookup_timeout + 5):
        found = [p.peer_id async for p in victim.find_providers(cid)]
    assert honest.peer_id in found
    with trio.fail_after(30):
        assert await read_all(victim, cid) == data
    assert sum(p.requests for p in hostile) > 0  # they were asked
    # The node is still up and serving: another node finds the honest provider through it.
    other = await nodes.start(routing=replace(ROUTING, bootstrap=[victim.listen_addrs()[0]]))
    with trio.fail_after(ROUTING.lookup_timeout + 5):
        assert honest.peer_id in [p.peer_id async for p in other.find_providers(cid)]


async def test_a_peer_answering_garbage_is_dropped_from_the_table_and_disconnected(nodes: Nodes) -> None:
    liar = await _hostile(nodes, Behaviour.MALFORMED)
    _honest, victim = await _network(nodes, liar)  # it passed the lookup check on connecting
    dht = victim.routing.dhts[0]
    with trio.fail_after(ROUTING.lookup_timeout + 5):
        assert [p async for p in victim.find_providers(CID.hash(b"anything"))] == []
    assert liar.identity.peer_id.to_bytes() not in dht.table
    assert dht.is_banned(liar.identity.peer_id)
    assert dht.stats.violations >= 1
    assert not victim.network.is_connected(liar.identity.peer_id)


async def test_a_fetch_whose_only_providers_never_answer_fails_within_its_bound(nodes: Nodes) -> None:
    hostile = [await _hostile(nodes, Behaviour.SILENT_PROVIDERS) for _ in range(2)]
    _honest, victim = await _network(nodes, *hostile)
    missing = CID.hash(b"only liars claim to have this")
    with trio.fail_after(60), pytest.raises(BlockFetchTimeout, match=str(missing)):
        await read_all(victim, missing)


async def test_an_add_provider_flood_is_bounded_and_the_node_keeps_answering(nodes: Nodes) -> None:
    honest = await nodes.start(routing=ROUTING)
    victim = await nodes.start(
        routing=replace(
            ROUTING,
            bootstrap=[honest.listen_addrs()[0]],
            add_provider_burst=500,
            add_provider_rate=50.0,
            max_provider_records=800,
        )
    )
    flooders = [await _hostile(nodes, Behaviour.FLOOD) for _ in range(3)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for flooder in flooders:
                nursery.start_soon(flooder.flood, victim, 5000)
    dht = victim.routing.dhts[0]
    stats = dht.stats
    await _until(
        lambda: stats.providers_stored + stats.add_provider_throttled + stats.providers_refused >= 15_000
    )
    assert len(victim.routing.providers) <= 800
    assert dht.stats.add_provider_throttled > 0 and dht.stats.providers_refused > 0
    # Still answering: an honest provide and lookup through the flooded node work.
    cid = CID.hash(hashlib.sha256(b"after the flood").digest())
    assert await honest.routing.provide_now(cid) >= 1
    await _until(lambda: bool(victim.routing.providers.get(cid.multihash)))


async def test_malformed_inbound_streams_are_reset_and_their_sender_dropped(nodes: Nodes) -> None:
    victim = await nodes.start(routing=ROUTING)
    attacker = await _hostile(nodes, Behaviour.MALFORMED)
    await attacker.host.connect(_info(victim))
    for garbage in (b"\x05\x08\x63\x00\x00\x00", encode_varint(8 * 1024 * 1024)):
        stream = await attacker.host.new_stream(victim.identity.peer_id, [TProtocol(PROTOCOL_LAN)])
        await stream.write(garbage)
        with trio.move_on_after(5):
            try:
                while await stream.read(1024):
                    pass
            except Exception:
                pass  # reset by the victim
        if victim.routing.dhts[0].is_banned(attacker.identity.peer_id):
            break
        await attacker.host.connect(_info(victim))
    dht = victim.routing.dhts[0]
    assert dht.is_banned(attacker.identity.peer_id)
    assert dht.stats.violations >= 1
    with trio.fail_after(5):
        assert [p async for p in victim.find_providers(CID.hash(b"x"))] == []  # still up
