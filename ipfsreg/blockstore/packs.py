"""Pack files: append-only files under ``<data_dir>/packs/`` that hold the bytes of large blocks.

LevelDB rewrites every value on each compaction, and blocks keyed by random multihashes overlap
every level, so a 256 KiB leaf was copied again and again (about a CPU-second of LevelDB work
per 200 MB ingested). Large blocks are therefore kept out of LevelDB's levels (key-value
separation, as in WiscKey or Badger): their bytes are appended to a pack file, and LevelDB keeps
a small :class:`Pointer` (pack, offset, length, CRC-32C) in the same atomic batch as everything
else. A pointer is only written after its bytes, so a reader never follows a pointer to bytes
that are not there; the batch that makes a write durable first syncs the packs it points into.

Appends bypass the page cache (``O_DIRECT``): each batch's blocks are copied into one aligned
buffer and written with one call at a 4 KiB-aligned offset (the tail of the last page is zero
padding, and the next batch starts on the next page). Buffered writes made the kernel allocate
(and, on a full page cache, first reclaim) a page-cache page for every 4 KiB of every layer:
about 0.3-0.45 CPU-s per 200 MB here, against 0.04 s for the copy plus direct write. Filesystems
that refuse ``O_DIRECT`` (tmpfs, some overlays) get ordinary buffered writes. Reads stay
buffered: each direct write is followed by ``POSIX_FADV_WILLNEED`` over its range, so the kernel
reads it back into the page cache in the background (0.11 CPU-s per 200 MB in all) and a layer
pulled right after its push is served from memory, as it would be after a buffered write.

Deleting a block punches a hole over its bytes (``fallocate(PUNCH_HOLE)``, so the disk space
returns at once); a pack with no live block left is unlinked. This module is the file side
only: the datastore decides what goes where and keeps each pack's :class:`PackMeta` in LevelDB.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, cast

import crc32c

logger = logging.getLogger(__name__)

PACKS_DIRNAME: Final = "packs"
DEFAULT_PACK_SIZE: Final = 256 * 1024 * 1024  # a pack takes no more appends once it is this big
_NAME: Final = re.compile(r"^(\d{8})\.pack$")
_POINTER: Final = struct.Struct(">IQII")  # pack id, offset, length, crc32c
_META: Final = struct.Struct(">QQQ")  # committed end, live bytes, live blocks
_PAGE: Final = 4096
_IOV_MAX: Final = 512  # buffers per pwritev call (Linux allows 1024)
_ALIGN: Final = 4096  # offset, length and buffer alignment of direct writes

_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02


class PackError(Exception):
    """A pack file could not be read or written (the datastore turns this into its own errors)."""


class Pointer(NamedTuple):
    """Where a block's bytes live: ``length`` bytes at ``offset`` of pack ``pack``, with their CRC-32C."""

    pack: int
    offset: int
    length: int
    crc: int

    def pack_bytes(self) -> bytes:
        return _POINTER.pack(self.pack, self.offset, self.length, self.crc)

    @classmethod
    def unpack(cls, raw: bytes) -> Pointer:
        if len(raw) != _POINTER.size:
            raise PackError(f"block pointer of {len(raw)} bytes, expected {_POINTER.size}")
        return cls(*_POINTER.unpack(raw))


@dataclass
class PackMeta:
    """A pack's bookkeeping, committed with the pointers it concerns: bytes [0, end) are
    committed; ``live_bytes`` / ``live_blocks`` count the blocks still pointed to."""

    end: int = 0
    live_bytes: int = 0
    live_blocks: int = 0

    def pack_bytes(self) -> bytes:
        return _META.pack(self.end, self.live_bytes, self.live_blocks)

    @classmethod
    def unpack(cls, raw: bytes) -> PackMeta:
        if len(raw) != _META.size:
            raise PackError(f"pack record of {len(raw)} bytes, expected {_META.size}")
        return cls(*_META.unpack(raw))


def checksum(data: bytes | memoryview) -> int:
    """The CRC-32C stored in a block's pointer (hardware-accelerated: about 20 GB/s; the GIL is
    released on large inputs)."""
    return int(crc32c.crc32c(data))


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_fallocate = _load_fallocate()


class PackFiles:
    """The pack files of one data dir: appends (one writer, under the datastore's commit lock),
    reads from any thread, syncs, hole punching and removal."""

    def __init__(self, directory: Path, *, pack_size: int = DEFAULT_PACK_SIZE, direct: bool = True) -> None:
        self.directory = directory
        self.pack_size = pack_size
        self.direct = direct and hasattr(os, "O_DIRECT")  # False once the filesystem refuses it
        self._buffer: mmap.mmap | None = None  # page-aligned staging buffer of direct writes
        directory.mkdir(parents=True, exist_ok=True)
        self._read_fds: dict[int, int] = {}
        self._retired_fds: list[int] = []  # fds of removed packs: a reader may still be using them
        self._fd_lock = threading.Lock()
        self._active: int | None = None
        self._active_fd: int | None = None
        self._active_end = 0
        self._active_direct = False  # whether the open writer fd has O_DIRECT
        self._dirty: set[int] = set()  # packs appended to since their last sync
        self._punch_supported = _fallocate is not None

    # --- files -------------------------------------------------------------------------------

    def path(self, pack: int) -> Path:
        return self.directory / f"{pack:08d}.pack"

    def existing(self) -> dict[int, int]:
        """Pack id -> file size, for every pack file on disk."""
        found: dict[int, int] = {}
        for entry in os.scandir(self.directory):
            match = _NAME.match(entry.name)
            if match:
                found[int(match.group(1))] = entry.stat().st_size
        return found

    def truncate(self, pack: int, size: int) -> None:
        os.truncate(self.path(pack), size)

    def remove(self, pack: int) -> None:
        """Unlink a pack; a reader that already opened it keeps reading until close()."""
        with self._fd_lock:
            fd = self._read_fds.pop(pack, None)
            if fd is not None:
                self._retired_fds.append(fd)
        if pack == self._active:
            self._close_active()
        with contextlib.suppress(FileNotFoundError):
            self.path(pack).unlink()
        self._dirty.discard(pack)

    # --- appends -----------------------------------------------------------------------------

    def start(self, pack: int, end: int) -> None:
        """Append to ``pack`` from offset ``end`` on (the committed end of the newest pack)."""
        self._close_active()
        self._active = pack
        self._active_end = end

    def append(self, values: list[bytes]) -> list[tuple[int, int]]:
        """Append ``values`` (in order) and return each one's (pack, offset).

        A pack takes appends until it reaches ``pack_size``; then the next pack is started.
        The bytes are written (not synced) when this returns.
        """
        placed: list[tuple[int, int]] = []
        run: list[bytes] = []
        self._active_end = _align_up(self._active_end)  # every run starts on a fresh page
        run_start = self._active_end
        for value in values:
            if self._active is None or self._active_end >= self.pack_size:
                self._write_run(run, run_start)
                run = []
                self._rotate()
                run_start = self._active_end
            assert self._active is not None
            placed.append((self._active, self._active_end))
            run.append(value)
            self._active_end += len(value)
        self._write_run(run, run_start)
        return placed

    def _write_run(self, run: list[bytes], offset: int) -> None:
        if not run:
            return
        fd = self._writer()
        try:
            if self._active_direct:
                try:
                    self._write_direct(fd, run, offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # The device wants a coarser alignment than ours: write buffered from now on.
                    logger.info(
                        "direct writes to %s refused (%s): using buffered writes", self.directory, exc
                    )
                    self.direct = False
                    self._close_active()
                    self._write_buffered(self._writer(), run, offset)
            else:
                self._write_buffered(fd, run, offset)
        except OSError as exc:
            raise PackError(f"cannot write to {self.path(self._active or 0)}: {exc}") from exc
        assert self._active is not None
        self._dirty.add(self._active)

    def _write_direct(self, fd: int, run: list[bytes], offset: int) -> None:
        total = sum(len(v) for v in run)
        padded = _align_up(total)
        if self._buffer is None or len(self._buffer) < padded:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = mmap.mmap(-1, _align_up(max(padded, 4 * 1024 * 1024)))
        buffer = self._buffer
        pos = 0
        for value in run:
            buffer[pos : pos + len(value)] = value
            pos += len(value)
        buffer[pos:padded] = bytes(padded - pos)  # the page's tail: zeros, never stale bytes
        with memoryview(buffer) as view:
            written = 0
            while written < padded:
                # A short write (a signal) ends on a sector boundary of the device; resume there.
                written += os.pwrite(fd, view[written:padded], offset + written)
        assert self._active is not None
        os.posix_fadvise(self._reader(self._active), offset, padded, os.POSIX_FADV_WILLNEED)

    @staticmethod
    def _write_buffered(fd: int, run: list[bytes], offset: int) -> None:
        total = sum(len(v) for v in run)
        written = 0
        while written < total:
            # pwritev may write less than asked (signals, huge runs): resume where it stopped.
            buffers = _tail(run, written)[:_IOV_MAX]
            written += os.pwritev(fd, buffers, offset + written)

    def _rotate(self) -> None:
        pack = 1 if self._active is None else self._active + 1
        self.start(pack, 0)

    def _writer(self) -> int:
        if self._active_fd is None:
            assert self._active is not None
            path = self.path(self._active)
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
            self._active_direct = False
            if self.direct:
                try:
                    self._active_fd = os.open(path, flags | os.O_DIRECT, 0o644)
                    self._active_direct = True
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise PackError(f"cannot open {path}: {exc}") from exc
                    logger.info("%s does not take direct writes: using buffered writes", self.directory)
                    self.direct = False
            if self._active_fd is None:
                try:
                    self._active_fd = os.open(path, flags, 0o644)
                except OSError as exc:
                    raise PackError(f"cannot open {path}: {exc}") from exc
        return self._active_fd

    def _close_active(self) -> None:
        if self._active_fd is not None:
            if self._active in self._dirty:
                os.fdatasync(self._active_fd)
                self._dirty.discard(self._active)
            os.close(self._active_fd)
            self._active_fd = None

    @property
    def active(self) -> int | None:
        return self._active

    @property
    def active_end(self) -> int:
        return self._active_end

    def sync(self) -> None:
        """Make every appended byte durable (before a synced LevelDB write points at them)."""
        for pack in sorted(self._dirty):
            if pack == self._active and self._active_fd is not None:
                os.fdatasync(self._active_fd)
            else:
                fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        self._dirty.clear()

    # --- reads -------------------------------------------------------------------------------

    def read(self, pointer: Pointer) -> bytes:
        """The bytes ``pointer`` names, checked against its CRC; PackError if missing or damaged."""
        try:
            fd = self._reader(pointer.pack)
            data = os.pread(fd, pointer.length, pointer.offset)
        except OSError as exc:
            raise PackError(f"cannot read pack {pointer.pack}: {exc}") from exc
        if len(data) != pointer.length:
            raise PackError(
                f"pack {pointer.pack} ends before {pointer.offset + pointer.length} "
                f"({len(data)} of {pointer.length} bytes at {pointer.offset})"
            )
        if checksum(data) != pointer.crc:
            raise PackError(
                f"CRC mismatch for {pointer.length} bytes at {pointer.offset} of pack {pointer.pack}"
            )
        return data

    def open_reader(self, pack: int) -> int:
        """A new read-only descriptor of ``pack``, owned by the caller (it outlives :meth:`close`)."""
        try:
            return os.dup(self._reader(pack))
        except OSError as exc:
            raise PackError(f"cannot open pack {pack}: {exc}") from exc

    def _reader(self, pack: int) -> int:
        fd = self._read_fds.get(pack)
        if fd is not None:
            return fd
        with self._fd_lock:
            fd = self._read_fds.get(pack)
            if fd is None:
                fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
                self._read_fds[pack] = fd
            return fd

    # --- freeing space -----------------------------------------------------------------------

    def punch(self, pointer: Pointer) -> None:
        """Give a dead block's disk space back (the whole pages inside it); best effort."""
        if not self._punch_supported or _fallocate is None:
            return
        start = -(-pointer.offset // _PAGE) * _PAGE
        stop = (pointer.offset + pointer.length) // _PAGE * _PAGE
        if stop <= start:
            return
        try:
            fd = os.open(self.path(pointer.pack), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, stop - start) != 0:
                err = ctypes.get_errno()
                if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                    self._punch_supported = False
                    logger.info("this filesystem cannot punch holes: pack space returns when a pack empties")
                else:
                    logger.warning("punching a hole in pack %d: %s", pointer.pack, os.strerror(err))
        finally:
            os.close(fd)

    def close(self) -> None:
        self._close_active()
        self.sync()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        with self._fd_lock:
            for fd in [*self._read_fds.values(), *self._retired_fds]:
                os.close(fd)
            self._read_fds.clear()
            self._retired_fds.clear()


def _align_up(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _tail(run: list[bytes], skip: int) -> list[bytes | memoryview]:
    """The buffers of ``run`` after its first ``skip`` bytes."""
    if skip == 0:
        return list(run)
    out: list[bytes | memoryview] = []
    for value in run:
        if skip >= len(value):
            skip -= len(value)
            continue
        out.append(memoryview(value)[skip:] if skip else value)
        skip = 0
    return out
