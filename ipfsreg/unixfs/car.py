"""CAR v1 and v2 (Content Addressable aRchive): writers, a verifying push parser, import into the datastore.

A CAR v1 is ``varint(len) header`` followed by sections ``varint(len) CID block``; the header is the
dag-cbor map ``{"roots": [CID...], "version": 1}`` (hand-encoded here, decoded with ``dag_cbor``).
A CAR v2 (ipld.io/specs/transport/car/carv2) is an 11-byte pragma, a 40-byte header (characteristics,
data offset and size, index offset), a CARv1 payload and an optional index: IndexSorted (0x0400) or
MultihashIndexSorted (0x0401), digests sorted in buckets of one width with the offset of their section.
:class:`CarReader` is a pure state machine in the h11 style: ``feed(bytes) -> events`` for either
version. It checks every block against its CID, a CARv2 index against the payload, and refuses
malformed varints, empty or oversized sections, bad offsets and truncated input with :class:`CarError`.
:class:`CarV2Writer` turns a CARv1 stream into the CARv2 go-car writes (same bytes for the same
payload: interop/car_go_fixtures.py compares with go-car's published fixtures, run by hand).

Import keeps the store untouched unless the whole CAR is good, without holding it in memory: the
first pass verifies every block as it arrives and spools the raw bytes to an anonymous temporary
file; only after the stream ended cleanly does the second pass write the blocks to LevelDB in
batches. Deleting "newly added" blocks on failure was rejected because another writer may store the
same block concurrently and lose it; the cost of this choice is one extra sequential disk write and
read of the CAR. If the second pass itself fails (disk full, crash), the blocks already written stay
as unreferenced blocks, which are harmless and collectable.
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

import dag_cbor
import trio

from ipfsreg.blockstore import MAX_BLOCK_SIZE, Datastore
from ipfsreg.cid import CID, IDENTITY, CIDError, decode_varint, encode_varint, split_multihash
from ipfsreg.unixfs.errors import CarError
from ipfsreg.unixfs.exporter import BlockSource, walk_dag

MAX_HEADER_SIZE: Final = 1024 * 1024
_MAX_CID_SIZE: Final = 256
_MAX_VARINT_BYTES: Final = 9


# --- writing ------------------------------------------------------------------------------


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")


def car_header(roots: Sequence[CID]) -> bytes:
    """The length-prefixed CAR v1 header for ``roots`` (canonical dag-cbor)."""
    parts = [b"\xa2\x65roots", _cbor_head(4, len(roots))]
    for root in roots:
        raw = b"\x00" + root.to_bytes()  # tag 42: a CID as bytes with the multibase identity prefix
        parts += [b"\xd8\x2a", _cbor_head(2, len(raw)), raw]
    parts.append(b"\x67version\x01")
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def car_section(cid: CID, data: bytes) -> bytes:
    """One length-prefixed CAR section: the binary CID followed by the block."""
    raw = cid.to_bytes()
    return encode_varint(len(raw) + len(data)) + raw + data


async def export_car(source: BlockSource, roots: Sequence[CID]) -> AsyncIterator[bytes]:
    """Stream a CAR v1 of every block reachable from ``roots`` (depth-first, each block once)."""
    yield car_header(roots)
    seen: set[CID] = set()
    for root in roots:
        async for cid, data in walk_dag(source, root, seen=seen):
            yield car_section(cid, data)


# --- CAR v2 -------------------------------------------------------------------------------

CARV2_PRAGMA: Final = bytes.fromhex("0aa16776657273696f6e02")  # varint(10) {"version": 2}
CARV2_HEADER_SIZE: Final = 40
CARV2_DATA_OFFSET: Final = len(CARV2_PRAGMA) + CARV2_HEADER_SIZE  # no padding, as go-car writes
INDEX_SORTED: Final = 0x0400
MULTIHASH_INDEX_SORTED: Final = 0x0401
MAX_INDEX_SIZE: Final = 256 * 1024 * 1024
_U64: Final = (1 << 64) - 1
_START, _V1, _V2_HEADER, _V2_BEFORE_DATA, _V2_DATA, _V2_AFTER_DATA, _V2_INDEX = range(7)


@dataclass(frozen=True, slots=True)
class CarV2Header:
    """The 40 bytes after the pragma: characteristics bitfield and where payload and index lie."""

    data_offset: int
    data_size: int
    index_offset: int  # 0: no index
    characteristics: bytes = bytes(16)

    def encode(self) -> bytes:
        return self.characteristics + struct.pack("<QQQ", self.data_offset, self.data_size, self.index_offset)

    @classmethod
    def decode(cls, raw: bytes, *, fail: Callable[[str], CarError] = CarError) -> CarV2Header:
        """Parse and check the header: the payload after the header, the index after the payload."""
        data_offset, data_size, index_offset = struct.unpack("<QQQ", raw[16:40])
        header = cls(data_offset, data_size, index_offset, raw[:16])
        if data_offset < CARV2_DATA_OFFSET:
            raise fail(f"CAR v2 data offset {data_offset} lies inside the CAR v2 header")
        if data_size == 0:
            raise fail("CAR v2 data payload is empty")
        if data_offset + data_size > _U64:
            raise fail(f"CAR v2 data offset {data_offset} plus size {data_size} overflows")
        if index_offset and index_offset < data_offset + data_size:
            raise fail(
                f"CAR v2 index offset {index_offset} overlaps the data payload "
                f"(bytes {data_offset}..{data_offset + data_size})"
            )
        return header


def car_v2_prefix(data_size: int, index_offset: int) -> bytes:
    """Pragma and header of a CARv2 whose payload of ``data_size`` bytes follows at once."""
    return CARV2_PRAGMA + CarV2Header(CARV2_DATA_OFFSET, data_size, index_offset).encode()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    code: int | None  # the multihash function (None in an IndexSorted index, which has digests only)
    digest: bytes
    offset: int  # of the section in the CARv1 payload


def multihash_index_sorted(records: Iterable[tuple[bytes, int]]) -> bytes:
    """A MultihashIndexSorted (0x0401) index of ``(multihash, section offset)`` records, as go-car writes
    it: multihash codes ascending, then digest widths ascending, then digests bytewise (offsets break
    ties). Identity multihashes are left out, as the spec says.

    Layout: varint(0x0401), u32 count of codes; per code: u64 code, u32 count of widths; per width:
    u32 width (digest + 8), u64 byte length, then ``digest u64-offset`` records; little-endian.
    """
    by_code: dict[int, dict[int, list[tuple[bytes, int]]]] = {}
    for mh, offset in records:
        code, digest = split_multihash(mh)
        if code == IDENTITY:
            continue
        by_code.setdefault(code, {}).setdefault(len(digest), []).append((digest, offset))
    parts = [encode_varint(MULTIHASH_INDEX_SORTED), struct.pack("<I", len(by_code))]
    for code in sorted(by_code):
        widths = by_code[code]
        parts.append(struct.pack("<QI", code, len(widths)))
        for length in sorted(widths):
            entries = sorted(widths[length])
            width = length + 8
            parts.append(struct.pack("<IQ", width, width * len(entries)))
            parts.extend(digest + struct.pack("<Q", offset) for digest, offset in entries)
    return b"".join(parts)


class _IndexCursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise CarError(f"truncated in {what} at index byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        values: tuple[int, ...] = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))
        return values


def _sorted_buckets(cursor: _IndexCursor, code: int | None, out: list[IndexEntry]) -> None:
    (count,) = cursor.unpack("<I", "bucket count")
    previous_width = 0
    for _ in range(count):
        width, length = cursor.unpack("<IQ", "bucket header")
        if width <= 8 or width > 8 + 128:
            raise CarError(f"bucket width {width} is not a digest length plus 8")
        if width <= previous_width:
            raise CarError("buckets are not in ascending width order")
        previous_width = width
        if length % width:
            raise CarError(f"bucket of {length} bytes is not a whole number of {width} byte records")
        body = cursor.take(length, "bucket records")
        previous = b""
        for i in range(0, length, width):
            digest = body[i : i + width - 8]
            if digest < previous:
                raise CarError("bucket digests are not sorted")
            previous = digest
            (offset,) = struct.unpack("<Q", body[i + width - 8 : i + width])
            out.append(IndexEntry(code, digest, offset))


def parse_index(data: bytes) -> list[IndexEntry]:
    """Decode a CARv2 index payload (IndexSorted 0x0400 or MultihashIndexSorted 0x0401)."""
    try:
        codec, pos = decode_varint(data)
    except CIDError as exc:
        raise CarError(f"bad index format varint: {exc}") from None
    cursor = _IndexCursor(data)
    cursor.pos = pos
    entries: list[IndexEntry] = []
    if codec == INDEX_SORTED:
        _sorted_buckets(cursor, None, entries)
    elif codec == MULTIHASH_INDEX_SORTED:
        (count,) = cursor.unpack("<I", "multihash code count")
        previous = -1
        for _ in range(count):
            (code,) = cursor.unpack("<Q", "multihash code")
            if code <= previous:
                raise CarError("multihash codes are not in ascending order")
            previous = code
            _sorted_buckets(cursor, code, entries)
    else:
        raise CarError(
            f"unsupported index format 0x{codec:x} (known: 0x0400 IndexSorted, 0x0401 MultihashIndexSorted)"
        )
    if cursor.pos != len(data):
        raise CarError(f"{len(data) - cursor.pos} bytes after the end of the index")
    return entries


def check_index(entries: Sequence[IndexEntry], sections: Mapping[int, bytes]) -> None:
    """Check index ``entries`` against the payload's ``sections`` (offset -> block multihash)."""
    listed: set[bytes] = set()
    for entry in entries:
        mh = sections.get(entry.offset)
        if mh is None:
            raise CarError(
                f"entry {entry.digest.hex()} points at offset {entry.offset}, where no section starts"
            )
        code, digest = split_multihash(mh)
        if digest != entry.digest or (entry.code is not None and code != entry.code):
            raise CarError(
                f"entry {entry.digest.hex()} points at offset {entry.offset}, a block of another digest"
            )
        listed.add(mh)
    for offset, mh in sections.items():
        if mh not in listed and split_multihash(mh)[0] != IDENTITY:
            raise CarError(f"the block at offset {offset} ({mh.hex()}) is not in the index")


class CarV2Writer:
    """A binary file to write a CARv1 stream to; it arrives in ``out`` as a CARv2 with a
    MultihashIndexSorted index (payload at offset 51, index right after it, no padding: go-car's
    layout). With ``seekable`` the payload goes straight to ``out`` and the header is written last
    over a placeholder; otherwise it is spooled to a temporary file first (a pipe cannot seek)."""

    def __init__(self, out: BinaryIO, *, seekable: bool, spool_dir: str | Path | None = None) -> None:
        self._out = out
        self._seekable = seekable
        self._sections = _SectionReader(verify=False, max_block_size=MAX_BLOCK_SIZE, fail=CarError)
        self._records: list[tuple[bytes, int]] = []
        self._size = 0
        if seekable:
            self._start = out.tell()
            self._dest: BinaryIO = out
            out.write(bytes(CARV2_DATA_OFFSET))
        else:
            # Owned by the writer until close(): the spool outlives this call.
            self._dest = tempfile.TemporaryFile(dir=spool_dir, prefix="ipfsreg-carv2-")  # noqa: SIM115

    def write(self, data: bytes | bytearray | memoryview) -> int:
        for event in self._sections.feed(data):
            if isinstance(event, CarBlock):
                self._records.append((event.cid.multihash, event.offset))
        self._dest.write(data)
        self._size += len(data)
        return len(data)

    def close(self) -> None:
        """Write the index and the header; raises CarError if the CARv1 was incomplete."""
        if self._sections.pending or self._sections.header is None:
            raise CarError("the CAR v1 stream ended inside a section or had no header")
        index = multihash_index_sorted(self._records)
        prefix = car_v2_prefix(self._size, CARV2_DATA_OFFSET + self._size)
        if self._seekable:
            self._out.write(index)
            end = self._out.tell()
            self._out.seek(self._start)
            self._out.write(prefix)
            self._out.seek(end)
            return
        spool = self._dest
        self._out.write(prefix)
        spool.seek(0)
        while chunk := spool.read(1024 * 1024):
            self._out.write(chunk)
        self._out.write(index)
        spool.close()


def wrap_car_v1(car: bytes) -> bytes:
    """A whole in-memory CARv1 as the CARv2 :class:`CarV2Writer` makes of it."""
    out = io.BytesIO()
    writer = CarV2Writer(out, seekable=True)
    writer.write(car)
    writer.close()
    return out.getvalue()


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarHeader:
    roots: tuple[CID, ...]
    version: int  # 1, or 2 for a CARv2 (``v2`` then holds its header)
    v2: CarV2Header | None = None


@dataclass(frozen=True, slots=True)
class CarBlock:
    cid: CID
    data: bytes
    offset: int = 0  # where the section starts in the CARv1 (payload): what a CARv2 index records


CarEvent = CarHeader | CarBlock


def _parse_header(body: bytes) -> CarHeader:
    try:
        value: Any = dag_cbor.decode(body)
    except Exception as exc:  # dag_cbor raises several error types for malformed input
        raise CarError(f"CAR header is not valid dag-cbor: {exc}") from None
    if not isinstance(value, dict):
        raise CarError("CAR header is not a map")
    version = value.get("version")
    if version == 2:
        raise CarError("CAR version 2 header is not the CARv2 pragma (0x0aa16776657273696f6e02)")
    if version != 1 or isinstance(version, bool):
        raise CarError(f"unsupported CAR version {version!r}")
    if set(value) != {"roots", "version"}:
        raise CarError(f"unexpected CAR header keys {sorted(value)}")
    raw_roots = value["roots"]
    if not isinstance(raw_roots, list):
        raise CarError("CAR header roots is not a list")
    roots = []
    for root in raw_roots:
        try:
            roots.append(CID.decode(bytes(root)))
        except (CIDError, TypeError) as exc:
            raise CarError(f"CAR header root is not a supported CID: {exc}") from None
    return CarHeader(tuple(roots), 1)


class _SectionReader:
    """The CARv1 grammar: a header section, then ``CID block`` sections, with their offsets."""

    def __init__(self, *, verify: bool, max_block_size: int, fail: Callable[[str], CarError]) -> None:
        self.verify = verify
        self.max_block_size = max_block_size
        self.header: CarHeader | None = None
        self.blocks_read = 0
        self.bytes_read = 0  # bytes of complete sections parsed
        self._buf = bytearray()
        self._fail = fail

    def _read_length(self, pos: int) -> tuple[int, int] | None:
        """The varint at ``pos``: (value, position after it), or None if more bytes are needed."""
        buf = self._buf
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            if pos + i >= len(buf):
                return None
            byte = buf[pos + i]
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if byte == 0 and i > 0:
                    raise self._fail("CAR section length varint is not minimally encoded")
                return value, pos + i + 1
        raise self._fail("CAR section length varint is longer than 9 bytes")

    def feed(self, data: bytes | bytearray | memoryview) -> list[CarEvent]:
        self._buf += data
        events: list[CarEvent] = []
        pos = 0
        buf = self._buf
        while True:
            got = self._read_length(pos)
            if got is None:
                break
            length, start = got
            if length == 0:
                raise self._fail("empty CAR section")
            limit = MAX_HEADER_SIZE if self.header is None else self.max_block_size + _MAX_CID_SIZE
            if length > limit:
                raise self._fail(f"CAR section of {length} bytes exceeds the {limit} byte limit")
            end = start + length
            if end > len(buf):
                break
            section = bytes(buf[start:end])
            if self.header is None:
                self.header = _parse_header(section)
                events.append(self.header)
            else:
                events.append(self._block(section, self.bytes_read))
            self.bytes_read += end - pos
            pos = end
        if pos:
            del buf[:pos]
        return events

    def _block(self, section: bytes, offset: int) -> CarBlock:
        try:
            cid, start = CID.decode_prefix(section)
        except CIDError as exc:
            raise self._fail(f"CAR section does not start with a CID: {exc}") from None
        data = section[start:]
        if len(data) > self.max_block_size:
            raise self._fail(f"block {cid} is {len(data)} bytes, over the {self.max_block_size} byte limit")
        if self.verify:
            try:
                ok = cid.verify(data)
            except CIDError as exc:
                raise self._fail(f"cannot verify block {cid}: {exc}") from None
            if not ok:
                raise self._fail(f"block {cid} does not match its CID")
        self.blocks_read += 1
        return CarBlock(cid, data, offset)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete section."""
        return len(self._buf)


class CarReader:
    """Push parser for CAR v1 and v2: ``feed`` bytes, get a CarHeader first, then one CarBlock per section.

    A CARv2 is recognised by its pragma; its header says where the CARv1 payload lies (padding
    before and after it is skipped) and where its index starts. Without ``verify`` nothing is
    hashed; with it every block is checked against its CID, and a CARv2 index (IndexSorted or
    MultihashIndexSorted) is checked against the payload when the input ends: every entry must point
    at the start of a section holding a block with that digest, and every block (but identity CIDs)
    must be listed, as go-car's ``car verify`` demands. Bytes after a CARv2 payload that declares no
    index are refused.
    """

    def __init__(self, *, verify: bool = True, max_block_size: int = MAX_BLOCK_SIZE) -> None:
        self.verify = verify
        self.max_block_size = max_block_size
        self.header: CarHeader | None = None
        self.bytes_read = 0  # bytes of the input consumed
        self._sections = _SectionReader(verify=verify, max_block_size=max_block_size, fail=self._fail)
        self._failed = False
        self._state = _START
        self._head = bytearray()  # the pragma and CARv2 header while they arrive
        self._v2: CarV2Header | None = None
        self._index = bytearray()
        self._offsets: dict[int, bytes] = {}  # section offset -> multihash, for checking a v2 index

    @property
    def blocks_read(self) -> int:
        return self._sections.blocks_read

    def _fail(self, message: str) -> CarError:
        self._failed = True
        return CarError(f"{message} (at byte {self._position()})")

    def _position(self) -> int:
        """Where the input is: inside the CARv1, the start of the section being parsed."""
        if self._state == _V1:
            return self._sections.bytes_read
        if self._state == _V2_DATA and self._v2 is not None:
            return self._v2.data_offset + self._sections.bytes_read
        return self.bytes_read

    def feed(self, data: bytes | bytearray | memoryview) -> list[CarEvent]:
        if self._failed:
            raise CarError("CAR reader already failed")
        try:
            return self._feed(
                memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
            )
        except CarError:
            self._failed = True
            raise

    def _feed(self, view: memoryview) -> list[CarEvent]:
        events: list[CarEvent] = []
        pos = 0
        while pos < len(view):
            if self._state == _START:
                take = min(len(CARV2_PRAGMA) - len(self._head), len(view) - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) < len(CARV2_PRAGMA):
                    continue
                if bytes(self._head) == CARV2_PRAGMA:
                    self._state = _V2_HEADER
                    self._head.clear()
                    self.bytes_read = len(CARV2_PRAGMA)
                else:
                    self._state = _V1
                    head, self._head = bytes(self._head), bytearray()
                    events += self._payload(head)
            elif self._state == _V1:
                events += self._payload(view[pos:])
                pos = len(view)
            elif self._state == _V2_HEADER:
                take = min(CARV2_HEADER_SIZE - len(self._head), len(view) - pos)
                self._head += view[pos : pos + take]
                pos += take
                self.bytes_read += take
                if len(self._head) == CARV2_HEADER_SIZE:
                    self._v2 = CarV2Header.decode(bytes(self._head), fail=self._fail)
                    self._state = _V2_BEFORE_DATA
            elif self._state == _V2_BEFORE_DATA:
                assert self._v2 is not None
                take = min(self._v2.data_offset - self.bytes_read, len(view) - pos)
                pos += take
                self.bytes_read += take
                if self.bytes_read == self._v2.data_offset:
                    self._state = _V2_DATA
            elif self._state == _V2_DATA:
                assert self._v2 is not None
                take = min(self._v2.data_offset + self._v2.data_size - self.bytes_read, len(view) - pos)
                events += self._payload(view[pos : pos + take])
                pos += take
                if self.bytes_read == self._v2.data_offset + self._v2.data_size:
                    if self._sections.pending:
                        raise self._fail("CAR v2 data payload ends inside a section")
                    if self._sections.header is None:
                        raise self._fail("CAR v2 data payload has no CARv1 header")
                    self._state = _V2_AFTER_DATA
            elif self._state == _V2_AFTER_DATA:
                assert self._v2 is not None
                if not self._v2.index_offset:
                    raise self._fail("bytes after the CAR v2 data payload, but its header declares no index")
                take = min(self._v2.index_offset - self.bytes_read, len(view) - pos)
                pos += take
                self.bytes_read += take
                if self.bytes_read == self._v2.index_offset:
                    self._state = _V2_INDEX
            else:  # _V2_INDEX: everything to the end of the input
                take = len(view) - pos
                if len(self._index) + take > MAX_INDEX_SIZE:
                    raise self._fail(f"CAR v2 index exceeds the {MAX_INDEX_SIZE} byte limit")
                self._index += view[pos:]
                pos = len(view)
                self.bytes_read += take
        return events

    def _payload(self, data: bytes | memoryview) -> list[CarEvent]:
        """Bytes of the CARv1 (the whole input of a v1, the data payload of a v2)."""
        events = self._sections.feed(data)
        self.bytes_read += len(data)
        for i, event in enumerate(events):
            if isinstance(event, CarHeader):
                if self._v2 is not None:
                    event = CarHeader(event.roots, 2, self._v2)
                    events[i] = event
                self.header = event
            elif self._v2 is not None and self._v2.index_offset and self.verify:
                self._offsets[event.offset] = event.cid.multihash
        return events

    def close(self) -> None:
        """Declare the end of input; raise CarError if it stopped mid-section or had no header, or a
        CARv2 ends before its payload or has an index that does not match it."""
        if self._failed:
            return
        if self._state == _START and self._head:
            # Fewer bytes than a CARv2 pragma: a (short or broken) CARv1; let its parser judge them.
            self._state = _V1
            head, self._head = bytes(self._head), bytearray()
            try:
                self._payload(head)
            except CarError:
                self._failed = True
                raise
        if self._state in (_V2_HEADER, _V2_BEFORE_DATA, _V2_DATA):
            raise self._fail("CAR v2 truncated before the end of its data payload")
        if self._sections.pending:
            raise self._fail(f"CAR truncated: {self._sections.pending} bytes of an incomplete section")
        if self.header is None:
            raise self._fail("CAR has no header")
        if self._v2 is not None and self._v2.index_offset:
            if self._state != _V2_INDEX or not self._index:
                raise self._fail("CAR v2 truncated before its index")
            if self.verify:
                try:
                    check_index(parse_index(bytes(self._index)), self._offsets)
                except CarError as exc:
                    self._failed = True
                    raise CarError(f"CAR v2 index: {exc}") from None


def parse_car(data: bytes) -> tuple[tuple[CID, ...], list[CarBlock]]:
    """Parse a whole in-memory CAR: (roots, blocks)."""
    reader = CarReader()
    events = reader.feed(data)
    reader.close()
    assert reader.header is not None
    return reader.header.roots, [event for event in events if isinstance(event, CarBlock)]


# --- importing ----------------------------------------------------------------------------


async def _chunks(stream: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(stream, AsyncIterable):
        async for chunk in stream:
            yield chunk
    else:
        for chunk in stream:
            yield chunk


def _replay(spool: IO[bytes], read_size: int) -> Iterator[CarBlock]:
    """The blocks of the verified spool, re-parsed without re-hashing."""
    spool.seek(0)
    reader = CarReader(verify=False)
    while chunk := spool.read(read_size):
        for event in reader.feed(chunk):
            if isinstance(event, CarBlock):
                yield event
    reader.close()


def _next_batch(blocks: Iterator[CarBlock], batch_bytes: int) -> tuple[list[CarBlock], bool]:
    """Up to ``batch_bytes`` of blocks from the replay (run in a worker thread); True once exhausted."""
    batch: list[CarBlock] = []
    size = 0
    for block in blocks:
        batch.append(block)
        size += len(block.data)
        if size >= batch_bytes:
            return batch, False
    return batch, True


async def import_car(
    stream: AsyncIterable[bytes] | Iterable[bytes],
    datastore: Datastore,
    *,
    spool_dir: str | Path | None = None,
    batch_bytes: int = 16 * 1024 * 1024,
) -> list[CID]:
    """Verify a whole CAR v1 stream, then store its blocks; return the header's roots.

    Raises CarError (and stores nothing) if any block is malformed, oversized or fails its hash, or
    the stream ends early. Memory stays bounded by one section plus the current write batch.
    """
    reader = CarReader()
    with tempfile.TemporaryFile(dir=spool_dir, prefix="ipfsreg-car-") as spool:

        def ingest(chunk: bytes) -> None:
            reader.feed(chunk)
            spool.write(chunk)

        async for chunk in _chunks(stream):
            if chunk:
                await trio.to_thread.run_sync(ingest, chunk)
        reader.close()
        assert reader.header is not None
        # Second pass. Batches are committed on the trio thread: the datastore's block statistics
        # are settled at commit time and must not race with other writers' commits.
        replay = _replay(spool, 1024 * 1024)
        done = False
        while not done:
            blocks, done = await trio.to_thread.run_sync(_next_batch, replay, batch_bytes)
            if blocks:
                with datastore.batch() as batch:
                    for block in blocks:
                        batch.put_block(block.cid, block.data, verify=False)
        return list(reader.header.roots)
