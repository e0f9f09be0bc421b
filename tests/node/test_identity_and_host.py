"""Identity persistence, peer addresses, the peering keeper, and what connections leave behind."""

from __future__ import annotations

import contextlib
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from multiaddr import Multiaddr

from ipfsreg.node.errors import NodeError
from ipfsreg.node.host import expand_unspecified, parse_peer_addr, with_peer_id
from ipfsreg.node.identity import IDENTITY_FILE, load_identity, load_or_create_identity
from ipfsreg.node.testing import Nodes, wait_until


def test_identity_is_created_once_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    assert load_identity(tmp_path) is None
    first = load_or_create_identity(tmp_path)
    second = load_or_create_identity(tmp_path)
    assert first.peer_id == second.peer_id
    assert first.peer_id_str.startswith("12D3KooW")  # Ed25519 keys give identity-multihash peer IDs
    mode = stat.S_IMODE((tmp_path / IDENTITY_FILE).stat().st_mode)
    assert mode == 0o600


def test_identity_is_created_in_a_missing_data_dir(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path / "new" / "dir")
    assert load_identity(tmp_path / "new" / "dir") == identity


def test_corrupt_identity_file_raises_node_error(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_bytes(b"not a key")
    with pytest.raises(NodeError, match="not a libp2p private key"):
        load_or_create_identity(tmp_path)


def test_peer_addr_needs_a_p2p_component() -> None:
    info = parse_peer_addr("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    assert str(info.peer_id) == "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    with pytest.raises(NodeError):
        parse_peer_addr("/ip4/127.0.0.1/tcp/4001")


def test_with_peer_id_appends_once() -> None:
    assert with_peer_id("/ip4/1.2.3.4/tcp/1", "X") == "/ip4/1.2.3.4/tcp/1/p2p/X"
    assert with_peer_id("/ip4/1.2.3.4/tcp/1/p2p/X", "X") == "/ip4/1.2.3.4/tcp/1/p2p/X"


async def test_node_listen_addrs_before_running_are_the_configured_ones(tmp_path: Path) -> None:
    from ipfsreg.blockstore import Datastore
    from ipfsreg.node.node import Node
    from ipfsreg.node.settings import NodeSettings

    identity = load_or_create_identity(tmp_path)
    with Datastore.open(tmp_path / "data") as datastore:
        node = Node(datastore, NodeSettings(p2p_listen=["/ip4/127.0.0.1/tcp/4001"]), identity)
        assert node.listen_addrs() == [f"/ip4/127.0.0.1/tcp/4001/p2p/{identity.peer_id_str}"]
        with pytest.raises(NodeError, match="not running"):
            await node.connect(f"/ip4/127.0.0.1/tcp/4002/p2p/{identity.peer_id_str}")


async def test_configured_peering_reconnects_after_the_connection_drops(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start(peers=[a.listen_addrs()[0]])
    await wait_until(lambda: b.stats().connected_peers == 1)
    await b.network.disconnect(a.identity.peer_id)
    await wait_until(lambda: b.stats().connected_peers == 0)
    await wait_until(lambda: b.stats().connected_peers == 1)
    assert [p.peer_id for p in b.peers()] == [a.peer_id]


async def test_keep_connected_adds_a_peering_at_runtime(nodes: Nodes) -> None:
    a = await nodes.start()
    b = await nodes.start()
    b.keep_connected(a.listen_addrs()[0])
    await wait_until(lambda: b.stats().connected_peers == 1)


def test_bad_configured_peer_is_refused_at_startup(tmp_path: Path) -> None:
    from ipfsreg.blockstore import Datastore
    from ipfsreg.node.identity import Identity
    from ipfsreg.node.node import Node
    from ipfsreg.node.settings import NodeSettings

    with Datastore.open(tmp_path) as datastore, pytest.raises(NodeError, match="does not name a peer"):
        Node(datastore, NodeSettings(peers=["/ip4/127.0.0.1/tcp/4001"]), Identity.generate())


def test_listening_on_every_interface_is_reported_as_dialable_addresses() -> None:
    expanded = expand_unspecified("/ip4/0.0.0.0/tcp/4001")
    assert expanded[0] == "/ip4/127.0.0.1/tcp/4001"
    assert all(a.endswith("/tcp/4001") and "0.0.0.0" not in a for a in expanded)
    assert expand_unspecified("/ip4/127.0.0.1/tcp/4001") == ["/ip4/127.0.0.1/tcp/4001"]


async def test_a_closed_inbound_connection_frees_its_slot_for_the_next_one(nodes: Nodes) -> None:
    # py-libp2p caps inbound connections (300 by default) with a limiter whose slot the handler
    # of each connection holds; a slot must come back when its connection closes, or a node
    # refuses every peer once that many have come and gone. A cap of 2 shows it quickly.
    a = await nodes.start()
    swarm: Any = a.host.get_network()
    swarm._inbound_limiter.total_tokens = 2
    b = await nodes.start()
    for _ in range(5):
        await b.connect(a.listen_addrs()[0])
        await wait_until(lambda: a.stats().connected_peers == 1)
        await b.network.disconnect(a.identity.peer_id)
        await wait_until(lambda: a.stats().connected_peers == 0)
    await wait_until(lambda: swarm._inbound_limiter.borrowed_tokens == 0)


async def test_a_stopped_node_no_longer_accepts_connections(tmp_path: Path) -> None:
    import trio

    from ipfsreg.blockstore import Datastore
    from ipfsreg.node.identity import Identity
    from ipfsreg.node.node import Node
    from ipfsreg.node.testing import LOOPBACK_SETTINGS

    with Datastore.open(tmp_path / "data") as datastore:
        node = Node(datastore, LOOPBACK_SETTINGS, Identity.generate())
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            port = int(node.listen_addrs()[0].split("/tcp/")[1].split("/")[0])
            (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()  # listening while it runs
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_peers_coming_and_going_leave_no_tasks_or_sockets_behind(nodes: Nodes, tmp_path: Path) -> None:
    import os

    import trio

    from ipfsreg.blockstore import Datastore
    from ipfsreg.node.identity import Identity
    from ipfsreg.node.node import Node
    from ipfsreg.node.testing import LOOPBACK_SETTINGS, add_bytes, random_bytes, read_all

    a = await nodes.start()
    cid = add_bytes(a, random_bytes(600_000))

    async def visit(n: int) -> None:
        with Datastore.open(tmp_path / f"visitor{n}") as datastore:
            visitor = Node(datastore, LOOPBACK_SETTINGS, Identity.generate())
            async with trio.open_nursery() as nursery:
                await nursery.start(visitor.run)
                await visitor.connect(a.listen_addrs()[0])
                assert len(await read_all(visitor, cid)) == 600_000
                nursery.cancel_scope.cancel()
        await wait_until(lambda: a.stats().connected_peers == 0)

    def footprint() -> tuple[int, int]:
        return trio.lowlevel.current_statistics().tasks_living, len(os.listdir("/proc/self/fd"))

    await visit(0)  # first use starts lazily created tasks and files (thread cache, LevelDB)
    before = footprint()
    for n in range(1, 6):
        await visit(n)
    # A leak of one task or socket per visitor would show as five more; the first visit's own
    # connection may still be winding down when ``before`` is taken, so fewer is fine.
    await wait_until(lambda: all(now <= then for now, then in zip(footprint(), before, strict=True)))


ONCE = TProtocol("/ipfsreg-test/once/1.0.0")


class _StreamEvents(INotifee):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[tuple[str, INetStream]] = []

    def of(self, protocol: TProtocol) -> list[str]:
        """The events of the streams that negotiated ``protocol`` (known once negotiated)."""
        return [event for event, stream in self.events if stream.get_protocol() == protocol]

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        self.events.append(("opened", stream))
        if self.fail:
            raise RuntimeError("a broken notifee")

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        self.events.append(("closed", stream))
        if self.fail:
            raise RuntimeError("a broken notifee")

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


class _Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_stream_events_reach_every_notifee_inline_even_past_a_failing_one(nodes: Nodes) -> None:
    # Kubo opens a stream per bitswap message: a task per notifee per stream event added up.
    server = await nodes.start()
    client = await nodes.start()
    broken, recording = _StreamEvents(fail=True), _StreamEvents()
    server.host.get_network().register_notifee(broken)
    server.host.get_network().register_notifee(recording)
    server.host.set_stream_handler(ONCE, _read_and_close)
    await client.connect(server.listen_addrs()[0])
    spawns = _Spawns()
    trio.lowlevel.add_instrument(spawns)
    try:
        stream = await client.host.new_stream(
            server.identity.peer_id, [TProtocol("/ipfsreg-test/once/1.0.0")]
        )
        await stream.write(b"hello")
        await stream.close()
        await wait_until(lambda: recording.of(ONCE) == ["opened", "closed"])
    finally:
        trio.lowlevel.remove_instrument(spawns)
    assert broken.of(ONCE) == ["opened", "closed"]
    assert not [name for name in spawns.names if "_notify" in name]


async def _read_and_close(stream: INetStream) -> None:
    with contextlib.suppress(StreamEOF):
        while await stream.read():
            pass
    await stream.close()


EXPLODES = TProtocol("/ipfsreg-test/explodes/1.0.0")


async def test_a_stream_handler_that_raises_resets_that_stream_only_and_the_node_keeps_serving(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    # py-libp2p runs protocol handlers in the connection's task, inside the swarm's service: an
    # error one lets out used to end the connection and then the swarm.
    server = await nodes.start()
    client = await nodes.start()

    async def explode(stream: INetStream) -> None:
        await stream.read(5)
        raise RuntimeError("a handler bug")

    server.host.set_stream_handler(EXPLODES, explode)
    server.host.set_stream_handler(ONCE, _read_and_close)
    await client.connect(server.listen_addrs()[0])
    caplog.set_level(logging.WARNING, logger="ipfsreg.node.host")
    for _ in range(3):
        stream = await client.host.new_stream(server.identity.peer_id, [EXPLODES])
        await stream.write(b"hello")
        with pytest.raises(Exception):  # noqa: B017 - reset: the exact type is py-libp2p's
            while await stream.read():
                pass
    # The same connection still carries streams, and the node answers a new peer.
    stream = await client.host.new_stream(server.identity.peer_id, [ONCE])
    await stream.write(b"hello")
    await stream.close()
    other = await nodes.start()
    await other.connect(server.listen_addrs()[0])
    assert server.stats().connected_peers == 2
    warnings = [r for r in caplog.records if "a handler bug" in r.getMessage()]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)
    assert str(client.identity.peer_id) in warnings[0].getMessage()
    assert str(EXPLODES) in warnings[0].getMessage()
