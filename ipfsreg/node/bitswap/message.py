"""Bitswap wire format (/ipfs/bitswap/1.0.0, 1.1.0, 1.2.0) as pure functions: messages <-> bytes.

A hand-written protobuf codec for boxo's ``bitswap/message/pb/message.proto``: it emits fields in
field-number order (as Go's protobuf does), skips unknown fields, and refuses malformed or
oversized input with a typed error. Framing (unsigned-varint length prefixes) is here too, as a
sans-I/O ``FrameDecoder`` that the stream adapter feeds with whatever bytes arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from ipfsreg import protowire
from ipfsreg.cid import CID, CIDError, cid_from_prefix, encode_varint
from ipfsreg.node.errors import MalformedMessage, MessageTooLarge

PROTOCOL_1_0_0: Final = "/ipfs/bitswap/1.0.0"
PROTOCOL_1_1_0: Final = "/ipfs/bitswap/1.1.0"
PROTOCOL_1_2_0: Final = "/ipfs/bitswap/1.2.0"
# Preference order when opening a stream: newest first.
PROTOCOLS: Final = (PROTOCOL_1_2_0, PROTOCOL_1_1_0, PROTOCOL_1_0_0)

DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
DEFAULT_MAX_BLOCK_SIZE: Final = 2 * 1024 * 1024

V0_PREFIX: Final = b"\x00\x70\x12\x20"  # also what a 1.0.0 block (no prefix) is taken to have

# Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = protowire.VARINT, protowire.I64, protowire.LEN, protowire.I32


class WantType(IntEnum):
    BLOCK = 0
    HAVE = 1


class PresenceType(IntEnum):
    HAVE = 0
    DONT_HAVE = 1


@dataclass(frozen=True, slots=True)
class WantEntry:
    """One wantlist entry: want (or cancel) a block or a HAVE for ``cid``."""

    cid: CID
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False


@dataclass(frozen=True, slots=True)
class Block:
    """A block as carried on the wire: its CID prefix (1.1.0+) and its bytes.

    The CID is not sent; the receiver rebuilds it by hashing ``data`` with the prefix's hash
    function, so a block can only ever be attributed to the CID its bytes really have.
    """

    prefix: bytes
    data: bytes

    @classmethod
    def of(cls, cid: CID, data: bytes) -> Block:
        return cls(cid.prefix(), data)

    def cid(self) -> CID:
        """Hash the data and return its CID; MalformedMessage if the prefix is unusable."""
        try:
            return cid_from_prefix(self.prefix, self.data)
        except CIDError as exc:
            raise MalformedMessage(f"unusable block prefix {self.prefix.hex()}: {exc}") from None


@dataclass(frozen=True, slots=True)
class BlockPresence:
    cid: CID
    type: PresenceType


@dataclass(slots=True)
class Message:
    """One bitswap message. ``full`` replaces the receiver's copy of our wantlist."""

    wantlist: list[WantEntry] = field(default_factory=list)
    full: bool = False
    blocks: list[Block] = field(default_factory=list)
    presences: list[BlockPresence] = field(default_factory=list)
    pending_bytes: int = 0

    def is_empty(self) -> bool:
        return not (self.wantlist or self.full or self.blocks or self.presences)


# --- encoding -----------------------------------------------------------------------------


def _key(field_number: int, wire_type: int) -> bytes:
    return encode_varint((field_number << 3) | wire_type)


def _int32(value: int) -> bytes:
    # Negative int32 values are sign-extended to 64 bits, as protobuf does.
    return encode_varint(value & 0xFFFFFFFFFFFFFFFF if value < 0 else value)


_K_WANTLIST: Final = _key(1, _LEN)
_K_BLOCKS: Final = _key(2, _LEN)
_K_PAYLOAD: Final = _key(3, _LEN)
_K_PRESENCE: Final = _key(4, _LEN)
_K_PENDING: Final = _key(5, _VARINT)
_K_ENTRY: Final = _key(1, _LEN)
_K_FULL: Final = _key(2, _VARINT)
_K_BYTES1: Final = _key(1, _LEN)
_K_BYTES2: Final = _key(2, _LEN)
_K_VARINT2: Final = _key(2, _VARINT)
_K_VARINT3: Final = _key(3, _VARINT)
_K_VARINT4: Final = _key(4, _VARINT)
_K_VARINT5: Final = _key(5, _VARINT)


def _len_field(key: bytes, body: bytes) -> bytes:
    return key + encode_varint(len(body)) + body


def _encode_entry(entry: WantEntry, legacy: bool) -> bytes:
    cid = entry.cid.to_bytes()
    parts = [_K_BYTES1, encode_varint(len(cid)), cid]
    if entry.priority:
        parts += [_K_VARINT2, _int32(entry.priority)]
    if entry.cancel:
        parts += [_K_VARINT3, b"\x01"]
    if not legacy:
        if entry.want_type:
            parts += [_K_VARINT4, encode_varint(int(entry.want_type))]
        if entry.send_dont_have:
            parts += [_K_VARINT5, b"\x01"]
    return b"".join(parts)


def encode_message(message: Message, protocol: str = PROTOCOL_1_2_0) -> bytes:
    """Encode ``message`` for a peer speaking ``protocol``.

    1.0.0 has neither HAVE wants nor presences, and carries blocks without a prefix: a HAVE want
    goes out as a want for the block itself (all such a peer can answer), presences are left out.
    """
    legacy = protocol == PROTOCOL_1_0_0
    parts: list[bytes] = []
    entries = message.wantlist
    if entries or message.full:
        wl = [_len_field(_K_ENTRY, _encode_entry(e, legacy)) for e in entries]
        if message.full:
            wl.append(_K_FULL + b"\x01")
        parts.append(_len_field(_K_WANTLIST, b"".join(wl)))
    if legacy:
        for block in message.blocks:
            parts += [_K_BLOCKS, encode_varint(len(block.data)), block.data]
    else:
        for block in message.blocks:
            head = _len_field(_K_BYTES1, block.prefix)
            if block.data:  # proto3 leaves empty bytes out
                head += _K_BYTES2 + encode_varint(len(block.data))
            parts += [_K_PAYLOAD, encode_varint(len(head) + len(block.data)), head, block.data]
        for presence in message.presences:
            cid = presence.cid.to_bytes()
            body = _len_field(_K_BYTES1, cid)
            if presence.type:
                body += _K_VARINT2 + encode_varint(int(presence.type))
            parts.append(_len_field(_K_PRESENCE, body))
    if message.pending_bytes:
        parts += [_K_PENDING, _int32(message.pending_bytes)]
    return b"".join(parts)


def encode_frame(message: Message, protocol: str = PROTOCOL_1_2_0) -> bytes:
    """The message with its unsigned-varint length prefix, ready to write to a stream."""
    body = encode_message(message, protocol)
    return encode_varint(len(body)) + body


def encoded_block_size(cid: CID, data_len: int) -> int:
    """Bytes a block adds to a 1.1.0+ message (used to pack messages under a size target)."""
    return data_len + len(cid.prefix()) + 16


# --- decoding -----------------------------------------------------------------------------


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    return protowire.fields(buf, pos, end, MalformedMessage)


def _expect(number: int, wire_type: int, expected: int, where: str) -> None:
    protowire.expect(number, wire_type, expected, where, MalformedMessage)


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _decode_cid(raw: bytes, where: str) -> CID:
    try:
        return CID.decode(raw)
    except CIDError as exc:
        raise MalformedMessage(f"invalid CID in {where}: {exc}") from None


def _decode_entry(buf: memoryview, pos: int, end: int) -> WantEntry:
    cid: CID | None = None
    priority = 0
    cancel = False
    want_type = WantType.BLOCK
    send_dont_have = False
    for number, wire_type, value, stop in _fields(buf, pos, end):
        if number == 1:
            _expect(number, wire_type, _LEN, "wantlist entry")
            cid = _decode_cid(bytes(buf[value:stop]), "wantlist entry")
        elif number == 2:
            _expect(number, wire_type, _VARINT, "wantlist entry")
            priority = _as_int32(value)
        elif number == 3:
            _expect(number, wire_type, _VARINT, "wantlist entry")
            cancel = value != 0
        elif number == 4:
            _expect(number, wire_type, _VARINT, "wantlist entry")
            if value not in (0, 1):
                raise MalformedMessage(f"unknown want type {value}")
            want_type = WantType(value)
        elif number == 5:
            _expect(number, wire_type, _VARINT, "wantlist entry")
            send_dont_have = value != 0
    if cid is None:
        raise MalformedMessage("wantlist entry without a CID")
    return WantEntry(cid, priority, cancel, want_type, send_dont_have)


def _check_block_size(size: int, max_block_size: int) -> None:
    if size > max_block_size:
        raise MessageTooLarge("block", size, max_block_size)


def decode_message(
    data: bytes | bytearray | memoryview, *, max_block_size: int = DEFAULT_MAX_BLOCK_SIZE
) -> Message:
    """Decode one message body (without its length prefix).

    Raises MalformedMessage for anything that is not a well-formed bitswap message and
    MessageTooLarge for a block over ``max_block_size``.
    """
    buf = memoryview(data)
    message = Message()
    for number, wire_type, value, stop in _fields(buf, 0, len(buf)):
        if number == 1:
            _expect(number, wire_type, _LEN, "message")
            for n2, w2, v2, s2 in _fields(buf, value, stop):
                if n2 == 1:
                    _expect(n2, w2, _LEN, "wantlist")
                    message.wantlist.append(_decode_entry(buf, v2, s2))
                elif n2 == 2:
                    _expect(n2, w2, _VARINT, "wantlist")
                    message.full = v2 != 0
        elif number == 2:
            _expect(number, wire_type, _LEN, "message")
            _check_block_size(stop - value, max_block_size)
            message.blocks.append(Block(V0_PREFIX, bytes(buf[value:stop])))
        elif number == 3:
            _expect(number, wire_type, _LEN, "message")
            prefix = b""
            payload = b""
            for n2, w2, v2, s2 in _fields(buf, value, stop):
                if n2 == 1:
                    _expect(n2, w2, _LEN, "block")
                    prefix = bytes(buf[v2:s2])
                elif n2 == 2:
                    _expect(n2, w2, _LEN, "block")
                    _check_block_size(s2 - v2, max_block_size)
                    payload = bytes(buf[v2:s2])
            if not prefix:
                raise MalformedMessage("block without a CID prefix")
            message.blocks.append(Block(prefix, payload))
        elif number == 4:
            _expect(number, wire_type, _LEN, "message")
            cid: CID | None = None
            kind = PresenceType.HAVE
            for n2, w2, v2, s2 in _fields(buf, value, stop):
                if n2 == 1:
                    _expect(n2, w2, _LEN, "block presence")
                    cid = _decode_cid(bytes(buf[v2:s2]), "block presence")
                elif n2 == 2:
                    _expect(n2, w2, _VARINT, "block presence")
                    if v2 not in (0, 1):
                        raise MalformedMessage(f"unknown block presence type {v2}")
                    kind = PresenceType(v2)
            if cid is None:
                raise MalformedMessage("block presence without a CID")
            message.presences.append(BlockPresence(cid, kind))
        elif number == 5:
            _expect(number, wire_type, _VARINT, "message")
            message.pending_bytes = _as_int32(value)
    return message


class FrameDecoder:
    """Sans-I/O splitter of a byte stream into varint-length-prefixed message bodies.

    ``feed`` bytes as they arrive, then iterate ``frames()``. A declared length over
    ``max_message_size`` raises MessageTooLarge before any of the body is buffered.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being assembled

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def bytes_wanted(self) -> int:
        """How many more bytes complete the current frame (at least 1)."""
        if self._need is None:
            return 1
        return max(1, self._need - len(self._buf))

    def frames(self) -> Iterator[bytes]:
        while True:
            if self._need is None:
                length = self._parse_length()
                if length is None:
                    return
                self._need = length
            if len(self._buf) < self._need:
                return
            with memoryview(self._buf) as view:  # one copy (a bytearray slice would be another)
                body = bytes(view[: self._need])
            del self._buf[: self._need]
            self._need = None
            yield body

    def _parse_length(self) -> int | None:
        result = 0
        for i, byte in enumerate(self._buf[:10]):
            result |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if i > 0 and byte == 0:
                    raise MalformedMessage("non-minimal varint length prefix")
                if result > self.max_message_size:
                    raise MessageTooLarge("message", result, self.max_message_size)
                del self._buf[: i + 1]
                return result
        if len(self._buf) >= 10:
            raise MalformedMessage("length prefix longer than 10 bytes")
        return None

    def at_frame_boundary(self) -> bool:
        return self._need is None and not self._buf


def wants(cids: Iterable[CID], want_type: WantType, *, send_dont_have: bool = True) -> list[WantEntry]:
    return [WantEntry(c, 1, False, want_type, send_dont_have) for c in cids]


def cancels(cids: Sequence[CID]) -> list[WantEntry]:
    return [WantEntry(c, 0, True) for c in cids]
