"""IPNS records cross-checked with a real implementation: js-libp2p/Helia's npm ``ipns`` package
(interop/js/ipns, installed by ``make js-deps``), run through node.

Records ipfsreg creates validate in JS and the other way round; each side rejects the other's
forged, tampered and expired records, and both pick the same best record.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from ipfsreg.ipns.keystore import decode_private_key, encode_private_key
from ipfsreg.ipns.record import (
    NANOSECONDS,
    InvalidRecord,
    IpnsName,
    RecordExpired,
    _bytes_field,
    _decode_entry,
    _varint_field,
    create_record,
    encode_data,
    format_validity,
    verify_record,
)
from ipfsreg.ipns.validator import IpnsValidator

TOOL = Path(__file__).resolve().parent / "js" / "ipns" / "ipns-tool.mjs"
VALUE = "/ipfs/bafkqaddwgevxmmraojswg33smq"
OTHER_VALUE = "/ipfs/bafkqadtwgiww63tmpeqhezldn5zgi"
HOUR_NS = 3600 * NANOSECONDS


def js(request: dict[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "node is not installed: run `make js-deps`"
    assert (TOOL.parent / "node_modules" / "ipns").is_dir(), (
        "interop/js/ipns is not installed: `make js-deps`"
    )
    done = subprocess.run(
        [node, str(TOOL)], input=json.dumps(request).encode(), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def with_field(raw: bytes, number: int, value: bytes) -> bytes:
    """``raw`` re-encoded with bytes field ``number`` set to ``value``."""
    fields = _decode_entry(raw)
    fields[number] = value
    return b"".join(
        _varint_field(n, v) if isinstance(v, int) else _bytes_field(n, v) for n, v in sorted(fields.items())
    )


def js_validate(name: IpnsName, raw: bytes) -> dict[str, Any]:
    return js({"op": "validate", "name": str(name), "record": raw.hex()})


def new_key() -> tuple[Ed25519PrivateKey, IpnsName]:
    key = Ed25519PrivateKey.new()
    return key, IpnsName.from_public_key(key.get_public_key())


def js_key() -> tuple[Ed25519PrivateKey, IpnsName]:
    made = js({"op": "keygen"})
    key = decode_private_key(bytes.fromhex(made["privateKey"]), "the JS key")
    name = IpnsName.from_public_key(key.get_public_key())
    assert str(name) == made["name"]  # both sides derive the same k51... name from the key
    return key, name


def js_create(key: Ed25519PrivateKey, value: str, sequence: int, lifetime_ms: int, **extra: Any) -> bytes:
    request = {
        "op": "create",
        "privateKey": encode_private_key(key).hex(),
        "value": value,
        "sequence": sequence,
        "lifetimeMs": lifetime_ms,
        **extra,
    }
    return bytes.fromhex(js(request)["record"])


@pytest.mark.parametrize("v1_compatible", [True, False])
def test_js_ipns_validates_records_created_by_ipfsreg(v1_compatible: bool) -> None:
    key, name = new_key()
    eol = time.time_ns() + HOUR_NS
    raw = create_record(key, VALUE, 42, eol, 90 * NANOSECONDS, v1_compatible=v1_compatible)
    answer = js_validate(name, raw)
    assert answer["ok"], answer
    assert (answer["value"], answer["sequence"], answer["ttl"]) == (VALUE, "42", str(90 * NANOSECONDS))
    assert answer["validity"] == format_validity(eol).decode()


@pytest.mark.parametrize("v1_compatible", [True, False])
def test_ipfsreg_validates_records_created_by_js_ipns(v1_compatible: bool) -> None:
    key, name = js_key()
    raw = js_create(key, VALUE, 7, 3_600_000, ttlNs=str(60 * NANOSECONDS), v1Compatible=v1_compatible)
    record = verify_record(raw, name)
    assert (record.value_text, record.sequence, record.ttl, record.has_v1) == (
        VALUE,
        7,
        60 * NANOSECONDS,
        v1_compatible,
    )
    assert record.eol_ns > time.time_ns() + HOUR_NS - 60 * NANOSECONDS
    IpnsValidator().validate(name.routing_key(), raw)


def test_js_ipns_rejects_records_ipfsreg_forged() -> None:
    key, name = new_key()
    forger, _ = new_key()
    eol = time.time_ns() + HOUR_NS
    signed_by_other = create_record(forger, VALUE, 1, eol)
    expired = create_record(key, VALUE, 1, time.time_ns() - NANOSECONDS)
    genuine = create_record(key, VALUE, 1, eol, v1_compatible=False)
    other_data = encode_data(OTHER_VALUE.encode(), format_validity(eol), 1, 0)
    tampered = _bytes_field(8, _decode_entry(genuine)[8]) + _bytes_field(9, other_data)  # type: ignore[arg-type]
    with_v1 = create_record(key, VALUE, 1, eol)
    v1_mismatch = with_field(with_v1, 1, OTHER_VALUE.encode())
    for label, raw in [
        ("signed by another key", signed_by_other),
        ("expired", expired),
        ("data changed after signing", tampered),
        ("V1 value differs from the signed one", v1_mismatch),
    ]:
        answer = js_validate(name, raw)
        assert not answer["ok"], label
        # ipfsreg rejects the same forgeries
        with pytest.raises(InvalidRecord):
            verify_record(raw, name)
    assert js_validate(name, expired)["errorName"] == "RecordExpiredError"


def test_v1_value_without_signature_v1_is_rejected_here_while_js_ipns_uses_the_signed_value() -> None:
    # The spec checks V1 fields when "signatureV1 or value is present"; js-ipns checks them only when
    # both are, and then resolves to the signed Value. ipfsreg follows the spec (as boxo does).
    key, name = new_key()
    genuine = create_record(key, VALUE, 1, time.time_ns() + HOUR_NS, v1_compatible=False)
    raw = _bytes_field(1, OTHER_VALUE.encode()) + genuine
    answer = js_validate(name, raw)
    assert answer["ok"] and answer["value"] == VALUE
    with pytest.raises(InvalidRecord, match="V1 field value does not match"):
        verify_record(raw, name)


def test_ipfsreg_rejects_records_js_ipns_forged() -> None:
    key, name = js_key()
    forger, _ = js_key()
    signed_by_other = js_create(forger, VALUE, 5, 3_600_000)
    with pytest.raises(InvalidRecord, match="signatureV2"):
        verify_record(signed_by_other, name)
    assert not js_validate(name, signed_by_other)["ok"]
    expired = js_create(key, VALUE, 5, -1000)
    with pytest.raises(RecordExpired):
        verify_record(expired, name)
    genuine = js_create(key, VALUE, 5, 3_600_000, v1Compatible=False)
    fields = _decode_entry(genuine)
    data = bytearray(fields[9])  # type: ignore[arg-type]
    data[data.index(b"bafkq") + 5] ^= 1
    tampered = _bytes_field(8, fields[8]) + _bytes_field(9, bytes(data))  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord):
        verify_record(tampered, name)
    assert not js_validate(name, tampered)["ok"]


def test_js_selector_and_ipfsreg_pick_the_same_best_record() -> None:
    key, name = new_key()
    now = time.time_ns()
    records = [
        create_record(key, VALUE, 3, now + HOUR_NS),
        create_record(key, VALUE, 5, now + HOUR_NS),
        create_record(key, OTHER_VALUE, 5, now + 2 * HOUR_NS),
        create_record(key, VALUE, 4, now + 3 * HOUR_NS),
    ]
    ours = IpnsValidator().select(name.routing_key(), records)
    theirs = js({"op": "select", "name": str(name), "records": [r.hex() for r in records]})["index"]
    assert ours == theirs == 2
