"""The composed server's network options: a swarm key in the data dir makes it private, and the
Routing V1 API on the registry port answers from what the node holds and knows."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import httpx

from ipfsreg.cid import CID
from ipfsreg.node.pnet import format_swarm_key
from ipfsreg.unixfs.importer import import_bytes

PSK = bytes(range(100, 132))


async def test_routing_v1_names_this_node_as_the_provider_of_what_it_holds(serve_node: Any) -> None:
    blob = random.Random(9).randbytes(300_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _blocks, result = import_bytes(blob)
    async with serve_node("a") as a, httpx.AsyncClient(base_url=a.registry_urls[0]) as http:
        assert (await http.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)).status_code == 201
        held = await http.get(f"/routing/v1/providers/{result.cid.to_v1()}")
        missing = await http.get(f"/routing/v1/providers/{CID.hash(b'nobody has this')}")
        itself = await http.get(f"/routing/v1/peers/{a.peer_id}")
        ipns = await http.get(
            f"/routing/v1/ipns/{a.peer_id}", headers={"Accept": "application/vnd.ipfs.ipns-record"}
        )
    assert held.status_code == 200
    [provider] = held.json()["Providers"]
    assert provider["ID"] == a.peer_id
    assert provider["Protocols"] == ["transport-bitswap"]
    assert provider["Addrs"] and all(f"{addr}/p2p/{a.peer_id}" in a.p2p_addrs for addr in provider["Addrs"])
    assert missing.json() == {"Providers": []}
    assert itself.json()["Peers"][0]["ID"] == a.peer_id
    assert ipns.status_code == 404  # asked of the DHT, which holds no record for this name


async def test_a_swarm_key_in_the_data_dir_keeps_the_node_in_its_private_network(
    serve_node: Any, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "swarm.key").write_bytes(format_swarm_key(PSK))
    async with serve_node("a") as a, serve_node("b") as b, serve_node("outsider") as outsider:
        async with httpx.AsyncClient(base_url=b.api_url, timeout=60) as api_b:
            response = await api_b.post("/api/v0/connect", params={"arg": a.p2p_addrs[0]})
            assert response.status_code == 200, response.text
        async with httpx.AsyncClient(base_url=outsider.api_url, timeout=60) as api_outsider:
            refused = await api_outsider.post("/api/v0/connect", params={"arg": a.p2p_addrs[0]})
        assert refused.status_code != 200
        assert "swarm key" in refused.text


async def test_routing_v1_also_answers_from_the_configured_http_routers(serve_node: Any) -> None:
    blob = random.Random(10).randbytes(100_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _blocks, result = import_bytes(blob)
    async with serve_node("a") as a:
        async with httpx.AsyncClient(base_url=a.registry_urls[0]) as http_a:
            assert (
                await http_a.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
            ).status_code == 201
        async with (
            serve_node("b", **{"routing.http_routers": [a.registry_urls[0]]}) as b,
            httpx.AsyncClient(base_url=b.registry_urls[0]) as http_b,
        ):
            delegated = await http_b.get(f"/routing/v1/providers/{result.cid.to_v1()}")
            peer = await http_b.get(f"/routing/v1/peers/{a.peer_id}")
    assert [p["ID"] for p in delegated.json()["Providers"]] == [a.peer_id]
    assert peer.json()["Peers"][0]["ID"] == a.peer_id


async def test_the_nodes_own_provider_lookups_ask_the_http_routers_beside_the_dht(serve_node: Any) -> None:
    blob = random.Random(11).randbytes(100_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _blocks, result = import_bytes(blob)
    async with serve_node("a") as a:
        async with httpx.AsyncClient(base_url=a.registry_urls[0]) as http_a:
            assert (
                await http_a.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
            ).status_code == 201
        # b shares no DHT with a: only its HTTP router (a's Routing V1 API) knows who has the blob.
        async with (
            serve_node("b", **{"routing.http_routers": [a.registry_urls[0]]}) as b,
            httpx.AsyncClient(base_url=b.api_url, timeout=60) as api_b,
        ):
            found = await api_b.get("/api/v0/routing/findprovs", params={"arg": str(result.cid)})
            fetched = await api_b.get("/api/v0/cat", params={"arg": str(result.cid)})
    assert [line for line in found.text.splitlines() if a.peer_id in line]
    assert fetched.status_code == 200 and fetched.content == blob  # the provider was dialled and asked
