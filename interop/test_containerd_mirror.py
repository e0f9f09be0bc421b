"""ipfsreg as containerd's mirror (real containerd from Debian, driven with ``ctr --hosts-dir``), with two
Debian ``docker-registry`` instances standing in for docker.io and quay.io, on loopback only.

Each containerd is started by the test with its own root, state dir, socket and config (never a
system containerd) and the ``native`` snapshotter; the hosts directory is what ``ipfsreg mirror
config --runtime containerd`` writes. The registries' access logs (distribution's combined log on
stdout) count what the upstreams served: layers pulled through a second ipfsreg come from the first
node's blocks, and nodes missing one 100 MB layer at once get it from the upstream about once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from interop.oci_images import OCI_LAYER_TAR, OCILayout, tar_layer, write_large_image
from interop.registry_fixtures import policy_file, skopeo
from ipfsreg.app import ServerInfo

_DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
]
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
)
_ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)'
)


@pytest.fixture(autouse=True)
def _require_tools() -> None:
    # Interop tests never skip: a missing tool is a failure.
    for tool in ("containerd", "ctr", "docker-registry", "skopeo"):
        assert shutil.which(tool), f"{tool} is not installed (make system-deps)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the stand-in registries ---------------------------------------------------------------------


@dataclass
class StandIn:
    """A docker-registry on loopback whose access log says what it served."""

    host: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def served(self, path_part: str, method: str = "GET") -> list[int]:
        """Bytes of each successful answer to ``method`` requests whose path contains ``path_part``."""
        sizes: list[int] = []
        for line in self.log.read_text().splitlines():
            match = _ACCESS_LINE.search(line)
            if (
                match
                and match["method"] == method
                and path_part in match["path"]
                and match["status"] in ("200", "206")
                and match["bytes"] != "-"
            ):
                sizes.append(int(match["bytes"]))
        return sizes

    def stop(self) -> None:
        _stop(self.process)

    async def manifest(self, ref: str) -> tuple[str, dict[str, Any]]:
        """The digest and manifest the registry holds for ``repo:tag`` (as pushed, maybe converted)."""
        repo, _, tag = ref.rpartition(":")
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.get(
                f"{self.url}/v2/{repo}/manifests/{tag}", headers={"Accept": _MANIFEST_TYPES}
            )
        assert resp.status_code == 200, resp.text
        manifest: dict[str, Any] = resp.json()
        return resp.headers["Docker-Content-Digest"], manifest


@asynccontextmanager
async def stand_in(workdir: Path) -> AsyncIterator[StandIn]:
    port = _free_port()
    root = workdir / "storage"
    root.mkdir(parents=True)
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = workdir / "access.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - a server for the whole test, stopped in finally
            ["docker-registry", "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    registry = StandIn(f"127.0.0.1:{port}", process, log)
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            with trio.fail_after(30):
                while True:
                    assert process.poll() is None, "docker-registry exited while starting"
                    try:
                        if (await client.get(f"{registry.url}/v2/")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        yield registry
    finally:
        registry.stop()


def small_image(root: Path, marker: str) -> str:
    """An image of two small uncompressed tar layers (so containerd can unpack them); its digest."""
    layout = OCILayout(root)
    layers = [
        layout.add_blob(
            tar_layer({f"{marker}-{i}.txt": f"{marker} layer {i}\n".encode() * 2000}, compress=False),
            OCI_LAYER_TAR,
        )
        for i in range(2)
    ]
    manifest = layout.add_image(layers)
    layout.tag(manifest, "v1")
    return manifest.digest


async def push(layout: Path, registry: StandIn, ref: str, policy: Path) -> None:
    await skopeo(
        "copy",
        f"oci:{layout}:v1",
        f"docker://{registry.host}/{ref}",
        "--dest-tls-verify=false",
        policy=policy,
    )


# --- containerd ------------------------------------------------------------------------------


@dataclass
class Containerd:
    socket: Path
    process: subprocess.Popen[bytes]
    hosts: Path

    async def ctr(
        self, *args: str, check: bool = True, time_limit: float = 180
    ) -> subprocess.CompletedProcess[bytes]:
        command = ["ctr", "--address", str(self.socket), *args]
        with trio.fail_after(time_limit):
            result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-3000:]}"
            )
        return result

    async def pull(self, ref: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return await self.ctr(
            "images", "pull", "--hosts-dir", str(self.hosts), "--snapshotter", "native", ref, **kwargs
        )

    async def image_digest(self, ref: str) -> str:
        listing = (await self.ctr("images", "ls")).stdout.decode().splitlines()
        for line in listing[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return next(f for f in fields if f.startswith("sha256:"))
        raise AssertionError(f"{ref} is not in `ctr images ls`: {listing}")


@contextmanager
def containerd(workdir: Path, hosts: Path) -> Iterator[Containerd]:
    """A containerd of the test's own (root, state, socket, config), stopped and removed at the end."""
    workdir.mkdir(parents=True)
    sock = workdir / "containerd.sock"
    config = workdir / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{workdir / "root"}"\n'
        f'state = "{workdir / "state"}"\n'
        f"disabled_plugins = {json.dumps(_DISABLED_PLUGINS)}\n"
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )
    log = (workdir / "containerd.log").open("wb")
    process = subprocess.Popen(
        ["containerd", "--config", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        yield Containerd(sock, process, hosts)
    finally:
        _stop(process)
        log.close()


async def started(daemon: Containerd) -> Containerd:
    with trio.fail_after(30):
        while daemon.process.poll() is None:
            if daemon.socket.exists() and (await daemon.ctr("version", check=False)).returncode == 0:
                return daemon
            await trio.sleep(0.1)
    raise AssertionError("containerd exited while starting")


async def write_hosts(data: Path, registry_url: str, hosts: Path, registries: list[str]) -> None:
    """``ipfsreg mirror config --runtime containerd --write`` for the node at ``registry_url``."""
    args = ["--data", str(data), "mirror", "config", "--runtime", "containerd", "--write", str(hosts)]
    for registry in registries:
        args += ["--registry", registry]
    result = await trio.run_process(
        [sys.executable, "-m", "ipfsreg", *args, "--address", registry_url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()


# --- ipfsreg nodes ---------------------------------------------------------------------------


def node_overrides(hub: StandIn, quay: StandIn | None = None, **extra: Any) -> dict[str, Any]:
    upstreams = [{"registry": "docker.io", "url": hub.url}]
    if quay is not None:
        upstreams.append({"registry": "quay.io", "url": quay.url})
    return {"mirror.upstream": upstreams, **extra}


async def connect(control: str, other: ServerInfo) -> None:
    async with httpx.AsyncClient(base_url=control, timeout=30) as client:
        resp = await client.post("/api/v0/connect", params={"arg": other.p2p_addrs[0]})
        assert resp.status_code == 200, resp.text


async def mirror_stat(info: ServerInfo) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=info.api_url, timeout=30) as client:
        result: dict[str, Any] = (await client.get("/api/v0/mirror/stat")).json()
        return result


async def test_containerd_pulls_two_registries_through_ipfsreg_and_a_second_node_from_the_first(
    serve_node: Any, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path)
    small_image(tmp_path / "hub-image", "hub")
    small_image(tmp_path / "quay-image", "quay")
    async with stand_in(tmp_path / "hub") as hub, stand_in(tmp_path / "quay") as quay:
        await push(tmp_path / "hub-image", hub, "library/demo:v1", policy)
        await push(tmp_path / "quay-image", quay, "library/demo:v1", policy)
        hub_digest, hub_manifest = await hub.manifest("library/demo:v1")
        quay_digest, _ = await quay.manifest("library/demo:v1")
        assert hub_digest != quay_digest
        overrides = node_overrides(hub, quay, **{"mirror.tag_ttl": 0.0})  # every tag asked upstream
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(serve_node("first", **overrides))
            second = await stack.enter_async_context(serve_node("second", **overrides))
            await connect(second.api_url, first)
            for name, info in (("first", first), ("second", second)):
                (tmp_path / name / "config.toml").write_text(
                    f'[[mirror.upstream]]\nregistry = "docker.io"\nurl = "{hub.url}"\n\n'
                    f'[[mirror.upstream]]\nregistry = "quay.io"\nurl = "{quay.url}"\n'
                )
                await write_hosts(tmp_path / name, info.registry_urls[0], tmp_path / f"hosts-{name}", [])
            hosts_toml = (tmp_path / "hosts-first" / "docker.io" / "hosts.toml").read_text()
            assert f'server = "{hub.url}"' in hosts_toml

            # The same repository and tag on both registries: two images, each from its registry.
            one = await started(
                stack.enter_context(containerd(tmp_path / "ctr-one", tmp_path / "hosts-first"))
            )
            await one.pull("docker.io/library/demo:v1")
            await one.pull("quay.io/library/demo:v1")
            assert await one.image_digest("docker.io/library/demo:v1") == hub_digest
            assert await one.image_digest("quay.io/library/demo:v1") == quay_digest
            layers = hub_manifest["layers"]
            for layer in layers:
                assert len(hub.served(f"/blobs/{layer['digest']}")) == 1  # containerd went through ipfsreg
            first_stat = await mirror_stat(first)
            assert first_stat["bytes"]["upstream"] > 0
            assert set(first_stat["namespaces"]) == {"docker.io", "quay.io"}

            # A second node serves the same pull from the first node's blocks.
            two = await started(
                stack.enter_context(containerd(tmp_path / "ctr-two", tmp_path / "hosts-second"))
            )
            await two.pull("docker.io/library/demo:v1")
            assert await two.image_digest("docker.io/library/demo:v1") == hub_digest
            for layer in layers:
                assert len(hub.served(f"/blobs/{layer['digest']}")) == 1  # no second download of any layer
            second_stat = await mirror_stat(second)
            assert second_stat["bytes"]["upstream"] == 0
            assert second_stat["bytes"]["peer"] >= sum(layer["size"] for layer in layers)

            # The upstream stopped: the tag from its last known digest, every digest from the nodes.
            hub.stop()
            three = await started(
                stack.enter_context(containerd(tmp_path / "ctr-three", tmp_path / "hosts-second"))
            )
            with trio.fail_after(120):
                await three.pull("docker.io/library/demo:v1")
            assert await three.image_digest("docker.io/library/demo:v1") == hub_digest
            async with httpx.AsyncClient(base_url=second.registry_urls[0], timeout=30) as client:
                stale = await client.get(
                    "/v2/library/demo/manifests/v1",
                    params={"ns": "docker.io"},
                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                )
            assert stale.headers["Docker-Content-Digest"] == hub_digest
            assert int(stale.headers["Ipfsreg-Tag-Stale"]) >= 0
            fresh_node = await stack.enter_async_context(serve_node("third", **overrides))
            await connect(fresh_node.api_url, first)
            (tmp_path / "third" / "config.toml").write_text(
                f'[[mirror.upstream]]\nregistry = "docker.io"\nurl = "{hub.url}"\n'
            )
            await write_hosts(tmp_path / "third", fresh_node.registry_urls[0], tmp_path / "hosts-third", [])
            four = await started(
                stack.enter_context(containerd(tmp_path / "ctr-four", tmp_path / "hosts-third"))
            )
            with trio.fail_after(120):
                await four.pull(f"docker.io/library/demo@{hub_digest}")  # a node that never saw it, by digest
            third_stat = await mirror_stat(fresh_node)
            assert third_stat["bytes"]["upstream"] == 0 and third_stat["bytes"]["peer"] > 0


async def test_three_nodes_missing_a_100mb_layer_at_once_get_it_from_the_upstream_about_once(
    serve_node: Any, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path)
    size = 100 * 1024 * 1024
    write_large_image(tmp_path / "big", [size], tag="v1")
    async with stand_in(tmp_path / "hub") as hub:
        await push(tmp_path / "big", hub, "library/big:v1", policy)
        _, manifest = await hub.manifest("library/big:v1")
        layer = manifest["layers"][0]
        for path in (tmp_path / "big" / "blobs" / "sha256").iterdir():
            os.unlink(path)  # the stand-in holds the only copy now
        async with AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(serve_node(f"node{i}", **node_overrides(hub)))
                for i in range(3)
            ]
            for index, node in enumerate(nodes):
                for earlier in nodes[:index]:
                    await connect(node.api_url, earlier)
            digests: dict[int, str] = {}

            async def pull(index: int, info: ServerInfo) -> None:
                hasher = hashlib.sha256()
                async with (
                    httpx.AsyncClient(base_url=info.registry_urls[0], timeout=120) as client,
                    client.stream(
                        "GET", f"/v2/library/big/blobs/{layer['digest']}", params={"ns": "docker.io"}
                    ) as resp,
                ):
                    assert resp.status_code == 200
                    async for chunk in resp.aiter_bytes():
                        hasher.update(chunk)
                digests[index] = "sha256:" + hasher.hexdigest()

            with trio.fail_after(240):
                async with trio.open_nursery() as nursery:
                    for index, info in enumerate(nodes):
                        nursery.start_soon(pull, index, info)
            assert digests == {i: layer["digest"] for i in range(3)}
            served = sum(hub.served(f"/blobs/{layer['digest']}"))
            assert size <= served <= 1.25 * size, f"the upstream served {served / size:.2f} copies"
            stats = [await mirror_stat(node) for node in nodes]
            assert sum(s["bytes"]["upstream"] for s in stats) == served
            # Every node ends with a verified copy: served locally now, with the same bytes.
            for node in nodes:
                async with httpx.AsyncClient(base_url=node.registry_urls[0], timeout=120) as client:
                    head = await client.head(
                        f"/v2/library/big/blobs/{layer['digest']}", params={"ns": "docker.io"}
                    )
                assert head.status_code == 200 and "X-Ipfs-Path" in head.headers


# --- an upstream that lies or hangs: a proxy in front of the real registry ------------------------


@dataclass
class Misbehaving:
    """Knobs of :func:`misbehaving_proxy` (mutate them while it serves)."""

    target: str
    corrupt_blobs: bool = False
    hang: bool = False
    url: str = ""


def _proxy_app(state: Misbehaving) -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)
    client = httpx.AsyncClient(base_url=state.target, timeout=60)

    @app.route("/v2/", defaults={"path": ""}, methods=["GET", "HEAD"])
    @app.route("/v2/<path:path>", methods=["GET", "HEAD"])
    async def forward(path: str) -> Response:
        if state.hang:
            await trio.sleep_forever()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("accept", "range", "authorization")
        }
        upstream = await client.request(request.method, f"/v2/{path}", headers=headers)
        body = upstream.content
        if state.corrupt_blobs and "/blobs/" in path and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])  # the same length, other bytes
        passed = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "docker-content-digest", "content-range", "www-authenticate")
        }
        response = Response(body, status=upstream.status_code, headers=passed)
        response.content_length = (
            len(body) if request.method == "GET" else int(upstream.headers.get("content-length", 0))
        )
        return response

    return app


@asynccontextmanager
async def misbehaving_proxy(state: Misbehaving) -> AsyncIterator[Misbehaving]:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, _proxy_app(state), config)
        state.url = binds[0]
        yield state
        nursery.cancel_scope.cancel()


async def test_containerd_never_gets_an_upstreams_wrong_bytes_and_a_hanging_upstream_is_a_quick_miss(
    serve_node: Any, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path)
    small_image(tmp_path / "image", "lies")
    async with stand_in(tmp_path / "hub") as hub, misbehaving_proxy(Misbehaving(hub.url)) as proxy:
        await push(tmp_path / "image", hub, "library/demo:v1", policy)
        digest, manifest = await hub.manifest("library/demo:v1")
        overrides = {
            "mirror.upstream": [{"registry": "docker.io", "url": proxy.url}],
            "mirror.upstream_timeout": 2.0,
            "mirror.tag_ttl": 0.0,
        }
        async with AsyncExitStack() as stack:
            node = await stack.enter_async_context(serve_node("node", **overrides))
            hosts = tmp_path / "hosts"
            (tmp_path / "node" / "config.toml").write_text(
                # containerd's own fallback is a closed port: what it gets, it gets through ipfsreg.
                f'[[mirror.upstream]]\nregistry = "docker.io"\nurl = "http://127.0.0.1:{_free_port()}"\n'
            )
            await write_hosts(tmp_path / "node", node.registry_urls[0], hosts, [])
            daemon = await started(stack.enter_context(containerd(tmp_path / "ctr", hosts)))

            proxy.corrupt_blobs = True
            wrong = await daemon.pull("docker.io/library/demo:v1", check=False)
            assert wrong.returncode != 0
            async with httpx.AsyncClient(base_url=node.registry_urls[0], timeout=30) as client:
                for layer in manifest["layers"]:
                    # Nothing of the wrong bytes was kept: each layer is fetched again, now right.
                    proxy.corrupt_blobs = False
                    resp = await client.get(
                        f"/v2/library/demo/blobs/{layer['digest']}", params={"ns": "docker.io"}
                    )
                    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == layer["digest"]
            await daemon.pull("docker.io/library/demo:v1")
            assert await daemon.image_digest("docker.io/library/demo:v1") == digest

            proxy.hang = True
            with trio.fail_after(60):
                hung = await daemon.pull("docker.io/library/other:v1", check=False)
            assert hung.returncode != 0
