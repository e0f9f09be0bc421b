"""Bitswap server and client behaviour between in-process ipfsreg nodes on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest
import trio
import trio.lowlevel
from libp2p.peer.id import ID

from ipfsreg.cid import CID, RAW
from ipfsreg.node.bitswap.client import THREAD_BYTES
from ipfsreg.node.bitswap.message import (
    Block,
    BlockPresence,
    Message,
    PresenceType,
    WantEntry,
    WantType,
    cancels,
)
from ipfsreg.node.errors import BitswapError, BlockFetchTimeout, BlockNotProvided, NodeError
from ipfsreg.node.node import Node
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all, wait_until
from ipfsreg.unixfs.importer import ImportOptions, import_bytes


class Probe:
    """A node whose incoming bitswap messages are recorded instead of handled."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.send_channel, self.receive_channel = trio.open_memory_channel[tuple[ID, Message]](10_000)

        async def record(peer: ID, message: Message) -> None:
            await self.send_channel.send((peer, message))

        node.network.on_message = record

    async def send(self, to: Node, message: Message) -> None:
        await self.node.network.send(to.identity.peer_id, message)

    async def next_message(self) -> Message:
        with trio.fail_after(5):
            return (await self.receive_channel.receive())[1]

    async def assert_silent_for(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            peer, message = await self.receive_channel.receive()
            raise AssertionError(f"unexpected message from {peer}: {message}")


def _raw_block(node: Node, data: bytes) -> CID:
    cid = CID.hash(data, codec=RAW, version=1)
    node.datastore.blocks.put(cid, data)
    return cid


async def _probe_of(nodes: Nodes, server: Node) -> Probe:
    probe = Probe(await nodes.start())
    await probe.node.connect(server.listen_addrs()[0])
    return probe


async def test_node_b_fetches_file_added_on_node_a_with_identical_bytes(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    data = random_bytes(3 * 1024 * 1024 + 17)
    cid = add_bytes(a, data)
    await b.connect(a.listen_addrs()[0])
    assert await read_all(b, cid) == data
    # Statistics settle just after the bytes: a block stored by the receiving thread can reach
    # the reader before the event loop has counted it, and a's send returns after b has read.
    await wait_until(lambda: b.stats().blocks_received == 14)  # 13 leaves + root
    await wait_until(lambda: b.stats().blocks_received + b.stats().duplicate_blocks == a.stats().blocks_sent)
    assert b.datastore.blocks.has(cid)


async def test_fetch_dag_makes_every_block_of_a_cidv1_raw_leaves_dag_local(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    cid = add_bytes(a, random_bytes(1_000_000, seed=3), ImportOptions(cid_version=1, raw_leaves=True))
    await b.connect(a.listen_addrs()[0])
    assert await b.fetch_dag(cid) == 5
    assert await b.fetch_dag(cid) == 0  # all local now
    assert sorted(b.datastore.blocks.iter_multihashes()) == sorted(a.datastore.blocks.iter_multihashes())


async def test_server_answers_want_have_with_have_and_dont_have_when_asked(nodes: Nodes) -> None:
    server = await nodes.start()
    present = _raw_block(server, b"present")
    absent = CID.hash(b"absent", codec=RAW, version=1)
    probe = await _probe_of(nodes, server)
    await probe.send(
        server,
        Message(
            wantlist=[
                WantEntry(present, want_type=WantType.HAVE, send_dont_have=True),
                WantEntry(absent, want_type=WantType.HAVE, send_dont_have=True),
            ]
        ),
    )
    reply = await probe.next_message()
    assert reply.presences == [
        BlockPresence(present, PresenceType.HAVE),
        BlockPresence(absent, PresenceType.DONT_HAVE),
    ]
    assert reply.blocks == []


async def test_server_answers_want_block_with_the_block_and_keeps_quiet_without_send_dont_have(
    nodes: Nodes,
) -> None:
    server = await nodes.start()
    present = _raw_block(server, b"present")
    absent = CID.hash(b"absent", codec=RAW, version=1)
    probe = await _probe_of(nodes, server)
    await probe.send(server, Message(wantlist=[WantEntry(absent), WantEntry(present)]))
    reply = await probe.next_message()
    assert reply.blocks == [Block.of(present, b"present")]
    assert reply.presences == []
    await probe.assert_silent_for(0.3)
    assert server.server.wantlist_of(probe.node.identity.peer_id) == [WantEntry(absent)]


async def test_server_sends_a_wanted_block_when_it_arrives_later(nodes: Nodes) -> None:
    server = await nodes.start()
    probe = await _probe_of(nodes, server)
    later = CID.hash(b"later", codec=RAW, version=1)
    await probe.send(server, Message(wantlist=[WantEntry(later)]))
    await probe.assert_silent_for(0.2)
    server.datastore.blocks.put(later, b"later")
    server.notify_new_blocks([later])
    assert (await probe.next_message()).blocks == [Block.of(later, b"later")]


async def test_server_honours_cancel_of_a_pending_want(nodes: Nodes) -> None:
    server = await nodes.start()
    probe = await _probe_of(nodes, server)
    later = CID.hash(b"later", codec=RAW, version=1)
    await probe.send(server, Message(wantlist=[WantEntry(later)]))
    await wait_until(lambda: server.server.wantlist_of(probe.node.identity.peer_id))
    await probe.send(server, Message(wantlist=cancels([later])))
    await wait_until(lambda: not server.server.wantlist_of(probe.node.identity.peer_id))
    server.datastore.blocks.put(later, b"later")
    server.notify_new_blocks([later])
    await probe.assert_silent_for(0.3)


async def test_full_wantlist_replaces_the_previous_one(nodes: Nodes) -> None:
    server = await nodes.start()
    probe = await _probe_of(nodes, server)
    one, two = (CID.hash(x, codec=RAW, version=1) for x in (b"one", b"two"))
    peer = probe.node.identity.peer_id
    await probe.send(server, Message(wantlist=[WantEntry(one)]))
    await probe.send(server, Message(wantlist=[WantEntry(two)], full=True))
    await wait_until(lambda: server.server.wantlist_of(peer) == [WantEntry(two)])


async def test_greedy_peer_cannot_starve_a_modest_one(nodes: Nodes) -> None:
    server = await nodes.start(server_workers=1, target_message_size=64 * 1024)
    greedy_cids = [_raw_block(server, random_bytes(64 * 1024, seed=i)) for i in range(200)]
    modest_cids = [_raw_block(server, random_bytes(64 * 1024, seed=1000 + i)) for i in range(3)]
    greedy = await _probe_of(nodes, server)
    modest = await _probe_of(nodes, server)
    await greedy.send(server, Message(wantlist=[WantEntry(c) for c in greedy_cids]))
    with trio.fail_after(5):
        while server.stats().blocks_sent == 0:
            await trio.lowlevel.checkpoint()
    await modest.send(server, Message(wantlist=[WantEntry(c) for c in modest_cids]))
    received = 0
    while received < 3:
        received += len((await modest.next_message()).blocks)
    # Round-robin: the modest peer was served within a few turns, long before the greedy one finished.
    assert server.stats().blocks_sent < 3 + 3 * 3 + 10 < len(greedy_cids)


async def test_message_size_stays_under_target_plus_one_block(nodes: Nodes) -> None:
    server = await nodes.start(target_message_size=300 * 1024)
    cids = [_raw_block(server, random_bytes(200 * 1024, seed=i)) for i in range(4)]
    probe = await _probe_of(nodes, server)
    await probe.send(server, Message(wantlist=[WantEntry(c) for c in cids]))
    sizes = []
    while sum(sizes) < 4:
        sizes.append(len((await probe.next_message()).blocks))
    assert sizes == [2, 2]


async def test_fetch_of_a_block_no_peer_has_fails_naming_the_cid_without_waiting_for_the_timeout(
    nodes: Nodes,
) -> None:
    a = await nodes.start()
    b = await nodes.start(fetch_timeout=60.0, want_timeout=30.0)
    await b.connect(a.listen_addrs()[0])
    missing = CID.hash(b"nobody has this", codec=RAW, version=1)
    # The connected peer's DONT_HAVE and the empty provider lookup decide it, not the timeouts.
    with trio.fail_after(20), pytest.raises(BlockNotProvided, match=str(missing)) as caught:
        await b.client.fetch(missing)
    assert "none of the 1 connected peers has it" in str(caught.value)
    assert caught.value.cid == missing
    assert b.client.wanted() == []
    assert b.stats().not_provided == 1
    assert b.stats().fetch_timeouts == 0


async def test_fetch_with_no_connected_peer_fails_saying_so(nodes: Nodes) -> None:
    lonely = await nodes.start(fetch_timeout=0.5)
    missing = CID.hash(b"x", codec=RAW, version=1)
    with pytest.raises(BlockFetchTimeout, match="no connected peers"):
        async with lonely.block_source() as source:
            await source.get(missing)


async def test_fetch_moves_on_from_a_peer_that_says_dont_have(nodes: Nodes) -> None:
    empty = await nodes.start()
    holder = await nodes.start()
    fetcher = await nodes.start(want_timeout=30.0, fetch_timeout=30.0)
    data = random_bytes(600_000, seed=9)
    cid = add_bytes(holder, data)
    await fetcher.connect(empty.listen_addrs()[0])
    await fetcher.connect(holder.listen_addrs()[0])
    with trio.fail_after(10):  # far below want_timeout: DONT_HAVE, not a timeout, moved it on
        assert await read_all(fetcher, cid) == data
    assert empty.stats().blocks_sent == 0


async def test_peer_sending_an_unrequested_block_is_dropped_and_banned(nodes: Nodes) -> None:
    victim = await nodes.start()
    attacker = await _probe_of(nodes, victim)
    junk = b"nobody asked for this"
    await attacker.send(victim, Message(blocks=[Block.of(CID.hash(junk, codec=RAW, version=1), junk)]))
    await wait_until(lambda: victim.stats().peers_penalised != 0)
    assert not victim.datastore.blocks.has(CID.hash(junk, codec=RAW, version=1))
    assert victim.client.is_banned(attacker.node.identity.peer_id)
    await wait_until(lambda: not victim.network.is_connected(attacker.node.identity.peer_id))


async def test_large_unrequested_block_is_not_stored_and_its_sender_is_banned(nodes: Nodes) -> None:
    # Big messages are hashed and stored in a worker thread: only wanted blocks may be stored there.
    victim = await nodes.start()
    attacker = await _probe_of(nodes, victim)
    junk = random_bytes(THREAD_BYTES + 1, seed=77)
    cid = CID.hash(junk, codec=RAW, version=1)
    await attacker.send(victim, Message(blocks=[Block.of(cid, junk)]))
    await wait_until(lambda: victim.stats().peers_penalised != 0)
    assert not victim.datastore.blocks.has(cid)
    assert victim.client.is_banned(attacker.node.identity.peer_id)


async def test_a_readers_wants_carry_decreasing_priorities_in_reading_order(nodes: Nodes) -> None:
    # Peers (Kubo, and our server) answer higher priorities first: the next block the reader
    # needs must have the highest priority, whatever order trio starts the fetch tasks in.
    holder = await nodes.start()
    fetcher = await nodes.start()
    options = ImportOptions(chunk_size=1024, cid_version=1)
    data = random_bytes(40 * 1024, seed=5)
    root = add_bytes(holder, data, options)
    blocks, _ = import_bytes(data, options)
    leaves = [block.cid for block in blocks if block.cid != root]
    seen: dict[CID, int] = {}
    receive = holder.server.receive_wantlist

    def recording(peer: ID, message: Message) -> None:
        for entry in message.wantlist:
            if not entry.cancel:
                seen.setdefault(entry.cid, entry.priority)
        receive(peer, message)

    holder.server.receive_wantlist = recording  # type: ignore[method-assign]
    await fetcher.connect(holder.listen_addrs()[0])
    assert await read_all(fetcher, root) == data
    priorities = [seen[cid] for cid in leaves]
    assert priorities == sorted(priorities, reverse=True)
    assert len(set(priorities)) == len(priorities)


async def test_two_readers_of_the_same_block_share_one_fetch(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    cid = _raw_block(a, b"shared")
    await b.connect(a.listen_addrs()[0])
    results: list[bytes] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lambda: _append(results, b.client.fetch(cid)))
    assert results == [b"shared"] * 3
    assert b.stats().blocks_received == 1


async def _append(results: list[bytes], fetch: object) -> None:
    results.append(await fetch)  # type: ignore[misc]


async def test_prefetch_outside_async_with_is_refused(nodes: Nodes) -> None:
    node = await nodes.start()
    with pytest.raises(NodeError, match="async with"):
        node.block_source().prefetch([CID.hash(b"x", codec=RAW, version=1)])


async def test_connect_to_a_bad_multiaddr_raises_node_error(nodes: Nodes) -> None:
    node = await nodes.start()
    with pytest.raises(NodeError, match="does not name a peer"):
        await node.connect("/ip4/127.0.0.1/tcp/1")
    with pytest.raises(NodeError, match="invalid multiaddr"):
        await node.connect("not a multiaddr")
    with pytest.raises(NodeError, match=r"cannot connect|timed out"):
        await node.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{(await nodes.start()).peer_id}")


async def test_peers_lists_connected_peers_and_stats_count_them(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    assert await b.connect(a.listen_addrs()[0]) == a.peer_id
    assert [p.peer_id for p in b.peers()] == [a.peer_id]
    assert b.stats().connected_peers == 1
    assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.listen_addrs())


async def test_identity_cid_is_answered_inline_without_peers(nodes: Nodes) -> None:
    lonely = await nodes.start()
    inline = CID.v1(RAW, b"\x00\x05hello")
    assert await lonely.client.fetch(inline) == b"hello"


async def test_cid_with_an_unsupported_hash_fails_at_once_instead_of_asking_peers(nodes: Nodes) -> None:
    lonely = await nodes.start()
    sha3 = CID.v1(RAW, b"\x16\x20" + bytes(32))  # sha3-256, which ipfsreg does not hash
    with trio.fail_after(1), pytest.raises(BitswapError, match="unsupported hash function 0x16"):
        await lonely.client.fetch(sha3)


async def test_client_cancels_its_want_at_other_peers_once_the_block_arrives(nodes: Nodes) -> None:
    holder = await nodes.start()
    cid = _raw_block(holder, b"wanted")
    silent = Probe(await nodes.start())  # records the wants it gets, never answers
    fetcher = await nodes.start()
    await fetcher.connect(silent.node.listen_addrs()[0])
    await fetcher.connect(holder.listen_addrs()[0])
    assert await fetcher.client.fetch(cid) == b"wanted"
    asked = await silent.next_message()
    assert [(e.cid, e.cancel, e.want_type, e.send_dont_have) for e in asked.wantlist] == [
        (cid, False, WantType.HAVE, True)
    ]
    cancelled = await silent.next_message()
    assert cancelled.wantlist == cancels([cid])


async def test_big_messages_arriving_while_a_store_thread_is_busy_are_stored_in_one_batch(
    nodes: Nodes,
) -> None:
    # Kubo sends every block in a message (and on a stream) of its own: each message may not cost
    # a thread hand-off and a pack write of its own.
    fetcher = await nodes.start()
    sender = await _probe_of(nodes, fetcher)
    blocks = [random_bytes(THREAD_BYTES, seed=900 + n) for n in range(5)]
    cids = [CID.hash(data, codec=RAW, version=1) for data in blocks]
    batches: list[int] = []
    first_stored = threading.Event()
    release = threading.Event()
    put_many = fetcher.datastore.blocks.put_many

    def gated_put_many(items: Iterable[tuple[CID, bytes]], **options: bool) -> None:
        stored = list(items)
        batches.append(len(stored))
        if len(batches) == 1:
            first_stored.set()
            release.wait(10)
        put_many(stored, **options)

    fetcher.datastore.blocks.put_many = gated_put_many  # type: ignore[method-assign,assignment]
    results: dict[CID, bytes] = {}

    async def fetch(cid: CID) -> None:
        results[cid] = await fetcher.client.fetch(cid)

    async with trio.open_nursery() as nursery:
        for cid in cids:
            nursery.start_soon(fetch, cid)
        asked: set[CID] = set()
        while len(asked) < len(cids):  # want-have first, then want-block from the peer that has it
            for entry in (await sender.next_message()).wantlist:
                if not entry.cancel:
                    asked.add(entry.cid)
        await sender.send(fetcher, Message(blocks=[Block.of(cids[0], blocks[0])]))
        await trio.to_thread.run_sync(first_stored.wait, 10)
        arrived = fetcher.network.stats.messages_in
        for lane, (cid, data) in enumerate(zip(cids[1:], blocks[1:], strict=True), start=1):
            await sender.node.network.send(
                fetcher.identity.peer_id, Message(blocks=[Block.of(cid, data)]), lane=lane
            )
        await wait_until(lambda: fetcher.network.stats.messages_in == arrived + len(cids) - 1)
        release.set()
    assert batches == [1, len(cids) - 1]
    assert results == dict(zip(cids, blocks, strict=True))
    assert all(fetcher.datastore.blocks.get(cid) == data for cid, data in zip(cids, blocks, strict=True))


async def _wants_of(probe: Probe, count: int) -> list[WantEntry]:
    """The next ``count`` want entries the probe receives (across messages)."""
    entries: list[WantEntry] = []
    while len(entries) < count:
        entries.extend((await probe.next_message()).wantlist)
    return entries


async def test_a_routed_peer_still_delivering_other_blocks_is_waited_for_past_the_want_timeout(
    nodes: Nodes,
) -> None:
    # A share's reader serving many wants over a saturated link answers each late but keeps sending
    # blocks: it is busy, not stalled, and the want stays with it (no cancel, no re-ask, no duplicate).
    fetcher = await nodes.start(want_timeout=0.3, fetch_timeout=30.0)
    peer = Probe(await nodes.start())
    await fetcher.connect(peer.node.listen_addrs()[0])
    data = [random_bytes(1000, seed=700 + n) for n in range(9)]
    cids = [CID.hash(chunk, codec=RAW, version=1) for chunk in data]
    results: dict[CID, bytes] = {}
    session = fetcher.client.new_session()
    session.route = lambda wanted: peer.node.identity.peer_id

    async def fetch(cid: CID) -> None:
        results[cid] = await session.fetch(cid)

    async with trio.open_nursery() as nursery:
        for cid in cids:
            nursery.start_soon(fetch, cid)
        wanted = await _wants_of(peer, len(cids))
        assert {(entry.cid, entry.want_type) for entry in wanted} == {(cid, WantType.BLOCK) for cid in cids}
        # One block every 0.1 s: the last one comes 0.9 s after it was asked for, 3 want timeouts.
        for cid, chunk in zip(cids, data, strict=True):
            await trio.sleep(0.1)
            await peer.send(fetcher, Message(blocks=[Block.of(cid, chunk)]))
        await peer.assert_silent_for(0.2)  # no cancel, no want asked again
    assert results == dict(zip(cids, data, strict=True))
    assert fetcher.stats().duplicate_blocks == 0
    assert fetcher.stats().fetch_timeouts == 0
    assert session.unrouted == set()


async def test_a_peer_that_sends_nothing_for_the_want_timeout_is_cancelled_and_left(nodes: Nodes) -> None:
    fetcher = await nodes.start(want_timeout=0.3, fetch_timeout=30.0)
    peer = Probe(await nodes.start())
    await fetcher.connect(peer.node.listen_addrs()[0])
    cid = CID.hash(b"never sent", codec=RAW, version=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetcher.client.fetch, cid)
        await _wants_of(peer, 1)
        await peer.send(fetcher, Message(presences=[BlockPresence(cid, PresenceType.HAVE)]))
        (block_want,) = await _wants_of(peer, 1)
        assert block_want.want_type == WantType.BLOCK
        began = trio.current_time()
        assert await _wants_of(peer, 1) == cancels([cid])
        assert trio.current_time() - began >= 0.25
        nursery.cancel_scope.cancel()


async def test_a_routed_want_asks_only_the_routed_peer_and_takes_the_block_when_it_has_it(
    nodes: Nodes,
) -> None:
    fetcher = await nodes.start(want_timeout=30.0, fetch_timeout=30.0)
    routed = Probe(await nodes.start())
    other = Probe(await nodes.start())
    for probe in (routed, other):
        await fetcher.connect(probe.node.listen_addrs()[0])
    cid = CID.hash(b"shared out", codec=RAW, version=1)
    session = fetcher.client.new_session()
    session.route = lambda wanted: routed.node.identity.peer_id
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.fetch, cid)
        (entry,) = await _wants_of(routed, 1)
        # want-block without DONT_HAVE: the routed peer sends it once it has it, nobody else is asked.
        assert (entry.cid, entry.want_type, entry.send_dont_have, entry.cancel) == (
            cid,
            WantType.BLOCK,
            False,
            False,
        )
        await other.assert_silent_for(0.3)
        await routed.send(fetcher, Message(blocks=[Block.of(cid, b"shared out")]))
    assert fetcher.datastore.blocks.get(cid) == b"shared out"


async def test_a_routed_peer_that_lets_a_want_wait_is_cancelled_and_asked_like_any_peer_after(
    nodes: Nodes,
) -> None:
    fetcher = await nodes.start(want_timeout=0.3, fetch_timeout=30.0)
    routed = Probe(await nodes.start())
    holder = await nodes.start()
    await fetcher.connect(routed.node.listen_addrs()[0])
    await fetcher.connect(holder.listen_addrs()[0])
    first, second = (_raw_block(holder, data) for data in (b"first", b"second"))
    session = fetcher.client.new_session()
    session.route = lambda wanted: routed.node.identity.peer_id
    with trio.fail_after(10):
        assert await session.fetch(first) == b"first"  # from the holder, after the routed peer's silence
    entries = await _wants_of(routed, 3)
    assert [(e.cid, e.want_type, e.cancel) for e in entries[:2]] == [
        (first, WantType.BLOCK, False),
        (first, WantType.BLOCK, True),
    ]
    assert session.unrouted == {routed.node.identity.peer_id}
    with trio.fail_after(0.25):  # not routed again: asked like any peer, no want-timeout wait
        assert await session.fetch(second) == b"second"


async def test_a_holder_too_busy_to_answer_in_time_but_delivering_blocks_does_not_fail_the_fetch_fast(
    nodes: Nodes,
) -> None:
    # The only holder serves a whole fleet: a want waits in its queue past want_timeout while its
    # other blocks keep arriving. That silence is not a "no": no BlockNotProvided, the block comes.
    fetcher = await nodes.start(want_timeout=0.3, fetch_timeout=30.0)
    peer = Probe(await nodes.start())
    await fetcher.connect(peer.node.listen_addrs()[0])
    data = [random_bytes(1000, seed=800 + n) for n in range(12)]
    cids = [CID.hash(chunk, codec=RAW, version=1) for chunk in data]
    results: dict[CID, bytes] = {}

    async def fetch(cid: CID) -> None:
        results[cid] = await fetcher.client.fetch(cid)

    async def answer_haves() -> None:
        while True:
            message = await peer.receive_channel.receive()
            haves = [e.cid for e in message[1].wantlist if e.want_type == WantType.HAVE and not e.cancel]
            if haves:
                await peer.send(
                    fetcher, Message(presences=[BlockPresence(c, PresenceType.HAVE) for c in haves])
                )

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_haves)
            async with trio.open_nursery() as fetches:
                for cid in cids:
                    fetches.start_soon(fetch, cid)
                # One block every 0.1 s, the last 1.2 s after the first want: four want timeouts.
                for cid, chunk in zip(cids, data, strict=True):
                    await trio.sleep(0.1)
                    await peer.send(fetcher, Message(blocks=[Block.of(cid, chunk)]))
            nursery.cancel_scope.cancel()
    assert results == dict(zip(cids, data, strict=True))
    assert fetcher.stats().not_provided == 0
