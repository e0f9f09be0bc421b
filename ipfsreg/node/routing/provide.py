"""The provide queue and the reprovider, persisted in LevelDB so that announcements survive restarts.

Keyspaces (keyed by multihash: a CIDv0 and a CIDv1 of the same bytes are one DHT key)::

    dht.provq      multihash -> CID bytes                                   (waiting to be announced)
    dht.provided   multihash -> u64 last announced (unix ms) + flags + CID bytes   (to reprovide)

:meth:`ProvideQueue.enqueue` writes the CIDs to ``dht.provq`` in one batch and wakes the worker,
which announces them at once, up to ``CONCURRENT_PROVIDES`` at a time; a key announced to at
least one peer moves to ``dht.provided``, one that reached nobody (no DHT peers yet) stays queued
and is retried with backoff. The reprovider announces every ``dht.provided`` key again before its
records expire (``reprovide_interval``, 22 h by default; records live 48 h), in batches of
``REPROVIDE_BATCH`` keys. A key whose block has left the blockstore (garbage collected) is
dropped then, unless it was provided without a block — a CID that names something else than a
block, such as one derived from an OCI digest — which is kept until :meth:`unprovide`.

With the ``all`` strategy the reprovider also announces every block in the blockstore.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID, CIDError

logger = logging.getLogger(__name__)

CONCURRENT_PROVIDES: Final = 16
REPROVIDE_BATCH: Final = 256
RETRY_FIRST: Final = 5.0
RETRY_MAX: Final = 600.0
REPROVIDE_CHECK: Final = 600.0  # how often the reprovider looks for keys due
_HEADER: Final = struct.Struct(">QB")
_BLOCKLESS: Final = 1

ProvideKey = Callable[[CID], Awaitable[int]]  # announce one key; returns how many peers took it
# Without one (``None``), a queue only records what to announce: the CLI working on a data dir that
# no server holds queues there what the next ``ipfsreg serve`` announces.


@dataclass(frozen=True)
class QueueStat:
    queued: int
    provided: int
    last_reprovide: float | None  # unix time the last reprovide pass finished
    reprovide_running: bool


def _encode_provided(when: float, blockless: bool, cid: CID) -> bytes:
    return _HEADER.pack(int(when * 1000), _BLOCKLESS if blockless else 0) + cid.to_bytes()


def _decode_provided(raw: bytes) -> tuple[float, bool, CID] | None:
    try:
        millis, flags = _HEADER.unpack_from(raw)
        return millis / 1000.0, bool(flags & _BLOCKLESS), CID.decode(raw[_HEADER.size :])
    except (struct.error, CIDError):
        return None


class ProvideQueue:
    def __init__(
        self,
        datastore: Datastore,
        provide_key: ProvideKey | None,
        *,
        strategy: str = "roots",
        reprovide_interval: float = 22 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.datastore = datastore
        self.provide_key = provide_key
        self.strategy = strategy
        self.reprovide_interval = reprovide_interval
        self.clock = clock
        self.queue = datastore.keyspace("dht.provq")
        self.provided = datastore.keyspace("dht.provided")
        self.last_reprovide: float | None = None
        self.announced = 0  # keys announced to at least one peer since start
        self._wake = trio.Event()
        self._dirty = False  # enqueued since the announcer last read the queue
        self._fresh: list[bytes] = []  # queued since the announcer last looked: they go first
        self._in_flight: set[bytes] = set()
        self._reached_nobody = False  # an announcement reached no peer: back off
        self._reproviding = False
        self._queued = sum(1 for _ in self.queue.keys(b""))
        self._provided = sum(1 for _ in self.provided.keys(b""))
        self._limiter = trio.Semaphore(CONCURRENT_PROVIDES)  # released by the task it was taken for

    # --- API -----------------------------------------------------------------------------------

    def enqueue(self, cids: Iterable[CID]) -> int:
        """Queue ``cids`` for announcement now (persisted first); returns how many were new to the queue."""
        if self.strategy == "none":
            return 0
        added = 0
        with self.datastore.batch() as batch:
            seen: set[bytes] = set()
            for cid in cids:
                key = cid.multihash
                if key in seen:
                    continue
                seen.add(key)
                if self.queue.get(key) is None:
                    added += 1
                    self._fresh.append(key)
                batch.put(self.queue, key, cid.to_bytes())
        self._queued += added
        if added:
            self._dirty = True
            self._wake.set()
        return added

    def mark_provided(self, cid: CID) -> None:
        """``cid`` was just announced by someone else than the worker (``ipfsreg routing provide``)."""
        if self.strategy == "none":
            return
        key = cid.multihash
        with self.datastore.batch() as batch:
            if self.queue.get(key) is not None:
                self._queued -= 1
                batch.delete(self.queue, key)
            if self.provided.get(key) is None:
                self._provided += 1
            blockless = not self.datastore.blocks.has(cid)
            batch.put(self.provided, key, _encode_provided(self.clock(), blockless, cid))

    def unprovide(self, cids: Iterable[CID]) -> None:
        """Stop announcing ``cids`` (records already out expire within 48 h)."""
        with self.datastore.batch() as batch:
            for cid in cids:
                if self.queue.get(cid.multihash) is not None:
                    self._queued -= 1
                    batch.delete(self.queue, cid.multihash)
                if self.provided.get(cid.multihash) is not None:
                    self._provided -= 1
                    batch.delete(self.provided, cid.multihash)

    def is_provided(self, cid: CID) -> bool:
        return self.provided.get(cid.multihash) is not None or self.queue.get(cid.multihash) is not None

    def stat(self) -> QueueStat:
        return QueueStat(self._queued, self._provided, self.last_reprovide, self._reproviding)

    # --- workers -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce what is queued and reprovide, until cancelled (needs ``provide_key``)."""
        if self.provide_key is None:
            raise RuntimeError("a ProvideQueue without provide_key can only queue (offline use)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self._reprovide_loop)
            task_status.started()

    async def _announce_loop(self) -> None:
        """Start an announcement for every queued key, at most CONCURRENT_PROVIDES at once.

        Each runs on its own (a key queued while others are in flight goes out at once, not after
        them). A key that reached nobody stays queued; the loop then stops starting the others and
        waits, with backoff, for peers, waking early for newly queued keys.
        """
        backoff = RETRY_FIRST
        async with trio.open_nursery() as nursery:
            while True:
                self._dirty = False
                if self._reached_nobody:
                    self._reached_nobody = False
                    await self._wait_for_more(backoff)
                    backoff = min(backoff * 2, RETRY_MAX)
                    self._dirty = False
                fresh, self._fresh = self._fresh, []
                fresh_set = set(fresh)
                backlog = [k for k in self.queue.keys(b"") if k not in fresh_set]
                for key in [*fresh, *backlog]:
                    if self._reached_nobody:
                        break  # no DHT peers, it seems: wait before trying the rest
                    if key in self._in_flight:
                        continue
                    await self._limiter.acquire()
                    raw = self.queue.get(key)
                    cid = _parse_cid(raw) if raw is not None else None
                    if cid is None:
                        self._limiter.release()
                        if raw is not None:  # not a CID: this code never queues such a value
                            self.queue.delete(key)
                            self._queued -= 1
                        continue
                    self._in_flight.add(key)
                    nursery.start_soon(self._announce_one, key, cid)
                if not self._reached_nobody:
                    backoff = RETRY_FIRST
                await self._wait_for_more(None)

    async def _announce_one(self, key: bytes, cid: CID) -> None:
        provide_key = self.provide_key
        assert provide_key is not None
        try:
            try:
                peers = await provide_key(cid)
            except Exception:
                logger.exception("providing %s failed", cid)
                peers = 0
            if peers == 0:
                self._reached_nobody = True
                self._dirty = True
                self._wake.set()
                return
            with self.datastore.batch() as batch:
                if self.queue.get(key) is not None:
                    batch.delete(self.queue, key)
                    self._queued -= 1
                if self.provided.get(key) is None:
                    self._provided += 1
                blockless = not self.datastore.blocks.has(cid)
                batch.put(self.provided, key, _encode_provided(self.clock(), blockless, cid))
            self.announced += 1
        finally:
            self._in_flight.discard(key)
            self._limiter.release()

    async def _wait_for_more(self, patience: float | None) -> None:
        """Sleep until more is queued, or ``patience`` seconds (None: no limit)."""
        if self._dirty:
            return
        self._wake = trio.Event()
        with trio.move_on_after(float("inf") if patience is None else patience):
            await self._wake.wait()

    async def _announce(self, cids: list[CID]) -> dict[bytes, int]:
        """Announce ``cids`` concurrently; multihash -> peers that took it."""
        results: dict[bytes, int] = {}
        provide_key = self.provide_key
        assert provide_key is not None

        async def one(cid: CID) -> None:
            async with self._limiter:
                try:
                    results[cid.multihash] = await provide_key(cid)
                except Exception:
                    logger.exception("providing %s failed", cid)
                    results[cid.multihash] = 0

        async with trio.open_nursery() as nursery:
            for cid in cids:
                nursery.start_soon(one, cid)
        return results

    async def _reprovide_loop(self) -> None:
        while True:
            try:
                await self.reprovide()
            except Exception:
                logger.exception("reprovide pass failed")
            await trio.sleep(min(REPROVIDE_CHECK, self.reprovide_interval / 4))

    async def reprovide(self, *, force: bool = False) -> int:
        """Announce again every key due (all of them with ``force``); returns how many were announced."""
        if self.strategy == "none":
            return 0
        self._reproviding = True
        try:
            due_before = self.clock() - self.reprovide_interval
            due: list[CID] = []
            gone: list[bytes] = []
            for key, raw in self.provided.items():
                decoded = _decode_provided(raw)
                if decoded is None:
                    gone.append(key)
                    continue
                when, blockless, cid = decoded
                if not blockless and not self.datastore.blocks.has(cid):
                    gone.append(key)  # its block was removed: nothing to serve any more
                elif force or when <= due_before:
                    due.append(cid)
            if gone:
                with self.datastore.batch() as batch:
                    for key in gone:
                        batch.delete(self.provided, key)
                self._provided = max(0, self._provided - len(gone))
            if self.strategy == "all":
                listed = {cid.multihash for cid in due}
                for cid in self.datastore.blocks.iter_cids():
                    if cid.multihash not in listed and (force or self._due(cid, due_before)):
                        due.append(cid)
            announced = 0
            for start in range(0, len(due), REPROVIDE_BATCH):
                batch_cids = due[start : start + REPROVIDE_BATCH]
                results = await self._announce(batch_cids)
                with self.datastore.batch() as batch:
                    for cid in batch_cids:
                        if results.get(cid.multihash, 0) > 0:
                            announced += 1
                            if self.provided.get(cid.multihash) is None:
                                self._provided += 1
                            blockless = not self.datastore.blocks.has(cid)
                            batch.put(
                                self.provided, cid.multihash, _encode_provided(self.clock(), blockless, cid)
                            )
            if due:
                self.last_reprovide = self.clock()
                logger.info("reprovided %d of %d keys", announced, len(due))
            return announced
        finally:
            self._reproviding = False

    def _due(self, cid: CID, due_before: float) -> bool:
        raw = self.provided.get(cid.multihash)
        decoded = _decode_provided(raw) if raw is not None else None
        return decoded is None or decoded[0] <= due_before


def _parse_cid(raw: bytes) -> CID | None:
    try:
        return CID.decode(raw)
    except CIDError:
        return None
