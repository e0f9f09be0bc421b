"""The one error family of the UnixFS layer: codecs, importer, exporter, directories and CAR files."""

from __future__ import annotations


class UnixFSError(Exception):
    """Base class of every error raised by ipfsreg.unixfs."""


class InvalidNode(UnixFSError):
    """A block is not a well-formed dag-pb node or UnixFS message, or its structure is inconsistent."""


class NotAFile(UnixFSError):
    """The node is a directory, symlink or other non-file where file bytes were asked for."""


class NotADirectory(UnixFSError):
    """A path walks through a node that is not a directory."""


class PathNotFound(UnixFSError):
    """A path segment names no entry in its directory."""

    def __init__(self, path: str, segment: str) -> None:
        super().__init__(f"no entry {segment!r} while resolving {path!r}")
        self.path = path
        self.segment = segment


class CarError(UnixFSError):
    """A CAR stream is malformed, truncated, over a limit, or carries a block that fails its hash."""
