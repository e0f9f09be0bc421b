"""NetworkBlockSource: the exporter's BlockSource over the blockstore, fetching missing blocks by bitswap.

``get`` reads the blockstore first and otherwise fetches, verifies (the CID is rebuilt from the
bytes) and stores the block. ``prefetch`` hints come from the exporter in depth-first order; the
newest hint is read next, so hints go on the front of a stack and up to ``want_window`` of them are
fetched in parallel, ahead of the reader: each is stored, and its bytes are kept until read (at
most ``want_window`` blocks), so the reader does not read back what was just written.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType

import trio

from ipfsreg.blockstore import Blockstore
from ipfsreg.cid import CID
from ipfsreg.node.bitswap.client import BitswapClient, Session
from ipfsreg.node.errors import BitswapError, NodeError

logger = logging.getLogger(__name__)

UNREAD_EXPIRY = 30.0  # seconds a block fetched ahead waits for its reader before its slot is freed


class NetworkBlockSource:
    """Use as ``async with node.block_source() as source:``; ``get`` also works outside the block."""

    def __init__(
        self,
        blockstore: Blockstore,
        client: BitswapClient,
        *,
        window: int | None = None,
        unread_expiry: float = UNREAD_EXPIRY,
    ) -> None:
        self.blockstore = blockstore
        self.client = client
        self.window = max(1, window if window is not None else client.settings.want_window)
        self.unread_expiry = unread_expiry
        self.session: Session = client.new_session()
        self.fetched = 0  # blocks that came from the network through this source
        self._pending: deque[CID] = deque()  # hints not yet started, next-read first
        # Started by the prefetcher, not yet read -> when it completed (None: still in flight).
        self._ahead: OrderedDict[CID, float | None] = OrderedDict()
        self._fetched_data: dict[CID, bytes] = {}  # fetched ahead, handed to get() without a re-read
        self._in_flight: dict[CID, trio.Event] = {}
        self._counted_early: set[CID] = set()  # in flight, already counted in `fetched` by get()
        self._errors: dict[CID, BitswapError] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> NetworkBlockSource:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._nursery.start_soon(self._prefetcher, self._nursery)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self._nursery = None
        # The body's own exception is not the nursery's: keep it out so callers see it unwrapped.
        await self._stack.__aexit__(None, None, None)
        return None

    # --- BlockSource -------------------------------------------------------------------------

    async def get(self, cid: CID) -> bytes:
        event = self._in_flight.get(cid)
        if event is not None and cid in self._ahead:
            # Fetched ahead and still settling (its block may be stored already): it hands its bytes
            # over when done, so wait rather than read back from the store what was just written.
            await event.wait()
        data = self._fetched_data.pop(cid, None)
        error = self._errors.pop(cid, None)  # its prefetch already failed during this read
        self._consumed(cid)
        if data is not None:
            return data
        data = self.blockstore.get_or_none(cid)
        if data is not None:
            if cid in self._in_flight and cid not in self._counted_early:
                # Stored by the fetch still settling (the client stores big messages in a
                # thread): it came from the network, count it now; the fetch will not again.
                self._counted_early.add(cid)
                self.fetched += 1
            return data
        if error is not None:
            raise error
        event = self._in_flight.get(cid)
        if event is not None:
            await event.wait()
            error = self._errors.pop(cid, None)
            if error is not None:
                raise error
            data = self.blockstore.get_or_none(cid)
            if data is not None:
                return data
        event = trio.Event()
        self._in_flight[cid] = event  # the prefetcher leaves it to us
        try:
            data = await self.session.fetch(cid)
            if cid not in self._counted_early:
                self.fetched += 1
            return data
        finally:
            del self._in_flight[cid]
            self._counted_early.discard(cid)
            event.set()

    def prefetch(self, cids: Sequence[CID]) -> None:
        if self._nursery is None:
            raise NodeError("NetworkBlockSource.prefetch needs `async with` (it owns the fetch tasks)")
        self._pending.extendleft(reversed(cids))
        self._lot.unpark_all()

    # --- window ------------------------------------------------------------------------------

    def _consumed(self, cid: CID) -> None:
        if cid not in self._ahead:
            return
        # Blocks started before this one were for earlier reads (or skipped ones): free their slots.
        while self._ahead:
            oldest, _ = self._ahead.popitem(last=False)
            self._fetched_data.pop(oldest, None)
            self._errors.pop(oldest, None)
            if oldest == cid:
                break
        self._lot.unpark_all()

    def _expire_unread(self) -> None:
        """Forget blocks fetched ahead that nobody read for a while (an abandoned read): free the window."""
        horizon = trio.current_time() - self.unread_expiry
        for cid, completed in list(self._ahead.items()):
            if completed is not None and completed < horizon:
                del self._ahead[cid]
                self._fetched_data.pop(cid, None)
                self._errors.pop(cid, None)

    async def _prefetcher(self, nursery: trio.Nursery) -> None:
        while True:
            while not self._pending or len(self._ahead) >= self.window:
                if self._pending:
                    self._expire_unread()
                    if len(self._ahead) < self.window:
                        break
                with trio.move_on_after(self.unread_expiry):
                    await self._lot.park()
            cid = self._pending.popleft()
            if cid in self._in_flight or cid in self._ahead:
                continue
            local = self.blockstore.get_or_none(cid)
            if local is not None:
                # Read it now and hand it over, rather than checking here and reading again in get().
                self._ahead[cid] = trio.current_time()
                self._fetched_data[cid] = local
                continue
            self._ahead[cid] = None
            event = trio.Event()
            self._in_flight[cid] = event
            # The want's priority is taken now, in reader order (trio starts tasks in any order).
            nursery.start_soon(self._fetch_ahead, cid, event, self.session.take_priority())

    async def _fetch_ahead(self, cid: CID, event: trio.Event, priority: int) -> None:
        try:
            data = await self.session.fetch(cid, priority=priority)
            if cid not in self._counted_early:
                self.fetched += 1
            if cid in self._ahead:  # still wanted: at most `window` blocks are kept like this
                self._ahead[cid] = trio.current_time()
                self._fetched_data[cid] = data
        except BitswapError as exc:
            if cid in self._ahead:
                self._ahead[cid] = trio.current_time()
            self._errors[cid] = exc
            logger.debug("prefetch of %s failed: %s", cid, exc)
        finally:
            del self._in_flight[cid]
            self._counted_early.discard(cid)
            event.set()
