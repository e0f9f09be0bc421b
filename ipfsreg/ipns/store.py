"""IPNS state in the data dir's LevelDB.

Keyspaces:

- ``ipns.records``  ``<name multihash>`` -> the best valid record seen for that name: the ones this node
  publishes (the sequence to continue from) and the ones it resolved or imported (the last valid one
  survives when the network has none). A record replaces the stored one only if it is better
  (higher sequence, then later EOL) -- a lower-sequence record is never stored over a higher one.
- ``ipns.bindings`` ``<repository>`` -> key name (``ipfsreg name bind``).
- ``ipns.seen``     ``<name multihash>\\0<repository>\\0<tag>`` -> image CID a follower last pulled.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.ipns.record import IpnsName, IpnsRecord, compare, decode_record, value_cid

_SEP: Final = b"\x00"


class IpnsStore:
    def __init__(self, datastore: Datastore) -> None:
        self.datastore = datastore
        self.records = datastore.keyspace("ipns.records")
        self.bindings = datastore.keyspace("ipns.bindings")
        self.seen = datastore.keyspace("ipns.seen")

    # --- records ---------------------------------------------------------------------------

    def record(self, name: IpnsName) -> IpnsRecord | None:
        """The stored record of ``name`` (verified when it was stored; check its EOL before use)."""
        raw = self.records.get(name.multihash)
        return None if raw is None else decode_record(raw)

    def offer(self, name: IpnsName, record: IpnsRecord) -> bool:
        """Store ``record`` (already verified for ``name``) if it beats the stored one; True if stored."""
        current = self.record(name)
        if current is not None and compare(record, current) <= 0:
            return False
        self.records.put(name.multihash, record.raw, sync=True)
        return True

    def names(self) -> Iterator[IpnsName]:
        for key, _ in self.records.items():
            yield IpnsName(key)

    def live_roots(self) -> Iterator[CID]:
        """The CIDs stored records point at (garbage collection keeps their tag directories)."""
        for _key, raw in self.records.items():
            try:
                yield value_cid(decode_record(raw))[0]
            except ValueError:
                continue

    # --- bindings --------------------------------------------------------------------------

    def bind(self, repository: str, key: str) -> None:
        self.bindings.put(repository.encode(), key.encode(), sync=True)

    def unbind(self, repository: str) -> bool:
        if self.bindings.get(repository.encode()) is None:
            return False
        self.bindings.delete(repository.encode(), sync=True)
        return True

    def bound(self) -> dict[str, str]:
        """repository -> key name, for every ``name bind``."""
        return {key.decode(): value.decode() for key, value in self.bindings.items()}

    # --- what followers pulled -----------------------------------------------------------------

    def _seen_key(self, name: IpnsName, repository: str, tag: str) -> bytes:
        return _SEP.join([name.multihash, repository.encode(), tag.encode()])

    def seen_image(self, name: IpnsName, repository: str, tag: str) -> CID | None:
        raw = self.seen.get(self._seen_key(name, repository, tag))
        return None if raw is None else CID.decode(raw)

    def mark_seen(self, name: IpnsName, repository: str, tag: str, image: CID) -> None:
        self.seen.put(self._seen_key(name, repository, tag), image.to_bytes(), sync=True)
