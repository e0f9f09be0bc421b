"""Two and three in-process ipfsreg nodes exchanging blocks over bitswap on loopback."""

from __future__ import annotations

from ipfsreg.node.testing import Nodes, add_bytes, random_bytes
from ipfsreg.unixfs.exporter import read_file


async def test_node_b_fetches_file_added_on_node_a(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    data = random_bytes(3 * 1024 * 1024 + 17)
    cid = add_bytes(a, data)
    await b.connect(a.listen_addrs()[0])
    out = bytearray()
    async with b.block_source() as source:
        async for chunk in read_file(source, cid):
            out += chunk
    assert bytes(out) == data
    assert b.stats().blocks_received == a.stats().blocks_sent > 0
