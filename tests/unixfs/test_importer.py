"""The streaming importer: split-invariance, resumable snapshots, subtree bookkeeping and option checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unixfs_support import MemorySource, deterministic_bytes

from ipfsreg.cid import DAG_PB, RAW
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import DataType
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import read_file
from ipfsreg.unixfs.importer import Block, FileImporter, ImportOptions, import_bytes

SMALL = ImportOptions(chunk_size=7, max_links=3)
SMALL_V1 = ImportOptions(chunk_size=7, max_links=3, cid_version=1)
DATA = deterministic_bytes(7 * 3 * 3 * 3 + 11, "importer")  # four levels with max_links=3


def split_points(data_len: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, data_len), max_size=12).map(sorted)


def feed(importer: FileImporter, data: bytes, cuts: list[int]) -> list[Block]:
    blocks: list[Block] = []
    last = 0
    for cut in [*cuts, len(data)]:
        blocks += importer.write(data[last:cut])
        last = cut
    return blocks


@settings(max_examples=60, deadline=None)
@given(cuts=split_points(len(DATA)), options=st.sampled_from([SMALL, SMALL_V1]))
def test_any_split_of_the_input_gives_the_same_blocks(cuts: list[int], options: ImportOptions) -> None:
    expected, expected_result = import_bytes(DATA, options)
    importer = FileImporter(options)
    blocks = feed(importer, DATA, cuts)
    rest, result = importer.finish()
    assert blocks + rest == expected
    assert result == expected_result


@settings(max_examples=60, deadline=None)
@given(cuts=split_points(len(DATA)), stop=st.integers(0, len(DATA)))
def test_snapshot_and_restore_mid_stream_gives_the_same_root(cuts: list[int], stop: int) -> None:
    expected, expected_result = import_bytes(DATA, SMALL)
    first = FileImporter(SMALL)
    before = feed(first, DATA[:stop], [c for c in cuts if c < stop])
    resumed = FileImporter.restore(first.snapshot())
    assert resumed.bytes_written == stop
    after = resumed.write(DATA[stop:])
    rest, result = resumed.finish()
    assert result == expected_result
    assert before + after + rest == expected


@settings(max_examples=60, deadline=None)
@given(cuts=split_points(len(DATA)), compact_after=st.sets(st.integers(0, 40)))
def test_compacting_between_writes_gives_the_same_blocks(cuts: list[int], compact_after: set[int]) -> None:
    expected, expected_result = import_bytes(DATA, SMALL)
    importer = FileImporter(SMALL)
    blocks: list[Block] = []
    last = 0
    for i, cut in enumerate([*cuts, len(DATA)]):
        blocks += importer.write(DATA[last:cut])
        last = cut
        if i in compact_after:
            importer.compact()
    rest, result = importer.finish()
    assert blocks + rest == expected
    assert result == expected_result


def test_chunk_buffer_is_allocated_when_bytes_arrive_and_compact_gives_it_back() -> None:
    # An upload session that is opened and left must not cost a chunk of memory (256 KiB each).
    options = ImportOptions(chunk_size=262144)
    importer = FileImporter(options)
    assert len(importer._buf) == 0
    importer.write(b"x" * 1000)
    assert len(importer._buf) == 262144
    importer.compact()
    assert len(importer._buf) == 1000 and importer.buffered() == b"x" * 1000
    importer.write(b"y" * 262144)  # fills the chunk: one leaf out, 1000 bytes pending again
    assert importer.buffered() == b"y" * 1000
    restored = FileImporter.restore(importer.snapshot())
    assert len(restored._buf) == 1000


async def test_written_subtrees_and_buffer_reproduce_the_written_bytes() -> None:
    importer = FileImporter(SMALL)
    source = MemorySource()
    for block in importer.write(DATA[:100]):
        source.add(block.cid, block.data)
    subtrees = importer.written_subtrees()
    assert sum(size for _, size in subtrees) + len(importer.buffered()) == 100
    rebuilt = b""
    for cid, size in subtrees:
        piece = b"".join([chunk async for chunk in read_file(source, cid)])
        assert len(piece) == size
        rebuilt += piece
    assert rebuilt + importer.buffered() == DATA[:100]
    assert len(importer.buffered()) == 100 % 7


def test_blocks_come_children_first_and_root_last() -> None:
    blocks, result = import_bytes(DATA, SMALL)
    assert blocks[-1].cid == result.cid
    seen: set[bytes] = set()
    for block in blocks:
        if block.cid.codec == DAG_PB:
            for link in dagpb.decode(block.data).links:
                assert link.cid.multihash in seen
        seen.add(block.cid.multihash)


def test_dag_size_is_the_sum_of_distinct_blocks_for_unique_data() -> None:
    blocks, result = import_bytes(DATA, SMALL)
    assert result.dag_size == sum(len(b.data) for b in blocks)
    assert result.size == len(DATA)


def test_interior_nodes_carry_filesize_and_blocksizes() -> None:
    blocks, _ = import_bytes(DATA, SMALL)
    root = dagpb.decode(blocks[-1].data)
    fs = decode_unixfs(root.data or b"")
    assert fs.type == DataType.FILE and fs.data is None
    assert fs.filesize == len(DATA) == sum(fs.blocksizes)
    assert all(link.name == "" and link.tsize for link in root.links)


def test_raw_leaves_with_cid_v0_make_v1_raw_leaves_under_v0_parents() -> None:
    blocks, result = import_bytes(DATA[:20], ImportOptions(chunk_size=7, raw_leaves=True))
    assert [b.cid.codec for b in blocks] == [RAW, RAW, RAW, DAG_PB]
    assert result.cid.version == 0 and blocks[0].cid.version == 1


def test_single_chunk_with_raw_leaves_and_cid_v0_is_the_raw_leaf() -> None:
    _, result = import_bytes(b"abc", ImportOptions(raw_leaves=True))
    assert result.cid.codec == RAW and result.cid.version == 1


def test_memoryview_and_bytearray_input() -> None:
    expected = import_bytes(DATA, SMALL)
    assert import_bytes(memoryview(DATA), SMALL) == expected
    assert import_bytes(bytearray(DATA), SMALL) == expected
    wide = memoryview(DATA[:96]).cast("I")
    assert import_bytes(wide, SMALL) == import_bytes(DATA[:96], SMALL)


@pytest.mark.parametrize(
    "kwargs",
    [{"chunk_size": 0}, {"chunk_size": 1048577}, {"cid_version": 2}, {"max_links": 1}, {"max_links": 16385}],
)
def test_invalid_options_raise_value_error(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ImportOptions(**kwargs)  # type: ignore[arg-type]


def test_write_or_finish_after_finish_raises() -> None:
    importer = FileImporter()
    importer.finish()
    with pytest.raises(UnixFSError):
        importer.write(b"x")
    with pytest.raises(UnixFSError):
        importer.finish()
    with pytest.raises(UnixFSError):
        importer.snapshot()


def test_corrupt_snapshots_are_refused() -> None:
    importer = FileImporter(SMALL)
    importer.write(DATA[:50])
    good = importer.snapshot()
    header = len(b"ipfsreg.FileImporter/1\n") + 4  # magic, chunk size, version, raw leaves, max links
    assert good[header] == 50  # the byte count
    miscounted = good[:header] + b"\x33" + good[header + 1 :]
    for bad in [b"", b"nonsense", good[:-1], good + b"\x00", miscounted]:
        with pytest.raises(UnixFSError):
            FileImporter.restore(bad)


def test_restored_importer_keeps_options() -> None:
    options = ImportOptions(chunk_size=1000, cid_version=1, raw_leaves=False, max_links=5)
    importer = FileImporter(options)
    importer.write(b"x" * 2500)
    assert FileImporter.restore(importer.snapshot()).options == options
