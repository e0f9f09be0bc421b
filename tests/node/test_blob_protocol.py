"""``/ipfsreg/blob/1.0.0`` as pure bytes: digest CIDs, frames, requests and answers, and the order an
asker accepts them in (a provider that breaks it is a liar)."""

from __future__ import annotations

import hashlib

import dag_cbor
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfsreg.cid import CID, RAW
from ipfsreg.node.blobs.protocol import (
    MAX_FRAME,
    AnswerSequence,
    BlobProtocolError,
    Claimed,
    Failed,
    Fetching,
    FrameReader,
    Have,
    Leaf,
    Missing,
    Request,
    decode_answer,
    decode_request,
    digest_cid,
    encode_answer,
    encode_frame,
    encode_request,
)

DIGEST = "sha256:" + "0f" * 32
LEAF = Leaf(CID.hash(b"leaf"), 4)
ROOT = CID.hash(b"root")


def body(frame: bytes) -> bytes:
    (only,) = FrameReader().feed(frame)
    return only


def test_a_digest_cid_is_raw_cidv1_of_the_sha256_of_the_digest_string() -> None:
    cid = digest_cid(DIGEST)
    assert (cid.version, cid.codec) == (1, RAW)
    assert cid.digest == hashlib.sha256(DIGEST.encode()).digest()
    assert digest_cid(DIGEST) == CID.hash(DIGEST.encode())  # as Spegel derives its keys


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, 42, None])
def test_anything_but_an_oci_digest_is_refused(digest: object) -> None:
    with pytest.raises(BlobProtocolError):
        digest_cid(digest)  # type: ignore[arg-type]
    with pytest.raises(BlobProtocolError):
        decode_request(dag_cbor.encode({"digest": digest, "claim": False}))


@pytest.mark.parametrize("claim", [True, False])
def test_requests_round_trip(claim: bool) -> None:
    assert decode_request(body(encode_request(Request(DIGEST, claim)))) == Request(DIGEST, claim)


@pytest.mark.parametrize(
    "answer",
    [
        Missing(),
        Have(ROOT, 1000),
        Claimed(("12D3KooA", "12D3KooB")),
        Fetching(None, 0, ()),
        Fetching(1000, 3, (LEAF, LEAF)),
        Failed("the upstream said 404"),
    ],
)
def test_answers_round_trip(answer: object) -> None:
    assert decode_answer(body(encode_answer(answer))) == answer  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc",
    [
        {"state": "guessing"},
        {"state": "have", "root": b"\x01", "size": 1},
        {"state": "have", "root": ROOT.to_bytes(), "size": -1},
        {"state": "have", "root": ROOT.to_bytes(), "size": True},
        {"state": "claimed", "claimants": "x"},
        {"state": "claimed", "claimants": ["p"] * 65},
        {"state": "fetching", "size": None, "first": 0, "leaves": [[LEAF.cid.to_bytes()]]},
        {"state": "fetching", "size": None, "first": 0, "leaves": [[LEAF.cid.to_bytes(), 2**21]]},
        {"state": "fetching", "size": None, "first": -1, "leaves": []},
        ["not", "a", "map"],
    ],
)
def test_malformed_answers_are_protocol_errors(doc: object) -> None:
    with pytest.raises(BlobProtocolError):
        decode_answer(dag_cbor.encode(doc))


def test_undecodable_bytes_are_protocol_errors() -> None:
    with pytest.raises(BlobProtocolError):
        decode_answer(b"\xff\xff")


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=50))
def test_frames_come_out_whole_however_the_bytes_are_split(bodies: list[bytes], step: int) -> None:
    wire = b"".join(encode_frame(b) for b in bodies)
    reader = FrameReader()
    out: list[bytes] = []
    for pos in range(0, len(wire), step):
        out.extend(reader.feed(wire[pos : pos + step]))
    assert out == bodies
    assert reader.buffered == 0


def test_an_oversized_or_malformed_frame_length_is_refused() -> None:
    with pytest.raises(BlobProtocolError):
        FrameReader().feed(b"\xff\xff\xff\x7f")  # 2**28 - 1 bytes: over MAX_FRAME
    with pytest.raises(BlobProtocolError):
        FrameReader().feed(b"\xff" * 9)
    with pytest.raises(BlobProtocolError):
        encode_frame(b"x" * (MAX_FRAME + 1))
    assert FrameReader().feed(b"\x85") == []  # a length still arriving


def test_an_in_flight_stream_accumulates_leaves_then_ends_with_have() -> None:
    sequence = AnswerSequence()
    sequence.receive(Claimed(("a",)))
    sequence.receive(Claimed(("a", "b")))
    sequence.receive(Fetching(12, 0, (LEAF,)))
    sequence.receive(Fetching(12, 1, (LEAF, LEAF)))
    assert (len(sequence.leaves), sequence.offset) == (3, 12)
    sequence.receive(Have(ROOT, 12))
    assert sequence.finished


@pytest.mark.parametrize(
    "answers",
    [
        [Fetching(None, 1, (LEAF,))],  # a gap
        [Fetching(None, 0, (LEAF,)), Fetching(None, 0, (LEAF,))],  # a repeat
        [Fetching(6, 0, (LEAF, LEAF))],  # more than the size
        [Fetching(8, 0, (LEAF,)), Fetching(9, 1, ())],  # the size changed
        [Fetching(8, 0, (LEAF,)), Have(ROOT, 9)],  # a different size at the end
        [Fetching(None, 0, (LEAF, LEAF)), Have(ROOT, 4)],  # less than announced
        [Fetching(None, 0, (Leaf(LEAF.cid, 0),))],  # an empty leaf
        [Fetching(None, 0, ()), Claimed(())],  # back to claimed
        [Fetching(None, 0, ()), Missing()],
        [Have(ROOT, 1), Missing()],  # anything after the end
        [Missing(), Have(ROOT, 1)],
        [Failed("x"), Fetching(None, 0, ())],
    ],
)
def test_answers_out_of_order_are_a_lie(answers: list[object]) -> None:
    sequence = AnswerSequence()
    with pytest.raises(BlobProtocolError):
        for answer in answers:
            sequence.receive(answer)  # type: ignore[arg-type]
