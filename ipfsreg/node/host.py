"""The libp2p host on trio (TCP + Noise + Yamux, identify, ping) and the keeper of configured peerings."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio
from libp2p import new_host
from libp2p.abc import IHost, IRawConnection
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.transport.exceptions import SecurityUpgradeFailure
from multiaddr import Multiaddr

from ipfsreg.excgroups import describe
from ipfsreg.node.errors import NodeError
from ipfsreg.node.identity import Identity
from ipfsreg.node.multistream import install as install_multistream
from ipfsreg.node.noise import noise_transport
from ipfsreg.node.pnet import PnetHandshakeError, fingerprint
from ipfsreg.node.pnet_conn import PnetConnection
from ipfsreg.node.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from ipfsreg.node.yamux import YamuxConn
from ipfsreg.node.yamux import install as install_yamux

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
E = TypeVar("E", bound=BaseException)


def parse_multiaddr(text: str) -> Multiaddr:
    try:
        return Multiaddr(text)
    except Exception as exc:
        raise NodeError(f"invalid multiaddr {text!r}: {exc}") from None


def parse_peer_addr(text: str) -> PeerInfo:
    """A dialable peer address: a multiaddr ending in /p2p/<peer id>."""
    addr = parse_multiaddr(text)
    try:
        return info_from_p2p_addr(addr)
    except Exception as exc:
        raise NodeError(f"multiaddr {text!r} does not name a peer (/p2p/<id>): {exc}") from None


def build_host(identity: Identity, listen: Sequence[str], *, psk: bytes | None = None) -> IHost:
    """A host that speaks only Noise for security and Yamux for multiplexing (as Kubo prefers).

    The muxer is ipfsreg's own Yamux (ipfsreg/node/yamux.py) on every connection, dialled or accepted.
    With ``psk`` (a swarm key) the host is in that private network: every connection is encrypted
    with it before anything else is sent (ipfsreg/node/pnet.py), as go-libp2p and Kubo do.
    """
    listen_addrs = [parse_multiaddr(a) for a in listen]
    noise = noise_transport(identity.key_pair)
    host = new_host(
        key_pair=identity.key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={YAMUX_PROTOCOL_ID: YamuxConn},
        listen_addrs=listen_addrs,
        enable_mDNS=False,
        bootstrap=None,
        # No auto-dialling of peerstore entries: we connect to configured and requested peers only.
        connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
    )
    install_yamux(host)
    install_multistream(host)
    wrap = _private_network_wrapper(psk)
    _end_inbound_handlers_with_their_connection(host.get_network(), wrap)
    _guard_inbound_streams(host.get_network())
    if psk is not None:
        _dial_in_private_network(host.get_network(), wrap)
        host._ipfsreg_pnet_fingerprint = fingerprint(psk).hex()  # type: ignore[attr-defined]
    _notify_stream_events_inline(host.get_network())
    # py-libp2p's AutoConnector dials peerstore entries to reach a connection target even with
    # min_connections=0; ipfsreg connects only to configured and requested peers (loopback tests,
    # banned peers stay away), so it is switched off here.
    auto_connector = getattr(host.get_network(), "auto_connector", None)
    if auto_connector is not None:
        auto_connector.maybe_connect = _no_auto_connect
    return host


async def _no_auto_connect() -> None:
    return None


async def close_listeners(host: IHost) -> None:
    """Stop accepting connections: close every listener of ``host`` (best effort)."""
    listeners: dict[str, Any] = getattr(host.get_network(), "listeners", {})
    for listener in list(listeners.values()):
        try:
            await listener.close()
        except Exception as exc:
            logger.debug("closing a listener: %r", exc)


RawWrapper = Callable[[IRawConnection], IRawConnection]


def _private_network_wrapper(psk: bytes | None) -> RawWrapper:
    if psk is None:
        return lambda conn: conn
    name = fingerprint(psk).hex()
    return lambda conn: PnetConnection(conn, psk, key_name=name)


def private_network_fingerprint(host: IHost) -> str | None:
    """The Kubo-style fingerprint of the host's swarm key, or None when it is not in a private network."""
    name = getattr(host, "_ipfsreg_pnet_fingerprint", None)
    return name if isinstance(name, str) else None


def _dial_in_private_network(swarm: Any, wrap: RawWrapper) -> None:
    """Wrap every connection the swarm's transports dial in the private network cipher.

    py-libp2p's own ``psk`` option would use its libp2p.security.pnet, which does not interoperate
    with go-libp2p (8-byte nonce, Salsa20 instead of XSalsa20), so the swarm is built without it
    and the wrapping happens here (dialled) and in the inbound handler (accepted).
    """
    for transport in swarm.transport_manager.get_transports():
        for name in ("dial", "dial_with_source"):
            original = getattr(transport, name, None)
            if original is not None:
                setattr(transport, name, _wrapped_dial(original, wrap))


def _wrapped_dial(original: Callable[..., Awaitable[IRawConnection]], wrap: RawWrapper) -> Any:
    async def dial(*args: Any, **kwargs: Any) -> IRawConnection:
        return wrap(await original(*args, **kwargs))

    return dial


def _end_inbound_handlers_with_their_connection(swarm: Any, wrap: RawWrapper) -> None:
    """Make each inbound connection's handler end when that connection closes.

    py-libp2p 0.8's handler upgrades the connection and then waits for the whole swarm to stop,
    holding one slot of the swarm's inbound-connection limiter (300 by default) all along: a node
    that 300 peers had connected to, over any length of time, refused every new inbound
    connection. Here the handler (connection gate, security and muxer upgrade as before) waits for
    its own connection to close, then returns, which frees the slot and closes the socket.
    """

    async def handle(read_write_closer: Any, maddr: Multiaddr, failure_event: Any) -> None:
        remote: Any = None
        try:
            remote = swarm._build_remote_multiaddr(read_write_closer)
            if remote is not None and not await swarm.connection_gate.is_allowed(remote):
                logger.debug("inbound connection from %s refused by the connection gate", remote)
                await _close_quietly(read_write_closer)
                return
            raw_conn = wrap(RawConnection(read_write_closer, False))
            try:
                muxed_conn = await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
            except Exception as exc:
                logger.debug("inbound connection from %s failed: %r", remote, exc)
                await _close_quietly(raw_conn)
                return
            await muxed_conn.event_closed.wait()
        except Exception as exc:
            # Whatever fails in here ends this connection; the listener (and the node) go on.
            logger.warning("p2p: inbound connection from %s ended by an error: %s", remote, describe(exc))
            logger.debug("p2p: inbound connection from %s: traceback", remote, exc_info=exc)
            await _close_quietly(read_write_closer)

    swarm._do_handle_inbound_connection = handle


def _guard_inbound_streams(swarm: Any) -> None:
    """Make a failure inside one inbound stream's handler reset that stream only.

    py-libp2p runs every inbound stream's protocol handler (identify, ping, bitswap, ...) in the
    connection's task, itself a task of the swarm's service: an exception a handler lets out would
    stop the connection and then the swarm. Here it is logged once, at warning, with the peer and
    the protocol, and the stream is reset.
    """
    handler = swarm.common_stream_handler

    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            peer = getattr(getattr(stream, "muxed_conn", None), "peer_id", None)
            protocol = stream.get_protocol() if hasattr(stream, "get_protocol") else None
            logger.warning(
                "p2p: stream %s from %s ended by an error: %s", protocol or "-", peer, describe(exc)
            )
            logger.debug("p2p: stream from %s: traceback", peer, exc_info=exc)
            try:
                await stream.reset()
            except Exception as reset_error:
                logger.debug("resetting a failed stream: %r", reset_error)

    swarm.common_stream_handler = guarded


STREAM_EVENTS = frozenset({"opened_stream", "closed_stream"})


def _notify_stream_events_inline(swarm: Any) -> None:
    """Deliver stream opened/closed notifications inline instead of in a task per notifee.

    py-libp2p 0.8 opens a nursery and spawns one task per registered notifee for every event. Kubo
    sends each bitswap message on a stream of its own, so a 200 MB transfer opens and closes about
    800 streams: with the three notifees every node has (py-libp2p's tag store and identify, and
    bitswap's), about 5,000 tasks, none of which does anything (all three ignore stream events).
    Here stream events call each notifee in turn, as go-libp2p does; a notifee that raises is
    logged and the others still run. Connection and listen events keep py-libp2p's delivery.
    """
    notify_in_tasks = swarm._notify

    async def notify(method: str, *args: Any) -> None:
        if method not in STREAM_EVENTS:
            await notify_in_tasks(method, *args)
            return
        for notifee in list(swarm.notifees):
            try:
                await getattr(notifee, method)(swarm, *args)
            except Exception:
                logger.exception("notifee %s.%s raised", type(notifee).__name__, method)

    swarm._notify = notify


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception as exc:
        logger.debug("closing a failed inbound connection: %r", exc)


def with_peer_id(addr: Multiaddr | str, peer_id: ID | str) -> str:
    text = str(addr)
    suffix = f"/p2p/{peer_id}"
    return text if text.endswith(suffix) else text + suffix


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 interface addresses, loopback first."""
    import psutil

    found = {
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and a.address
    }
    return sorted(found, key=lambda ip: (not ip.startswith("127."), ip))


def expand_unspecified(addr: str) -> list[str]:
    """``/ip4/0.0.0.0/...`` (listen on every interface) as one dialable address per interface."""
    prefix = "/ip4/0.0.0.0/"
    if not addr.startswith(prefix):
        return [addr]
    rest = addr[len(prefix) :]
    return [f"/ip4/{ip}/{rest}" for ip in local_ipv4_addresses()] or [addr]


def host_listen_addrs(host: IHost) -> list[str]:
    """The addresses the host listens on (0.0.0.0 expanded per interface), each with /p2p/<id>."""
    result: list[str] = []
    for addr in host.get_addrs():
        for expanded in expand_unspecified(str(addr)):
            full = with_peer_id(expanded, host.get_id())
            if full not in result:
                result.append(full)
    return result


async def connect(host: IHost, addr: str, *, dial_timeout: float = CONNECT_TIMEOUT) -> ID:
    """Dial ``addr`` (must end in /p2p/<id>) and return the peer ID; NodeError if it fails."""
    info = parse_peer_addr(addr)
    if info.peer_id == host.get_id():
        raise NodeError(f"refusing to connect to ourselves ({addr})")
    try:
        with trio.fail_after(dial_timeout):
            await host.connect(info)
    except trio.TooSlowError:
        raise NodeError(f"connecting to {addr} timed out after {dial_timeout:g}s") from None
    except Exception as exc:
        refused = find_cause(exc, PnetHandshakeError)
        if refused is not None:
            raise PnetHandshakeError(f"cannot connect to {addr}: {refused}") from None
        hint = ""
        if private_network_fingerprint(host) is None and find_cause(exc, SecurityUpgradeFailure):
            hint = " (if the peer is in a private network, this node needs its swarm key)"
        raise NodeError(f"cannot connect to {addr}: {exc}{hint}") from None
    return info.peer_id


def find_cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` among ``exc``, its causes and contexts, and the errors py-libp2p's dialler
    collects (``MultiError.errors``) and exception groups hold."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        for inner in (current.__cause__, current.__context__):
            if inner is not None:
                pending.append(inner)
        for attr in ("errors", "exceptions"):
            nested = getattr(current, attr, None)
            if isinstance(nested, list | tuple):
                pending.extend(e for e in nested if isinstance(e, BaseException))
    return None


def is_connected(host: IHost, peer_id: ID) -> bool:
    return bool(host.get_network().connections.get(peer_id))


class Peering:
    """Keeps connections to configured peers up, redialling with exponential backoff and jitter."""

    def __init__(self, host: IHost, addrs: Sequence[str], *, max_backoff: float = 60.0) -> None:
        self._host = host
        self._max_backoff = max_backoff
        self._addrs: list[str] = []
        self._nursery: trio.Nursery | None = None
        for addr in addrs:
            parse_peer_addr(addr)  # fail early on a bad configured address
            self._addrs.append(addr)

    @property
    def addrs(self) -> list[str]:
        return list(self._addrs)

    def add(self, addr: str) -> None:
        """Keep ``addr`` connected from now on (also while running)."""
        parse_peer_addr(addr)
        if addr in self._addrs:
            return
        self._addrs.append(addr)
        if self._nursery is not None:
            self._nursery.start_soon(self._keep, addr)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for addr in self._addrs:
                nursery.start_soon(self._keep, addr)
            task_status.started()
            await trio.sleep_forever()

    async def _keep(self, addr: str) -> None:
        info = parse_peer_addr(addr)
        backoff = 0.5
        while True:
            if is_connected(self._host, info.peer_id):
                backoff = 0.5
                await trio.sleep(1.0)
                continue
            try:
                await connect(self._host, addr)
                logger.info("peering: connected to %s", addr)
                backoff = 0.5
            except NodeError as exc:
                logger.info("peering: %s; retrying in %.1fs", exc, backoff)
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self._max_backoff)
