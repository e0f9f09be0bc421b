"""IPNS records as ipfs/specs ``ipns/ipns-record.md`` defines them: a pure codec, no I/O.

- :class:`IpnsName`: the multihash of a public key; shown as a CIDv1 ``libp2p-key`` in base36
  (``k51...``), routed under ``/ipns/<multihash bytes>``.
- :func:`create_record`: an ``IpnsEntry`` protobuf whose ``data`` is the DAG-CBOR map
  ``{Sequence, TTL, Validity, ValidityType, Value}`` signed with ``signatureV2`` (Ed25519 over
  ``"ipns-signature:" + data``), with the legacy V1 copies and ``signatureV1`` when asked (the spec's
  "Record Creation with Legacy SignatureV1"), at most 10 KiB.
- :func:`verify_record`: the spec's "Record Verification", in its order, failing on the first error:
  size, V2 fields present, public key (``pubKey`` checked against the name, or inlined in an identity
  multihash name), DAG-CBOR data, ``signatureV2``, V1 fields equal to the signed data, EOL not past.
  ``signatureV1`` is never used.
- :func:`select_best`: highest sequence wins, then the longest validity; a tie keeps the first.

Every failure is an :class:`IpnsError` (subclasses say which kind) whose message says what is wrong.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dag_cbor
from libp2p.crypto.keys import PrivateKey, PublicKey
from libp2p.crypto.serialization import deserialize_public_key

from ipfsreg import protowire
from ipfsreg.cid import CID, IDENTITY, LIBP2P_KEY, CIDError, b58decode, b58encode, encode_varint, multihash

MAX_RECORD_SIZE: Final = 10 * 1024
SIGNATURE_PREFIX: Final = b"ipns-signature:"
ROUTING_PREFIX: Final = b"/ipns/"
VALIDITY_EOL: Final = 0
NANOSECONDS: Final = 1_000_000_000
DEFAULT_TTL_NS: Final = 300 * NANOSECONDS  # the spec's suggested default
MEDIA_TYPE: Final = "application/vnd.ipfs.ipns-record"
# An identity multihash may inline a public key of up to 42 bytes (libp2p peer-ID rule).
MAX_INLINE_KEY: Final = 42
_MAX_U64: Final = (1 << 64) - 1


class IpnsError(ValueError):
    """An IPNS name or record is unusable; the message says what is wrong with it."""


class InvalidName(IpnsError):
    """Text or bytes that are not an IPNS name."""


class InvalidRecord(IpnsError):
    """A record that is malformed, unsigned, signed by another key or inconsistent."""


class RecordExpired(InvalidRecord):
    """A well-formed, correctly signed record whose validity (EOL) has passed."""


class NameNotFound(IpnsError):
    """No record of the name is known here or in the network."""


# --- names --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpnsName:
    """An IPNS name: the multihash of a serialized libp2p ``PublicKey`` (identity-inlined for Ed25519)."""

    multihash: bytes

    @classmethod
    def from_public_key(cls, key: PublicKey) -> IpnsName:
        return cls.of_serialized_key(key.serialize())

    @classmethod
    def of_serialized_key(cls, serialized: bytes) -> IpnsName:
        """The peer-ID rule: keys of up to 42 bytes are inlined (identity), longer ones hashed."""
        if len(serialized) <= MAX_INLINE_KEY:
            return cls(multihash(serialized, IDENTITY))
        return cls(multihash(serialized))

    @classmethod
    def parse(cls, text: str) -> IpnsName:
        """A name as ``k51...`` (any multibase CIDv1 libp2p-key) or a base58 peer ID, ``/ipns/`` optional."""
        original = text
        text = text.strip()
        if text.startswith("/ipns/"):
            text = text[len("/ipns/") :]
        text = text.rstrip("/")
        if not text:
            raise InvalidName("empty IPNS name")
        if "/" in text:
            raise InvalidName(f"an IPNS name has no path: {original[:100]!r}")
        if text.startswith(("12D3Koo", "Qm", "1")):
            try:
                return cls._from_multihash(b58decode(text), original)
            except (CIDError, ValueError):
                pass
        try:
            cid = CID.parse(text)
        except CIDError as exc:
            raise InvalidName(f"{original[:100]!r} is not an IPNS name: {exc}") from None
        if cid.version != 1 or cid.codec != LIBP2P_KEY:
            raise InvalidName(f"{original[:100]!r} is a {cid.codec_name} CID, not a libp2p-key name (k51...)")
        return cls._from_multihash(cid.multihash, original)

    @classmethod
    def from_routing_key(cls, key: bytes) -> IpnsName:
        """The name of a DHT key ``/ipns/<multihash bytes>``."""
        if not key.startswith(ROUTING_PREFIX):
            raise InvalidName(f"not an /ipns/ routing key: {key[:40]!r}")
        return cls._from_multihash(key[len(ROUTING_PREFIX) :], repr(key[:60]))

    @classmethod
    def _from_multihash(cls, mh: bytes, what: str) -> IpnsName:
        from ipfsreg.cid import split_multihash

        try:
            code, digest = split_multihash(mh)
        except CIDError as exc:
            raise InvalidName(f"{what[:100]} is not a multihash: {exc}") from None
        if code not in (IDENTITY, 0x12):
            raise InvalidName(f"{what[:100]}: unsupported multihash 0x{code:x} for an IPNS name")
        if code == IDENTITY and len(digest) > MAX_INLINE_KEY:
            raise InvalidName(f"{what[:100]}: inlined key longer than {MAX_INLINE_KEY} bytes")
        return cls(bytes(mh))

    @property
    def cid(self) -> CID:
        return CID.v1(LIBP2P_KEY, self.multihash)

    def routing_key(self) -> bytes:
        """The DHT key: ``/ipns/`` + the binary multihash (the spec's "Routing Record")."""
        return ROUTING_PREFIX + self.multihash

    def peer_id(self) -> str:
        """The same multihash as a base58btc peer ID (``12D3KooW...`` for Ed25519)."""
        return b58encode(self.multihash)

    def inlined_key(self) -> bytes | None:
        """The serialized public key inlined in an identity multihash, else None."""
        if self.multihash[0] != IDENTITY:
            return None
        from ipfsreg.cid import split_multihash

        return split_multihash(self.multihash)[1]

    def __str__(self) -> str:
        from multiformats import multibase

        return str(multibase.encode(self.cid.to_bytes(), "base36"))


# --- RFC 3339 validity ------------------------------------------------------------------------

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def format_validity(eol_ns: int) -> bytes:
    """Nanoseconds since the epoch as Go's ``time.RFC3339Nano`` in UTC (what Kubo/boxo write):
    trailing zeros of the fraction dropped, no fraction at all on a whole second."""
    seconds, nanos = divmod(eol_ns, NANOSECONDS)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return (text + "Z").encode()


def parse_validity(value: bytes) -> int:
    """An RFC 3339 timestamp (nanosecond precision) as nanoseconds since the epoch."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRecord("Validity is not ASCII") from None
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidRecord(f"Validity {text[:60]!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise InvalidRecord(f"Validity {text!r} is not a valid date and time")
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        time.strptime(f"{year:04d}-{month:02d}-{day:02d}", "%Y-%m-%d")
    except (ValueError, OverflowError):
        raise InvalidRecord(f"Validity {text!r} is not a valid date") from None
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * NANOSECONDS + nanos


# --- protobuf IpnsEntry -----------------------------------------------------------------------

_F_VALUE, _F_SIGNATURE_V1, _F_VALIDITY_TYPE, _F_VALIDITY = 1, 2, 3, 4
_F_SEQUENCE, _F_TTL, _F_PUB_KEY, _F_SIGNATURE_V2, _F_DATA = 5, 6, 7, 8, 9
_BYTES_FIELDS: Final = {_F_VALUE, _F_SIGNATURE_V1, _F_VALIDITY, _F_PUB_KEY, _F_SIGNATURE_V2, _F_DATA}
_VARINT_FIELDS: Final = {_F_VALIDITY_TYPE, _F_SEQUENCE, _F_TTL}


def _entry_error(reason: str) -> InvalidRecord:
    return InvalidRecord(f"IpnsEntry protobuf: {reason}")


def _decode_entry(buf: bytes) -> dict[int, bytes | int]:
    """The IpnsEntry fields present (last occurrence wins, as protobuf says); unknown fields skipped."""
    fields: dict[int, bytes | int] = {}
    view = memoryview(buf)
    for number, wire, value, end in protowire.fields(view, 0, len(view), _entry_error):
        if wire == protowire.VARINT:
            if number in _BYTES_FIELDS:
                raise _entry_error(f"field {number} must be bytes, got a varint")
            if number in _VARINT_FIELDS:
                fields[number] = value
        elif wire == protowire.LEN:
            if number in _VARINT_FIELDS:
                raise _entry_error(f"field {number} must be a varint, got bytes")
            if number in _BYTES_FIELDS:
                fields[number] = bytes(view[value:end])
    return fields


def _bytes_field(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IpnsRecord:
    """A decoded record. Its fields come from the signed ``data``; ``raw`` is the wire form."""

    value: bytes
    sequence: int
    validity: bytes
    validity_type: int
    ttl: int  # nanoseconds
    data: bytes
    signature_v2: bytes
    pub_key: bytes | None
    has_v1: bool
    raw: bytes = field(repr=False)

    @property
    def eol_ns(self) -> int:
        """The end of validity in nanoseconds since the epoch."""
        return parse_validity(self.validity)

    @property
    def value_text(self) -> str:
        return self.value.decode("utf-8", errors="replace")

    def expired(self, now_ns: int | None = None) -> bool:
        return (time.time_ns() if now_ns is None else now_ns) >= self.eol_ns


def encode_data(
    value: bytes, validity: bytes, sequence: int, ttl: int, extra: dict[str, Any] | None = None
) -> bytes:
    """The DAG-CBOR ``data`` document (keys in DAG-CBOR order: length, then bytewise)."""
    document: dict[str, Any] = dict(extra or {})
    document.update(
        {"Value": value, "Validity": validity, "ValidityType": VALIDITY_EOL, "Sequence": sequence, "TTL": ttl}
    )
    return bytes(dag_cbor.encode(document))


def create_record(
    private_key: PrivateKey,
    value: str | bytes,
    sequence: int,
    eol_ns: int,
    ttl_ns: int = DEFAULT_TTL_NS,
    *,
    v1_compatible: bool = True,
    embed_public_key: bool = False,
) -> bytes:
    """A signed, serialized IpnsEntry. ``embed_public_key`` fills ``pubKey`` (needed only for keys
    that the name cannot inline; Ed25519 names inline theirs)."""
    value_bytes = value.encode() if isinstance(value, str) else bytes(value)
    if not 0 <= sequence <= _MAX_U64:
        raise IpnsError(f"sequence {sequence} is not a uint64")
    if not 0 <= ttl_ns <= _MAX_U64:
        raise IpnsError(f"TTL {ttl_ns} is not a uint64")
    if eol_ns < 0:
        raise IpnsError("the validity must not be before 1970")
    validity = format_validity(eol_ns)
    data = encode_data(value_bytes, validity, sequence, ttl_ns)
    signature_v2 = private_key.sign(SIGNATURE_PREFIX + data)
    parts: list[bytes] = []
    if v1_compatible:
        signature_v1 = private_key.sign(value_bytes + validity + b"EOL")
        parts += [
            _bytes_field(_F_VALUE, value_bytes),
            _bytes_field(_F_SIGNATURE_V1, signature_v1),
            _varint_field(_F_VALIDITY_TYPE, VALIDITY_EOL),
            _bytes_field(_F_VALIDITY, validity),
            _varint_field(_F_SEQUENCE, sequence),
            _varint_field(_F_TTL, ttl_ns),
        ]
    if embed_public_key:
        parts.append(_bytes_field(_F_PUB_KEY, private_key.get_public_key().serialize()))
    parts += [_bytes_field(_F_SIGNATURE_V2, signature_v2), _bytes_field(_F_DATA, data)]
    raw = b"".join(parts)
    if len(raw) > MAX_RECORD_SIZE:
        raise IpnsError(f"the record is {len(raw)} bytes, over the {MAX_RECORD_SIZE}-byte limit")
    return raw


def _data_fields(data: bytes) -> dict[str, Any]:
    try:
        decoded = dag_cbor.decode(data)
    except Exception as exc:  # dag_cbor raises several error types for malformed input
        raise InvalidRecord(f"data is not DAG-CBOR: {exc}") from None
    if not isinstance(decoded, dict):
        raise InvalidRecord(f"data must be a DAG-CBOR map, got {type(decoded).__name__}")
    document: dict[str, Any] = decoded
    for key, kind in (("Value", bytes), ("Validity", bytes), ("ValidityType", int), ("Sequence", int)):
        if key not in document:
            raise InvalidRecord(f"data has no {key}")
        if not isinstance(document[key], kind) or isinstance(document[key], bool):
            raise InvalidRecord(f"data {key} must be {kind.__name__}, got {type(document[key]).__name__}")
    ttl = document.get("TTL", 0)
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        raise InvalidRecord(f"data TTL must be an integer, got {type(ttl).__name__}")
    for key in ("ValidityType", "Sequence", "TTL"):
        number = document.get(key, 0)
        if not 0 <= number <= _MAX_U64:
            raise InvalidRecord(f"data {key} {number} is not a uint64")
    return document


def decode_record(raw: bytes) -> IpnsRecord:
    """Parse a serialized IpnsEntry and its signed data (steps 1, 2 and 4 of verification; no signature
    check: use :func:`verify_record` before trusting it)."""
    raw = bytes(raw)
    if len(raw) > MAX_RECORD_SIZE:
        raise InvalidRecord(f"the record is {len(raw)} bytes, over the {MAX_RECORD_SIZE}-byte limit")
    if not raw:
        raise InvalidRecord("the record is empty")
    fields = _decode_entry(raw)
    signature_v2 = fields.get(_F_SIGNATURE_V2, b"")
    data = fields.get(_F_DATA, b"")
    assert isinstance(signature_v2, bytes) and isinstance(data, bytes)
    if not signature_v2:
        raise InvalidRecord("the record has no signatureV2 (a V1-only record is not valid)")
    if not data:
        raise InvalidRecord("the record has no data (a V1-only record is not valid)")
    document = _data_fields(data)
    pub_key = fields.get(_F_PUB_KEY)
    assert pub_key is None or isinstance(pub_key, bytes)
    has_v1 = _F_SIGNATURE_V1 in fields or _F_VALUE in fields
    record = IpnsRecord(
        value=document["Value"],
        sequence=document["Sequence"],
        validity=document["Validity"],
        validity_type=document["ValidityType"],
        ttl=document.get("TTL", 0),
        data=data,
        signature_v2=signature_v2,
        pub_key=pub_key or None,
        has_v1=has_v1,
        raw=raw,
    )
    if has_v1:
        _check_v1_matches(fields, record)
    return record


def _check_v1_matches(fields: dict[int, bytes | int], record: IpnsRecord) -> None:
    """Step 7: with V1 fields present, each must equal its signed copy (absent fields read as their
    protobuf default, as boxo's getters do)."""
    pairs: tuple[tuple[str, int, bytes | int], ...] = (
        ("value", _F_VALUE, record.value),
        ("validity", _F_VALIDITY, record.validity),
        ("validityType", _F_VALIDITY_TYPE, record.validity_type),
        ("sequence", _F_SEQUENCE, record.sequence),
        ("ttl", _F_TTL, record.ttl),
    )
    for label, number, signed in pairs:
        default: bytes | int = b"" if isinstance(signed, bytes) else 0
        if fields.get(number, default) != signed:
            raise InvalidRecord(f"the V1 field {label} does not match the signed data")


def public_key_for(record: IpnsRecord, name: IpnsName) -> PublicKey:
    """Step 3: ``pubKey`` when present (it must hash to the name), else the key inlined in the name."""
    if record.pub_key is not None:
        try:
            key = deserialize_public_key(record.pub_key)
        except Exception as exc:
            raise InvalidRecord(f"pubKey is not a libp2p public key: {exc}") from None
        owner = IpnsName.of_serialized_key(record.pub_key)
        if owner != name:
            raise InvalidRecord(f"pubKey belongs to {owner}, not to {name}")
        return key
    inlined = name.inlined_key()
    if inlined is None:
        raise InvalidRecord(f"{name} does not inline its public key and the record carries no pubKey")
    try:
        return deserialize_public_key(inlined)
    except Exception as exc:
        raise InvalidName(f"{name} inlines no usable public key: {exc}") from None


def verify_record(
    raw: bytes, name: IpnsName, *, now_ns: int | None = None, allow_expired: bool = False
) -> IpnsRecord:
    """Decode and verify ``raw`` as a record of ``name`` (the spec's "Record Verification")."""
    record = decode_record(raw)
    key = public_key_for(record, name)
    try:
        good = key.verify(SIGNATURE_PREFIX + record.data, record.signature_v2)
    except Exception:
        good = False
    if not good:
        raise InvalidRecord(f"signatureV2 is not a signature of this record by the key of {name}")
    if record.validity_type != VALIDITY_EOL:
        raise InvalidRecord(f"unsupported ValidityType {record.validity_type} (only 0, EOL, exists)")
    eol = record.eol_ns
    if not allow_expired and (time.time_ns() if now_ns is None else now_ns) >= eol:
        raise RecordExpired(f"the record of {name} expired at {record.validity.decode()}")
    return record


def compare(a: IpnsRecord, b: IpnsRecord) -> int:
    """>0 if ``a`` is the better record (higher sequence, then later EOL), <0 if ``b`` is, 0 if equal."""
    if a.sequence != b.sequence:
        return 1 if a.sequence > b.sequence else -1
    ea, eb = a.eol_ns, b.eol_ns
    return (ea > eb) - (ea < eb)


def select_best(records: Sequence[IpnsRecord]) -> int:
    """Index of the best of ``records`` (already verified); the first of equals wins."""
    if not records:
        raise IpnsError("no records to select from")
    best = 0
    for index in range(1, len(records)):
        if compare(records[index], records[best]) > 0:
            best = index
    return best


def value_cid(record: IpnsRecord) -> tuple[CID, str]:
    """The CID and remaining path of an ``/ipfs/<cid>[/path]`` value."""
    text = record.value_text
    if not text.startswith("/ipfs/"):
        raise IpnsError(f"the record's value {text[:100]!r} is not an /ipfs/ path")
    cid_text, _, rest = text[len("/ipfs/") :].partition("/")
    try:
        return CID.parse(cid_text), rest
    except CIDError as exc:
        raise IpnsError(f"the record's value {text[:100]!r} names no valid CID: {exc}") from None
