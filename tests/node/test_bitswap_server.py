"""The bitswap server's decision engine without sockets: which wants it answers first."""

from __future__ import annotations

from pathlib import Path

from libp2p.peer.id import ID

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID, RAW
from ipfsreg.node.bitswap.message import Message, WantEntry
from ipfsreg.node.bitswap.server import BitswapServer
from ipfsreg.node.settings import NodeSettings

PEER = ID(b"\x00\x04test")


class _Network:
    """What the engine asks of the network when building a message (sending is not exercised)."""

    def supports_have(self, peer: ID) -> bool:
        return True


def test_new_wants_of_a_message_are_answered_highest_priority_first(tmp_path: Path) -> None:
    # Kubo numbers a reader's wants in the order it needs them but sends them in any order.
    with Datastore.open(tmp_path) as store:
        cids = []
        for n in range(6):
            data = f"block {n}".encode()
            cid = CID.hash(data, codec=RAW, version=1)
            store.blocks.put(cid, data)
            cids.append(cid)
        settings = NodeSettings(target_message_size=1)  # one block per message
        server = BitswapServer(store.blocks, _Network(), settings)  # type: ignore[arg-type]
        priorities = [3, 6, 1, 5, 2, 4]
        wants = [WantEntry(cid, priority=p) for cid, p in zip(cids, priorities, strict=True)]
        server.receive_wantlist(PEER, Message(wantlist=wants))
        ledger = server._ledgers[PEER]
        answered: list[CID] = []
        while (message := server._next_message(PEER, ledger)) is not None:
            answered.extend(block.cid() for block in message.blocks)
        by_priority = [cid for _, cid in sorted(zip(priorities, cids, strict=True), reverse=True)]
        assert answered == by_priority


def test_a_cancel_and_a_want_in_one_message_apply_in_wire_order(tmp_path: Path) -> None:
    with Datastore.open(tmp_path) as store:
        data = b"wanted again"
        cid = CID.hash(data, codec=RAW, version=1)
        store.blocks.put(cid, data)
        server = BitswapServer(store.blocks, _Network(), NodeSettings())  # type: ignore[arg-type]
        server.receive_wantlist(
            PEER, Message(wantlist=[WantEntry(cid, cancel=True), WantEntry(cid, priority=7)])
        )
        assert server.wantlist_of(PEER) == [WantEntry(cid, priority=7)]
        server.receive_wantlist(
            PEER, Message(wantlist=[WantEntry(cid, priority=7), WantEntry(cid, cancel=True)])
        )
        assert server.wantlist_of(PEER) == []
