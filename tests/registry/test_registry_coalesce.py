"""CoalescingConnection: consecutive h11 body Data events come out joined, every other event
in its place (pure h11, no sockets)."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfsreg.registry.coalesce import COALESCE_BYTES, CoalescingConnection

HEAD_CHUNKED = b"PATCH /v2/app/blobs/uploads/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunked(body: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def _events(conn: h11.Connection) -> list[object]:
    out: list[object] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.EndOfMessage:
            return out


def _respond(conn: h11.Connection) -> None:
    conn.send(h11.Response(status_code=202, headers=[("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())


def test_buffered_chunks_of_a_chunked_body_come_out_as_one_data_event() -> None:
    body = bytes(range(256)) * 1000
    conn = CoalescingConnection(h11.SERVER)
    conn.receive_data(HEAD_CHUNKED + _chunked(body, 32 * 1024))
    events = _events(conn)
    assert type(events[0]) is h11.Request
    data = [e for e in events if type(e) is h11.Data]
    assert len(data) == 1
    assert bytes(data[0].data) == body
    assert type(events[-1]) is h11.EndOfMessage
    assert conn.their_state is h11.DONE


def test_joined_data_events_stop_at_the_coalesce_limit() -> None:
    body = b"x" * (3 * COALESCE_BYTES + 5)
    conn = CoalescingConnection(h11.SERVER)
    conn.receive_data(HEAD_CHUNKED + _chunked(body, 16 * 1024))
    data = [e for e in _events(conn) if type(e) is h11.Data]
    assert b"".join(bytes(e.data) for e in data) == body
    assert all(len(e.data) <= COALESCE_BYTES for e in data)
    assert len(data) == 4


def test_body_arriving_in_pieces_gives_data_then_need_data_and_continues() -> None:
    body = b"abc" * 50_000
    raw = HEAD_CHUNKED + _chunked(body, 1000)
    conn = CoalescingConnection(h11.SERVER)
    got = b""
    ended = False
    for i in range(0, len(raw), 7000):
        conn.receive_data(raw[i : i + 7000])
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if type(event) is h11.Data:
                got += bytes(event.data)
            ended = ended or type(event) is h11.EndOfMessage
    assert got == body
    assert ended


def test_content_length_body_and_a_pipelined_request_keep_their_order() -> None:
    body = b"y" * 5000
    first = b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
    second = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    conn = CoalescingConnection(h11.SERVER)
    conn.receive_data(first + second)
    events = _events(conn)
    assert [type(e) for e in events] == [h11.Request, h11.Data, h11.EndOfMessage]
    assert conn.next_event() is h11.PAUSED  # the next request waits for the next cycle
    _respond(conn)
    conn.start_next_cycle()
    request = conn.next_event()
    assert type(request) is h11.Request
    assert request.target == b"/b"


def test_event_held_while_looking_ahead_is_dropped_when_the_cycle_ends_early() -> None:
    # The response goes out before the handler read the body (an early error): the held
    # EndOfMessage belongs to the finished request and must not leak into the next one.
    conn = CoalescingConnection(h11.SERVER)
    conn.receive_data(HEAD_CHUNKED + _chunked(b"z" * 3000, 100))
    assert type(conn.next_event()) is h11.Request
    assert type(conn.next_event()) is h11.Data  # EndOfMessage parsed and held
    _respond(conn)
    conn.start_next_cycle()
    assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert type(conn.next_event()) is h11.Request


def test_protocol_error_after_body_data_comes_after_that_data() -> None:
    conn = CoalescingConnection(h11.SERVER)
    conn.receive_data(HEAD_CHUNKED + b"4\r\nabcd\r\n3\r\nxyz\r\nZZZZ\r\n")
    assert type(conn.next_event()) is h11.Request
    data = conn.next_event()
    assert type(data) is h11.Data
    assert bytes(data.data) == b"abcdxyz"
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


def _chunks_of(body: bytes, sizes: list[int], extension_every: int = 0) -> bytes:
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(body):
        size = sizes[i % len(sizes)]
        piece = body[pos : pos + size]
        ext = b";name=value" if extension_every and i % extension_every == 0 else b""
        out += b"%x%s\r\n" % (len(piece), ext) + piece + b"\r\n"
        pos += size
        i += 1
    return bytes(out) + b"0\r\nX-Trailer: yes\r\n\r\n"


def _feed_in_pieces(conn: h11.Connection, wire: bytes, cuts: list[int]) -> tuple[bytes, list[type]]:
    """Feed ``wire`` split at ``cuts``; return the body bytes and the non-Data event types seen."""
    body = bytearray()
    kinds: list[type] = []
    edges = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    for a, b in itertools.pairwise(edges):
        if a == b:
            continue  # receive_data(b"") would mean end of stream
        conn.receive_data(wire[a:b])
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if type(event) is h11.Data:
                body += event.data
            else:
                kinds.append(type(event))
    return bytes(body), kinds


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=5000),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    extension_every=st.integers(0, 3),
)
def test_chunked_body_gives_the_same_bytes_and_events_as_plain_h11_however_it_arrives(
    body: bytes, sizes: list[int], cuts: list[int], extension_every: int
) -> None:
    wire = HEAD_CHUNKED + _chunks_of(body, sizes, extension_every)
    ours, ours_kinds = _feed_in_pieces(CoalescingConnection(h11.SERVER), wire, cuts)
    plain, plain_kinds = _feed_in_pieces(h11.Connection(h11.SERVER), wire, cuts)
    assert ours == plain == body
    assert ours_kinds == plain_kinds == [h11.Request, h11.EndOfMessage]


@pytest.mark.parametrize(
    "bad",
    [
        b"4\r\nabcdXY3\r\nxyz\r\n0\r\n\r\n",  # chunk not followed by CRLF
        b"4\r\nabcd\r\nzz\r\nxyz\r\n0\r\n\r\n",  # header not hex
        b"4\r\nabcd\r\n" + b"1" * 30 + b"\r\n",  # size too long to be real
    ],
)
def test_malformed_chunk_framing_is_a_protocol_error_after_the_good_data(bad: bytes) -> None:
    conn = CoalescingConnection(h11.SERVER)
    conn.receive_data(HEAD_CHUNKED + bad)
    assert type(conn.next_event()) is h11.Request
    data = conn.next_event()
    assert type(data) is h11.Data
    assert bytes(data.data) == b"abcd"
    with pytest.raises(h11.RemoteProtocolError):
        for _ in range(3):
            if conn.next_event() is h11.NEED_DATA:
                conn.receive_data(b"")


def test_large_chunked_body_parsed_on_the_fast_path_keeps_every_byte() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    conn = CoalescingConnection(h11.SERVER)
    wire = HEAD_CHUNKED + _chunked(body, 32 * 1024)
    got, kinds = _feed_in_pieces(conn, wire, list(range(0, len(wire), 65536)))
    assert got == body
    assert kinds == [h11.Request, h11.EndOfMessage]
