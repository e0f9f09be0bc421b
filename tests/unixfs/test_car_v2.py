"""CAR v2: ipfsreg wraps a CARv1 in the layout go-car writes (pragma, header, payload at 51, its
MultihashIndexSorted index right after), reads CARv2s with and without an index and with padding,
checks an index against the payload, and refuses malformed input.

Every CAR here is made in this file: the payloads with ipfsreg's importer and ``export_car``, the CARv2
framing, the indexes and the malformed inputs by hand with struct and varint code, so the expected bytes
do not come from the writer under test. The comparison with go-car's own published fixtures is a check
run by hand (interop/car_go_fixtures.py); CI reads and writes CARv2s with npm's @ipld/car and cardex
(interop/test_js_car.py).
"""

from __future__ import annotations

import io
import struct
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Final

import pytest
import trio
from unixfs_support import MemorySource, deterministic_bytes

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import BLAKE2B_256, CID, IDENTITY, RAW, SHA2_256, decode_varint, encode_varint, multihash
from ipfsreg.unixfs.car import (
    CarBlock,
    CarHeader,
    CarReader,
    CarV2Header,
    CarV2Writer,
    check_index,
    export_car,
    import_car,
    multihash_index_sorted,
    parse_car,
    parse_index,
    wrap_car_v1,
)
from ipfsreg.unixfs.directory import build_directory
from ipfsreg.unixfs.errors import CarError
from ipfsreg.unixfs.importer import ImportOptions, import_bytes

# varint(10) {"version": 2}, written out here rather than taken from the code under test.
PRAGMA: Final = bytes.fromhex("0aa16776657273696f6e02")


def read(car: bytes, piece: int | None = None) -> tuple[CarHeader, list[CarBlock]]:
    reader = CarReader()
    events = []
    step = piece or len(car) or 1
    for i in range(0, len(car), step):
        events += reader.feed(car[i : i + step])
    reader.close()
    assert reader.header is not None and events[0] == reader.header
    return reader.header, [e for e in events if isinstance(e, CarBlock)]


def v2_parts(car: bytes) -> tuple[CarV2Header, bytes, bytes]:
    header = CarV2Header.decode(car[11:51])
    payload = car[header.data_offset : header.data_offset + header.data_size]
    return header, payload, car[header.index_offset :] if header.index_offset else b""


def sections_of(payload: bytes) -> dict[int, bytes]:
    return {block.offset: block.cid.multihash for block in read(payload)[1]}


# --- building CARs ------------------------------------------------------------------------


async def _export(source: MemorySource, roots: list[CID]) -> bytes:
    return b"".join([piece async for piece in export_car(source, roots)])


def export(blocks: Iterable[tuple[CID, bytes]], roots: list[CID]) -> bytes:
    return trio.run(_export, MemorySource(dict(blocks)), roots)


def hand_sections(v1: bytes) -> list[tuple[int, bytes]]:
    """(section offset, block multihash) of each block of a CARv1, walked with varints alone."""
    found = []
    length, pos = decode_varint(v1)
    pos += length  # the header
    while pos < len(v1):
        offset = pos
        length, pos = decode_varint(v1, pos)
        found.append((offset, CID.decode_prefix(v1[pos : pos + length])[0].multihash))
        pos += length
    return found


def _digest(mh: bytes) -> tuple[int, bytes]:
    code, pos = decode_varint(mh)
    length, pos = decode_varint(mh, pos)
    assert len(mh) - pos == length
    return code, mh[pos:]


def _buckets(records: Iterable[tuple[bytes, int]]) -> bytes:
    """u32 count, then per digest width ascending: u32 width, u64 length, sorted ``digest u64`` records."""
    by_width: dict[int, list[tuple[bytes, int]]] = {}
    for digest, offset in records:
        by_width.setdefault(len(digest) + 8, []).append((digest, offset))
    out = struct.pack("<I", len(by_width))
    for width in sorted(by_width):
        entries = sorted(by_width[width])
        out += struct.pack("<IQ", width, width * len(entries))
        out += b"".join(digest + struct.pack("<Q", offset) for digest, offset in entries)
    return out


def hand_index_sorted(sections: Iterable[tuple[int, bytes]]) -> bytes:
    """IndexSorted (0x0400): digests only, every block (identity CIDs too), as go-car's sample-index."""
    return encode_varint(0x0400) + _buckets((_digest(mh)[1], offset) for offset, mh in sections)


def hand_multihash_index_sorted(sections: Iterable[tuple[int, bytes]]) -> bytes:
    """MultihashIndexSorted (0x0401): u32 count, per code ascending u64 code and its buckets; no identity."""
    by_code: dict[int, list[tuple[bytes, int]]] = {}
    for offset, mh in sections:
        code, digest = _digest(mh)
        if code != IDENTITY:
            by_code.setdefault(code, []).append((digest, offset))
    out = encode_varint(0x0401) + struct.pack("<I", len(by_code))
    for code in sorted(by_code):
        out += struct.pack("<Q", code) + _buckets(by_code[code])
    return out


def hand_v2(payload: bytes, index: bytes = b"", *, padding: int = 0, data_offset: int | None = None) -> bytes:
    """Pragma, the 40-byte header (no characteristics), ``padding`` zero bytes, payload, index."""
    start = len(PRAGMA) + 40 + padding
    index_offset = start + len(payload) if index else 0
    fields = struct.pack("<QQQ", start if data_offset is None else data_offset, len(payload), index_offset)
    return PRAGMA + bytes(16) + fields + bytes(padding) + payload + index


def _sample() -> tuple[bytes, CID]:
    """A CARv1 of 305 blocks: a directory of two UnixFS files (sha2-256 dag-pb, 298 blocks) with three
    raw blake2b-256 blocks and three identity CIDs of 10 to 12 bytes between them, as export_car writes
    it (depth-first from the directory)."""
    blocks: dict[CID, bytes] = {}
    entries: dict[str, tuple[CID, int]] = {}
    for name, size in (("file-a.bin", 200_000), ("file-c.bin", 100_000)):
        file_blocks, result = import_bytes(deterministic_bytes(size, name), ImportOptions(chunk_size=1024))
        blocks.update((b.cid, b.data) for b in file_blocks)
        entries[name] = (result.cid, result.dag_size)
    for i in range(3):
        data = deterministic_bytes(200 + i, f"blake2b-{i}")
        cid = CID.v1(RAW, multihash(data, BLAKE2B_256))
        blocks[cid] = data
        entries[f"file-b{i}-blake2b"] = (cid, len(data))
        inline = deterministic_bytes(10 + i, f"identity-{i}")
        entries[f"file-b{i}-identity"] = (CID.v1(RAW, multihash(inline, IDENTITY)), len(inline))
    root = build_directory(entries)
    blocks[root.cid] = root.data
    return export(blocks.items(), [root.cid]), root.cid


SAMPLE_V1, SAMPLE_ROOT = _sample()
SAMPLE_BLOCKS: Final = 305
SAMPLE_SECTIONS: Final = hand_sections(SAMPLE_V1)
WRAPPED: Final = hand_v2(SAMPLE_V1, hand_multihash_index_sorted(SAMPLE_SECTIONS))
INDEXLESS: Final = hand_v2(SAMPLE_V1)
_, SAMPLE_PAYLOAD, SAMPLE_INDEX = v2_parts(WRAPPED)


def _small_unixfs() -> bytes:
    """A CARv1 of a two-chunk UnixFS file: a dag-pb root and two raw leaves (CIDv1)."""
    file_blocks, result = import_bytes(
        deterministic_bytes(100, "small"), ImportOptions(chunk_size=50, cid_version=1)
    )
    return export(((b.cid, b.data) for b in file_blocks), [result.cid])


def _three_roots() -> bytes:
    """A CARv1 of three small raw blocks, each of them a root."""
    blocks = {CID.hash(data): data for data in (b"abcd", b"ipfsreg", b"car v2 ok")}
    return export(blocks.items(), list(blocks))


SMALL_UNIXFS: Final = _small_unixfs()
THREE_ROOTS: Final = _three_roots()
# A CARv2 whose payload starts at 1464, after 1413 bytes of padding (as in go-car's sample-rw-bs-v2.car);
# its index follows the payload.
PADDED: Final = hand_v2(THREE_ROOTS, hand_multihash_index_sorted(hand_sections(THREE_ROOTS)), padding=1413)


# --- tests ----------------------------------------------------------------------------------


def test_the_sample_holds_sha2_256_blake2b_256_and_identity_blocks() -> None:
    roots, blocks = parse_car(SAMPLE_V1)
    assert roots == (SAMPLE_ROOT,) and len(blocks) == len(SAMPLE_SECTIONS) == SAMPLE_BLOCKS
    codes = [b.cid.hash_code for b in blocks]
    assert (codes.count(SHA2_256), codes.count(BLAKE2B_256), codes.count(IDENTITY)) == (299, 3, 3)
    assert codes[0] == codes[-1] == SHA2_256  # identity and blake2b blocks lie between the files


def test_wrapping_a_v1_gives_go_cars_layout_byte_for_byte() -> None:
    expected = (
        PRAGMA
        + bytes(16)
        + struct.pack("<QQQ", 51, len(SAMPLE_V1), 51 + len(SAMPLE_V1))
        + SAMPLE_V1
        + hand_multihash_index_sorted(SAMPLE_SECTIONS)
    )
    assert wrap_car_v1(SAMPLE_V1) == expected == WRAPPED


@pytest.mark.parametrize(
    "car",
    [hand_v2(SMALL_UNIXFS, hand_multihash_index_sorted(hand_sections(SMALL_UNIXFS))), PADDED],
    ids=["unpadded", "padded"],
)
def test_rewrapping_the_payload_of_a_v2_gives_its_index(car: bytes) -> None:
    _, payload, index = v2_parts(car)
    assert index and v2_parts(wrap_car_v1(payload))[2] == index


@pytest.mark.parametrize("car", [WRAPPED, INDEXLESS], ids=["indexed", "indexless"])
def test_a_v2_has_the_roots_and_blocks_of_its_v1(car: bytes) -> None:
    v1_header, v1_blocks = read(SAMPLE_V1)
    header, blocks = read(car)
    assert (header.version, header.roots) == (2, v1_header.roots)
    assert header.v2 is not None and header.v2.data_offset == 51
    assert [(b.cid, b.data, b.offset) for b in blocks] == [(b.cid, b.data, b.offset) for b in v1_blocks]
    assert len(blocks) == SAMPLE_BLOCKS


def test_a_v2_with_padding_before_its_payload_is_read_fed_a_byte_at_a_time() -> None:
    header, blocks = read(PADDED, piece=1)
    assert header.v2 is not None and header.v2.data_offset == 1464
    assert len(header.roots) == 3 and [b.cid for b in blocks] == list(header.roots)
    assert len(blocks) == 3 and all(b.cid.verify(b.data) for b in blocks)


@pytest.mark.parametrize(
    ("index", "count", "hashed"),
    [
        (hand_index_sorted(SAMPLE_SECTIONS), SAMPLE_BLOCKS, False),
        (hand_multihash_index_sorted(SAMPLE_SECTIONS), SAMPLE_BLOCKS - 3, True),
    ],
    ids=["index-sorted", "multihash-index-sorted"],
)
def test_index_files_decode_and_match_the_sample_v1(index: bytes, count: int, hashed: bool) -> None:
    entries = parse_index(index)
    assert len(entries) == count
    assert all((entry.code is not None) == hashed for entry in entries)
    check_index(entries, sections_of(SAMPLE_V1))


def test_our_index_of_the_sample_v1_equals_the_hand_built_multihash_index_sorted() -> None:
    records = [(mh, offset) for offset, mh in sections_of(SAMPLE_V1).items()]
    assert multihash_index_sorted(records) == hand_multihash_index_sorted(SAMPLE_SECTIONS)


def _corrupt(data: bytes, at: int) -> bytes:
    return data[:at] + bytes((data[at] ^ 0xFF,)) + data[at + 1 :]


# A header section declaring 18 bytes whose map is cut after 16 ({"roots": null, "versio...).
CORRUPT_PRAGMA: Final = encode_varint(18) + b"\xa2\x65roots\xf6\x67versio"
ROOTLESS_V42: Final = encode_varint(11) + b"\xa1\x67version\x18\x2a"  # {"version": 42}
# A data offset near 2**64 that the payload's size overflows, a flipped payload byte and a flipped
# index byte.
V2_CORRUPT_DATA_AND_INDEX: Final = hand_v2(
    _corrupt(SAMPLE_V1, len(SAMPLE_V1) // 2),
    _corrupt(SAMPLE_INDEX, 20),
    data_offset=(1 << 64) - 1362,
)
# The header and first three sections, then zero bytes: a section whose length varint is 0.
V1_WITH_ZERO_LEN_SECTION: Final = SAMPLE_V1[: SAMPLE_SECTIONS[3][0]] + bytes(256)


@pytest.mark.parametrize(
    ("car", "message"),
    [
        (CORRUPT_PRAGMA, "truncated"),
        (ROOTLESS_V42, "unsupported CAR version 42"),
        (V2_CORRUPT_DATA_AND_INDEX, "overflows"),
        (V1_WITH_ZERO_LEN_SECTION, "empty CAR section"),
    ],
    ids=["corrupt-pragma", "rootless-v42", "v2-corrupt-data-and-index", "v1-with-zero-len-section"],
)
def test_malformed_cars_are_refused(car: bytes, message: str) -> None:
    with pytest.raises(CarError, match=message):
        read(car)


def _tamper_index(car: bytes, index: bytes) -> bytes:
    header, _, _ = v2_parts(car)
    return car[: header.index_offset] + index


# The first record of the first bucket (sha2-256, the lowest code): after varint(0x0401), u32 2,
# u64 code, u32 1, u32 width, u64 length.
_FIRST_RECORD = 2 + 4 + 8 + 4 + 4 + 8


def _with_offset(index: bytes, record: int, offset: int) -> bytes:
    at = _FIRST_RECORD + record * 40 + 32
    return index[:at] + struct.pack("<Q", offset) + index[at + 8 :]


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (_with_offset(SAMPLE_INDEX, 0, 1), "no section starts"),
        (
            _with_offset(
                SAMPLE_INDEX, 0, struct.unpack("<Q", SAMPLE_INDEX[_FIRST_RECORD + 72 : _FIRST_RECORD + 80])[0]
            ),
            "a block of another digest",
        ),
        # The sha2-256 bucket relabelled sha2-512 (still below blake2b-256): right digests, wrong function.
        (SAMPLE_INDEX[:6] + struct.pack("<Q", 0x13) + SAMPLE_INDEX[14:], "a block of another digest"),
        (SAMPLE_INDEX[:-3], "truncated|whole number"),
        (b"\x82\x08" + SAMPLE_INDEX[2:], "unsupported index format 0x402"),
        (SAMPLE_INDEX + b"\x00", "after the end of the index"),
    ],
    ids=[
        "offset-between-sections",
        "offset-of-another-block",
        "code-of-another-hash",
        "cut",
        "format",
        "trailing",
    ],
)
def test_a_v2_index_that_does_not_match_its_payload_is_refused(index: bytes, message: str) -> None:
    with pytest.raises(CarError, match=rf"CAR v2 index: .*({message})"):
        read(_tamper_index(WRAPPED, index))


def test_an_index_missing_one_block_names_the_block() -> None:
    records = [(mh, offset) for offset, mh in sections_of(SAMPLE_PAYLOAD).items()][1:]
    with pytest.raises(CarError, match="is not in the index"):
        read(_tamper_index(WRAPPED, multihash_index_sorted(records)))


def test_bytes_after_an_indexless_payload_are_refused() -> None:
    with pytest.raises(CarError, match="declares no index"):
        read(INDEXLESS + b"\x00")


def test_v2_cut_inside_its_payload_or_before_its_index_is_refused() -> None:
    with pytest.raises(CarError, match="before the end of its data payload"):
        read(WRAPPED[:1000])
    header, _, _ = v2_parts(WRAPPED)
    with pytest.raises(CarError, match="before its index"):
        read(WRAPPED[: header.index_offset])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((50, 10, 0), "inside the CAR v2 header"),
        ((51, 0, 0), "payload is empty"),
        ((51, 100, 120), "overlaps the data payload"),
    ],
)
def test_bad_v2_header_offsets_are_refused(fields: tuple[int, int, int], message: str) -> None:
    car = PRAGMA + bytes(16) + struct.pack("<QQQ", *fields) + SAMPLE_PAYLOAD
    with pytest.raises(CarError, match=message):
        read(car)


async def test_export_wrapped_as_v2_reads_back_with_the_same_blocks_seekable_or_not() -> None:
    blocks, result = import_bytes(deterministic_bytes(300_000, "v2"), ImportOptions(chunk_size=10_000))
    v1 = b"".join([piece async for piece in export_car(MemorySource(blocks), [result.cid])])
    outputs = []
    for seekable in (True, False):
        out = io.BytesIO()
        writer = CarV2Writer(out, seekable=seekable)
        for i in range(0, len(v1), 4096):
            writer.write(v1[i : i + 4096])
        writer.close()
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1] == wrap_car_v1(v1)
    header, read_blocks = read(outputs[0])
    assert header.roots == (result.cid,) and header.version == 2
    assert [(b.cid, b.data) for b in read_blocks] == [(b.cid, b.data) for b in parse_car(v1)[1]]


def test_writer_refuses_an_incomplete_v1_stream() -> None:
    writer = CarV2Writer(io.BytesIO(), seekable=True)
    writer.write(SAMPLE_V1[:-5])
    with pytest.raises(CarError, match="ended inside a section"):
        writer.close()


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_import_of_a_v2_stores_every_block_and_a_bad_index_stores_nothing(tmp_path: Path) -> None:
    with Datastore.open(tmp_path / "repo") as store:
        bad = _tamper_index(WRAPPED, _with_offset(SAMPLE_INDEX, 3, 1))
        with pytest.raises(CarError, match="CAR v2 index"):
            await import_car(chunks(bad), store, spool_dir=tmp_path)
        assert store.blocks.count == 0
        roots = await import_car(chunks(WRAPPED), store, spool_dir=tmp_path)
        header, blocks = read(WRAPPED)
        assert roots == list(header.roots) and len(roots) == 1
        assert store.blocks.count == len({b.cid.multihash for b in blocks})
        for block in blocks[:50]:
            assert store.blocks.get(block.cid) == block.data
