"""Fleet benchmark: N ipfsreg nodes behind shaped links pull one image at once, P2P against the central
reference registry, on a simulated network (network namespaces, see bench/netns.py), in one run.

``python -m bench fleet [--nodes 8] [--link-mbit 100] [--latency-ms 1] [--image-mb 200]
[--scenarios central,cold,rolling,rolling-cid,kill] [--clients skopeo,ctr] [--json FILE]
[--plot FILE]`` (root only).

One host namespace per node plus one for the upstream: Debian ``docker-registry`` (CNCF distribution,
the reference registry) holding the test image, behind the same link shape as every node. Each node
runs an ``ipfsreg serve`` (its own data dir) whose command line is :func:`fleet_node_command`, and a
client on the node's loopback: skopeo (copy to an OCI layout), and containerd's ``ctr`` where it is
installed (``content fetch`` into a containerd the bench starts on that node). Each pull is timed
from its start to "the client has the whole image": both clients check every blob's digest as it
arrives, and the bench then re-hashes every blob the client stored (and, for skopeo, checks the
manifest digest) before it counts the node as verified. Scenarios:

1. central: every node's client pulls straight from the upstream at the same moment (the anchor);
2. cold: every node pulls through its own ipfsreg at the same moment, nothing cached anywhere;
3. rolling: node 0 pulls, then the others at the same moment (the Spegel case);
4. rolling-cid: the same, but the others pull the image by the IPFS address node 0 published
   (``ipfs/<cid>:TAG``), so every block comes over bitswap from the fleet: the P2P path that exists
   without the fleet mirror;
5. kill: the cold wave, with the node the upstream has served most killed (SIGKILL) half-way through
   (at half the cold wave's p50 measured just before, else half the line-rate ideal): the others
   must still finish, verified.

Each scenario starts a fresh fleet (empty data dirs, every node peered with every other through
``--peer``, all connections up before the pull). Figures: per-node seconds as a ratio to the line-rate
ideal (image size / link rate), p50/p99/max, the bytes the upstream served (from its access log) as
a multiple of the image size, per layer and per user agent, CPU seconds, peak RSS and bitswap bytes
per ipfsreg node; the issue's goals are printed beside them. The link's shaping is checked first
with a raw TCP transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench._common import ipfsreg_command, print_table
from bench.netns import Host, LineRateCheck, LinkShape, NetnsError, SimulatedNetwork
from interop.oci_images import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    OCILayout,
    random_tar_file,
)

MB: Final = 1_000_000
MIB: Final = 1024 * 1024
LAYERS: Final = 4
REPOSITORY: Final = "bench/fleet"
TAG: Final = "latest"
REGISTRY_PORT: Final = 5000
P2P_PORT: Final = 4001
UPSTREAM: Final = "upstream"
SCENARIOS: Final = ("central", "cold", "rolling", "rolling-cid", "kill")
CACHE_ENV: Final = "BENCH_FLEET_CACHE"
# A pull that takes longer than this many times the slowest plausible case (every node queued behind
# the upstream's link) plus a start-up allowance is a failure, not a figure.
PULL_TIME_FACTOR: Final = 4.0
PULL_TIME_ALLOWANCE: Final = 120.0
START_TIMEOUT: Final = 60.0

GOALS: Final = {
    "central": "anchor: p99 about N x line rate",
    "cold": "p99 <= 1.5x line rate (Kraken 1.8x), upstream <= 1.2x image (at N = 8)",
    "rolling": "p99 <= 1.2x line rate",
    "rolling-cid": "(today's P2P path: the others pull ipfs/<cid> over bitswap)",
    "kill": "every other node finishes, verified",
}


class FleetError(Exception):
    """The fleet benchmark could not run a scenario (a process failed to start, a pull timed out...)."""


# --- the image ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class FleetImage:
    """The test image: an OCI layout of ``LAYERS`` incompressible layers, built once and cached."""

    layout: Path
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def size(self) -> int:
        """Bytes a pull moves: the manifest, the config and every layer."""
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)

    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ipfsreg-bench"


def fleet_image(image_mb: float) -> FleetImage:
    """The cached image of ``image_mb`` MB (built on first use: random bytes, so nothing compresses)."""
    root = cache_dir() / f"fleet-image-{image_mb:g}MB"
    if not (root / "index.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        try:
            write_image(scratch, int(image_mb * MB))
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(root)
            os.replace(scratch, root)  # index.json appears only with a whole layout
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return read_image(root)


def write_image(root: Path, size: int) -> None:
    """An OCI layout of ``LAYERS`` gzip layers (tar+gzip, as real images ship; stored blocks, since
    random bytes do not compress) of about ``size`` bytes in all. Compressed layers are what
    registries and clients move as they are: skopeo would gzip an uncompressed layer on push."""
    layout = OCILayout(root)
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for index in range(LAYERS):
        tar = root / f"layer-{index}.tar"
        random_tar_file(tar, size // LAYERS, seed=index + 1)
        compressed = root / f"layer-{index}.tar.gz"
        diff = hashlib.sha256()
        with (
            tar.open("rb") as src,
            compressed.open("wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=0, mtime=0) as out,
        ):
            while chunk := src.read(4 * MIB):
                diff.update(chunk)
                out.write(chunk)
        tar.unlink()
        layers.append(layout.add_blob_file(compressed, OCI_LAYER_GZIP))
        diff_ids.append("sha256:" + diff.hexdigest())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Cmd": ["/bin/sh"]},
    }
    config_desc = layout.add_blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    layout.tag(layout.add_blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST), TAG)


def read_image(root: Path) -> FleetImage:
    index = json.loads((root / "index.json").read_text())
    entry = index["manifests"][0]
    manifest_path = root / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]
    manifest = json.loads(manifest_path.read_text())
    return FleetImage(
        layout=root,
        manifest=Blob(entry["digest"], manifest_path.stat().st_size),
        config=Blob(manifest["config"]["digest"], manifest["config"]["size"]),
        layers=tuple(Blob(layer["digest"], layer["size"]) for layer in manifest["layers"]),
    )


def verify_copy(layout: Path, image: FleetImage) -> None:
    """The client's copy is the image: same manifest digest, and every blob re-hashed to its digest."""
    index = json.loads((layout / "index.json").read_text())
    digests = [entry["digest"] for entry in index["manifests"]]
    if digests != [image.manifest.digest]:
        raise FleetError(f"{layout}: manifest {digests} is not {image.manifest.digest}")
    for blob in (image.manifest, *image.blobs()):
        verify_blob(layout / "blobs" / "sha256" / blob.digest.split(":", 1)[1], blob)


def verify_blob(path: Path, blob: Blob) -> None:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            hasher.update(chunk)
    if path.stat().st_size != blob.size or "sha256:" + hasher.hexdigest() != blob.digest:
        raise FleetError(f"{path}: bytes do not match {blob.digest}")


# --- processes on the simulated hosts -------------------------------------------------------------


def _policy_file(directory: Path) -> Path:
    path = directory / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


_WAIT_HTTP: Final = r"""
import re, sys, time, urllib.request
url, pattern, minimum = sys.argv[1], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read().decode("utf-8", "replace")
            if not pattern:
                sys.exit(0)
            match = re.search(pattern, body, re.M)
            if match and float(match.group(1)) >= minimum:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(f"{url}: not ready in time")
"""


def wait_http(host: Host, url: str, timeout: float, pattern: str = "", minimum: float = 0) -> None:
    """Wait (from inside ``host``'s namespace) until ``url`` answers 200, and, given ``pattern`` (a
    regex with one number group), until that number reaches ``minimum``."""
    result = subprocess.run(
        host.command([sys.executable, "-c", _WAIT_HTTP, url, str(timeout), pattern, str(minimum)]),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise FleetError(result.stderr.strip() or f"{url} not ready")


@dataclass
class Upstream:
    """The reference registry on its own host; its access log tells what it served to whom."""

    host: Host
    proc: subprocess.Popen[bytes]
    access_log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{REGISTRY_PORT}"

    def log_offset(self) -> int:
        return self.access_log.stat().st_size

    def served_since(self, offset: int) -> UpstreamServed:
        with self.access_log.open("rb") as f:
            f.seek(offset)
            return parse_access_log(f.read().decode("utf-8", "replace"))


def start_upstream(net: SimulatedNetwork, workdir: Path, image: FleetImage, policy: Path) -> Upstream:
    host = net.hosts[UPSTREAM]
    root = workdir / "upstream-data"
    root.mkdir(parents=True)
    config = workdir / "upstream.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  formatter: text\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: {host.address}:{REGISTRY_PORT}\n"
    )
    access_log = workdir / "upstream-access.log"
    with access_log.open("wb") as out:
        proc = net.spawn(
            host, ["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    upstream = Upstream(host, proc, access_log)
    wait_http(host, f"{upstream.url}/v2/", START_TIMEOUT)
    # Pushed from the upstream's own namespace: its own address goes over loopback, not the link.
    result = subprocess.run(
        host.command(
            [
                "skopeo",
                "--policy",
                str(policy),
                "copy",
                "--dest-tls-verify=false",
                f"oci:{image.layout}:{TAG}",
                f"docker://{host.address}:{REGISTRY_PORT}/{REPOSITORY}:{TAG}",
            ]
        ),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise FleetError(f"pushing the image to the upstream failed: {result.stderr[-2000:]}")
    return upstream


# Gorilla's combined log format, as distribution writes its access log:
# 198.18.0.11 - - [date] "GET /v2/bench/fleet/blobs/sha256:... HTTP/1.1" 200 50001536 "" "skopeo/1.9.3"
_ACCESS_LINE: Final = re.compile(
    r'^(?P<client>\S+) \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?: "[^"]*" "(?P<agent>[^"]*)")?'
)
_BLOB_PATH: Final = re.compile(r"/blobs/(sha256:[0-9a-f]{64})")


@dataclass
class UpstreamServed:
    """What the upstream sent, from its access log: body bytes in all, by client address, and per blob
    (bytes and successful GETs)."""

    total_bytes: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    by_agent: dict[str, int] = field(default_factory=dict)  # by the product in the user agent
    blob_bytes: dict[str, int] = field(default_factory=dict)
    blob_gets: dict[str, int] = field(default_factory=dict)


def parse_access_log(text: str) -> UpstreamServed:
    served = UpstreamServed()
    for line in text.splitlines():
        match = _ACCESS_LINE.match(line)
        # A HEAD sends no body, whatever size the log gives it.
        if not match or match["bytes"] == "-" or match["method"] == "HEAD":
            continue
        size = int(match["bytes"])
        client = match["client"]
        served.total_bytes += size
        served.by_client[client] = served.by_client.get(client, 0) + size
        agent = (match["agent"] or "-").split("/", 1)[0].split(" ", 1)[0] or "-"
        served.by_agent[agent] = served.by_agent.get(agent, 0) + size
        blob = _BLOB_PATH.search(match["path"])
        if blob and match["method"] == "GET" and match["status"] in ("200", "206"):
            digest = blob.group(1)
            served.blob_bytes[digest] = served.blob_bytes.get(digest, 0) + size
            served.blob_gets[digest] = served.blob_gets.get(digest, 0) + 1
    return served


@dataclass
class FleetNode:
    """One ipfsreg of the fleet on its own host."""

    index: int
    host: Host
    data: Path
    peer_id: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def p2p_addr(self) -> str:
        return f"/ip4/{self.host.address}/tcp/{P2P_PORT}/p2p/{self.peer_id}"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{REGISTRY_PORT}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the ipfsreg process (all its threads) so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise FleetError(f"node {self.index}: no VmHWM")


def fleet_node_command(node: FleetNode, upstream_url: str, peers: Sequence[FleetNode]) -> list[str]:
    """The command line of one fleet node: the one place that says what a fleet node is.

    A pull-through cache of the upstream (unqualified names: the clients send no ``?ns=``), peered
    with every other node: a miss asks the fleet first (``ipfsreg/registry/fleet.py``: peers that
    hold or fetch the blob, the one upstream fetcher per blob a cold wave elects) and the upstream
    last. ``--mirror docker.io=URL`` instead would serve ``?ns=docker.io`` pulls (containerd).
    """
    return [
        *ipfsreg_command(),
        "serve",
        "--data",
        str(node.data),
        "--registry-listen",
        node.registry,
        "--api-listen",
        "127.0.0.1:0",
        "--p2p-listen",
        f"/ip4/{node.host.address}/tcp/{P2P_PORT}",
        "--upstream",
        upstream_url,
        *(arg for peer in peers for arg in ("--peer", peer.p2p_addr)),
    ]


# The whole fleet starts at once, so most first dials find their peer not yet listening: a redial
# backoff of at most a second gets every node peered about a second after the last one listens.
FLEET_NODE_ENV: Final = {"IPFSREG_LOG_LEVEL": "info", "IPFSREG_NODE_PEERING_MAX_BACKOFF": "1"}


def pull_source(node: FleetNode) -> str:
    """What a node's client pulls through its own ipfsreg."""
    return f"docker://{node.registry}/{REPOSITORY}:{TAG}"


@contextlib.contextmanager
def running_fleet(
    net: SimulatedNetwork, hosts: Sequence[Host], workdir: Path, upstream: Upstream
) -> Iterator[list[FleetNode]]:
    """Fresh ipfsreg nodes on ``hosts`` (empty data dirs), every one connected to every other."""
    from ipfsreg.node.identity import load_or_create_identity

    nodes = []
    for index, host in enumerate(hosts):
        data = workdir / f"node{index}"
        nodes.append(FleetNode(index, host, data, load_or_create_identity(data).peer_id_str))
    try:
        for node in nodes:
            log = (workdir / f"node{node.index}.log").open("ab")
            others = [peer for peer in nodes if peer is not node]
            env = {**os.environ, **FLEET_NODE_ENV}
            node.proc = net.spawn(
                node.host,
                fleet_node_command(node, upstream.url, others),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            log.close()
        for node in nodes:
            wait_http(
                node.host,
                f"http://{node.registry}/metrics",
                START_TIMEOUT,
                r"^ipfsreg_connected_peers (\S+)",
                len(nodes) - 1,
            )
        yield nodes
    finally:
        stop_fleet(nodes)


def stop_fleet(nodes: Sequence[FleetNode]) -> None:
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
    for node in nodes:
        if node.proc is not None:
            try:
                node.proc.wait(15)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


# --- pulls ----------------------------------------------------------------------------------------


@dataclass
class Pull:
    """One client's pull: when it started and ended, and whether the copy it made is the image."""

    node: int
    began: float = 0.0
    ended: float = 0.0
    ok: bool = False
    error: str = ""
    killed: bool = False  # this node's ipfsreg was killed by the scenario: its pull does not count

    @property
    def seconds(self) -> float:
        return self.ended - self.began


class PullClient:
    """A container client on every node: how it pulls (straight from the upstream, or through its
    node's ipfsreg), and how the bench checks what it got."""

    name: str = ""

    def command(self, index: int, host: Host, via: FleetNode | None, cid: str | None = None) -> list[str]:
        """Pull from the upstream, or through ``via`` (the node's ipfsreg); with ``cid``, the image by
        its IPFS address from ``via`` (``ipfs/<cid>:TAG``)."""
        raise NotImplementedError

    def verify(self, index: int, image: FleetImage) -> None:
        raise NotImplementedError

    def discard(self, index: int) -> None:
        """Drop what the client pulled on node ``index``, so its next pull starts empty."""
        raise NotImplementedError


@dataclass
class SkopeoClient(PullClient):
    """skopeo copy to an OCI layout (it checks every blob's digest while it copies)."""

    workdir: Path
    policy: Path
    upstream: str
    name: str = "skopeo"

    def dest(self, index: int) -> Path:
        return self.workdir / f"skopeo-pull{index}"

    def command(self, index: int, host: Host, via: FleetNode | None, cid: str | None = None) -> list[str]:
        if via and cid:
            source = f"docker://{via.registry}/ipfs/{cid}:{TAG}"
        else:
            source = pull_source(via) if via else f"docker://{self.upstream}/{REPOSITORY}:{TAG}"
        destination = f"oci:{self.dest(index)}:{TAG}"
        return ["skopeo", "--policy", str(self.policy), "copy", "--src-tls-verify=false", source, destination]

    def verify(self, index: int, image: FleetImage) -> None:
        verify_copy(self.dest(index), image)

    def discard(self, index: int) -> None:
        shutil.rmtree(self.dest(index), ignore_errors=True)


@dataclass
class ContainerdClient(PullClient):
    """``ctr content fetch`` (every blob, no unpacking) into a containerd the bench starts on each node,
    with its own root, state, socket and config (never a system containerd). Through ipfsreg it uses
    a hosts dir naming the node's ipfsreg as the upstream's mirror, as a runtime would be set up
    (containerd adds ``?ns=<upstream>`` and falls back to the upstream itself if the mirror fails:
    such bytes show in the upstream's log under containerd's user agent)."""

    net: SimulatedNetwork
    workdir: Path
    upstream: str
    name: str = "ctr"
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Unix socket paths must stay under 108 bytes: the sockets live in a short directory of their own.
    sockets: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-ctr-", dir="/tmp")))

    def dir(self, index: int) -> Path:
        return self.workdir / f"containerd{index}"

    def socket(self, index: int) -> Path:
        return self.sockets / f"node{index}.sock"

    def start(self, index: int, host: Host) -> None:
        root = self.dir(index)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        config = root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\n'
            f'state = "{root / "state"}"\n'
            # No CRI, and no "opt" plugin (it would create /opt/containerd).
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]\n'
            f'[grpc]\n  address = "{self.socket(index)}"\n'
            f'[ttrpc]\n  address = "{self.socket(index)}.ttrpc"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
        )
        hosts = root / "hosts" / self.upstream
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(containerd_hosts_toml(self.upstream))
        with (root / "containerd.log").open("wb") as log:
            self.procs[index] = self.net.spawn(
                host, ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, index: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run(
            ["ctr", "-a", str(self.socket(index)), "version"], capture_output=True, stdin=subprocess.DEVNULL
        ).returncode:
            if self.procs[index].poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"containerd on node{index} did not start (see {self.dir(index)})")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.sockets, ignore_errors=True)

    def command(self, index: int, host: Host, via: FleetNode | None, cid: str | None = None) -> list[str]:
        mirror = ["--hosts-dir", str(self.dir(index) / "hosts")] if via and not cid else []
        reference = (
            f"{via.registry}/ipfs/{cid}:{TAG}" if via and cid else f"{self.upstream}/{REPOSITORY}:{TAG}"
        )
        return ["ctr", "-a", str(self.socket(index)), "content", "fetch", "--plain-http", *mirror, reference]

    def verify(self, index: int, image: FleetImage) -> None:
        # containerd commits content only under its expected digest; re-hash its files anyway.
        blobs = self.dir(index) / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256"
        for blob in (image.manifest, *image.blobs()):
            verify_blob(blobs / blob.digest.split(":", 1)[1], blob)

    def discard(self, index: int) -> None:
        # Each scenario starts its own containerds on fresh roots; nothing to drop between pulls.
        pass


def containerd_hosts_toml(upstream: str) -> str:
    """containerd's hosts.toml for the upstream, with the node's ipfsreg as its mirror."""
    return (
        f'server = "http://{upstream}"\n'
        f'[host."http://127.0.0.1:{REGISTRY_PORT}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


CLIENTS: Final = ("skopeo", "ctr")


def available_clients() -> tuple[str, ...]:
    """skopeo, and ctr where containerd is installed."""
    return ("skopeo", "ctr") if shutil.which("ctr") and shutil.which("containerd") else ("skopeo",)


@contextlib.contextmanager
def pull_client(name: str, fleet: Fleet, workdir: Path) -> Iterator[PullClient]:
    upstream = f"{fleet.upstream.host.address}:{REGISTRY_PORT}"
    if name == "skopeo":
        yield SkopeoClient(workdir, fleet.policy, upstream)
        return
    client = ContainerdClient(fleet.net, workdir, upstream)
    try:
        for index, host in enumerate(fleet.node_hosts):
            client.start(index, host)
        for index in range(len(fleet.node_hosts)):
            client.wait_ready(index)
        yield client
    finally:
        client.stop()


def pull_all(
    net: SimulatedNetwork,
    client: PullClient,
    jobs: Sequence[tuple[int, Host, FleetNode | None]],
    time_limit: float,
    during: Callable[[float], None] | None = None,
    cid: str | None = None,
) -> list[Pull]:
    """Start every job's client at the same moment; return when all have ended. ``during(elapsed)``
    is called about every 50 ms while they run (the kill scenario acts from there)."""
    pulls = [Pull(index) for index, _, _ in jobs]
    procs: list[subprocess.Popen[bytes]] = []
    began = time.perf_counter()
    for pull, (index, host, via) in zip(pulls, jobs, strict=True):
        client.discard(index)
        pull.began = time.perf_counter()
        procs.append(
            net.spawn(
                host, client.command(index, host, via, cid), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
    stderr: dict[int, bytes] = {}

    def drain(n: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        stderr[n] = proc.stderr.read()
        proc.wait()
        pulls[n].ended = time.perf_counter()

    threads = [threading.Thread(target=drain, args=(n, proc), daemon=True) for n, proc in enumerate(procs)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        elapsed = time.perf_counter() - began
        if elapsed > time_limit:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for thread in threads:
                thread.join()
            raise FleetError(f"pulls still running after {time_limit:.0f} s")
        if during is not None:
            during(elapsed)
        time.sleep(0.05)
    for n, (pull, proc) in enumerate(zip(pulls, procs, strict=True)):
        if proc.returncode != 0:
            pull.error = (
                stderr.get(n, b"").decode("utf-8", "replace").strip()[-500:] or f"exit {proc.returncode}"
            )
    return pulls


def verify_pulls(pulls: Sequence[Pull], client: PullClient, image: FleetImage) -> None:
    """Re-check every successful pull against the image; drop the copies afterwards."""
    for pull in pulls:
        if not pull.error:
            try:
                client.verify(pull.node, image)
                pull.ok = True
            except (OSError, ValueError, KeyError, FleetError) as exc:
                pull.error = f"verification failed: {exc}"
        client.discard(pull.node)


# --- scenarios ------------------------------------------------------------------------------------


@dataclass
class NodeStats:
    """One ipfsreg node over a scenario: CPU, peak RSS, and what bitswap moved (from its /metrics)."""

    node: int
    cpu_seconds: float
    peak_rss_bytes: int
    bitswap_bytes_sent: float = 0.0
    bitswap_bytes_received: float = 0.0
    duplicate_blocks: float = 0.0


@dataclass
class ScenarioResult:
    name: str
    client: str
    nodes: int
    ideal_seconds: float
    image_bytes: int
    pulls: list[Pull]
    upstream: UpstreamServed
    node_stats: list[NodeStats] = field(default_factory=list)
    first: Pull | None = None  # rolling: the node that pulled before the others
    killed_node: int | None = None
    killed_at: float | None = None
    fleet_start_seconds: float | None = None  # from starting the ipfsreg nodes to all of them peered

    def counted(self) -> list[Pull]:
        return [pull for pull in self.pulls if not pull.killed]

    def seconds(self) -> list[float]:
        return sorted(pull.seconds for pull in self.counted() if pull.ok)

    @property
    def all_verified(self) -> bool:
        return all(pull.ok for pull in self.counted())

    @property
    def upstream_multiple(self) -> float:
        return self.upstream.total_bytes / self.image_bytes

    def layer_multiples(self, image: FleetImage) -> dict[str, float]:
        """Bytes of each layer the upstream sent, as a multiple of the layer's size."""
        return {
            layer.digest: self.upstream.blob_bytes.get(layer.digest, 0) / layer.size for layer in image.layers
        }

    def summary(self) -> dict[str, float]:
        values = self.seconds()
        if not values:
            return {}
        return {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": values[-1],
        }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (with a handful of nodes, p99 is the slowest node)."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Fleet:
    """What every scenario shares: the network, the upstream, the image and where files go."""

    net: SimulatedNetwork
    upstream: Upstream
    image: FleetImage
    workdir: Path
    policy: Path
    node_hosts: list[Host]

    @property
    def ideal_seconds(self) -> float:
        return self.image.size / self.net.shape.bytes_per_second

    @property
    def time_limit(self) -> float:
        return PULL_TIME_FACTOR * self.ideal_seconds * len(self.node_hosts) + PULL_TIME_ALLOWANCE

    def result(self, name: str, client: PullClient, pulls: list[Pull], offset: int) -> ScenarioResult:
        verify_pulls(pulls, client, self.image)
        return ScenarioResult(
            name=name,
            client=client.name,
            nodes=len(self.node_hosts),
            ideal_seconds=self.ideal_seconds,
            image_bytes=self.image.size,
            pulls=pulls,
            upstream=self.upstream.served_since(offset),
        )

    def drop_scenario_data(self, name: str, client: str) -> None:
        """Remove a finished scenario's data dirs and client stores (its logs stay until the run ends):
        N copies of the image per scenario and client would otherwise pile up in tmpfs."""
        path = self.workdir / f"{name}-{client}"
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)

    def scenario_dir(self, name: str, client: str) -> Path:
        path = self.workdir / f"{name}-{client}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path


_METRICS: Final = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as resp:
    sys.stdout.write(resp.read().decode())
"""


def node_metrics(node: FleetNode) -> dict[str, float]:
    """The node's Prometheus metrics without labels, by name."""
    result = subprocess.run(
        node.host.command([sys.executable, "-c", _METRICS, f"http://{node.registry}/metrics"]),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    values = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            with contextlib.suppress(ValueError):
                values[parts[0]] = float(parts[1])
    return values


def _stats(nodes: Sequence[FleetNode], cpu_before: dict[int, float]) -> list[NodeStats]:
    stats = []
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            cpu = node.cpu_seconds() - cpu_before[node.index]
            metrics = node_metrics(node)
            stats.append(
                NodeStats(
                    node.index,
                    cpu,
                    node.peak_rss_bytes(),
                    metrics.get("ipfsreg_bitswap_block_bytes_sent_total", 0.0),
                    metrics.get("ipfsreg_bitswap_block_bytes_received_total", 0.0),
                    metrics.get("ipfsreg_bitswap_duplicate_blocks_total", 0.0),
                )
            )
    return stats


def run_central(fleet: Fleet, client_name: str) -> ScenarioResult:
    workdir = fleet.scenario_dir("central", client_name)
    with pull_client(client_name, fleet, workdir) as client:
        offset = fleet.upstream.log_offset()
        jobs = [(index, host, None) for index, host in enumerate(fleet.node_hosts)]
        pulls = pull_all(fleet.net, client, jobs, fleet.time_limit)
        return fleet.result("central", client, pulls, offset)


def run_cold(
    fleet: Fleet, client_name: str, name: str = "cold", kill_at: float | None = None
) -> ScenarioResult:
    workdir = fleet.scenario_dir(name, client_name)
    starting = time.perf_counter()
    with (
        running_fleet(fleet.net, fleet.node_hosts, workdir, fleet.upstream) as nodes,
        pull_client(client_name, fleet, workdir) as client,
    ):
        started = time.perf_counter() - starting
        cpu_before = {node.index: node.cpu_seconds() for node in nodes}
        offset = fleet.upstream.log_offset()
        jobs = [(node.index, node.host, node) for node in nodes]
        killed: list[tuple[int, float]] = []

        def kill_half_way(elapsed: float) -> None:
            if kill_at is None or killed or elapsed < kill_at:
                return
            victim = _most_served(nodes, fleet.upstream.served_since(offset))
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            killed.append((victim.index, elapsed))

        pulls = pull_all(fleet.net, client, jobs, fleet.time_limit, kill_half_way)
        stats = _stats(nodes, cpu_before)
        result = fleet.result(name, client, pulls, offset)
    result.node_stats = stats
    result.fleet_start_seconds = started
    if killed:
        result.killed_node, result.killed_at = killed[0]
        result.pulls[result.killed_node].killed = True
    elif kill_at is not None:
        raise FleetError(f"the cold wave ended before the kill at {kill_at:.1f} s")
    return result


_IMAGE_CID: Final = r"""
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], method="HEAD", headers={"Accept": sys.argv[2]})
with urllib.request.urlopen(request, timeout=10) as resp:
    print(resp.headers.get("X-Ipfs-Path", ""))
"""


def image_cid(node: FleetNode) -> str:
    """The IPFS address (CIDv1) of the image directory ``node`` published for the tag it pulled."""
    from ipfsreg.cid import CID

    url = f"http://{node.registry}/v2/{REPOSITORY}/manifests/{TAG}"
    result = subprocess.run(
        node.host.command([sys.executable, "-c", _IMAGE_CID, url, OCI_MANIFEST]),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    path = result.stdout.strip()
    if result.returncode != 0 or not path.startswith("/ipfs/"):
        raise FleetError(f"node{node.index} gave no image CID for {REPOSITORY}:{TAG}: {result.stderr[-500:]}")
    return str(CID.parse(path.removeprefix("/ipfs/")).to_v1())


def _most_served(nodes: Sequence[FleetNode], served: UpstreamServed) -> FleetNode:
    """The node the upstream has sent the most bytes so far (the last one on a tie)."""
    return max(reversed(nodes), key=lambda node: served.by_client.get(node.host.address, 0))


def run_rolling(fleet: Fleet, client_name: str, by_cid: bool = False) -> ScenarioResult:
    name = "rolling-cid" if by_cid else "rolling"
    workdir = fleet.scenario_dir(name, client_name)
    starting = time.perf_counter()
    with (
        running_fleet(fleet.net, fleet.node_hosts, workdir, fleet.upstream) as nodes,
        pull_client(client_name, fleet, workdir) as client,
    ):
        started = time.perf_counter() - starting
        cpu_before = {node.index: node.cpu_seconds() for node in nodes}
        offset = fleet.upstream.log_offset()
        first_node, *others = nodes
        (first,) = pull_all(fleet.net, client, [(0, first_node.host, first_node)], fleet.time_limit)
        verify_pulls([first], client, fleet.image)
        if not first.ok:
            raise FleetError(f"{name}: the first pull failed: {first.error}")
        cid = image_cid(first_node) if by_cid else None
        jobs = [(node.index, node.host, node) for node in others]
        pulls = pull_all(fleet.net, client, jobs, fleet.time_limit, cid=cid)
        stats = _stats(nodes, cpu_before)
        result = fleet.result(name, client, pulls, offset)
    result.first = first
    result.node_stats = stats
    result.fleet_start_seconds = started
    return result


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetOptions:
    nodes: int = 8
    link_mbit: float = 100.0
    latency_ms: float = 1.0
    image_mb: float = 200.0
    scenarios: tuple[str, ...] = SCENARIOS
    clients: tuple[str, ...] | None = None  # None: skopeo, and ctr where containerd is installed
    workdir: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None


@dataclass
class FleetReport:
    options: FleetOptions
    image: FleetImage
    line_rate: LineRateCheck
    rtt_ms: float
    netem: bool
    scenarios: list[ScenarioResult]
    namespaces_left: list[str]

    def scenario(self, name: str, client: str = "skopeo") -> ScenarioResult:
        return next(result for result in self.scenarios if result.name == name and result.client == client)


def default_workdir_parent() -> str | None:
    """Data dirs and the clients' copies go to tmpfs when there is one: on this one machine every
    simulated node would otherwise share one disk, which no real fleet does."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_fleet(options: FleetOptions, out: Callable[[str], None] = print) -> FleetReport:
    """Build the network, run the scenarios, tear everything down; the report has every figure."""
    for name in options.scenarios:
        if name not in SCENARIOS:
            raise FleetError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if options.nodes < 2:
        raise FleetError("a fleet needs at least 2 nodes")
    clients = options.clients or available_clients()
    for client in clients:
        if client not in CLIENTS:
            raise FleetError(f"unknown client {client!r}; choose from {', '.join(CLIENTS)}")
    tools = {"skopeo", "docker-registry"} | ({"ctr", "containerd"} if "ctr" in clients else set())
    for tool in sorted(tools):
        if shutil.which(tool) is None:
            raise FleetError(f"{tool} is not installed (Debian package {tool}; `make system-deps`)")
    image = fleet_image(options.image_mb)
    out(f"image: {image.size / MB:.1f} MB in {len(image.layers)} layers ({image.layout})")
    host_names = [UPSTREAM, *(f"node{index}" for index in range(options.nodes))]
    shape = LinkShape(options.link_mbit, options.latency_ms)
    workdir_parent = str(options.workdir) if options.workdir else default_workdir_parent()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-", dir=workdir_parent) as tmp:
        workdir = Path(tmp)
        with SimulatedNetwork(host_names, shape) as net:
            pid = net.pid
            hosts = [net.hosts[name] for name in host_names[1:]]
            line_rate = net.check_line_rate(net.hosts[UPSTREAM], hosts[0])
            rtt = net.rtt_ms(hosts[0], net.hosts[UPSTREAM])
            out(
                f"links: {shape.mbit:g} Mbit/s each way; line-rate check (raw TCP, upstream -> node0): "
                f"{line_rate.mbit:.1f} Mbit/s = {line_rate.ratio:.2f} x configured; RTT {rtt:.2f} ms"
            )
            if not net.netem and shape.latency_ms > 0:
                out(
                    "latency: netem is not in this kernel; the links add no latency "
                    f"(asked {shape.latency_ms:g} ms)"
                )
            policy = _policy_file(workdir)
            upstream = start_upstream(net, workdir, image, policy)
            fleet = Fleet(net, upstream, image, workdir, policy, hosts)
            out(
                f"line-rate ideal: {fleet.ideal_seconds:.2f} s per node "
                f"({image.size / MB:.1f} MB at {shape.mbit:g} Mbit/s)"
            )
            for name in options.scenarios:
                for client in clients:
                    out(f"--- scenario {name} with {client} (N = {options.nodes}) ---")
                    if name == "central":
                        result = run_central(fleet, client)
                    elif name == "cold":
                        result = run_cold(fleet, client)
                    elif name in ("rolling", "rolling-cid"):
                        result = run_rolling(fleet, client, by_cid=name == "rolling-cid")
                    else:
                        cold = next((r for r in results if (r.name, r.client) == ("cold", client)), None)
                        p50 = cold.summary().get("p50") if cold else None
                        result = run_cold(fleet, client, "kill", kill_at=(p50 or fleet.ideal_seconds) / 2)
                    results.append(result)
                    print_scenario(result, image, out)
                    fleet.drop_scenario_data(name, client)
    from bench.netns import run_namespaces

    report = FleetReport(options, image, line_rate, rtt, net.netem, results, run_namespaces(pid))
    print_summary(report, out)
    if options.json_path:
        options.json_path.write_text(json.dumps(report_json(report), indent=2))
        out(f"figures written to {options.json_path}")
    if options.plot_path:
        plot(report, options.plot_path)
        out(f"plot written to {options.plot_path}")
    return report


# --- output ---------------------------------------------------------------------------------------


def print_scenario(result: ScenarioResult, image: FleetImage, out: Callable[[str], None]) -> None:
    stats = {s.node: s for s in result.node_stats}
    rows = []
    pulls = ([result.first] if result.first else []) + result.pulls
    for pull in pulls:
        node_stats = stats.get(pull.node)
        status = "killed" if pull.killed else ("verified" if pull.ok else f"FAILED: {pull.error[:80]}")
        if result.first is pull:
            status += " (first)"
        rows.append(
            [
                f"node{pull.node}",
                pull.seconds,
                pull.seconds / result.ideal_seconds,
                node_stats.cpu_seconds if node_stats else "-",
                f"{node_stats.peak_rss_bytes / MIB:.0f}" if node_stats else "-",
                f"{node_stats.bitswap_bytes_sent / MB:.0f}/{node_stats.bitswap_bytes_received / MB:.0f}"
                if node_stats
                else "-",
                f"{node_stats.duplicate_blocks:.0f}" if node_stats else "-",
                status,
            ]
        )
    headers = ["node", "seconds", "x line rate", "ipfsreg cpu s", "peak RSS MiB", "bitswap MB out/in", "dups"]
    print_table([*headers, "result"], rows)
    layers = ", ".join(f"{value:.2f}" for value in result.layer_multiples(image).values())
    agents = ", ".join(f"{agent} {size / MB:.1f}" for agent, size in sorted(result.upstream.by_agent.items()))
    out(
        f"upstream served {result.upstream.total_bytes / MB:.1f} MB = {result.upstream_multiple:.2f} x image "
        f"(per layer: {layers}; MB by user agent: {agents})"
    )
    if result.killed_node is not None:
        out(f"node{result.killed_node} killed at {result.killed_at:.1f} s")
    if result.fleet_start_seconds is not None:
        out(f"(the fleet was up and fully peered {result.fleet_start_seconds:.1f} s after its start)")


def print_summary(report: FleetReport, out: Callable[[str], None]) -> None:
    out(
        f"=== fleet N = {report.options.nodes}, {report.image.size / MB:.0f} MB, "
        f"{report.options.link_mbit:g} Mbit/s ==="
    )
    rows = []
    for result in report.scenarios:
        summary = result.summary()
        ideal = result.ideal_seconds
        if summary:
            figures: list[object] = [
                summary["p50"],
                summary["p99"],
                summary["max"],
                summary["p50"] / ideal,
                summary["p99"] / ideal,
                summary["max"] / ideal,
            ]
        else:
            figures = ["-"] * 6
        verified = sum(pull.ok for pull in result.counted())
        rows.append(
            [
                result.name,
                result.client,
                *figures,
                result.upstream_multiple,
                f"{verified}/{len(result.counted())}",
                GOALS[result.name],
            ]
        )
    print_table(
        [
            "scenario",
            "client",
            "p50 s",
            "p99 s",
            "max s",
            "p50 x",
            "p99 x",
            "max x",
            "upstream x image",
            "verified",
            "goal",
        ],
        rows,
    )
    out("(x: multiple of the line-rate ideal, image size / link rate; p99 is nearest-rank: the slowest node)")
    if report.namespaces_left:
        out(f"WARNING: namespaces left behind: {report.namespaces_left}")


def report_json(report: FleetReport) -> dict[str, Any]:
    options = asdict(report.options)
    options = {key: (str(value) if isinstance(value, Path) else value) for key, value in options.items()}
    return {
        "options": options,
        "image": {
            "bytes": report.image.size,
            "manifest": report.image.manifest.digest,
            "layers": [asdict(layer) for layer in report.image.layers],
        },
        "line_rate_check": {
            "bytes": report.line_rate.bytes_sent,
            "seconds": report.line_rate.seconds,
            "mbit": report.line_rate.mbit,
            "ratio": report.line_rate.ratio,
        },
        "rtt_ms": report.rtt_ms,
        "netem": report.netem,
        "goals": GOALS,
        "scenarios": [
            {
                "name": result.name,
                "client": result.client,
                "nodes": result.nodes,
                "ideal_seconds": result.ideal_seconds,
                "summary": result.summary(),
                "summary_x_line_rate": {k: v / result.ideal_seconds for k, v in result.summary().items()},
                "all_verified": result.all_verified,
                "upstream_bytes": result.upstream.total_bytes,
                "upstream_x_image": result.upstream_multiple,
                "upstream_by_client": result.upstream.by_client,
                "upstream_by_agent": result.upstream.by_agent,
                "upstream_layer_x": result.layer_multiples(report.image),
                "upstream_blob_gets": result.upstream.blob_gets,
                "first": asdict(result.first) | {"seconds": result.first.seconds} if result.first else None,
                "pulls": [asdict(pull) | {"seconds": pull.seconds} for pull in result.pulls],
                "node_stats": [asdict(stats) for stats in result.node_stats],
                "killed_node": result.killed_node,
                "killed_at": result.killed_at,
                "fleet_start_seconds": result.fleet_start_seconds,
            }
            for result in report.scenarios
        ],
        "namespaces_left": report.namespaces_left,
    }


def plot(report: FleetReport, path: Path) -> None:
    """Pull time per node, the scenarios side by side, against the line-rate ideal and the goals."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise FleetError("--plot needs matplotlib: pip install -e '.[bench]'") from None
    fig, ax = plt.subplots(figsize=(min(4.5 + 1.3 * len(report.scenarios), 16), 5))
    ideal = report.scenarios[0].ideal_seconds if report.scenarios else 0.0

    def spread(x: int, count: int) -> list[float]:
        step = min(0.6 / max(count, 1), 0.08)
        return [x + (i - (count - 1) / 2) * step for i in range(count)]

    for x, result in enumerate(report.scenarios):
        times = [pull.seconds for pull in result.counted() if pull.ok]
        ax.scatter(spread(x, len(times)), times, s=18, color=f"C{x}")
        if result.first is not None and result.first.ok:
            ax.scatter(
                [x - 0.3], [result.first.seconds], s=30, marker="D", facecolors="none", edgecolors="black"
            )
        if result.killed_at is not None:
            ax.scatter([x + 0.3], [result.killed_at], s=40, marker="x", color="red")
        summary = result.summary()
        if summary:
            ax.hlines(summary["p50"], x - 0.35, x + 0.35, colors="gray", linewidth=1)
    ax.scatter(
        [], [], s=30, marker="D", facecolors="none", edgecolors="black", label="rolling: the first node"
    )
    ax.scatter([], [], s=40, marker="x", color="red", label="kill: when a node was killed")
    ax.hlines([], 0, 0, colors="gray", linewidth=1, label="p50")
    ax.axhline(ideal, color="green", linestyle="--", linewidth=1, label="line rate (image / link)")
    ax.axhline(1.5 * ideal, color="orange", linestyle=":", linewidth=1, label="cold-wave goal 1.5x")
    ax.axhline(1.2 * ideal, color="purple", linestyle=":", linewidth=1, label="rolling goal 1.2x")
    ax.set_xticks(
        range(len(report.scenarios)), [f"{result.name}\n{result.client}" for result in report.scenarios]
    )
    ax.set_ylabel("seconds to a verified image, per node")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"N = {report.options.nodes}, {report.image.size / MB:.0f} MB image, "
        f"{report.options.link_mbit:g} Mbit/s links"
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_args(argv: Sequence[str] | None) -> FleetOptions:
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8, help="ipfsreg nodes (default 8; up to 16 on 2 cores)")
    parser.add_argument(
        "--link-mbit", type=float, default=100.0, help="every link's rate, each way (default 100)"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=1.0, help="added one-way latency (netem; default 1)"
    )
    parser.add_argument(
        "--image-mb", type=float, default=200.0, help="image size in MB, 4 layers (default 200)"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--clients",
        default=None,
        help="comma-separated, from skopeo,ctr (default: skopeo, and ctr if installed)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the run's files (default /dev/shm)"
    )
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument(
        "--plot", dest="plot_path", type=Path, default=None, help="write a PNG plot (matplotlib)"
    )
    args = parser.parse_args(argv)
    return FleetOptions(
        nodes=args.nodes,
        link_mbit=args.link_mbit,
        latency_ms=args.latency_ms,
        image_mb=args.image_mb,
        scenarios=_names(args.scenarios),
        clients=_names(args.clients) if args.clients else None,
        workdir=args.workdir,
        json_path=args.json_path,
        plot_path=args.plot_path,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench fleet: needs root (network namespaces, veth pairs, tc); skipped", file=sys.stderr)
        return
    from bench.netns import raising_on_sigterm

    try:
        with raising_on_sigterm():
            run_fleet(options)
    except (FleetError, NetnsError) as exc:
        raise SystemExit(f"bench fleet: {exc}") from None
