"""HAMT shards: murmur3 hashing, bucket arithmetic, strict shard parsing, and reads through deep shards."""

from __future__ import annotations

import pytest
from unixfs_support import MemorySource

from ipfsreg.cid import CID
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.dagpb import PBLink
from ipfsreg.unixfs.data import HASH_MURMUR3, DataType, UnixFSData
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.errors import InvalidNode, PathNotFound, UnixFSError
from ipfsreg.unixfs.exporter import list_directory, lookup, resolve_path, stat
from ipfsreg.unixfs.hamt import (
    HamtEntry,
    bucket_index,
    build_hamt,
    murmur3_x64_64,
    pad_len,
    parse_shard,
)
from ipfsreg.unixfs.importer import Block

LEAF = CID.hash(b"x")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x0),
        (b"a", 0x85555565F6597889),
        (b"hello", 0xCBD8A7B341BD9B02),
        (b"0123456789abcdef", 0x4BE06D94CF4AD1A7),
        (b"0123456789abcdefX", 0xCDEBD2ACB570D6F7),
        # MurmurHash3_x64_128 of this string is 6c1b07bc7bbc4be3 47939ac4a93c437a; h1 little-endian:
        (b"The quick brown fox jumps over the lazy dog", 0xE34BBC7BBC071B6C),
    ],
)
def test_murmur3_x64_64_matches_reference_values(data: bytes, expected: int) -> None:
    assert murmur3_x64_64(data) == expected


def test_bucket_index_takes_most_significant_bits_first() -> None:
    h = 0xCBD8A7B341BD9B02
    assert [bucket_index(h, d, 8) for d in range(8)] == list(h.to_bytes(8, "big"))
    assert bucket_index(h, 0, 4) == 0xC and bucket_index(h, 1, 4) == 0xB
    with pytest.raises(InvalidNode, match="too deep"):
        bucket_index(h, 8, 8)


def test_pad_len_is_hex_width_of_fanout_minus_one() -> None:
    assert (pad_len(256), pad_len(16), pad_len(1024), pad_len(4)) == (2, 1, 3, 1)


def build(names: list[str], fanout: int) -> tuple[MemorySource, CID]:
    blocks, root, _ = build_hamt([HamtEntry(n, LEAF, 1) for n in names], fanout=fanout)
    return MemorySource([Block(cid, data) for cid, data in blocks]), root


NAMES = [f"entry-{i:04d}" for i in range(300)]


async def test_small_fanout_builds_deep_shards_that_resolve_and_list() -> None:
    source, root = build(NAMES, fanout=4)
    assert len(source.blocks) > 50  # many levels of sub-shards
    for name in NAMES[::7]:
        assert await resolve_path(source, root, name) == LEAF
    assert await lookup(source, root, "missing") is None
    with pytest.raises(PathNotFound):
        await resolve_path(source, root, "entry-9999")
    assert sorted(e.name for e in await list_directory(source, root)) == NAMES
    assert (await stat(source, root)).type == "hamt"


async def test_listing_prefetches_sub_shards() -> None:
    source, root = build(NAMES, fanout=16)
    await list_directory(source, root)
    assert source.prefetches and all(source.prefetches)


def test_shard_links_use_padded_upper_hex_prefixes_and_bitfield() -> None:
    blocks, _, size = build_hamt([HamtEntry(n, LEAF, 1) for n in ["a", "b"]])
    node = dagpb.decode(blocks[-1][1])
    fs = decode_unixfs(node.data or b"")
    assert (fs.type, fs.hash_type, fs.fanout, fs.filesize) == (DataType.HAMT_SHARD, HASH_MURMUR3, 256, None)
    indexes = [bucket_index(murmur3_x64_64(n), 0, 8) for n in (b"a", b"b")]
    assert [link.name for link in node.links] == [
        f"{i:02X}{n}" for i, n in sorted(zip(indexes, "ab", strict=True))
    ]
    assert int.from_bytes(fs.data or b"", "big") == sum(1 << i for i in indexes)
    assert size == len(blocks[-1][1]) + 2


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(UnixFSError, match="duplicate"):
        build_hamt([HamtEntry("a", LEAF, 1), HamtEntry("a", LEAF, 1)])


def shard(links: list[PBLink], bitfield: bytes, *, fanout: int = 256, hash_type: int = HASH_MURMUR3) -> tuple:
    fs = UnixFSData(DataType.HAMT_SHARD, data=bitfield, hash_type=hash_type, fanout=fanout)
    return dagpb.PBNode(tuple(links), fs.encode()), fs


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([], b""), {"hash_type": 0x12}, "unsupported HAMT hash"),
        (([], b""), {"fanout": 100}, "not a power of two"),
        (([], b""), {"fanout": 2048}, "not a power of two"),
        (([PBLink(LEAF, "0Gx", 1)], b"\x01"), {}, "hex bucket prefix"),
        (([PBLink(LEAF, "a", 1)], b"\x01"), {}, "hex bucket prefix"),
        (([PBLink(LEAF, "01x", 1)], b"\x01"), {}, "not set in the bitfield"),
        (([PBLink(LEAF, "01x", 1), PBLink(LEAF, "00y", 1)], b"\x03"), {}, "out of order"),
        (([PBLink(LEAF, "00x", 1)], b"\x03"), {}, "does not match the number of links"),
        (([], b"\x01" * 33), {}, "longer than the fanout"),
        (([], b"\x10"), {"fanout": 4}, "beyond the fanout"),
    ],
)
def test_malformed_shards_raise_invalid_node(args: tuple, kwargs: dict, message: str) -> None:
    node, fs = shard(*args, **kwargs)
    with pytest.raises(InvalidNode, match=message):
        parse_shard(node, fs)


async def test_sub_shard_that_is_not_a_shard_is_invalid() -> None:
    directory = dagpb.encode_node([], b"\x08\x01")
    dir_cid = CID.hash(directory, codec=0x70, version=0)
    index = bucket_index(murmur3_x64_64(b"name"), 0, 8)
    node, _ = shard([PBLink(dir_cid, f"{index:02X}", 4)], (1 << index).to_bytes(32, "big").lstrip(b"\0"))
    block = dagpb.encode(node)
    root = CID.hash(block, codec=0x70, version=0)
    source = MemorySource({root: block, dir_cid: directory})
    with pytest.raises(InvalidNode):
        await lookup(source, root, "name")
    with pytest.raises(InvalidNode):
        await list_directory(source, root)
