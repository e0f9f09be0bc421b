"""HAMT-sharded UnixFS directories as boxo writes them: murmur3-x64-64 name hashing, fanout 256.

A shard is a dag-pb node whose Data is UnixFS ``HAMTShard`` (``Data`` = big-endian bitfield of the
occupied buckets with leading zero bytes trimmed, ``hashType`` 0x22, ``fanout``). Each bucket is one
link named by the bucket index in upper-case hex padded to the width of ``fanout - 1``: the padded
index alone names a child shard, the index followed by the entry name names an entry. Bucket indexes
are taken from the 64-bit murmur3 hash of the name, most significant bits first, log2(fanout) bits per
level. Two entries share a child shard exactly while their bucket paths agree, so the tree does not
depend on insertion order and :func:`build_hamt` reproduces Kubo's node for node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ipfsreg.cid import CID
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import HASH_MURMUR3, DataType, UnixFSData
from ipfsreg.unixfs.errors import InvalidNode, UnixFSError

DEFAULT_FANOUT: Final = 256
MAX_FANOUT: Final = 1024  # boxo's maximumHamtWidth
_M64: Final = (1 << 64) - 1
_C1: Final = 0x87C37B91114253D5
_C2: Final = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    k ^= k >> 33
    return k


def murmur3_x64_64(data: bytes, seed: int = 0) -> int:
    """The first 64 bits (h1) of MurmurHash3_x64_128, as spaolacci/murmur3's Sum64 returns them."""
    h1 = h2 = seed & _M64
    n = len(data)
    nblocks = n // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        k1 = (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 ^= k1
        h1 = (((_rotl(h1, 27) + h2) & _M64) * 5 + 0x52DCE729) & _M64
        k2 = (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 ^= k2
        h2 = (((_rotl(h2, 31) + h1) & _M64) * 5 + 0x38495AB5) & _M64
    tail = data[nblocks * 16 :]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    return (h1 + h2) & _M64


def fanout_bits(fanout: int) -> int:
    """log2(fanout); the fanout must be a power of two between 2 and 1024 (boxo's limits)."""
    if fanout < 2 or fanout > MAX_FANOUT or fanout & (fanout - 1):
        raise InvalidNode(f"HAMT fanout {fanout} is not a power of two in 2..{MAX_FANOUT}")
    return fanout.bit_length() - 1


def bucket_index(name_hash: int, depth: int, bits: int) -> int:
    """The bucket of a name at ``depth``: the next ``bits`` of its hash, most significant first."""
    shift = 64 - (depth + 1) * bits
    if shift < 0:
        raise InvalidNode("sharded directory too deep: the name hash has no bits left")
    return (name_hash >> shift) & ((1 << bits) - 1)


def pad_len(fanout: int) -> int:
    """Hex digits in a link name prefix: the width of ``fanout - 1`` in hex (2 for 256)."""
    return len(f"{fanout - 1:X}")


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardLink:
    index: int
    cid: CID
    tsize: int | None
    name: str | None  # None: the link is a child shard


@dataclass(frozen=True, slots=True)
class Shard:
    fanout: int
    bits: int
    links: tuple[ShardLink, ...]

    def find(self, index: int) -> ShardLink | None:
        for link in self.links:
            if link.index == index:
                return link
            if link.index > index:
                break
        return None


def parse_shard(node: dagpb.PBNode, fs: UnixFSData) -> Shard:
    """Validate a HAMT shard node and index its links by bucket."""
    if fs.type != DataType.HAMT_SHARD:
        raise InvalidNode(f"expected a HAMT shard, got UnixFS {fs.type.name}")
    if fs.hash_type != HASH_MURMUR3:
        raise InvalidNode(f"unsupported HAMT hash function {fs.hash_type!r} (only murmur3-x64-64)")
    if fs.fanout is None:
        raise InvalidNode("HAMT shard without a fanout")
    bits = fanout_bits(fs.fanout)
    bitfield_bytes = fs.data or b""
    if len(bitfield_bytes) > fs.fanout // 8 + (1 if fs.fanout < 8 else 0):
        raise InvalidNode("HAMT bitfield longer than the fanout")
    bitfield = int.from_bytes(bitfield_bytes, "big")
    if bitfield >> fs.fanout:
        raise InvalidNode("HAMT bitfield has bits beyond the fanout")
    width = pad_len(fs.fanout)
    links: list[ShardLink] = []
    previous = -1
    for link in node.links:
        name = link.name or ""
        prefix = name[:width]
        if len(prefix) != width or not all(c in "0123456789ABCDEF" for c in prefix):
            raise InvalidNode(f"HAMT link name {name!r} lacks a {width}-digit hex bucket prefix")
        index = int(prefix, 16)
        if index >= fs.fanout or index <= previous:
            raise InvalidNode(f"HAMT link bucket {index} out of order or beyond the fanout")
        if not (bitfield >> index) & 1:
            raise InvalidNode(f"HAMT link bucket {index} is not set in the bitfield")
        previous = index
        links.append(ShardLink(index, link.cid, link.tsize, name[width:] if len(name) > width else None))
    if bitfield.bit_count() != len(links):
        raise InvalidNode("HAMT bitfield does not match the number of links")
    return Shard(fs.fanout, bits, tuple(links))


# --- writing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HamtEntry:
    name: str
    cid: CID
    tsize: int


def _name_hash(name: str) -> int:
    return murmur3_x64_64(dagpb.encode_name(name))


def build_hamt(
    entries: Sequence[HamtEntry], *, cid_version: int = 0, fanout: int = DEFAULT_FANOUT
) -> tuple[list[tuple[CID, bytes]], CID, int]:
    """Build a sharded directory; return (blocks children-first with the root last, root CID, dag size)."""
    from ipfsreg.unixfs.importer import dag_pb_cid

    bits = fanout_bits(fanout)
    width = pad_len(fanout)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise UnixFSError("duplicate names in a directory")
    blocks: list[tuple[CID, bytes]] = []

    def build(items: list[tuple[int, HamtEntry]], depth: int) -> tuple[CID, int]:
        buckets: dict[int, list[tuple[int, HamtEntry]]] = {}
        for item in items:
            buckets.setdefault(bucket_index(item[0], depth, bits), []).append(item)
        links: list[dagpb.PBLink] = []
        bitfield = 0
        child_total = 0
        for index in sorted(buckets):
            bitfield |= 1 << index
            prefix = f"{index:0{width}X}"
            members = buckets[index]
            if len(members) == 1:
                entry = members[0][1]
                links.append(dagpb.PBLink(entry.cid, prefix + entry.name, entry.tsize))
                child_total += entry.tsize
            else:
                child_cid, child_size = build(members, depth + 1)
                links.append(dagpb.PBLink(child_cid, prefix, child_size))
                child_total += child_size
        data = UnixFSData(
            DataType.HAMT_SHARD,
            data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big") if bitfield else None,
            hash_type=HASH_MURMUR3,
            fanout=fanout,
        ).encode()
        block = dagpb.encode_node(links, data)
        cid = dag_pb_cid(block, cid_version)
        blocks.append((cid, block))
        return cid, len(block) + child_total

    root, size = build([(_name_hash(e.name), e) for e in entries], 0)
    return blocks, root, size
