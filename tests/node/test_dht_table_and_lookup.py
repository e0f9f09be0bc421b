"""The Kademlia keyspace, the routing table, the lookup state machine and peer-entry checks (all pure)."""

from __future__ import annotations

import hashlib
import random

import pytest
from libp2p.peer.id import ID

from ipfsreg.cid import encode_varint
from ipfsreg.node.errors import DHTProtocolError
from ipfsreg.node.routing.addrs import DialAddr, Scope, parse_dial_addr, peer_id_from_bytes, with_p2p
from ipfsreg.node.routing.keys import common_prefix_len, kad_id, random_key_with_prefix
from ipfsreg.node.routing.lookup import Lookup, State
from ipfsreg.node.routing.table import RoutingTable

SPEC_PEER = bytes.fromhex("0024080112209e3b433cbd31c2b8a6ebbdca998bd0f4c2141c9c9af5422e976051b1e63af14d")


def _peer(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(i.to_bytes(4, "big")).digest()


def _ip4(a: int, b: int, c: int, d: int, port: int = 4001) -> bytes:
    return b"\x04" + bytes((a, b, c, d)) + b"\x06" + port.to_bytes(2, "big")


# --- keys ---------------------------------------------------------------------------------


def test_kademlia_identifiers_match_the_spec_examples() -> None:
    assert kad_id(SPEC_PEER) == int("e43d28f0996557c0d5571d75c62a57a59d7ac1d30a51ecedcdb9d5e4afa56100", 16)
    mh = bytes.fromhex("1220e536c7f88d731f374dccb568aff6f56e838a19382e488039b1ca8ad2599e82fe")
    assert kad_id(mh) == int("d623250f3f660ab4c3a53d3c97b3f6a0194c548053488d093520206248253bcb", 16)


def test_common_prefix_length() -> None:
    assert common_prefix_len(0, 0) == 256
    assert common_prefix_len(0, 1 << 255) == 0
    assert common_prefix_len(0b1011 << 252, 0b1001 << 252) == 2


@pytest.mark.parametrize("cpl", [0, 1, 5, 9])
def test_random_key_with_prefix_lands_in_that_bucket(cpl: int) -> None:
    local = kad_id(SPEC_PEER)
    key = random_key_with_prefix(local, cpl, random.Random(cpl))
    assert common_prefix_len(kad_id(key), local) == cpl


# --- routing table ------------------------------------------------------------------------


def _addr(port: int) -> DialAddr:
    parsed = parse_dial_addr(_ip4(127, 0, 0, 1, port))
    assert parsed is not None
    return parsed


def test_table_returns_the_closest_peers_by_xor_distance() -> None:
    table = RoutingTable(_peer(0))
    for i in range(1, 200):
        table.add(_peer(i), [], now=1.0)
    target = kad_id(_peer(500))
    expected = sorted((e for e in table.entries()), key=lambda e: e.kad ^ target)[:20]
    assert [e.peer for e in table.closest(target)] == [e.peer for e in expected]
    assert _peer(1) not in [e.peer for e in table.closest(target, 300, exclude=[_peer(1)])]


def test_full_bucket_keeps_its_live_peers_and_takes_a_newcomer_only_for_a_failing_one() -> None:
    table = RoutingTable(_peer(0), k=2)
    local = kad_id(_peer(0))
    same = [p for p in (_peer(i) for i in range(1, 5000)) if common_prefix_len(kad_id(p), local) == 0][:4]
    assert table.add(same[0], [], now=1.0)
    assert table.add(same[1], [], now=2.0)
    assert not table.has_room_for(same[2])
    assert not table.add(same[2], [], now=3.0)  # seniority: the old live peers stay
    table.failed(same[0])
    assert table.has_room_for(same[2])
    assert table.add(same[2], [], now=4.0)
    assert same[0] not in table and same[1] in table and same[2] in table


def test_peer_failing_twice_leaves_the_table_and_answering_resets_its_failures() -> None:
    table = RoutingTable(_peer(0))
    table.add(_peer(1), [], now=1.0)
    table.failed(_peer(1))
    table.add(_peer(1), [], now=2.0)  # it answered again
    table.failed(_peer(1))
    assert _peer(1) in table
    table.failed(_peer(1))
    assert _peer(1) not in table


def test_table_never_holds_itself_and_caps_addresses_per_peer() -> None:
    table = RoutingTable(_peer(0))
    assert not table.add(_peer(0), [], now=1.0)
    table.add(_peer(1), [_addr(1000 + i) for i in range(40)], now=1.0)
    entry = table.get(_peer(1))
    assert entry is not None and len(entry.addrs) == 16


def test_stale_entries_are_those_not_useful_since() -> None:
    table = RoutingTable(_peer(0))
    table.add(_peer(1), [], now=1.0)
    table.add(_peer(2), [], now=10.0)
    assert [e.peer for e in table.stale(before=5.0)] == [_peer(1)]


# --- lookup -------------------------------------------------------------------------------


class _Network:
    """A synthetic network: every peer knows its k nearest others (a converged DHT)."""

    def __init__(self, size: int) -> None:
        self.peers = [_peer(i) for i in range(1, size + 1)]

    def closer(self, asked: bytes, target: int) -> list[bytes]:
        return sorted((p for p in self.peers if p != asked), key=lambda p: kad_id(p) ^ target)[:20]

    def nearest(self, target: int, count: int) -> list[bytes]:
        return sorted(self.peers, key=lambda p: kad_id(p) ^ target)[:count]


def _drive(lookup: Lookup, network: _Network, dead: frozenset[bytes] = frozenset()) -> int:
    rounds = 0
    while not lookup.done:
        batch = lookup.next_queries()
        assert batch, "a lookup that is not done must have something to ask"
        rounds += 1
        for peer in batch:
            if peer in dead:
                lookup.failed(peer)
            else:
                lookup.responded(peer, network.closer(peer, lookup.target))
    return rounds


def test_lookup_converges_on_the_nearest_peers() -> None:
    network = _Network(500)
    target = kad_id(b"some key")
    lookup = Lookup(target, network.peers[:5], local=_peer(0), alpha=3)
    _drive(lookup, network)
    assert lookup.closest(3) == network.nearest(target, 3)
    assert lookup.queries < 100


def test_lookup_with_followup_has_queried_all_k_nearest() -> None:
    network = _Network(300)
    target = kad_id(b"provide me")
    lookup = Lookup(target, network.peers[:3], local=_peer(0), followup=True)
    _drive(lookup, network)
    assert lookup.closest(20) == network.nearest(target, 20)


def test_lookup_skips_unreachable_peers_and_still_terminates() -> None:
    network = _Network(200)
    target = kad_id(b"k")
    dead = set(network.nearest(target, 5))
    lookup = Lookup(target, network.peers[:10], local=_peer(0), alpha=3)
    _drive(lookup, network, frozenset(dead))
    assert lookup.done
    assert not dead & set(lookup.closest())
    assert all(lookup.state_of(p) in (State.UNREACHABLE, State.HEARD, None) for p in dead)


def test_lookup_never_asks_more_than_alpha_at_once_or_itself() -> None:
    network = _Network(100)
    lookup = Lookup(kad_id(b"x"), [*network.peers[:30], _peer(0)], local=_peer(0), alpha=4)
    first = lookup.next_queries()
    assert len(first) == 4 and _peer(0) not in first
    assert lookup.next_queries() == []  # all four slots are taken
    lookup.responded(first[0], [])
    assert len(lookup.next_queries()) == 1


def test_lookup_without_peers_is_done_at_once() -> None:
    lookup = Lookup(kad_id(b"x"), [], local=_peer(0))
    assert lookup.done and lookup.next_queries() == []


def test_lookup_stops_when_asked_to() -> None:
    network = _Network(50)
    lookup = Lookup(kad_id(b"x"), network.peers, local=_peer(0))
    lookup.next_queries()
    lookup.stop()
    assert lookup.done and lookup.next_queries() == []


def test_lookup_memory_and_queries_are_bounded_whatever_peers_answer() -> None:
    lookup = Lookup(kad_id(b"x"), [_peer(1)], local=_peer(0), max_candidates=50, max_queries=30)
    counter = 10_000
    while not lookup.done:
        for peer in lookup.next_queries():
            lookup.responded(peer, [_peer(counter + i) for i in range(64)])  # a flood of new peers
            counter += 64
    assert lookup.queries <= 30
    assert sum(1 for p in [_peer(i) for i in range(10_000, counter)] if lookup.state_of(p) is not None) <= 50


# --- peer entries -------------------------------------------------------------------------


def test_peer_ids_must_be_identity_or_sha256_multihashes() -> None:
    assert peer_id_from_bytes(SPEC_PEER) == ID(SPEC_PEER)
    assert peer_id_from_bytes(_peer(1)) == ID(_peer(1))
    for bad in (b"", b"\x12\x20short", b"\x13\x40" + b"x" * 64, b"\x12\x05abcde", b"\x00\x00"):
        with pytest.raises(DHTProtocolError):
            peer_id_from_bytes(bad)


def test_dial_addresses_are_tcp_with_their_scope() -> None:
    assert parse_dial_addr(_ip4(127, 0, 0, 1)).scope is Scope.LOOPBACK
    assert parse_dial_addr(_ip4(10, 1, 2, 3)).scope is Scope.PRIVATE
    assert parse_dial_addr(_ip4(198, 18, 0, 5)).scope is Scope.PRIVATE
    assert parse_dial_addr(_ip4(8, 8, 8, 8)).scope is Scope.PUBLIC
    v6 = b"\x29" + bytes(15) + b"\x01" + b"\x06\x0f\xa1"
    parsed = parse_dial_addr(v6)
    assert parsed is not None and parsed.scope is Scope.LOOPBACK and parsed.host == "::1"
    dns = b"\x36" + encode_varint(11) + b"example.com" + b"\x06\x0f\xa1"
    assert parse_dial_addr(dns).scope is Scope.PUBLIC


def test_undialable_or_foreign_addresses_are_dropped() -> None:
    udp = b"\x04" + bytes((1, 2, 3, 4)) + b"\x91\x02" + b"\x0f\xa1"  # /udp/4001
    assert parse_dial_addr(udp) is None
    assert parse_dial_addr(b"\x04\x7f\x00") is None  # truncated
    assert parse_dial_addr(_ip4(127, 0, 0, 1, port=0)) is None
    base = parse_dial_addr(_ip4(127, 0, 0, 1))
    assert base is not None
    mine = with_p2p(base, ID(_peer(1)))
    assert parse_dial_addr(mine, ID(_peer(1))) == base
    assert parse_dial_addr(mine, ID(_peer(2))) is None  # an address of some other peer
    assert parse_dial_addr(mine + b"\x06\x00\x01") is None  # trailing components


def test_half_of_each_batch_goes_to_peers_vouched_for_by_live_ones() -> None:
    # A trusted peer names one peer; an unknown peer names 60 that sort nearer to the target.
    target = kad_id(b"target")
    honest_referral = max((_peer(i) for i in range(1, 400)), key=lambda p: kad_id(p) ^ target)  # the farthest
    crowd = sorted((_peer(i) for i in range(1000, 1200)), key=lambda p: kad_id(p) ^ target)[:60]
    lookup = Lookup(target, [_peer(900), _peer(901)], local=_peer(0), alpha=4, trusted=[_peer(900)])
    first = lookup.next_queries()
    assert set(first) == {_peer(900), _peer(901)}
    lookup.responded(_peer(901), crowd)  # the unknown peer answers first, with its crowd
    lookup.responded(_peer(900), [honest_referral])
    assert honest_referral in lookup.next_queries()  # asked at once, though 60 others are nearer


@pytest.mark.parametrize("size", [1, 5, 19])  # 19 servers: each names the 18 others
def test_a_lookup_on_a_network_of_fewer_than_k_servers_saw_all_of_them(size: int) -> None:
    network = _Network(size)  # every answer names all the others: fewer than k
    lookup = Lookup(kad_id(b"any key"), network.peers[:1], local=_peer(0), followup=True)
    _drive(lookup, network)
    assert lookup.saw_whole_network
    assert sorted(lookup.closest()) == sorted(network.peers)


@pytest.mark.parametrize("size", [20, 21, 300])
def test_a_lookup_has_not_seen_the_whole_network_when_an_answer_named_k_less_one_peers(size: int) -> None:
    # 20 servers: each names the 19 others, as many as a server of a bigger DHT names when the
    # asker is among its 20 nearest to the key (the asker is left out of the answer).
    network = _Network(size)
    lookup = Lookup(kad_id(b"any key"), network.peers[:1], local=_peer(0), followup=True)
    _drive(lookup, network)
    assert not lookup.saw_whole_network


def test_a_lookup_has_not_seen_the_whole_network_when_an_answer_was_cut_to_what_it_can_ask() -> None:
    network = _Network(5)
    lookup = Lookup(kad_id(b"any key"), network.peers[:1], local=_peer(0), followup=True)
    first = lookup.next_queries()
    lookup.responded(first[0], network.closer(first[0], lookup.target), named=19)  # 15 undialable
    _drive(lookup, network)
    assert lookup.done and not lookup.saw_whole_network


def test_unreachable_peers_are_left_out_of_the_whole_network_and_a_stopped_lookup_saw_nothing_whole() -> None:
    network = _Network(10)
    dead = frozenset(network.peers[5:7])
    lookup = Lookup(kad_id(b"any key"), network.peers[:1], local=_peer(0), followup=True)
    _drive(lookup, network, dead)
    assert lookup.saw_whole_network
    assert sorted(lookup.closest()) == sorted(set(network.peers) - dead)
    stopped = Lookup(kad_id(b"any key"), network.peers, local=_peer(0))
    for peer in stopped.next_queries():
        stopped.responded(peer, [])
    stopped.stop()
    assert not stopped.saw_whole_network


def test_a_lookup_that_forgot_heard_peers_or_ran_out_of_queries_did_not_see_the_whole_network() -> None:
    network = _Network(15)
    forgetful = Lookup(kad_id(b"x"), network.peers[:1], local=_peer(0), followup=True, max_candidates=5)
    _drive(forgetful, network)
    assert not forgetful.saw_whole_network
    short = Lookup(kad_id(b"x"), network.peers[:1], local=_peer(0), followup=True, max_queries=15)
    _drive(short, network)
    assert short.queries == 15 and not short.saw_whole_network
