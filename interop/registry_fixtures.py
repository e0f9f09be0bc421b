"""Serves the registry on loopback inside the test's trio loop, and runs skopeo against it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.registry.app import create_app, registry_store, serve_registry
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import RegistryStore

SKOPEO = "skopeo"


@dataclass
class LoopbackRegistry:
    url: str
    host: str  # host:port, as skopeo's docker:// references want it
    client: httpx.AsyncClient
    store: RegistryStore


@asynccontextmanager
async def loopback_registry(data_dir: Path) -> AsyncIterator[LoopbackRegistry]:
    settings = RegistrySettings(listen="127.0.0.1:0")
    datastore = Datastore.open(data_dir)
    try:
        app = create_app(datastore, settings)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_registry, app, settings)
            url = binds[0]
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                yield LoopbackRegistry(url, url.removeprefix("http://"), client, registry_store(app))
            nursery.cancel_scope.cancel()
    finally:
        datastore.close()


def policy_file(directory: Path) -> Path:
    """A signature policy that accepts anything (test images are unsigned)."""
    path = directory / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


async def skopeo(*args: str, policy: Path, time_limit: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo (fails the test with its stderr if it exits non-zero)."""
    command = [SKOPEO, "--policy", str(policy), *args]
    with trio.fail_after(time_limit):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-2000:]}"
        )
    return result


async def skopeo_status(
    *args: str, policy: Path, time_limit: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo and return the result whatever its exit status."""
    with trio.fail_after(time_limit):
        return await trio.run_process(
            [SKOPEO, "--policy", str(policy), *args], capture_stdout=True, capture_stderr=True, check=False
        )
