"""The embedded IPFS node: libp2p host, identity, peering and bitswap over the LevelDB blockstore."""

from ipfsreg.node.errors import (
    BitswapError,
    BlockFetchTimeout,
    MalformedMessage,
    MessageTooLarge,
    NodeError,
    ProtocolViolation,
)

__all__ = [
    "BitswapError",
    "BlockFetchTimeout",
    "MalformedMessage",
    "MessageTooLarge",
    "NodeError",
    "ProtocolViolation",
]
