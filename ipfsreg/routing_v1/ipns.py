"""What the Routing V1 API needs to know of an IPNS record: its DHT key, and its TTL and validity for
the cache headers. Validation (signature, sequence, expiry) is the injected validator's job.

An IpnsEntry is protobuf (ipfs/specs ipns-record.md): validity type 3, validity 4 (RFC 3339), TTL
6 (nanoseconds), and the same fields in the DAG-CBOR ``data`` (field 9) of V2 records, which is
read when the V1 fields are absent. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import dag_cbor

from ipfsreg.cid import CID, LIBP2P_KEY, CIDError, decode_varint
from ipfsreg.routing_v1.records import RecordError, peer_id_bytes

IPNS_PREFIX: Final = b"/ipns/"
#: Largest IPNS record accepted (the spec's limit is 10 KiB).
MAX_RECORD_SIZE: Final = 10 * 1024
DEFAULT_TTL: Final = 60.0


@dataclass(frozen=True)
class RecordTimes:
    ttl: float | None  # seconds, when the record sets one
    expires: datetime | None  # end of validity (EOL validity type)


def ipns_key(name: str) -> bytes:
    """The routing key ``/ipns/<multihash>`` of an IPNS name (CIDv1 libp2p-key, or a peer ID)."""
    text = name.strip()
    if text.startswith("/ipns/"):
        text = text[len("/ipns/") :]
    try:
        cid = CID.parse(text) if text[:1] not in ("1", "Q") else None
    except CIDError as exc:
        raise RecordError(f"not an IPNS name: {name[:80]!r} ({exc})") from None
    if cid is not None and (cid.version != 1 or cid.codec != LIBP2P_KEY):
        raise RecordError(f"not an IPNS name: {name[:80]!r} is a CID but not of a libp2p-key")
    return IPNS_PREFIX + (cid.multihash if cid is not None else peer_id_bytes(text))


def record_times(record: bytes) -> RecordTimes:
    """TTL and expiry of a record for the cache headers; fields that are absent or unreadable are None."""
    fields = _protobuf_fields(record)
    ttl_ns = fields.get(6)
    validity = fields.get(4)
    validity_type = fields.get(3, 0)
    if (ttl_ns is None or validity is None) and isinstance(fields.get(9), bytes):
        try:
            data: Any = dag_cbor.decode(fields[9])
        except Exception:
            data = {}
        if isinstance(data, dict):
            ttl_ns = ttl_ns if ttl_ns is not None else data.get("TTL")
            validity = validity if validity is not None else data.get("Validity")
            validity_type = data.get("ValidityType", validity_type)
    ttl = ttl_ns / 1e9 if isinstance(ttl_ns, int) and ttl_ns > 0 else None
    expires = _rfc3339(validity) if validity_type == 0 and isinstance(validity, bytes) else None
    return RecordTimes(ttl, expires)


def cache_headers(record: bytes, now: datetime | None = None) -> dict[str, str]:
    """Cache-Control, Expires and Etag of an IPNS answer (the spec's IPNS response headers)."""
    import hashlib

    from ipfsreg.routing_v1.records import http_date

    now = now or datetime.now(UTC)
    times = record_times(record)
    max_age = round(times.ttl) if times.ttl else round(DEFAULT_TTL)
    headers = {
        "Etag": '"' + hashlib.sha256(record).hexdigest() + '"',
        "Last-Modified": http_date(now),
        "Vary": "Accept",
    }
    if times.expires is not None:
        remaining = max(0, int((times.expires - now).total_seconds()))
        max_age = min(max_age, remaining)
        control = f"public, max-age={max_age}, stale-while-revalidate={remaining}, stale-if-error={remaining}"
        headers["Expires"] = http_date(times.expires)
    else:
        control = f"public, max-age={max_age}"
    headers["Cache-Control"] = control
    return headers


def _rfc3339(raw: bytes) -> datetime | None:
    text = raw.decode("ascii", "replace").strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go writes nanoseconds; Python's parser takes at most microseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _protobuf_fields(data: bytes) -> dict[int, Any]:
    """Top-level varint and length-delimited fields of a protobuf message (last one wins); {} on
    malformed input (the validator, not this, rejects bad records)."""
    fields: dict[int, Any] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = decode_varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = decode_varint(data, pos)
                fields[number] = value
            elif wire == 2:
                length, pos = decode_varint(data, pos)
                if pos + length > len(data):
                    return {}
                fields[number] = bytes(data[pos : pos + length])
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return {}
    except (CIDError, ValueError, IndexError):
        return {}
    return fields
