"""The UnixFS ``Data`` protobuf (the payload of a dag-pb node's Data field), byte-identical to Kubo.

Fields are written in field-number order, ``blocksizes`` unpacked (one tag per value) as Kubo's gogo
protobuf does. Decoding is strict: a missing or unknown ``Type``, unknown fields, wrong wire types and
repeated singular fields raise :class:`InvalidNode`; ``blocksizes`` is accepted packed or unpacked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ipfsreg.unixfs._pb import read_bytes, read_uvarint, uvarint
from ipfsreg.unixfs.errors import InvalidNode


class DataType(enum.IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


# The multicodec code of murmur3-x64-64, the only HAMT hash function Kubo supports.
HASH_MURMUR3: int = 0x22


@dataclass(frozen=True, slots=True)
class UnixTime:
    seconds: int
    nanos: int | None = None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: DataType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None

    def encode(self) -> bytes:
        parts = [b"\x08", uvarint(int(self.type))]
        if self.data is not None:
            parts += [b"\x12", uvarint(len(self.data)), self.data]
        if self.filesize is not None:
            parts += [b"\x18", uvarint(self.filesize)]
        for size in self.blocksizes:
            parts += [b"\x20", uvarint(size)]
        if self.hash_type is not None:
            parts += [b"\x28", uvarint(self.hash_type)]
        if self.fanout is not None:
            parts += [b"\x30", uvarint(self.fanout)]
        if self.mode is not None:
            parts += [b"\x38", uvarint(self.mode)]
        if self.mtime is not None:
            body = b"\x08" + uvarint(self.mtime.seconds & 0xFFFFFFFFFFFFFFFF)
            if self.mtime.nanos is not None:
                body += b"\x15" + self.mtime.nanos.to_bytes(4, "little")
            parts += [b"\x42", uvarint(len(body)), body]
        return b"".join(parts)

    @property
    def content_size(self) -> int:
        """Bytes of file content under this node: filesize if present, else inline data plus children."""
        if self.filesize is not None:
            return self.filesize
        return len(self.data or b"") + sum(self.blocksizes)


def _decode_mtime(buf: bytes) -> UnixTime:
    pos = 0
    seconds: int | None = None
    nanos: int | None = None
    while pos < len(buf):
        tag, pos = read_uvarint(buf, pos, "UnixTime")
        field, wire = tag >> 3, tag & 7
        if field == 1 and wire == 0:
            if seconds is not None:
                raise InvalidNode("UnixTime: duplicate Seconds")
            raw, pos = read_uvarint(buf, pos, "UnixTime Seconds")
            seconds = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif field == 2 and wire == 5:
            if nanos is not None:
                raise InvalidNode("UnixTime: duplicate FractionalNanoseconds")
            if pos + 4 > len(buf):
                raise InvalidNode("UnixTime: truncated FractionalNanoseconds")
            nanos = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise InvalidNode(f"UnixTime: unexpected field {field} with wire type {wire}")
    if seconds is None:
        raise InvalidNode("UnixTime: missing Seconds")
    return UnixTime(seconds, nanos)


_VARINT_FIELDS = {3: "filesize", 5: "hash_type", 6: "fanout", 7: "mode"}


def decode(raw: bytes | bytearray | memoryview) -> UnixFSData:
    """Parse a UnixFS Data message strictly (see the module docstring)."""
    buf = bytes(raw)
    pos = 0
    end = len(buf)
    dtype: int | None = None
    data: bytes | None = None
    values: dict[str, int] = {}
    blocksizes: list[int] = []
    mtime: UnixTime | None = None
    while pos < end:
        tag, pos = read_uvarint(buf, pos, "UnixFS Data")
        field, wire = tag >> 3, tag & 7
        if field == 1:
            if wire != 0:
                raise InvalidNode(f"UnixFS Data: wrong wire type {wire} for Type")
            if dtype is not None:
                raise InvalidNode("UnixFS Data: duplicate Type")
            dtype, pos = read_uvarint(buf, pos, "UnixFS Type")
        elif field == 2:
            if wire != 2:
                raise InvalidNode(f"UnixFS Data: wrong wire type {wire} for Data")
            if data is not None:
                raise InvalidNode("UnixFS Data: duplicate Data")
            start, pos = read_bytes(buf, pos, "UnixFS Data")
            data = buf[start:pos]
        elif field == 4:
            if wire == 0:
                size, pos = read_uvarint(buf, pos, "UnixFS blocksizes")
                blocksizes.append(size)
            elif wire == 2:  # packed
                start, stop = read_bytes(buf, pos, "UnixFS blocksizes")
                sub = buf[start:stop]
                p = 0
                while p < len(sub):
                    size, p = read_uvarint(sub, p, "UnixFS blocksizes")
                    blocksizes.append(size)
                pos = stop
            else:
                raise InvalidNode(f"UnixFS Data: wrong wire type {wire} for blocksizes")
        elif field in _VARINT_FIELDS:
            name = _VARINT_FIELDS[field]
            if wire != 0:
                raise InvalidNode(f"UnixFS Data: wrong wire type {wire} for {name}")
            if name in values:
                raise InvalidNode(f"UnixFS Data: duplicate {name}")
            values[name], pos = read_uvarint(buf, pos, f"UnixFS {name}")
        elif field == 8:
            if wire != 2:
                raise InvalidNode(f"UnixFS Data: wrong wire type {wire} for mtime")
            if mtime is not None:
                raise InvalidNode("UnixFS Data: duplicate mtime")
            start, pos = read_bytes(buf, pos, "UnixFS mtime")
            mtime = _decode_mtime(buf[start:pos])
        else:
            raise InvalidNode(f"UnixFS Data: unknown field {field}")
    if dtype is None:
        raise InvalidNode("UnixFS Data: missing Type")
    try:
        kind = DataType(dtype)
    except ValueError:
        raise InvalidNode(f"UnixFS Data: unknown Type {dtype}") from None
    mode = values.get("mode")
    if mode is not None and mode > 0xFFFFFFFF:
        raise InvalidNode("UnixFS Data: mode does not fit in 32 bits")
    return UnixFSData(
        type=kind,
        data=data,
        filesize=values.get("filesize"),
        blocksizes=tuple(blocksizes),
        hash_type=values.get("hash_type"),
        fanout=values.get("fanout"),
        mode=mode,
        mtime=mtime,
    )
