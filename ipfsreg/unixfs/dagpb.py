"""The dag-pb codec (PBNode/PBLink), byte-for-byte as Kubo / go-codec-dagpb write it, decoded strictly.

Encoding follows go-codec-dagpb: every link is ``Hash, Name, Tsize`` in that order, links before ``Data``.
Kubo always writes ``Name`` (possibly empty) and ``Tsize``; this encoder writes whatever the link carries,
so pass ``name=""`` and a ``tsize`` to match Kubo. Decoding rejects what the dag-pb spec rejects: unknown
fields, wrong wire types, duplicate or out-of-order fields, ``Data`` before ``Links``, a link without a
``Hash`` and a ``Hash`` that is not a CID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ipfsreg.cid import CID, CIDError
from ipfsreg.unixfs._pb import read_bytes, read_uvarint, uvarint
from ipfsreg.unixfs.errors import InvalidNode

# Field tags (field number << 3 | wire type).
_NODE_DATA = 0x0A  # 1, bytes
_NODE_LINK = 0x12  # 2, bytes
_LINK_HASH = 0x0A  # 1, bytes
_LINK_NAME = 0x12  # 2, bytes
_LINK_TSIZE = 0x18  # 3, varint


@dataclass(frozen=True, slots=True)
class PBLink:
    """A dag-pb link. ``name``/``tsize`` of None mean the field is absent from the encoding."""

    cid: CID
    name: str | None = ""
    tsize: int | None = None

    @property
    def name_bytes(self) -> bytes:
        return b"" if self.name is None else encode_name(self.name)


@dataclass(frozen=True, slots=True)
class PBNode:
    """A dag-pb node. ``data`` of None means the Data field is absent."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def encode_name(name: str) -> bytes:
    """Link names are bytes on the wire; undecodable bytes round-trip through surrogateescape."""
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_link(link: PBLink) -> bytes:
    """One PBLink message body (without the outer PBNode tag and length)."""
    cid_bytes = link.cid.to_bytes()
    parts = [b"\x0a", uvarint(len(cid_bytes)), cid_bytes]
    if link.name is not None:
        raw = encode_name(link.name)
        parts += [b"\x12", uvarint(len(raw)), raw]
    if link.tsize is not None:
        parts += [b"\x18", uvarint(link.tsize)]
    return b"".join(parts)


def encode_node(links: Sequence[PBLink], data: bytes | bytearray | memoryview | None) -> bytes:
    """Serialise a PBNode: links in the given order, then Data (if not None)."""
    parts: list[bytes | bytearray | memoryview] = []
    for link in links:
        body = encode_link(link)
        parts += [b"\x12", uvarint(len(body)), body]
    if data is not None:
        parts += [b"\x0a", uvarint(len(data)), data]
    return b"".join(parts)


def encode(node: PBNode) -> bytes:
    return encode_node(node.links, node.data)


def sorted_links(links: Sequence[PBLink]) -> list[PBLink]:
    """Links in the order Kubo writes them: a stable sort by name bytes (files keep their order)."""
    return sorted(links, key=lambda link: link.name_bytes)


def _decode_link(buf: bytes) -> PBLink:
    pos = 0
    end = len(buf)
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    while pos < end:
        tag, pos = read_uvarint(buf, pos, "PBLink")
        field, wire = tag >> 3, tag & 7
        if field == 1:
            if cid is not None:
                raise InvalidNode("PBLink: duplicate Hash")
            if name is not None or tsize is not None:
                raise InvalidNode("PBLink: Hash after Name or Tsize")
            if wire != 2:
                raise InvalidNode(f"PBLink: wrong wire type {wire} for Hash")
            start, stop = read_bytes(buf, pos, "PBLink Hash")
            try:
                cid = CID.decode(buf[start:stop])
            except CIDError as exc:
                raise InvalidNode(f"PBLink: Hash is not a CID: {exc}") from None
            pos = stop
        elif field == 2:
            if name is not None:
                raise InvalidNode("PBLink: duplicate Name")
            if tsize is not None:
                raise InvalidNode("PBLink: Name after Tsize")
            if wire != 2:
                raise InvalidNode(f"PBLink: wrong wire type {wire} for Name")
            start, stop = read_bytes(buf, pos, "PBLink Name")
            name = decode_name(buf[start:stop])
            pos = stop
        elif field == 3:
            if tsize is not None:
                raise InvalidNode("PBLink: duplicate Tsize")
            if wire != 0:
                raise InvalidNode(f"PBLink: wrong wire type {wire} for Tsize")
            tsize, pos = read_uvarint(buf, pos, "PBLink Tsize")
        else:
            raise InvalidNode(f"PBLink: unknown field {field}")
    if cid is None:
        raise InvalidNode("PBLink: missing Hash")
    return PBLink(cid, name, tsize)


def decode(block: bytes | bytearray | memoryview) -> PBNode:
    """Parse a dag-pb block strictly (see the module docstring)."""
    buf = bytes(block)
    pos = 0
    end = len(buf)
    links: list[PBLink] = []
    data: bytes | None = None
    while pos < end:
        tag, pos = read_uvarint(buf, pos, "PBNode")
        field, wire = tag >> 3, tag & 7
        if wire != 2:
            raise InvalidNode(f"PBNode: wrong wire type {wire} for field {field}")
        start, stop = read_bytes(buf, pos, "PBNode")
        if field == 1:
            if data is not None:
                raise InvalidNode("PBNode: duplicate Data")
            data = buf[start:stop]
        elif field == 2:
            if data is not None:
                raise InvalidNode("PBNode: Links after Data")
            links.append(_decode_link(buf[start:stop]))
        else:
            raise InvalidNode(f"PBNode: unknown field {field}")
        pos = stop
    return PBNode(tuple(links), data)
