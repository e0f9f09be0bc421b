"""Helpers for registry tests: the app served by hypercorn on loopback in the test's trio loop."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.testing import RunningRegistry
from ipfsreg.registry.testing import running_registry as serve_for_tests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server(RunningRegistry):
    """A served registry with push helpers for the tests."""

    async def push_blob(self, name: str, data: bytes) -> str:
        digest = sha256(data)
        resp = await self.client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
        assert resp.status_code == 201, resp.text
        return digest

    async def push_manifest(
        self, name: str, reference: str, manifest: dict[str, Any], media_type: str = OCI_MANIFEST
    ) -> tuple[str, bytes, httpx.Response]:
        body = json.dumps(manifest).encode()
        resp = await self.client.put(
            f"/v2/{name}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )
        assert resp.status_code == 201, resp.text
        return sha256(body), body, resp

    async def push_image(
        self, name: str, tag: str | None, *, layers: list[bytes] | None = None, config: bytes | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Push config + layers + an OCI manifest; return (manifest digest, manifest)."""
        config = (
            config if config is not None else json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        )
        layers = layers if layers is not None else [b"layer-one", b"layer-two"]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": await self.push_blob(name, config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": await self.push_blob(name, layer), "size": len(layer)}
                for layer in layers
            ],
        }
        body = json.dumps(manifest).encode()
        digest, _, _ = await self.push_manifest(name, tag or sha256(body), manifest)
        return digest, manifest


def make_settings(**overrides: Any) -> RegistrySettings:
    return replace(RegistrySettings(listen="127.0.0.1:0"), **overrides)


@asynccontextmanager
async def running_registry(
    data_dir: Path, settings: RegistrySettings | None = None, **app_options: Any
) -> AsyncIterator[Server]:
    """The registry on a free loopback port (``make_settings()`` unless given) until exit."""
    settings = settings if settings is not None else make_settings()
    async with serve_for_tests(data_dir, settings, result=Server, **app_options) as server:
        yield server
