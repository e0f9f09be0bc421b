"""The composed server: registry pushes reach bitswap peers that were already waiting for the blocks
(the registry tells the node about every block it commits)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import httpx
import trio

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
