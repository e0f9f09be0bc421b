"""The Dockerfile, built with buildah and run with `buildah run` (no Docker engine), against skopeo.

The image is built once per module from a locally debootstrapped Debian base (interop/container_base.py).
Each test runs the image's own ENTRYPOINT on the host network with free loopback ports appended as
arguments, as `docker run IMAGE --registry-listen ...` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from interop.container_base import (
    BaseRecipe,
    BuildahStore,
    ContainerBuildError,
    default_cache_dir,
    descendants,
    entrypoint_argv,
    kill_group,
    make_image,
    run_command,
    signal_innermost,
)
from interop.oci_images import layout_blobs, write_single_image
from interop.registry_fixtures import policy_file, skopeo

ENTRYPOINT = ["ipfsreg", "serve", "--data", "/data"]
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
MULTISTREAM = b"/multistream/1.0.0\n"
# Prints the set of uids owning /data and everything under it.
DATA_OWNERS = (
    "import os; print(sorted({os.lstat(os.path.join(d, n)).st_uid"
    " for d, ds, fs in os.walk('/data') for n in [*ds, *fs, '']}))"
)


@dataclass
class BuiltImage:
    store: BuildahStore
    tag: str
    config: dict[str, Any]


@pytest.fixture(scope="module")
def image() -> Iterator[BuiltImage]:
    # Interop tests never skip: a missing tool is a failure.
    for tool in ("buildah", "skopeo"):
        assert shutil.which(tool), f"{tool} is not installed (Debian package {tool!r})"
    store = BuildahStore(Path(tempfile.mkdtemp(prefix="ipfsreg-buildah-")))
    try:
        tag = make_image(default_cache_dir(), store)
        yield BuiltImage(store, tag, store.inspect_image(tag))
    finally:
        store.destroy()


@pytest.fixture(scope="module")
def container(image: BuiltImage) -> Iterator[str]:
    """A working container of the image with its own /data volume, shared by the module's tests
    (with the vfs driver each one is a full copy of the image: about 20 s)."""
    name = image.store.run("from", image.tag)
    try:
        yield name
    finally:
        with contextlib.suppress(ContainerBuildError):
            image.store.run("rm", name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    process: trio.Process
    log: Path
    registry: str  # host:port

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def serving(
    image: BuiltImage, container: str, log: Path, *, registry_port: int, p2p_port: int
) -> AsyncIterator[RunningServer]:
    """Run the image's entrypoint in ``container`` until /v2/ answers; on exit stop it as `docker stop`
    does (SIGTERM to the command), then kill whatever is left of the `buildah run` process group."""
    # Appended to the ENTRYPOINT, as `docker run IMAGE ARGS...` does; loopback only.
    args = [
        "--registry-listen",
        f"127.0.0.1:{registry_port}",
        "--p2p-listen",
        f"/ip4/127.0.0.1/tcp/{p2p_port}",
    ]
    argv = entrypoint_argv(image.config, args)
    with log.open("ab") as out:
        process = await trio.lowlevel.open_process(
            run_command(image.store, container, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=image.store.env,
            start_new_session=True,
        )
    server = RunningServer(process, log, f"127.0.0.1:{registry_port}")
    try:
        await _wait_for_registry(server)
        yield server
        signal_innermost(process.pid)
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        assert process.returncode == 0, f"ipfsreg did not stop cleanly on SIGTERM:\n{server.output()}"
    finally:
        kill_group(process.pid)
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()


async def _wait_for_registry(server: RunningServer) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        with trio.fail_after(START_TIMEOUT):
            while True:
                if server.process.returncode is not None:
                    raise AssertionError(
                        f"the container exited {server.process.returncode}:\n{server.output()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    response = await client.get(f"http://{server.registry}/v2/")
                    if response.status_code == 200:
                        return
                await trio.sleep(0.2)


async def buildah_run(
    image: BuiltImage, container: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(120):
        return await trio.run_process(
            run_command(image.store, container, argv, env=env),
            env=image.store.env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def healthcheck(image: BuiltImage, container: str, registry_port: int) -> tuple[int, str]:
    """Run the image's HEALTHCHECK, the registry port moved as a user would: -e IPFSREG_REGISTRY_LISTEN."""
    test = image.config["Docker"]["config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    result = await buildah_run(
        image, container, test[1:], env={"IPFSREG_REGISTRY_LISTEN": f"127.0.0.1:{registry_port}"}
    )
    return result.returncode, result.stderr.decode(errors="replace")[-2000:]


def test_image_runs_ipfsreg_serve_on_the_data_volume_with_registry_and_peer_ports(image: BuiltImage) -> None:
    config = image.config["Docker"]["config"]
    assert config["Entrypoint"] == ENTRYPOINT
    assert not config.get("Cmd")
    assert set(config["Volumes"]) == {"/data"}
    assert set(config["ExposedPorts"]) == {"5000/tcp", "4001/tcp"}
    assert config["User"] not in ("", "root", "0", "0:0")
    health = config["Healthcheck"]
    assert health["Test"][:2] == ["CMD", "python3"]
    assert health["Interval"] > 0 and health["Timeout"] > 0


async def test_image_runs_as_non_root_without_a_compiler(image: BuiltImage, container: str) -> None:
    result = await buildah_run(
        image,
        container,
        ["python3", "-c", "import os, shutil; print(os.getuid(), shutil.which('gcc') or shutil.which('cc'))"],
    )
    assert result.returncode == 0, result.stderr.decode()
    uid, compiler = result.stdout.decode().split()
    assert int(uid) != 0
    assert compiler == "None"
    version = await buildah_run(image, container, ["ipfsreg", "--version"])
    assert version.returncode == 0 and version.stdout.decode().startswith("ipfsreg "), version


async def test_container_push_then_restart_then_pull_is_byte_identical(
    image: BuiltImage, container: str, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    manifest = write_single_image(src, "v1")
    policy = policy_file(tmp_path)
    registry_port, p2p_port = free_port(), free_port()
    log = tmp_path / "container.log"

    status, _ = await healthcheck(image, container, registry_port)
    assert status != 0  # nothing listening yet

    async with serving(image, container, log, registry_port=registry_port, p2p_port=p2p_port) as server:
        status, stderr = await healthcheck(image, container, registry_port)
        assert status == 0, f"{stderr}\n{server.output()}"
        ref = f"docker://{server.registry}/library/app:v1"
        await skopeo("copy", f"oci:{src}:v1", ref, "--dest-tls-verify=false", policy=policy)

    # A second run of the same container sees what the first one stored in the /data volume.
    async with serving(image, container, log, registry_port=registry_port, p2p_port=p2p_port) as server:
        ref = f"docker://{server.registry}/library/app:v1"
        await skopeo("copy", ref, f"oci:{dst}:v1", "--src-tls-verify=false", policy=policy)
        owners = await buildah_run(
            image,
            container,
            ["python3", "-c", DATA_OWNERS],
        )
        uid = await buildah_run(image, container, ["python3", "-c", "import os; print(os.getuid())"])

    assert layout_blobs(dst) == layout_blobs(src)
    assert manifest.hex in {p.name for p in (dst / "blobs" / "sha256").iterdir()}
    assert owners.stdout.decode().strip() == f"[{uid.stdout.decode().strip()}]"


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


def _lp(message: bytes) -> bytes:
    assert len(message) < 0x80  # one-byte varint
    return bytes([len(message)]) + message


async def test_container_peer_port_speaks_libp2p_multistream_and_noise_and_id_reports_it(
    image: BuiltImage, container: str, tmp_path: Path
) -> None:
    registry_port, p2p_port = free_port(), free_port()
    async with serving(
        image, container, tmp_path / "container.log", registry_port=registry_port, p2p_port=p2p_port
    ):
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream("127.0.0.1", p2p_port)
            async with stream:
                # As a dialer: multistream-select header, then propose the Noise security protocol.
                await stream.send_all(_lp(MULTISTREAM) + _lp(b"/noise\n"))
                assert await _read_exactly(stream, 1 + len(MULTISTREAM)) == _lp(MULTISTREAM)
                assert await _read_exactly(stream, 1 + len(b"/noise\n")) == _lp(b"/noise\n")
        # The CLI in the container (no --data: IPFSREG_DATA_DIR) reaches the running node.
        identity = await buildah_run(image, container, ["ipfsreg", "id", "--json"])
    assert identity.returncode == 0, identity.stderr.decode()
    node = json.loads(identity.stdout)
    assert node["id"].startswith("12D3KooW")  # an Ed25519 peer ID
    assert any(addr.startswith(f"/ip4/127.0.0.1/tcp/{p2p_port}/") for addr in node["addrs"]), node


async def test_layer_pushed_to_the_container_is_fetched_over_bitswap_by_a_host_node(
    image: BuiltImage, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    manifest = write_single_image(src, "v1", layers=1)
    policy = policy_file(tmp_path)
    registry_port, p2p_port = free_port(), free_port()
    async with serving(
        image, container, tmp_path / "container.log", registry_port=registry_port, p2p_port=p2p_port
    ) as server:
        ref = f"docker://{server.registry}/p2p/app:v1"
        await skopeo("copy", f"oci:{src}:v1", ref, "--dest-tls-verify=false", policy=policy)
        layer = json.loads((src / "blobs" / "sha256" / manifest.hex).read_bytes())["layers"][0]["digest"]
        async with httpx.AsyncClient(timeout=30) as client:
            head = await client.head(f"http://{server.registry}/v2/p2p/app/blobs/{layer}")
        assert head.status_code == 200, head
        cid = head.headers["X-Ipfs-Path"].removeprefix("/ipfs/")
        identity = await buildah_run(image, container, ["ipfsreg", "id", "--json"])
        peer_id = json.loads(identity.stdout)["id"]
        # ipfsreg on the host, with an empty data dir, fetches the layer from the container's node.
        with trio.fail_after(120):
            fetched = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "ipfsreg",
                    "--data",
                    str(tmp_path / "host-node"),
                    "cat",
                    cid,
                    "--peer",
                    f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{peer_id}",
                ],
                env={**os.environ, "IPFSREG_NODE_P2P_LISTEN": "/ip4/127.0.0.1/tcp/0"},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert fetched.returncode == 0, fetched.stderr.decode()[-2000:]
    assert fetched.stdout == (src / "blobs" / "sha256" / layer.removeprefix("sha256:")).read_bytes()


def test_entrypoint_argv_replaces_cmd_with_run_arguments_like_docker_run() -> None:
    config = {"Docker": {"config": {"Entrypoint": ["ipfsreg", "serve"], "Cmd": ["--log-level", "info"]}}}
    assert entrypoint_argv(config) == ["ipfsreg", "serve", "--log-level", "info"]
    assert entrypoint_argv(config, ["--registry-listen", "127.0.0.1:1"]) == [
        "ipfsreg",
        "serve",
        "--registry-listen",
        "127.0.0.1:1",
    ]


def test_base_recipe_cache_key_changes_with_the_recipe() -> None:
    recipe = BaseRecipe()
    assert recipe.key() == BaseRecipe().key()
    assert recipe.key() != BaseRecipe(packages=(*recipe.packages, "python3-dev")).key()
    assert recipe.key() != BaseRecipe(suite="trixie").key()
    assert recipe.key() != BaseRecipe(revision=recipe.revision + 1).key()


def test_signal_innermost_signals_only_the_deepest_descendant_like_docker_stop() -> None:
    # sh -> sh -> sleep: only sleep gets SIGTERM, so the shells go on and the outer one exits 3.
    outer = subprocess.Popen(["sh", "-c", "sh -c 'sleep 60; exit 3'; exit $?"], start_new_session=True)
    try:
        chain: list[int] = []
        for _ in range(600):
            chain = descendants(outer.pid)
            if len(chain) == 2:
                break
            time.sleep(0.05)
        assert len(chain) == 2, chain
        assert signal_innermost(outer.pid) == chain[-1]
        assert outer.wait(timeout=30) == 3
    finally:
        kill_group(outer.pid)
        outer.wait(timeout=30)
