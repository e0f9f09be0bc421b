"""For tests and benchmarks: the registry app served by hypercorn on loopback in the caller's trio loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.registry.app import RegistryApp, create_app, registry_store, serve_registry
from ipfsreg.registry.proxy import EXTENSION as PROXY_EXTENSION
from ipfsreg.registry.proxy import PullThrough
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import RegistryStore


@dataclass
class RunningRegistry:
    """A served registry: its base URL, an HTTP client on it, and its parts for white-box checks."""

    url: str
    client: httpx.AsyncClient
    app: RegistryApp
    store: RegistryStore
    datastore: Datastore
    settings: RegistrySettings

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as in ``docker://HOST/name:tag``."""
        return self.url.removeprefix("http://")

    @property
    def proxy(self) -> PullThrough:
        """The pull-through cache (registries started with ``upstream=``)."""
        proxy: PullThrough = self.app.extensions[PROXY_EXTENSION]
        return proxy


R = TypeVar("R", bound=RunningRegistry)


@asynccontextmanager
async def running_registry(
    data_dir: Path,
    settings: RegistrySettings | None = None,
    *,
    result: Callable[..., R] = RunningRegistry,  # type: ignore[assignment]
    **app_options: Any,
) -> AsyncIterator[R]:
    """Open the datastore in ``data_dir`` and serve the registry on a free loopback port until exit.

    ``settings`` default to a loopback listener with every other setting at its default;
    ``app_options`` go to ``create_app`` (e.g. ``on_blocks_stored``); ``result`` builds what is
    yielded from the ``RunningRegistry`` fields (a subclass with test helpers, say).
    """
    settings = settings if settings is not None else RegistrySettings(listen="127.0.0.1:0")
    datastore = Datastore.open(data_dir)
    try:
        app = create_app(datastore, settings, **app_options)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_registry, app, settings)
            url = binds[0]
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                yield result(url, client, app, registry_store(app), datastore, settings)
            nursery.cancel_scope.cancel()
    finally:
        datastore.close()
