"""Test support for the Routing V1 tests: a router and an IPNS validator in memory, apps on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from ipfsreg.cid import CID
from ipfsreg.routing_v1.server import RoutingServerSettings, register_routing_v1

PEER_A = "12D3KooWHbTFAGSwmikm7yzuk3DkzXCKE95MRFmKLCKLb6aMArr8"
PEER_B = "12D3KooWESo69MhW55zWQ4AVvbSmCHZ5ahreyS6fP1nKs9xjb9Qn"
PEER_C = "QmQPiAMiquPvb2K9uMHeQgRwDKWV7CYoFUpXouAXoYGfHj"


@dataclass
class Found:
    peer_id: str
    addrs: list[str]
    protocols: list[str] = field(default_factory=lambda: ["transport-bitswap"])


class NoRecord(LookupError):
    pass


class MemoryRouter:
    """Providers and peers from dicts; ``delay`` seconds before each provider (a slow DHT walk)."""

    def __init__(self) -> None:
        self.providers: dict[bytes, list[Found]] = {}
        self.peers: dict[str, list[str]] = {}
        self.values: dict[bytes, bytes] = {}
        self.delay = 0.0
        self.asked_limits: list[int] = []

    async def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[Found]:
        self.asked_limits.append(limit)
        for found in self.providers.get(cid.multihash, [])[:limit]:
            await trio.sleep(self.delay)
            yield found

    async def find_peer(self, peer_id: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self.peers.get(peer_id, []))

    async def get_value(self, key: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        try:
            return self.values[key]
        except KeyError:
            raise NoRecord(key) from None

    async def put_value(self, key: bytes, value: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.values[key] = value


class PrefixValidator:
    """Valid records are ``b"ipns:" + key + b":" + sequence``; the highest sequence is best."""

    def validate(self, key: bytes, value: bytes) -> None:
        prefix = b"ipns:" + key + b":"
        if not value.startswith(prefix) or not value[len(prefix) :].isdigit():
            raise ValueError("signature does not verify")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        sequences = [int(v.rsplit(b":", 1)[1]) for v in values]
        return sequences.index(max(sequences))


def record_for(key: bytes, sequence: int) -> bytes:
    return b"ipns:" + key + b":" + str(sequence).encode()


def routing_app(
    router: MemoryRouter, *, validator: PrefixValidator | None = None, timeout: float = 30.0
) -> QuartTrio:

    app = QuartTrio(__name__)
    register_routing_v1(
        app,
        router,
        validator=validator,
        not_found=(NoRecord,),
        settings=RoutingServerSettings(lookup_timeout=timeout),
    )
    return app


@asynccontextmanager
async def serve_app(app: QuartTrio) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on a free loopback port in this trio loop; yield its base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        yield binds[0]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_for(app: QuartTrio) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client
