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
        self._peers: dict[bytes, _Candidate] = {}
        self.add_heard(seeds)

    # --- events ------------------------------------------------------------------------------

    def add_heard(self, peers: Iterable[bytes]) -> None:
        for peer in peers:
            if peer == self.local or peer in self._peers:
                continue
            self._peers[peer] = _Candidate(peer, kad_id(peer) ^ self.target, State.HEARD)
        if len(self._peers) > self.max_candidates:
            self._trim()

    def responded(self, peer: bytes, closer: Iterable[bytes] = ()) -> None:
        """``peer`` answered; ``closer`` are the peers it named."""
        candidate = self._peers.get(peer)
        if candidate is not None and candidate.state is State.WAITING:
            candidate.state = State.QUERIED
        self.add_heard(closer)

    def failed(self, peer: bytes) -> None:
        """``peer`` could not be dialled, timed out or answered garbage."""
        candidate = self._peers.get(peer)
        if candidate is not None and candidate.state is State.WAITING:
            candidate.state = State.UNREACHABLE

    def stop(self) -> None:
        self.stopped = True

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
        chosen: list[bytes] = []
        for candidate in wanted[: max(0, budget)]:
            if self.queries >= self.max_queries:
                break
            candidate.state = State.WAITING
            self.queries += 1
            chosen.append(candidate.peer)
        return chosen

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
                excess -= 1
