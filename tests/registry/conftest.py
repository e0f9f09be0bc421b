"""Fixtures for registry tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from registry_helpers import Server, running_registry


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_registry(tmp_path / "data") as server:
        yield server
