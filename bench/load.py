"""Latency under load: small requests beside bulk transfers, ipfsreg against the reference registry.

The mix (as in issue 13): ``PULLERS`` clients pull one ``PULL_MB`` blob over and over, ``PUSHERS``
clients push fresh ``PUSH_MB`` blobs (POST, one streamed PATCH, PUT ?digest=, as docker does), and
a probe GETs a small manifest by tag every ``PROBE_INTERVAL`` seconds on a kept-alive connection.
The same mix runs for ``SECONDS`` against a fresh ``ipfsreg serve`` (child process, own data dir)
and a fresh Debian ``docker-registry`` (filesystem storage), one after the other in the same run,
alternating which goes first over ``ROUNDS``. Load and probe run in two child processes of their
own (trio and raw sockets: the client costs little next to the servers), so the probe's timings are
not held up by the load generator's work.

Prints, per registry: pull and push MB/s, manifest GET p50/p99/max, errors, and the server's peak
RSS (VmHWM), with the goals: manifest p99 <= the reference's, pull and push MB/s >= the
reference's, ipfsreg peak RSS <= 300 MiB.

Environment: BENCH_LOAD_SECONDS (20), BENCH_LOAD_PULLERS (50), BENCH_LOAD_PUSHERS (20),
BENCH_LOAD_PULL_MB (50), BENCH_LOAD_PUSH_MB (8), BENCH_LOAD_ROUNDS (1).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from bench.registry import (
    REFERENCE_BINARY,
    Server,
    _free_port,
    _reference,
    _RssSampler,
    _status_kib,
    _stop,
    _wait_ready,
)

MB: Final = 1_000_000
PROBE_INTERVAL: Final = 0.02
REPO: Final = "bench/load"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
RP99_GOAL: Final = "p99 <= reference"
RSS_GOAL_MIB: Final = 300


def _env(name: str, default: float) -> float:
    return float(os.environ.get(f"BENCH_LOAD_{name}", default))


# --- a lean HTTP/1.1 client on trio ------------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """One kept-alive HTTP/1.1 connection; responses must carry Content-Length or be chunked."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.buffer = bytearray()
        self.body_bytes = 0
        """Response body bytes received so far on this connection (counted as they arrive)."""

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(await trio.open_tcp_stream(host, port), f"{host}:{port}")

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(1 << 20)
        if not chunk:
            raise HttpError("connection closed by the server")
        self.buffer += chunk

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | memoryview = b"",
        *,
        discard_body: bool = False,
        progress: dict[int, int] | None = None,
        key: int = 0,
    ) -> tuple[int, dict[str, str], bytes, int]:
        """Send a request, read its response: (status, headers, body, body length)."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        await self.stream.send_all(head)
        view = memoryview(body)
        for start in range(0, len(view), 1 << 20):
            await self.stream.send_all(view[start : start + (1 << 20)])
            if progress is not None:
                progress[key] = min(len(view), start + (1 << 20))
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        status_line, *header_lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        status = int(status_line.split(" ", 2)[1])
        got: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            got[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304):
            return status, got, b"", 0
        if "content-length" in got:
            data, length = await self._read_exact(int(got["content-length"]), discard_body)
        elif "chunked" in got.get("transfer-encoding", ""):
            data, length = await self._read_chunked(discard_body)
        else:
            raise HttpError(f"{method} {target}: response without a length")
        return status, got, data, length

    async def _read_exact(self, size: int, discard: bool) -> tuple[bytes, int]:
        parts: list[bytes] = []
        left = size
        if discard:
            # Straight into one scratch buffer, no copies: the client must cost far less than the
            # servers it measures.
            take = min(left, len(self.buffer))
            del self.buffer[:take]
            left -= take
            self.body_bytes += take
            scratch = _scratch()
            while left:
                got = await self.stream.socket.recv_into(scratch, min(left, len(scratch)))
                if not got:
                    raise HttpError("connection closed by the server")
                left -= got
                self.body_bytes += got
            return b"", size
        while left:
            if not self.buffer:
                await self._fill()
            take = min(left, len(self.buffer))
            parts.append(bytes(self.buffer[:take]))
            del self.buffer[:take]
            left -= take
            self.body_bytes += take
        return b"".join(parts), size

    async def _read_chunked(self, discard: bool) -> tuple[bytes, int]:
        parts: list[bytes] = []
        total = 0
        while True:
            while (eol := self.buffer.find(b"\r\n")) < 0:
                await self._fill()
            size = int(bytes(self.buffer[:eol]).split(b";")[0], 16)
            del self.buffer[: eol + 2]
            data, _ = await self._read_exact(size + 2, discard)
            total += size
            if not discard:
                parts.append(data[:-2])
            if size == 0:
                return b"".join(parts), total


_SCRATCH: list[bytearray] = []


def _scratch() -> bytearray:
    if not _SCRATCH:
        _SCRATCH.append(bytearray(1 << 20))
    return _SCRATCH[0]


def _origin_form(location: str) -> str:
    """The path and query of a Location (the reference registry sends absolute URLs)."""
    if location.startswith("http://") or location.startswith("https://"):
        rest = location.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return location


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(
    conn: Connection, data: bytes, progress: dict[int, int] | None = None, key: int = 0
) -> None:
    """POST, one streamed PATCH, PUT ?digest= (docker's way); ``progress[key]``: body bytes sent."""
    status, headers, _, _ = await conn.request("POST", f"/v2/{REPO}/blobs/uploads/")
    if status != 202:
        raise HttpError(f"POST upload: {status}")
    location = _origin_form(headers["location"])
    status, headers, _, _ = await conn.request(
        "PATCH", location, {"Content-Type": "application/octet-stream"}, data, progress=progress, key=key
    )
    if status != 202:
        raise HttpError(f"PATCH: {status}")
    location = _origin_form(headers["location"])
    sep = "&" if "?" in location else "?"
    status, _, _, _ = await conn.request("PUT", f"{location}{sep}digest={_sha256(data)}")
    if status != 201:
        raise HttpError(f"PUT: {status}")


async def seed(host: str, port: int, pull_bytes: int) -> dict[str, str]:
    """Push the blob the pullers pull and a small image whose manifest the probe GETs."""
    rng = random.Random(7)
    blob = rng.randbytes(pull_bytes)
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    conn = await Connection.open(host, port)
    try:
        for data in (blob, config):
            await push_blob(conn, data)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _sha256(blob),
                        "size": len(blob),
                    }
                ],
            }
        ).encode()
        status, _, _, _ = await conn.request(
            "PUT", f"/v2/{REPO}/manifests/latest", {"Content-Type": OCI_MANIFEST}, manifest
        )
        if status != 201:
            raise HttpError(f"manifest PUT: {status}")
    finally:
        await conn.aclose()
    return {"blob": _sha256(blob)}


# --- the child processes -------------------------------------------------------------------------


async def run_load(host: str, port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Pullers and pushers for ``spec["seconds"]``: bytes moved and errors."""
    # Bytes count as they move (a 50 MB pull shared by 50 clients may not finish within the run).
    totals = {"pulled": 0, "pushed": 0, "pulls": 0, "pushes": 0, "errors": 0}
    errors: list[str] = []
    pull_conns: list[Connection] = []
    push_progress: dict[int, int] = {}
    blob_path = f"/v2/{REPO}/blobs/{spec['blob']}"
    push_bytes = int(spec["push_bytes"])

    async def puller() -> None:
        conn = await Connection.open(host, port)
        pull_conns.append(conn)
        while True:
            try:
                status, _, _, _ = await conn.request("GET", blob_path, discard_body=True)
                if status != 200:
                    raise HttpError(f"blob GET: {status}")
                totals["pulls"] += 1
            except (HttpError, OSError, trio.BrokenResourceError) as exc:
                totals["errors"] += 1
                errors.append(f"pull: {exc}")
                await conn.aclose()
                totals["pulled"] += conn.body_bytes
                pull_conns.remove(conn)
                conn = await Connection.open(host, port)
                pull_conns.append(conn)

    async def pusher(seed_value: int) -> None:
        rng = random.Random(seed_value)
        conn = await Connection.open(host, port)
        while True:
            data = await trio.to_thread.run_sync(rng.randbytes, push_bytes)
            try:
                await push_blob(conn, data, push_progress, seed_value)
                totals["pushed"] += len(data)
                push_progress[seed_value] = 0
                totals["pushes"] += 1
            except (HttpError, OSError, trio.BrokenResourceError) as exc:
                totals["errors"] += 1
                errors.append(f"push: {exc}")
                await conn.aclose()
                conn = await Connection.open(host, port)

    began = trio.current_time()
    with trio.move_on_after(float(spec["seconds"])):
        async with trio.open_nursery() as nursery:
            for _ in range(int(spec["pullers"])):
                nursery.start_soon(puller)
            for i in range(int(spec["pushers"])):
                nursery.start_soon(pusher, 1000 + i)
    totals["pulled"] += sum(conn.body_bytes for conn in pull_conns)
    totals["pushed"] += sum(push_progress.values())  # bodies sent of pushes still under way
    return {**totals, "seconds": trio.current_time() - began, "error_samples": errors[:5]}


def run_probe(host: str, port: int, seconds: float) -> dict[str, Any]:
    """GET the manifest by tag every PROBE_INTERVAL on one kept-alive connection: latencies (s)."""
    import socket

    sock = socket.create_connection((host, port))
    request = (
        f"GET /v2/{REPO}/manifests/latest HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {OCI_MANIFEST}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    buffer = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        sock.sendall(request)
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(buffer) < length:
            buffer += sock.recv(65536)
        buffer = buffer[length:]
        latencies.append(time.perf_counter() - began)
        if not head.startswith(b"HTTP/1.1 200"):
            errors += 1
        time.sleep(PROBE_INTERVAL)
    sock.close()
    return {"latencies": latencies, "errors": errors}


def _child(argv: list[str]) -> None:
    """``python -m bench.load load|probe HOST PORT SPEC_JSON``: one side of the mix, JSON on stdout."""
    role, host, port, spec_text = argv
    spec = json.loads(spec_text)
    if role == "load":
        result = trio.run(run_load, host, int(port), spec)
    else:
        result = run_probe(host, int(port), float(spec["seconds"]))
    print(json.dumps(result))


# --- the servers -------------------------------------------------------------------------------


@contextmanager
def _ipfsreg(workdir: Path) -> Iterator[Server]:
    port = _free_port()
    cmd = [sys.executable, "-m", "ipfsreg", "serve", "--data", str(workdir / "ipfsreg-data")]
    cmd += ["--registry-listen", f"127.0.0.1:{port}", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"]
    cmd += ["--log-level", "warning"]  # no access log: the reference runs without one too
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, proc, "ipfsreg")
        sampler = _RssSampler(proc.pid)
        sampler.start()
        yield Server("ipfsreg", port, proc, sampler)
        sampler.stop()
    finally:
        _stop(proc)


@dataclass
class Outcome:
    pull_mb_s: float
    push_mb_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    probes: int
    errors: int
    peak_rss_mib: float
    error_samples: list[str]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _measure(server: Server, spec: dict[str, Any]) -> Outcome:
    spec = {**spec, **trio.run(seed, "127.0.0.1", server.port, int(spec["pull_bytes"]))}
    text = json.dumps(spec)
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.load", role, "127.0.0.1", str(server.port), text],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for role in ("load", "probe")
    ]
    outputs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=float(spec["seconds"]) + 120)
        if child.returncode != 0:
            raise RuntimeError(f"bench.load child failed: {stderr.decode()[-2000:]}")
        outputs.append(json.loads(stdout))
    load, probe = outputs
    latencies = probe["latencies"]
    hwm = (_status_kib(server.proc.pid, "VmHWM:") or 0) / 1024
    return Outcome(
        pull_mb_s=load["pulled"] / MB / load["seconds"],
        push_mb_s=load["pushed"] / MB / load["seconds"],
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies) * 1000,
        probes=len(latencies),
        errors=load["errors"] + probe["errors"],
        peak_rss_mib=hwm,
        error_samples=load["error_samples"],
    )


def main() -> None:
    if shutil.which(REFERENCE_BINARY) is None:
        raise SystemExit(f"{REFERENCE_BINARY} is not installed (Debian package: docker-registry)")
    spec = {
        "seconds": _env("SECONDS", 20),
        "pullers": int(_env("PULLERS", 50)),
        "pushers": int(_env("PUSHERS", 20)),
        "pull_bytes": int(_env("PULL_MB", 50) * MB),
        "push_bytes": int(_env("PUSH_MB", 8) * MB),
    }
    rounds = int(_env("ROUNDS", 1))
    print(
        f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}; "
        f"{spec['pullers']} pullers of a {spec['pull_bytes'] / MB:.0f} MB blob, {spec['pushers']} pushers of "
        f"{spec['push_bytes'] / MB:.0f} MB blobs, manifest GET every {PROBE_INTERVAL * 1000:.0f} ms, "
        f"{spec['seconds']:.0f} s per registry, {rounds} round(s)",
        flush=True,
    )
    results: dict[str, list[Outcome]] = {"ipfsreg": [], "reference": []}
    for i in range(rounds):
        order = ["ipfsreg", "reference"] if i % 2 == 0 else ["reference", "ipfsreg"]
        for name in order:
            with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
                start = _ipfsreg if name == "ipfsreg" else _reference
                with start(Path(tmp)) as server:
                    outcome = _measure(server, spec)
            results[name].append(outcome)
            print(
                f"  {name:9} pull {outcome.pull_mb_s:7.1f} MB/s  push {outcome.push_mb_s:6.1f} MB/s  "
                f"manifest GET p50 {outcome.p50_ms:6.1f} ms  p99 {outcome.p99_ms:7.1f} ms  "
                f"max {outcome.max_ms:7.1f} ms  ({outcome.probes} probes)  errors {outcome.errors}  "
                f"peak RSS {outcome.peak_rss_mib:5.0f} MiB",
                flush=True,
            )
            for sample in outcome.error_samples:
                print(f"    error: {sample}")
    ours, ref = (
        {
            key: statistics.median(getattr(o, key) for o in results[name])
            for key in ("pull_mb_s", "push_mb_s", "p50_ms", "p99_ms", "peak_rss_mib")
        }
        for name in ("ipfsreg", "reference")
    )
    print()
    print(f"{'':22} {'ipfsreg':>10} {'reference':>10} {'ratio':>8}  goal")
    rows = [
        ("pull MB/s", "pull_mb_s", ">= reference", ours["pull_mb_s"] / ref["pull_mb_s"]),
        ("push MB/s", "push_mb_s", ">= reference", ours["push_mb_s"] / ref["push_mb_s"]),
        ("manifest GET p50 ms", "p50_ms", "", ref["p50_ms"] / ours["p50_ms"]),
        ("manifest GET p99 ms", "p99_ms", RP99_GOAL, ref["p99_ms"] / ours["p99_ms"]),
        (
            "peak RSS MiB",
            "peak_rss_mib",
            f"ipfsreg <= {RSS_GOAL_MIB}",
            ref["peak_rss_mib"] / ours["peak_rss_mib"],
        ),
    ]
    for label, key, goal, ratio in rows:
        print(f"{label:22} {ours[key]:10.1f} {ref[key]:10.1f} {ratio:7.2f}x  {goal}")
    print("(ratio > 1: ipfsreg better)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("load", "probe"):
        _child(sys.argv[1:])
    else:
        main()
