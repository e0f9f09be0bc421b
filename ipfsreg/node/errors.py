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


class BlockNotProvided(BlockFetchTimeout):
    """Nobody has the block: every connected peer said DONT_HAVE and the provider lookup found none.

    Raised as soon as both are known, not after the fetch timeout; a BlockFetchTimeout, so every
    caller that maps "no peer has it" to a 404 does the same for this.
    """

    def __init__(self, cid: CID, detail: str) -> None:
        BitswapError.__init__(self, f"block {cid} is not available: {detail}")
        self.cid = cid
        self.timeout = 0.0


class RoutingError(NodeError):
    """Content or peer routing failed (DHT lookups, provides, records)."""


class DHTProtocolError(RoutingError):
    """A peer sent bytes that are not a well-formed DHT message, or broke a size limit; it is dropped."""


class InvalidRecord(RoutingError):
    """A DHT record (``/pk/...``, ``/ipns/...``) failed its namespace's validator, or has no validator."""


class RecordNotFound(RoutingError):
    """No valid record for a key was found in the local store or on the network."""

    def __init__(self, key: bytes, detail: str = "") -> None:
        shown = key.decode("utf-8", "backslashreplace")[:120]
        super().__init__(f"no valid record for {shown}" + (f" ({detail})" if detail else ""))
        self.key = key
