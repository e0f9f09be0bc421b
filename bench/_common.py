"""Shared benchmark helpers: deterministic input files, timing, and the peak RSS of child processes."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

MIB: Final = 1024 * 1024
_WRITE_CHUNK: Final = 4 * MIB
SAMPLE_INTERVAL: Final = 0.01


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: its output, wall time and peak resident set size (from wait4)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_bytes: int  # ru_maxrss from wait4: anonymous and file-backed pages
    peak_anon_rss_bytes: int  # max RssAnon sampled every SAMPLE_INTERVAL: the process's own heap

    def check(self) -> ChildRun:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.args)} exited with {self.returncode}\nstdout:\n{self.stdout[-2000:]}"
                f"\nstderr:\n{self.stderr[-2000:]}"
            )
        return self


def write_random_file(path: Path, size: int, seed: int) -> Path:
    """Write ``size`` pseudo-random bytes (a fixed function of ``seed``) to ``path``."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        remaining = size
        while remaining:
            n = min(remaining, _WRITE_CHUNK)
            out.write(rng.randbytes(n))
            remaining -= n
    return path


def run_measured(
    args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> ChildRun:
    """Run a command to completion; the result has its wall time and peak RSS (ru_maxrss)."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    sampler = _AnonSampler(proc.pid)
    sampler.start()
    # communicate() would reap the child with waitpid and lose its rusage: read the pipes, then wait4.
    stdout, stderr = _drain(proc)
    sampler.stop()
    _, status, rusage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        args=list(args),
        returncode=proc.returncode,
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        seconds=seconds,
        peak_rss_bytes=rusage.ru_maxrss * 1024,  # Linux reports KiB
        peak_anon_rss_bytes=sampler.peak,
    )


class _AnonSampler(threading.Thread):
    """Polls a live process's RssAnon and keeps the maximum (until stopped or the process is a zombie)."""

    def __init__(self, pid: int) -> None:
        super().__init__(name=f"rss-sampler-{pid}", daemon=True)
        self.pid = pid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = _status_field(self.pid, "RssAnon:")
            if value is None:
                return
            self.peak = max(self.peak, value)
            self._stop_event.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Read a child's stdout and stderr to EOF without reaping it (two threads, so neither pipe fills)."""
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[str, bytes] = {}

    def read(name: str, stream: IO[bytes]) -> None:
        chunks[name] = stream.read()

    threads = [
        threading.Thread(target=read, args=("out", proc.stdout)),
        threading.Thread(target=read, args=("err", proc.stderr)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    proc.stdout.close()
    proc.stderr.close()
    return chunks["out"], chunks["err"]


def _status_field(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status in bytes; None once the process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_of(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in bytes."""
    value = _status_field(pid, "VmHWM:")
    if value is None:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return value


def ipfsreg_command() -> list[str]:
    """How to run the ipfsreg CLI: $BENCH_IPFSREG_CMD (split on spaces) if set, else the console script
    beside this interpreter, else ``python -m ipfsreg``."""
    override = os.environ.get("BENCH_IPFSREG_CMD")
    if override:
        return override.split()
    script = Path(sys.executable).with_name("ipfsreg")
    if script.exists():
        return [str(script)]
    found = shutil.which("ipfsreg")
    if found:
        return [found]
    return [sys.executable, "-m", "ipfsreg"]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("the command printed nothing on stdout")
    return lines[-1]


def mib(n_bytes: float) -> float:
    return n_bytes / MIB


def rate_mib_s(n_bytes: int, seconds: float) -> float:
    return mib(n_bytes) / seconds if seconds > 0 else float("inf")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
