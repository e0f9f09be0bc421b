"""IpnsService's publishing over a fake DHT, on trio's autojump clock: what is put when, and provided.

The record of a bound key is put again when no peer stored it (after 30 s, then 60 s, ...), every
current record is put again at start, one older than the republish interval is signed again at
start, and every put announces the tag directory's root. The puts of one name run one at a time and
never put a record older than one already signed (a router may keep whatever was put last).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.ipns.keystore import Keystore
from ipfsreg.ipns.record import NANOSECONDS, decode_record, value_cid
from ipfsreg.ipns.service import REROUTE_FIRST, IpnsService, Published
from ipfsreg.ipns.settings import IpnsSettings
from ipfsreg.node.errors import RecordNotFound, RoutingError
from ipfsreg.registry.storage import RegistryStore

HOUR = 3600 * NANOSECONDS


class FakeDht:
    """put_value answers with the next of ``stored`` (then 1); get_value finds nothing."""

    def __init__(self, stored: list[int | Exception] | None = None) -> None:
        self.stored = list(stored or [])
        self.puts: list[tuple[float, bytes]] = []  # (trio clock, record)

    async def put_value(self, key: bytes, value: bytes) -> int:
        await trio.lowlevel.checkpoint()
        self.puts.append((trio.current_time(), value))
        answer = self.stored.pop(0) if self.stored else 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def get_value(self, key: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        raise RecordNotFound(key, "the fake DHT has none")


@pytest.fixture
def datastore(tmp_path: Path) -> Iterator[Datastore]:
    with Datastore.open(tmp_path / "data") as store:
        yield store


def service(
    datastore: Datastore, tmp_path: Path, dht: FakeDht, provided: list[CID], *, clock_ns: int | None = None
) -> IpnsService:
    svc = IpnsService(
        datastore,
        RegistryStore(datastore),
        Keystore(tmp_path / "data"),
        IpnsSettings(),
        routing=dht,
        on_committed=provided.extend,
        clock_ns=(lambda: clock_ns) if clock_ns is not None else time.time_ns,
    )
    svc.store.bind("app", "self")
    return svc


async def test_a_record_no_peer_stored_is_put_again_after_30_then_60_seconds_until_one_does(
    datastore: Datastore, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    dht, provided = FakeDht([0, RoutingError("lookup failed"), 0, 2]), []
    svc = service(datastore, tmp_path, dht, provided)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(svc.run)
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    times = [round(when - start) for when, _ in dht.puts]
    pauses = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(dht.puts) == 4  # then it was stored: no more puts until the republish interval
    for pause, expected in zip(pauses, (REROUTE_FIRST, 2 * REROUTE_FIRST, 4 * REROUTE_FIRST), strict=True):
        assert expected <= pause <= expected + 5  # looked for every 5 s
    assert len({record for _, record in dht.puts}) == 1  # the same record, not signed again
    root = value_cid(decode_record(dht.puts[0][1]))[0]
    assert provided and set(provided) == {root}  # each put announced the tag directory


async def test_at_start_a_current_record_is_put_again_and_one_older_than_the_interval_signed_again(
    datastore: Datastore, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    five_hours_ago = time.time_ns() - 5 * HOUR
    first = await service(datastore, tmp_path, FakeDht(), [], clock_ns=five_hours_ago).publish("self")
    assert first.record.sequence == 0 and first.routed and first.stored == 1

    async def restart() -> list[bytes]:
        dht = FakeDht()
        async with trio.open_nursery() as nursery:
            await nursery.start(service(datastore, tmp_path, dht, []).run)
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        return [record for _, record in dht.puts]

    [resigned] = await restart()  # signed 5 h ago, republished every 4 h: due
    assert decode_record(resigned).sequence == 1
    assert decode_record(resigned).eol_ns > first.record.eol_ns + 4 * HOUR
    assert await restart() == [resigned]  # recent: the same record put again, not signed again


class LastPutWins(FakeDht):
    """A router that keeps whatever put ended last; a put of a sequence in ``slow`` takes 10 s."""

    def __init__(self, slow: set[int]) -> None:
        super().__init__()
        self.slow = slow
        self.held: bytes | None = None
        self.in_flight = 0
        self.overlapped = False

    async def put_value(self, key: bytes, value: bytes) -> int:
        self.in_flight += 1
        self.overlapped |= self.in_flight > 1
        try:
            await trio.sleep(10 if decode_record(value).sequence in self.slow else 0)
            self.held = value
            return await super().put_value(key, value)
        finally:
            self.in_flight -= 1


async def test_puts_of_one_name_never_overlap_and_a_record_signed_over_before_its_put_is_not_put(
    datastore: Datastore, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    router = LastPutWins(slow={0})
    svc = service(datastore, tmp_path, router, [])
    results: dict[int, Published] = {}

    async def publish(turn: int, after: float) -> None:
        await trio.sleep(after)
        results[turn] = await svc.publish("self", republish=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish, 0, 0)  # its put is slow: seq 1 and 2 are signed while it runs
        nursery.start_soon(publish, 1, 1)
        nursery.start_soon(publish, 2, 2)
    assert [results[turn].record.sequence for turn in (0, 1, 2)] == [0, 1, 2]
    assert not router.overlapped
    assert [decode_record(value).sequence for _, value in router.puts] == [0, 2]  # seq 1 was not put
    assert router.held is not None and decode_record(router.held).sequence == 2
    assert results[0].routed and results[2].routed
    assert not results[1].routed and "sequence 2 was signed meanwhile" in results[1].route_error
