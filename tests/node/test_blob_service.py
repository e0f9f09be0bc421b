"""``/ipfsreg/blob/1.0.0`` between two nodes on loopback: answers stream in order, a provider that
breaks the order is a protocol error, a request that is garbage or never comes ends that stream only."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamReset

from ipfsreg.cid import CID
from ipfsreg.node.blobs.protocol import (
    PROTOCOL_ID,
    Answer,
    BlobProtocolError,
    Fetching,
    Have,
    Leaf,
    Missing,
    Request,
)
from ipfsreg.node.blobs.service import BlobQueryError
from ipfsreg.node.testing import running_nodes

DIGEST = "sha256:" + "5a" * 32
ROOT = CID.hash(b"root")
LEAF = Leaf(CID.hash(b"leaf"), 4)


def provider(*answers: Answer) -> object:
    async def answer(peer: str, request: Request) -> AsyncGenerator[Answer, None]:
        for item in answers:
            yield item

    return answer


async def ask(asker: object, peer: str, request: Request) -> list[Answer]:
    async with asker.blobs.query(peer, request) as answers:  # type: ignore[attr-defined]
        return [answer async for answer in answers]


async def test_answers_arrive_in_order_and_the_asker_learns_who_asked(tmp_path: Path) -> None:
    seen: list[tuple[str, Request]] = []

    async def answer(peer: str, request: Request) -> AsyncGenerator[Answer, None]:
        seen.append((peer, request))
        yield Fetching(8, 0, (LEAF,))
        await trio.sleep(0.05)
        yield Fetching(8, 1, (LEAF,))
        yield Have(ROOT, 8)

    async with running_nodes(tmp_path) as nodes:
        a, b = await nodes.start(), await nodes.start()
        b.blobs.serve(answer)
        await a.connect(b.listen_addrs()[0])
        assert await ask(a, b.peer_id, Request(DIGEST, claim=True)) == [
            Fetching(8, 0, (LEAF,)),
            Fetching(8, 1, (LEAF,)),
            Have(ROOT, 8),
        ]
        assert seen == [(a.peer_id, Request(DIGEST, claim=True))]
        b.blobs.serve(None)
        assert await ask(a, b.peer_id, Request(DIGEST)) == [Missing()]


async def test_a_provider_breaking_the_order_is_a_protocol_error(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as nodes:
        a, b = await nodes.start(), await nodes.start()
        b.blobs.serve(provider(Fetching(None, 3, (LEAF,))))  # leaves 0..2 were never announced
        await a.connect(b.listen_addrs()[0])
        with pytest.raises(BlobProtocolError):
            await ask(a, b.peer_id, Request(DIGEST))
        b.blobs.serve(provider(Fetching(None, 0, ())))  # then ends without a final answer
        with pytest.raises(BlobQueryError):
            await ask(a, b.peer_id, Request(DIGEST))


async def test_a_garbage_request_resets_its_stream_and_the_node_goes_on_answering(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as nodes:
        a, b = await nodes.start(), await nodes.start()
        b.blobs.serve(provider(Have(ROOT, 1)))
        await a.connect(b.listen_addrs()[0])
        stream = await a.host.new_stream(b.identity.peer_id, [TProtocol(PROTOCOL_ID)])
        await stream.write(b"\x05hello")
        with trio.fail_after(5):
            while b.blobs.violations == 0:  # noqa: ASYNC110 - the other node's counter, no event to wait on
                await trio.sleep(0.01)
        assert await ask(a, b.peer_id, Request(DIGEST)) == [Have(ROOT, 1)]


async def test_a_request_that_never_comes_times_out_on_the_answering_side(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as nodes:
        a, b = await nodes.start(), await nodes.start()
        b.blobs.request_timeout = 0.2
        await a.connect(b.listen_addrs()[0])
        stream = await a.host.new_stream(b.identity.peer_id, [TProtocol(PROTOCOL_ID)])
        with trio.fail_after(5), pytest.raises(StreamReset):
            await stream.read(10)  # reset by the answering side once its request timeout ran out
        assert not b.blobs._streams


async def test_asking_a_peer_that_is_not_connected_is_a_query_error(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as nodes:
        a, b = await nodes.start(), await nodes.start()
        with pytest.raises(BlobQueryError):
            await ask(a, b.peer_id, Request(DIGEST))
        with pytest.raises(BlobQueryError):
            await ask(a, "not-a-peer-id", Request(DIGEST))
