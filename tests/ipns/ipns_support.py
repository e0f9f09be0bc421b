"""Shared by the IPNS tests: pushes to whole servers on loopback, and what their HTTP APIs say about names."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import httpx
import trio

from ipfsreg.app import ServerInfo
from ipfsreg.ipns.record import IpnsName, IpnsRecord, decode_record

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_image(client: httpx.AsyncClient, url: str, repo: str, tag: str, layer: bytes) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    for blob in (config, layer):
        resp = await client.post(
            f"{url}/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, content=blob
        )
        assert resp.status_code == 201, resp.text
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    resp = await client.put(
        f"{url}/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201, resp.text
    return digest(manifest)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` (another server's state over HTTP: no event to wait on); TooSlowError after 30 s."""
    with trio.fail_after(30.0):
        while not await check():  # noqa: ASYNC110 - polling servers from a test is the point
            await trio.sleep(0.1)


def own_name(info: ServerInfo) -> IpnsName:
    assert info.peer_id is not None
    return IpnsName.parse(info.peer_id)


async def record_seq(client: httpx.AsyncClient, url: str, name: IpnsName) -> int | None:
    resp = await client.get(f"{url}/ipns/{name}", params={"format": "ipns-record"})
    if resp.status_code != 200:
        return None
    assert resp.headers["Content-Type"] == "application/vnd.ipfs.ipns-record"
    return decode_record(resp.content).sequence


BIND_ALL = {"ipns.bind": [{"repository": "*", "key": "self"}]}


async def has_seq(client: httpx.AsyncClient, url: str, name: IpnsName, at_least: int = 0) -> bool:
    seq = await record_seq(client, url, name)
    return seq is not None and seq >= at_least


async def gateway_record(client: httpx.AsyncClient, url: str, name: IpnsName) -> IpnsRecord:
    """The record a server's gateway resolves ``name`` to (``?format=ipns-record``)."""
    resp = await client.get(f"{url}/ipns/{name}", params={"format": "ipns-record"})
    assert resp.status_code == 200, resp.text
    return decode_record(resp.content)


async def routing_table_size(client: httpx.AsyncClient, api_url: str) -> int:
    """Peers in a server's DHT routing tables (control API ``routing/stat``)."""
    stat = (await client.get(f"{api_url}/api/v0/routing/stat")).json()
    return sum(dht["routing_table_size"] for dht in stat["dhts"])


async def joined(client: httpx.AsyncClient, *servers: ServerInfo) -> None:
    """Until every server has a peer in its DHT routing table."""
    for info in servers:
        await eventually(partial(_has_peers, client, info.api_url))


async def _has_peers(client: httpx.AsyncClient, api_url: str) -> bool:
    return await routing_table_size(client, api_url) > 0


async def publish(client: httpx.AsyncClient, api_url: str) -> dict[str, Any]:
    """``ipfsreg name publish`` through the control API: every bound key, signed again; the first."""
    resp = await client.post(f"{api_url}/api/v0/name/publish")
    assert resp.status_code == 200, resp.text
    published: dict[str, Any] = resp.json()["published"][0]
    return published


async def resolve(client: httpx.AsyncClient, api_url: str, name: IpnsName) -> httpx.Response:
    """``ipfsreg name resolve`` through the control API (asks the network afresh)."""
    return await client.get(f"{api_url}/api/v0/name/resolve", params={"arg": str(name)})


async def start_stoppable(
    nursery: trio.Nursery, server: AbstractAsyncContextManager[ServerInfo]
) -> tuple[ServerInfo, Callable[[], Awaitable[None]]]:
    """Run ``server`` in a task of ``nursery``, so it can be stopped while servers started after it run
    on; returns its info and a function that stops it and waits until it has."""
    stop, stopped = trio.Event(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[ServerInfo]) -> None:
        try:
            async with server as info:
                task_status.started(info)
                await stop.wait()
        finally:
            stopped.set()

    info: ServerInfo = await nursery.start(run)

    async def halt() -> None:
        stop.set()
        await stopped.wait()

    return info, halt
