"""Inbound multistream-select 1.0.0 without a read per byte, and with one reply write for lazy dialers;
and the dialer's side of lazy negotiation.

py-libp2p's responder reads every message through a varint decoder that asks the stream for one
byte at a time, and answers the header and the protocol in separate writes. Kubo opens a stream
for every bitswap message and sends its header, the protocol and the message together (lazy
negotiation), so a 200 MB transfer negotiates about 800 streams. Here a message is parsed from
what the Yamux stream has already buffered (:meth:`YamuxStream.peek`); only its bytes are consumed,
so what follows stays on the stream for the protocol handler.

The protocol is py-libp2p's (``Multiselect.negotiate``) unchanged: header, then commands until one
names a protocol we handle (echoed), ``ls`` (the protocols, one per line, in one message) or
anything else (``na``). The header reply goes out before the responder first waits for input, so
a dialer that waits for it before sending its protocol (py-libp2p's) is answered as before; when
the dialer's protocol is already buffered, header and echo leave in one write. Malformed input (no
header, a message over 1 KiB, a missing newline, bytes that are not UTF-8), end of stream or the
timeout raise ``MultiselectError``, and py-libp2p's stream handler resets the stream.

py-libp2p's own reader stays in use where the responder above is not (the security negotiation of
every connection, dialled and accepted, and outbound streams), with one change: a message's length
is checked against the same 1 KiB bound before its bytes are read. Stock, a peer's varint of any size
became one ``recv`` of that many bytes, so a peer sending garbage (a node of a private network
answering one outside it, whose bytes are ciphertext) made the dial fail with MemoryError instead
of a negotiation error.

Lazy dialing (as go-libp2p does for a protocol the peer is known to speak): ``lazy_select`` is the
header and the protocol, sent together with the first message; ``expect_selected`` then reads the
peer's header and echo off the stream, leaving what follows (the answer) for the protocol. Where
py-libp2p's dialer waits two round trips before its first message, this waits none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, IMultiselectCommunicator
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IOException
from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError, MultiselectError
from libp2p.protocol_muxer.multiselect import DEFAULT_NEGOTIATE_TIMEOUT, Multiselect
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from ipfsreg.cid import encode_varint
from ipfsreg.node.yamux import YamuxStream

HEADER = "/multistream/1.0.0"
NOT_AVAILABLE = "na"
MAX_MESSAGE = 1024  # bytes in one message, newline included (protocol names are far shorter)
_PEEK = MAX_MESSAGE + 2  # a whole message with its varint prefix


def encode_message(text: str) -> bytes:
    """A multistream message: varint length, the text, a newline."""
    body = text.encode() + b"\n"
    return encode_varint(len(body)) + body


def parse_message(data: bytes) -> tuple[str, int] | None:
    """The first message of ``data`` and its size on the wire, or None while it is incomplete.

    MultiselectError for a message longer than MAX_MESSAGE, without its newline, or not UTF-8.
    """
    length = 0
    for pos in range(min(len(data), 2)):  # MAX_MESSAGE needs at most a 2-byte varint
        byte = data[pos]
        length |= (byte & 0x7F) << (7 * pos)
        if byte & 0x80:
            continue
        end = pos + 1 + length
        if not 0 < length <= MAX_MESSAGE:
            raise MultiselectError(f"multistream message of {length} bytes")
        if len(data) < end:
            return None
        body = data[pos + 1 : end]
        if body[-1:] != b"\n":
            raise MultiselectError(f"multistream message without its newline: {bytes(body)!r}")
        try:
            return body[:-1].decode(), end
        except UnicodeDecodeError:
            raise MultiselectError(f"multistream message is not UTF-8: {bytes(body)!r}") from None
    if len(data) >= 2:
        raise MultiselectError("multistream message length over two bytes")
    return None


async def read_message(
    stream: YamuxStream, *, before_wait: Callable[[], Awaitable[None]] | None = None
) -> str:
    """The next multistream message on ``stream``, parsed from what it has buffered; only its bytes
    are consumed. ``before_wait`` runs each time more bytes must be waited for.

    MultiselectError for a malformed message (see :func:`parse_message`) or a stream that ends first.
    """
    while True:
        buffered = stream.peek(_PEEK)
        parsed = parse_message(buffered)
        if parsed is not None:
            text, size = parsed
            await stream.read(size)  # exactly the message: it is buffered
            return text
        if before_wait is not None:
            await before_wait()
        try:
            # What arrived meanwhile (the rest, and the peer's FIN) counts: parse it first.
            await stream.wait_readable(len(buffered))
        except Exception as exc:
            raise MultiselectError(f"stream ended during protocol negotiation: {exc!r}") from exc


class _Responder:
    """One inbound negotiation over a YamuxStream (through its NetStream for writes)."""

    def __init__(self, net_stream: Any, stream: YamuxStream) -> None:
        self.net_stream = net_stream
        self.stream = stream
        self.reply = b""  # answers not written yet
        self.header_sent = False

    async def next_message(self) -> str:
        return await read_message(self.stream, before_wait=self.flush)  # a dialer may wait for our header

    def answer(self, text: str) -> None:
        if not self.header_sent:
            self.reply += encode_message(HEADER)
            self.header_sent = True
        self.reply += encode_message(text)

    async def flush(self) -> None:
        if not self.header_sent:
            self.reply = encode_message(HEADER) + self.reply
            self.header_sent = True
        if self.reply:
            reply, self.reply = self.reply, b""
            try:
                await self.net_stream.write(reply)
            except Exception as exc:
                raise MultiselectError(f"cannot answer the protocol negotiation: {exc!r}") from exc


async def _read_bounded(communicator: MultiselectCommunicator) -> str:
    """py-libp2p's ``MultiselectCommunicator.read`` with the message length bounded by MAX_MESSAGE."""
    try:
        body = await read_varint_prefixed_bytes_limited(communicator.read_writer, MAX_MESSAGE)
        if body[-1:] != b"\n":
            raise ParseError(f"multistream message without its newline: {body[:64]!r}")
        return body[:-1].decode()
    except (ParseError, IOException, UnicodeDecodeError) as error:
        raise MultiselectCommunicatorError(f"fail to read from multiselect communicator: {error}") from error


def lazy_select(protocol: str) -> bytes:
    """What a lazy dialer sends ahead of its first message: the header and ``protocol``."""
    return encode_message(HEADER) + encode_message(protocol)


async def expect_selected(stream: YamuxStream, protocol: str) -> None:
    """Read the peer's answers to ``lazy_select(protocol)``: its header, then ``protocol`` echoed.

    MultiselectError if it refuses the protocol (``na``), answers anything else, or the stream ends.
    """
    for expected in (HEADER, protocol):
        text = await read_message(stream)
        if text != expected:
            raise MultiselectError(f"peer answered {text!r} to {expected!r}")


def install(host: IHost) -> None:
    """Negotiate the host's inbound streams with the responder above (other muxers: py-libp2p's), and
    bound every message py-libp2p's own reader takes (:func:`_read_bounded`)."""
    MultiselectCommunicator.read = _read_bounded  # type: ignore[method-assign,assignment]
    multiselect = host.get_mux()
    if not isinstance(multiselect, Multiselect):
        return
    stock = multiselect.negotiate

    async def negotiate(
        communicator: IMultiselectCommunicator, negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT
    ) -> tuple[TProtocol | None, StreamHandlerFn | None]:
        net_stream = getattr(communicator, "read_writer", None)
        stream = getattr(net_stream, "muxed_stream", None)
        if not isinstance(stream, YamuxStream):
            return await stock(communicator, negotiate_timeout)
        responder = _Responder(net_stream, stream)
        try:
            with trio.fail_after(negotiate_timeout):
                header = await responder.next_message()
                if header != HEADER:
                    raise MultiselectError(f"multistream header expected, got {header!r}")
                while True:
                    command = await responder.next_message()
                    handlers = multiselect.handlers
                    if command == "ls":
                        responder.answer("\n".join(p for p in handlers if p is not None))
                    elif command and TProtocol(command) in handlers:
                        responder.answer(command)
                        await responder.flush()
                        return TProtocol(command), handlers[TProtocol(command)]
                    else:
                        responder.answer(NOT_AVAILABLE)
        except trio.TooSlowError:
            raise MultiselectError("protocol negotiation timed out") from None

    multiselect.negotiate = negotiate  # type: ignore[method-assign]
