"""Two and three whole ipfsreg servers on loopback: tags published on IPNS, resolved and pulled by tag.

The records travel through an in-memory value store that validates like a DHT peer does (the
``/ipns/`` validator on every put, the best record on every get); blocks travel over bitswap between
the nodes. With the DHT on main the same servers take the node's own put_value/get_value instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from ipns_support import (
    BIND_ALL,
    OCI_MANIFEST,
    MemoryValueStore,
    digest,
    eventually,
    has_seq,
    own_name,
    push_image,
    server,
)
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from ipfsreg.ipns.keystore import Keystore
from ipfsreg.ipns.record import NANOSECONDS, create_record, decode_record


async def test_b_resolves_a_name_and_pulls_app_v1_by_tag_through_ipns(tmp_path: Path) -> None:
    routing = MemoryValueStore()
    async with httpx.AsyncClient(timeout=30) as client, server(tmp_path, "a", routing, **BIND_ALL) as a:
        name = own_name(a)
        layer = b"layer of app v1" * 1000
        manifest_digest = await push_image(client, a.registry_urls[0], "app", "v1", layer)
        await eventually(lambda: has_seq(client, a.registry_urls[0], name))
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


async def test_follower_b_sees_v2_after_its_poll_and_keeps_the_last_valid_record(tmp_path: Path) -> None:
    routing = MemoryValueStore()
    async with httpx.AsyncClient(timeout=30) as client, server(tmp_path, "a", routing, **BIND_ALL) as a:
        name = own_name(a)
        a_url = a.registry_urls[0]
        await push_image(client, a_url, "app", "v1", b"v1 layer" * 500)
        await eventually(lambda: has_seq(client, a_url, name))
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
            await eventually(lambda: has_seq(client, b_url, name, best.sequence))

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
        await eventually(lambda: has_seq(client, a.registry_urls[0], name))
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
