"""Spec tests for blob uploads: monolithic, streamed, chunked, status, cancel, mount, limits, restart."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from registry_helpers import Server, make_settings, running_registry, sha256

from ipfsreg.httpserver import EARLY_DRAIN_BYTES
from ipfsreg.registry.coalesce import COALESCE_BYTES
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.storage import RegistryStore, Upload
from ipfsreg.unixfs.importer import import_bytes


async def _start(server: Server, name: str = "app") -> str:
    resp = await server.client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status_code == 202, resp.text
    return resp.headers["Location"]


async def _stream(data: bytes, piece: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def test_blob_upload_post_starts_session_with_location_and_uuid(registry: Server) -> None:
    resp = await registry.client.post("/v2/app/blobs/uploads/")
    assert resp.status_code == 202
    location = resp.headers["Location"]
    uuid = resp.headers["Docker-Upload-UUID"]
    assert location == f"/v2/app/blobs/uploads/{uuid}"
    assert resp.headers["Range"] == "0-0"


async def test_blob_upload_monolithic_post_with_digest_returns_201(registry: Server) -> None:
    data = os.urandom(1000)
    resp = await registry.client.post("/v2/app/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    assert resp.status_code == 201
    assert resp.headers["Location"] == f"/v2/app/blobs/{sha256(data)}"
    assert resp.headers["Docker-Content-Digest"] == sha256(data)


async def test_blob_upload_monolithic_post_with_wrong_digest_returns_400_and_stores_nothing(
    registry: Server,
) -> None:
    wrong = sha256(b"other")
    resp = await registry.client.post("/v2/app/blobs/uploads/", params={"digest": wrong}, content=b"data")
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert (await registry.client.head(f"/v2/app/blobs/{wrong}")).status_code == 404
    assert (await registry.client.head(f"/v2/app/blobs/{sha256(b'data')}")).status_code == 404


async def test_blob_upload_post_then_put_with_body_returns_201(registry: Server) -> None:
    location = await _start(registry)
    data = os.urandom(300_000)
    resp = await registry.client.put(location, params={"digest": sha256(data)}, content=data)
    assert resp.status_code == 201
    assert resp.headers["Location"] == f"/v2/app/blobs/{sha256(data)}"
    assert (await registry.client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_blob_upload_streamed_patch_then_put_without_body(registry: Server) -> None:
    location = await _start(registry)
    data = os.urandom(3 * 1024 * 1024 + 17)
    resp = await registry.client.patch(
        location, content=_stream(data), headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status_code == 202
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = await registry.client.put(resp.headers["Location"], params={"digest": sha256(data)})
    assert resp.status_code == 201
    got = await registry.client.get(f"/v2/app/blobs/{sha256(data)}")
    assert got.content == data
    _, result = import_bytes(data)
    assert got.headers["X-Ipfs-Path"] == f"/ipfs/{result.cid}"


async def test_blob_upload_chunked_with_content_range_and_status(registry: Server) -> None:
    location = await _start(registry)
    data = os.urandom(700_001)
    chunks = [data[:300_000], data[300_000:600_000], data[600_000:]]
    offset = 0
    for chunk in chunks[:2]:
        headers = {
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            "Content-Type": "application/octet-stream",
        }
        resp = await registry.client.patch(location, content=chunk, headers=headers)
        assert resp.status_code == 202, resp.text
        offset += len(chunk)
        assert resp.headers["Range"] == f"0-{offset - 1}"
        location = resp.headers["Location"]
    status = await registry.client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-599999"
    assert status.headers["Location"] == location
    headers = {"Content-Range": f"600000-{len(data) - 1}"}
    resp = await registry.client.put(
        location, params={"digest": sha256(data)}, content=chunks[2], headers=headers
    )
    assert resp.status_code == 201
    assert (await registry.client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_blob_upload_chunked_out_of_order_returns_416(registry: Server) -> None:
    location = await _start(registry)
    resp = await registry.client.patch(location, content=b"a" * 10, headers={"Content-Range": "0-9"})
    assert resp.status_code == 202
    resp = await registry.client.patch(location, content=b"b" * 10, headers={"Content-Range": "20-29"})
    assert resp.status_code == 416
    assert resp.headers["Range"] == "0-9"
    assert resp.headers["Location"] == location
    assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    # The session is intact: the right chunk still continues it.
    resp = await registry.client.patch(location, content=b"b" * 10, headers={"Content-Range": "10-19"})
    assert resp.status_code == 202
    resp = await registry.client.put(location, params={"digest": sha256(b"a" * 10 + b"b" * 10)})
    assert resp.status_code == 201


async def test_blob_upload_first_chunk_not_at_zero_returns_416(registry: Server) -> None:
    location = await _start(registry)
    resp = await registry.client.patch(location, content=b"x" * 5, headers={"Content-Range": "5-9"})
    assert resp.status_code == 416


async def test_blob_upload_content_range_length_mismatch_returns_416(registry: Server) -> None:
    location = await _start(registry)
    resp = await registry.client.patch(location, content=b"x" * 5, headers={"Content-Range": "0-9"})
    assert resp.status_code == 416


async def test_blob_upload_malformed_content_range_returns_416(registry: Server) -> None:
    location = await _start(registry)
    resp = await registry.client.patch(location, content=b"x", headers={"Content-Range": "nonsense"})
    assert resp.status_code == 416


async def test_blob_upload_put_with_wrong_digest_returns_400_and_nothing_visible(registry: Server) -> None:
    location = await _start(registry)
    data = os.urandom(400_000)
    assert (await registry.client.patch(location, content=data)).status_code == 202
    wrong = sha256(b"not it")
    resp = await registry.client.put(location, params={"digest": wrong})
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert (await registry.client.head(f"/v2/app/blobs/{sha256(data)}")).status_code == 404
    assert (await registry.client.head(f"/v2/app/blobs/{wrong}")).status_code == 404
    assert (await registry.client.get(location)).status_code == 404


async def test_blob_upload_put_without_digest_returns_400_digest_invalid(registry: Server) -> None:
    location = await _start(registry)
    resp = await registry.client.put(location, content=b"abc")
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"


async def test_blob_upload_unknown_session_returns_404_blob_upload_unknown(registry: Server) -> None:
    location = "/v2/app/blobs/uploads/00000000-0000-0000-0000-000000000000"
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = await registry.client.request(method, location, params={"digest": sha256(b"")})
        assert resp.status_code == 404, method
        assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_blob_upload_session_belongs_to_its_repository(registry: Server) -> None:
    location = await _start(registry, "one")
    other = location.replace("/v2/one/", "/v2/two/")
    resp = await registry.client.get(other)
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_blob_upload_delete_cancels_session(registry: Server) -> None:
    location = await _start(registry)
    assert (await registry.client.patch(location, content=b"partial")).status_code == 202
    resp = await registry.client.delete(location)
    assert resp.status_code == 204
    assert (await registry.client.get(location)).status_code == 404
    assert list(registry.store.iter_uploads()) == []


async def test_blob_upload_cross_repository_mount_returns_201(registry: Server) -> None:
    digest = await registry.push_blob("source", b"shared layer")
    resp = await registry.client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert resp.status_code == 201
    assert resp.headers["Location"] == f"/v2/target/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert (await registry.client.get(f"/v2/target/blobs/{digest}")).content == b"shared layer"


async def test_blob_upload_mount_of_unknown_blob_returns_202_session(registry: Server) -> None:
    digest = sha256(b"never pushed")
    resp = await registry.client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert resp.status_code == 202
    assert "/v2/target/blobs/uploads/" in resp.headers["Location"]


async def test_blob_upload_mount_from_repository_without_blob_returns_202(registry: Server) -> None:
    digest = await registry.push_blob("elsewhere", b"only elsewhere")
    resp = await registry.client.post("/v2/target/blobs/uploads/", params={"mount": digest, "from": "source"})
    assert resp.status_code == 202


async def test_blob_upload_mount_without_from_discovers_existing_blob(registry: Server) -> None:
    digest = await registry.push_blob("source", b"auto discovered")
    resp = await registry.client.post("/v2/target/blobs/uploads/", params={"mount": digest})
    assert resp.status_code == 201


async def test_blob_upload_chunk_over_limit_returns_413_size_invalid(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(max_chunk_bytes=1000)) as server:
        location = await _start(server)
        resp = await server.client.patch(location, content=b"x" * 5000)
        assert resp.status_code == 413
        assert resp.json()["errors"][0]["code"] == "SIZE_INVALID"
        status = await server.client.get(location)
        assert status.headers["Range"] == "0-0"
        # Without a Content-Length (chunked transfer) the limit is enforced while streaming.
        resp = await server.client.patch(location, content=_stream(b"x" * 5000, 500))
        assert resp.status_code == 413
        assert resp.json()["errors"][0]["code"] == "SIZE_INVALID"
        assert (await server.client.get(location)).headers["Range"] == "0-0"
        assert (await server.client.patch(location, content=b"y" * 1000)).status_code == 202


async def test_blob_over_max_blob_size_returns_413(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(max_blob_bytes=100)) as server:
        data = b"y" * 101
        resp = await server.client.post(
            "/v2/app/blobs/uploads/", params={"digest": sha256(data)}, content=data
        )
        assert resp.status_code == 413


async def test_blob_upload_session_survives_restart(tmp_path: Path) -> None:
    data = os.urandom(900_000)
    first, second = data[:600_001], data[600_001:]
    async with running_registry(tmp_path) as server:
        location = await _start(server)
        resp = await server.client.patch(
            location, content=first, headers={"Content-Range": f"0-{len(first) - 1}"}
        )
        assert resp.status_code == 202
    async with running_registry(tmp_path) as server:
        status = await server.client.get(location)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{len(first) - 1}"
        headers = {"Content-Range": f"{len(first)}-{len(data) - 1}"}
        resp = await server.client.patch(location, content=second, headers=headers)
        assert resp.status_code == 202
        resp = await server.client.put(location, params={"digest": sha256(data)})
        assert resp.status_code == 201, resp.text
        assert (await server.client.get(f"/v2/app/blobs/{sha256(data)}")).content == data


async def test_blob_upload_expired_session_is_unknown(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(upload_session_ttl=1e-9)) as server:
        location = await _start(server)
        resp = await server.client.get(location)
        assert resp.status_code == 404
        assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_blob_upload_body_is_read_with_backpressure_not_buffered_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow storage path must make the server stop reading the socket, not buffer the body."""
    original = RegistryStore._ingest

    async def slow_ingest(self: RegistryStore, upload: Upload, data: list[bytes]) -> None:
        await trio.sleep(0.005)
        await original(self, upload, data)

    monkeypatch.setattr(RegistryStore, "_ingest", slow_ingest)
    high_water = 128 * 1024
    async with running_registry(tmp_path, make_settings(body_buffer_bytes=high_water)) as server:
        data = os.urandom(12 * 1024 * 1024)
        location = await _start(server)
        resp = await server.client.patch(location, content=_stream(data, 64 * 1024))
        assert resp.status_code == 202
        resp = await server.client.put(location, params={"digest": sha256(data)})
        assert resp.status_code == 201
        # One body event (body events are joined up to COALESCE_BYTES) can land on top of a
        # buffer at the high-water mark.
        assert 0 < server.app.peak_body_buffered <= high_water + COALESCE_BYTES


async def test_early_error_on_small_streamed_body_reads_it_away_and_keeps_the_connection(
    tmp_path: Path,
) -> None:
    # The handler refuses before reading the body: the rest (under EARLY_DRAIN_BYTES) is read away
    # before the answer goes out, so the connection stays usable for the next request.
    async with running_registry(tmp_path, make_settings(max_chunk_bytes=1000)) as server:
        location = await _start(server)
        for _ in range(5):
            resp = await server.client.patch(location, content=_stream(b"x" * 20_000, 500))
            assert resp.status_code == 413
            assert "close" not in resp.headers.get("Connection", "")
            assert (await server.client.get(location)).headers["Range"] == "0-0"
            resp = await server.client.patch(location, content=b"x" * 5000)
            assert resp.status_code == 413
            assert (await server.client.get(location)).status_code == 204


async def test_early_error_on_large_streamed_body_closes_connection_and_server_keeps_serving(
    tmp_path: Path,
) -> None:
    # More than EARLY_DRAIN_BYTES still to come: the client must not reuse the connection.
    async with running_registry(tmp_path, make_settings(max_chunk_bytes=1000)) as server:
        location = await _start(server)
        size = EARLY_DRAIN_BYTES * 4
        for _ in range(3):
            resp = await server.client.patch(location, content=_stream(b"x" * size, 16 * 1024))
            assert resp.status_code == 413
            assert resp.headers["Connection"] == "close"
            resp = await server.client.patch(location, content=b"x" * size)
            assert resp.status_code == 413
            assert resp.headers["Connection"] == "close"
            assert (await server.client.get(location)).headers["Range"] == "0-0"


async def test_normal_responses_keep_the_connection_alive(registry: Server) -> None:
    location = await _start(registry)
    resp = await registry.client.patch(location, content=b"abc")
    assert resp.status_code == 202
    assert "close" not in resp.headers.get("Connection", "")
    resp = await registry.client.get("/v2/")
    assert "close" not in resp.headers.get("Connection", "")


async def test_pull_through_cache_refuses_every_upload_write_and_stores_nothing(tmp_path: Path) -> None:
    # A session started before the registry became a cache: PATCH/PUT on it must refuse too.
    async with running_registry(tmp_path) as server:
        old = await _start(server)
        existing = await server.push_blob("app", b"already here")
    cache = make_settings(upstream="http://127.0.0.1:9")  # never contacted: writes stop first
    async with running_registry(tmp_path, cache) as server:
        blocks, uploads = server.datastore.blocks.count, list(server.store.iter_uploads())
        data = os.urandom(300_000)
        attempts = [
            server.client.post("/v2/app/blobs/uploads/", params={"digest": sha256(data)}, content=data),
            server.client.post("/v2/app/blobs/uploads/"),
            server.client.post("/v2/other/blobs/uploads/", params={"mount": existing, "from": "app"}),
            server.client.patch(old, content=data),
            server.client.put(old, params={"digest": sha256(data)}, content=data),
            server.client.delete(old),
        ]
        for attempt in attempts:
            resp = await attempt
            assert resp.status_code == 405, resp.text
            assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"
        assert server.datastore.blocks.count == blocks
        assert list(server.store.iter_uploads()) == uploads
        assert not server.store.repo_has_blob("other", parse_digest(existing))
        assert server.store.live_uploads == 0
