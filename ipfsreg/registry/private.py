"""Private content: blobs pulled through a private namespace (pull secrets upstream) and their blocks.

Keyspaces (in the registry's LevelDB, written in the same batches as the blocks they describe):

- ``reg.private.blobs``   ``<digest>`` -> b""      the blob came only from private namespaces
- ``reg.private.blocks``  ``<multihash>`` -> b""   a block of such a blob (leaves, interior nodes,
  manifests and the image directories published for private tags)

A node outside a private swarm never offers these to peers: its blob protocol answers ``missing``
for a private blob, its bitswap server answers as if it lacked a private block (see app.py), and
they are never provided on the DHT. The same bytes reached through a public namespace are public:
storing or linking them there clears the marks (a block shared by a private and a public blob,
such as a run of zeros, is served because the public blob holds it).
"""

from __future__ import annotations

from collections.abc import Iterable

from ipfsreg.blockstore import Datastore, WriteBatch
from ipfsreg.cid import CID
from ipfsreg.registry.digests import Digest
from ipfsreg.unixfs.exporter import LocalBlockSource, walk_dag


class PrivateContent:
    def __init__(self, datastore: Datastore) -> None:
        self.datastore = datastore
        self.blobs = datastore.keyspace("reg.private.blobs")
        self.blocks = datastore.keyspace("reg.private.blocks")

    def mark_blocks(self, batch: WriteBatch, cids: Iterable[CID]) -> None:
        for cid in cids:
            batch.put(self.blocks, cid.multihash, b"")

    def clear_blocks(self, batch: WriteBatch, cids: Iterable[CID]) -> None:
        for cid in cids:
            if self.blocks.get(cid.multihash) is not None:
                batch.delete(self.blocks, cid.multihash)

    def mark_blob(self, batch: WriteBatch, digest: Digest | str) -> None:
        batch.put(self.blobs, str(digest).encode(), b"")

    def is_private_blob(self, digest: Digest | str) -> bool:
        return self.blobs.get(str(digest).encode()) is not None

    def is_private_block(self, cid: CID) -> bool:
        return self.blocks.get(cid.multihash) is not None

    async def make_public(self, digest: Digest | str, root: CID) -> bool:
        """The blob is now held by a public namespace too: clear its marks and its blocks'.

        Returns whether it was private (its caller then announces it, as it does public blobs)."""
        if not self.is_private_blob(digest):
            return False
        cids = [cid async for cid, _ in walk_dag(LocalBlockSource(self.datastore.blocks), root)]
        with self.datastore.batch(sync=True) as batch:
            batch.delete(self.blobs, str(digest).encode())
            self.clear_blocks(batch, cids)
        return True
