"""What the mirror announces to content routing: a public namespace's blobs with their digest CIDs,
nothing of a private namespace's."""

from __future__ import annotations

from pathlib import Path

from fake_upstream import running_upstream, sha256

from ipfsreg.cid import CID
from ipfsreg.mirror.settings import MirrorSettings, UpstreamSettings
from ipfsreg.node.blobs.protocol import digest_cid
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.testing import running_registry
from ipfsreg.unixfs.importer import import_bytes

PUBLIC = b"public layer " * 20_000
SECRET = b"secret layer " * 20_000


async def test_public_blobs_are_announced_with_their_digest_cids_and_private_ones_not_at_all(
    tmp_path: Path,
) -> None:
    announced: list[CID] = []
    async with running_upstream() as hub, running_upstream() as private:
        hub.add_image("library/app", "v1", [PUBLIC])
        private.add_image("team/app", "v1", [SECRET])
        settings = MirrorSettings(
            upstream=[
                UpstreamSettings("docker.io", hub.url),
                UpstreamSettings("private.example", private.url, private=True),
            ]
        )
        async with running_registry(
            tmp_path / "data",
            RegistrySettings(listen="127.0.0.1:0"),
            mirror=settings,
            on_committed=announced.extend,
        ) as reg:
            for ns, repo, data in (
                ("docker.io", "library/app", PUBLIC),
                ("private.example", "team/app", SECRET),
            ):
                resp = await reg.client.get(f"/v2/{repo}/manifests/v1", params={"ns": ns})
                for desc in [resp.json()["config"], *resp.json()["layers"]]:
                    await reg.client.get(f"/v2/{repo}/blobs/{desc['digest']}", params={"ns": ns})
                assert (
                    await reg.client.get(f"/v2/{repo}/blobs/{sha256(data)}", params={"ns": ns})
                ).content == data
            images = {
                name: reg.store.image_cid(name, "v1")
                for name in ("private.example/team/app", "docker.io/library/app")
            }
    assert import_bytes(PUBLIC)[1].cid in announced
    assert digest_cid(sha256(PUBLIC)) in announced
    assert import_bytes(SECRET)[1].cid not in announced
    assert digest_cid(sha256(SECRET)) not in announced
    assert (
        images["private.example/team/app"] is not None and images["private.example/team/app"] not in announced
    )
    assert images["docker.io/library/app"] in announced
