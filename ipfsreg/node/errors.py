"""Errors of the node layer: one base type (NodeError), with bitswap's protocol failures under it."""

from __future__ import annotations

from ipfsreg.cid import CID


class NodeError(Exception):
    """Something in the embedded IPFS node failed (identity, host, peering, bitswap)."""


class BitswapError(NodeError):
    """A bitswap exchange failed."""


class ProtocolViolation(BitswapError):
    """A peer broke the bitswap protocol; its stream is dropped and the peer penalised."""


class MalformedMessage(ProtocolViolation):
    """Bytes that do not decode as a bitswap message."""


class MessageTooLarge(ProtocolViolation):
    """A message or a block over the configured size limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class BlockFetchTimeout(BitswapError):
    """No connected peer delivered a block within the fetch timeout."""

    def __init__(self, cid: CID, timeout: float, detail: str = "") -> None:
        message = f"block {cid} was not found on any connected peer within {timeout:g}s"
        if detail:
            message += f" ({detail})"
        super().__init__(message)
        self.cid = cid
        self.timeout = timeout
