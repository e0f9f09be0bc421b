"""How simultaneous readers of one blob share its leaves out (ipfsreg/mirror/claims.py); who fetches
a blob from the upstream is tested in test_rules.py."""

from __future__ import annotations

from collections import Counter

import pytest

from ipfsreg.cid import CID, RAW
from ipfsreg.mirror.claims import share_of

DIGEST = "sha256:" + "5e" * 32
READERS = [f"12D3KooWpeer{i}" for i in range(7)]
LEAVES = [CID.hash(i.to_bytes(4, "big"), codec=RAW, version=1) for i in range(2000)]


def test_every_reader_computes_the_same_owner_whatever_order_it_knows_the_readers_in() -> None:
    for leaf in LEAVES[:50]:
        owners = {share_of(DIGEST, leaf, order) for order in (READERS, READERS[::-1], sorted(READERS))}
        assert len(owners) == 1 and owners <= set(READERS)


def test_leaves_are_spread_about_evenly_over_the_readers() -> None:
    counts = Counter(share_of(DIGEST, leaf, READERS) for leaf in LEAVES)
    assert set(counts) == set(READERS)
    expected = len(LEAVES) / len(READERS)
    assert all(0.8 * expected <= count <= 1.2 * expected for count in counts.values()), counts


def test_each_blob_spreads_its_leaves_differently() -> None:
    other = "sha256:" + "a7" * 32
    moved = sum(share_of(DIGEST, leaf, READERS) != share_of(other, leaf, READERS) for leaf in LEAVES[:200])
    assert moved > 100


def test_a_lone_reader_owns_every_leaf_and_no_reader_is_an_error() -> None:
    assert {share_of(DIGEST, leaf, ["solo"]) for leaf in LEAVES[:20]} == {"solo"}
    with pytest.raises(ValueError, match="no readers"):
        share_of(DIGEST, LEAVES[0], [])
