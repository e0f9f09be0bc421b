"""LevelDB (plyvel) block storage keyed by multihash, with atomic batches shared by every layer."""

from ipfsreg.blockstore.store import (
    MAX_BLOCK_SIZE,
    BlockCorrupted,
    BlockNotFound,
    Blockstore,
    BlockstoreError,
    DataDirLocked,
    Datastore,
    InvalidBlock,
    Keyspace,
    WriteBatch,
)

__all__ = [
    "MAX_BLOCK_SIZE",
    "BlockCorrupted",
    "BlockNotFound",
    "Blockstore",
    "BlockstoreError",
    "DataDirLocked",
    "Datastore",
    "InvalidBlock",
    "Keyspace",
    "WriteBatch",
]
