"""`ipfsreg serve` as a process: banner, graceful shutdown on SIGTERM/SIGINT, nothing lost on restart."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve(data: Path) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipfsreg",
            "serve",
            "--data",
            str(data),
            "--registry-listen",
            f"127.0.0.1:{port}",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(5)]
        assert banner[0].strip() == "ipfsreg is running", banner
        yield proc, f"http://127.0.0.1:{port}", banner
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_banner_names_registry_url_peer_id_and_multiaddrs(tmp_path: Path) -> None:
    with serve(tmp_path / "data") as (proc, url, banner):
        text = "".join(banner)
        assert f"registry:  {url}/v2/" in text
        assert "peer id:   12D3KooW" in text
        assert "p2p:       /ip4/127.0.0.1/tcp/" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_sigterm_finishes_in_flight_download_then_restart_keeps_committed_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    blob = random.Random(3).randbytes(8 * 1024 * 1024)
    with serve(data) as (proc, url, _banner):
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.post(f"/v2/keep/me/blobs/uploads/?digest={digest(blob)}", content=blob)
            assert r.status_code == 201
            received = bytearray()
            with client.stream("GET", f"/v2/keep/me/blobs/{digest(blob)}") as response:
                assert response.status_code == 200
                chunks = response.iter_bytes(64 * 1024)
                received += next(chunks)
                proc.send_signal(signal.SIGTERM)  # shutdown starts with the body mostly unsent
                time.sleep(0.5)
                for chunk in chunks:
                    received += chunk
            assert bytes(received) == blob
        assert proc.wait(timeout=30) == 0
        assert not (data / "api").exists()
    with serve(data) as (proc, url, _banner):
        with httpx.Client(base_url=url, timeout=60) as client:
            got = client.get(f"/v2/keep/me/blobs/{digest(blob)}")
            assert got.status_code == 200
            assert got.content == blob
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_a_second_server_on_the_same_data_dir_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serve(data) as (proc, _url, _banner):
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "ipfsreg",
                "serve",
                "--data",
                str(data),
                "--registry-listen",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"in use by process {proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_unusable_auth_or_tls_settings_stop_serve_with_one_line(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    cases = [
        (["--htpasswd", str(htpasswd)], "no bcrypt hash"),
        (["--tls-cert", str(htpasswd)], "tls_cert and registry.tls_key must be given together"),
    ]
    for flags, message in cases:
        out = subprocess.run(
            [sys.executable, "-m", "ipfsreg", "serve", "--data", str(tmp_path / "data"), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, out.stderr
        assert message in out.stderr
        assert "Traceback" not in out.stderr
