"""Helpers for fleet tests: whole ipfsreg servers (node, registry, control API) as mirrors on loopback."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ipfsreg.app import ServerInfo

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Mirror:
    """One running server used as a mirror: its addresses and HTTP clients on its ports."""

    info: ServerInfo
    client: httpx.AsyncClient
    control: httpx.AsyncClient

    @property
    def p2p(self) -> str:
        return self.info.p2p_addrs[0]

    async def stat(self) -> dict[str, Any]:
        resp = await self.control.get("/api/v0/mirror/stat")
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    async def peers(self) -> list[str]:
        resp = await self.control.get("/api/v0/peers")
        return [peer["peer_id"] for peer in resp.json()["peers"]]

    async def connect(self, other: Mirror) -> None:
        resp = await self.control.post("/api/v0/connect", params={"arg": other.p2p})
        assert resp.status_code == 200, resp.text

    async def pull(self, repo: str, tag: str, ns: str = "docker.io") -> dict[str, bytes]:
        """Pull like containerd through a mirror: the manifest by tag, then every blob; digest -> bytes."""
        params = {"ns": ns}
        resp = await self.client.get(
            f"/v2/{repo}/manifests/{tag}", params=params, headers={"Accept": OCI_MANIFEST}
        )
        assert resp.status_code == 200, resp.text
        manifest = resp.json()
        blobs: dict[str, bytes] = {}
        for desc in [manifest["config"], *manifest["layers"]]:
            blob = await self.client.get(f"/v2/{repo}/blobs/{desc['digest']}", params=params)
            assert blob.status_code == 200, blob.text
            assert sha256(blob.content) == desc["digest"]
            blobs[desc["digest"]] = blob.content
        return blobs


async def wait_for(condition: Any) -> None:
    """Poll an async condition (state of other servers, no event to wait on); TooSlowError after 10 s."""
    with trio.fail_after(10.0):
        while not await condition():  # noqa: ASYNC110 - polling other servers over HTTP is the point
            await trio.sleep(0.05)


@asynccontextmanager
async def mirrors(serve_node: Any, count: int, **overrides: Any) -> AsyncIterator[list[Mirror]]:
    """``count`` servers with ``overrides``, each connected to every earlier one."""
    async with AsyncExitStack() as stack:
        started: list[Mirror] = []
        for index in range(count):
            info = await stack.enter_async_context(serve_node(f"node{index}", **overrides))
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=info.registry_urls[0], timeout=60)
            )
            control = await stack.enter_async_context(httpx.AsyncClient(base_url=info.api_url, timeout=60))
            mirror = Mirror(info, client, control)
            for earlier in started:
                await mirror.connect(earlier)
            started.append(mirror)
        for mirror in started:

            async def connected(m: Mirror = mirror) -> bool:
                return len(await m.peers()) == count - 1

            await wait_for(connected)
        yield started
