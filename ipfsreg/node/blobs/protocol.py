"""``/ipfsreg/blob/1.0.0``: asking a fleet peer about an OCI blob by digest. Pure: bytes in, objects out.

A blob is a UnixFS DAG whose root CID cannot be derived from the blob's OCI digest, and a node still
fetching a blob has no root yet. So the fleet names a blob by a *digest CID* (:func:`digest_cid`:
CIDv1, raw codec, multihash sha2-256 of the digest string, as Spegel derives its keys), which every
node that holds the blob or has started fetching it provides; a node missing the blob finds
providers of that CID (connected peers, the DHT) and asks them over this protocol:

    request (asker -> provider), one frame:   {"digest": "sha256:<hex>", "claim": bool}
    answers (provider -> asker), frames until the provider closes the stream:
      {"state": "missing"}                                   it neither has nor fetches the blob
      {"state": "have", "root": <CID bytes>, "size": N}      stored whole: fetch the DAG over bitswap
      {"state": "claimed", "claimants": [peer id, ...]}      it is about to fetch it (coordination)
      {"state": "fetching", "size": N|null, "first": i,      fetching: its leaves i, i+1, ... are
       "leaves": [[<CID bytes>, bytes], ...]}                stored and served over bitswap
      {"state": "failed", "reason": "..."}                   its fetch failed

``claim`` says the asker is about to fetch the blob itself; the provider adds it to the claimants it
knows, so two nodes missing a blob at the same moment learn of each other from either one's question.
A stream carries ``claimed`` (repeated as claimants change), then ``fetching`` frames whose ``first``
continues the leaf count exactly, then ``have`` or ``failed``; or just ``missing`` or ``have``.
:class:`AnswerSequence` enforces that order: a provider that breaks it is a liar and is dropped.

Frames are an unsigned varint length and a dag-cbor map (at most :data:`MAX_FRAME` bytes).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

import dag_cbor

from ipfsreg.cid import CID, RAW, SHA2_256, CIDError, decode_varint, encode_varint
from ipfsreg.node.errors import ProtocolViolation

PROTOCOL_ID: Final = "/ipfsreg/blob/1.0.0"
MAX_FRAME: Final = 1024 * 1024
MAX_LEAVES_PER_FRAME: Final = 8192
MAX_LEAF_SIZE: Final = 1024 * 1024  # the importer's largest chunk
MAX_CLAIMANTS: Final = 64
MAX_PEER_ID_LENGTH: Final = 128
MAX_REASON_LENGTH: Final = 1000
_DIGEST: Final = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")


class BlobProtocolError(ProtocolViolation):
    """A frame or a sequence of answers that breaks ``/ipfsreg/blob/1.0.0``."""


def check_digest(digest: object) -> str:
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise BlobProtocolError(f"not an OCI digest: {str(digest)[:150]!r}")
    return digest


def digest_cid(digest: str) -> CID:
    """The CID that names blob ``digest`` in the fleet's provider records (not a block anyone stores)."""
    check_digest(digest)
    return CID(1, RAW, bytes([SHA2_256, 32]) + hashlib.sha256(digest.encode()).digest())


@dataclass(frozen=True)
class Request:
    digest: str
    claim: bool = False


@dataclass(frozen=True)
class Leaf:
    cid: CID
    size: int  # the file bytes it holds


@dataclass(frozen=True)
class Missing:
    pass


@dataclass(frozen=True)
class Have:
    root: CID
    size: int


@dataclass(frozen=True)
class Claimed:
    claimants: tuple[str, ...]


@dataclass(frozen=True)
class Fetching:
    size: int | None
    first: int
    leaves: tuple[Leaf, ...]


@dataclass(frozen=True)
class Failed:
    reason: str


Answer = Missing | Have | Claimed | Fetching | Failed


# --- frames ----------------------------------------------------------------------------------


def encode_frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise BlobProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return encode_varint(len(body)) + body


class FrameReader:
    """Length-prefixed frames out of bytes as they arrive."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while self._buf:
            if not any(byte < 0x80 for byte in self._buf[:9]):
                if len(self._buf) >= 9:
                    raise BlobProtocolError("malformed frame length")
                break  # the varint is still arriving
            try:
                length, pos = decode_varint(self._buf)
            except CIDError as exc:
                raise BlobProtocolError(f"malformed frame length: {exc}") from None
            if length > self.max_frame:
                raise BlobProtocolError(f"frame of {length} bytes exceeds {self.max_frame}")
            if len(self._buf) < pos + length:
                break
            frames.append(bytes(self._buf[pos : pos + length]))
            del self._buf[: pos + length]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _decode_map(body: bytes) -> dict[str, Any]:
    try:
        value = dag_cbor.decode(body)
    except Exception as exc:  # dag_cbor raises several error types for malformed input
        raise BlobProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(value, dict):
        raise BlobProtocolError("a frame must be a dag-cbor map")
    return value


def _int(value: Any, what: str, *, limit: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise BlobProtocolError(f"{what} must be an integer within 0..{limit}, got {str(value)[:50]}")
    return value


def _cid(value: Any, what: str) -> CID:
    if not isinstance(value, bytes):
        raise BlobProtocolError(f"{what} must be CID bytes")
    try:
        return CID.decode(value)
    except CIDError as exc:
        raise BlobProtocolError(f"{what}: {exc}") from None


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise BlobProtocolError(f"{what} must be a string of at most {limit} characters")
    return value


# --- requests --------------------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    return encode_frame(dag_cbor.encode({"digest": check_digest(request.digest), "claim": request.claim}))


def decode_request(body: bytes) -> Request:
    doc = _decode_map(body)
    claim = doc.get("claim", False)
    if not isinstance(claim, bool):
        raise BlobProtocolError("claim must be true or false")
    return Request(check_digest(doc.get("digest")), claim)


# --- answers ---------------------------------------------------------------------------------


def encode_answer(answer: Answer) -> bytes:
    doc: dict[str, Any]
    if isinstance(answer, Missing):
        doc = {"state": "missing"}
    elif isinstance(answer, Have):
        doc = {"state": "have", "root": answer.root.to_bytes(), "size": answer.size}
    elif isinstance(answer, Claimed):
        doc = {"state": "claimed", "claimants": list(answer.claimants[:MAX_CLAIMANTS])}
    elif isinstance(answer, Fetching):
        if len(answer.leaves) > MAX_LEAVES_PER_FRAME:
            raise BlobProtocolError(f"more than {MAX_LEAVES_PER_FRAME} leaves in one frame")
        doc = {
            "state": "fetching",
            "size": answer.size,
            "first": answer.first,
            "leaves": [[leaf.cid.to_bytes(), leaf.size] for leaf in answer.leaves],
        }
    else:
        doc = {"state": "failed", "reason": answer.reason[:MAX_REASON_LENGTH]}
    return encode_frame(dag_cbor.encode(doc))


def decode_answer(body: bytes) -> Answer:
    doc = _decode_map(body)
    state = doc.get("state")
    if state == "missing":
        return Missing()
    if state == "have":
        return Have(_cid(doc.get("root"), "root"), _int(doc.get("size"), "size"))
    if state == "claimed":
        claimants = doc.get("claimants")
        if not isinstance(claimants, list) or len(claimants) > MAX_CLAIMANTS:
            raise BlobProtocolError(f"claimants must be a list of at most {MAX_CLAIMANTS} peer ids")
        return Claimed(tuple(_text(c, "claimant", MAX_PEER_ID_LENGTH) for c in claimants))
    if state == "fetching":
        size = doc.get("size")
        leaves = doc.get("leaves")
        if not isinstance(leaves, list) or len(leaves) > MAX_LEAVES_PER_FRAME:
            raise BlobProtocolError(f"leaves must be a list of at most {MAX_LEAVES_PER_FRAME} entries")
        parsed: list[Leaf] = []
        for entry in leaves:
            if not isinstance(entry, list) or len(entry) != 2:
                raise BlobProtocolError("a leaf is [CID bytes, size]")
            parsed.append(Leaf(_cid(entry[0], "leaf"), _int(entry[1], "leaf size", limit=MAX_LEAF_SIZE)))
        return Fetching(
            None if size is None else _int(size, "size"), _int(doc.get("first"), "first"), tuple(parsed)
        )
    if state == "failed":
        return Failed(_text(doc.get("reason", ""), "reason", MAX_REASON_LENGTH))
    raise BlobProtocolError(f"unknown state {str(state)[:50]!r}")


class AnswerSequence:
    """The asker's view of one stream: checks each answer follows the protocol's order and sums.

    ``leaves`` holds every leaf announced so far, ``offset`` the file bytes they cover.
    """

    def __init__(self) -> None:
        self.state: str = "start"
        self.size: int | None = None
        self.leaves: list[Leaf] = []
        self.offset = 0

    @property
    def finished(self) -> bool:
        return self.state in ("missing", "have", "failed")

    def receive(self, answer: Answer) -> Answer:
        """Check ``answer`` against what came before; return it (BlobProtocolError if out of order)."""
        if self.finished:
            raise BlobProtocolError(f"an answer after the final {self.state!r}")
        if isinstance(answer, Missing | Claimed):
            if self.state == "fetching":
                raise BlobProtocolError(f"{type(answer).__name__.lower()} after fetching")
            self.state = "missing" if isinstance(answer, Missing) else "claimed"
            return answer
        if isinstance(answer, Fetching):
            if answer.first != len(self.leaves):
                raise BlobProtocolError(f"leaves from {answer.first}, expected {len(self.leaves)}")
            if self.state == "fetching" and answer.size != self.size:
                raise BlobProtocolError("the blob's size changed while it was being fetched")
            added = sum(leaf.size for leaf in answer.leaves)
            if any(leaf.size == 0 for leaf in answer.leaves):
                raise BlobProtocolError("an empty leaf in a blob being fetched")
            if answer.size is not None and self.offset + added > answer.size:
                raise BlobProtocolError(f"leaves cover more than the blob's {answer.size} bytes")
            self.state = "fetching"
            self.size = answer.size
            self.leaves.extend(answer.leaves)
            self.offset += added
            return answer
        if isinstance(answer, Have):
            if self.state == "fetching" and (
                answer.size < self.offset or (self.size is not None and answer.size != self.size)
            ):
                raise BlobProtocolError(f"have {answer.size} bytes after announcing otherwise")
            self.state = "have"
            return answer
        self.state = "failed"
        return answer
