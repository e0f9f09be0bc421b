"""The Routing V1 HTTP server (``/routing/v1/...``) over an in-memory router, served on loopback."""

from __future__ import annotations

import json

from routing_support import (
    PEER_A,
    PEER_B,
    PEER_C,
    Found,
    MemoryRouter,
    PrefixValidator,
    client_for,
    record_for,
    routing_app,
)

from ipfsreg.cid import CID, DAG_PB, LIBP2P_KEY, b58decode
from ipfsreg.routing_v1.ipns import ipns_key

CONTENT = CID.hash(b"some content")
TCP = "/ip4/127.0.0.1/tcp/4001"
QUIC = "/ip4/127.0.0.1/udp/4001/quic-v1"
NAME = CID.v1(LIBP2P_KEY, b58decode(PEER_A)).encode()


def _router() -> MemoryRouter:
    router = MemoryRouter()
    router.providers[CONTENT.multihash] = [
        Found(PEER_A, [TCP, QUIC]),
        Found(PEER_B, []),
        Found("not-a-peer", [TCP]),  # a bad record from the routing system is skipped
        Found(PEER_A, [TCP]),  # the same peer twice is answered once
    ]
    router.peers[PEER_C] = [TCP]
    return router


async def test_providers_as_json_with_the_spec_headers() -> None:
    async with client_for(routing_app(_router())) as http:
        response = await http.get(f"/routing/v1/providers/{CONTENT}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"].startswith("public, max-age=300,")
    assert "stale-while-revalidate=172800" in response.headers["Cache-Control"]
    assert response.headers["Vary"] == "Accept"
    assert response.headers["Last-Modified"].endswith(" GMT")
    assert response.json() == {
        "Providers": [
            {"Schema": "peer", "ID": PEER_A, "Addrs": [TCP, QUIC], "Protocols": ["transport-bitswap"]},
            {"Schema": "peer", "ID": PEER_B, "Addrs": [], "Protocols": ["transport-bitswap"]},
        ]
    }


async def test_providers_of_a_cidv0_are_those_of_its_multihash() -> None:
    v0 = CID.hash(b"dag", codec=DAG_PB, version=0)
    router = MemoryRouter()
    router.providers[v0.multihash] = [Found(PEER_A, [TCP])]
    async with client_for(routing_app(router)) as http:
        response = await http.get(f"/routing/v1/providers/{v0}")
    assert [p["ID"] for p in response.json()["Providers"]] == [PEER_A]


async def test_providers_nobody_has_are_200_empty_with_a_short_cache() -> None:
    async with client_for(routing_app(MemoryRouter())) as http:
        response = await http.get(f"/routing/v1/providers/{CONTENT}")
    assert response.status_code == 200
    assert response.json() == {"Providers": []}
    assert response.headers["Cache-Control"].startswith("public, max-age=15,")


async def test_providers_stream_as_ndjson_when_asked() -> None:
    async with client_for(routing_app(_router())) as http:
        response = await http.get(
            f"/routing/v1/providers/{CONTENT}", headers={"Accept": "application/x-ndjson"}
        )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["ID"] for line in lines] == [PEER_A, PEER_B]


async def test_ndjson_sends_each_provider_as_it_is_found() -> None:
    router = _router()
    router.delay = 0.3
    async with (
        client_for(routing_app(router)) as http,
        http.stream(
            "GET", f"/routing/v1/providers/{CONTENT}", headers={"Accept": "application/x-ndjson"}
        ) as response,
    ):
        first = await response.aiter_lines().__anext__()
    assert json.loads(first)["ID"] == PEER_A


async def test_providers_filtered_by_addrs_and_protocols() -> None:
    async with client_for(routing_app(_router())) as http:
        quic = await http.get(f"/routing/v1/providers/{CONTENT}?filter-addrs=quic-v1")
        unknown = await http.get(f"/routing/v1/providers/{CONTENT}?filter-addrs=!quic-v1,unknown")
        other = await http.get(
            f"/routing/v1/providers/{CONTENT}?filter-protocols=transport-ipfs-gateway-http"
        )
    assert quic.json()["Providers"] == [
        {"Schema": "peer", "ID": PEER_A, "Addrs": [QUIC], "Protocols": ["transport-bitswap"]}
    ]
    assert [(p["ID"], p["Addrs"]) for p in unknown.json()["Providers"]] == [(PEER_A, [TCP]), (PEER_B, [])]
    assert other.json() == {"Providers": []}


async def test_json_answers_ask_the_router_for_at_most_100() -> None:
    router = _router()
    async with client_for(routing_app(router)) as http:
        await http.get(f"/routing/v1/providers/{CONTENT}")
    assert router.asked_limits == [100]


async def test_slow_lookup_answers_with_what_it_found_within_the_timeout() -> None:
    router = _router()
    router.delay = 0.6
    async with client_for(routing_app(router, timeout=1.0)) as http:
        response = await http.get(f"/routing/v1/providers/{CONTENT}")
    assert response.status_code == 200
    assert [p["ID"] for p in response.json()["Providers"]] == [PEER_A]


async def test_malformed_cid_or_peer_id_or_filter_is_422() -> None:
    async with client_for(routing_app(_router())) as http:
        bad_cid = await http.get("/routing/v1/providers/not-a-cid")
        bad_peer = await http.get("/routing/v1/peers/not-a-peer")
        content_cid = await http.get(f"/routing/v1/peers/{CONTENT}")
        bad_filter = await http.get(f"/routing/v1/providers/{CONTENT}?filter-addrs=!")
    for response in (bad_cid, bad_peer, content_cid, bad_filter):
        assert response.status_code == 422
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "invalid request" in response.text


async def test_peers_by_base58_or_cid_answer_one_record() -> None:
    peer_cid = CID.v1(LIBP2P_KEY, b58decode(PEER_C)).encode()
    async with client_for(routing_app(_router())) as http:
        by_b58 = await http.get(f"/routing/v1/peers/{PEER_C}")
        by_cid = await http.get(f"/routing/v1/peers/{peer_cid}")
        unknown = await http.get(f"/routing/v1/peers/{PEER_B}")
        streamed = await http.get(f"/routing/v1/peers/{PEER_C}", headers={"Accept": "application/x-ndjson"})
    expected = {"Schema": "peer", "ID": PEER_C, "Addrs": [TCP], "Protocols": ["transport-bitswap"]}
    assert by_b58.json() == by_cid.json() == {"Peers": [expected]}
    assert unknown.status_code == 200 and unknown.json() == {"Peers": []}
    assert [json.loads(line) for line in streamed.text.splitlines()] == [expected]


async def test_unknown_routing_path_is_400() -> None:
    async with client_for(routing_app(_router())) as http:
        response = await http.get("/routing/v1/nonsense/thing")
    assert response.status_code == 400
    assert "unknown Routing V1 path" in response.text


async def test_ipns_put_then_get_round_trips_a_valid_record() -> None:
    router = MemoryRouter()
    key = ipns_key(NAME)
    record = record_for(key, 7)
    headers = {"Content-Type": "application/vnd.ipfs.ipns-record"}
    async with client_for(routing_app(router, validator=PrefixValidator())) as http:
        put = await http.put(f"/routing/v1/ipns/{NAME}", content=record, headers=headers)
        got = await http.get(
            f"/routing/v1/ipns/{NAME}", headers={"Accept": "application/vnd.ipfs.ipns-record"}
        )
    assert put.status_code == 200
    assert router.values[key] == record
    assert got.status_code == 200
    assert got.content == record
    assert got.headers["Content-Type"] == "application/vnd.ipfs.ipns-record"
    assert got.headers["Cache-Control"] == "public, max-age=60"  # the record sets no TTL
    assert got.headers["Etag"] and got.headers["Vary"] == "Accept"


async def test_ipns_put_of_an_invalid_record_is_400_and_stores_nothing() -> None:
    router = MemoryRouter()
    headers = {"Content-Type": "application/vnd.ipfs.ipns-record"}
    async with client_for(routing_app(router, validator=PrefixValidator())) as http:
        forged = await http.put(f"/routing/v1/ipns/{NAME}", content=b"forged", headers=headers)
        huge = await http.put(f"/routing/v1/ipns/{NAME}", content=b"x" * 20_000, headers=headers)
        bad_name = await http.put(f"/routing/v1/ipns/{CONTENT}", content=b"x", headers=headers)
    assert forged.status_code == 400 and "signature does not verify" in forged.text
    assert huge.status_code == 400 and "at most 10240 bytes" in huge.text
    assert bad_name.status_code == 400 and "invalid IPNS name" in bad_name.text
    assert router.values == {}


async def test_ipns_content_types_are_checked_406() -> None:
    async with client_for(routing_app(MemoryRouter(), validator=PrefixValidator())) as http:
        get = await http.get(f"/routing/v1/ipns/{NAME}", headers={"Accept": "application/json"})
        put = await http.put(
            f"/routing/v1/ipns/{NAME}", content=b"x", headers={"Content-Type": "application/octet-stream"}
        )
    assert get.status_code == 406 and "Accept: application/vnd.ipfs.ipns-record" in get.text
    assert put.status_code == 406 and "Content-Type: application/vnd.ipfs.ipns-record" in put.text


async def test_ipns_get_of_missing_or_invalid_record_is_404() -> None:
    router = MemoryRouter()
    router.values[ipns_key(NAME)] = b"stored garbage"
    other = CID.v1(LIBP2P_KEY, b58decode(PEER_B)).encode()
    accept = {"Accept": "application/vnd.ipfs.ipns-record"}
    async with client_for(routing_app(router, validator=PrefixValidator())) as http:
        invalid = await http.get(f"/routing/v1/ipns/{NAME}", headers=accept)
        missing = await http.get(f"/routing/v1/ipns/{other}", headers=accept)
    assert invalid.status_code == 404
    assert missing.status_code == 404


async def test_ipns_put_without_a_validator_is_501() -> None:
    router = MemoryRouter()
    async with client_for(routing_app(router)) as http:
        response = await http.put(
            f"/routing/v1/ipns/{NAME}",
            content=b"x",
            headers={"Content-Type": "application/vnd.ipfs.ipns-record"},
        )
    assert response.status_code == 501
    assert router.values == {}


async def test_methods_the_api_does_not_have_are_501_in_text_not_html() -> None:
    async with client_for(routing_app(_router())) as http:
        post = await http.post(f"/routing/v1/providers/{CONTENT}")
        delete = await http.delete(f"/routing/v1/ipns/{NAME}")
    assert post.status_code == 501 and post.headers["Content-Type"].startswith("text/plain")
    assert "supported: GET" in post.text
    assert delete.status_code == 501 and "supported: GET, PUT" in delete.text


async def test_cors_preflight_and_headers_let_browsers_use_the_api() -> None:
    async with client_for(routing_app(_router())) as http:
        preflight = await http.options(f"/routing/v1/providers/{CONTENT}")
        answer = await http.get(f"/routing/v1/providers/{CONTENT}")
    assert preflight.status_code == 204
    for response in (preflight, answer):
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in response.headers["Access-Control-Allow-Methods"]
