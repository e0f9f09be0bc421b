"""Uploads against a concurrent garbage collection (leases on flushed blocks), and the
``on_blocks_stored`` notifications of every batch of blocks uploads and manifest pushes commit."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from registry_helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, make_settings, running_registry, sha256

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.gc import collector_for
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.storage import _PIECE_BYTES, RegistryStore
from ipfsreg.unixfs.importer import import_bytes

FLUSH = 64 * 1024
# More than one ingest piece: the first part is hashed, chunked and flushed before GC runs.
PART = _PIECE_BYTES + 512 * 1024


@contextmanager
def _store(path: Path, **kwargs: object) -> Iterator[RegistryStore]:
    with Datastore.open(path) as datastore:
        yield RegistryStore(datastore, flush_bytes=FLUSH, **kwargs)  # type: ignore[arg-type]


def _dag_multihashes(data: bytes) -> set[bytes]:
    blocks, _ = import_bytes(data)
    return {block.cid.multihash for block in blocks}


async def _parts_with_gc_between(
    store: RegistryStore, data: bytes, removed: list[int]
) -> AsyncIterator[bytes]:
    """Yield ``data`` in two parts; between them run a whole garbage collection."""
    committed = trio.Event()
    store.on_blocks_stored = lambda cids: committed.set()
    yield data[:PART]
    # The upload pipeline hashes and commits behind the body reader: wait for its first commit
    # (bounded, so a pipeline that never flushes fails instead of hanging).
    with trio.fail_after(30):
        await committed.wait()
    flushed = {cid.multihash for cid in store.datastore.blocks.iter_cids()}
    assert flushed & _dag_multihashes(data), "the first part must be in LevelDB before the collection"
    report = await collector_for(store.datastore, store).run()
    removed.append(report.removed_blocks)
    yield data[PART:]


async def test_scratch_upload_survives_a_collection_started_between_its_flushes(tmp_path: Path) -> None:
    data = os.urandom(PART + 1024 * 1024)
    with _store(tmp_path) as store:
        removed: list[int] = []
        upload = store.scratch_upload("app")
        await store.append(upload, _parts_with_gc_between(store, data, removed))
        info = await store.finish_upload(upload, parse_digest(sha256(data)))
        assert removed == [0]
        assert await store.read_all(info.cid) == data
        assert store.datastore.leased() == set()  # the lease ends with the blob's commit


async def test_session_chunk_survives_a_collection_before_its_save(tmp_path: Path) -> None:
    # Blocks flushed mid-chunk are not in the session record yet: the lease holds them.
    data = os.urandom(PART + 1024 * 1024)
    with _store(tmp_path) as store:
        removed: list[int] = []
        upload = await store.new_upload("app")
        await store.append(upload, _parts_with_gc_between(store, data, removed))
        await store.save_upload(upload)
        info = await store.finish_upload(upload, parse_digest(sha256(data)))
        assert removed == [0]
        assert await store.read_all(info.cid) == data


async def test_evicted_session_is_kept_by_its_record_and_resumes_after_a_collection(tmp_path: Path) -> None:
    data = os.urandom(PART + 512 * 1024 + 12345)
    with _store(tmp_path) as store:
        upload = await store.new_upload("app")

        async def first() -> AsyncIterator[bytes]:
            yield data[:PART]

        await store.append(upload, first())
        await store.save_upload(upload)
        assert store.datastore.leased()
        assert store.evict_idle_uploads(idle_seconds=-1) == 1
        assert store.datastore.leased() == set()  # evicted: only the session record holds its blocks
        report = await collector_for(store.datastore, store).run()
        assert report.removed_blocks == 0
        resumed = await store.lock_upload("app", upload.uuid)  # re-hashes the stored bytes

        async def rest() -> AsyncIterator[bytes]:
            yield data[PART:]

        await store.append(resumed, rest())
        info = await store.finish_upload(resumed, parse_digest(sha256(data)))
        resumed.lock.release()
        assert await store.read_all(info.cid) == data


async def test_upload_leases_end_when_the_upload_is_cancelled_or_fails(tmp_path: Path) -> None:
    data = os.urandom(PART + 1000)

    async def body() -> AsyncIterator[bytes]:
        yield data

    with _store(tmp_path) as store:
        cancelled = await store.new_upload("app")
        await store.append(cancelled, body())
        assert store.datastore.leased()
        store.cancel_upload(cancelled)
        assert store.datastore.leased() == set()

        wrong = store.scratch_upload("app")
        await store.append(wrong, body())
        with pytest.raises(RegistryError) as caught:
            await store.finish_upload(wrong, parse_digest(sha256(b"other bytes")))
        assert caught.value.code == "DIGEST_INVALID"
        assert store.datastore.leased() == set()
        # Nothing holds the abandoned blocks any more: the next collection takes them.
        report = await collector_for(store.datastore, store).run()
        assert report.removed_blocks > 0
        assert store.datastore.blocks.count == 0


async def test_on_blocks_stored_gets_every_block_of_flushed_and_final_upload_batches(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 777)
    batches: list[list[CID]] = []
    with _store(tmp_path, on_blocks_stored=batches.append) as store:
        upload = store.scratch_upload("app")

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 100_000):
                yield data[i : i + 100_000]

        await store.append(upload, body())
        assert len(batches) >= 2  # leaf batches were announced as they committed
        info = await store.finish_upload(upload, parse_digest(sha256(data)))
        announced = [cid for batch in batches for cid in batch]
        assert len(announced) == len(set(announced))
        assert {cid.multihash for cid in announced} == _dag_multihashes(data)
        assert announced[-1] == info.cid  # the root comes with the final batch
        assert all(store.datastore.blocks.has(cid) for cid in announced)


async def test_create_app_passes_on_blocks_stored_for_blob_and_manifest_pushes(tmp_path: Path) -> None:
    stored: list[CID] = []

    def on_blocks_stored(cids: list[CID]) -> None:
        stored.extend(cids)

    settings = make_settings(upload_flush_bytes=FLUSH)
    async with running_registry(tmp_path, settings, on_blocks_stored=on_blocks_stored) as server:
        layer = os.urandom(700_000)
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        location = (await server.client.post("/v2/app/blobs/uploads/")).headers["Location"]
        assert (await server.client.patch(location, content=layer[:300_000])).status_code == 202
        resp = await server.client.put(location, params={"digest": sha256(layer)}, content=layer[300_000:])
        assert resp.status_code == 201
        await server.push_blob("app", config)
        assert {cid.multihash for cid in stored} == _dag_multihashes(layer) | _dag_multihashes(config)
        stored.clear()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }
        _, _, resp = await server.push_manifest("app", "v1", manifest)
        manifest_root = resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/")
        image = server.store.image_cid("app", "v1")
        assert image is not None
        # The manifest's own DAG and the tag's new image directory blocks.
        assert manifest_root in {str(cid) for cid in stored}
        assert image in stored
        assert all(server.datastore.blocks.has(cid) for cid in stored)
