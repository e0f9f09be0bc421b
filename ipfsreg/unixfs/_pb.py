"""Protobuf wire-format primitives shared by the dag-pb and UnixFS codecs (varints, tags, lengths)."""

from __future__ import annotations

from typing import Final

from ipfsreg.cid import encode_varint
from ipfsreg.unixfs.errors import InvalidNode

WIRE_VARINT: Final = 0
WIRE_BYTES: Final = 2
_MAX_U64: Final = (1 << 64) - 1


uvarint = encode_varint  # protobuf and multiformats share the unsigned varint


def uvarint_len(value: int) -> int:
    """Encoded length of an unsigned varint."""
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def read_uvarint(buf: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """Decode a protobuf varint (at most 10 bytes, < 2**64) at ``pos``; return (value, next position)."""
    end = len(buf)
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise InvalidNode(f"{what}: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise InvalidNode(f"{what}: varint longer than 10 bytes")
    if result > _MAX_U64:
        raise InvalidNode(f"{what}: varint overflows 64 bits")
    return result, pos


def read_bytes(buf: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """Read a length prefix at ``pos``; return (start, end) of the payload after checking it fits."""
    length, pos = read_uvarint(buf, pos, what)
    end = pos + length
    if end > len(buf):
        raise InvalidNode(f"{what}: length {length} runs past the end of the message")
    return pos, end
