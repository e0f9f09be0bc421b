"""Interop with skopeo (Debian), the real registry client: copy both ways, list-tags, inspect, delete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from interop.kubo import KuboPeer
from interop.oci_images import layout_blobs, write_multiarch_image, write_single_image
from interop.registry_fixtures import policy_file, skopeo, skopeo_status
from ipfsreg.registry.testing import running_registry


@pytest.fixture(autouse=True)
def _require_skopeo() -> None:
    # Interop tests never skip: a missing client is a failure.
    assert shutil.which("skopeo"), "skopeo is not installed (Debian package 'skopeo')"


async def test_skopeo_copy_image_to_registry_and_back_is_byte_identical(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    manifest = write_single_image(src, "v1")
    policy = policy_file(tmp_path)
    async with running_registry(tmp_path / "data") as reg:
        ref = f"docker://{reg.host}/library/app:v1"
        await skopeo("copy", f"oci:{src}:v1", ref, "--dest-tls-verify=false", policy=policy)
        resp = await reg.client.get("/v2/library/app/manifests/v1", headers={"Accept": manifest.media_type})
        assert resp.headers["Docker-Content-Digest"] == manifest.digest
        await skopeo("copy", ref, f"oci:{dst}:v1", "--src-tls-verify=false", policy=policy)
    source_blobs = layout_blobs(src)
    copied_blobs = layout_blobs(dst)
    assert copied_blobs == source_blobs
    index = json.loads((dst / "index.json").read_text())
    assert index["manifests"][0]["digest"] == manifest.digest


async def test_skopeo_copy_multiarch_index_with_all(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    index = write_multiarch_image(src, "multi")
    policy = policy_file(tmp_path)
    async with running_registry(tmp_path / "data") as reg:
        ref = f"docker://{reg.host}/multi/app:multi"
        await skopeo("copy", "--all", f"oci:{src}:multi", ref, "--dest-tls-verify=false", policy=policy)
        raw = await skopeo("inspect", "--raw", "--tls-verify=false", ref, policy=policy)
        assert json.loads(raw.stdout)["mediaType"] == index.media_type
        assert raw.stdout == (src / "blobs" / "sha256" / index.hex).read_bytes()
        arm = await skopeo("--override-arch", "arm64", "inspect", "--tls-verify=false", ref, policy=policy)
        assert json.loads(arm.stdout)["Architecture"] == "arm64"
        await skopeo("copy", "--all", ref, f"oci:{dst}:multi", "--src-tls-verify=false", policy=policy)
    assert layout_blobs(dst) == layout_blobs(src)


async def test_skopeo_list_tags_and_inspect(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest = write_single_image(src, "v1", layers=1)
    policy = policy_file(tmp_path)
    async with running_registry(tmp_path / "data") as reg:
        for tag in ("v1", "latest", "stable"):
            await skopeo(
                "copy",
                f"oci:{src}:v1",
                f"docker://{reg.host}/tools/app:{tag}",
                "--dest-tls-verify=false",
                policy=policy,
            )
        tags = await skopeo(
            "list-tags", "--tls-verify=false", f"docker://{reg.host}/tools/app", policy=policy
        )
        assert json.loads(tags.stdout) == {
            "Repository": f"{reg.host}/tools/app",
            "Tags": ["latest", "stable", "v1"],
        }
        info = await skopeo(
            "inspect", "--tls-verify=false", f"docker://{reg.host}/tools/app:stable", policy=policy
        )
        doc = json.loads(info.stdout)
        assert doc["Digest"] == manifest.digest
        assert doc["Architecture"] == "amd64" and doc["Os"] == "linux"
        layers = json.loads((src / "blobs" / "sha256" / manifest.hex).read_text())["layers"]
        assert doc["Layers"] == [layer["digest"] for layer in layers]


async def test_skopeo_delete_removes_the_image(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_single_image(src, "v1", layers=1)
    policy = policy_file(tmp_path)
    async with running_registry(tmp_path / "data") as reg:
        ref = f"docker://{reg.host}/gone/app:v1"
        await skopeo("copy", f"oci:{src}:v1", ref, "--dest-tls-verify=false", policy=policy)
        await skopeo("delete", "--tls-verify=false", ref, policy=policy)
        result = await skopeo_status("inspect", "--tls-verify=false", ref, policy=policy)
        assert result.returncode != 0
        assert (await reg.client.get("/v2/gone/app/manifests/v1")).status_code == 404


async def test_blob_x_ipfs_path_equals_kubo_add_of_the_same_bytes(tmp_path: Path, kubo: KuboPeer) -> None:
    src = tmp_path / "src"
    manifest = write_single_image(src, "v1", layers=2)
    policy = policy_file(tmp_path)
    async with running_registry(tmp_path / "data") as reg:
        await skopeo(
            "copy",
            f"oci:{src}:v1",
            f"docker://{reg.host}/cid/app:v1",
            "--dest-tls-verify=false",
            policy=policy,
        )
        doc = json.loads((src / "blobs" / "sha256" / manifest.hex).read_bytes())
        for desc in [doc["config"], *doc["layers"]]:
            data = (src / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()
            resp = await reg.client.head(f"/v2/cid/app/blobs/{desc['digest']}")
            assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{kubo.add_bytes(data, only_hash=True)}"
