"""Block selection of the gateway without HTTP: any entity-bytes range of any file DAG shape yields exactly
the blocks holding that range, and those blocks alone rebuild the bytes."""

from __future__ import annotations

import trio
from gateway_support import MemorySource, dfs, file_blocks_for_range
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfsreg.cid import CID, RAW
from ipfsreg.gateway.request import DagScope, EntityBytes
from ipfsreg.gateway.traversal import Emitter, block_links, resolve_content_path, scope_blocks
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.importer import ImportOptions, import_bytes


def _leaf_bytes(cid: CID, block: bytes) -> bytes | None:
    if cid.codec == RAW:
        return block
    node = dagpb.decode(block)
    if node.links:
        return None
    return decode_unixfs(node.data or b"").data or b""


async def _collect(
    source: MemorySource, root: CID, scope: DagScope, eb: EntityBytes | None, dups: bool
) -> list[CID]:
    block = await source.get(root)
    return [cid async for cid, _ in scope_blocks(source, root, block, scope, eb, Emitter(dups))]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 6000),
    chunk=st.sampled_from([1, 7, 64, 500]),
    max_links=st.integers(2, 5),
    raw_leaves=st.booleans(),
    start=st.integers(-7000, 7000),
    end=st.one_of(st.none(), st.integers(-7000, 7000)),
    dups=st.booleans(),
)
def test_entity_bytes_selects_exactly_the_blocks_of_the_range(
    size: int, chunk: int, max_links: int, raw_leaves: bool, start: int, end: int | None, dups: bool
) -> None:
    if end is not None and (start >= 0) == (end >= 0) and end < start:
        return  # a 400 at parse time
    data = bytes((i * 7 + i // 256) % 251 for i in range(size))
    options = ImportOptions(chunk_size=chunk, max_links=max_links, cid_version=1 if raw_leaves else 0)
    blocks, result = import_bytes(data, options)
    source = MemorySource()
    source.add(blocks)
    eb = EntityBytes(start, end)
    got = trio.run(_collect, source, result.cid, DagScope.ENTITY, eb, dups)
    span = eb.resolve(size)
    if span is None:
        assert got == [result.cid]
        return
    lo, hi = span
    if result.cid.codec == RAW:
        assert got == [result.cid]
        return
    assert got == file_blocks_for_range(source, result.cid, lo, hi, dups=dups)
    if not dups:
        return
    pieces = [_leaf_bytes(cid, source.blocks[cid.multihash]) for cid in got]
    rebuilt = b"".join(piece for piece in pieces if piece is not None)
    first = (lo // chunk) * chunk
    assert rebuilt[lo - first : hi - first] == data[lo:hi]


async def test_dag_scope_all_with_dups_yields_every_occurrence() -> None:
    blocks, result = import_bytes(bytes(4096), ImportOptions(chunk_size=256, max_links=3))
    source = MemorySource()
    source.add(blocks)
    block = await source.get(result.cid)
    once = [c async for c, _ in scope_blocks(source, result.cid, block, DagScope.ALL, None, Emitter(False))]
    every = [c async for c, _ in scope_blocks(source, result.cid, block, DagScope.ALL, None, Emitter(True))]
    assert once == dfs(source, result.cid)
    assert every == dfs(source, result.cid, dups=True)
    assert len(set(once)) == len(once) < len(every)


def test_dag_cbor_links_are_followed_in_order() -> None:
    a, b = CID.hash(b"a"), CID.hash(b"b")
    # {"x": [CID(a)], "y": CID(b)} in canonical dag-cbor
    raw_a = b"\x00" + a.to_bytes()
    raw_b = b"\x00" + b.to_bytes()
    block = (
        b"\xa2\x61x\x81\xd8\x2a\x58"
        + bytes([len(raw_a)])
        + raw_a
        + b"\x61y\xd8\x2a\x58"
        + bytes([len(raw_b)])
        + raw_b
    )
    assert block_links(CID.hash(block, codec=0x71), block) == [a, b]
    assert block_links(a, b"a") == []


async def test_resolved_path_lists_the_cid_of_every_segment() -> None:
    from ipfsreg.unixfs.directory import build_directory

    blocks, file = import_bytes(b"content")
    inner = build_directory({"f": (file.cid, file.dag_size)})
    outer = build_directory({"d": (inner.cid, len(inner.data) + file.dag_size)})
    source = MemorySource()
    source.add([*blocks, inner, outer])
    resolved = await resolve_content_path(source, outer.cid, ("d", "f"))
    assert resolved.roots == (outer.cid, inner.cid, file.cid)
    assert [cid for cid, _ in resolved.path_blocks] == [outer.cid, inner.cid]
    assert resolved.terminal == file.cid
