"""Peers first through the DHT: servers joined only through a DHT hub announce what they hold and
fetch by a blob's digest CID, and the upstream serves each layer once."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import httpx
from fake_upstream import running_upstream
from fleet_support import Mirror, sha256, wait_for

from ipfsreg.node.blobs.protocol import digest_cid

LAYER = bytes(range(256)) * 4000


async def start(stack: AsyncExitStack, serve_node: Any, name: str, **overrides: Any) -> Mirror:
    info = await stack.enter_async_context(serve_node(name, **overrides))
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=info.registry_urls[0], timeout=60))
    control = await stack.enter_async_context(httpx.AsyncClient(base_url=info.api_url, timeout=60))
    return Mirror(info, client, control)


async def providers(node: Mirror, digest: str) -> list[str]:
    resp = await node.control.get("/api/v0/routing/findprovs", params={"arg": str(digest_cid(digest))})
    assert resp.status_code == 200, resp.text
    return [line.split('"peer_id": "')[1].split('"')[0] for line in resp.text.splitlines() if line]


async def test_nodes_joined_by_a_dht_hub_find_a_layers_holder_by_its_digest_cid(serve_node: Any) -> None:
    async with running_upstream() as up, AsyncExitStack() as stack:
        up.add_image("library/app", "v1", [LAYER])
        base = {"mirror.upstream": [{"registry": "docker.io", "url": up.url}], "routing.mode": "server"}
        hub = await start(stack, serve_node, "hub", **base)
        joined = {**base, "routing.bootstrap": [hub.p2p]}
        first = await start(stack, serve_node, "first", **joined)
        second = await start(stack, serve_node, "second", **joined)
        await first.pull("library/app", "v1")

        async def announced() -> bool:
            return first.info.peer_id in await providers(hub, sha256(LAYER))

        await wait_for(announced)  # the first node provided the layer's digest CID on the DHT
        await second.pull("library/app", "v1")
        assert up.count("GET", f"/blobs/{sha256(LAYER)}") == 1
        assert (await second.stat())["bytes"]["peer"] >= len(LAYER)
