"""Memory and caps of upload sessions: no chunk buffer until bytes arrive, at most
``max_live_uploads`` sessions in memory (the least recently used idle one is dropped to its saved
state), at most ``max_uploads_per_client`` open per client (429 TOOMANYREQUESTS + Retry-After).

The 10,000-session bound is measured on a real `ipfsreg serve` child process (its peak RSS): a
correctness bound on memory per session, not a timing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from registry_helpers import make_settings, running_registry, sha256

SESSIONS = 10_000
RSS_BOUND_MIB = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of process ``pid`` in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _pipelined_posts(port: int, count: int, connections: int = 10) -> dict[int, int]:
    """``count`` session-opening POSTs pipelined over a few connections: {status: how many}."""
    statuses: dict[int, int] = {}
    request = b"POST /v2/load/app/blobs/uploads/ HTTP/1.1\r\nHost: registry\r\nContent-Length: 0\r\n\r\n"

    async def one_connection(n: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request * n)
            seen = 0
            buffer = b""
            while seen < n:
                chunk = await stream.receive_some(1 << 20)
                assert chunk, f"connection closed after {seen} of {n} responses"
                buffer += chunk
                while True:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buffer[:end].decode("latin-1")
                    length = 0
                    for line in head.split("\r\n")[1:]:
                        if line.lower().startswith("content-length:"):
                            length = int(line.split(":", 1)[1])
                    if len(buffer) < end + 4 + length:
                        break
                    status = int(head.split(" ", 2)[1])
                    statuses[status] = statuses.get(status, 0) + 1
                    buffer = buffer[end + 4 + length :]
                    seen += 1

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(one_connection, count // connections + (i < count % connections))
    return statuses


async def test_ten_thousand_open_upload_sessions_stay_under_200_mib_rss(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "IPFSREG_REGISTRY_MAX_LIVE_UPLOADS": str(SESSIONS),  # every session stays in memory
        "IPFSREG_REGISTRY_MAX_UPLOADS_PER_CLIENT": "0",
    }
    command = [sys.executable, "-m", "ipfsreg", "serve", "--data", str(tmp_path / "data")]
    command += ["--log-level", "warning", "--registry-listen", f"127.0.0.1:{port}"]
    command += ["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        banner = b""
        with trio.fail_after(60):
            while b"\n" not in banner:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the server exited before it was running"
                banner += chunk
        assert banner.startswith(b"ipfsreg is running")
        statuses = await _pipelined_posts(port, SESSIONS)
        assert statuses == {202: SESSIONS}
        # Every session is still open (in memory: max_live_uploads allows all of them).
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            started = await client.post("/v2/load/app/blobs/uploads/")
            assert started.status_code == 202
            data = os.urandom(300_000)
            patched = await client.patch(started.headers["Location"], content=data)
            assert patched.status_code == 202
            done = await client.put(patched.headers["Location"], params={"digest": sha256(data)})
            assert done.status_code == 201
        rss, peak = _memory_mib(proc.pid)
        assert peak < RSS_BOUND_MIB, f"RSS {rss:.0f} MiB, peak {peak:.0f} MiB with {SESSIONS} sessions"
    finally:
        proc.kill()
        with trio.fail_after(30):
            await proc.wait()


async def test_upload_sessions_past_the_per_client_cap_get_429_with_retry_after(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(max_uploads_per_client=3)) as server:
        locations = []
        for _ in range(3):
            resp = await server.client.post("/v2/app/blobs/uploads/")
            assert resp.status_code == 202
            locations.append(resp.headers["Location"])
        refused = await server.client.post("/v2/app/blobs/uploads/")
        assert refused.status_code == 429
        assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert int(refused.headers["Retry-After"]) > 0
        # Another client (another loopback address) has its own allowance.
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=server.url, transport=other) as second:
            assert (await second.post("/v2/app/blobs/uploads/")).status_code == 202
        # Finishing one session and cancelling another give their places back.
        done = await server.client.put(locations[0], params={"digest": sha256(b"")})
        assert done.status_code == 201
        assert (await server.client.delete(locations[1])).status_code == 204
        for _ in range(2):
            assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 202
        assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 429
        # Monolithic uploads open no session: never refused by the cap.
        blob = b"monolithic"
        params = {"digest": sha256(blob)}
        resp = await server.client.post("/v2/app/blobs/uploads/", params=params, content=blob)
        assert resp.status_code == 201


async def test_open_sessions_are_counted_again_after_a_restart(tmp_path: Path) -> None:
    settings = make_settings(max_uploads_per_client=2)
    async with running_registry(tmp_path, settings) as server:
        for _ in range(2):
            assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 202
    async with running_registry(tmp_path, settings) as server:
        assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 429


async def test_sessions_past_the_live_cap_are_dropped_to_saved_state_and_resume(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(max_live_uploads=3)) as server:
        data = os.urandom(100_000)
        first = await server.client.post("/v2/app/blobs/uploads/")
        patched = await server.client.patch(first.headers["Location"], content=data[:60_000])
        assert patched.status_code == 202
        for _ in range(4):
            assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 202
        assert server.store.live_uploads == 3
        # The first session (least recently used) left memory; it resumes from its saved state.
        resumed = await server.client.patch(patched.headers["Location"], content=data[60_000:])
        assert resumed.status_code == 202
        assert resumed.headers["Range"] == f"0-{len(data) - 1}"
        done = await server.client.put(resumed.headers["Location"], params={"digest": sha256(data)})
        assert done.status_code == 201
        assert (await server.client.get(done.headers["Location"])).content == data
        assert server.store.live_uploads <= 3


async def test_a_new_session_gets_429_when_every_session_in_memory_is_busy(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(max_live_uploads=2)) as server:
        for _ in range(2):
            assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 202
        busy = list(server.store._live.values())
        for upload in busy:
            await upload.lock.acquire()  # as a chunk being written holds it
        refused = await server.client.post("/v2/app/blobs/uploads/")
        assert refused.status_code == 429
        assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert refused.headers["Retry-After"] == "1"
        busy[0].lock.release()
        assert (await server.client.post("/v2/app/blobs/uploads/")).status_code == 202
        busy[1].lock.release()
