"""`ipfsreg key` / `ipfsreg name` on a data dir and through a running server, and an image's IPNS record
carried in its exported CAR to an air-gapped node."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import trio
from ipns_support import OCI_MANIFEST, digest, eventually, has_seq, push_image

from ipfsreg.ipns.record import IpnsName


async def ipfsreg(*args: str | Path, data: Path) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "ipfsreg", *map(str, args), "--data", str(data)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_key_gen_list_rm_on_a_data_dir(tmp_path: Path) -> None:
    made = await ipfsreg("key", "gen", "team", data=tmp_path)
    assert made.returncode == 0, made.stderr
    name = made.stdout.decode().strip()
    assert IpnsName.parse(name)
    listed = (await ipfsreg("key", "list", data=tmp_path)).stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["self", "team"]
    assert listed[1].split("\t")[1] == name
    refused = await ipfsreg("key", "rm", "self", data=tmp_path)
    assert refused.returncode == 1 and b"cannot be removed" in refused.stderr
    assert (await ipfsreg("key", "rm", "team", data=tmp_path)).returncode == 0
    missing = await ipfsreg("name", "bind", "app", "team", data=tmp_path)
    assert missing.returncode == 1 and b"no key named 'team'" in missing.stderr


async def test_exported_car_carries_the_record_and_an_offline_node_pulls_by_ipns_name(
    serve_node: Any, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        async with serve_node("a") as a:
            assert a.peer_id is not None
            name = IpnsName.parse(a.peer_id)
            bound = await ipfsreg(
                "name", "bind", "app", "self", data=tmp_path / "a"
            )  # through the control API
            assert bound.returncode == 0, bound.stderr
            layer = b"air-gapped layer" * 300
            manifest = await push_image(client, a.registry_urls[0], "app", "v1", layer)
            await eventually(lambda: has_seq(client, a.registry_urls[0], name))
            bindings = await ipfsreg("name", "bindings", data=tmp_path / "a")
            assert bindings.stdout.decode().split() == ["app", "self", "bind"]
            exported = await ipfsreg("export", "app:v1", "-o", tmp_path / "app.car", data=tmp_path / "a")
            assert exported.returncode == 0, exported.stderr
            assert b"with the IPNS record" in exported.stderr
        imported = await ipfsreg("import", tmp_path / "app.car", "--tag", "app:v1", data=tmp_path / "c")
        assert imported.returncode == 0, imported.stderr
        assert f"IPNS record of {name}".encode() in imported.stderr and b"stored" in imported.stderr
        assert len(imported.stdout.split()) == 1  # the image root only
        resolved = await ipfsreg("name", "resolve", str(name), data=tmp_path / "c")
        assert resolved.returncode == 0, resolved.stderr
        assert b"app:v1" in resolved.stdout
        async with serve_node("c") as c:  # alone: no DHT peer has the record
            base = f"{c.registry_urls[0]}/v2/ipns/{name}/app"
            resp = await client.get(f"{base}/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert resp.status_code == 200 and resp.headers["Docker-Content-Digest"] == manifest
            blob = await client.get(f"{base}/blobs/{digest(layer)}")
            assert blob.content == layer
