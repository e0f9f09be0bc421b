"""Node: the libp2p host, bitswap client and server, peering and routing (DHT), over one Datastore.

This is the node layer's API for the app and the CLI::

    node = Node(datastore, settings, load_or_create_identity(data_dir), routing=RoutingSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.connect("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
        async with node.block_source() as source:
            async for chunk in read_file(source, cid):
                ...
        node.provide([cid])                                # announce (queued, persisted, reprovided)
        async for provider in node.find_providers(cid):    # .peer_id, .addrs, as they are found
            ...
        addrs = await node.find_peer("12D3KooW...")
        await node.put_value(b"/pk/...", value); value = await node.get_value(b"/pk/...")

Blocks missing from the store are looked for on the connected peers first, then (see
``providersearch.py``) through the DHT, whose providers are connected and asked too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.node.bitswap.client import BitswapClient
from ipfsreg.node.bitswap.message import Message
from ipfsreg.node.bitswap.network import BitswapNetwork
from ipfsreg.node.bitswap.server import BitswapServer
from ipfsreg.node.blobs.service import BlobService
from ipfsreg.node.blocksource import NetworkBlockSource
from ipfsreg.node.discovery.mdns import MdnsDiscovery
from ipfsreg.node.errors import NodeError, ProtocolViolation
from ipfsreg.node.host import (
    Peering,
    build_host,
    close_listeners,
    connect,
    expand_unspecified,
    host_listen_addrs,
    parse_multiaddr,
    with_peer_id,
)
from ipfsreg.node.identity import Identity
from ipfsreg.node.pnet import fingerprint
from ipfsreg.node.providersearch import ProviderSearch
from ipfsreg.node.routing.addrs import dial_addr_of
from ipfsreg.node.routing.records import Validator
from ipfsreg.node.routing.routing import ContentRouter, ProviderInfo, Routing, RoutingStat
from ipfsreg.node.routing.settings import RoutingSettings
from ipfsreg.node.settings import NodeSettings

logger = logging.getLogger(__name__)
STOP_TIMEOUT = 5.0  # seconds a stopping node waits for its listeners to close


@dataclass(frozen=True)
class PeerInfo:
    peer_id: str
    addrs: list[str]  # remote addresses of the open connections


@dataclass(frozen=True)
class NodeStats:
    connected_peers: int
    blocks_sent: int
    block_bytes_sent: int
    blocks_received: int
    block_bytes_received: int
    duplicate_blocks: int
    fetch_timeouts: int
    not_provided: int
    peers_penalised: int
    messages_in: int
    messages_out: int
    protocol_violations: int


class Node:
    def __init__(
        self,
        datastore: Datastore,
        settings: NodeSettings,
        identity: Identity,
        *,
        psk: bytes | None = None,
        routing: RoutingSettings | None = None,
        validators: Mapping[str, Validator] | None = None,
        content_routers: Sequence[ContentRouter] = (),
    ) -> None:
        """``psk``: the private network key (see ipfsreg/node/pnet_conn.py load_swarm_key), if any.
        ``validators`` check DHT records by namespace (``pk`` is built in; the app adds ``ipns``);
        ``content_routers`` are asked for providers alongside the DHTs (e.g. Routing V1 clients)."""
        self.datastore = datastore
        self.settings = settings
        self.identity = identity
        self.host = build_host(identity, settings.p2p_listen, psk=psk)
        self.swarm_key_fingerprint = fingerprint(psk).hex() if psk is not None else None
        self.network = BitswapNetwork(self.host, settings)
        self.server = BitswapServer(datastore.blocks, self.network, settings)
        self.client = BitswapClient(
            datastore.blocks, self.network, settings, on_blocks_stored=self._fetched_blocks_stored
        )
        self.peering = Peering(self.host, settings.peers, max_backoff=settings.peering_max_backoff)
        # Fleet peers ask each other about OCI blobs by digest (the registry answers: blobs.serve).
        self.blobs = BlobService(self.host)
        self.network.on_message = self._on_message
        self.network.on_violation = self.client.penalise
        self.network.on_peer_connected = self.client.peer_connected
        self.network.refuse = self.client.is_banned
        self.network.on_peer_disconnected = self._on_peer_disconnected
        self.mdns = (
            MdnsDiscovery(self.peer_id, self.listen_addrs, self._connect_discovered)
            if settings.mdns
            else None
        )
        self.routing_settings = routing if routing is not None else RoutingSettings()
        self.routing = Routing(
            self.host,
            datastore,
            self.routing_settings,
            validators=validators,
            content_routers=content_routers,
        )
        self.provider_search = ProviderSearch(
            self.routing.find_providers,
            self._connect_provider,
            on_done=self.client.search_finished,
            delay=self.routing_settings.provider_search_delay,
        )
        self.client.router = self.provider_search
        self._running = False

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id_str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve bitswap and keep peerings until cancelled."""
        listen = [parse_multiaddr(a) for a in self.settings.p2p_listen]
        try:
            async with self.host.run(listen), trio.open_nursery() as nursery:
                await nursery.start(self.network.run)
                await nursery.start(self.server.run)
                await nursery.start(self.peering.run)
                await nursery.start(self.blobs.run)
                await nursery.start(self.routing.run)
                await nursery.start(self.provider_search.run)
                self._running = True
                if self.mdns is not None:
                    await nursery.start(self.mdns.run)
                task_status.started()
        finally:
            self._running = False
            # py-libp2p leaves its listeners open when the host stops: the port stays bound
            # and accepting until the process exits.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + STOP_TIMEOUT):
                await close_listeners(self.host)

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/<id>) this node listens on; the configured ones before it runs."""
        if self._running:
            return host_listen_addrs(self.host)
        return [
            with_peer_id(expanded, self.peer_id)
            for addr in self.settings.p2p_listen
            for expanded in expand_unspecified(addr)
        ]

    async def connect(self, multiaddr: str) -> str:
        """Dial a peer (multiaddr ending in /p2p/<id>); returns its peer ID. NodeError on failure."""
        self._require_running()
        peer = await connect(self.host, multiaddr)
        return peer.to_base58()

    async def _connect_discovered(self, peer_id: str, addrs: list[str]) -> None:
        """Connect to a peer found on the LAN (mDNS), trying its addresses in order."""
        if any(p.peer_id == peer_id for p in self.peers()):
            return
        errors = []
        for addr in addrs:
            try:
                await self.connect(addr)
                logger.info("mdns: connected to %s", addr)
                return
            except NodeError as exc:
                errors.append(str(exc))
        raise NodeError("; ".join(errors) or f"no address for {peer_id}")

    def keep_connected(self, multiaddr: str) -> None:
        """Add a peering: reconnect to ``multiaddr`` with backoff whenever the connection drops."""
        self.peering.add(multiaddr)

    def peers(self) -> list[PeerInfo]:
        result = []
        for peer, conns in self.host.get_network().connections.items():
            if not conns:
                continue
            addrs: list[str] = []
            for conn in conns:
                try:
                    addrs.extend(str(a) for a in conn.get_transport_addresses())
                except Exception:
                    logger.debug("no transport address for a connection to %s", peer)
            result.append(PeerInfo(peer.to_base58(), addrs))
        return result

    def block_source(self, *, window: int | None = None) -> NetworkBlockSource:
        """A BlockSource for the exporter that fetches missing blocks (enter it with ``async with``)."""
        return NetworkBlockSource(self.datastore.blocks, self.client, window=window)

    async def fetch_dag(self, cid: CID) -> int:
        """Make every block reachable from ``cid`` local, fetching missing ones; returns blocks fetched.

        BlockFetchTimeout names the first block no peer provided.
        """
        from ipfsreg.unixfs.exporter import walk_dag

        async with self.block_source() as source:
            async for _cid, _block in walk_dag(source, cid):
                pass
            return source.fetched

    # --- routing -----------------------------------------------------------------------------

    def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[ProviderInfo]:
        """Providers of ``cid`` other than this node, as they are found (local provider store, the LAN
        and public DHTs, content routers, all at once); ends after ``limit`` or when the lookups end
        (``[routing] lookup_timeout`` at the latest)."""
        return self.routing.find_providers(cid, limit)

    def provide(self, cids: Sequence[CID]) -> None:
        """Announce that this node provides ``cids`` (whether or not it holds a block for them).

        Persisted in the provide queue and sent at once; reprovided before the records expire.
        """
        self.routing.provide(cids)

    async def send_announced(self) -> None:
        """Write the ADD_PROVIDER messages :meth:`provide` queued for the nearest peers and return once
        they are on the wire (half a second at most), so that the caller answers whoever committed
        the content after that."""
        await self.routing.send_announced()

    def unprovide(self, cids: Sequence[CID]) -> None:
        """Stop announcing ``cids`` (records already on the network expire within 48 h)."""
        self.routing.unprovide(cids)

    async def find_peer(self, peer_id: str) -> list[str]:
        """Multiaddrs of a peer (what identify said if connected, else from the DHTs); [] if unknown."""
        self._require_running()
        return await self.routing.find_peer(peer_id)

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store a namespaced record (``/pk/...``, ``/ipns/...``) here and on the DHTs' closest peers.

        InvalidRecord if its namespace's validator refuses it; returns how many peers stored it.
        """
        self._require_running()
        return await self.routing.put_value(key, value)

    async def get_value(self, key: bytes) -> bytes:
        """The best valid record for ``key`` (local store and DHTs); RecordNotFound if there is none."""
        self._require_running()
        return await self.routing.get_value(key)

    def routing_stat(self) -> RoutingStat:
        return self.routing.stat()

    async def _connect_provider(self, provider: ProviderInfo) -> bool:
        """Dial a provider a search found (not a banned peer, only TCP addresses); True if connected."""
        peer = ID.from_base58(provider.peer_id)
        if self.client.is_banned(peer):
            return False
        if self.network.is_connected(peer):
            return True
        addrs = []
        for text in provider.addrs:
            try:
                parsed = dial_addr_of(parse_multiaddr(text), peer)
            except NodeError:
                continue
            if parsed is not None:
                addrs.append(parsed)
        try:
            await self.routing.connector.ensure(peer, addrs)
        except NodeError as exc:
            logger.debug("provider %s unreachable: %s", provider.peer_id, exc)
            return False
        return True

    def notify_new_blocks(self, cids: list[CID]) -> None:
        """Tell the bitswap server about blocks added locally (answers peers waiting for them).

        With the ``all`` provide strategy they are announced on the DHT too.
        """
        self.server.notify_new_blocks(cids)
        if self.routing_settings.provide_strategy == "all":
            self.routing.provide(cids)

    def _fetched_blocks_stored(self, cids: list[CID]) -> None:
        self.notify_new_blocks(cids)

    def stats(self) -> NodeStats:
        server, client, net = self.server.stats, self.client.stats, self.network.stats
        return NodeStats(
            connected_peers=len(self.network.connected_peers()),
            blocks_sent=server.blocks_sent,
            block_bytes_sent=server.block_bytes_sent,
            blocks_received=client.blocks_received,
            block_bytes_received=client.block_bytes_received,
            duplicate_blocks=client.duplicate_blocks,
            fetch_timeouts=client.fetch_timeouts,
            not_provided=client.not_provided,
            peers_penalised=client.peers_penalised,
            messages_in=net.messages_in,
            messages_out=net.messages_out,
            protocol_violations=net.violations,
        )

    async def _on_message(self, peer: ID, message: Message) -> None:
        if self.client.is_banned(peer):
            raise ProtocolViolation(f"peer {peer} is banned")
        self.server.receive_wantlist(peer, message)
        if message.blocks or message.presences:
            await self.client.receive(peer, message)

    def _on_peer_disconnected(self, peer: ID) -> None:
        self.server.peer_disconnected(peer)
        self.client.peer_disconnected(peer)

    def _require_running(self) -> None:
        if not self._running:
            raise NodeError("the node is not running")
