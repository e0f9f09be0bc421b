"""/metrics, /healthz and the access log on the registry port of a running server."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx
import pytest

from ipfsreg.blockstore.store import PACK_MIN_BLOCK
from ipfsreg.metrics import route_family
from ipfsreg.unixfs.importer import import_bytes


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v2/", "base"),
        ("/v2", "base"),
        ("/v2/_catalog", "catalog"),
        ("/v2/library/alpine/blobs/sha256:abc", "blobs"),
        ("/v2/library/alpine/blobs/uploads/", "uploads"),
        ("/v2/library/alpine/blobs/uploads/1234-5678", "uploads"),
        ("/v2/a/b/c/manifests/latest", "manifests"),
        ("/v2/a/tags/list", "tags"),
        ("/v2/a/referrers/sha256:abc", "referrers"),
        ("/ipfs/bafyfoo/blobs", "gateway"),
        ("/metrics", "metrics"),
        ("/healthz", "healthz"),
        ("/favicon.ico", "other"),
    ],
)
def test_route_family_labels_paths_by_route_not_by_name(path: str, family: str) -> None:
    assert route_family(path) == family


async def test_metrics_count_requests_and_bytes_and_report_storage(
    serve_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ipfsreg.access")
    async with serve_node() as info:
        base = info.registry_urls[0]
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/v2/")).status_code == 200
            missing = await client.get("/v2/repo/blobs/sha256:" + "0" * 64)
            assert missing.status_code == 404
            blob = b"layer bytes" * 1000
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            pushed = await client.post(f"/v2/repo/blobs/uploads/?digest={digest}", content=blob)
            assert pushed.status_code == 201
            layer = bytes(range(256)) * 1200  # 307,200 bytes: two leaves big enough for a pack file
            layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
            pushed = await client.post(f"/v2/repo/blobs/uploads/?digest={layer_digest}", content=layer)
            assert pushed.status_code == 201
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.json() == {"status": "ok"}
            text = (await client.get("/metrics")).text
    assert 'ipfsreg_http_requests_total{method="GET",route="base",status="200"} 1.0' in text
    assert 'ipfsreg_http_requests_total{method="GET",route="blobs",status="404"} 1.0' in text
    assert 'ipfsreg_http_requests_total{method="POST",route="uploads",status="201"} 2.0' in text
    assert f'ipfsreg_http_request_bytes_total{{route="uploads"}} {float(len(blob) + len(layer))}' in text
    blocks, _ = import_bytes(blob)  # the blobs' UnixFS DAGs, as the registry stored them
    layer_blocks, _ = import_bytes(layer)
    assert len(layer_blocks) == 3  # two leaves and their parent
    assert f"ipfsreg_blocks_stored {float(len(blocks) + 3)}" in text
    stored = sum(len(b.data) for b in [*blocks, *layer_blocks])
    assert f"ipfsreg_block_bytes_stored {float(stored)}" in text
    packed = sum(len(b.data) for b in layer_blocks if len(b.data) >= PACK_MIN_BLOCK)
    assert packed > 300_000
    assert "ipfsreg_pack_files 1.0" in text
    assert f"ipfsreg_pack_bytes {float(packed)}" in text
    assert f"ipfsreg_pack_live_bytes {float(packed)}" in text
    assert "ipfsreg_connected_peers 0.0" in text
    assert "ipfsreg_bitswap_blocks_sent_total 0.0" in text
    lines = [r.getMessage() for r in caplog.records if r.name == "ipfsreg.access"]
    assert any('"POST /v2/repo/blobs/uploads/?digest=' in line and " 201 " in line for line in lines)
    assert any('"GET /v2/" 200' in line for line in lines)


async def test_the_start_up_heap_is_frozen_out_of_full_garbage_collections(serve_node: Any) -> None:
    import gc

    async with serve_node():
        assert gc.get_freeze_count() > 100_000
    gc.unfreeze()


async def test_request_headers_are_logged_at_debug_with_credentials_redacted(
    serve_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve_node() as info, httpx.AsyncClient(base_url=info.registry_urls[0]) as client:
        caplog.set_level(logging.INFO, logger="ipfsreg.access")
        await client.get("/v2/", headers={"X-Marker": "info"})
        assert not [r for r in caplog.records if "request headers" in r.getMessage()]
        caplog.set_level(logging.DEBUG, logger="ipfsreg.access")
        headers = {"Authorization": "Basic YWxpY2U6c2VjcmV0", "Cookie": "s=1", "X-Marker": "debug"}
        await client.get("/v2/", headers=headers)
    logged = [r.getMessage() for r in caplog.records if "request headers" in r.getMessage()]
    assert len(logged) == 1
    assert '"GET /v2/" request headers:' in logged[0]
    assert "x-marker: debug" in logged[0]
    assert "authorization: Basic <redacted>" in logged[0]
    assert "cookie: <redacted>" in logged[0]
    assert "YWxpY2U6c2VjcmV0" not in logged[0] and "s=1" not in logged[0]
