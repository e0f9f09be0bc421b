"""dag-pb codec: Kubo's exact byte forms and the dag-pb spec's strict decoding rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfsreg.cid import CID, RAW
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.dagpb import PBLink, PBNode
from ipfsreg.unixfs.errors import InvalidNode

EMPTY_DIR = bytes.fromhex("0a020801")
FILE_CID = CID.parse("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH")
RAW_CID = CID.hash(b"hello")


def test_empty_directory_block_has_kubo_cid() -> None:
    assert dagpb.encode_node([], bytes.fromhex("0801")) == EMPTY_DIR
    assert str(CID.hash(EMPTY_DIR, codec=0x70, version=0)) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


def test_link_encodes_hash_name_tsize_in_order_with_empty_name_present() -> None:
    encoded = dagpb.encode_node([PBLink(FILE_CID, "", 6)], b"\x08\x02")
    cid_bytes = FILE_CID.to_bytes()
    link_body = b"\x0a\x22" + cid_bytes + b"\x12\x00" + b"\x18\x06"
    assert encoded == b"\x12" + bytes((len(link_body),)) + link_body + b"\x0a\x02\x08\x02"


def test_absent_name_and_tsize_are_not_written() -> None:
    encoded = dagpb.encode_node([PBLink(RAW_CID, None, None)], None)
    raw = RAW_CID.to_bytes()
    assert encoded == b"\x12" + bytes((len(raw) + 2,)) + b"\x0a" + bytes((len(raw),)) + raw
    assert dagpb.decode(encoded) == PBNode((PBLink(RAW_CID, None, None),), None)


def test_empty_data_is_distinct_from_absent_data() -> None:
    assert dagpb.encode_node([], b"") == b"\x0a\x00"
    assert dagpb.decode(b"\x0a\x00").data == b""
    assert dagpb.decode(b"").data is None


def test_sorted_links_is_stable_by_name_bytes() -> None:
    links = [PBLink(RAW_CID, name) for name in ["b", "a", "", "B", "ä", "a"]]
    assert [link.name for link in dagpb.sorted_links(links)] == ["", "B", "a", "a", "b", "ä"]


def test_non_utf8_names_round_trip() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    encoded = dagpb.encode_node([PBLink(RAW_CID, name, 1)], b"")
    assert b"caf\xe9" in encoded
    assert dagpb.decode(encoded).links[0].name == name


names = st.one_of(st.none(), st.text(max_size=20))
tsizes = st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1))
links = st.builds(PBLink, st.sampled_from([FILE_CID, RAW_CID]), names, tsizes)
nodes = st.builds(
    PBNode, st.lists(links, max_size=5).map(tuple), st.one_of(st.none(), st.binary(max_size=50))
)


@settings(deadline=None)
@given(nodes)
def test_round_trip(node: PBNode) -> None:
    encoded = dagpb.encode(node)
    assert dagpb.decode(encoded) == node
    assert dagpb.encode(dagpb.decode(encoded)) == encoded


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_invalid_node(data: bytes) -> None:
    try:
        node = dagpb.decode(data)
    except InvalidNode:
        return
    assert dagpb.decode(dagpb.encode(node)) == node


def _link(body: bytes) -> bytes:
    return b"\x12" + bytes((len(body),)) + body


HASH = b"\x0a\x22" + FILE_CID.to_bytes()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x1a\x00", "unknown field 3"),
        (b"\x08\x01", "wrong wire type 0"),
        (b"\x0a\x00\x0a\x00", "duplicate Data"),
        (b"\x0a\x00" + _link(HASH), "Links after Data"),
        (_link(b"\x12\x00"), "missing Hash"),
        (_link(b"\x0a\x03abc"), "Hash is not a CID"),
        (_link(HASH + HASH), "duplicate Hash"),
        (_link(HASH + b"\x12\x00\x12\x00"), "duplicate Name"),
        (_link(HASH + b"\x18\x01\x18\x01"), "duplicate Tsize"),
        (_link(b"\x12\x00" + HASH), "Hash after Name or Tsize"),
        (_link(HASH + b"\x18\x01\x12\x00"), "Name after Tsize"),
        (_link(HASH + b"\x20\x01"), "unknown field 4"),
        (_link(b"\x08\x01"), "wrong wire type 0 for Hash"),
        (_link(HASH + b"\x10\x01"), "wrong wire type 0 for Name"),
        (_link(HASH + b"\x1a\x00"), "wrong wire type 2 for Tsize"),
        (b"\x0a\x05abc", "runs past the end"),
        (b"\x0a", "truncated varint"),
        (b"\x0a" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (_link(HASH + b"\x18" + b"\xff" * 9 + b"\x7f"), "overflows 64 bits"),
    ],
)
def test_malformed_blocks_raise_invalid_node(block: bytes, message: str) -> None:
    with pytest.raises(InvalidNode, match=message):
        dagpb.decode(block)


def test_raw_codec_cid_in_link_is_accepted() -> None:
    node = PBNode((PBLink(CID(1, RAW, RAW_CID.multihash), "x", 5),), b"\x08\x01")
    assert dagpb.decode(dagpb.encode(node)) == node
