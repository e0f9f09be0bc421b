"""Shared by the IPNS tests: whole servers on loopback, an in-memory validating value store, pushes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from ipfsreg.app import ServerInfo, run_server
from ipfsreg.config import load_config
from ipfsreg.ipns.record import IpnsName, decode_record
from ipfsreg.ipns.validator import IpnsValidator

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class MemoryValueStore:
    """Puts and gets like a DHT node with the ``/ipns/`` validator; ``answer`` plays a hostile peer."""

    def __init__(self) -> None:
        self.validator = IpnsValidator()
        self.values: dict[bytes, bytes] = {}
        self.hostile: dict[bytes, bytes] = {}

    async def put_value(self, key: bytes, value: bytes) -> None:
        self.validator.validate(key, value)
        current = self.values.get(key)
        if current is None or self.validator.select(key, [value, current]) == 0:
            self.values[key] = value

    async def get_value(self, key: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if key in self.hostile:
            return self.hostile[key]
        if key not in self.values:
            raise LookupError("no record")
        return self.values[key]


@asynccontextmanager
async def server(
    tmp: Path, label: str, routing: MemoryValueStore, **overrides: Any
) -> AsyncIterator[ServerInfo]:
    loopback = {
        "registry.listen": "127.0.0.1:0",
        "api.listen": "127.0.0.1:0",
        "node.p2p_listen": ["/ip4/127.0.0.1/tcp/0"],
    }
    config = load_config(data_dir=tmp / label, environ={}, overrides={**loopback, **overrides})
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(
            lambda task_status: run_server(
                config, task_status=task_status, handle_signals=False, value_routing=routing
            )
        )
        yield info
        nursery.cancel_scope.cancel()


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
