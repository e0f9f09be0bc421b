"""The exporter: ranged reads at every boundary, prefetch hints, stat, paths, walks, and malformed DAGs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unixfs_support import MemorySource, deterministic_bytes

from ipfsreg.blockstore import BlockNotFound, Datastore
from ipfsreg.cid import CID, DAG_PB, IDENTITY, RAW, multihash
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.dagpb import PBLink
from ipfsreg.unixfs.data import DataType, UnixFSData
from ipfsreg.unixfs.directory import build_directory, symlink_block
from ipfsreg.unixfs.errors import InvalidNode, NotADirectory, NotAFile, PathNotFound, UnixFSError
from ipfsreg.unixfs.exporter import (
    LocalBlockSource,
    list_directory,
    read_file,
    resolve_path,
    stat,
    walk_dag,
)
from ipfsreg.unixfs.importer import Block, ImportOptions, dag_pb_cid, file_leaf_block, import_bytes

CHUNK = 100
OPTS = ImportOptions(chunk_size=CHUNK, max_links=4)
DATA = deterministic_bytes(CHUNK * 4 * 4 + 37, "exporter")  # root -> 1600 B subtrees -> 400 B -> leaves


async def read(source: MemorySource, cid: CID, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in read_file(source, cid, offset, length)])


def pb_block(links: list[PBLink], fs: UnixFSData, version: int = 0) -> Block:
    data = dagpb.encode_node(links, fs.encode())
    return Block(dag_pb_cid(data, version), data)


@pytest.fixture
def imported() -> tuple[MemorySource, CID]:
    blocks, result = import_bytes(DATA, OPTS)
    return MemorySource(blocks), result.cid


async def test_whole_file_reads_back(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    assert await read(source, root) == DATA


@pytest.mark.parametrize(
    "offset",
    [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        4 * CHUNK - 1,
        4 * CHUNK,
        4 * CHUNK + 1,
        16 * CHUNK - 1,
        16 * CHUNK,
        len(DATA) - 1,
    ],
)
@pytest.mark.parametrize("length", [None, 0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3])
async def test_ranges_at_every_boundary(
    imported: tuple[MemorySource, CID], offset: int, length: int | None
) -> None:
    source, root = imported
    expected = DATA[offset:] if length is None else DATA[offset : offset + length]
    assert await read(source, root, offset, length) == expected


async def test_reading_past_the_end_yields_what_exists(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    assert await read(source, root, len(DATA) - 2, 10) == DATA[-2:]
    assert await read(source, root, len(DATA)) == b""
    assert await read(source, root, len(DATA) + 100, 5) == b""


async def test_negative_offset_or_length_is_refused(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    with pytest.raises(ValueError):
        await read(source, root, -1)
    with pytest.raises(ValueError):
        await read(source, root, 0, -1)


async def test_a_range_fetches_only_the_blocks_it_needs(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    await read(source, root, 4 * CHUNK + 10, 5)
    # the root, the first 1600-byte subtree, its second 400-byte subtree, and that one's first leaf
    assert len(source.gets) == 4


async def test_prefetch_announces_upcoming_children_in_order(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    await read(source, root)
    root_links = [link.cid for link in dagpb.decode(source.blocks[root.multihash]).links]
    assert source.prefetches[0] == root_links
    fetched_after_root = source.gets[1:]
    announced = [cid for batch in source.prefetches for cid in batch]
    assert sorted(c.multihash for c in fetched_after_root) == sorted(c.multihash for c in announced)


async def test_raw_leaves_and_cid_v1() -> None:
    blocks, result = import_bytes(DATA, ImportOptions(chunk_size=CHUNK, cid_version=1))
    source = MemorySource(blocks)
    assert await read(source, result.cid, 250, 300) == DATA[250:550]
    raw_root = import_bytes(b"tiny", ImportOptions(cid_version=1))[0][0]
    assert await read(MemorySource([raw_root]), raw_root.cid, 1, 2) == b"in"


async def test_identity_cids_are_read_without_the_source() -> None:
    raw = CID(1, RAW, multihash(b"inline bytes", IDENTITY))
    assert await read(MemorySource(), raw, 7) == b"bytes"
    leaf = file_leaf_block(b"pb inline")
    node = CID(1, DAG_PB, multihash(leaf, IDENTITY))
    assert await read(MemorySource(), node) == b"pb inline"


async def test_trickle_style_node_with_inline_data_and_children() -> None:
    leaf = pb_block([], UnixFSData(DataType.RAW, data=b"world", filesize=5))
    root = pb_block([PBLink(leaf.cid, "", len(leaf.data))], UnixFSData(DataType.FILE, b"hello ", 11, (5,)))
    source = MemorySource([leaf, root])
    assert await read(source, root.cid) == b"hello world"
    assert await read(source, root.cid, 4, 4) == b"o wo"


async def test_blocksizes_not_matching_links_is_invalid() -> None:
    leaf = Block(CID.hash(b"abc"), b"abc")
    root = pb_block([PBLink(leaf.cid, "", 3)], UnixFSData(DataType.FILE, filesize=3, blocksizes=(3, 1)))
    with pytest.raises(InvalidNode, match="blocksizes"):
        await read(MemorySource([leaf, root]), root.cid)


async def test_filesize_not_matching_blocksizes_is_invalid() -> None:
    leaf = Block(CID.hash(b"abc"), b"abc")
    root = pb_block([PBLink(leaf.cid, "", 3)], UnixFSData(DataType.FILE, filesize=4, blocksizes=(3,)))
    with pytest.raises(InvalidNode, match="filesize"):
        await read(MemorySource([leaf, root]), root.cid)


async def test_child_holding_other_than_its_blocksize_is_invalid() -> None:
    leaf = Block(CID.hash(b"abcd"), b"abcd")
    root = pb_block([PBLink(leaf.cid, "", 4)], UnixFSData(DataType.FILE, filesize=3, blocksizes=(3,)))
    with pytest.raises(InvalidNode, match="parent says 3"):
        await read(MemorySource([leaf, root]), root.cid)


async def test_directory_root_is_not_a_file_and_directory_inside_a_file_is_invalid() -> None:
    directory = build_directory({})
    source = MemorySource([directory])
    with pytest.raises(NotAFile):
        await read(source, directory.cid)
    root = pb_block([PBLink(directory.cid, "", 4)], UnixFSData(DataType.FILE, filesize=1, blocksizes=(1,)))
    source.add(root.cid, root.data)
    with pytest.raises(InvalidNode, match="inside a file"):
        await read(source, root.cid)


async def test_overly_deep_chain_is_refused() -> None:
    leaf = Block(CID.hash(b"x"), b"x")
    blocks = [leaf]
    child = leaf
    for _ in range(70):
        child = pb_block([PBLink(child.cid, "", 1)], UnixFSData(DataType.FILE, filesize=1, blocksizes=(1,)))
        blocks.append(child)
    with pytest.raises(InvalidNode, match="deeper than"):
        await read(MemorySource(blocks), child.cid)


async def test_garbage_block_and_missing_block() -> None:
    garbage = CID.hash(b"\xff\xff", codec=DAG_PB)
    source = MemorySource({garbage: b"\xff\xff"})
    with pytest.raises(InvalidNode):
        await read(source, garbage)
    with pytest.raises(BlockNotFound):
        await read(source, CID.hash(b"absent"))


async def test_stat_reports_each_node_type(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    info = await stat(source, root)
    assert (info.type, info.size, len(info.links)) == ("file", len(DATA), 2)
    assert info.cumulative_size == info.block_size + sum(e.tsize or 0 for e in info.links)
    raw = Block(CID.hash(b"raw"), b"raw")
    link = symlink_block("../target")
    directory = build_directory({"f": (root, info.cumulative_size), "l": (link.cid, len(link.data))})
    for block in (raw, link, directory):
        source.add(block.cid, block.data)
    assert (await stat(source, raw.cid)).type == "raw"
    assert ((await stat(source, link.cid)).type, (await stat(source, link.cid)).size) == ("symlink", 9)
    dir_info = await stat(source, directory.cid)
    assert (dir_info.type, dir_info.size, [e.name for e in dir_info.links]) == ("directory", 0, ["f", "l"])


async def test_resolve_path_and_list_directory(imported: tuple[MemorySource, CID]) -> None:
    source, root = imported
    leaf = Block(CID.hash(b"blob"), b"blob")
    sha = build_directory({"abc": (leaf.cid, 4), "def": (root, 1)})
    blobs = build_directory({"sha256": (sha.cid, 100)})
    top = build_directory({"blobs": (blobs.cid, 200), "oci-layout": (leaf.cid, 4)})
    for block in (leaf, sha, blobs, top):
        source.add(block.cid, block.data)
    assert await resolve_path(source, top.cid, "blobs/sha256/abc") == leaf.cid
    assert await resolve_path(source, top.cid, "/blobs//sha256/def/") == root
    assert await resolve_path(source, top.cid, "") == top.cid
    with pytest.raises(PathNotFound) as info:
        await resolve_path(source, top.cid, "blobs/sha512/abc")
    assert info.value.segment == "sha512"
    with pytest.raises(NotADirectory):
        await resolve_path(source, top.cid, "oci-layout/x")
    with pytest.raises(NotADirectory):
        await list_directory(source, root)
    entries = await list_directory(source, top.cid)
    assert [(e.name, e.cid, e.tsize) for e in entries] == [
        ("blobs", blobs.cid, 200),
        ("oci-layout", leaf.cid, 4),
    ]


async def test_walk_dag_visits_every_block_once_depth_first() -> None:
    data = b"A" * CHUNK * 6 + b"tail"  # identical leaves are stored once
    blocks, result = import_bytes(data, OPTS)
    source = MemorySource(blocks)
    walked = [cid async for cid, _ in walk_dag(source, result.cid)]
    assert walked[0] == result.cid
    assert len(walked) == len(set(walked)) == len({b.cid for b in blocks})
    seen: set[CID] = set(walked)
    assert [cid async for cid, _ in walk_dag(source, result.cid, seen=seen)] == []


async def test_local_block_source_reads_the_datastore(tmp_path: Path) -> None:
    blocks, result = import_bytes(DATA, OPTS)
    with Datastore.open(tmp_path / "repo") as store:
        store.blocks.put_many((b.cid, b.data) for b in blocks)
        source = LocalBlockSource(store.blocks)
        assert b"".join([c async for c in read_file(source, result.cid, 5, 500)]) == DATA[5:505]
        source.prefetch([result.cid])


@settings(max_examples=150, deadline=None)
@given(block_index=st.integers(0, 10_000), byte_index=st.integers(0, 10_000), xor=st.integers(1, 255))
async def test_a_corrupted_block_never_escapes_the_error_types(
    block_index: int, byte_index: int, xor: int
) -> None:
    blocks, result = import_bytes(DATA, OPTS)
    target = blocks[block_index % len(blocks)]
    data = bytearray(target.data)
    data[byte_index % len(data)] ^= xor
    source = MemorySource(blocks)
    source.add(target.cid, bytes(data))  # a lying source: the bytes no longer match the CID
    try:
        out = await read(source, result.cid)
    except (UnixFSError, BlockNotFound):
        return
    assert len(out) == len(DATA)


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(0, 3000),
    chunk=st.integers(1, 64),
    max_links=st.integers(2, 6),
    raw=st.booleans(),
    offset=st.integers(0, 3100),
    length=st.one_of(st.none(), st.integers(0, 3100)),
)
async def test_any_range_of_any_dag_shape_reads_the_same_bytes_as_slicing(
    size: int, chunk: int, max_links: int, raw: bool, offset: int, length: int | None
) -> None:
    data = DATA[:size] if size <= len(DATA) else DATA * 2
    data = data[:size]
    blocks, result = import_bytes(data, ImportOptions(chunk_size=chunk, max_links=max_links, raw_leaves=raw))
    expected = data[offset:] if length is None else data[offset : offset + length]
    assert await read(MemorySource(blocks), result.cid, offset, length) == expected


async def test_leaf_whose_filesize_disagrees_with_its_data_is_invalid() -> None:
    leaf = pb_block([], UnixFSData(DataType.FILE, data=b"abc", filesize=4))
    with pytest.raises(InvalidNode, match="filesize 4"):
        await read(MemorySource([leaf]), leaf.cid)


async def test_leaf_with_extra_fields_reads_through_the_strict_decoder() -> None:
    leaf = pb_block([], UnixFSData(DataType.FILE, data=b"abc", filesize=3, mode=0o644))
    assert await read(MemorySource([leaf]), leaf.cid) == b"abc"
    bad = Block(leaf.cid, leaf.data + b"\x0a\x00")  # a second Data field
    with pytest.raises(InvalidNode, match="duplicate Data"):
        await read(MemorySource([bad]), bad.cid)
