"""A push-style streaming importer that builds Kubo's balanced UnixFS file DAG with identical CIDs.

Mirrors boxo's ``importer/balanced`` with ``helpers.DagBuilderHelper`` and the fixed-size chunker:
leaves are ``chunk_size`` slices of the stream (the last one shorter); a dag-pb leaf is a UnixFS
``File`` node holding the bytes (Kubo's historical TFile, not TRaw), a raw leaf is the bytes under a
CIDv1 ``raw`` CID. Leaves are grouped ``max_links`` at a time under UnixFS ``File`` nodes carrying
``filesize`` and unpacked ``blocksizes``, level after level, until one root remains; a one-chunk file's
root is its leaf, an empty file is one empty leaf. Each link has an empty Name and the child's
cumulative size (block length plus its children's Tsize) as Tsize.

Push-style means the caller hands bytes in as they arrive and gets back the blocks that became
complete, children before parents. Only the partial chunk and one pending link list per tree level
are held, so memory stays flat in the file size, and that state can be snapshotted and restored to
resume an upload after a restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from ipfsreg.cid import CID, DAG_PB, RAW, CIDError
from ipfsreg.unixfs._pb import read_uvarint, uvarint
from ipfsreg.unixfs.errors import InvalidNode, UnixFSError

MAX_CHUNK_SIZE: Final = 1024 * 1024
MAX_LINKS_LIMIT: Final = 16384
_SHA256_PREFIX: Final = b"\x12\x20"
_SNAPSHOT_MAGIC: Final = b"ipfsreg.FileImporter/1\n"
# The block of an empty file as a dag-pb leaf: PBNode{Data: UnixFS{Type: File, filesize: 0}}.
EMPTY_FILE_LEAF: Final = b"\x0a\x04\x08\x02\x18\x00"


HAMT_ESTIMATIONS: Final = ("links", "block")


@dataclass(frozen=True)
class ImportOptions:
    """How files and directories are cut and encoded. The defaults are Kubo's ``ipfs add`` defaults,
    the IPIP-499 ``unixfs-v0-2015`` profile (see ``ipfsreg.unixfs.profiles`` for the named profiles).

    The ``hamt_*`` fields only matter for directories (``ipfsreg.unixfs.directory``): a directory
    becomes a HAMT once its estimated size exceeds ``hamt_threshold`` (0: never), estimated as
    ``links`` (the sum of entry name and CID bytes, Kubo's legacy estimate) or ``block`` (the
    serialized dag-pb node). ``hamt_shard_at_threshold`` reproduces Kubo before 0.40, whose boxo also
    sharded a directory whose estimate equals the threshold (``>=``; IPIP-499 and Kubo 0.40: ``>``).
    """

    chunk_size: int = 262144
    cid_version: int = 0
    raw_leaves: bool | None = None  # None: raw leaves exactly when cid_version == 1, as in Kubo
    max_links: int = 174
    hamt_threshold: int = 256 * 1024
    hamt_estimation: str = "links"
    hamt_shard_at_threshold: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}, got {self.chunk_size}")
        if self.cid_version not in (0, 1):
            raise ValueError(f"cid_version must be 0 or 1, got {self.cid_version}")
        if not 2 <= self.max_links <= MAX_LINKS_LIMIT:
            raise ValueError(f"max_links must be 2..{MAX_LINKS_LIMIT}, got {self.max_links}")
        if self.hamt_threshold < 0:
            raise ValueError(f"hamt_threshold must be >= 0, got {self.hamt_threshold}")
        if self.hamt_estimation not in HAMT_ESTIMATIONS:
            raise ValueError(
                f"hamt_estimation must be one of {', '.join(HAMT_ESTIMATIONS)}, got {self.hamt_estimation!r}"
            )

    @property
    def use_raw_leaves(self) -> bool:
        return self.cid_version == 1 if self.raw_leaves is None else self.raw_leaves


@dataclass(frozen=True, slots=True)
class Block:
    cid: CID
    data: bytes


@dataclass(frozen=True, slots=True)
class ImportResult:
    cid: CID
    size: int  # file bytes
    dag_size: int  # cumulative size of the DAG: the Tsize a parent link to the root would carry


# A finished child as its parent links it: (cid, cid bytes, cumulative dag size, file bytes).
_Link = tuple[CID, bytes, int, int]


def dag_pb_cid(block: bytes, cid_version: int) -> CID:
    mh = _SHA256_PREFIX + hashlib.sha256(block).digest()
    return CID(cid_version, DAG_PB, mh)


def file_leaf_block(chunk: bytes | bytearray | memoryview) -> bytes:
    """The dag-pb leaf Kubo writes for a chunk: PBNode{Data: UnixFS{Type: File, Data, filesize}}."""
    n = len(chunk)
    if n == 0:
        return EMPTY_FILE_LEAF
    size = uvarint(n)
    inner_len = 1 + 1 + 1 + len(size) + n + 1 + len(size)
    head = b"\x0a" + uvarint(inner_len) + b"\x08\x02\x12" + size
    return b"".join((head, chunk, b"\x18", size))


def file_node_block(links: list[_Link], filesize: int) -> bytes:
    """An interior file node: links (empty Name, Tsize), then UnixFS{File, filesize, blocksizes}."""
    parts: list[bytes] = []
    for _cid, cid_bytes, tsize, _size in links:
        body = b"\x0a" + uvarint(len(cid_bytes)) + cid_bytes + b"\x12\x00\x18" + uvarint(tsize)
        parts.append(b"\x12" + uvarint(len(body)) + body)
    fs = [b"\x08\x02\x18", uvarint(filesize)]
    for link in links:
        fs += [b"\x20", uvarint(link[3])]
    unixfs = b"".join(fs)
    parts.append(b"\x0a" + uvarint(len(unixfs)) + unixfs)
    return b"".join(parts)


class FileImporter:
    """Feed bytes with :meth:`write`, collect blocks, call :meth:`finish` for the root."""

    def __init__(self, options: ImportOptions = ImportOptions()) -> None:
        self.options = options
        self._chunk = options.chunk_size
        self._max_links = options.max_links
        self._raw = options.use_raw_leaves
        self._version = options.cid_version
        # The partial chunk lives in _buf[:_fill]. The chunk-sized buffer is allocated when bytes
        # arrive, not up front (an upload session that is opened and left costs no chunk of
        # memory), and :meth:`compact` gives it back between writes.
        self._buf = bytearray()
        self._fill = 0
        self._levels: list[list[_Link]] = [[]]
        self._written = 0
        self._finished = False

    @property
    def bytes_written(self) -> int:
        return self._written

    # --- streaming ------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> list[Block]:
        """Add bytes; return the blocks completed by them (leaves, then parents as they fill)."""
        if self._finished:
            raise UnixFSError("write after finish")
        out: list[Block] = []
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        n = len(view)
        if n == 0:
            return out
        self._written += n
        size = self._chunk
        pos = 0
        if self._fill:
            # Complete the partial chunk in the fixed buffer (no reallocation, one copy in).
            take = min(size - self._fill, n)
            self._chunk_buffer()[self._fill : self._fill + take] = view[:take]
            self._fill += take
            pos = take
            if self._fill < size:
                return out
            self._leaf(self._buf, out)
            self._fill = 0
        while n - pos >= size:
            self._leaf(view[pos : pos + size], out)
            pos += size
        if pos < n:
            rest = n - pos
            self._chunk_buffer()[:rest] = view[pos:]
            self._fill = rest
        return out

    def _chunk_buffer(self) -> bytearray:
        """The chunk-sized buffer, allocated (keeping the partial chunk) on first use."""
        if len(self._buf) < self._chunk:
            grown = bytearray(self._chunk)
            grown[: self._fill] = self._buf[: self._fill]
            self._buf = grown
        return self._buf

    def compact(self) -> None:
        """Give back the chunk buffer's unused part until the next :meth:`write` (e.g. while an
        upload session waits for its next chunk): only the partial chunk's bytes stay held."""
        if len(self._buf) > self._fill:
            self._buf = bytearray(self._buf[: self._fill])

    def finish(self) -> tuple[list[Block], ImportResult]:
        """Flush the partial chunk and every pending level; the root block is the last one emitted."""
        if self._finished:
            raise UnixFSError("finish called twice")
        self._finished = True
        out: list[Block] = []
        if self._fill:
            self._leaf(memoryview(self._buf)[: self._fill], out)
            self._fill = 0
        if self._written == 0:
            self._leaf(b"", out)
        levels = self._levels
        i = 0
        while True:
            level = levels[i]
            higher = any(levels[j] for j in range(i + 1, len(levels)))
            if not higher and len(level) == 1:
                root = level[0]
                break
            if level:
                link = self._node(level, out)
                levels[i] = []
                if i + 1 == len(levels):
                    levels.append([])
                levels[i + 1].append(link)
            i += 1
        return out, ImportResult(root[0], self._written, root[2])

    # --- building -----------------------------------------------------------------------

    def _leaf(self, chunk: bytes | bytearray | memoryview, out: list[Block]) -> None:
        if self._raw:
            block = bytes(chunk)
            cid = CID(1, RAW, _SHA256_PREFIX + hashlib.sha256(block).digest())
        else:
            block = file_leaf_block(chunk)
            cid = dag_pb_cid(block, self._version)
        out.append(Block(cid, block))
        self._push(0, (cid, cid.to_bytes(), len(block), len(chunk)), out)

    def _node(self, links: list[_Link], out: list[Block]) -> _Link:
        filesize = sum(link[3] for link in links)
        block = file_node_block(links, filesize)
        cid = dag_pb_cid(block, self._version)
        out.append(Block(cid, block))
        return (cid, cid.to_bytes(), len(block) + sum(link[2] for link in links), filesize)

    def _push(self, index: int, link: _Link, out: list[Block]) -> None:
        levels = self._levels
        while True:
            level = levels[index]
            level.append(link)
            if len(level) < self._max_links:
                return
            # A node with max_links children is complete whatever comes next: emit it now.
            link = self._node(level, out)
            levels[index] = []
            index += 1
            if index == len(levels):
                levels.append([])

    # --- resumable state ------------------------------------------------------------------

    def buffered(self) -> bytes:
        """The bytes of the partial chunk not yet emitted as a leaf."""
        return bytes(self._buf[: self._fill])

    def written_subtrees(self) -> list[tuple[CID, int]]:
        """Roots of the complete subtrees holding every written byte but the buffered ones, in byte order."""
        return [(link[0], link[3]) for level in reversed(self._levels) for link in level]

    def snapshot(self) -> bytes:
        """Serialise the importer state (options, pending levels, byte count, partial chunk)."""
        if self._finished:
            raise UnixFSError("cannot snapshot a finished importer")
        opts = self.options
        raw = 2 if opts.raw_leaves is None else int(opts.raw_leaves)
        parts = [_SNAPSHOT_MAGIC]
        for value in (
            opts.chunk_size,
            opts.cid_version,
            raw,
            opts.max_links,
            self._written,
            len(self._levels),
        ):
            parts.append(uvarint(value))
        for level in self._levels:
            parts.append(uvarint(len(level)))
            for _cid, cid_bytes, tsize, size in level:
                parts += [uvarint(len(cid_bytes)), cid_bytes, uvarint(tsize), uvarint(size)]
        parts += [uvarint(self._fill), self.buffered()]
        return b"".join(parts)

    @classmethod
    def restore(cls, snapshot: bytes) -> FileImporter:
        """Rebuild an importer from :meth:`snapshot` output; raises UnixFSError if it is corrupt."""
        buf = bytes(snapshot)
        if not buf.startswith(_SNAPSHOT_MAGIC):
            raise UnixFSError("not a FileImporter snapshot")
        pos = len(_SNAPSHOT_MAGIC)
        try:
            fields = []
            for _ in range(6):
                value, pos = read_uvarint(buf, pos, "snapshot")
                fields.append(value)
            chunk_size, version, raw, max_links, written, nlevels = fields
            if raw > 2 or nlevels > 64:
                raise UnixFSError("corrupt FileImporter snapshot header")
            options = ImportOptions(chunk_size, version, None if raw == 2 else bool(raw), max_links)
            levels: list[list[_Link]] = []
            for _ in range(nlevels):
                count, pos = read_uvarint(buf, pos, "snapshot")
                if count >= max_links:
                    raise UnixFSError("corrupt FileImporter snapshot: overfull level")
                level: list[_Link] = []
                for _ in range(count):
                    length, pos = read_uvarint(buf, pos, "snapshot")
                    cid_bytes = buf[pos : pos + length]
                    pos += length
                    cid = CID.decode(cid_bytes)
                    tsize, pos = read_uvarint(buf, pos, "snapshot")
                    size, pos = read_uvarint(buf, pos, "snapshot")
                    level.append((cid, cid_bytes, tsize, size))
                levels.append(level)
            length, pos = read_uvarint(buf, pos, "snapshot")
            pending = buf[pos : pos + length]
            pos += length
        except (InvalidNode, CIDError, ValueError) as exc:
            raise UnixFSError(f"corrupt FileImporter snapshot: {exc}") from None
        if pos != len(buf) or len(pending) != length or length >= chunk_size or not levels:
            raise UnixFSError("corrupt FileImporter snapshot: bad length")
        if sum(link[3] for level in levels for link in level) + length != written:
            raise UnixFSError("corrupt FileImporter snapshot: byte count does not add up")
        importer = cls(options)
        importer._levels = levels
        importer._written = written
        importer._buf = bytearray(pending)
        importer._fill = length
        return importer


def import_bytes(
    data: bytes | bytearray | memoryview, options: ImportOptions = ImportOptions()
) -> tuple[list[Block], ImportResult]:
    """Import a whole byte string; return every block (root last) and the result."""
    importer = FileImporter(options)
    blocks = importer.write(data)
    rest, result = importer.finish()
    blocks.extend(rest)
    return blocks, result
