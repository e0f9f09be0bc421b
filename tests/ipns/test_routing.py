"""RecordRouting: the DHT and the HTTP routers as one place to put and get IPNS records (fakes, no I/O)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import trio
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from ipfsreg.ipns.record import (
    NANOSECONDS,
    InvalidRecord,
    IpnsName,
    NameNotFound,
    create_record,
    decode_record,
)
from ipfsreg.ipns.routing import HttpRecordRouting, RecordRouting, Route, RouteFailed
from ipfsreg.ipns.validator import IpnsValidator
from ipfsreg.node.errors import RecordNotFound, RoutingError

KEY = Ed25519PrivateKey.new()
NAME = IpnsName.from_public_key(KEY.get_public_key())
ROUTING_KEY = NAME.routing_key()
EOL = time.time_ns() + 3600 * NANOSECONDS


def signed(sequence: int, value: str = "/ipfs/bafkqaaa", *, key: Ed25519PrivateKey = KEY) -> bytes:
    return create_record(key, value, sequence, EOL)


class FakeRoute:
    """Answers get_value with ``value`` (or raises ``error``); put_value stores and returns ``stores``."""

    def __init__(
        self, value: bytes | None = None, *, error: Exception | None = None, stores: int = 1
    ) -> None:
        self.value = value
        self.error = error
        self.stores = stores
        self.put: list[tuple[bytes, bytes]] = []

    async def put_value(self, key: bytes, value: bytes) -> int:
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        self.put.append((key, value))
        return self.stores

    async def get_value(self, key: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        if self.value is None:
            raise RecordNotFound(key, "none here")
        return self.value


def routing(dht: FakeRoute, http: FakeRoute | None = None) -> RecordRouting:
    routes = [Route("DHT", dht)]
    if http is not None:
        routes.append(Route("HTTP routers", http))
    return RecordRouting(routes, IpnsValidator())


async def test_get_asks_the_dht_and_the_http_routers_and_the_highest_sequence_wins() -> None:
    assert (
        decode_record(
            await routing(FakeRoute(signed(1)), FakeRoute(signed(2))).get_value(ROUTING_KEY)
        ).sequence
        == 2
    )
    assert (
        decode_record(
            await routing(FakeRoute(signed(3)), FakeRoute(signed(2))).get_value(ROUTING_KEY)
        ).sequence
        == 3
    )


async def test_between_equal_records_the_dhts_wins() -> None:
    from_dht, from_http = signed(4, "/ipfs/bafkqaaa"), signed(4, "/ipfs/bafkqaab")
    assert await routing(FakeRoute(from_dht), FakeRoute(from_http)).get_value(ROUTING_KEY) == from_dht


async def test_the_http_routers_answer_when_the_dht_has_none() -> None:
    record = signed(7)
    assert await routing(FakeRoute(), FakeRoute(record)).get_value(ROUTING_KEY) == record


async def test_an_invalid_answer_is_refused_and_another_routes_valid_one_wins() -> None:
    forged = signed(9, key=Ed25519PrivateKey.new())
    assert await routing(FakeRoute(forged), FakeRoute(signed(1))).get_value(ROUTING_KEY) == signed(1)


async def test_only_invalid_answers_raise_invalid_record_saying_which_route_sent_what() -> None:
    forged = signed(9, key=Ed25519PrivateKey.new())
    with pytest.raises(InvalidRecord, match=r"the HTTP routers answered with an invalid record: signatureV2"):
        await routing(FakeRoute(), FakeRoute(forged)).get_value(ROUTING_KEY)


async def test_a_name_nobody_has_is_name_not_found_naming_the_routes_and_how_they_failed() -> None:
    with pytest.raises(NameNotFound, match=r"^no record of k51\w+ in the DHT or the HTTP routers$"):
        await routing(FakeRoute(), FakeRoute()).get_value(ROUTING_KEY)
    broken = FakeRoute(error=RoutingError("routing is not running"))
    with pytest.raises(NameNotFound, match=r"in the DHT \(the DHT failed: routing is not running\)$"):
        await routing(broken).get_value(ROUTING_KEY)


async def test_put_goes_to_every_route_and_counts_who_stored_it() -> None:
    dht, http = FakeRoute(stores=3), FakeRoute(stores=1)
    assert await routing(dht, http).put_value(ROUTING_KEY, signed(1)) == 4
    assert dht.put == http.put == [(ROUTING_KEY, signed(1))]


async def test_put_fails_only_when_nothing_stored_it_and_a_route_failed() -> None:
    failing = FakeRoute(error=RoutingError("HTTP 500"))
    assert await routing(FakeRoute(stores=2), failing).put_value(ROUTING_KEY, signed(1)) == 2
    assert await routing(FakeRoute(stores=0)).put_value(ROUTING_KEY, signed(1)) == 0  # nobody, no error
    with pytest.raises(RouteFailed, match=r"DHT: stored by none; HTTP routers: HTTP 500"):
        await routing(FakeRoute(stores=0), failing).put_value(ROUTING_KEY, signed(1))


class FakeHttpRouters:
    def __init__(self, record: bytes | None) -> None:
        self.record = record
        self.routers: Sequence[object] = ["one", "two"]
        self.asked: list[str] = []

    async def get_ipns(self, name: str) -> bytes | None:
        self.asked.append(name)
        return self.record

    async def put_ipns(self, name: str, record: bytes) -> int:
        self.asked.append(name)
        return len(self.routers)


async def test_http_record_routing_asks_by_k51_name_and_none_is_name_not_found() -> None:
    routers = FakeHttpRouters(None)
    with pytest.raises(NameNotFound, match="none of the 2 HTTP routers has a record of k51"):
        await HttpRecordRouting(routers).get_value(ROUTING_KEY)
    assert await HttpRecordRouting(routers).put_value(ROUTING_KEY, signed(1)) == 2
    assert routers.asked == [str(NAME), str(NAME)]
    assert await HttpRecordRouting(FakeHttpRouters(signed(5))).get_value(ROUTING_KEY) == signed(5)
