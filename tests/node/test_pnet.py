"""The private network's pure parts: swarm.key files, HSalsa20/XSalsa20 vectors, and the PSK stream."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os

import nacl.secret
import pytest
from Crypto.Cipher import Salsa20
from hypothesis import given
from hypothesis import strategies as st

from ipfsreg.node import pnet
from ipfsreg.node.pnet import (
    MULTISTREAM_HEADER,
    NONCE_SIZE,
    PnetError,
    PnetHandshakeError,
    PnetReceiver,
    PnetSender,
    SwarmKeyError,
    XSalsa20,
    fingerprint,
    format_swarm_key,
    hsalsa20,
    parse_swarm_key,
)

KEY = bytes(range(32))
HEX_KEY = KEY.hex()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- swarm.key files (go-libp2p core/pnet/codec.go) ---------------------------------------------


def test_swarm_key_base16_as_ipfs_swarm_key_gen_writes_it() -> None:
    assert parse_swarm_key(f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}\n".encode()) == KEY


def test_swarm_key_with_windows_line_ends_and_upper_case_hex() -> None:
    text = f"/key/swarm/psk/1.0.0/\r\n/base16/\r\n{HEX_KEY.upper()}\r\n".encode()
    assert parse_swarm_key(text) == KEY


def test_swarm_key_without_final_newline_and_trailing_text_is_read_as_go_reads_it() -> None:
    assert parse_swarm_key(f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}".encode()) == KEY
    assert parse_swarm_key(f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}\nignored\n".encode()) == KEY


def test_swarm_key_base64_and_bin_encodings() -> None:
    b64 = base64.b64encode(KEY)
    assert parse_swarm_key(b"/key/swarm/psk/1.0.0/\n/base64/\n" + b64 + b"\n") == KEY
    assert parse_swarm_key(b"/key/swarm/psk/1.0.0/\n/bin/\n" + KEY) == KEY


def test_format_swarm_key_round_trips_and_matches_the_kubo_layout() -> None:
    text = format_swarm_key(KEY)
    assert text == f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}\n".encode()
    assert parse_swarm_key(text) == KEY


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (b"", "header lines"),
        (b"/key/swarm/psk/2.0.0/\n/base16/\n" + HEX_KEY.encode(), "starts with the line"),
        (b"/key/swarm/psk/1.0.0/\n/base58/\n" + HEX_KEY.encode(), "unknown swarm key encoding"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n" + HEX_KEY[:62].encode(), "62 hex digits"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"zz" * 32, "not hexadecimal"),
        (b"/key/swarm/psk/1.0.0/\n/base64/\nnot base64!\n", "does not decode"),
        (b"/key/swarm/psk/1.0.0/\n/bin/\n" + KEY[:31], "31 bytes"),
    ],
)
def test_bad_swarm_key_files_are_refused_with_the_reason(text: bytes, complaint: str) -> None:
    with pytest.raises(SwarmKeyError, match=complaint):
        parse_swarm_key(text)


def test_fingerprint_is_kubos_salsa20_then_shake128() -> None:
    # Kubo core/node/libp2p/pnet.go: Salsa20(64 zero bytes, nonce "finprint", PSK), SHAKE-128 to 16 bytes.
    stream = Salsa20.new(key=KEY, nonce=b"finprint").encrypt(bytes(64))
    assert fingerprint(KEY) == hashlib.shake_128(stream).digest(16)
    assert len(fingerprint(KEY)) == 16
    assert fingerprint(KEY) != fingerprint(bytes(32))


def test_a_psk_is_32_bytes() -> None:
    with pytest.raises(PnetError, match="32 bytes"):
        PnetSender(bytes(31))
    with pytest.raises(PnetError, match="32 bytes"):
        format_swarm_key(bytes(33))


# --- HSalsa20 / XSalsa20 ------------------------------------------------------------------------


def test_hsalsa20_matches_the_nacl_core1_vector() -> None:
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    first = "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389"
    assert hsalsa20(shared, bytes(16)).hex() == first


def test_hsalsa20_matches_the_nacl_core2_vector() -> None:
    first = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
    nonce = bytes.fromhex("69696ee955b62b73cd62bda875fc73d6")
    second = "dc908dda0b9344a953629b733820778880f3ceb421bb61b91cbd4c3e66256ce4"
    assert hsalsa20(first, nonce).hex() == second


BACKENDS = pytest.mark.parametrize("sodium", [True, False], ids=["libsodium", "pycryptodome"])


def test_libsodium_backend_is_loaded() -> None:
    # The fast path: PyNaCl's libsodium through ctypes (the fallback is about half as fast).
    assert pnet._SODIUM is not None


@BACKENDS
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    size=st.integers(0, 3000),
)
def test_xsalsa20_keystream_equals_libsodium_secretbox(
    sodium: bool, key: bytes, nonce: bytes, size: int
) -> None:
    # libsodium's secretbox is XSalsa20-Poly1305: its ciphertext after the 16-byte tag is the message
    # XOR the XSalsa20 keystream from byte 32 on (the first 32 bytes key Poly1305).
    message = os.urandom(size)
    box = nacl.secret.SecretBox(key).encrypt(message, nonce).ciphertext
    stream = XSalsa20(key, nonce, sodium=sodium)
    stream.xor(bytes(32))
    assert stream.xor(message) == box[16:]


@BACKENDS
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_xsalsa20_continues_across_calls_of_any_size(sodium: bool, data: bytes, cuts: list[int]) -> None:
    nonce = bytes(range(24))
    whole = XSalsa20(KEY, nonce, sodium=False).xor(data)
    stream = XSalsa20(KEY, nonce, sodium=sodium)
    assert b"".join(stream.xor(piece) for piece in _split(data, cuts)) == whole


def test_xsalsa20_large_and_consecutive_calls_keep_earlier_results_intact() -> None:
    nonce = bytes(range(24))
    pieces = [os.urandom(n) for n in (300_001, 700_000, 5, 262_144, 600_000)]  # past the scratch buffer
    stream = XSalsa20(KEY, nonce)
    results = [stream.xor(piece) for piece in pieces]  # each result survives the next call
    assert b"".join(results) == XSalsa20(KEY, nonce, sodium=False).xor(b"".join(pieces))


# --- the two directions of a connection (go-libp2p p2p/net/pnet/psk_conn.go) ---------------------


def test_sender_sends_its_nonce_first_then_xsalsa20_of_everything() -> None:
    nonce = os.urandom(NONCE_SIZE)
    sender = PnetSender(KEY, nonce)
    wire = sender.encrypt(MULTISTREAM_HEADER) + sender.encrypt(b"/noise\n")
    assert wire[:NONCE_SIZE] == nonce
    assert XSalsa20(KEY, nonce).xor(wire[NONCE_SIZE:]) == MULTISTREAM_HEADER + b"/noise\n"


@given(cuts=st.lists(st.integers(0, 200), max_size=10))
def test_receiver_decrypts_a_go_libp2p_stream_split_anywhere(cuts: list[int]) -> None:
    # What go-libp2p sends: 24 random bytes, then XSalsa20(PSK, those bytes) of the plaintext.
    nonce = os.urandom(NONCE_SIZE)
    plain = MULTISTREAM_HEADER + os.urandom(150)
    wire = nonce + XSalsa20(KEY, nonce).xor(plain)
    receiver = PnetReceiver(KEY)
    assert b"".join(receiver.decrypt(piece) for piece in _split(wire, cuts)) == plain
    assert receiver.started


def test_sender_and_receiver_with_the_same_key_agree() -> None:
    sender, receiver = PnetSender(KEY), PnetReceiver(KEY)
    assert (
        receiver.decrypt(sender.encrypt(MULTISTREAM_HEADER + b"/noise\n")) == MULTISTREAM_HEADER + b"/noise\n"
    )


def test_receiver_refuses_a_peer_with_another_key() -> None:
    wire = PnetSender(bytes(32)).encrypt(MULTISTREAM_HEADER)
    with pytest.raises(PnetHandshakeError, match="differs from ours"):
        PnetReceiver(KEY).decrypt(wire)


def test_receiver_refuses_another_key_even_one_byte_at_a_time() -> None:
    wire = PnetSender(bytes(32)).encrypt(MULTISTREAM_HEADER)
    receiver = PnetReceiver(KEY)
    with pytest.raises(PnetHandshakeError, match="differs from ours"):
        for i in range(len(wire)):
            receiver.decrypt(wire[i : i + 1])


def test_receiver_says_when_the_peer_speaks_plain_libp2p() -> None:
    with pytest.raises(PnetHandshakeError, match="no swarm key"):
        PnetReceiver(KEY).decrypt(MULTISTREAM_HEADER)  # py-libp2p sends the header alone and waits
    with pytest.raises(PnetHandshakeError, match="no swarm key"):
        PnetReceiver(KEY).decrypt(MULTISTREAM_HEADER + b"\x07/noise\n")  # Kubo sends both at once


def test_receiver_waits_for_the_whole_nonce() -> None:
    receiver = PnetReceiver(KEY)
    assert receiver.decrypt(os.urandom(10)) == b""
    assert not receiver.started


def test_py_libp2p_pnet_is_not_go_libp2p_compatible() -> None:
    # py-libp2p 0.8's libp2p.security.pnet sends an 8-byte nonce and plain Salsa20 under the PSK;
    # go-libp2p (and this module) read a 24-byte nonce and XSalsa20, so the handshake cannot decrypt.
    nonce8 = os.urandom(8)
    py_libp2p_wire = nonce8 + Salsa20.new(key=KEY, nonce=nonce8).encrypt(MULTISTREAM_HEADER + b"\x07/noise\n")
    with pytest.raises(PnetHandshakeError, match="differs from ours"):
        PnetReceiver(KEY).decrypt(py_libp2p_wire)
