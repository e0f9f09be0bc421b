"""Private networks between in-process ipfsreg nodes: same key exchanges blocks, anything else is refused."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import trio

from ipfsreg.cid import encode_varint
from ipfsreg.node.errors import NodeError
from ipfsreg.node.identity import Identity
from ipfsreg.node.pnet import PnetHandshakeError, SwarmKeyError, fingerprint, format_swarm_key
from ipfsreg.node.pnet_conn import load_swarm_key
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all

PSK = bytes(range(32))


async def test_nodes_with_the_same_swarm_key_exchange_blocks(nodes: Nodes) -> None:
    a = await nodes.start(psk=PSK)
    b = await nodes.start(psk=PSK)
    data = random_bytes(1_500_000, seed=3)
    cid = add_bytes(a, data)
    await b.connect(a.listen_addrs()[0])
    assert await read_all(b, cid) == data
    assert [p.peer_id for p in a.peers()] == [b.peer_id]


async def test_a_private_node_refuses_a_node_without_the_key_naming_the_cause(nodes: Nodes) -> None:
    private = await nodes.start(psk=PSK)
    public = await nodes.start()
    with pytest.raises(PnetHandshakeError) as dialled:
        await private.connect(public.listen_addrs()[0])
    message = str(dialled.value)
    assert "private network key mismatch" in message
    assert fingerprint(PSK).hex() in message
    assert "no swarm key" in message
    with pytest.raises(NodeError, match="needs its swarm key"):
        await public.connect(private.listen_addrs()[0])
    assert private.peers() == [] and public.peers() == []


async def test_a_dialled_peer_answering_with_a_huge_message_length_fails_as_a_negotiation_error(
    nodes: Nodes,
) -> None:
    # What a node outside a private network reads from one inside it: ciphertext, here a varint
    # claiming a 1 TiB multistream message. It must fail the dial as a refused negotiation (with the
    # swarm key hint), not as an attempt to receive that many bytes.
    public = await nodes.start()

    async def answer_with_garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(encode_varint(1 << 40) + os.urandom(64))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer_with_garbage, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        peer = Identity.generate().peer_id
        with pytest.raises(NodeError, match="needs its swarm key"):
            await public.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
        nursery.cancel_scope.cancel()


async def test_nodes_with_different_swarm_keys_cannot_connect(nodes: Nodes) -> None:
    a = await nodes.start(psk=PSK)
    b = await nodes.start(psk=os.urandom(32))
    for dialler, listener in ((a, b), (b, a)):
        with pytest.raises(PnetHandshakeError, match=r"private network key mismatch.*(differs|different)"):
            await dialler.connect(listener.listen_addrs()[0])
    assert a.peers() == [] and b.peers() == []


async def test_a_refused_peer_does_not_stop_the_private_node(nodes: Nodes) -> None:
    private = await nodes.start(psk=PSK)
    stranger = await nodes.start(psk=os.urandom(32))
    friend = await nodes.start(psk=PSK)
    with pytest.raises(PnetHandshakeError):
        await stranger.connect(private.listen_addrs()[0])
    cid = add_bytes(private, b"still serving")
    await friend.connect(private.listen_addrs()[0])
    assert await read_all(friend, cid) == b"still serving"


def test_swarm_key_is_read_from_the_data_dir_when_present(tmp_path: Path) -> None:
    assert load_swarm_key(tmp_path) is None
    (tmp_path / "swarm.key").write_bytes(format_swarm_key(PSK))
    assert load_swarm_key(tmp_path) == PSK


def test_a_configured_swarm_key_file_must_exist_and_be_valid(tmp_path: Path) -> None:
    with pytest.raises(SwarmKeyError, match="does not exist"):
        load_swarm_key(tmp_path, str(tmp_path / "missing.key"))
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"/key/swarm/psk/1.0.0/\n/base16/\nnothex\n")
    with pytest.raises(SwarmKeyError, match=r"bad\.key: the /base16/ swarm key"):
        load_swarm_key(tmp_path, str(bad))
    good = tmp_path / "fleet.key"
    good.write_bytes(format_swarm_key(PSK))
    assert load_swarm_key(tmp_path, str(good)) == PSK
