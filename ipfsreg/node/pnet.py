"""libp2p private networks (pnet) as go-libp2p and Kubo do them: the swarm.key file and the PSK stream cipher.

A private network shares one 32-byte pre-shared key (PSK). Every connection is encrypted with it
before anything else is said on it (multistream-select, Noise): each side sends a random 24-byte
nonce as its first bytes, then XSalsa20(PSK, nonce) XORs everything it sends (go-libp2p
p2p/net/pnet/psk_conn.go). A peer without the key, or with another, reads noise and hangs up.

This module is pure: key file parsing and formatting (core/pnet/codec.go), Kubo's key fingerprint,
XSalsa20 (libsodium's, the copy PyNaCl ships; else HSalsa20 here and pycryptodome's Salsa20), and
the two directions of a connection as state machines
(:class:`PnetSender`, :class:`PnetReceiver`). The connection wrapper is ipfsreg/node/pnet_conn.py.

py-libp2p 0.8's ``libp2p.security.pnet`` is not compatible with go-libp2p: it sends an 8-byte
nonce and uses plain Salsa20 keyed by the PSK, where go-libp2p sends 24 bytes and uses XSalsa20.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import os
import struct
import threading
from pathlib import Path
from typing import Any, Final

from Crypto.Cipher import Salsa20

from ipfsreg.node.errors import NodeError

PSK_V1_HEADER: Final = b"/key/swarm/psk/1.0.0/"
PSK_SIZE: Final = 32
NONCE_SIZE: Final = 24
SWARM_KEY_FILENAME: Final = "swarm.key"
#: The first message each side of a libp2p TCP connection sends (the security protocol negotiation).
MULTISTREAM_HEADER: Final = b"\x13/multistream/1.0.0\n"

_SIGMA: Final = struct.unpack("<4I", b"expand 32-byte k")
SCRATCH_LIMIT: Final = 512 * 1024
_MASK: Final = 0xFFFFFFFF


class PnetError(NodeError):
    """A private network failure: a bad swarm key file, or a peer outside our private network."""


class SwarmKeyError(PnetError):
    """A swarm.key file that is not a valid ``/key/swarm/psk/1.0.0/`` key."""


class PnetHandshakeError(PnetError):
    """A connection that cannot be in our private network (the peer has no swarm key or another one)."""


def parse_swarm_key(data: bytes) -> bytes:
    """The 32-byte PSK in a swarm.key file (``/key/swarm/psk/1.0.0/``, then ``/base16/``, ``/base64/``
    or ``/bin/``, then the key), as go-libp2p's DecodeV1PSK reads it: CRLF line ends are accepted,
    and what follows the key's 32 bytes is ignored."""
    header, rest = _line(data)
    if header != PSK_V1_HEADER:
        shown = header[:40].decode("utf-8", "replace")
        raise SwarmKeyError(f"a swarm key starts with the line {PSK_V1_HEADER.decode()!r}, not {shown!r}")
    encoding, body = _line(rest)
    if encoding == b"/base16/":
        text = body.strip()[: 2 * PSK_SIZE]
        if len(text) < 2 * PSK_SIZE:
            raise SwarmKeyError(f"the /base16/ swarm key has {len(text)} hex digits, not {2 * PSK_SIZE}")
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            raise SwarmKeyError("the /base16/ swarm key is not hexadecimal") from None
    if encoding == b"/base64/":
        text = b"".join(body.split())[: 4 * -(-PSK_SIZE // 3)]  # 44 characters hold 32 bytes
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            key = b""
        if len(key) < PSK_SIZE:
            raise SwarmKeyError(f"the /base64/ swarm key does not decode to {PSK_SIZE} bytes")
        return key[:PSK_SIZE]
    if encoding == b"/bin/":
        if len(body) < PSK_SIZE:
            raise SwarmKeyError(f"the /bin/ swarm key has {len(body)} bytes, not {PSK_SIZE}")
        return body[:PSK_SIZE]
    shown = encoding[:40].decode("utf-8", "replace")
    raise SwarmKeyError(f"unknown swarm key encoding {shown!r} (expected /base16/, /base64/ or /bin/)")


def _line(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\n")
    if end < 0:
        raise SwarmKeyError(
            "the swarm key file ends before its header lines (/key/swarm/psk/1.0.0/, /base16/)"
        )
    return data[:end].rstrip(b"\r\n"), data[end + 1 :]


def format_swarm_key(psk: bytes) -> bytes:
    """A swarm.key file for ``psk`` in the format ``ipfs-swarm-key-gen`` writes (base16)."""
    _check_psk(psk)
    return PSK_V1_HEADER + b"\n/base16/\n" + psk.hex().encode() + b"\n"


def generate_psk() -> bytes:
    return os.urandom(PSK_SIZE)


def fingerprint(psk: bytes) -> bytes:
    """Kubo's 16-byte swarm key fingerprint (``Swarm key fingerprint: %x`` at daemon start).

    Salsa20 of 64 zero bytes under the PSK with the nonce ``finprint``, hashed with SHAKE-128 to
    16 bytes (Kubo core/node/libp2p/pnet.go): a name for the key that does not reveal it.
    """
    _check_psk(psk)
    stream = Salsa20.new(key=psk, nonce=b"finprint").encrypt(bytes(64))
    return hashlib.shake_128(stream).digest(16)


def _check_psk(psk: bytes) -> None:
    if len(psk) != PSK_SIZE:
        raise PnetError(f"a private network key is {PSK_SIZE} bytes, got {len(psk)}")


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def hsalsa20(key: bytes, nonce: bytes) -> bytes:
    """HSalsa20 (Bernstein, "Extending the Salsa20 nonce"): a 32-byte subkey from a key and 16 bytes."""
    if len(key) != 32 or len(nonce) != 16:
        raise PnetError("HSalsa20 takes a 32-byte key and a 16-byte input")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce)
    x = [
        _SIGMA[0], k[0], k[1], k[2],
        k[3], _SIGMA[1], n[0], n[1],
        n[2], n[3], _SIGMA[2], k[4],
        k[5], k[6], k[7], _SIGMA[3],
    ]  # fmt: skip
    rotl = _rotl
    for _ in range(10):  # 20 rounds: a column round and a row round per iteration
        for a, b, c, d in (
            (0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),
            (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14),
        ):  # fmt: skip
            x[b] ^= rotl((x[a] + x[d]) & _MASK, 7)
            x[c] ^= rotl((x[b] + x[a]) & _MASK, 9)
            x[d] ^= rotl((x[c] + x[b]) & _MASK, 13)
            x[a] ^= rotl((x[d] + x[c]) & _MASK, 18)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


class _SodiumXSalsa20:
    """libsodium's XSalsa20 (the copy PyNaCl ships), called through ``ctypes.PyDLL``.

    libsodium picks an AVX2 Salsa20 core where the CPU has one: 2.3 GB/s here against 1.1 GB/s for
    pycryptodome's portable C (2 GB/s through this wrapper, copies included).
    ``crypto_stream_xsalsa20_xor_ic`` starts at a 64-byte block, so a call that starts inside a
    block first XORs the rest of that block (one 64-byte call). PyDLL keeps the GIL through the
    call, which at these speeds is shorter than a thread switch.
    """

    __slots__ = ("_key", "_lib", "_nonce", "_pos")

    def __init__(self, lib: ctypes.PyDLL, key: bytes, nonce: bytes) -> None:
        self._lib = lib
        self._key = key
        self._nonce = nonce
        self._pos = 0

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        size = len(data)
        if not size:
            return b""
        source = data if isinstance(data, bytes) else bytes(data)
        # The keystream is XORed into a scratch buffer kept for the next call, one per thread (a
        # fresh 256 KiB buffer per call, zeroed, then copied out, cost a third of the cipher's
        # speed), then copied out once into the bytes returned. Larger calls get their own.
        out: ctypes.Array[ctypes.c_char] = getattr(_scratch, "buffer", _NO_SCRATCH)
        if len(out) < size:
            out = ctypes.create_string_buffer(size)
            if size <= SCRATCH_LIMIT:
                _scratch.buffer = out
        src = ctypes.cast(ctypes.c_char_p(source), ctypes.c_void_p).value or 0
        dst = ctypes.addressof(out)
        pos = self._pos
        self._pos = pos + size
        xor = self._lib.crypto_stream_xsalsa20_xor_ic
        skip = pos % 64
        done = 0
        if skip:
            # The rest of the block the last call ended in: that block XORed whole into scratch.
            take = min(64 - skip, size)
            block = ctypes.create_string_buffer(64)
            ctypes.memmove(ctypes.addressof(block) + skip, src, take)
            xor(block, block, 64, self._nonce, pos // 64, self._key)
            ctypes.memmove(dst, ctypes.addressof(block) + skip, take)
            done = take
        if done < size:
            xor(dst + done, src + done, size - done, self._nonce, (pos + done) // 64, self._key)
        return ctypes.string_at(dst, size)


_scratch = threading.local()
_NO_SCRATCH = ctypes.create_string_buffer(0)


def _load_sodium() -> ctypes.PyDLL | None:
    try:
        import nacl

        path = next(Path(nacl.__path__[0]).glob("_sodium*.so"))
        lib = ctypes.PyDLL(str(path))
        if lib.sodium_init() < 0:
            return None
        pointer, data = ctypes.c_void_p, ctypes.c_char_p
        lib.crypto_stream_xsalsa20_xor_ic.argtypes = [
            pointer,
            pointer,
            ctypes.c_ulonglong,
            data,
            ctypes.c_uint64,
            data,
        ]
        lib.crypto_stream_xsalsa20_xor_ic.restype = ctypes.c_int
        return lib
    except (ImportError, StopIteration, OSError, AttributeError):
        return None  # no usable libsodium: pycryptodome's Salsa20 does the same, slower


_SODIUM = _load_sodium()


class XSalsa20:
    """The XSalsa20 keystream (24-byte nonce) XORed onto data, continuing across calls.

    libsodium when it can be loaded; ``sodium=False`` (and the fallback) is HSalsa20 here plus
    pycryptodome's Salsa20.
    """

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes, nonce: bytes, *, sodium: bool = True) -> None:
        if len(key) != 32 or len(nonce) != NONCE_SIZE:
            raise PnetError(f"XSalsa20 takes a 32-byte key and a {NONCE_SIZE}-byte nonce")
        self._cipher: _SodiumXSalsa20 | Any
        if sodium and _SODIUM is not None:
            self._cipher = _SodiumXSalsa20(_SODIUM, bytes(key), bytes(nonce))
        else:
            self._cipher = Salsa20.new(key=hsalsa20(key, nonce[:16]), nonce=nonce[16:])

    def xor(self, data: bytes | bytearray | memoryview) -> bytes:
        """``data`` XOR the next ``len(data)`` keystream bytes (encryption and decryption alike)."""
        result: bytes = self._cipher.encrypt(data)
        return result


class PnetSender:
    """Our direction of a private-network connection: the nonce first, then the encrypted bytes."""

    __slots__ = ("_nonce", "_stream")

    def __init__(self, psk: bytes, nonce: bytes | None = None) -> None:
        _check_psk(psk)
        self._nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
        self._stream = XSalsa20(psk, self._nonce)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """The wire bytes for ``data``: on the first call the nonce comes first."""
        out = self._stream.xor(data)
        if self._nonce:
            out = self._nonce + out
            self._nonce = b""
        return out


class PnetReceiver:
    """The peer's direction: its nonce first, then bytes to decrypt.

    The first plaintext bytes must be multistream-select's header, which every libp2p TCP
    connection starts with: if they are not, the peer's key is not ours (PnetHandshakeError), and
    if the raw bytes are that header the peer is not using a swarm key at all.
    """

    __slots__ = ("_checked", "_nonce", "_psk", "_stream")

    def __init__(self, psk: bytes) -> None:
        _check_psk(psk)
        self._psk = psk
        self._nonce = b""
        self._stream: XSalsa20 | None = None
        self._checked = b""  # plaintext of the header check so far, until it is complete

    @property
    def started(self) -> bool:
        """Whether the peer's whole nonce has arrived."""
        return self._stream is not None

    def decrypt(self, data: bytes) -> bytes:
        """The plaintext of ``data`` as received (the nonce is taken first; it yields nothing)."""
        stream = self._stream
        if stream is None:
            needed = NONCE_SIZE - len(self._nonce)
            self._nonce += data[:needed]
            data = data[needed:]
            if len(self._nonce) < NONCE_SIZE:
                self._check_plaintext_peer(self._nonce)
                return b""
            self._check_plaintext_peer(self._nonce)
            stream = self._stream = XSalsa20(self._psk, self._nonce)
        plain = stream.xor(data) if data else b""
        if len(self._checked) < len(MULTISTREAM_HEADER):
            self._check_header(plain)
        return plain

    def _check_plaintext_peer(self, raw: bytes) -> None:
        if raw[: len(MULTISTREAM_HEADER)] == MULTISTREAM_HEADER:
            raise PnetHandshakeError(
                "the peer is not in a private network: it sent a plain libp2p handshake (it has no swarm key)"
            )

    def _check_header(self, plain: bytes) -> None:
        checked = self._checked + plain[: len(MULTISTREAM_HEADER) - len(self._checked)]
        if checked != MULTISTREAM_HEADER[: len(checked)]:
            raise PnetHandshakeError(
                "the peer's private network key differs from ours: its handshake does not decrypt"
            )
        self._checked = checked
