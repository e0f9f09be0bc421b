"""Garbage collection: delete the blocks no tag, manifest, blob, upload, pin or lease reaches.

Mark and sweep, safe to run while the server works:

1. Writes are tracked from the start (the datastore's write barrier): a block stored or re-stored
   during the collection is kept, whoever wrote it.
2. Mark walks every root's DAG over local blocks (missing children are skipped: a partial DAG
   keeps what it has), yielding to the event loop between blocks.
3. Then, in one synchronous step (nothing else runs on the trio thread meanwhile), the roots are
   read again and any new ones marked, and the sweep deletes the unmarked blocks that are neither
   written since the start nor leased, together with the registry's index entries of blobs that
   no repository holds and whose root block goes, in one atomic batch.

Blocks held by work in progress (upload sessions, pulls) are reached through the registry's live
roots (unfinished uploads) and the datastore's leases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from ipfsreg.blockstore import Datastore, WriteBatch
from ipfsreg.cid import CID, DAG_PB, RAW
from ipfsreg.pins import Pins
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.errors import InvalidNode

RootSource = Callable[[], Iterable[CID]]
# Called inside the sweep batch with the set of multihashes being deleted.
Forgetter = Callable[[WriteBatch, set[bytes]], int]

if TYPE_CHECKING:
    from ipfsreg.registry.storage import RegistryStore

log = logging.getLogger(__name__)

YIELD_EVERY: Final = 256  # blocks marked between checkpoints


@dataclass
class GcReport:
    roots: int = 0
    marked: int = 0
    removed_blocks: int = 0
    removed_bytes: int = 0
    kept_recent: int = 0  # unmarked but written during the collection or leased
    forgotten_blobs: int = 0
    dry_run: bool = False
    removed: list[str] = field(default_factory=list)  # CIDv1 raw strings of removed blocks (dry runs)


def _children(cid: CID, data: bytes) -> list[CID]:
    if cid.codec != DAG_PB:
        return []
    try:
        return [link.cid for link in dagpb.decode(data).links]
    except InvalidNode:
        return []  # an undecodable node keeps itself but cannot keep children


class _Marker:
    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.marked: set[bytes] = set()

    def _walk(self, root: CID) -> Iterator[None]:
        """Mark everything reachable from ``root``, one block per step."""
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.multihash in self.marked:
                continue
            data = self.store.blocks.get_or_none(cid)
            self.marked.add(cid.multihash)
            if data is not None:
                stack.extend(_children(cid, data))
            yield

    def mark_sync(self, root: CID) -> None:
        for _ in self._walk(root):
            pass

    async def mark(self, root: CID) -> None:
        for steps, _ in enumerate(self._walk(root), 1):
            if steps % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()


async def collect_garbage(
    store: Datastore,
    root_sources: Sequence[RootSource],
    *,
    forget: Forgetter | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Run one collection over ``store``; see the module docstring for the guarantees."""
    report = GcReport(dry_run=dry_run)
    marker = _Marker(store)
    with store.track_writes() as written:
        first_roots = [root for source in root_sources for root in source()]
        for root in first_roots:
            await marker.mark(root)
        # --- from here to the end: synchronous on this thread, and holding the commit lock so no
        # --- worker thread commits either: no new root can appear between re-mark and sweep.
        with store.exclusive():
            _finish(store, root_sources, marker, written, report, forget, dry_run)
    return report


def _finish(
    store: Datastore,
    root_sources: Sequence[RootSource],
    marker: _Marker,
    written: set[bytes],
    report: GcReport,
    forget: Forgetter | None,
    dry_run: bool,
) -> None:
    final_roots = [root for source in root_sources for root in source()]
    for root in final_roots:
        marker.mark_sync(root)
    report.roots = len({r.multihash for r in final_roots})
    report.marked = len(marker.marked)
    keep = marker.marked | written | store.leased()
    doomed: set[bytes] = set()
    for mh in store.blocks.iter_multihashes():
        if mh in keep:
            if mh not in marker.marked:
                report.kept_recent += 1
            continue
        doomed.add(mh)
    for mh in doomed:
        size = store.blocks.size(CID.v1(RAW, mh)) or 0
        report.removed_bytes += size
        if dry_run:
            report.removed.append(str(CID.v1(RAW, mh)))
    report.removed_blocks = len(doomed)
    batch = store.batch(sync=True)
    try:
        for mh in doomed:
            batch.delete_block(CID.v1(RAW, mh))
        if forget is not None:
            report.forgotten_blobs = forget(batch, doomed)
    except BaseException:
        batch.discard()
        raise
    if dry_run:
        batch.discard()
    else:
        batch.commit()


def registry_roots(store: Datastore, registry: RegistryStore) -> tuple[list[RootSource], Forgetter]:
    """The roots of a whole ipfsreg data dir (pins and everything the registry holds), and the
    forgetter that drops index entries of unreferenced blobs whose blocks are swept."""
    pins = Pins(store)

    def forget(batch: WriteBatch, doomed: set[bytes]) -> int:
        forgotten = 0
        for info in registry.unreferenced_blobs():
            if info.cid.multihash in doomed:
                registry.forget_blob(batch, info.digest)
                forgotten += 1
        return forgotten

    return [lambda: iter(pins), registry.live_roots], forget


@dataclass(frozen=True)
class GcSettings:
    interval: float = field(
        default=0.0,
        metadata={"help": "seconds between online garbage collections in the server (0: only on request)"},
    )


class Collector:
    """One data dir's garbage collector: collections run one at a time."""

    def __init__(
        self, store: Datastore, root_sources: Sequence[RootSource], forget: Forgetter | None
    ) -> None:
        self.store = store
        self.root_sources = list(root_sources)
        self.forget = forget
        self._lock = trio.Lock()
        self.last: GcReport | None = None

    async def run(self, *, dry_run: bool = False) -> GcReport:
        async with self._lock:
            report = await collect_garbage(self.store, self.root_sources, forget=self.forget, dry_run=dry_run)
            if not dry_run:
                self.last = report
            return report

    async def run_every(self, interval: float) -> None:
        """Collect every ``interval`` seconds until cancelled."""
        while True:
            await trio.sleep(interval)
            report = await self.run()
            log.info(
                "gc: removed %d blocks (%d bytes), %d unreferenced blobs; %d roots, %d blocks live",
                report.removed_blocks,
                report.removed_bytes,
                report.forgotten_blobs,
                report.roots,
                report.marked,
            )


def collector_for(store: Datastore, registry: RegistryStore) -> Collector:
    sources, forget = registry_roots(store, registry)
    return Collector(store, sources, forget)
