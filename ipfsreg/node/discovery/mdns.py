"""LAN peer discovery over multicast DNS, compatible with go-libp2p's (``--mdns``, off by default).

One UDP socket on port 5353 (shared with other responders: SO_REUSEADDR/SO_REUSEPORT) joins
224.0.0.251 on every up, multicast-capable IPv4 interface that is not loopback. The service
announces this node at start, answers every browse for ``_p2p._udp.local.`` (one message with
PTR, SRV, TXT ``dnsaddr=...`` and A records, as go-libp2p's zeroconf does), browses itself at
growing intervals (1 s doubling to 60 s), and says goodbye (TTL 0) when it stops. Each peer found
is handed to ``on_peer`` with its addresses, at most once per ``retry_after`` seconds, a few at a
time; the wire format is ipfsreg/node/discovery/mdns_message.py.

py-libp2p 0.8 has ``libp2p.discovery.mdns`` (zeroconf, in threads): its announcement puts the
first address under ``dnsaddr=`` and the others under ``dnsaddr2=``, ``dnsaddr3=``... (TXT keys
of a dict must differ), which go-libp2p ignores, so only one address of each peer gets across.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import trio

from ipfsreg.node.discovery.mdns_message import (
    MDNS_GROUP,
    MDNS_PORT,
    MdnsError,
    asks_for_peers,
    decode_message,
    encode_query,
    encode_response,
    peers_in,
    random_instance_name,
)

log = logging.getLogger(__name__)

FIRST_QUERY_INTERVAL: Final = 1.0
MAX_QUERY_INTERVAL: Final = 60.0
MIN_ANSWER_INTERVAL: Final = 1.0  # RFC 6762: a record is multicast at most once a second
RETRY_AFTER: Final = 30.0
MAX_TRACKED_PEERS: Final = 256
CONCURRENT_DIALS: Final = 4

PeerFound = Callable[[str, list[str]], Awaitable[None]]


def lan_interfaces() -> list[str]:
    """The IPv4 addresses of the interfaces that are up, multicast-capable and not loopback."""
    import psutil

    stats = psutil.net_if_stats()
    found: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        flags = getattr(stats.get(name), "flags", "")
        if not stats.get(name) or not stats[name].isup or "multicast" not in flags or "loopback" in flags:
            continue
        found.extend(a.address for a in addrs if a.family == socket.AF_INET and a.address)
    return sorted(set(found))


class MdnsDiscovery:
    """Announce this node and find peers on the LAN; see the module docstring."""

    def __init__(
        self,
        peer_id: str,
        addrs: Callable[[], list[str]],
        on_peer: PeerFound,
        *,
        interfaces: Sequence[str] | None = None,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        """``addrs()``: this node's multiaddrs with /p2p/<id>; ``interfaces``: IPv4 addresses of the
        interfaces to use (default: :func:`lan_interfaces` when the service starts)."""
        self.peer_id = peer_id
        self._addrs = addrs
        self._on_peer = on_peer
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._retry_after = retry_after
        self.instance = random_instance_name()
        self._tried: dict[str, float] = {}
        self._last_answer = 0.0
        self._dials = trio.CapacityLimiter(CONCURRENT_DIALS)
        self.peers_found = 0
        self.packets_dropped = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        interfaces = self._interfaces if self._interfaces is not None else lan_interfaces()
        if not interfaces:
            log.warning("mdns: no multicast-capable LAN interface; discovery is off")
            task_status.started()
            return
        sock = await open_mdns_socket(interfaces)
        log.info("mdns: announcing %s on %s", self.peer_id, ", ".join(interfaces))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, sock, interfaces, nursery)
                await self._announce(sock, interfaces)
                nursery.start_soon(self._browse, sock, interfaces)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await self._announce(sock, interfaces, goodbye=True)
            sock.close()

    def _addresses(self) -> list[str]:
        return [a for a in self._addrs() if a.startswith(("/ip4/", "/ip6/"))]

    async def _announce(
        self,
        sock: trio.socket.SocketType,
        interfaces: Sequence[str],
        *,
        goodbye: bool = False,
        to: tuple[str, int] | None = None,
    ) -> None:
        addrs = self._addresses()
        for interface in interfaces:
            packet = encode_response(self.instance, addrs, [interface], ttl=0 if goodbye else 120)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            try:
                await sock.sendto(packet, to or (MDNS_GROUP, MDNS_PORT))
            except OSError as exc:
                log.debug("mdns: sending on %s failed: %s", interface, exc)

    async def _browse(self, sock: trio.socket.SocketType, interfaces: Sequence[str]) -> None:
        interval = FIRST_QUERY_INTERVAL
        query = encode_query()
        while True:
            for interface in interfaces:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
                try:
                    await sock.sendto(query, (MDNS_GROUP, MDNS_PORT))
                except OSError as exc:
                    log.debug("mdns: query on %s failed: %s", interface, exc)
            await trio.sleep(interval)
            interval = min(interval * 2, MAX_QUERY_INTERVAL)

    async def _receive(
        self, sock: trio.socket.SocketType, interfaces: Sequence[str], nursery: trio.Nursery
    ) -> None:
        while True:
            packet, sender = await sock.recvfrom(9000)
            try:
                message = decode_message(packet)
            except MdnsError as exc:
                self.packets_dropped += 1
                log.debug("mdns: dropped a packet from %s: %s", sender, exc)
                continue
            question = asks_for_peers(message)
            if question is not None:
                await self._answer(sock, interfaces, question.unicast or sender[1] != MDNS_PORT, sender)
                continue
            for peer, addrs in peers_in(message).items():
                if peer != self.peer_id and self._should_try(peer):
                    self.peers_found += 1
                    nursery.start_soon(self._hand_over, peer, _dial_order(addrs))

    async def _answer(
        self, sock: trio.socket.SocketType, interfaces: Sequence[str], unicast: bool, sender: tuple[str, int]
    ) -> None:
        if unicast:
            await self._announce(sock, [_interface_for(sender[0], interfaces)], to=sender)
            return
        now = time.monotonic()
        if now - self._last_answer < MIN_ANSWER_INTERVAL:
            return
        self._last_answer = now
        await self._announce(sock, interfaces)

    def _should_try(self, peer: str) -> bool:
        now = time.monotonic()
        last = self._tried.get(peer)
        if last is not None and now - last < self._retry_after:
            return False
        if last is None and len(self._tried) >= MAX_TRACKED_PEERS:
            oldest = min(self._tried, key=self._tried.__getitem__)
            del self._tried[oldest]
        self._tried[peer] = now
        return True

    async def _hand_over(self, peer: str, addrs: list[str]) -> None:
        async with self._dials:
            try:
                await self._on_peer(peer, addrs)
            except Exception as exc:
                log.info("mdns: peer %s found but not connected: %s", peer, exc)


def _dial_order(addrs: list[str]) -> list[str]:
    """LAN addresses first; loopback ones (another host's loopback is not theirs) only if nothing else."""
    lan = [a for a in addrs if not a.startswith(("/ip4/127.", "/ip6/::1/"))]
    return lan or addrs


def _interface_for(ip: str, interfaces: Sequence[str]) -> str:
    """The interface on the sender's /24 (a guess good enough for a unicast answer), else the first."""
    with contextlib.suppress(ValueError):
        sender = ipaddress.ip_address(ip)
        for interface in interfaces:
            if sender in ipaddress.ip_network(f"{interface}/24", strict=False):
                return interface
    return interfaces[0]


async def open_mdns_socket(interfaces: Sequence[str]) -> trio.socket.SocketType:
    """A UDP socket on port 5353 (shared with other responders) that has joined the mDNS group on
    each interface, sending with TTL 255 and looping its own multicasts back (peers on this host)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(AttributeError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        await sock.bind(("", MDNS_PORT))
        for interface in interfaces:
            membership = struct.pack("4s4s", socket.inet_aton(MDNS_GROUP), socket.inet_aton(interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        return sock
    except BaseException:
        sock.close()
        raise
