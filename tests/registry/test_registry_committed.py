"""on_committed: the registry tells the node of each blob root, manifest and image directory it stored."""

from __future__ import annotations

from pathlib import Path

import trio
from registry_helpers import Server, running_registry

from ipfsreg.cid import CID
from ipfsreg.node.blobs.protocol import digest_cid
from ipfsreg.registry.digests import parse_digest


def _root(server: Server, digest: str) -> CID:
    info = server.store.blob_info(parse_digest(digest))
    assert info is not None
    return info.cid


async def test_push_reports_every_blob_root_the_manifest_and_the_image_directory(tmp_path: Path) -> None:
    committed: list[CID] = []
    async with running_registry(tmp_path / "data", on_committed=committed.extend) as server:
        config_digest = await server.push_blob("lib/app", b'{"os": "linux"}')
        # At once, with the 201: its root, and its digest CID (how fleet mirrors look blobs up).
        assert committed == [_root(server, config_digest), digest_cid(config_digest)]
        digest, manifest = await server.push_image("lib/app", "v1", layers=[b"one", b"two"])
        blob_roots = {
            _root(server, d)
            for d in [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
        }
        assert blob_roots <= set(committed)
        assert _root(server, digest) in committed
        image = server.store.image_cid("lib/app", "v1")
        assert image is not None and committed[-1] == image
        resp = await server.client.get("/v2/lib/app/manifests/v1")
        assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{image}"


async def test_publish_reports_the_new_image_directory(tmp_path: Path) -> None:
    committed: list[CID] = []
    async with running_registry(tmp_path / "data", on_committed=committed.extend) as server:
        await server.push_image("lib/app", "v1")
        committed.clear()
        image = await server.store.publish("lib/app", "v1")
        assert committed == [image]


async def test_a_failing_listener_does_not_fail_the_push(tmp_path: Path) -> None:
    def broken(cids: list[CID]) -> None:
        raise RuntimeError("listener bug")

    async with running_registry(tmp_path / "data", on_committed=broken) as server:
        digest, _ = await server.push_image("lib/app", "v1")
        assert (await server.client.get(f"/v2/lib/app/manifests/{digest}")).status_code == 200


async def test_the_push_is_answered_only_after_what_on_committed_queued_was_sent(tmp_path: Path) -> None:
    events: list[str] = []

    def queued(cids: list[CID]) -> None:
        events.append(f"queued {len(cids)}")

    async def sent() -> None:
        await trio.sleep(0.05)  # a slow write: the 201 still waits for it
        events.append("sent")

    async with running_registry(tmp_path / "data", on_committed=queued, send_committed=sent) as server:
        await server.push_blob("lib/app", b'{"os": "linux"}')
        assert events == ["queued 2", "sent"]
        events.clear()
        await server.push_image("lib/app", "v1", layers=[b"one"])
        # Config (already there: recorded again), the layer, then the manifest with its image directory.
        assert events[-2:] == ["queued 3", "sent"]
        assert events.count("sent") == events.count("queued 2") + events.count("queued 3")


async def test_a_failing_sender_does_not_fail_the_push(tmp_path: Path) -> None:
    async def broken() -> None:
        raise RuntimeError("sender bug")

    async with running_registry(
        tmp_path / "data", on_committed=lambda cids: None, send_committed=broken
    ) as server:
        digest, _ = await server.push_image("lib/app", "v1")
        assert (await server.client.get(f"/v2/lib/app/manifests/{digest}")).status_code == 200
