"""What the Routing V1 API needs to know of an IPNS record: its DHT key, and its TTL and validity for
the cache headers (read with ipfsreg/ipns/record.py). Validation (signature, sequence, expiry) is
the injected validator's job. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from ipfsreg.cid import CID, LIBP2P_KEY, CIDError
from ipfsreg.ipns.record import VALIDITY_EOL, IpnsError, decode_record
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
    """TTL and expiry of a record for the cache headers (None for what it does not set, or when it
    does not decode: the validator, not this, rejects bad records)."""
    try:
        decoded = decode_record(record)
        eol_ns = decoded.eol_ns if decoded.validity_type == VALIDITY_EOL else None
    except IpnsError:
        return RecordTimes(None, None)
    ttl = decoded.ttl / 1e9 if decoded.ttl > 0 else None
    expires = datetime.fromtimestamp(eol_ns / 1e9, UTC) if eol_ns is not None else None
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
