"""UnixFS Data message: Kubo's byte forms (unpacked blocksizes, field order) and strict decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfsreg.unixfs.data import HASH_MURMUR3, DataType, UnixFSData, UnixTime, decode
from ipfsreg.unixfs.errors import InvalidNode


def test_directory_is_type_only() -> None:
    assert UnixFSData(DataType.DIRECTORY).encode() == b"\x08\x01"


def test_file_leaf_bytes() -> None:
    assert UnixFSData(DataType.FILE, data=b"hi", filesize=2).encode() == b"\x08\x02\x12\x02hi\x18\x02"


def test_interior_file_node_writes_blocksizes_unpacked() -> None:
    encoded = UnixFSData(DataType.FILE, filesize=262144 + 5, blocksizes=(262144, 5)).encode()
    assert encoded == b"\x08\x02\x18\x85\x80\x10\x20\x80\x80\x10\x20\x05"


def test_hamt_shard_field_order() -> None:
    encoded = UnixFSData(DataType.HAMT_SHARD, data=b"\x01", hash_type=HASH_MURMUR3, fanout=256).encode()
    assert encoded == b"\x08\x05\x12\x01\x01\x28\x22\x30\x80\x02"


def test_packed_blocksizes_are_accepted() -> None:
    assert decode(b"\x08\x02\x22\x02\x01\x02").blocksizes == (1, 2)


def test_mode_and_mtime_round_trip_including_negative_seconds() -> None:
    value = UnixFSData(DataType.FILE, filesize=0, mode=0o644, mtime=UnixTime(-5, 7))
    assert decode(value.encode()) == value


def test_content_size_without_filesize_adds_data_and_blocksizes() -> None:
    assert UnixFSData(DataType.FILE, data=b"abc", blocksizes=(4, 5)).content_size == 12


nanos = st.one_of(st.none(), st.integers(0, 2**32 - 1))
values = st.builds(
    UnixFSData,
    st.sampled_from(list(DataType)),
    st.one_of(st.none(), st.binary(max_size=30)),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.lists(st.integers(0, 2**64 - 1), max_size=4).map(tuple),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.one_of(
        st.none(),
        st.builds(
            UnixTime, st.integers(-(2**63), 2**63 - 1), st.one_of(st.none(), st.integers(0, 2**32 - 1))
        ),
    ),
)


@settings(deadline=None)
@given(values)
def test_round_trip(value: UnixFSData) -> None:
    assert decode(value.encode()) == value


@settings(deadline=None)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_decode_or_raise_invalid_node(data: bytes) -> None:
    try:
        value = decode(data)
    except InvalidNode:
        return
    assert decode(value.encode()) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing Type"),
        (b"\x08\x09", "unknown Type 9"),
        (b"\x08\x02\x08\x02", "duplicate Type"),
        (b"\x0a\x00", "wrong wire type 2 for Type"),
        (b"\x08\x02\x10\x01", "wrong wire type 0 for Data"),
        (b"\x08\x02\x12\x00\x12\x00", "duplicate Data"),
        (b"\x08\x02\x18\x01\x18\x01", "duplicate filesize"),
        (b"\x08\x02\x1a\x00", "wrong wire type 2 for filesize"),
        (b"\x08\x02\x25\x00\x00\x00\x00", "wrong wire type 5 for blocksizes"),
        (b"\x08\x02\x48\x01", "unknown field 9"),
        (b"\x08\x02\x38\x80\x80\x80\x80\x10", "mode does not fit"),
        (b"\x08\x02\x42\x00", "missing Seconds"),
        (b"\x08\x02\x42\x02\x10\x01", "unexpected field 2"),
        (b"\x08\x02\x42\x03\x15\x01\x02", "truncated FractionalNanoseconds"),
        (b"\x08\x02\x12\x05ab", "runs past the end"),
    ],
)
def test_malformed_data_raises_invalid_node(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidNode, match=message):
        decode(raw)
