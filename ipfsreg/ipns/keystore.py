"""Named Ed25519 keys for IPNS names: ``<data dir>/keystore/<name>``, one libp2p ``PrivateKey`` protobuf
per file (mode 0600), as Kubo keeps its keystore; ``self`` is the node identity and cannot be removed.

Files are written in the Go/JS form (``Data`` = 32-byte seed + 32-byte public key), which Kubo's
``ipfs key import`` and js-libp2p read; the 32-byte seed form py-libp2p writes (the node identity) is
read too.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from libp2p.crypto.ed25519 import Ed25519PrivateKey

from ipfsreg.ipns.record import IpnsError, IpnsName
from ipfsreg.node.identity import load_or_create_identity

KEYSTORE_DIR: Final = "keystore"
SELF: Final = "self"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_TYPE_ED25519: Final = 1


class KeystoreError(IpnsError):
    """A key that cannot be created, found, read or removed; the message names it."""


@dataclass(frozen=True)
class NamedKey:
    name: str
    private_key: Ed25519PrivateKey

    @property
    def ipns_name(self) -> IpnsName:
        return IpnsName.from_public_key(self.private_key.get_public_key())


def encode_private_key(key: Ed25519PrivateKey) -> bytes:
    """libp2p ``PrivateKey`` protobuf with Go's 64-byte Ed25519 ``Data`` (seed + public key)."""
    data = key.to_bytes() + key.get_public_key().to_bytes()
    return b"\x08\x01\x12" + bytes((len(data),)) + data


def decode_private_key(raw: bytes, what: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from a libp2p protobuf (32- or 64-byte ``Data``)."""
    key_type, data = None, None
    pos = 0
    try:
        while pos < len(raw):
            tag = raw[pos]
            pos += 1
            if tag == 0x08:
                key_type = raw[pos]
                pos += 1
            elif tag == 0x12:
                length = raw[pos]
                pos += 1
                if length >= 0x80 or pos + length > len(raw):
                    raise IndexError
                data = raw[pos : pos + length]
                pos += length
            else:
                raise IndexError
    except IndexError:
        raise KeystoreError(f"{what} is not a libp2p private key") from None
    if key_type != _KEY_TYPE_ED25519 or data is None or len(data) not in (32, 64):
        raise KeystoreError(f"{what} is not an Ed25519 libp2p private key (ipfsreg's keys are Ed25519)")
    key = Ed25519PrivateKey.from_bytes(data[:32])
    if len(data) == 64 and key.get_public_key().to_bytes() != data[32:]:
        raise KeystoreError(f"{what}: the public half does not belong to the private key")
    return key


class Keystore:
    """The keys of one data dir. ``self`` is the node identity (``<data dir>/identity``)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.directory = self.data_dir / KEYSTORE_DIR

    def _path(self, name: str) -> Path:
        if name == SELF:
            raise KeystoreError("'self' is the node identity, not a keystore file")
        if _NAME_RE.fullmatch(name) is None:
            raise KeystoreError(
                f"invalid key name {name[:80]!r}: letters, digits, '.', '_' and '-', at most 64, "
                "not starting with a punctuation mark"
            )
        return self.directory / name

    def get(self, name: str) -> NamedKey:
        if name == SELF:
            identity = load_or_create_identity(self.data_dir)
            raw = identity.key_pair.private_key.serialize()
            return NamedKey(SELF, decode_private_key(raw, "the node identity"))
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(f"no key named {name!r} (create it with `ipfsreg key gen {name}`)") from None
        except OSError as exc:
            raise KeystoreError(f"cannot read key {name!r}: {exc.strerror}") from None
        return NamedKey(name, decode_private_key(raw, f"key file {path}"))

    def generate(self, name: str) -> NamedKey:
        """A new Ed25519 key stored as ``name`` (mode 0600); an existing name is an error."""
        path = self._path(name)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.new()
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(encode_private_key(key))
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)  # fails if the name exists: a key is never overwritten
            except FileExistsError:
                raise KeystoreError(f"a key named {name!r} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        return NamedKey(name, key)

    def remove(self, name: str) -> NamedKey:
        if name == SELF:
            raise KeystoreError("'self' is the node identity and cannot be removed")
        key = self.get(name)
        self._path(name).unlink()
        return key

    def names(self) -> list[str]:
        """``self`` first, then every stored key by name."""
        names: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            names = sorted(
                p.name for p in self.directory.iterdir() if p.is_file() and _NAME_RE.fullmatch(p.name)
            )
        return [SELF, *names]

    def list(self) -> list[NamedKey]:
        return [self.get(name) for name in self.names()]

    def find(self, name: IpnsName) -> NamedKey | None:
        """The stored key whose IPNS name is ``name``, if this node holds it."""
        for key in self.list():
            if key.ipns_name == name:
                return key
        return None
