"""Node: the libp2p host, bitswap client and server, and peering, over one Datastore.

This is the node layer's API for the app and the CLI::

    node = Node(datastore, settings, load_or_create_identity(data_dir))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.connect("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
        async with node.block_source() as source:
            async for chunk in read_file(source, cid):
                ...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.node.bitswap.client import BitswapClient
from ipfsreg.node.bitswap.message import Message
from ipfsreg.node.bitswap.network import BitswapNetwork
from ipfsreg.node.bitswap.server import BitswapServer
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
    peers_penalised: int
    messages_in: int
    messages_out: int
    protocol_violations: int


class Node:
    def __init__(
        self, datastore: Datastore, settings: NodeSettings, identity: Identity, *, psk: bytes | None = None
    ) -> None:
        """``psk``: the private network key (see ipfsreg/node/pnet_conn.py load_swarm_key), if any."""
        self.datastore = datastore
        self.settings = settings
        self.identity = identity
        self.host = build_host(identity, settings.p2p_listen, psk=psk)
        self.swarm_key_fingerprint = fingerprint(psk).hex() if psk is not None else None
        self.network = BitswapNetwork(self.host, settings)
        self.server = BitswapServer(datastore.blocks, self.network, settings)
        self.client = BitswapClient(
            datastore.blocks, self.network, settings, on_blocks_stored=self.server.notify_new_blocks
        )
        self.peering = Peering(self.host, settings.peers, max_backoff=settings.peering_max_backoff)
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

    def notify_new_blocks(self, cids: list[CID]) -> None:
        """Tell the bitswap server about blocks added locally (answers peers waiting for them)."""
        self.server.notify_new_blocks(cids)

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
