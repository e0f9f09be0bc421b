"""Pure parsers for the HTTP ``Range`` (blob reads) and ``Content-Range`` (upload chunks) headers."""

from __future__ import annotations

import re
from typing import Final

from ipfsreg.registry.errors import RegistryError

_RANGE_RE: Final = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")
_CONTENT_RANGE_RE: Final = re.compile(r"\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*(?:\d+|\*))?\s*")


class RangeNotSatisfiable(Exception):
    """The Range header cannot be served for a blob of this size."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return (offset, length) for a single byte range, None to serve the whole blob.

    Malformed or multi-range headers are ignored (RFC 9110 allows serving the full content);
    a syntactically valid range that starts past the end raises :class:`RangeNotSatisfiable`.
    """
    match = _RANGE_RE.fullmatch(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        start = max(size - suffix, 0)
        return start, size - start
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable(header)
    end = size - 1 if not last else min(int(last), size - 1)
    if end < start:
        return None
    return start, end - start + 1


def parse_content_range(header: str) -> tuple[int, int]:
    """Parse an upload chunk's ``Content-Range`` (``start-end``, inclusive) -> (start, end).

    Raises BLOB_UPLOAD_INVALID with status 416 when it is malformed or inverted.
    """
    match = _CONTENT_RANGE_RE.fullmatch(header)
    if match is None:
        raise RegistryError("BLOB_UPLOAD_INVALID", {"contentRange": header[:100]}, status=416)
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RegistryError("BLOB_UPLOAD_INVALID", {"contentRange": header[:100]}, status=416)
    return start, end


def upload_range(offset: int) -> str:
    """The ``Range`` header of an upload holding ``offset`` bytes (``0-0`` when empty, as distribution)."""
    return f"0-{max(offset - 1, 0)}"
