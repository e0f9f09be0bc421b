"""Bitswap stream adapter: length-prefixed messages over libp2p streams, in and out.

Inbound: every stream a peer opens on a bitswap protocol is read until EOF, each frame decoded
and handed to the receiver (Kubo opens a new stream per message; others reuse one). Outbound: one
long-lived stream per peer, reopened on failure, so sending does not pay a protocol negotiation
per message; Kubo reads every stream we open the same way. Wants and cancels are coalesced per
peer into one message by a short-lived flusher task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamEOF
from multiaddr import Multiaddr

from ipfsreg.node.bitswap.message import (
    PROTOCOL_1_0_0,
    PROTOCOLS,
    FrameDecoder,
    Message,
    WantEntry,
    decode_message,
    encode_frame,
)
from ipfsreg.node.errors import BitswapError, ProtocolViolation
from ipfsreg.node.settings import NodeSettings
from ipfsreg.node.yamux import YamuxStream

logger = logging.getLogger(__name__)

Receiver = Callable[[ID, Message], Awaitable[None]]
ViolationHandler = Callable[[ID, ProtocolViolation], Awaitable[None]]
PeerEvent = Callable[[ID], None]

OPEN_STREAM_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
READ_CHUNK = 1 << 20
NO_BITSWAP_RETRY = 30.0  # seconds before asking again a peer that refused a bitswap stream


@dataclass
class NetworkStats:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    streams_in: int = 0
    streams_opened: int = 0
    violations: int = 0


@dataclass
class _Sender:
    """The outgoing stream to one peer; one writer at a time."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    stream: INetStream | None = None
    protocol: str | None = None
    pending: list[WantEntry] = field(default_factory=list)
    flush_scheduled: bool = False


class _Notifee(INotifee):
    def __init__(self, send: trio.MemorySendChannel[tuple[bool, ID]]) -> None:
        self._send = send

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._emit(True, conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._emit(False, conn.muxed_conn.peer_id)

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    def _emit(self, up: bool, peer: ID) -> None:
        try:
            self._send.send_nowait((up, peer))
        except (trio.WouldBlock, trio.ClosedResourceError):
            logger.warning("dropped a connection event for %s", peer)


class BitswapNetwork:
    """Sends and receives bitswap messages for the client and the server."""

    def __init__(self, host: IHost, settings: NodeSettings) -> None:
        self.host = host
        self.settings = settings
        self.stats = NetworkStats()
        self.on_message: Receiver | None = None
        self.on_violation: ViolationHandler | None = None
        self.on_peer_connected: PeerEvent | None = None
        self.on_peer_disconnected: PeerEvent | None = None
        self.refuse: Callable[[ID], bool] | None = None  # peers to drop as soon as they connect
        self._senders: dict[tuple[ID, int], _Sender] = {}
        self._protocols: dict[ID, str] = {}
        self._no_bitswap: dict[ID, float] = {}  # peer -> when opening a bitswap stream to it failed
        self._nursery: trio.Nursery | None = None
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[bool, ID]](10_000)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register the protocol handlers and run until cancelled (owns the flusher tasks)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for protocol in PROTOCOLS:
                self.host.set_stream_handler(TProtocol(protocol), self._handle_stream)
            self.host.get_network().register_notifee(_Notifee(self._events_send))
            task_status.started()
            try:
                async for up, peer in self._events_recv:
                    if up:
                        if self.refuse is not None and self.refuse(peer):
                            logger.info("bitswap: dropping a connection from banned peer %s", peer)
                            await self.disconnect(peer)
                        elif self.on_peer_connected is not None:
                            self.on_peer_connected(peer)
                    elif not self.is_connected(peer):
                        self._forget(peer)
                        if self.on_peer_disconnected is not None:
                            self.on_peer_disconnected(peer)
            finally:
                for protocol in PROTOCOLS:
                    self.host.remove_stream_handler(TProtocol(protocol))
                self._nursery = None

    # --- peers -------------------------------------------------------------------------------

    def is_connected(self, peer: ID) -> bool:
        return bool(self.host.get_network().connections.get(peer))

    def connected_peers(self) -> list[ID]:
        """Connected peers, less those that recently refused a bitswap stream (they do not speak it)."""
        horizon = trio.current_time() - NO_BITSWAP_RETRY
        return [
            p
            for p, conns in self.host.get_network().connections.items()
            if conns and self._no_bitswap.get(p, horizon) <= horizon
        ]

    def protocol_of(self, peer: ID) -> str | None:
        """The bitswap protocol our outgoing stream to ``peer`` negotiated, if one is open."""
        return self._protocols.get(peer)

    def supports_have(self, peer: ID) -> bool:
        """False only for peers known to speak 1.0.0 (which has no HAVE wants or presences)."""
        return self.protocol_of(peer) != PROTOCOL_1_0_0

    def _forget(self, peer: ID) -> None:
        self._protocols.pop(peer, None)
        self._no_bitswap.pop(peer, None)
        for key in [k for k in self._senders if k[0] == peer]:
            del self._senders[key]

    async def disconnect(self, peer: ID) -> None:
        self._forget(peer)
        try:
            await self.host.disconnect(peer)
        except Exception as exc:
            logger.debug("disconnecting %s: %s", peer, exc)

    # --- inbound -----------------------------------------------------------------------------

    async def _handle_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        self.stats.streams_in += 1
        decoder = FrameDecoder(self.settings.max_message_size)
        muxed = getattr(stream, "muxed_stream", None)
        # Our Yamux streams wake this reader once the rest of the message is in, not per piece.
        whole: Callable[[int], Awaitable[bytes]] | None = (
            muxed.read_at_least if isinstance(muxed, YamuxStream) else None
        )
        try:
            while True:
                try:
                    if whole is not None:
                        chunk = await whole(decoder.bytes_wanted())
                    else:
                        chunk = await stream.read(max(READ_CHUNK, decoder.bytes_wanted()))
                except (StreamEOF, MuxedStreamEOF):
                    break
                if not chunk:
                    break
                decoder.feed(chunk)
                for body in decoder.frames():
                    message = decode_message(body, max_block_size=self.settings.max_block_size)
                    self.stats.messages_in += 1
                    self.stats.bytes_in += len(body)
                    if self.on_message is not None:
                        await self.on_message(peer, message)
            if not decoder.at_frame_boundary():
                raise ProtocolViolation(f"stream ended inside a message ({decoder.buffered} bytes)")
            await stream.close()
        except ProtocolViolation as exc:
            self.stats.violations += 1
            logger.warning("bitswap: protocol violation by %s: %s", peer, exc)
            await _reset(stream)
            if self.on_violation is not None:
                await self.on_violation(peer, exc)
        except Exception as exc:
            # A reset or broken connection: the peer went away mid-message.
            logger.debug("bitswap: inbound stream from %s failed: %r", peer, exc)
            await _reset(stream)

    # --- outbound ----------------------------------------------------------------------------

    async def send(self, peer: ID, message: Message, *, lane: int = 0) -> None:
        """Send one message on our stream number ``lane`` to ``peer``; BitswapError if it cannot be reached.

        Lanes are independent long-lived streams: messages on different lanes travel side by side
        (the server answers one peer on several lanes, as Kubo does with a stream per message).
        """
        sender = self._senders.setdefault((peer, lane), _Sender())
        async with sender.lock:
            for attempt in (1, 2):
                stream = sender.stream
                try:
                    if stream is None:
                        stream = await self._open(peer, sender)
                    frame = encode_frame(message, sender.protocol or PROTOCOLS[0])
                    with trio.fail_after(WRITE_TIMEOUT):
                        await stream.write(frame)
                    self.stats.messages_out += 1
                    self.stats.bytes_out += len(frame)
                    return
                except Exception as exc:
                    if stream is not None:
                        await _reset(stream)
                    sender.stream = None
                    if attempt == 2 or not self.is_connected(peer):
                        raise BitswapError(f"cannot send a bitswap message to {peer}: {exc!r}") from None

    async def _open(self, peer: ID, sender: _Sender) -> INetStream:
        try:
            with trio.fail_after(OPEN_STREAM_TIMEOUT):
                stream = await self.host.new_stream(peer, [TProtocol(p) for p in PROTOCOLS])
        except Exception:
            self._no_bitswap[peer] = trio.current_time()
            raise
        self._no_bitswap.pop(peer, None)
        self.stats.streams_opened += 1
        sender.stream = stream
        sender.protocol = str(stream.get_protocol())
        self._protocols[peer] = sender.protocol
        return stream

    def queue_wants(self, peer: ID, entries: Sequence[WantEntry]) -> None:
        """Queue wantlist entries (wants or cancels) for ``peer``; sent soon, coalesced into one message."""
        if not entries:
            return
        sender = self._senders.setdefault((peer, 0), _Sender())
        sender.pending.extend(entries)
        if not sender.flush_scheduled and self._nursery is not None:
            sender.flush_scheduled = True
            self._nursery.start_soon(self._flush, peer, sender)

    async def _flush(self, peer: ID, sender: _Sender) -> None:
        await trio.lowlevel.checkpoint()  # let the other wants of this scheduling round join
        sender.flush_scheduled = False
        entries, sender.pending = sender.pending, []
        if not entries:
            return
        try:
            await self.send(peer, Message(wantlist=entries))
        except BitswapError as exc:
            logger.debug("%s", exc)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:
        logger.debug("resetting a stream: %r", exc)
