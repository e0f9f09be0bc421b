"""DHT requests answered in the connection's read loop: the same answers as the stream's task gives,
and everything the read loop cannot finish (partial, garbage, oversized, PUT_VALUE) left to the task."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from ipfsreg.cid import CID, encode_varint
from ipfsreg.node.node import Node
from ipfsreg.node.routing.dht import KademliaDHT
from ipfsreg.node.routing.message import (
    PROTOCOL_LAN,
    FrameReader,
    Message,
    MessageType,
    Record,
    decode_message,
    encode_frame,
)
from ipfsreg.node.testing import LOOPBACK_ROUTING, Nodes, wait_until
from ipfsreg.node.yamux import YamuxConn


async def _joined(nodes: Nodes, server: Node) -> Node:
    """A node that joined the DHT through ``server``."""
    node = await nodes.start(routing=replace(LOOPBACK_ROUTING, bootstrap=[server.listen_addrs()[0]]))
    await wait_until(lambda: node.routing_stat().dhts[0].routing_table_size > 0)
    return node


async def _pair(nodes: Nodes) -> tuple[Node, Node]:
    """A DHT server and a node that joined through it."""
    server = await nodes.start(routing=LOOPBACK_ROUTING)
    return server, await _joined(nodes, server)


def _dht(node: Node) -> KademliaDHT:
    return node.routing.dhts[0]


def _parked(server: Node, client: Node, stream: INetStream) -> bool:
    """The server's task of ``client``'s ``stream`` waits for a request, the read loop answering."""
    stream_id = stream.muxed_stream.stream_id  # type: ignore[attr-defined]
    for conn in server.host.get_network().connections.get(client.identity.peer_id, []):
        muxed = conn.muxed_conn
        if isinstance(muxed, YamuxConn):
            theirs = muxed._streams.get(stream_id)
            if theirs is not None and theirs.on_data is not None:
                return True
    return False


async def _open(server: Node, client: Node) -> INetStream:
    stream = await client.host.new_stream(server.identity.peer_id, [TProtocol(PROTOCOL_LAN)])
    await wait_until(lambda: _parked(server, client, stream))
    return stream


async def _answers(stream: INetStream, count: int) -> list[Message]:
    reader = FrameReader()
    found: list[Message] = []
    with trio.fail_after(5):
        while len(found) < count:
            chunk = await stream.read(65536)
            assert chunk, "the stream ended before the answers"
            reader.feed(chunk)
            found += [decode_message(body) for body in reader.frames()]
    return found


async def _stocked(server: Node, client: Node) -> list[Message]:
    """The server holds a provider record and a value; one request of each kind the read loop answers."""
    dht = _dht(server)
    key = CID.hash(b"provided content").multihash
    assert dht.providers.add(
        key, client.identity.peer_id.to_bytes(), []
    )  # connected: its addresses are known
    pair = create_new_key_pair()
    record_key = b"/pk/" + ID.from_pubkey(pair.public_key).to_bytes()
    assert dht.records.put(record_key, pair.public_key.serialize())
    return [
        Message(MessageType.FIND_NODE, key=b"some key"),
        Message(MessageType.GET_PROVIDERS, key=key),
        Message(MessageType.GET_VALUE, key=record_key),
        Message(MessageType.PING),
    ]


async def test_read_loop_answers_find_node_get_providers_and_get_value_as_the_task_does(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = await _pair(nodes)
    dht = _dht(server)
    requests = await _stocked(server, client)

    before = dht.stats.answered_in_read_loop
    with monkeypatch.context() as patch:
        patch.setattr(dht, "_answer_buffered", lambda *args: None)  # the task answers everything
        stream = await _open(server, client)
        by_task = []
        for request in requests:
            await stream.write(encode_frame(request))
            by_task += await _answers(stream, 1)
    assert dht.stats.answered_in_read_loop == before

    stream = await _open(server, client)  # its task parks unpatched
    before = dht.stats.answered_in_read_loop
    by_read_loop = []
    for request in requests:
        await stream.write(encode_frame(request))
        by_read_loop += await _answers(stream, 1)
    assert dht.stats.answered_in_read_loop - before == len(requests)
    assert by_read_loop == by_task
    assert [a.type for a in by_read_loop] == [r.type for r in requests]
    assert by_read_loop[1].provider_peers and by_read_loop[2].record is not None


async def test_requests_written_together_are_answered_in_order_from_the_read_loop(nodes: Nodes) -> None:
    server, client = await _pair(nodes)
    dht = _dht(server)
    requests = await _stocked(server, client)
    stream = await _open(server, client)
    before = dht.stats.answered_in_read_loop
    await stream.write(b"".join(encode_frame(r) for r in requests))
    answers = await _answers(stream, len(requests))
    assert [a.type for a in answers] == [r.type for r in requests]
    assert dht.stats.answered_in_read_loop - before == len(requests)


async def test_add_provider_is_stored_from_the_read_loop(nodes: Nodes) -> None:
    server, client = await _pair(nodes)
    dht = _dht(server)
    key = CID.hash(b"announced").multihash
    me = _dht(client)._self_entry()
    stream = await _open(server, client)
    before = dht.stats.answered_in_read_loop
    await stream.write(encode_frame(Message(MessageType.ADD_PROVIDER, key=key, provider_peers=[me])))
    await wait_until(lambda: bool(dht.providers.get(key)))
    assert dht.stats.answered_in_read_loop - before == 1


async def test_a_request_split_across_writes_is_answered_by_the_task(nodes: Nodes) -> None:
    server, client = await _pair(nodes)
    dht = _dht(server)
    frame = encode_frame(Message(MessageType.FIND_NODE, key=b"split in two"))
    stream = await _open(server, client)
    before = dht.stats.answered_in_read_loop
    await stream.write(frame[:5])
    await wait_until(lambda: not _parked(server, client, stream))  # the task took the first part
    await stream.write(frame[5:])
    [answer] = await _answers(stream, 1)
    assert answer.type is MessageType.FIND_NODE
    assert dht.stats.answered_in_read_loop == before


async def test_put_value_is_left_to_the_task_and_stored(nodes: Nodes) -> None:
    server, client = await _pair(nodes)
    dht = _dht(server)
    pair = create_new_key_pair()
    key = b"/pk/" + ID.from_pubkey(pair.public_key).to_bytes()
    record = Record(key, pair.public_key.serialize())
    stream = await _open(server, client)
    before = dht.stats.answered_in_read_loop
    await stream.write(encode_frame(Message(MessageType.PUT_VALUE, key=key, record=record)))
    [answer] = await _answers(stream, 1)
    assert answer.type is MessageType.PUT_VALUE and answer.record == record
    assert dht.records.get(key) is not None
    assert dht.stats.answered_in_read_loop == before


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(encode_varint(6) + b"\xff\xff\xff\xff\xff\xff", id="undecodable"),
        pytest.param(encode_varint(64 * 1024 * 1024) + b"\x08\x04", id="oversized"),
        pytest.param(b"\x80" * 10, id="length-prefix-too-long"),
    ],
)
async def test_garbage_on_a_waiting_stream_drops_the_peer_and_the_server_goes_on(
    nodes: Nodes, garbage: bytes
) -> None:
    server, client = await _pair(nodes)
    dht = _dht(server)
    stream = await _open(server, client)
    before = dht.stats.answered_in_read_loop
    violations = dht.stats.violations
    await stream.write(encode_frame(Message(MessageType.FIND_NODE, key=b"fine")) + garbage)
    await wait_until(lambda: dht.stats.violations > violations)
    assert dht.is_banned(client.identity.peer_id)
    assert dht.stats.answered_in_read_loop - before == 1  # the good request before the garbage
    other = await _joined(nodes, server)
    answer = await _dht(other).request(server.identity.peer_id, Message(MessageType.FIND_NODE, key=b"x"))
    assert answer.type is MessageType.FIND_NODE
