"""Trustless gateway CAR responses over HTTP: dag-scope, entity-bytes, paths through dirs and HAMTs, dups."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from gateway_support import (
    Fixture,
    MemorySource,
    dfs,
    file_blocks_for_range,
    gateway_app,
    parse_car_verified,
    serve_app,
)
from quart_trio import QuartTrio

from ipfsreg.cid import CID
from ipfsreg.gateway import register_gateway
from ipfsreg.unixfs import dagpb
from ipfsreg.unixfs.data import decode as decode_unixfs
from ipfsreg.unixfs.hamt import parse_shard
from ipfsreg.unixfs.importer import import_bytes

CAR = "application/vnd.ipld.car"


async def get_car(client: httpx.AsyncClient, path: str, **params: str) -> tuple[httpx.Response, list[CID]]:
    resp = await client.get(path, params=params, headers={"Accept": CAR})
    assert resp.status_code == 200, resp.text
    roots, blocks = parse_car_verified(resp.content)
    assert len(roots) == 1
    return resp, [block.cid for block in blocks]


async def test_car_dag_scope_all_of_a_directory_is_every_block_depth_first(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp, cids = await get_car(client, f"/ipfs/{tree.root}")
    assert cids == dfs(tree.source, tree.root)
    assert resp.headers["Content-Type"] == f"{CAR}; version=1; order=dfs; dups=n"
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{tree.root}.car"'
    assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{tree.root}"
    assert resp.headers["X-Ipfs-Roots"] == str(tree.root)
    assert resp.headers["Cache-Control"] == "public, max-age=29030400, immutable"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Etag"].startswith(f'"{tree.root}.car.')
    assert "Content-Length" not in resp.headers  # streamed
    assert resp.headers["Content-Location"].endswith("?format=car")


async def test_car_roots_header_is_the_requested_cid_and_format_param_selects_car(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.root}/sub/big.bin", params={"format": "car"})
    assert resp.status_code == 200
    roots, _ = parse_car_verified(resp.content)
    assert roots == (tree.root,)
    assert "Content-Location" not in resp.headers


async def test_car_path_then_dag_scope_block_is_the_path_blocks_and_the_terminal_block(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp, cids = await get_car(client, f"/ipfs/{tree.root}/sub/big.bin", **{"dag-scope": "block"})
    assert cids == [tree.root, tree.sub, tree.big]
    assert resp.headers["X-Ipfs-Roots"] == f"{tree.root},{tree.sub},{tree.big}"
    assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{tree.root}/sub/big.bin"


async def test_car_dag_scope_entity_of_a_file_is_the_whole_file_dag(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    _, cids = await get_car(client, f"/ipfs/{tree.root}/sub/big.bin", **{"dag-scope": "entity"})
    assert cids == [tree.root, tree.sub, *dfs(tree.source, tree.big)]
    assert len(cids) == 2 + 14


async def test_car_dag_scope_entity_of_a_directory_is_its_node_only(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    _, cids = await get_car(client, f"/ipfs/{tree.root}/sub", **{"dag-scope": "entity"})
    assert cids == [tree.root, tree.sub]
    # entity-bytes cannot apply to a directory: the same as dag-scope=entity
    _, cids = await get_car(client, f"/ipfs/{tree.root}/sub", **{"entity-bytes": "0:10"})
    assert cids == [tree.root, tree.sub]


def hamt_shards(tree: Fixture) -> list[CID]:
    out = []
    stack = [tree.hamt]
    while stack:
        cid = stack.pop()
        out.append(cid)
        node = dagpb.decode(tree.source.blocks[cid.multihash])
        shard = parse_shard(node, decode_unixfs(node.data or b""))
        stack.extend(reversed([link.cid for link in shard.links if link.name is None]))
    return out


async def test_car_dag_scope_entity_of_a_hamt_directory_is_all_its_shards(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    shards = hamt_shards(tree)
    assert len(shards) > 1
    _, cids = await get_car(client, f"/ipfs/{tree.hamt}", **{"dag-scope": "entity"})
    assert cids == shards


async def test_car_path_through_a_hamt_carries_the_shards_visited(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    shards = set(hamt_shards(tree))
    for name, data in list(tree.hamt_files.items())[::7]:
        resp, cids = await get_car(client, f"/ipfs/{tree.root}/hamt/{name}", **{"dag-scope": "entity"})
        terminal = CID.parse(resp.headers["X-Ipfs-Roots"].split(",")[-1])
        assert resp.headers["X-Ipfs-Roots"].split(",")[:2] == [str(tree.root), str(tree.hamt)]
        assert cids[0] == tree.root and cids[1] == tree.hamt
        assert cids[-1] == terminal
        visited = cids[1:-1]
        assert set(visited) <= shards
        # every shard on the way links the next one, and the last one links the entry
        for parent, child in zip(visited, [*visited[1:], terminal], strict=True):
            assert child in [link.cid for link in dagpb.decode(tree.source.blocks[parent.multihash]).links]
        raw = await client.get(f"/ipfs/{terminal}", params={"format": "raw"})
        assert decode_unixfs(dagpb.decode(raw.content).data or b"").data == data


@pytest.mark.parametrize(
    ("entity_bytes", "lo", "hi"),
    [
        ("0:*", 0, 10240),
        ("0:0", 0, 1),
        ("1500:2047", 1500, 2048),
        ("1023:1024", 1023, 1025),
        ("-1024:*", 9216, 10240),
        ("-1:*", 10239, 10240),
        ("4096:-4097", 4096, 6144),
        ("-20000:100", 0, 101),
        ("9000:99999", 9000, 10240),
    ],
)
async def test_car_entity_bytes_returns_only_the_blocks_of_the_range(
    client: httpx.AsyncClient, tree: Fixture, entity_bytes: str, lo: int, hi: int
) -> None:
    _, cids = await get_car(client, f"/ipfs/{tree.big}", **{"entity-bytes": entity_bytes})
    assert cids == file_blocks_for_range(tree.source, tree.big, lo, hi)
    # the range's bytes can be rebuilt from the returned blocks alone
    blocks = {cid: tree.source.blocks[cid.multihash] for cid in cids}
    leaves = [cid for cid in cids if not dagpb.decode(blocks[cid]).links]
    data = b"".join(decode_unixfs(dagpb.decode(blocks[cid]).data or b"").data or b"" for cid in leaves)
    start = (lo // 1024) * 1024
    assert data[lo - start : hi - start] == tree.big_data[lo:hi]


@pytest.mark.parametrize("entity_bytes", ["5000:-6000", "0:-20000", "-20000:-15000"])
async def test_car_entity_bytes_of_an_empty_range_is_the_root_block_alone(
    client: httpx.AsyncClient, tree: Fixture, entity_bytes: str
) -> None:
    _, cids = await get_car(client, f"/ipfs/{tree.big}", **{"entity-bytes": entity_bytes})
    assert cids == [tree.big]


@pytest.mark.parametrize("entity_bytes", ["10240:*", "20000:30000", "10240:-1"])
async def test_car_entity_bytes_starting_past_the_end_of_the_file_returns_400(
    client: httpx.AsyncClient, tree: Fixture, entity_bytes: str
) -> None:
    for method in ("GET", "HEAD"):
        resp = await client.request(
            method, f"/ipfs/{tree.big}", params={"entity-bytes": entity_bytes, "format": "car"}
        )
        assert resp.status_code == 400
    resp = await client.get(f"/ipfs/{tree.big}", params={"entity-bytes": entity_bytes, "format": "car"})
    assert "starts past the end of the 10240 byte file" in resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")


async def test_car_entity_bytes_of_an_empty_file_from_zero_is_its_root_block() -> None:
    source = MemorySource()
    blocks, result = import_bytes(b"")
    source.add(blocks)
    async with serve_app(gateway_app(source)) as client:
        whole = await client.get(f"/ipfs/{result.cid}", params={"format": "car", "entity-bytes": "0:*"})
        past = await client.get(f"/ipfs/{result.cid}", params={"format": "car", "entity-bytes": "1:*"})
    assert whole.status_code == 200
    assert [b.cid for b in parse_car_verified(whole.content)[1]] == [result.cid]
    assert past.status_code == 400


async def test_car_entity_bytes_with_to_before_from_returns_400(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.big}", params={"entity-bytes": "-5:-10", "format": "car"})
    assert resp.status_code == 400


async def test_car_entity_bytes_changes_the_etag(client: httpx.AsyncClient, tree: Fixture) -> None:
    one, _ = await get_car(client, f"/ipfs/{tree.big}", **{"entity-bytes": "0:100"})
    two, _ = await get_car(client, f"/ipfs/{tree.big}", **{"entity-bytes": "0:200"})
    three, _ = await get_car(client, f"/ipfs/{tree.big}", **{"dag-scope": "entity"})
    assert len({one.headers["Etag"], two.headers["Etag"], three.headers["Etag"]}) == 3


async def test_car_dups_y_repeats_identical_blocks_and_dups_n_sends_them_once(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.zeros}", headers={"Accept": f"{CAR}; version=1; order=dfs; dups=y"})
    assert resp.headers["Content-Type"] == f"{CAR}; version=1; order=dfs; dups=y"
    _, blocks = parse_car_verified(resp.content)
    assert [b.cid for b in blocks] == dfs(tree.source, tree.zeros, dups=True)
    assert len(blocks) == 11
    resp = await client.get(f"/ipfs/{tree.zeros}", headers={"Accept": f"{CAR}; dups=n"})
    _, blocks = parse_car_verified(resp.content)
    assert [b.cid for b in blocks] == dfs(tree.source, tree.zeros)
    assert len(blocks) == 3
    resp = await client.get(f"/ipfs/{tree.zeros}", params={"format": "car", "car-dups": "y"})
    assert resp.headers["Content-Type"].endswith("dups=y")
    assert len(parse_car_verified(resp.content)[1]) == 11


async def test_car_head_has_headers_and_no_body(client: httpx.AsyncClient, tree: Fixture) -> None:
    resp = await client.head(f"/ipfs/{tree.root}", headers={"Accept": CAR})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith(CAR)
    assert resp.content == b""
    assert "Content-Length" not in resp.headers  # the GET streams without a length


async def test_car_of_a_file_with_kubo_default_chunks_streams_every_block_verified() -> None:
    source = MemorySource()
    data = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(20_000))  # 640000 bytes
    blocks, result = import_bytes(data)
    source.add(blocks)
    async with serve_app(gateway_app(source)) as client:
        resp = await client.get(f"/ipfs/{result.cid}", params={"format": "car", "dag-scope": "entity"})
        assert resp.status_code == 200
        _, car_blocks = parse_car_verified(resp.content)
        ranged = await client.get(f"/ipfs/{result.cid}", params={"format": "car", "entity-bytes": "-1:*"})
        _, last = parse_car_verified(ranged.content)
    assert [b.cid for b in car_blocks] == dfs(source, result.cid)
    assert len(car_blocks) == 4  # root + 3 leaves of up to 256 KiB
    leaves = car_blocks[1:]
    content = b"".join(decode_unixfs(dagpb.decode(b.data).data or b"").data or b"" for b in leaves)
    assert content == data
    assert [b.cid for b in last] == [result.cid, car_blocks[-1].cid]


async def test_car_probe_identity_cid_has_no_blocks(client: httpx.AsyncClient) -> None:
    resp = await client.get("/ipfs/bafkqaaa", params={"format": "car"})
    assert resp.status_code == 200
    roots, blocks = parse_car_verified(resp.content)
    assert [str(root) for root in roots] == ["bafkqaaa"]
    assert blocks == []


async def test_car_missing_child_block_truncates_the_stream(client: httpx.AsyncClient, tree: Fixture) -> None:
    blocks = tree.source.blocks
    leaves = [cid for cid in dfs(tree.source, tree.big) if not dagpb.decode(blocks[cid.multihash]).links]
    del blocks[leaves[-1].multihash]
    # the headers (200) are sent before the walk reaches the missing leaf: the body is cut short
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("GET", f"/ipfs/{tree.big}", headers={"Accept": CAR}) as resp:
            assert resp.status_code == 200
            async for _ in resp.aiter_bytes():
                pass


class EnteredSource:
    """Like the node's bitswap source: must be entered (it owns a nursery) before prefetch works."""

    def __init__(self, inner: MemorySource, opened: list[int]) -> None:
        self.inner = inner
        self.opened = opened
        self.closed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> EnteredSource:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._nursery.start_soon(trio.sleep_forever)
        self.opened[0] += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self._nursery = None
        self.opened[0] -= 1
        try:
            await self._stack.__aexit__(None, None, None)
        finally:
            self.closed.set()

    async def get(self, cid: CID) -> bytes:
        return await self.inner.get(cid)

    def prefetch(self, cids: Sequence[CID]) -> None:
        if self._nursery is None:
            raise RuntimeError("prefetch outside `async with`")


async def test_car_streams_from_a_source_that_must_be_entered_and_closes_it(tree: Fixture) -> None:
    opened = [0]
    app = QuartTrio(__name__)
    register_gateway(app, lambda: EnteredSource(tree.source, opened))
    async with serve_app(app) as client:
        _, cids = await get_car(client, f"/ipfs/{tree.root}")
        assert cids == dfs(tree.source, tree.root)
        listing = await client.get(f"/ipfs/{tree.hamt}/", headers={"Accept": "application/json"})
        assert listing.status_code == 200
        assert opened == [0]


async def test_client_leaving_mid_stream_cancels_the_producer_and_closes_its_source() -> None:
    source = MemorySource()
    blocks, result = import_bytes(bytes(range(256)) * 20_000)  # 5 MB: more than the socket buffers
    source.add(blocks)
    opened = [0]
    made: list[EnteredSource] = []

    def factory() -> EnteredSource:
        made.append(EnteredSource(source, opened))
        return made[-1]

    app = QuartTrio(__name__)
    register_gateway(app, factory)
    async with serve_app(app) as client:
        async with client.stream(
            "GET", f"/ipfs/{result.cid}", params={"format": "car", "car-dups": "y"}
        ) as resp:
            async for _ in resp.aiter_raw():
                break
        with trio.fail_after(30):  # a hang guard, not a timing threshold
            for entered in made:
                await entered.closed.wait()
        assert len(made) == 2  # one to resolve the path, one for the producer
        assert opened == [0]
