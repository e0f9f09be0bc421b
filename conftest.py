"""Fixtures shared by the test packages: a whole `ipfsreg serve` (node, registry, gateway, control API)
running in-process on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ipfsreg.app import ServerInfo, run_server
from ipfsreg.config import Config, load_config

LOOPBACK_OVERRIDES = {
    "registry.listen": "127.0.0.1:0",
    "api.listen": "127.0.0.1:0",
    "node.p2p_listen": ["/ip4/127.0.0.1/tcp/0"],
}


def loopback_config(data: Path, **overrides: Any) -> Config:
    """A config whose every listener is on 127.0.0.1 with a free port."""
    return load_config(data_dir=data, environ={}, overrides={**LOOPBACK_OVERRIDES, **overrides})


@asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[ServerInfo]:
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(
            lambda task_status: run_server(config, task_status=task_status, handle_signals=False)
        )
        yield info
        nursery.cancel_scope.cancel()


ServerFactory = Callable[..., AbstractAsyncContextManager[ServerInfo]]


@pytest.fixture
def serve_node(tmp_path: Path) -> ServerFactory:
    """``async with serve_node("name", **overrides) as info`` runs a server on data dir tmp_path/name."""

    def factory(name: str = "served", **overrides: Any) -> AbstractAsyncContextManager[ServerInfo]:
        return running_server(loopback_config(tmp_path / name, **overrides))

    return factory
