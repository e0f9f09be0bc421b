"""The fleet coordinator without a network: what it answers peers about stored, private and
in-flight blobs, and which supplies it picks from scripted peers (have, fetching, claims)."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest
import trio

from ipfsreg.cid import CID
from ipfsreg.mirror.claims import distance, share_of
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.node.blobs.protocol import Answer, Claimed, Failed, Fetching, Have, Leaf, Missing, Request
from ipfsreg.node.errors import BlockFetchTimeout, NodeError
from ipfsreg.registry.fleet import Fleet, PeerFailed, PeerSupply, leaf_of
from ipfsreg.unixfs.importer import FileImporter, ImportOptions

DIGEST = "sha256:" + "3c" * 32
ROOT = CID.hash(b"root")


class ScriptedPeers:
    """Peers whose blob-protocol answers are given per peer; no bitswap."""

    def __init__(self, me: str, answers: dict[str, list[Answer]]) -> None:
        self._me = me
        self.answers = answers
        self.asked: list[tuple[str, Request]] = []
        self.provided: list[str] = []
        self.penalised: list[str] = []

    @property
    def peer_id(self) -> str:
        return self._me

    def connected(self) -> list[str]:
        return list(self.answers)

    async def find_providers(self, digest: str) -> AsyncIterator[str]:
        for _ in ():
            yield ""

    @asynccontextmanager
    async def query(self, peer: str, request: Request) -> AsyncIterator[AsyncIterator[Answer]]:
        self.asked.append((peer, request))
        script = self.answers[peer]
        if not script:
            raise NodeError(f"{peer} is gone")

        async def answers() -> AsyncIterator[Answer]:
            for answer in script:
                yield answer

        yield answers()

    def provide(self, digest: str) -> None:
        self.provided.append(digest)

    def has_routing(self) -> bool:
        return self.routing

    def received_bytes(self) -> int:
        return 0

    routing = False

    def block_source(self, route: Any = None) -> Any:
        raise AssertionError("not used here")

    async def penalise(self, peer: str, reason: str) -> None:
        self.penalised.append(peer)


def fleet(peers: ScriptedPeers, *, stored: bool = False, private: bool = False, share: bool = False) -> Fleet:
    return Fleet(
        peers,
        local_blob=lambda digest: (ROOT, 10) if stored else None,
        is_private=lambda digest: private,
        stats=MirrorStats(),
        share_private=share,
        peer_timeout=1.0,
        claim_settle=0.05,
    )


async def collect(agen: AsyncGenerator[Answer, None], count: int) -> list[Answer]:
    out: list[Answer] = []
    async for answer in agen:
        out.append(answer)
        if len(out) == count:
            break
    await agen.aclose()
    return out


async def test_a_stored_blob_is_have_and_an_unknown_one_missing() -> None:
    assert await collect(fleet(ScriptedPeers("me", {}), stored=True).answer("p", Request(DIGEST)), 2) == [
        Have(ROOT, 10)
    ]
    assert await collect(fleet(ScriptedPeers("me", {})).answer("p", Request(DIGEST)), 2) == [Missing()]


@pytest.mark.parametrize(("share", "expected"), [(False, [Missing()]), (True, [Have(ROOT, 10)])])
async def test_a_private_blob_is_offered_only_inside_a_private_swarm(
    share: bool, expected: list[Answer]
) -> None:
    coordinator = fleet(ScriptedPeers("me", {}), stored=True, private=True, share=share)
    assert await collect(coordinator.answer("p", Request(DIGEST)), 2) == expected


async def test_a_private_fetch_is_neither_provided_nor_offered() -> None:
    peers = ScriptedPeers("me", {})
    coordinator = fleet(peers)
    coordinator.begin(DIGEST, private=True)
    assert peers.provided == []
    assert await collect(coordinator.answer("p", Request(DIGEST, claim=True)), 2) == [Missing()]


def leaf_blocks(data: bytes) -> list[Any]:
    importer = FileImporter(ImportOptions(chunk_size=4))
    return importer.write(data)


async def test_an_in_flight_fetch_is_claimed_then_streams_its_leaves_then_has_the_root() -> None:
    peers = ScriptedPeers("me", {})
    coordinator = fleet(peers)
    flight = coordinator.begin(DIGEST, private=False)
    assert peers.provided == [DIGEST]
    answers = coordinator.answer("asker", Request(DIGEST, claim=True))
    received: list[Answer] = []

    async def read() -> None:
        async for answer in answers:
            received.append(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert received == [Claimed(("asker", "me"))]
        assert flight.claimants == {"asker"}
        flight.start(12)
        await trio.testing.wait_all_tasks_blocked()
        blocks = leaf_blocks(b"abcdefgh")
        flight.add_blocks(blocks)
        await trio.testing.wait_all_tasks_blocked()
        flight.add_blocks(leaf_blocks(b"ijkl"))
        await trio.testing.wait_all_tasks_blocked()
        flight.finish(ROOT, 12)
    leaves = [leaf_of(b.cid, b.data) for b in blocks]
    assert received[1:] == [
        Fetching(12, 0, ()),
        Fetching(12, 0, tuple(leaves)),  # type: ignore[arg-type]
        Fetching(12, 2, (leaf_of(leaf_blocks(b"ijkl")[0].cid, leaf_blocks(b"ijkl")[0].data),)),  # type: ignore[arg-type]
        Have(ROOT, 12),
    ]


async def test_a_failed_fetch_says_why() -> None:
    coordinator = fleet(ScriptedPeers("me", {}))
    flight = coordinator.begin(DIGEST, private=False)
    flight.start(None)
    flight.fail("the upstream sent bytes of another digest")
    assert await collect(coordinator.answer("p", Request(DIGEST)), 5) == [
        Failed("the upstream sent bytes of another digest")
    ]


def test_interior_nodes_are_not_leaves() -> None:
    importer = FileImporter(ImportOptions(chunk_size=2, max_links=2))
    blocks = importer.write(b"abcdef")
    rest, _ = importer.finish()
    kinds = [leaf_of(b.cid, b.data) is not None for b in [*blocks, *rest]]
    assert kinds.count(True) == 3 and kinds.count(False) >= 2


async def supplies(coordinator: Fleet) -> list[Any]:
    flight = coordinator.begin(DIGEST, private=False)
    return [supply async for supply in coordinator.supplies(flight)]


async def test_peers_that_have_the_blob_come_first_then_those_fetching_it() -> None:
    peers = ScriptedPeers(
        "me",
        {
            "fetcher": [Fetching(10, 0, (Leaf(ROOT, 2),))],
            "holder": [Have(ROOT, 10)],
            "nobody": [Missing()],
            "gone": [],
        },
    )
    found = await supplies(fleet(peers))
    assert [(s.peer, s.root) for s in found] == [("holder", ROOT), ("fetcher", None)]
    assert all(request.claim for _, request in peers.asked)


def nearest_and_farthest(peers: list[str]) -> tuple[str, str]:
    ordered = sorted(peers, key=lambda p: distance(p, DIGEST))
    return ordered[0], ordered[-1]


async def test_simultaneous_claimants_follow_the_one_nearest_the_digest() -> None:
    near, far = nearest_and_farthest([f"peer{i}" for i in range(10)])
    # Seen from the far node: the near one claimed too, so the far one follows it.
    follower = await supplies(fleet(ScriptedPeers(far, {near: [Claimed((near,))]})))
    assert [(s.peer, s.coordinated) for s in follower] == [(near, True)]
    # Seen from the near node: it fetches from the upstream itself (no supply).
    assert await supplies(fleet(ScriptedPeers(near, {far: [Claimed((far,))]}))) == []


async def test_when_the_fetcher_fails_its_followers_follow_the_next_nearest_then_fetch_themselves() -> None:
    near, second, third = sorted(["peer1", "peer2", "peer3"], key=lambda p: distance(p, DIGEST))
    claims = {near: [Claimed((near, second, third))]}
    # Seen from the farthest: the nearest, then (it failed) the next nearest, then the upstream.
    found = await supplies(fleet(ScriptedPeers(third, claims)))
    assert [(s.peer, s.coordinated) for s in found] == [(near, True), (second, True)]
    await trio.sleep(0.06)  # past claim_settle: the readers are known
    assert found[1].co_readers() == {third}  # the failed fetcher reads no share any more
    # Seen from the next nearest: once the nearest failed, it fetches the rest itself.
    assert [s.peer for s in await supplies(fleet(ScriptedPeers(second, claims)))] == [near]


async def test_with_content_routing_a_quiet_first_survey_is_asked_again_after_the_settle_time() -> None:
    near, far = nearest_and_farthest([f"peer{i}" for i in range(10)])

    class Late(ScriptedPeers):
        """No connected peers; the DHT finds the other claimant only on the second look."""

        routing = True
        rounds = 0

        def connected(self) -> list[str]:
            return []

        async def find_providers(self, digest: str) -> AsyncIterator[str]:
            self.rounds += 1
            if self.rounds == 2:
                yield near

    peers = Late(far, {near: [Claimed((near,))]})
    found = await supplies(fleet(peers))
    assert peers.rounds == 2
    assert [(s.peer, s.coordinated) for s in found] == [(near, True)]


async def test_a_node_alone_goes_to_the_upstream_at_once() -> None:
    with trio.fail_after(0.5):
        assert await supplies(fleet(ScriptedPeers("me", {}))) == []


async def test_a_peer_breaking_the_protocol_in_the_survey_is_penalised() -> None:
    class Lying(ScriptedPeers):
        @asynccontextmanager
        async def query(self, peer: str, request: Request) -> AsyncIterator[AsyncIterator[Answer]]:
            from ipfsreg.node.blobs.protocol import BlobProtocolError

            raise BlobProtocolError("garbage")
            yield  # pragma: no cover

    peers = Lying("me", {"liar": [Missing()]})
    assert await supplies(fleet(peers)) == []
    assert peers.penalised == ["liar"]


async def test_a_node_that_found_nobody_says_fetching_before_it_reaches_the_upstream() -> None:
    # A node asking a moment later follows this one instead of claiming the blob too.
    coordinator = fleet(ScriptedPeers("me", {"quiet": [Missing()]}))
    flight = coordinator.begin(DIGEST, private=False)
    assert [s async for s in coordinator.supplies(flight)] == []
    assert flight.state == "fetching"
    assert await collect(coordinator.answer("late", Request(DIGEST, claim=True)), 1) == [
        Fetching(None, 0, ())
    ]


class Progressing(ScriptedPeers):
    """Bitswap keeps receiving blocks (from anyone) while a supply waits."""

    def received_bytes(self) -> int:
        return int(trio.current_time() * 1000)


async def test_a_busy_peer_that_answers_late_is_waited_for_while_bitswap_makes_progress(
    autojump_clock: trio.abc.Clock,
) -> None:
    supply = PeerSupply(fleet(Progressing("me", {})), "busy", DIGEST, None)
    supply.fleet.stall_timeout = 1.0

    arrives = trio.current_time() + 2.5  # a saturated link: three rounds, with blocks arriving meanwhile

    async def late() -> str:  # each round waits again for the same arrival (a channel, a fetch)
        await trio.sleep_until(arrives)
        return "answer"

    assert await supply._patiently(late, "nothing came") == "answer"
    with pytest.raises(PeerFailed, match="nothing came"):
        await supply._patiently(trio.sleep_forever, "nothing came")  # patience has a cap


async def test_a_peer_that_answers_nothing_while_nothing_arrives_at_all_has_stalled(
    autojump_clock: trio.abc.Clock,
) -> None:
    supply = PeerSupply(fleet(ScriptedPeers("me", {})), "gone", DIGEST, None)
    supply.fleet.stall_timeout = 1.0
    start = trio.current_time()
    with pytest.raises(PeerFailed, match="no block"):
        await supply._patiently(trio.sleep_forever, "no block")
    assert trio.current_time() - start == pytest.approx(1.0)


class FlakySource:
    """Blocks of one DAG; the first get of ``flaky`` fails as bitswap does when no peer answers in time."""

    def __init__(self, blocks: dict[CID, bytes], flaky: CID) -> None:
        self.blocks = blocks
        self.flaky: CID | None = flaky

    async def get(self, cid: CID) -> bytes:
        await trio.sleep(0.01)
        if cid == self.flaky:
            self.flaky = None
            raise BlockFetchTimeout(cid, 0.5, "none of the connected peers has it")
        return self.blocks[cid]

    def prefetch(self, cids: object) -> None:
        return None


async def test_a_dag_read_cut_by_a_late_block_resumes_at_exactly_the_byte_delivered() -> None:
    data = random.Random(5).randbytes(10 * 1024 + 4)  # ten distinct leaves of 1024 bytes and one of 4
    importer = FileImporter(ImportOptions(chunk_size=1024, cid_version=1))
    blocks = importer.write(data)
    rest, result = importer.finish()
    store = {b.cid: b.data for b in [*blocks, *rest]}
    leaves = [b.cid for b in blocks if b.cid.codec == 0x55]

    class Peers(Progressing):
        def block_source(self, route: Any = None) -> Any:
            source = FlakySource(store, leaves[3])

            @asynccontextmanager
            async def opened() -> AsyncIterator[FlakySource]:
                yield source

            return opened()

    supply = PeerSupply(fleet(Peers("me", {})), "slow", DIGEST, len(data), result.cid)
    delivered: list[bytes] = []
    gate = trio.Event()

    async def emit(chunk: bytes) -> None:
        if len(delivered) == 2 and not gate.is_set():
            gate.set()
            await trio.sleep_forever()  # a slow client: cancelled here when the read fails behind it
        delivered.append(chunk)

    with trio.fail_after(10):
        assert await supply.pump(emit, 0, lambda size: None) == len(data)
    assert b"".join(delivered) == data


async def test_simultaneous_readers_of_a_holder_share_its_leaves_once_every_claim_has_arrived() -> None:
    # A rolling wave: "holder" has the blob, "other" claimed it at the same moment as this node.
    peers = ScriptedPeers("me", {"holder": [Have(ROOT, 10)], "other": [Claimed(("other",))]})
    coordinator = fleet(peers)
    flight = coordinator.begin(DIGEST, private=False)
    async with aclosing(coordinator.supplies(flight)) as found:
        supply = await found.__anext__()
    assert supply.peer == "holder"
    leaves = [CID.hash(bytes([i]), codec=0x55, version=1) for i in range(64)]
    if trio.current_time() < flight.started + coordinator.claim_settle:
        assert supply.route(leaves[0]) is None  # claims may still be on their way: no spreading yet
    await trio.sleep_until(flight.started + coordinator.claim_settle)
    routes = [supply.route(leaf) for leaf in leaves]
    # This node's share is asked of the holder, the other reader's share of that reader.
    assert set(routes) == {"holder", "other"}
    for leaf, route in zip(leaves, routes, strict=True):
        assert route == ("holder" if share_of(DIGEST, leaf, {"me", "other"}) == "me" else "other")


async def test_followers_of_a_fetcher_share_its_leaves_and_never_route_to_the_fetchers_share() -> None:
    near, *rest = sorted([f"peer{i}" for i in range(6)], key=lambda p: distance(p, DIGEST))
    me = rest[-1]
    supply = (await supplies(fleet(ScriptedPeers(me, {near: [Claimed(tuple([near, *rest]))]}))))[0]
    assert (supply.peer, supply.coordinated) == (near, True)
    leaves = [CID.hash(bytes([i]), codec=0x55, version=1) for i in range(200)]
    routes = [supply.route(leaf) for leaf in leaves]
    assert set(routes) == {near, *rest} - {me}
    for leaf, route in zip(leaves, routes, strict=True):
        owner = share_of(DIGEST, leaf, rest)
        assert route == (near if owner == me else owner)


async def test_a_reader_alone_with_its_source_routes_nothing() -> None:
    found = await supplies(fleet(ScriptedPeers("me", {"holder": [Have(ROOT, 10)]})))
    await trio.sleep(0.06)  # past claim_settle
    assert found[0].route(ROOT) is None


async def test_a_claim_heard_a_moment_before_this_node_missed_the_blob_counts_as_a_claimant() -> None:
    # Nodes of a wave start a moment apart: the first to ask found nobody fetching yet.
    coordinator = fleet(ScriptedPeers("me", {}))
    assert await collect(coordinator.answer("early", Request(DIGEST, claim=True)), 2) == [Missing()]
    assert await collect(coordinator.answer("curious", Request(DIGEST, claim=False)), 2) == [Missing()]
    flight = coordinator.begin(DIGEST, private=False)
    assert flight.claimants == {"early"}


async def test_an_early_claim_older_than_the_peer_timeout_is_forgotten() -> None:
    coordinator = fleet(ScriptedPeers("me", {}))
    await collect(coordinator.answer("early", Request(DIGEST, claim=True)), 2)
    await trio.sleep(coordinator.peer_timeout + 0.05)
    assert coordinator.begin(DIGEST, private=False).claimants == set()
