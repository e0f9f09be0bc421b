"""Small requests before bulk transfers on the one event loop.

Every task on the trio thread gets one turn per scheduling round, so under load a manifest GET,
which needs a dozen rounds (read, parse, route, look up, answer), waits behind a dozen rounds of
every blob transfer in progress: with 50 pulls of 256 KiB chunks that was ~200 ms at the median.
Here each read (GET, HEAD) is *interactive* while it is handled; the parts that move bulk bytes
(the chunks of a streamed response body, the chunks of an upload's body) first take a *bulk turn*,
which waits while any interactive request is in progress, up to :data:`MAX_WAIT_SECONDS` (bulk is
slowed, never starved). Interactive requests then share the loop only with each other. Writes are
never interactive: they spend their time in worker threads and fsync, when the loop is free for
transfers anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from types import TracebackType
from typing import Final

import trio

# The longest a bulk chunk waits for interactive requests to finish: bounds how far a stream of
# small requests can slow transfers down (a 256 KiB chunk per 50 ms and transfer at worst).
MAX_WAIT_SECONDS: Final = 0.05


class Priority:
    """Counts the interactive requests in progress; bulk chunks wait for none to be."""

    def __init__(self, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        self._interactive = 0
        self._clear = trio.Event()
        self._clear.set()
        self.waits = 0
        """How many bulk chunks waited (for tests and metrics)."""

    @property
    def interactive(self) -> int:
        return self._interactive

    def _enter(self) -> None:
        if self._interactive == 0:
            self._clear = trio.Event()
        self._interactive += 1

    def _leave(self) -> None:
        self._interactive -= 1
        if self._interactive == 0:
            self._clear.set()

    async def bulk_turn(self) -> None:
        """Wait (at most ``max_wait``) until no interactive request is in progress."""
        if self._interactive:
            self.waits += 1
            with trio.move_on_after(self.max_wait):
                await self._clear.wait()


class Turn:
    """One request's standing: interactive from ``with turn:`` until its first bulk chunk (a turn
    made with ``interactive=False`` never holds bulk chunks back)."""

    def __init__(self, priority: Priority, *, interactive: bool = True) -> None:
        self.priority = priority
        self._wants = interactive
        self._interactive = False

    def __enter__(self) -> Turn:
        if self._wants:
            self.priority._enter()
            self._interactive = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.to_bulk()

    def to_bulk(self) -> None:
        """From now on this request moves bulk bytes: it no longer holds bulk chunks back."""
        if self._interactive:
            self._interactive = False
            self.priority._leave()

    async def bulk_turn(self) -> None:
        self.to_bulk()
        await self.priority.bulk_turn()


CURRENT_TURN: ContextVar[Turn | None] = ContextVar("ipfsreg_registry_turn", default=None)


async def bulk_turn() -> None:
    """Take a bulk turn for the current request (nothing outside a request)."""
    turn = CURRENT_TURN.get()
    if turn is not None:
        await turn.bulk_turn()


async def bulk_chunks(turn: Turn, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, each produced after a bulk turn; closing this closes ``chunks``."""
    iterator = chunks.__aiter__()
    try:
        while True:
            await turn.bulk_turn()
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
