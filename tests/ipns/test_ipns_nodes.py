"""Two and three whole ipfsreg servers on loopback: tags published on IPNS, resolved and pulled by tag.

The records travel through an in-memory value store that validates like a DHT peer does (the
``/ipns/`` validator on every put, the best record on every get); blocks travel over bitswap between
the nodes. The same flows over the real DHT are in interop/test_ipns_dht.py once the DHT is on main.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from conftest import loopback_config
from ipfsreg.app import ServerInfo, run_server
from ipfsreg.ipns.keystore import Keystore
from ipfsreg.ipns.record import NANOSECONDS, IpnsName, create_record, decode_record
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
    config = loopback_config(tmp / label, **overrides)
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


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not await check():
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


async def test_b_resolves_a_name_and_pulls_app_v1_by_tag_through_ipns(tmp_path: Path) -> None:
    routing = MemoryValueStore()
    async with httpx.AsyncClient(timeout=30) as client, server(tmp_path, "a", routing, **BIND_ALL) as a:
        name = own_name(a)
        layer = b"layer of app v1" * 1000
        manifest_digest = await push_image(client, a.registry_urls[0], "app", "v1", layer)
        await eventually(lambda: _has_seq(client, a.registry_urls[0], name))
        assert name.routing_key() in routing.values  # A put its record (PUT_VALUE, validated)
        async with server(tmp_path, "b", routing, **{"node.peers": a.p2p_addrs[:1]}) as b:
            base = f"{b.registry_urls[0]}/v2/ipns/{name}/app"
            resp = await client.get(f"{base}/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert resp.status_code == 200, resp.text
            assert resp.headers["Docker-Content-Digest"] == manifest_digest
            layer_resp = await client.get(f"{base}/blobs/{digest(layer)}")
            assert layer_resp.status_code == 200 and layer_resp.content == layer
            tags = await client.get(f"{base}/tags/list")
            assert tags.json() == {"name": f"ipns/{name}/app", "tags": ["v1"]}
            missing = await client.get(f"{base}/manifests/v9")
            assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            push = await client.put(
                f"{base}/manifests/v2", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
            )
            assert push.status_code == 403 and push.json()["errors"][0]["code"] == "DENIED"
            # the gateway resolves paths through the name too
            listing = await client.get(f"{b.registry_urls[0]}/ipns/{name}/app/v1/oci-layout")
            assert listing.status_code == 200 and b"imageLayoutVersion" in listing.content


async def _has_seq(client: httpx.AsyncClient, url: str, name: IpnsName, at_least: int = 0) -> bool:
    seq = await record_seq(client, url, name)
    return seq is not None and seq >= at_least


async def test_follower_b_sees_v2_after_its_poll_and_keeps_the_last_valid_record(tmp_path: Path) -> None:
    routing = MemoryValueStore()
    async with httpx.AsyncClient(timeout=30) as client, server(tmp_path, "a", routing, **BIND_ALL) as a:
        name = own_name(a)
        a_url = a.registry_urls[0]
        await push_image(client, a_url, "app", "v1", b"v1 layer" * 500)
        await eventually(lambda: _has_seq(client, a_url, name))
        follow = {
            "ipns.follow": [{"name": str(name), "poll": 0.5, "repository": "app", "local": "mirror/app"}]
        }
        async with server(tmp_path, "b", routing, **{"node.peers": a.p2p_addrs[:1]}, **follow) as b:
            b_url = b.registry_urls[0]

            async def b_has(tag: str) -> bool:
                resp = await client.head(
                    f"{b_url}/v2/mirror/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
                )
                return resp.status_code == 200

            await eventually(lambda: b_has("v1"))
            seq_before = decode_record(routing.values[name.routing_key()]).sequence
            v2 = await push_image(client, a_url, "app", "v2", b"v2 layer" * 500)
            await eventually(lambda: b_has("v2"))
            resp = await client.get(f"{b_url}/v2/mirror/app/manifests/v2", headers={"Accept": OCI_MANIFEST})
            assert resp.headers["Docker-Content-Digest"] == v2
            best = decode_record(routing.values[name.routing_key()])
            assert best.sequence > seq_before
            await eventually(lambda: _has_seq(client, b_url, name, best.sequence))

            # A hostile routing answer: signed by another key, a lower sequence, an expired one, or nothing.
            forger = Ed25519PrivateKey.new()
            stale = create_record(
                forger,
                "/ipfs/bafkqaddwgevxmmraojswg33smq",
                best.sequence + 10,
                time.time_ns() + 3600 * NANOSECONDS,
            )
            lower = _own_record(tmp_path / "a", best.sequence - 1, best.value_text)
            expired = _own_record(
                tmp_path / "a", best.sequence + 20, best.value_text, eol_ns=time.time_ns() - 1
            )
            for hostile in (stale, lower, expired):
                routing.hostile[name.routing_key()] = hostile
                resp = await client.get(f"{b_url}/ipns/{name}", params={"format": "ipns-record"})
                assert resp.status_code == 200 and resp.content == best.raw
            routing.hostile.clear()
            routing.values.clear()  # the network has no record at all: B keeps serving the last valid one
            resp = await client.get(f"{b_url}/v2/ipns/{name}/app/tags/list")
            assert resp.json()["tags"] == ["v1", "v2"]


def _own_record(data_dir: Path, sequence: int, value: str, *, eol_ns: int | None = None) -> bytes:
    """A record signed by the node key of ``data_dir`` with the given sequence and EOL."""
    key = Keystore(data_dir).get("self").private_key
    return create_record(key, value, sequence, eol_ns or time.time_ns() + 3600 * NANOSECONDS)


async def test_c_connected_only_to_b_pulls_a_tag_of_a_through_b(tmp_path: Path) -> None:
    routing = MemoryValueStore()
    async with httpx.AsyncClient(timeout=30) as client, server(tmp_path, "a", routing, **BIND_ALL) as a:
        name = own_name(a)
        layer = b"three nodes" * 800
        await push_image(client, a.registry_urls[0], "team/api", "latest", layer)
        await eventually(lambda: _has_seq(client, a.registry_urls[0], name))
        follow = {"ipns.follow": [{"name": str(name), "poll": 0.5}]}
        async with server(tmp_path, "b", routing, **{"node.peers": a.p2p_addrs[:1]}, **follow) as b:
            base_b = f"{b.registry_urls[0]}/v2/ipns/{name}/team/api"
            # B's follower mirrors the whole image (the blob read below is then local to B)
            await eventually(lambda: _status_ok(client, f"{base_b}/manifests/latest"))
            await eventually(lambda: _status_ok(client, f"{base_b}/blobs/{digest(layer)}"))
        # B (which mirrored everything) is restarted, no longer peered with A; C peers with B only
        async with (
            server(tmp_path, "b", routing) as b2,
            server(tmp_path, "c", routing, **{"node.peers": b2.p2p_addrs[:1]}) as c,
        ):
            base_c = f"{c.registry_urls[0]}/v2/ipns/{name}/team/api"
            tags = await client.get(f"{base_c}/tags/list")
            assert tags.json()["tags"] == ["latest"]
            resp = await client.get(f"{base_c}/blobs/{digest(layer)}")
            assert resp.status_code == 200 and resp.content == layer


async def _status_ok(client: httpx.AsyncClient, url: str) -> bool:
    resp = await client.get(url, headers={"Accept": OCI_MANIFEST})
    return resp.status_code == 200
