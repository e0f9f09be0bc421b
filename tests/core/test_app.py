"""The composed server: registry pushes reach bitswap peers that were already waiting for the blocks
(the registry tells the node about every block it commits); the [import] config shapes pushed blobs."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ipfsreg.unixfs.importer import import_bytes


async def test_a_peer_waiting_for_a_blob_gets_it_once_it_is_pushed(serve_node: Any) -> None:
    blob = random.Random(5).randbytes(700_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _blocks, result = import_bytes(blob)
    async with serve_node("a") as a, serve_node("b") as b:
        async with httpx.AsyncClient(base_url=b.api_url, timeout=60) as api_b:
            assert (await api_b.post("/api/v0/connect", params={"arg": a.p2p_addrs[0]})).status_code == 200
            got: list[bytes] = []

            async def wait_for_it() -> None:
                response = await api_b.get("/api/v0/cat", params={"arg": str(result.cid)})
                assert response.status_code == 200, response.text
                got.append(response.content)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_it)
                await trio.sleep(1)  # b now wants the root block from a, which does not have it yet
                async with httpx.AsyncClient(base_url=a.registry_urls[0]) as registry_a:
                    pushed = await registry_a.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
                    assert pushed.status_code == 201
                    assert (
                        pushed.headers["X-Ipfs-Path"] == f"/ipfs/{result.cid}"
                        or "X-Ipfs-Path" not in pushed.headers
                    )
        assert got == [blob]


async def test_import_profile_in_the_config_sets_the_cids_of_pushed_blobs(serve_node: Any) -> None:
    # IPIP-499's unixfs-v1-2025 fixture: 1 MiB + 1 byte of Kubo's deterministic ChaCha20 stream.
    key = hashlib.sha256(b"chunk-v1-seed").digest()
    blob = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(1048577))
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    async with (
        serve_node("v1", **{"import.profile": "unixfs-v1-2025"}) as server,
        httpx.AsyncClient(base_url=server.registry_urls[0], timeout=60) as registry,
    ):
        pushed = await registry.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
        assert pushed.status_code == 201, pushed.text
        head = await registry.head(f"/v2/x/blobs/{digest}")
    expected = "/ipfs/bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64"
    assert pushed.headers["X-Ipfs-Path"] == head.headers["X-Ipfs-Path"] == expected
