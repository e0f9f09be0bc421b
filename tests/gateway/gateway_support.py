"""Test support for tests/gateway: a UnixFS fixture tree in memory and the gateway served on loopback."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from ipfsreg.blockstore import BlockNotFound
from ipfsreg.cid import CID, RAW
from ipfsreg.gateway import register_gateway
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.car import CarBlock, CarReader
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.directory import DirectoryOptions, build_any_directory
from ipfsreg.unixfs.importer import Block, ImportOptions, import_bytes

SMALL_CHUNKS = ImportOptions(chunk_size=1024, max_links=4)


class MemorySource:
    """A BlockSource over a dict; blocks can be removed to simulate content nobody has."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}

    def add(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            self.blocks[block.cid.multihash] = block.data

    async def get(self, cid: CID) -> bytes:
        await trio.lowlevel.checkpoint()
        try:
            return self.blocks[cid.multihash]
        except KeyError:
            raise BlockNotFound(cid) from None

    def prefetch(self, cids: Sequence[CID]) -> None:
        return None


@dataclass
class Fixture:
    """root/
    a.txt            small text file
    sub/big.bin      10 KiB in 1 KiB chunks, 4 links per node (root -> 3 parents -> 10 leaves)
    sub/zeros.bin    8 KiB of zeros (8 identical leaves under 2 identical parents)
    site/index.html  a directory with an index page
    hamt/            60 entries sharded with fanout 16 (sub-shards)
    """

    source: MemorySource
    root: CID
    sub: CID
    big: CID
    big_data: bytes
    zeros: CID
    a_txt: CID
    site: CID
    hamt: CID
    hamt_files: dict[str, bytes]


def _file(source: MemorySource, data: bytes, options: ImportOptions = SMALL_CHUNKS) -> tuple[CID, int]:
    blocks, result = import_bytes(data, options)
    source.add(blocks)
    return result.cid, result.dag_size


def _dir(source: MemorySource, entries: dict[str, tuple[CID, int]], **kwargs: int) -> tuple[CID, int]:
    blocks, cid, size = build_any_directory(entries, DirectoryOptions(**kwargs))
    source.add(blocks)
    return cid, size


def build_fixture() -> Fixture:
    source = MemorySource()
    big_data = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(320))  # 10 KiB, no repeats
    big = _file(source, big_data)
    zeros = _file(source, bytes(8192))
    a_txt = _file(source, b"hello gateway\n")
    sub = _dir(source, {"big.bin": big, "zeros.bin": zeros})
    index = _file(source, b"<html><body>site index</body></html>")
    site = _dir(source, {"index.html": index, "about.txt": a_txt})
    hamt_files = {f"file-{i:03d}.txt": f"content of file {i}\n".encode() for i in range(60)}
    hamt = _dir(
        source,
        {name: _file(source, data) for name, data in hamt_files.items()},
        hamt_threshold=1,
        hamt_fanout=16,
    )
    root = _dir(source, {"a.txt": a_txt, "sub": sub, "site": site, "hamt": hamt})
    return Fixture(
        source, root[0], sub[0], big[0], big_data, zeros[0], a_txt[0], site[0], hamt[0], hamt_files
    )


def links(source: MemorySource, cid: CID) -> list[CID]:
    if cid.codec != 0x70:
        return []
    return [link.cid for link in dagpb.decode(source.blocks[cid.multihash]).links]


def dfs(source: MemorySource, cid: CID, *, dups: bool = False) -> list[CID]:
    """Every block under ``cid`` in depth-first pre-order (each once unless ``dups``)."""
    out: list[CID] = []
    seen: set[CID] = set()

    def visit(node: CID) -> None:
        if not dups and node in seen:
            return
        seen.add(node)
        out.append(node)
        for child in links(source, node):
            visit(child)

    visit(cid)
    return out


def file_blocks_for_range(
    source: MemorySource, root: CID, lo: int, hi: int, *, dups: bool = False
) -> list[CID]:
    """The blocks of a file DAG whose content overlaps bytes [lo, hi), depth-first (each once unless dups)."""
    out: list[CID] = []

    def visit(node: CID, start: int) -> int:
        block = source.blocks[node.multihash]
        if node.codec == RAW:
            if start < hi and start + len(block) > lo:
                out.append(node)
            return len(block)
        pb = dagpb.decode(block)
        fs = decode_unixfs(pb.data or b"")
        size = len(fs.data or b"") + sum(fs.blocksizes)
        if start < hi and start + size > lo:
            out.append(node)
            pos = start + len(fs.data or b"")
            for link in pb.links:
                pos += visit(link.cid, pos)
        return size

    visit(root, 0)
    return out if dups else list(dict.fromkeys(out))


def parse_car_verified(data: bytes) -> tuple[tuple[CID, ...], list[CarBlock]]:
    """Decode a CAR, verifying every block against its CID."""
    reader = CarReader(verify=True)
    events = reader.feed(data)
    reader.close()
    assert reader.header is not None
    return reader.header.roots, [e for e in events if isinstance(e, CarBlock)]


@asynccontextmanager
async def serve_app(app: QuartTrio) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` with hypercorn on a free loopback port in this trio loop; yield a client for it."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        async with httpx.AsyncClient(base_url=binds[0], timeout=30) as client:
            yield client
        nursery.cancel_scope.cancel()


def gateway_app(source: MemorySource) -> QuartTrio:
    app = QuartTrio(__name__)
    register_gateway(app, lambda: source)
    return app
