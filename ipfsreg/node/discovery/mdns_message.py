"""Multicast DNS messages for libp2p peer discovery, as go-libp2p's mDNS (libp2p/zeroconf) sends them.

A browsing peer asks for ``PTR _p2p._udp.local.``; each peer answers, in one message, with a PTR
to its instance name (a random 32-63 character label), the instance's SRV (a host name and port
4001, unused) and TXT (one ``dnsaddr=<multiaddr>/p2p/<peer id>`` string per address), and the
host's A/AAAA records (go's zeroconf drops an answer without an address record). Peers are
learnt from the TXT records only, as go-libp2p does.

Pure functions: DNS wire format (RFC 1035, with name compression on decode; RFC 6762's QU and
cache-flush bits), a query and a response builder, and :func:`peers_in` to read a response.
Malformed packets raise MdnsError.
"""

from __future__ import annotations

import ipaddress
import secrets
import string
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ipfsreg.node.errors import NodeError

SERVICE: Final = "_p2p._udp.local."
DNSADDR_PREFIX: Final = b"dnsaddr="
MDNS_GROUP: Final = "224.0.0.251"
MDNS_PORT: Final = 5353
TTL: Final = 120  # seconds; go's zeroconf uses 3200 for the same records
MAX_PACKET: Final = 9000  # RFC 6762 section 17

TYPE_A: Final = 1
TYPE_PTR: Final = 12
TYPE_TXT: Final = 16
TYPE_AAAA: Final = 28
TYPE_SRV: Final = 33
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
UNICAST_RESPONSE: Final = 0x8000  # top bit of a question's class (QU)
CACHE_FLUSH: Final = 0x8000  # top bit of a record's class
FLAG_RESPONSE: Final = 0x8400  # QR + AA

_HEADER = struct.Struct("!HHHHHH")
_MAX_RECORDS = 256
_MAX_POINTER_JUMPS = 32


class MdnsError(NodeError):
    """A multicast DNS packet that does not decode; it is dropped."""


@dataclass(frozen=True)
class Question:
    name: str
    type: int
    unicast: bool = False


@dataclass(frozen=True)
class Record:
    name: str
    type: int
    ttl: int
    data: bytes  # rdata as on the wire, except names in PTR/SRV, which are decoded into ``target``
    target: str = ""
    cache_flush: bool = False

    @property
    def texts(self) -> list[bytes]:
        """The strings of a TXT record."""
        out: list[bytes] = []
        pos = 0
        while pos < len(self.data):
            size = self.data[pos]
            out.append(self.data[pos + 1 : pos + 1 + size])
            pos += 1 + size
        return out


@dataclass(frozen=True)
class Message:
    id: int = 0
    flags: int = 0
    questions: list[Question] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)  # answers, authorities and additionals

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)


def random_instance_name() -> str:
    """A random 32-63 character label, as go-libp2p names its mDNS instance."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32 + secrets.randbelow(32)))


# --- encoding -----------------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        if not 0 < len(raw) <= 63:
            raise MdnsError(f"DNS label {label!r} must be 1..63 bytes")
        out += bytes([len(raw)]) + raw
    out.append(0)
    if len(out) > 255:
        raise MdnsError(f"DNS name {name[:60]!r} is over 255 bytes")
    return bytes(out)


def _record(name: str, rtype: int, rdata: bytes, ttl: int = TTL, flush: bool = False) -> bytes:
    klass = CLASS_IN | (CACHE_FLUSH if flush else 0)
    return encode_name(name) + struct.pack("!HHIH", rtype, klass, ttl, len(rdata)) + rdata


def encode_query(name: str = SERVICE, rtype: int = TYPE_PTR, *, unicast: bool = False) -> bytes:
    klass = CLASS_IN | (UNICAST_RESPONSE if unicast else 0)
    return _HEADER.pack(0, 0, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", rtype, klass)


def txt_strings(addrs: Iterable[str]) -> list[bytes]:
    """``dnsaddr=`` strings for the addresses that fit a TXT string (255 bytes), in order."""
    out = []
    for addr in addrs:
        text = DNSADDR_PREFIX + addr.encode()
        if len(text) <= 255 and text not in out:
            out.append(text)
    return out


def encode_response(
    instance: str, addrs: Sequence[str], ips: Sequence[str], *, ttl: int = TTL, query_id: int = 0
) -> bytes:
    """The answer to a browse: PTR (answer), then SRV, TXT and A/AAAA (additional), in one message.

    ``addrs`` are full multiaddrs ending in /p2p/<peer id>; ``ips`` the host's addresses. ``ttl=0``
    is the goodbye (RFC 6762 section 10.1).
    """
    instance_name = f"{instance}.{SERVICE}"
    host = f"{instance}.local."
    texts = txt_strings(addrs)
    txt = b"".join(bytes([len(t)]) + t for t in texts) or b"\x00"
    answers = [_record(SERVICE, TYPE_PTR, encode_name(instance_name), ttl)]
    extra = [
        _record(instance_name, TYPE_SRV, struct.pack("!HHH", 0, 0, 4001) + encode_name(host), ttl, True),
        _record(instance_name, TYPE_TXT, txt, ttl, True),
    ]
    for ip in ips:
        parsed = ipaddress.ip_address(ip)
        rtype = TYPE_A if parsed.version == 4 else TYPE_AAAA
        extra.append(_record(host, rtype, parsed.packed, ttl, True))
    header = _HEADER.pack(query_id, FLAG_RESPONSE, 0, len(answers), 0, len(extra))
    packet = header + b"".join(answers) + b"".join(extra)
    if len(packet) > MAX_PACKET:
        raise MdnsError(f"mDNS response of {len(packet)} bytes is over {MAX_PACKET}")
    return packet


# --- decoding -----------------------------------------------------------------------------------


def _decode_name(packet: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    length = 0
    while True:
        if pos >= len(packet):
            raise MdnsError("DNS name runs past the end of the packet")
        size = packet[pos]
        if size & 0xC0 == 0xC0:
            if pos + 1 >= len(packet):
                raise MdnsError("truncated DNS name pointer")
            jumps += 1
            if jumps > _MAX_POINTER_JUMPS:
                raise MdnsError("DNS name pointers loop")
            if end is None:
                end = pos + 2
            pos = ((size & 0x3F) << 8) | packet[pos + 1]
            continue
        if size & 0xC0:
            raise MdnsError(f"unknown DNS label type {size:#x}")
        pos += 1
        if size == 0:
            break
        label = packet[pos : pos + size]
        if len(label) != size:
            raise MdnsError("DNS label runs past the end of the packet")
        length += size + 1
        if length > 255:
            raise MdnsError("DNS name over 255 bytes")
        labels.append(label.decode("utf-8", "replace").lower())
        pos += size
    return ".".join(labels) + ".", end if end is not None else pos


def decode_message(packet: bytes) -> Message:
    if len(packet) < _HEADER.size:
        raise MdnsError(f"mDNS packet of {len(packet)} bytes is shorter than a DNS header")
    if len(packet) > MAX_PACKET:
        raise MdnsError(f"mDNS packet of {len(packet)} bytes is over {MAX_PACKET}")
    msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(packet)
    if qdcount + ancount + nscount + arcount > _MAX_RECORDS:
        raise MdnsError("mDNS packet declares too many entries")
    pos = _HEADER.size
    questions = []
    for _ in range(qdcount):
        name, pos = _decode_name(packet, pos)
        if pos + 4 > len(packet):
            raise MdnsError("truncated DNS question")
        rtype, klass = struct.unpack_from("!HH", packet, pos)
        pos += 4
        questions.append(Question(name, rtype, bool(klass & UNICAST_RESPONSE)))
    records = []
    for _ in range(ancount + nscount + arcount):
        name, pos = _decode_name(packet, pos)
        if pos + 10 > len(packet):
            raise MdnsError("truncated DNS record header")
        rtype, klass, ttl, size = struct.unpack_from("!HHIH", packet, pos)
        pos += 10
        if pos + size > len(packet):
            raise MdnsError("DNS record data runs past the end of the packet")
        rdata = packet[pos : pos + size]
        target = ""
        if rtype == TYPE_PTR:
            target, _ = _decode_name(packet, pos)
        elif rtype == TYPE_SRV:
            if size < 7:
                raise MdnsError("SRV record too short")
            target, _ = _decode_name(packet, pos + 6)
        elif rtype == TYPE_TXT and not _valid_txt(rdata):
            raise MdnsError("TXT record strings run past the record")
        pos += size
        records.append(Record(name, rtype, ttl, rdata, target, bool(klass & CACHE_FLUSH)))
    return Message(msg_id, flags, questions, records)


def _valid_txt(data: bytes) -> bool:
    pos = 0
    while pos < len(data):
        pos += 1 + data[pos]
    return pos == len(data)


def asks_for_peers(message: Message) -> Question | None:
    """The question of a query that a libp2p peer answers (PTR or ANY of the service), if any."""
    if message.is_response:
        return None
    for question in message.questions:
        if question.name == SERVICE and question.type in (TYPE_PTR, TYPE_ANY):
            return question
    return None


def peers_in(message: Message) -> dict[str, list[str]]:
    """Peer ID -> multiaddrs (with /p2p/<id>) from the ``dnsaddr=`` TXT records of instances of the
    service in a response; TTL 0 (goodbye) records and strings that are not multiaddrs are skipped."""
    if not message.is_response:
        return {}
    found: dict[str, list[str]] = {}
    for record in message.records:
        if record.type != TYPE_TXT or record.ttl == 0 or not record.name.endswith("." + SERVICE):
            continue
        for text in record.texts:
            if not text.startswith(DNSADDR_PREFIX):
                continue
            addr = text[len(DNSADDR_PREFIX) :].decode("utf-8", "replace")
            head, sep, peer = addr.rpartition("/p2p/")
            if not sep or not head or "/" in peer or not peer:
                continue
            try:
                from multiaddr import Multiaddr

                Multiaddr(addr)
            except Exception:
                continue
            addrs = found.setdefault(peer, [])
            if addr not in addrs:
                addrs.append(addr)
    return found
