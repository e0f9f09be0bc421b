"""Spec tests for blob pull and delete: HEAD/GET/Range/DELETE on /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import os

from registry_helpers import Server, sha256

UNKNOWN = "sha256:" + "0" * 64


async def test_base_endpoint_returns_200_with_api_version_header(registry: Server) -> None:
    resp = await registry.client.get("/v2/")
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert resp.json() == {}


async def test_blob_get_returns_bytes_with_digest_length_and_ipfs_path(registry: Server) -> None:
    data = os.urandom(700_000)
    digest = await registry.push_blob("lib/app", data)
    resp = await registry.client.get(f"/v2/lib/app/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["X-Ipfs-Path"].startswith("/ipfs/Qm")


async def test_blob_head_returns_headers_without_body(registry: Server) -> None:
    data = b"hello head"
    digest = await registry.push_blob("app", data)
    resp = await registry.client.head(f"/v2/app/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.content == b""


async def test_blob_get_range_returns_206_with_content_range(registry: Server) -> None:
    data = os.urandom(600_000)
    digest = await registry.push_blob("app", data)
    resp = await registry.client.get(f"/v2/app/blobs/{digest}", headers={"Range": "bytes=262000-300000"})
    assert resp.status_code == 206
    assert resp.content == data[262000:300001]
    assert resp.headers["Content-Range"] == f"bytes 262000-300000/{len(data)}"
    assert resp.headers["Content-Length"] == str(300001 - 262000)


async def test_blob_get_open_and_suffix_ranges(registry: Server) -> None:
    data = os.urandom(1000)
    digest = await registry.push_blob("app", data)
    resp = await registry.client.get(f"/v2/app/blobs/{digest}", headers={"Range": "bytes=990-"})
    assert (resp.status_code, resp.content) == (206, data[990:])
    resp = await registry.client.get(f"/v2/app/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert (resp.status_code, resp.content) == (206, data[-5:])


async def test_blob_get_range_past_end_returns_416(registry: Server) -> None:
    digest = await registry.push_blob("app", b"short")
    resp = await registry.client.get(f"/v2/app/blobs/{digest}", headers={"Range": "bytes=10-20"})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == "bytes */5"


async def test_blob_get_unknown_returns_404_blob_unknown(registry: Server) -> None:
    resp = await registry.client.get(f"/v2/app/blobs/{UNKNOWN}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_blob_head_unknown_returns_404_without_body(registry: Server) -> None:
    resp = await registry.client.head(f"/v2/app/blobs/{UNKNOWN}")
    assert resp.status_code == 404
    assert resp.content == b""


async def test_blob_in_other_repository_is_unknown_here(registry: Server) -> None:
    digest = await registry.push_blob("one", b"private to one")
    resp = await registry.client.get(f"/v2/two/blobs/{digest}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_blob_get_invalid_digest_returns_400_digest_invalid(registry: Server) -> None:
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "nodigest"):
        resp = await registry.client.get(f"/v2/app/blobs/{bad}")
        assert resp.status_code == 400, bad
        assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"


async def test_blob_sha512_digest_is_accepted(registry: Server) -> None:
    import hashlib

    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    resp = await registry.client.post("/v2/app/blobs/uploads/", params={"digest": digest}, content=data)
    assert resp.status_code == 201
    resp = await registry.client.get(f"/v2/app/blobs/{digest}")
    assert resp.content == data
    assert resp.headers["Docker-Content-Digest"] == digest


async def test_invalid_repository_name_returns_400_name_invalid(registry: Server) -> None:
    for bad in ("UPPER/case", "a//b", "-lead", "trail-", "a..b"):
        resp = await registry.client.get(f"/v2/{bad}/blobs/{UNKNOWN}")
        assert resp.status_code == 400, bad
        assert resp.json()["errors"][0]["code"] == "NAME_INVALID"


async def test_blob_delete_returns_202_then_404(registry: Server) -> None:
    digest = await registry.push_blob("app", b"to delete")
    resp = await registry.client.delete(f"/v2/app/blobs/{digest}")
    assert resp.status_code == 202
    assert (await registry.client.get(f"/v2/app/blobs/{digest}")).status_code == 404
    resp = await registry.client.delete(f"/v2/app/blobs/{digest}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_blob_delete_keeps_blob_of_other_repository(registry: Server) -> None:
    data = os.urandom(300_000)
    digest = await registry.push_blob("one", data)
    assert await registry.push_blob("two", data) == digest
    assert (await registry.client.delete(f"/v2/one/blobs/{digest}")).status_code == 202
    resp = await registry.client.get(f"/v2/two/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.content == data


async def test_unsupported_method_returns_405_unsupported(registry: Server) -> None:
    resp = await registry.client.post(f"/v2/app/blobs/{UNKNOWN}")
    assert resp.status_code == 405
    assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"


async def test_unknown_route_returns_404(registry: Server) -> None:
    resp = await registry.client.get("/v2/app/nothing/here")
    assert resp.status_code == 404


async def test_empty_blob_round_trips(registry: Server) -> None:
    digest = await registry.push_blob("app", b"")
    assert digest == sha256(b"")
    resp = await registry.client.get(f"/v2/app/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.content == b""
    assert resp.headers["Content-Length"] == "0"
