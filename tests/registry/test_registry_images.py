"""Images on IPFS: every tag push publishes an OCI Image Layout directory (X-Ipfs-Path), `ipfs/<cid>`
repositories serve such directories read-only, and the storage functions behind publish/pull/push."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from registry_helpers import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Server, sha256

from ipfsreg.blockstore import BlockNotFound
from ipfsreg.cid import CID
from ipfsreg.gc import collector_for
from ipfsreg.oci.errors import LayoutError
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.images import (
    BlobMismatch,
    import_docker_save,
    import_layout_dir,
    mirror_image,
    pull_image,
    tag_image_from_cid,
    verified_chunks,
)
from ipfsreg.registry.names import ipfs_repository_name
from ipfsreg.unixfs.directory import import_tree
from ipfsreg.unixfs.exporter import LocalBlockSource
from ipfsreg.unixfs.importer import ImportOptions, import_bytes

REF_NAME = "org.opencontainers.image.ref.name"


def write_layout(root: Path, tag: str, top: tuple[str, str, int], blobs: dict[str, bytes]) -> None:
    """An OCI layout on disk, written independently of ipfsreg.oci (compact JSON, as the spec'd bytes)."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    media_type, digest, size = top
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": media_type, "digest": digest, "size": size, "annotations": {REF_NAME: tag}}
        ],
    }
    (root / "index.json").write_bytes(json.dumps(index, separators=(",", ":")).encode())
    for digest_, data in blobs.items():
        (root / "blobs" / "sha256" / digest_.split(":", 1)[1]).write_bytes(data)


def write_one_layer_layout(
    root: Path, config: bytes, layer: bytes, *, stored_layer: bytes | None = None
) -> bytes:
    """An OCI layout at ``root`` whose tag v1 is an image of ``config`` and one ``layer``; returns
    the manifest bytes. ``stored_layer``: the bytes written for the layer blob (a layout that lies)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
    }
    body = json.dumps(manifest).encode()
    layer_blob = layer if stored_layer is None else stored_layer
    blobs = {sha256(config): config, sha256(layer): layer_blob, sha256(body): body}
    write_layout(root, "v1", (OCI_MANIFEST, sha256(body), len(body)), blobs)
    return body


def tree_cid(root: Path) -> str:
    tree = import_tree(root)
    for _ in tree:
        pass
    return str(tree.result.cid)


def store_tree(server: Server, root: Path) -> CID:
    tree = import_tree(root)
    server.datastore.blocks.put_many((block.cid, block.data) for block in tree)
    return tree.result.cid


async def push_oci_image(
    server: Server, name: str, tag: str, layers: list[bytes]
) -> tuple[str, bytes, dict[str, bytes]]:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    blobs = {await server.push_blob(name, config): config}
    layer_descs = []
    for layer in layers:
        blobs[await server.push_blob(name, layer)] = layer
        layer_descs.append({"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": layer_descs,
    }
    digest, body, _ = await server.push_manifest(name, tag, manifest)
    blobs[digest] = body
    return digest, body, blobs


def image_path(resp: httpx.Response) -> str:
    return resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/")


# --- publish ------------------------------------------------------------------------------------


async def test_manifest_put_to_tag_returns_x_ipfs_path_of_the_layout_ipfs_add_r_gives(
    registry: Server, tmp_path: Path
) -> None:
    big = bytes(range(256)) * 4000  # > one 256 KiB chunk: a multi-block blob DAG
    digest, body, blobs = await push_oci_image(registry, "lib/app", "v1", [b"layer one", big])
    put = await registry.client.put(
        "/v2/lib/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    write_layout(tmp_path / "layout", "v1", (OCI_MANIFEST, digest, len(body)), blobs)
    expected = tree_cid(tmp_path / "layout")
    assert image_path(put) == expected
    get = await registry.client.get("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    head = await registry.client.head("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert image_path(get) == image_path(head) == expected
    assert registry.store.image_cid("lib/app", "v1") == CID.parse(expected)


async def test_manifest_by_digest_x_ipfs_path_is_the_manifest_blob_dag(registry: Server) -> None:
    digest, body, _ = await push_oci_image(registry, "app", "v1", [b"x"])
    resp = await registry.client.get(f"/v2/app/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    _, result = import_bytes(body)
    assert image_path(resp) == str(result.cid)


async def test_index_pushed_to_a_tag_publishes_children_and_their_blobs(
    registry: Server, tmp_path: Path
) -> None:
    amd, amd_body, amd_blobs = await push_oci_image(registry, "multi", "amd", [b"amd64 layer"])
    arm, arm_body, arm_blobs = await push_oci_image(registry, "multi", "arm", [b"arm64 layer"])
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": amd,
                "size": len(amd_body),
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": arm,
                "size": len(arm_body),
                "platform": {"os": "linux", "architecture": "arm64"},
            },
        ],
    }
    digest, body, put = await registry.push_manifest("multi", "all", index, OCI_INDEX)
    write_layout(
        tmp_path / "layout", "all", (OCI_INDEX, digest, len(body)), {**amd_blobs, **arm_blobs, digest: body}
    )
    assert image_path(put) == tree_cid(tmp_path / "layout")


async def test_tag_move_republishes_and_tag_delete_unpublishes(registry: Server) -> None:
    await push_oci_image(registry, "app", "v1", [b"first"])
    first = registry.store.image_cid("app", "v1")
    digest, _, _ = await push_oci_image(registry, "app", "v1", [b"second"])
    second = registry.store.image_cid("app", "v1")
    assert first is not None and second is not None and first != second
    assert second in set(registry.store.live_roots())
    images = registry.store.images()
    assert [(i.name, i.tag, str(i.digest), i.cid) for i in images] == [("app", "v1", digest, second)]
    assert (await registry.client.delete("/v2/app/manifests/v1")).status_code == 202
    assert registry.store.image_cid("app", "v1") is None
    assert registry.store.images() == []


async def test_deleting_a_manifest_unpublishes_every_tag_pointing_to_it(registry: Server) -> None:
    digest, body, _ = await push_oci_image(registry, "app", "a", [b"shared"])
    await registry.client.put("/v2/app/manifests/b", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert {i.tag for i in registry.store.images()} == {"a", "b"}
    assert (await registry.client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
    assert registry.store.images() == []


async def test_manifest_by_tag_carries_the_pull_reference_of_its_image_on_the_request_host(
    registry: Server,
) -> None:
    digest, body, _ = await push_oci_image(registry, "lib/app", "v1", [b"referenced layer"])
    image = registry.store.image_cid("lib/app", "v1")
    assert image is not None and image.version == 0  # X-Ipfs-Path keeps the Kubo-parity CIDv0
    get = await registry.client.get("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    host = get.request.headers["Host"]
    expected = f"{host}/ipfs/{image.to_v1()}:v1"
    assert get.headers["X-Ipfs-Image-Reference"] == expected
    assert expected == expected.lower()  # docker's reference grammar: a lowercase repository
    head = await registry.client.head("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    put = await registry.client.put(
        "/v2/lib/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert head.headers["X-Ipfs-Image-Reference"] == put.headers["X-Ipfs-Image-Reference"] == expected
    other = await registry.client.get(
        "/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST, "Host": "registry.example:5443"}
    )
    assert other.headers["X-Ipfs-Image-Reference"] == f"registry.example:5443/ipfs/{image.to_v1()}:v1"
    by_digest = await registry.client.get(f"/v2/lib/app/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    assert "X-Ipfs-Image-Reference" not in by_digest.headers
    # The reference pulls the same manifest from this registry.
    repo = f"ipfs/{image.to_v1()}"
    by_cid = await registry.client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert by_cid.status_code == 200 and by_cid.content == body
    assert by_cid.headers["X-Ipfs-Image-Reference"] == expected


async def test_publish_rebuilds_the_same_cid_and_unknown_tag_is_manifest_unknown(registry: Server) -> None:
    await push_oci_image(registry, "app", "v1", [b"layer"])
    published = registry.store.image_cid("app", "v1")
    with registry.datastore.batch() as batch:
        batch.delete(registry.store.published, b"app\0v1")
    assert registry.store.image_cid("app", "v1") is None
    assert await registry.store.publish("app", "v1") == published
    assert registry.store.image_cid("app", "v1") == published
    with pytest.raises(Exception, match="MANIFEST_UNKNOWN"):
        await registry.store.publish("app", "nope")


async def test_a_tag_whose_blob_is_gone_is_not_published_but_still_moves(registry: Server) -> None:
    digest, body, _ = await push_oci_image(registry, "app", "v1", [b"layer kept"])
    layer = sha256(b"layer kept")
    info = registry.store.blob_info(parse_digest(layer))
    assert info is not None
    registry.datastore.blocks.delete(info.cid)  # lost outside the registry
    put = await registry.client.put(
        "/v2/app/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status_code == 201
    assert "X-Ipfs-Path" not in put.headers
    assert registry.store.resolve_tag("app", "v2") == parse_digest(digest)
    assert registry.store.image_cid("app", "v2") is None
    with pytest.raises(LayoutError, match="not stored completely"):
        await registry.store.publish("app", "v2")


# --- ipfs/<cid> repositories ---------------------------------------------------------------------


async def test_ipfs_cid_repository_serves_the_published_image_by_tag_latest_and_digest(
    registry: Server,
) -> None:
    digest, body, blobs = await push_oci_image(registry, "app", "v1", [b"layer", b"other"])
    cid = registry.store.image_cid("app", "v1")
    assert cid is not None
    repo = ipfs_repository_name(cid)
    assert repo == f"ipfs/{cid.to_v1()}"
    for ref in ("v1", "latest", digest):
        resp = await registry.client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert resp.status_code == 200, resp.text
        assert resp.content == body
        assert resp.headers["Docker-Content-Digest"] == digest
    for blob_digest, data in blobs.items():
        resp = await registry.client.get(f"/v2/{repo}/blobs/{blob_digest}")
        assert resp.status_code == 200 and resp.content == data
        assert registry.store.repo_has_blob(repo, parse_digest(blob_digest))
    tags = await registry.client.get(f"/v2/{repo}/tags/list")
    assert tags.json() == {"name": repo, "tags": ["v1"]}
    by_tag = await registry.client.head(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert image_path(by_tag) == str(cid.to_v1())


async def test_ipfs_cid_repository_is_read_only(registry: Server) -> None:
    await push_oci_image(registry, "app", "v1", [b"layer"])
    cid = registry.store.image_cid("app", "v1")
    assert cid is not None
    repo = ipfs_repository_name(cid)
    put = await registry.client.put(
        f"/v2/{repo}/manifests/v2", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
    )
    post = await registry.client.post(f"/v2/{repo}/blobs/uploads/")
    delete = await registry.client.delete(f"/v2/{repo}/manifests/v1")
    for resp in (put, post, delete):
        assert resp.status_code == 403
        assert resp.json()["errors"][0]["code"] == "DENIED"
        assert "read-only" in resp.json()["errors"][0]["message"]


async def test_ipfs_repository_with_cidv0_is_name_invalid_with_the_cidv1_hint(registry: Server) -> None:
    cid = CID.parse("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
    resp = await registry.client.get(f"/v2/ipfs/{cid}/manifests/latest")
    assert resp.status_code == 400
    error = resp.json()["errors"][0]
    assert error["code"] == "NAME_INVALID"
    assert f"ipfs/{cid.to_v1()}" in error["detail"]["reason"]


async def test_ipfs_repository_unknown_tag_is_manifest_unknown_and_unknown_blob_is_blob_unknown(
    registry: Server,
) -> None:
    await push_oci_image(registry, "app", "v1", [b"layer"])
    cid = registry.store.image_cid("app", "v1")
    assert cid is not None
    repo = ipfs_repository_name(cid)
    resp = await registry.client.get(f"/v2/{repo}/manifests/v9")
    assert resp.status_code == 404 and resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    resp = await registry.client.get(f"/v2/{repo}/blobs/{sha256(b'nothing')}")
    assert resp.status_code == 404 and resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_ipfs_repository_of_a_directory_that_is_not_a_layout_is_manifest_unknown(
    registry: Server, tmp_path: Path
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "hello.txt").write_bytes(b"hello")
    cid = store_tree(registry, tmp_path / "dir")
    resp = await registry.client.get(f"/v2/{ipfs_repository_name(cid)}/manifests/latest")
    assert resp.status_code == 404
    assert "not an OCI image layout" in resp.json()["errors"][0]["detail"]["reason"]


async def test_ipfs_repository_blob_whose_bytes_lie_about_their_digest_is_cut_never_served_whole(
    registry: Server, tmp_path: Path
) -> None:
    config = b'{"os":"linux"}'
    honest = b"the real layer " * 30000
    lie = b"X" + honest[1:]
    body = write_one_layer_layout(tmp_path / "layout", config, honest, stored_layer=lie)
    repo = ipfs_repository_name(store_tree(registry, tmp_path / "layout"))
    resp = await registry.client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200 and resp.content == body
    received = b""
    with pytest.raises(httpx.HTTPError):
        async with registry.client.stream("GET", f"/v2/{repo}/blobs/{sha256(honest)}") as stream:
            assert stream.status_code == 200
            async for chunk in stream.aiter_raw():
                received += chunk
    assert len(received) < len(lie)
    assert not registry.store.repo_has_blob(repo, parse_digest(sha256(honest)))


async def test_ipfs_repository_manifest_whose_bytes_lie_is_manifest_unknown(
    registry: Server, tmp_path: Path
) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()
    lying_digest = sha256(b"something else")
    write_layout(tmp_path / "layout", "v1", (OCI_MANIFEST, lying_digest, len(body)), {lying_digest: body})
    repo = ipfs_repository_name(store_tree(registry, tmp_path / "layout"))
    resp = await registry.client.get(f"/v2/{repo}/manifests/v1")
    assert resp.status_code == 404
    assert "do not match" in resp.json()["errors"][0]["detail"]["reason"]


async def test_verified_chunks_yields_nothing_past_a_mismatch(registry: Server) -> None:
    data = b"abc" * 200_000
    blocks, result = import_bytes(data)
    registry.datastore.blocks.put_many((b.cid, b.data) for b in blocks)
    source = LocalBlockSource(registry.datastore.blocks)
    good = b"".join([c async for c in verified_chunks(source, result.cid, parse_digest(sha256(data)))])
    assert good == data
    got = b""
    with pytest.raises(BlobMismatch):
        async for chunk in verified_chunks(source, result.cid, parse_digest(sha256(b"other"))):
            got += chunk
    assert len(got) < len(data)


# --- storage functions for the CLI ---------------------------------------------------------------


async def test_tag_image_from_cid_tags_a_locally_stored_layout_and_republishes_the_same_cid(
    registry: Server, tmp_path: Path
) -> None:
    digest, body, blobs = await push_oci_image(registry, "src", "v1", [b"one", b"two"])
    cid = registry.store.image_cid("src", "v1")
    assert cid is not None
    pulled = await tag_image_from_cid(registry.store, cid, "dst", "v1")
    assert (pulled.name, pulled.tag, str(pulled.digest), pulled.cid) == ("dst", "v1", digest, cid)
    resp = await registry.client.get("/v2/dst/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.content == body
    for blob_digest in blobs:
        if blob_digest != digest:  # manifests are recorded as manifests, not as the repo's blobs
            assert registry.store.repo_has_blob("dst", parse_digest(blob_digest))
    assert registry.store.manifest_info("dst", parse_digest(digest)) is not None


async def test_tag_image_from_cid_with_missing_blocks_fails_and_tags_nothing(
    registry: Server, tmp_path: Path
) -> None:
    layer = b"only layer " * 100
    config = b"{}"
    write_one_layer_layout(tmp_path / "layout", config, layer)
    cid = store_tree(registry, tmp_path / "layout")
    _, leaf = import_bytes(layer)
    registry.datastore.blocks.delete(leaf.cid)
    with pytest.raises(BlockNotFound):
        await tag_image_from_cid(registry.store, cid, "dst", "v1")
    assert registry.store.resolve_tag("dst", "v1") is None


async def test_pull_image_into_a_tag_verifies_blobs_and_refuses_ipfs_names(
    registry: Server, tmp_path: Path
) -> None:
    digest, _, _ = await push_oci_image(registry, "src", "v1", [b"pulled layer"])
    cid = registry.store.image_cid("src", "v1")
    assert cid is not None
    pulled = await pull_image(registry.store, registry.store.local_source, cid, "v1", "copy", "stable")
    assert str(pulled.digest) == digest
    assert registry.store.resolve_tag("copy", "stable") == parse_digest(digest)
    assert registry.store.image_cid("copy", "stable") == pulled.cid
    with pytest.raises(Exception, match="DENIED"):
        await pull_image(
            registry.store, registry.store.local_source, cid, "v1", ipfs_repository_name(cid), "x"
        )


async def test_import_layout_dir_streams_blobs_checks_digests_and_publishes(
    registry: Server, tmp_path: Path
) -> None:
    layer = bytes(range(256)) * 3000
    config = b'{"architecture":"amd64","os":"linux"}'
    body = write_one_layer_layout(tmp_path / "layout", config, layer)
    pulled = await import_layout_dir(registry.store, tmp_path / "layout", "imported", "v1")
    assert str(pulled.digest) == sha256(body)
    assert str(pulled.cid) == tree_cid(tmp_path / "layout")
    resp = await registry.client.get(f"/v2/imported/blobs/{sha256(layer)}")
    assert resp.content == layer

    other_layer = b"a layer this registry has never seen"
    write_one_layer_layout(tmp_path / "tampered", config, other_layer, stored_layer=b"tampered")
    with pytest.raises(RegistryError, match="DIGEST_INVALID"):
        await import_layout_dir(registry.store, tmp_path / "tampered", "other", "v1")
    assert registry.store.resolve_tag("other", "v1") is None
    assert registry.store.blob_info(parse_digest(sha256(other_layer))) is None


async def test_import_layout_dir_of_a_non_layout_is_a_layout_error(registry: Server, tmp_path: Path) -> None:
    with pytest.raises(LayoutError):
        await import_layout_dir(registry.store, tmp_path, "x", "v1")


def docker_save_tar(path: Path, layers: list[bytes], *, diff_ids: list[str] | None = None) -> bytes:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256(layer) for layer in layers]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    entries: dict[str, bytes] = {config_name: config}
    layer_names = []
    for i, layer in enumerate(layers):
        layer_names.append(f"layer{i}/layer.tar")
        entries[layer_names[-1]] = layer
    entries["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": ["x:latest"], "Layers": layer_names}]
    ).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return config


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_import_docker_save_becomes_an_oci_manifest_with_uncompressed_layers(
    registry: Server, tmp_path: Path
) -> None:
    layers = [tar_bytes({"etc/hello": b"hello"}), tar_bytes({"bin/big": bytes(300_000)})]
    config = docker_save_tar(tmp_path / "image.tar", layers)
    pulled = await import_docker_save(registry.store, tmp_path / "image.tar", "saved", "v1")
    resp = await registry.client.get("/v2/saved/manifests/v1", headers={"Accept": OCI_MANIFEST})
    manifest: dict[str, Any] = resp.json()
    assert resp.headers["Docker-Content-Digest"] == str(pulled.digest)
    assert manifest["config"] == {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)}
    assert [(x["mediaType"], x["digest"], x["size"]) for x in manifest["layers"]] == [
        ("application/vnd.oci.image.layer.v1.tar", sha256(layer), len(layer)) for layer in layers
    ]
    for layer in layers:
        assert (await registry.client.get(f"/v2/saved/blobs/{sha256(layer)}")).content == layer
    assert registry.store.image_cid("saved", "v1") == pulled.cid


async def test_import_docker_save_with_a_layer_not_matching_its_diff_id_fails(
    registry: Server, tmp_path: Path
) -> None:
    layers = [tar_bytes({"a": b"a"})]
    docker_save_tar(tmp_path / "image.tar", layers, diff_ids=[sha256(b"not the layer")])
    with pytest.raises(BlobMismatch):
        await import_docker_save(registry.store, tmp_path / "image.tar", "saved", "v1")
    assert registry.store.resolve_tag("saved", "v1") is None


async def test_import_docker_save_of_a_plain_tar_is_a_layout_error(registry: Server, tmp_path: Path) -> None:
    (tmp_path / "plain.tar").write_bytes(tar_bytes({"x": b"y"}))
    with pytest.raises(LayoutError, match=r"manifest\.json"):
        await import_docker_save(registry.store, tmp_path / "plain.tar", "saved", "v1")


async def test_mirror_image_records_the_whole_image_under_its_ipfs_repository(registry: Server) -> None:
    digest, _, blobs = await push_oci_image(registry, "src", "v1", [b"mirrored layer", b"another"])
    cid = registry.store.image_cid("src", "v1")
    assert cid is not None
    mirrored = await mirror_image(registry.store, registry.store.local_source, cid, "v1")
    repo = ipfs_repository_name(cid)
    assert (mirrored.name, str(mirrored.digest), mirrored.blobs) == (repo, digest, 3)
    for blob_digest in blobs:
        if blob_digest != digest:
            assert registry.store.repo_has_blob(repo, parse_digest(blob_digest))
    assert registry.store.resolve_tag(repo, "v1") == parse_digest(digest)
    again = await mirror_image(registry.store, registry.store.local_source, cid, "v1")
    assert again.blobs == 0


class FailingOn:
    """The local blocks, except that reading ``missing`` fails as a vanished peer would."""

    def __init__(self, inner: LocalBlockSource, missing: CID) -> None:
        self.inner = inner
        self.missing = missing

    async def get(self, cid: CID) -> bytes:
        if cid == self.missing:
            raise BlockNotFound(cid)
        return await self.inner.get(cid)

    def prefetch(self, cids: Sequence[CID]) -> None:
        self.inner.prefetch(cids)


async def test_mirror_image_lists_the_image_only_once_every_blob_is_stored(registry: Server) -> None:
    digest, _, _ = await push_oci_image(registry, "src", "v1", [b"first layer", b"second layer"])
    cid = registry.store.image_cid("src", "v1")
    second = registry.store.blob_info(parse_digest(sha256(b"second layer")))
    assert cid is not None and second is not None
    repo = ipfs_repository_name(cid)
    with pytest.raises(BlockNotFound):
        await mirror_image(registry.store, FailingOn(registry.store.local_source, second.cid), cid, "v1")
    assert registry.store.resolve_tag(repo, "v1") is None  # not listed: the image is not whole here
    assert registry.store.image_cid(repo, "v1") is None
    mirrored = await mirror_image(registry.store, registry.store.local_source, cid, "v1")
    assert mirrored.blobs == 1  # the blobs stored by the failed attempt stay
    assert registry.store.resolve_tag(repo, "v1") == parse_digest(digest)


async def test_mirror_image_without_a_reference_takes_the_layouts_own_tag(registry: Server) -> None:
    digest, _, _ = await push_oci_image(registry, "src", "v1", [b"own tag layer"])
    cid = registry.store.image_cid("src", "v1")
    assert cid is not None
    mirrored = await mirror_image(registry.store, registry.store.local_source, cid)
    repo = ipfs_repository_name(cid)
    assert (mirrored.name, mirrored.tag) == (repo, "v1")
    assert registry.store.resolve_tag(repo, "v1") == parse_digest(digest)
    assert registry.store.resolve_tag(repo, "latest") is None


async def test_pull_image_without_a_tag_takes_the_layouts_own_tag(registry: Server) -> None:
    digest, _, _ = await push_oci_image(registry, "src", "v1", [b"untagged pull layer"])
    cid = registry.store.image_cid("src", "v1")
    assert cid is not None
    pulled = await pull_image(registry.store, registry.store.local_source, cid, None, "copy", None)
    assert (pulled.name, pulled.tag) == ("copy", "v1")
    assert registry.store.resolve_tag("copy", "v1") == parse_digest(digest)
    assert registry.store.resolve_tag("copy", "latest") is None
    by_digest = await pull_image(registry.store, registry.store.local_source, cid, digest, "again", None)
    assert by_digest.tag == "v1"  # the ref name of the descriptor with that digest
    tagged = await tag_image_from_cid(registry.store, cid, "third", None)
    assert tagged.tag == "v1"


async def test_pull_of_a_layout_whose_only_image_has_no_ref_name_tags_it_latest(
    registry: Server, tmp_path: Path
) -> None:
    write_one_layer_layout(tmp_path / "layout", b"{}", b"unnamed layer")
    index = json.loads((tmp_path / "layout" / "index.json").read_bytes())
    for descriptor in index["manifests"]:
        descriptor.pop("annotations", None)
    (tmp_path / "layout" / "index.json").write_text(json.dumps(index))
    cid = store_tree(registry, tmp_path / "layout")
    pulled = await pull_image(registry.store, registry.store.local_source, cid, None, "copy", None)
    assert pulled.tag == "latest"
    mirrored = await mirror_image(registry.store, registry.store.local_source, cid)
    assert mirrored.tag == "latest"


async def test_pull_image_replaces_an_incomplete_stored_blob_dag_with_the_verified_layout_dag(
    registry: Server, tmp_path: Path
) -> None:
    layer = bytes(range(256)) * 3000  # 768 KB: several leaves
    config = b'{"os":"linux"}'
    await registry.push_blob("src", layer)
    stored = registry.store.blob_info(parse_digest(sha256(layer)))
    assert stored is not None
    blocks, _ = import_bytes(layer)
    registry.datastore.blocks.delete(blocks[0].cid)  # a leaf lost outside the registry
    write_one_layer_layout(tmp_path / "layout", config, layer)
    tree = import_tree(tmp_path / "layout", ImportOptions(cid_version=1))  # other CIDs than the stored DAG
    registry.datastore.blocks.put_many((block.cid, block.data) for block in tree)
    await pull_image(registry.store, registry.store.local_source, tree.result.cid, None, "dst", "v1")
    replaced = registry.store.blob_info(parse_digest(sha256(layer)))
    assert replaced is not None and replaced.cid != stored.cid and replaced.cid.version == 1
    assert (await registry.client.get(f"/v2/dst/blobs/{sha256(layer)}")).content == layer


async def test_garbage_collection_keeps_published_image_directories_and_drops_unpublished_ones(
    registry: Server,
) -> None:
    dropped_digest, _, _ = await push_oci_image(registry, "dropped", "v1", [b"only this image has me"])
    kept_digest, _, _ = await push_oci_image(registry, "kept", "v1", [b"mirrored by ipfs/<cid>"])
    dropped, kept = registry.store.image_cid("dropped", "v1"), registry.store.image_cid("kept", "v1")
    assert dropped is not None and kept is not None
    collector = collector_for(registry.datastore, registry.store)
    await collector.run()
    assert registry.datastore.blocks.has(dropped) and registry.datastore.blocks.has(kept)
    repo = ipfs_repository_name(kept)
    pulled = await registry.client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200
    for name, digest in (("dropped", dropped_digest), ("kept", kept_digest)):
        assert (await registry.client.delete(f"/v2/{name}/manifests/{digest}")).status_code == 202
    assert (await registry.client.delete(f"/v2/{repo}/manifests/{kept_digest}")).status_code == 403
    await collector.run()
    assert not registry.datastore.blocks.has(dropped)
    assert registry.datastore.blocks.has(kept)  # ipfs/<cid> records its mirror of the image
    again = await registry.client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert again.status_code == 200


async def test_concurrent_pushes_to_one_tag_leave_its_image_matching_the_tag(registry: Server) -> None:
    import trio

    bodies = []
    for i in range(6):
        _, body, _ = await push_oci_image(registry, "race", f"seed{i}", [f"layer {i}".encode() * 1000])
        bodies.append(body)

    async def put(body: bytes) -> None:
        resp = await registry.client.put(
            "/v2/race/manifests/latest", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert resp.status_code == 201

    async with trio.open_nursery() as nursery:
        for body in bodies:
            nursery.start_soon(put, body)
    image = registry.store.image("race", "latest")
    assert image is not None
    assert image.digest == registry.store.resolve_tag("race", "latest")
    assert await registry.store.publish("race", "latest") == image.cid  # the tag's current manifest, rebuilt
