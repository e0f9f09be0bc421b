"""The file sender thread (ipfsreg/filesender.py) that sends zero-copy bodies beside the event loop:
byte-exact sends, one stalled reader never holds the others, cancellation and shutdown end a send and
release its descriptors; and the same through the registry over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio
from registry_helpers import Server, running_registry
from test_registry_zerocopy import CLIENT_RCVBUF, STALL_BLOB, raw_get

from ipfsreg import filesender
from ipfsreg.filesender import FileSender, FileShorterThanSent, SenderClosed, SendfileUnsupported

MIB = 1024 * 1024
NAME = "fs/app"
_SENDER_THREAD = "ipfsreg file sender"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def _file(tmp_path: Path, data: bytes) -> Iterator[int]:
    path = tmp_path / "body"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@asynccontextmanager
async def _pair(rcvbuf: int | None = None) -> AsyncIterator[tuple[trio.socket.SocketType, socket.socket]]:
    """A connected (trio server side, plain client side) TCP pair on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    accepted.setblocking(False)
    server = trio.socket.from_stdlib_socket(accepted)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


async def _read_all(sock: socket.socket, size: int) -> bytes:
    def read() -> bytes:
        got = bytearray()
        while len(got) < size:
            chunk = sock.recv(min(MIB, size - len(got)))
            if not chunk:
                break
            got += chunk
        return bytes(got)

    return await trio.to_thread.run_sync(read)


async def test_sender_sends_extents_in_order_byte_exact_to_many_sockets_at_once(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 * MIB + 777)
    extents = [(0, 2 * MIB), (5, 1000), (MIB, MIB + 777), (3 * MIB, 777)]
    expected = b"".join(data[offset : offset + count] for offset, count in extents)
    with _file(tmp_path, data) as fd:
        async with filesender.running() as sender:

            async def one() -> None:
                async with _pair() as (server, client), trio.open_nursery() as nursery:
                    nursery.start_soon(sender.send, server, [(fd, o, c) for o, c in extents])
                    assert await _read_all(client, len(expected)) == expected

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(one)
            assert sender.jobs == 12


async def test_a_reader_that_stops_reading_does_not_hold_up_the_others(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(16 * MIB)
    with _file(tmp_path, data) as fd:
        async with (
            filesender.running() as sender,
            _pair(rcvbuf=CLIENT_RCVBUF) as (stalled, _),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(sender.send, stalled, [(fd, 0, len(data))])
            async with _pair() as (server, client), trio.open_nursery() as inner:
                inner.start_soon(sender.send, server, [(fd, 0, len(data))])
                assert await _read_all(client, len(data)) == data
            nursery.cancel_scope.cancel()  # the stalled send ends with its cancellation


async def test_cancelled_send_returns_and_releases_its_socket_descriptor(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(16 * MIB)
    with _file(tmp_path, data) as fd:
        async with filesender.running() as sender, _pair(rcvbuf=CLIENT_RCVBUF) as (server, _):
            before = _open_fds()
            with trio.move_on_after(0.5) as scope:
                await sender.send(server, [(fd, 0, len(data))])  # the client reads nothing
            assert scope.cancelled_caught
            assert _open_fds() == before  # the thread's duplicate of the socket is closed


async def test_sends_still_under_way_when_the_sender_stops_fail_with_sender_closed(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(16 * MIB)
    failures: list[BaseException] = []
    with _file(tmp_path, data) as fd:
        async with _pair(rcvbuf=CLIENT_RCVBUF) as (server, _):
            before = _open_fds()
            async with trio.open_nursery() as nursery:
                sender = FileSender()
                sender.start()

                async def send() -> None:
                    try:
                        await sender.send(server, [(fd, 0, len(data))])
                    except SenderClosed as exc:
                        failures.append(exc)

                nursery.start_soon(send)
                while sender.jobs == 0:  # noqa: ASYNC110 - the task above submits it
                    await trio.sleep(0.01)
                await sender.aclose()
            assert len(failures) == 1
            assert _open_fds() <= before
            with pytest.raises(SenderClosed):
                await sender.send(server, [(fd, 0, 10)])


async def test_extent_past_the_end_of_its_file_fails_with_file_shorter_than_sent(tmp_path: Path) -> None:
    with _file(tmp_path, b"x" * 1000) as fd:
        async with filesender.running() as sender, _pair() as (server, client):
            with pytest.raises(FileShorterThanSent):
                await sender.send(server, [(fd, 0, 1000), (fd, 500, 1000)])
            assert await _read_all(client, 1500) == b"x" * 1500


async def test_a_file_that_sendfile_refuses_comes_back_unsent_for_the_caller_to_copy(tmp_path: Path) -> None:
    directory = os.open(tmp_path, os.O_RDONLY)  # sendfile cannot read a directory: EINVAL
    try:
        async with filesender.running() as sender, _pair() as (server, _):
            with pytest.raises(SendfileUnsupported) as refused:
                await sender.send(server, [(directory, 0, 10), (directory, 10, 5)])
            assert refused.value.remaining == ((directory, 0, 10), (directory, 10, 5))
    finally:
        os.close(directory)


async def test_registry_blob_gets_go_through_the_file_sender_and_a_stalled_reader_holds_none(
    registry: Server,
) -> None:
    data = random.Random(5).randbytes(STALL_BLOB)
    digest = await registry.push_blob(NAME, data)
    async with raw_get(registry, f"/v2/{NAME}/blobs/{digest}", rcvbuf=CLIENT_RCVBUF) as stalled:
        assert await stalled.read_body(MIB)
        results: list[bytes] = []

        async def pull() -> None:
            resp = await registry.client.get(f"/v2/{NAME}/blobs/{digest}")
            results.append(resp.content)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(pull)
    assert len(results) == 8
    assert all(hashlib.sha256(body).hexdigest() == digest.removeprefix("sha256:") for body in results)


async def test_registry_shutdown_during_a_stalled_send_ends_it_and_closes_its_descriptors(
    tmp_path: Path,
) -> None:
    data = random.Random(6).randbytes(STALL_BLOB)
    before = _open_fds()
    with trio.fail_after(60):  # a hang guard: the server must stop at all
        async with running_registry(tmp_path / "data") as server:
            digest = await server.push_blob(NAME, data)
            async with raw_get(server, f"/v2/{NAME}/blobs/{digest}", rcvbuf=CLIENT_RCVBUF) as stalled:
                assert await stalled.read_body(MIB)
                assert server.datastore.leased()  # the response is mid-body, blocked on the client
                assert _SENDER_THREAD in {t.name for t in threading.enumerate()}
                # The client's end stays open (not reading) while the server stops.
                kept = os.dup(stalled.sock.fileno())
    try:
        assert _SENDER_THREAD not in {t.name for t in threading.enumerate()}
    finally:
        os.close(kept)
    assert _open_fds() <= before
