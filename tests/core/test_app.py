"""The composed server: registry pushes reach bitswap peers that were already waiting for the blocks
(the registry tells the node about every block it commits), a miss is answered at once, and the
[import] config shapes pushed blobs."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from libp2p.peer.id import ID

from ipfsreg.node.bitswap.message import Message, WantEntry, WantType
from ipfsreg.node.testing import running_nodes
from ipfsreg.unixfs.importer import import_bytes


async def test_a_peer_waiting_for_a_blob_gets_it_once_it_is_pushed(serve_node: Any, tmp_path: Path) -> None:
    blob = random.Random(5).randbytes(700_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _blocks, result = import_bytes(blob)
    async with serve_node("a") as a, running_nodes(tmp_path / "peer") as nodes:
        # A peer whose want stays open until the block comes (as Kubo's do: no DONT_HAVE asked for).
        waiting = await nodes.start()
        messages = trio.open_memory_channel[Message](100)

        async def record(peer: ID, message: Message) -> None:
            await messages[0].send(message)

        waiting.network.on_message = record
        server = ID.from_base58(await waiting.connect(a.p2p_addrs[0]))
        await waiting.network.send(
            server, Message(wantlist=[WantEntry(result.cid, 1, False, WantType.BLOCK)])
        )
        await trio.sleep(0.5)  # a holds the want now, and not the block
        async with httpx.AsyncClient(base_url=a.registry_urls[0]) as registry_a:
            pushed = await registry_a.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
            assert pushed.status_code == 201
        with trio.fail_after(10):
            while True:
                message = await messages[1].receive()
                if message.blocks:
                    break
        assert [block.cid() for block in message.blocks] == [result.cid]


async def test_a_blob_nobody_has_is_a_fast_miss_and_found_once_pushed(serve_node: Any) -> None:
    blob = random.Random(6).randbytes(300_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    _blocks, result = import_bytes(blob)
    slow = {"node.fetch_timeout": 300.0, "node.want_timeout": 120.0}
    async with (
        serve_node("a") as a,
        serve_node("b", **slow) as b,
        httpx.AsyncClient(base_url=b.api_url, timeout=60) as api_b,
    ):
        assert (await api_b.post("/api/v0/connect", params={"arg": a.p2p_addrs[0]})).status_code == 200
        with trio.fail_after(30):  # not the 300 s fetch timeout: a said DONT_HAVE, nobody provides it
            miss = await api_b.get("/api/v0/cat", params={"arg": str(result.cid)})
        assert miss.status_code == 404
        assert "not available" in miss.json()["error"]
        async with httpx.AsyncClient(base_url=a.registry_urls[0]) as registry_a:
            pushed = await registry_a.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
            assert pushed.status_code == 201
        hit = await api_b.get("/api/v0/cat", params={"arg": str(result.cid)})
        assert hit.status_code == 200
        assert hit.content == blob


async def test_import_profile_in_the_config_sets_the_cids_of_pushed_blobs(serve_node: Any) -> None:
    # IPIP-499's unixfs-v1-2025 fixture: 1 MiB + 1 byte of Kubo's deterministic ChaCha20 stream.
    key = hashlib.sha256(b"chunk-v1-seed").digest()
    blob = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(1048577))
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    async with (
        serve_node("v1", **{"import.profile": "unixfs-v1-2025"}) as server,
        httpx.AsyncClient(base_url=server.registry_urls[0], timeout=60) as registry,
    ):
        pushed = await registry.post(f"/v2/x/blobs/uploads/?digest={digest}", content=blob)
        assert pushed.status_code == 201, pushed.text
        head = await registry.head(f"/v2/x/blobs/{digest}")
    expected = "/ipfs/bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64"
    assert pushed.headers["X-Ipfs-Path"] == head.headers["X-Ipfs-Path"] == expected
