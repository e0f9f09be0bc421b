"""Reading the protobuf wire format, for the hand-written codecs (bitswap, the DHT, IPNS records):
pure, over a memoryview, every length checked against the end of its message.

Each codec passes its own error type, so a malformed message surfaces as that layer's error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5

Error = Callable[[str], Exception]


def read_varint(buf: memoryview, pos: int, end: int, error: Error) -> tuple[int, int]:
    """The unsigned varint at ``buf[pos:end]`` and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise error("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if shift == 63 and byte > 1:  # a tenth byte may only hold bit 63
                raise error("varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift >= 64:
            raise error("varint longer than 10 bytes")


def fields(buf: memoryview, pos: int, end: int, error: Error) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value or start, end) for each field in buf[pos:end].

    For varint fields the value is the varint and ``end`` is unused (0); for the others the value
    is the start offset of the field's bytes.
    """
    while pos < end:
        key, pos = read_varint(buf, pos, end, error)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise error("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end, error)
            yield number, wire_type, value, 0
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, end, error)
            if pos + length > end:
                raise error(f"field {number} runs past the end of its message")
            yield number, wire_type, pos, pos + length
            pos += length
        elif wire_type in (I64, I32):
            size = 8 if wire_type == I64 else 4
            if pos + size > end:
                raise error(f"truncated fixed{size * 8} field {number}")
            yield number, wire_type, pos, pos + size
            pos += size
        else:
            raise error(f"unsupported wire type {wire_type} for field {number}")


def expect(number: int, wire_type: int, expected: int, where: str, error: Error) -> None:
    """Refuse a field whose wire type is not the one its message defines."""
    if wire_type != expected:
        raise error(f"{where} field {number} has wire type {wire_type}, expected {expected}")
