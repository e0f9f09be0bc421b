"""Garbage collection: what is kept (pins, registry content, uploads in progress, writes during the
collection, leases) and what goes (blocks nothing reaches), offline and in a running server."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID, RAW
from ipfsreg.gc import collect_garbage, collector_for
from ipfsreg.pins import Pins
from ipfsreg.registry.storage import RegistryStore
from ipfsreg.unixfs.importer import ImportOptions, import_bytes


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Datastore]:
    ds = Datastore.open(tmp_path / "data")
    yield ds
    ds.close()


def put_file(store: Datastore, data: bytes, **options: Any) -> CID:
    blocks, result = import_bytes(data, ImportOptions(chunk_size=1024, **options))
    store.blocks.put_many((b.cid, b.data) for b in blocks)
    return result.cid


async def test_pinned_dags_are_kept_and_unreachable_blocks_removed(store: Datastore) -> None:
    kept = put_file(store, random.Random(1).randbytes(50_000))
    dropped = put_file(store, random.Random(2).randbytes(30_000))
    Pins(store).add(kept)
    before = store.blocks.count
    report = await collect_garbage(store, [lambda: iter(Pins(store))])
    assert report.removed_blocks == before - report.marked
    assert store.blocks.has(kept)
    assert not store.blocks.has(dropped)
    # Every block of the kept DAG is still readable.
    blocks, _ = import_bytes(random.Random(1).randbytes(50_000), ImportOptions(chunk_size=1024))
    assert all(store.blocks.has(b.cid) for b in blocks)


async def test_a_cidv1_pin_keeps_the_same_dag_as_its_cidv0(store: Datastore) -> None:
    root = put_file(store, b"x" * 5000)
    Pins(store).add(root.to_v1())
    await collect_garbage(store, [lambda: iter(Pins(store))])
    assert store.blocks.has(root)


async def test_dry_run_reports_without_removing(store: Datastore) -> None:
    dropped = put_file(store, b"y" * 4000)
    report = await collect_garbage(store, [list], dry_run=True)
    assert report.removed_blocks > 0
    assert store.blocks.has(dropped)
    assert CID.v1(RAW, dropped.multihash).encode() in report.removed


async def test_blocks_written_during_a_collection_are_kept(store: Datastore) -> None:
    late_data = b"written while gc marks"
    late = CID.hash(late_data)
    calls = 0

    def roots_that_write_meanwhile() -> list[CID]:
        nonlocal calls
        calls += 1
        if calls == 1:
            store.blocks.put(late, late_data)  # an upload landing between mark and sweep
        return []

    report = await collect_garbage(store, [roots_that_write_meanwhile])
    assert store.blocks.has(late)
    assert report.kept_recent == 1


async def test_a_block_re_stored_during_collection_is_kept(store: Datastore) -> None:
    data = b"already here"
    cid = CID.hash(data)
    store.blocks.put(cid, data)

    def restore_it() -> list[CID]:
        store.blocks.put(cid, data)  # e.g. a push of bytes the store already holds, unreferenced
        return []

    await collect_garbage(store, [restore_it])
    assert store.blocks.has(cid)


async def test_leased_blocks_survive_until_released(store: Datastore) -> None:
    cid = put_file(store, b"being pulled" * 100)
    with store.lease([cid]):
        await collect_garbage(store, [list])
        assert store.blocks.has(cid)
    await collect_garbage(store, [list])
    assert not store.blocks.has(cid)


async def test_registry_content_and_unfinished_uploads_are_roots(store: Datastore) -> None:
    registry = RegistryStore(store)
    collector = collector_for(store, registry)
    orphan = put_file(store, b"nobody's" * 100)
    report = await collector.run()
    assert not store.blocks.has(orphan)
    assert report.roots == 0


# --- in a running server ----------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _push_image(client: httpx.AsyncClient, repo: str, layers: list[bytes], tag: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    for blob in [config, *layers]:
        r = await client.post(f"/v2/{repo}/blobs/uploads/?digest={_digest(blob)}", content=blob)
        assert r.status_code == 201, r.text
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
    ).encode()
    r = await client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    return _digest(manifest)


async def test_online_gc_keeps_layers_shared_across_repositories(serve_node: Any) -> None:
    shared = random.Random(10).randbytes(600_000)
    only_a = random.Random(11).randbytes(400_000)
    async with serve_node() as info, httpx.AsyncClient(base_url=info.registry_urls[0]) as client:
        manifest_a = await _push_image(client, "team/a", [shared, only_a], "v1")
        await _push_image(client, "team/b", [shared], "v1")
        # Repository a lets go of its image and of the layer only it had.
        assert (await client.delete(f"/v2/team/a/manifests/{manifest_a}")).status_code == 202
        assert (await client.delete(f"/v2/team/a/blobs/{_digest(only_a)}")).status_code == 202
        assert (await client.delete(f"/v2/team/a/blobs/{_digest(shared)}")).status_code == 202
        async with httpx.AsyncClient(base_url=info.api_url) as api:
            dry = (await api.post("/api/v0/gc", params={"dry-run": "true"})).json()
            report = (await api.post("/api/v0/gc")).json()
        assert dry["removed_blocks"] == report["removed_blocks"] > 0
        assert report["forgotten_blobs"] >= 1
        got = await client.get(f"/v2/team/b/blobs/{_digest(shared)}")
        assert got.status_code == 200
        assert got.content == shared
        assert (await client.get(f"/v2/team/a/blobs/{_digest(only_a)}")).status_code == 404


async def test_online_gc_during_a_chunked_push_loses_nothing(serve_node: Any) -> None:
    blob = random.Random(12).randbytes(1_500_000)
    async with serve_node() as info, httpx.AsyncClient(base_url=info.registry_urls[0]) as client:
        start = await client.post("/v2/busy/repo/blobs/uploads/")
        assert start.status_code == 202
        location = start.headers["Location"]
        first = await client.patch(
            location,
            content=blob[:700_000],
            headers={"Content-Range": "0-699999", "Content-Type": "application/octet-stream"},
        )
        assert first.status_code == 202, first.text
        location = first.headers["Location"]
        async with httpx.AsyncClient(base_url=info.api_url) as api, trio.open_nursery() as nursery:
            results: list[dict[str, Any]] = []

            async def run_gc() -> None:
                results.append((await api.post("/api/v0/gc")).json())

            nursery.start_soon(run_gc)
            second = await client.patch(
                location,
                content=blob[700_000:],
                headers={
                    "Content-Range": f"700000-{len(blob) - 1}",
                    "Content-Type": "application/octet-stream",
                },
            )
            assert second.status_code == 202, second.text
            location = second.headers["Location"]
        done = await client.put(location, params={"digest": _digest(blob)})
        assert done.status_code == 201, done.text
        async with httpx.AsyncClient(base_url=info.api_url) as api:
            await api.post("/api/v0/gc")
        got = await client.get(f"/v2/busy/repo/blobs/{_digest(blob)}")
        assert got.status_code == 200
        assert got.content == blob
