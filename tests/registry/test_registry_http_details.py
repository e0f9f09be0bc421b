"""HTTP details that clients and proxies trip over: reason phrases in status lines, no Content-Type on
bodiless 201/202/204 answers, Allow on every 405 (without DELETE when deletes are disabled), a
Content-Range length mismatch that states the lengths, and ipfs/<cid> repositories in the catalog
only when asked for."""

from __future__ import annotations

from pathlib import Path

import trio
from registry_helpers import Server, make_settings, running_registry, sha256

from ipfsreg.registry.names import ipfs_repository_name
from ipfsreg.unixfs.importer import import_bytes


async def _status_line(server: Server, method: str, target: str) -> str:
    address, _, port = server.host.partition(":")
    stream = await trio.open_tcp_stream(address, int(port))
    async with stream:
        head = f"{method} {target} HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        await stream.send_all(head.encode())
        data = b""
        with trio.fail_after(30):
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return data.split(b"\r\n", 1)[0].decode()


async def test_status_lines_carry_the_standard_reason_phrase(registry: Server) -> None:
    assert await _status_line(registry, "GET", "/v2/") == "HTTP/1.1 200 OK"
    assert await _status_line(registry, "POST", "/v2/app/blobs/uploads/") == "HTTP/1.1 202 Accepted"
    assert await _status_line(registry, "GET", "/v2/app/manifests/nope") == "HTTP/1.1 404 Not Found"
    assert await _status_line(registry, "TRACE", "/v2/") == "HTTP/1.1 405 Method Not Allowed"


async def test_bodiless_201_202_and_204_answers_carry_no_content_type(registry: Server) -> None:
    started = await registry.client.post("/v2/app/blobs/uploads/")
    patched = await registry.client.patch(started.headers["Location"], content=b"abc")
    status = await registry.client.get(patched.headers["Location"])
    done = await registry.client.put(patched.headers["Location"], params={"digest": sha256(b"abc")})
    digest, _ = await registry.push_image("app", "v1")
    deleted = await registry.client.delete(f"/v2/app/manifests/{digest}")
    for resp, code in [(started, 202), (patched, 202), (status, 204), (done, 201), (deleted, 202)]:
        assert resp.status_code == code
        assert "content-type" not in resp.headers, (code, resp.headers)


async def test_405_lists_the_allowed_methods_in_allow(registry: Server) -> None:
    resp = await registry.client.request("PATCH", "/v2/app/manifests/latest")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET, HEAD, PUT, DELETE"
    assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"


async def test_disabled_delete_is_405_and_absent_from_allow(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(delete_enabled=False)) as server:
        digest, _ = await server.push_image("app", "v1")
        for path in (f"/v2/app/manifests/{digest}", f"/v2/app/blobs/{digest}"):
            resp = await server.client.delete(path)
            assert resp.status_code == 405
            assert "DELETE" not in resp.headers["Allow"]
            assert "GET" in resp.headers["Allow"]
            assert resp.json()["errors"][0]["detail"]["reason"] == "deletes are disabled on this registry"
        # Cancelling an upload session is not a delete of stored content.
        started = await server.client.post("/v2/app/blobs/uploads/")
        assert (await server.client.delete(started.headers["Location"])).status_code == 204


async def test_writes_to_a_pull_through_cache_are_405_with_the_read_methods_in_allow(tmp_path: Path) -> None:
    async with running_registry(tmp_path, make_settings(upstream="http://127.0.0.1:9")) as server:
        resp = await server.client.put("/v2/app/manifests/v1", content=b"{}")
        assert resp.status_code == 405
        assert resp.headers["Allow"] == "GET, HEAD"


async def test_content_range_that_disagrees_with_content_length_states_both_lengths(registry: Server) -> None:
    started = await registry.client.post("/v2/app/blobs/uploads/")
    resp = await registry.client.patch(
        started.headers["Location"], content=b"x" * 10, headers={"Content-Range": "0-19"}
    )
    assert resp.status_code == 416
    reason = resp.json()["errors"][0]["detail"]["reason"]
    assert reason == "Content-Range 0-19 is 20 bytes but Content-Length is 10: they must be equal"
    resp = await registry.client.patch(
        started.headers["Location"], content=b"x" * 10, headers={"Content-Range": "5-14"}
    )
    assert (
        resp.json()["errors"][0]["detail"]["reason"] == "chunk range 5-14 does not continue the upload at 0"
    )


async def test_catalog_lists_ipfs_repositories_only_with_catalog_ipfs(tmp_path: Path) -> None:
    cid = import_bytes(b"an image directory")[1].cid
    pulled = ipfs_repository_name(cid)
    for catalog_ipfs in (False, True):
        async with running_registry(tmp_path, make_settings(catalog_ipfs=catalog_ipfs)) as server:
            await server.push_image("app", "v1")
            await server.push_image("zoo", "v1")
            with server.datastore.batch() as batch:  # as a pull by CID records its repository
                batch.put(server.store.repos, pulled.encode(), b"")
            listed = (await server.client.get("/v2/_catalog")).json()["repositories"]
            assert listed == (["app", pulled, "zoo"] if catalog_ipfs else ["app", "zoo"])
            first = await server.client.get("/v2/_catalog", params={"n": 1})
            assert first.json()["repositories"] == ["app"]
            rest = await server.client.get("/v2/_catalog", params={"n": 5, "last": "app"})
            assert rest.json()["repositories"] == ([pulled, "zoo"] if catalog_ipfs else ["zoo"])
