"""CAR v1: canonical header, export/parse round trips, push parsing, limits, and all-or-nothing import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import dag_cbor
import pytest
from multiformats import CID as MfCID
from unixfs_support import MemorySource, deterministic_bytes

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID, encode_varint
from ipfsreg.unixfs.car import (
    CarBlock,
    CarHeader,
    CarReader,
    car_header,
    car_section,
    export_car,
    import_car,
    parse_car,
)
from ipfsreg.unixfs.errors import CarError
from ipfsreg.unixfs.exporter import LocalBlockSource, read_file
from ipfsreg.unixfs.importer import ImportOptions, import_bytes

DATA = deterministic_bytes(5000, "car")
BLOCKS, RESULT = import_bytes(DATA, ImportOptions(chunk_size=1000, max_links=3))
V1_BLOCKS, V1_RESULT = import_bytes(DATA[:2500], ImportOptions(chunk_size=1000, cid_version=1))


async def car_bytes(roots: list[CID], source: MemorySource) -> bytes:
    return b"".join([piece async for piece in export_car(source, roots)])


@pytest.mark.parametrize("count", [0, 1, 2, 30])
def test_header_is_canonical_dag_cbor(count: int) -> None:
    roots = [RESULT.cid, V1_RESULT.cid] * (count // 2) + [RESULT.cid] * (count % 2)
    expected = dag_cbor.encode({"roots": [MfCID.decode(r.to_bytes()) for r in roots], "version": 1})
    assert car_header(roots) == encode_varint(len(expected)) + expected


def test_section_is_length_cid_data() -> None:
    section = car_section(V1_RESULT.cid, b"abc")
    raw = V1_RESULT.cid.to_bytes()
    assert section == encode_varint(len(raw) + 3) + raw + b"abc"


async def test_export_then_parse_round_trips_every_block_once() -> None:
    source = MemorySource(BLOCKS + V1_BLOCKS)
    car = await car_bytes([RESULT.cid, V1_RESULT.cid, RESULT.cid], source)
    roots, blocks = parse_car(car)
    assert roots == (RESULT.cid, V1_RESULT.cid, RESULT.cid)
    assert {b.cid for b in blocks} == {b.cid for b in BLOCKS + V1_BLOCKS}
    assert len(blocks) == len({b.cid for b in blocks})
    assert blocks[0].cid == RESULT.cid  # depth-first from the first root


async def test_reader_accepts_input_fed_one_byte_at_a_time() -> None:
    car = await car_bytes([RESULT.cid], MemorySource(BLOCKS))
    reader = CarReader()
    events = []
    for i in range(len(car)):
        events += reader.feed(car[i : i + 1])
    reader.close()
    assert isinstance(events[0], CarHeader) and events[0].roots == (RESULT.cid,)
    assert [e.cid for e in events[1:] if isinstance(e, CarBlock)] == [e.cid for e in parse_car(car)[1]]


def _car(*sections: bytes, roots: tuple[CID, ...] = ()) -> bytes:
    return car_header(list(roots)) + b"".join(sections)


GOOD = car_section(BLOCKS[0].cid, BLOCKS[0].data)
CORRUPT = car_section(BLOCKS[1].cid, BLOCKS[1].data[:-1] + bytes([BLOCKS[1].data[-1] ^ 1]))


def _header(value: object) -> bytes:
    body = dag_cbor.encode(value)  # type: ignore[arg-type]
    return encode_varint(len(body)) + body


@pytest.mark.parametrize(
    ("car", "message"),
    [
        (_car(GOOD, CORRUPT), "does not match its CID"),
        (_car(b"\x00"), "empty CAR section"),
        (_car(b"\x80\x00"), "not minimally encoded"),
        (_car(b"\xff" * 9 + b"\x01"), "longer than 9 bytes"),
        (_car(encode_varint(5 * 1024 * 1024) + b"x"), "exceeds"),
        (_car(encode_varint(3) + b"\x01\x02\x03"), "does not start with a CID"),
        (_header({"roots": [], "version": 2}), "not the CARv2 pragma"),
        (_header({"roots": [], "version": 3}), "unsupported CAR version"),
        (_header({"roots": "x", "version": 1}), "roots is not a list"),
        (_header([1, 2]), "not a map"),
        (_header({"roots": [], "version": 1, "extra": 1}), "unexpected CAR header keys"),
        (encode_varint(2) + b"\xff\xff", "not valid dag-cbor"),
        (encode_varint(2 * 1024 * 1024), "exceeds"),
    ],
)
def test_malformed_cars_raise_car_error(car: bytes, message: str) -> None:
    reader = CarReader()
    with pytest.raises(CarError, match=message):
        reader.feed(car)
        reader.close()
    with pytest.raises(CarError, match="already failed"):
        reader.feed(b"")


@pytest.mark.parametrize("cut", [0, 1, 5, len(car_header([])) + 3])
def test_truncated_car_fails_on_close(cut: int) -> None:
    car = _car(GOOD)[:cut]
    reader = CarReader()
    reader.feed(car)
    with pytest.raises(CarError):
        reader.close()


def test_oversized_block_is_refused() -> None:
    big = b"\0" * 2000
    reader = CarReader(max_block_size=1000)
    with pytest.raises(CarError, match="exceeds"):
        reader.feed(_car(car_section(CID.hash(big), big)))


async def chunked(data: bytes, size: int = 777) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_import_car_stores_every_block_and_returns_roots(tmp_path: Path) -> None:
    car = await car_bytes([RESULT.cid], MemorySource(BLOCKS))
    with Datastore.open(tmp_path / "repo") as store:
        roots = await import_car(chunked(car), store, spool_dir=tmp_path, batch_bytes=1500)
        assert roots == [RESULT.cid]
        assert store.blocks.count == len({b.cid.multihash for b in BLOCKS})
        source = LocalBlockSource(store.blocks)
        assert b"".join([c async for c in read_file(source, RESULT.cid)]) == DATA


async def test_import_car_accepts_a_plain_iterable(tmp_path: Path) -> None:
    car = await car_bytes([V1_RESULT.cid], MemorySource(V1_BLOCKS))
    with Datastore.open(tmp_path / "repo") as store:
        assert await import_car([car[:10], car[10:]], store) == [V1_RESULT.cid]
        assert store.blocks.has(V1_RESULT.cid)


async def test_a_corrupted_block_refuses_the_whole_car(tmp_path: Path) -> None:
    good = await car_bytes([RESULT.cid], MemorySource(BLOCKS))
    with Datastore.open(tmp_path / "repo") as store:
        with pytest.raises(CarError, match="does not match"):
            await import_car(chunked(good + CORRUPT), store, batch_bytes=100)
        assert store.blocks.count == 0


async def test_a_truncated_stream_stores_nothing(tmp_path: Path) -> None:
    good = await car_bytes([RESULT.cid], MemorySource(BLOCKS))
    with Datastore.open(tmp_path / "repo") as store:
        with pytest.raises(CarError, match="truncated"):
            await import_car(chunked(good[:-10]), store)
        assert store.blocks.count == 0
