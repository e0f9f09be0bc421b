"""Inbound multistream-select: the message codec and the responder, driven over raw Yamux streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.protocol_muxer.exceptions import MultiselectError
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamReset

from ipfsreg.node import multistream
from ipfsreg.node.bitswap.message import PROTOCOLS
from ipfsreg.node.multistream import HEADER, MAX_MESSAGE, encode_message, parse_message
from ipfsreg.node.node import Node
from ipfsreg.node.testing import Nodes
from ipfsreg.node.yamux import YamuxStream

ECHO = "/ipfsreg-test/echo/1.0.0"

# --- codec -----------------------------------------------------------------------------------


def test_message_is_varint_length_text_and_newline() -> None:
    assert encode_message("na") == b"\x03na\n"
    assert encode_message(HEADER) == bytes([len(HEADER) + 1]) + HEADER.encode() + b"\n"
    long = "x" * 200
    assert encode_message(long)[:2] == bytes([(201 & 0x7F) | 0x80, 201 >> 7])


def test_parse_returns_the_first_message_and_its_wire_size() -> None:
    data = encode_message(HEADER) + encode_message("/ipfs/bitswap/1.2.0") + b"payload"
    text, size = parse_message(data)  # type: ignore[misc]
    assert (text, size) == (HEADER, len(encode_message(HEADER)))
    assert parse_message(data[size:]) == ("/ipfs/bitswap/1.2.0", len(encode_message("/ipfs/bitswap/1.2.0")))
    assert parse_message(encode_message("x" * 500)) == ("x" * 500, 503)  # two-byte length


@pytest.mark.parametrize("cut", [0, 1, 5, len(encode_message(HEADER)) - 1])
def test_parse_waits_for_an_incomplete_message(cut: int) -> None:
    assert parse_message(encode_message(HEADER)[:cut]) is None
    assert parse_message(encode_message("x" * 500)[:1]) is None  # half of a two-byte length


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",  # empty message
        encode_message("x" * MAX_MESSAGE),  # one byte over: the newline
        b"\xff\xff\x01",  # length over two bytes
        b"\x03na!",  # no newline
        b"\x03\xff\xfe\n",  # not UTF-8
    ],
    ids=["empty", "too-long", "long-varint", "no-newline", "not-utf8"],
)
def test_parse_refuses_malformed_messages(data: bytes) -> None:
    with pytest.raises(MultiselectError):
        parse_message(data)


# --- responder -------------------------------------------------------------------------------


class Echo:
    """A protocol handler that records what each stream carried after negotiation."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done = trio.Event()

    async def handle(self, stream: object) -> None:
        chunks = []
        while True:
            try:
                chunks.append(await stream.read())  # type: ignore[attr-defined]
            except StreamEOF:
                break
        self.received.append(b"".join(chunks))
        await stream.close()  # type: ignore[attr-defined]
        self.done.set()


async def _raw_stream(nodes: Nodes) -> tuple[YamuxStream, Node, Echo]:
    """A Yamux stream from a fresh node to a node serving ECHO, opened without any negotiation."""
    server = await nodes.start()
    echo = Echo()
    server.host.set_stream_handler(TProtocol(ECHO), echo.handle)
    client = await nodes.start()
    await client.connect(server.listen_addrs()[0])
    conn = client.host.get_network().connections[server.identity.peer_id][0]
    stream = await conn.muxed_conn.open_stream()  # type: ignore[attr-defined]
    assert isinstance(stream, YamuxStream)
    return stream, server, echo


async def _messages(stream: YamuxStream, count: int) -> list[str]:
    """The next ``count`` messages on ``stream``; also checks they came in as few reads as possible."""
    buffer = b""
    messages: list[str] = []
    with trio.fail_after(5):
        while len(messages) < count:
            buffer += await stream.read()
            while (parsed := parse_message(buffer)) is not None:
                messages.append(parsed[0])
                buffer = buffer[parsed[1] :]
    assert buffer == b""
    return messages


async def test_lazy_dialer_gets_header_and_echo_and_its_data_reaches_the_handler(nodes: Nodes) -> None:
    stream, _server, echo = await _raw_stream(nodes)
    payload = bytes(range(256)) * 1000
    await stream.write(encode_message(HEADER) + encode_message(ECHO) + payload)
    await stream.close()
    assert await _messages(stream, 2) == [HEADER, ECHO]
    with trio.fail_after(5):
        await echo.done.wait()
    assert echo.received == [payload]


async def test_dialer_waiting_for_the_header_gets_it_before_sending_its_protocol(nodes: Nodes) -> None:
    stream, _server, echo = await _raw_stream(nodes)
    await stream.write(encode_message(HEADER))
    assert await _messages(stream, 1) == [HEADER]
    await stream.write(encode_message(ECHO) + b"after")
    assert await _messages(stream, 1) == [ECHO]
    await stream.close()
    with trio.fail_after(5):
        await echo.done.wait()
    assert echo.received == [b"after"]


async def test_unknown_protocol_gets_na_and_the_dialer_may_try_another(nodes: Nodes) -> None:
    stream, _server, echo = await _raw_stream(nodes)
    await stream.write(encode_message(HEADER) + encode_message("/no/such/1.0.0"))
    assert await _messages(stream, 2) == [HEADER, "na"]
    await stream.write(encode_message(ECHO) + b"second try")
    assert await _messages(stream, 1) == [ECHO]
    await stream.close()
    with trio.fail_after(5):
        await echo.done.wait()
    assert echo.received == [b"second try"]


async def test_ls_lists_the_protocols_served(nodes: Nodes) -> None:
    stream, _server, _echo = await _raw_stream(nodes)
    await stream.write(encode_message(HEADER) + encode_message("ls"))
    header, listing = await _messages(stream, 2)
    assert header == HEADER
    assert {ECHO, *PROTOCOLS} <= set(listing.split("\n"))


@pytest.mark.parametrize(
    "opening",
    [
        encode_message("/multistream/2.0.0"),  # not the header
        b"\x7f" + b"x" * 127,  # a message with no newline
        bytes([0x81, 0x10]) + b"x" * 2049,  # longer than MAX_MESSAGE
    ],
    ids=["wrong-header", "no-newline", "too-long"],
)
async def test_malformed_negotiation_resets_the_stream_and_the_node_keeps_serving(
    nodes: Nodes, opening: bytes
) -> None:
    stream, server, echo = await _raw_stream(nodes)
    await stream.write(opening)
    with trio.fail_after(5), pytest.raises((MuxedStreamReset, MuxedStreamEOF)):
        while True:
            await stream.read()
    assert echo.received == []
    conn = stream.conn
    fresh = await conn.open_stream()
    await fresh.write(encode_message(HEADER) + encode_message(ECHO) + b"still here")
    await fresh.close()
    assert await _messages(fresh, 2) == [HEADER, ECHO]
    with trio.fail_after(5):
        await echo.done.wait()
    assert echo.received == [b"still here"]
    assert server.host.get_network().connections  # the connection survived


async def test_protocol_and_fin_arriving_while_the_header_is_written_are_still_negotiated(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kubo's answer to a want comes on a new stream: header, protocol, message and FIN, which may
    # all land while the responder is writing its own header. They were there; nothing more comes.
    stream, _server, echo = await _raw_stream(nodes)
    in_flush, proceed = trio.Event(), trio.Event()
    flush = multistream._Responder.flush

    async def gated_flush(self: multistream._Responder) -> None:
        if not in_flush.is_set():
            in_flush.set()
            await proceed.wait()
        await flush(self)

    monkeypatch.setattr(multistream._Responder, "flush", gated_flush)
    await stream.write(encode_message(HEADER))
    with trio.fail_after(5):
        await in_flush.wait()
    await stream.write(encode_message(ECHO) + b"the message")
    await stream.close()
    await trio.testing.wait_all_tasks_blocked()
    proceed.set()
    assert await _messages(stream, 2) == [HEADER, ECHO]
    with trio.fail_after(5):
        await echo.done.wait()
    assert echo.received == [b"the message"]
