"""Counters that answer "is the mirror actually using peers?": blob bytes by source, hits and misses
by namespace. Read by ``/metrics`` (``ipfsreg_mirror_*``) and ``ipfsreg mirror stat``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

SOURCES: Final = ("local", "peer", "upstream")
# Namespaces come from clients (any registry host under the default rule): past this many, the
# rest are counted as "other" so the metric's label set stays bounded.
MAX_NAMESPACES: Final = 64
OTHER: Final = "other"
NO_NAMESPACE: Final = "-"


@dataclass
class MirrorStats:
    bytes: Counter[str] = field(default_factory=Counter)  # source -> blob bytes delivered to clients
    blobs: Counter[str] = field(default_factory=Counter)  # source -> blobs fetched (local: served)
    hits: Counter[str] = field(default_factory=Counter)  # namespace -> blob requests served locally
    misses: Counter[str] = field(default_factory=Counter)  # namespace -> blob requests fetched
    stale_tags: int = 0  # tags answered from the last known digest (upstream unreachable)
    peer_failures: int = 0  # peers dropped during a blob fetch (stalled, lying, gone)
    coordinated: int = 0  # fetches that followed another node's upstream fetch

    def label(self, namespace: str) -> str:
        name = namespace or NO_NAMESPACE
        if name in self.hits or name in self.misses:
            return name
        if len(set(self.hits) | set(self.misses)) >= MAX_NAMESPACES:
            return OTHER
        return name

    def add_bytes(self, source: str, count: int) -> None:
        self.bytes[source] += count

    def hit(self, namespace: str) -> None:
        self.hits[self.label(namespace)] += 1

    def miss(self, namespace: str) -> None:
        self.misses[self.label(namespace)] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "bytes": {source: self.bytes[source] for source in SOURCES},
            "blobs": {source: self.blobs[source] for source in SOURCES},
            "namespaces": {
                name: {"hits": self.hits[name], "misses": self.misses[name]}
                for name in sorted(set(self.hits) | set(self.misses))
            },
            "stale_tags": self.stale_tags,
            "peer_failures": self.peer_failures,
            "coordinated": self.coordinated,
        }
