"""The one place that builds a running ipfsreg: datastore, registry and control API on one trio loop.

:func:`run_server` owns a single nursery holding every long-running task; SIGINT/SIGTERM cancel it
cleanly (in-flight requests get ``shutdown_grace`` seconds), and the datastore is closed last.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.config import Config
from ipfsreg.control import ApiSettings, create_control_app, serve_control
from ipfsreg.registry.app import create_app, serve_registry
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.unixfs.exporter import BlockSource, LocalBlockSource
from ipfsreg.unixfs.importer import ImportOptions

log = logging.getLogger("ipfsreg")

SHUTDOWN_GRACE: Final = 10.0


@dataclass
class ServerInfo:
    """What a started server reports: its addresses, for the banner, tests and the api file."""

    registry_urls: list[str] = field(default_factory=list)
    api_url: str = ""
    peer_id: str | None = None
    p2p_addrs: list[str] = field(default_factory=list)


def banner(info: ServerInfo) -> str:
    lines = ["ipfsreg is running"]
    for url in info.registry_urls:
        lines.append(f"  registry:  {url}/v2/")
    lines.append(f"  control:   {info.api_url}")
    if info.peer_id:
        lines.append(f"  peer id:   {info.peer_id}")
        for addr in info.p2p_addrs:
            lines.append(f"  p2p:       {addr}")
    return "\n".join(lines)


async def run_server(
    config: Config,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    on_started: Callable[[ServerInfo], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the registry and the control API until cancelled or signalled."""
    registry_settings: RegistrySettings = config.section("registry")
    api_settings: ApiSettings = config.section("api")
    store = Datastore.open(config.data_dir, verify_reads=config.storage.verify_reads)
    try:
        source: BlockSource = LocalBlockSource(store.blocks)
        import_options = ImportOptions(
            chunk_size=config.importer.chunk_size, cid_version=config.importer.cid_version
        )
        registry = create_app(store, registry_settings, block_source=source, import_options=import_options)
        control = create_control_app(store, source, spool_dir=config.data_dir)
        shutdown = trio.Event()

        async def shutdown_trigger() -> None:
            await shutdown.wait()

        info = ServerInfo()
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
            async with trio.open_nursery() as servers:
                info.registry_urls = await servers.start(
                    _serve_registry, registry, registry_settings, shutdown_trigger
                )
                info.api_url = await servers.start(
                    _serve_control, control, api_settings, config, shutdown_trigger
                )
                if on_started is not None:
                    on_started(info)
                task_status.started(info)
            nursery.cancel_scope.cancel()  # every server has stopped: end the signal watcher too
    finally:
        store.close()


async def _serve_registry(
    app: Any, settings: RegistrySettings, trigger: Callable[[], Any], *, task_status: Any
) -> None:
    await serve_registry(app, settings, task_status=task_status, shutdown_trigger=trigger)


async def _serve_control(
    app: Any, settings: ApiSettings, config: Config, trigger: Callable[[], Any], *, task_status: Any
) -> None:
    await serve_control(app, settings, config.data_dir, task_status=task_status, shutdown_trigger=trigger)


async def _watch_signals(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: stop accepting and let requests finish; a second one, or the grace
    period running out, cancels everything."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            print("ipfsreg: shutting down", file=sys.stderr)
            shutdown.set()
            break
        with trio.move_on_after(SHUTDOWN_GRACE):
            async for _ in signals:
                break
        scope.cancel()
