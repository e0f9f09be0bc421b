"""The registry as a pull-through cache of a fake upstream, over real HTTP on loopback: lazy blob
fetches stored once as UnixFS DAGs, manifests kept pending until their blobs are local, tag checks
after the TTL with fallback to the cache, concurrency, disconnects, bad upstream bytes, refused pushes."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fake_upstream import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    FakeUpstream,
    running_upstream,
    sha256,
)

from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.testing import RunningRegistry, running_registry
from ipfsreg.unixfs.importer import import_bytes

LAYER_A = bytes(range(256)) * 3000  # 768 000 bytes: several UnixFS leaves
LAYER_B = b"second layer " * 5000


def running_cache(
    data_dir: Path, upstream: str, **overrides: Any
) -> AbstractAsyncContextManager[RunningRegistry]:
    """The registry as a pull-through cache of ``upstream``, on a free loopback port."""
    return running_registry(data_dir, RegistrySettings(listen="127.0.0.1:0", upstream=upstream, **overrides))


async def _pull(cache: RunningRegistry, repo: str, tag: str, accept: str = OCI_MANIFEST) -> dict[str, Any]:
    """Pull like a client: manifest, then every blob (checking the bytes); return the manifest."""
    resp = await cache.client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    assert resp.status_code == 200, resp.text
    manifest: dict[str, Any] = resp.json()
    for desc in [manifest["config"], *manifest["layers"]]:
        blob = await cache.client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status_code == 200, blob.text
        assert sha256(blob.content) == desc["digest"]
    return manifest


async def test_pull_by_tag_fetches_from_upstream_and_stores_every_blob_as_its_unixfs_dag(
    tmp_path: Path,
) -> None:
    async with running_upstream(FakeUpstream(auth="token")) as up:
        digest, _ = up.add_image("library/app", "v1", [LAYER_A, LAYER_B])
        async with running_cache(tmp_path / "data", up.url) as cache:
            manifest = await _pull(cache, "library/app", "v1")
            for layer in (LAYER_A, LAYER_B):
                info = cache.store.stat_blob("library/app", parse_digest(sha256(layer)))
                assert info.cid == import_bytes(layer)[1].cid
                again = await cache.client.get(f"/v2/library/app/blobs/{sha256(layer)}")
                assert again.content == layer
                assert again.headers["X-Ipfs-Path"] == f"/ipfs/{info.cid}"
            # All blobs local: the manifest was promoted, tagged and published like a pushed image.
            assert cache.store.resolve_tag("library/app", "v1") == parse_digest(digest)
            assert cache.store.image_cid("library/app", "v1") is not None
            assert cache.proxy.pending_digests("library/app") == []
            tags = await cache.client.get("/v2/library/app/tags/list")
            assert tags.json()["tags"] == ["v1"]
            resp = await cache.client.get("/v2/library/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{cache.store.image_cid('library/app', 'v1')}"
            assert json.loads(resp.content) == manifest
        assert up.count("GET", f"/blobs/{sha256(LAYER_A)}") == 1


async def test_manifest_before_its_blobs_is_served_pending_with_its_digest(tmp_path: Path) -> None:
    async with running_upstream() as up:
        digest, doc = up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data", up.url) as cache:
            head = await cache.client.head("/v2/library/app/manifests/v1")
            assert head.status_code == 200
            assert head.headers["Docker-Content-Digest"] == digest
            assert "X-Ipfs-Path" not in head.headers
            by_digest = await cache.client.get(f"/v2/library/app/manifests/{digest}")
            assert by_digest.json() == doc
            assert by_digest.headers["Content-Type"] == OCI_MANIFEST
            assert cache.store.resolve_tag("library/app", "v1") is None
            assert cache.proxy.pending_digests("library/app") == [parse_digest(digest)]


async def test_blob_head_miss_asks_upstream_without_storing(tmp_path: Path) -> None:
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data", up.url) as cache:
            resp = await cache.client.head(f"/v2/library/app/blobs/{sha256(LAYER_A)}")
            assert resp.status_code == 200
            assert resp.headers["Content-Length"] == str(len(LAYER_A))
            assert resp.headers["Docker-Content-Digest"] == sha256(LAYER_A)
            assert cache.store.blob_info(parse_digest(sha256(LAYER_A))) is None


async def test_concurrent_pulls_of_one_blob_share_one_upstream_fetch(tmp_path: Path) -> None:
    async with running_upstream(FakeUpstream(chunk_bytes=32 * 1024)) as up:
        up.add_image("library/app", "v1", [LAYER_A])
        up.gate = trio.Event()
        results: list[bytes] = []
        async with running_cache(tmp_path / "data", up.url) as cache:

            async def pull() -> None:
                resp = await cache.client.get(f"/v2/library/app/blobs/{sha256(LAYER_A)}")
                assert resp.status_code == 200
                results.append(resp.content)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(pull)
                await up.blob_started.wait()
                assert cache.proxy.fetches_in_flight == 1
                await trio.sleep(0.2)  # let the other requests arrive while the fetch is held mid-blob
                up.gate.set()
        assert results == [LAYER_A] * 3
        assert up.count("GET", f"/blobs/{sha256(LAYER_A)}") == 1


async def test_client_leaving_mid_blob_does_not_stop_the_blob_being_stored(tmp_path: Path) -> None:
    async with running_upstream(FakeUpstream(chunk_bytes=32 * 1024)) as up:
        up.add_image("library/app", "v1", [LAYER_A])
        up.gate = trio.Event()
        async with running_cache(tmp_path / "data", up.url) as cache:
            async with cache.client.stream("GET", f"/v2/library/app/blobs/{sha256(LAYER_A)}") as resp:
                assert resp.status_code == 200
                async for _ in resp.aiter_raw():
                    break  # the first chunk arrived; leave
            up.gate.set()
            with trio.fail_after(30):
                await cache.proxy.wait_fetches()
            info = cache.store.stat_blob("library/app", parse_digest(sha256(LAYER_A)))
            assert await cache.store.read_all(info.cid) == LAYER_A
        assert up.count("GET", f"/blobs/{sha256(LAYER_A)}") == 1


async def test_client_taking_no_bytes_is_dropped_and_the_blob_still_stored(tmp_path: Path) -> None:
    big = bytes(range(251)) * (64 * 1024)  # 16 MB: more than the channel and socket buffers hold
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [big])
        async with running_cache(tmp_path / "data", up.url) as cache:
            # A first request makes the app's cache, whose stall timeout the test shortens.
            assert (await cache.client.head("/v2/library/app/manifests/v1")).status_code == 200
            cache.proxy.client_stall_timeout = 0.2
            async with cache.client.stream("GET", f"/v2/library/app/blobs/{sha256(big)}") as resp:
                assert resp.status_code == 200
                with trio.fail_after(60):
                    await cache.proxy.wait_fetches()  # completes although this client reads nothing
                with pytest.raises(httpx.HTTPError):
                    await resp.aread()  # the response was cut short, never ended cleanly
            info = cache.store.stat_blob("library/app", parse_digest(sha256(big)))
            assert info.size == len(big)


async def test_upstream_sending_wrong_bytes_cuts_the_response_and_stores_nothing(tmp_path: Path) -> None:
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A])
        up.corrupt.add(sha256(LAYER_A))
        async with running_cache(tmp_path / "data", up.url) as cache:
            with pytest.raises(httpx.HTTPError):
                await cache.client.get(f"/v2/library/app/blobs/{sha256(LAYER_A)}")
            assert cache.store.blob_info(parse_digest(sha256(LAYER_A))) is None
            assert not cache.store.repo_has_blob("library/app", parse_digest(sha256(LAYER_A)))
            # Once the upstream is right again, the blob is fetched afresh.
            up.corrupt.clear()
            resp = await cache.client.get(f"/v2/library/app/blobs/{sha256(LAYER_A)}")
            assert resp.content == LAYER_A


async def test_upstream_connection_breaking_mid_blob_leaves_no_blob_visible(tmp_path: Path) -> None:
    async with running_upstream(FakeUpstream(chunk_bytes=32 * 1024)) as up:
        up.add_image("library/app", "v1", [LAYER_A])
        up.break_after_first_chunk.add(sha256(LAYER_A))
        async with running_cache(tmp_path / "data", up.url) as cache:
            with pytest.raises(httpx.HTTPError):
                await cache.client.get(f"/v2/library/app/blobs/{sha256(LAYER_A)}")
            assert cache.store.blob_info(parse_digest(sha256(LAYER_A))) is None
            head = await cache.client.head(f"/v2/library/app/blobs/{sha256(LAYER_A)}")
            assert "X-Ipfs-Path" not in head.headers  # still answered from the upstream, not stored


async def test_range_request_on_a_miss_stores_the_blob_then_serves_the_range(tmp_path: Path) -> None:
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data", up.url) as cache:
            resp = await cache.client.get(
                f"/v2/library/app/blobs/{sha256(LAYER_A)}", headers={"Range": "bytes=1000-1999"}
            )
            assert resp.status_code == 206
            assert resp.content == LAYER_A[1000:2000]
            assert cache.store.repo_has_blob("library/app", parse_digest(sha256(LAYER_A)))


async def test_cached_image_is_served_when_the_upstream_is_down(tmp_path: Path) -> None:
    async with running_upstream() as up:
        digest, _ = up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data", up.url, upstream_tag_ttl=0.0) as cache:
            await _pull(cache, "library/app", "v1")
            up.down = True
            manifest = await _pull(cache, "library/app", "v1")
            assert sha256(json.dumps(manifest).encode()) == digest
            missing = await cache.client.get("/v2/library/other/manifests/v1")
            assert missing.status_code == 503
            assert missing.json()["errors"][0]["code"] == "UNAVAILABLE"


async def test_tag_moved_upstream_is_seen_after_the_ttl_only(tmp_path: Path) -> None:
    async with running_upstream() as up:
        first, _ = up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data", up.url, upstream_tag_ttl=3600.0) as cache:
            await _pull(cache, "library/app", "v1")
            second, _ = up.add_image("library/app", "v1", [LAYER_B])
            resp = await cache.client.head("/v2/library/app/manifests/v1")
            assert resp.headers["Docker-Content-Digest"] == first
            heads = up.count("HEAD", "/manifests/v1")
            cache.proxy.tag_ttl = 0.0  # the TTL ran out
            resp = await cache.client.head("/v2/library/app/manifests/v1")
            assert resp.headers["Docker-Content-Digest"] == second
            assert up.count("HEAD", "/manifests/v1") == heads + 1
            await _pull(cache, "library/app", "v1")
            assert cache.store.resolve_tag("library/app", "v1") == parse_digest(second)


async def test_index_pending_is_served_as_fetched_whatever_the_accept(tmp_path: Path) -> None:
    async with running_upstream() as up:
        amd64, _ = up.add_image("multi/app", None, [LAYER_A])
        arm64, _ = up.add_image("multi/app", None, [LAYER_B])
        size = len(up.manifests[("multi/app", amd64)][0])
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": arm64,
                    "size": size,
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": amd64,
                    "size": size,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
        index_digest = up.add_manifest("multi/app", "latest", index, OCI_INDEX)
        async with running_cache(tmp_path / "data", up.url) as cache:
            # The Accept rule: served as stored (here: as fetched), converted never.
            for accept in (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST):
                got = await cache.client.get("/v2/multi/app/manifests/latest", headers={"Accept": accept})
                assert got.status_code == 200
                assert got.headers["Docker-Content-Digest"] == index_digest
                assert got.headers["Content-Type"] == OCI_INDEX


async def test_upstream_credentials_are_used_for_the_token_flow(tmp_path: Path) -> None:
    async with running_upstream(FakeUpstream(auth="token", users={"cache": "pw"})) as up:
        up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(
            tmp_path / "data", up.url, upstream_username="cache", upstream_password="pw"
        ) as cache:
            await _pull(cache, "library/app", "v1")
        assert {r["user"] for r in up.token_requests} == {"cache"}
    async with running_upstream(FakeUpstream(auth="token", users={"cache": "pw"})) as up:
        up.add_image("library/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data2", up.url, upstream_password="wrong") as cache:
            resp = await cache.client.get("/v2/library/app/manifests/v1")
            assert resp.status_code == 403
            assert resp.json()["errors"][0]["code"] == "DENIED"


async def test_unknown_upstream_manifest_and_blob_are_unknown_here(tmp_path: Path) -> None:
    async with running_upstream() as up, running_cache(tmp_path / "data", up.url) as cache:
        resp = await cache.client.get("/v2/library/app/manifests/nope")
        assert resp.status_code == 404
        assert resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        resp = await cache.client.get(f"/v2/library/app/blobs/{sha256(b'none')}")
        assert resp.status_code == 404
        assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_blob_stored_for_another_repository_is_linked_after_an_upstream_check(tmp_path: Path) -> None:
    async with running_upstream() as up:
        up.add_image("one/app", "v1", [LAYER_A])
        up.add_image("two/app", "v1", [LAYER_A])
        async with running_cache(tmp_path / "data", up.url) as cache:
            await _pull(cache, "one/app", "v1")
            resp = await cache.client.get(f"/v2/two/app/blobs/{sha256(LAYER_A)}")
            assert resp.content == LAYER_A
            assert "X-Ipfs-Path" in resp.headers
            other = await cache.client.get(f"/v2/three/app/blobs/{sha256(LAYER_A)}")
            assert other.status_code == 404
        assert up.count("GET", f"/blobs/{sha256(LAYER_A)}") == 1


async def test_pushes_and_deletes_are_unsupported_on_a_pull_through_cache(tmp_path: Path) -> None:
    async with running_upstream() as up, running_cache(tmp_path / "data", up.url) as cache:
        put = await cache.client.put(
            "/v2/library/app/manifests/v1", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
        )
        assert put.status_code == 405
        assert put.json()["errors"][0]["code"] == "UNSUPPORTED"
        delete = await cache.client.delete("/v2/library/app/manifests/v1")
        assert delete.status_code == 405
        delete_blob = await cache.client.delete(f"/v2/library/app/blobs/{sha256(b'x')}")
        assert delete_blob.status_code == 405


async def test_whole_server_with_registry_upstream_pulls_through(serve_node: Any) -> None:
    # The composed server (config, auth and metrics wrappers, node): `registry.upstream` from the
    # config reaches the handlers, and the cache's fetch tasks run in the served app's nursery.
    async with running_upstream() as up:
        digest, _ = up.add_image("library/app", "v1", [LAYER_A, LAYER_B])
        async with (
            serve_node("cache", **{"registry.upstream": up.url}) as info,
            httpx.AsyncClient(base_url=info.registry_urls[0], timeout=60) as client,
        ):
            resp = await client.get("/v2/library/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert resp.headers["Docker-Content-Digest"] == digest
            assert "X-Ipfs-Path" not in resp.headers  # pending: its blobs are not here yet
            for desc in [resp.json()["config"], *resp.json()["layers"]]:
                blob = await client.get(f"/v2/library/app/blobs/{desc['digest']}")
                assert sha256(blob.content) == desc["digest"]
            again = await client.get("/v2/library/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert again.headers["Docker-Content-Digest"] == digest
            assert "X-Ipfs-Path" in again.headers  # promoted and published


async def test_manifest_the_registry_cannot_store_is_a_bad_gateway_answer(tmp_path: Path) -> None:
    async with running_upstream() as up:
        schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
        up.add_manifest("library/old", "v1", {"schemaVersion": 1, "name": "library/old"}, schema1)
        async with running_cache(tmp_path / "data", up.url) as cache:
            resp = await cache.client.get("/v2/library/old/manifests/v1")
            assert resp.status_code == 502
            error = resp.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "schema1" in error["detail"]["upstream"]
            assert cache.proxy.pending_digests("library/old") == []
