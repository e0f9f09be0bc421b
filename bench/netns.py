"""A simulated network on one machine for the fleet benchmark: one Linux network namespace per host,
joined by veth pairs to a bridge in a namespace of its own, each link shaped with ``tc``.

- Addresses come only from 198.18.0.0/15 (RFC 2544, reserved for network benchmarks) and exist only
  inside these namespaces (IPv6 is off in them: no link-local addresses either); a host's only route
  is its link's /24 (no default route), so nothing run inside can reach any other address, and
  nothing is ever configured in the caller's namespace (each veth pair is created straight inside
  its two namespaces).
- Each link is shaped both ways, like a host's NIC: the host side's egress (its upload) and the
  bridge side's egress (its download), each with an HTB class at the link rate; netem adds latency
  when the kernel has it (checked at start and reported, never assumed).
- Namespaces are named ``ipfsreg-fleet-<pid>-<host>``: the pid is the bench process's, so a sweep at
  start removes only the namespaces (and the processes inside them) of bench runs that are gone. A
  closing network kills what still runs inside its namespaces, then deletes them: on normal exit,
  on failure, on Ctrl-C and on SIGTERM (turned into an exception by :func:`raising_on_sigterm`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Final

NETNS_PREFIX: Final = "ipfsreg-fleet-"
SUBNET_PREFIX: Final = "198.18.0."  # a /24 inside 198.18.0.0/15
PREFIX_LEN: Final = 24
FIRST_HOST_OCTET: Final = 10
BRIDGE: Final = "br0"
HOST_IFACE: Final = "eth0"
_STALE_NAME: Final = re.compile(rf"^{re.escape(NETNS_PREFIX)}(\d+)-")


class NetnsError(Exception):
    """The simulated network cannot be built or used (not root, no kernel feature, a command failed)."""


@dataclass(frozen=True)
class LinkShape:
    """Every link's shape: Mbit/s each way, and one-way latency in ms (netem, when the kernel has it)."""

    mbit: float
    latency_ms: float = 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.mbit * 1e6 / 8


@dataclass(frozen=True)
class Host:
    """One simulated host: its namespace and its address on the bridge."""

    name: str
    netns: str
    address: str

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this host's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *args]


@dataclass(frozen=True)
class LineRateCheck:
    """A raw TCP transfer through two shaped links (one host's upload, another's download)."""

    bytes_sent: int
    seconds: float
    configured_mbit: float

    @property
    def mbit(self) -> float:
        return self.bytes_sent * 8 / self.seconds / 1e6

    @property
    def ratio(self) -> float:
        """Measured TCP goodput over the configured rate (headers take 3-5%: ~0.95 = shaping holds)."""
        return self.mbit / self.configured_mbit


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError(
            "the fleet benchmark needs root (network namespaces, veth pairs, tc); run it as root"
        )
    for tool in ("ip", "tc"):
        if _run(["which", tool], check=False).returncode != 0:
            raise NetnsError(f"`{tool}` is not installed (Debian package iproute2)")


def list_netns() -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(netns: str) -> None:
    """SIGKILL every process still inside ``netns`` (all of them started by a bench run) and reap ours."""
    result = _run(["ip", "netns", "pids", netns], check=False)
    for text in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(text), signal.SIGKILL)


def _delete(netns: str) -> None:
    _kill_inside(netns)
    _run(["ip", "netns", "delete", netns], check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces (and kill the processes inside) left by fleet bench runs that are gone."""
    removed = []
    for name in list_netns():
        match = _STALE_NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete(name)
            removed.append(name)
    return removed


def run_namespaces(pid: int) -> list[str]:
    """The namespaces that the bench run with this pid still has."""
    return [name for name in list_netns() if name.startswith(f"{NETNS_PREFIX}{pid}-")]


@dataclass
class SimulatedNetwork:
    """Hosts on one bridge, each behind a shaped link. Use as a context manager; processes started with
    :meth:`spawn` are killed when it closes."""

    host_names: Sequence[str]
    shape: LinkShape
    pid: int = field(default_factory=os.getpid)
    hosts: dict[str, Host] = field(default_factory=dict)
    netem: bool = False
    _created: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def bridge_netns(self) -> str:
        return f"{NETNS_PREFIX}{self.pid}-bridge"

    def __enter__(self) -> SimulatedNetwork:
        require_root()
        if len(self.host_names) > 250 - FIRST_HOST_OCTET:
            raise NetnsError("too many hosts for one /24")
        sweep_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        # No IPv6 at all, so not even link-local addresses: 198.18.0.0/15 (and loopback) are the only ones.
        for scope in ("all", "default"):
            _run(
                [
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "sh",
                    "-c",
                    f"echo 1 > /proc/sys/net/ipv6/conf/{scope}/disable_ipv6",
                ]
            )
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._add_netns(self.bridge_netns)
        _run(["ip", "-n", self.bridge_netns, "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "-n", self.bridge_netns, "link", "set", BRIDGE, "up"])
        self.netem = self.shape.latency_ms > 0 and self._kernel_has_netem()
        for index, name in enumerate(self.host_names):
            netns = f"{NETNS_PREFIX}{self.pid}-{name}"
            address = f"{SUBNET_PREFIX}{FIRST_HOST_OCTET + index}"
            self._add_netns(netns)
            port = f"p{index}"
            # Both ends are created where they live: nothing ever appears in the caller's namespace.
            _run(
                [
                    "ip",
                    "-n",
                    netns,
                    "link",
                    "add",
                    HOST_IFACE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    self.bridge_netns,
                ]
            )
            _run(["ip", "-n", self.bridge_netns, "link", "set", port, "master", BRIDGE])
            _run(["ip", "-n", self.bridge_netns, "link", "set", port, "up"])
            _run(["ip", "-n", netns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", HOST_IFACE])
            _run(["ip", "-n", netns, "link", "set", HOST_IFACE, "up"])
            self._shape(netns, HOST_IFACE)
            self._shape(self.bridge_netns, port)
            self.hosts[name] = Host(name, netns, address)

    def _kernel_has_netem(self) -> bool:
        probe = f"{NETNS_PREFIX}{self.pid}-probe"
        self._add_netns(probe)
        try:
            _run(["ip", "-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])
            return (
                _run(
                    ["tc", "-n", probe, "qdisc", "add", "dev", "probe0", "root", "netem"], check=False
                ).returncode
                == 0
            )
        finally:
            _delete(probe)
            self._created.remove(probe)

    def _shape(self, netns: str, iface: str) -> None:
        """HTB at the link rate on ``iface``'s egress (a netem leaf under it for latency when available)."""
        rate = f"{self.shape.mbit}mbit"
        tc = ["tc", "-n", netns]
        _run([*tc, "qdisc", "add", "dev", iface, "root", "handle", "1:", "htb", "default", "10"])
        _run(
            [
                *tc,
                "class",
                "add",
                "dev",
                iface,
                "parent",
                "1:",
                "classid",
                "1:10",
                "htb",
                "rate",
                rate,
                "ceil",
                rate,
            ]
        )
        if self.netem:
            _run(
                [
                    *tc,
                    "qdisc",
                    "add",
                    "dev",
                    iface,
                    "parent",
                    "1:10",
                    "handle",
                    "10:",
                    "netem",
                    "delay",
                    f"{self.shape.latency_ms}ms",
                    "limit",
                    "10000",
                ]
            )

    def spawn(self, host: Host, args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside ``host``'s namespace; the process is killed when the network closes."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(host.command(args), **popen)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self._procs.clear()
        for name in reversed(self._created):
            _delete(name)
        self._created.clear()

    def check_line_rate(self, sender: Host, receiver: Host, seconds: float = 2.0) -> LineRateCheck:
        """Time a raw TCP transfer of ``seconds`` of configured line rate from ``sender`` to ``receiver``."""
        size = max(4_000_000, int(self.shape.bytes_per_second * seconds))
        port = 9999
        server = self.spawn(
            sender,
            [sys.executable, "-c", _LINE_RATE_SENDER, sender.address, str(port), str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "listening":
                raise NetnsError("the line-rate sender did not start")
            result = _run(
                receiver.command([sys.executable, "-c", _LINE_RATE_RECEIVER, sender.address, str(port)])
            )
            received, elapsed = result.stdout.split()
        finally:
            server.wait(30)
        if int(received) != size:
            raise NetnsError(f"line-rate check received {received} of {size} bytes")
        return LineRateCheck(size, float(elapsed), self.shape.mbit)

    def rtt_ms(self, a: Host, b: Host) -> float:
        """Median TCP connect time from ``a`` to ``b``'s line-rate port: the link's round trip."""
        port = 9998
        server = self.spawn(
            b, [sys.executable, "-c", _ACCEPTOR, b.address, str(port)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            result = _run(a.command([sys.executable, "-c", _CONNECT_TIMER, b.address, str(port)]))
            return float(result.stdout.strip())
        finally:
            server.kill()
            server.wait()


_LINE_RATE_SENDER: Final = """
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.create_server((host, port))
print("listening", flush=True)
conn, _ = srv.accept()
chunk = bytes(1 << 20)
left = size
while left:
    left -= conn.send(memoryview(chunk)[: min(left, len(chunk))])
conn.shutdown(socket.SHUT_WR)
conn.recv(1)
"""

_LINE_RATE_RECEIVER: Final = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
began = None
total = 0
while True:
    data = sock.recv(1 << 20)
    if began is None:
        began = time.perf_counter()
    if not data:
        break
    total += len(data)
print(total, time.perf_counter() - began)
"""

_ACCEPTOR: Final = """
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=64)
print("listening", flush=True)
while True:
    srv.accept()[0].close()
"""

_CONNECT_TIMER: Final = """
import socket, statistics, sys, time
times = []
for _ in range(20):
    began = time.perf_counter()
    socket.create_connection((sys.argv[1], int(sys.argv[2]))).close()
    times.append((time.perf_counter() - began) * 1000)
print(statistics.median(times))
"""


@contextlib.contextmanager
def raising_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the duration, so cleanup in ``finally``/``with`` runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
