"""mDNS discovery between `ipfsreg serve` processes on a LAN made for the test: three network namespaces
on a bridge (a fourth namespace), addresses in 198.18.77.0/24, all removed afterwards (also on failure).

Needs root and iproute2 (CI runs as root; ``make system-deps`` installs iproute2). Nothing leaves the
namespaces: each node sees only its veth and its own loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to build network namespaces",
)

PREFIX = f"ipfsreg-mdns-{os.getpid()}"
IPFSREG = [sys.executable, "-m", "ipfsreg"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Lan:
    """Namespaces ``<prefix>-<name>`` joined by a bridge; node ``n`` has address 198.18.77.<n + 1>."""

    def __init__(self, names: list[str]) -> None:
        self.bridge = f"{PREFIX}-br"
        self.names = names
        self.created: list[str] = []

    def ns(self, name: str) -> str:
        return f"{PREFIX}-{name}"

    def address(self, name: str) -> str:
        return f"198.18.77.{self.names.index(name) + 1}"

    def up(self) -> None:
        _ip("netns", "add", self.bridge)
        self.created.append(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for index, name in enumerate(self.names):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"p{index}",
                "netns",
                self.bridge,
            )
            _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.bridge, "link", "set", f"p{index}", "master", "br0")
            _ip("-n", self.bridge, "link", "set", f"p{index}", "up")

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()


class Served:
    def __init__(self, lan: Lan, name: str, data: Path, mdns: bool) -> None:
        self.lan = lan
        self.name = name
        self.data = data
        flags = ["--mdns"] if mdns else []
        self.log = (data.parent / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "ip", "netns", "exec", lan.ns(name), *IPFSREG, "serve", "--data", str(data),
                "--p2p-listen", f"/ip4/{lan.address(name)}/tcp/4001", "--registry-listen", "127.0.0.1:5000",
                *flags,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.lan.ns(self.name), *IPFSREG, *args, "--data", str(self.data)],
            capture_output=True,
            timeout=60,
            text=True,
        )
        if result.returncode != 0:
            raise AssertionError(f"ipfsreg {' '.join(args)} on {self.name}: {result.stderr}")
        return result.stdout

    def peer_id(self) -> str:
        """Once the server is up (its control API address is written): its peer ID."""
        deadline = time.monotonic() + 60
        while not (self.data / "api").exists():
            assert self.proc.poll() is None, f"ipfsreg serve on {self.name} exited"
            assert time.monotonic() < deadline, f"ipfsreg serve on {self.name} did not start in 60 s"
            time.sleep(0.2)
        return str(json.loads(self.cli("id", "--json"))["id"])

    def peers(self) -> set[str]:
        return {p["peer_id"] for p in json.loads(self.cli("peers", "--json"))}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def lan() -> Iterator[Lan]:
    network = Lan(["a", "b", "quiet"])
    try:
        network.up()
        yield network
    finally:
        network.down()


def test_nodes_with_mdns_find_and_connect_each_other_and_skip_a_node_without_it(
    lan: Lan, tmp_path: Path
) -> None:
    nodes = {
        "a": Served(lan, "a", tmp_path / "a", mdns=True),
        "b": Served(lan, "b", tmp_path / "b", mdns=True),
        "quiet": Served(lan, "quiet", tmp_path / "quiet", mdns=False),
    }
    try:
        ids = {name: node.peer_id() for name, node in nodes.items()}
        deadline = time.monotonic() + 30
        while not (ids["b"] in nodes["a"].peers() and ids["a"] in nodes["b"].peers()):
            assert time.monotonic() < deadline, f"no mDNS discovery in 30 s: a={nodes['a'].peers()}"
            time.sleep(0.5)
        time.sleep(3)  # several more query rounds: the node without --mdns must stay unknown
        assert ids["quiet"] not in nodes["a"].peers() | nodes["b"].peers()
        assert nodes["quiet"].peers() == set()
    finally:
        for node in nodes.values():
            node.stop()
        for name in nodes:
            print(f"--- {name}.log ---\n" + (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:])
