"""Fixtures for interop tests against a real Kubo peer (see interop/kubo.py), and the `interop` marker.

Every test collected under interop/ is marked `interop` (`make check` deselects them). Fixtures:
- `kubo`: one Kubo node per test module (started on first use, closed after the module);
- `kubo_factory`: call it to start fresh Kubo nodes for one test (``kubo_factory(routing="dht")``
  for a loopback-only DHT); all are closed when the test ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from interop.kubo import KuboPeer

INTEROP_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEROP_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboPeer]:
    """A running Kubo peer shared by the tests of one module."""
    with KuboPeer.start(tmp_path_factory.mktemp("kubo")) as peer:
        yield peer


@pytest.fixture
def kubo_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., KuboPeer]]:
    """Starts fresh Kubo peers on demand (keyword arguments go to KuboPeer.start, e.g. ``swarm_key``);
    every one is closed at the end of the test."""
    peers: list[KuboPeer] = []

    def start(**options: Any) -> KuboPeer:
        peer = KuboPeer.start(tmp_path_factory.mktemp("kubo"), **options)
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            peer.close()
