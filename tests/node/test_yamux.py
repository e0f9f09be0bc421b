"""ipfsreg's Yamux muxer: the frame codec, and connections over in-memory transports (two muxers, or
one muxer and a hand-driven raw peer speaking frames), then the muxer inside real hosts."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.connection_types import ConnectionType
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamReset,
)

from ipfsreg.node import yamux
from ipfsreg.node.testing import Nodes, wait_until
from ipfsreg.node.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    BodyPiece,
    DuplicateStream,
    FrameDecoder,
    Header,
    MalformedFrame,
    PeerNotReading,
    ReceiveWindowExceeded,
    UnknownStream,
    YamuxConn,
    YamuxError,
    YamuxSettings,
    YamuxStream,
    decode_header,
    encode_header,
)

MiB = 1024 * 1024


class MemorySecureConn:
    """A trio in-memory stream dressed as the ISecureConn the muxer reads and writes."""

    def __init__(self, stream: trio.abc.Stream, *, is_initiator: bool) -> None:
        self.stream = stream
        self.is_initiator = is_initiator
        self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        self.closed = True
        await self.stream.aclose()

    def get_remote_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 4001)

    def get_transport_addresses(self) -> list[object]:
        return []

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT


def frame(type_: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return encode_header(type_, flags, stream_id, length) + payload


class RawPeer:
    """The far end of a connection, driven frame by frame by the test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.pending: list[tuple[Header, bytes]] = []
        self._body: bytearray | None = None
        self._header: Header | None = None

    async def send(self, *frames: bytes) -> None:
        await self.stream.send_all(b"".join(frames))

    async def next_frame(self) -> tuple[Header, bytes]:
        """The next whole frame the muxer sent (header and payload); EOFError at the end."""
        while not self.pending:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError
            for event in self.decoder.feed(data):
                if isinstance(event, Header):
                    if event.type == TYPE_DATA and event.length:
                        self._header, self._body = event, bytearray()
                    else:
                        self.pending.append((event, b""))
                else:
                    assert self._body is not None and self._header is not None
                    self._body += event.data
                    if event.last:
                        self.pending.append((self._header, bytes(self._body)))
        return self.pending.pop(0)

    async def frames_until_eof(self) -> list[tuple[Header, bytes]]:
        frames = []
        while True:
            try:
                frames.append(await self.next_frame())
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                return frames


@asynccontextmanager
async def muxer_pair(
    a_settings: YamuxSettings | None = None, b_settings: YamuxSettings | None = None
) -> AsyncIterator[tuple[YamuxConn, YamuxConn]]:
    """Two started muxers over an in-memory pair: ``a`` dialled (odd stream IDs), ``b`` accepted."""
    left, right = trio.testing.memory_stream_pair()
    a = YamuxConn(MemorySecureConn(left, is_initiator=True), ID(b"peer-b"), settings=a_settings)
    b = YamuxConn(MemorySecureConn(right, is_initiator=False), ID(b"peer-a"), settings=b_settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.start)
        nursery.start_soon(b.start)
        await a.event_started.wait()
        await b.event_started.wait()
        yield a, b
        await a.close()
        await b.close()


@asynccontextmanager
async def muxer_and_raw_peer(
    settings: YamuxSettings | None = None, *, lockstep: bool = False, muxer_is_initiator: bool = False
) -> AsyncIterator[tuple[YamuxConn, RawPeer]]:
    """A started muxer whose peer is a RawPeer; by default the muxer accepted (the peer opens odd IDs)."""
    if lockstep:
        left, right = trio.testing.lockstep_stream_pair()
    else:
        left, right = trio.testing.memory_stream_pair()
    conn = YamuxConn(
        MemorySecureConn(left, is_initiator=muxer_is_initiator), ID(b"raw-peer"), settings=settings
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.start)
        await conn.event_started.wait()
        yield conn, RawPeer(right)
        await conn.close()


async def read_exactly(stream: YamuxStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        data += await stream.read(n - len(data))
    return bytes(data)


async def read_to_eof(stream: YamuxStream) -> bytes:
    data = bytearray()
    while True:
        try:
            data += await stream.read()
        except MuxedStreamEOF:
            return bytes(data)


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(256)) * (n // 256) + bytes(n % 256)


# --- codec ---------------------------------------------------------------------------------------


def test_header_encodes_big_endian_fields_in_12_bytes() -> None:
    data = encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 0x01020304, 0x0A0B0C0D)
    assert data == bytes([0, 1, 0, 3, 1, 2, 3, 4, 10, 11, 12, 13])
    assert len(data) == HEADER_SIZE
    assert decode_header(data) == Header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 0x01020304, 0x0A0B0C0D)


def test_header_with_unknown_version_is_malformed() -> None:
    with pytest.raises(MalformedFrame, match="version 1"):
        decode_header(bytes([1]) + encode_header(TYPE_DATA, 0, 1, 0)[1:])


def test_header_with_unknown_type_is_malformed() -> None:
    with pytest.raises(MalformedFrame, match="type 4"):
        decode_header(bytes([0, 4]) + bytes(10))


def _events_of(decoder: FrameDecoder, pieces: list[bytes]) -> list[tuple[str, object]]:
    """Decoder output with body pieces joined per frame, for comparisons across splits."""
    out: list[tuple[str, object]] = []
    for piece in pieces:
        for event in decoder.feed(piece):
            if isinstance(event, BodyPiece):
                if out and out[-1][0] == "body" and not out[-1][1][1]:  # type: ignore[index]
                    joined = out[-1][1][0] + bytes(event.data)  # type: ignore[index]
                    out[-1] = ("body", (joined, event.last))
                else:
                    out.append(("body", (bytes(event.data), event.last)))
            else:
                out.append(("header", event))
    return out


STREAM_OF_FRAMES = b"".join(
    [
        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 4096),
        frame(TYPE_DATA, 0, 1, 5, b"hello"),
        frame(TYPE_DATA, FLAG_FIN, 1, 0),
        frame(TYPE_PING, FLAG_SYN, 0, 77),
        frame(TYPE_DATA, FLAG_ACK, 2, 40, bytes(range(40))),
        frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL),
    ]
)


def test_frame_decoder_output_is_the_same_for_every_split_of_the_input() -> None:
    whole = _events_of(FrameDecoder(), [STREAM_OF_FRAMES])
    assert whole == [
        ("header", Header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 4096)),
        ("header", Header(TYPE_DATA, 0, 1, 5)),
        ("body", (b"hello", True)),
        ("header", Header(TYPE_DATA, FLAG_FIN, 1, 0)),
        ("header", Header(TYPE_PING, FLAG_SYN, 0, 77)),
        ("header", Header(TYPE_DATA, FLAG_ACK, 2, 40)),
        ("body", (bytes(range(40)), True)),
        ("header", Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL)),
    ]
    n = len(STREAM_OF_FRAMES)
    for i, j in itertools.combinations(range(1, n), 2):
        decoder = FrameDecoder()
        pieces = [STREAM_OF_FRAMES[:i], STREAM_OF_FRAMES[i:j], STREAM_OF_FRAMES[j:]]
        assert _events_of(decoder, pieces) == whole, (i, j)
        assert decoder.at_frame_boundary


def test_frame_decoder_byte_by_byte_delivers_body_pieces_as_they_arrive() -> None:
    decoder = FrameDecoder()
    data = frame(TYPE_DATA, 0, 3, 3, b"abc")
    events = [e for byte in data for e in decoder.feed(bytes([byte]))]
    assert events[0] == Header(TYPE_DATA, 0, 3, 3)
    assert [(bytes(e.data), e.last) for e in events[1:] if isinstance(e, BodyPiece)] == [
        (b"a", False),
        (b"b", False),
        (b"c", True),
    ]
    assert decoder.at_frame_boundary


def test_frame_decoder_raises_on_a_malformed_header_after_good_frames() -> None:
    decoder = FrameDecoder()
    with pytest.raises(MalformedFrame):
        decoder.feed(frame(TYPE_PING, FLAG_SYN, 0, 1) + bytes([0, 9]) + bytes(10))


def test_settings_refuse_an_initial_window_below_the_spec_minimum() -> None:
    with pytest.raises(ValueError):
        YamuxSettings(initial_stream_window=INITIAL_WINDOW - 1)
    with pytest.raises(ValueError):
        YamuxSettings(initial_stream_window=4 * MiB, max_stream_window=2 * MiB)


# --- two muxers ----------------------------------------------------------------------------------


async def test_open_accept_and_bidirectional_data() -> None:
    async with muxer_pair() as (a, b):
        sa = await a.open_stream()
        await sa.write(b"hello")
        sb = await b.accept_stream()
        assert await read_exactly(sb, 5) == b"hello"
        await sb.write(b"world!")
        assert await read_exactly(sa, 6) == b"world!"
        assert sa.is_initiator and not sb.is_initiator
        assert sa.muxed_conn is a and sb.muxed_conn is b
        assert sb.get_remote_address() == ("127.0.0.1", 4001)


async def test_stream_ids_are_odd_for_the_initiator_and_even_for_the_responder() -> None:
    async with muxer_pair() as (a, b):
        assert [(await a.open_stream()).stream_id for _ in range(3)] == [1, 3, 5]
        assert [(await b.open_stream()).stream_id for _ in range(2)] == [2, 4]
        assert a.is_initiator and not b.is_initiator


async def test_read_returns_at_most_n_bytes_and_everything_buffered_for_none() -> None:
    async with muxer_pair() as (a, b):
        sa = await a.open_stream()
        await sa.write(b"0123456789")
        sb = await b.accept_stream()
        await trio.testing.wait_all_tasks_blocked()
        assert await sb.read(1) == b"0"
        assert await sb.read(3) == b"123"
        assert await sb.read(0) == b""
        assert await sb.read(None) == b"456789"
        await sa.write(b"ab")
        assert await sb.read(-1) == b"ab"


async def test_large_message_arrives_intact_in_frames_bounded_by_the_window() -> None:
    async with muxer_pair() as (a, b):
        data = pattern(5 * MiB + 123)
        sa = await a.open_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sa.write, data)
            sb = await b.accept_stream()
            assert await read_exactly(sb, len(data)) == data


async def test_writer_blocks_when_the_send_window_is_used_up_and_resumes_on_window_update() -> None:
    small = YamuxSettings(initial_stream_window=INITIAL_WINDOW, max_stream_window=INITIAL_WINDOW)
    async with muxer_pair(b_settings=small) as (a, b):
        data = pattern(3 * INITIAL_WINDOW + 5)
        sa = await a.open_stream()
        written = trio.Event()

        async def writer() -> None:
            await sa.write(data)
            written.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            sb = await b.accept_stream()
            await trio.testing.wait_all_tasks_blocked()
            # Only the granted window crossed; the writer waits for the reader.
            assert not written.is_set()
            assert len(sb._buf) == INITIAL_WINDOW
            assert a.stats.window_stalls == 1
            received = await read_exactly(sb, len(data))
        assert written.is_set()
        assert received == data
        assert a.stats.window_stalls >= 3
        assert b.stats.window_updates_sent >= 3


async def test_many_concurrent_streams_echo_independently() -> None:
    async with muxer_pair() as (a, b):

        async def echo_server() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(echo, await b.accept_stream())

        async def echo(stream: YamuxStream) -> None:
            await stream.write(await read_to_eof(stream))
            await stream.close()

        async def client(i: int) -> None:
            stream = await a.open_stream()
            payload = pattern(10_000 + i * 3_000, seed=i)
            await stream.write(payload)
            await stream.close()
            results[i] = await read_to_eof(stream)

        results: dict[int, bytes] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_server)
            for i in range(40):
                nursery.start_soon(client, i)
        assert results == {i: pattern(10_000 + i * 3_000, seed=i) for i in range(40)}
        await trio.testing.wait_all_tasks_blocked()
        assert a._streams == {} and b._streams == {}  # closed both ways: forgotten


async def test_fin_half_closes_one_direction_only() -> None:
    async with muxer_pair() as (a, b):
        sa = await a.open_stream()
        await sa.write(b"request")
        await sa.close()
        sb = await b.accept_stream()
        assert await read_to_eof(sb) == b"request"
        with pytest.raises(MuxedStreamEOF):
            await sb.read()  # EOF again, not a hang
        with pytest.raises(MuxedStreamClosed):
            await sa.write(b"more")
        await sb.write(b"reply")  # the other direction is still open
        assert await read_exactly(sa, 5) == b"reply"
        assert 1 in a._streams
        await sb.close()
        with pytest.raises(MuxedStreamEOF):
            await sa.read()
        assert sa.is_closed and sb.is_closed
        await trio.testing.wait_all_tasks_blocked()
        assert a._streams == {} and b._streams == {}


async def test_reset_fails_both_ends_reads_and_writes() -> None:
    async with muxer_pair() as (a, b):
        sa = await a.open_stream()
        await sa.write(b"x")
        sb = await b.accept_stream()
        assert await sb.read() == b"x"
        await sa.reset()
        with pytest.raises(MuxedStreamReset):
            await sa.read()
        with pytest.raises(MuxedStreamReset):
            await sa.write(b"y")
        with pytest.raises(MuxedStreamReset):
            await sb.read()
        with pytest.raises(MuxedStreamReset):
            await sb.write(b"y")
        assert sb.is_closed
        assert a._streams == {} and b._streams == {}


async def test_reset_by_the_peer_wakes_a_writer_waiting_for_window() -> None:
    small = YamuxSettings(initial_stream_window=INITIAL_WINDOW, max_stream_window=INITIAL_WINDOW)
    async with muxer_pair(b_settings=small) as (a, b):
        sa = await a.open_stream()
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                with pytest.raises(MuxedStreamReset):
                    await sa.write(bytes(2 * INITIAL_WINDOW))

            nursery.start_soon(writer)
            sb = await b.accept_stream()
            await trio.testing.wait_all_tasks_blocked()
            await sb.reset()


async def test_net_stream_maps_eof_reset_and_closed_to_its_own_errors() -> None:
    async with muxer_pair() as (a, b):
        sa = await a.open_stream()
        await sa.write(b"1")
        await sa.close()
        net_b = NetStream(await b.accept_stream(), None, None)
        assert await net_b.read(10) == b"1"
        with pytest.raises(StreamEOF):
            await net_b.read(10)
        net_a = NetStream(sa, None, None)
        with pytest.raises(StreamClosed):
            await net_a.write(b"2")

        sa2 = await a.open_stream()
        await sa2.write(b"z")
        net_b2 = NetStream(await b.accept_stream(), None, None)
        await sa2.reset()
        await trio.testing.wait_all_tasks_blocked()  # the RST arrived: buffered data is dropped
        with pytest.raises(StreamReset):
            await net_b2.read(10)


async def test_ping_is_answered_and_measures_the_round_trip() -> None:
    async with muxer_pair() as (a, b):
        rtt = await a.ping()
        assert rtt >= 0.0 and a.rtt() == rtt
        assert await b.ping() >= 0.0


async def test_close_sends_go_away_and_the_peer_stops_opening_and_accepting() -> None:
    async with muxer_pair() as (a, b):
        await b.close()
        await a.event_closed.wait()
        assert a.is_closed and b.is_closed
        assert not a.is_established
        with pytest.raises(MuxedConnUnavailable):
            await a.open_stream()
        with pytest.raises(MuxedConnUnavailable):
            await a.accept_stream()


async def test_connection_loss_resets_open_streams_and_runs_the_close_hook_once() -> None:
    left, right = trio.testing.memory_stream_pair()
    closes: list[str] = []

    async def on_close() -> None:
        closes.append("closed")

    conn = YamuxConn(MemorySecureConn(left, is_initiator=False), ID(b"x"), on_close=on_close)
    peer = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.start)
        await conn.event_started.wait()
        await peer.send(
            frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),
            frame(TYPE_DATA, 0, 1, 4, b"half"),
            frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0),
            frame(TYPE_DATA, FLAG_FIN, 3, 4, b"done"),
        )
        cut_off = await conn.accept_stream()
        finished = await conn.accept_stream()
        assert await cut_off.read() == b"half"
        await right.aclose()  # the transport goes away
        with pytest.raises(MuxedStreamReset):
            await cut_off.read()
        with pytest.raises(MuxedStreamReset):
            await cut_off.write(b"?")
        assert await read_to_eof(finished) == b"done"  # fully received before the loss: still readable
        with pytest.raises(MuxedConnUnavailable):
            await conn.accept_stream()
        await conn.event_closed.wait()
        await conn.close()
    assert closes == ["closed"]  # the nursery ended: start() returned on its own


# --- one muxer and a raw peer --------------------------------------------------------------------


async def test_small_writes_and_control_frames_of_one_round_share_one_secured_write() -> None:
    async with muxer_and_raw_peer(muxer_is_initiator=True) as (conn, peer):
        stream = await conn.open_stream()
        await stream.write(b"/multistream/1.0.0\n")
        await stream.write(b"/ipfs/bitswap/1.2.0\n")
        await stream.close()
        await trio.testing.wait_all_tasks_blocked()
        assert conn.stats.writes == 1
        frames = [await peer.next_frame() for _ in range(4)]
        assert frames == [
            (Header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, MiB - INITIAL_WINDOW), b""),
            (Header(TYPE_DATA, 0, 1, 19), b"/multistream/1.0.0\n"),
            (Header(TYPE_DATA, 0, 1, 20), b"/ipfs/bitswap/1.2.0\n"),
            (Header(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0), b""),
        ]


async def test_a_large_write_goes_out_after_the_small_ones_queued_before_it() -> None:
    async with muxer_and_raw_peer(muxer_is_initiator=True) as (conn, peer):
        stream = await conn.open_stream()
        await stream.write(b"small")
        await stream.write(pattern(100_000))
        await stream.write(b"tail")
        await trio.testing.wait_all_tasks_blocked()
        frames = [await peer.next_frame() for _ in range(4)]
        assert [f[1][:5] for f in frames[1:]] == [b"small", pattern(100_000)[:5], b"tail"]
        assert frames[2][1] == pattern(100_000)


async def test_write_now_sends_a_small_message_from_the_calling_task_with_what_was_queued() -> None:
    async with muxer_and_raw_peer(muxer_is_initiator=True) as (conn, peer):
        stream = await conn.open_stream()  # its SYN is queued, not yet written
        await stream.write_now(b"request")
        assert conn.stats.writes == 1  # written before write_now returned, no flusher round
        assert [await peer.next_frame() for _ in range(2)] == [
            (Header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, MiB - INITIAL_WINDOW), b""),
            (Header(TYPE_DATA, 0, 1, 7), b"request"),
        ]


async def test_write_now_queues_behind_a_write_that_holds_the_connection_and_keeps_the_order() -> None:
    async with muxer_and_raw_peer(muxer_is_initiator=True, lockstep=True) as (conn, peer):
        first, second = await conn.open_stream(), await conn.open_stream()
        syns = [await peer.next_frame() for _ in range(2)]
        assert [h.flags for h, _ in syns] == [FLAG_SYN, FLAG_SYN]
        big = pattern(200_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.write, big)
            await trio.testing.wait_all_tasks_blocked()
            assert conn._write_lock.locked()  # the lockstep peer has not read the big frame yet
            await second.write_now(b"after")  # queued: never interleaved into the frame on the wire
            frames = [await peer.next_frame() for _ in range(2)]
        assert frames == [(Header(TYPE_DATA, 0, 1, len(big)), big), (Header(TYPE_DATA, 0, 3, 5), b"after")]


async def test_write_now_of_a_large_message_goes_in_frames_as_write_does() -> None:
    async with muxer_pair() as (a, b):
        stream = await a.open_stream()
        await stream.write_now(pattern(300_000))
        accepted = await b.accept_stream()
        assert await read_exactly(accepted, 300_000) == pattern(300_000)


async def test_write_nowait_queues_a_small_write_that_the_flusher_sends_at_the_next_round() -> None:
    async with muxer_and_raw_peer(muxer_is_initiator=True) as (conn, peer):
        stream = await conn.open_stream()
        await trio.testing.wait_all_tasks_blocked()
        writes = conn.stats.writes
        assert stream.write_nowait(b"announce")
        assert conn.stats.writes == writes  # nothing written from the caller
        await trio.testing.wait_all_tasks_blocked()
        assert conn.stats.writes == writes + 1
        frames = [await peer.next_frame() for _ in range(2)]
        assert frames[1] == (Header(TYPE_DATA, 0, 1, 8), b"announce")


async def test_write_nowait_refuses_what_it_cannot_queue_and_writable_says_why_not() -> None:
    async with muxer_pair() as (a, b):
        stream = await a.open_stream()
        assert stream.writable
        assert not stream.write_nowait(pattern(yamux.SMALL_WRITE + 1))  # too big to queue
        assert stream.write_nowait(b"")
        accepted = await b.accept_stream()
        await accepted.close()  # the peer's FIN: what we write now reaches no reader
        await wait_until(lambda: not stream.writable)
        other = await a.open_stream()
        await other.close()
        assert not other.writable
        assert not other.write_nowait(b"late")  # closed for writing
        reset = await a.open_stream()
        await reset.reset()
        assert not reset.writable and not reset.write_nowait(b"late")


async def test_accepted_stream_is_acked_with_a_grant_of_the_initial_stream_window() -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        header, _ = await peer.next_frame()
        assert header == Header(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 1 * MiB - INITIAL_WINDOW)
        # The whole granted window can now be sent at once.
        await peer.send(frame(TYPE_DATA, 0, 1, 1 * MiB, bytes(1 * MiB)))
        stream = await conn.accept_stream()
        assert len(await read_exactly(stream, 1 * MiB)) == 1 * MiB


async def test_opened_stream_sends_syn_with_the_window_grant_before_its_data() -> None:
    async with muxer_and_raw_peer(muxer_is_initiator=True) as (conn, peer):
        stream = await conn.open_stream()
        await stream.write(b"first")
        assert await peer.next_frame() == (
            Header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 1 * MiB - INITIAL_WINDOW),
            b"",
        )
        assert await peer.next_frame() == (Header(TYPE_DATA, 0, 1, 5), b"first")
        await stream.close()
        assert await peer.next_frame() == (Header(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0), b"")
        await stream.reset()  # after our FIN, a reset still aborts the peer's direction
        assert await peer.next_frame() == (Header(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), b"")


async def test_window_update_goes_out_after_half_the_window_is_read_and_busy_windows_double() -> None:
    settings = YamuxSettings(initial_stream_window=1 * MiB, max_stream_window=4 * MiB)
    async with muxer_and_raw_peer(settings) as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), frame(TYPE_DATA, 0, 1, MiB, bytes(MiB)))
        await peer.next_frame()  # ACK
        stream = await conn.accept_stream()
        await read_exactly(stream, MiB // 2 - 1)
        await trio.testing.wait_all_tasks_blocked()
        assert not peer.pending and conn.stats.window_updates_sent == 0
        await read_exactly(stream, 1)
        # What was read goes back, plus the growth of the window to 2 MiB.
        assert await peer.next_frame() == (Header(TYPE_WINDOW_UPDATE, 0, 1, MiB // 2 + MiB), b"")
        await read_exactly(stream, MiB // 2)
        await peer.send(frame(TYPE_DATA, 0, 1, 3 * MiB // 2, bytes(3 * MiB // 2)))  # all it may send now
        await read_exactly(stream, MiB)
        assert await peer.next_frame() == (Header(TYPE_WINDOW_UPDATE, 0, 1, 3 * MiB // 2 + 2 * MiB), b"")
        await peer.send(frame(TYPE_DATA, 0, 1, 7 * MiB // 2, bytes(7 * MiB // 2)))
        await read_exactly(stream, 4 * MiB)
        # At the maximum (4 MiB): updates return what was read, nothing more.
        assert await peer.next_frame() == (Header(TYPE_WINDOW_UPDATE, 0, 1, 4 * MiB), b"")


async def test_connection_window_budget_bounds_what_streams_are_granted() -> None:
    settings = YamuxSettings(connection_window_budget=1 * MiB)
    async with muxer_and_raw_peer(settings) as (conn, peer):
        await peer.send(*(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, i, 0) for i in (1, 3, 5)))
        grants = [(await peer.next_frame())[0].length for _ in range(3)]
        assert grants == [MiB - INITIAL_WINDOW, INITIAL_WINDOW, 0]
        first = await conn.accept_stream()
        await first.reset()  # its grant returns to the budget
        await peer.next_frame()  # RST
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 7, 0))
        assert (await peer.next_frame())[0].length == MiB - INITIAL_WINDOW


async def test_data_beyond_the_granted_window_closes_the_connection_with_a_protocol_error() -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        await peer.next_frame()
        await peer.send(frame(TYPE_DATA, 0, 1, MiB, bytes(MiB)), frame(TYPE_DATA, 0, 1, 1, b"!"))
        frames = await peer.frames_until_eof()
        assert frames[-1][0] == Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
        await conn.event_closed.wait()
        assert isinstance(conn.close_reason, ReceiveWindowExceeded)


@pytest.mark.parametrize(
    "bad",
    [
        bytes([1]) + encode_header(TYPE_DATA, 0, 1, 0)[1:],  # version 1
        bytes([0, 7]) + encode_header(TYPE_DATA, 0, 1, 0)[2:],  # type 7
    ],
    ids=["unknown-version", "unknown-type"],
)
async def test_malformed_header_closes_the_connection_with_go_away(bad: bytes) -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(bad)
        frames = await peer.frames_until_eof()
        assert frames == [(Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR), b"")]
        await conn.event_closed.wait()
        assert isinstance(conn.close_reason, MalformedFrame)


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([frame(TYPE_DATA, 0, 9, 3, b"abc")], UnknownStream),  # the peer's ID, never opened
        ([frame(TYPE_WINDOW_UPDATE, 0, 2, 100)], UnknownStream),  # our ID, never opened
        ([frame(TYPE_DATA, 0, 0, 0)], UnknownStream),  # stream 0 carries no data
        ([frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0)], DuplicateStream),  # our parity
        ([frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)] * 2, DuplicateStream),
    ],
    ids=["data-unknown-id", "update-unknown-own-id", "data-stream-zero", "syn-wrong-parity", "syn-twice"],
)
async def test_frames_for_streams_that_do_not_exist_close_the_connection(
    frames: list[bytes], error: type[YamuxError]
) -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(*frames)
        assert (await peer.frames_until_eof())[-1][0] == Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
        await conn.event_closed.wait()
        assert isinstance(conn.close_reason, error)


async def test_data_still_in_flight_for_a_stream_we_reset_is_dropped_quietly() -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        await peer.next_frame()
        stream = await conn.accept_stream()
        await stream.reset()
        assert await peer.next_frame() == (Header(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), b"")
        await peer.send(frame(TYPE_DATA, FLAG_FIN, 1, 3, b"late"[:3]), frame(TYPE_PING, FLAG_SYN, 0, 5))
        assert await peer.next_frame() == (Header(TYPE_PING, FLAG_ACK, 0, 5), b"")
        assert conn.is_established


async def test_ping_from_the_peer_is_answered_with_the_same_opaque_value() -> None:
    async with muxer_and_raw_peer() as (_conn, peer):
        await peer.send(frame(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
        assert await peer.next_frame() == (Header(TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF), b"")


async def test_go_away_from_the_peer_lets_open_streams_finish_then_closes() -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))
        stream = await conn.accept_stream()
        await peer.next_frame()  # ACK
        with pytest.raises(MuxedConnUnavailable):
            await conn.open_stream()
        assert not conn.is_closed
        await peer.send(frame(TYPE_DATA, FLAG_FIN, 1, 2, b"ok"))
        assert await read_to_eof(stream) == b"ok"
        await stream.write(b"bye")
        await stream.close()  # the last stream is done: the connection closes
        await conn.event_closed.wait()
        frames = await peer.frames_until_eof()
        assert frames[:2] == [
            (Header(TYPE_DATA, 0, 1, 3), b"bye"),
            (Header(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0), b""),
        ]
        assert frames[-1] == (Header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL), b"")


async def test_streams_beyond_the_inbound_limit_are_reset() -> None:
    async with muxer_and_raw_peer(YamuxSettings(max_inbound_streams=2)) as (conn, peer):
        await peer.send(*(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, i, 0) for i in (1, 3, 5)))
        replies = [(await peer.next_frame())[0] for _ in range(3)]
        assert [(h.stream_id, h.flags) for h in replies] == [(1, FLAG_ACK), (3, FLAG_ACK), (5, FLAG_RST)]
        assert conn.stats.streams_refused == 1
        first = await conn.accept_stream()
        await first.reset()
        await peer.next_frame()
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 7, 0))  # room again
        assert (await peer.next_frame())[0].flags == FLAG_ACK


async def test_streams_beyond_the_accept_backlog_are_reset() -> None:
    async with muxer_and_raw_peer(YamuxSettings(accept_backlog=1)) as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0))
        replies = [(await peer.next_frame())[0] for _ in range(2)]
        assert [(h.stream_id, h.flags) for h in replies] == [(1, FLAG_ACK), (3, FLAG_RST)]
        assert (await conn.accept_stream()).stream_id == 1


async def test_a_cancelled_write_never_leaves_half_a_frame_on_the_wire() -> None:
    async with muxer_and_raw_peer(lockstep=True, muxer_is_initiator=True) as (conn, peer):
        stream = await conn.open_stream()
        assert (await peer.next_frame())[0].flags == FLAG_SYN
        write_scope = trio.CancelScope()

        async def writer() -> None:
            with write_scope:
                await stream.write(bytes(200_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()  # blocked mid-frame: nobody reads
            write_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # The peer reads on and gets the whole frame, and the connection goes on.
            assert await peer.next_frame() == (Header(TYPE_DATA, 0, 1, 200_000), bytes(200_000))
        await peer.send(frame(TYPE_PING, FLAG_SYN, 0, 1))
        assert await peer.next_frame() == (Header(TYPE_PING, FLAG_ACK, 0, 1), b"")
        assert conn.is_established


async def test_a_peer_that_sends_but_never_reads_is_disconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamux, "MAX_CONTROL_BACKLOG", 10 * HEADER_SIZE)
    async with muxer_and_raw_peer(lockstep=True) as (conn, peer):
        with pytest.raises(trio.BrokenResourceError):  # the muxer hung up
            for i in range(1000):
                await peer.send(frame(TYPE_PING, FLAG_SYN, 0, i))
        await conn.event_closed.wait()
        assert isinstance(conn.close_reason, PeerNotReading)


async def test_a_write_stalled_past_the_write_timeout_fails_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with muxer_and_raw_peer(lockstep=True, muxer_is_initiator=True) as (conn, _peer):
        stream = await conn.open_stream()
        await stream.write(b"nobody reads this")  # queued; the flusher's write stalls
        await conn.event_closed.wait()
        with pytest.raises(MuxedStreamReset):
            await stream.write(b"more")
        assert isinstance(conn.close_reason, YamuxError)
        assert "stalled" in str(conn.close_reason)


async def test_stream_deadline_bounds_a_read_that_would_wait(autojump_clock: trio.testing.MockClock) -> None:
    async with muxer_pair() as (a, _b):
        stream = await a.open_stream()
        stream.set_deadline(5)
        with pytest.raises(trio.TooSlowError):
            await stream.read()
        with pytest.raises(ValueError):
            stream.set_deadline(-1)


# --- in real hosts -------------------------------------------------------------------------------


async def test_hosts_built_by_build_host_use_ipfsreg_yamux_on_both_ends(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    await b.connect(a.listen_addrs()[0])
    await wait_until(lambda: bool(a.host.get_network().connections.get(b.host.get_id())))
    for node, other in ((a, b), (b, a)):
        (conn,) = node.host.get_network().connections[other.host.get_id()]
        assert type(conn.muxed_conn) is YamuxConn
        assert conn.get_negotiated_muxer_protocol() == "/yamux/1.0.0"


# --- fuzzing -------------------------------------------------------------------------------------

RandomFrame = tuple[int, int, int, int, bytes]  # type, flags, stream id, length, payload
_frames = st.lists(
    st.tuples(
        st.sampled_from([TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY, 4]),
        st.sampled_from([0, FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN | FLAG_FIN, 0xFFFF]),
        st.integers(0, 8),
        st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
        st.binary(max_size=64),
    ),
    max_size=12,
)


@given(st.binary(max_size=200), st.lists(st.integers(1, 50), max_size=5))
def test_frame_decoder_never_fails_other_than_malformed_frame(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for event in decoder.feed(data[pos : pos + cut]):
                assert isinstance(event, Header | BodyPiece)
            pos += cut
    except MalformedFrame:
        pass


@settings(max_examples=60, deadline=None)
@given(_frames)
def test_arbitrary_frames_from_a_peer_never_crash_the_muxer(
    frames: list[tuple[int, int, int, int, bytes]],
) -> None:
    async def scenario() -> None:
        async with muxer_and_raw_peer(YamuxSettings(max_inbound_streams=4, accept_backlog=2)) as (conn, peer):

            async def drain_streams() -> None:
                async with trio.open_nursery() as nursery:
                    while True:
                        try:
                            stream = await conn.accept_stream()
                        except MuxedConnUnavailable:
                            return
                        nursery.start_soon(read_then_write, stream)

            async def read_then_write(stream: YamuxStream) -> None:
                try:
                    await stream.read(10)
                    await stream.write(b"reply")
                except (MuxedStreamEOF, MuxedStreamReset, MuxedStreamClosed):
                    pass

            async def swallow_output() -> None:
                await peer.frames_until_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_streams)
                nursery.start_soon(swallow_output)
                wire = b"".join(
                    encode_header(t, f, s, n if t != TYPE_DATA else len(p)) + (p if t == TYPE_DATA else b"")
                    if t <= TYPE_GO_AWAY
                    else bytes([0, t]) + bytes(10)
                    for t, f, s, n, p in frames
                )
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await peer.send(wire)  # the muxer may hang up halfway
                await trio.testing.wait_all_tasks_blocked()
                assert conn.close_reason is None or isinstance(conn.close_reason, YamuxError)
                await conn.close()
                nursery.cancel_scope.cancel()

    trio.run(scenario)


async def test_read_at_least_sleeps_until_that_much_is_buffered_then_returns_everything() -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), frame(TYPE_DATA, 0, 1, 3, b"abc"))
        stream = await conn.accept_stream()
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await stream.read_at_least(10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await peer.send(frame(TYPE_DATA, 0, 1, 4, b"defg"))  # 7 buffered: still asleep
            await trio.testing.wait_all_tasks_blocked()
            assert results == []
            await peer.send(frame(TYPE_DATA, 0, 1, 5, b"hijkl"))
        assert results == [b"abcdefghijkl"]


async def test_read_at_least_wakes_on_fin_and_reset_with_what_arrived() -> None:
    async with muxer_and_raw_peer() as (conn, peer):
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), frame(TYPE_DATA, 0, 1, 2, b"ab"))
        stream = await conn.accept_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send, frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0))
            with trio.fail_after(5):
                assert await stream.read_at_least(100) == b"ab"
        with pytest.raises(MuxedStreamEOF):
            await stream.read_at_least(100)
        await peer.send(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0))
        other = await conn.accept_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send, frame(TYPE_WINDOW_UPDATE, FLAG_RST, 3, 0))
            with trio.fail_after(5), pytest.raises(MuxedStreamReset):
                await other.read_at_least(100)


async def test_read_at_least_asks_no_more_than_half_the_window_so_the_sender_is_never_stuck() -> None:
    # A 4 MiB message through a 1 MiB window: waiting for all of it would wait for data the peer
    # may not send before we grant more window, which only reading does.
    async with muxer_pair() as (a, b):
        data = pattern(4 * MiB)
        sa = await a.open_stream()
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sa.write, data)
            sb = await b.accept_stream()
            with trio.fail_after(10):
                while len(received) < len(data):
                    received += await sb.read_at_least(len(data) - len(received))
        assert received == data
