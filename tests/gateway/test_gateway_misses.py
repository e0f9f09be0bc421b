"""The gateway of a running node answers misses fast: 404 once nobody has the CID (no waiting out the
fetch timeout), and 412 at once for `Cache-Control: only-if-cached` when the blocks are not stored."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from ipfsreg.cid import CID

# Far longer than the test may take: the answers below must not wait for it.
SLOW_FETCH = {"node.fetch_timeout": 300.0, "node.want_timeout": 120.0}


async def test_a_cid_nobody_has_is_404_as_soon_as_the_provider_lookup_ends(serve_node: Any) -> None:
    missing = CID.hash(b"nobody has this")
    async with (
        serve_node("lonely", **SLOW_FETCH) as lonely,
        serve_node("peer") as peer,
        httpx.AsyncClient(base_url=lonely.registry_urls[0], timeout=60) as client,
        httpx.AsyncClient(base_url=lonely.api_url, timeout=60) as api,
    ):
        with trio.fail_after(30):
            resp = await client.get(f"/ipfs/{missing}", params={"format": "raw"})
        assert resp.status_code == 404
        assert str(missing) in resp.text
        assert "no connected peers, and the provider lookup found nobody" in resp.text
        # With a connected peer that lacks it too: its DONT_HAVE and the empty lookup decide.
        assert (await api.post("/api/v0/connect", params={"arg": peer.p2p_addrs[0]})).status_code == 200
        with trio.fail_after(30):
            resp = await client.get(f"/ipfs/{missing}", params={"format": "raw"})
        assert resp.status_code == 404
        assert "none of the 1 connected peers has it" in resp.text


async def test_only_if_cached_is_412_for_a_missing_cid_and_200_for_a_stored_one(serve_node: Any) -> None:
    async with serve_node("node", **SLOW_FETCH) as node:
        async with httpx.AsyncClient(base_url=node.api_url, timeout=60) as api:
            added = await api.post("/api/v0/import", content=_car_of(b"cached here"), params={"pin": "true"})
            assert added.status_code == 200, added.text
            stored = added.json()["roots"][0]
        missing = CID.hash(b"not stored here")
        cached_only = {"Cache-Control": "only-if-cached"}
        async with httpx.AsyncClient(base_url=node.registry_urls[0], timeout=60) as client:
            with trio.fail_after(10):
                for method in ("GET", "HEAD"):
                    resp = await client.request(
                        method, f"/ipfs/{missing}", params={"format": "raw"}, headers=cached_only
                    )
                    assert resp.status_code == 412
                    assert resp.content == b""
            resp = await client.get(f"/ipfs/{stored}", params={"format": "raw"}, headers=cached_only)
            assert resp.status_code == 200
            assert resp.content == b"cached here"
            both = {"Cache-Control": "no-transform, only-if-cached"}
            head = await client.head(f"/ipfs/{stored}", params={"format": "raw"}, headers=both)
            assert head.status_code == 200


def _car_of(data: bytes) -> bytes:
    from ipfsreg.cid import RAW
    from ipfsreg.unixfs.car import car_header, car_section

    cid = CID.hash(data, codec=RAW, version=1)
    return car_header([cid]) + car_section(cid, data)
