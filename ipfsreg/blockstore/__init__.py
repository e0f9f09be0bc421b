"""Block storage keyed by multihash: LevelDB (plyvel) for small blocks, pointers and every layer's
records, in atomic batches shared by every layer; append-only pack files for large blocks' bytes."""

from ipfsreg.blockstore.packs import Pointer
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
    "Pointer",
    "WriteBatch",
]
