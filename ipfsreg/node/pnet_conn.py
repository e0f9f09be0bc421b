"""A raw libp2p connection wrapped in the private-network (PSK) cipher, below multistream and Noise.

The host wraps every TCP connection it dials or accepts when a swarm key is configured (see
ipfsreg/node/host.py); the pure parts (nonce, XSalsa20, handshake checks) are ipfsreg/node/pnet.py.
"""

from __future__ import annotations

from pathlib import Path

from libp2p.abc import IRawConnection
from libp2p.connection_types import ConnectionType
from multiaddr import Multiaddr

from ipfsreg.node.pnet import (
    SWARM_KEY_FILENAME,
    PnetHandshakeError,
    PnetReceiver,
    PnetSender,
    SwarmKeyError,
    parse_swarm_key,
)


class PnetConnection(IRawConnection):
    """``inner`` with every byte sent and received passed through the PSK stream cipher.

    The nonce goes out with the first write (go-libp2p's order: whoever speaks first sends its
    nonce first). Reads return the peer's plaintext; a peer that hangs up before its nonce, sends
    a plain handshake or one that does not decrypt raises PnetHandshakeError, whose message says
    that this node is in a private network and why the peer is probably not.
    """

    def __init__(self, inner: IRawConnection, psk: bytes, *, key_name: str = "") -> None:
        self.inner = inner
        self.is_initiator = inner.is_initiator
        self._sender = PnetSender(psk)
        self._receiver = PnetReceiver(psk)
        self._key_name = key_name

    async def write(self, data: bytes) -> None:
        await self.inner.write(self._sender.encrypt(data))

    async def read(self, n: int | None = None) -> bytes:
        receiver = self._receiver
        while True:
            data = await self.inner.read(n)
            if not data:
                if not receiver.started:
                    raise self._refused(
                        "the peer closed the connection before sending its private network nonce:"
                        " it probably has no swarm key or a different one"
                    )
                return b""
            try:
                plain = receiver.decrypt(data)
            except PnetHandshakeError as exc:
                raise self._refused(str(exc)) from None
            if plain:
                return plain

    def _refused(self, reason: str) -> PnetHandshakeError:
        key = f", swarm key fingerprint {self._key_name}" if self._key_name else ""
        return PnetHandshakeError(
            f"private network key mismatch (this node is in a private network{key}): {reason}"
        )

    async def close(self) -> None:
        await self.inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.inner.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self.inner.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.inner.get_connection_type()


def load_swarm_key(data_dir: Path, configured: str = "") -> bytes | None:
    """The PSK of ``configured`` (a swarm.key path; it must exist), else of DATA/swarm.key when it
    exists, else None (not a private network). SwarmKeyError names the file when it is invalid."""
    path = Path(configured).expanduser() if configured else Path(data_dir) / SWARM_KEY_FILENAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if configured:
            raise SwarmKeyError(f"swarm key file {path} does not exist") from None
        return None
    except OSError as exc:
        raise SwarmKeyError(f"cannot read swarm key file {path}: {exc}") from None
    try:
        return parse_swarm_key(data)
    except SwarmKeyError as exc:
        raise SwarmKeyError(f"{path}: {exc}") from None
