"""Pull by CID across nodes: a second in-process `ipfsreg serve`, connected only to the first, serves
`ipfs/<cid>` of an image pushed to the first (blocks over bitswap), then serves it on its own."""

from __future__ import annotations

import json
from typing import Any

import httpx
from registry_helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256

from ipfsreg.apifile import PREFIX
from ipfsreg.cid import CID
from ipfsreg.registry.names import ipfs_repository_name


async def push(
    client: httpx.AsyncClient, name: str, tag: str, layers: list[bytes]
) -> tuple[str, bytes, dict[str, bytes]]:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    blobs: dict[str, bytes] = {}
    for data in [config, *layers]:
        resp = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        assert resp.status_code == 201, resp.text
        blobs[sha256(data)] = data
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(x), "size": len(x)} for x in layers],
    }
    body = json.dumps(manifest).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201, resp.text
    return resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/"), body, blobs


async def pull(client: httpx.AsyncClient, repo: str, tag: str) -> tuple[bytes, dict[str, bytes]]:
    resp = await client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200, resp.text
    manifest = resp.json()
    blobs = {}
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = await client.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, blob.text
        assert blob.headers["Docker-Content-Digest"] == descriptor["digest"]
        blobs[descriptor["digest"]] = blob.content
    return resp.content, blobs


async def test_ipfs_cid_pull_on_a_peer_fetches_over_bitswap_and_then_serves_without_the_origin(
    serve_node: Any,
) -> None:
    layers = [bytes(range(256)) * 5000, b"small layer"]  # 1.28 MB: several blocks
    async with serve_node("mirror") as mirror:
        async with serve_node("origin") as origin:
            async with httpx.AsyncClient(base_url=origin.registry_urls[0], timeout=60) as client:
                cid, body, blobs = await push(client, "lib/app", "v1", layers)
            async with httpx.AsyncClient(base_url=mirror.api_url, timeout=60) as api:
                resp = await api.post(f"{PREFIX}/connect", params={"arg": origin.p2p_addrs[0]})
                assert resp.status_code == 200, resp.text
            repo = ipfs_repository_name(CID.parse(cid))
            async with httpx.AsyncClient(base_url=mirror.registry_urls[0], timeout=60) as client:
                got_body, got_blobs = await pull(client, repo, "v1")
            assert got_body == body
            assert got_blobs == {d: data for d, data in blobs.items()}
        # The origin is gone: the mirror answers from what it recorded.
        async with httpx.AsyncClient(base_url=mirror.registry_urls[0], timeout=60) as client:
            again_body, again_blobs = await pull(client, repo, "v1")
            by_latest = await client.head(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert again_body == body and again_blobs == got_blobs
        assert by_latest.status_code == 200
