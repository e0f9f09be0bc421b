"""Fixtures for gateway tests: the fixture tree and the gateway on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import Fixture, build_fixture, gateway_app, serve_app


@pytest.fixture
def tree() -> Fixture:
    return build_fixture()


@pytest.fixture
async def client(tree: Fixture) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(gateway_app(tree.source)) as http:
        yield http
