"""The Noise security transport the host uses (see build_host)."""

from __future__ import annotations

from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.security.noise.transport import Transport as NoiseTransport


def noise_transport(key_pair: KeyPair) -> NoiseTransport:
    """Noise XX with a fresh X25519 static key per process, signed by the peer's identity key."""
    return NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
