"""Socket reads of the registry's HTTP server: large reads, gathered while a body streams in
(served over real HTTP on loopback)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h11
import httpx
import hypercorn.trio.run as hypercorn_run
import hypercorn.trio.tcp_server as hypercorn_tcp
import trio

from ipfsreg import httpserver
from ipfsreg.httpserver import SOCKET_READ_BYTES, GuardedTCPServer
from ipfsreg.registry.testing import RunningRegistry, running_registry


def test_socket_reads_are_raised_and_the_guarded_server_is_installed_idempotently() -> None:
    httpserver.install()
    httpserver.install()
    assert hypercorn_tcp.MAX_RECV >= SOCKET_READ_BYTES
    assert hypercorn_run.TCPServer is GuardedTCPServer  # type: ignore[attr-defined]


async def _responses(stream: trio.SocketStream, methods: list[str]) -> list[tuple[int, bytes]]:
    """Read one response per request sent (pipelined), in order: (status, body)."""
    out: list[tuple[int, bytes]] = []
    leftover = b""
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        if leftover:
            conn.receive_data(leftover)  # b"" would mean end of stream
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif type(event) is h11.Response:
                status = event.status_code
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
        leftover = bytes(conn.trailing_data[0])
        out.append((status, body))
    return out


async def test_chunked_body_streamed_in_bursts_then_a_request_on_the_same_connection(tmp_path: Path) -> None:
    blob = bytes(range(256)) * (12 * 1024)  # 3 MiB
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    registry: RunningRegistry
    async with running_registry(tmp_path / "data") as registry:
        started = await registry.client.post("/v2/app/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["Location"]
        target = httpx.URL(location).raw_path.decode()  # origin-form: the path and the query
        host, _, port = str(registry.host).partition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        head = (
            f"PATCH {target} HTTP/1.1\r\nHost: {registry.host}\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await stream.send_all(head.encode())
        for i in range(0, len(blob), 100_000):
            piece = blob[i : i + 100_000]
            await stream.send_all(b"%x\r\n" % len(piece) + piece + b"\r\n")
            if i % 500_000 == 0:
                await trio.sleep(0.01)  # bursts and gaps, as a real client sends
        # The body's end and the next request arrive together: nothing may wait for more bytes.
        await stream.send_all(b"0\r\n\r\n" + f"GET /v2/ HTTP/1.1\r\nHost: {registry.host}\r\n\r\n".encode())
        with trio.fail_after(30):
            (patched, _), (base, base_body) = await _responses(stream, ["PATCH", "GET"])
        await stream.aclose()
        assert patched == 202
        assert base == 200 and base_body.strip() == b"{}"
        done = await registry.client.put(location, params={"digest": digest})
        assert done.status_code == 201
        got = await registry.client.get(f"/v2/app/blobs/{digest}")
        assert got.content == blob
