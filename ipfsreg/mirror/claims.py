"""The fleet's rule for who fetches a blob from the upstream when several nodes miss it at once. Pure.

Every node that misses blob ``D`` claims it and learns the other claimants (they ask each other, see
``ipfsreg.node.blobs.protocol``). The claimant whose key is nearest ``D``'s key in XOR distance
fetches from the upstream; the others follow it (and each other). Keys are sha256 of the peer ID
string and of the digest string, the metric Kademlia uses, so each layer of an image gets its own
fetcher and a fleet's upstream downloads spread over its nodes.

A node follows only a claimant nearer than itself, so the "follows" relation strictly decreases
distance: it has no cycles, and every chain of followers ends at a node that fetches upstream,
even when the nodes' views of the claimant set differ.

Nodes reading one blob from the same source at the same moment (the followers of a fetcher, or a
rolling wave reading from the node that has it) share its leaves out: :func:`share_of` gives each
leaf one reader, which takes it from the source; the other readers take it from that reader. The
source's uplink then carries each leaf about once instead of once per reader, and every reader's
uplink carries its share to the others (BitTorrent's and Dragonfly's piece spreading, decided
without messages: every reader computes the same owner from the same reader set).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

from ipfsreg.cid import CID


@functools.lru_cache(maxsize=4096)
def key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def distance(peer_id: str, digest: str) -> int:
    return key(peer_id) ^ key(digest)


def fetcher_for(digest: str, claimants: Iterable[str]) -> str:
    """The claimant that fetches ``digest`` from the upstream (ties, impossible in practice, by ID)."""
    candidates = set(claimants)
    if not candidates:
        raise ValueError("no claimants")
    return min(candidates, key=lambda peer: (distance(peer, digest), peer))


def share_of(digest: str, leaf: CID, readers: Iterable[str]) -> str:
    """The reader of blob ``digest`` that takes ``leaf`` from the source (the others take it from it).

    Readers are ordered by distance to the digest (so each blob spreads differently) and a leaf goes
    to the reader its multihash falls on: the same answer on every node with the same reader set.
    """
    ordered = sorted(set(readers), key=lambda peer: (distance(peer, digest), peer))
    if not ordered:
        raise ValueError("no readers")
    spot = int.from_bytes(hashlib.sha256(leaf.multihash).digest()[:8], "big")
    return ordered[spot % len(ordered)]
