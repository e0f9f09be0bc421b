"""Storage behaviour seen through the API: reads via the block source, aborted chunks, concurrent chunks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from registry_helpers import Server, make_settings, sha256

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.registry.app import create_app, registry_store, serve_registry
from ipfsreg.unixfs.exporter import LocalBlockSource


class CountingSource:
    """A BlockSource standing in for the node's network-backed one: counts what it serves."""

    def __init__(self, datastore: Datastore) -> None:
        self.inner = LocalBlockSource(datastore.blocks)
        self.gets: list[CID] = []
        self.prefetched: list[CID] = []

    async def get(self, cid: CID) -> bytes:
        self.gets.append(cid)
        return await self.inner.get(cid)

    def prefetch(self, cids: Sequence[CID]) -> None:
        self.prefetched.extend(cids)


@asynccontextmanager
async def _serve_with_source(data_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, CountingSource]]:
    settings = make_settings()
    with Datastore.open(data_dir) as datastore:
        source = CountingSource(datastore)
        app = create_app(datastore, settings, block_source=source)
        assert registry_store(app).block_source is source
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_registry, app, settings)
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                yield client, source
            nursery.cancel_scope.cancel()


async def test_blob_get_reads_through_the_given_block_source(tmp_path: Path) -> None:
    data = os.urandom(800_000)
    async with _serve_with_source(tmp_path) as (client, source):
        resp = await client.post("/v2/app/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        assert resp.status_code == 201
        assert source.gets == []  # uploads hash as they go and never read back through the source
        resp = await client.get(f"/v2/app/blobs/{sha256(data)}")
        assert resp.content == data
        root = resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/")
        assert str(source.gets[0]) == root
        # The three whole 256 KiB leaves lie in a pack file and go out with sendfile
        # (registry/zerocopy.py); the root and the 13,568-byte last leaf (inline in LevelDB) come
        # through the source, which is asked to prefetch only that leaf.
        assert len(source.gets) == 2
        assert source.prefetched == source.gets[1:]


async def test_blob_upload_aborted_chunk_leaves_session_at_last_complete_chunk(registry: Server) -> None:
    data = os.urandom(1_000_000)
    resp = await registry.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    first = data[:400_000]
    resp = await registry.client.patch(location, content=first, headers={"Content-Range": "0-399999"})
    assert resp.status_code == 202
    host, port = registry.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 600000\r\n"
        "Content-Range: 400000-999999\r\n\r\n"
    ).encode()
    await stream.send_all(head + data[400_000:700_000])
    await stream.aclose()  # the client goes away halfway through the chunk
    status = await registry.client.get(location)
    assert status.headers["Range"] == "0-399999"
    resp = await registry.client.patch(
        location, content=data[400_000:], headers={"Content-Range": "400000-999999"}
    )
    assert resp.status_code == 202
    resp = await registry.client.put(location, params={"digest": sha256(data)})
    assert resp.status_code == 201
    assert (await registry.client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_concurrent_chunks_for_the_same_offset_accept_exactly_one(registry: Server) -> None:
    resp = await registry.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    outcomes: dict[int, bytes] = {}

    async def send(payload: bytes) -> None:
        r = await registry.client.patch(location, content=payload, headers={"Content-Range": "0-299999"})
        outcomes[r.status_code] = payload

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, os.urandom(300_000))
        nursery.start_soon(send, os.urandom(300_000))
    assert sorted(outcomes) == [202, 416]
    status = await registry.client.get(location)
    assert status.headers["Range"] == "0-299999"
    resp = await registry.client.put(location, params={"digest": sha256(outcomes[202])})
    assert resp.status_code == 201


async def test_upload_survives_datastore_reopen_midway_through_leaves(tmp_path: Path) -> None:
    from registry_helpers import running_registry

    data = os.urandom(5 * 262_144 + 1000)
    cut = 3 * 262_144 + 17
    async with running_registry(tmp_path) as server:
        resp = await server.client.post("/v2/app/blobs/uploads/")
        location = resp.headers["Location"]
        assert (await server.client.patch(location, content=data[:cut])).status_code == 202
    async with running_registry(tmp_path) as server:
        assert list(server.store.iter_uploads()) == [location.rsplit("/", 1)[1]]
        resp = await server.client.put(location, params={"digest": sha256(data)}, content=data[cut:])
        assert resp.status_code == 201
        assert list(server.store.iter_uploads()) == []
        assert (await server.client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_idle_upload_sessions_leave_memory_and_resume_from_saved_state(registry: Server) -> None:
    data = os.urandom(300_000)
    resp = await registry.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    assert (await registry.client.patch(location, content=data[:100_000])).status_code == 202
    assert registry.store.live_uploads == 1
    assert registry.store.evict_idle_uploads(idle_seconds=0) == 1
    assert registry.store.live_uploads == 0
    status = await registry.client.get(location)
    assert status.headers["Range"] == "0-99999"
    resp = await registry.client.put(location, params={"digest": sha256(data)}, content=data[100_000:])
    assert resp.status_code == 201


async def test_gc_support_lists_live_roots_and_unreferenced_blobs(registry: Server) -> None:
    store = registry.store
    digest, manifest = await registry.push_image("app", "v1", layers=[b"kept layer"])
    dropped = await registry.push_blob("app", b"deleted blob")
    assert (await registry.client.delete(f"/v2/app/blobs/{dropped}")).status_code == 202
    resp = await registry.client.post("/v2/app/blobs/uploads/")
    partial = os.urandom(600_000)
    assert (await registry.client.patch(resp.headers["Location"], content=partial)).status_code == 202

    roots = {str(cid) for cid in store.live_roots()}
    for ref in [digest, manifest["config"]["digest"], manifest["layers"][0]["digest"]]:
        path = (await registry.client.head(f"/v2/app/blobs/{ref}")).headers.get("X-Ipfs-Path") or (
            await registry.client.head(f"/v2/app/manifests/{ref}")
        ).headers["X-Ipfs-Path"]
        assert path.removeprefix("/ipfs/") in roots
    upload = next(iter(store._live.values()))
    assert {str(cid) for cid, _ in upload.importer.written_subtrees()} <= roots
    unreferenced = store.unreferenced_blobs()
    assert [str(info.digest) for info in unreferenced] == [dropped]
    assert str(unreferenced[0].cid) not in roots
    with registry.datastore.batch() as batch:
        store.forget_blob(batch, unreferenced[0].digest)
    assert store.unreferenced_blobs() == []
    # A layer deleted from the repository while its manifest still names it stays live.
    layer = manifest["layers"][0]["digest"]
    assert (await registry.client.delete(f"/v2/app/blobs/{layer}")).status_code == 202
    assert store.unreferenced_blobs() == []
    assert (await registry.client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    assert sorted(str(info.digest) for info in store.unreferenced_blobs()) == sorted([layer, digest])


async def test_damaged_upload_record_gives_blob_upload_invalid(registry: Server) -> None:
    resp = await registry.client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    uuid = location.rsplit("/", 1)[1]
    registry.store.evict_idle_uploads(idle_seconds=-1)
    registry.store.uploads.put(uuid.encode(), b"\x00\x00\x00\x02{}garbage")
    resp = await registry.client.get(location)
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"


async def test_manifest_with_lost_blocks_answers_500_json(registry: Server) -> None:
    digest, _ = await registry.push_image("app", "v1")
    info = registry.store.resolve("app", "v1")
    registry.datastore.blocks.delete(info.cid)
    resp = await registry.client.get("/v2/app/manifests/v1")
    assert resp.status_code == 500
    assert resp.json()["errors"][0]["code"] == "UNKNOWN"
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert digest
