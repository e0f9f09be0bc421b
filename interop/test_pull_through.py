"""Pull-through cache against the reference registry (Debian ``docker-registry``, CNCF distribution) as
the upstream on loopback, with skopeo as the client: pulls through ipfsreg are byte-identical, blobs
are stored as the DAGs Kubo's ``ipfs add`` makes, and the cache serves the image once the upstream
is gone; with htpasswd (bcrypt) auth on the upstream, ipfsreg uses its upstream credentials."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import trio

from interop.oci_images import layout_blobs, write_multiarch_image, write_single_image
from interop.registry_fixtures import policy_file, skopeo, skopeo_status
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.testing import RunningRegistry, running_registry
from ipfsreg.unixfs.importer import import_bytes

REFERENCE_BINARY = "docker-registry"


@pytest.fixture(autouse=True)
def _require_tools() -> None:
    # Interop tests never skip: a missing tool is a failure.
    assert shutil.which("skopeo"), "skopeo is not installed (Debian package 'skopeo')"
    assert shutil.which(REFERENCE_BINARY), (
        "docker-registry is not installed (Debian package 'docker-registry')"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Reference:
    host: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def _reference_process(workdir: Path, users: dict[str, str] | None) -> Iterator[Reference]:
    """A docker-registry with filesystem storage in ``workdir`` (htpasswd auth when ``users``)."""
    port = _free_port()
    root = workdir / "reference-data"
    root.mkdir(parents=True)
    auth = ""
    if users:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                for user, password in users.items()
            )
        )
        auth = f"auth:\n  htpasswd:\n    realm: reference\n    path: {htpasswd}\n"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    process = subprocess.Popen(
        [REFERENCE_BINARY, "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reference = Reference(f"127.0.0.1:{port}", process)
    try:
        yield reference
    finally:
        reference.stop()


@asynccontextmanager
async def reference_registry(workdir: Path, users: dict[str, str] | None = None) -> AsyncIterator[Reference]:
    with _reference_process(workdir, users) as reference:
        async with httpx.AsyncClient(timeout=2) as client:
            with trio.fail_after(30):
                while True:
                    assert reference.process.poll() is None, "docker-registry exited while starting"
                    try:
                        resp = await client.get(f"{reference.url}/v2/")
                        if resp.status_code in (200, 401):
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        yield reference


def pull_through_registry(
    data_dir: Path, upstream: str, **overrides: Any
) -> AbstractAsyncContextManager[RunningRegistry]:
    """ipfsreg as a pull-through cache of ``upstream``, on a free loopback port."""
    return running_registry(data_dir, RegistrySettings(listen="127.0.0.1:0", upstream=upstream, **overrides))


async def test_skopeo_pull_through_reference_registry_is_byte_identical_and_cached(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest = write_single_image(src, "v1", layers=3)
    policy = policy_file(tmp_path)
    source_blobs = layout_blobs(src)
    async with reference_registry(tmp_path / "reference") as upstream:
        await skopeo(
            "copy",
            f"oci:{src}:v1",
            f"docker://{upstream.host}/library/app:v1",
            "--dest-tls-verify=false",
            policy=policy,
        )
        async with pull_through_registry(tmp_path / "data", upstream.url, upstream_tag_ttl=0.0) as cache:
            ref = f"docker://{cache.host}/library/app:v1"
            await skopeo("copy", ref, f"oci:{tmp_path / 'first'}:v1", "--src-tls-verify=false", policy=policy)
            assert layout_blobs(tmp_path / "first") == source_blobs
            # Every blob is stored as the DAG `ipfs add` makes of its bytes; the image is published.
            for digest, data in source_blobs.items():
                if digest == manifest.digest:
                    continue
                resp = await cache.client.get(f"/v2/library/app/blobs/{digest}")
                assert resp.content == data
                assert resp.headers["X-Ipfs-Path"] == f"/ipfs/{import_bytes(data)[1].cid}"
            assert cache.store.resolve_tag("library/app", "v1") == parse_digest(manifest.digest)
            assert cache.store.image_cid("library/app", "v1") is not None

            upstream.stop()
            await skopeo(
                "copy", ref, f"oci:{tmp_path / 'second'}:v1", "--src-tls-verify=false", policy=policy
            )
            assert layout_blobs(tmp_path / "second") == source_blobs
            missing = await skopeo_status(
                "inspect", "--tls-verify=false", f"docker://{cache.host}/library/other:v1", policy=policy
            )
            assert missing.returncode != 0


async def test_skopeo_pull_through_multiarch_index_with_all(tmp_path: Path) -> None:
    src = tmp_path / "src"
    index = write_multiarch_image(src, "multi")
    policy = policy_file(tmp_path)
    async with reference_registry(tmp_path / "reference") as upstream:
        await skopeo(
            "copy",
            "--all",
            f"oci:{src}:multi",
            f"docker://{upstream.host}/multi/app:multi",
            "--dest-tls-verify=false",
            policy=policy,
        )
        async with pull_through_registry(tmp_path / "data", upstream.url) as cache:
            ref = f"docker://{cache.host}/multi/app:multi"
            raw = await skopeo("inspect", "--raw", "--tls-verify=false", ref, policy=policy)
            assert json.loads(raw.stdout)["mediaType"] == index.media_type
            await skopeo(
                "copy", "--all", ref, f"oci:{tmp_path / 'dst'}:multi", "--src-tls-verify=false", policy=policy
            )
            assert layout_blobs(tmp_path / "dst") == layout_blobs(src)
            # Every child and blob is local now: the index itself is stored and tagged.
            assert cache.store.resolve_tag("multi/app", "multi") == parse_digest(index.digest)


async def test_pull_through_htpasswd_upstream_uses_the_upstream_credentials(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_single_image(src, "v1")
    policy = policy_file(tmp_path)
    users = {"mirror": "mirror-secret"}
    async with reference_registry(tmp_path / "reference", users) as upstream:
        await skopeo(
            "copy",
            f"oci:{src}:v1",
            f"docker://{upstream.host}/library/app:v1",
            "--dest-tls-verify=false",
            "--dest-creds",
            "mirror:mirror-secret",
            policy=policy,
        )
        async with pull_through_registry(
            tmp_path / "data", upstream.url, upstream_username="mirror", upstream_password="mirror-secret"
        ) as cache:
            ref = f"docker://{cache.host}/library/app:v1"
            await skopeo("copy", ref, f"oci:{tmp_path / 'dst'}:v1", "--src-tls-verify=false", policy=policy)
            assert layout_blobs(tmp_path / "dst") == layout_blobs(src)
        async with pull_through_registry(
            tmp_path / "data-wrong", upstream.url, upstream_username="mirror", upstream_password="wrong"
        ) as cache:
            resp = await cache.client.get("/v2/library/app/manifests/v1")
            assert resp.status_code == 403
            assert resp.json()["errors"][0]["code"] == "DENIED"
