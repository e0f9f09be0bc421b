"""The keystore: named Ed25519 keys in <data dir>/keystore (0600), `self` being the node identity."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from ipfsreg.ipns.keystore import Keystore, KeystoreError, decode_private_key, encode_private_key
from ipfsreg.ipns.record import IpnsName
from ipfsreg.node.identity import load_or_create_identity


def test_self_is_the_node_identity(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    key = Keystore(tmp_path).get("self")
    assert key.ipns_name.peer_id() == identity.peer_id_str
    assert Keystore(tmp_path).names() == ["self"]


def test_generated_key_is_stored_0600_and_listed(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    made = store.generate("team")
    path = tmp_path / "keystore" / "team"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.names() == ["self", "team"]
    assert store.get("team").ipns_name == made.ipns_name
    assert store.find(made.ipns_name) is not None and store.find(made.ipns_name).name == "team"  # type: ignore[union-attr]


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    first = store.generate("team")
    with pytest.raises(KeystoreError, match="already exists"):
        store.generate("team")
    assert store.get("team").ipns_name == first.ipns_name


def test_remove_deletes_a_key_but_never_self(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    store.generate("old")
    store.remove("old")
    assert store.names() == ["self"]
    with pytest.raises(KeystoreError, match="no key named 'old'"):
        store.remove("old")
    with pytest.raises(KeystoreError, match="cannot be removed"):
        store.remove("self")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "x" * 65, "sp ace"])
def test_invalid_key_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeystoreError, match="invalid key name"):
        Keystore(tmp_path).generate(name)


def test_private_key_file_is_the_go_and_js_protobuf_form() -> None:
    key = Ed25519PrivateKey.new()
    raw = encode_private_key(key)
    assert raw[:4] == b"\x08\x01\x12\x40" and len(raw) == 68
    assert IpnsName.from_public_key(
        decode_private_key(raw, "k").get_public_key()
    ) == IpnsName.from_public_key(key.get_public_key())
    # py-libp2p's 32-byte seed form (the node identity file) reads too
    assert decode_private_key(key.serialize(), "k").to_bytes() == key.to_bytes()


def test_corrupt_key_files_are_reported(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.new()
    other = Ed25519PrivateKey.new()
    mismatched = b"\x08\x01\x12\x40" + key.to_bytes() + other.get_public_key().to_bytes()
    with pytest.raises(KeystoreError, match="public half"):
        decode_private_key(mismatched, "k")
    with pytest.raises(KeystoreError, match="not an Ed25519"):
        decode_private_key(b"\x08\x00\x12\x02ab", "k")
    (tmp_path / "keystore").mkdir()
    (tmp_path / "keystore" / "bad").write_bytes(b"\xff\xff")
    with pytest.raises(KeystoreError, match="not a libp2p private key"):
        Keystore(tmp_path).get("bad")
