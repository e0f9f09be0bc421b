"""The `ipfsreg` command line: serve, add, cat, get, export, import, config.

Every command takes ``--data DIR`` (before or after the command name). Errors are printed as one
line on stderr with exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from ipfsreg import __version__
from ipfsreg.blockstore import BlockstoreError, Datastore
from ipfsreg.cid import CIDError
from ipfsreg.config import Config, ConfigError, load_config, render_toml
from ipfsreg.ops import OpsError, add_path, cat, get, path_size
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import LocalBlockSource
from ipfsreg.unixfs.importer import ImportOptions

Handler = Callable[[argparse.Namespace, Config], int]


class CommandError(Exception):
    """A failure to report to the user as one line."""


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--data", metavar="DIR", default=default, help="data directory")
    parser.add_argument("--config", metavar="FILE", default=default, help="TOML config file")
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level",
    )


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipfsreg", description="A container image registry on IPFS.")
    parser.add_argument("--version", action="version", version=f"ipfsreg {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, top=False)
        p.set_defaults(handler=handler)
        return p

    p = command("add", cmd_add, "import a file or directory tree; prints the root CID last")
    p.add_argument("path", type=Path)
    p.add_argument("-r", "--recursive", action="store_true", help="add a directory tree")
    p.add_argument("--cid-version", type=int, choices=[0, 1], default=None)
    p.add_argument("--chunk-size", type=int, default=None, help="chunk size in bytes (default 262144)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the root CID")

    p = command("cat", cmd_cat, "write the bytes of CID[/path] to stdout")
    p.add_argument("cid_path", metavar="CID[/path]")
    p.add_argument("--offset", type=_nonnegative, default=0)
    p.add_argument("--length", type=_nonnegative, default=None)

    p = command("get", cmd_get, "write the file or directory tree at CID[/path]")
    p.add_argument("cid_path", metavar="CID[/path]")
    p.add_argument("-o", "--output", type=Path, default=None, help="destination (default: the CID)")

    p = command("config", cmd_config, "show the effective configuration")
    p.add_argument("action", choices=["show"])
    return parser


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def open_store(config: Config) -> Iterator[Datastore]:
    store = Datastore.open(config.data_dir, verify_reads=config.storage.verify_reads)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise no callback."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _import_options(args: argparse.Namespace, config: Config) -> ImportOptions:
    cid_version = args.cid_version if args.cid_version is not None else config.importer.cid_version
    chunk_size = args.chunk_size if args.chunk_size is not None else config.importer.chunk_size
    try:
        return ImportOptions(chunk_size=chunk_size, cid_version=cid_version)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# --- commands --------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace, config: Config) -> int:
    options = _import_options(args, config)
    path: Path = args.path
    with open_store(config) as store, progress_bar(path_size(path) if path.exists() else None, "add") as bar:
        result = add_path(store, path, options, recursive=args.recursive, progress=bar)
    if args.quiet:
        print(result.cid)
    else:
        print(f"added {result.cid} {path.name or path} ({result.size} bytes)", file=sys.stderr)
        print(result.cid)
    return 0


def cmd_cat(args: argparse.Namespace, config: Config) -> int:
    async def run(store: Datastore) -> None:
        out = sys.stdout.buffer
        source = LocalBlockSource(store.blocks)
        async for chunk in cat(source, args.cid_path, offset=args.offset, length=args.length):
            out.write(chunk)
        out.flush()

    with open_store(config) as store:
        trio.run(run, store)
    return 0


def cmd_get(args: argparse.Namespace, config: Config) -> int:
    dest: Path = args.output or Path(args.cid_path.strip("/").split("/")[-1])

    async def run(store: Datastore) -> None:
        with progress_bar(None, "get") as bar:
            await get(LocalBlockSource(store.blocks), args.cid_path, dest, bar)

    with open_store(config) as store:
        trio.run(run, store)
    print(f"saved {args.cid_path} to {dest}", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(config))
    return 0


# --- entry point -----------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    print(f"ipfsreg: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"log_level": args.log_level}
    try:
        config = load_config(data_dir=args.data, config_file=args.config, overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc))
    handler: Handler = args.handler
    try:
        return handler(args, config)
    except (CommandError, OpsError, ConfigError, BlockstoreError, UnixFSError, CIDError) as exc:
        _fail(str(exc))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
