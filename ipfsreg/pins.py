"""Pins: DAG roots kept by garbage collection whatever the registry holds (``ipfsreg add`` pins what it adds).

Pins are recursive (the root and everything below it), stored in the ``pins`` keyspace keyed by
multihash, so a CIDv0 and a CIDv1 of the same root are one pin.
"""

from __future__ import annotations

from collections.abc import Iterator

from ipfsreg.blockstore import Datastore, WriteBatch
from ipfsreg.cid import CID


class Pins:
    def __init__(self, store: Datastore) -> None:
        self.keyspace = store.keyspace("pins")
        self._store = store

    def add(self, cid: CID, *, batch: WriteBatch | None = None) -> None:
        if batch is None:
            self.keyspace.put(cid.multihash, cid.to_bytes(), sync=True)
        else:
            batch.put(self.keyspace, cid.multihash, cid.to_bytes())

    def remove(self, cid: CID) -> bool:
        """Unpin; return whether it was pinned."""
        present = self.keyspace.get(cid.multihash) is not None
        self.keyspace.delete(cid.multihash, sync=True)
        return present

    def __contains__(self, cid: CID) -> bool:
        return self.keyspace.get(cid.multihash) is not None

    def __iter__(self) -> Iterator[CID]:
        for _key, raw in self.keyspace.items():
            yield CID.decode(raw)
