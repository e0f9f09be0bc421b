"""NetworkBlockSource: the BlockSource that fetches missing blocks with a window ahead of the reader."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest
import trio

from ipfsreg.cid import CID, RAW
from ipfsreg.node.bitswap.client import THREAD_BYTES
from ipfsreg.node.blocksource import NetworkBlockSource
from ipfsreg.node.errors import BlockFetchTimeout
from ipfsreg.node.node import Node
from ipfsreg.node.testing import Nodes, random_bytes, wait_until


def _raw_blocks(node: Node, count: int) -> list[tuple[CID, bytes]]:
    blocks = []
    for i in range(count):
        data = random_bytes(10_000, seed=i)
        cid = CID.hash(data, codec=RAW, version=1)
        node.datastore.blocks.put(cid, data)
        blocks.append((cid, data))
    return blocks


async def _pair(nodes: Nodes, **fetcher_settings: object) -> tuple[Node, Node]:
    a = await nodes.start()
    b = await nodes.start(**fetcher_settings)
    await b.connect(a.listen_addrs()[0])
    return a, b


async def test_prefetch_fetches_at_most_a_window_ahead_of_the_reader(nodes: Nodes) -> None:
    a, b = await _pair(nodes)
    blocks = _raw_blocks(a, 40)
    async with NetworkBlockSource(b.datastore.blocks, b.client, window=8) as source:
        source.prefetch([cid for cid, _ in blocks])
        await wait_until(lambda: b.stats().blocks_received == 8)
        await trio.sleep(0.2)
        assert b.stats().blocks_received == 8  # nobody read: the window stays full
        for i, (cid, data) in enumerate(blocks):
            assert await source.get(cid) == data
            assert b.stats().blocks_received <= i + 1 + 8
    assert b.stats().blocks_received == 40
    assert source.fetched == 40


async def test_prefetch_hints_are_read_newest_first_like_a_depth_first_reader(nodes: Nodes) -> None:
    a, b = await _pair(nodes)
    blocks = _raw_blocks(a, 6)
    async with NetworkBlockSource(b.datastore.blocks, b.client, window=2) as source:
        source.prefetch([cid for cid, _ in blocks[3:]])  # siblings read later
        source.prefetch([cid for cid, _ in blocks[:3]])  # children of the node being read: read next
        await wait_until(lambda: b.stats().blocks_received == 2)
        assert b.datastore.blocks.has(blocks[0][0]) and b.datastore.blocks.has(blocks[1][0])


async def test_blocks_fetched_ahead_but_never_read_free_the_window_after_a_while(nodes: Nodes) -> None:
    a, b = await _pair(nodes)
    blocks = _raw_blocks(a, 6)
    async with NetworkBlockSource(b.datastore.blocks, b.client, window=2, unread_expiry=0.2) as source:
        source.prefetch([cid for cid, _ in blocks[:2]])  # an abandoned read
        await wait_until(lambda: b.stats().blocks_received == 2)
        source.prefetch([cid for cid, _ in blocks[2:]])  # the next reader still gets its window
        await wait_until(lambda: b.stats().blocks_received == 6)


async def test_failed_prefetch_surfaces_as_the_fetch_error_when_read(nodes: Nodes) -> None:
    _a, b = await _pair(nodes, fetch_timeout=0.5, want_timeout=0.2)
    missing = CID.hash(b"missing", codec=RAW, version=1)
    async with NetworkBlockSource(b.datastore.blocks, b.client) as source:
        source.prefetch([missing])
        await wait_until(lambda: b.stats().not_provided == 1)  # nobody has it: known fast
        with trio.fail_after(0.2), pytest.raises(BlockFetchTimeout, match=str(missing)):
            await source.get(missing)


async def test_local_blocks_are_served_without_the_network(nodes: Nodes) -> None:
    lonely = await nodes.start()
    blocks = _raw_blocks(lonely, 5)
    async with lonely.block_source() as source:
        source.prefetch([cid for cid, _ in blocks])
        assert [await source.get(cid) for cid, _ in blocks] == [data for _, data in blocks]
    assert source.fetched == 0


async def test_a_block_fetched_ahead_is_handed_to_its_reader_not_read_back_from_the_store(
    nodes: Nodes,
) -> None:
    # Big blocks are stored by a worker thread before their fetch settles on the event loop; a
    # reader arriving in between waits for the fetch's bytes instead of reading the store.
    a, b = await _pair(nodes)
    data = random_bytes(THREAD_BYTES, seed=5)
    cid = CID.hash(data, codec=RAW, version=1)
    a.datastore.blocks.put(cid, data)
    stored, release = threading.Event(), threading.Event()
    put_many, get_or_none = b.datastore.blocks.put_many, b.datastore.blocks.get_or_none
    read_back: list[CID] = []

    def gated_put_many(items: Iterable[tuple[CID, bytes]], **options: bool) -> None:
        put_many(items, **options)
        stored.set()
        release.wait(10)

    def counting_get_or_none(wanted: CID) -> bytes | None:
        found = get_or_none(wanted)
        if found is not None:
            read_back.append(wanted)
        return found

    b.datastore.blocks.put_many = gated_put_many  # type: ignore[method-assign,assignment]
    b.datastore.blocks.get_or_none = counting_get_or_none  # type: ignore[method-assign,assignment]
    async with NetworkBlockSource(b.datastore.blocks, b.client, window=4) as source:
        source.prefetch([cid])
        await trio.to_thread.run_sync(stored.wait, 10)
        assert get_or_none(cid) == data  # in the store, its fetch not settled yet
        async with trio.open_nursery() as nursery:
            results: list[bytes] = []

            async def read() -> None:
                results.append(await source.get(cid))

            nursery.start_soon(read)
            await trio.sleep(0.05)
            release.set()
    assert results == [data]
    assert read_back == []
    assert source.fetched == 1
