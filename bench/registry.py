"""Registry push/pull with skopeo: ipfsreg against the reference registry (CNCF distribution), same run.

Scenarios: one 200 MB layer, and ten 20 MB layers. Each round starts a fresh ipfsreg (child
process, own data dir) and a fresh ``docker-registry`` (filesystem storage in a temp dir), then
pushes and pulls the image with skopeo against each, alternating which registry goes first.
The disk is synced before every timed copy: each one leaves up to 200 MB of dirty pages (the
reference registry's blob files, skopeo's output), and without the sync the next copy would pay
for that write-back, whichever registry it measures.
Prints MB/s, the ipfsreg/reference ratios (goal >= 1.0) and ipfsreg's peak RSS (goal <= 200 MiB).

Environment: BENCH_REGISTRY_ROUNDS (default 5: a copy of a few hundred ms swings by about 10% on
a shared 2-core machine, and medians of five rounds settle where those of three still flip),
BENCH_REGISTRY_SCALE (layer-size factor, default 1.0).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from interop.oci_images import write_large_image

MB: Final = 1_000_000
MIB: Final = 1024 * 1024
SCENARIOS: Final = {"1x200MB": [200 * MB], "10x20MB": [20 * MB] * 10}
REFERENCE_BINARY: Final = "docker-registry"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on port {port}")


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class _RssSampler(threading.Thread):
    """Keeps the maximum RssAnon (heap) of a process, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_anon_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            value = _status_kib(self.pid, "RssAnon:")
            if value is None:
                return
            self.peak_anon_kib = max(self.peak_anon_kib, value)
            self._halt.wait(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    sampler: _RssSampler | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peak_rss_mib(self) -> tuple[float, float]:
        """(VmHWM: peak total RSS incl. file-backed pages, peak anonymous RSS) in MiB."""
        hwm = _status_kib(self.proc.pid, "VmHWM:") or 0
        anon = self.sampler.peak_anon_kib if self.sampler else 0
        return hwm / 1024, anon / 1024


@contextmanager
def _ipfsreg(workdir: Path) -> Iterator[Server]:
    port = _free_port()
    code = (
        "import sys, trio\n"
        "from ipfsreg.malloc import limit_arenas\n"
        "limit_arenas()\n"
        "from ipfsreg.blockstore import Datastore\n"
        "from ipfsreg.registry.app import create_app, serve_registry\n"
        "from ipfsreg.registry.settings import RegistrySettings\n"
        "settings = RegistrySettings(listen=sys.argv[2])\n"
        "with Datastore.open(sys.argv[1]) as ds:\n"
        "    trio.run(serve_registry, create_app(ds, settings), settings)\n"
    )
    cmd = [sys.executable, "-c", code, str(workdir / "ipfsreg-data"), f"127.0.0.1:{port}"]
    override = os.environ.get("BENCH_IPFSREG_REGISTRY_CMD")
    if override:
        cmd = [*override.split(), str(workdir / "ipfsreg-data"), f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, proc, "ipfsreg")
        sampler = _RssSampler(proc.pid)
        sampler.start()
        server = Server("ipfsreg", port, proc, sampler)
        yield server
        sampler.stop()
    finally:
        _stop(proc)


@contextmanager
def _reference(workdir: Path) -> Iterator[Server]:
    port = _free_port()
    root = workdir / "reference-data"
    root.mkdir()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [REFERENCE_BINARY, "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port, proc, "docker-registry")
        yield Server("reference", port, proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _skopeo(policy: Path, *args: str) -> float:
    began = time.perf_counter()
    result = subprocess.run(
        ["skopeo", "--policy", str(policy), *args], capture_output=True, stdin=subprocess.DEVNULL
    )
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {result.stderr.decode()[-2000:]}")
    return seconds


@dataclass
class Results:
    seconds: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    rss: list[tuple[float, float]] = field(default_factory=list)

    def add(self, registry: str, scenario: str, direction: str, seconds: float) -> None:
        self.seconds.setdefault((registry, scenario, direction), []).append(seconds)


def _round(image: Path, size: int, scenario: str, order: list[str], policy: Path, results: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        workdir = Path(tmp)
        with _ipfsreg(workdir) as ours, _reference(workdir) as ref:
            servers = {"ipfsreg": ours, "reference": ref}
            for direction in ("push", "pull"):
                for name in order:
                    server = servers[name]
                    remote = f"docker://{server.host}/bench/{scenario.lower()}:latest"
                    os.sync()
                    if direction == "push":
                        seconds = _skopeo(
                            policy, "copy", "--dest-tls-verify=false", f"oci:{image}:latest", remote
                        )
                    else:
                        out = workdir / f"pull-{name}"
                        seconds = _skopeo(
                            policy, "copy", "--src-tls-verify=false", remote, f"oci:{out}:latest"
                        )
                        shutil.rmtree(out)
                    results.add(name, scenario, direction, seconds)
                    rate = size / MB / seconds
                    print(
                        f"  {scenario:8} {direction:4} {name:9} {rate:8.1f} MB/s ({seconds:.2f} s)",
                        flush=True,
                    )
            results.rss.append(ours.peak_rss_mib())


def main() -> None:
    for tool in ("skopeo", REFERENCE_BINARY):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian packages: skopeo, docker-registry)")
    rounds = int(os.environ.get("BENCH_REGISTRY_ROUNDS", "5"))
    scale = float(os.environ.get("BENCH_REGISTRY_SCALE", "1.0"))
    results = Results()
    # Both registries share the machine with skopeo (and anything else running): print the load
    # so a reader can tell a quiet run from a contended one.
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        root = Path(tmp)
        policy = root / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        for scenario, sizes in SCENARIOS.items():
            sizes = [int(s * scale) for s in sizes]
            image = root / scenario
            write_large_image(image, sizes)
            total = sum(sizes)
            print(
                f"scenario {scenario}: {len(sizes)} layer(s), {total / MB:.0f} MB, {rounds} rounds",
                flush=True,
            )
            for i in range(rounds):
                order = ["reference", "ipfsreg"] if i % 2 == 0 else ["ipfsreg", "reference"]
                _round(image, total, scenario, order, policy, results)
            shutil.rmtree(image)
    print()
    print(f"{'scenario':10} {'dir':5} {'ipfsreg MB/s':>13} {'reference MB/s':>15} {'ratio':>7}  (medians)")
    for scenario, sizes in SCENARIOS.items():
        total = sum(int(s * scale) for s in sizes)
        for direction in ("push", "pull"):
            ours = statistics.median(results.seconds[("ipfsreg", scenario, direction)])
            ref = statistics.median(results.seconds[("reference", scenario, direction)])
            rates = f"{total / MB / ours:13.1f} {total / MB / ref:15.1f}"
            print(f"{scenario:10} {direction:5} {rates} {ref / ours:7.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    peak_total = max(r[0] for r in results.rss)
    peak_anon = max(r[1] for r in results.rss)
    print(
        f"ipfsreg peak RSS: {peak_total:.0f} MiB total (VmHWM), "
        f"{peak_anon:.0f} MiB anonymous (goal <= 200 MiB)"
    )


if __name__ == "__main__":
    main()
