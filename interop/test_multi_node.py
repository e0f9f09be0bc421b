"""Several ipfsreg nodes (and a Kubo peer) in one trio test, exchanging blocks over bitswap on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from interop.kubo import KuboPeer
from ipfsreg.cid import CID
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all, running_nodes, wait_until


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path) as started:
        yield started


async def test_b_peered_only_with_a_fetches_what_a_added(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start(peers=[])
    data = random_bytes(20_000_000, seed=20)
    cid = add_bytes(a, data)
    await b.connect(a.listen_addrs()[0])
    assert [p.peer_id for p in b.peers()] == [a.peer_id]
    assert await read_all(b, cid) == data
    # Statistics settle just after the bytes; a want re-sent after its timeout on a loaded
    # machine brings a duplicate, which b counts apart.
    await wait_until(lambda: b.stats().blocks_received == 78)  # 77 leaves + root
    await wait_until(lambda: b.stats().blocks_received + b.stats().duplicate_blocks == a.stats().blocks_sent)


async def test_b_with_a_configured_peering_connects_on_its_own_and_fetches(nodes: Nodes) -> None:
    a = await nodes.start()
    cid = add_bytes(a, b"configured peering")
    b = await nodes.start(peers=[a.listen_addrs()[0]])
    await wait_until(lambda: b.stats().connected_peers == 1)
    assert await read_all(b, cid) == b"configured peering"


async def test_c_peered_with_a_and_b_gets_blocks_from_both(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    c = await nodes.start()
    data = random_bytes(8_000_000, seed=21)
    cid = add_bytes(a, data)
    assert add_bytes(b, data) == cid
    await c.connect(a.listen_addrs()[0])
    await c.connect(b.listen_addrs()[0])
    assert await read_all(c, cid) == data
    await wait_until(lambda: c.stats().blocks_received == 32)  # 31 leaves + root, each stored once
    await wait_until(
        lambda: (
            a.stats().blocks_sent + b.stats().blocks_sent
            == c.stats().blocks_received + c.stats().duplicate_blocks
        )
    )
    assert a.stats().blocks_sent > 0 and b.stats().blocks_sent > 0


async def test_c_gets_blocks_only_b_has_after_a_says_dont_have(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    c = await nodes.start()
    data = random_bytes(2_000_000, seed=22)
    cid = add_bytes(b, data)
    add_bytes(a, data[:1_000_000])  # A holds none of the blocks of this DAG
    await c.connect(a.listen_addrs()[0])
    await c.connect(b.listen_addrs()[0])
    assert await read_all(c, cid) == data
    assert a.stats().blocks_sent == 0


async def test_c_peered_with_ipfsreg_and_kubo_gets_blocks_from_both(
    kubo: KuboPeer, nodes: Nodes, tmp_path: Path
) -> None:
    data = random_bytes(20_000_000, seed=23)
    (tmp_path / "f").write_bytes(data)
    cid = CID.parse(await kubo.aadd(tmp_path / "f"))
    a = await nodes.start()
    assert add_bytes(a, data) == cid
    c = await nodes.start(fetch_timeout=30.0)
    await c.connect(a.listen_addrs()[0])
    await c.connect(kubo.multiaddr)
    assert await read_all(c, cid) == data
    from_a = a.stats().blocks_sent
    assert 0 < from_a < c.stats().blocks_received  # the rest came from Kubo
