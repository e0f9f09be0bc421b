"""OCI Image Layouts on IPFS: built directories equal `ipfs add -r` of the same files; reading them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from oci_support import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageStore,
    digest_of,
)

from ipfsreg.cid import CID
from ipfsreg.oci import (
    LayoutError,
    ReferenceNotFound,
    build_image_layout,
    build_layout,
    layout_blob,
    read_image_layout,
)
from ipfsreg.oci.layout import OCI_LAYOUT_BYTES, LayoutResult, index_json_bytes
from ipfsreg.oci.reader import blob_cid, find_manifest, manifest_media_type, read_manifest, resolve_reference
from ipfsreg.unixfs import exporter
from ipfsreg.unixfs.directory import build_directory, import_tree
from ipfsreg.unixfs.importer import ImportOptions, import_bytes


def disk_root(store: ImageStore, tmp_path: Path, result: LayoutResult) -> str:
    out = tmp_path / "layout"
    store.write_layout(out, result.blob_digests, result.index_json, OCI_LAYOUT_BYTES)
    tree = import_tree(out, store.options)
    for _ in tree:
        pass
    assert tree.result is not None
    assert tree.result.dag_size == result.dag_size
    return str(tree.result.cid)


def stored(store: ImageStore, result: LayoutResult) -> LayoutResult:
    store.source.add(result.blocks)
    return result


async def read_blob(store: ImageStore, cid: CID) -> bytes:
    return b"".join([chunk async for chunk in exporter.read_file(store.source, cid)])


def test_single_image_layout_equals_ipfs_add_r_of_the_written_layout(tmp_path: Path) -> None:
    store = ImageStore()
    manifest = store.image([b"layer-one" * 1000, b"x" * 700_000])  # the second layer spans 3 chunks
    result = build_image_layout(manifest, "v1", store.blobs, store.data)
    assert str(result.root) == disk_root(store, tmp_path, result)
    assert len(result.blob_digests) == 4
    # only the new nodes: root, blobs, blobs/sha256, index.json, oci-layout
    assert len(result.blocks) == 5
    assert result.blocks[-1].cid == result.root
    assert all(block.cid.multihash not in store.source.blocks for block in result.blocks)


def test_index_json_bytes_are_compact_and_fixed() -> None:
    store = ImageStore()
    manifest = store.image([b"a"])
    assert index_json_bytes([("v1", manifest)]) == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":['
        b'{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"'
        + manifest.digest.encode()
        + b'","size":'
        + str(manifest.size).encode()
        + b',"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}'
    )
    assert OCI_LAYOUT_BYTES == b'{"imageLayoutVersion":"1.0.0"}'


def test_multiarch_index_layout_holds_every_child_and_its_blobs(tmp_path: Path) -> None:
    store = ImageStore()
    amd = store.image([b"amd64 layer"], arch="amd64")
    arm = store.image([b"arm64 layer"], arch="arm64")
    index = store.index([(amd, "amd64"), (arm, "arm64")])
    store.add(b"unrelated blob", "application/octet-stream")
    result = build_image_layout(index, "multi", store.blobs, store.data)
    assert len(result.blob_digests) == 7  # index + 2 x (manifest, config, layer)
    assert digest_of(b"unrelated blob") not in result.blob_digests
    assert str(result.root) == disk_root(store, tmp_path, result)


def test_cidv1_raw_leaves_layout_equals_ipfs_add_r_cid_version_1(tmp_path: Path) -> None:
    store = ImageStore(options=ImportOptions(cid_version=1))
    manifest = store.image([b"z" * 300_000])
    result = build_image_layout(manifest, "latest", store.blobs, store.data, store.options)
    assert result.root.version == 1
    assert str(result.root) == disk_root(store, tmp_path, result)


def test_docker_schema2_manifest_and_list_are_laid_out_as_is(tmp_path: Path) -> None:
    store = ImageStore()
    kwargs = {"manifest_type": DOCKER_MANIFEST, "config_type": DOCKER_CONFIG, "layer_type": DOCKER_LAYER}
    amd = store.image([b"docker layer"], **kwargs)  # type: ignore[arg-type]
    arm = store.image([b"docker arm layer"], arch="arm64", **kwargs)  # type: ignore[arg-type]
    lst = store.index([(amd, "amd64"), (arm, "arm64")], index_type=DOCKER_LIST)
    result = build_image_layout(lst, "v2", store.blobs, store.data)
    assert json.loads(result.index_json)["manifests"][0]["mediaType"] == DOCKER_LIST
    assert str(result.root) == disk_root(store, tmp_path, result)


def test_multi_tag_layout_lists_tags_in_order_and_shares_blobs(tmp_path: Path) -> None:
    store = ImageStore()
    one = store.image([b"shared layer", b"one"])
    two = store.image([b"shared layer", b"two"], arch="arm64")
    result = build_layout([("v2", two), ("v1", one), ("latest", one)], store.blobs, store.data)
    index = json.loads(result.index_json)
    refs = [(m["annotations"]["org.opencontainers.image.ref.name"], m["digest"]) for m in index["manifests"]]
    assert refs == [("v2", two.digest), ("v1", one.digest), ("latest", one.digest)]
    assert len(result.blob_digests) == 7  # 2 manifests, 2 configs, shared + one + two
    assert str(result.root) == disk_root(store, tmp_path, result)


def test_hamt_sharded_blobs_directory_equals_ipfs_add_r_and_resolves(tmp_path: Path) -> None:
    store = ImageStore()
    layers = [f"layer {i}".encode() for i in range(2700)]  # 2700 x (64 + 34) bytes > 256 KiB: a HAMT
    manifest = store.image(layers)
    result = build_image_layout(manifest, "big", store.blobs, store.data)
    assert str(result.root) == disk_root(store, tmp_path, result)
    assert len(result.blocks) > 5  # the sha256 directory is sharded


async def test_hamt_sharded_layout_resolves_any_layer_digest() -> None:
    store = ImageStore()
    layers = [f"layer {i}".encode() for i in range(2700)]
    manifest = store.image(layers)
    result = build_image_layout(manifest, "big", store.blobs, store.data)
    stored(store, result)
    sha256_dir = await exporter.resolve_path(store.source, result.root, "blobs/sha256")
    assert (await exporter.stat(store.source, sha256_dir)).type == "hamt"
    layout = await read_image_layout(store.source, result.root)
    for layer in (layers[0], layers[1234], layers[-1]):
        cid = await blob_cid(store.source, layout, digest_of(layer))
        assert await read_blob(store, cid) == layer


async def test_read_image_layout_resolves_tags_latest_and_digests() -> None:
    store = ImageStore()
    manifest = store.image([b"layer"])
    result = stored(store, build_image_layout(manifest, "v1", store.blobs, store.data))
    layout = await read_image_layout(store.source, result.root)
    assert layout.tags == ["v1"]
    assert layout.index_json == result.index_json
    by_tag = await resolve_reference(store.source, layout, "v1")
    assert by_tag.digest == manifest.digest
    assert by_tag.cid == manifest.cid
    assert by_tag.descriptor is not None and by_tag.descriptor.media_type == manifest.media_type
    assert (await resolve_reference(store.source, layout, "latest")).digest == manifest.digest
    by_digest = await resolve_reference(store.source, layout, manifest.digest)
    assert by_digest.descriptor == by_tag.descriptor
    layer = await resolve_reference(store.source, layout, digest_of(b"layer"))
    assert layer.descriptor is None
    assert await read_blob(store, layer.cid) == b"layer"


async def test_child_manifest_of_an_index_resolves_by_digest_only() -> None:
    store = ImageStore()
    amd = store.image([b"amd"])
    arm = store.image([b"arm"], arch="arm64")
    index = store.index([(amd, "amd64"), (arm, "arm64")])
    result = stored(store, build_image_layout(index, "multi", store.blobs, store.data))
    layout = await read_image_layout(store.source, result.root)
    assert find_manifest(layout, "latest").digest == index.digest
    child = await resolve_reference(store.source, layout, arm.digest)
    assert child.descriptor is None
    assert await read_blob(store, child.cid) == store.data[arm.digest]
    with pytest.raises(ReferenceNotFound):
        find_manifest(layout, arm.digest)


async def test_latest_does_not_fall_back_when_the_layout_holds_several_manifests() -> None:
    store = ImageStore()
    one, two = store.image([b"1"]), store.image([b"2"])
    result = stored(store, build_layout([("v1", one), ("v2", two)], store.blobs, store.data))
    layout = await read_image_layout(store.source, result.root)
    with pytest.raises(ReferenceNotFound):
        find_manifest(layout, "latest")
    assert find_manifest(layout, "v2").digest == two.digest


async def test_unknown_tag_and_digest_and_malformed_digest_raise_reference_not_found() -> None:
    store = ImageStore()
    manifest = store.image([b"layer"])
    result = stored(store, build_image_layout(manifest, "v1", store.blobs, store.data))
    layout = await read_image_layout(store.source, result.root)
    for ref in ("v2", digest_of(b"absent"), "sha256:../../index.json", "sha256:ABC"):
        with pytest.raises(ReferenceNotFound):
            await resolve_reference(store.source, layout, ref)


def test_missing_blob_or_manifest_body_raises_layout_error() -> None:
    store = ImageStore()
    manifest = store.image([b"layer"])
    blobs = dict(store.blobs)
    del blobs[digest_of(b"layer")]
    with pytest.raises(LayoutError, match="not available"):
        build_image_layout(manifest, "v1", blobs, store.data)
    with pytest.raises(LayoutError, match="body"):
        build_image_layout(manifest, "v1", store.blobs, {})


def test_invalid_tag_duplicate_tag_bad_manifest_and_empty_refs_raise_layout_error() -> None:
    store = ImageStore()
    manifest = store.image([b"layer"])
    for tag in ("", "-bad", "a/b", "x" * 129):
        with pytest.raises(LayoutError, match="tag"):
            build_image_layout(manifest, tag, store.blobs, store.data)
    with pytest.raises(LayoutError, match="twice"):
        build_layout([("v1", manifest), ("v1", manifest)], store.blobs, store.data)
    with pytest.raises(LayoutError, match="at least one"):
        build_layout([], store.blobs, store.data)
    broken = store.add(b"{not json", manifest.media_type)
    with pytest.raises(LayoutError, match="invalid"):
        build_image_layout(broken, "v1", store.blobs, store.data)


async def test_directory_without_oci_layout_is_not_a_layout() -> None:
    store = ImageStore()
    blocks, file = import_bytes(b"hello")
    store.source.add(blocks)
    directory = build_directory({"index.json": (file.cid, file.dag_size)})
    store.source.add([directory])
    with pytest.raises(LayoutError, match="oci-layout"):
        await read_image_layout(store.source, directory.cid)
    with pytest.raises(LayoutError, match="not a directory"):
        await read_image_layout(store.source, file.cid)


@pytest.mark.parametrize(
    ("oci_layout", "index_json", "message"),
    [
        (b'{"imageLayoutVersion":"2.0.0"}', b'{"schemaVersion":2,"manifests":[]}', "imageLayoutVersion"),
        (b"[]", b'{"schemaVersion":2,"manifests":[]}', "not a JSON object"),
        (OCI_LAYOUT_BYTES, b"{", "not valid JSON"),
        (OCI_LAYOUT_BYTES, b'{"schemaVersion":1,"manifests":[]}', "schemaVersion"),
        (OCI_LAYOUT_BYTES, b'{"schemaVersion":2,"manifests":{}}', "array"),
        (OCI_LAYOUT_BYTES, b'{"schemaVersion":2,"manifests":[{"mediaType":"x","size":1}]}', "digest"),
        (
            OCI_LAYOUT_BYTES,
            b'{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:'
            + b"0" * 64
            + b'","size":-1}]}',
            "size",
        ),
    ],
)
async def test_malformed_oci_layout_or_index_json_raises_layout_error(
    oci_layout: bytes, index_json: bytes, message: str
) -> None:
    store = ImageStore()
    entries = {}
    for name, data in (("oci-layout", oci_layout), ("index.json", index_json)):
        blocks, file = import_bytes(data)
        store.source.add(blocks)
        entries[name] = (file.cid, file.dag_size)
    directory = build_directory(entries)
    store.source.add([directory])
    with pytest.raises(LayoutError, match=message):
        await read_image_layout(store.source, directory.cid)


async def test_read_manifest_by_tag_and_child_digest_gives_bytes_and_media_type() -> None:
    store = ImageStore()
    amd = store.image([b"amd"])
    arm = store.image([b"arm"], arch="arm64")
    index = store.index([(amd, "amd64"), (arm, "arm64")])
    result = stored(store, build_image_layout(index, "multi", store.blobs, store.data))
    layout = await read_image_layout(store.source, result.root)
    top = await read_manifest(store.source, layout, "multi")
    assert (top.digest, top.media_type, top.body, top.cid) == (
        index.digest,
        index.media_type,
        store.data[index.digest],
        index.cid,
    )
    child = await read_manifest(store.source, layout, arm.digest)
    assert (child.media_type, child.body) == (arm.media_type, store.data[arm.digest])


def test_manifest_media_type_without_a_field_comes_from_the_shape() -> None:
    assert manifest_media_type(b'{"schemaVersion":2,"manifests":[]}', "d") == OCI_INDEX
    assert manifest_media_type(b'{"schemaVersion":2,"config":{}}', "d") == OCI_MANIFEST
    with pytest.raises(LayoutError):
        manifest_media_type(b'{"mediaType":7}', "d")


async def test_read_manifest_refuses_bytes_that_do_not_match_the_digest() -> None:
    store = ImageStore()
    manifest = store.image([b"layer"])
    impostor = store.add(b'{"schemaVersion":2,"mediaType":"x"}', manifest.media_type)
    lying = dict(store.blobs)
    lying[manifest.digest] = replace(manifest, cid=impostor.cid, dag_size=impostor.dag_size)
    result = stored(store, build_image_layout(manifest, "v1", lying, store.data))
    layout = await read_image_layout(store.source, result.root)
    with pytest.raises(LayoutError, match="do not match"):
        await read_manifest(store.source, layout, "v1")


async def test_layout_blob_reads_the_dag_size_from_the_root_block() -> None:
    for options in (ImportOptions(), ImportOptions(cid_version=1)):
        store = ImageStore(options=options)
        for data in (b"", b"small", b"q" * 700_000):
            expected = store.add(data, "application/octet-stream")
            got = await layout_blob(
                store.source, expected.digest, expected.media_type, len(data), expected.cid
            )
            assert got == expected


async def test_layout_blob_refuses_a_wrong_size_or_a_directory() -> None:
    store = ImageStore()
    blob = store.add(b"bytes", "x")
    with pytest.raises(LayoutError, match="expected"):
        await layout_blob(store.source, blob.digest, "x", 6, blob.cid)
    directory = build_directory({"f": (blob.cid, blob.dag_size)})
    store.source.add([directory])
    with pytest.raises(LayoutError, match="not a file"):
        await layout_blob(store.source, blob.digest, "x", 5, directory.cid)
