"""Fewer, larger request-body events: consecutive h11 ``Data`` events are handed on as one.

A client streaming a blob with chunked transfer encoding (skopeo, like Go's net/http, writes
32 KiB chunks) makes h11 emit one event per chunk, and each event then crosses hypercorn's
stream, a channel to the ASGI app and the app's receive loop: on a push that per-event work
costs the event loop more than parsing. :class:`CoalescingConnection` parses ahead while the
following events are body data already in the receive buffer and returns them joined (up to
``COALESCE_BYTES``); the first other event met while looking ahead is returned by the next call,
so the event sequence is unchanged but for the merging.

Chunked bodies take a fast path: while the peer is sending body data, chunk headers that are
plain hex sizes are parsed straight off h11's receive buffer (keeping h11's ``ChunkedReader``
state exactly as h11 would), so a 32 KiB chunk costs a ``find`` and a slice instead of two trips
through h11's reader and state machine. Anything else (chunk extensions, the last chunk and its
trailer, a malformed header or footer) is left to h11, which parses or rejects it as usual.

:func:`install` makes hypercorn's HTTP/1.1 protocol use it for servers whose config carries
``coalesce_body_events = True`` (set by :func:`ipfsreg.registry.app.hypercorn_config`); other
servers in the process keep plain h11.
"""

from __future__ import annotations

from typing import Any, Final

import h11
from h11._readers import ChunkedReader
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol

from ipfsreg.httpserver import ClosingConnection

COALESCE_BYTES: Final = 256 * 1024
_MAX_FAST_HEADER: Final = 16  # hex digits of a chunk size the fast path parses itself
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# The fast path keeps h11's private reader and buffer state; it stays off if those ever change.
_READER_STATE: Final = ("_bytes_in_chunk", "_bytes_to_discard", "_reading_trailer")
_BUFFER_STATE: Final = ("_data", "_next_line_search", "_multiple_lines_search")
_FAST_PATH: Final = all(hasattr(ChunkedReader(), name) for name in _READER_STATE) and all(
    hasattr(h11.Connection(h11.SERVER)._receive_buffer, name) for name in _BUFFER_STATE
)
CONFIG_FLAG: Final = "coalesce_body_events"

_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class CoalescingConnection(ClosingConnection):
    """An h11 server connection whose consecutive body ``Data`` events come out as one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: _Next | None = None
        self._held_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> _Next:
        if self._held_error is not None:
            error, self._held_error = self._held_error, None
            raise error
        if self._held is not None:
            held, self._held = self._held, None
            return held
        first: h11.Data | None = None
        fast = self._fast_chunks(COALESCE_BYTES)
        if fast:
            parts: list[bytes] = [fast]
        else:
            event = super().next_event()
            if type(event) is not h11.Data:
                return event
            first = event
            parts = [event.data]
        size = len(parts[0])
        while size < COALESCE_BYTES:
            fast = self._fast_chunks(COALESCE_BYTES - size)
            if fast:
                parts.append(fast)
                size += len(fast)
                continue
            try:
                following = super().next_event()
            except h11.RemoteProtocolError as exc:
                self._held_error = exc  # the data parsed before it still goes out first
                break
            if type(following) is h11.Data:
                parts.append(following.data)
                size += len(following.data)
                continue
            # NEED_DATA and PAUSED come back on the next call by themselves (no state changed).
            if following is not h11.NEED_DATA and following is not h11.PAUSED:
                self._held = following
            break
        if first is not None and len(parts) == 1:
            return first
        return h11.Data(data=parts[0] if len(parts) == 1 else b"".join(parts))

    def _fast_chunks(self, limit: int) -> bytes | None:
        """Body bytes of whole or partial chunks at the head of the receive buffer (up to about
        ``limit``), consumed as h11's ChunkedReader would; None when h11 must take the next step."""
        reader = self._reader
        if not _FAST_PATH or type(reader) is not ChunkedReader or self.their_state is not h11.SEND_BODY:
            return None
        if reader._reading_trailer:
            return None
        buffer = self._receive_buffer
        data = buffer._data
        end = len(data)
        pos = 0
        spans: list[tuple[int, int]] = []
        taken = 0
        while taken < limit:
            if reader._bytes_to_discard:
                footer = reader._bytes_to_discard
                if end - pos < len(footer) or data[pos : pos + len(footer)] != footer:
                    break  # partial or malformed footer: h11 waits for it or reports it
                pos += len(footer)
                reader._bytes_to_discard = b""
            if reader._bytes_in_chunk == 0:
                eol = data.find(b"\r\n", pos, pos + _MAX_FAST_HEADER + 2)
                if eol <= pos or not _HEX.issuperset(data[pos:eol]):
                    break  # incomplete, extended or malformed header: h11's turn
                chunk = int(data[pos:eol], 16)
                if chunk == 0:
                    break  # the last chunk: h11 reads the trailer and ends the message
                reader._bytes_in_chunk = chunk
                pos = eol + 2
            take = min(reader._bytes_in_chunk, end - pos)
            if take <= 0:
                break
            spans.append((pos, pos + take))
            pos += take
            taken += take
            reader._bytes_in_chunk -= take
            if reader._bytes_in_chunk == 0:
                reader._bytes_to_discard = b"\r\n"
        if pos == 0:
            return None
        with memoryview(data) as view:
            out = b"".join(view[a:b] for a, b in spans)
        del data[:pos]
        buffer._next_line_search = 0
        buffer._multiple_lines_search = 0
        return out or None

    def start_next_cycle(self) -> None:
        # Only reachable with both sides DONE: a held event (the old request's EndOfMessage, when
        # the response went out before the body was read) belongs to the finished cycle.
        super().start_next_cycle()
        self._held = None


_installed = False


def install() -> None:
    """Make hypercorn's HTTP/1.1 protocol coalesce body events for configs that ask for it."""
    global _installed
    if _installed:
        return
    original = H11Protocol.__init__

    def __init__(self: H11Protocol, app: Any, config: Config, *args: Any, **kwargs: Any) -> None:
        original(self, app, config, *args, **kwargs)
        if getattr(config, CONFIG_FLAG, False):
            self.connection = CoalescingConnection(
                h11.SERVER, max_incomplete_event_size=config.h11_max_incomplete_size
            )

    H11Protocol.__init__ = __init__  # type: ignore[method-assign]
    _installed = True
