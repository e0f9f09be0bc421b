"""The HTTP routers client against ipfsreg's own Routing V1 server and hostile fake routers, on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest
import trio
import trio.lowlevel
from quart import Response
from quart_trio import QuartTrio
from routing_support import (
    PEER_A,
    PEER_B,
    PEER_C,
    Found,
    MemoryRouter,
    PrefixValidator,
    record_for,
    routing_app,
    serve_app,
)

from ipfsreg.cid import CID, LIBP2P_KEY, b58decode
from ipfsreg.node.routing.http_client import HttpRouters, HttpRoutingError
from ipfsreg.routing_v1.ipns import ipns_key
from ipfsreg.routing_v1.records import PeerRecord, parse_filters

CONTENT = CID.hash(b"layer bytes")
TCP = "/ip4/127.0.0.1/tcp/4001"
QUIC = "/ip4/127.0.0.1/udp/4001/quic-v1"
NAME = CID.v1(LIBP2P_KEY, b58decode(PEER_A)).encode()
KEY = ipns_key(NAME)


# Valid JSON naming PEER_B, but over the client's 1 MiB limit for a JSON answer.
OVERSIZED = json.dumps({"Providers": [{"Schema": "peer", "ID": PEER_B, "Addrs": [TCP]}] * 20000}).encode()


def _honest(*found: Found) -> QuartTrio:
    router = MemoryRouter()
    router.providers[CONTENT.multihash] = list(found)
    router.peers[PEER_C] = [TCP]
    return routing_app(router, validator=PrefixValidator())


def _hostile(
    respond: Callable[[], AsyncIterator[bytes] | bytes], content_type: str, status: int = 200
) -> QuartTrio:
    """A router that answers every request with ``respond()``."""
    app = QuartTrio(__name__)

    async def anything(path: str) -> Response:
        response = Response(respond(), status=status, headers={"Content-Type": content_type})
        response.timeout = None
        return response

    app.add_url_rule("/<path:path>", "anything", anything, methods=["GET", "PUT"])
    return app


async def _urls(stack: AsyncExitStack, *apps: QuartTrio) -> list[str]:
    return [await stack.enter_async_context(serve_app(app)) for app in apps]


async def test_providers_from_ipfsregs_own_server_with_ndjson() -> None:
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _honest(Found(PEER_A, [TCP]), Found(PEER_B, [QUIC])))
        async with HttpRouters(urls, timeout=5) as routers:
            found = await routers.find_providers(CONTENT)
            quic_only = await routers.find_providers(CONTENT, filters=parse_filters("quic-v1", None))
    assert found == [
        PeerRecord(PEER_A, [TCP], ["transport-bitswap"]),
        PeerRecord(PEER_B, [QUIC], ["transport-bitswap"]),
    ]
    assert [r.peer_id for r in quic_only] == [PEER_B]


async def test_providers_from_several_routers_are_merged_once_per_peer_and_limited() -> None:
    async with AsyncExitStack() as stack:
        urls = await _urls(
            stack,
            _honest(Found(PEER_A, [TCP]), Found(PEER_B, [TCP])),
            _honest(Found(PEER_B, [TCP]), Found(PEER_C, [])),
        )
        async with HttpRouters(urls, timeout=5) as routers:
            everyone = await routers.find_providers(CONTENT)
            two = await routers.find_providers(CONTENT, limit=2)
    assert sorted(r.peer_id for r in everyone) == sorted([PEER_A, PEER_B, PEER_C])
    assert len(two) == 2


async def test_providers_stream_into_a_channel_for_a_dht_merge() -> None:
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _honest(Found(PEER_A, [TCP])))
        async with HttpRouters(urls, timeout=5) as routers, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[PeerRecord](10)
            nursery.start_soon(routers.providers_into, CONTENT, send)
            async with receive:
                got = [record.peer_id async for record in receive]
    assert got == [PEER_A]


async def test_bad_records_are_skipped_and_good_ones_kept() -> None:
    body = json.dumps(
        {
            "Providers": [
                {"Schema": "peer", "ID": "not-a-peer-id", "Addrs": [TCP]},
                {
                    "Schema": "peer",
                    "ID": PEER_A,
                    "Addrs": ["garbage", TCP],
                    "Protocols": ["transport-bitswap"],
                },
                {"Schema": "peer", "ID": PEER_B, "Addrs": "not a list"},
                {"Schema": "future-schema", "ID": PEER_C},
                "not an object",
            ]
        }
    ).encode()
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _hostile(lambda: body, "application/json"))
        async with HttpRouters(urls, timeout=5) as routers:
            found = await routers.find_providers(CONTENT)
    assert found == [PeerRecord(PEER_A, [TCP], ["transport-bitswap"])]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"<html>not the api</html>", "text/html", 200),
        (b"{not json", "application/json", 200),
        (b'{"Providers": "nope"}', "application/json", 200),
        (OVERSIZED, "application/json", 200),
        (b"internal error", "text/plain", 500),
    ],
    ids=["html", "not-json", "not-a-list", "oversized-json", "http-500"],
)
async def test_a_broken_router_gives_nothing_and_does_not_stop_the_others(
    body: bytes, content_type: str, status: int
) -> None:
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _hostile(lambda: body, content_type, status), _honest(Found(PEER_A, [TCP])))
        async with HttpRouters(urls, timeout=5) as routers:
            found = await routers.find_providers(CONTENT)
    assert [r.peer_id for r in found] == [PEER_A]


async def _endless_ndjson() -> AsyncIterator[bytes]:
    line = json.dumps({"Schema": "peer", "ID": PEER_B, "Addrs": [TCP]}).encode() + b"\n"
    while True:
        yield line * 1000
        await trio.lowlevel.checkpoint()


async def _one_huge_line() -> AsyncIterator[bytes]:
    while True:
        yield b"x" * 65536
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("stream", [_endless_ndjson, _one_huge_line], ids=["endless-stream", "endless-line"])
async def test_ndjson_streams_are_capped(stream: Callable[[], AsyncIterator[bytes]]) -> None:
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _hostile(stream, "application/x-ndjson"))
        async with HttpRouters(urls, timeout=30) as routers:
            # Well before the lookup's own timeout: the caps end the stream, not the clock.
            with trio.fail_after(20):
                found = await routers.find_providers(CONTENT, limit=1000)
    assert [r.peer_id for r in found] in ([], [PEER_B])  # each peer once, however often it is sent


async def test_a_router_that_never_answers_is_left_behind_at_the_timeout() -> None:
    async def stall() -> AsyncIterator[bytes]:
        await trio.sleep_forever()
        yield b""

    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _hostile(stall, "application/x-ndjson"), _honest(Found(PEER_A, [TCP])))
        async with HttpRouters(urls, timeout=1.0) as routers:
            start = trio.current_time()
            found = await routers.find_providers(CONTENT)
            elapsed = trio.current_time() - start
    assert [r.peer_id for r in found] == [PEER_A]
    assert elapsed < 5


async def test_find_peer_takes_only_records_of_that_peer() -> None:
    liar = json.dumps({"Peers": [{"Schema": "peer", "ID": PEER_B, "Addrs": [QUIC]}]}).encode()
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, _honest(), _hostile(lambda: liar, "application/json"))
        async with HttpRouters(urls, timeout=5) as routers:
            assert await routers.find_peer(PEER_C) == [TCP]
            assert await routers.find_peer(PEER_A) == []
            with pytest.raises(ValueError, match="not a peer ID"):
                await routers.find_peer("nonsense")


async def test_get_ipns_returns_the_best_valid_record_of_all_routers() -> None:
    routers_state = []
    apps = []
    for stored in (record_for(KEY, 3), b"forged", record_for(KEY, 9)):
        router = MemoryRouter()
        router.values[KEY] = stored
        routers_state.append(router)
        apps.append(routing_app(router))  # servers without a validator pass records on unchecked
    async with AsyncExitStack() as stack:
        urls = await _urls(stack, *apps)
        async with HttpRouters(urls, timeout=5, validator=PrefixValidator()) as routers:
            assert await routers.get_ipns(NAME) == record_for(KEY, 9)
        async with HttpRouters(urls[1:2], timeout=5, validator=PrefixValidator()) as routers:
            assert await routers.get_ipns(NAME) is None
        async with HttpRouters(urls, timeout=5) as unchecked:
            with pytest.raises(HttpRoutingError, match="need a validator"):
                await unchecked.get_ipns(NAME)


async def test_put_ipns_publishes_to_every_router_that_takes_it() -> None:
    good = MemoryRouter()
    async with AsyncExitStack() as stack:
        urls = await _urls(
            stack,
            routing_app(good, validator=PrefixValidator()),
            _hostile(lambda: b"no", "text/plain", 500),
        )
        async with HttpRouters(urls, timeout=5) as routers:
            assert await routers.put_ipns(NAME, record_for(KEY, 1)) == 1
        assert good.values[KEY] == record_for(KEY, 1)
        async with HttpRouters(urls[1:], timeout=5) as routers:
            with pytest.raises(HttpRoutingError, match="no HTTP router took the IPNS record"):
                await routers.put_ipns(NAME, record_for(KEY, 2))
