"""`ipfsreg routing findprovs | provide | findpeer | stat` through the control API of running servers,
and what servers announce on their own (pushes, adds) on a loopback DHT."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from ipfsreg.cid import CID


async def _ipfsreg(*args: str, data: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "ipfsreg", *args, "--data", str(data)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _eventually_found(cid: str, *, data: Path, provider: str) -> list[str]:
    """findprovs until ``provider`` is listed (announcements get no answer to wait for)."""
    with trio.fail_after(30):
        while True:
            out = await _ipfsreg("routing", "findprovs", cid, data=data)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.decode().splitlines()
            if any(line.startswith(provider) for line in lines):
                return lines
            await trio.sleep(0.2)


async def test_routing_commands_act_on_the_running_nodes(serve_node: Any, tmp_path: Path) -> None:
    async with serve_node("a") as a, serve_node("b", **{"routing.bootstrap": [a.p2p_addrs[0]]}) as b:
        data_a, data_b = tmp_path / "a", tmp_path / "b"
        (tmp_path / "file").write_bytes(b"provided by a when added" * 1000)
        added = await _ipfsreg("add", "-q", str(tmp_path / "file"), data=data_a)
        cid = added.stdout.decode().strip()
        lines = await _eventually_found(cid, data=data_b, provider=a.peer_id)
        assert lines[0].split()[1].startswith("/ip4/127.0.0.1/tcp/")

        other = str(CID.hash(b"b announces this without a block"))
        provided = await _ipfsreg("routing", "provide", other, data=data_b)
        assert provided.returncode == 0, provided.stderr
        assert provided.stdout.decode().strip() == f"provided {other} to 1 peers"
        listed = await _ipfsreg("routing", "findprovs", "--json", other, data=data_a)
        assert [json.loads(line)["peer_id"] for line in listed.stdout.decode().splitlines()] == [b.peer_id]

        found = await _ipfsreg("routing", "findpeer", a.peer_id, data=data_b)
        assert found.stdout.decode().split() == [a.p2p_addrs[0].split("/p2p/")[0]]

        stat = json.loads((await _ipfsreg("routing", "stat", "--json", data=data_a)).stdout)
        lan = next(d for d in stat["dhts"] if d["protocol"] == "/ipfs/lan/kad/1.0.0")
        assert lan["server"] and lan["routing_table_size"] == 1
        assert lan["whole_network"] == 1  # the lookup of a's provide saw b, and b knows nobody else
        assert stat["provide_queue"]["provided"] >= 1
        assert stat["provider_records"] >= 2  # its own record and b's
        text = (await _ipfsreg("routing", "stat", data=data_a)).stdout.decode()
        assert (
            "/ipfs/lan/kad/1.0.0 (server): 1 peers in the routing table"
            " (a lookup saw the whole DHT: 1 other servers)" in text
        )
        assert "provide queue: 0 waiting" in text


async def test_a_pushed_blob_is_findable_from_another_node_once_pushed(
    serve_node: Any, tmp_path: Path
) -> None:
    layer = b"a layer" * 1000
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    async with (
        serve_node("origin") as origin,
        serve_node("other", **{"routing.bootstrap": [origin.p2p_addrs[0]]}),
        httpx.AsyncClient(base_url=origin.registry_urls[0], timeout=30) as client,
    ):
        resp = await client.post("/v2/lib/app/blobs/uploads/", params={"digest": digest}, content=layer)
        assert resp.status_code == 201
        root = resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/")
        await _eventually_found(root, data=tmp_path / "other", provider=origin.peer_id)


async def test_routing_commands_without_a_server_say_to_start_one(tmp_path: Path) -> None:
    out = await _ipfsreg("routing", "stat", data=tmp_path / "data")
    assert out.returncode == 1
    assert b"start `ipfsreg serve`" in out.stderr


async def test_findpeer_of_an_invalid_peer_id_is_a_clear_error(serve_node: Any, tmp_path: Path) -> None:
    async with serve_node("a"):
        out = await _ipfsreg("routing", "findpeer", "not-a-peer", data=tmp_path / "a")
        assert out.returncode == 1
        assert b"invalid peer ID" in out.stderr


def test_serve_flags_set_the_routing_section_and_amino_expands_to_the_public_bootstrap_peers(
    tmp_path: Path,
) -> None:
    from ipfsreg.cli import _FLAG_OPTIONS, build_parser
    from ipfsreg.config import load_config
    from ipfsreg.node.routing.settings import AMINO_BOOTSTRAP

    args = build_parser().parse_args(["serve", "--bootstrap", "amino", "--routing-mode", "client"])
    overrides = {option: getattr(args, attr, None) for option, attr in _FLAG_OPTIONS}
    routing = load_config(data_dir=tmp_path, environ={}, overrides=overrides).section("routing")
    assert routing.mode == "client"
    assert routing.bootstrap_addrs() == list(AMINO_BOOTSTRAP)
    default = load_config(data_dir=tmp_path, environ={}).section("routing")
    assert default.bootstrap == [] and default.mode == "auto"  # joins nothing unless told to
