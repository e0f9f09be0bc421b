"""Blob GETs sent straight from the pack files: leaf bytes go from the page cache to the socket
(``os.sendfile``) without passing through Python.

A blob's bytes are its UnixFS leaves' payloads in order, and a large block lies contiguous in a pack
file (ipfsreg/blockstore/packs.py), a leaf's payload at a fixed place inside it. When the server offers
the ASGI ``http.response.zerocopysend`` extension (ipfsreg/httpserver.py: plain-TCP HTTP/1.x), a blob
GET or Range GET sends each such payload as a (pack file, offset, length) extent: no read into
Python, no copy, and one message per leaf on the event loop instead of a read, a CRC, a slice and a
chain of socket sends. Everything else goes the usual way, as bytes, in the same response: interior
nodes, leaves stored inline in LevelDB (small ones), leaves not stored here (fetched over bitswap),
and whole responses on TLS connections (no extension offered).

Safety, as the byte-reading path has it:

- Every block of the response is leased (``Datastore.lease``) before it is located and until the
  response ends, so garbage collection keeps it: a blob deleted and collected mid-send is still sent
  whole and exact, and its blocks go at the next collection after the response.
- Right before an extent is sent, and again after, its block must still be stored at the same
  place. A block deleted outside garbage collection meanwhile (its pages punched out, which would
  read as zeros) ends the response short (the connection closes before the body is complete):
  never a complete body with wrong bytes. That is why the response's last byte never goes out
  zero-copy: it is read (``pread``) after every extent before it passed its check, checked in turn,
  and only then sent. A block's pointer is deleted before its pages are punched, and pack bytes are
  never rewritten in place (appends start on fresh pages; a punch drops whole pages from the page
  cache without changing them), so what sendfile took while the block was stored is its bytes.
- Integrity: a block's pack bytes are read and checked against its pointer's CRC (as every pack
  read is) before its first zero-copy send, and again once :data:`VERIFY_SECONDS` have passed since
  the last check; in between, sends trust what the kernel caches.
- Where a leaf's payload lies inside its block is a function of its CID (content addressing): it is
  learned from that first read and kept in a bounded cache (:class:`SendableLeaves`).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final

from quart import Response
from quart.utils import encode_headers

from ipfsreg.blockstore import Blockstore, BlockstoreError, Datastore, Pointer
from ipfsreg.blockstore.store import Lease
from ipfsreg.cid import CID
from ipfsreg.httpserver import ZEROCOPY_SEND
from ipfsreg.registry.priority import bulk_turn
from ipfsreg.unixfs.exporter import BlockSource, Extent, FileNodes, leaf_content_span, read_file_pieces

VERIFY_SECONDS: Final = 60.0
"""How long a block's CRC check stands for zero-copy sends before its bytes are read and checked again."""

BATCH_BYTES: Final = 16 * 1024 * 1024
"""Leaf extents go out together, one ASGI message per this many bytes. The server's file sender
thread sends them (ipfsreg/filesender.py), so a message costs the event loop one pass through the
ASGI, HTTP and server layers whatever its size; a connection waits for its batch's end before the
next goes, so small batches left sockets idle (bench load, pull: 1 MiB 0.54-0.73x the reference,
4 MiB 0.86-0.94x, 16 MiB 1.27-1.41x)."""

CACHE_ENTRIES: Final = 64 * 1024
"""Leaves whose payload place is remembered (about 100 bytes each; 16 GiB of 256 KiB leaves)."""


def offered(scope: Mapping[str, Any]) -> bool:
    """Whether the server sends zero-copy bodies on this request's connection."""
    return ZEROCOPY_SEND in (scope.get("extensions") or {})


@dataclass(frozen=True, slots=True)
class _Known:
    pointer: Pointer
    span: tuple[int, int] | None  # the payload's (start, end) in the block; None: not a leaf we place
    checked: float  # when the bytes at ``pointer`` last passed their CRC check (time.monotonic)


class SendableLeaves:
    """Where the payloads of recently sent leaves lie in their blocks, and when each block's pack
    bytes were last checked (one per registry; a bounded LRU); the files' decoded interior nodes."""

    def __init__(
        self,
        *,
        entries: int = CACHE_ENTRIES,
        verify_seconds: float = VERIFY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries = entries
        self.verify_seconds = verify_seconds
        self.clock = clock
        self._known: OrderedDict[CID, _Known] = OrderedDict()
        self.nodes = FileNodes()
        """Decoded interior nodes of the files sent (each pull of a blob would decode them again)."""
        self.checks = 0
        """Blocks read and CRC-checked for zero-copy sends (for tests and metrics)."""

    def span(self, blocks: Blockstore, cid: CID, pointer: Pointer) -> tuple[int, int] | None:
        """The payload of leaf ``cid`` stored at ``pointer``, as ``(start, end)`` in the block: checked
        now if it has not been lately; None when it is not a leaf in a layout sent this way, or no
        longer stored there. :class:`BlockCorrupted` when its bytes are damaged."""
        now = self.clock()
        known = self._known.get(cid)
        if known is not None and known.pointer == pointer and now - known.checked < self.verify_seconds:
            self._known.move_to_end(cid)
            return known.span
        data = blocks.read_located(cid, pointer)
        if data is None:
            self._known.pop(cid, None)
            return None
        self.checks += 1
        span = leaf_content_span(cid, data)
        self._known[cid] = _Known(pointer, span, now)
        self._known.move_to_end(cid)
        while len(self._known) > self.entries:
            self._known.popitem(last=False)
        return span


@dataclass(frozen=True, slots=True)
class PackedLeaf:
    """What an :class:`Extent` of a zero-copy response names: leaf ``cid`` stored at ``pointer``, in the
    pack file open as ``fd``."""

    cid: CID
    pointer: Pointer
    fd: int


class BlobMovedWhileSent(BlockstoreError):
    """A block was deleted (outside garbage collection) while its bytes were being sent."""


class PackLocator:
    """A :class:`~ipfsreg.unixfs.exporter.LeafLocator` over the local pack files, for one response:
    it leases every block it is asked about and owns a descriptor of each pack it sends from."""

    def __init__(self, blocks: Blockstore, lease: Lease, leaves: SendableLeaves) -> None:
        self.blocks = blocks
        self.lease = lease
        self.leaves = leaves
        self._pointers: dict[CID, Pointer] = {}
        self._fds: dict[int, int] = {}

    def prepare(self, cids: Sequence[CID]) -> list[CID]:
        fetch: list[CID] = []
        for cid in cids:
            self.lease.add(cid)  # before locating it: a collection from now on keeps it
            pointer = self.blocks.locate(cid)
            if pointer is None:
                fetch.append(cid)  # inline, or not here: the block source reads (or fetches) it
            else:
                self._pointers[cid] = pointer
        return fetch

    def locate_leaf(self, cid: CID) -> Extent | None:
        pointer = self._pointers.pop(cid, None)
        if pointer is None or self.blocks.locate(cid) != pointer:
            return None  # not in a pack, or deleted since prepare(): the block source reads it
        span = self.leaves.span(self.blocks, cid, pointer)
        if span is None:
            return None
        fd = self._fds.get(pointer.pack)
        if fd is None:
            fd = self._fds[pointer.pack] = self.blocks.open_pack(pointer.pack)
        start, end = span
        return Extent(PackedLeaf(cid, pointer, fd), pointer.offset + start, end - start)

    def check_sent(self, leaf: PackedLeaf) -> None:
        """Raise :class:`BlobMovedWhileSent` unless ``leaf`` is still stored where it was sent from."""
        if self.blocks.locate(leaf.cid) != leaf.pointer:
            raise BlobMovedWhileSent(f"block {leaf.cid} was deleted while it was being sent")

    def read_checked(self, extent: Extent) -> bytes:
        """The bytes of ``extent`` read from its pack file, then checked to be the leaf's still."""
        leaf = extent.where
        assert isinstance(leaf, PackedLeaf)
        data = os.pread(leaf.fd, extent.length, extent.offset)
        if len(data) != extent.length:
            raise BlockstoreError(f"pack {leaf.pointer.pack} ends inside block {leaf.cid}")
        self.check_sent(leaf)
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pointers.clear()


class ZeroCopyResponse(Response):
    """A blob body sent by :func:`send_response`: bytes as ``http.response.body``, leaf extents as
    ``http.response.zerocopysend``."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        *,
        datastore: Datastore,
        source: BlockSource,
        leaves: SendableLeaves,
        cid: CID,
        offset: int,
        length: int,
    ) -> None:
        super().__init__(b"", status=status, headers=headers)
        self.content_length = length
        self.timeout = None
        self.datastore = datastore
        self.source = source
        self.leaves = leaves
        self.cid = cid
        self.offset = offset
        self.length = length


async def send_response(send: Callable[[MutableMapping[str, Any]], Any], response: ZeroCopyResponse) -> None:
    """Send ``response`` over ASGI ``send`` (whose server offers :data:`ZEROCOPY_SEND`)."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": encode_headers(response.headers),
        }
    )
    lease = Lease(response.datastore)
    locator = PackLocator(response.datastore.blocks, lease, response.leaves)
    left = response.length
    batch: list[Extent] = []
    batched = 0

    async def send_batch() -> None:
        nonlocal batched
        await bulk_turn()  # ipfsreg/registry/priority.py: small requests first
        extents = []
        for extent in batch:
            leaf = extent.where
            assert isinstance(leaf, PackedLeaf)
            extents.append((leaf.fd, extent.offset, extent.length))
        await send({"type": ZEROCOPY_SEND, "extents": extents, "more_body": True})
        for extent in batch:
            assert isinstance(extent.where, PackedLeaf)
            locator.check_sent(extent.where)
        batch.clear()
        batched = 0

    try:
        pieces = read_file_pieces(
            response.source,
            response.cid,
            response.offset,
            response.length,
            locator,
            response.leaves.nodes,
        )
        async with aclosing(pieces):
            async for piece in pieces:
                if isinstance(piece, Extent):
                    left -= piece.length
                    if left > 0:
                        batch.append(piece)
                        batched += piece.length
                        if batched >= BATCH_BYTES:
                            await send_batch()
                        continue
                    # The body's last byte goes as bytes, after every check (see the module doc).
                    if piece.length > 1:
                        batch.append(piece.slice(0, piece.length - 1))
                    if batch:
                        await send_batch()
                    last = piece.slice(piece.length - 1, piece.length)
                    await send({"type": "http.response.body", "body": locator.read_checked(last)})
                    return
                if batch:
                    await send_batch()
                await bulk_turn()
                left -= len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
                if left <= 0:
                    return
            if batch:
                await send_batch()
    finally:
        locator.close()
        lease.release()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
