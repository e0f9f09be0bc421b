"""The routing table: k-buckets of DHT servers by common prefix length with our identifier (pure, no I/O).

Bucket ``i`` holds up to ``k`` peers whose identifier shares exactly ``i`` leading bits with ours.
Replacement is by seniority, as the spec asks: a full bucket takes a newcomer only in place of a
peer that has failed to answer since it last did (peers that stay online are never pushed out by
new ones). Each entry keeps the dialable addresses we last learned for it (at most
``MAX_ADDRS``), so the table answers FIND_NODE without consulting anything else, and its size
is bounded by 256 * k entries whatever the network says.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from ipfsreg.node.routing.addrs import DialAddr
from ipfsreg.node.routing.keys import KEY_BITS, common_prefix_len, kad_id
from ipfsreg.node.routing.message import K

MAX_ADDRS: Final = 16
FAILURES_BEFORE_EVICTION: Final = 2


@dataclass(slots=True)
class Entry:
    peer: bytes  # binary peer ID
    kad: int
    addrs: list[DialAddr]
    added: float
    last_useful: float  # last time it answered a query of ours
    failures: int = 0  # failed queries since it last answered


@dataclass
class RoutingTable:
    local: bytes
    k: int = K
    _local_kad: int = field(init=False)
    _buckets: list[dict[bytes, Entry]] = field(init=False)
    _index: dict[bytes, int] = field(init=False)

    def __post_init__(self) -> None:
        self._local_kad = kad_id(self.local)
        self._buckets = [{} for _ in range(KEY_BITS + 1)]
        self._index = {}

    @property
    def local_kad(self) -> int:
        return self._local_kad

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._index

    def entries(self) -> Iterator[Entry]:
        for bucket in self._buckets:
            yield from bucket.values()

    def get(self, peer: bytes) -> Entry | None:
        cpl = self._index.get(peer)
        return None if cpl is None else self._buckets[cpl][peer]

    def bucket_sizes(self) -> dict[int, int]:
        return {cpl: len(bucket) for cpl, bucket in enumerate(self._buckets) if bucket}

    def has_room_for(self, peer: bytes) -> bool:
        """Whether ``add(peer)`` could succeed now (checked before spending a probe on a newcomer)."""
        if peer == self.local:
            return False
        if peer in self._index:
            return True
        bucket = self._buckets[common_prefix_len(kad_id(peer), self._local_kad)]
        return len(bucket) < self.k or any(e.failures for e in bucket.values())

    def add(self, peer: bytes, addrs: Iterable[DialAddr], now: float) -> bool:
        """Add or refresh a peer that just answered us; False if its bucket is full of live peers."""
        if peer == self.local:
            return False
        fresh = list(dict.fromkeys(addrs))[:MAX_ADDRS]
        existing = self.get(peer)
        if existing is not None:
            if fresh:
                existing.addrs = fresh
            existing.last_useful = now
            existing.failures = 0
            return True
        kad = kad_id(peer)
        cpl = common_prefix_len(kad, self._local_kad)
        bucket = self._buckets[cpl]
        if len(bucket) >= self.k:
            failing = [e for e in bucket.values() if e.failures]
            if not failing:
                return False
            victim = max(failing, key=lambda e: (e.failures, -e.last_useful))
            self.remove(victim.peer)
        bucket[peer] = Entry(peer, kad, fresh, now, now)
        self._index[peer] = cpl
        return True

    def remove(self, peer: bytes) -> bool:
        cpl = self._index.pop(peer, None)
        if cpl is None:
            return False
        del self._buckets[cpl][peer]
        return True

    def failed(self, peer: bytes) -> None:
        """A query to ``peer`` failed: after FAILURES_BEFORE_EVICTION in a row it leaves the table."""
        entry = self.get(peer)
        if entry is None:
            return
        entry.failures += 1
        if entry.failures >= FAILURES_BEFORE_EVICTION:
            self.remove(peer)

    def closest(self, target: int, count: int = K, exclude: Iterable[bytes] = ()) -> list[Entry]:
        """The ``count`` entries nearest to identifier ``target``, nearest first."""
        skip = set(exclude)
        candidates = [e for e in self.entries() if e.peer not in skip]
        candidates.sort(key=lambda e: e.kad ^ target)
        return candidates[:count]

    def stale(self, before: float) -> list[Entry]:
        """Entries that have not been useful since ``before`` (to be checked by a refresh)."""
        return [e for e in self.entries() if e.last_useful < before]

    def highest_nonempty_bucket(self) -> int:
        for cpl in range(KEY_BITS, -1, -1):
            if self._buckets[cpl]:
                return cpl
        return -1
