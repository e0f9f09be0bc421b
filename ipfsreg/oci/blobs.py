"""Describe a stored blob for the layout builder: its DAG's cumulative size comes from its root block."""

from __future__ import annotations

from ipfsreg.cid import CID
from ipfsreg.oci.errors import LayoutError
from ipfsreg.oci.layout import LayoutBlob, check_digest
from ipfsreg.unixfs import exporter
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource


async def layout_blob(source: BlockSource, digest: str, media_type: str, size: int, cid: CID) -> LayoutBlob:
    """A LayoutBlob for a blob whose DAG root is ``cid``; reads only the root block.

    The Tsize a directory link carries is the root block's length plus its links' Tsizes, which is
    what ``exporter.stat`` reports as ``cumulative_size`` (and the importer as ``dag_size``).
    """
    check_digest(digest)
    try:
        info = await exporter.stat(source, cid)
    except UnixFSError as exc:
        raise LayoutError(f"blob {digest} at {cid} is not a UnixFS file: {exc}") from exc
    if info.type not in ("file", "raw"):
        raise LayoutError(f"blob {digest} at {cid} is a UnixFS {info.type}, not a file")
    if info.size != size:
        raise LayoutError(f"blob {digest} at {cid} holds {info.size} bytes, expected {size}")
    return LayoutBlob(digest, media_type, size, cid, info.cumulative_size)
