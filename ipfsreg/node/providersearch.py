"""Provider searches for the bitswap client: find who provides a block nobody connected has, and connect.

When a want finds no connected peer with the block, the client asks :meth:`ProviderSearch.search`
for its CID. One search per CID runs at a time (wants for the same CID share it, and a finished
one is reused for ``memory`` seconds, so a miss does not walk the DHT once per reader); it reads
``find_providers`` to its end and dials every provider it names, ``MAX_DIALS_PER_SEARCH`` at a
time, each within the dial timeout. Connected providers reach every active want through the
client's peer-connected event; the end of the search reaches the wants for its CID through
``on_done``, so that a want can fail at once when the search found nobody and every connected
peer has said it lacks the block.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from ipfsreg.cid import CID
from ipfsreg.node.routing.routing import ProviderInfo

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SEARCHES: Final = 8
MAX_DIALS_PER_SEARCH: Final = 10
SEARCH_MEMORY: Final = 10.0  # seconds a finished search answers for its CID before a new one runs
MAX_REMEMBERED: Final = 1024


@dataclass
class Search:
    cid: CID
    done: trio.Event = field(default_factory=trio.Event)
    found: int = 0  # providers found (this node excluded)
    connected: int = 0  # of those, connected now (already or by this search)
    finished_at: float | None = None

    def describe(self) -> str:
        if not self.done.is_set():
            return "the provider search is still running"
        if not self.found:
            return "no provider was found"
        return f"{self.found} providers found, {self.connected} reachable"


FindProviders = Callable[[CID, int], AsyncIterator[ProviderInfo]]
ConnectProvider = Callable[[ProviderInfo], Awaitable[bool]]


class ProviderSearch:
    def __init__(
        self,
        find_providers: FindProviders,
        connect: ConnectProvider,
        *,
        on_done: Callable[[CID], None] | None = None,
        delay: float = 1.0,
        memory: float = SEARCH_MEMORY,
    ) -> None:
        self._find = find_providers
        self._connect = connect
        self.on_done = on_done
        self.delay = delay  # how long a want waits for connected peers before searching
        self.memory = memory
        self.searches_run = 0
        self._searches: OrderedDict[CID, Search] = OrderedDict()
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_SEARCHES)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def search(self, cid: CID) -> Search:
        """The running or recent search for ``cid``, starting one if there is none."""
        current = self._searches.get(cid)
        now = trio.current_time()
        if current is not None and (current.finished_at is None or now - current.finished_at < self.memory):
            return current
        search = Search(cid)
        self._searches[cid] = search
        self._searches.move_to_end(cid)
        while len(self._searches) > MAX_REMEMBERED:
            oldest, old = next(iter(self._searches.items()))
            if old.finished_at is None:
                break  # never forget a running search (its wants wait for it)
            del self._searches[oldest]
        if self._nursery is None:
            self._finish(search)  # not running: nobody can be found
        else:
            self._nursery.start_soon(self._run, search)
        return search

    async def _run(self, search: Search) -> None:
        self.searches_run += 1
        dial_slots = trio.CapacityLimiter(MAX_DIALS_PER_SEARCH)
        try:
            async with self._limiter, trio.open_nursery() as dials:
                async for provider in self._find(search.cid, 20):
                    search.found += 1
                    dials.start_soon(self._dial, search, provider, dial_slots)
        except Exception:
            logger.exception("provider search for %s failed", search.cid)
        finally:
            self._finish(search)

    async def _dial(self, search: Search, provider: ProviderInfo, slots: trio.CapacityLimiter) -> None:
        try:
            async with slots:
                if await self._connect(provider):
                    search.connected += 1
        except Exception as exc:
            logger.debug("provider %s of %s: %r", provider.peer_id, search.cid, exc)

    def _finish(self, search: Search) -> None:
        search.finished_at = trio.current_time()
        search.done.set()
        if self.on_done is not None:
            self.on_done(search.cid)
