"""The producer task behind a streamed gateway body: chunks in order, errors and aborts reach the
response (so it is cut short, never ended cleanly), and closing the response stops the producer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio
from gateway_support import MemorySource

from ipfsreg.gateway.routes import StreamAborted, stream_body
from ipfsreg.unixfs.exporter import BlockSource


async def hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


def chunks_then(tail: BaseException | None, count: int = 3) -> Callable[[BlockSource], AsyncIterator[bytes]]:
    async def body(source: BlockSource) -> AsyncIterator[bytes]:
        for i in range(count):
            yield b"chunk %d" % i
        if tail is not None:
            raise tail
        await trio.lowlevel.checkpoint()

    return body


async def test_stream_body_yields_every_chunk_in_order() -> None:
    async with trio.open_nursery() as outer:
        producers = await outer.start(hold_nursery)
        got = [c async for c in stream_body(producers, MemorySource, chunks_then(None, 10))]
        outer.cancel_scope.cancel()
    assert got == [b"chunk %d" % i for i in range(10)]


async def test_stream_body_reraises_the_producers_error_after_its_chunks() -> None:
    got: list[bytes] = []
    async with trio.open_nursery() as outer:
        producers = await outer.start(hold_nursery)
        with pytest.raises(KeyError, match="missing block"):
            async for chunk in stream_body(producers, MemorySource, chunks_then(KeyError("missing block"))):
                got.append(chunk)
        outer.cancel_scope.cancel()
    assert got == [b"chunk 0", b"chunk 1", b"chunk 2"]


async def test_stream_body_cut_by_a_cancelled_producer_raises_stream_aborted() -> None:
    async def endless(source: BlockSource) -> AsyncIterator[bytes]:
        yield b"first"
        await trio.sleep_forever()

    async with trio.open_nursery() as outer:
        producers = await outer.start(hold_nursery)
        stream = stream_body(producers, MemorySource, endless)
        with pytest.raises(StreamAborted):
            async for chunk in stream:
                assert chunk == b"first"
                producers.cancel_scope.cancel()  # as at server shutdown
        outer.cancel_scope.cancel()


async def test_closing_the_stream_cancels_the_producer() -> None:
    finished = trio.Event()

    async def endless(source: BlockSource) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"more"
        finally:
            finished.set()

    async with trio.open_nursery() as outer:
        producers = await outer.start(hold_nursery)
        stream = stream_body(producers, MemorySource, endless)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        with trio.fail_after(30):  # a hang guard, not a timing threshold
            await finished.wait()
        outer.cancel_scope.cancel()
