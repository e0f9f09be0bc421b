"""The one place that builds a running ipfsreg: datastore, IPFS node, registry + gateway and control API.

:func:`run_server` owns a single nursery holding every long-running task; SIGINT/SIGTERM cancel it
cleanly (in-flight requests get ``shutdown_grace`` seconds), and the datastore is closed last.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ipfsreg.apifile import ApiSettings
from ipfsreg.auth import auth_app
from ipfsreg.blockstore import BlockNotFound, Datastore
from ipfsreg.cid import CID
from ipfsreg.config import Config, ConfigError
from ipfsreg.control import create_control_app, serve_control
from ipfsreg.gateway.routes import register_gateway
from ipfsreg.gateway.settings import GatewaySettings
from ipfsreg.gc import GcSettings, collector_for
from ipfsreg.ipns.keystore import Keystore
from ipfsreg.ipns.routing import HttpRecordRouting, RecordRouting, Route
from ipfsreg.ipns.service import IpnsService
from ipfsreg.ipns.settings import IpnsSettings
from ipfsreg.ipns.validator import IpnsValidator
from ipfsreg.metrics import Metrics, ObservedApp
from ipfsreg.mirror.node import NodeFleetPeers
from ipfsreg.mirror.rules import check_settings
from ipfsreg.mirror.settings import MirrorSettings
from ipfsreg.node.errors import BlockFetchTimeout, InvalidRecord, RecordNotFound
from ipfsreg.node.identity import load_or_create_identity
from ipfsreg.node.node import Node
from ipfsreg.node.pnet_conn import load_swarm_key
from ipfsreg.node.routing.http_client import HttpRouters
from ipfsreg.node.routing.local import LocalRouter, NodeRouter, NoRecord, RoutingUnavailable
from ipfsreg.node.routing.records import Validator
from ipfsreg.node.routing.settings import RoutingSettings
from ipfsreg.node.settings import NodeSettings
from ipfsreg.registry.app import (
    create_app,
    hypercorn_config,
    mirror_parts,
    registry_store,
    serve_registry,
    set_ipns_resolver,
)
from ipfsreg.registry.names import reference_host
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.routing_v1.server import RoutingServerSettings, register_routing_v1
from ipfsreg.unixfs.exporter import LocalBlockSource

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
    """Run the IPFS node, the registry (with the gateway) and the control API until cancelled or signalled."""
    registry_settings: RegistrySettings = config.section("registry")
    api_settings: ApiSettings = config.section("api")
    gateway_settings: GatewaySettings = config.section("gateway")
    node_settings: NodeSettings = config.section("node")
    routing_settings: RoutingSettings = config.section("routing")
    gc_settings: GcSettings = config.section("gc")
    mirror_settings: MirrorSettings = config.section("mirror")
    for problem in check_settings(mirror_settings):
        log.warning("%s", problem)
    ipns_settings: IpnsSettings = config.section("ipns")
    try:
        hypercorn_config(registry_settings)  # fail before anything starts on an unusable TLS setup
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = Datastore.open(config.data_dir, verify_reads=config.storage.verify_reads)
    try:
        identity = load_or_create_identity(config.data_dir)
        psk = load_swarm_key(config.data_dir, node_settings.swarm_key)
        ipns_validator = IpnsValidator()  # IPNS records: the DHT, the Routing V1 API and HTTP routers
        node = Node(
            store,
            node_settings,
            identity,
            psk=psk,
            routing=routing_settings,
            validators=record_validators(ipns_validator),
        )
        if psk is not None:
            log.info(
                "private network: only peers with the swarm key (fingerprint %s)", node.swarm_key_fingerprint
            )
        import_options = config.importer.options()
        shutdown = trio.Event()

        async def shutdown_trigger() -> None:
            await shutdown.wait()

        info = ServerInfo(peer_id=node.peer_id)
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
            await nursery.start(node.run)
            info.p2p_addrs = node.listen_addrs()
            # One bitswap session shared by the registry and the control API; the gateway opens one
            # per request.
            async with (
                node.block_source() as source,
                HttpRouters(
                    routing_settings.http_routers,
                    timeout=routing_settings.http_timeout,
                    validator=ipns_validator,
                ) as http_routers,
                trio.open_nursery() as servers,
            ):
                if routing_settings.http_routers:
                    node.routing.add_content_router(http_routers)  # asked beside the DHTs
                # In a private swarm (a swarm key) every peer may get private namespaces' content.
                share_private = psk is not None
                registry = create_app(
                    store,
                    registry_settings,
                    block_source=source,
                    import_options=import_options,
                    source_factory=node.block_source,
                    on_blocks_stored=node.notify_new_blocks,  # peers waiting for pushed blocks get them
                    on_committed=node.provide,  # blob roots, manifests, image directories: on the DHT
                    send_committed=node.send_announced,  # on the wire before the 201
                    mirror=mirror_settings,
                    fleet_peers=NodeFleetPeers(node),
                    share_private=share_private,
                )
                mirror = mirror_parts(registry)
                if mirror.fleet is not None:
                    node.blobs.serve(mirror.fleet.answer)
                if mirror.privacy is not None and not share_private:
                    privacy = mirror.privacy
                    node.server.withhold = privacy.is_private_block

                    def notify_public(cids: list[CID]) -> None:
                        # Private blocks are neither served nor (provide strategy "all") provided.
                        node.notify_new_blocks([cid for cid in cids if not privacy.is_private_block(cid)])

                    registry_store(registry).on_blocks_stored = notify_public
                ipns = IpnsService(
                    store,
                    registry_store(registry),
                    Keystore(config.data_dir),
                    ipns_settings,
                    routing=ipns_routing(node, http_routers, ipns_validator),
                    source_factory=node.block_source,
                    on_blocks_stored=node.notify_new_blocks,
                    on_committed=node.provide,  # the tag directory of every published record
                )
                registry_store(registry).on_tags_changed = ipns.notify_tags_changed
                set_ipns_resolver(registry, ipns)
                register_gateway(
                    registry,
                    node.block_source,
                    settings=gateway_settings,
                    not_found=(BlockNotFound, BlockFetchTimeout),
                    ipns=ipns,
                    local_source_factory=lambda: LocalBlockSource(store.blocks),
                )
                if routing_settings.http_api:
                    register_routing_v1(
                        registry,
                        NodeRouter(node, LocalRouter(node, http_routers)),
                        validator=ipns_validator,
                        not_found=(NoRecord, RecordNotFound),
                        unavailable=(RoutingUnavailable,),
                        refused=(InvalidRecord,),  # the node's store holds a better record
                        settings=RoutingServerSettings(lookup_timeout=routing_settings.http_timeout),
                    )
                await nursery.start(ipns.run)
                collector = collector_for(store, registry_store(registry))
                collector.root_sources.append(ipns.store.live_roots)
                if gc_settings.interval > 0:
                    nursery.start_soon(collector.run_every, gc_settings.interval)
                control = create_control_app(
                    store,
                    source,
                    node=node,
                    collector=collector,
                    registry=registry_store(registry),
                    source_factory=node.block_source,
                    spool_dir=config.data_dir,
                    mirror_stats=mirror.stats,
                    registry_host=lambda: reference_host(next(iter(info.registry_urls), None)),
                    ipns=ipns,
                    routing=node.routing,
                    on_committed=node.provide,
                )
                # Outermost: metrics and the access log see every request, 401s included, and
                # /metrics and /healthz stay outside authentication.
                guarded = auth_app(registry, registry_settings)
                observed = ObservedApp(guarded, Metrics(store, node, mirror.stats), lambda: _health(store))
                info.registry_urls = await servers.start(
                    _serve_registry, observed, registry_settings, shutdown_trigger
                )
                info.api_url = await servers.start(
                    _serve_control, control, api_settings, config, shutdown_trigger
                )
                if on_started is not None:
                    on_started(info)
                freeze_startup_heap()
                task_status.started(info)
            nursery.cancel_scope.cancel()  # the servers have stopped: stop the node and signal watcher
    finally:
        store.close()


def ipns_routing(node: Node, http_routers: HttpRouters, validator: IpnsValidator) -> RecordRouting:
    """Where IPNS records go and come from: the node's DHT, and the HTTP routers when configured."""
    routes = [Route("DHT", node)]
    if http_routers.routers:
        routes.append(Route("HTTP routers", HttpRecordRouting(http_routers)))
    return RecordRouting(routes, validator)


def freeze_startup_heap() -> None:
    """Keep what start-up built (libraries, the node, the apps: about a million objects) out of the
    cyclic garbage collector's full collections.

    A full collection walks every tracked object; with the start-up heap in it, one took 200-600 ms
    on the event loop's thread under load, stalling every request that long. ``gc.freeze`` moves
    the objects alive now to a permanent generation the collector skips (they are not freed).
    """
    gc.collect()
    gc.freeze()


def record_validators(ipns: Validator) -> dict[str, Validator]:
    """Validators of DHT records by namespace, beyond ``pk`` (built into the node)."""
    return {"ipns": ipns}


def _health(store: Datastore) -> str | None:
    # The node, registry and API share one nursery: if any of them fails, the process stops, so a
    # server that can answer is healthy when its datastore is open.
    return "datastore closed" if store.closed else None


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
