"""The provider store: who provides which key, in a LevelDB keyspace, bounded and expiring.

Layout of keyspace ``dht.providers``::

    varint(len(key)) + key + provider peer ID
        -> u64 expiry (unix ms) + varint(n) + n * (varint(len) + multiaddr)

Records expire ``ttl`` after they were added (48 h, the spec's provide validity) and are swept by
:meth:`ProviderStore.expire`; reads never return an expired one. The store holds at most
``max_records`` records, ``max_per_key`` providers per key and ``max_per_peer`` records of one
provider (5 % of the total by default, so that one peer flooding ADD_PROVIDER cannot lock the
others out): past any bound a new record is refused (an existing one is still refreshed), so no
amount of ADD_PROVIDER traffic grows the store further. The count per provider is kept in memory
(one entry per provider peer in the store, so bounded by ``max_records``).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CIDError, decode_varint, encode_varint

PROVIDE_VALIDITY: Final = 48 * 3600.0
MAX_RECORDS: Final = 100_000
MAX_PER_KEY: Final = 64
MAX_ADDRS: Final = 16
_EXPIRY: Final = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    peer: bytes  # binary peer ID
    addrs: tuple[bytes, ...]  # binary multiaddrs as the provider announced them
    expires: float  # unix time


def _prefix(key: bytes) -> bytes:
    return encode_varint(len(key)) + key


def _peer_of(record_key: bytes) -> bytes | None:
    try:
        length, pos = decode_varint(record_key)
    except CIDError:
        return None
    peer = record_key[pos + length :]
    return peer or None


def _encode_value(expires: float, addrs: Sequence[bytes]) -> bytes:
    parts = [_EXPIRY.pack(int(expires * 1000)), encode_varint(len(addrs))]
    for addr in addrs:
        parts += [encode_varint(len(addr)), addr]
    return b"".join(parts)


def _decode_value(raw: bytes) -> tuple[float, tuple[bytes, ...]] | None:
    """(expiry, addrs), or None for a value this code did not write (treated as expired)."""
    try:
        (millis,) = _EXPIRY.unpack_from(raw)
        count, pos = decode_varint(raw, _EXPIRY.size)
        addrs = []
        for _ in range(count):
            length, pos = decode_varint(raw, pos)
            addrs.append(raw[pos : pos + length])
            pos += length
        if pos != len(raw):
            return None
    except (struct.error, CIDError):
        return None
    return millis / 1000.0, tuple(addrs)


def _fresh(raw: bytes, addrs: list[bytes], until: float) -> bool:
    """Whether the stored record ``raw`` lists exactly ``addrs`` and stays valid past ``until``."""
    decoded = _decode_value(raw)
    return decoded is not None and decoded[0] > until and list(decoded[1]) == addrs


class ProviderStore:
    def __init__(
        self,
        datastore: Datastore,
        *,
        keyspace: str = "dht.providers",
        ttl: float = PROVIDE_VALIDITY,
        max_records: int = MAX_RECORDS,
        max_per_key: int = MAX_PER_KEY,
        max_per_peer: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.datastore = datastore
        self.keyspace = datastore.keyspace(keyspace)
        self.ttl = ttl
        self.max_records = max_records
        self.max_per_key = max_per_key
        self.max_per_peer = max_per_peer if max_per_peer is not None else max(10, max_records // 20)
        self.clock = clock
        self.refused = 0  # records not stored because a bound was reached
        self._count = 0
        self._per_peer: dict[bytes, int] = {}
        for record_key in self.keyspace.keys(b""):
            self._counted(record_key, +1)

    def __len__(self) -> int:
        return self._count

    def records_of(self, peer: bytes) -> int:
        return self._per_peer.get(peer, 0)

    def _counted(self, record_key: bytes, delta: int) -> None:
        peer = _peer_of(record_key)
        self._count += delta
        if peer is None:
            return
        left = self._per_peer.get(peer, 0) + delta
        if left > 0:
            self._per_peer[peer] = left
        else:
            self._per_peer.pop(peer, None)

    def add(self, key: bytes, peer: bytes, addrs: Sequence[bytes] = (), *, own: bool = False) -> bool:
        """Record ``peer`` as a provider of ``key`` for ``ttl``; False if a bound refused a new record.

        ``own``: this node's record of what it provides itself, which no bound refuses (there is one
        per key this node provides, so they grow with its own content, not with anyone's traffic).
        An own record that is unchanged and valid for more than half the ``ttl`` is left as it is.
        """
        prefix = _prefix(key)
        record_key = prefix + peer
        now = self.clock()
        kept = list(dict.fromkeys(addrs))[:MAX_ADDRS]
        stored = self.keyspace.get(record_key)
        if stored is not None:
            if own and _fresh(stored, kept, now + self.ttl / 2):
                # This node's record of a key it announced lately (a push provides a blob, then the
                # provide queue announces it): unchanged, so not written again. A write on the
                # event loop can wait behind an upload's commit for the store's write lock.
                return True
            self.keyspace.put(record_key, _encode_value(now + self.ttl, kept))
            return True
        value = _encode_value(now + self.ttl, kept)
        if not own and (
            self._count >= self.max_records
            or self._per_peer.get(peer, 0) >= self.max_per_peer
            or self._providers_of(prefix) >= self.max_per_key
        ):
            self.refused += 1
            return False
        self.keyspace.put(record_key, value)
        self._counted(record_key, +1)
        return True

    def get(self, key: bytes, limit: int | None = None) -> list[ProviderRecord]:
        """Unexpired providers of ``key`` (up to ``limit``)."""
        prefix = _prefix(key)
        now = self.clock()
        found: list[ProviderRecord] = []
        for record_key, raw in self.keyspace.items(prefix):
            decoded = _decode_value(raw)
            if decoded is None or decoded[0] <= now:
                continue
            found.append(ProviderRecord(record_key[len(prefix) :], decoded[1], decoded[0]))
            if limit is not None and len(found) >= limit:
                break
        return found

    def remove(self, key: bytes, peer: bytes) -> None:
        record_key = _prefix(key) + peer
        if self.keyspace.get(record_key) is not None:
            self.keyspace.delete(record_key)
            self._counted(record_key, -1)

    def expire(self) -> int:
        """Delete every expired record; returns how many (run it from a worker thread for big stores)."""
        now = self.clock()
        doomed = [k for k, raw in self.keyspace.items() if (d := _decode_value(raw)) is None or d[0] <= now]
        for start in range(0, len(doomed), 1000):
            with self.datastore.batch() as batch:
                for record_key in doomed[start : start + 1000]:
                    batch.delete(self.keyspace, record_key)
        for record_key in doomed:
            self._counted(record_key, -1)
        return len(doomed)

    def _providers_of(self, prefix: bytes) -> int:
        count = 0
        for _ in self.keyspace.items(prefix):
            count += 1
            if count >= self.max_per_key:
                break
        return count
