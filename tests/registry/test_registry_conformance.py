"""The OCI conformance suite's workflows (pull, push, content discovery, content management), in order.

Each test replays one workflow of opencontainers/distribution-spec conformance/*.go with the same
requests and expectations, so the registry passes that suite in full.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
from registry_helpers import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    Server,
    make_settings,
    running_registry,
    sha256,
)

NAME = "myorg/myrepo"
CROSSMOUNT = "conformance/crossmount"
DUMMY = "sha256:" + "0" * 64
VALID_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
    "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
}  # fmt: skip
LAYER = base64.b64decode(
    "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSj"
    "yTWqrb0xxM2qMrWzjV8Z24QX+kv2VSG9iyBBsQChlTWMDwxrVwP2TmM4tPoCH4FmY1A8YTPMHSR+"
    "NkrwpROe7P+/bp76/eB+MpPT6/Hv6cdrOwzVdLqbr6yP9jIa3cV8wrddYRKgdKuKWHVc7LQSIFNq"
    "CIgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA4BTaAxsnc/0AKAAA"
)


def _codes(resp: httpx.Response) -> list[str]:
    return [e["code"] for e in resp.json()["errors"]]


def _desc(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(blob), "size": len(blob)}


def _manifest(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [_desc("application/vnd.oci.image.layer.v1.tar+gzip", x) for x in layers],
        **extra,
    }
    return json.dumps(doc).encode()


async def _post_put(c: httpx.AsyncClient, data: bytes, name: str = NAME) -> httpx.Response:
    resp = await c.post(f"/v2/{name}/blobs/uploads/")
    return await c.put(
        resp.headers["Location"],
        params={"digest": sha256(data)},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


async def test_conformance_pull_workflow(registry: Server) -> None:
    c = registry.client
    config = b'{"architecture":"amd64","os":"linux"}'
    assert (await _post_put(c, config)).status_code == 201
    assert (await _post_put(c, LAYER)).status_code == 201
    manifest = _manifest(config, [LAYER])
    digest = sha256(manifest)
    resp = await c.put(
        f"/v2/{NAME}/manifests/tagtest0", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201
    tag = (await c.get(f"/v2/{NAME}/tags/list")).json()["tags"][0]
    assert tag == "tagtest0"
    # Pull blobs
    assert (await c.head(f"/v2/{NAME}/blobs/{DUMMY}")).status_code == 404
    head = await c.head(f"/v2/{NAME}/blobs/{sha256(config)}")
    assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == sha256(config)
    assert (await c.get(f"/v2/{NAME}/blobs/{DUMMY}")).status_code == 404
    assert (await c.get(f"/v2/{NAME}/blobs/{sha256(config)}")).status_code == 200
    # Pull manifests
    accept = {"Accept": OCI_MANIFEST}
    assert (await c.head(f"/v2/{NAME}/manifests/.INVALID_MANIFEST_NAME")).status_code == 404
    head = await c.head(f"/v2/{NAME}/manifests/{digest}", headers=accept)
    assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == digest
    get = await c.get(f"/v2/{NAME}/manifests/{tag}", headers=accept)
    assert get.status_code == 200 and get.headers["Docker-Content-Digest"] == digest
    assert (await c.get(f"/v2/{NAME}/manifests/.INVALID_MANIFEST_NAME")).status_code == 404
    assert (await c.get(f"/v2/{NAME}/manifests/{digest}", headers=accept)).status_code == 200
    # Error codes
    resp = await c.put(
        f"/v2/{NAME}/manifests/sha256:totallywrong", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 400 and _codes(resp)[0] in VALID_CODES
    # Teardown (blobs before the manifest, as the suite does by default)
    for path in (f"blobs/{sha256(config)}", f"blobs/{sha256(LAYER)}", f"manifests/{digest}"):
        resp = await c.delete(f"/v2/{NAME}/{path}")
        assert 200 <= resp.status_code < 300, path


async def test_conformance_push_workflow(registry: Server) -> None:
    c = registry.client
    blob_a, blob_b = b"conformance blob A" * 10, b"conformance blob B, in two chunks" * 10
    chunk1, chunk2 = blob_b[:100], blob_b[100:]
    range1, range2 = f"0-{len(chunk1) - 1}", f"{len(chunk1)}-{len(blob_b) - 1}"
    # Blob upload streamed
    resp = await c.post(f"/v2/{NAME}/blobs/uploads/")
    resp = await c.patch(
        resp.headers["Location"], content=blob_a, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status_code == 202
    resp = await c.put(resp.headers["Location"], params={"digest": sha256(blob_a)})
    assert resp.status_code == 201 and resp.headers["Location"]
    # Blob upload monolithic
    config = b'{"architecture":"arm64","os":"linux"}'
    assert (await c.get(f"/v2/{NAME}/blobs/{DUMMY}")).status_code == 404
    resp = await c.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": sha256(config)}, content=config)
    assert resp.status_code == 201 and resp.headers["Location"]
    assert (await c.get(f"/v2/{NAME}/blobs/{sha256(config)}")).status_code == 200
    resp = await c.post(f"/v2/{NAME}/blobs/uploads/")
    assert resp.status_code == 202
    resp = await c.put(resp.headers["Location"], params={"digest": sha256(config)}, content=config)
    assert resp.status_code == 201 and resp.headers["Location"]
    assert (await _post_put(c, LAYER)).status_code == 201
    assert (await c.get(f"/v2/{NAME}/blobs/{sha256(LAYER)}")).status_code == 200
    # Blob upload chunked
    resp = await c.post(f"/v2/{NAME}/blobs/uploads/", headers={"Content-Length": "0"})
    resp = await c.patch(resp.headers["Location"], content=chunk2, headers={"Content-Range": range2})
    assert resp.status_code == 416
    first = await c.post(f"/v2/{NAME}/blobs/uploads/", headers={"Content-Length": "0"})
    resp = await c.patch(first.headers["Location"], content=chunk1, headers={"Content-Range": range1})
    assert resp.status_code == 202 and resp.headers["Range"] == range1
    retry = await c.patch(first.headers["Location"], content=chunk1, headers={"Content-Range": range1})
    assert retry.status_code == 416
    stale = await c.get(first.headers["Location"])
    assert stale.status_code == 204 and stale.headers["Location"] and stale.headers["Range"] == range1
    resp = await c.patch(stale.headers["Location"], content=chunk2, headers={"Content-Range": range2})
    assert resp.status_code == 202 and resp.headers["Location"]
    resp = await c.put(
        resp.headers["Location"], params={"digest": sha256(blob_b)}, headers={"Content-Length": "0"}
    )
    assert resp.status_code == 201 and resp.headers["Location"]
    # Cross-repository blob mount
    resp = await c.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": DUMMY})
    assert resp.status_code == 202 and resp.headers["Location"]
    resp = await c.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": sha256(blob_a), "from": NAME})
    assert resp.status_code == 201
    assert resp.headers["Location"] == f"/v2/{CROSSMOUNT}/blobs/{sha256(blob_a)}"
    assert (await c.get(resp.headers["Location"])).status_code == 200
    resp = await c.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": sha256(blob_a)})
    assert resp.status_code == 201  # automatic content discovery is on by default
    # Manifest upload
    assert (await c.get(f"/v2/{NAME}/manifests/.INVALID_MANIFEST_NAME")).status_code == 404
    manifest = _manifest(config, [LAYER])
    for i in range(4):
        resp = await c.put(
            f"/v2/{NAME}/manifests/test{i}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        assert resp.status_code == 201 and resp.headers["Location"]
    empty_layers = _manifest(config, [])
    resp = await c.put(
        f"/v2/{NAME}/manifests/emptylayer", content=empty_layers, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201
    resp = await c.get(f"/v2/{NAME}/manifests/{sha256(manifest)}", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200
    # Teardown
    for path in (
        f"blobs/{sha256(config)}",
        f"blobs/{sha256(LAYER)}",
        f"manifests/{sha256(manifest)}",
        f"manifests/{sha256(empty_layers)}",
    ):
        assert 200 <= (await c.delete(f"/v2/{NAME}/{path}")).status_code < 300, path


async def test_conformance_crossmount_without_from_when_discovery_disabled_returns_202(
    tmp_path: Path,
) -> None:
    async with running_registry(tmp_path, make_settings(automatic_crossmount=False)) as server:
        digest = await server.push_blob(NAME, b"blob A")
        resp = await server.client.post(f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": digest})
        assert resp.status_code == 202
        resp = await server.client.post(
            f"/v2/{CROSSMOUNT}/blobs/uploads/", params={"mount": digest, "from": NAME}
        )
        assert resp.status_code == 201


async def test_conformance_content_discovery_workflow(registry: Server) -> None:
    c = registry.client
    config = b'{"architecture":"amd64","os":"linux","discovery":true}'
    empty = b"{}"
    assert sha256(empty) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    for blob in (config, LAYER, empty, b"ref blob A", b"ref blob B"):
        assert (await _post_put(c, blob)).status_code == 201
    subject_manifest = _manifest(config, [LAYER])
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(subject_manifest), "size": len(subject_manifest)}
    for i in range(4):
        await c.put(
            f"/v2/{NAME}/manifests/test{i}", content=subject_manifest, headers={"Content-Type": OCI_MANIFEST}
        )

    async def push_referrer(body: bytes, media_type: str = OCI_MANIFEST) -> str:
        resp = await c.put(
            f"/v2/{NAME}/manifests/{sha256(body)}", content=body, headers={"Content-Type": media_type}
        )
        assert resp.status_code == 201
        return resp.headers.get("OCI-Subject", "")

    def config_artifact(blob: bytes, note: str, subj: dict[str, Any]) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _desc("application/vnd.nhl.peanut.butter.bagel", empty),
            "layers": [_desc("application/vnd.oci.image.layer.v1.tar", blob)],
            "subject": subj,
            "annotations": {"org.opencontainers.conformance.test": note},
        }
        return json.dumps(doc).encode()

    def layer_artifact(blob: bytes, note: str, subj: dict[str, Any]) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.food.stand",
            "config": _desc(EMPTY_JSON, empty),
            "layers": [_desc("application/vnd.oci.image.layer.v1.tar", blob)],
            "subject": subj,
            "annotations": {"org.opencontainers.conformance.test": note},
        }
        return json.dumps(doc).encode()

    ref_a_config = config_artifact(b"ref blob A", "A-config", subject)
    ref_a_layer = layer_artifact(b"ref blob A", "A-layer", subject)
    assert await push_referrer(ref_a_config) == subject["digest"]
    assert await push_referrer(ref_a_layer) == subject["digest"]
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.food.stand",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(ref_a_config), "size": len(ref_a_config)},
                      {"mediaType": OCI_MANIFEST, "digest": sha256(ref_a_layer), "size": len(ref_a_layer)}],
        "subject": subject,
        "annotations": {"org.opencontainers.conformance.test": "index"},
    }).encode()  # fmt: skip
    assert await push_referrer(index, OCI_INDEX) == subject["digest"]
    resp = await c.put(
        f"/v2/{NAME}/manifests/tagtest0", content=subject_manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status_code == 201
    assert await push_referrer(config_artifact(b"ref blob B", "B-config", subject)) == subject["digest"]
    assert await push_referrer(layer_artifact(b"ref blob B", "B-layer", subject)) == subject["digest"]
    missing = {"mediaType": OCI_MANIFEST, "digest": sha256(b"manifest never pushed"), "size": 21}
    orphan = layer_artifact(b"ref blob B", "C-layer", missing)
    assert await push_referrer(orphan) == missing["digest"]
    # Listing tags
    tags = (await c.get(f"/v2/{NAME}/tags/list")).json()["tags"]
    half = len(tags) // 2
    page = (await c.get(f"/v2/{NAME}/tags/list", params={"n": half})).json()["tags"]
    assert len(page) == half
    after = (await c.get(f"/v2/{NAME}/tags/list", params={"n": half, "last": page[-1]})).json()["tags"]
    assert len(after) <= half and page[-1] not in after
    # Listing referrers
    resp = await c.get(f"/v2/{NAME}/referrers/{DUMMY}")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == OCI_INDEX
    assert resp.json()["manifests"] == []
    resp = await c.get(f"/v2/{NAME}/referrers/{subject['digest']}")
    listed = resp.json()["manifests"]
    assert resp.headers["Content-Type"] == OCI_INDEX and len(listed) == 5
    assert len({m["digest"] for m in listed}) == 5
    assert all(len(m["annotations"]) == 1 for m in listed)
    resp = await c.get(
        f"/v2/{NAME}/referrers/{subject['digest']}", params={"artifactType": "application/vnd.food.stand"}
    )
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert len(resp.json()["manifests"]) == 3  # the two layer artifacts and the index
    resp = await c.get(f"/v2/{NAME}/referrers/{missing['digest']}")
    assert [m["digest"] for m in resp.json()["manifests"]] == [sha256(orphan)]


async def test_conformance_content_management_workflow(registry: Server) -> None:
    c = registry.client
    config = b'{"architecture":"amd64","os":"linux","management":true}'
    for blob in (config, LAYER):
        assert (await _post_put(c, blob)).status_code == 201
    manifest = _manifest(config, [LAYER])
    digest = sha256(manifest)
    for tag in ("test0", "test1"):
        await c.put(f"/v2/{NAME}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    # Manifest delete by tag, then by digest
    assert (await c.delete(f"/v2/{NAME}/manifests/test0")).status_code == 202
    assert (await c.get(f"/v2/{NAME}/manifests/test0")).status_code == 404
    assert (await c.get(f"/v2/{NAME}/manifests/{digest}")).status_code == 200
    assert (await c.delete(f"/v2/{NAME}/manifests/{digest}")).status_code == 202
    resp = await c.get(f"/v2/{NAME}/manifests/{digest}")
    assert resp.status_code == 404 and _codes(resp) == ["MANIFEST_UNKNOWN"]
    assert (await c.get(f"/v2/{NAME}/manifests/test1")).status_code == 404
    # Blob delete
    for blob in (config, LAYER):
        assert (await c.delete(f"/v2/{NAME}/blobs/{sha256(blob)}")).status_code == 202
        resp = await c.get(f"/v2/{NAME}/blobs/{sha256(blob)}")
        assert resp.status_code == 404 and _codes(resp) == ["BLOB_UNKNOWN"]
    # Error codes: DELETE of a tag that no longer exists answers with an OCI code
    resp = await c.delete(f"/v2/{NAME}/manifests/test0")
    assert resp.status_code == 404 and _codes(resp)[0] in VALID_CODES
