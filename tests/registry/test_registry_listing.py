"""Spec tests for tags/list, _catalog and referrers (pagination, Link headers, filters)."""

from __future__ import annotations

import json

from registry_helpers import EMPTY_JSON, OCI_INDEX, OCI_MANIFEST, Server, sha256


async def test_tags_list_returns_tags_in_lexical_order(registry: Server) -> None:
    digest, manifest = await registry.push_image("app", "b")
    body = json.dumps(manifest).encode()
    for tag in ("c", "a", "B"):
        await registry.client.put(
            f"/v2/app/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
    resp = await registry.client.get("/v2/app/tags/list")
    assert resp.status_code == 200
    assert resp.json() == {"name": "app", "tags": ["B", "a", "b", "c"]}
    assert digest


async def test_tags_list_paginates_with_n_last_and_link(registry: Server) -> None:
    _, manifest = await registry.push_image("app", "t0")
    body = json.dumps(manifest).encode()
    for i in range(1, 5):
        await registry.client.put(
            f"/v2/app/manifests/t{i}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
    resp = await registry.client.get("/v2/app/tags/list", params={"n": 2})
    assert resp.json()["tags"] == ["t0", "t1"]
    assert resp.headers["Link"] == '</v2/app/tags/list?n=2&last=t1>; rel="next"'
    resp = await registry.client.get("/v2/app/tags/list", params={"n": 2, "last": "t1"})
    assert resp.json()["tags"] == ["t2", "t3"]
    resp = await registry.client.get("/v2/app/tags/list", params={"n": 2, "last": "t3"})
    assert resp.json()["tags"] == ["t4"]
    assert "Link" not in resp.headers
    resp = await registry.client.get("/v2/app/tags/list", params={"n": 0})
    assert resp.json()["tags"] == []


async def test_tags_list_unknown_repository_returns_404_name_unknown(registry: Server) -> None:
    resp = await registry.client.get("/v2/nothing/tags/list")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_tags_list_invalid_n_returns_400(registry: Server) -> None:
    await registry.push_image("app", "v1")
    assert (await registry.client.get("/v2/app/tags/list", params={"n": "x"})).status_code == 400
    assert (await registry.client.get("/v2/app/tags/list", params={"n": "-1"})).status_code == 400


async def test_catalog_lists_repositories_with_pagination(registry: Server) -> None:
    for name in ("b/one", "a", "c", "b"):
        await registry.push_blob(name, b"x")
    resp = await registry.client.get("/v2/_catalog")
    assert resp.json() == {"repositories": ["a", "b", "b/one", "c"]}
    resp = await registry.client.get("/v2/_catalog", params={"n": 2})
    assert resp.json() == {"repositories": ["a", "b"]}
    assert resp.headers["Link"] == '</v2/_catalog?n=2&last=b>; rel="next"'
    resp = await registry.client.get("/v2/_catalog", params={"n": 2, "last": "b"})
    assert resp.json() == {"repositories": ["b/one", "c"]}


async def _push_referrer(
    registry: Server, subject: str, subject_size: int, artifact_type: str, note: str
) -> str:
    empty = await registry.push_blob("app", b"{}")
    layer = await registry.push_blob("app", note.encode())
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": layer, "size": len(note)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        "annotations": {"note": note},
    }
    body = json.dumps(artifact).encode()
    digest, _, resp = await registry.push_manifest("app", sha256(body), artifact)
    assert resp.headers["OCI-Subject"] == subject
    return digest


async def test_referrers_lists_manifests_with_subject_and_filters_by_artifact_type(registry: Server) -> None:
    subject, manifest = await registry.push_image("app", "v1")
    size = len(json.dumps(manifest).encode())
    sbom = await _push_referrer(registry, subject, size, "application/vnd.example.sbom", "sbom")
    sig = await _push_referrer(registry, subject, size, "application/vnd.example.sig", "sig")
    resp = await registry.client.get(f"/v2/app/referrers/{subject}")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = resp.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {sbom, sig}
    assert by_digest[sbom]["artifactType"] == "application/vnd.example.sbom"
    assert by_digest[sbom]["annotations"] == {"note": "sbom"}
    assert by_digest[sbom]["mediaType"] == OCI_MANIFEST
    assert "OCI-Filters-Applied" not in resp.headers
    resp = await registry.client.get(
        f"/v2/app/referrers/{subject}", params={"artifactType": "application/vnd.example.sig"}
    )
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in resp.json()["manifests"]] == [sig]


async def test_referrers_of_unknown_digest_returns_empty_index(registry: Server) -> None:
    resp = await registry.client.get(f"/v2/app/referrers/{sha256(b'unknown')}")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == OCI_INDEX
    assert resp.json()["manifests"] == []


async def test_referrers_to_missing_subject_are_accepted_and_listed(registry: Server) -> None:
    missing = sha256(b"not pushed")
    ref = await _push_referrer(registry, missing, 10, "application/vnd.example.sbom", "orphan")
    resp = await registry.client.get(f"/v2/app/referrers/{missing}")
    assert [m["digest"] for m in resp.json()["manifests"]] == [ref]


async def test_referrer_deleted_disappears_from_referrers(registry: Server) -> None:
    subject, manifest = await registry.push_image("app", "v1")
    ref = await _push_referrer(registry, subject, len(json.dumps(manifest)), "application/x", "n")
    assert (await registry.client.delete(f"/v2/app/manifests/{ref}")).status_code == 202
    resp = await registry.client.get(f"/v2/app/referrers/{subject}")
    assert resp.json()["manifests"] == []


async def test_referrers_invalid_digest_returns_400(registry: Server) -> None:
    resp = await registry.client.get("/v2/app/referrers/sha256:xyz")
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"
