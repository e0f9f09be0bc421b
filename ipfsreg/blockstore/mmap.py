"""Keep LevelDB from memory-mapping its table files.

LevelDB's POSIX environment maps up to 1000 table files into the address space and reads
blocks straight from those mappings. Every page it touches — each block served, every page
that a compaction reads — then counts towards the process's resident set: a registry that has
pushed and served a few hundred MiB shows a few hundred MiB of RSS that is really page cache,
and memory limits (cgroups, ``docker run -m``) and monitoring see it as ours.

With the mapping budget at zero, LevelDB reads tables with ``pread`` into short-lived buffers
instead (the OS still caches the files; nothing is counted against us). LevelDB has no option
for this and plyvel exposes no environment, so this module sets the budget itself: the default
environment (``leveldb::Env::Default()``, exported by the library plyvel loads) holds two
counters side by side, the mapping budget (1000 on 64-bit builds) and the read-only file
descriptor budget (``RLIMIT_NOFILE / 5``). Before any database is opened in this process the
pair is located by those two exact values — exactly one match, or nothing is touched — and
the mapping budget is set to zero. If the library differs (other layout, other version), the
mapping stays as LevelDB ships it and :func:`disable_table_mmap` says so by returning False.
"""

from __future__ import annotations

import ctypes
import logging
import resource
import sys
import threading
from pathlib import Path

import plyvel

log = logging.getLogger(__name__)

_MMAP_LIMIT_64BIT = 1000  # leveldb/util/env_posix.cc: kDefaultMmapLimit
_SCAN_BYTES = 512  # PosixEnv is about 300 bytes; the counters sit near its end

_lock = threading.Lock()
_result: bool | None = None


def _leveldb_library() -> ctypes.CDLL | None:
    """The libleveldb that plyvel itself is linked against (already loaded: dlopen reuses it)."""
    package = Path(plyvel.__file__).resolve().parent
    candidates = sorted((package.parent / "plyvel.libs").glob("libleveldb*.so*"))
    names = [str(path) for path in candidates] or ["libleveldb.so.1d", "libleveldb.so.1"]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _readable(address: int, length: int) -> bool:
    """Whether ``[address, address + length)`` lies in one readable mapping of this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    for line in maps.splitlines():
        span, perms = line.split()[:2]
        start, end = (int(part, 16) for part in span.split("-"))
        if start <= address and address + length <= end:
            return perms.startswith("rw")
    return False


def _fd_budget() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 2**31 - 1
    return int(soft // 5)


def _patch() -> bool:
    if sys.platform != "linux" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    lib = _leveldb_library()
    if lib is None:
        return False
    try:
        default_env = lib._ZN7leveldb3Env7DefaultEv
    except AttributeError:
        return False
    default_env.restype = ctypes.c_void_p
    default_env.argtypes = []
    address = default_env()
    if not address or not _readable(address, _SCAN_BYTES):
        return False
    words = (ctypes.c_int32 * (_SCAN_BYTES // 4)).from_address(address)
    fd_budget = _fd_budget()
    matches = [
        index
        for index in range(len(words) - 1)
        if words[index] == _MMAP_LIMIT_64BIT and words[index + 1] == fd_budget
    ]
    if len(matches) != 1:
        return False
    words[matches[0]] = 0
    return True


def disable_table_mmap() -> bool:
    """Make LevelDB read table files with ``pread`` from now on; True when that is in effect.

    Call before the first database is opened in the process (``Datastore.open`` does). Later
    calls return the first call's answer without looking again.
    """
    global _result
    with _lock:
        if _result is None:
            try:
                _result = _patch()
            except (OSError, ValueError) as exc:  # pragma: no cover - defensive: odd libraries
                log.debug("leaving LevelDB table mmap on: %s", exc)
                _result = False
            if not _result:
                log.info("LevelDB reads table files through mmap (budget not found to change)")
        return _result
