"""Images on IPFS from the command line, against skopeo: push a layout, export it to a CAR, carry it to
an air-gapped node, import and tag it there, pull it by name and by CID; pull over bitswap by CID."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from interop.oci_images import layout_blobs, write_single_image
from ipfsreg.cid import CID


async def ipfsreg(*args: str | Path, data: Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = await trio.run_process(
        [sys.executable, "-m", "ipfsreg", *map(str, args), "--data", str(data)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


async def skopeo_copy(src: str, dest: str) -> None:
    result = await trio.run_process(
        ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", src, dest],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()


def host(info: Any) -> str:
    return info.registry_urls[0].removeprefix("http://")


async def test_push_export_import_tag_then_skopeo_pulls_by_name_and_by_cid(
    serve_node: Any, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_single_image(layout, "v1")
    origin, airgapped = tmp_path / "origin", tmp_path / "airgapped"

    pushed = await ipfsreg("push", layout, "app:v1", data=origin)
    listed = json.loads((await ipfsreg("images", "--json", data=origin)).stdout)
    assert [(i["name"], i["tag"]) for i in listed] == [("app", "v1")]
    image_cid = listed[0]["cid"]
    assert image_cid.startswith("Qm")  # the Kubo-parity CID, as X-Ipfs-Path carries it
    # No server runs on origin: the pull reference has no host.
    reference = f"ipfs/{CID.parse(image_cid).to_v1()}:v1"
    assert pushed.stdout.decode().strip() == listed[0]["reference"] == reference
    assert f"/ipfs/{image_cid}" in pushed.stderr.decode()
    assert (await ipfsreg("publish", "app:v1", data=origin)).stdout.decode().strip() == reference

    car = tmp_path / "image.car"
    await ipfsreg("export", "app:v1", "-o", car, data=origin)
    imported = await ipfsreg("import", car, "--tag", "copy:v2", data=airgapped)
    assert imported.stdout.decode().split() == [image_cid]

    async with serve_node("airgapped") as info:
        by_name = tmp_path / "by-name"
        await skopeo_copy(f"docker://{host(info)}/copy:v2", f"oci:{by_name}:v2")
        # Through the running server, publish prints the whole reference: paste it into skopeo.
        published = (await ipfsreg("publish", "copy:v2", data=airgapped)).stdout.decode().strip()
        assert published.startswith(f"{host(info)}/ipfs/bafy") and published.endswith(":v2")
        by_reference = tmp_path / "by-reference"
        await skopeo_copy(f"docker://{published}", f"oci:{by_reference}:v2")
        by_cid = tmp_path / "by-cid"
        await skopeo_copy(f"docker://{host(info)}/{reference}", f"oci:{by_cid}:v1")
    original = layout_blobs(layout)
    for copy in (by_name, by_reference, by_cid):
        copied = layout_blobs(copy)
        assert {d: b for d, b in copied.items() if d in original} == original


async def test_pull_by_cid_over_bitswap_into_a_tag(serve_node: Any, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_single_image(layout, "v1")
    async with serve_node("origin") as origin:
        reference = (
            (await ipfsreg("push", layout, "app:v1", data=tmp_path / "origin")).stdout.decode().strip()
        )
        assert reference.startswith(f"{host(origin)}/ipfs/bafy") and reference.endswith(":v1")
        image_cid = CID.parse(reference.split("/ipfs/")[1].removesuffix(":v1"))
        mirror = tmp_path / "mirror"
        pulled = await ipfsreg(
            "pull", f"/ipfs/{image_cid}", "mirror/app:v1", "--peer", origin.p2p_addrs[0], data=mirror
        )
        # same layout, same CID; no server on the mirror, so no host
        assert pulled.stdout.decode().strip() == f"ipfs/{image_cid}:v1"
        # Without NAME:TAG the image keeps the layout's own tag (v1), not latest.
        own = await ipfsreg("pull", f"/ipfs/{image_cid}", "--peer", origin.p2p_addrs[0], data=mirror)
        assert own.stdout.decode().strip() == f"ipfs/{image_cid}:v1"
        bad = await ipfsreg("pull", "/ipfs/not-a-cid", data=mirror, check=False)
        assert bad.returncode == 1
        assert bad.stderr.startswith(b"ipfsreg: error:")
    listed = json.loads((await ipfsreg("images", "--json", data=mirror)).stdout)
    assert sorted((i["name"], i["tag"], CID.parse(i["cid"]).to_v1()) for i in listed) == [
        (f"ipfs/{image_cid}", "v1", image_cid),
        ("mirror/app", "v1", image_cid),
    ]
