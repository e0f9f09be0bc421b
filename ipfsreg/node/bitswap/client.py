"""Bitswap client: wants, sessions and peer scoring; fetches blocks from connected peers.

A fetch of one CID is driven by one task: it asks the session's known-good peers for the block
directly (want-block), otherwise discovers who has it by sending want-have to every connected
peer, then sends want-block to a peer that answered HAVE. A DONT_HAVE or a peer that stays silent
for ``want_timeout`` moves the want to another peer (a routed want, see Session, waits while its
peer keeps delivering other blocks);
after ``fetch_timeout`` the caller gets BlockFetchTimeout naming the CID. With a provider search
(``router``, the node's DHT lookups) a want that no connected peer can serve looks for providers:
at once when every connected peer has said DONT_HAVE (or there is none), otherwise after the search
delay, and again every little while as long as the want runs; providers found are connected and
asked like any peer. When the search found nobody and every connected peer has said no, the caller
gets BlockNotProvided at once.

On receipt the block's CID is rebuilt from its bytes, so a block
is only ever accepted for the CID it really has; it is stored, cancels go to the other peers asked,
and a peer that sends a block we never asked it for is dropped and banned for a while.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from ipfsreg.blockstore import Blockstore
from ipfsreg.cid import CID, IDENTITY, CIDError, multihash
from ipfsreg.node.bitswap.message import V0_PREFIX, Block, Message, PresenceType, WantEntry, WantType, cancels
from ipfsreg.node.bitswap.network import BitswapNetwork
from ipfsreg.node.errors import BitswapError, BlockFetchTimeout, BlockNotProvided, ProtocolViolation
from ipfsreg.node.settings import NodeSettings

if TYPE_CHECKING:
    from ipfsreg.node.providersearch import ProviderSearch, Search

logger = logging.getLogger(__name__)

BAN_SECONDS = 300.0
RECENT_WANTS = 8192  # finished wants remembered, so late duplicates are not taken as unrequested
MAX_PRIORITY = 2**31 - 1  # wantlist priorities are int32
THREAD_BYTES = 64 * 1024  # messages with at least this much block data are hashed and stored in a thread


class _Event(Enum):
    HAVE = "have"
    DONT_HAVE = "dont_have"
    BLOCK = "block"
    PEER = "peer"  # a peer connected: worth asking it too
    SEARCH = "search"  # the provider search for this CID ended


@dataclass
class ClientStats:
    blocks_received: int = 0
    block_bytes_received: int = 0
    duplicate_blocks: int = 0
    fetch_timeouts: int = 0
    not_provided: int = 0  # fetches that failed fast: nobody connected has it, no provider found
    peers_penalised: int = 0


@dataclass
class _Want:
    cid: CID
    key: bytes
    events: trio.MemorySendChannel[tuple[_Event, ID]]
    inbox: trio.MemoryReceiveChannel[tuple[_Event, ID]]
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    asked: set[ID] = field(default_factory=set)  # peers sent any want for it (may send the block)
    failed: bool = False
    session: Session | None = None
    priority: int = 1  # on the wire: peers answer higher priorities first


@dataclass(frozen=True)
class _Finished:
    asked: set[ID]
    session: Session | None
    delivered: bool = False  # ended by the block's arrival (not by a timeout or cancellation)


@dataclass
class _StoreBatch:
    """Messages hashed and stored by one worker thread, and what it found."""

    messages: list[list[Block]] = field(default_factory=list)
    results: list[tuple[list[CID], set[bytes]]] = field(default_factory=list)
    error: Exception | None = None
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _PeerScore:
    blocks: int = 0
    in_flight: int = 0
    timeouts: int = 0


class Session:
    """Peers that answered for one DAG fetch; later wants go straight to them, least loaded first.

    ``route`` (optional) names the peer each block is asked of first: a want-block without
    DONT_HAVE, so that peer sends the block as soon as it has it. The mirror uses it to spread a
    blob's leaves over the fleet nodes reading it at the same moment (each node takes its share from
    the source and the others take that share from it). A routed peer that sends no block at all
    for ``want_timeout`` while a want waits is asked like any other peer from then on in this session.
    """

    PROBE_EVERY = 4  # every how many wants also ask peers outside the session (want-have)

    def __init__(self, client: BitswapClient) -> None:
        self._client = client
        self.peers: dict[ID, _PeerScore] = {}
        self._wants = 0
        self.route: Callable[[CID], ID | None] | None = None
        self.unrouted: set[ID] = set()  # routed peers that let a want time out

    def routed_peer(self, cid: CID) -> ID | None:
        """The peer to ask ``cid`` of first, if the route names a usable one."""
        if self.route is None:
            return None
        peer = self.route(cid)
        if peer is None or peer in self.unrouted or not self._client.usable(peer):
            return None
        return peer

    def should_probe(self) -> bool:
        """True for the first want and then every PROBE_EVERY-th: keeps discovering more peers."""
        self._wants += 1
        return self._wants % self.PROBE_EVERY == 1

    def note_have(self, peer: ID) -> None:
        self.peers.setdefault(peer, _PeerScore())

    def best_peer(self, exclude: set[ID]) -> ID | None:
        """The connected session peer with the fewest wants in flight (ties: most blocks delivered)."""
        best: ID | None = None
        best_key: tuple[int, int, int] | None = None
        for peer, score in self.peers.items():
            if peer in exclude or not self._client.usable(peer):
                continue
            key = (score.in_flight, score.timeouts, -score.blocks)
            if best_key is None or key < best_key:
                best, best_key = peer, key
        return best

    async def fetch(self, cid: CID, *, priority: int | None = None) -> bytes:
        return await self._client.fetch(cid, session=self, priority=priority)

    def take_priority(self) -> int:
        """The next want priority: take it when the order is known (tasks start in any order)."""
        return self._client.take_priority()


class BitswapClient:
    def __init__(
        self,
        blockstore: Blockstore,
        network: BitswapNetwork,
        settings: NodeSettings,
        *,
        on_blocks_stored: Callable[[list[CID]], None] | None = None,
    ) -> None:
        self.blockstore = blockstore
        self.network = network
        self.settings = settings
        self.stats = ClientStats()
        self.on_blocks_stored = on_blocks_stored
        self._wants: dict[bytes, _Want] = {}
        self._next_priority = MAX_PRIORITY
        self._recent: OrderedDict[bytes, _Finished] = OrderedDict()  # finished wants, newest last
        self._banned: dict[ID, float] = {}
        self._last_block_from: dict[ID, float] = {}  # when each peer's latest block reached us
        self._store_lock = trio.Lock()  # one hash-and-store thread at a time
        self._open_batch: _StoreBatch | None = None  # messages waiting for the next thread
        self.router: ProviderSearch | None = None  # finds providers beyond the connected peers

    def new_session(self) -> Session:
        return Session(self)

    # --- peers -------------------------------------------------------------------------------

    def usable(self, peer: ID) -> bool:
        return self.network.is_connected(peer) and not self.is_banned(peer)

    def is_banned(self, peer: ID) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if trio.current_time() >= until:
            del self._banned[peer]
            return False
        return True

    def candidate_peers(self) -> list[ID]:
        return [p for p in self.network.connected_peers() if not self.is_banned(p)]

    def peer_connected(self, peer: ID) -> None:
        if self.is_banned(peer):
            return
        for want in self._wants.values():
            _offer(want, _Event.PEER, peer)

    def search_finished(self, cid: CID) -> None:
        """The provider search for ``cid`` ended: its want re-checks what it knows."""
        want = self._wants.get(cid.to_bytes())
        if want is not None:
            _offer(want, _Event.SEARCH, self.network.host.get_id())

    def peer_disconnected(self, peer: ID) -> None:
        """Wants waiting on ``peer`` move on at once instead of waiting out the want timeout."""
        self._last_block_from.pop(peer, None)
        for want in self._wants.values():
            if peer in want.asked:
                _offer(want, _Event.DONT_HAVE, peer)

    async def penalise(self, peer: ID, reason: Exception) -> None:
        """Ban ``peer`` for a while and drop its connection."""
        logger.warning("bitswap: dropping peer %s: %s", peer, reason)
        self.stats.peers_penalised += 1
        self._banned[peer] = trio.current_time() + BAN_SECONDS
        self.peer_disconnected(peer)
        await self.network.disconnect(peer)

    # --- receiving ---------------------------------------------------------------------------

    async def receive(self, peer: ID, message: Message) -> None:
        """Handle the blocks and presences of a message; ProtocolViolation on an unrequested block.

        Hashing (verification) and storing the blocks of a big message run in a worker thread,
        off the event loop, which meanwhile goes on reading the network (hashlib and LevelDB
        release the GIL). Only blocks that are wanted when the thread starts are stored there;
        the claim of each block is then settled on the event loop as usual.
        """
        blocks = message.blocks
        if blocks:
            self._last_block_from[peer] = trio.current_time()
        if sum(len(block.data) for block in blocks) >= THREAD_BYTES:
            cids, stored_in_thread = await self._hash_and_store_batched(blocks)
        else:
            cids, stored_in_thread = [block.cid() for block in blocks], set()
        stored: list[CID] = []
        violation: ProtocolViolation | None = None
        for block, cid in zip(blocks, cids, strict=True):
            key = cid.to_bytes()
            want = self._wants.get(key)
            if want is None and block.prefix == V0_PREFIX:
                # 1.0.0 blocks carry no prefix: match any wanted CID with the same hash (e.g. CIDv1 raw).
                want = next((w for w in self._wants.values() if w.cid.multihash == cid.multihash), None)
                if want is not None:
                    cid, key = want.cid, want.key
            if want is not None and peer in want.asked and not want.done.is_set():
                if key not in stored_in_thread:
                    self.blockstore.put(cid, block.data, verify=False)  # just hashed above
                self.stats.blocks_received += 1
                self.stats.block_bytes_received += len(block.data)
                want.data = block.data
                want.done.set()
                stored.append(cid)
                _offer(want, _Event.BLOCK, peer)
                self._finish(want, sender=peer)
            elif key in stored_in_thread and _first_arrival(self._recent.get(key), peer):
                # Its want was cancelled (its reader found the block this thread had just stored,
                # and left) while the message was being stored: still its one arrival.
                self.stats.blocks_received += 1
                self.stats.block_bytes_received += len(block.data)
                stored.append(cid)
                finished = self._recent[key]
                self._recent[key] = _Finished(finished.asked, finished.session, delivered=True)
            elif (want is not None and peer in want.asked) or peer in _asked(self._recent.get(key)):
                self.stats.duplicate_blocks += 1
            else:
                violation = ProtocolViolation(f"peer {peer} sent block {cid}, which we never asked it for")
        for presence in message.presences:
            key = presence.cid.to_bytes()
            want = self._wants.get(key)
            if want is None:
                # Answered after the block came from elsewhere: still, the session learns who has blocks.
                recent = self._recent.get(key)
                if (
                    presence.type == PresenceType.HAVE
                    and recent is not None
                    and recent.session is not None
                    and peer in recent.asked
                ):
                    recent.session.note_have(peer)
            elif not want.done.is_set():
                kind = _Event.HAVE if presence.type == PresenceType.HAVE else _Event.DONT_HAVE
                if kind is _Event.HAVE and want.session is not None and peer in want.asked:
                    want.session.note_have(peer)
                _offer(want, kind, peer)
        if stored and self.on_blocks_stored is not None:
            self.on_blocks_stored(stored)
        if violation is not None:
            raise violation

    async def _hash_and_store_batched(self, blocks: list[Block]) -> tuple[list[CID], set[bytes]]:
        """Hash and store a message's blocks in a worker thread, together with other messages'.

        Messages that arrive while a thread is busy join one batch, which the next thread hashes and
        stores in one write: one thread hand-off and one pack write for many blocks (Kubo sends each
        block in a message of its own, on a stream of its own). The first message of a batch leads it:
        it waits for the busy thread, closes the batch and runs it, shielded so that the others never
        wait for a batch nobody runs.
        """
        batch = self._open_batch
        leader = batch is None
        if batch is None:
            batch = self._open_batch = _StoreBatch()
        index = len(batch.messages)
        batch.messages.append(blocks)
        if leader:
            with trio.CancelScope(shield=True):
                async with self._store_lock:
                    self._open_batch = None  # later messages start the next batch
                    try:
                        batch.results = await trio.to_thread.run_sync(
                            self._hash_and_store, batch.messages, frozenset(self._wants)
                        )
                    except Exception as exc:
                        batch.error = exc
                    finally:
                        batch.done.set()
        else:
            await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        if index >= len(batch.results):  # its thread was interrupted by a BaseException
            raise BitswapError("the worker thread storing this message did not finish")
        return batch.results[index]

    def _hash_and_store(
        self, messages: list[list[Block]], wanted: frozenset[bytes]
    ) -> list[tuple[list[CID], set[bytes]]]:
        """(Worker thread.) Per message, the CID of every block and the keys of those stored.

        Blocks whose CID is in ``wanted`` are stored, all messages' in one batch.
        """
        results: list[tuple[list[CID], set[bytes]]] = []
        stored: dict[bytes, tuple[CID, bytes]] = {}
        for blocks in messages:
            cids = [block.cid() for block in blocks]
            keys: set[bytes] = set()
            for block, cid in zip(blocks, cids, strict=True):
                key = cid.to_bytes()
                if key in wanted:
                    stored.setdefault(key, (cid, block.data))
                    keys.add(key)
            results.append((cids, keys))
        if stored:
            self.blockstore.put_many(stored.values(), verify=False)  # just hashed
        return results

    def _finish(self, want: _Want, *, sender: ID | None) -> None:
        """Forget an active want, cancelling it at every other peer we asked."""
        if self._wants.get(want.key) is want:
            del self._wants[want.key]
        # Not the data: only who was asked, and whether the block came.
        self._recent[want.key] = _Finished(want.asked, want.session, delivered=sender is not None)
        while len(self._recent) > RECENT_WANTS:
            self._recent.popitem(last=False)
        for peer in want.asked:
            if peer != sender and self.network.is_connected(peer):
                self.network.queue_wants(peer, cancels([want.cid]))
        want.events.close()

    # --- fetching ----------------------------------------------------------------------------

    async def fetch(self, cid: CID, *, session: Session | None = None, priority: int | None = None) -> bytes:
        """The block ``cid``: from the blockstore, else from peers (stored before returning).

        ``priority`` (from :meth:`take_priority`) orders this want among the others at peers;
        by default it comes after every want made so far.
        """
        if cid.hash_code == IDENTITY:
            return cid.digest  # inline: the CID carries its bytes
        try:
            multihash(b"", cid.hash_code)
        except CIDError:
            raise BitswapError(
                f"cannot verify {cid}: unsupported hash function 0x{cid.hash_code:x}"
            ) from None
        local = self.blockstore.get_or_none(cid)
        if local is not None:
            return local
        timeout = self.settings.fetch_timeout
        deadline = trio.current_time() + timeout
        key = cid.to_bytes()
        while True:
            want = self._wants.get(key)
            if want is None:
                if priority is None:
                    priority = self.take_priority()
                return await self._drive(cid, key, session or Session(self), deadline, priority)
            # Someone else is already fetching it: wait for them.
            with trio.move_on_at(deadline):
                await want.done.wait()
            if want.data is not None:
                return want.data
            if trio.current_time() >= deadline:
                self.stats.fetch_timeouts += 1
                raise BlockFetchTimeout(cid, timeout)
            local = self.blockstore.get_or_none(cid)
            if local is not None:
                return local

    def take_priority(self) -> int:
        """Decreasing priorities in want order (as Kubo numbers them): a reader's window of wants
        is asked for in the order the reader needs the blocks, so peers answer them in that order."""
        priority = self._next_priority
        self._next_priority = priority - 1 if priority > 1 else MAX_PRIORITY
        return priority

    async def _drive(self, cid: CID, key: bytes, session: Session, deadline: float, priority: int) -> bytes:
        send, recv = trio.open_memory_channel[tuple[_Event, ID]](1000)
        want = _Want(cid, key, send, recv, session=session, priority=priority)
        self._wants[key] = want
        try:
            with trio.move_on_at(deadline):
                await self._pursue(want, session)
            if want.data is None:
                self.stats.fetch_timeouts += 1
                detail = "no connected peers" if not self.candidate_peers() else ""
                raise BlockFetchTimeout(cid, self.settings.fetch_timeout, detail)
            return want.data
        finally:
            if want.data is None:
                want.failed = True
                self._finish(want, sender=None)
                want.done.set()

    async def _pursue(self, want: _Want, session: Session) -> None:
        """Ask peers until the block arrives (returns) or the caller's deadline cancels us.

        BlockNotProvided as soon as the provider search found nobody and every connected peer
        has said DONT_HAVE (or stayed silent through a quiet period).
        """
        settings = self.settings
        routed = session.routed_peer(want.cid)
        if routed is not None and await self._want_routed(want, session, routed):
            return
        dont_have: set[ID] = set()  # said DONT_HAVE or timed out on want-block
        haves: list[ID] = []  # said HAVE, not yet asked for the block
        asked_have: set[ID] = set()
        # DONT_HAVE, or silence from a peer that delivers nothing; never cleared: decides a fast failure.
        said_no: set[ID] = set()
        began = trio.current_time()
        search: Search | None = None
        while not want.done.is_set():
            target = None
            while haves and target is None:
                peer = haves.pop(0)
                if peer not in dont_have and self.usable(peer):
                    target = peer
            if target is None:
                target = session.best_peer(exclude=dont_have)
                if target is not None and session.should_probe():
                    self._probe(want, session, asked_have)
            if target is not None:
                await self._want_block(want, session, target, dont_have, haves, asked_have)
                said_no |= {peer for peer in dont_have if not self._delivering(peer)}
                continue
            # Discovery: who has it?
            candidates = self.candidate_peers()
            fresh = [p for p in candidates if p not in asked_have and p not in dont_have]
            have_capable = [p for p in fresh if self.network.supports_have(p)]
            for peer in fresh:
                if peer not in have_capable:  # 1.0.0 peers only understand want-block
                    haves.append(peer)
            if have_capable:
                for peer in have_capable:
                    asked_have.add(peer)
                    want.asked.add(peer)
                    self.network.queue_wants(peer, [_want_entry(want, WantType.HAVE)])
            if haves:
                continue
            wait = settings.want_timeout
            router = self.router
            if router is not None:
                everyone_said_no = not fresh and all(p in said_no for p in candidates)
                now = trio.current_time()
                if search is not None and search.done.is_set():
                    if search.found == 0 and everyone_said_no:
                        self.stats.not_provided += 1
                        asked = (
                            f"none of the {len(candidates)} connected peers has it"
                            if candidates
                            else "no connected peers"
                        )
                        raise BlockNotProvided(want.cid, f"{asked}, and the provider lookup found nobody")
                    assert search.finished_at is not None
                    if now - search.finished_at >= router.memory:
                        search = None  # still missing: look for (more) providers again
                if search is None:
                    if everyone_said_no or now - began >= router.delay:
                        search = router.search(want.cid)
                        if search.done.is_set():
                            continue  # a recent search's answer: decide now
                    else:
                        wait = min(wait, began + router.delay - now)
            # Wait for presences, a block, a new peer or the search; re-ask everyone after a quiet period.
            with trio.move_on_after(wait) as quiet:
                while True:
                    try:
                        event, peer = await want.inbox.receive()
                    except trio.EndOfChannel:
                        return
                    if event is _Event.BLOCK:
                        return
                    if event is _Event.HAVE:
                        session.note_have(peer)
                        said_no.discard(peer)
                        haves.append(peer)
                        break
                    if event is _Event.DONT_HAVE:
                        dont_have.add(peer)
                        said_no.add(peer)
                        if router is not None and all(p in said_no for p in self.candidate_peers()):
                            break  # everyone has answered: search now, or decide on the search
                        continue
                    if event in (_Event.PEER, _Event.SEARCH):
                        break
            if quiet.cancelled_caught and wait >= settings.want_timeout:
                # Nobody answered: forget who refused, peers may have fetched it meanwhile.
                said_no |= {peer for peer in asked_have if not self._delivering(peer)}
                asked_have.clear()
                dont_have.clear()

    async def _want_routed(self, want: _Want, session: Session, peer: ID) -> bool:
        """Ask the routed ``peer`` alone for the block, which it sends once it has it (no DONT_HAVE).

        True when the block came (from anyone) or the want ended; False after ``want_timeout``
        without it, or when the peer went away: then the want is cancelled there and asked as usual.
        """
        score = session.peers.setdefault(peer, _PeerScore())
        want.asked.add(peer)
        score.in_flight += 1
        timed_out = False
        try:
            self.network.queue_wants(peer, [WantEntry(want.cid, want.priority, False, WantType.BLOCK, False)])
            asked_at = trio.current_time()
            while True:
                # As for any want-block: a peer still delivering other blocks is busy, not stalled.
                heard = max(asked_at, self._last_block_from.get(peer, asked_at))
                with trio.move_on_at(heard + self.settings.want_timeout) as waited:
                    while True:
                        event, sender = await want.inbox.receive()
                        if event is _Event.BLOCK:
                            session.peers.setdefault(sender, _PeerScore()).blocks += 1
                            return True
                        if event is _Event.HAVE:
                            session.note_have(sender)
                        elif event is _Event.DONT_HAVE and sender == peer:
                            break  # gone (or it answered DONT_HAVE after all)
                if not waited.cancelled_caught:
                    break
                if self._last_block_from.get(peer, asked_at) <= heard:
                    timed_out = True
                    break
        except trio.EndOfChannel:
            return True
        finally:
            score.in_flight -= 1
        if timed_out:
            score.timeouts += 1
            session.unrouted.add(peer)
        if self.network.is_connected(peer):
            self.network.queue_wants(peer, cancels([want.cid]))  # it would send it once it had it
        return False

    def _delivering(self, peer: ID) -> bool:
        """``peer`` sent us a block within the last ``want_timeout``: a want it let time out waits in
        a long queue (a holder serving a whole fleet), so its silence does not mean it lacks the block
        and must not fail the fetch fast (BlockNotProvided)."""
        last = self._last_block_from.get(peer)
        return last is not None and trio.current_time() - last < self.settings.want_timeout

    def _probe(self, want: _Want, session: Session, asked_have: set[ID]) -> None:
        """Ask connected peers outside the session whether they have the block (want-have)."""
        for peer in self.candidate_peers():
            if peer not in session.peers and peer not in want.asked and self.network.supports_have(peer):
                asked_have.add(peer)
                want.asked.add(peer)
                self.network.queue_wants(peer, [_want_entry(want, WantType.HAVE)])

    async def _want_block(
        self,
        want: _Want,
        session: Session,
        target: ID,
        dont_have: set[ID],
        haves: list[ID],
        asked_have: set[ID],
    ) -> None:
        """Ask ``target`` for the block and wait for it, a DONT_HAVE, or the per-peer timeout."""
        score = session.peers.setdefault(target, _PeerScore())
        want.asked.add(target)
        score.in_flight += 1
        try:
            self.network.queue_wants(target, [_want_entry(want, WantType.BLOCK)])
            # A peer slow to answer (its queue is long) leaves the want to another peer that has
            # the block: that is how a session spreads its wants over the peers that can serve.
            with trio.move_on_after(self.settings.want_timeout) as waited:
                while True:
                    event, peer = await want.inbox.receive()
                    if event is _Event.BLOCK:
                        session.peers.setdefault(peer, _PeerScore()).blocks += 1
                        return
                    if event is _Event.HAVE:
                        session.note_have(peer)
                        if peer != target:
                            haves.append(peer)
                    elif event is _Event.DONT_HAVE:
                        dont_have.add(peer)
                        if peer == target:
                            # Not cancelled there: it keeps the want and sends the block once it
                            # has it, which is what keeps a want alive while the peers that do
                            # have it are slow (the price: a duplicate when another one was faster).
                            return
            if waited.cancelled_caught:
                score.timeouts += 1
                # An unresponsive peer leaves the session; a later HAVE brings it back.
                session.peers.pop(target, None)
                dont_have.add(target)
                self.network.queue_wants(target, cancels([want.cid]))
        except trio.EndOfChannel:
            return
        finally:
            score.in_flight -= 1

    def wanted(self) -> list[CID]:
        return [w.cid for w in self._wants.values()]


def _first_arrival(finished: _Finished | None, peer: ID) -> bool:
    """A block from ``peer`` for this finished want is its first: the want ended undelivered."""
    return finished is not None and not finished.delivered and peer in finished.asked


def _asked(want: _Finished | None) -> set[ID]:
    return set() if want is None else want.asked


def _want_entry(want: _Want, want_type: WantType) -> WantEntry:
    return WantEntry(want.cid, want.priority, False, want_type, True)


def _offer(want: _Want, event: _Event, peer: ID) -> None:
    with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
        want.events.send_nowait((event, peer))
