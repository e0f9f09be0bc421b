"""Data operations shared by the CLI and the control API: add files and trees, read them back.

Everything streams: files are read in bounded chunks, blocks are committed to LevelDB in batches,
and reads go through an exporter ``BlockSource`` (local, or network-backed when a node runs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

from ipfsreg.blockstore import Datastore, WriteBatch
from ipfsreg.cid import CID
from ipfsreg.unixfs.car import CarBlock
from ipfsreg.unixfs.directory import import_tree
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import (
    BlockSource,
    decode_unixfs_node,
    list_directory,
    read_file,
    resolve_path,
    stat,
)
from ipfsreg.unixfs.importer import Block, ImportOptions, ImportResult

READ_SIZE: Final = 1024 * 1024
BATCH_BYTES: Final = 8 * 1024 * 1024

Progress = Callable[[int], None]


class OpsError(Exception):
    """A user-facing failure of a data operation (bad path, wrong kind of node, ...)."""


class BlockSink:
    """Collects already verified blocks (our own importer's, or a verifying CarReader's) into LevelDB
    write batches of about BATCH_BYTES; ``close`` makes them durable."""

    def __init__(self, store: Datastore) -> None:
        self._store = store
        self._batch: WriteBatch = store.batch()
        self._pending = 0

    def add(self, blocks: Iterable[Block | CarBlock]) -> None:
        for block in blocks:
            self._batch.put_block(block.cid, block.data, verify=False)
            self._pending += len(block.data)
        if self._pending >= BATCH_BYTES:
            self._batch.commit()
            self._batch = self._store.batch()
            self._pending = 0

    def close(self) -> None:
        self._batch.commit()
        self._store.flush()

    def discard(self) -> None:
        self._batch.discard()


def path_size(path: Path) -> int:
    """Total bytes of the regular files under ``path`` (for progress bars)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def add_path(
    store: Datastore,
    path: Path,
    options: ImportOptions,
    *,
    recursive: bool = False,
    hidden: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Import a file (or, with ``recursive``, a directory tree as ``ipfs add -r`` does) into ``store``."""
    if not path.exists() and not path.is_symlink():
        raise OpsError(f"{path}: no such file or directory")
    if path.is_dir() and not recursive:
        raise OpsError(f"{path} is a directory: use -r to add a tree")
    sink = BlockSink(store)
    groups = ImportGroups(path, options, progress, hidden=hidden)
    try:
        for group in groups:
            sink.add(group)
    except BaseException:
        sink.discard()
        raise
    sink.close()
    return groups.result()


class ImportGroups:
    """Import a file or tree lazily: iterate for groups of about READ_SIZE bytes of blocks
    (children before parents, the root last), then ``result()`` gives the root."""

    def __init__(
        self, path: Path, options: ImportOptions, progress: Progress | None = None, *, hidden: bool = False
    ) -> None:
        self._path = path
        self._hidden = hidden
        self._options = options
        self._progress = progress
        self._result: ImportResult | None = None

    def __iter__(self) -> Iterator[list[Block]]:
        tree = import_tree(self._path, self._options, include_hidden=self._hidden)
        group: list[Block] = []
        size = 0
        for block in tree:
            group.append(block)
            size += len(block.data)
            if size >= READ_SIZE:
                if self._progress is not None:
                    self._progress(size)  # block bytes: close to, not exactly, the file bytes
                yield group
                group, size = [], 0
        if group:
            if self._progress is not None:
                self._progress(size)
            yield group
        self._result = tree.result

    def result(self) -> ImportResult:
        if self._result is None:
            raise OpsError(f"importing {self._path} did not complete")
        return self._result


def parse_cid_path(text: str) -> tuple[CID, str]:
    """Split ``[/ipfs/]CID[/path]`` into the root CID and the path inside it."""
    text = text.strip()
    if text.startswith("/ipfs/"):
        text = text[len("/ipfs/") :]
    elif text.startswith("ipfs://"):
        text = text[len("ipfs://") :]
    root, _, rest = text.partition("/")
    return CID.parse(root), rest.strip("/")


async def resolve(source: BlockSource, text: str) -> CID:
    root, path = parse_cid_path(text)
    return await resolve_path(source, root, path) if path else root


async def cat(
    source: BlockSource, text: str, *, offset: int = 0, length: int | None = None
) -> AsyncIterator[bytes]:
    """The bytes of the file at ``CID[/path]``, optionally a range."""
    cid = await resolve(source, text)
    async for chunk in read_file(source, cid, offset, length):
        yield chunk


async def get(source: BlockSource, text: str, dest: Path, progress: Progress | None = None) -> CID:
    """Write the file, symlink or directory tree at ``CID[/path]`` to ``dest``."""
    cid = await resolve(source, text)
    if dest.exists() and not dest.is_dir():
        raise OpsError(f"{dest} already exists")
    if dest.is_dir() and any(dest.iterdir()):
        raise OpsError(f"{dest} exists and is not empty")
    await _write_node(source, cid, dest, progress)
    return cid


async def _write_node(source: BlockSource, cid: CID, dest: Path, progress: Progress | None) -> None:
    info = await stat(source, cid)
    if info.type in ("directory", "hamt"):
        dest.mkdir(parents=True, exist_ok=True)
        for entry in await list_directory(source, cid):
            if not entry.name or "/" in entry.name or entry.name in (".", ".."):
                raise OpsError(f"refusing unsafe directory entry name {entry.name!r} in {cid}")
            await _write_node(source, entry.cid, dest / entry.name, progress)
    elif info.type == "symlink":
        os.symlink(os.fsdecode(await _symlink_target(source, cid)), dest)
    elif info.type in ("file", "raw"):
        tmp = dest.with_name(dest.name + ".ipfsreg-partial")
        try:
            with tmp.open("wb") as out:
                async for chunk in read_file(source, cid):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        raise OpsError(f"{cid} is a UnixFS {info.type} node, which cannot be written out")


async def _symlink_target(source: BlockSource, cid: CID) -> bytes:
    _node, fs = decode_unixfs_node(cid, await source.get(cid))
    if not fs.data:
        raise UnixFSError(f"symlink {cid} has no target")
    return fs.data
