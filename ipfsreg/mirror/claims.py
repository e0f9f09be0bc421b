"""The fleet's rule for who fetches a blob from the upstream when several nodes miss it at once. Pure.

Every node that misses blob ``D`` claims it and learns the other claimants (they ask each other, see
``ipfsreg.node.blobs.protocol``). The claimant whose key is nearest ``D``'s key in XOR distance
fetches from the upstream; the others follow it (and each other). Keys are sha256 of the peer ID
string and of the digest string, the metric Kademlia uses, so each layer of an image gets its own
fetcher and a fleet's upstream downloads spread over its nodes.

A node follows only a claimant nearer than itself, so the "follows" relation strictly decreases
distance: it has no cycles, and every chain of followers ends at a node that fetches upstream,
even when the nodes' views of the claimant set differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


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
