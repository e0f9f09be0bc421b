"""Peers first: where a mirror gets a missing blob's bytes before it asks the upstream.

The fleet names a blob by its digest CID (``ipfsreg.node.blobs.protocol.digest_cid``). A node that
misses blob D:

1. *claims* D: it registers an :class:`InFlight` record (peers asking about D now hear ``claimed``)
   and provides D's digest CID, so it is findable from the first moment;
2. *surveys* its connected peers and D's providers (the DHT), asking each over
   ``/ipfsreg/blob/1.0.0`` with ``claim=true`` (which tells them of our claim), within
   ``peer_timeout``;
3. takes the bytes from a peer that **has** D (its UnixFS root: a multi-peer bitswap session reads
   the DAG), else from a peer that is **fetching** D (its leaves, announced as they are stored,
   each fetched over bitswap, then the rest of its DAG once it has the root), else, when other
   nodes **claimed** D too, waits ``claim_settle`` for late claims and applies the fleet's rule
   (``ipfsreg.mirror.claims``: the claimant nearest D in XOR distance fetches from the upstream):
   if this node is not that one it follows the fetcher (or a peer that follows it) as in-flight,
   waiting at most ``peer_timeout`` for it to start; otherwise
4. goes to the upstream.

Nodes reading one blob from the same source at once (the followers of a fetcher; a rolling wave
reading from the node that has it) spread its leaves: each leaf is asked first of the reader whose
share it is (``ipfsreg.mirror.claims.share_of`` over this node and the other claimants), which
takes it from the source; the source's uplink carries each leaf about once instead of once per
reader. The readers are the claimants this node knows of ``claim_settle`` after it claimed (when
every simultaneous claim has reached it); a share's reader that lets a leaf wait is asked like any
other peer from then on.

A peer that stalls for ``peer_stall_timeout`` (no block arrives at all meanwhile: one whose link is
busy serving the fleet is waited for while blocks keep coming, up to ``STALL_PATIENCE`` rounds),
breaks the protocol or sends a DAG that does not add up is dropped and the next source continues
from the byte where the last one stopped (an upstream continues with a ``Range`` request). Every
block is verified against its CID by bitswap; the whole blob is checked against its digest by the
store as it streams through the importer, and becomes visible only then (see proxy.py). Bytes that
passed through several sources still meet one digest check: when it fails, the peers that served
them are penalised.

Cost for a node alone (no connected peers, no DHT providers): nothing but the survey's empty round.
With peers: one round trip to each (at most ``peer_timeout``), plus ``claim_settle`` when another
node claims the same blob at the same time. With content routing, a survey that found nobody is
repeated once after ``claim_settle``: a claim reaches the DHT later than it reaches connected peers.

Private content (pull secrets upstream) is never offered to peers unless the node is in a private
swarm: the answer for a private blob is ``missing`` (see :class:`Fleet`).
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

import trio

from ipfsreg.blockstore import BlockstoreError
from ipfsreg.cid import CID, DAG_PB, RAW
from ipfsreg.excgroups import leaves
from ipfsreg.mirror.claims import fetcher_for, share_of
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.node.blobs.protocol import (
    MAX_CLAIMANTS,
    MAX_LEAVES_PER_FRAME,
    Answer,
    BlobProtocolError,
    Claimed,
    Failed,
    Fetching,
    Have,
    Leaf,
    Missing,
    Request,
)
from ipfsreg.node.errors import BlockFetchTimeout, NodeError
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource, decode_unixfs_node, read_file
from ipfsreg.unixfs.importer import Block

log = logging.getLogger(__name__)

LEAF_WINDOW = 32  # leaves of an in-flight blob fetched ahead of the one being read
# Rounds of ``peer_stall_timeout`` a wait may last while the node's bitswap still receives blocks.
STALL_PATIENCE = 4
# Reads of a peer's DAG restarted (from the byte reached) after bitswap reported a block missing
# while blocks kept arriving: its answers are late, not absent (a link busy serving the fleet).
MISS_RETRIES = 12
# Digests whose claims this node heard before it missed them itself, remembered for peer_timeout:
# nodes of a wave start a moment apart, and the first to ask must still count as a claimant.
EARLY_CLAIM_DIGESTS = 1024
# Fetchers a follower follows in turn when they fail it, before it goes to the upstream itself.
FETCHER_ELECTIONS = 4
T = TypeVar("T")


class FleetPeers(Protocol):
    """What the mirror needs of the p2p node (``ipfsreg.mirror.node`` adapts a Node)."""

    @property
    def peer_id(self) -> str: ...

    def connected(self) -> list[str]:
        """Peers connected now (fleet members or not: they answer ``missing`` when they know nothing)."""
        ...

    def find_providers(self, digest: str) -> AsyncIterator[str]:
        """Providers of the digest's CID found by content routing, connected; ends in bounded time."""
        ...

    def query(self, peer: str, request: Request) -> AbstractAsyncContextManager[AsyncIterator[Answer]]: ...

    def provide(self, digest: str) -> None:
        """Announce that this node has or is fetching the blob (no-op without content routing)."""
        ...

    def has_routing(self) -> bool:
        """Content routing can find peers this node is not connected to (a DHT with peers)."""
        ...

    def block_source(
        self, route: Callable[[CID], str | None] | None = None
    ) -> AbstractAsyncContextManager[BlockSource]:
        """A bitswap session over the connected peers; ``route(cid)`` names the peer asked first."""
        ...

    async def penalise(self, peer: str, reason: str) -> None:
        """Drop and ban a peer that lied."""
        ...

    def received_bytes(self) -> int:
        """Block bytes this node's bitswap has received so far (a monotonic progress counter)."""
        ...


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    errors = leaves(group)
    return next((e for e in errors if not isinstance(e, trio.Cancelled)), errors[0] if errors else group)


class PeerFailed(Exception):
    """A peer stopped serving a blob (stalled, gone, or lying: ``lied``); the next source continues."""

    def __init__(self, peer: str, reason: str, *, lied: bool = False) -> None:
        super().__init__(f"peer {peer}: {reason}")
        self.peer = peer
        self.lied = lied


# --- this node's fetches, as peers see them ----------------------------------------------------


@dataclass(eq=False)
class InFlight:
    """This node's fetch of one blob: claimed -> fetching (leaves as they are stored) -> have/failed."""

    digest: str
    started: float
    private: bool = False
    state: str = "claimed"
    claimants: set[str] = field(default_factory=set)
    size: int | None = None
    leaves: list[Leaf] = field(default_factory=list)
    root: CID | None = None
    reason: str = ""
    _changed: trio.Event = field(default_factory=trio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def note_claimant(self, peer: str) -> None:
        if peer not in self.claimants and len(self.claimants) < MAX_CLAIMANTS:
            self.claimants.add(peer)
            self._notify()

    def start(self, size: int | None) -> None:
        if self.state == "claimed":
            self.state = "fetching"
            self.size = size
            self._notify()

    def add_blocks(self, blocks: Sequence[Block]) -> None:
        """Blocks of this fetch's upload just committed: its leaves (in order) are now servable."""
        fresh = [leaf for leaf in (leaf_of(block.cid, block.data) for block in blocks) if leaf is not None]
        if fresh:
            self.leaves.extend(fresh)
            self._notify()

    def finish(self, root: CID, size: int) -> None:
        self.state, self.root, self.size = "have", root, size
        self._notify()

    def fail(self, reason: str) -> None:
        if self.state not in ("have", "failed"):
            self.state, self.reason = "failed", reason[:500]
            self._notify()


def leaf_of(cid: CID, data: bytes) -> Leaf | None:
    """The importer's leaves as :class:`Leaf` (interior nodes, which have links, are None)."""
    if cid.codec == RAW:
        return Leaf(cid, len(data)) if data else None
    if cid.codec != DAG_PB or not data or data[0] != 0x0A:  # dag-pb puts Links (field 2) before Data
        return None
    try:
        node, fs = decode_unixfs_node(cid, data)
    except UnixFSError:
        return None
    size = len(fs.data or b"")
    return Leaf(cid, size) if not node.links and size else None


def leaf_bytes(cid: CID, block: bytes) -> bytes:
    """A leaf block's file bytes; UnixFSError for anything but a leaf."""
    if cid.codec == RAW:
        return block
    node, fs = decode_unixfs_node(cid, block)
    if node.links:
        raise UnixFSError(f"{cid} is not a leaf")
    return fs.data or b""


# --- sources of bytes ------------------------------------------------------------------------


class Pump(Protocol):
    async def __call__(self, chunk: bytes) -> None: ...


@dataclass
class PeerSupply:
    """A peer that has (``root``) or is fetching (``root`` None) the blob."""

    fleet: Fleet
    peer: str
    digest: str
    size: int | None
    root: CID | None = None
    wait_for_start: float = 0.0  # a claimant that has not started: how long to wait for it
    coordinated: bool = False
    # The nodes (this one included) reading the blob from this peer at the same moment, once known:
    # they share its leaves out (see route). None or fewer than two: every leaf as bitswap finds it.
    co_readers: Callable[[], set[str] | None] | None = None
    # Reading starts then (trio time): readers of a holder wait until every simultaneous claim has
    # arrived, or their first wants (before the shares are known) queue the whole blob at the holder.
    start_at: float = 0.0

    def route(self, cid: CID) -> str | None:
        """The peer to ask leaf ``cid`` of first: the source for this node's share, else its reader."""
        readers = self.co_readers() if self.co_readers is not None else None
        if not readers or len(readers) < 2:
            return None
        owner = share_of(self.digest, cid, readers)
        return self.peer if owner == self.fleet.peers.peer_id else owner

    async def pump(self, emit: Pump, offset: int, announce: Callable[[int | None], None]) -> int:
        """Send the blob's bytes from ``offset`` to ``emit``; return the offset reached (the end).

        ``announce(size)`` is called once the peer is known to deliver (before its first byte).
        Raises PeerFailed when the peer stalls, goes away or lies.
        """
        try:
            await trio.sleep_until(self.start_at)
            route = self.route if self.co_readers is not None else None
            async with self.fleet.peers.block_source(route) as source:
                if self.root is not None:
                    announce(self.size)
                    return await self._read_dag(source, self.root, self.size, emit, offset)
                return await self._follow(source, emit, offset, announce)
        except BaseExceptionGroup as group:
            raise self._failure(_first_error(group)) from None
        except Exception as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: BaseException) -> BaseException:
        """What a failure while reading from the peer means: PeerFailed (lied or not), or itself."""
        if isinstance(exc, PeerFailed):
            return exc
        if isinstance(exc, BlobProtocolError):
            return PeerFailed(self.peer, f"broke the blob protocol: {exc}", lied=True)
        if isinstance(exc, UnixFSError):
            return PeerFailed(self.peer, f"sent a DAG that is not the blob's: {exc}", lied=True)
        if isinstance(exc, NodeError | BlockstoreError):
            return PeerFailed(self.peer, str(exc))
        return exc

    async def _patiently(self, wait: Callable[[], Awaitable[T]], what: str) -> T:
        """``wait()``, allowed ``stall_timeout`` at a time while this node's bitswap makes progress.

        A peer whose link is saturated (serving the whole fleet) answers late but answers: as long
        as blocks keep arriving from the fleet, the wait goes on, up to STALL_PATIENCE rounds. With
        no block at all for ``stall_timeout``, the peer has stalled.
        """
        stall = self.fleet.stall_timeout
        seen = self.fleet.peers.received_bytes()
        for _ in range(STALL_PATIENCE):
            with trio.move_on_after(stall):
                return await wait()
            now = self.fleet.peers.received_bytes()
            if now == seen:
                break
            seen = now
        raise PeerFailed(self.peer, f"{what} for {stall:g}s")

    async def _leaf(self, source: BlockSource, cid: CID) -> bytes:
        """A leaf of an in-flight blob, asked again while bitswap reports it missing but blocks arrive."""
        for attempt in range(MISS_RETRIES):
            seen = self.fleet.peers.received_bytes()
            try:
                return await self._patiently(functools.partial(source.get, cid), f"leaf {cid} did not arrive")
            except BlockFetchTimeout:
                if attempt == MISS_RETRIES - 1 or self.fleet.peers.received_bytes() == seen:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _read_dag(
        self, source: BlockSource, root: CID, size: int | None, emit: Pump, offset: int
    ) -> int:
        """Read the blob's DAG from ``offset`` to its end; return that end.

        A block bitswap reports missing while this node's bitswap still receives blocks (the peer's
        link is saturated, its answer late) is asked again, from the byte reached, up to
        MISS_RETRIES times; a miss while nothing arrives at all fails the peer.
        """
        reached = [offset]

        async def counted(chunk: bytes) -> None:
            await emit(chunk)
            reached[0] += len(chunk)  # once delivered (a cancelled emit delivered nothing)

        for attempt in range(MISS_RETRIES):
            seen = self.fleet.peers.received_bytes()
            try:
                return await self._read_dag_once(source, root, size, counted, reached[0])
            except BaseExceptionGroup as group:
                error = _first_error(group)
                if not isinstance(error, BlockFetchTimeout) or attempt == MISS_RETRIES - 1:
                    raise
                if self.fleet.peers.received_bytes() == seen:
                    raise error from None
            except BlockFetchTimeout:
                if attempt == MISS_RETRIES - 1 or self.fleet.peers.received_bytes() == seen:
                    raise
            log.info(
                "fleet: a block of %s from %s came late; asking again from byte %d",
                self.digest,
                self.peer,
                reached[0],
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _read_dag_once(
        self, source: BlockSource, root: CID, size: int | None, emit: Pump, offset: int
    ) -> int:
        """One read of the DAG from ``offset``: a reader task fills a channel (waiting is cancel-safe)."""
        send, receive = trio.open_memory_channel[bytes](4)

        async def reader() -> None:
            async with (
                send,
                aclosing(cast(AsyncGenerator[bytes, None], read_file(source, root, offset))) as chunks,
            ):
                async for chunk in chunks:
                    await send.send(chunk)

        position = offset
        async with trio.open_nursery() as nursery, receive:
            nursery.start_soon(reader)
            while True:
                try:
                    chunk = await self._patiently(receive.receive, "no block of the blob arrived")
                except trio.EndOfChannel:
                    break
                position += len(chunk)
                if size is not None and position > size:
                    raise PeerFailed(self.peer, f"its DAG holds more than {size} bytes", lied=True)
                await emit(chunk)
        if size is not None and position != size:
            raise PeerFailed(self.peer, f"its DAG holds {position} bytes, not {size}", lied=True)
        return position

    async def _follow(
        self, source: BlockSource, emit: Pump, offset: int, announce: Callable[[int | None], None]
    ) -> int:
        """Read an in-flight blob: its leaves as the peer announces them, then its DAG's rest."""
        fleet = self.fleet
        state = _Followed()
        async with (
            fleet.peers.query(self.peer, Request(self.digest, claim=True)) as answers,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(state.consume, answers)
            with trio.move_on_after(max(self.wait_for_start, fleet.stall_timeout)):
                await state.started.wait()
            if not state.started.is_set():
                raise PeerFailed(self.peer, f"did not start fetching {self.digest}")
            state.raise_failure(self.peer)
            announce(state.size)
            position = offset
            index = 0  # the next leaf to read; it starts at byte leaf_start of the blob
            leaf_start = 0
            prefetched = 0
            while True:
                state.raise_failure(self.peer)
                if state.size is not None and position >= state.size:
                    break  # every byte is here: no need to wait for the peer's root
                if index < len(state.leaves):
                    leaf = state.leaves[index]
                    if leaf_start + leaf.size <= position:  # all before what this node has: skip it
                        leaf_start += leaf.size
                        index += 1
                        continue
                    if prefetched < min(len(state.leaves), index + LEAF_WINDOW):
                        upto = min(len(state.leaves), index + LEAF_WINDOW)
                        source.prefetch([leaf.cid for leaf in state.leaves[max(prefetched, index) : upto]])
                        prefetched = upto
                    block = await self._leaf(source, leaf.cid)
                    data = leaf_bytes(leaf.cid, block)
                    if len(data) != leaf.size:
                        raise PeerFailed(
                            self.peer, f"leaf {leaf.cid} holds {len(data)} bytes, not {leaf.size}", lied=True
                        )
                    if position > leaf_start:
                        data = data[position - leaf_start :]
                    if state.size is not None and position + len(data) > state.size:
                        raise PeerFailed(
                            self.peer, f"its leaves hold more than {state.size} bytes", lied=True
                        )
                    if data:
                        position += len(data)
                        await emit(data)
                    leaf_start += leaf.size
                    index += 1
                    continue
                if state.root is not None:
                    position = await self._read_dag(source, state.root, state.size, emit, position)
                    break
                if state.ended:
                    raise PeerFailed(self.peer, "its blob stream ended before the blob did")
                await self._patiently(state.wait_change, "it announced no leaf")
            nursery.cancel_scope.cancel()
        return position


@dataclass
class _Followed:
    """What an in-flight peer announced so far."""

    leaves: list[Leaf] = field(default_factory=list)
    size: int | None = None
    root: CID | None = None
    failure: str | None = None
    lied: bool = False
    ended: bool = False
    started: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
        await self._changed.wait()

    def raise_failure(self, peer: str) -> None:
        if self.failure is not None:
            raise PeerFailed(peer, self.failure, lied=self.lied)

    async def consume(self, answers: AsyncIterator[Answer]) -> None:
        try:
            async for answer in answers:
                if isinstance(answer, Fetching):
                    self.size = answer.size
                    self.leaves.extend(answer.leaves)
                    self.started.set()
                elif isinstance(answer, Have):
                    self.root, self.size = answer.root, answer.size
                    self.started.set()
                elif isinstance(answer, Failed):
                    self.failure = f"its fetch failed: {answer.reason}"
                elif isinstance(answer, Missing):
                    self.failure = "it no longer fetches the blob"
                self._notify()
        except BlobProtocolError as exc:
            self.failure, self.lied = f"broke the blob protocol: {exc}", True
        except NodeError as exc:
            self.failure = str(exc)
        finally:
            self.ended = True
            if self.failure is not None:
                self.started.set()  # wake the reader: it raises the failure
            self._notify()


# --- the coordinator -------------------------------------------------------------------------


@dataclass
class _Survey:
    haves: list[tuple[str, Have]] = field(default_factory=list)
    fetching: list[tuple[str, Fetching]] = field(default_factory=list)
    claimants: set[str] = field(default_factory=set)


BlobLookup = Callable[[str], tuple[CID, int] | None]
PrivacyCheck = Callable[[str], bool]


class Fleet:
    """The mirror's view of its fleet peers: answers their questions, finds supplies for its misses.

    ``local_blob(digest)`` gives a stored blob's (root, size); ``is_private(digest)`` says a stored
    blob came from a private namespace. ``share_private``: the node runs in a private swarm, where
    every peer may have private content.
    """

    def __init__(
        self,
        peers: FleetPeers,
        *,
        local_blob: BlobLookup,
        is_private: PrivacyCheck,
        stats: MirrorStats,
        share_private: bool = False,
        peer_timeout: float = 3.0,
        stall_timeout: float = 10.0,
        claim_settle: float = 0.25,
    ) -> None:
        self.peers = peers
        self.local_blob = local_blob
        self.is_private = is_private
        self.stats = stats
        self.share_private = share_private
        self.peer_timeout = peer_timeout
        self.stall_timeout = stall_timeout
        self.claim_settle = claim_settle
        self.inflight: dict[str, InFlight] = {}
        self._early_claims: OrderedDict[str, dict[str, float]] = OrderedDict()

    # --- answering peers ---------------------------------------------------------------------

    def begin(self, digest: str, *, private: bool) -> InFlight:
        """Register this node's fetch of ``digest`` (claimed) and announce it."""
        flight = InFlight(digest, trio.current_time(), private=private)
        for peer, heard in self._early_claims.pop(digest, {}).items():
            if flight.started - heard <= self.peer_timeout:
                flight.note_claimant(peer)  # it asked a moment before this node missed the blob
        self.inflight[digest] = flight
        if not private or self.share_private:
            self.peers.provide(digest)
        return flight

    def _note_early_claim(self, digest: str, peer: str) -> None:
        claims = self._early_claims.pop(digest, {})
        if peer in claims or len(claims) < MAX_CLAIMANTS:
            claims[peer] = trio.current_time()
        self._early_claims[digest] = claims  # newest last
        while len(self._early_claims) > EARLY_CLAIM_DIGESTS:
            self._early_claims.popitem(last=False)

    def end(self, flight: InFlight) -> None:
        if self.inflight.get(flight.digest) is flight:
            del self.inflight[flight.digest]

    async def answer(self, peer: str, request: Request) -> AsyncGenerator[Answer, None]:
        """The answers to ``peer`` asking about a blob (the node's blob protocol provider)."""
        digest = request.digest
        flight = self.inflight.get(digest)
        if flight is None or (flight.private and not self.share_private):
            local = self.local_blob(digest)
            if local is None and flight is None and request.claim and peer != self.peers.peer_id:
                self._note_early_claim(digest, peer)
            if local is None or (self.is_private(digest) and not self.share_private):
                yield Missing()
            else:
                yield Have(*local)
            return
        if request.claim and peer != self.peers.peer_id:
            flight.note_claimant(peer)
        sent_claimants: tuple[str, ...] | None = None
        sent_leaves = 0
        started = False
        while True:
            if flight.state == "claimed":
                claimants = tuple(sorted(flight.claimants | {self.peers.peer_id}))
                if claimants != sent_claimants:
                    sent_claimants = claimants
                    yield Claimed(claimants)
            elif flight.state == "fetching":
                if not started or sent_leaves < len(flight.leaves):
                    batch = flight.leaves[sent_leaves : sent_leaves + MAX_LEAVES_PER_FRAME]
                    yield Fetching(flight.size, sent_leaves, tuple(batch))
                    started = True
                    sent_leaves += len(batch)
                    continue
            elif flight.state == "have" and flight.root is not None:
                # The asker reads the rest through the DAG: no need for the last leaves.
                yield Have(flight.root, flight.size or 0)
                return
            else:
                yield Failed(flight.reason or "the fetch failed")
                return
            await flight.changed()

    # --- finding supplies for a miss ---------------------------------------------------------

    async def supplies(self, flight: InFlight) -> AsyncGenerator[PeerSupply, None]:
        """Peers to read ``flight``'s blob from, best first; exhausted means: go to the upstream."""
        digest = flight.digest
        survey = await self._survey(digest, claim=True)
        if (
            not (survey.haves or survey.fetching or survey.claimants or flight.claimants)
            and self.peers.has_routing()
        ):
            # Content routing learns of claims later than connected peers do (a claim's provider
            # record must reach the DHT first): after the settle time, look once more.
            await trio.sleep_until(flight.started + self.claim_settle)
            survey = await self._survey(digest, claim=True)
        me = self.peers.peer_id
        sources = {peer for peer, _ in survey.haves}

        def readers() -> set[str] | None:
            # Claims made at the same moment have all arrived claim_settle after ours.
            if trio.current_time() < flight.started + self.claim_settle:
                return None
            fetching = {peer for peer, _ in survey.fetching}
            return (survey.claimants | fetching | flight.claimants | {me}) - sources

        for peer, have in survey.haves:
            yield PeerSupply(
                self,
                peer,
                digest,
                have.size,
                have.root,
                co_readers=readers,
                start_at=flight.started + self.claim_settle,
            )
        for peer, fetching in sorted(survey.fetching, key=lambda item: -len(item[1].leaves)):
            yield PeerSupply(self, peer, digest, fetching.size)
        claimants = (survey.claimants | flight.claimants) - {self.peers.peer_id}
        if not claimants:
            # Nobody else has, fetches or claims it: this node fetches it upstream, and says so at
            # once ("fetching"), so a node that asks from now on follows it instead of claiming too.
            flight.start(None)
            return
        # Others missed it at the same moment: give late claims a moment, then the rule decides.
        await trio.sleep_until(flight.started + self.claim_settle)
        claimants = (claimants | flight.claimants) - {self.peers.peer_id}
        fetcher = fetcher_for(digest, claimants | {me})
        if fetcher == me:
            log.info(
                "fleet: %s claimed by %d nodes, this one fetches it upstream", digest, len(claimants) + 1
            )
            flight.start(None)
            return
        # Follow the fetcher (its followers read from it and from each other over bitswap).
        gone: set[str] = set()  # fetchers that failed their followers

        def followers_of(source: str, failed: frozenset[str]) -> Callable[[], set[str]]:
            return lambda: (survey.claimants | flight.claimants | {me}) - failed - {source}

        for _ in range(FETCHER_ELECTIONS):
            yield PeerSupply(
                self,
                fetcher,
                digest,
                None,
                wait_for_start=self.peer_timeout,
                coordinated=True,
                co_readers=followers_of(fetcher, frozenset(gone)),
            )
            # Back here, following it failed (it went away, stalled or its fetch failed): the rule
            # picks again among the claimants left, so one of the followers, not each of them,
            # fetches the rest from the upstream and the others follow it from where they are.
            gone.add(fetcher)
            fetcher = fetcher_for(digest, (survey.claimants | flight.claimants | {me}) - gone)
            if fetcher == me:
                log.info("fleet: the fetcher of %s failed; this node fetches the rest upstream", digest)
                return
            log.info("fleet: the fetcher of %s failed; following %s, the next nearest", digest, fetcher)

    async def find_have(self, digest: str) -> Have | None:
        """A peer's ``have`` answer for ``digest`` (asked without claiming it), or None."""
        survey = await self._survey(digest, claim=False)
        return survey.haves[0][1] if survey.haves else None

    async def _survey(self, digest: str, *, claim: bool) -> _Survey:
        """Ask connected peers and the digest's providers what they know, until one has it or all answered."""
        survey = _Survey()
        asked: set[str] = {self.peers.peer_id}
        found = trio.Event()  # a peer has the blob: the survey is over
        outstanding = 0
        settled = trio.Event()  # every question and the provider lookup have ended

        def started() -> None:
            nonlocal outstanding
            outstanding += 1

        def ended() -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding == 0:
                settled.set()

        async def ask(peer: str) -> None:
            try:
                async with self.peers.query(peer, Request(digest, claim=claim)) as answers:
                    async for answer in answers:
                        if isinstance(answer, Have):
                            survey.haves.append((peer, answer))
                            found.set()
                        elif isinstance(answer, Fetching):
                            survey.fetching.append((peer, answer))
                        elif isinstance(answer, Claimed):
                            survey.claimants.add(peer)
                            survey.claimants.update(answer.claimants)
                        break  # the state now is all the survey needs
            except BlobProtocolError as exc:
                log.info("fleet: %s answered about %s wrongly: %s", peer, digest, exc)
                await self.peers.penalise(peer, str(exc))
            except NodeError as exc:
                log.debug("fleet: asking %s about %s: %s", peer, digest, exc)
            finally:
                ended()

        async def lookup(nursery: trio.Nursery) -> None:
            try:
                async for peer in self.peers.find_providers(digest):
                    if peer not in asked:
                        asked.add(peer)
                        started()
                        nursery.start_soon(ask, peer)
            except NodeError as exc:
                log.debug("fleet: provider lookup of %s: %s", digest, exc)
            finally:
                ended()

        async def until_done(nursery: trio.Nursery) -> None:
            async with trio.open_nursery() as waiters:
                for event in (found, settled):
                    waiters.start_soon(_cancel_when_set, event, waiters.cancel_scope)
            nursery.cancel_scope.cancel()

        with trio.move_on_after(self.peer_timeout):
            async with trio.open_nursery() as nursery:
                started()  # the lookup
                for peer in self.peers.connected():
                    if peer not in asked:
                        asked.add(peer)
                        started()
                        nursery.start_soon(ask, peer)
                nursery.start_soon(lookup, nursery)
                nursery.start_soon(until_done, nursery)
        return survey


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
