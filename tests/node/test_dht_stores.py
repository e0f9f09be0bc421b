"""The DHT's LevelDB stores: provider records, value records with their validators, the provide queue."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.node.errors import InvalidRecord
from ipfsreg.node.routing.provide import ProvideQueue
from ipfsreg.node.routing.providers import ProviderStore
from ipfsreg.node.routing.records import (
    PublicKeyValidator,
    RecordStore,
    Validators,
    format_rfc3339,
    namespace_of,
    parse_rfc3339,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Datastore]:
    with Datastore.open(tmp_path / "data") as opened:
        yield opened


def _mh(i: int) -> bytes:
    return CID.hash(i.to_bytes(4, "big")).multihash


# --- provider records ---------------------------------------------------------------------


def test_provider_records_are_returned_until_they_expire(store: Datastore) -> None:
    clock = Clock()
    providers = ProviderStore(store, ttl=100.0, clock=clock)
    assert providers.add(_mh(1), b"peer-a", [b"addr1"])
    assert providers.add(_mh(1), b"peer-b")
    assert providers.add(_mh(2), b"peer-a")
    assert {r.peer for r in providers.get(_mh(1))} == {b"peer-a", b"peer-b"}
    assert providers.get(_mh(1))[0].addrs in ((b"addr1",), ())
    clock.now += 101
    assert providers.get(_mh(1)) == []
    assert providers.expire() == 3
    assert len(providers) == 0


def test_readding_a_provider_refreshes_its_record(store: Datastore) -> None:
    clock = Clock()
    providers = ProviderStore(store, ttl=100.0, clock=clock)
    providers.add(_mh(1), b"peer-a")
    clock.now += 60
    providers.add(_mh(1), b"peer-a", [b"new"])
    clock.now += 60
    assert [(r.peer, r.addrs) for r in providers.get(_mh(1))] == [(b"peer-a", (b"new",))]
    assert len(providers) == 1


def test_provider_store_is_bounded_in_total_and_per_key(store: Datastore) -> None:
    providers = ProviderStore(store, max_records=10, max_per_key=3)
    assert all(providers.add(_mh(1), f"p{i}".encode()) for i in range(3))
    assert not providers.add(_mh(1), b"p3")  # the key is full
    assert providers.add(_mh(1), b"p0")  # an existing record is still refreshed
    for i in range(2, 20):
        providers.add(_mh(i), b"p")
    assert len(providers) == 10
    assert providers.refused == 1 + 11


def test_one_provider_cannot_take_more_than_its_share_of_the_store(tmp_path: Path) -> None:
    with Datastore.open(tmp_path / "data") as store:
        providers = ProviderStore(store, max_records=1000)
        assert providers.max_per_peer == 50
        stored = sum(providers.add(_mh(i), b"flooder") for i in range(200))
        assert stored == 50 and providers.records_of(b"flooder") == 50
        assert providers.add(_mh(1), b"honest")  # the others still get in
        assert all(providers.add(_mh(i), b"me", own=True) for i in range(100))  # our own: no bound
    with Datastore.open(tmp_path / "data") as store:
        assert ProviderStore(store, max_records=1000).records_of(b"flooder") == 50  # counted on open


def test_provider_records_survive_reopening_the_store(tmp_path: Path) -> None:
    with Datastore.open(tmp_path / "data") as store:
        ProviderStore(store).add(_mh(1), b"peer-a", [b"addr"])
    with Datastore.open(tmp_path / "data") as store:
        reopened = ProviderStore(store)
        assert len(reopened) == 1
        assert reopened.get(_mh(1))[0].peer == b"peer-a"


def test_keys_that_are_prefixes_of_each_other_stay_apart(store: Datastore) -> None:
    providers = ProviderStore(store)
    providers.add(b"ab", b"x")
    providers.add(b"abc", b"y")
    assert [r.peer for r in providers.get(b"ab")] == [b"x"]


# --- value records ------------------------------------------------------------------------


def _pk_record() -> tuple[bytes, bytes]:
    pair = create_new_key_pair()
    peer = ID.from_pubkey(pair.public_key)
    return b"/pk/" + peer.to_bytes(), pair.public_key.serialize()


class _Sequence:
    """A test validator: values are ASCII integers, the highest wins."""

    def validate(self, key: bytes, value: bytes) -> None:
        int(value)

    def select(self, key: bytes, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: int(values[i]))


def test_pk_validator_accepts_the_key_of_its_peer_id_only() -> None:
    key, value = _pk_record()
    validator = PublicKeyValidator()
    validator.validate(key, value)
    _, other_value = _pk_record()
    with pytest.raises(InvalidRecord, match="does not match"):
        validator.validate(key, other_value)
    with pytest.raises(InvalidRecord, match="not a public key"):
        validator.validate(key, b"garbage")
    assert deserialize_public_key(value) is not None
    assert validator.select(key, [value, value]) == 0


def test_records_of_a_namespace_without_validator_are_refused() -> None:
    validators = Validators()
    with pytest.raises(InvalidRecord, match="no validator for records of namespace 'ipns'"):
        validators.validate(b"/ipns/name", b"x")
    with pytest.raises(InvalidRecord, match="/<namespace>/"):
        namespace_of(b"plain-key")
    assert Validators({"ipns": _Sequence()}).namespaces == ["ipns", "pk"]


def test_a_validator_that_raises_anything_makes_the_record_invalid() -> None:
    validators = Validators({"seq": _Sequence()})
    with pytest.raises(InvalidRecord, match="invalid seq record"):
        validators.validate(b"/seq/a", b"not a number")


def test_record_store_keeps_the_best_record(store: Datastore) -> None:
    records = RecordStore(store, Validators({"seq": _Sequence()}))
    assert records.put(b"/seq/a", b"5")
    with pytest.raises(InvalidRecord, match="better seq record"):
        records.put(b"/seq/a", b"3")  # worse: kept out
    assert not records.put(b"/seq/a", b"5")  # the same again: nothing to do
    assert records.put(b"/seq/a", b"9")
    stored = records.get(b"/seq/a")
    assert stored is not None and stored.value == b"9"
    with pytest.raises(InvalidRecord):
        records.put(b"/seq/a", b"nine")


def test_record_store_serves_records_for_max_age_only_and_is_bounded(store: Datastore) -> None:
    clock = Clock()
    records = RecordStore(store, Validators({"seq": _Sequence()}), max_records=2, max_age=50.0, clock=clock)
    records.put(b"/seq/a", b"1")
    records.put(b"/seq/b", b"1")
    with pytest.raises(InvalidRecord, match="full"):
        records.put(b"/seq/c", b"1")
    clock.now += 51
    assert records.get(b"/seq/a") is None
    assert len(records) == 1


def test_rfc3339_times_round_trip_with_nanoseconds_as_go_writes_them() -> None:
    text = format_rfc3339(1_700_000_000.25)
    assert text == "2023-11-14T22:13:20.250000000Z"
    assert parse_rfc3339(text) == 1_700_000_000.25
    assert parse_rfc3339("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_rfc3339("2023-11-14T23:13:20.5+01:00") == 1_700_000_000.5
    assert parse_rfc3339("yesterday") is None


# --- the provide queue --------------------------------------------------------------------


class _Announcer:
    def __init__(self) -> None:
        self.reachable = True
        self.announced: list[CID] = []

    async def __call__(self, cid: CID) -> int:
        if not self.reachable:
            return 0
        self.announced.append(cid)
        return 3


async def _settle(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - the queue's worker changes it
            await trio.sleep(0.01)


async def test_queued_cids_are_announced_at_once_and_then_count_as_provided(store: Datastore) -> None:
    announcer = _Announcer()
    queue = ProvideQueue(store, announcer)
    cids = [CID.hash(b"a"), CID.hash(b"b")]
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        assert queue.enqueue(cids) == 2
        await _settle(lambda: queue.stat().provided == 2)
        assert set(announcer.announced) == set(cids)
        assert queue.stat().queued == 0
        nursery.cancel_scope.cancel()


async def test_cidv0_and_cidv1_of_the_same_bytes_are_one_key(store: Datastore) -> None:
    v0 = CID.hash(b"x", codec=0x70, version=0)
    queue = ProvideQueue(store, _Announcer())
    assert queue.enqueue([v0, v0.to_v1()]) == 1


async def test_the_queue_survives_a_restart_and_waits_for_peers(tmp_path: Path) -> None:
    announcer = _Announcer()
    announcer.reachable = False
    with Datastore.open(tmp_path / "data") as store:
        queue = ProvideQueue(store, announcer)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            queue.enqueue([CID.hash(b"root")])
            await trio.sleep(0.1)
            assert queue.stat().queued == 1  # nobody took it: still queued
            nursery.cancel_scope.cancel()
    announcer.reachable = True
    with Datastore.open(tmp_path / "data") as store:
        queue = ProvideQueue(store, announcer)
        assert queue.stat().queued == 1
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            await _settle(lambda: queue.stat().provided == 1)
            nursery.cancel_scope.cancel()
    assert announcer.announced == [CID.hash(b"root")]


async def test_reprovide_announces_keys_due_and_drops_those_whose_block_is_gone(store: Datastore) -> None:
    clock = Clock()
    announcer = _Announcer()
    queue = ProvideQueue(store, announcer, reprovide_interval=100.0, clock=clock)
    held = CID.hash(b"held")
    store.blocks.put(held, b"held")
    collected = CID.hash(b"collected")
    store.blocks.put(collected, b"collected")
    blockless = CID.hash(b"a digest, not a block")
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        queue.enqueue([held, collected, blockless])
        await _settle(lambda: queue.stat().provided == 3)
        nursery.cancel_scope.cancel()
    store.blocks.delete(collected)
    announcer.announced.clear()
    assert await queue.reprovide() == 0  # nothing due yet
    clock.now += 101
    assert await queue.reprovide() == 2
    assert set(announcer.announced) == {held, blockless}
    assert queue.stat().provided == 2
    assert queue.stat().last_reprovide == clock.now
    queue.unprovide([blockless])
    assert not queue.is_provided(blockless)


async def test_all_strategy_also_reprovides_every_block(store: Datastore) -> None:
    announcer = _Announcer()
    queue = ProvideQueue(store, announcer, strategy="all")
    blocks = {CID.hash(bytes([i])): bytes([i]) for i in range(5)}
    store.blocks.put_many(blocks.items())
    assert await queue.reprovide() == 5
    assert set(announcer.announced) == set(blocks)


async def test_none_strategy_announces_nothing(store: Datastore) -> None:
    queue = ProvideQueue(store, _Announcer(), strategy="none")
    assert queue.enqueue([CID.hash(b"a")]) == 0
    assert await queue.reprovide() == 0
