"""The Routing V1 HTTP API's records as pure functions (ipfs/specs src/routing/http-routing-v1.md).

Peer records (``{"Schema": "peer", "ID", "Addrs", "Protocols"}``) to and from JSON and NDJSON,
peer ID and multiaddr validation, IPIP-484's ``filter-addrs`` / ``filter-protocols``, and the cache
headers of each answer. Shared by the server on the registry port (ipfsreg/routing_v1/server.py)
and the client (ipfsreg/node/routing/http_client.py); no I/O, no libp2p.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from multiaddr import Multiaddr

from ipfsreg.cid import CID, IDENTITY, LIBP2P_KEY, SHA2_256, CIDError, b58decode, b58encode, split_multihash

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
IPNS_RECORD: Final = "application/vnd.ipfs.ipns-record"
PEER_SCHEMA: Final = "peer"
BITSWAP: Final = "transport-bitswap"
#: JSON answers hold at most this many records (the spec's SHOULD); NDJSON streams may hold more.
JSON_RECORD_LIMIT: Final = 100
MAX_PROTOCOL_NAME: Final = 63
#: Cache lifetimes the spec suggests: 5 minutes with results, 15 s without, stale for 48 h (the
#: provider record expiry of the Amino DHT).
TTL_FOUND: Final = 300
TTL_NOT_FOUND: Final = 15
MAX_STALE: Final = 172800
UNKNOWN: Final = "unknown"


class RecordError(ValueError):
    """A Routing V1 record, peer ID, multiaddr or filter that does not conform to the spec."""


def parse_peer_id(text: str) -> str:
    """A peer ID as base58btc multihash (``12D3Koo...``, ``Qm...``) or CIDv1 libp2p-key (``bafz...``,
    ``k51...``), returned as the base58btc multihash string. RecordError otherwise."""
    if not isinstance(text, str) or not text or len(text) > 256:
        raise RecordError(f"not a peer ID: {str(text)[:80]!r}")
    try:
        if text[0] in "1Q":
            mh = b58decode(text)
        else:
            cid = CID.parse(text)
            if cid.version != 1 or cid.codec != LIBP2P_KEY:
                raise RecordError(f"not a peer ID: {text[:80]!r} is a CID but not of a libp2p-key")
            mh = cid.multihash
        code, digest = split_multihash(mh)
    except (CIDError, ValueError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"not a peer ID: {text[:80]!r} ({exc})") from None
    if code == SHA2_256 and len(digest) == 32:
        return b58encode(mh)
    if code == IDENTITY and 0 < len(digest) <= 128:
        return b58encode(mh)
    raise RecordError(f"not a peer ID: {text[:80]!r} (multihash must be sha2-256 or an inline key)")


def peer_id_bytes(peer_id: str) -> bytes:
    """The multihash bytes of a peer ID (any accepted form)."""
    return b58decode(parse_peer_id(peer_id))


def parse_multiaddr(text: str) -> str:
    """A multiaddr in its canonical text form; RecordError when it does not parse."""
    if not isinstance(text, str) or not text.startswith("/") or len(text) > 1024:
        raise RecordError(f"not a multiaddr: {str(text)[:80]!r}")
    try:
        return str(Multiaddr(text))
    except Exception as exc:
        raise RecordError(f"not a multiaddr: {text[:80]!r} ({exc})") from None


@dataclass(frozen=True)
class PeerRecord:
    """A ``peer`` schema record. ``extra`` keeps fields this code does not know (the spec says to
    preserve them)."""

    peer_id: str
    addrs: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update({"Schema": PEER_SCHEMA, "ID": self.peer_id, "Addrs": list(self.addrs)})
        if self.protocols:
            out["Protocols"] = list(self.protocols)
        return out


def peer_record(peer_id: str, addrs: Iterable[str], protocols: Sequence[str] = (BITSWAP,)) -> PeerRecord:
    """A checked record for a peer: bad addresses are dropped, a bad peer ID raises RecordError."""
    valid: list[str] = []
    for addr in addrs:
        try:
            canonical = parse_multiaddr(addr)
        except RecordError:
            continue
        if canonical not in valid:
            valid.append(canonical)
    return PeerRecord(parse_peer_id(peer_id), valid, list(protocols))


def decode_record(obj: Any) -> PeerRecord | None:
    """A record from its JSON object; None for a schema other than ``peer`` (to be skipped).

    RecordError when a peer record is malformed: no or a bad ``ID``, ``Addrs`` or ``Protocols``
    that are not lists of strings. Addresses that do not parse are dropped, not fatal (the
    record is still useful for an ID lookup).
    """
    if not isinstance(obj, dict):
        raise RecordError("a record must be a JSON object")
    if obj.get("Schema") != PEER_SCHEMA:
        return None
    peer_id = parse_peer_id(obj.get("ID"))  # type: ignore[arg-type]
    addrs = obj.get("Addrs") or []
    protocols = obj.get("Protocols") or []
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise RecordError(f"record of {peer_id}: Addrs must be a list of strings")
    if not isinstance(protocols, list) or not all(
        isinstance(p, str) and 0 < len(p) <= MAX_PROTOCOL_NAME for p in protocols
    ):
        raise RecordError(f"record of {peer_id}: Protocols must be a list of short strings")
    valid: list[str] = []
    for addr in addrs:
        try:
            valid.append(parse_multiaddr(addr))
        except RecordError:
            continue
    extra = {k: v for k, v in obj.items() if k not in ("Schema", "ID", "Addrs", "Protocols")}
    return PeerRecord(peer_id, valid, list(protocols), extra)


def encode_json(kind: str, records: Iterable[PeerRecord]) -> bytes:
    """The ``application/json`` body: ``{"Providers": [...]}`` or ``{"Peers": [...]}``."""
    return json.dumps({kind: [r.to_json() for r in records]}, separators=(",", ":")).encode()


def encode_ndjson(record: PeerRecord) -> bytes:
    """One line of an ``application/x-ndjson`` stream."""
    return json.dumps(record.to_json(), separators=(",", ":")).encode() + b"\n"


def decode_json(kind: str, body: bytes) -> tuple[list[PeerRecord], list[str]]:
    """The records of an ``application/json`` body, and the reasons records were skipped.

    RecordError if the body itself is not ``{kind: [...]}`` JSON (``null`` counts as empty).
    """
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise RecordError(f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"the body is not a JSON object with {kind!r}")
    items = obj.get(kind)
    if items is None:
        return [], []
    if not isinstance(items, list):
        raise RecordError(f"{kind!r} is not a list")
    return _decode_all(items)


def decode_ndjson_line(line: bytes) -> PeerRecord | None:
    """One NDJSON line's record (None for a blank line or another schema); RecordError if malformed."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise RecordError(f"an NDJSON line is not JSON: {exc}") from None
    return decode_record(obj)


def _decode_all(items: list[Any]) -> tuple[list[PeerRecord], list[str]]:
    records: list[PeerRecord] = []
    skipped: list[str] = []
    for item in items:
        try:
            record = decode_record(item)
        except RecordError as exc:
            skipped.append(str(exc))
            continue
        if record is not None:
            records.append(record)
    return records, skipped


# --- IPIP-484 filters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """``?filter-addrs=`` and ``?filter-protocols=`` parsed (lower-cased; empty: no filter)."""

    addrs_include: frozenset[str] = frozenset()
    addrs_exclude: frozenset[str] = frozenset()
    protocols: frozenset[str] = frozenset()

    @property
    def filters_addrs(self) -> bool:
        return bool(self.addrs_include or self.addrs_exclude)

    def query(self) -> dict[str, str]:
        """The query parameters that ask a server for these filters."""
        out: dict[str, str] = {}
        if self.filters_addrs:
            names = sorted(self.addrs_include) + ["!" + n for n in sorted(self.addrs_exclude)]
            out["filter-addrs"] = ",".join(names)
        if self.protocols:
            out["filter-protocols"] = ",".join(sorted(self.protocols))
        return out


def parse_filters(filter_addrs: str | None, filter_protocols: str | None) -> Filters:
    include: set[str] = set()
    exclude: set[str] = set()
    for name in _names(filter_addrs):
        if name.startswith("!"):
            if len(name) == 1:
                raise RecordError("filter-addrs has an empty negated name ('!')")
            exclude.add(name[1:])
        else:
            include.add(name)
    protocols = set(_names(filter_protocols))
    for name in protocols:
        if len(name) > MAX_PROTOCOL_NAME:
            raise RecordError(f"filter-protocols names are at most {MAX_PROTOCOL_NAME} characters")
    return Filters(frozenset(include), frozenset(exclude), frozenset(protocols))


def _names(value: str | None) -> list[str]:
    if not value:
        return []
    return [n.strip().lower() for n in value.split(",") if n.strip()]


def _addr_protocols(addr: str) -> set[str]:
    try:
        return {p.name.lower() for p in Multiaddr(addr).protocols()}
    except Exception:
        return set()


def apply_filters(record: PeerRecord, filters: Filters) -> PeerRecord | None:
    """``record`` as the filters let it through (only matching addresses kept), or None to omit it."""
    if filters.protocols:
        names = {p.lower() for p in record.protocols}
        if not (names & filters.protocols or (not names and UNKNOWN in filters.protocols)):
            return None
    if not filters.filters_addrs:
        return record
    if not record.addrs:
        return record if UNKNOWN in filters.addrs_include else None
    include = filters.addrs_include - {UNKNOWN}
    kept = []
    for addr in record.addrs:
        names = _addr_protocols(addr)
        if names & filters.addrs_exclude:
            continue
        if include and not names & include:
            continue
        kept.append(addr)
    if not kept:
        return None
    return PeerRecord(record.peer_id, kept, record.protocols, record.extra)


# --- HTTP caching -------------------------------------------------------------------------------


def cache_headers(found: bool, now: datetime | None = None) -> dict[str, str]:
    """Cache-Control, Last-Modified and Vary of a providers or peers answer."""
    ttl = TTL_FOUND if found else TTL_NOT_FOUND
    stale = f"stale-while-revalidate={MAX_STALE}, stale-if-error={MAX_STALE}"
    return {
        "Cache-Control": f"public, max-age={ttl}, {stale}",
        "Last-Modified": http_date(now),
        "Vary": "Accept",
    }


def http_date(when: datetime | None = None) -> str:
    return format_datetime((when or datetime.now(UTC)).astimezone(UTC), usegmt=True)
