"""Two and three whole ipfsreg servers on a loopback DHT: tags published on IPNS, resolved and pulled by tag.

Each server runs as ``ipfsreg serve`` does (node, DHT, registry, gateway, control API) and knows
the others only through ``[routing] bootstrap``. Records go out with PUT_VALUE and come back with
GET_VALUE under ``/ipns/<multihash>``, checked by the ``/ipns/`` validator at every node; blocks
move over bitswap. The hostile peer is a node of the same DHT whose validator takes any record:
it keeps forged, older and expired records and serves them to whoever asks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import trio
from ipns_support import (
    BIND_ALL,
    OCI_MANIFEST,
    digest,
    eventually,
    gateway_record,
    has_seq,
    joined,
    own_name,
    publish,
    push_image,
    resolve,
    start_stoppable,
)
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from ipfsreg.app import ServerInfo
from ipfsreg.cid import CID
from ipfsreg.ipns.keystore import Keystore
from ipfsreg.ipns.record import NANOSECONDS, IpnsName, IpnsRecord, create_record, decode_record
from ipfsreg.node.node import Node
from ipfsreg.node.routing.message import Message, MessageType
from ipfsreg.node.testing import LOOPBACK_ROUTING, running_nodes

IPNS_RECORD = "application/vnd.ipfs.ipns-record"


class AnyRecord:
    """The validator a hostile DHT peer runs: every record is fine, the newest put wins."""

    def validate(self, key: bytes, value: bytes) -> None:
        pass

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return 0


def record_served_values(node: Node) -> list[tuple[str, bytes]]:
    """From now on, every (peer ID, value) the node's DHTs answer a GET_VALUE with."""
    served: list[tuple[str, bytes]] = []
    for dht in node.routing.dhts:
        answer = dht.answer

        def recording(peer: ID, request: Message, answer: Any = answer) -> Message | bool | None:
            response = answer(peer, request)
            if request.type is MessageType.GET_VALUE and isinstance(response, Message) and response.record:
                served.append((peer.to_base58(), response.record.value))
            return response

        dht.answer = recording  # type: ignore[method-assign]
    return served


def signed_by(data_dir: Path, sequence: int, value: str, *, eol_ns: int | None = None) -> bytes:
    """A record signed by the node key of ``data_dir``."""
    key = Keystore(data_dir).get("self").private_key
    return create_record(key, value, sequence, eol_ns or time.time_ns() + 3600 * NANOSECONDS)


async def test_b_resolves_a_name_through_the_dht_and_pulls_app_v1_by_tag_through_ipns(
    serve_node: Any,
) -> None:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        serve_node("a", **BIND_ALL) as a,
        serve_node("b", **{"routing.bootstrap": a.p2p_addrs[:1]}) as b,
    ):
        await joined(client, a, b)
        name = own_name(a)
        a_url, b_url = a.registry_urls[0], b.registry_urls[0]
        layer = b"layer of app v1" * 1000
        manifest_digest = await push_image(client, a_url, "app", "v1", layer)
        await eventually(lambda: has_seq(client, a_url, name))
        published = await publish(client, a.api_url)  # signed again and put to the DHT
        assert published["routed"] and published["stored"] >= 1  # B's DHT took the PUT_VALUE
        in_dht = await client.get(f"{b_url}/routing/v1/ipns/{name}", headers={"Accept": IPNS_RECORD})
        assert in_dht.status_code == 200 and decode_record(in_dht.content).sequence == published["sequence"]

        base = f"{b_url}/v2/ipns/{name}/app"
        resp = await client.get(f"{base}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert resp.status_code == 200, resp.text
        assert resp.headers["Docker-Content-Digest"] == manifest_digest
        layer_resp = await client.get(f"{base}/blobs/{digest(layer)}")
        assert layer_resp.status_code == 200 and layer_resp.content == layer
        tags = await client.get(f"{base}/tags/list")
        assert tags.json() == {"name": f"ipns/{name}/app", "tags": ["v1"]}
        missing = await client.get(f"{base}/manifests/v9")
        assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        push = await client.put(f"{base}/manifests/v2", content=b"{}", headers={"Content-Type": OCI_MANIFEST})
        assert push.status_code == 403 and push.json()["errors"][0]["code"] == "DENIED"
        listing = await client.get(f"{b_url}/ipns/{name}/app/v1/oci-layout")  # gateway paths too
        assert listing.status_code == 200 and b"imageLayoutVersion" in listing.content

        # A provided its tag directory: B's DHT names A as a provider of the record's root (the
        # provide is sent from A's queue, beside the publish: it is waited for, not assumed done).
        root = CID.parse(published["value"].removeprefix("/ipfs/")).to_v1()

        async def b_names_a_a_provider() -> bool:
            found = await client.get(f"{b_url}/routing/v1/providers/{root}")
            return a.peer_id in [provider["ID"] for provider in found.json()["Providers"]]

        await eventually(b_names_a_a_provider)


async def test_follower_b_sees_v2_after_its_poll_and_refuses_forged_older_and_expired_records_from_the_dht(
    serve_node: Any, tmp_path: Path
) -> None:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        running_nodes(tmp_path / "hostile") as nodes,
        trio.open_nursery() as nursery,
    ):
        a, stop_a = await start_stoppable(nursery, serve_node("a", **BIND_ALL))
        name = own_name(a)
        a_url = a.registry_urls[0]
        await push_image(client, a_url, "app", "v1", b"v1 layer" * 500)
        await eventually(lambda: has_seq(client, a_url, name))
        follower = {
            "routing.bootstrap": a.p2p_addrs[:1],
            "routing.mode": "client",  # B keeps no DHT records: what it keeps is its own last valid one
            "ipns.follow": [{"name": str(name), "poll": 0.5, "repository": "app", "local": "mirror/app"}],
        }
        async with serve_node("b", **follower) as b:
            b_url = b.registry_urls[0]

            async def b_has(tag: str) -> bool:
                resp = await client.head(
                    f"{b_url}/v2/mirror/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
                )
                return resp.status_code == 200

            await eventually(lambda: b_has("v1"))
            v2 = await push_image(client, a_url, "app", "v2", b"v2 layer" * 500)
            await eventually(lambda: b_has("v2"))
            resp = await client.get(f"{b_url}/v2/mirror/app/manifests/v2", headers={"Accept": OCI_MANIFEST})
            assert resp.headers["Docker-Content-Digest"] == v2
            best = await gateway_record(client, a_url, name)

            async def b_resolves_to_best() -> bool:
                resolved = await resolve(client, b.api_url, name)
                assert resolved.status_code == 200, resolved.text
                return bool(resolved.json()["sequence"] == best.sequence)

            await eventually(b_resolves_to_best)

            # A hostile DHT peer stores and serves a record signed by another key, a lower sequence
            # and an expired one. A refuses each PUT_VALUE; B is served each one and keeps A's record.
            hostile = await nodes.start(
                routing=replace(LOOPBACK_ROUTING, bootstrap=a.p2p_addrs[:1]), validators={"ipns": AnyRecord()}
            )
            served = record_served_values(hostile)
            await eventually(_async(lambda: hostile.routing_stat().dhts[0].routing_table_size > 0))
            key = name.routing_key()
            assert await hostile.put_value(key, best.raw) == 1  # A answers a PUT of its own record
            forged = create_record(
                Ed25519PrivateKey.new(),
                "/ipfs/bafkqaddwgevxmmraojswg33smq",
                best.sequence + 10,
                time.time_ns() + 3600 * NANOSECONDS,
            )
            lower = signed_by(tmp_path / "a", best.sequence - 1, best.value_text)
            expired = signed_by(
                tmp_path / "a", best.sequence + 20, best.value_text, eol_ns=time.time_ns() - 1
            )
            for bad in (forged, lower, expired):
                assert await hostile.put_value(key, bad) == 0  # A refused it
                await eventually(_async(lambda bad=bad: (b.peer_id, bad) in served))  # B was served it
                await _expect_resolves_to(client, b, name, best)

            # A goes away: the DHT now holds only the hostile peer's expired record. B still resolves
            # the name to A's last valid record and serves its tags.
            await stop_a()
            before = len(served)
            await eventually(_async(lambda: len(served) > before))  # B asked the network again
            await _expect_resolves_to(client, b, name, best)
            tags = await client.get(f"{b_url}/v2/ipns/{name}/app/tags/list")
            assert tags.json()["tags"] == ["v1", "v2"]
        nursery.cancel_scope.cancel()


async def test_c_bootstrapped_only_to_b_resolves_and_pulls_a_tag_of_a_once_a_is_gone(serve_node: Any) -> None:
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        a, stop_a = await start_stoppable(nursery, serve_node("a", **BIND_ALL))
        name = own_name(a)
        layer = b"three nodes" * 800
        await push_image(client, a.registry_urls[0], "team/api", "latest", layer)
        await eventually(lambda: has_seq(client, a.registry_urls[0], name))
        follow = {"routing.bootstrap": a.p2p_addrs[:1], "ipns.follow": [{"name": str(name), "poll": 0.5}]}
        async with serve_node("b", **follow) as b:
            await joined(client, a, b)
            published = await publish(client, a.api_url)
            assert published["stored"] >= 1  # B's DHT holds A's record
            root = CID.parse(published["value"].removeprefix("/ipfs/"))

            async def b_provides_the_tag_directory() -> bool:
                # B's follower provides the record's root only after a poll that pulled every image
                # whole, and A is B's one DHT peer. (B's image list shows ipfs/<cid>:latest as soon as
                # its manifest is recorded, before the layer is fetched: no sign that B holds it all.)
                found = await client.get(f"{a.registry_urls[0]}/routing/v1/providers/{root.to_v1()}")
                return b.peer_id in [provider["ID"] for provider in found.json()["Providers"]]

            await eventually(b_provides_the_tag_directory)
            images = (await client.get(f"{b.api_url}/api/v0/images")).json()["images"]
            assert any(image["tag"] == "latest" for image in images)  # under ipfs/<cid>
            await stop_a()
            async with serve_node("c", **{"routing.bootstrap": b.p2p_addrs[:1]}) as c:
                resolved = await resolve(client, c.api_url, name)
                assert resolved.status_code == 200, resolved.text
                assert resolved.json()["sequence"] == published["sequence"]
                assert list(resolved.json()["images"]) == ["team/api"]
                base_c = f"{c.registry_urls[0]}/v2/ipns/{name}/team/api"
                tags = await client.get(f"{base_c}/tags/list")
                assert tags.json()["tags"] == ["latest"]
                blob = await client.get(f"{base_c}/blobs/{digest(layer)}")
                assert blob.status_code == 200 and blob.content == layer
                # B, which follows the name, provides its tag directory too.
                found = await client.get(f"{c.registry_urls[0]}/routing/v1/providers/{root.to_v1()}")
                assert b.peer_id in [provider["ID"] for provider in found.json()["Providers"]]
        nursery.cancel_scope.cancel()


async def test_a_republishes_its_record_to_the_dht_before_it_expires(serve_node: Any) -> None:
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        a, stop_a = await start_stoppable(
            nursery, serve_node("a", **BIND_ALL, **{"ipns.republish_interval": 0.5})
        )
        name = own_name(a)
        async with serve_node("b", **{"routing.bootstrap": a.p2p_addrs[:1]}) as b:
            await joined(client, a, b)
            await push_image(client, a.registry_urls[0], "app", "v1", b"republished" * 100)
            await eventually(lambda: has_seq(client, a.registry_urls[0], name))
            first = await gateway_record(client, a.registry_urls[0], name)
            await eventually(lambda: has_seq(client, a.registry_urls[0], name, first.sequence + 2))
            await stop_a()  # what B's DHT holds now, A put there: no lookup can reach A any more
            got = await client.get(
                f"{b.registry_urls[0]}/routing/v1/ipns/{name}", headers={"Accept": IPNS_RECORD}
            )
            assert got.status_code == 200
            republished = decode_record(got.content)
            assert republished.sequence > first.sequence and republished.eol_ns > first.eol_ns
            assert republished.value_text == first.value_text  # the same tags, signed again
        nursery.cancel_scope.cancel()


async def _expect_resolves_to(
    client: httpx.AsyncClient, server: ServerInfo, name: IpnsName, best: IpnsRecord
) -> None:
    """``name resolve`` (asking the network afresh) and the gateway both give ``best``."""
    resolved = await resolve(client, server.api_url, name)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["sequence"] == best.sequence and resolved.json()["value"] == best.value_text
    record = await gateway_record(client, server.registry_urls[0], name)
    assert record.raw == best.raw


def _async(check: Any) -> Any:
    async def run() -> bool:
        return bool(check())

    return run
