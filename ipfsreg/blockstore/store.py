"""The data dir's one LevelDB database: content-addressed blocks plus the keyspaces of higher layers.

Blocks are keyed by multihash (not CID), so CIDv0 and CIDv1 of the same bytes share one entry,
as in Kubo's blockstore. Other layers (registry tags, indexes, upload sessions) get named
keyspaces in the same database so that a blob's blocks and the index entry that makes it
visible can be committed in one atomic WriteBatch.

Large blocks (``PACK_MIN_BLOCK`` bytes and up, i.e. UnixFS leaves) keep their bytes in append-only
pack files next to the database (see :mod:`ipfsreg.blockstore.packs`); LevelDB holds their
pointer, written in the same atomic batch as everything else, so compactions never copy block
data. Small blocks (interior nodes, manifests) stay inline in LevelDB.

Integrity: every block's hash is checked on put. Every read is checked against a checksum:
LevelDB's own CRC32C (``verify_checksums``) for inline blocks and table files, the pointer's
CRC-32C for packed blocks; with ``verify_reads=True`` every read is also re-hashed against its
CID. Either failure raises :class:`BlockCorrupted`, never returns the bad bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import heapq
import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import plyvel

from ipfsreg.blockstore.mmap import disable_table_mmap
from ipfsreg.blockstore.packs import (
    DEFAULT_PACK_SIZE,
    PACKS_DIRNAME,
    PackError,
    PackFiles,
    PackMeta,
    Pointer,
    checksum,
)
from ipfsreg.cid import CID, RAW, CIDError, multihash_matches

logger = logging.getLogger(__name__)

_BLOCK: Final = b"b/"  # multihash -> the bytes of a small block
_PACKED: Final = b"p/"  # multihash -> Pointer to a large block's bytes in a pack file
_PACK_META: Final = b"s/pack/"  # pack id (>I) -> PackMeta
_PACK_ID: Final = struct.Struct(">I")
_KEYSPACE: Final = b"k/"
_STATS_KEY: Final = b"s/blocks"
_STATS: Final = struct.Struct(">QQ")  # block count, total bytes
_FLUSH_KEY: Final = b"s/flush"

MAX_BLOCK_SIZE: Final = 4 * 1024 * 1024
PACK_MIN_BLOCK: Final = 32 * 1024  # blocks this big or bigger go to pack files
DB_DIRNAME: Final = "leveldb"
LOCK_FILENAME: Final = "repo.lock"


class BlockstoreError(Exception):
    """Base class of every error raised by the storage layer."""


class BlockNotFound(BlockstoreError, KeyError):
    def __init__(self, cid: CID) -> None:
        super().__init__(f"block {cid} not found")
        self.cid = cid

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidBlock(BlockstoreError):
    """Refused on put: the bytes do not hash to the CID, or the block is too large."""


class BlockCorrupted(BlockstoreError):
    """Stored data failed its checksum or hash check; the bytes are not returned."""


class DataDirLocked(BlockstoreError):
    """Another process holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None, command: str | None) -> None:
        who = f"process {pid}" if pid else "another process"
        if command:
            who += f" ({command})"
        super().__init__(f"data dir {data_dir} is in use by {who}; stop it or use its API")
        self.data_dir = data_dir
        self.pid = pid
        self.command = command


@dataclass(frozen=True)
class PackStats:
    files: int
    bytes: int  # committed bytes, dead ones included (punched holes use no disk space)
    live_bytes: int


def _block_key(cid: CID) -> bytes:
    return _BLOCK + cid.multihash


def _meta_key(pack: int) -> bytes:
    return _PACK_META + _PACK_ID.pack(pack)


def _pointer(mh: bytes, raw: bytes) -> Pointer:
    try:
        return Pointer.unpack(raw)
    except PackError as exc:
        raise BlockCorrupted(f"block {CID(1, RAW, mh)}: {exc}") from exc


class _DirLock:
    """An exclusive flock on ``<data_dir>/repo.lock`` that records the holder's pid and command."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILENAME
        self._fd: int | None = None
        self._data_dir = data_dir

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, command = self.holder()
            raise DataDirLocked(self._data_dir, pid, command) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def holder(self) -> tuple[int | None, str | None]:
        try:
            pid = int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None, None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        except OSError:
            command = None
        return pid, command or None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class Datastore:
    """A data dir's LevelDB: ``blocks`` plus named keyspaces, written atomically via ``batch()``."""

    def __init__(self, db: Any, lock: _DirLock | None, packs: PackFiles, *, verify_reads: bool) -> None:
        self._db = db
        self._lock = lock
        self.packs = packs
        self.verify_reads = verify_reads
        self.blocks = Blockstore(self)
        count, size = self._read_stats()
        self._block_count = count
        self._block_bytes = size
        self._pack_meta: dict[int, PackMeta] = {}
        # Garbage collection support: multihashes written while a collection runs (the write
        # barrier), and blocks that work in progress holds (leases), are never swept.
        self._write_trackers: list[set[bytes]] = []
        self._leases: dict[bytes, int] = {}
        # Commits may come from worker threads (LevelDB releases the GIL while writing); block
        # statistics and write tracking are settled under this lock.
        self._commit_lock = threading.RLock()
        self._recover_packs()

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        verify_reads: bool = False,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> Datastore:
        """Open (creating if needed) the database and pack files in ``data_dir``, taking its lock."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        # Table files read with pread, not mmap: served and compacted pages stay page cache
        # instead of counting as this process's resident memory (see blockstore/mmap.py).
        disable_table_mmap()
        lock = _DirLock(path)
        lock.acquire()
        try:
            db = plyvel.DB(
                str(path / DB_DIRNAME),
                create_if_missing=True,
                paranoid_checks=True,
                # Sized for a flat, modest RSS: blocks are large values, so the memtable fills
                # quickly anyway and a bigger block cache buys little over the OS page cache.
                write_buffer_size=16 * 1024 * 1024,
                max_file_size=32 * 1024 * 1024,
                lru_cache_size=8 * 1024 * 1024,
                # Layers are mostly gzip already: compressing would cost CPU on every write and
                # compaction for nothing (LevelDB keeps a block uncompressed unless it saves 12.5%).
                compression=None,
                bloom_filter_bits=10,
            )
        except plyvel.CorruptionError as exc:
            lock.release()
            raise BlockCorrupted(f"LevelDB in {path} is corrupted: {exc}") from exc
        except plyvel.IOError as exc:
            lock.release()
            raise BlockstoreError(f"cannot open LevelDB in {path}: {exc}") from exc
        except BaseException:
            lock.release()
            raise
        try:
            packs = PackFiles(path / PACKS_DIRNAME, pack_size=pack_size)
            return cls(db, lock, packs, verify_reads=verify_reads)
        except BaseException:
            db.close()
            lock.release()
            raise

    def _recover_packs(self) -> None:
        """Bring the pack files in line with the committed pack records after any kind of stop.

        A pack longer than its record ends in bytes whose batch never committed: cut them off.
        A pack shorter than its record lost bytes that were never synced (a system crash): the
        pointers into the lost range are dropped, as if those unsynced writes had not happened.
        A pack file without a record was never committed to; an empty pack is removed.
        """
        metas = {
            _PACK_ID.unpack(key[len(_PACK_META) :])[0]: PackMeta.unpack(value)
            for key, value in self._db.iterator(prefix=_PACK_META, verify_checksums=True)
        }
        on_disk = self.packs.existing()
        for pack, meta in sorted(metas.items()):
            size = on_disk.get(pack, 0)
            if size > meta.end:
                self.packs.truncate(pack, meta.end)
            elif size < meta.end:
                self._drop_lost(pack, size, metas)
        for pack in on_disk.keys() - metas.keys():
            logger.info("removing pack %d: no committed block points into it", pack)
            self.packs.remove(pack)
        newest = max(metas, default=None)
        for pack, meta in list(metas.items()):
            if meta.live_blocks == 0 and pack != newest:
                self._db.delete(_meta_key(pack), sync=True)
                self.packs.remove(pack)
                del metas[pack]
        self._pack_meta = metas
        if newest is not None:
            self.packs.start(newest, metas[newest].end)

    def _drop_lost(self, pack: int, size: int, metas: dict[int, PackMeta]) -> None:
        meta = metas[pack]
        recorded = meta.end
        lost = 0
        wb = self._db.write_batch(sync=True)
        for key, raw in self._db.iterator(prefix=_PACKED, verify_checksums=True):
            pointer = Pointer.unpack(raw)
            if pointer.pack == pack and pointer.offset + pointer.length > size:
                wb.delete(key)
                lost += 1
                meta.live_blocks -= 1
                meta.live_bytes -= pointer.length
                self._block_count -= 1
                self._block_bytes -= pointer.length
        meta.end = size
        wb.put(_meta_key(pack), meta.pack_bytes())
        wb.put(_STATS_KEY, _STATS.pack(self._block_count, self._block_bytes))
        wb.write()
        logger.warning(
            "pack %d is %d bytes, its record says %d: %d block(s) written but never synced before "
            "a system crash are gone",
            pack,
            size,
            recorded,
            lost,
        )

    def close(self) -> None:
        if self._db is not None and not self._db.closed:
            with self._commit_lock:
                self.packs.close()
            self._db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def closed(self) -> bool:
        return bool(self._db.closed)

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw access used by Blockstore, Keyspace and WriteBatch ---------------------------

    def _get(self, key: bytes, *, fill_cache: bool = True) -> bytes | None:
        try:
            value: bytes | None = self._db.get(key, verify_checksums=True, fill_cache=fill_cache)
        except plyvel.CorruptionError as exc:
            raise BlockCorrupted(f"LevelDB checksum failure reading {key!r}: {exc}") from exc
        return value

    def _get_block(self, cid: CID) -> bytes | None:
        """A block's bytes wherever they live (a pack or inline); checked against their checksum."""
        mh = cid.multihash
        raw = self._get(_PACKED + mh)
        if raw is None:
            return self._get(_BLOCK + mh, fill_cache=False)
        for attempt in (1, 2):
            try:
                return self.packs.read(Pointer.unpack(raw))
            except PackError as exc:
                # Deleted (its space punched out) or re-stored elsewhere while we read?
                again = self._get(_PACKED + mh)
                if again is None:
                    return self._get(_BLOCK + mh, fill_cache=False)
                if again != raw and attempt == 1:
                    raw = again
                    continue
                raise BlockCorrupted(f"block {cid} is damaged in its pack file: {exc}") from exc
        raise AssertionError("unreachable")

    def _block_size(self, mh: bytes) -> int | None:
        raw = self._get(_PACKED + mh)
        if raw is not None:
            return _pointer(mh, raw).length
        data = self._get(_BLOCK + mh)
        return None if data is None else len(data)

    def _read_stats(self) -> tuple[int, int]:
        raw = self._get(_STATS_KEY)
        if raw is None:
            return 0, 0
        count, size = _STATS.unpack(raw)
        return int(count), int(size)

    # --- garbage collection support --------------------------------------------------------

    @contextlib.contextmanager
    def track_writes(self) -> Iterator[set[bytes]]:
        """Collect the multihash of every block written while the context is open."""
        written: set[bytes] = set()
        with self._commit_lock:
            self._write_trackers.append(written)
        try:
            yield written
        finally:
            with self._commit_lock:
                self._write_trackers.remove(written)

    @contextlib.contextmanager
    def lease(self, cids: Iterable[CID] = ()) -> Iterator[Lease]:
        """Hold blocks (the CIDs given, plus any added to the lease) against garbage collection."""
        lease = Lease(self)
        for cid in cids:
            lease.add(cid)
        try:
            yield lease
        finally:
            lease.release()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No batch commits, from any thread, while the context is open (its own thread may commit)."""
        with self._commit_lock:
            yield

    def leased(self) -> set[bytes]:
        """Multihashes currently held by leases."""
        return set(self._leases)

    def keyspace(self, name: str) -> Keyspace:
        if "/" in name or not name:
            raise ValueError(f"invalid keyspace name {name!r}")
        return Keyspace(self, _KEYSPACE + name.encode() + b"/")

    def batch(self, *, sync: bool = False) -> WriteBatch:
        """An atomic batch. ``sync=True`` makes it (and everything written before it) durable."""
        return WriteBatch(self, sync=sync)

    def flush(self) -> None:
        """Make every write so far durable (LevelDB's log is ordered, so one synced write suffices)."""
        with self._commit_lock:
            self.packs.sync()
            self._db.put(_FLUSH_KEY, b"", sync=True)

    def compact(self) -> None:
        self._db.compact_range()

    def pack_stats(self) -> PackStats:
        """Pack files in use, their committed bytes, and the bytes of live blocks in them."""
        metas = list(self._pack_meta.values())  # one C-level copy: safe against a committing thread
        return PackStats(
            files=len(metas),
            bytes=sum(m.end for m in metas),
            live_bytes=sum(m.live_bytes for m in metas),
        )

    @property
    def block_count(self) -> int:
        return self._block_count

    @property
    def block_bytes(self) -> int:
        return self._block_bytes


class Lease:
    """Blocks held against garbage collection until released (see :meth:`Datastore.lease`)."""

    def __init__(self, store: Datastore) -> None:
        self._store = store
        self._held: set[bytes] = set()

    def add(self, cid: CID) -> None:
        mh = cid.multihash
        if mh not in self._held:
            self._held.add(mh)
            self._store._leases[mh] = self._store._leases.get(mh, 0) + 1

    def release(self) -> None:
        leases = self._store._leases
        for mh in self._held:
            remaining = leases[mh] - 1
            if remaining:
                leases[mh] = remaining
            else:
                del leases[mh]
        self._held.clear()


class Blockstore:
    """Content-addressed blocks. Single operations are atomic; use ``Datastore.batch`` for groups."""

    def __init__(self, store: Datastore) -> None:
        self._store = store

    def put(self, cid: CID, data: bytes, *, verify: bool = True) -> None:
        with self._store.batch() as batch:
            batch.put_block(cid, data, verify=verify)

    def put_many(
        self, blocks: Iterable[tuple[CID, bytes]], *, sync: bool = False, verify: bool = True
    ) -> None:
        """Store several blocks in one atomic batch (``verify=False``: the caller has just hashed them)."""
        with self._store.batch(sync=sync) as batch:
            for cid, data in blocks:
                batch.put_block(cid, data, verify=verify)

    def get(self, cid: CID) -> bytes:
        data = self.get_or_none(cid)
        if data is None:
            raise BlockNotFound(cid)
        return data

    def get_or_none(self, cid: CID) -> bytes | None:
        data = self._store._get_block(cid)
        if data is not None and self._store.verify_reads and not cid.verify(data):
            raise BlockCorrupted(f"block {cid} does not match its hash")
        return data

    def has(self, cid: CID) -> bool:
        return self._store._block_size(cid.multihash) is not None

    def locate(self, cid: CID) -> Pointer | None:
        """Where a block's bytes lie in a pack file; None when it is stored inline (a small block)
        or not at all. The bytes stay there while the block is stored (packs are append-only; a
        deleted block's pages are punched out, so hold the block, e.g. with a lease, while using them)."""
        raw = self._store._get(_PACKED + cid.multihash)
        return None if raw is None else _pointer(cid.multihash, raw)

    def read_located(self, cid: CID, pointer: Pointer) -> bytes | None:
        """The bytes of block ``cid`` at ``pointer`` (from :meth:`locate`), checked against the
        pointer's CRC (and re-hashed with ``verify_reads``); None when the block is no longer stored
        there; :class:`BlockCorrupted` when they are damaged."""
        try:
            data = self._store.packs.read(pointer)
        except PackError as exc:
            if self.locate(cid) != pointer:
                return None  # deleted (its space punched out) while we read
            raise BlockCorrupted(f"block {cid} is damaged in its pack file: {exc}") from exc
        if self._store.verify_reads and not cid.verify(data):
            raise BlockCorrupted(f"block {cid} does not match its hash")
        return data

    def open_pack(self, pack: int) -> int:
        """A new read-only file descriptor of pack file ``pack`` (the caller closes it), for reading
        located blocks outside this object (e.g. ``os.sendfile``); BlockstoreError if it is gone."""
        try:
            return self._store.packs.open_reader(pack)
        except PackError as exc:
            raise BlockstoreError(str(exc)) from exc

    def size(self, cid: CID) -> int | None:
        return self._store._block_size(cid.multihash)

    def delete(self, cid: CID) -> bool:
        """Delete a block; return whether it was present."""
        with self._store.batch() as batch:
            present = self.has(cid)
            batch.delete_block(cid)
        return present

    def iter_multihashes(self) -> Iterator[bytes]:
        """Every stored block's multihash, in order."""
        db = self._store._db
        inline = (key[len(_BLOCK) :] for key in db.iterator(prefix=_BLOCK, include_value=False))
        packed = (key[len(_PACKED) :] for key in db.iterator(prefix=_PACKED, include_value=False))
        yield from heapq.merge(inline, packed)

    def iter_cids(self) -> Iterator[CID]:
        """Every stored block as a CIDv1 raw (the codec is not stored, as in Kubo)."""
        for mh in self.iter_multihashes():
            yield CID(1, RAW, mh)

    def verify_all(self) -> Iterator[bytes]:
        """Re-hash every block; yield the multihash of each one that fails."""
        db, packs = self._store._db, self._store.packs
        for prefix in (_BLOCK, _PACKED):
            for key, value in db.iterator(prefix=prefix, verify_checksums=True):
                mh = key[len(prefix) :]
                try:
                    data = value if prefix == _BLOCK else packs.read(Pointer.unpack(value))
                    ok = multihash_matches(mh, data)
                except (PackError, CIDError):
                    ok = False
                if not ok:
                    yield mh

    @property
    def count(self) -> int:
        return self._store.block_count

    @property
    def total_size(self) -> int:
        return self._store.block_bytes


class Keyspace:
    """A named key range of the datastore for a higher layer's own records."""

    def __init__(self, store: Datastore, prefix: bytes) -> None:
        self._store = store
        self.prefix = prefix

    def get(self, key: bytes) -> bytes | None:
        return self._store._get(self.prefix + key)

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        with self._store.batch(sync=sync) as batch:
            batch.put(self, key, value)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        with self._store.batch(sync=sync) as batch:
            batch.delete(self, key)

    def items(
        self, prefix: bytes = b"", *, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs whose key starts with ``prefix``, in order; ``start`` is exclusive."""
        full = self.prefix + prefix
        first = full if start is None else max(full, self.prefix + start)
        kwargs: dict[str, Any] = {
            "start": first,
            "include_start": start is None or (first == full and self.prefix + start < full),
            "stop": _prefix_end(full),
            "reverse": reverse,
            "verify_checksums": True,
        }
        n = len(self.prefix)
        try:
            for key, value in self._store._db.iterator(**kwargs):
                yield key[n:], value
        except plyvel.CorruptionError as exc:
            raise BlockCorrupted(f"LevelDB checksum failure in keyspace {self.prefix!r}: {exc}") from exc

    def keys(self, prefix: bytes = b"") -> Iterator[bytes]:
        for key, _ in self.items(prefix):
            yield key


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


class WriteBatch:
    """An atomic group of block and keyspace writes; committed on ``commit()`` or clean ``with`` exit.

    Block statistics are settled at commit time under the datastore's commit lock, so concurrent
    batches (from tasks or threads) that store the same block count it once. A batch itself is
    used by one task or thread at a time.
    """

    def __init__(self, store: Datastore, *, sync: bool) -> None:
        self._store = store
        self._sync = sync
        self._ops: dict[bytes, bytes | None] = {}
        self._done = False

    def __enter__(self) -> WriteBatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def __len__(self) -> int:
        return len(self._ops)

    def put_block(self, cid: CID, data: bytes, *, verify: bool = True) -> None:
        if len(data) > MAX_BLOCK_SIZE:
            raise InvalidBlock(f"block {cid} is {len(data)} bytes, over the {MAX_BLOCK_SIZE} byte limit")
        if verify:
            try:
                ok = cid.verify(data)
            except CIDError as exc:
                raise InvalidBlock(f"cannot verify block {cid}: {exc}") from exc
            if not ok:
                raise InvalidBlock(f"data does not match CID {cid}")
        self._ops[_block_key(cid)] = bytes(data)

    def delete_block(self, cid: CID) -> None:
        self._ops[_block_key(cid)] = None

    def put(self, keyspace: Keyspace, key: bytes, value: bytes) -> None:
        self._ops[keyspace.prefix + key] = value

    def delete(self, keyspace: Keyspace, key: bytes) -> None:
        self._ops[keyspace.prefix + key] = None

    def discard(self) -> None:
        self._ops.clear()
        self._done = True

    def commit(self) -> None:
        if self._done:
            raise BlockstoreError("batch already committed or discarded")
        self._done = True
        if not self._ops:
            return
        store = self._store
        with store._commit_lock:
            self._write(store)
        self._ops.clear()

    def _write(self, store: Datastore) -> None:
        db = store._db
        count, size = store.block_count, store.block_bytes
        stats_changed = False
        metas: dict[int, PackMeta] = {}  # updated copies, applied once the batch is written

        def meta(pack: int) -> PackMeta:
            if pack not in metas:
                old = store._pack_meta.get(pack)
                metas[pack] = PackMeta() if old is None else dataclasses.replace(old)
            return metas[pack]

        # A deleted pointer's bytes are punched out right after the write, so the delete must be
        # durable first: a pointer that came back after a crash would point at a hole.
        deletes_blocks = any(v is None and k.startswith(_BLOCK) for k, v in self._ops.items())
        wb = db.write_batch(sync=self._sync or deletes_blocks)
        to_pack: list[tuple[bytes, bytes]] = []
        freed: list[Pointer] = []
        for key, value in self._ops.items():
            if key.startswith(_BLOCK):
                mh = key[len(_BLOCK) :]
                old_inline = db.get(key)
                old_pointer = None if old_inline is not None else db.get(_PACKED + mh)
                if value is None:
                    if old_inline is not None:
                        count, size, stats_changed = count - 1, size - len(old_inline), True
                        wb.delete(key)
                    elif old_pointer is not None:
                        pointer = _pointer(mh, old_pointer)
                        count, size, stats_changed = count - 1, size - pointer.length, True
                        wb.delete(_PACKED + mh)
                        m = meta(pointer.pack)
                        m.live_blocks -= 1
                        m.live_bytes -= pointer.length
                        freed.append(pointer)
                    continue
                if old_inline is not None or old_pointer is not None:
                    continue  # already stored: content addressing makes the rewrite a no-op
                count, size, stats_changed = count + 1, size + len(value), True
                if len(value) >= PACK_MIN_BLOCK:
                    to_pack.append((mh, value))
                else:
                    wb.put(key, value)
            elif value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        packs = store.packs
        if to_pack:
            crcs = [checksum(value) for _, value in to_pack]
            try:
                placed = packs.append([value for _, value in to_pack])
            except PackError as exc:
                raise BlockstoreError(str(exc)) from exc
            for (mh, value), (pack, offset), crc in zip(to_pack, placed, crcs, strict=True):
                wb.put(_PACKED + mh, Pointer(pack, offset, len(value), crc).pack_bytes())
                m = meta(pack)
                m.live_blocks += 1
                m.live_bytes += len(value)
                m.end = max(m.end, offset + len(value))
        emptied = [pack for pack, m in metas.items() if m.live_blocks == 0 and pack != packs.active]
        for pack, m in metas.items():
            if pack in emptied:
                wb.delete(_meta_key(pack))
            else:
                wb.put(_meta_key(pack), m.pack_bytes())
        if stats_changed:
            wb.put(_STATS_KEY, _STATS.pack(count, size))
        if self._sync:
            packs.sync()  # the pointers this write makes durable must not outlive their bytes
        wb.write()
        for pack in emptied:
            store._pack_meta.pop(pack, None)
            metas.pop(pack)
            packs.remove(pack)
        store._pack_meta.update(metas)
        for pointer in freed:
            if pointer.pack not in emptied:
                packs.punch(pointer)
        if store._write_trackers:
            # Re-puts of blocks already stored count too: their writer means to keep them.
            puts = [k[len(_BLOCK) :] for k, v in self._ops.items() if k.startswith(_BLOCK) and v is not None]
            for tracker in store._write_trackers:
                tracker.update(puts)
        store._block_count, store._block_bytes = count, size
