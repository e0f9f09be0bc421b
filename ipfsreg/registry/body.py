"""Request bodies kept as the list of chunks the server received: no copying on the event loop.

Quart's body appends every chunk to one bytearray and copies it out again on each read; for a
push that is two copies of every byte on the trio thread (and, above the allocator's mmap
threshold, fresh pages to fault in each time). Here a chunk is stored as the ``bytes`` object
the ASGI server handed over and given to the reader as is.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import trio
from quart_trio.wrappers.request import TrioBody
from werkzeug.exceptions import RequestEntityTooLarge


class StreamingBody(TrioBody):
    """A request body read chunk by chunk, whose reader signals when it has drained the buffer."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._received = 0
        self._drained = trio.Event()
        self._released = False
        self._released_at = 0
        self._discard_limit = 0
        self._settled = trio.Event()

    def append(self, data: bytes) -> None:
        if self._released:
            self._received += len(data)
            if self._received - self._released_at > self._discard_limit:
                self._settled.set()  # more than the handler's drain allows: the connection closes
            return
        if not data or self._must_raise is not None:
            return
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._received += len(chunk)
        self._has_data.set()
        if self._max_content_length is not None and self._received > self._max_content_length:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()

    async def next_chunks(self) -> list[bytes]:
        """Every chunk buffered now (waiting for one if none is); ``[]`` once the body is complete."""
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            await self._has_data.wait()
        if self._must_raise is not None:
            raise self._must_raise
        chunks = self._chunks
        self._chunks = []
        self._buffered = 0
        self._has_data.clear()
        self._drained.set()
        return chunks

    async def __anext__(self) -> bytes:
        chunks = await self.next_chunks()
        if not chunks:
            raise StopAsyncIteration()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def __await__(self) -> Generator[Any, None, Any]:
        if self._must_raise is not None:
            raise self._must_raise
        yield from self._complete.wait().__await__()
        if self._must_raise is not None:
            raise self._must_raise
        return b"".join(self._chunks)

    def clear(self) -> None:
        self._chunks = []
        self._buffered = 0

    @property
    def complete(self) -> bool:
        return bool(self._complete.is_set())

    @property
    def ready(self) -> bool:
        """Whether :meth:`next_chunks` would return without waiting."""
        return bool(self._chunks) or self._must_raise is not None or bool(self._complete.is_set())

    @property
    def buffered(self) -> int:
        return self._buffered

    async def wait_below(self, high_water: int) -> None:
        """Wait until the reader leaves at most ``high_water`` bytes buffered (or no longer reads)."""
        while (
            self._buffered > high_water
            and self._must_raise is None
            and not self._complete.is_set()
            and not self._released
        ):
            self._drained = trio.Event()
            await self._drained.wait()

    def set_complete(self) -> None:
        super().set_complete()
        self._settled.set()

    def release(self, discard_limit: int = 0) -> None:
        """The handler is done with the body: stop holding data or making the receiver wait; what
        still arrives is counted and dropped (see :meth:`drain`)."""
        if not self._released:
            self._released = True
            self._released_at = self._received
        self._discard_limit = discard_limit
        self.clear()
        self._drained.set()
        if self._complete.is_set():
            self._settled.set()

    async def drain(self, limit: int, seconds: float, expected_length: int | None = None) -> bool:
        """Release the body and wait until the rest of it has arrived (dropped as it comes) or more
        than ``limit`` bytes or ``seconds`` went by; True when the whole body has been read.

        With a known length (``expected_length``) beyond the limit, it does not wait at all.
        """
        self.release(limit)
        if self.complete:
            return True
        if expected_length is not None and expected_length - self._received > limit:
            return False
        with trio.move_on_after(seconds):
            await self._settled.wait()
        return self.complete
