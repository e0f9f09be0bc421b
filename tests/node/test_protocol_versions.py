"""Older bitswap versions (1.0.0, 1.1.0) and the block/message size limits, between in-process nodes."""

from __future__ import annotations

import pytest
import trio
from libp2p.custom_types import TProtocol

from ipfsreg.cid import CID, RAW
from ipfsreg.node.bitswap.message import (
    PROTOCOL_1_0_0,
    PROTOCOL_1_1_0,
    PROTOCOL_1_2_0,
    PROTOCOLS,
    Block,
    Message,
    WantEntry,
)
from ipfsreg.node.errors import BlockFetchTimeout
from ipfsreg.node.node import Node
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all, wait_until


def _speak_only(node: Node, protocol: str) -> None:
    for other in PROTOCOLS:
        if other != protocol:
            node.host.remove_stream_handler(TProtocol(other))


@pytest.mark.parametrize("protocol", [PROTOCOL_1_0_0, PROTOCOL_1_1_0, PROTOCOL_1_2_0])
async def test_node_fetches_from_a_peer_that_speaks_only_one_version(nodes: Nodes, protocol: str) -> None:
    old = await nodes.start()
    _speak_only(old, protocol)
    data = random_bytes(1_000_000, seed=5)
    cid = add_bytes(old, data)  # CIDv0: what 1.0.0 (no prefixes) can carry
    fetcher = await nodes.start(want_timeout=30.0)
    await fetcher.connect(old.listen_addrs()[0])
    assert await read_all(fetcher, cid) == data
    assert fetcher.network.protocol_of(old.identity.peer_id) == protocol


async def test_two_mib_block_travels_and_a_bigger_one_is_not_served(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start(fetch_timeout=1.0, want_timeout=0.3)
    biggest = random_bytes(2 * 1024 * 1024, seed=1)
    too_big = random_bytes(2 * 1024 * 1024 + 1, seed=2)
    ok_cid, big_cid = CID.hash(biggest, codec=RAW, version=1), CID.hash(too_big, codec=RAW, version=1)
    a.datastore.blocks.put(ok_cid, biggest)
    a.datastore.blocks.put(big_cid, too_big)
    await b.connect(a.listen_addrs()[0])
    assert await b.client.fetch(ok_cid) == biggest
    with pytest.raises(BlockFetchTimeout, match=str(big_cid)):
        await b.client.fetch(big_cid)


async def test_messages_stay_under_the_message_limit_with_large_blocks(nodes: Nodes) -> None:
    a = await nodes.start(target_message_size=8 * 1024 * 1024)  # a target above the limit
    b = await nodes.start()
    blocks = [random_bytes(1_500_000, seed=i) for i in range(4)]
    cids = [CID.hash(x, codec=RAW, version=1) for x in blocks]
    for cid, x in zip(cids, blocks, strict=True):
        a.datastore.blocks.put(cid, x)
    await b.connect(a.listen_addrs()[0])
    async with b.block_source() as source:
        source.prefetch(cids)
        assert [await source.get(c) for c in cids] == blocks
    assert b.stats().protocol_violations == 0
    assert a.server.stats.messages_sent >= 2  # 6 MB of blocks cannot fit one 4 MiB message


async def test_peer_without_bitswap_is_skipped_after_refusing_a_stream(nodes: Nodes) -> None:
    mute = await nodes.start()
    for protocol in PROTOCOLS:
        mute.host.remove_stream_handler(TProtocol(protocol))
    holder = await nodes.start()
    cid = add_bytes(holder, b"from the holder")
    fetcher = await nodes.start()
    await fetcher.connect(mute.listen_addrs()[0])
    await fetcher.connect(holder.listen_addrs()[0])
    assert await read_all(fetcher, cid) == b"from the holder"
    await wait_until(lambda: mute.identity.peer_id not in fetcher.network.connected_peers())
    assert holder.identity.peer_id in fetcher.network.connected_peers()


async def test_cidv1_block_is_not_sent_to_a_1_0_0_peer_that_would_misname_it(nodes: Nodes) -> None:
    server = await nodes.start()
    old = await nodes.start()
    _speak_only(old, PROTOCOL_1_0_0)
    cid = CID.hash(b"raw leaf", codec=RAW, version=1)
    server.datastore.blocks.put(cid, b"raw leaf")
    await old.connect(server.listen_addrs()[0])
    await server.network.send(old.identity.peer_id, Message())  # learn that `old` speaks 1.0.0
    await old.network.send(server.identity.peer_id, Message(wantlist=[WantEntry(cid)]))
    await wait_until(lambda: bool(server.server.wantlist_of(old.identity.peer_id)))
    await trio.sleep(0.2)
    assert server.server.stats.blocks_sent == 0
    assert old.stats().protocol_violations == 0


async def test_block_from_a_1_0_0_peer_is_matched_to_a_wanted_cidv1_by_its_hash(nodes: Nodes) -> None:
    fetcher = await nodes.start()
    old = await nodes.start()
    _speak_only(old, PROTOCOL_1_0_0)
    _speak_only(fetcher, PROTOCOL_1_0_0)  # so `old` answers in 1.0.0 encoding
    await fetcher.connect(old.listen_addrs()[0])
    cid = CID.hash(b"raw leaf", codec=RAW, version=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetcher.client.fetch, cid)
        await wait_until(lambda: cid in fetcher.client.wanted())
        await wait_until(lambda: bool(old.server.wantlist_of(fetcher.identity.peer_id)))
        # What an old peer would answer: the bytes alone, in the 1.0.0 `blocks` field.
        await old.network.send(fetcher.identity.peer_id, Message(blocks=[Block.of(cid, b"raw leaf")]))
    assert fetcher.datastore.blocks.get(cid) == b"raw leaf"
    assert fetcher.stats().peers_penalised == 0
    assert old.network.protocol_of(fetcher.identity.peer_id) == PROTOCOL_1_0_0
