"""``python -m bench [name ...]``: run ``bench.<name>.main()`` for each name, else every bench module.

``python -m bench NAME --option ...``: options after one benchmark's name go to its ``main(argv)``
(``python -m bench fleet --nodes 4``); benchmarks without options take none."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the modules in bench/ (not starting with "_") that define a callable ``main``."""
    names = []
    for info in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda info: info.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        if callable(getattr(importlib.import_module(f"bench.{info.name}"), "main", None)):
            names.append(info.name)
    return names


def load(name: str) -> Callable[..., None]:
    try:
        module: ModuleType = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            raise SystemExit(f"no benchmark named {name!r}; available: {', '.join(discover())}") from exc
        raise
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise SystemExit(f"bench.{name} has no main()")
    return entry  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, extra = parser.parse_known_args(argv)
    if args.list:
        print("\n".join(discover()))
        return
    names = args.names or discover()
    entries = [(name, load(name)) for name in names]  # fail on a bad name before running anything
    if extra and (len(entries) != 1 or not inspect.signature(entries[0][1]).parameters):
        parser.error(
            f"unrecognized arguments: {' '.join(extra)} (options go to one benchmark that takes them)"
        )
    for name, entry in entries:
        print(f"=== bench {name} ===", flush=True)
        began = time.perf_counter()
        if extra:
            entry(extra)
        else:
            entry()
        print(f"=== bench {name} done in {time.perf_counter() - began:.1f} s ===", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
