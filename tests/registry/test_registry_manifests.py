"""Spec tests for manifests: PUT validation, GET/HEAD by tag and digest, negotiation, DELETE, tags."""

from __future__ import annotations

import json
from typing import Any

from registry_helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Server,
    sha256,
)


async def test_manifest_put_by_tag_returns_201_with_location_and_digest(registry: Server) -> None:
    digest, manifest = await registry.push_image("lib/app", "v1")
    body = json.dumps(manifest).encode()
    assert digest == sha256(body)
    resp = await registry.client.get("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200
    assert resp.content == body
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["X-Ipfs-Path"].startswith("/ipfs/")


async def test_manifest_put_response_headers(registry: Server) -> None:
    config = await registry.push_blob("app", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [],
    }
    digest, _, resp = await registry.push_manifest("app", "latest", manifest)
    assert resp.headers["Location"] == f"/v2/app/manifests/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert "OCI-Subject" not in resp.headers


async def test_manifest_get_by_digest_and_head(registry: Server) -> None:
    digest, manifest = await registry.push_image("app", "v1")
    body = json.dumps(manifest).encode()
    resp = await registry.client.get(f"/v2/app/manifests/{digest}")
    assert resp.status_code == 200 and resp.content == body
    head = await registry.client.head(f"/v2/app/manifests/{digest}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == str(len(body))
    assert head.headers["Docker-Content-Digest"] == digest


async def test_manifest_put_by_digest_without_tag(registry: Server) -> None:
    digest, _ = await registry.push_image("app", None)
    assert (await registry.client.get(f"/v2/app/manifests/{digest}")).status_code == 200
    tags = await registry.client.get("/v2/app/tags/list")
    assert tags.json()["tags"] == []


async def test_manifest_put_by_mismatched_digest_returns_400_digest_invalid(registry: Server) -> None:
    config = await registry.push_blob("app", b"{}")
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [],
    }
    body = json.dumps(manifest).encode()
    resp = await registry.client.put(
        f"/v2/app/manifests/{sha256(b'other')}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"


async def test_manifest_get_unknown_returns_404_manifest_unknown(registry: Server) -> None:
    for ref in ("nosuchtag", sha256(b"none")):
        resp = await registry.client.get(f"/v2/app/manifests/{ref}")
        assert resp.status_code == 404
        assert resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_manifest_put_with_unknown_blob_returns_manifest_blob_unknown(registry: Server) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"missing"), "size": 7},
        "layers": [],
    }
    resp = await registry.client.put(
        "/v2/app/manifests/v1", content=json.dumps(manifest).encode(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 400
    error = resp.json()["errors"][0]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert error["detail"]["digest"] == sha256(b"missing")
    assert (await registry.client.get("/v2/app/manifests/v1")).status_code == 404


async def test_manifest_put_with_layer_from_other_repository_returns_manifest_blob_unknown(
    registry: Server,
) -> None:
    config = await registry.push_blob("app", b"{}")
    layer = await registry.push_blob("other", b"layer")
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": 5}],
    }
    resp = await registry.client.put(
        "/v2/app/manifests/v1", content=json.dumps(manifest).encode(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


async def test_manifest_put_invalid_bodies_return_400_manifest_invalid(registry: Server) -> None:
    config = await registry.push_blob("app", b"{}")
    good: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [],
    }
    cases: list[tuple[bytes, str]] = [
        (b"not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (json.dumps({**good, "schemaVersion": 1}).encode(), OCI_MANIFEST),
        (json.dumps({**good, "config": {"digest": config}}).encode(), OCI_MANIFEST),
        (json.dumps({**good, "layers": "nope"}).encode(), OCI_MANIFEST),
        (json.dumps(good).encode(), OCI_INDEX),
        (json.dumps({**good, "mediaType": "text/plain"}).encode(), "text/plain"),
    ]
    for body, content_type in cases:
        resp = await registry.client.put(
            "/v2/app/manifests/bad", content=body, headers={"Content-Type": content_type}
        )
        assert resp.status_code == 400, body
        assert resp.json()["errors"][0]["code"] == "MANIFEST_INVALID", body


async def test_manifest_put_over_size_limit_returns_413(registry: Server) -> None:
    body = b" " * (registry.settings.max_manifest_bytes + 1)
    resp = await registry.client.put(
        "/v2/app/manifests/big", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["code"] == "MANIFEST_INVALID"


async def test_manifest_put_invalid_tag_returns_400(registry: Server) -> None:
    resp = await registry.client.put(
        "/v2/app/manifests/.bad", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 400


async def test_docker_schema2_manifest_and_manifest_list(registry: Server) -> None:
    config = await registry.push_blob("app", b"{}")
    layer = await registry.push_blob("app", b"docker layer")
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config,
            "size": 2,
        },
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 12}
        ],
    }
    digest, body, _ = await registry.push_manifest("app", "amd64", manifest, DOCKER_MANIFEST)
    manifest_list = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    list_digest, list_body, _ = await registry.push_manifest("app", "multi", manifest_list, DOCKER_LIST)
    resp = await registry.client.get("/v2/app/manifests/multi", headers={"Accept": DOCKER_LIST})
    assert resp.headers["Content-Type"] == DOCKER_LIST
    assert resp.content == list_body
    assert list_digest == sha256(list_body)


async def _push_index_and_list(registry: Server) -> tuple[str, bytes, str, bytes]:
    digest, manifest = await registry.push_image("app", "arm")
    size = len(json.dumps(manifest).encode())
    child = {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": size,
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}
    index_digest, index_body, _ = await registry.push_manifest("app", "idx", index, OCI_INDEX)
    docker_list = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [child]}
    list_digest, list_body, _ = await registry.push_manifest("app", "list", docker_list, DOCKER_LIST)
    return index_digest, index_body, list_digest, list_body


ACCEPTS = [
    None,
    "*/*",
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    f"{DOCKER_MANIFEST}, {DOCKER_LIST}",
    f"{OCI_MANIFEST}, {OCI_INDEX}",
    "text/plain",
]


async def test_manifests_are_served_as_stored_whatever_the_accept_header_get_and_head_alike(
    registry: Server,
) -> None:
    # The Accept rule (handlers/manifests.py): serve what was stored, convert nothing.
    index_digest, index_body, list_digest, list_body = await _push_index_and_list(registry)
    image_digest, image = await registry.push_image("app", "img")
    image_body = json.dumps(image).encode()
    stored = {
        "idx": (index_digest, index_body, OCI_INDEX),
        "list": (list_digest, list_body, DOCKER_LIST),
        "img": (image_digest, image_body, OCI_MANIFEST),
    }
    for tag, (digest, body, media_type) in stored.items():
        for accept in ACCEPTS:
            headers = {"Accept": accept} if accept else {}
            for reference in (tag, digest):
                got = await registry.client.get(f"/v2/app/manifests/{reference}", headers=headers)
                head = await registry.client.head(f"/v2/app/manifests/{reference}", headers=headers)
                assert got.status_code == head.status_code == 200, (tag, accept)
                assert got.content == body
                for resp in (got, head):
                    assert resp.headers["Content-Type"] == media_type
                    assert resp.headers["Docker-Content-Digest"] == digest
                    assert resp.headers["Content-Length"] == str(len(body))


async def test_index_with_unknown_child_returns_manifest_blob_unknown(registry: Server) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(b"nothing"), "size": 7}],
    }
    resp = await registry.client.put(
        "/v2/app/manifests/idx", content=json.dumps(index).encode(), headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


async def test_manifest_with_subject_returns_oci_subject_header(registry: Server) -> None:
    subject_digest, subject = await registry.push_image("app", "v1")
    empty = await registry.push_blob("app", b"{}")
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
        "layers": [{"mediaType": EMPTY_JSON, "digest": empty, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(json.dumps(subject))},
    }
    body = json.dumps(artifact).encode()
    _, _, resp = await registry.push_manifest("app", sha256(body), artifact)
    assert resp.headers["OCI-Subject"] == subject_digest


async def test_manifest_tag_moves_to_new_manifest(registry: Server) -> None:
    first, _ = await registry.push_image("app", "latest", layers=[b"a"])
    second, _ = await registry.push_image("app", "latest", layers=[b"b"])
    resp = await registry.client.get("/v2/app/manifests/latest")
    assert resp.headers["Docker-Content-Digest"] == second
    assert (await registry.client.get(f"/v2/app/manifests/{first}")).status_code == 200


async def test_manifest_delete_by_digest_removes_it_and_its_tags(registry: Server) -> None:
    digest, _ = await registry.push_image("app", "v1")
    await registry.push_image("app", "v2", layers=[b"other"])
    await registry.client.put(
        "/v2/app/manifests/alias",
        content=(await registry.client.get(f"/v2/app/manifests/{digest}")).content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    resp = await registry.client.delete(f"/v2/app/manifests/{digest}")
    assert resp.status_code == 202
    assert (await registry.client.get(f"/v2/app/manifests/{digest}")).status_code == 404
    assert (await registry.client.get("/v2/app/manifests/v1")).status_code == 404
    assert (await registry.client.get("/v2/app/tags/list")).json()["tags"] == ["v2"]
    resp = await registry.client.delete(f"/v2/app/manifests/{digest}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_manifest_delete_by_tag_removes_only_the_tag(registry: Server) -> None:
    digest, _ = await registry.push_image("app", "v1")
    resp = await registry.client.delete("/v2/app/manifests/v1")
    assert resp.status_code == 202
    assert (await registry.client.get("/v2/app/manifests/v1")).status_code == 404
    assert (await registry.client.get(f"/v2/app/manifests/{digest}")).status_code == 200
    assert (await registry.client.delete("/v2/app/manifests/v1")).status_code == 404


async def test_deletes_return_405_unsupported_when_disabled(tmp_path: Any) -> None:
    from registry_helpers import make_settings, running_registry

    async with running_registry(tmp_path, make_settings(delete_enabled=False)) as server:
        digest, _ = await server.push_image("app", "v1")
        for path in ("/v2/app/manifests/v1", f"/v2/app/manifests/{digest}"):
            resp = await server.client.delete(path)
            assert resp.status_code == 405
            assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"


async def test_blobs_of_deleted_manifest_stay_for_other_manifests(registry: Server) -> None:
    first, manifest = await registry.push_image("app", "v1", layers=[b"shared"])
    await registry.push_image("app", "v2", layers=[b"shared", b"more"])
    assert (await registry.client.delete(f"/v2/app/manifests/{first}")).status_code == 202
    layer = manifest["layers"][0]["digest"]
    assert (await registry.client.get(f"/v2/app/blobs/{layer}")).content == b"shared"
