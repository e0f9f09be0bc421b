"""Trustless gateway over HTTP: raw blocks, plain files and listings for browsers, negotiation and errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from gateway_support import Fixture, serve_app
from quart_trio import QuartTrio

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.gateway import GatewaySettings, register_gateway
from ipfsreg.registry.app import create_app
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.unixfs.exporter import LocalBlockSource

RAW = "application/vnd.ipld.raw"


async def test_raw_block_by_accept_header_verifies_against_its_cid(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.big}", headers={"Accept": RAW})
    assert resp.status_code == 200
    assert tree.big.verify(resp.content)
    assert resp.headers["Content-Type"] == RAW
    assert resp.headers["Content-Length"] == str(len(resp.content))
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{tree.big}.bin"'
    assert resp.headers["Etag"] == f'"{tree.big}.raw"'
    assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{tree.big}"
    assert resp.headers["X-Ipfs-Roots"] == str(tree.big)
    assert resp.headers["Cache-Control"] == "public, max-age=29030400, immutable"
    assert resp.headers["Content-Location"] == f"/ipfs/{tree.big}?format=raw"


async def test_raw_block_by_format_param_and_cidv1_of_the_same_block(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    v1 = tree.a_txt.to_v1()
    resp = await client.get(f"/ipfs/{v1}", params={"format": "raw"})
    assert resp.status_code == 200
    assert v1.verify(resp.content) and tree.a_txt.verify(resp.content)
    assert "Content-Location" not in resp.headers


async def test_raw_block_at_the_end_of_a_path_is_the_terminal_block(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.root}/sub/big.bin", params={"format": "raw"})
    assert resp.status_code == 200
    assert tree.big.verify(resp.content)
    assert resp.headers["X-Ipfs-Roots"] == f"{tree.root},{tree.sub},{tree.big}"


async def test_raw_head_has_length_and_no_body(client: httpx.AsyncClient, tree: Fixture) -> None:
    get = await client.get(f"/ipfs/{tree.root}", params={"format": "raw"})
    head = await client.head(f"/ipfs/{tree.root}", params={"format": "raw"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == str(len(get.content))


async def test_raw_probe_identity_cid_is_empty(client: httpx.AsyncClient) -> None:
    resp = await client.get("/ipfs/bafkqaaa", headers={"Accept": RAW})
    assert resp.status_code == 200
    assert resp.content == b""


async def test_if_none_match_with_the_etag_returns_304(client: httpx.AsyncClient, tree: Fixture) -> None:
    first = await client.get(f"/ipfs/{tree.a_txt}", params={"format": "raw"})
    again = await client.get(
        f"/ipfs/{tree.a_txt}", params={"format": "raw"}, headers={"If-None-Match": first.headers["Etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""


async def test_format_param_takes_precedence_over_accept(client: httpx.AsyncClient, tree: Fixture) -> None:
    resp = await client.get(
        f"/ipfs/{tree.a_txt}", params={"format": "raw"}, headers={"Accept": "application/vnd.ipld.car"}
    )
    assert resp.headers["Content-Type"] == RAW


async def test_browser_gets_file_bytes_with_a_guessed_content_type(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.root}/a.txt")
    assert resp.status_code == 200
    assert resp.content == b"hello gateway\n"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["Etag"] == f'"{tree.a_txt}"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    big = await client.get(f"/ipfs/{tree.root}/sub/big.bin", headers={"Accept": "*/*"})
    assert big.content == tree.big_data
    assert big.headers["Content-Length"] == str(len(tree.big_data))


@pytest.mark.parametrize(
    ("header", "lo", "hi"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=1000-3000", 1000, 3001),
        ("bytes=10000-", 10000, 10240),
        ("bytes=-100", 10140, 10240),
    ],
)
async def test_browser_file_range_returns_206_with_content_range(
    client: httpx.AsyncClient, tree: Fixture, header: str, lo: int, hi: int
) -> None:
    resp = await client.get(f"/ipfs/{tree.big}", headers={"Range": header})
    assert resp.status_code == 206
    assert resp.content == tree.big_data[lo:hi]
    assert resp.headers["Content-Range"] == f"bytes {lo}-{hi - 1}/10240"


async def test_browser_file_range_past_the_end_returns_416(client: httpx.AsyncClient, tree: Fixture) -> None:
    resp = await client.get(f"/ipfs/{tree.big}", headers={"Range": "bytes=10240-"})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == "bytes */10240"


async def test_browser_directory_without_slash_redirects_and_lists_entries(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.root}/sub")
    assert resp.status_code == 301
    assert resp.headers["Location"] == f"/ipfs/{tree.root}/sub/"
    resp = await client.get(f"/ipfs/{tree.root}/sub/")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert f'href="/ipfs/{tree.root}/sub/big.bin"' in resp.text
    assert "zeros.bin" in resp.text


async def test_browser_directory_with_index_html_serves_it(client: httpx.AsyncClient, tree: Fixture) -> None:
    resp = await client.get(f"/ipfs/{tree.site}/")
    assert resp.status_code == 200
    assert resp.text == "<html><body>site index</body></html>"
    assert resp.headers["Content-Type"].startswith("text/html")


async def test_json_listing_of_a_hamt_directory_has_every_entry(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    resp = await client.get(f"/ipfs/{tree.root}/hamt", headers={"Accept": "application/json"})
    assert resp.status_code == 200
    listing = json.loads(resp.content)
    assert sorted(e["name"] for e in listing["entries"]) == sorted(tree.hamt_files)
    name = "file-042.txt"
    entry = next(e for e in listing["entries"] if e["name"] == name)
    file = await client.get(f"/ipfs/{entry['cid']}")
    assert file.content == tree.hamt_files[name]
    through_path = await client.get(f"/ipfs/{tree.root}/hamt/{name}")
    assert through_path.content == tree.hamt_files[name]


async def test_head_of_a_file_has_its_length(client: httpx.AsyncClient, tree: Fixture) -> None:
    resp = await client.head(f"/ipfs/{tree.big}")
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == "10240"
    assert resp.content == b""


@pytest.mark.parametrize(
    ("path", "params", "headers", "status"),
    [
        ("/ipfs/not-a-cid", {"format": "raw"}, {}, 400),
        ("/ipfs/", {}, {}, 400),
        ("/ipfs/{root}", {"format": "zip"}, {}, 400),
        ("/ipfs/{root}", {"format": "tar"}, {}, 501),
        ("/ipfs/{root}", {"format": "dag-json"}, {}, 501),
        ("/ipfs/{root}", {}, {"Accept": "application/x-tar"}, 501),
        ("/ipfs/{root}", {}, {"Accept": "image/png"}, 406),
        ("/ipfs/{root}", {}, {"Accept": "application/vnd.ipld.car; version=2"}, 406),
        ("/ipfs/{root}", {"format": "car", "dag-scope": "everything"}, {}, 400),
        ("/ipfs/{root}", {"format": "car", "entity-bytes": "10:5"}, {}, 400),
        ("/ipfs/{root}", {"format": "car", "entity-bytes": "a:b"}, {}, 400),
        ("/ipfs/{root}", {"format": "car", "car-version": "2"}, {}, 400),
        ("/ipfs/{root}", {"format": "car", "car-order": "random"}, {}, 400),
        ("/ipfs/{missing}", {"format": "raw"}, {}, 404),
        ("/ipfs/{missing}", {"format": "car"}, {}, 404),
        ("/ipfs/{missing}", {}, {}, 404),
        ("/ipfs/{root}/nope", {"format": "car"}, {}, 404),
        ("/ipfs/{root}/a.txt/deeper", {"format": "car"}, {}, 404),
        ("/ipfs/{root}/hamt/file-999.txt", {"format": "raw"}, {}, 404),
        ("/ipfs/{root}/sub/%2E%2E", {"format": "raw"}, {}, 400),
        ("/ipfs/{root}/sub%2Fbig.bin", {"format": "raw"}, {}, 400),
    ],
)
async def test_bad_requests_get_the_spec_status_and_a_text_body(
    client: httpx.AsyncClient,
    tree: Fixture,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    missing = CID.hash(b"nobody has this block", codec=0x70)
    url = path.format(root=tree.root, missing=missing)
    resp = await client.get(url, params=params, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    head = await client.head(url, params=params, headers=headers)
    assert head.status_code == status
    assert head.content == b""


async def test_path_through_a_raw_block_is_404_and_through_dag_cbor_is_501(
    client: httpx.AsyncClient, tree: Fixture
) -> None:
    raw = CID.hash(b"raw bytes")
    cbor = CID.hash(b"\xa0", codec=0x71)  # the empty dag-cbor map
    tree.source.blocks[raw.multihash] = b"raw bytes"
    tree.source.blocks[cbor.multihash] = b"\xa0"
    assert (await client.get(f"/ipfs/{raw}/x", params={"format": "car"})).status_code == 404
    assert (await client.get(f"/ipfs/{cbor}/x", params={"format": "car"})).status_code == 501
    resp = await client.get(f"/ipfs/{cbor}", params={"format": "car"})
    assert resp.status_code == 200


async def test_gateway_mounts_on_the_registry_app_beside_v2(tmp_path: Path) -> None:
    datastore = Datastore.open(tmp_path / "data")
    try:
        app = create_app(datastore, RegistrySettings(listen="127.0.0.1:0"))
        register_gateway(app, lambda: LocalBlockSource(datastore.blocks))
        data = b"stored through the registry's blockstore"
        cid = CID.hash(data)
        datastore.blocks.put(cid, data)
        async with serve_app(app) as client:
            assert (await client.get("/v2/")).status_code == 200
            resp = await client.get(f"/ipfs/{cid}", params={"format": "raw"})
            assert resp.status_code == 200
            assert hashlib.sha256(resp.content).digest() == cid.digest
            assert (
                await client.get(f"/ipfs/{CID.hash(b'absent')}", params={"format": "raw"})
            ).status_code == 404
    finally:
        datastore.close()


async def test_trustless_only_gateway_refuses_deserialized_responses(tree: Fixture) -> None:
    app = QuartTrio(__name__)
    register_gateway(app, lambda: tree.source, settings=GatewaySettings(deserialized=False))
    async with serve_app(app) as client:
        assert (await client.get(f"/ipfs/{tree.a_txt}", headers={"Accept": ""})).status_code == 400
        assert (await client.get(f"/ipfs/{tree.a_txt}")).status_code == 406  # httpx sends */*
        assert (await client.get(f"/ipfs/{tree.a_txt}", headers={"Accept": "text/html"})).status_code == 406
        raw = await client.get(f"/ipfs/{tree.a_txt}", headers={"Accept": RAW})
        assert raw.status_code == 200 and tree.a_txt.verify(raw.content)
        car = await client.get(f"/ipfs/{tree.a_txt}", params={"format": "car"})
        assert car.status_code == 200


async def test_disabled_gateway_adds_no_routes(tree: Fixture) -> None:
    app = QuartTrio(__name__)
    register_gateway(app, lambda: tree.source, settings=GatewaySettings(enabled=False))
    async with serve_app(app) as client:
        assert (await client.get(f"/ipfs/{tree.a_txt}", params={"format": "raw"})).status_code == 404
        assert "ipfs_gateway" not in {rule.endpoint for rule in app.url_map.iter_rules()}
