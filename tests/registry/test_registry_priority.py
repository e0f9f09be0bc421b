"""Small requests before bulk transfers (ipfsreg/registry/priority.py), and the memory budget of
uploads in flight (RegistryStore.memory): pure trio, then over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing
from registry_helpers import make_settings, running_registry, sha256

from ipfsreg.node.testing import wait_until
from ipfsreg.registry.priority import Priority, Turn, bulk_chunks
from ipfsreg.registry.storage import _PIECE_BYTES, MemoryBudget


async def test_bulk_turns_wait_while_an_interactive_request_is_in_progress() -> None:
    priority = Priority(max_wait=10)
    bulk = Turn(priority, interactive=False)
    await bulk.bulk_turn()  # nobody interactive: no wait
    assert priority.waits == 0
    passed = trio.Event()

    async def transfer() -> None:
        await bulk.bulk_turn()
        passed.set()

    async with trio.open_nursery() as nursery:
        with Turn(priority) as small:
            nursery.start_soon(transfer)
            await trio.testing.wait_all_tasks_blocked()
            assert not passed.is_set() and priority.interactive == 1
            small.to_bulk()  # the small request starts a bulk part of its own, or ends
        await passed.wait()
    assert priority.waits == 1 and priority.interactive == 0


async def test_a_bulk_turn_waits_at_most_max_wait(autojump_clock: trio.testing.MockClock) -> None:
    priority = Priority(max_wait=0.05)
    with Turn(priority):
        began = trio.current_time()
        await Turn(priority, interactive=False).bulk_turn()
        assert trio.current_time() - began == 0.05


async def test_bulk_chunks_take_a_turn_before_each_chunk_and_close_the_source() -> None:
    priority = Priority()
    closed = []

    async def source() -> object:
        try:
            for i in range(3):
                yield bytes([i])
        finally:
            closed.append(True)

    turn = Turn(priority)
    with turn:
        chunks = bulk_chunks(turn, source())  # type: ignore[arg-type]
        assert [c async for c in chunks] == [b"\x00", b"\x01", b"\x02"]
        assert priority.interactive == 0  # the stream made its request bulk
    assert closed == [True]


async def test_memory_budget_admits_one_piece_whatever_its_size_and_wakes_waiters() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(500)  # alone: always admitted
    assert budget.would_wait(1)
    got = trio.Event()

    async def second() -> None:
        await budget.acquire(60)
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not got.is_set()
        budget.release(500)
    assert got.is_set() and budget.used == 60


async def test_concurrent_uploads_under_a_small_memory_budget_all_complete_within_it(tmp_path: Path) -> None:
    # Eight uploads of 3 MiB against a 2 MiB budget: each waits its turn for memory and none holds
    # the others up for good (a waiting upload gives back what it holds).
    limit = 2 * 1024 * 1024
    settings = make_settings(upload_memory_bytes=limit, upload_flush_bytes=4 * 1024 * 1024)
    async with running_registry(tmp_path, settings) as server:
        blobs = [os.urandom(3 * 1024 * 1024) for _ in range(8)]

        async def push(data: bytes) -> None:
            started = await server.client.post("/v2/app/blobs/uploads/")
            patched = await server.client.patch(started.headers["Location"], content=data)
            assert patched.status_code == 202
            done = await server.client.put(patched.headers["Location"], params={"digest": sha256(data)})
            assert done.status_code == 201

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for data in blobs:
                    nursery.start_soon(push, data)
        assert server.store.memory.used == 0
        assert 0 < server.store.memory.peak <= limit + _PIECE_BYTES
        for data in blobs:
            assert (await server.client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_manifest_gets_are_interactive_and_blob_streams_bulk(tmp_path: Path) -> None:
    async with running_registry(tmp_path) as server:
        digest, _ = await server.push_image("app", "v1", layers=[os.urandom(2 * 1024 * 1024)])
        priority = server.app.priority
        layer = (await server.client.get(f"/v2/app/manifests/{digest}")).json()["layers"][0]["digest"]
        async with server.client.stream("GET", f"/v2/app/blobs/{layer}") as streaming:
            async for _ in streaming.aiter_bytes():
                assert priority.interactive == 0  # the blob's body moves as bulk
                # A manifest GET in the middle: interactive while handled, and served.
                assert (await server.client.get("/v2/app/manifests/v1")).status_code == 200
                break
        await wait_until(lambda: priority.interactive == 0)  # handlers end just after their responses
