"""The Kademlia keyspace: 256-bit identifiers (SHA2-256 of a peer ID or a key), XOR distance, prefixes.

Identifiers are Python ints, so the XOR distance is one ``^`` and its common prefix length one
``bit_length``. A provider record's key is the CID's multihash; a value record's key is its
``/namespace/...`` bytes; a peer's is its binary peer ID (the spec's "Kademlia Keyspace").
"""

from __future__ import annotations

import hashlib
import random
from typing import Final

KEY_BITS: Final = 256
MAX_REFRESH_CPL: Final = 12


def kad_id(key: bytes) -> int:
    """The Kademlia identifier of ``key`` (peer ID bytes, a multihash, a record key)."""
    return int.from_bytes(hashlib.sha256(key).digest(), "big")


def distance(a: int, b: int) -> int:
    return a ^ b


def common_prefix_len(a: int, b: int) -> int:
    """Leading bits ``a`` and ``b`` share (256 when equal)."""
    return KEY_BITS - (a ^ b).bit_length()


def random_key_with_prefix(local: int, cpl: int, rng: random.Random | None = None) -> bytes:
    """Random key bytes whose identifier shares exactly ``cpl`` leading bits with ``local``.

    A routing table refresh looks such a key up to fill bucket ``cpl``. SHA2-256 cannot be
    inverted, so keys are drawn until one fits: about 2**(cpl+1) draws, which is why refreshes
    stop at :data:`MAX_REFRESH_CPL` (Kubo stops at 15 with a precomputed table).
    """
    if not 0 <= cpl <= MAX_REFRESH_CPL:
        raise ValueError(f"common prefix length must be within 0..{MAX_REFRESH_CPL}, got {cpl}")
    rng = rng or random.Random()
    while True:
        key = rng.randbytes(32)
        if common_prefix_len(kad_id(key), local) == cpl:
            return key
