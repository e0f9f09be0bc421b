"""The iterative Kademlia lookup as a pure state machine (no I/O): who to ask next, and when to stop.

It follows go-libp2p-kad-dht's query (the spec's "Client behavior"): every peer we hear of is
*heard*; up to ``alpha`` heard peers, nearest first, are *waiting* on our request at a time; each
ends *queried* (it answered, and the peers it named become heard) or *unreachable*. The lookup
ends when the ``beta`` nearest peers that are not unreachable have all answered (β = 3 for
lookups that look for something, such as providers or a record), or when nobody is left to ask.
With ``followup`` (lookups that must reach the k closest peers, as a provide or a put does) it
then goes on until the ``k`` nearest live peers have all answered, as Kubo's follow-up does.

Paths are not disjoint (no S/Kademlia): Kubo's and the spec's lookups are not either, d disjoint
paths cost d times the queries, and what a lying peer can do to a lookup here is bounded anyway
(records are validated, peer lists capped, every lookup ends by the time limit its driver sets).
Memory is bounded too: at most ``max_candidates`` peers are remembered, the nearest ones, and
at most ``max_queries`` requests are made.

One departure from a plain nearest-first order: each candidate has a *referral depth*, 0 for
peers we already know to be live DHT servers (``trusted``: the routing table's), 1 for peers a
depth-0 peer named, and so on. Of each batch of requests, half go to the nearest candidates and
half to the least deep ones (nearest first among equals). Peers named by others may not exist,
or accept a connection and never answer; without this, a few peers that name dozens of such
addresses fill every slot with dials that time out, and the lookup never reaches the live peers
that live peers told it about. The nearest-first half keeps the lookup converging as Kademlia's.

A lookup can also tell that it *saw the whole network* (:attr:`Lookup.saw_whole_network`): it
asked every peer it heard of, and every answer named fewer than k - 1 peers. A DHT server names
the k peers of its routing table nearest to the key, less the peer asking (Kubo's and ours), so
an answer of fewer than k - 1 is its whole table; the peers that answered are then every DHT
server that the routing tables reach, and the closest peers of any key, not only this one (a
fleet of fewer than k nodes, an edge site's DHT).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from ipfsreg.node.routing.keys import kad_id
from ipfsreg.node.routing.message import K

ALPHA: Final = 10
BETA: Final = 3
MAX_CANDIDATES: Final = 200
MAX_QUERIES: Final = 120


class State(Enum):
    HEARD = "heard"
    WAITING = "waiting"
    QUERIED = "queried"
    UNREACHABLE = "unreachable"


@dataclass(slots=True)
class _Candidate:
    peer: bytes
    distance: int
    state: State
    depth: int  # referral depth: 0 trusted, n + 1 when named by a depth-n peer


class Lookup:
    """One lookup for the key whose identifier is ``target`` (see the module docstring)."""

    def __init__(
        self,
        target: int,
        seeds: Iterable[bytes],
        *,
        local: bytes,
        k: int = K,
        alpha: int = ALPHA,
        beta: int = BETA,
        followup: bool = False,
        max_candidates: int = MAX_CANDIDATES,
        max_queries: int = MAX_QUERIES,
        trusted: Iterable[bytes] = (),
    ) -> None:
        if alpha < 1 or beta < 1 or k < 1:
            raise ValueError("alpha, beta and k must be at least 1")
        self.target = target
        self.local = local
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self.followup = followup
        self.max_candidates = max_candidates
        self.max_queries = max_queries
        self.queries = 0
        self.stopped = False  # set by stop(): the caller found what it looked for
        self.full_answers = 0  # answers that named k - 1 peers or more: their tables may hold more
        self._forgot = False  # _trim() dropped a heard peer
        self._peers: dict[bytes, _Candidate] = {}
        self._trusted: set[bytes] = set(trusted)
        self.add_heard(seeds)

    # --- events ------------------------------------------------------------------------------

    def add_heard(self, peers: Iterable[bytes], depth: int = 1) -> None:
        for peer in peers:
            if peer == self.local:
                continue
            level = 0 if peer in self._trusted else depth
            known = self._peers.get(peer)
            if known is not None:
                known.depth = min(known.depth, level)
                continue
            self._peers[peer] = _Candidate(peer, kad_id(peer) ^ self.target, State.HEARD, level)
        if len(self._peers) > self.max_candidates:
            self._trim()

    def responded(self, peer: bytes, closer: Iterable[bytes] = (), *, named: int | None = None) -> None:
        """``peer`` answered; ``closer`` are the peers it named that can be asked, of ``named`` peers
        it named in all (those it can't be are left out of ``closer``; default: as many)."""
        closer = list(closer)
        if (len(closer) if named is None else named) >= self.k - 1:  # k nearest less the asker
            self.full_answers += 1
        candidate = self._peers.get(peer)
        if candidate is not None and candidate.state is State.WAITING:
            candidate.state = State.QUERIED
        self.add_heard(closer, depth=(candidate.depth if candidate is not None else 1) + 1)

    def failed(self, peer: bytes) -> None:
        """``peer`` could not be dialled, timed out or answered garbage."""
        candidate = self._peers.get(peer)
        if candidate is not None and candidate.state is State.WAITING:
            candidate.state = State.UNREACHABLE

    def stop(self) -> None:
        self.stopped = True

    def trust(self, peers: Iterable[bytes]) -> None:
        """Mark ``peers`` as known live DHT servers (see the module docstring)."""
        for peer in peers:
            self._trusted.add(peer)
            known = self._peers.get(peer)
            if known is not None:
                known.depth = 0

    # --- decisions ---------------------------------------------------------------------------

    def next_queries(self) -> list[bytes]:
        """Peers to send the request to now (each becomes waiting); empty while none should start."""
        if self.done:
            return []
        waiting = self._count(State.WAITING)
        if self.followup and self._beta_done():
            # The follow-up: every heard peer among the k nearest live ones, all at once.
            budget = self.k
            wanted = [c for c in self._nearest_live(self.k) if c.state is State.HEARD]
        else:
            budget = self.alpha - waiting
            wanted = [c for c in self._sorted() if c.state is State.HEARD]
        budget = min(max(0, budget), self.max_queries - self.queries)
        vouched = sorted(wanted, key=lambda c: (c.depth, c.distance))
        chosen: list[_Candidate] = []
        # Alternate: the least deep candidate left, then the nearest one left (see the docstring).
        orders = [iter(vouched), iter(wanted)]
        turn = 0
        while len(chosen) < budget:
            candidate = next((c for c in orders[turn % 2] if c.state is State.HEARD), None)
            if candidate is None:
                candidate = next((c for c in orders[(turn + 1) % 2] if c.state is State.HEARD), None)
                if candidate is None:
                    break
            candidate.state = State.WAITING
            chosen.append(candidate)
            turn += 1
        self.queries += len(chosen)
        return [c.peer for c in chosen]

    @property
    def done(self) -> bool:
        if self.stopped:
            return True
        waiting = self._count(State.WAITING)
        heard = self._count(State.HEARD)
        if waiting == 0 and (heard == 0 or self.queries >= self.max_queries):
            return True  # starved, or out of budget
        if not self._beta_done():
            return False
        if not self.followup:
            return True
        return all(c.state is State.QUERIED for c in self._nearest_live(self.k))

    @property
    def saw_whole_network(self) -> bool:
        """Done having asked every peer it heard of, each answer naming fewer than k - 1 peers, and
        fewer than k answering (see the module docstring): they are every DHT server to be found."""
        if self.stopped or self._forgot or self.full_answers or self.queries >= self.max_queries:
            return False
        if any(c.state in (State.HEARD, State.WAITING) for c in self._peers.values()):
            return False
        return 0 < self._count(State.QUERIED) < self.k

    def closest(self, count: int | None = None) -> list[bytes]:
        """The nearest peers that answered, nearest first (the result of a closest-peers lookup)."""
        answered = [c for c in self._sorted() if c.state is State.QUERIED]
        return [c.peer for c in answered[: count if count is not None else self.k]]

    def state_of(self, peer: bytes) -> State | None:
        candidate = self._peers.get(peer)
        return None if candidate is None else candidate.state

    # --- internals ---------------------------------------------------------------------------

    def _sorted(self) -> list[_Candidate]:
        return sorted(self._peers.values(), key=lambda c: c.distance)

    def _nearest_live(self, count: int) -> list[_Candidate]:
        return [c for c in self._sorted() if c.state is not State.UNREACHABLE][:count]

    def _beta_done(self) -> bool:
        nearest = self._nearest_live(self.beta)
        return bool(nearest) and all(c.state is State.QUERIED for c in nearest)

    def _count(self, state: State) -> int:
        return sum(1 for c in self._peers.values() if c.state is state)

    def _trim(self) -> None:
        """Forget the farthest heard peers beyond ``max_candidates`` (the others keep their state)."""
        ordered = self._sorted()
        excess = len(ordered) - self.max_candidates
        for candidate in reversed(ordered):
            if excess <= 0:
                break
            if candidate.state is State.HEARD:
                del self._peers[candidate.peer]
                self._forgot = True
                excess -= 1
