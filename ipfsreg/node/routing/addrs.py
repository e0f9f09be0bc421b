"""Checking what the network says about peers: peer IDs and multiaddrs in binary form, and their scopes.

Every peer entry a DHT message carries goes through here before anything is stored or dialled. A
peer ID must be a well-formed multihash (identity or SHA2-256), or the message is a protocol error.
A multiaddr is kept only when ipfsreg can dial it — ``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT``,
optionally ending in ``/p2p/<the same peer>`` — and only in the DHT whose scope it belongs to: the
LAN DHT takes loopback and private addresses (every non-global IP, so also 198.18.0.0/15 test
networks), the public DHT takes global IPs and DNS names. Anything else is dropped, as Kubo drops
addresses it cannot parse.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Final

from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ipfsreg.cid import CIDError, decode_varint, encode_varint, split_multihash
from ipfsreg.node.errors import DHTProtocolError

# Multiaddr protocol codes (multicodec table).
_IP4: Final = 0x04
_TCP: Final = 0x06
_IP6: Final = 0x29
_DNS: Final = 0x35
_DNS4: Final = 0x36
_DNS6: Final = 0x37
_P2P: Final = 0x01A5
_PEER_ID_HASHES: Final = (0x00, 0x12)  # identity (inline keys) and sha2-256
MAX_INLINE_KEY: Final = 128


class Scope(Enum):
    LOOPBACK = "loopback"
    PRIVATE = "private"  # any other non-global address: RFC 1918, CGNAT, link-local, 198.18.0.0/15, ...
    PUBLIC = "public"

    @property
    def lan(self) -> bool:
        return self is not Scope.PUBLIC


@dataclass(frozen=True, slots=True)
class DialAddr:
    """A TCP multiaddr ipfsreg can dial, without its /p2p part."""

    raw: bytes
    host: str
    port: int
    scope: Scope

    def multiaddr(self) -> Multiaddr:
        return Multiaddr(self.raw)

    def __str__(self) -> str:
        return str(Multiaddr(self.raw))


def peer_id_from_bytes(raw: bytes) -> ID:
    """A peer ID as sent on the wire; DHTProtocolError unless it is an identity or SHA2-256 multihash."""
    try:
        code, digest = split_multihash(raw)
    except CIDError as exc:
        raise DHTProtocolError(f"invalid peer ID {raw[:48].hex()}: {exc}") from None
    if code not in _PEER_ID_HASHES:
        raise DHTProtocolError(f"peer ID uses multihash function 0x{code:x}, not identity or sha2-256")
    if code == 0x12 and len(digest) != 32:
        raise DHTProtocolError(f"sha2-256 peer ID with a {len(digest)}-byte digest")
    if code == 0x00 and not 0 < len(digest) <= MAX_INLINE_KEY:
        raise DHTProtocolError(f"identity peer ID with a {len(digest)}-byte key")
    return ID(raw)


def _scope_of_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Scope:
    if ip.is_loopback:
        return Scope.LOOPBACK
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _scope_of_ip(ip.ipv4_mapped)
    return Scope.PUBLIC if ip.is_global else Scope.PRIVATE


def parse_dial_addr(raw: bytes, peer: ID | None = None) -> DialAddr | None:
    """``raw`` as a dialable TCP address, or None (unparseable, another transport, another peer's)."""
    try:
        code, pos = decode_varint(raw)
        if code in (_IP4, _IP6):
            size = 4 if code == _IP4 else 16
            value = raw[pos : pos + size]
            if len(value) != size:
                return None
            ip = ipaddress.ip_address(value)
            host, scope = str(ip), _scope_of_ip(ip)
            pos += size
        elif code in (_DNS, _DNS4, _DNS6):
            length, pos = decode_varint(raw, pos)
            name_bytes = raw[pos : pos + length]
            if len(name_bytes) != length or not 0 < length <= 253:
                return None
            host = name_bytes.decode("ascii").lower()
            pos += length
            # A name is as public as it looks; "localhost" is the one name known to be loopback.
            scope = Scope.LOOPBACK if host in ("localhost", "localhost.") else Scope.PUBLIC
        else:
            return None
        code, pos = decode_varint(raw, pos)
        if code != _TCP or pos + 2 > len(raw):
            return None
        port = int.from_bytes(raw[pos : pos + 2], "big")
        pos += 2
        end = pos
        if pos < len(raw):
            code, pos = decode_varint(raw, pos)
            length, pos = decode_varint(raw, pos)
            if code != _P2P or pos + length != len(raw):
                return None
            if peer is not None and raw[pos:] != peer.to_bytes():
                return None  # an address of some other peer
        if port == 0:
            return None
    except (CIDError, UnicodeDecodeError, ValueError):
        return None
    return DialAddr(raw[:end], host, port, scope)


def encode_addr(addr: Multiaddr | DialAddr) -> bytes:
    return addr.raw if isinstance(addr, DialAddr) else addr.to_bytes()


def dial_addr_of(addr: Multiaddr, peer: ID | None = None) -> DialAddr | None:
    """A Multiaddr object (from our own host or peerstore) as a DialAddr, or None."""
    try:
        raw = addr.to_bytes()
    except Exception:
        return None
    return parse_dial_addr(raw, peer)


def with_p2p(addr: DialAddr, peer: ID) -> bytes:
    """The binary multiaddr ``addr/p2p/<peer>``."""
    peer_bytes = peer.to_bytes()
    return addr.raw + encode_varint(_P2P) + encode_varint(len(peer_bytes)) + peer_bytes
