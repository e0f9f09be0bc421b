"""OCI content digests (``algorithm:hex``): parsing, checking and incremental hashing (pure, no I/O)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final, Protocol

from ipfsreg.oci.errors import DigestInvalid

_DIGEST_RE: Final = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
HEX_LENGTHS: Final = {"sha256": 64, "sha512": 128}
_HEX_RE: Final = re.compile(r"[a-f0-9]+")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def new_hasher(self) -> Hasher:
        return new_hasher(self.algorithm)

    def key(self) -> bytes:
        return str(self).encode()


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "sha512":
        return hashlib.sha512()
    raise DigestInvalid(
        f"unsupported digest algorithm {algorithm[:50]!r}",
        {"digest": algorithm[:200], "reason": "unsupported algorithm"},
    )


def is_digest_like(text: str) -> bool:
    """True if ``text`` follows the general digest grammar (so it is not a tag)."""
    return _DIGEST_RE.fullmatch(text) is not None


def parse_digest(text: str) -> Digest:
    """Parse a sha256 or sha512 digest; anything else raises :class:`DigestInvalid`."""
    match = _DIGEST_RE.fullmatch(text)
    if match is None:
        raise DigestInvalid("malformed digest", {"digest": text[:200], "reason": "malformed digest"})
    algorithm, hexpart = match.group(1), match.group(2)
    length = HEX_LENGTHS.get(algorithm)
    if length is None:
        raise DigestInvalid(
            "unsupported digest algorithm", {"digest": text[:200], "reason": "unsupported algorithm"}
        )
    if len(hexpart) != length or _HEX_RE.fullmatch(hexpart) is None:
        reason = "bad encoded length or case"
        raise DigestInvalid(reason, {"digest": text[:200], "reason": reason})
    return Digest(algorithm, hexpart)


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return Digest(algorithm, hasher.hexdigest())
