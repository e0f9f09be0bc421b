"""Fixtures for the node tests: in-process ipfsreg nodes on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ipfsreg.node.testing import Nodes, running_nodes


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path) as started:
        yield started
