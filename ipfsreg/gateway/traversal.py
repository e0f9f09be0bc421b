"""Which blocks a trustless gateway response carries: content path resolution and ``dag-scope`` walks.

:func:`resolve_content_path` loads the root and every block needed to verify each path segment (a
basic directory's node, or the HAMT shards on the way to the entry) before any response is sent, so
a missing root or entry is a clean 404. :func:`scope_blocks` then yields, depth first, the blocks of
the terminal entity for ``dag-scope`` block / entity (a whole UnixFS file, the shards of a HAMT
directory, only the byte range's blocks under ``entity-bytes``) / all (every reachable block).
Identity CIDs are followed but never yielded: their bytes already sit in the parent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import dag_cbor

from ipfsreg.cid import CID, DAG_PB, IDENTITY, RAW, CIDError
from ipfsreg.gateway.errors import ContentNotFound, NotImplementedByGateway
from ipfsreg.gateway.request import DagScope, EntityBytes
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import DataType, UnixFSData
from ipfsreg.unixfs.errors import InvalidNode
from ipfsreg.unixfs.exporter import MAX_DEPTH, BlockSource, decode_unixfs_node, load_block
from ipfsreg.unixfs.hamt import bucket_index, murmur3_x64_64, parse_shard

DAG_CBOR: Final = 0x71
Blocks = list[tuple[CID, bytes]]


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    terminal: CID
    terminal_block: bytes
    path_blocks: Blocks
    """Blocks that verify the path, in traversal order (the terminal's block is not among them)."""
    roots: tuple[CID, ...]
    """The root and the CID each path segment resolved to (``X-Ipfs-Roots``)."""


def has_pb_links(block: bytes) -> bool:
    """Whether a dag-pb block has links: canonical dag-pb puts Links (field 2, tag 0x12) before Data,
    and the strict decoder refuses any other order, so a block not starting with 0x12 has none."""
    return block[:1] == b"\x12"


def is_identity(cid: CID) -> bool:
    return cid.multihash[:1] == b"\x00" and cid.hash_code == IDENTITY


def _cbor_links(value: Any, out: list[CID]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _cbor_links(item, out)
    elif isinstance(value, list):
        for item in value:
            _cbor_links(item, out)
    elif type(value).__name__ == "CID" and hasattr(value, "version"):
        try:
            out.append(CID.decode(bytes(value)))
        except CIDError as exc:
            raise InvalidNode(f"unsupported CID in dag-cbor block: {exc}") from None


def block_links(cid: CID, block: bytes) -> list[CID]:
    """The CIDs a block links to, in order: dag-pb links, dag-cbor tag-42 links; none for other codecs."""
    if cid.codec == DAG_PB:
        if not has_pb_links(block):
            return []
        return [link.cid for link in dagpb.decode(block).links]
    if cid.codec == DAG_CBOR:
        try:
            value = dag_cbor.decode(block)
        except Exception as exc:  # dag_cbor raises several error types for malformed input
            raise InvalidNode(f"{cid} is not valid dag-cbor: {exc}") from None
        out: list[CID] = []
        _cbor_links(value, out)
        return out
    return []


async def _lookup(source: BlockSource, cid: CID, block: bytes, name: str, path_blocks: Blocks) -> CID:
    """The CID of ``name`` in the UnixFS directory ``cid``; HAMT shards visited go into ``path_blocks``."""
    if cid.codec == RAW:
        raise ContentNotFound(f"no link named {name!r} under {cid}: a raw block has no links")
    if cid.codec != DAG_PB:
        raise NotImplementedByGateway(f"path traversal through {cid.codec_name} ({cid}) is not supported")
    node, fs = decode_unixfs_node(cid, block)
    if fs.type == DataType.DIRECTORY:
        for entry in node.links:
            if entry.name == name:
                return entry.cid
        raise ContentNotFound(f"no link named {name!r} under {cid}")
    if fs.type != DataType.HAMT_SHARD:
        raise ContentNotFound(f"no link named {name!r} under {cid}: it is a UnixFS {fs.type.name.lower()}")
    name_hash = murmur3_x64_64(dagpb.encode_name(name))
    for depth in range(MAX_DEPTH):
        shard = parse_shard(node, fs)
        link = shard.find(bucket_index(name_hash, depth, shard.bits))
        if link is None:
            break
        if link.name is not None:
            if link.name == name:
                return link.cid
            break
        shard_block = await load_block(source, link.cid)
        path_blocks.append((link.cid, shard_block))
        node, fs = decode_unixfs_node(link.cid, shard_block)
        if fs.type != DataType.HAMT_SHARD:
            raise InvalidNode(f"HAMT child {link.cid} is not a shard")
    else:
        raise InvalidNode("HAMT deeper than the name hash allows")
    raise ContentNotFound(f"no link named {name!r} under {cid}")


async def resolve_content_path(source: BlockSource, root: CID, segments: tuple[str, ...]) -> ResolvedPath:
    """Walk ``segments`` from ``root``; raises the source's not-found error or ContentNotFound."""
    current = root
    block = await load_block(source, root)
    path_blocks: Blocks = []
    roots = [root]
    for segment in segments:
        path_blocks.append((current, block))
        current = await _lookup(source, current, block, segment, path_blocks)
        block = await load_block(source, current)
        roots.append(current)
    return ResolvedPath(current, block, path_blocks, tuple(roots))


def _unixfs(cid: CID, block: bytes) -> tuple[dagpb.PBNode, UnixFSData] | None:
    """The UnixFS view of a dag-pb block, None for other codecs."""
    if cid.codec != DAG_PB:
        return None
    return decode_unixfs_node(cid, block)


def entity_size(cid: CID, block: bytes) -> int | None:
    """The byte length of a file entity (a raw block or a UnixFS file root); None for anything else."""
    if cid.codec == RAW:
        return len(block)
    view = _unixfs(cid, block)
    if view is None:
        return None
    node, fs = view
    if fs.type not in (DataType.FILE, DataType.RAW):
        return None
    if len(fs.blocksizes) != len(node.links):
        raise InvalidNode(f"file node {cid} has {len(node.links)} links but {len(fs.blocksizes)} blocksizes")
    return len(fs.data or b"") + sum(fs.blocksizes)


class Emitter:
    """Drops identity blocks and, with ``dups=n``, blocks (CIDs) already sent in this response."""

    def __init__(self, dups: bool) -> None:
        self.dups = dups
        self.sent: set[CID] = set()

    def admit(self, cid: CID) -> bool:
        if is_identity(cid):
            return False
        if self.dups:
            return True
        if cid in self.sent:
            return False
        self.sent.add(cid)
        return True

    def already_sent(self, cid: CID) -> bool:
        return not self.dups and cid in self.sent


async def _walk_all(
    source: BlockSource, cid: CID, block: bytes, emitter: Emitter
) -> AsyncIterator[tuple[CID, bytes]]:
    """Every block reachable from ``cid``, depth-first pre-order; with dups=n a sent subtree is skipped."""
    stack: list[tuple[CID, bytes | None]] = [(cid, block)]
    while stack:
        current, data = stack.pop()
        if emitter.already_sent(current):
            continue
        if data is None:
            data = await load_block(source, current)
        if emitter.admit(current):
            yield current, data
        children = block_links(current, data)
        if children:
            source.prefetch([c for c in children if not is_identity(c)])
            stack.extend((child, None) for child in reversed(children))


async def _walk_file(
    source: BlockSource, cid: CID, block: bytes, span: tuple[int, int] | None, emitter: Emitter
) -> AsyncIterator[tuple[CID, bytes]]:
    """The blocks of a UnixFS file needed for the byte range ``span`` = [lo, hi) (the whole file if None)."""
    # (cid, block or None, file offset where the node's content starts, depth)
    stack: list[tuple[CID, bytes | None, int, int]] = [(cid, block, 0, 0)]
    while stack:
        current, data, start, depth = stack.pop()
        if span is None and emitter.already_sent(current):
            continue  # the whole subtree went out with its first occurrence
        if data is None:
            data = await load_block(source, current)
        if emitter.admit(current):
            yield current, data
        if current.codec != DAG_PB or not has_pb_links(data):
            continue  # a leaf: the fast path for the bulk of a file's blocks
        node, fs = decode_unixfs_node(current, data)
        if fs.type not in (DataType.FILE, DataType.RAW):
            raise InvalidNode(f"UnixFS {fs.type.name.lower()} {current} inside a file")
        if not node.links:
            continue
        if len(fs.blocksizes) != len(node.links):
            raise InvalidNode(
                f"file node {current} has {len(node.links)} links but {len(fs.blocksizes)} sizes"
            )
        if depth >= MAX_DEPTH:
            raise InvalidNode(f"file DAG deeper than {MAX_DEPTH} levels at {current}")
        children: list[tuple[CID, bytes | None, int, int]] = []
        pos = start + len(fs.data or b"")
        for link, size in zip(node.links, fs.blocksizes, strict=True):
            child_start, pos = pos, pos + size
            if span is not None and (child_start >= span[1] or pos <= span[0] or size == 0):
                continue
            children.append((link.cid, None, child_start, depth + 1))
        if children:
            source.prefetch([child[0] for child in children])
            stack.extend(reversed(children))


async def _walk_shards(
    source: BlockSource, cid: CID, block: bytes, emitter: Emitter
) -> AsyncIterator[tuple[CID, bytes]]:
    """A HAMT directory's shard nodes (not its entries), depth first."""
    stack: list[tuple[CID, bytes | None, int]] = [(cid, block, 0)]
    while stack:
        current, data, depth = stack.pop()
        if data is None:
            data = await load_block(source, current)
        if emitter.admit(current):
            yield current, data
        node, fs = decode_unixfs_node(current, data)
        if fs.type != DataType.HAMT_SHARD:
            raise InvalidNode(f"HAMT child {current} is not a shard")
        shard = parse_shard(node, fs)
        subs = [link.cid for link in shard.links if link.name is None]
        if subs:
            if depth + 1 >= MAX_DEPTH:
                raise InvalidNode("HAMT deeper than the name hash allows")
            source.prefetch(subs)
            stack.extend((sub, None, depth + 1) for sub in reversed(subs))


async def scope_blocks(
    source: BlockSource,
    cid: CID,
    block: bytes,
    scope: DagScope,
    entity_bytes: EntityBytes | None,
    emitter: Emitter,
) -> AsyncIterator[tuple[CID, bytes]]:
    """The blocks of the terminal entity ``cid`` (whose ``block`` is loaded) for a dag-scope."""
    if scope is DagScope.ALL:
        async for item in _walk_all(source, cid, block, emitter):
            yield item
        return
    if scope is DagScope.ENTITY:
        view = _unixfs(cid, block)
        if view is not None and view[1].type in (DataType.FILE, DataType.RAW):
            span = None
            if entity_bytes is not None:
                size = entity_size(cid, block)
                assert size is not None
                span = entity_bytes.resolve(size)
                if span is None:  # an empty range (one past the end got a 400 upfront): the root block
                    if emitter.admit(cid):
                        yield cid, block
                    return
            async for item in _walk_file(source, cid, block, span, emitter):
                yield item
            return
        if view is not None and view[1].type == DataType.HAMT_SHARD:
            async for item in _walk_shards(source, cid, block, emitter):
                yield item
            return
    if emitter.admit(cid):
        yield cid, block
