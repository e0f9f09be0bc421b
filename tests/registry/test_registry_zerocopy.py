"""Zero-copy blob GETs (registry/zerocopy.py, the ``http.response.zerocopysend`` extension of
httpserver.py): a response carries the blob's bytes or is cut short, never other bytes, whatever
happens to the pack files while it is sent (served over real HTTP on loopback, read with raw
sockets so a test can stop reading mid-body)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from registry_helpers import Server

from ipfsreg.cid import CID
from ipfsreg.gc import collector_for
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.handlers.base import Context
from ipfsreg.registry.zerocopy import SendableLeaves
from ipfsreg.unixfs import dagpb

MIB = 1024 * 1024
NAME = "zc/app"
# Larger than every socket buffer between server and a client that reads nothing more (its
# receive buffer is cut to 64 KiB): the server is left blocked mid-body.
STALL_BLOB = 24 * MIB
CLIENT_RCVBUF = 64 * 1024


def _blob(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _leaves(server: Server) -> SendableLeaves:
    ctx: Context = server.app.extensions["ipfsreg.registry"]
    return ctx.sendable_leaves


class RawResponse:
    """One GET on its own socket, read as far as the test says."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    @property
    def length(self) -> int:
        return int(self.headers["content-length"])

    async def read_head(self) -> None:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = await self.sock.recv(65536)
            assert chunk, "connection closed before the response head"
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body += rest

    async def read_body(self, up_to: int | None = None) -> bool:
        """Read until ``up_to`` body bytes (all of them by default); False if the server closed first."""
        want = self.length if up_to is None else up_to
        while len(self.body) < want:
            try:
                chunk = await self.sock.recv(min(1 << 20, want - len(self.body)))
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self.body += chunk
        return True

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (it sends nothing more) within a few seconds."""
        with trio.move_on_after(10):
            while True:
                try:
                    chunk = await self.sock.recv(65536)
                except ConnectionResetError:
                    return True
                if not chunk:
                    return True
                self.body += chunk
        return False


@asynccontextmanager
async def raw_get(
    server: Server, path: str, headers: dict[str, str] | None = None, *, rcvbuf: int | None = None
) -> AsyncIterator[RawResponse]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        host, port = server.host.split(":")
        await sock.connect((host, int(port)))
        lines = [f"GET {path} HTTP/1.1", f"Host: {server.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = RawResponse(sock)
        await response.read_head()
        yield response
    finally:
        sock.close()


async def _until(condition: Callable[[], object], what: str) -> None:
    with trio.move_on_after(20):
        while not condition():  # noqa: ASYNC110 - the server's tasks change it
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting until {what}")


def _pack_files(server: Server) -> list[Path]:
    return sorted(server.datastore.packs.directory.glob("*.pack"))


def _leaf_cids(server: Server, digest: str) -> list[CID]:
    info = server.store.blob_info(parse_digest(digest))
    assert info is not None
    return [link.cid for link in dagpb.decode(server.datastore.blocks.get(info.cid)).links]


async def test_zero_copy_blob_get_sends_the_blobs_bytes_through_sendfile(registry: Server) -> None:
    data = _blob(3 * MIB + 4321)
    digest = await registry.push_blob(NAME, data)
    resp = await registry.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(resp.content).hexdigest() == digest.removeprefix("sha256:")
    assert _leaves(registry).checks == 12  # twelve whole 256 KiB leaves went out zero-copy
    again = await registry.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert again.content == data
    assert _leaves(registry).checks == 12  # checked within VERIFY_SECONDS: not read again
    await _until(lambda: not registry.datastore.leased(), "the lease ends with the response")


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=0-262143", 0, 262144),  # exactly the first leaf
        ("bytes=262143-262144", 262143, 262145),  # the last byte of a leaf and the first of the next
        ("bytes=1000-900000", 1000, 900001),  # starts and ends inside leaves, spans whole ones
        ("bytes=524288-", 524288, None),  # from a leaf boundary to the end
        ("bytes=-5000", -5000, None),  # the last 5,000 bytes (the inline last leaf and part of one before)
        ("bytes=3145727-3145728", 3145727, 3145729),  # across the last packed leaf's end
    ],
)
async def test_zero_copy_range_get_sends_exactly_the_range(
    registry: Server, header: str, start: int, stop: int | None
) -> None:
    data = _blob(3 * MIB + 4321, seed=2)
    digest = await registry.push_blob(NAME, data)
    resp = await registry.client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": header})
    assert resp.status_code == 206
    expected = data[start:stop]
    first = start % len(data)
    assert resp.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert resp.content == expected
    assert _leaves(registry).checks > 0 or len(expected) < 262144


async def test_head_of_a_zero_copy_blob_sends_no_body_and_reads_no_leaf(registry: Server) -> None:
    data = _blob(2 * MIB, seed=3)
    digest = await registry.push_blob(NAME, data)
    resp = await registry.client.head(f"/v2/{NAME}/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.content == b""
    assert _leaves(registry).checks == 0
    # The connection is still in step: the next request on it gets its own answer.
    follow = await registry.client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert follow.content == data[:10]


async def test_blob_deleted_and_collected_during_a_zero_copy_send_is_sent_whole(registry: Server) -> None:
    data = _blob(STALL_BLOB, seed=4)
    digest = await registry.push_blob(NAME, data)
    collector = collector_for(registry.datastore, registry.store)
    async with raw_get(registry, f"/v2/{NAME}/blobs/{digest}", rcvbuf=CLIENT_RCVBUF) as resp:
        assert resp.status == 200
        assert await resp.read_body(MIB)
        await _until(lambda: registry.datastore.leased(), "the response leases its blocks")
        deleted = await registry.client.delete(f"/v2/{NAME}/blobs/{digest}")
        assert deleted.status_code == 202
        report = await collector.run()
        assert report.removed_blocks == 0  # every block of the blob is leased by the response
        assert await resp.read_body()
        assert hashlib.sha256(resp.body).hexdigest() == digest.removeprefix("sha256:")
    await _until(lambda: not registry.datastore.leased(), "the lease ends with the response")
    report = await collector.run()
    assert report.removed_blocks == 1 + STALL_BLOB // (256 * 1024)  # the root and every leaf
    gone = await registry.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert gone.status_code == 404


@pytest.mark.parametrize("checked_before", [False, True], ids=["first-send", "checked-before"])
async def test_block_deleted_outside_gc_during_a_zero_copy_send_cuts_the_response_short(
    registry: Server, checked_before: bool
) -> None:
    data = _blob(STALL_BLOB, seed=5)
    digest = await registry.push_blob(NAME, data)
    leaves = _leaf_cids(registry, digest)
    if checked_before:
        # A full GET first: the leaves' CRC checks are fresh, so the next sends trust the page
        # cache and take the bytes straight from the (then punched) pack file.
        assert (await registry.client.get(f"/v2/{NAME}/blobs/{digest}")).content == data
    async with raw_get(registry, f"/v2/{NAME}/blobs/{digest}", rcvbuf=CLIENT_RCVBUF) as resp:
        assert await resp.read_body(MIB)
        await _until(lambda: registry.datastore.leased(), "the response leases its blocks")
        # The last leaf (the blob is a whole number of leaves: it lies in a pack file) goes away
        # behind the lease's back, its pages punched out: it must not go out as zeros.
        assert registry.datastore.blocks.delete(leaves[-1])
        assert not await resp.read_body()
        assert len(resp.body) < len(data)
    await _until(lambda: not registry.datastore.leased(), "the lease ends with the response")
    assert (await registry.client.get("/v2/")).status_code == 200


async def test_truncated_pack_file_cuts_a_zero_copy_response_short_and_the_server_serves_on(
    registry: Server,
) -> None:
    data = _blob(4 * MIB, seed=6)
    digest = await registry.push_blob(NAME, data)
    first = await registry.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert first.content == data  # the leaves' checks are now fresh: sends trust the page cache
    (pack,) = _pack_files(registry)
    os.truncate(pack, pack.stat().st_size // 2)
    async with raw_get(registry, f"/v2/{NAME}/blobs/{digest}") as resp:
        assert resp.status == 200
        assert not await resp.read_body()
        assert len(resp.body) < len(data)
        assert bytes(resp.body) == data[: len(resp.body)]
    assert (await registry.client.get("/v2/")).status_code == 200
    await _until(lambda: not registry.datastore.leased(), "the lease ends with the response")


async def test_truncated_pack_file_found_by_the_first_check_cuts_the_response_short(
    registry: Server,
) -> None:
    data = _blob(4 * MIB, seed=7)
    digest = await registry.push_blob(NAME, data)
    (pack,) = _pack_files(registry)
    os.truncate(pack, pack.stat().st_size // 2)
    async with raw_get(registry, f"/v2/{NAME}/blobs/{digest}") as resp:
        assert resp.status == 200
        assert not await resp.read_body()
        assert len(resp.body) < len(data)
        assert bytes(resp.body) == data[: len(resp.body)]
    assert (await registry.client.get("/v2/")).status_code == 200


async def test_client_that_disconnects_mid_send_ends_only_its_response(registry: Server) -> None:
    data = _blob(STALL_BLOB, seed=8)
    digest = await registry.push_blob(NAME, data)
    fds_before = len(os.listdir("/proc/self/fd"))
    async with raw_get(registry, f"/v2/{NAME}/blobs/{digest}", rcvbuf=CLIENT_RCVBUF) as resp:
        assert await resp.read_body(MIB)
        await _until(lambda: registry.datastore.leased(), "the response leases its blocks")
        # A reset, not a FIN: the server's next send fails at once.
        resp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await _until(lambda: not registry.datastore.leased(), "the lease ends with the response")
    await _until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before, "the pack descriptors close")
    again = await registry.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert hashlib.sha256(again.content).hexdigest() == digest.removeprefix("sha256:")
