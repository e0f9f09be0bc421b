"""CAR v1 (Content Addressable aRchive): a writer, a verifying push parser, and import into the datastore.

A CAR v1 is ``varint(len) header`` followed by sections ``varint(len) CID block``; the header is the
dag-cbor map ``{"roots": [CID...], "version": 1}`` (hand-encoded here, decoded with ``dag_cbor``).
:class:`CarReader` is a pure state machine in the h11 style: ``feed(bytes) -> events``. It checks
every block against its CID and refuses malformed varints, empty or oversized sections and
truncated input with :class:`CarError`.

Import keeps the store untouched unless the whole CAR is good, without holding it in memory: the
first pass verifies every block as it arrives and spools the raw bytes to an anonymous temporary
file; only after the stream ended cleanly does the second pass write the blocks to LevelDB in
batches. Deleting "newly added" blocks on failure was rejected because another writer may store the
same block concurrently and lose it; the cost of this choice is one extra sequential disk write and
read of the CAR. If the second pass itself fails (disk full, crash), the blocks already written stay
as unreferenced blocks, which are harmless and collectable.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import dag_cbor
import trio

from ipfsreg.blockstore import MAX_BLOCK_SIZE, Datastore
from ipfsreg.cid import CID, CIDError, encode_varint
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


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarHeader:
    roots: tuple[CID, ...]
    version: int


@dataclass(frozen=True, slots=True)
class CarBlock:
    cid: CID
    data: bytes


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
        raise CarError("CAR v2 is not supported (only CAR v1)")
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


class CarReader:
    """Push parser: ``feed`` bytes, get a CarHeader first and then one CarBlock per section."""

    def __init__(self, *, verify: bool = True, max_block_size: int = MAX_BLOCK_SIZE) -> None:
        self.verify = verify
        self.max_block_size = max_block_size
        self.header: CarHeader | None = None
        self.blocks_read = 0
        self.bytes_read = 0
        self._buf = bytearray()
        self._failed = False

    def _fail(self, message: str) -> CarError:
        self._failed = True
        return CarError(f"{message} (at byte {self.bytes_read})")

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
        if self._failed:
            raise CarError("CAR reader already failed")
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
                try:
                    self.header = _parse_header(section)
                except CarError:
                    self._failed = True
                    raise
                events.append(self.header)
            else:
                events.append(self._block(section))
            self.bytes_read += end - pos
            pos = end
        if pos:
            del buf[:pos]
        return events

    def _block(self, section: bytes) -> CarBlock:
        try:
            cid, offset = CID.decode_prefix(section)
        except CIDError as exc:
            raise self._fail(f"CAR section does not start with a CID: {exc}") from None
        data = section[offset:]
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
        return CarBlock(cid, data)

    def close(self) -> None:
        """Declare the end of input; raise CarError if it stopped mid-section or had no header."""
        if self._failed:
            return
        if self._buf:
            raise self._fail(f"CAR truncated: {len(self._buf)} bytes of an incomplete section")
        if self.header is None:
            raise self._fail("CAR has no header")


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
