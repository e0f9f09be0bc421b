"""Test support for tests/unixfs: Kubo's deterministic ChaCha20 data generator and in-memory block sources.

Kubo's test/cli/testutils.DeterministicRandomReader: key = sha256(seed), 12-byte zero nonce, counter 0,
output = the ChaCha20 keystream. The filename generator of cid_profiles_test.go maps those bytes onto
``AlphabetEasy``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ipfsreg.blockstore import BlockNotFound
from ipfsreg.cid import CID
from ipfsreg.unixfs.importer import Block

ALPHABET_EASY = "abcdefghijklmnopqrstuvwxyz01234567890-_"


class KuboRandom:
    """A stream of Kubo's deterministic pseudo-random bytes for a seed string."""

    def __init__(self, seed: str) -> None:
        key = hashlib.sha256(seed.encode()).digest()
        self._enc = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()

    def read(self, n: int) -> bytes:
        return self._enc.update(b"\0" * n)


def deterministic_bytes(size: int, seed: str) -> bytes:
    return KuboRandom(seed).read(size)


def deterministic_chunks(size: int, seed: str, piece: int = 1 << 20) -> Iterator[bytes]:
    rng = KuboRandom(seed)
    while size > 0:
        n = min(piece, size)
        size -= n
        yield rng.read(n)


def deterministic_filenames(count: int, name_len: int, last_name_len: int, seed: str) -> list[str]:
    """The file names of Kubo's createDeterministicFiles (cid_profiles_test.go)."""
    rng = KuboRandom(seed)
    names = []
    for i in range(count):
        n = last_name_len if i == count - 1 else name_len
        names.append("".join(ALPHABET_EASY[b % len(ALPHABET_EASY)] for b in rng.read(n)))
    return names


class MemorySource:
    """A BlockSource over a dict that records every get and prefetch."""

    def __init__(self, blocks: Sequence[Block] | dict[CID, bytes] = ()) -> None:
        self.blocks: dict[bytes, bytes] = {}
        items = blocks.items() if isinstance(blocks, dict) else ((b.cid, b.data) for b in blocks)
        for cid, data in items:
            self.blocks[cid.multihash] = data
        self.gets: list[CID] = []
        self.prefetches: list[list[CID]] = []

    def add(self, cid: CID, data: bytes) -> None:
        self.blocks[cid.multihash] = data

    async def get(self, cid: CID) -> bytes:
        self.gets.append(cid)
        try:
            return self.blocks[cid.multihash]
        except KeyError:
            raise BlockNotFound(cid) from None

    def prefetch(self, cids: Sequence[CID]) -> None:
        self.prefetches.append(list(cids))
