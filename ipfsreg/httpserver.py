"""hypercorn's per-connection TCP server, hardened: a failure inside one connection ends that connection only.

:func:`install` puts :class:`GuardedTCPServer` in place of hypercorn's trio ``TCPServer`` for every
hypercorn server of the process (the registry port and the control API). What it changes:

- A failure inside a connection (an HTTP state hypercorn does not expect, a send racing a close, an
  error escaping the app) is logged once, at warning, with the peer address, and ends that
  connection. hypercorn's own server lets it escape into the server's nursery, which stops the
  whole server (and with it the process).
- Lingering close. When the server closes a connection while the client is still sending (an early
  answer to a request whose body was not read, a request pipelined behind a ``Connection: close``
  response), closing a socket that holds unread data makes the kernel answer with a reset, and the
  client then loses the response it has not read yet. The server half-closes instead (FIN after the
  response), reads and drops what still arrives until the client closes too (bounded by
  :data:`LINGER_SECONDS`, :data:`LINGER_IDLE_SECONDS` and :data:`LINGER_BYTES`), then closes.
- Large socket reads (:data:`SOCKET_READ_BYTES`), gathered while a body streams in.
- Zero-copy responses: the ASGI ``http.response.zerocopysend`` extension (a file descriptor, an offset
  and a count, sent with ``os.sendfile``: the kernel moves the bytes from the page cache to the socket,
  Python never holds them), offered to apps on plain-TCP HTTP/1.x connections of a server that runs a
  file sender (ipfsreg/filesender.py: one thread sends the files of every connection, beside the
  event loop; ``serve_registry`` runs one). An addition of ours: a
  message may carry ``extents``, a sequence of ``(file, offset, count)`` sent in order, in place of
  ``file``/``offset``/``count`` (one message, one pass through the ASGI and HTTP layers, for many
  pieces of files: a blob's leaves). TLS connections do not
  offer it (the app sends bytes as usual); should the kernel refuse sendfile for a file, its bytes are
  read and sent instead.

For ASGI code that answers without reading the request body (auth refusals, /metrics):
:func:`drain_body` reads the rest away, bounded, so the connection can be kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from math import inf
from typing import Any, Final

import h11
import hypercorn.protocol.events as stream_events
import hypercorn.trio.run as hypercorn_run
import hypercorn.trio.task_group as hypercorn_task_group
import hypercorn.trio.tcp_server as hypercorn_tcp
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.utils import UnexpectedMessageError, suppress_body

from ipfsreg import filesender
from ipfsreg.excgroups import describe
from ipfsreg.filesender import FileExtent, FileShorterThanSent, SenderClosed, SendfileUnsupported

log = logging.getLogger("ipfsreg.http")

# hypercorn reads a socket 64 KiB at a time and every read becomes one body event through h11,
# hypercorn and Quart: pushes then spend more on those events than on hashing. Reads of up to
# 512 KiB (a read returns only what the kernel holds) cut the main thread's work per upload by
# ~30%; 1 MiB reads gained little more and cost 1 MiB of memory per pushing connection.
SOCKET_READ_BYTES: Final = 512 * 1024

# While a large body streams in, each read pays a fixed cost on the event loop (h11, hypercorn's
# protocol, the app's body queue: ~0.2 ms) however little it returns, and a fast loop reads the
# socket as soon as a few dozen KiB have arrived. After a read of at least GATHER_AFTER_BYTES
# (a body is streaming), the reader waits GATHER_SECONDS before reading again, so the kernel
# gathers a few hundred KiB per read (the socket buffer holds megabytes; the sender never stalls).
GATHER_AFTER_BYTES: Final = 32 * 1024
GATHER_SECONDS: Final = 0.002

# How long, and how much, a closing connection keeps reading what the client still sends. Most
# clients (httpx, requests, curl) send a whole body before they read the answer, so the linger must
# outlast the body's upload; as nginx's lingering close: at most LINGER_SECONDS in all, and at most
# LINGER_IDLE_SECONDS without data. Past LINGER_BYTES the connection is simply closed.
LINGER_SECONDS: Final = 30.0
LINGER_IDLE_SECONDS: Final = 5.0
LINGER_BYTES: Final = 64 * 1024 * 1024

# How much of a body a handler left unread is read away before an early answer goes out, so the
# connection can be kept (Go's net/http reads up to 256 KiB the same way); past it, or if the body
# has not arrived within the time, the answer says "Connection: close".
EARLY_DRAIN_BYTES: Final = 256 * 1024
EARLY_DRAIN_SECONDS: Final = 2.0

_SEND_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)

ZEROCOPY_SEND: Final = "http.response.zerocopysend"
"""The ASGI extension (and message type) of zero-copy response bodies."""

_FALLBACK_READ_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class FileBody(stream_events.Event):
    """Stream event: body bytes that lie in files, ``extents`` in order (app to protocol)."""

    extents: tuple[FileExtent, ...]
    count: int


@dataclass(frozen=True)
class FileData(Event):
    """Server event: send the bytes of ``extents`` as they are, in order (protocol to socket)."""

    extents: tuple[FileExtent, ...]


class _FilePlaceholder:
    """Where h11 puts a body's bytes in its output (``send_with_data_passthrough``): only the length."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def peer_name(stream: Any) -> str:
    """``host:port`` of the client at the other end of ``stream`` (a socket or TLS stream)."""
    transport = getattr(stream, "transport_stream", stream)
    sock = getattr(transport, "socket", None)
    try:
        address = sock.getpeername() if sock is not None else None
    except OSError:
        address = None
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "unknown peer"


def _split_failure(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(what must propagate: cancellation, interpreter exits; the failure to log) of ``exc``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((trio.Cancelled, KeyboardInterrupt, SystemExit))
    if isinstance(exc, Exception):
        return None, exc
    return exc, None


class GuardedTCPServer(hypercorn_tcp.TCPServer):
    """One HTTP connection: hypercorn's server, but failures stay inside it and closes linger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer = peer_name(self.stream)
        self._write_closed = False
        self._reading = False
        self._linger_until: float | None = None
        self._discarded = 0
        self._read_scope: trio.CancelScope | None = None

    async def run(self) -> None:
        try:
            await super().run()
        except BaseException as exc:
            keep, failure = _split_failure(exc)
            if failure is not None:
                log.warning("connection from %s ended by an error: %s", self._peer, describe(failure))
                log.debug("connection from %s: traceback", self._peer, exc_info=failure)
            if keep is not None:
                raise keep from None

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, FileData):
            if self._write_closed:
                return
            failed = False
            async with self.send_lock:
                try:
                    await self._send_files(event.extents)
                except trio.Cancelled:
                    # The body is cut short (the server is stopping): nothing more goes out on it.
                    self._write_closed = True
                    raise
                except (*_SEND_ERRORS, BrokenPipeError, ConnectionResetError, SenderClosed):
                    failed = True
            if failed:
                await self.protocol.handle(Closed())
        elif isinstance(event, RawData):
            if self._write_closed:
                return  # the connection is closing: nothing more can be sent on it
            failed = False
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True):
                        await self.stream.send_all(event.data)
                except _SEND_ERRORS:
                    failed = True
            if failed:
                await self.protocol.handle(Closed())
        else:
            await super().protocol_send(event)

    async def _send_files(self, extents: tuple[FileExtent, ...]) -> None:
        """The bytes of ``extents``, in order: by the server's file sender thread (``os.sendfile``
        on plain TCP); read and sent where the kernel refuses sendfile for a file."""
        sender = filesender.current()
        sock = getattr(self.stream, "socket", None)
        if sender is None or sock is None:
            # Only a server that runs a file sender offers the extension (:func:`_spawn_app`).
            raise RuntimeError(f"{ZEROCOPY_SEND} without a file sender")
        try:
            await sender.send(sock, extents)
        except SendfileUnsupported as refused:
            for extent in refused.remaining:
                await self._send_file_copied(*extent)

    async def _send_file_copied(self, file: int, offset: int, count: int) -> None:
        while count:
            data = os.pread(file, min(count, _FALLBACK_READ_BYTES), offset)
            if not data:
                raise FileShorterThanSent(f"file ends before byte {offset + count} of a response body")
            await self.stream.send_all(data)
            offset += len(data)
            count -= len(data)

    async def _read_data(self) -> None:
        self._reading = True
        try:
            while True:
                now = trio.current_time()
                deadline = now + (self.config.read_timeout or inf)
                if self._linger_until is not None:
                    deadline = min(deadline, self._linger_until, now + LINGER_IDLE_SECONDS)
                with trio.CancelScope(deadline=deadline) as self._read_scope:
                    try:
                        data = await self.stream.receive_some(hypercorn_tcp.MAX_RECV)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        break
                if self._read_scope.cancelled_caught:
                    break  # read timeout, or the lingering close is over
                if self._linger_until is not None:
                    self._discarded += len(data)
                    if not data or self._discarded > LINGER_BYTES:
                        break
                    continue  # the connection is closing: what the client still sends is dropped
                # The protocol may wait here on the app's body queue (backpressure: no deadline);
                # once the connection is closing, the wait is bounded by the linger.
                with trio.CancelScope() as self._read_scope:
                    await self.protocol.handle(RawData(bytes(data)))
                if not data:
                    break
                if GATHER_AFTER_BYTES <= len(data) < hypercorn_tcp.MAX_RECV // 2:
                    await trio.sleep(GATHER_SECONDS)
        finally:
            self._reading = False
            self._read_scope = None
        await self.protocol.handle(Closed())

    async def _close(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            with trio.CancelScope(shield=True):
                await self._send_eof()
        if self._reading:
            # The reader drops what still arrives until the client closes or the linger ends, then
            # the connection closes (run's last step).
            if self._linger_until is None:
                self._linger_until = trio.current_time() + LINGER_SECONDS
            if self._read_scope is not None:
                # Also bounds a protocol step that waits on an app that is gone (its full queue).
                idle = trio.current_time() + LINGER_IDLE_SECONDS
                self._read_scope.deadline = min(self._read_scope.deadline, self._linger_until, idle)
            return
        await self.stream.aclose()

    async def _send_eof(self) -> None:
        # Under the send lock: an EOF beside a send_all in another task raises BusyResourceError.
        owner = self.send_lock.statistics().owner
        try:
            if owner is trio.lowlevel.current_task():
                await self.stream.send_eof()
            else:
                async with self.send_lock:
                    await self.stream.send_eof()
        except (*_SEND_ERRORS, AttributeError):
            pass  # already gone, or TLS (no half-close: the close itself follows the linger)


_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


async def _spawn_app(
    self: hypercorn_task_group.TaskGroup,
    app: Any,
    config: Config,
    scope: Any,
    send: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Awaitable[None]]:
    """hypercorn's ``TaskGroup.spawn_app``, but events for an app that has finished are dropped.

    hypercorn queues request events (body, disconnect) for the app in a bounded channel and waits
    when it is full. An app that answered without reading its body left that channel full: the end
    of its response (which queues a disconnect from inside the app's last send) waited for good,
    and so did the connection's reader. Here the disconnect never waits (it replaces queued body
    events nobody needs any more), and the channel is closed when the app returns, so every
    pending and later event for it is dropped at once.
    """
    plain_http1 = scope.get("scheme") == "http" and scope.get("http_version") in ("1.0", "1.1")
    if scope.get("type") == "http" and plain_http1 and filesender.current() is not None:
        # Plain HTTP/1.x on a server with a file sender: :class:`GuardedTCPServer` sends the files.
        scope.setdefault("extensions", {})[ZEROCOPY_SEND] = {}
    send_channel, receive_channel = trio.open_memory_channel[Any](config.max_app_queue_size)
    assert self._nursery is not None
    self._nursery.start_soon(_run_app, app, config, scope, receive_channel, send)

    async def put(message: Any) -> None:
        # The app has finished when its channel is closed: nobody reads this.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            if message.get("type") != "http.disconnect":
                await send_channel.send(message)
                return
            # The request is over (the response went out, or the client left), maybe from inside
            # the app's own last send: never wait here. Body events still queued are of no use
            # to anyone now; they make room for the disconnect.
            while True:
                try:
                    send_channel.send_nowait(message)
                    return
                except trio.WouldBlock:
                    try:
                        receive_channel.receive_nowait()
                    except trio.WouldBlock:
                        return  # an unbuffered channel and no app waiting on it: nobody to tell

    return put


async def _run_app(
    app: Any,
    config: Config,
    scope: Any,
    receive_channel: trio.MemoryReceiveChannel[Any],
    send: Callable[[Any], Awaitable[None]],
) -> None:
    try:
        await app(scope, receive_channel.receive, send, trio.to_thread.run_sync, trio.from_thread.run)
    except BaseException as exc:
        keep, failure = _split_failure(exc)
        if failure is not None:
            client = scope.get("client") or ("-", 0)
            log.warning(
                "request %s %s from %s:%s failed in the app: %s",
                scope.get("method", "-"),
                str(scope.get("path", ""))[:200],
                client[0],
                client[1],
                describe(failure),
            )
            log.debug("app failure: traceback", exc_info=failure)
        if keep is not None:
            raise keep from None
    finally:
        receive_channel.close()
        await send(None)


class ClosingConnection(h11.Connection):
    """An h11 server connection that lets the response in progress finish when the client sends
    more after a request the server is going to close the connection on (and that puts the standard
    reason phrase in status lines).

    Once a response says ``Connection: close``, h11 takes any further byte from the client (the rest
    of an unread body, a pipelined request) as a protocol error, and hypercorn then closes at once,
    cutting off the response it is still sending. Here those bytes are dropped unparsed (the server
    reads on, dropping, until the response is out; then it closes, lingering).
    """

    def send_with_data_passthrough(self, event: h11.Event) -> list[bytes] | None:
        # hypercorn sends no reason phrase ("HTTP/1.1 200 "), which some clients and proxies trip
        # over: the standard one goes in.
        response: Any = event
        if type(event) in (h11.Response, h11.InformationalResponse) and not response.reason:
            phrase = _REASONS.get(response.status_code, b"")
            if phrase:
                event = type(response)(
                    status_code=response.status_code,
                    headers=list(response.headers.raw_items()),
                    http_version=response.http_version,
                    reason=phrase,
                )
        return super().send_with_data_passthrough(event)

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        buffer = self._receive_buffer
        if self.their_state is h11.MUST_CLOSE and len(buffer):
            buffer.maybe_extract_at_most(len(buffer))
            return h11.NEED_DATA
        return super().next_event()


_original_app_send = HTTPStream.app_send
_original_stream_send = H11Protocol.stream_send


async def _app_send(self: HTTPStream, message: Any) -> None:
    """hypercorn's ``HTTPStream.app_send``, plus ``http.response.zerocopysend`` messages."""
    if message is None or message.get("type") != ZEROCOPY_SEND:
        await _original_app_send(self, message)
        return
    if self.state != ASGIHTTPState.RESPONSE:
        raise UnexpectedMessageError(self.state, ZEROCOPY_SEND)
    extents = message.get("extents")
    if extents is not None:
        extents = tuple((int(fd), int(offset), int(count)) for fd, offset, count in extents if count)
        count = sum(extent[2] for extent in extents)
        if count and not suppress_body(self.scope["method"], int(self.response["status"])):
            await self.send(FileBody(stream_id=self.stream_id, extents=extents, count=count))
    else:
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        count = message.get("count")
        advance = offset is None  # the ASGI spec: no offset means the file's position, which moves on
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if count and not suppress_body(self.scope["method"], int(self.response["status"])):
            await self.send(FileBody(stream_id=self.stream_id, extents=((fd, offset, count),), count=count))
        if advance:
            os.lseek(fd, offset + count, os.SEEK_SET)
    if not message.get("more_body", False):
        if self.response.get("trailers", False):
            self.state = ASGIHTTPState.TRAILERS
        else:
            await self._send_closed()


async def _stream_send(self: H11Protocol, event: stream_events.Event) -> None:
    """hypercorn's ``H11Protocol.stream_send``, plus :class:`FileBody`: h11 frames the body (it only
    needs the length) and the bytes go to the server as a :class:`FileData`."""
    if not isinstance(event, FileBody):
        await _original_stream_send(self, event)
        return
    placeholder = _FilePlaceholder(event.count)
    connection = self.connection
    if not isinstance(connection, h11.Connection):
        raise TypeError(f"{ZEROCOPY_SEND} on a websocket connection")
    try:
        parts = connection.send_with_data_passthrough(h11.Data(data=placeholder))  # type: ignore[arg-type]
    except h11.LocalProtocolError:
        if connection.their_state != h11.ERROR:
            raise
        return
    for part in parts or ():
        if part is placeholder:  # type: ignore[comparison-overlap]
            await self.send(FileData(extents=event.extents))
        else:
            await self.send(RawData(data=bytes(part)))


_installed = False


def install() -> None:
    """Make hypercorn's trio servers in this process use :class:`GuardedTCPServer`, an app runner
    that drops events for a finished app (:func:`_spawn_app`), zero-copy response bodies
    (:data:`ZEROCOPY_SEND`) and, for HTTP/1.1, :class:`ClosingConnection` (or a subclass another
    module put there). Idempotent."""
    global _installed
    if hypercorn_tcp.MAX_RECV < SOCKET_READ_BYTES:
        hypercorn_tcp.MAX_RECV = SOCKET_READ_BYTES
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined]
    if _installed:
        return
    hypercorn_task_group.TaskGroup.spawn_app = _spawn_app  # type: ignore[method-assign]
    HTTPStream.app_send = _app_send  # type: ignore[method-assign]
    H11Protocol.stream_send = _stream_send  # type: ignore[method-assign]
    original = H11Protocol.__init__

    def __init__(self: H11Protocol, app: Any, config: Config, *args: Any, **kwargs: Any) -> None:
        original(self, app, config, *args, **kwargs)
        if type(self.connection) is h11.Connection:
            self.connection = ClosingConnection(
                h11.SERVER, max_incomplete_event_size=config.h11_max_incomplete_size
            )

    H11Protocol.__init__ = __init__  # type: ignore[method-assign]
    _installed = True


USER_SCOPE_KEY: Final = "ipfsreg.user"
"""ASGI scope key where the auth middleware puts the authenticated user's name (for per-user limits)."""

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class TrackedReceive:
    """An ASGI ``receive`` that remembers whether the request body has been read to its end."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.body_done = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or (
            message["type"] == "http.request" and not message.get("more_body", False)
        ):
            self.body_done = True
        return message


def announces_body(scope: MutableMapping[str, Any]) -> bool:
    """Whether the request carries a body (a non-zero Content-Length, or chunked)."""
    length = b""
    chunked = False
    for key, value in scope.get("headers", ()):
        name = bytes(key).lower()
        if name == b"content-length":
            length = bytes(value).strip()
        elif name == b"transfer-encoding":
            chunked = chunked or b"chunked" in bytes(value).lower()
    return (bool(length) and length != b"0") or chunked


async def drain_body(
    scope: MutableMapping[str, Any],
    receive: Receive,
    *,
    limit: int = EARLY_DRAIN_BYTES,
    seconds: float = EARLY_DRAIN_SECONDS,
) -> bool:
    """Read and drop what is left of the request body: True when the body is then read whole (or
    there is none), False past ``limit`` bytes or ``seconds``, at once when a Content-Length
    beyond ``limit`` says so, or when the client went away. A :class:`TrackedReceive` tells
    whether the body was already read; another ``receive`` is taken as not read yet."""
    if isinstance(receive, TrackedReceive) and receive.body_done:
        return True
    if not announces_body(scope):
        return True
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == b"content-length":
            text = bytes(value).strip()
            if text.isdigit() and int(text) > limit:
                return False
    received = 0
    with trio.move_on_after(seconds):
        while received <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            if message["type"] != "http.request":
                continue
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
    return False


_SECRET_HEADERS: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})


def loggable_headers(scope: MutableMapping[str, Any]) -> str:
    """The request headers as one log string, credentials redacted (the scheme of an
    Authorization header is kept: ``Basic <redacted>``)."""
    parts: list[str] = []
    for key, value in scope.get("headers", ()):
        name = bytes(key).lower()
        text = bytes(value).decode("latin-1")
        if name in _SECRET_HEADERS:
            scheme, sep, _ = text.partition(" ")
            text = f"{scheme} <redacted>" if sep and name != b"cookie" else "<redacted>"
        parts.append(f"{name.decode('latin-1')}: {text}")
    return "; ".join(parts)
