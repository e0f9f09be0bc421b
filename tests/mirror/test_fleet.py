"""Peers first, with whole in-process servers as mirrors of a fake upstream, connected over loopback:
a blob one node has is served to the others from its blocks; nodes missing a blob at once fetch it
upstream about once; lying, stalling and vanishing peers never cost a client its right bytes."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fake_upstream import FakeUpstream, running_upstream
from fleet_support import Mirror, mirrors, sha256, wait_for

from ipfsreg.mirror.claims import fetcher_for
from ipfsreg.node.bitswap.message import Block
from ipfsreg.node.blobs.protocol import Answer, Fetching, Have, Leaf, Request
from ipfsreg.node.errors import BlockFetchTimeout
from ipfsreg.node.node import Node
from ipfsreg.node.pnet import format_swarm_key
from ipfsreg.node.testing import running_nodes
from ipfsreg.registry.fleet import leaf_bytes
from ipfsreg.unixfs.importer import dag_pb_cid, file_node_block, import_bytes

LAYER_A = bytes(range(256)) * 4000  # 1 024 000 bytes: four UnixFS leaves
LAYER_B = b"second layer " * 30_000


def mirror_of(up: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"mirror.upstream": [{"registry": "docker.io", "url": up.url}], **extra}


async def test_second_node_gets_every_layer_from_the_first_and_none_from_the_upstream(
    serve_node: Any, tmp_path: Path
) -> None:
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A, LAYER_B])
        async with mirrors(serve_node, 2, **mirror_of(up)) as (first, second):
            await first.pull("library/app", "v1")
            layer_gets = {d: up.count("GET", f"/blobs/{d}") for d in (sha256(LAYER_A), sha256(LAYER_B))}
            assert layer_gets == {sha256(LAYER_A): 1, sha256(LAYER_B): 1}
            blobs = await second.pull("library/app", "v1")
            assert blobs[sha256(LAYER_A)] == LAYER_A
            # The upstream was asked for the tag (HEAD), never for the manifest or a layer again.
            assert {d: up.count("GET", f"/blobs/{d}") for d in layer_gets} == layer_gets
            assert up.count("GET", "/manifests/") == 1
            stat = await second.stat()
            assert stat["bytes"]["peer"] >= len(LAYER_A) + len(LAYER_B)
            assert stat["bytes"]["upstream"] == 0
            assert stat["namespaces"]["docker.io"]["misses"] == 3  # config and two layers
            metrics = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in (await second.client.get("/metrics")).text.splitlines()
                if line.startswith("ipfsreg_mirror_")
            }
            assert metrics['ipfsreg_mirror_bytes_total{source="peer"}'] == stat["bytes"]["peer"]
            assert metrics['ipfsreg_mirror_requests_total{namespace="docker.io",result="miss"}'] == 3
            # Pulled again: local now.
            await second.pull("library/app", "v1")
            assert (await second.stat())["namespaces"]["docker.io"]["hits"] == 3


async def test_nodes_missing_one_layer_at_once_fetch_it_from_the_upstream_once(serve_node: Any) -> None:
    big = bytes(range(251)) * 24_000  # 6 MB, 23 leaves
    async with running_upstream(FakeUpstream(chunk_delay=0.01)) as up:
        _, manifest = up.add_image("library/big", "v1", [big])
        digest = sha256(big)
        async with mirrors(serve_node, 3, **mirror_of(up, **{"mirror.claim_settle": 0.3})) as nodes:
            results: dict[int, bytes] = {}

            async def pull(index: int, node: Mirror) -> None:
                resp = await node.client.get(f"/v2/library/big/blobs/{digest}", params={"ns": "docker.io"})
                assert resp.status_code == 200, resp.text
                results[index] = resp.content

            async with trio.open_nursery() as nursery:
                for index, node in enumerate(nodes):
                    nursery.start_soon(pull, index, node)
            assert all(data == big for data in results.values()) and len(results) == 3
            # About once: every byte of the layer left the upstream once.
            assert up.blob_bytes_sent[digest] == len(big)
            assert up.count("GET", f"/blobs/{digest}") == 1
            stats = [await node.stat() for node in nodes]
            assert sum(s["bytes"]["upstream"] for s in stats) == len(big)
            assert sum(s["coordinated"] for s in stats) == 2
            assert manifest["layers"][0]["digest"] == digest


async def test_when_a_layers_fetcher_stops_mid_blob_one_follower_fetches_the_rest_the_other_follows_it(
    serve_node: Any,
) -> None:
    big = bytes(range(251)) * 24_000  # 6 MB, 92 upstream chunks of 64 KiB
    digest = sha256(big)
    async with running_upstream(FakeUpstream(chunk_delay=0.01)) as up:
        up.add_image("library/big", "v1", [big])
        stops = [trio.Event() for _ in range(3)]

        async def run(index: int, task_status: trio.TaskStatus[Mirror]) -> None:
            config = mirror_of(up, **{"mirror.claim_settle": 0.3})
            async with (
                serve_node(f"node{index}", **config) as info,
                httpx.AsyncClient(base_url=info.registry_urls[0], timeout=60) as client,
                httpx.AsyncClient(base_url=info.api_url, timeout=60) as control,
            ):
                task_status.started(Mirror(info, client, control))
                await stops[index].wait()

        async with trio.open_nursery() as servers:
            nodes: list[Mirror] = [await servers.start(run, index) for index in range(3)]
            for index, node in enumerate(nodes):
                for earlier in nodes[:index]:
                    await node.connect(earlier)
            for node in nodes:
                await wait_for(lambda node=node: _has_peers(node, 2))
            ids = [str(node.info.peer_id) for node in nodes]
            fetcher = ids.index(fetcher_for(digest, ids))
            results: dict[int, bytes] = {}

            async def pull(index: int) -> None:
                try:
                    resp = await nodes[index].client.get(
                        f"/v2/library/big/blobs/{digest}", params={"ns": "docker.io"}
                    )
                except httpx.HTTPError:
                    assert index == fetcher  # its server stopped under it
                    return
                if resp.status_code == 200:
                    results[index] = resp.content

            async with trio.open_nursery() as pulls:
                for index in range(3):
                    pulls.start_soon(pull, index)
                with trio.fail_after(30):
                    while up.blob_bytes_sent.get(digest, 0) < len(big) // 3:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                stops[fetcher].set()  # the fetcher stops a third of the way in
            survivors = set(range(3)) - {fetcher}
            assert {index: results.get(index) == big for index in survivors} == dict.fromkeys(survivors, True)
            # The fetcher's GET, then one follower's for the rest (was: one per follower).
            assert up.count("GET", f"/blobs/{digest}") == 2
            assert up.blob_bytes_sent[digest] < 2 * len(big)
            for index in survivors:
                stops[index].set()


async def _has_peers(node: Mirror, count: int) -> bool:
    return len(await node.peers()) == count


# --- peers that misbehave: a bare node answers the blob protocol as the test tells it -----------


@asynccontextmanager
async def fake_peer(tmp_path: Path, answer: Any, name: str = "fake-peer") -> AsyncIterator[Node]:
    """A bare ipfsreg node whose blob-protocol answers come from ``answer(peer, request)``."""
    async with running_nodes(tmp_path / name) as nodes:
        node = await nodes.start()
        node.blobs.serve(answer)
        yield node


def answering(*answers: Answer) -> Any:
    async def provider(peer: str, request: Request) -> AsyncGenerator[Answer, None]:
        for item in answers:
            yield item

    return provider


async def test_a_peer_whose_dag_is_not_the_blob_costs_one_failed_pull_and_gets_banned(
    serve_node: Any, tmp_path: Path
) -> None:
    wrong = bytes(reversed(LAYER_A))  # same size, other bytes
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A])
        liar_blocks = import_bytes(wrong)
        async with (
            mirrors(serve_node, 1, **mirror_of(up)) as (node,),
            fake_peer(tmp_path, answering(Have(liar_blocks[1].cid, len(wrong)))) as liar,
        ):
            liar.datastore.blocks.put_many((b.cid, b.data) for b in liar_blocks[0])
            await node.control.post("/api/v0/connect", params={"arg": liar.listen_addrs()[0]})
            url = f"/v2/library/app/blobs/{sha256(LAYER_A)}"
            try:
                resp = await node.client.get(url, params={"ns": "docker.io"})
                assert resp.content != LAYER_A or False, "wrong bytes reached the client whole"
            except httpx.RemoteProtocolError:
                pass  # cut short before its last piece: the client never has the whole wrong blob
            assert up.count("GET", f"/blobs/{sha256(LAYER_A)}") == 0
            # Nothing wrong stored; the liar is dropped: the next pull comes from the upstream.
            again = await node.client.get(url, params={"ns": "docker.io"})
            assert again.content == LAYER_A
            assert liar.peer_id not in await node.peers()
            assert (await node.stat())["peer_failures"] == 0  # its lie showed only at the digest check


async def test_a_peer_sending_blocks_that_are_not_their_cids_is_dropped_and_the_upstream_serves(
    serve_node: Any, tmp_path: Path
) -> None:
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A])
        blocks, result = import_bytes(LAYER_A)
        overrides = mirror_of(up, **{"mirror.peer_stall_timeout": 1.0})
        async with (
            mirrors(serve_node, 1, **overrides) as (node,),
            fake_peer(tmp_path, answering(Have(result.cid, len(LAYER_A)))) as liar,
        ):
            liar.datastore.blocks.put_many((b.cid, b.data) for b in blocks)
            real = liar.server._next_message

            def corrupting(peer: Any, ledger: Any) -> Any:
                message = real(peer, ledger)
                if message is not None:
                    message.blocks[:] = [Block(b.prefix, b.data[:-1] + b"!") for b in message.blocks]
                return message

            liar.server._next_message = corrupting  # type: ignore[method-assign]
            await node.control.post("/api/v0/connect", params={"arg": liar.listen_addrs()[0]})
            resp = await node.client.get(
                f"/v2/library/app/blobs/{sha256(LAYER_A)}", params={"ns": "docker.io"}
            )
            assert resp.content == LAYER_A
            assert liar.peer_id not in await node.peers()
            stat = await node.stat()
            assert stat["peer_failures"] == 1
            assert stat["bytes"]["upstream"] == len(LAYER_A)


async def test_a_peer_that_announces_a_fetch_and_stalls_is_left_for_the_upstream(
    serve_node: Any, tmp_path: Path
) -> None:
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [LAYER_A])

        async def stalling(peer: str, request: Request) -> AsyncGenerator[Answer, None]:
            yield Fetching(len(LAYER_A), 0, ())
            await trio.sleep_forever()

        overrides = mirror_of(up, **{"mirror.peer_stall_timeout": 1.0})
        async with mirrors(serve_node, 1, **overrides) as (node,), fake_peer(tmp_path, stalling) as slow:
            await node.control.post("/api/v0/connect", params={"arg": slow.listen_addrs()[0]})
            with trio.fail_after(10):
                resp = await node.client.get(
                    f"/v2/library/app/blobs/{sha256(LAYER_A)}", params={"ns": "docker.io"}
                )
            assert resp.content == LAYER_A
            assert (await node.stat())["peer_failures"] == 1


async def test_a_peer_holding_half_the_blob_serves_that_half_and_the_upstream_the_rest(
    serve_node: Any, tmp_path: Path
) -> None:
    layer = random.Random(7).randbytes(1_024_000)  # four distinct leaves
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [layer])
        blocks, result = import_bytes(layer)
        leaves = [b for b in blocks if b.cid != result.cid]
        overrides = mirror_of(up, **{"mirror.peer_stall_timeout": 1.0, "node.want_timeout": 0.5})
        async with (
            mirrors(serve_node, 1, **overrides) as (node,),
            fake_peer(tmp_path, answering(Have(result.cid, len(layer)))) as half,
        ):
            root = next(b for b in blocks if b.cid == result.cid)
            half.datastore.blocks.put_many((b.cid, b.data) for b in [root, *leaves[:2]])
            await node.control.post("/api/v0/connect", params={"arg": half.listen_addrs()[0]})
            resp = await node.client.get(f"/v2/library/app/blobs/{sha256(layer)}", params={"ns": "docker.io"})
            assert resp.content == layer
            served = 2 * 262144
            assert up.blob_bytes_sent[sha256(layer)] == len(layer) - served  # a Range request
            stat = await node.stat()
            assert stat["bytes"] == {"local": 0, "peer": served, "upstream": len(layer) - served}


async def test_private_namespaces_content_is_never_offered_to_peers(serve_node: Any, tmp_path: Path) -> None:
    secret = random.Random(9).randbytes(600_000)
    async with running_upstream() as private, running_upstream() as public:
        private.add_image("team/app", "v1", [secret])
        public.add_image("library/base", "v1", [LAYER_B])
        overrides = {
            "mirror.upstream": [
                {"registry": "private.example", "url": private.url, "private": True},
                {"registry": "docker.io", "url": public.url},
            ],
            "node.fetch_timeout": 1.0,
        }
        async with mirrors(serve_node, 2, **overrides) as (first, second):
            await first.pull("team/app", "v1", ns="private.example")
            await first.pull("library/base", "v1", ns="docker.io")
            # The second node gets the public layer from the first, the private one from its upstream.
            await second.pull("library/base", "v1", ns="docker.io")
            await second.pull("team/app", "v1", ns="private.example")
            assert private.count("GET", f"/blobs/{sha256(secret)}") == 2
            assert public.count("GET", f"/blobs/{sha256(LAYER_B)}") == 1
            # Not over bitswap either: a peer asking the first node for the private layer's blocks by
            # CID is answered as if it had none.
            async with running_nodes(tmp_path / "outsider") as nodes:
                outsider = await nodes.start(fetch_timeout=1.0)
                await outsider.connect(first.p2p)
                with pytest.raises(BlockFetchTimeout):
                    await outsider.client.fetch(import_bytes(secret)[1].cid)
                assert await outsider.client.fetch(import_bytes(LAYER_B)[1].cid)  # public blocks are served
            # Under a public namespace the private blob is linked only if that upstream has it.
            leak = await first.client.get(
                f"/v2/library/base/blobs/{sha256(secret)}", params={"ns": "docker.io"}
            )
            assert leak.status_code == 404


async def test_inside_a_private_swarm_private_content_comes_from_peers(
    serve_node: Any, tmp_path: Path
) -> None:
    secret = random.Random(10).randbytes(600_000)
    key = tmp_path / "swarm.key"
    key.write_bytes(format_swarm_key(bytes(range(32))))
    async with running_upstream() as private:
        private.add_image("team/app", "v1", [secret])
        overrides = {
            "mirror.upstream": [{"registry": "private.example", "url": private.url, "private": True}],
            "node.swarm_key": str(key),
        }
        async with mirrors(serve_node, 2, **overrides) as (first, second):
            await first.pull("team/app", "v1", ns="private.example")
            await second.pull("team/app", "v1", ns="private.example")
            assert private.count("GET", f"/blobs/{sha256(secret)}") == 1
            assert (await second.stat())["bytes"]["peer"] >= len(secret)


async def test_after_a_peer_fails_mid_blob_an_in_flight_peer_continues_at_the_same_byte(
    serve_node: Any, tmp_path: Path
) -> None:
    layer = random.Random(8).randbytes(1_300_000)  # five leaves
    async with running_upstream() as up:
        up.add_image("library/app", "v1", [layer])
        blocks, result = import_bytes(layer)
        leaves = [b for b in blocks if b.cid != result.cid]
        sizes = [len(leaf_bytes(b.cid, b.data)) for b in leaves]
        # The first peer's DAG: the blob's first three leaves, then a fourth nobody has.
        lost = dag_pb_cid(b"a leaf nobody has", 0)
        links = [(b.cid, b.cid.to_bytes(), len(b.data), size) for b, size in zip(leaves, sizes, strict=True)]
        links[3] = (lost, lost.to_bytes(), links[3][2], links[3][3])
        broken_root = file_node_block(links, len(layer))
        broken = dag_pb_cid(broken_root, 0)

        async def fetching(peer: str, request: Request) -> AsyncGenerator[Answer, None]:
            announced = tuple(Leaf(b.cid, size) for b, size in zip(leaves, sizes, strict=True))
            yield Fetching(len(layer), 0, announced)  # every leaf stored, the root still to come
            await trio.sleep_forever()

        overrides = mirror_of(up, **{"mirror.peer_stall_timeout": 1.0, "node.want_timeout": 0.5})
        async with (
            mirrors(serve_node, 1, **overrides) as (node,),
            fake_peer(tmp_path, answering(Have(broken, len(layer))), "broken") as first,
            fake_peer(tmp_path, fetching, "in-flight") as in_flight,
        ):
            first.datastore.blocks.put_many([(broken, broken_root), *((b.cid, b.data) for b in leaves[:3])])
            in_flight.datastore.blocks.put_many((b.cid, b.data) for b in leaves)
            for peer in (first, in_flight):
                await node.control.post("/api/v0/connect", params={"arg": peer.listen_addrs()[0]})
            resp = await node.client.get(f"/v2/library/app/blobs/{sha256(layer)}", params={"ns": "docker.io"})
            assert resp.content == layer
            assert up.count("GET", f"/blobs/{sha256(layer)}") == 0  # the fleet had every byte
            assert (await node.stat())["peer_failures"] == 1  # the first peer, at the lost leaf
