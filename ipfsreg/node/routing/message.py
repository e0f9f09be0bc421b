"""Kademlia DHT wire format (/ipfs/kad/1.0.0, /ipfs/lan/kad/1.0.0) as pure functions: messages <-> bytes.

A hand-written protobuf codec for go-libp2p-kad-dht's ``pb/dht.proto`` (and go-libp2p-record's
``Record``), as the IPFS Kademlia DHT spec gives it. The encoder emits fields in field-number
order and leaves proto3 defaults out, as Go's protobuf does; the decoder skips unknown fields and
refuses malformed input, or input over the :class:`Limits`, with :class:`DHTProtocolError`: a
peer's message can never make us hold more than the limits allow (4 MiB per message, 64 closer
peers, 1000 provider peers, 64 addresses of at most 256 bytes per peer, 64 KiB record values).
Framing is the unsigned-varint length prefix every RPC message carries (:class:`FrameReader`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from ipfsreg import protowire
from ipfsreg.cid import encode_varint
from ipfsreg.node.errors import DHTProtocolError

PROTOCOL_AMINO: Final = "/ipfs/kad/1.0.0"  # the public (WAN) DHT
PROTOCOL_LAN: Final = "/ipfs/lan/kad/1.0.0"  # Kubo's LAN DHT: peers on loopback and private networks

K: Final = 20  # bucket size and replication factor (the spec's k)
MAX_KEY_SIZE: Final = 80  # provider keys (multihashes) over this are refused, as Kubo does


@dataclass(frozen=True)
class Limits:
    """What a received message may hold; anything beyond is a protocol error."""

    max_message_size: int = 4 * 1024 * 1024
    max_closer_peers: int = 64
    max_provider_peers: int = 1000
    max_addrs_per_peer: int = 64
    max_addr_size: int = 256
    max_peer_id_size: int = 128
    max_record_key_size: int = 1024
    max_record_value_size: int = 64 * 1024


DEFAULT_LIMITS: Final = Limits()


class MessageType(IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class Connection(IntEnum):
    """What the sender knows of its connection to a peer it lists (informational only)."""

    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A ``Message.Peer``: a peer ID and its multiaddrs, both in binary form, unvalidated."""

    peer_id: bytes
    addrs: tuple[bytes, ...] = ()
    connection: Connection = Connection.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class Record:
    """A value record (``/pk/...``, ``/ipns/...``); the storing peer sets ``time_received`` (RFC 3339)."""

    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(slots=True)
class Message:
    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: list[PeerEntry] = field(default_factory=list)
    provider_peers: list[PeerEntry] = field(default_factory=list)
    cluster_level: int = 0  # clusterLevelRaw: never used, kept for a faithful round trip


# Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = protowire.VARINT, protowire.I64, protowire.LEN, protowire.I32


def _tag(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def _bytes_field(tag: bytes, body: bytes) -> bytes:
    return tag + encode_varint(len(body)) + body


_T_TYPE: Final = _tag(1, _VARINT)
_T_KEY: Final = _tag(2, _LEN)
_T_RECORD: Final = _tag(3, _LEN)
_T_CLOSER: Final = _tag(8, _LEN)
_T_PROVIDER: Final = _tag(9, _LEN)
_T_CLUSTER: Final = _tag(10, _VARINT)
_T_PEER_ID: Final = _tag(1, _LEN)
_T_PEER_ADDR: Final = _tag(2, _LEN)
_T_PEER_CONN: Final = _tag(3, _VARINT)
_T_REC_KEY: Final = _tag(1, _LEN)
_T_REC_VALUE: Final = _tag(2, _LEN)
_T_REC_TIME: Final = _tag(5, _LEN)


# --- encoding -----------------------------------------------------------------------------


def _encode_peer(peer: PeerEntry) -> bytes:
    parts = [_bytes_field(_T_PEER_ID, peer.peer_id)]
    parts.extend(_bytes_field(_T_PEER_ADDR, addr) for addr in peer.addrs)
    if peer.connection:
        parts.append(_T_PEER_CONN + encode_varint(int(peer.connection)))
    return b"".join(parts)


def encode_record(record: Record) -> bytes:
    parts = []
    if record.key:
        parts.append(_bytes_field(_T_REC_KEY, record.key))
    if record.value:
        parts.append(_bytes_field(_T_REC_VALUE, record.value))
    if record.time_received:
        parts.append(_bytes_field(_T_REC_TIME, record.time_received.encode()))
    return b"".join(parts)


def encode_message(message: Message) -> bytes:
    parts: list[bytes] = []
    if message.type:
        parts.append(_T_TYPE + encode_varint(int(message.type)))
    if message.key:
        parts.append(_bytes_field(_T_KEY, message.key))
    if message.record is not None:
        parts.append(_bytes_field(_T_RECORD, encode_record(message.record)))
    parts.extend(_bytes_field(_T_CLOSER, _encode_peer(p)) for p in message.closer_peers)
    parts.extend(_bytes_field(_T_PROVIDER, _encode_peer(p)) for p in message.provider_peers)
    if message.cluster_level:
        parts.append(_T_CLUSTER + encode_varint(message.cluster_level & 0xFFFFFFFFFFFFFFFF))
    return b"".join(parts)


def encode_frame(message: Message) -> bytes:
    """The message with its unsigned-varint length prefix, ready to write to a stream."""
    body = encode_message(message)
    return encode_varint(len(body)) + body


# --- decoding -----------------------------------------------------------------------------


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    return protowire.fields(buf, pos, end, DHTProtocolError)


def _expect(number: int, wire_type: int, expected: int, where: str) -> None:
    protowire.expect(number, wire_type, expected, where, DHTProtocolError)


def _decode_peer(buf: memoryview, pos: int, end: int, limits: Limits) -> PeerEntry:
    peer_id = b""
    addrs: list[bytes] = []
    connection = Connection.NOT_CONNECTED
    for number, wire_type, value, stop in _fields(buf, pos, end):
        if number == 1:
            _expect(number, wire_type, _LEN, "peer")
            if stop - value > limits.max_peer_id_size:
                raise DHTProtocolError(f"peer ID of {stop - value} bytes (limit {limits.max_peer_id_size})")
            peer_id = bytes(buf[value:stop])
        elif number == 2:
            _expect(number, wire_type, _LEN, "peer")
            if len(addrs) >= limits.max_addrs_per_peer:
                raise DHTProtocolError(f"a peer with more than {limits.max_addrs_per_peer} addresses")
            if stop - value > limits.max_addr_size:
                raise DHTProtocolError(f"multiaddr of {stop - value} bytes (limit {limits.max_addr_size})")
            addrs.append(bytes(buf[value:stop]))
        elif number == 3:
            _expect(number, wire_type, _VARINT, "peer")
            # An unknown connection type is only informational: read it as "no information".
            connection = Connection(value) if value in Connection._value2member_map_ else connection
    if not peer_id:
        raise DHTProtocolError("peer entry without a peer ID")
    return PeerEntry(peer_id, tuple(addrs), connection)


def _decode_record(buf: memoryview, pos: int, end: int, limits: Limits) -> Record:
    key = value = b""
    time_received = ""
    for number, wire_type, start, stop in _fields(buf, pos, end):
        if number == 1:
            _expect(number, wire_type, _LEN, "record")
            if stop - start > limits.max_record_key_size:
                raise DHTProtocolError(
                    f"record key of {stop - start} bytes (limit {limits.max_record_key_size})"
                )
            key = bytes(buf[start:stop])
        elif number == 2:
            _expect(number, wire_type, _LEN, "record")
            if stop - start > limits.max_record_value_size:
                raise DHTProtocolError(
                    f"record value of {stop - start} bytes (limit {limits.max_record_value_size})"
                )
            value = bytes(buf[start:stop])
        elif number == 5:
            _expect(number, wire_type, _LEN, "record")
            try:
                time_received = bytes(buf[start:stop]).decode("utf-8")
            except UnicodeDecodeError:
                raise DHTProtocolError("record timeReceived is not UTF-8") from None
            if len(time_received) > 64:
                raise DHTProtocolError("record timeReceived longer than 64 characters")
    return Record(key, value, time_received)


def decode_record(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Record:
    """Decode a ``Record`` on its own (as the record store keeps it)."""
    return _decode_record(memoryview(data), 0, len(data), limits)


def decode_message(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one message body (without its length prefix); DHTProtocolError if malformed or over limits."""
    if len(data) > limits.max_message_size:
        raise DHTProtocolError(f"message of {len(data)} bytes (limit {limits.max_message_size})")
    buf = memoryview(data)
    message = Message(MessageType.PUT_VALUE)
    for number, wire_type, value, stop in _fields(buf, 0, len(buf)):
        if number == 1:
            _expect(number, wire_type, _VARINT, "message")
            if value not in MessageType._value2member_map_:
                raise DHTProtocolError(f"unknown message type {value}")
            message.type = MessageType(value)
        elif number == 2:
            _expect(number, wire_type, _LEN, "message")
            if stop - value > limits.max_record_key_size:
                raise DHTProtocolError(f"key of {stop - value} bytes (limit {limits.max_record_key_size})")
            message.key = bytes(buf[value:stop])
        elif number == 3:
            _expect(number, wire_type, _LEN, "message")
            message.record = _decode_record(buf, value, stop, limits)
        elif number == 8:
            _expect(number, wire_type, _LEN, "message")
            if len(message.closer_peers) >= limits.max_closer_peers:
                raise DHTProtocolError(f"more than {limits.max_closer_peers} closer peers")
            message.closer_peers.append(_decode_peer(buf, value, stop, limits))
        elif number == 9:
            _expect(number, wire_type, _LEN, "message")
            if len(message.provider_peers) >= limits.max_provider_peers:
                raise DHTProtocolError(f"more than {limits.max_provider_peers} provider peers")
            message.provider_peers.append(_decode_peer(buf, value, stop, limits))
        elif number == 10:
            _expect(number, wire_type, _VARINT, "message")
            value &= 0xFFFFFFFF
            message.cluster_level = value - (1 << 32) if value >= 1 << 31 else value
    return message


class FrameReader:
    """Sans-I/O splitter of a byte stream into varint-length-prefixed message bodies.

    ``feed`` what arrives, then iterate ``frames()``. A declared length over the limit raises
    DHTProtocolError before any of the body is buffered.
    """

    def __init__(self, max_message_size: int = DEFAULT_LIMITS.max_message_size) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def at_boundary(self) -> bool:
        """True between frames (nothing of a next frame received yet)."""
        return self._need is None and not self._buf

    def frames(self) -> Iterator[bytes]:
        while True:
            if self._need is None:
                length = self._parse_length()
                if length is None:
                    return
                self._need = length
            if len(self._buf) < self._need:
                return
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._need = None
            yield body

    def _parse_length(self) -> int | None:
        result = 0
        for i, byte in enumerate(self._buf[:10]):
            result |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if i > 0 and byte == 0:
                    raise DHTProtocolError("non-minimal varint length prefix")
                if result > self.max_message_size:
                    raise DHTProtocolError(f"message of {result} bytes (limit {self.max_message_size})")
                del self._buf[: i + 1]
                return result
        if len(self._buf) >= 10:
            raise DHTProtocolError("length prefix longer than 10 bytes")
        return None
