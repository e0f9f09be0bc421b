"""Fewer, larger request-body events: consecutive h11 ``Data`` events are handed on as one.

A client streaming a blob with chunked transfer encoding (skopeo, like Go's net/http, writes
32 KiB chunks) makes h11 emit one event per chunk, and each event then crosses hypercorn's
stream, a channel to the ASGI app and the app's receive loop: on a push that per-event work
costs the event loop more than parsing. :class:`CoalescingConnection` parses ahead while the
following events are body data already in the receive buffer and returns them joined (up to
``COALESCE_BYTES``); the first other event met while looking ahead is returned by the next call,
so the event sequence is unchanged but for the merging.

:func:`install` makes hypercorn's HTTP/1.1 protocol use it for servers whose config carries
``coalesce_body_events = True`` (set by :func:`ipfsreg.registry.app.hypercorn_config`); other
servers in the process keep plain h11.
"""

from __future__ import annotations

from typing import Any, Final

import h11
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol

COALESCE_BYTES: Final = 512 * 1024
CONFIG_FLAG: Final = "coalesce_body_events"

_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class CoalescingConnection(h11.Connection):
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
        event = super().next_event()
        if type(event) is not h11.Data:
            return event
        parts = [event.data]
        size = len(event.data)
        while size < COALESCE_BYTES:
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
        if len(parts) == 1:
            return event
        return h11.Data(data=b"".join(parts))

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
