"""ipfsreg nodes on a loopback DHT: joining, providing, finding providers, peers and records, modes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from ipfsreg.cid import CID
from ipfsreg.node.errors import BlockNotProvided, InvalidRecord, RecordNotFound, RoutingError
from ipfsreg.node.node import Node
from ipfsreg.node.routing.dht import SEND_ANNOUNCED_WAIT, KademliaDHT
from ipfsreg.node.routing.message import PROTOCOL_AMINO, PROTOCOL_LAN, Message, MessageType
from ipfsreg.node.testing import LOOPBACK_ROUTING, Nodes, add_bytes, random_bytes, read_all, wait_until
from ipfsreg.node.yamux import YamuxConn, YamuxStream


async def _chain(nodes: Nodes, count: int, **routing: object) -> list[Node]:
    """``count`` nodes, each bootstrapped from the one before (A <- B <- C ...)."""
    chain = [await nodes.start(routing=replace(LOOPBACK_ROUTING, **routing))]  # type: ignore[arg-type]
    for _ in range(count - 1):
        settings = replace(LOOPBACK_ROUTING, bootstrap=[chain[-1].listen_addrs()[0]], **routing)  # type: ignore[arg-type]
        chain.append(await nodes.start(routing=settings))
    for node in chain:
        await wait_until(lambda node=node: node.routing_stat().dhts[0].routing_table_size > 0)  # type: ignore[misc]
    return chain


async def _providers(node: Node, cid: CID) -> list[str]:
    return [p.peer_id async for p in node.find_providers(cid)]


async def _stored_by(holders: list[Node], cid: CID, provider: Node) -> None:
    """Wait until ``holders`` have handled the provider's ADD_PROVIDER (it gets no answer to wait for)."""
    raw = provider.identity.peer_id.to_bytes()
    for holder in holders:
        await wait_until(lambda h=holder: any(r.peer == raw for r in h.routing.providers.get(cid.multihash)))  # type: ignore[misc]


async def test_provider_announced_by_one_node_is_found_by_a_node_it_never_met(nodes: Nodes) -> None:
    a, b, c = await _chain(nodes, 3)
    cid = add_bytes(a, random_bytes(1000))
    told = await a.routing.provide_now(cid)
    assert told == 2  # the k closest of a 3-node DHT: the two others
    await _stored_by([b], cid, a)
    assert await _providers(c, cid) == [a.peer_id]


async def test_node_provide_is_queued_persisted_and_sent_at_once(nodes: Nodes) -> None:
    a, b, c = await _chain(nodes, 3)
    cid = add_bytes(a, random_bytes(1000, seed=2))
    a.provide([cid])
    await wait_until(lambda: a.routing_stat().provide_queue.provided == 1)
    assert a.routing_stat().provide_queue.queued == 0
    await _stored_by([b], cid, a)
    assert await _providers(c, cid) == [a.peer_id]


async def test_a_cid_without_a_block_can_be_provided(nodes: Nodes) -> None:
    a, b, c = await _chain(nodes, 3)
    digest_cid = CID.hash(b"sha256:... an OCI digest, not a block here")
    assert not a.datastore.blocks.has(digest_cid)
    a.provide([digest_cid])
    await wait_until(lambda: a.routing_stat().provide_queue.provided == 1)
    await _stored_by([b], digest_cid, a)
    assert await _providers(c, digest_cid) == [a.peer_id]


async def test_fetch_finds_the_provider_through_the_dht_and_connects_to_it(nodes: Nodes) -> None:
    a, b, c = await _chain(nodes, 3)
    data = random_bytes(700_000, seed=3)
    cid = add_bytes(a, data)
    await a.routing.provide_now(cid)
    await _stored_by([b], cid, a)
    # C is connected to B only (drop any connection the DHT lookups made to A).
    await c.host.disconnect(a.identity.peer_id)
    await wait_until(lambda: a.peer_id not in [p.peer_id for p in c.peers()])
    assert await read_all(c, cid) == data
    assert a.peer_id in [p.peer_id for p in c.peers()]
    assert b.stats().blocks_sent == 0


async def test_fetch_of_a_cid_nobody_provides_fails_once_the_lookup_ends(nodes: Nodes) -> None:
    _a, _b, c = await _chain(nodes, 3)
    missing = CID.hash(b"nobody has this block")
    with trio.fail_after(10), pytest.raises(BlockNotProvided, match=str(missing)):
        await read_all(c, missing)
    assert c.stats().not_provided == 1


async def test_lookups_without_any_peer_end_at_once(nodes: Nodes) -> None:
    lonely = await nodes.start()
    with trio.fail_after(2):
        assert await _providers(lonely, CID.hash(b"x")) == []
        assert await lonely.find_peer(str(ID(b"\x00\x04abcd"))) == []


async def test_find_providers_stops_at_its_limit(nodes: Nodes) -> None:
    chain = await _chain(nodes, 5)
    cid = CID.hash(b"popular")
    for node in chain[:4]:
        await node.routing.provide_now(cid)
        await _stored_by([chain[4]], cid, node)
    found = [p async for p in chain[4].find_providers(cid, limit=2)]
    assert len(found) == 2
    assert {p.peer_id for p in found} <= {n.peer_id for n in chain[:4]}


async def test_find_peer_returns_the_addresses_of_a_peer_never_connected(nodes: Nodes) -> None:
    a, b, c = await _chain(nodes, 3)
    await c.host.disconnect(a.identity.peer_id)
    addrs = await c.find_peer(a.peer_id)
    assert a.listen_addrs()[0].split("/p2p/")[0] in addrs
    assert b.peer_id  # B told C where A is


async def test_values_put_by_one_node_are_got_by_another(nodes: Nodes) -> None:
    a, _b, c = await _chain(nodes, 3)
    pair = create_new_key_pair()
    key = b"/pk/" + ID.from_pubkey(pair.public_key).to_bytes()
    assert await a.put_value(key, pair.public_key.serialize()) >= 1
    assert await c.get_value(key) == pair.public_key.serialize()
    with pytest.raises(RecordNotFound):
        await c.get_value(b"/pk/" + ID.from_pubkey(create_new_key_pair().public_key).to_bytes())
    with pytest.raises(InvalidRecord):
        await a.put_value(key, create_new_key_pair().public_key.serialize())


async def test_client_mode_does_not_serve_or_announce_the_protocol(nodes: Nodes) -> None:
    server = await nodes.start()
    client = await nodes.start(
        routing=replace(LOOPBACK_ROUTING, mode="client", bootstrap=[server.listen_addrs()[0]])
    )
    await wait_until(lambda: server.network.is_connected(client.identity.peer_id))
    await trio.sleep(0.5)  # identify has run both ways
    assert PROTOCOL_LAN not in server.host.get_peerstore().get_protocols(client.identity.peer_id)
    assert PROTOCOL_LAN in client.host.get_peerstore().get_protocols(server.identity.peer_id)
    assert server.routing_stat().dhts[0].routing_table_size == 0  # a client is never in a table
    assert client.routing_stat().dhts[0].routing_table_size == 1
    # A client still provides and finds.
    cid = CID.hash(b"from a client")
    assert await client.routing.provide_now(cid) == 1
    await _stored_by([server], cid, client)
    assert await _providers(server, cid) == [client.peer_id]


async def test_loopback_nodes_use_the_lan_dht_and_leave_the_public_one_empty(nodes: Nodes) -> None:
    a, b = await _chain(nodes, 2)
    stats = {d.protocol: d for d in b.routing_stat().dhts}
    assert stats[PROTOCOL_LAN].server and stats[PROTOCOL_LAN].routing_table_size == 1
    assert not stats[PROTOCOL_AMINO].server and stats[PROTOCOL_AMINO].routing_table_size == 0
    assert a.peer_id


async def test_requests_to_a_peer_reuse_one_stream_and_replace_a_dead_one(nodes: Nodes) -> None:
    a, b = await _chain(nodes, 2)
    dht = b.routing.dhts[0]
    peer = a.identity.peer_id
    opened = dht.stats.streams_opened
    for _ in range(5):
        await dht.request(peer, Message(MessageType.FIND_NODE, key=b"some key"))
    assert dht.stats.streams_opened - opened <= 1  # at most the first opened one
    stream = dht.streams.take(peer)
    assert stream is not None
    await stream.reset()  # the pooled stream dies (as when the peer closes an idle one)
    dht.streams.give_back(peer, stream)
    answer = await dht.request(peer, Message(MessageType.FIND_NODE, key=b"again"))
    assert answer.type is MessageType.FIND_NODE


async def test_announce_now_queues_add_provider_on_idle_streams_and_provide_does_not_repeat_it(
    nodes: Nodes,
) -> None:
    a, b, c = await _chain(nodes, 3)
    dht = a.routing.dhts[0]
    await wait_until(lambda: len(dht.table) == 2)
    for peer in (b, c):
        await dht.request(peer.identity.peer_id, Message(MessageType.FIND_NODE, key=b"warm"))
    first, second = CID.hash(b"manifest"), CID.hash(b"image directory")
    told = dht.announce_now([first.multihash, second.multihash])  # no await: queued
    assert told == {key.multihash: {b.identity.peer_id, c.identity.peer_id} for key in (first, second)}
    await _stored_by([b, c], first, a)
    await _stored_by([b, c], second, a)
    stored = [peer.routing.dhts[0].stats.providers_stored for peer in (b, c)]
    assert await dht.provide(first.multihash) == 2  # the peers told early count as told
    await trio.sleep(0.2)
    assert [peer.routing.dhts[0].stats.providers_stored for peer in (b, c)] == stored  # not told again
    assert await dht.provide(first.multihash) == 2  # a later provide (a reprovide) tells them again
    await wait_until(lambda: [p.routing.dhts[0].stats.providers_stored for p in (b, c)] != stored)


async def test_announce_now_tells_peers_without_an_idle_stream_on_a_new_one_and_provide_again(
    nodes: Nodes,
) -> None:
    a, b = await _chain(nodes, 2)
    dht = a.routing.dhts[0]
    await wait_until(lambda: len(dht.table) == 1)
    while dht.streams.take(b.identity.peer_id) is not None:
        pass  # no idle stream left to b (as on a node quiet for longer than IDLE_REUSE)
    cid = CID.hash(b"nobody told yet")
    opened = dht.stats.streams_opened
    assert dht.announce_now([cid.multihash]) == {}  # not counted as told: the new stream may fail
    await _stored_by([b], cid, a)
    assert dht.stats.streams_opened - opened == 1
    assert await dht.provide(cid.multihash) == 1  # so provide() tells b again


async def _warm_pair(nodes: Nodes) -> tuple[Node, Node, KademliaDHT, YamuxConn]:
    """A and B on a DHT of two, A's DHT with an idle pooled stream to B, and the Yamux connection under it."""
    a, b = await _chain(nodes, 2)
    dht = a.routing.dhts[0]
    await wait_until(lambda: len(dht.table) == 1)
    await dht.request(b.identity.peer_id, Message(MessageType.FIND_NODE, key=b"warm"))
    stream = dht.streams.take(b.identity.peer_id)
    assert stream is not None
    dht.streams.give_back(b.identity.peer_id, stream)
    muxed = stream.muxed_stream
    assert isinstance(muxed, YamuxStream)
    return a, b, dht, muxed.conn


async def test_send_announced_writes_what_announce_now_queued_from_the_calling_task(nodes: Nodes) -> None:
    a, b, dht, conn = await _warm_pair(nodes)
    cid = CID.hash(b"answered after it left")
    assert dht.announce_now([cid.multihash]) == {cid.multihash: {b.identity.peer_id}}
    assert conn.has_queued  # queued for the flusher, not written yet
    await a.send_announced()
    assert not conn.has_queued  # written by the caller before it goes on
    await _stored_by([b], cid, a)


async def test_send_announced_waits_only_so_long_for_a_connection_whose_write_stalls(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b, dht, conn = await _warm_pair(nodes)
    stalled = trio.Event()

    async def stalls() -> bool:
        stalled.set()
        await trio.sleep_forever()  # a peer that stopped reading: Yamux gives up after WRITE_TIMEOUT
        return False

    monkeypatch.setattr(conn, "flush", stalls)
    dht.announce_now([CID.hash(b"to a stalled peer").multihash])
    with trio.fail_after(SEND_ANNOUNCED_WAIT * 10):  # the stalled write itself never ends
        await a.send_announced()
    assert stalled.is_set()


async def test_what_the_flushers_sent_is_not_kept_for_send_announced(nodes: Nodes) -> None:
    a, b, dht, conn = await _warm_pair(nodes)
    first, second = CID.hash(b"nobody awaits this"), CID.hash(b"nor this")
    dht.announce_now([first.multihash])
    await _stored_by([b], first, a)  # the flusher sent it
    dht.announce_now([second.multihash])
    assert dht._unsent == {conn: {second.multihash}}


async def test_a_peer_whose_early_announcement_was_not_sent_is_told_again_by_provide(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, dht, conn = await _warm_pair(nodes)
    cid = CID.hash(b"lost on the way")
    assert dht.announce_now([cid.multihash]) == {cid.multihash: {b.identity.peer_id}}
    # Lost before any write (no await since it was queued: the flusher has not run), as a
    # connection that fails loses what it had queued.
    conn._pending.clear()

    async def failed() -> bool:
        return False

    monkeypatch.setattr(conn, "flush", failed)
    await dht.send_announced()
    monkeypatch.undo()
    stored = b.routing.dhts[0].stats.providers_stored
    assert await dht.provide(cid.multihash) == 1
    await wait_until(lambda: b.routing.dhts[0].stats.providers_stored == stored + 1)
    await _stored_by([b], cid, a)


async def test_a_committed_cid_reaches_the_nearest_peers_before_the_provide_queue_runs(nodes: Nodes) -> None:
    a, b = await _chain(nodes, 2)
    dht = a.routing.dhts[0]
    await wait_until(lambda: len(dht.table) == 1)
    await dht.request(b.identity.peer_id, Message(MessageType.FIND_NODE, key=b"warm"))
    cid = CID.hash(b"pushed just now")

    async def held_back(cid: CID) -> int:
        await trio.sleep_forever()  # the provide queue's own announcement never goes out
        return 0

    a.routing.queue.provide_key = held_back
    a.provide([cid])
    await _stored_by([b], cid, a)


async def test_on_a_dht_of_fewer_than_k_servers_one_lookup_stands_for_the_next_provides(nodes: Nodes) -> None:
    a, *others = await _chain(nodes, 4)
    dht = a.routing.dhts[0]
    first, second = CID.hash(b"the first push"), CID.hash(b"the next push")
    assert await dht.provide(first.multihash) == 3
    assert dht.stats.lookups_spared == 0
    assert await dht.provide(second.multihash) == 3  # every server, without walking them again
    assert dht.stats.lookups_spared == 1
    await _stored_by(others, second, a)


async def test_a_server_that_joins_a_small_dht_makes_the_next_provide_look_again(nodes: Nodes) -> None:
    a, b, c = await _chain(nodes, 3)
    dht = a.routing.dhts[0]
    assert await dht.provide(CID.hash(b"before").multihash) == 2
    d = await nodes.start(routing=replace(LOOPBACK_ROUTING, bootstrap=[c.listen_addrs()[0]]))
    await wait_until(lambda: d.identity.peer_id.to_bytes() in dht.table)
    after = CID.hash(b"after")
    assert await dht.provide(after.multihash) == 3
    assert dht.stats.lookups_spared == 0  # it looked: D was not among what the first lookup saw
    assert await dht.provide(CID.hash(b"later").multihash) == 3
    assert dht.stats.lookups_spared == 1  # and that lookup, which saw D, stands for the next
    await _stored_by([b, c, d], after, a)


async def test_what_a_lookup_saw_of_a_small_dht_stands_only_so_long(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ipfsreg.node.routing.dht as dht_module

    a, _b, _c = await _chain(nodes, 3)
    dht = a.routing.dhts[0]
    monkeypatch.setattr(dht_module, "WHOLE_NETWORK_FOR", 0.0)
    assert await dht.provide(CID.hash(b"one").multihash) == 2
    assert await dht.provide(CID.hash(b"two").multihash) == 2
    assert dht.stats.lookups_spared == 0
    monkeypatch.undo()
    assert await dht.provide(CID.hash(b"three").multihash) == 2
    assert dht.stats.lookups_spared == 1


async def test_ipns_records_go_through_the_dht_checked_by_the_ipns_validator(nodes: Nodes) -> None:
    import time

    from ipfsreg.ipns.record import IpnsName, create_record, decode_record
    from ipfsreg.ipns.validator import IpnsValidator

    ipns = {"ipns": IpnsValidator()}
    a = await nodes.start(validators=ipns, routing=LOOPBACK_ROUTING)
    b = await nodes.start(validators=ipns, routing=replace(LOOPBACK_ROUTING, bootstrap=[a.listen_addrs()[0]]))
    c = await nodes.start(validators=ipns, routing=replace(LOOPBACK_ROUTING, bootstrap=[b.listen_addrs()[0]]))
    await wait_until(lambda: c.routing_stat().dhts[0].routing_table_size >= 1)
    pair = create_new_key_pair()
    key = IpnsName.from_public_key(pair.public_key).routing_key()
    eol = time.time_ns() + 3600 * 10**9
    first = create_record(pair.private_key, "/ipfs/bafkqaaa", 1, eol)
    second = create_record(pair.private_key, "/ipfs/bafkqaab", 2, eol)
    assert await a.put_value(key, first) >= 1
    assert decode_record(await c.get_value(key)).sequence == 1
    assert await a.put_value(key, second) >= 1
    assert decode_record(await c.get_value(key)).sequence == 2
    forged = create_record(create_new_key_pair().private_key, "/ipfs/bafkqaac", 3, eol)
    with pytest.raises(InvalidRecord):
        await a.put_value(key, forged)  # signed by another key than the name's
    with pytest.raises(InvalidRecord):
        await b.put_value(key, first)  # lower sequence than the stored one
    assert decode_record(await c.get_value(key)).sequence == 2


async def test_a_new_stream_to_a_peer_known_to_serve_the_dht_is_negotiated_with_its_first_request(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await _chain(nodes, 2)
    dht = b.routing.dhts[0]
    peer = a.identity.peer_id
    await wait_until(lambda: dht.protocol in b.host.get_peerstore().get_protocols(peer))
    while dht.streams.take(peer) is not None:
        pass  # no idle stream left: the next request opens one

    async def negotiated(*args: object) -> None:
        raise AssertionError("py-libp2p's negotiation (two round trips before the request) was used")

    monkeypatch.setattr(b.host, "new_stream", negotiated)
    opened = dht.stats.streams_opened
    for key in (b"first on a new stream", b"second, on the same one"):
        answer = await dht.request(peer, Message(MessageType.FIND_NODE, key=key))
        assert answer.type is MessageType.FIND_NODE
    assert dht.stats.streams_opened - opened == 1


async def test_a_lazily_negotiated_stream_the_peer_refuses_fails_the_request(nodes: Nodes) -> None:
    a, b = await _chain(nodes, 2)
    dht = b.routing.dhts[0]
    peer = a.identity.peer_id
    await wait_until(lambda: dht.protocol in b.host.get_peerstore().get_protocols(peer))
    while dht.streams.take(peer) is not None:
        pass
    a.host.remove_stream_handler(TProtocol(dht.protocol))  # identify told b it serves the DHT: no more
    with pytest.raises(RoutingError, match="refused"):
        await dht.request(peer, Message(MessageType.FIND_NODE, key=b"anyone?"))
    assert not dht.is_banned(peer)
