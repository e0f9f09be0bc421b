"""Bitswap wire format: round trips, byte-exactness against protobuf, malformed input, size limits."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.bitswap.pb import bitswap_pb2

from ipfsreg.cid import CID, DAG_PB, RAW, encode_varint
from ipfsreg.node.bitswap.message import (
    PROTOCOL_1_0_0,
    PROTOCOL_1_1_0,
    PROTOCOL_1_2_0,
    Block,
    BlockPresence,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    WantType,
    cancels,
    decode_message,
    encode_frame,
    encode_message,
    wants,
)
from ipfsreg.node.errors import MalformedMessage, MessageTooLarge, ProtocolViolation

V0 = CID.hash(b"a dag-pb block", codec=DAG_PB, version=0)
V1 = CID.hash(b"a raw block", codec=RAW, version=1)


def _sample() -> Message:
    return Message(
        wantlist=[
            WantEntry(V0, 5, False, WantType.BLOCK, True),
            WantEntry(V1, 1, False, WantType.HAVE, False),
            WantEntry(V1, 0, True),
            WantEntry(V0, -3),
        ],
        full=True,
        blocks=[Block.of(V0, b"a dag-pb block"), Block.of(V1, b"a raw block")],
        presences=[BlockPresence(V0, PresenceType.HAVE), BlockPresence(V1, PresenceType.DONT_HAVE)],
        pending_bytes=1234,
    )


def _protobuf(message: Message) -> bytes:
    pb = bitswap_pb2.Message()
    for e in message.wantlist:
        pb.wantlist.entries.add(
            block=e.cid.to_bytes(),
            priority=e.priority,
            cancel=e.cancel,
            wantType=int(e.want_type),
            sendDontHave=e.send_dont_have,
        )
    if message.full:
        pb.wantlist.full = True
    for b in message.blocks:
        pb.payload.add(prefix=b.prefix, data=b.data)
    for p in message.presences:
        pb.blockPresences.add(cid=p.cid.to_bytes(), type=int(p.type))
    pb.pendingBytes = message.pending_bytes
    return bytes(pb.SerializeToString(deterministic=True))


def test_message_round_trips_through_encode_and_decode() -> None:
    message = _sample()
    assert decode_message(encode_message(message)) == message


def test_encoding_is_byte_identical_to_protobuf() -> None:
    assert encode_message(_sample()) == _protobuf(_sample())


def test_protobuf_encoded_message_decodes_to_the_same_message() -> None:
    assert decode_message(_protobuf(_sample())) == _sample()


def test_decoded_block_cid_is_rebuilt_from_prefix_and_bytes() -> None:
    decoded = decode_message(encode_message(Message(blocks=[Block.of(V1, b"a raw block")])))
    assert decoded.blocks[0].cid() == V1


def test_block_with_other_bytes_gets_the_cid_of_those_bytes_not_the_claimed_one() -> None:
    forged = Block(V1.prefix(), b"not the raw block")
    assert forged.cid() != V1
    assert forged.cid() == CID.hash(b"not the raw block", codec=RAW, version=1)


def test_version_1_0_0_sends_blocks_without_prefix_wants_blocks_for_haves_and_drops_presences() -> None:
    encoded = encode_message(_sample(), PROTOCOL_1_0_0)
    decoded = decode_message(encoded)
    assert [b.data for b in decoded.blocks] == [b"a dag-pb block", b"a raw block"]
    assert decoded.blocks[0].cid() == V0  # 1.0.0 blocks are CIDv0
    assert decoded.presences == []
    # A HAVE want becomes a want for the block: all a 1.0.0 peer can answer.
    assert decoded.wantlist == [
        WantEntry(V0, 5, False, WantType.BLOCK, False),
        WantEntry(V1, 1, False, WantType.BLOCK, False),
        WantEntry(V1, 0, True),
        WantEntry(V0, -3),
    ]
    pb = bitswap_pb2.Message()
    pb.ParseFromString(encoded)
    assert list(pb.blocks) == [b"a dag-pb block", b"a raw block"] and not pb.payload


def test_version_1_1_0_and_1_2_0_carry_payload_with_prefixes() -> None:
    for protocol in (PROTOCOL_1_1_0, PROTOCOL_1_2_0):
        decoded = decode_message(encode_message(_sample(), protocol))
        assert [b.cid() for b in decoded.blocks] == [V0, V1]


def test_empty_message_encodes_to_nothing_and_decodes_empty() -> None:
    assert encode_message(Message()) == b""
    assert decode_message(b"").is_empty()


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    body = encode_message(_sample())
    unknown = (
        encode_varint((9 << 3) | 0)
        + encode_varint(300)
        + encode_varint((10 << 3) | 1)
        + b"\x00" * 8
        + encode_varint((11 << 3) | 2)
        + b"\x03abc"
        + encode_varint((12 << 3) | 5)
        + b"\x00" * 4
    )
    assert decode_message(unknown + body + unknown) == _sample()


def test_wants_and_cancels_helpers_build_entries() -> None:
    assert wants([V0], WantType.HAVE) == [WantEntry(V0, 1, False, WantType.HAVE, True)]
    assert cancels([V1]) == [WantEntry(V1, 0, True)]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x0a", "truncated varint"),
        (b"\x0a\x05ab", "runs past the end"),
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x00\x00", "field number 0"),
        (b"\x08\x01", "wire type 0, expected 2"),
        (b"\x29\x00\x00\x00", "truncated fixed64"),
        (b"\x2d\x00", "truncated fixed32"),
        (b"\x0a\x02\x0a\x00", "without a CID"),
        (b"\x0a\x04\x0a\x02\x0a\x00", "invalid CID"),
        (b"\x1a\x02\x12\x00", "without a CID prefix"),
        (b"\x22\x00", "block presence without a CID"),
        (b"\x22\x02\x10\x07", "unknown block presence type 7"),
    ],
)
def test_malformed_message_raises_malformed_message(body: bytes, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        decode_message(body)


def test_unknown_want_type_is_malformed() -> None:
    entry = b"\x0a" + bytes([len(V1.to_bytes())]) + V1.to_bytes() + b"\x20\x05"
    wantlist = b"\x0a" + bytes([len(entry)]) + entry
    with pytest.raises(MalformedMessage, match="unknown want type 5"):
        decode_message(b"\x0a" + bytes([len(wantlist)]) + wantlist)


def test_block_with_unsupported_hash_prefix_is_malformed_when_its_cid_is_built() -> None:
    prefix = encode_varint(1) + encode_varint(RAW) + encode_varint(0x16) + encode_varint(32)  # sha3-256
    block = decode_message(encode_message(Message(blocks=[Block(prefix, b"x")]))).blocks[0]
    with pytest.raises(MalformedMessage, match="unusable block prefix"):
        block.cid()


def test_block_over_the_block_size_limit_raises_message_too_large() -> None:
    body = encode_message(Message(blocks=[Block.of(V1, b"x" * 101)]))
    with pytest.raises(MessageTooLarge, match="block of 101 bytes exceeds the limit of 100"):
        decode_message(body, max_block_size=100)
    assert decode_message(body, max_block_size=101).blocks[0].data == b"x" * 101
    legacy = encode_message(Message(blocks=[Block.of(V0, b"x" * 101)]), PROTOCOL_1_0_0)
    with pytest.raises(MessageTooLarge):
        decode_message(legacy, max_block_size=100)


def test_errors_are_protocol_violations() -> None:
    assert issubclass(MalformedMessage, ProtocolViolation)
    assert issubclass(MessageTooLarge, ProtocolViolation)


# --- framing ----------------------------------------------------------------------------------


def test_frame_decoder_splits_frames_fed_one_byte_at_a_time() -> None:
    frames = [encode_frame(_sample()), encode_frame(Message()), encode_frame(Message(full=True))]
    stream = b"".join(frames)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        out.extend(decoder.frames())
    assert [decode_message(b) for b in out] == [_sample(), Message(), Message(full=True)]
    assert decoder.at_frame_boundary()


def test_frame_decoder_reports_a_partial_frame() -> None:
    frame = encode_frame(_sample())
    decoder = FrameDecoder()
    decoder.feed(frame[:-1])
    assert list(decoder.frames()) == []
    assert not decoder.at_frame_boundary()
    assert decoder.bytes_wanted() == 1


def test_frame_over_the_message_limit_is_refused_from_its_length_prefix() -> None:
    decoder = FrameDecoder(max_message_size=4 * 1024 * 1024)
    decoder.feed(encode_varint(4 * 1024 * 1024 + 1))
    with pytest.raises(MessageTooLarge, match="message of 4194305 bytes"):
        list(decoder.frames())


def test_frame_at_exactly_the_message_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_message_size=10)
    decoder.feed(encode_varint(10) + b"\x28\x01" * 5)
    assert list(decoder.frames()) == [b"\x28\x01" * 5]


@pytest.mark.parametrize(
    ("prefix", "match"), [(b"\x80\x00", "non-minimal"), (b"\x80" * 10, "longer than 10 bytes")]
)
def test_bad_length_prefix_is_malformed(prefix: bytes, match: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(prefix)
    with pytest.raises(MalformedMessage, match=match):
        list(decoder.frames())


# --- properties -------------------------------------------------------------------------------

_cids = st.builds(
    lambda data, v1: CID.hash(data, codec=RAW, version=1) if v1 else CID.hash(data, codec=DAG_PB, version=0),
    st.binary(max_size=8),
    st.booleans(),
)
_entries = st.builds(
    WantEntry,
    _cids,
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
    st.sampled_from(WantType),
    st.booleans(),
)
_messages = st.builds(
    Message,
    st.lists(_entries, max_size=5),
    st.booleans(),
    st.lists(
        st.builds(
            lambda d, v1: Block.of(CID.hash(d, version=1 if v1 else 0, codec=RAW if v1 else DAG_PB), d),
            st.binary(max_size=64),
            st.booleans(),
        ),
        max_size=3,
    ),
    st.lists(st.builds(BlockPresence, _cids, st.sampled_from(PresenceType)), max_size=3),
    st.integers(-(2**31), 2**31 - 1),
)


@settings(max_examples=200, deadline=None)
@given(_messages)
def test_any_message_round_trips_and_matches_protobuf(message: Message) -> None:
    encoded = encode_message(message)
    assert decode_message(encoded) == message
    assert encoded == _protobuf(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_only_malformed_message(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_message(data)
