"""UnixFS on dag-pb: codecs, a Kubo-identical streaming importer, ranged exporter, directories, HAMT, CAR."""

from ipfsreg.unixfs.errors import (
    CarError,
    InvalidNode,
    NotADirectory,
    NotAFile,
    PathNotFound,
    UnixFSError,
)

__all__ = ["CarError", "InvalidNode", "NotADirectory", "NotAFile", "PathNotFound", "UnixFSError"]
