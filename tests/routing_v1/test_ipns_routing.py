"""Signed IPNS records through a served ipfsreg's Routing V1 API and its HTTP routers (ipfsreg's IPNS
validator at both ends; the delegated router is an in-memory value store on loopback)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from routing_support import MemoryRouter, routing_app, serve_app

from ipfsreg.ipns.record import IpnsName, create_record, decode_record
from ipfsreg.ipns.validator import IpnsValidator

IPNS_RECORD = "application/vnd.ipfs.ipns-record"


def _signed(key: Ed25519PrivateKey, sequence: int) -> bytes:
    eol_ns = time.time_ns() + 3600 * 10**9
    return create_record(key, "/ipfs/bafkqaaa", sequence, eol_ns, 45 * 10**9)


async def test_ipns_record_put_and_got_through_a_node_and_its_http_router(serve_node: Any) -> None:
    key = Ed25519PrivateKey.new()
    name = IpnsName.from_public_key(key.get_public_key())
    delegated = MemoryRouter()
    async with (
        serve_app(routing_app(delegated, validator=IpnsValidator())) as router_url,
        serve_node("b", **{"routing.http_routers": [router_url]}) as b,
        httpx.AsyncClient(base_url=b.registry_urls[0]) as http,
    ):
        url = f"/routing/v1/ipns/{name}"
        put = await http.put(url, content=_signed(key, 5), headers={"Content-Type": IPNS_RECORD})
        forged = await http.put(
            url, content=_signed(Ed25519PrivateKey.new(), 9), headers={"Content-Type": IPNS_RECORD}
        )
        got = await http.get(url, headers={"Accept": IPNS_RECORD})
    assert put.status_code == 200, put.text
    assert forged.status_code == 400  # signed by another key: refused before it goes anywhere
    assert got.status_code == 200
    assert decode_record(got.content).sequence == 5
    assert delegated.values[name.routing_key()] == got.content  # it went through the HTTP router
    assert got.headers["Cache-Control"].startswith("public, max-age=45, stale-while-revalidate=")
    assert got.headers["Expires"].endswith(" GMT")


async def test_a_record_older_than_the_one_a_node_holds_is_refused_with_409_and_the_newer_kept(
    serve_node: Any,
) -> None:
    key = Ed25519PrivateKey.new()
    name = IpnsName.from_public_key(key.get_public_key())
    delegated = MemoryRouter()
    async with (
        serve_app(routing_app(delegated, validator=IpnsValidator())) as router_url,
        serve_node("b", **{"routing.http_routers": [router_url]}) as b,
        httpx.AsyncClient(base_url=b.registry_urls[0]) as http,
    ):
        url = f"/routing/v1/ipns/{name}"
        newer = await http.put(url, content=_signed(key, 5), headers={"Content-Type": IPNS_RECORD})
        older = await http.put(url, content=_signed(key, 3), headers={"Content-Type": IPNS_RECORD})
        got = await http.get(url, headers={"Accept": IPNS_RECORD})
    assert newer.status_code == 200, newer.text
    assert older.status_code == 409 and "a better ipns record for this key is stored" in older.text
    assert decode_record(got.content).sequence == 5
    assert decode_record(delegated.values[name.routing_key()]).sequence == 5  # not passed on either


async def test_a_published_record_goes_to_the_http_router_beside_the_dht_and_resolves_through_it(
    serve_node: Any,
) -> None:
    delegated = MemoryRouter()
    async with (
        serve_app(routing_app(delegated, validator=IpnsValidator())) as router_url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        routers = {"routing.http_routers": [router_url]}
        async with serve_node("a", **routers) as a:  # a DHT with no peers, and the HTTP router
            bound = await http.post(f"{a.api_url}/api/v0/name/bind", params={"arg": "app", "key": "self"})
            assert bound.status_code == 200, bound.text
            published = (await http.post(f"{a.api_url}/api/v0/name/publish")).json()["published"][0]
        assert published["routed"] and published["stored"] == 1  # the router took it, no DHT peer did
        name = IpnsName.parse(published["name"])
        assert decode_record(delegated.values[name.routing_key()]).sequence == published["sequence"]
        async with serve_node("b", **routers) as b:  # knows nobody on the DHT: only the router has it
            got = await http.get(f"{b.registry_urls[0]}/ipns/{name}", params={"format": "ipns-record"})
        assert got.status_code == 200 and got.content == delegated.values[name.routing_key()]
