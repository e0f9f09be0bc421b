"""The node's persistent Ed25519 identity: ``<data_dir>/identity`` (libp2p protobuf key, mode 0600).

The peer ID can be computed from the file alone, without starting a host (``ipfsreg id``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from ipfsreg.node.errors import NodeError

IDENTITY_FILE = "identity"


@dataclass(frozen=True)
class Identity:
    key_pair: KeyPair
    peer_id: ID

    @property
    def peer_id_str(self) -> str:
        return self.peer_id.to_base58()

    @classmethod
    def generate(cls) -> Identity:
        private = Ed25519PrivateKey.new()
        key_pair = KeyPair(private, private.get_public_key())
        return cls(key_pair, ID.from_pubkey(key_pair.public_key))


def _from_serialized(data: bytes, path: Path) -> Identity:
    try:
        private = deserialize_private_key(data)
    except Exception as exc:
        raise NodeError(f"{path} is not a libp2p private key: {exc}") from None
    if private.get_type() != KeyType.Ed25519:
        raise NodeError(f"{path} holds a {private.get_type().name} key; ipfsreg uses Ed25519")
    key_pair = KeyPair(private, private.get_public_key())
    return Identity(key_pair, ID.from_pubkey(key_pair.public_key))


def load_identity(data_dir: str | os.PathLike[str]) -> Identity | None:
    """The identity stored in ``data_dir``, or None if there is none yet."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NodeError(f"cannot read {path}: {exc}") from None
    return _from_serialized(data, path)


def load_or_create_identity(data_dir: str | os.PathLike[str]) -> Identity:
    """Load the identity in ``data_dir``, creating (atomically, mode 0600) a new Ed25519 key if absent."""
    existing = load_identity(data_dir)
    if existing is not None:
        return existing
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate()
    path = directory / IDENTITY_FILE
    tmp = directory / f".{IDENTITY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(identity.key_pair.private_key.serialize())
            out.flush()
            os.fsync(out.fileno())
        # link() fails if another process created the identity first: theirs wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    loaded = load_identity(directory)
    assert loaded is not None
    return loaded
