"""DHT wire format: byte-exact against the protobuf schema, round trips, malformed input, size limits."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.kad_dht.pb import kademlia_pb2

from ipfsreg.cid import encode_varint
from ipfsreg.node.errors import DHTProtocolError
from ipfsreg.node.routing.message import (
    Connection,
    FrameReader,
    Limits,
    Message,
    MessageType,
    PeerEntry,
    Record,
    decode_message,
    decode_record,
    encode_frame,
    encode_message,
    encode_record,
)

PEER = bytes.fromhex("0024080112209e3b433cbd31c2b8a6ebbdca998bd0f4c2141c9c9af5422e976051b1e63af14d")
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001


def _sample() -> Message:
    return Message(
        MessageType.GET_PROVIDERS,
        key=b"\x12\x20" + bytes(range(32)),
        record=Record(b"/pk/abc", b"value", "2024-01-02T03:04:05.123456789Z"),
        closer_peers=[PeerEntry(PEER, (ADDR, ADDR + b"\x00"), Connection.CONNECTED)],
        provider_peers=[PeerEntry(PEER[:-1] + b"\x01", ())],
        cluster_level=-3,
    )


def _protobuf_of(message: Message) -> bytes:
    pb = kademlia_pb2.Message()
    pb.type = int(message.type)
    pb.key = message.key
    if message.record is not None:
        pb.record.key = message.record.key
        pb.record.value = message.record.value
        pb.record.timeReceived = message.record.time_received
    for target, peers in ((pb.closerPeers, message.closer_peers), (pb.providerPeers, message.provider_peers)):
        for peer in peers:
            entry = target.add()
            entry.id = peer.peer_id
            entry.addrs.extend(peer.addrs)
            entry.connection = int(peer.connection)
    pb.clusterLevelRaw = message.cluster_level
    return pb.SerializeToString()


def test_encoding_is_byte_identical_to_the_protobuf_schema() -> None:
    message = _sample()
    assert encode_message(message) == _protobuf_of(message)


def test_default_fields_are_left_out_as_proto3_does() -> None:
    # PUT_VALUE is type 0: an empty PUT_VALUE message is zero bytes, as Go encodes it.
    assert encode_message(Message(MessageType.PUT_VALUE)) == b""
    find = Message(MessageType.FIND_NODE, key=b"k")
    assert encode_message(find) == _protobuf_of(find)


def test_protobuf_bytes_decode_to_the_same_message() -> None:
    assert decode_message(_protobuf_of(_sample())) == _sample()


def test_unknown_fields_are_skipped() -> None:
    pb = kademlia_pb2.Message()
    pb.type = int(MessageType.FIND_NODE)
    pb.key = b"target"
    pb.senderRecord = b"py-libp2p's signed peer record extension"
    peer = pb.closerPeers.add()
    peer.id = PEER
    peer.signedRecord = b"another extension"
    decoded = decode_message(pb.SerializeToString())
    assert decoded == Message(MessageType.FIND_NODE, key=b"target", closer_peers=[PeerEntry(PEER)])


def test_record_round_trips_alone() -> None:
    record = Record(b"/ipns/name", b"\x00" * 100, "2024-01-01T00:00:00Z")
    assert decode_record(encode_record(record)) == record


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(MessageType)),
    key=st.binary(max_size=80),
    peers=st.lists(
        st.tuples(st.binary(min_size=1, max_size=64), st.lists(st.binary(max_size=40), max_size=5)),
        max_size=8,
    ),
)
def test_round_trip_of_any_message(
    kind: MessageType, key: bytes, peers: list[tuple[bytes, list[bytes]]]
) -> None:
    entries = [PeerEntry(pid, tuple(addrs)) for pid, addrs in peers]
    message = Message(kind, key=key, closer_peers=entries, provider_peers=entries[:2])
    assert decode_message(encode_message(message)) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    with contextlib.suppress(DHTProtocolError):
        decode_message(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x08", "truncated varint"),
        (b"\x12\x05ab", "runs past the end"),
        (b"\x08\x09", "unknown message type 9"),
        (b"\x00\x01", "field number 0"),
        (b"\x0b", "unsupported wire type"),
        (b"\x10\x01", "wire type 0, expected 2"),
        (b"\x42\x02\x12\x00", "without a peer ID"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (b"\x08" + b"\xff" * 9 + b"\x02", "varint overflows 64 bits"),
    ],
)
def test_malformed_messages_raise_dht_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(DHTProtocolError, match=reason):
        decode_message(data)


def test_limits_cap_closer_peers_provider_peers_addresses_and_records() -> None:
    limits = Limits(max_closer_peers=2, max_provider_peers=1, max_addrs_per_peer=2, max_record_value_size=4)
    many = [PeerEntry(PEER) for _ in range(3)]
    with pytest.raises(DHTProtocolError, match="more than 2 closer peers"):
        decode_message(encode_message(Message(MessageType.FIND_NODE, closer_peers=many)), limits)
    with pytest.raises(DHTProtocolError, match="more than 1 provider peers"):
        decode_message(encode_message(Message(MessageType.GET_PROVIDERS, provider_peers=many[:2])), limits)
    crowded = PeerEntry(PEER, (ADDR, ADDR, ADDR))
    with pytest.raises(DHTProtocolError, match="more than 2 addresses"):
        decode_message(encode_message(Message(MessageType.FIND_NODE, closer_peers=[crowded])), limits)
    big = Message(MessageType.PUT_VALUE, key=b"/pk/x", record=Record(b"/pk/x", b"12345"))
    with pytest.raises(DHTProtocolError, match="record value of 5 bytes"):
        decode_message(encode_message(big), limits)
    with pytest.raises(DHTProtocolError, match="message of"):
        decode_message(b"\x00" * 100, Limits(max_message_size=99))


def test_oversized_multiaddr_and_peer_id_are_refused() -> None:
    limits = Limits(max_addr_size=8, max_peer_id_size=10)
    with pytest.raises(DHTProtocolError, match="multiaddr of 9 bytes"):
        decode_message(
            encode_message(Message(MessageType.FIND_NODE, closer_peers=[PeerEntry(b"p", (b"x" * 9,))])),
            limits,
        )
    with pytest.raises(DHTProtocolError, match="peer ID of 11 bytes"):
        decode_message(
            encode_message(Message(MessageType.FIND_NODE, closer_peers=[PeerEntry(b"p" * 11)])), limits
        )


def test_unknown_connection_type_reads_as_no_information() -> None:
    peer = kademlia_pb2.Message.Peer(id=PEER)
    body = peer.SerializeToString() + b"\x18\x07"  # connection = 7
    data = b"\x08\x04" + b"\x42" + encode_varint(len(body)) + body
    assert decode_message(data).closer_peers == [PeerEntry(PEER, (), Connection.NOT_CONNECTED)]


def test_frame_reader_splits_frames_fed_in_pieces() -> None:
    frames = encode_frame(Message(MessageType.FIND_NODE, key=b"a")) + encode_frame(_sample())
    reader = FrameReader()
    bodies = []
    for i in range(len(frames)):
        reader.feed(frames[i : i + 1])
        bodies.extend(reader.frames())
    assert [decode_message(b) for b in bodies] == [Message(MessageType.FIND_NODE, key=b"a"), _sample()]
    assert reader.at_boundary()


def test_frame_reader_refuses_a_declared_length_over_the_limit_before_buffering_it() -> None:
    reader = FrameReader(max_message_size=1000)
    reader.feed(encode_varint(1001))
    with pytest.raises(DHTProtocolError, match="message of 1001 bytes"):
        list(reader.frames())


def test_frame_reader_refuses_bad_length_prefixes() -> None:
    reader = FrameReader()
    reader.feed(b"\x80\x00")
    with pytest.raises(DHTProtocolError, match="non-minimal"):
        list(reader.frames())
    reader = FrameReader()
    reader.feed(b"\xff" * 10)
    with pytest.raises(DHTProtocolError, match="longer than 10 bytes"):
        list(reader.frames())
