"""Content identifiers: CIDv0/v1, multihash and unsigned varints, as pure functions.

Hot paths (importer, blockstore, bitswap) use this small module instead of
``multiformats.CID`` objects, which cost several microseconds per construction.
Uncommon multibases are decoded through ``multiformats``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

# Multicodec codes.
DAG_PB: Final = 0x70
RAW: Final = 0x55
DAG_CBOR: Final = 0x71
LIBP2P_KEY: Final = 0x72

# Multihash function codes.
IDENTITY: Final = 0x00
SHA2_256: Final = 0x12
SHA2_512: Final = 0x13
BLAKE2B_256: Final = 0xB220  # Filecoin's CIDs (bafy2bzace...), common in published CAR files


class _Hash(Protocol):
    def digest(self) -> bytes: ...


def _blake2b_256(data: bytes | bytearray | memoryview) -> _Hash:
    return hashlib.blake2b(data, digest_size=32)


CODEC_NAMES: Final = {DAG_PB: "dag-pb", RAW: "raw", DAG_CBOR: "dag-cbor", LIBP2P_KEY: "libp2p-key"}
_HASHERS: Final[dict[int, Callable[[bytes | bytearray | memoryview], _Hash]]] = {
    SHA2_256: hashlib.sha256,
    SHA2_512: hashlib.sha512,
    BLAKE2B_256: _blake2b_256,
}

# Identity multihashes above this size are refused (Kubo's limit is 128 bytes).
MAX_IDENTITY_DIGEST: Final = 128


class CIDError(ValueError):
    """A CID, multihash or varint is malformed or uses an unsupported code."""


# --- unsigned varints (multiformats/unsigned-varint) -------------------------------------


# Single-byte varints are the common case (protobuf tags, small lengths): precomputed.
_ONE_BYTE: Final = tuple(bytes((i,)) for i in range(0x80))


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        if value < 0:
            raise CIDError(f"varint must be non-negative, got {value}")
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode a varint at ``pos``; return (value, position after it). Max 9 bytes (63 bits)."""
    result = 0
    shift = 0
    end = len(buf)
    start = pos
    while True:
        if pos >= end:
            raise CIDError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and pos - start > 1:
                raise CIDError("varint is not minimally encoded")
            return result, pos
        shift += 7
        if shift >= 63:
            raise CIDError("varint longer than 9 bytes")


# --- base58btc and base32 (the two bases CIDs use by default) -----------------------------

_B58_ALPHABET: Final = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    out = bytearray()
    while num:
        num, rem = divmod(num, 58)
        out.append(_B58_ALPHABET[rem])
    out.extend(b"1" * zeros)
    out.reverse()
    return out.decode("ascii")


def b58decode(text: str) -> bytes:
    num = 0
    try:
        for ch in text.encode("ascii"):
            num = num * 58 + _B58_INDEX[ch]
    except (KeyError, UnicodeEncodeError):
        raise CIDError(f"invalid base58btc text {text!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def b32encode(data: bytes) -> str:
    import base64

    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    import base64
    import binascii

    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except binascii.Error:
        raise CIDError(f"invalid base32 text {text!r}") from None


# --- multihash ----------------------------------------------------------------------------


def multihash(data: bytes | bytearray | memoryview, code: int = SHA2_256) -> bytes:
    """Hash ``data`` and return the multihash (code, length, digest)."""
    if code == IDENTITY:
        digest = bytes(data)
        if len(digest) > MAX_IDENTITY_DIGEST:
            raise CIDError(f"identity multihash over {MAX_IDENTITY_DIGEST} bytes")
    else:
        hasher = _HASHERS.get(code)
        if hasher is None:
            raise CIDError(f"unsupported multihash function 0x{code:x}")
        digest = hasher(data).digest()
    return encode_varint(code) + encode_varint(len(digest)) + digest


def split_multihash(mh: bytes) -> tuple[int, bytes]:
    """Return (function code, digest) of a multihash, checking its length prefix."""
    code, pos = decode_varint(mh)
    length, pos = decode_varint(mh, pos)
    digest = mh[pos:]
    if len(digest) != length:
        raise CIDError(f"multihash digest length {len(digest)} != declared {length}")
    return code, digest


def multihash_matches(mh: bytes, data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` hashes to ``mh``. Raises CIDError for unsupported functions."""
    code, digest = split_multihash(mh)
    if code == IDENTITY:
        return bytes(data) == digest
    hasher = _HASHERS.get(code)
    if hasher is None:
        raise CIDError(f"unsupported multihash function 0x{code:x}")
    return hasher(data).digest() == digest


# --- CID ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CID:
    """A CID: version, content codec and multihash. Immutable and hashable."""

    version: int
    codec: int
    multihash: bytes

    def __post_init__(self) -> None:
        if self.version == 0:
            if self.codec != DAG_PB:
                raise CIDError("CIDv0 must be dag-pb")
            if not (len(self.multihash) == 34 and self.multihash[:2] == b"\x12\x20"):
                raise CIDError("CIDv0 must use a sha2-256 multihash")
        elif self.version != 1:
            raise CIDError(f"unsupported CID version {self.version}")

    # construction
    @classmethod
    def v0(cls, mh: bytes) -> CID:
        return cls(0, DAG_PB, mh)

    @classmethod
    def v1(cls, codec: int, mh: bytes) -> CID:
        return cls(1, codec, mh)

    @classmethod
    def hash(cls, data: bytes | bytearray | memoryview, *, codec: int = RAW, version: int = 1) -> CID:
        """The CID of ``data`` with sha2-256."""
        return cls(version, codec, multihash(data))

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> CID:
        """Parse a binary CID (the whole buffer)."""
        cid, end = cls.decode_prefix(buf)
        if end != len(buf):
            raise CIDError("trailing bytes after CID")
        return cid

    @classmethod
    def decode_prefix(cls, buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[CID, int]:
        """Parse a binary CID at ``pos``; return it and the position after it (CAR sections)."""
        buf = bytes(buf)
        if len(buf) - pos >= 34 and buf[pos] == 0x12 and buf[pos + 1] == 0x20:
            return cls(0, DAG_PB, buf[pos : pos + 34]), pos + 34
        version, p = decode_varint(buf, pos)
        if version != 1:
            raise CIDError(f"unsupported CID version {version}")
        codec, p = decode_varint(buf, p)
        mh_start = p
        _code, p = decode_varint(buf, p)
        length, p = decode_varint(buf, p)
        if p + length > len(buf):
            raise CIDError("truncated multihash in CID")
        return cls(1, codec, buf[mh_start : p + length]), p + length

    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse a CID string: base58btc CIDv0 (Qm...) or any multibase CIDv1."""
        text = text.strip()
        if not text:
            raise CIDError("empty CID")
        if len(text) == 46 and text.startswith("Qm"):
            return cls.decode(b58decode(text))
        prefix, body = text[0], text[1:]
        if prefix == "b":
            raw = b32decode(body)
        elif prefix == "B":
            raw = b32decode(body.lower())
        elif prefix == "z":
            raw = b58decode(body)
        else:
            try:
                from multiformats import multibase

                raw = bytes(multibase.decode(text))
            except Exception as exc:
                raise CIDError(f"invalid CID {text!r}: {exc}") from None
        if raw[:1] == b"\x12":
            raise CIDError(f"invalid CID {text!r}: CIDv0 must be base58btc")
        try:
            return cls.decode(raw)
        except CIDError as exc:
            raise CIDError(f"invalid CID {text!r}: {exc}") from None

    # encoding
    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def encode(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + b32encode(self.to_bytes())

    def __str__(self) -> str:
        return self.encode()

    def __repr__(self) -> str:
        return f"CID({self.encode()})"

    # conversions
    def to_v1(self) -> CID:
        return self if self.version == 1 else CID(1, self.codec, self.multihash)

    def to_v0(self) -> CID:
        return self if self.version == 0 else CID(0, self.codec, self.multihash)

    @property
    def hash_code(self) -> int:
        return split_multihash(self.multihash)[0]

    @property
    def digest(self) -> bytes:
        return split_multihash(self.multihash)[1]

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")

    def prefix(self) -> bytes:
        """The bitswap 1.1 block prefix: version, codec, hash code, digest length."""
        code, digest = split_multihash(self.multihash)
        header = encode_varint(self.version) + encode_varint(self.codec)
        return header + encode_varint(code) + encode_varint(len(digest))

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """True if ``data`` is the block this CID names."""
        return multihash_matches(self.multihash, data)


def cid_from_prefix(prefix: bytes, data: bytes) -> CID:
    """Build the CID of ``data`` from a bitswap 1.1 block prefix."""
    version, p = decode_varint(prefix)
    codec, p = decode_varint(prefix, p)
    code, p = decode_varint(prefix, p)
    length, p = decode_varint(prefix, p)
    if p != len(prefix):
        raise CIDError("trailing bytes after block prefix")
    mh = multihash(data, code)
    if code != IDENTITY and length != len(mh) - len(encode_varint(code)) - len(encode_varint(length)):
        raise CIDError("block prefix digest length does not match its hash function")
    if version == 0:
        return CID(0, DAG_PB, mh)
    return CID(version, codec, mh)
