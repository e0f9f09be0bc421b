"""ipfsreg's Noise transport I/O: the pure message codec, the session over loopback TCP (against itself
and against py-libp2p's stock session), failure handling, and two hosts talking through it."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.abc import ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import DecryptionFailedException, IncompleteReadError, IOException
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import Transport as StockNoiseTransport
from libp2p.security.secure_session import SecureSession

from ipfsreg.node.errors import NodeError
from ipfsreg.node.noise import (
    MAX_NONCE,
    MAX_PLAINTEXT_LEN,
    RECV_SIZE,
    TAG_LEN,
    FastNoiseTransport,
    NoiseDecryptError,
    NoiseEndOfStream,
    NoiseMessageDecoder,
    NoiseMessageEncoder,
    NoiseNonceExhausted,
    NoiseSession,
    NoiseSessionError,
    NoiseWriteInterrupted,
    noise_transport,
)
from ipfsreg.node.testing import Nodes, random_bytes

KEY = bytes(range(32))


def split_frames(wire: bytes) -> list[bytes]:
    """The ciphertexts of consecutive length-prefixed messages (the whole input must be messages)."""
    frames = []
    at = 0
    while at < len(wire):
        size = int.from_bytes(wire[at : at + 2], "big")
        frames.append(wire[at + 2 : at + 2 + size])
        at += 2 + size
    assert at == len(wire)
    return frames


def wire_pieces(writes: list[bytes], cuts: list[int]) -> list[bytes]:
    """The Noise messages of ``writes``, as wire bytes cut at ``cuts`` (those inside the wire)."""
    encoder = NoiseMessageEncoder(KEY)
    wire = b"".join(bytes(encoder.encode(w)) for w in writes)
    points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    return [wire[start:end] for start, end in itertools.pairwise(points)]


def decode_all(decoder: NoiseMessageDecoder) -> list[bytes]:
    messages = []
    while (message := decoder.next_message()) is not None:
        messages.append(message)
    return messages


# --- the pure codec -------------------------------------------------------------------------------


def test_encoder_output_is_chachapoly_with_the_noise_nonce_layout() -> None:
    wire = NoiseMessageEncoder(KEY, nonce=5).encode(b"hello")
    reference = ChaCha20Poly1305(KEY).encrypt(b"\x00" * 4 + (5).to_bytes(8, "little"), b"hello", None)
    assert bytes(wire) == len(reference).to_bytes(2, "big") + reference


def test_encoder_matches_the_noiseprotocol_cipher_state() -> None:
    from noise.connection import NoiseConnection

    initiator = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    responder = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    initiator.set_as_initiator()
    responder.set_as_responder()
    initiator.start_handshake()
    responder.start_handshake()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    outbound = initiator.noise_protocol.cipher_state_encrypt
    encoder = NoiseMessageEncoder(outbound.k, outbound.n)
    for plaintext in (b"a", b"", os.urandom(1000), b"last"):
        if plaintext:
            (ciphertext,) = split_frames(bytes(encoder.encode(plaintext)))
            assert responder.decrypt(ciphertext) == plaintext
    assert encoder.nonce == 3


@pytest.mark.parametrize(
    "size",
    [1, 100, MAX_PLAINTEXT_LEN - 1, MAX_PLAINTEXT_LEN, MAX_PLAINTEXT_LEN + 1, 3 * MAX_PLAINTEXT_LEN + 7],
)
def test_a_write_becomes_ceil_size_over_65519_messages_that_decode_to_the_same_bytes(size: int) -> None:
    data = os.urandom(size)
    wire = bytes(NoiseMessageEncoder(KEY).encode(data))
    frames = split_frames(wire)
    assert len(frames) == -(-size // MAX_PLAINTEXT_LEN)
    assert all(len(frame) <= MAX_PLAINTEXT_LEN + TAG_LEN for frame in frames)
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(wire)
    assert b"".join(decode_all(decoder)) == data
    assert decoder.nonce == len(frames)
    assert decoder.pending == 0


def test_an_empty_write_produces_no_message_and_spends_no_nonce() -> None:
    encoder = NoiseMessageEncoder(KEY)
    assert encoder.encode(b"") == b""
    assert encoder.nonce == 0


def test_encoder_accepts_bytearray_and_memoryview() -> None:
    data = os.urandom(70_000)
    expected = bytes(NoiseMessageEncoder(KEY).encode(data))
    assert bytes(NoiseMessageEncoder(KEY).encode(bytearray(data))) == expected
    assert bytes(NoiseMessageEncoder(KEY).encode(memoryview(data))) == expected


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=12),
)
def test_decoder_yields_the_same_messages_however_the_wire_bytes_are_split(
    writes: list[bytes], cuts: list[int]
) -> None:
    decoder = NoiseMessageDecoder(KEY)
    messages: list[bytes] = []
    for piece in wire_pieces(writes, cuts):
        decoder.feed(piece)
        messages.extend(decode_all(decoder))
    assert messages == [w for w in writes if w]
    assert decoder.pending == 0


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=12),
)
def test_next_messages_decrypts_every_whole_message_into_one_buffer_and_keeps_the_partial_one(
    writes: list[bytes], cuts: list[int]
) -> None:
    pieces = wire_pieces(writes, cuts)
    decoder = NoiseMessageDecoder(KEY)
    received = bytearray()
    for piece in pieces:
        decoder.feed(piece)
        plaintext = decoder.next_messages()
        if plaintext is not None:
            received += plaintext
    assert received == b"".join(writes)
    assert decoder.pending == 0
    assert decoder.nonce == len(split_frames(b"".join(pieces)))


def test_next_messages_returns_what_authenticated_before_a_bad_message_then_raises() -> None:
    encoder = NoiseMessageEncoder(KEY)
    good, bad = bytes(encoder.encode(b"good")), bytearray(encoder.encode(b"bad"))
    bad[-1] ^= 0x01
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(good + bytes(bad))
    assert decoder.next_messages() == b"good"
    assert decoder.nonce == 1
    with pytest.raises(NoiseDecryptError):
        decoder.next_messages()
    with pytest.raises(NoiseDecryptError):
        decoder.next_message()


@pytest.mark.parametrize("length", [0, 1, TAG_LEN - 1])
def test_next_messages_rejects_a_message_too_short_for_its_tag(length: int) -> None:
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(length.to_bytes(2, "big") + bytes(length))
    with pytest.raises(NoiseDecryptError):
        decoder.next_messages()


def test_next_messages_is_none_until_a_message_is_whole_and_empty_for_empty_messages() -> None:
    wire = bytes(NoiseMessageEncoder(KEY).encode(b"x" * 40))
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(wire[:-1])
    assert decoder.next_messages() is None
    decoder.feed(wire[-1:])
    assert decoder.next_messages() == b"x" * 40
    empty = ChaCha20Poly1305(KEY).encrypt(bytes(4) + (1).to_bytes(8, "little"), b"", None)
    decoder.feed(len(empty).to_bytes(2, "big") + empty)
    assert decoder.next_messages() == b""
    assert decoder.nonce == 2


def test_decoder_returns_none_until_a_message_is_complete_and_counts_pending_bytes() -> None:
    wire = bytes(NoiseMessageEncoder(KEY).encode(b"x" * 40))
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(wire[:1])
    assert decoder.next_message() is None
    assert decoder.next_message_size == 2
    decoder.feed(wire[1:-1])
    assert decoder.next_message() is None
    assert decoder.pending == len(wire) - 1
    assert decoder.next_message_size == len(wire)
    decoder.feed(wire[-1:])
    assert decoder.next_message() == b"x" * 40
    assert decoder.next_message() is None


def test_an_empty_plaintext_message_decodes_to_empty_bytes() -> None:
    ciphertext = ChaCha20Poly1305(KEY).encrypt(bytes(12), b"", None)
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(len(ciphertext).to_bytes(2, "big") + ciphertext)
    assert decoder.next_message() == b""
    assert decoder.nonce == 1


@pytest.mark.parametrize("position", [2, 10, -1])
def test_a_flipped_ciphertext_byte_raises_decrypt_error_and_poisons_the_decoder(position: int) -> None:
    wire = bytearray(NoiseMessageEncoder(KEY).encode(b"payload" * 10))
    wire[position] ^= 0x01
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(bytes(wire))
    with pytest.raises(NoiseDecryptError):
        decoder.next_message()
    assert decoder.nonce == 0
    with pytest.raises(NoiseDecryptError):
        decoder.next_message()


def test_decrypt_error_is_a_libp2p_decryption_failure_and_a_node_error() -> None:
    assert issubclass(NoiseDecryptError, DecryptionFailedException)
    assert issubclass(NoiseDecryptError, NodeError)
    assert issubclass(NoiseSessionError, IOException)


def test_messages_out_of_order_fail_authentication() -> None:
    encoder = NoiseMessageEncoder(KEY)
    first, second = bytes(encoder.encode(b"first")), bytes(encoder.encode(b"second"))
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(second + first)
    with pytest.raises(NoiseDecryptError):
        decoder.next_message()


@pytest.mark.parametrize("length", [0, 1, TAG_LEN - 1, TAG_LEN])
def test_a_message_too_short_to_hold_a_valid_tag_is_rejected(length: int) -> None:
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(length.to_bytes(2, "big") + bytes(length))
    with pytest.raises(NoiseDecryptError):
        decoder.next_message()


def test_garbage_bytes_are_rejected_not_waited_on() -> None:
    decoder = NoiseMessageDecoder(KEY)
    decoder.feed(b"\x00\x20" + os.urandom(32))
    with pytest.raises(NoiseDecryptError):
        decoder.next_message()


def test_the_last_nonce_is_never_used() -> None:
    encoder = NoiseMessageEncoder(KEY, nonce=MAX_NONCE - 1)
    wire = bytes(encoder.encode(b"last one"))
    with pytest.raises(NoiseNonceExhausted):
        encoder.encode(b"one too many")
    assert encoder.nonce == MAX_NONCE
    decoder = NoiseMessageDecoder(KEY, nonce=MAX_NONCE - 1)
    decoder.feed(wire + wire)
    assert decoder.next_message() == b"last one"
    with pytest.raises(NoiseNonceExhausted):
        decoder.next_message()


def test_a_write_that_would_run_out_of_nonces_sends_nothing_and_keeps_the_nonce() -> None:
    encoder = NoiseMessageEncoder(KEY, nonce=MAX_NONCE - 2)
    with pytest.raises(NoiseNonceExhausted):
        encoder.encode(bytes(3 * MAX_PLAINTEXT_LEN))
    assert encoder.nonce == MAX_NONCE - 2


def test_seal_and_open_handle_one_message_without_its_length_prefix() -> None:
    encoder, decoder = NoiseMessageEncoder(KEY), NoiseMessageDecoder(KEY)
    assert decoder.open(encoder.seal(b"one")) == b"one"
    assert decoder.open(encoder.seal(b"two")) == b"two"
    with pytest.raises(NoiseSessionError):
        encoder.seal(bytes(MAX_PLAINTEXT_LEN + 1))


def test_a_key_that_is_not_32_bytes_is_refused() -> None:
    with pytest.raises(NoiseSessionError):
        NoiseMessageEncoder(b"short")
    with pytest.raises(NoiseSessionError):
        NoiseMessageDecoder(bytes(33))


# --- sessions over loopback TCP -------------------------------------------------------------------


class TamperingRawConnection(RawConnection):
    """A raw connection whose next write can be corrupted, or made to fail, on demand."""

    corrupt_next_write_at: int | None = None
    fail_next_write = False

    async def write(self, data: bytes) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            raise RawConnError("injected write failure")
        if self.corrupt_next_write_at is not None:
            tampered = bytearray(data)
            tampered[self.corrupt_next_write_at] ^= 0x80
            self.corrupt_next_write_at = None
            data = bytes(tampered)
        await super().write(data)


@dataclass
class Pair:
    client: ISecureConn
    server: ISecureConn
    client_raw: TamperingRawConnection
    server_raw: TamperingRawConnection
    client_transport: StockNoiseTransport
    server_transport: StockNoiseTransport


def ours() -> StockNoiseTransport:
    return noise_transport(create_new_key_pair())


def stock() -> StockNoiseTransport:
    return StockNoiseTransport(create_new_key_pair(), noise_privkey=create_x25519_key_pair().private_key)


@asynccontextmanager
async def secure_pair(
    client_factory: Callable[[], StockNoiseTransport] = ours,
    server_factory: Callable[[], StockNoiseTransport] = ours,
) -> AsyncIterator[Pair]:
    """A Noise-secured loopback TCP connection: dialled by a client_factory transport, accepted by a
    server_factory one."""
    client_transport, server_transport = client_factory(), server_factory()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[tuple[ISecureConn, TamperingRawConnection]] = []
    done = trio.Event()

    async def accept() -> None:
        raw = TamperingRawConnection(TrioTCPStream(await listeners[0].accept()), False)
        accepted.append((await server_transport.secure_inbound(raw), raw))
        done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            client_raw = TamperingRawConnection(
                TrioTCPStream(await trio.open_tcp_stream("127.0.0.1", port)), True
            )
            server_id = ID.from_pubkey(server_transport.libp2p_privkey.get_public_key())
            client = await client_transport.secure_outbound(client_raw, server_id)
            await done.wait()
    server, server_raw = accepted[0]
    try:
        yield Pair(client, server, client_raw, server_raw, client_transport, server_transport)
    finally:
        await client.close()
        await server.close()
        for listener in listeners:
            await listener.aclose()


async def read_exactly_total(conn: ISecureConn, total: int) -> bytes:
    out = bytearray()
    while len(out) < total:
        out += await conn.read()
    return bytes(out)


async def test_handshake_gives_sessions_that_know_both_peers_and_the_connection() -> None:
    async with secure_pair() as pair:
        assert isinstance(pair.client, NoiseSession)
        assert isinstance(pair.server, NoiseSession)
        assert isinstance(pair.client_transport, FastNoiseTransport)
        assert pair.client.get_local_peer() == pair.server.get_remote_peer()
        assert pair.server.get_local_peer() == pair.client.get_remote_peer()
        assert pair.client.get_remote_peer() == ID.from_pubkey(
            pair.server_transport.libp2p_privkey.get_public_key()
        )
        # as py-libp2p's SecureSession: the remote "permanent" key is the peer's signed Noise static key
        remote_key = pair.server.get_remote_public_key().to_bytes()
        assert remote_key == pair.client_transport.noise_privkey.get_public_key().to_bytes()
        assert pair.client.is_initiator and not pair.server.is_initiator
        assert pair.client.get_remote_address() == pair.client_raw.get_remote_address()
        assert pair.client.get_remote_address()[0] == "127.0.0.1"
        assert [str(a) for a in pair.server.get_transport_addresses()] == [
            str(a) for a in pair.server_raw.get_transport_addresses()
        ]
        assert pair.client.get_connection_type() == ConnectionType.DIRECT


@pytest.mark.parametrize("size", [1, 12, MAX_PLAINTEXT_LEN, MAX_PLAINTEXT_LEN + 1, 5 * 1024 * 1024 + 3])
async def test_writes_arrive_byte_identical_in_both_directions(size: int) -> None:
    there, back = random_bytes(size, seed=1), random_bytes(size, seed=2)
    async with secure_pair() as pair, trio.open_nursery() as nursery:
        received: dict[str, bytes] = {}

        async def receive(name: str, conn: ISecureConn) -> None:
            received[name] = await read_exactly_total(conn, size)

        nursery.start_soon(receive, "server", pair.server)
        nursery.start_soon(receive, "client", pair.client)
        await pair.client.write(there)
        await pair.server.write(back)
    assert received == {"server": there, "client": back}


@pytest.mark.parametrize(
    ("client_factory", "server_factory"),
    [(ours, stock), (stock, ours)],
    ids=["ours-to-stock", "stock-to-ours"],
)
async def test_interoperates_with_py_libp2p_stock_noise_session(
    client_factory: Callable[[], StockNoiseTransport], server_factory: Callable[[], StockNoiseTransport]
) -> None:
    big = random_bytes(3 * 1024 * 1024, seed=3)
    async with secure_pair(client_factory, server_factory) as pair:
        ours_side, stock_side = (
            (pair.client, pair.server) if client_factory is ours else (pair.server, pair.client)
        )
        assert isinstance(ours_side, NoiseSession)
        assert type(stock_side) is SecureSession
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def receive() -> None:
                got.append(await stock_side.read(len(big)))

            nursery.start_soon(receive)
            await ours_side.write(big)
        assert got == [big]
        for n in range(1, 40):
            await stock_side.write(bytes([n]) * n)
        for n in range(1, 40):
            assert await ours_side.read(n) == bytes([n]) * n


async def test_many_back_to_back_writes_arrive_in_order() -> None:
    writes = [random_bytes(n % 3000 + 1, seed=n) for n in range(2000)]
    async with secure_pair() as pair, trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await read_exactly_total(pair.server, sum(map(len, writes))))

        nursery.start_soon(receive)
        for data in writes:
            await pair.client.write(data)
    assert got == [b"".join(writes)]


async def test_concurrent_writers_never_interleave_inside_a_write() -> None:
    writers, per_writer, size = 6, 20, 150_000
    async with secure_pair() as pair:
        async with trio.open_nursery() as nursery:

            async def writer(tag: int) -> None:
                for _ in range(per_writer):
                    await pair.client.write(bytes([tag]) * size)

            for tag in range(writers):
                nursery.start_soon(writer, tag)
            data = await read_exactly_total(pair.server, writers * per_writer * size)
        runs = [data[at : at + size] for at in range(0, len(data), size)]
        assert all(run == run[:1] * size for run in runs)
        assert sorted(run[0] for run in runs) == sorted(
            tag for tag in range(writers) for _ in range(per_writer)
        )


async def test_read_n_returns_exactly_n_bytes_across_message_boundaries() -> None:
    async with secure_pair() as pair:
        await pair.client.write(b"abc")
        await pair.client.write(b"defgh")
        await pair.client.write(b"ij")
        assert await pair.server.read(1) == b"a"
        assert await pair.server.read(4) == b"bcde"  # spans two messages
        assert await pair.server.read(0) == b""
        assert await pair.server.read(5) == b"fghij"  # rest of one message plus all of the next


async def test_random_read_sizes_reassemble_random_writes() -> None:
    rng = random.Random(7)
    writes = [rng.randbytes(rng.choice([1, 11, 500, 65519, 65520, 200_000])) for _ in range(60)]
    expected = b"".join(writes)
    async with secure_pair() as pair, trio.open_nursery() as nursery:

        async def send() -> None:
            for data in writes:
                await pair.client.write(data)

        nursery.start_soon(send)
        got = bytearray()
        while len(got) < len(expected):
            n = rng.choice([None, 1, 12, 4096, 65519, 70_000, 300_000])
            wanted = None if n is None else min(n, len(expected) - len(got))
            piece = await pair.server.read(wanted)
            assert piece and (wanted is None or len(piece) == wanted)
            got += piece
    assert bytes(got) == expected


async def test_read_none_returns_the_rest_of_the_current_message_then_one_whole_message() -> None:
    async with secure_pair() as pair:
        await pair.client.write(b"0123456789")
        await pair.client.write(b"next")
        assert await pair.server.read(3) == b"012"
        assert await pair.server.read() == b"3456789"
        assert await pair.server.read() == b"next"


async def test_read_none_of_a_large_write_returns_at_most_one_noise_message() -> None:
    data = random_bytes(2 * MAX_PLAINTEXT_LEN + 10, seed=4)
    async with secure_pair() as pair:
        await pair.client.write(data)
        pieces = [await pair.server.read() for _ in range(3)]
        assert [len(p) for p in pieces] == [MAX_PLAINTEXT_LEN, MAX_PLAINTEXT_LEN, 10]
        assert b"".join(pieces) == data


async def test_read_some_returns_every_whole_message_received_so_far_in_order() -> None:
    data = random_bytes(3 * MAX_PLAINTEXT_LEN + 77, seed=6)
    async with secure_pair() as pair, trio.open_nursery() as nursery:
        await pair.client.write(b"head")
        assert await pair.server.read(2) == b"he"
        nursery.start_soon(pair.client.write, data)  # more than the socket buffers hold unread
        received = bytearray(await pair.server.read_some())  # the rest of "head" first, alone
        assert received == b"ad"
        with trio.fail_after(5):
            while len(received) < 2 + len(data):
                received += await pair.server.read_some()
        assert received == b"ad" + data


async def test_a_read_larger_than_a_socket_read_waits_for_all_of_it() -> None:
    data = random_bytes(3 * RECV_SIZE + 5, seed=5)
    async with secure_pair() as pair, trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await pair.server.read(len(data)))

        nursery.start_soon(receive)
        for at in range(0, len(data), 1000):
            await pair.client.write(data[at : at + 1000])
    assert got == [data]


async def test_an_empty_write_sends_nothing() -> None:
    async with secure_pair() as pair:
        await pair.client.write(b"")
        await pair.client.write(b"after")
        assert await pair.server.read() == b"after"


async def test_an_empty_noise_message_from_the_peer_is_skipped() -> None:
    async with secure_pair(stock, ours) as pair:
        await pair.client.conn.write_msg(b"")  # the stock session sends a 16-byte message with no plaintext
        await pair.client.write(b"data")
        assert await pair.server.read() == b"data"


async def test_clean_close_raises_end_of_stream_marked_clean() -> None:
    async with secure_pair() as pair:
        await pair.client.write(b"last words")
        await pair.client.close()
        assert await pair.server.read() == b"last words"
        with pytest.raises(NoiseEndOfStream) as raised:
            await pair.server.read()
        assert isinstance(raised.value, IncompleteReadError)
        assert raised.value.is_clean_close
        with pytest.raises(NoiseEndOfStream):
            await pair.server.read(4)


async def test_a_read_cut_short_by_close_returns_what_arrived_then_raises() -> None:
    async with secure_pair() as pair:
        await pair.client.write(b"12345")
        await pair.client.close()
        assert await pair.server.read(10) == b"12345"
        with pytest.raises(NoiseEndOfStream):
            await pair.server.read(10)


async def test_a_truncated_message_at_eof_raises_end_of_stream_not_clean() -> None:
    async with secure_pair() as pair:
        full = bytes(NoiseMessageEncoder(os.urandom(32)).encode(b"z" * 100))
        await pair.client_raw.write(full[:50])
        await pair.client_raw.close()
        with pytest.raises(NoiseEndOfStream) as raised:
            await pair.server.read()
        assert raised.value.received_bytes == 50
        assert raised.value.expected_bytes == len(full) == 2 + 100 + TAG_LEN
        assert not raised.value.is_clean_close


async def test_a_corrupted_ciphertext_byte_raises_decrypt_error_and_closes_the_connection() -> None:
    async with secure_pair() as pair:
        await pair.client.write(b"good")
        pair.client_raw.corrupt_next_write_at = 7
        await pair.client.write(b"tampered message")
        assert await pair.server.read() == b"good"
        with trio.fail_after(5), pytest.raises(NoiseDecryptError):
            await pair.server.read()
        with pytest.raises(NoiseDecryptError):
            await pair.server.read(3)
        # the server closed its end: the client sees the stream end instead of hanging
        with trio.fail_after(5), pytest.raises(NoiseEndOfStream):
            await pair.client.read()


async def test_garbage_after_the_handshake_raises_decrypt_error_not_a_hang() -> None:
    async with secure_pair() as pair:
        await pair.client_raw.write(b"\x00\x40" + os.urandom(64))
        with trio.fail_after(5), pytest.raises(NoiseDecryptError):
            await pair.server.read()


async def test_an_interrupted_write_makes_later_writes_fail_instead_of_desynchronising() -> None:
    async with secure_pair() as pair:
        pair.client_raw.fail_next_write = True
        with pytest.raises(IOException):
            await pair.client.write(b"lost")
        with pytest.raises(NoiseWriteInterrupted):
            await pair.client.write(b"would not decrypt")


async def test_a_cancelled_write_waiting_for_the_lock_does_not_break_the_session() -> None:
    async with secure_pair() as pair:
        big = bytes(8 * 1024 * 1024)  # more than the socket buffers hold: the first writer blocks
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair.client.write, big)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.05):
                await pair.client.write(b"never queued")  # cancelled while waiting for the lock
            assert await read_exactly_total(pair.server, len(big)) == big
        await pair.client.write(b"still fine")
        assert await pair.server.read() == b"still fine"


async def test_two_concurrent_readers_are_refused() -> None:
    async with secure_pair() as pair, trio.open_nursery() as nursery:
        nursery.start_soon(pair.server.read)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await pair.server.read()
        await pair.client.write(b"x")


async def test_stock_read_writer_encrypt_and_decrypt_are_single_messages() -> None:
    async with secure_pair() as pair:
        assert isinstance(pair.client, NoiseSession) and isinstance(pair.server, NoiseSession)
        ciphertext = pair.client.conn.encrypt(b"direct")
        assert len(ciphertext) == len(b"direct") + TAG_LEN
        assert pair.server.conn.decrypt(ciphertext) == b"direct"
        await pair.client.write(b"then the stream")  # nonces stayed in step on both sides
        assert await pair.server.read() == b"then the stream"


# --- hosts ---------------------------------------------------------------------------------------

ECHO = TProtocol("/ipfsreg-test/echo/1.0.0")


async def test_two_hosts_exchange_megabytes_through_noise_sessions(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    payload = random_bytes(4 * 1024 * 1024 + 17, seed=6)

    async def echo(stream: object) -> None:
        data = bytearray()
        while len(data) < len(payload):
            chunk = await stream.read(len(payload) - len(data))
            if not chunk:
                break
            data += chunk
        await stream.write(bytes(data))
        await stream.close()

    a.host.set_stream_handler(ECHO, echo)
    await b.connect(a.listen_addrs()[0])
    stream = await b.host.new_stream(a.host.get_id(), [ECHO])
    with trio.fail_after(30):
        await stream.write(payload)
        back = bytearray()
        while len(back) < len(payload):
            chunk = await stream.read(len(payload) - len(back))
            if not chunk:
                break
            back += chunk
    assert bytes(back) == payload
    for node in (a, b):
        conns = [c for cs in node.host.get_network().connections.values() for c in cs]
        assert conns and all(isinstance(c.muxed_conn.secured_conn, NoiseSession) for c in conns)
