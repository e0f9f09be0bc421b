"""ipfsreg's Yamux stream muxer (/yamux/1.0.0) for every libp2p connection the node makes.

A pure frame codec (``encode_header``, ``FrameDecoder``) and a lean trio connection (``YamuxConn``)
and stream (``YamuxStream``) implementing py-libp2p's IMuxedConn / IMuxedStream, so the swarm,
NetStream, identify, ping and bitswap run on it unchanged. Spec: hashicorp/yamux spec.md; behaviour
follows go-yamux (Kubo's muxer) where the spec is silent.

Why not py-libp2p's Yamux: its writers poll for send window every 10 ms, its receive windows start
at 256 KiB, and its read path takes locks per call. Here:
- one read loop reads whole decrypted messages, parses headers from them and appends payloads to
  the streams' buffers as they arrive (a frame's body may span many reads), waking readers by event;
- every stream is granted 1 MiB of receive window up front (the delta over the spec's 256 KiB rides
  on the SYN/ACK), so a bitswap message of one 256 KiB block never waits for a window update; window
  updates go out only after half of a stream's window was read, and each doubles a busy stream's
  window up to 16 MiB, all within a per-connection budget that bounds what a peer can make us buffer;
- a writer whose send window is exhausted sleeps until the peer's WINDOW_UPDATE wakes it;
- frames are written whole (header + payload, plus any queued frames) in one secured write under
  one connection write lock, shielded from cancellation (half a frame would corrupt the session);
- control frames (ACK, FIN, RST, ping replies, window updates) and small writes (protocol
  negotiation, wantlists) are queued and go out together, by a flusher task one scheduling round
  later or ahead of the next large write: a peer's stream costs about one secured write instead of
  four, and the read loop never waits for the write side (two peers blocked writing cannot deadlock);
- a message a peer waits for (a DHT request or answer) can skip that wait: ``write_now`` writes it
  from the calling task when the connection is free, ``write_nowait`` queues it from code that
  cannot wait for the flusher's next round, without the extra round for other writes to join.
A peer that breaks the protocol (bad version or type, data beyond its window, frames for streams
that never existed, duplicate SYNs) gets a GoAway(protocol error) and the connection is closed; the
typed error is logged and kept in ``YamuxConn.close_reason``.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

import trio
from libp2p.abc import IHost, IMuxedConn, IMuxedStream, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamReset,
)
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from multiaddr import Multiaddr

from ipfsreg.node.errors import NodeError

logger = logging.getLogger(__name__)

PROTOCOL_ID = TProtocol("/yamux/1.0.0")

# --- wire format (spec.md) ---------------------------------------------------------------------

VERSION = 0
TYPE_DATA = 0x0
TYPE_WINDOW_UPDATE = 0x1
TYPE_PING = 0x2
TYPE_GO_AWAY = 0x3
FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8
GO_AWAY_NORMAL = 0x0
GO_AWAY_PROTOCOL_ERROR = 0x1
GO_AWAY_INTERNAL_ERROR = 0x2
HEADER_SIZE = 12
INITIAL_WINDOW = 256 * 1024  # every stream starts with this window in both directions (spec)
MAX_STREAM_ID = 0xFFFFFFFF

_HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length

# --- tuning --------------------------------------------------------------------------------------

MAX_FRAME_PAYLOAD = 1024 * 1024  # largest DATA payload we send in one frame (and one secured write)
MAX_CONTROL_BACKLOG = 1024 * 1024  # queued control bytes beyond this: the peer is not reading
SMALL_WRITE = 16 * 1024  # writes up to this size are queued and go out with the next write (coalesced)
MAX_QUEUED_DATA = 64 * 1024  # ...as long as the queue holds less than this
WRITE_TIMEOUT = 30.0  # a frame write stalled this long means the connection is dead (go-yamux: 10 s)
CLOSE_TIMEOUT = 2.0  # bound on the GoAway write and the close hook when a connection goes down


# --- errors --------------------------------------------------------------------------------------


class YamuxError(NodeError):
    """The Yamux layer failed on a connection."""


class YamuxProtocolError(YamuxError):
    """The peer broke the Yamux protocol; the connection is closed with GoAway(protocol error)."""


class MalformedFrame(YamuxProtocolError):
    """A frame header with an unknown version or type, or a frame that makes no sense where it is."""


class ReceiveWindowExceeded(YamuxProtocolError):
    """The peer sent more data on a stream than the window it was granted."""


class UnknownStream(YamuxProtocolError):
    """A frame for a stream ID that was never opened."""


class DuplicateStream(YamuxProtocolError):
    """A SYN for a stream ID that is already open, or with the wrong parity."""


class PeerNotReading(YamuxProtocolError):
    """Our queued control frames to the peer grew past the limit: it sends but does not read."""


class RemoteGoAway(YamuxError):
    """The peer sent GoAway with an error code."""


# --- pure codec ----------------------------------------------------------------------------------


class Header(NamedTuple):
    """One frame header; for DATA frames ``length`` payload bytes follow as BodyPiece events."""

    type: int
    flags: int
    stream_id: int
    length: int


class BodyPiece:
    """A piece of the current DATA frame's payload; ``last`` marks the frame's final piece."""

    __slots__ = ("data", "last")

    def __init__(self, data: memoryview, last: bool) -> None:
        self.data = data
        self.last = last

    def __repr__(self) -> str:
        return f"BodyPiece({bytes(self.data)!r}, last={self.last})"


def encode_header(type: int, flags: int, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(VERSION, type, flags, stream_id, length)


def decode_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """The header at ``offset``; MalformedFrame for an unknown version or type."""
    version, type_, flags, stream_id, length = _HEADER.unpack_from(data, offset)
    if version != VERSION:
        raise MalformedFrame(f"unsupported Yamux version {version}")
    if type_ > TYPE_GO_AWAY:
        raise MalformedFrame(f"unknown Yamux frame type {type_}")
    return Header(type_, flags, stream_id, length)


class FrameDecoder:
    """Turns the connection's bytes, fed in arbitrary pieces, into Header and BodyPiece events.

    No I/O and no copies of payloads: body pieces are memoryviews of the fed data (the consumer
    copies what it keeps before feeding more). Headers split across feeds are reassembled.
    """

    __slots__ = ("_body_left", "_partial")

    def __init__(self) -> None:
        self._partial = b""  # the start of a header split across feeds
        self._body_left = 0  # payload bytes of the current DATA frame still to come

    @property
    def at_frame_boundary(self) -> bool:
        return not self._partial and not self._body_left

    def feed(self, data: bytes | bytearray | memoryview) -> list[Header | BodyPiece]:
        events: list[Header | BodyPiece] = []
        view = memoryview(data)
        end = len(view)
        pos = 0
        if self._partial:
            need = HEADER_SIZE - len(self._partial)
            if end < need:
                self._partial += bytes(view)
                return events
            head = self._partial + bytes(view[:need])
            self._partial = b""
            pos = need
            events.append(self._header(head, 0))
        while pos < end:
            body_left = self._body_left
            if body_left:
                take = end - pos
                if take >= body_left:
                    take = body_left
                self._body_left = body_left - take
                events.append(BodyPiece(view[pos : pos + take], take == body_left))
                pos += take
            elif end - pos >= HEADER_SIZE:
                events.append(self._header(view, pos))
                pos += HEADER_SIZE
            else:
                self._partial = bytes(view[pos:])
                break
        return events

    def _header(self, data: bytes | memoryview, offset: int) -> Header:
        header = decode_header(data, offset)
        if header.type == TYPE_DATA:
            self._body_left = header.length
        return header


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class YamuxSettings:
    """Limits and window sizes of ipfsreg's Yamux connections."""

    initial_stream_window: int = field(
        default=1024 * 1024,
        metadata={
            "help": "receive window granted to each stream when it opens (bytes; at least 256 KiB); "
            "a bitswap message of a 256 KiB block fits without waiting for a window update"
        },
    )
    max_stream_window: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "receive window a busy stream grows to, doubling at each window update (bytes)"},
    )
    connection_window_budget: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "receive window beyond 256 KiB per stream a connection may grant in total (bytes); "
            "bounds the unread data a peer can make us buffer"
        },
    )
    max_inbound_streams: int = field(
        default=1024, metadata={"help": "open streams a peer may have on one connection; more are reset"}
    )
    accept_backlog: int = field(
        default=256, metadata={"help": "opened streams waiting for a handler; more are reset"}
    )

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.initial_stream_window <= self.max_stream_window:
            raise ValueError(f"need {INITIAL_WINDOW} <= initial_stream_window <= max_stream_window")
        if self.connection_window_budget < 0 or self.max_inbound_streams < 1 or self.accept_backlog < 1:
            raise ValueError("Yamux limits must be positive")


@dataclass
class YamuxStats:
    """Counters of one connection (for tests, benchmarks and debugging)."""

    frames_in: int = 0
    writes: int = 0  # secured-connection writes (each one or more whole frames)
    window_stalls: int = 0  # times a writer waited for the peer to grant send window
    window_stall_seconds: float = 0.0  # total time writers waited for send window
    window_updates_sent: int = 0
    streams_opened: int = 0
    streams_accepted: int = 0
    streams_refused: int = 0


# --- streams -------------------------------------------------------------------------------------


class YamuxStream(IMuxedStream):
    """One Yamux stream: read/write/close (half-close, FIN)/reset (RST) for NetStream."""

    def __init__(self, conn: YamuxConn, stream_id: int, *, is_initiator: bool, extra_window: int) -> None:
        self.muxed_conn = conn
        self.conn = conn
        self.stream_id = stream_id
        self.is_initiator = is_initiator
        self._buf = bytearray()
        self._extra_window = extra_window  # taken from the connection's budget, returned on forget
        self._recv_target = INITIAL_WINDOW + extra_window
        self._recv_window = self._recv_target  # bytes the peer may still send us
        self._unannounced = 0  # bytes read by the application, not yet granted back to the peer
        self._send_window = INITIAL_WINDOW
        self._local_closed = False  # we sent FIN
        self._remote_closed = False  # the peer sent FIN
        self._reset = False  # RST sent or received, or the connection died before the peer's FIN
        self._read_waiter: trio.Event | None = None
        self._wake_at = 1  # buffered bytes that wake a waiting reader (read_at_least raises it)
        self._write_waiter: trio.Event | None = None
        self._write_lock = trio.Lock()  # one write() at a time, so messages never interleave
        self._deadline = float("inf")

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} of {self.conn.peer_id}>"

    async def __aenter__(self) -> YamuxStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_closed(self) -> bool:
        return self._reset or (self._local_closed and self._remote_closed)

    @property
    def writable(self) -> bool:
        """Neither side closed or reset it: what is written now reaches a reader."""
        return not (self._reset or self._local_closed or self._remote_closed or self.conn._down)

    # -- reading --

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` buffered bytes (all of them for None or -1), waiting only when none are.

        MuxedStreamEOF once the peer closed its side and everything was read; MuxedStreamReset if
        the stream was reset or the connection died first.
        """
        if n == 0:
            return b""
        buf = self._buf
        if self._reset:
            raise MuxedStreamReset(f"stream {self.stream_id} was reset")
        if not buf:
            await self.wait_readable(0)
            if self._reset:
                raise MuxedStreamReset(f"stream {self.stream_id} was reset")
        if n is None or n < 0 or n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        unannounced = self._unannounced + len(data)
        if unannounced >= self._recv_target >> 1 and not self._remote_closed:
            # Everything read since the last update goes back to the peer, plus the growth of a busy window.
            delta = unannounced + self.conn._grow_window(self)
            self._unannounced = 0
            self._recv_window += delta
            self.conn._queue_window_update(self.stream_id, delta)
        else:
            self._unannounced = unannounced
        return data

    async def read_at_least(self, n: int) -> bytes:
        """Everything buffered once at least ``n`` bytes are (or the peer closed its side).

        One wake-up where read() would wake for every piece that arrives: a reader that knows how
        big its message is sleeps until the message is in. ``n`` is capped at half the receive
        window, the amount whose reading grants the peer more window (a bigger wait could never end).
        """
        wake_at = min(n, self._recv_target >> 1)
        if len(self._buf) < wake_at:
            self._wake_at = wake_at
            try:
                while len(self._buf) < wake_at:
                    await self.wait_readable(len(self._buf))
            except (MuxedStreamEOF, MuxedStreamReset):
                pass  # read() returns what arrived, or raises
            finally:
                self._wake_at = 1
        return await self.read()

    def peek(self, limit: int) -> bytes:
        """Up to ``limit`` of the buffered bytes, left in the buffer for the next read."""
        return bytes(self._buf[:limit])

    async def wait_readable(self, seen: int) -> None:
        """Wait until more than ``seen`` bytes are buffered (at once if they already are).

        MuxedStreamEOF or MuxedStreamReset, as read() raises them, if no more will come.
        """
        while len(self._buf) <= seen:
            if self._reset:
                raise MuxedStreamReset(f"stream {self.stream_id} was reset")
            if self._remote_closed:
                raise MuxedStreamEOF(f"stream {self.stream_id} closed by the peer")
            waiter = self._read_waiter
            if waiter is None:
                waiter = self._read_waiter = trio.Event()
            await self._wait(waiter)

    # -- writing --

    async def write(self, data: bytes) -> None:
        """Send ``data``, in frames as large as the peer's window allows, waiting for window updates."""
        if self._reset or self.conn._down:
            raise MuxedStreamReset(f"stream {self.stream_id} was reset")
        if self._local_closed:
            raise MuxedStreamClosed(f"stream {self.stream_id} is closed for writing")
        view = memoryview(data)
        total = len(view)
        conn = self.conn
        if (
            total <= SMALL_WRITE
            and total <= self._send_window
            and len(conn._pending) < MAX_QUEUED_DATA
            and not self._write_lock.locked()
        ):
            # Small writes (protocol negotiation, wantlists, replies) wait for the flusher, so that
            # what a task writes in one go, and the control frames around it, share one secured write.
            if total:
                self._send_window -= total
                conn._queue_data(self.stream_id, view)
            return
        async with self._write_lock:
            pos = 0
            while pos < total:
                if self._send_window <= 0:
                    await self._wait_send_window()
                pos += await self.conn._write_data(self, view, pos)

    def write_nowait(self, data: bytes) -> bool:
        """Queue a small write to go out at the next scheduling round, without waiting; False if it
        cannot be (too big for the send window or the queue, another write in progress, closed).

        For a message sent from code that cannot wait (a commit announcing what it stored): the
        flusher writes it, with whatever else is queued, without its usual extra round for more
        writes to join.
        """
        conn = self.conn
        total = len(data)
        if (
            self._reset
            or self._local_closed
            or conn._down
            or total > SMALL_WRITE
            or total > self._send_window
            or len(conn._pending) >= MAX_QUEUED_DATA
            or self._write_lock.locked()
        ):
            return False
        if total:
            self._send_window -= total
            conn._queue_data(self.stream_id, memoryview(data), urgent=True)
        return True

    async def write_now(self, data: bytes) -> None:
        """write(), sent from this task at once when no other write holds the connection.

        For a message the peer waits for (a request or its answer): a small write then leaves in
        one secured write with everything queued before it, instead of a scheduling round or two
        later from the flusher. When the connection is busy it goes as write() sends it.
        """
        conn = self.conn
        total = len(data)
        if (
            total <= SMALL_WRITE
            and total <= self._send_window
            and not self._write_lock.locked()
            and not conn._write_lock.locked()
            and not (self._reset or self._local_closed or conn._down)
        ):
            self._send_window -= total
            pending = conn._pending
            pending += _HEADER.pack(VERSION, TYPE_DATA, 0, self.stream_id, total)
            pending += data
            if not await conn._flush_now():
                raise MuxedStreamReset(f"connection to {conn.peer_id} failed while writing")
            return
        await self.write(data)

    async def _wait_send_window(self) -> None:
        stats = self.conn.stats
        stats.window_stalls += 1
        start = trio.current_time()
        try:
            while self._send_window <= 0:
                if self._reset:
                    raise MuxedStreamReset(f"stream {self.stream_id} was reset")
                if self._local_closed:
                    raise MuxedStreamClosed(f"stream {self.stream_id} is closed for writing")
                waiter = self._write_waiter
                if waiter is None:
                    waiter = self._write_waiter = trio.Event()
                await self._wait(waiter)
        finally:
            stats.window_stall_seconds += trio.current_time() - start

    async def _wait(self, event: trio.Event) -> None:
        if self._deadline == float("inf"):
            await event.wait()
            return
        with trio.fail_at(self._deadline):
            await event.wait()

    # -- closing --

    async def close(self) -> None:
        """Half-close: FIN to the peer; reading goes on until the peer closes its side."""
        if self._local_closed or self._reset:
            return
        self._local_closed = True
        self._wake_writer()
        conn = self.conn
        if not conn._down:
            conn._queue_frame(encode_header(TYPE_WINDOW_UPDATE, FLAG_FIN, self.stream_id, 0))
        if self._remote_closed:
            conn._forget(self)

    async def reset(self) -> None:
        """Abort both directions: RST to the peer, buffered data dropped."""
        if self._reset or (self._local_closed and self._remote_closed):
            return
        self._reset = True
        self._buf.clear()
        self._wake_reader()
        self._wake_writer()
        conn = self.conn
        if not conn._down:
            conn._queue_frame(encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, self.stream_id, 0))
        conn._forget(self)

    def set_deadline(self, ttl: int) -> None:
        """Reads and writes that would wait beyond ``ttl`` seconds from now raise trio.TooSlowError."""
        if ttl < 0:
            raise ValueError("deadline ttl must not be negative")
        self._deadline = trio.current_time() + ttl

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.conn.get_remote_address()

    # -- events from the read loop --

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            waiter.set()

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None:
            self._write_waiter = None
            waiter.set()

    def _on_remote_close(self) -> None:
        self._remote_closed = True
        self._wake_reader()
        if self._local_closed:
            self.conn._forget(self)

    def _on_remote_reset(self) -> None:
        self._reset = True
        self._buf.clear()
        self._wake_reader()
        self._wake_writer()
        self.conn._forget(self)

    def _on_connection_gone(self) -> None:
        # Data the peer finished sending (FIN received) stays readable; anything else is cut off.
        if not self._remote_closed:
            self._reset = True
            self._buf.clear()
        self._local_closed = True
        self._wake_reader()
        self._wake_writer()


# --- connections ---------------------------------------------------------------------------------


class YamuxConn(IMuxedConn):
    """A Yamux session over one secured connection (IMuxedConn for py-libp2p's swarm)."""

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        is_initiator: bool | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
        *,
        settings: YamuxSettings | None = None,
    ) -> None:
        self.secured_conn = secured_conn
        self.peer_id = peer_id
        self.on_close = on_close  # SwarmConn installs its hook here; awaited when the connection goes down
        self.settings = settings or YamuxSettings()
        self.stats = YamuxStats()
        self.close_reason: BaseException | None = None  # why the connection went down, if not a clean close
        self.event_started = trio.Event()
        self.event_closed = trio.Event()
        self._created_at = time.time()  # read by py-libp2p's connection pruner
        self._is_initiator = secured_conn.is_initiator if is_initiator is None else is_initiator
        self._next_stream_id = 1 if self._is_initiator else 2  # initiators odd, responders even
        self._max_remote_stream_id = 0  # highest stream ID the peer opened so far
        self._streams: dict[int, YamuxStream] = {}
        self._inbound_streams = 0
        self._window_budget = self.settings.connection_window_budget
        self._accept_send, self._accept_recv = trio.open_memory_channel[YamuxStream](
            self.settings.accept_backlog
        )
        self._write_lock = trio.Lock()
        self._pending = bytearray()  # frames waiting for the next write: control, and small data
        self._pending_ready = trio.Event()
        self._urgent = False  # something queued wants out at the next round (write_nowait)
        self._pings: dict[int, trio.Event] = {}
        self._ping_id = 0
        self._rtt = 0.0
        self._nursery: trio.Nursery | None = None
        self._established = False
        self._closing = False  # shutdown started
        self._down = False  # streams failed, no new ones (set by shutdown or a failure)
        self._broken = False  # a write failed: the wire may end mid-frame
        self._remote_go_away = False
        self._body_stream: YamuxStream | None = None  # stream of the DATA frame being received
        self._body_flags = 0

    def __repr__(self) -> str:
        return f"<YamuxConn {self.peer_id} initiator={self._is_initiator} streams={len(self._streams)}>"

    # -- IMuxedConn --

    @property
    def is_initiator(self) -> bool:
        return self._is_initiator

    @property
    def is_established(self) -> bool:
        return self._established and not self._down

    @property
    def is_closed(self) -> bool:
        return self.event_closed.is_set()

    def get_remote_address(self) -> tuple[str, int] | None:
        result: tuple[str, int] | None = self.secured_conn.get_remote_address()
        return result

    def get_transport_addresses(self) -> list[Multiaddr]:
        result: list[Multiaddr] = self.secured_conn.get_transport_addresses()
        return result

    def get_connection_type(self) -> ConnectionType:
        result: ConnectionType = self.secured_conn.get_connection_type()
        return result

    # Deliberately no set_resource_scope(): like py-libp2p's Yamux, the swarm then hands the
    # connection's resource scope to its SwarmConn, which releases it when the connection closes.

    def rtt(self) -> float:
        """The round-trip time the last ping() measured, 0.0 before any."""
        return self._rtt

    async def start(self) -> None:
        """Run the connection (read loop and control-frame flusher) until it goes down."""
        if self.event_started.is_set():
            return
        if self._down:
            self.event_started.set()
            await self._shutdown(None)
            return
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._flush_loop)
            await nursery.start(self._read_loop)
            self._established = True
            self.event_started.set()

    async def open_stream(self) -> YamuxStream:
        if self._down or self._remote_go_away:
            raise MuxedConnUnavailable(f"connection to {self.peer_id} is closed or going away")
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise MuxedConnUnavailable(f"stream IDs to {self.peer_id} are exhausted")
        self._next_stream_id = stream_id + 2
        stream = self._new_stream(stream_id, is_initiator=True)
        self.stats.streams_opened += 1
        # Queued, not written: the stream's first write (or the flusher) carries it, in order.
        self._queue_frame(encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, stream._extra_window))
        await trio.lowlevel.checkpoint()
        if self._down:
            raise MuxedConnUnavailable(f"connection to {self.peer_id} went down")
        return stream

    async def accept_stream(self) -> YamuxStream:
        """The next stream the peer opened; MuxedConnUnavailable once the connection is closed."""
        if not self._down:
            try:
                stream = await self._accept_recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                pass
            else:
                if not self._down:
                    return stream
        raise MuxedConnUnavailable(f"connection to {self.peer_id} is closed")

    async def close(self) -> None:
        """GoAway(normal) to the peer, then close the connection; idempotent."""
        await self._shutdown(GO_AWAY_NORMAL)

    async def ping(self) -> float:
        """Round-trip time of a Yamux ping, in seconds (callers bound the wait with trio.fail_after)."""
        if self._down:
            raise MuxedConnUnavailable(f"connection to {self.peer_id} is closed")
        self._ping_id = ping_id = (self._ping_id + 1) & MAX_STREAM_ID
        done = self._pings[ping_id] = trio.Event()
        start = trio.current_time()
        self._queue_frame(encode_header(TYPE_PING, FLAG_SYN, 0, ping_id))
        try:
            await done.wait()
        finally:
            self._pings.pop(ping_id, None)
        if self._down:
            raise MuxedConnUnavailable(f"connection to {self.peer_id} closed during a ping")
        self._rtt = trio.current_time() - start
        return self._rtt

    # -- stream table --

    def _grow_window(self, stream: YamuxStream) -> int:
        """Double a busy stream's receive window (up to the maximum, within the budget); the growth."""
        target = stream._recv_target
        grow = min(target, self.settings.max_stream_window - target, self._window_budget)
        if grow <= 0:
            return 0
        self._window_budget -= grow
        stream._extra_window += grow
        stream._recv_target += grow
        return grow

    def _new_stream(self, stream_id: int, *, is_initiator: bool) -> YamuxStream:
        extra = min(self.settings.initial_stream_window - INITIAL_WINDOW, self._window_budget)
        self._window_budget -= extra
        stream = YamuxStream(self, stream_id, is_initiator=is_initiator, extra_window=extra)
        self._streams[stream_id] = stream
        if not is_initiator:
            self._inbound_streams += 1
        return stream

    def _forget(self, stream: YamuxStream) -> None:
        if self._streams.get(stream.stream_id) is not stream:
            return
        del self._streams[stream.stream_id]
        self._window_budget += stream._extra_window
        if not stream.is_initiator:
            self._inbound_streams -= 1
        if self._remote_go_away and not self._streams and not self._down and self._nursery is not None:
            self._nursery.start_soon(self._shutdown, GO_AWAY_NORMAL)

    # -- writing --

    def _queue_frame(self, frame: bytes) -> None:
        """Queue a control frame for the next write (never waits: the read loop calls this)."""
        if self._down:
            return
        self._pending += frame
        if len(self._pending) > MAX_CONTROL_BACKLOG:
            self._fail(PeerNotReading(f"{len(self._pending)} bytes of control frames queued"))
            return
        self._pending_ready.set()

    def _queue_data(self, stream_id: int, view: memoryview, *, urgent: bool = False) -> None:
        pending = self._pending
        pending += _HEADER.pack(VERSION, TYPE_DATA, 0, stream_id, len(view))
        pending += view
        if urgent:
            self._urgent = True
        self._pending_ready.set()

    def _queue_window_update(self, stream_id: int, delta: int) -> None:
        self.stats.window_updates_sent += 1
        self._queue_frame(encode_header(TYPE_WINDOW_UPDATE, 0, stream_id, delta))

    async def _write_data(self, stream: YamuxStream, view: memoryview, pos: int) -> int:
        """Write one DATA frame of ``view[pos:]`` as large as the send window allows; bytes sent."""
        async with self._write_lock:
            if stream._reset or self._down:
                raise MuxedStreamReset(f"stream {stream.stream_id} was reset")
            if stream._local_closed:  # closed by another task meanwhile: no data after our FIN
                raise MuxedStreamClosed(f"stream {stream.stream_id} is closed for writing")
            n = min(stream._send_window, len(view) - pos, MAX_FRAME_PAYLOAD)
            if n <= 0:
                return 0
            stream._send_window -= n
            header = _HEADER.pack(VERSION, TYPE_DATA, 0, stream.stream_id, n)
            if self._pending:
                frame = b"".join((self._pending, header, view[pos : pos + n]))
                self._pending.clear()
            else:
                frame = b"".join((header, view[pos : pos + n]))
            if not await self._write_locked(frame):
                raise MuxedStreamReset(f"connection to {self.peer_id} failed while writing")
        return n

    async def _flush_pending(self) -> bool:
        lock = self._write_lock
        try:
            lock.acquire_nowait()  # no scheduling round when uncontended: the write makes one
        except trio.WouldBlock:
            await lock.acquire()
        try:
            return await self._write_pending_locked()
        finally:
            lock.release()

    @property
    def has_queued(self) -> bool:
        """Frames wait for the next write (the flusher's, or :meth:`flush`)."""
        return bool(self._pending)

    async def flush(self) -> bool:
        """Write what is queued (write_nowait's messages among it) from this task now, unless a write
        holds the connection (that write takes it along); False if the connection has failed.

        For a task that queued messages it wants on the wire before it does what comes next (a
        commit's ADD_PROVIDERs before the HTTP answer): the flusher would send them at the next
        scheduling round, which may come after that."""
        return await self._flush_now()

    async def _flush_now(self) -> bool:
        """Write what is queued from this task if no write holds the connection (else that write or
        the flusher takes it along); False if the connection failed."""
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            self._pending_ready.set()
            return not self._down
        try:
            return await self._write_pending_locked()
        finally:
            self._write_lock.release()

    async def _write_pending_locked(self) -> bool:
        """Write everything queued in one secured write (caller holds the write lock)."""
        if self._down:
            return False
        if not self._pending:
            return True
        frame = bytes(self._pending)
        self._pending.clear()
        return await self._write_locked(frame)

    async def _write_locked(self, frame: bytes) -> bool:
        """One secured write (caller holds the write lock); False, and the connection failing, on error.

        Shielded from cancellation: a write cut short would leave half a frame on the wire and
        corrupt every stream. A write that stalls for WRITE_TIMEOUT means the peer is gone.
        """
        if self._broken:
            return False
        self.stats.writes += 1
        with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT) as scope:
            try:
                await self.secured_conn.write(frame)
                return True
            except Exception as exc:
                self._fail(exc, log=logging.DEBUG)
                return False
        if scope.cancelled_caught:
            self._fail(YamuxError(f"writing to {self.peer_id} stalled for {WRITE_TIMEOUT:g}s"))
        return False

    async def _flush_loop(self) -> None:
        while True:
            await self._pending_ready.wait()
            if not self._urgent:
                # One scheduling round more: what the tasks running now queue goes out in the same write.
                await trio.lowlevel.checkpoint()
            self._urgent = False
            self._pending_ready = trio.Event()
            if not await self._flush_pending():
                return

    # -- reading --

    async def _read_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        decoder = FrameDecoder()
        go_away: int | None = None
        # Noise sessions hand over every whole message received so far in one buffer.
        read_some = getattr(self.secured_conn, "read_some", None)
        read = self.secured_conn.read
        try:
            while True:
                try:
                    chunk = await (read_some() if read_some is not None else read(None))
                except Exception as exc:
                    # The secured connection ended or failed (EOF, reset, bad ciphertext): nothing to tell.
                    logger.debug("yamux: connection to %s ended: %r", self.peer_id, exc)
                    break
                if not chunk:
                    break
                for event in decoder.feed(chunk):
                    if type(event) is BodyPiece:
                        stream = self._body_stream
                        if stream is not None and not stream._reset:
                            stream._buf += event.data
                            if event.last:
                                self._end_body(stream)
                            elif len(stream._buf) >= stream._wake_at:
                                stream._wake_reader()
                    else:
                        self._on_header(event)  # type: ignore[arg-type]
        except YamuxProtocolError as exc:
            logger.warning("yamux: %s broke the protocol: %r; closing the connection", self.peer_id, exc)
            self.close_reason = exc
            go_away = GO_AWAY_PROTOCOL_ERROR
        except Exception as exc:
            logger.exception("yamux: internal error on the connection to %s; closing it", self.peer_id)
            self.close_reason = exc
            go_away = GO_AWAY_INTERNAL_ERROR
        finally:
            await self._shutdown(go_away)

    def _on_header(self, header: Header) -> None:
        type_, flags, stream_id, length = header
        self.stats.frames_in += 1
        if type_ <= TYPE_WINDOW_UPDATE:
            if flags & FLAG_SYN:
                stream = self._on_syn(stream_id)
            else:
                stream = self._streams.get(stream_id)
                if stream is None:
                    self._check_known(stream_id)
            if type_ == TYPE_DATA:
                if stream is not None:
                    if length > stream._recv_window:
                        raise ReceiveWindowExceeded(
                            f"{length} bytes on stream {stream_id} with a window of {stream._recv_window}"
                        )
                    stream._recv_window -= length
                if length:
                    self._body_stream = stream
                    self._body_flags = flags
                    return
            elif stream is not None and length:
                stream._send_window += length
                stream._wake_writer()
            if stream is not None and flags & (FLAG_FIN | FLAG_RST):
                self._apply_close_flags(stream, flags)
        elif type_ == TYPE_PING:
            if flags & FLAG_SYN:
                self._queue_frame(encode_header(TYPE_PING, FLAG_ACK, 0, length))
            elif flags & FLAG_ACK:
                done = self._pings.get(length)
                if done is not None:
                    done.set()
        else:
            self._on_go_away(length)

    def _end_body(self, stream: YamuxStream) -> None:
        self._body_stream = None
        if self._body_flags & (FLAG_FIN | FLAG_RST):
            self._apply_close_flags(stream, self._body_flags)
        elif len(stream._buf) >= stream._wake_at:
            stream._wake_reader()

    @staticmethod
    def _apply_close_flags(stream: YamuxStream, flags: int) -> None:
        if flags & FLAG_RST:
            stream._on_remote_reset()
        elif not stream._remote_closed:
            stream._on_remote_close()

    def _on_syn(self, stream_id: int) -> YamuxStream | None:
        """Register a stream the peer opens (None if refused: RST queued)."""
        if stream_id == 0 or (stream_id & 1) == (1 if self._is_initiator else 0):
            raise DuplicateStream(f"SYN for stream {stream_id}, which is not the peer's to open")
        if stream_id in self._streams:
            raise DuplicateStream(f"SYN for stream {stream_id}, which is already open")
        if stream_id > self._max_remote_stream_id:
            self._max_remote_stream_id = stream_id
        if self._down or self._inbound_streams >= self.settings.max_inbound_streams:
            self._refuse(stream_id, "too many open streams")
            return None
        stream = self._new_stream(stream_id, is_initiator=False)
        try:
            self._accept_send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._forget(stream)
            self._refuse(stream_id, "accept backlog full")
            return None
        self.stats.streams_accepted += 1
        self._queue_frame(encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, stream._extra_window))
        return stream

    def _refuse(self, stream_id: int, why: str) -> None:
        logger.info("yamux: refusing stream %d from %s: %s", stream_id, self.peer_id, why)
        self.stats.streams_refused += 1
        self._queue_frame(encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))

    def _check_known(self, stream_id: int) -> None:
        """A frame for a stream not in the table: fine if it was closed or reset since, else an error."""
        ours = (stream_id & 1) == (1 if self._is_initiator else 0)
        if stream_id == 0 or (
            stream_id >= self._next_stream_id if ours else stream_id > self._max_remote_stream_id
        ):
            raise UnknownStream(f"frame for stream {stream_id}, which was never opened")

    def _on_go_away(self, code: int) -> None:
        if code == GO_AWAY_NORMAL:
            logger.debug("yamux: %s is going away", self.peer_id)
        else:
            logger.info("yamux: %s sent GoAway with error code %d", self.peer_id, code)
            self.close_reason = RemoteGoAway(f"{self.peer_id} sent GoAway with error code {code}")
        self._remote_go_away = True
        if not self._streams and not self._down and self._nursery is not None:
            self._nursery.start_soon(self._shutdown, GO_AWAY_NORMAL)

    # -- going down --

    def _fail(self, exc: BaseException, *, log: int = logging.WARNING) -> None:
        """The connection cannot go on (a write failed or stalled, the peer does not read): take it down."""
        if self._down:
            return
        logger.log(log, "yamux: connection to %s failed: %r", self.peer_id, exc)
        if self.close_reason is None:
            self.close_reason = exc
        self._broken = True  # the wire may end mid-frame: nothing more is written, not even GoAway
        self._mark_dead()
        if self._nursery is not None:
            self._nursery.start_soon(self._shutdown, None)

    def _mark_dead(self) -> None:
        """Fail every stream and waiter now; no new streams."""
        if self._down:
            return
        self._down = True
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._on_connection_gone()
        self._accept_send.close()
        for done in self._pings.values():
            done.set()
        self._pending_ready.set()  # lets the flusher see the end

    async def _shutdown(self, go_away: int | None) -> None:
        if self._closing:
            await self.event_closed.wait()
            return
        self._closing = True
        self._mark_dead()
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            if go_away is not None and not self._broken:
                try:
                    async with self._write_lock:
                        frame = bytes(self._pending) + encode_header(TYPE_GO_AWAY, 0, 0, go_away)
                        self._pending.clear()
                        await self.secured_conn.write(frame)
                except Exception as exc:
                    logger.debug("yamux: GoAway to %s not sent: %r", self.peer_id, exc)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            try:
                await self.secured_conn.close()
            except Exception as exc:
                logger.debug("yamux: closing the connection to %s: %r", self.peer_id, exc)
        self.event_closed.set()
        if self.on_close is not None:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                try:
                    await self.on_close()
                except Exception as exc:
                    logger.warning("yamux: close hook for %s failed: %r", self.peer_id, exc)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


# --- wiring into py-libp2p -----------------------------------------------------------------------


class YamuxMuxerMultistream(MuxerMultistream):
    """py-libp2p's muxer negotiation, building ipfsreg's YamuxConn when /yamux/1.0.0 is agreed.

    (py-libp2p's MuxerMultistream.new_conn hard-codes its own Yamux class for that protocol.)
    """

    def __init__(self, settings: YamuxSettings, negotiate_timeout: int) -> None:
        super().__init__({PROTOCOL_ID: YamuxConn}, negotiate_timeout)
        self.settings = settings

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, transport_class = await self._selector.select(
            conn, conn.is_initiator, self.negotiate_timeout
        )
        if protocol == PROTOCOL_ID:
            muxed: IMuxedConn = YamuxConn(conn, peer_id, settings=self.settings)
        else:
            muxed = transport_class(conn, peer_id)
        return self._annotate_connection(muxed, conn, protocol)


def install(host: IHost, settings: YamuxSettings | None = None) -> None:
    """Make ``host`` multiplex every connection, dialled or accepted, with ipfsreg's Yamux."""
    swarm: Any = host.get_network()  # the Swarm: its upgrader is not part of INetworkService
    upgrader = swarm.upgrader
    upgrader.muxer_multistream = YamuxMuxerMultistream(
        settings or YamuxSettings(), upgrader.muxer_multistream.negotiate_timeout
    )
