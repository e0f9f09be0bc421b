"""The Noise security transport the host uses: py-libp2p's XX handshake, then ipfsreg's own transport I/O.

After the handshake every byte the node moves crosses this layer, so the session does its I/O in bulk:
reads take large chunks from the socket and split them into as many length-prefixed Noise messages as
they hold; a write encrypts all of its <= 65519-byte pieces into one buffer sent with one socket write.
The framing and the ChaCha20-Poly1305 transport cipher (nonces counted here, exactly as the Noise spec
and go-libp2p do) are pure (NoiseMessageEncoder / NoiseMessageDecoder); the session is thin trio code.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import TypeVar

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.keys import KeyPair, PrivateKey, PublicKey
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.io.abc import EncryptedMsgReadWriter
from libp2p.io.exceptions import DecryptionFailedException, IncompleteReadError, IOException
from libp2p.peer.id import ID
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from multiaddr import Multiaddr

from ipfsreg.node.errors import NodeError

#: Largest Noise transport message on the wire (its length prefix is two bytes).
MAX_MESSAGE_LEN = 0xFFFF
#: Poly1305 authentication tag appended to every encrypted message.
TAG_LEN = 16
#: Largest plaintext per Noise message (go-libp2p's MaxPlaintextLength).
MAX_PLAINTEXT_LEN = MAX_MESSAGE_LEN - TAG_LEN
#: Per-message framing overhead: the 2-byte big-endian length prefix plus the tag.
FRAME_OVERHEAD = 2 + TAG_LEN
#: The Noise spec reserves nonce 2**64 - 1; a cipher state must never use it.
MAX_NONCE = 2**64 - 1
#: How much the session asks the socket for per read.
RECV_SIZE = 256 * 1024

_Plain = TypeVar("_Plain", bytes, bytearray)

# ChaChaPoly nonce: 32 bits of zeros, then the 64-bit counter little-endian (Noise spec, section 12.3).
_NONCE = struct.Struct("<4xQ")


class NoiseSessionError(NodeError, IOException):
    """The Noise channel to a peer failed; the connection is closed (or must be) and cannot be reused."""


class NoiseDecryptError(NoiseSessionError, DecryptionFailedException):
    """A transport message failed authentication: tampered, corrupted or out-of-order ciphertext."""


class NoiseNonceExhausted(NoiseSessionError):
    """A cipher state ran out of nonces (2**64 - 1 messages); the connection must be replaced."""


class NoiseEndOfStream(NoiseSessionError, IncompleteReadError):
    """The peer closed the connection. ``received_bytes`` counts the bytes of a truncated message left
    over (0 when the stream ended cleanly between messages, so ``is_clean_close`` holds)."""

    def __init__(self, received: int = 0, expected: int = 0) -> None:
        if received:
            message = f"connection closed {received} bytes into a {expected}-byte Noise message"
        else:
            message = "connection closed"
        super().__init__(message, expected_bytes=expected, received_bytes=received)


class NoiseWriteInterrupted(NoiseSessionError):
    """An earlier write was interrupted after its messages were encrypted: the peer's nonces no longer
    match ours, so nothing more may be sent on this connection."""


def _check_key(key: bytes) -> ChaCha20Poly1305:
    if len(key) != 32:
        raise NoiseSessionError(f"a ChaChaPoly key is 32 bytes, got {len(key)}")
    return ChaCha20Poly1305(key)


class NoiseMessageEncoder:
    """Plaintext in, wire bytes out: one length-prefixed ChaChaPoly message per <= 65519-byte piece."""

    __slots__ = ("_aead", "_nonce")

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        self._aead = _check_key(key)
        self._nonce = nonce

    @property
    def nonce(self) -> int:
        """The nonce the next message will be encrypted with."""
        return self._nonce

    def encode(self, data: bytes | bytearray | memoryview) -> bytearray:
        """All of ``data`` as consecutive Noise messages in one buffer (empty input: nothing to send).

        The nonce advances only when the whole buffer was built, so a failure sends nothing and
        leaves the cipher state unchanged.
        """
        total = len(data)
        if total == 0:
            return bytearray()
        count = -(-total // MAX_PLAINTEXT_LEN)
        nonce = self._nonce
        if nonce + count > MAX_NONCE:
            raise NoiseNonceExhausted("the outbound cipher state has no nonces left")
        out = bytearray(total + count * FRAME_OVERHEAD)
        encrypt_into = self._aead.encrypt_into
        pack = _NONCE.pack
        with memoryview(out) as view, memoryview(data) as source:
            at = 0
            for start in range(0, total, MAX_PLAINTEXT_LEN):
                piece = source[start : start + MAX_PLAINTEXT_LEN]
                size = len(piece) + TAG_LEN
                out[at] = size >> 8
                out[at + 1] = size & 0xFF
                at += 2
                encrypt_into(pack(nonce), piece, None, view[at : at + size])
                at += size
                nonce += 1
        self._nonce = nonce
        return out

    def seal(self, plaintext: bytes) -> bytes:
        """One message's ciphertext without its length prefix (at most MAX_PLAINTEXT_LEN bytes in)."""
        if len(plaintext) > MAX_PLAINTEXT_LEN:
            raise NoiseSessionError(f"a Noise message holds at most {MAX_PLAINTEXT_LEN} bytes of plaintext")
        if self._nonce >= MAX_NONCE:
            raise NoiseNonceExhausted("the outbound cipher state has no nonces left")
        ciphertext = self._aead.encrypt(_NONCE.pack(self._nonce), plaintext, None)
        self._nonce += 1
        return ciphertext


class NoiseMessageDecoder:
    """Wire bytes in (any split), plaintexts of complete Noise messages out, in order.

    The first message that fails authentication poisons the decoder: it and every later call raise
    NoiseDecryptError (the nonce sequence cannot be recovered).
    """

    __slots__ = ("_aead", "_buf", "_error", "_nonce", "_pos")

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        self._aead = _check_key(key)
        self._nonce = nonce
        self._buf = b""
        self._pos = 0
        self._error: NoiseSessionError | None = None

    @property
    def nonce(self) -> int:
        """The nonce the next message must have been encrypted with."""
        return self._nonce

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a decrypted message (an incomplete message's start)."""
        return len(self._buf) - self._pos

    @property
    def next_message_size(self) -> int:
        """Wire size of the message being received: its length prefix once known, else just the prefix."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 2:
            return 2
        return 2 + ((buf[pos] << 8) | buf[pos + 1])

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the wire."""
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def next_message(self) -> bytes | None:
        """The next message's plaintext (possibly empty), or None until the buffer holds a whole one."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 2:
            return None
        end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if end > len(buf):
            return None
        plaintext = self._open(memoryview(buf)[pos + 2 : end])
        self._pos = end
        return plaintext

    def next_messages(self) -> bytearray | None:
        """The plaintexts of every whole message buffered, in one buffer, or None until one is whole.

        Each message is decrypted straight into its place (no per-message bytes object). If a message
        fails authentication after others, their plaintext is returned and the next call raises.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        start = end = self._pos
        limit = len(buf)
        sizes: list[int] = []
        total = 0
        while limit - end >= 2:
            size = (buf[end] << 8) | buf[end + 1]
            if end + 2 + size > limit:
                break
            sizes.append(size)
            total += max(0, size - TAG_LEN)
            end += 2 + size
        if not sizes:
            return None
        out = bytearray(total)
        decrypt_into = self._aead.decrypt_into
        pack = _NONCE.pack
        at = 0
        pos = start
        error: NoiseSessionError | None = None
        with memoryview(buf) as source, memoryview(out) as target:
            for size in sizes:
                nonce = self._nonce
                if nonce >= MAX_NONCE:
                    error = NoiseNonceExhausted("the inbound cipher state has no nonces left")
                    break
                plain = size - TAG_LEN
                try:
                    if plain < 0:
                        raise InvalidTag
                    decrypt_into(pack(nonce), source[pos + 2 : pos + 2 + size], None, target[at : at + plain])
                except InvalidTag:
                    error = NoiseDecryptError(f"Noise message {nonce} ({size} bytes) failed authentication")
                    break
                self._nonce = nonce + 1
                at += plain
                pos += 2 + size
        self._pos = pos
        if error is not None:
            self._error = error
            if pos == start:
                raise error
            del out[at:]
        return out

    def open(self, ciphertext: bytes | memoryview) -> bytes:
        """One message's plaintext from its ciphertext without the length prefix (bypasses the buffer)."""
        if self._error is not None:
            raise self._error
        return self._open(ciphertext)

    def _open(self, ciphertext: bytes | memoryview) -> bytes:
        nonce = self._nonce
        if nonce >= MAX_NONCE:
            self._error = NoiseNonceExhausted("the inbound cipher state has no nonces left")
            raise self._error
        try:
            plaintext = self._aead.decrypt(_NONCE.pack(nonce), ciphertext, None)
        except InvalidTag:
            self._error = NoiseDecryptError(
                f"Noise message {nonce} ({len(ciphertext)} bytes) failed authentication"
            )
            raise self._error from None
        self._nonce = nonce + 1
        return plaintext


class NoiseMessageReadWriter(EncryptedMsgReadWriter):
    """Noise transport messages over a raw connection: bulk socket reads, one socket write per write_msg."""

    def __init__(
        self, conn: IRawConnection, encoder: NoiseMessageEncoder, decoder: NoiseMessageDecoder
    ) -> None:
        super().__init__(conn)
        self.raw_conn = conn
        self._encoder = encoder
        self._decoder = decoder
        self._write_lock = trio.Lock()
        self._write_error: NoiseSessionError | None = None
        self._eof = False
        self._reading = False

    async def read_msg(self) -> bytes:
        """The next non-empty plaintext message.

        NoiseEndOfStream when the peer closed the connection (clean or mid-message), NoiseDecryptError
        (connection closed) when a message fails authentication; raw connection errors pass through.
        """
        return await self._read(self._decoder.next_message)

    async def read_some(self) -> bytearray:
        """The plaintext of every whole message buffered (received first if none is): not empty.

        Errors as read_msg. The bulk read of the Yamux read loop: one call, one buffer and one
        decrypt pass per socket read instead of one of each per Noise message.
        """
        return await self._read(self._decoder.next_messages)

    async def _read(self, take: Callable[[], _Plain | None]) -> _Plain:
        """What ``take`` decrypts from the buffer once it is not empty, reading the socket meanwhile."""
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this Noise session")
        self._reading = True
        try:
            decoder = self._decoder
            while True:
                try:
                    plaintext = take()
                except NoiseSessionError:
                    await self._close_quietly()
                    raise
                if plaintext:
                    return plaintext
                if plaintext is not None:
                    continue  # an empty message carries nothing (go-libp2p never sends one)
                if self._eof:
                    pending = decoder.pending
                    raise NoiseEndOfStream(pending, decoder.next_message_size if pending else 0)
                data = await self.raw_conn.read(RECV_SIZE)
                if data:
                    decoder.feed(data)
                else:
                    self._eof = True
        finally:
            self._reading = False

    async def write_msg(self, msg: bytes) -> None:
        """Encrypt ``msg`` (any length) and send every resulting message with one raw write."""
        if not msg:
            return
        lock = self._write_lock
        try:
            lock.acquire_nowait()  # no extra scheduling point when uncontended
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._write_error is not None:
                raise self._write_error
            wire = self._encoder.encode(msg)
            try:
                # trio's send_all takes any buffer; building the messages in place saves a copy.
                await self.raw_conn.write(wire)  # type: ignore[arg-type]
            except BaseException:
                # The nonces are spent whether or not the bytes left: later messages would not decrypt.
                self._write_error = NoiseWriteInterrupted(
                    "an earlier write on this connection was interrupted"
                )
                raise
        finally:
            lock.release()

    def encrypt(self, data: bytes) -> bytes:
        """One message's ciphertext (no length prefix), as the stock read-writer's encrypt."""
        return self._encoder.seal(data)

    def decrypt(self, data: bytes) -> bytes:
        """One message's plaintext from its ciphertext (no length prefix), as the stock decrypt."""
        return self._decoder.open(data)

    async def close(self) -> None:
        await self.raw_conn.close()

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # already failing: the caller needs the first error
            await self.raw_conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.raw_conn.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self.raw_conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.raw_conn.get_connection_type()


class NoiseSession(SecureSession):
    """A SecureSession (peers, keys, addresses, close) whose reads and writes use NoiseMessageReadWriter.

    read(n) keeps SecureSession's contract: n=None returns the rest of the current message or the next
    one; otherwise it returns exactly n bytes, fewer only if the connection ended after some arrived.
    """

    conn: NoiseMessageReadWriter

    def __init__(
        self,
        *,
        local_peer: ID,
        local_private_key: PrivateKey,
        remote_peer: ID,
        remote_permanent_pubkey: PublicKey,
        is_initiator: bool,
        conn: NoiseMessageReadWriter,
    ) -> None:
        super().__init__(
            local_peer=local_peer,
            local_private_key=local_private_key,
            remote_peer=remote_peer,
            remote_permanent_pubkey=remote_permanent_pubkey,
            is_initiator=is_initiator,
            conn=conn,
        )
        self._chunk = b""
        self._chunk_pos = 0

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        chunk = self._chunk
        pos = self._chunk_pos
        available = len(chunk) - pos
        if n is None or n < 0:
            if available:
                self._chunk = b""
                self._chunk_pos = 0
                return chunk[pos:] if pos else chunk
            return await self.conn.read_msg()
        if available >= n:
            end = pos + n
            if end == len(chunk):
                self._chunk = b""
                self._chunk_pos = 0
                return chunk[pos:] if pos else chunk
            self._chunk_pos = end
            return chunk[pos:end]
        parts = [chunk[pos:] if pos else chunk] if available else []
        self._chunk = b""
        self._chunk_pos = 0
        needed = n - available
        while needed:
            try:
                message = await self.conn.read_msg()
            except NoiseEndOfStream:
                if needed < n:
                    return b"".join(parts)  # the end of the stream: what arrived; the next read raises
                raise
            if len(message) <= needed:
                parts.append(message)
                needed -= len(message)
            else:
                parts.append(message[:needed])
                self._chunk = message
                self._chunk_pos = needed
                needed = 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_some(self) -> bytes | bytearray:
        """Whatever plaintext is buffered or next arrives, at least one byte (what read(None) returns
        and more: every whole message received so far). For the Yamux read loop."""
        chunk = self._chunk
        if len(chunk) > self._chunk_pos:
            pos = self._chunk_pos
            self._chunk = b""
            self._chunk_pos = 0
            return chunk[pos:] if pos else chunk
        return await self.conn.read_some()

    async def write(self, data: bytes) -> None:
        await self.conn.write_msg(data)

    async def close(self) -> None:
        await self.conn.close()


def _fast_session(session: ISecureConn, raw_conn: IRawConnection) -> NoiseSession:
    """Take over a freshly handshaken stock session: same peers and keys, our transport I/O."""
    if not isinstance(session, SecureSession) or not isinstance(session.conn, NoiseTransportReadWriter):
        raise NoiseSessionError(f"unexpected session type from the Noise handshake: {type(session).__name__}")
    protocol = session.conn.noise_state.noise_protocol
    if protocol is None or protocol.cipher_state_encrypt is None or protocol.cipher_state_decrypt is None:
        raise NoiseSessionError("the Noise handshake finished without transport cipher states")
    outbound = protocol.cipher_state_encrypt
    inbound = protocol.cipher_state_decrypt
    conn = NoiseMessageReadWriter(
        raw_conn,
        NoiseMessageEncoder(bytes(outbound.k), outbound.n),
        NoiseMessageDecoder(bytes(inbound.k), inbound.n),
    )
    return NoiseSession(
        local_peer=session.local_peer,
        local_private_key=session.local_private_key,
        remote_peer=session.remote_peer,
        remote_permanent_pubkey=session.remote_permanent_pubkey,
        is_initiator=session.is_initiator,
        conn=conn,
    )


class FastNoiseTransport(NoiseTransport):
    """py-libp2p's Noise XX transport (handshake unchanged) returning NoiseSession connections."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _fast_session(await super().secure_inbound(conn), conn)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _fast_session(await super().secure_outbound(conn, peer_id), conn)


def noise_transport(key_pair: KeyPair) -> NoiseTransport:
    """Noise XX with a fresh X25519 static key per process, signed by the peer's identity key."""
    return FastNoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
