"""Namespaced upstreams over real HTTP on loopback: ``?ns=`` scopes every repository to its registry,
many upstreams by ``[[mirror.upstream]]`` rule, last-known tags when an upstream is down, misses
answered 404 within the bound, and the OCI-Namespace header."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from fake_upstream import OCI_MANIFEST, FakeUpstream, running_upstream, sha256

from ipfsreg.mirror.settings import MirrorSettings, UpstreamSettings
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.testing import RunningRegistry, running_registry

LAYER = b"a layer of docker.io " * 5000
OTHER_LAYER = b"a layer of quay.io " * 5000


@asynccontextmanager
async def mirror(
    tmp_path: Path, *entries: UpstreamSettings, **options: Any
) -> AsyncIterator[RunningRegistry]:
    settings = MirrorSettings(upstream=list(entries), **options)
    async with running_registry(
        tmp_path / "data", RegistrySettings(listen="127.0.0.1:0"), mirror=settings
    ) as reg:
        yield reg


async def pull(reg: RunningRegistry, repo: str, tag: str, ns: str | None) -> tuple[str, dict[str, Any]]:
    params = {"ns": ns} if ns else {}
    resp = await reg.client.get(
        f"/v2/{repo}/manifests/{tag}", params=params, headers={"Accept": OCI_MANIFEST}
    )
    assert resp.status_code == 200, resp.text
    manifest: dict[str, Any] = resp.json()
    for desc in [manifest["config"], *manifest["layers"]]:
        blob = await reg.client.get(f"/v2/{repo}/blobs/{desc['digest']}", params=params)
        assert blob.status_code == 200, blob.text
        assert sha256(blob.content) == desc["digest"]
        if ns:
            assert blob.headers["OCI-Namespace"] == ns
    return resp.headers["Docker-Content-Digest"], manifest


async def test_the_same_repository_and_tag_on_two_registries_stay_distinct(tmp_path: Path) -> None:
    async with running_upstream() as hub, running_upstream() as quay:
        hub_digest, _ = hub.add_image("library/app", "v1", [LAYER])
        quay_digest, _ = quay.add_image("library/app", "v1", [OTHER_LAYER])
        entries = (UpstreamSettings("docker.io", hub.url), UpstreamSettings("quay.io", quay.url))
        async with mirror(tmp_path, *entries) as reg:
            assert (await pull(reg, "library/app", "v1", "docker.io"))[0] == hub_digest
            assert (await pull(reg, "library/app", "v1", "quay.io"))[0] == quay_digest
            assert reg.store.resolve_tag("docker.io/library/app", "v1") == parse_digest(hub_digest)
            assert reg.store.resolve_tag("quay.io/library/app", "v1") == parse_digest(quay_digest)
            # Blobs are shared by digest (same digest, same bytes): no upstream needed for them.
            shared = await reg.client.get(
                f"/v2/library/app/blobs/{sha256(OTHER_LAYER)}", params={"ns": "docker.io"}
            )
            assert shared.content == OTHER_LAYER
            assert shared.headers["OCI-Namespace"] == "docker.io"
            assert hub.count("HEAD", "/blobs/") + hub.count("GET", f"/blobs/{sha256(OTHER_LAYER)}") == 0


async def test_an_image_pushed_unqualified_is_not_served_for_another_registry(tmp_path: Path) -> None:
    async with mirror(tmp_path) as reg:
        layer = await reg.client.post(
            "/v2/library/x/blobs/uploads/", params={"digest": sha256(LAYER)}, content=LAYER
        )
        assert layer.status_code == 201
        config = b"{}"
        await reg.client.post(
            "/v2/library/x/blobs/uploads/", params={"digest": sha256(config)}, content=config
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/octet-stream", "digest": sha256(LAYER), "size": len(LAYER)}
            ],
        }
        put = await reg.client.put(
            "/v2/library/x/manifests/v1", content=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
        )
        assert put.status_code == 201
        assert (await reg.client.get("/v2/library/x/manifests/v1")).status_code == 200
        for ns in ("quay.io", "docker.io"):
            resp = await reg.client.get("/v2/library/x/manifests/v1", params={"ns": ns})
            assert resp.status_code == 404
            assert resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            assert resp.headers["OCI-Namespace"] == ns


async def test_catalog_and_tags_through_ns_use_the_names_that_registry_knows(tmp_path: Path) -> None:
    async with running_upstream() as hub:
        hub.add_image("library/app", "v1", [LAYER])
        hub.add_image("team/tool", "v2", [LAYER])
        async with mirror(tmp_path, UpstreamSettings("docker.io", hub.url)) as reg:
            await pull(reg, "library/app", "v1", "docker.io")
            await pull(reg, "team/tool", "v2", "docker.io")
            catalog = await reg.client.get("/v2/_catalog", params={"ns": "docker.io"})
            assert catalog.json() == {"repositories": ["library/app", "team/tool"]}
            page = await reg.client.get("/v2/_catalog", params={"ns": "docker.io", "n": 1})
            assert page.json() == {"repositories": ["library/app"]}
            assert "ns=docker.io" in page.headers["Link"]
            everything = await reg.client.get("/v2/_catalog")
            assert everything.json() == {"repositories": ["docker.io/library/app", "docker.io/team/tool"]}
            tags = await reg.client.get("/v2/library/app/tags/list", params={"ns": "docker.io"})
            assert tags.json() == {"name": "library/app", "tags": ["v1"]}
            assert tags.headers["OCI-Namespace"] == "docker.io"


async def test_an_internal_error_under_ns_still_names_the_namespace(tmp_path: Path, monkeypatch: Any) -> None:
    async with running_upstream() as hub, mirror(tmp_path, UpstreamSettings("docker.io", hub.url)) as reg:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken on purpose")

        monkeypatch.setattr(reg.store, "list_repos", broken)
        catalog = await reg.client.get("/v2/_catalog", params={"ns": "docker.io"})
        assert catalog.status_code == 500
        assert catalog.json()["errors"][0]["code"] == "UNKNOWN"
        assert catalog.headers["OCI-Namespace"] == "docker.io"


async def test_a_name_led_by_a_mirrored_registry_is_that_registrys_repository(tmp_path: Path) -> None:
    # How CRI-O and podman ask a mirror configured with a path: no ns, the registry in the name.
    async with running_upstream() as hub:
        digest, _ = hub.add_image("library/app", "v1", [LAYER])
        async with mirror(tmp_path, UpstreamSettings("docker.io", hub.url)) as reg:
            assert (await pull(reg, "docker.io/library/app", "v1", None))[0] == digest
            assert reg.store.resolve_tag("docker.io/library/app", "v1") == parse_digest(digest)
            # The same repository through ?ns=: nothing more from the upstream.
            gets = hub.count("GET", "/blobs/")
            await pull(reg, "library/app", "v1", "docker.io")
            assert hub.count("GET", "/blobs/") == gets
            plain = await reg.client.get("/v2/docker.io/library/app/manifests/v1")
            assert "OCI-Namespace" not in plain.headers


async def test_pushes_and_deletes_through_ns_are_unsupported(tmp_path: Path) -> None:
    async with mirror(tmp_path) as reg:
        upload = await reg.client.post("/v2/library/x/blobs/uploads/", params={"ns": "docker.io"})
        assert upload.status_code == 405
        assert upload.json()["errors"][0]["code"] == "UNSUPPORTED"
        delete = await reg.client.delete("/v2/library/x/manifests/v1", params={"ns": "docker.io"})
        assert delete.status_code == 405


async def test_an_ns_that_is_not_a_registry_host_is_name_invalid(tmp_path: Path) -> None:
    async with mirror(tmp_path) as reg:
        for ns in ("library", "ipfs", "a b", "x" * 300, "-bad.io"):
            resp = await reg.client.get("/v2/library/x/manifests/v1", params={"ns": ns})
            assert resp.status_code == 400, ns
            assert resp.json()["errors"][0]["code"] == "NAME_INVALID"
        ok = await reg.client.get("/v2/", params={"ns": "Registry-1.Docker.IO"})
        assert ok.status_code == 200
        assert ok.headers["OCI-Namespace"] == "docker.io"


async def test_an_unreachable_upstream_serves_the_last_known_digest_and_says_so(tmp_path: Path) -> None:
    async with running_upstream() as hub:
        digest, _ = hub.add_image("library/app", "v1", [LAYER])
        async with mirror(tmp_path, UpstreamSettings("docker.io", hub.url), tag_ttl=0.0) as reg:
            await pull(reg, "library/app", "v1", "docker.io")
            fresh = await reg.client.get("/v2/library/app/manifests/v1", params={"ns": "docker.io"})
            assert "Ipfsreg-Tag-Stale" not in fresh.headers
            hub.down = True
            stale = await reg.client.get("/v2/library/app/manifests/v1", params={"ns": "docker.io"})
            assert stale.status_code == 200
            assert stale.headers["Docker-Content-Digest"] == digest
            assert int(stale.headers["Ipfsreg-Tag-Stale"]) >= 0
            assert stale.headers["Warning"].startswith("110 ")
            # Digests need no upstream at all.
            await pull(reg, "library/app", "v1", "docker.io")


async def test_a_tag_the_upstream_dropped_is_a_miss(tmp_path: Path) -> None:
    async with running_upstream() as hub:
        hub.add_image("library/app", "v1", [LAYER])
        async with mirror(tmp_path, UpstreamSettings("docker.io", hub.url), tag_ttl=0.0) as reg:
            await pull(reg, "library/app", "v1", "docker.io")
            del hub.manifests[("library/app", "v1")]
            resp = await reg.client.get("/v2/library/app/manifests/v1", params={"ns": "docker.io"})
            assert resp.status_code == 404
            assert resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_a_hanging_upstream_is_a_404_within_the_bound(tmp_path: Path) -> None:
    async with running_upstream(FakeUpstream(hang=True)) as hub:
        entry = UpstreamSettings("docker.io", hub.url)
        async with mirror(tmp_path, entry, upstream_timeout=0.5, peer_timeout=0.2) as reg:
            with trio.fail_after(5):
                manifest = await reg.client.get("/v2/library/app/manifests/v1", params={"ns": "docker.io"})
                blob = await reg.client.get(
                    f"/v2/library/app/blobs/{sha256(LAYER)}", params={"ns": "docker.io"}
                )
            assert manifest.status_code == 404
            assert manifest.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            assert "did not answer within" in json.dumps(manifest.json())
            assert blob.status_code == 404
            assert blob.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_a_registry_not_listed_goes_to_the_default_url(tmp_path: Path) -> None:
    async with running_upstream() as other:
        digest, _ = other.add_image("tools/x", "v1", [LAYER])
        host = other.url.removeprefix("http://")
        async with mirror(tmp_path, default_url="http://{ns}") as reg:
            assert (await pull(reg, "tools/x", "v1", host))[0] == digest
            assert reg.store.resolve_tag(f"{host}/tools/x", "v1") == parse_digest(digest)
        async with mirror(tmp_path / "strict") as strict:
            resp = await strict.client.get("/v2/tools/x/manifests/v1", params={"ns": host})
            assert resp.status_code == 404


async def test_prefix_rules_pick_the_longest_match_with_its_own_credentials(tmp_path: Path) -> None:
    async with (
        running_upstream() as public,
        running_upstream(FakeUpstream(auth="basic", users={"robot": "s3cret"})) as private,
    ):
        public.add_image("library/app", "v1", [LAYER])
        private_digest, _ = private.add_image("hub/myorg/app", "v1", [OTHER_LAYER])
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        entries = (
            UpstreamSettings("docker.io", public.url),
            UpstreamSettings(
                "docker.io",
                private.url,
                username="robot",
                token_file=token,
                repositories=["myorg/"],
                upstream_prefix="hub/",
            ),
        )
        async with mirror(tmp_path, *entries) as reg:
            await pull(reg, "library/app", "v1", "docker.io")
            assert (await pull(reg, "myorg/app", "v1", "docker.io"))[0] == private_digest
            assert private.count("GET", "/v2/hub/myorg/app/manifests/") == 1
            assert public.count("GET", "myorg") == 0


async def test_the_single_upstream_also_serves_the_namespace_of_its_own_host(tmp_path: Path) -> None:
    # containerd pulling HOST/repo:tag with ipfsreg as HOST's mirror sends ?ns=HOST.
    async with running_upstream() as hub:
        digest, _ = hub.add_image("bench/app", "v1", [LAYER])
        host = hub.url.removeprefix("http://")
        settings = RegistrySettings(listen="127.0.0.1:0", upstream=hub.url)
        async with running_registry(tmp_path / "data", settings, mirror=MirrorSettings()) as reg:
            assert (await pull(reg, "bench/app", "v1", host))[0] == digest
            assert reg.store.resolve_tag(f"{host}/bench/app", "v1") == parse_digest(digest)
            other = await reg.client.get("/v2/bench/app/manifests/v1", params={"ns": "quay.io"})
            assert other.status_code == 404
