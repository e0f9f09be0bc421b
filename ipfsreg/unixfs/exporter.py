"""Read UnixFS DAGs from any block source: ranged file reads, stat, listings, path resolution, DAG walks.

Everything here awaits only ``BlockSource.get``; a network-backed source can fetch ahead because the
exporter announces, through ``prefetch``, the children it is about to read, in order, each time it
decodes an interior node. Malformed DAGs raise :class:`InvalidNode` instead of looping or growing:
every file node's ``blocksizes`` must match its links and add up to its ``filesize``, every child must
hold exactly the bytes its parent claims, and nesting is limited to ``MAX_DEPTH``.

:func:`read_file_pieces` also takes a :class:`LeafLocator`: the leaves it places in storage come out
as :class:`Extent`\\ s (where their bytes lie) instead of bytes, for senders that move them without
reading them (sendfile).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from ipfsreg.blockstore import Blockstore
from ipfsreg.cid import CID, DAG_PB, IDENTITY, RAW, CIDError, split_multihash
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs._pb import read_uvarint
from ipfsreg.unixfs.data import DataType, UnixFSData
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.errors import InvalidNode, NotADirectory, NotAFile, PathNotFound
from ipfsreg.unixfs.hamt import bucket_index, murmur3_x64_64, parse_shard

# Deeper than any balanced or trickle DAG of a real file (a balanced DAG of 2**64 bytes is 8 deep).
MAX_DEPTH: Final = 64

NodeType = Literal["file", "raw", "directory", "hamt", "symlink", "metadata"]


class BlockSource(Protocol):
    async def get(self, cid: CID) -> bytes:
        """The block's bytes; raises ipfsreg.blockstore.BlockNotFound (local) or a fetch error."""
        ...

    def prefetch(self, cids: Sequence[CID]) -> None:
        """Hint: these blocks will be read soon, in this order (may be a no-op)."""
        ...


class LocalBlockSource:
    """A BlockSource over the local blockstore; prefetch is a no-op."""

    def __init__(self, blocks: Blockstore) -> None:
        self.blocks = blocks

    async def get(self, cid: CID) -> bytes:
        return self.blocks.get(cid)

    def prefetch(self, cids: Sequence[CID]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    cid: CID
    tsize: int | None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    cid: CID
    type: NodeType
    size: int  # content bytes: file size, raw block length, symlink target length; 0 for directories
    block_size: int
    cumulative_size: int  # block size plus the Tsize of every link, as `ipfs object stat` reports
    links: tuple[DirEntry, ...]  # the node's own links (file chunks have empty names)


async def load_block(source: BlockSource, cid: CID) -> bytes:
    """The block for a CID; identity CIDs carry their bytes inline and never touch the source."""
    if cid.multihash[:1] == b"\x00":
        try:
            code, digest = split_multihash(cid.multihash)
        except CIDError as exc:
            raise InvalidNode(f"bad identity CID {cid}: {exc}") from None
        if code == IDENTITY:
            return digest
    return await source.get(cid)


def decode_unixfs_node(cid: CID, block: bytes) -> tuple[dagpb.PBNode, UnixFSData]:
    """Decode a dag-pb block and its UnixFS Data; raise InvalidNode when either is malformed."""
    if cid.codec != DAG_PB:
        raise InvalidNode(f"{cid} is not dag-pb (codec {cid.codec_name})")
    node = dagpb.decode(block)
    if node.data is None:
        raise InvalidNode(f"dag-pb node {cid} has no UnixFS data")
    return node, decode_unixfs(node.data)


def _kubo_leaf_span(block: bytes) -> tuple[int, int] | None:
    """Fast path for the common dag-pb leaf ``{Data: {Type: File, Data, filesize}}``: where its bytes lie
    in the block, ``(start, end)``.

    Returns None for any other layout, which then goes through the strict generic decoders.
    """
    if len(block) < 8 or block[0] != 0x0A:
        return None
    try:
        inner, start = read_uvarint(block, 1, "leaf")
        if start + inner != len(block) or block[start : start + 3] != b"\x08\x02\x12":
            return None
        size, data_start = read_uvarint(block, start + 3, "leaf")
        data_end = data_start + size
        if block[data_end : data_end + 1] != b"\x18":
            return None
        filesize, end = read_uvarint(block, data_end + 1, "leaf")
    except InvalidNode:
        return None
    if end != len(block) or filesize != size:
        return None
    return data_start, data_end


def _kubo_leaf_data(block: bytes) -> bytes | None:
    """The bytes of a leaf in the common layout (see :func:`_kubo_leaf_span`), copied once; else None."""
    span = _kubo_leaf_span(block)
    return None if span is None else block[span[0] : span[1]]


def leaf_content_span(cid: CID, block: bytes) -> tuple[int, int] | None:
    """Where a file leaf's content lies in its block, ``(start, end)``: all of a raw block, the data of
    a dag-pb leaf in Kubo's layout. None for anything else (an interior node, another layout), whose
    content is only known by decoding it (:func:`read_file` does)."""
    if cid.codec == RAW:
        return 0, len(block)
    if cid.codec == DAG_PB:
        return _kubo_leaf_span(block)
    return None


def _file_layout(cid: CID, node: dagpb.PBNode, fs: UnixFSData) -> tuple[bytes, int]:
    """Check a file node's sizes; return (inline data, total content size)."""
    inline = fs.data or b""
    if len(fs.blocksizes) != len(node.links):
        raise InvalidNode(f"file node {cid} has {len(node.links)} links but {len(fs.blocksizes)} blocksizes")
    total = len(inline) + sum(fs.blocksizes)
    if fs.filesize is not None and fs.filesize != total:
        raise InvalidNode(f"file node {cid} filesize {fs.filesize} != data plus blocksizes {total}")
    return inline, total


@dataclass(frozen=True, slots=True)
class Extent:
    """A file's content bytes that lie contiguous in storage: ``length`` bytes at ``offset`` of
    whatever ``where`` names (a :class:`LeafLocator` decides what that is, e.g. a pack file)."""

    where: object
    offset: int
    length: int

    def slice(self, lo: int, hi: int) -> Extent:
        """Bytes ``[lo, hi)`` of this extent."""
        return Extent(self.where, self.offset + lo, hi - lo)


@dataclass(frozen=True, slots=True)
class FileNode:
    """A decoded interior node of a file: its inline content, content size, and (child, size) links."""

    content: bytes
    total: int
    links: tuple[tuple[CID, int], ...]


class FileNodes:
    """Decoded interior file nodes by CID, for readers of the same files again and again (a node's
    bytes never change under its CID, so nothing here goes stale): a bounded LRU."""

    def __init__(self, entries: int = 128) -> None:
        self.entries = entries
        self._nodes: OrderedDict[CID, FileNode] = OrderedDict()

    def get(self, cid: CID) -> FileNode | None:
        node = self._nodes.get(cid)
        if node is not None:
            self._nodes.move_to_end(cid)
        return node

    def put(self, cid: CID, node: FileNode) -> None:
        self._nodes[cid] = node
        self._nodes.move_to_end(cid)
        while len(self._nodes) > self.entries:
            self._nodes.popitem(last=False)


class LeafLocator(Protocol):
    """Finds where file leaves' content lies in storage, so readers can send it without reading it."""

    def prepare(self, cids: Sequence[CID]) -> Sequence[CID]:
        """The children of a node about to be read, in order: return those the block source should
        prefetch (the ones this locator will not find)."""
        ...

    def locate_leaf(self, cid: CID) -> Extent | None:
        """The content of ``cid`` if it is a leaf this locator can place; None: read its block."""
        ...


async def read_file(
    source: BlockSource, cid: CID, offset: int = 0, length: int | None = None
) -> AsyncIterator[bytes]:
    """Stream the bytes of a file in order, only ``length`` bytes from ``offset`` if given.

    Reading past the end yields only the bytes that exist (nothing when ``offset >= size``). Only the
    blocks holding the range are fetched: subtrees are skipped using their parents' blocksizes.
    Raises NotAFile for a directory or symlink root, InvalidNode for a malformed DAG.
    """
    async with aclosing(read_file_pieces(source, cid, offset, length)) as pieces:
        async for piece in pieces:
            assert isinstance(piece, bytes)  # without a locator every piece is bytes
            yield piece


async def read_file_pieces(
    source: BlockSource,
    cid: CID,
    offset: int = 0,
    length: int | None = None,
    locator: LeafLocator | None = None,
    nodes: FileNodes | None = None,
) -> AsyncGenerator[bytes | Extent, None]:
    """As :func:`read_file`, but the leaves that ``locator`` places come as :class:`Extent`\\ s (their
    bytes are not read here); everything else comes as bytes, in file order. Interior nodes found in
    ``nodes`` are not read again (and those read are put there)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0:
        return
    end = None if length is None else offset + length
    # (cid, file offset where the node's content starts, content size the parent claims, depth)
    stack: list[tuple[CID, int, int | None, int]] = [(cid, 0, None, 0)]
    if locator is not None:
        locator.prepare([cid])
    while stack:
        node_cid, start, expected, depth = stack.pop()
        if locator is not None:
            extent = locator.locate_leaf(node_cid)
            if extent is not None:
                if expected is not None and extent.length != expected:
                    raise InvalidNode(
                        f"{node_cid} holds {extent.length} bytes but its parent says {expected}"
                    )
                lo = max(offset - start, 0)
                hi = extent.length if end is None else min(end - start, extent.length)
                if lo < hi:
                    yield extent if (lo == 0 and hi == extent.length) else extent.slice(lo, hi)
                continue
        known = nodes.get(node_cid) if nodes is not None else None
        if known is not None:
            content, total, links = known.content, known.total, known.links
        else:
            block = await load_block(source, node_cid)
            links = ()
            leaf = None if node_cid.codec == RAW else _kubo_leaf_data(block)
            if node_cid.codec == RAW:
                content = block
                total = len(block)
            elif leaf is not None and node_cid.codec == DAG_PB:
                content = leaf
                total = len(leaf)
            else:
                node, fs = decode_unixfs_node(node_cid, block)
                if fs.type not in (DataType.FILE, DataType.RAW):
                    if depth == 0:
                        raise NotAFile(f"{node_cid} is a UnixFS {fs.type.name.lower()}, not a file")
                    raise InvalidNode(f"UnixFS {fs.type.name.lower()} {node_cid} inside a file")
                content, total = _file_layout(node_cid, node, fs)
                links = tuple((link.cid, size) for link, size in zip(node.links, fs.blocksizes, strict=True))
                if nodes is not None and links:
                    nodes.put(node_cid, FileNode(content, total, links))
        if expected is not None and total != expected:
            raise InvalidNode(f"{node_cid} holds {total} bytes but its parent says {expected}")
        children: list[tuple[CID, int, int | None, int]] = []
        if links:
            if depth >= MAX_DEPTH:
                raise InvalidNode(f"file DAG deeper than {MAX_DEPTH} levels at {node_cid}")
            pos = start + len(content)
            for link_cid, size in links:
                child_start = pos
                pos += size
                if end is not None and child_start >= end:
                    break
                if pos <= offset or size == 0:
                    continue
                children.append((link_cid, child_start, size, depth + 1))
        if content:
            lo = max(offset - start, 0)
            hi = len(content) if end is None else min(end - start, len(content))
            if lo < hi:
                yield content if (lo == 0 and hi == len(content)) else content[lo:hi]
        if children:
            wanted: Sequence[CID] = [child[0] for child in children]
            if locator is not None:
                wanted = locator.prepare(wanted)
            if wanted:
                source.prefetch(wanted)
            stack.extend(reversed(children))


async def stat(source: BlockSource, cid: CID) -> NodeInfo:
    """Describe one node: its UnixFS type, content size, block size, cumulative size and links."""
    block = await load_block(source, cid)
    if cid.codec == RAW:
        return NodeInfo(cid, "raw", len(block), len(block), len(block), ())
    node, fs = decode_unixfs_node(cid, block)
    links = tuple(DirEntry(link.name or "", link.cid, link.tsize) for link in node.links)
    cumulative = len(block) + sum(link.tsize or 0 for link in node.links)
    kind: NodeType
    size = 0
    if fs.type in (DataType.FILE, DataType.RAW):
        kind = "file"
        size = _file_layout(cid, node, fs)[1]
    elif fs.type == DataType.DIRECTORY:
        kind = "directory"
    elif fs.type == DataType.HAMT_SHARD:
        kind = "hamt"
        parse_shard(node, fs)
    elif fs.type == DataType.SYMLINK:
        kind = "symlink"
        size = len(fs.data or b"")
    else:
        kind = "metadata"
    return NodeInfo(cid, kind, size, len(block), cumulative, links)


async def _directory_node(source: BlockSource, cid: CID, context: str) -> tuple[dagpb.PBNode, UnixFSData]:
    block = await load_block(source, cid)
    if cid.codec != DAG_PB:
        raise NotADirectory(f"{context}: {cid} is a raw block, not a directory")
    node, fs = decode_unixfs_node(cid, block)
    if fs.type not in (DataType.DIRECTORY, DataType.HAMT_SHARD):
        raise NotADirectory(f"{context}: {cid} is a UnixFS {fs.type.name.lower()}, not a directory")
    return node, fs


async def _hamt_lookup(source: BlockSource, node: dagpb.PBNode, fs: UnixFSData, name: str) -> CID | None:
    name_hash = murmur3_x64_64(dagpb.encode_name(name))
    depth = 0
    while True:
        shard = parse_shard(node, fs)
        link = shard.find(bucket_index(name_hash, depth, shard.bits))
        if link is None:
            return None
        if link.name is not None:
            return link.cid if link.name == name else None
        depth += 1
        if depth >= MAX_DEPTH:
            raise InvalidNode("HAMT deeper than the name hash allows")
        block = await load_block(source, link.cid)
        node, fs = decode_unixfs_node(link.cid, block)


async def lookup(source: BlockSource, cid: CID, name: str) -> CID | None:
    """The CID of entry ``name`` in the directory ``cid`` (basic or HAMT), or None."""
    node, fs = await _directory_node(source, cid, f"looking up {name!r}")
    if fs.type == DataType.HAMT_SHARD:
        return await _hamt_lookup(source, node, fs, name)
    for link in node.links:
        if link.name == name:
            return link.cid
    return None


async def resolve_path(source: BlockSource, cid: CID, path: str) -> CID:
    """Follow a slash-separated path (e.g. ``blobs/sha256/<hex>``) through basic and HAMT directories."""
    current = cid
    for segment in (part for part in path.split("/") if part):
        found = await lookup(source, current, segment)
        if found is None:
            raise PathNotFound(path, segment)
        current = found
    return current


async def list_directory(source: BlockSource, cid: CID) -> list[DirEntry]:
    """The entries of a basic directory in link order, or of a HAMT directory in shard order."""
    node, fs = await _directory_node(source, cid, "listing")
    if fs.type == DataType.DIRECTORY:
        return [DirEntry(link.name or "", link.cid, link.tsize) for link in node.links]
    return await _list_shard(source, node, fs, 0)


async def _list_shard(source: BlockSource, node: dagpb.PBNode, fs: UnixFSData, depth: int) -> list[DirEntry]:
    """A shard's entries in bucket order, each sub-shard expanded in place of its bucket."""
    shard = parse_shard(node, fs)
    sub_cids = [link.cid for link in shard.links if link.name is None]
    if sub_cids:
        if depth + 1 >= MAX_DEPTH:
            raise InvalidNode("HAMT deeper than the name hash allows")
        source.prefetch(sub_cids)
    out: list[DirEntry] = []
    for link in shard.links:
        if link.name is not None:
            out.append(DirEntry(link.name, link.cid, link.tsize))
            continue
        child_node, child_fs = decode_unixfs_node(link.cid, await load_block(source, link.cid))
        if child_fs.type != DataType.HAMT_SHARD:
            raise InvalidNode(f"HAMT child {link.cid} is not a shard")
        out.extend(await _list_shard(source, child_node, child_fs, depth + 1))
    return out


async def walk_dag(
    source: BlockSource, cid: CID, *, seen: set[CID] | None = None
) -> AsyncIterator[tuple[CID, bytes]]:
    """Every block reachable from ``cid``, depth-first pre-order, links in order, each CID once.

    dag-pb links are followed; raw, identity and other codecs' blocks are leaves. Pass ``seen`` to
    share the visited set across several roots (CAR export with many roots).
    """
    visited = seen if seen is not None else set()
    stack = [cid]
    while stack:
        current = stack.pop()
        if current in visited:
            continue
        visited.add(current)
        block = await load_block(source, current)
        yield current, block
        if current.codec == DAG_PB:
            node = dagpb.decode(block)
            children = [link.cid for link in node.links if link.cid not in visited]
            if children:
                source.prefetch(children)
                stack.extend(reversed(children))
