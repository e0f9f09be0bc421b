"""IPNS record codec against ipfs/specs ipns/ipns-record.md: creation, verification, selection, names."""

from __future__ import annotations

import contextlib
import time

import dag_cbor
import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.rsa import create_new_key_pair as rsa_key_pair

from ipfsreg.cid import CID
from ipfsreg.ipns.record import (
    MAX_RECORD_SIZE,
    NANOSECONDS,
    SIGNATURE_PREFIX,
    InvalidName,
    InvalidRecord,
    IpnsError,
    IpnsName,
    RecordExpired,
    _bytes_field,
    _decode_entry,
    _varint_field,
    create_record,
    decode_record,
    encode_data,
    format_validity,
    parse_validity,
    select_best,
    value_cid,
    verify_record,
)
from ipfsreg.ipns.validator import IpnsValidator

HOUR = 3600 * NANOSECONDS
VALUE = "/ipfs/bafkqaddwgevxmmraojswg33smq"


def key_and_name() -> tuple[Ed25519PrivateKey, IpnsName]:
    key = Ed25519PrivateKey.new()
    return key, IpnsName.from_public_key(key.get_public_key())


def later(hours: float = 1) -> int:
    return time.time_ns() + int(hours * HOUR)


def rebuild(raw: bytes, **replace: bytes | int | None) -> bytes:
    """The record ``raw`` with some protobuf fields replaced (None: removed), fields in number order."""
    numbers = {"value": 1, "signature_v1": 2, "validity_type": 3, "validity": 4, "sequence": 5, "ttl": 6}
    numbers.update({"pub_key": 7, "signature_v2": 8, "data": 9})
    fields = _decode_entry(raw)
    for label, new in replace.items():
        if new is None:
            fields.pop(numbers[label], None)
        else:
            fields[numbers[label]] = new
    out = b""
    for number in sorted(fields):
        value = fields[number]
        out += _varint_field(number, value) if isinstance(value, int) else _bytes_field(number, value)
    return out


# --- names ---------------------------------------------------------------------------------------


def test_ed25519_name_is_base36_libp2p_key_cid_inlining_the_public_key() -> None:
    key, name = key_and_name()
    text = str(name)
    assert text.startswith("k51") and text == text.lower()
    assert CID.parse(text).codec == 0x72
    assert name.inlined_key() == key.get_public_key().serialize()
    assert IpnsName.parse(text) == name
    assert IpnsName.parse(f"/ipns/{text}/") == name
    assert IpnsName.parse(name.peer_id()) == name
    assert name.peer_id().startswith("12D3KooW")
    assert IpnsName.from_routing_key(name.routing_key()) == name
    assert name.routing_key() == b"/ipns/" + name.multihash


def test_name_of_a_known_peer_id_matches_kubo_base36_form() -> None:
    # The spec's V2-only fixture name and its peer ID (as `ipfs key list -l --ipns-base base36` prints).
    name = IpnsName.parse("k51qzi5uqu5dit2ku9mutlfgwyz8u730on38kd10m97m36bjt66my99hb6103f")
    assert name.peer_id() == "12D3KooWGuR5BdSqp23UeoeesuwYwW3ebQ9rZ8aVwfWEDU8kvCYJ"
    assert str(IpnsName.parse("12D3KooWGuR5BdSqp23UeoeesuwYwW3ebQ9rZ8aVwfWEDU8kvCYJ")) == (
        "k51qzi5uqu5dit2ku9mutlfgwyz8u730on38kd10m97m36bjt66my99hb6103f"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/ipns/",
        "bafkqaddwgevxmmraojswg33smq",
        "k51notbase36!",
        "/ipns/k51qzi5uqu5dit2ku9/extra",
        "example.com",
    ],
)
def test_name_parse_rejects_what_is_not_a_libp2p_key(text: str) -> None:
    with pytest.raises(InvalidName):
        IpnsName.parse(text)


def test_routing_key_outside_the_ipns_namespace_is_rejected() -> None:
    _, name = key_and_name()
    with pytest.raises(InvalidName, match="not an /ipns/ routing key"):
        IpnsName.from_routing_key(b"/pk/" + name.multihash)


# --- validity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, b"1970-01-01T00:00:00Z"),
        (1, b"1970-01-01T00:00:00.000000001Z"),
        (1_500_000_000, b"1970-01-01T00:00:01.5Z"),
        (4847689023694052000, b"2123-08-14T12:17:03.694052Z"),
    ],
)
def test_validity_is_rfc3339_nano_as_go_formats_it(ns: int, text: bytes) -> None:
    assert format_validity(ns) == text
    assert parse_validity(text) == ns


def test_validity_with_offset_and_long_fraction_parses() -> None:
    assert parse_validity(b"1970-01-01T01:00:00.123456789+01:00") == 123456789
    with pytest.raises(InvalidRecord, match="RFC 3339"):
        parse_validity(b"1970-01-01 00:00:00Z")
    with pytest.raises(InvalidRecord, match="valid date"):
        parse_validity(b"2023-02-30T00:00:00Z")


@given(st.integers(min_value=0, max_value=253402300799 * NANOSECONDS))
def test_validity_round_trips(ns: int) -> None:
    assert parse_validity(format_validity(ns)) == ns


# --- creation and verification -------------------------------------------------------------------


def test_created_record_has_signed_dag_cbor_data_and_v1_copies() -> None:
    key, name = key_and_name()
    eol = later()
    raw = create_record(key, VALUE, 7, eol, 60 * NANOSECONDS)
    record = verify_record(raw, name)
    assert (record.value, record.sequence, record.ttl, record.eol_ns) == (
        VALUE.encode(),
        7,
        60 * NANOSECONDS,
        eol,
    )
    assert record.has_v1 and record.pub_key is None
    document = dag_cbor.decode(record.data)
    assert list(document) == ["TTL", "Value", "Sequence", "Validity", "ValidityType"]  # DAG-CBOR order
    assert record.data == encode_data(VALUE.encode(), format_validity(eol), 7, 60 * NANOSECONDS)
    assert key.get_public_key().verify(SIGNATURE_PREFIX + record.data, record.signature_v2)
    fields = _decode_entry(raw)
    assert fields[1] == VALUE.encode() and fields[3] == 0 and fields[5] == 7 and fields[6] == 60 * NANOSECONDS
    assert key.get_public_key().verify(VALUE.encode() + format_validity(eol) + b"EOL", fields[2])
    assert value_cid(record) == (CID.parse(VALUE[6:]), "")


def test_v2_only_record_is_valid() -> None:
    key, name = key_and_name()
    raw = create_record(key, VALUE, 0, later(), v1_compatible=False)
    assert set(_decode_entry(raw)) == {8, 9}
    assert not verify_record(raw, name).has_v1


def test_record_signed_by_another_key_is_rejected() -> None:
    _, name = key_and_name()
    other, _ = key_and_name()
    raw = create_record(other, VALUE, 1, later())
    with pytest.raises(InvalidRecord, match="signatureV2 is not a signature"):
        verify_record(raw, name)


def test_expired_record_is_rejected_as_expired() -> None:
    key, name = key_and_name()
    raw = create_record(key, VALUE, 1, time.time_ns() - NANOSECONDS)
    with pytest.raises(RecordExpired, match="expired at"):
        verify_record(raw, name)
    assert verify_record(raw, name, allow_expired=True).sequence == 1


def test_changed_data_breaks_the_signature() -> None:
    key, name = key_and_name()
    raw = create_record(key, VALUE, 1, later(), v1_compatible=False)
    forged = encode_data(b"/ipfs/bafkqadtwgiww63tmpeqhezldn5zgi", format_validity(later()), 1, 0)
    with pytest.raises(InvalidRecord, match="signatureV2"):
        verify_record(rebuild(raw, data=forged), name)


def test_v1_only_record_is_rejected() -> None:
    key, name = key_and_name()
    raw = rebuild(create_record(key, VALUE, 1, later()), data=None, signature_v2=None)
    with pytest.raises(InvalidRecord, match="no signatureV2"):
        verify_record(raw, name)


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("value", b"/ipfs/other"),
        ("validity", b"2999-01-01T00:00:00Z"),
        ("sequence", 8),
        ("ttl", 1),
        ("validity_type", 1),
    ],
)
def test_v1_field_differing_from_signed_data_is_rejected(label: str, value: bytes | int) -> None:
    key, name = key_and_name()
    raw = rebuild(create_record(key, VALUE, 7, later()), **{label: value})
    with pytest.raises(InvalidRecord, match="does not match the signed data"):
        verify_record(raw, name)


def test_missing_v1_sequence_reads_as_zero_and_must_match() -> None:
    key, name = key_and_name()
    with pytest.raises(InvalidRecord, match="sequence does not match"):
        verify_record(rebuild(create_record(key, VALUE, 7, later()), sequence=None), name)
    assert verify_record(rebuild(create_record(key, VALUE, 0, later()), sequence=None), name).sequence == 0


def test_record_over_10_kib_is_refused_both_ways() -> None:
    key, name = key_and_name()
    with pytest.raises(IpnsError, match="over the 10240-byte limit"):
        create_record(key, "/ipfs/" + "a" * MAX_RECORD_SIZE, 1, later())
    raw = create_record(key, VALUE, 1, later()) + _bytes_field(15, b"x" * MAX_RECORD_SIZE)
    with pytest.raises(InvalidRecord, match="over the 10240-byte limit"):
        verify_record(raw, name)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"\x42\x7f", "runs past the end"),
        (b"\x40\x01", "must be bytes"),
        (b"\x2a\x01x", "must be a varint"),
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x28" + b"\xff" * 9 + b"\x7f", "overflows 64 bits"),
        (b"\x0f", "wire type"),
        (_bytes_field(8, b"sig") + _bytes_field(9, b"\xff\xff"), "not DAG-CBOR"),
        (_bytes_field(8, b"sig") + _bytes_field(9, dag_cbor.encode([1])), "must be a DAG-CBOR map"),
        (
            _bytes_field(8, b"sig") + _bytes_field(9, dag_cbor.encode({"Value": b"/ipfs/x"})),
            "has no Validity",
        ),
        (
            _bytes_field(8, b"s")
            + _bytes_field(
                9, dag_cbor.encode({"Value": "/ipfs/x", "Validity": b"", "ValidityType": 0, "Sequence": 0})
            ),
            "Value must be bytes",
        ),
    ],
)
def test_malformed_records_name_their_fault(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        decode_record(raw)


def test_unknown_protobuf_and_data_fields_are_ignored() -> None:
    key, name = key_and_name()
    raw = create_record(key, VALUE, 3, later()) + _varint_field(20, 5)
    assert verify_record(raw, name).sequence == 3


@given(st.binary(max_size=400))
def test_decoding_arbitrary_bytes_raises_only_ipns_errors(raw: bytes) -> None:
    _, name = key_and_name()
    with contextlib.suppress(IpnsError):
        verify_record(raw, name)


def test_rsa_key_name_needs_the_embedded_public_key() -> None:
    pair = rsa_key_pair(bits=1024)
    name = IpnsName.from_public_key(pair.public_key)
    assert name.inlined_key() is None
    embedded = create_record(pair.private_key, VALUE, 1, later(), embed_public_key=True)
    assert verify_record(embedded, name).pub_key == pair.public_key.serialize()
    with pytest.raises(InvalidRecord, match="carries no pubKey"):
        verify_record(create_record(pair.private_key, VALUE, 1, later()), name)


def test_embedded_public_key_of_another_name_is_rejected() -> None:
    key, _ = key_and_name()
    _, other_name = key_and_name()
    raw = create_record(key, VALUE, 1, later(), embed_public_key=True)
    with pytest.raises(InvalidRecord, match="pubKey belongs to"):
        verify_record(raw, other_name)


# --- selection and the DHT validator ------------------------------------------------------------------


def test_select_prefers_higher_sequence_then_longer_validity_then_the_first() -> None:
    key, name = key_and_name()
    eol = later()
    low = verify_record(create_record(key, VALUE, 1, eol + HOUR), name)
    high = verify_record(create_record(key, VALUE, 2, eol), name)
    high_longer = verify_record(create_record(key, VALUE, 2, eol + HOUR), name)
    assert select_best([low, high]) == 1
    assert select_best([high_longer, high, low]) == 0
    assert select_best([high, high]) == 0


def test_validator_checks_the_record_against_the_routing_key() -> None:
    key, name = key_and_name()
    _, other = key_and_name()
    raw = create_record(key, VALUE, 1, later())
    validator = IpnsValidator()
    validator.validate(name.routing_key(), raw)
    with pytest.raises(InvalidRecord):
        validator.validate(other.routing_key(), raw)
    with pytest.raises(InvalidName):
        validator.validate(b"/pk/" + name.multihash, raw)


def test_validator_select_skips_invalid_and_expired_records() -> None:
    key, name = key_and_name()
    forger, _ = key_and_name()
    good = create_record(key, VALUE, 2, later())
    forged = create_record(forger, VALUE, 99, later())
    expired = create_record(key, VALUE, 50, time.time_ns() - NANOSECONDS)
    lower = create_record(key, VALUE, 1, later(40))
    validator = IpnsValidator()
    assert validator.select(name.routing_key(), [forged, expired, lower, good]) == 3
    with pytest.raises(IpnsError, match="none of the 2 records is valid"):
        validator.select(name.routing_key(), [forged, expired])


def test_validator_clock_is_injectable() -> None:
    key, name = key_and_name()
    eol = later()
    raw = create_record(key, VALUE, 1, eol)
    IpnsValidator(clock_ns=lambda: eol - 1).validate(name.routing_key(), raw)
    with pytest.raises(RecordExpired):
        IpnsValidator(clock_ns=lambda: eol).validate(name.routing_key(), raw)
