"""Hostile manifest PUTs over HTTP: each one that cannot be parsed or validated is 400 MANIFEST_INVALID
with the OCI JSON error body (never a 500, never HTML), stores nothing, and the registry keeps serving."""

from __future__ import annotations

import json
import random
from typing import Any

from registry_helpers import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Server, sha256

HOSTILE: dict[str, bytes] = {
    "100k nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "100k nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep nesting inside layers": (
        b'{"schemaVersion":2,"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","layers":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    ),
    "5,000-digit size": (
        b'{"schemaVersion":2,"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","config":{"mediaType":"'
        + OCI_CONFIG.encode()
        + b'","digest":"sha256:'
        + b"a" * 64
        + b'","size":'
        + b"9" * 5000
        + b"}}"
    ),
    "not UTF-8": b"\xff\xfe\xfd",
}


def _assert_manifest_invalid(resp: Any) -> None:
    assert resp.status_code == 400, resp.text[:300]
    assert resp.headers["Content-Type"] == "application/json"
    errors = resp.json()["errors"]
    assert errors[0]["code"] == "MANIFEST_INVALID"


async def test_hostile_manifests_get_400_manifest_invalid_with_the_oci_json_body(registry: Server) -> None:
    for name, body in HOSTILE.items():
        resp = await registry.client.put(
            "/v2/app/manifests/latest", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        _assert_manifest_invalid(resp)
        assert (await registry.client.get("/v2/app/manifests/latest")).status_code == 404, name
    assert (await registry.client.get("/v2/")).status_code == 200


def _mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """Replace, drop or garble parts of a JSON value at random."""
    choices: list[Any] = [None, True, -1, 2**64, 1.5, "", "x" * 300, [], {}, "sha256:" + "0" * 64]
    if rng.random() < 0.15:
        return rng.choice(choices)
    if isinstance(value, dict):
        out = {k: _mutate(rng, v, depth + 1) for k, v in value.items() if rng.random() > 0.1}
        if rng.random() < 0.1:
            out[rng.choice(["mediaType", "manifests", "layers", "subject", "size"])] = rng.choice(choices)
        return out
    if isinstance(value, list):
        return [_mutate(rng, v, depth + 1) for v in value] + (
            [rng.choice(choices)] if rng.random() < 0.1 else []
        )
    return value


async def test_randomly_mutated_manifests_are_stored_or_refused_with_an_oci_error_never_500(
    registry: Server,
) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    config_digest = await registry.push_blob("app", config)
    layer_digest = await registry.push_blob("app", b"layer")
    image = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": 5}],
        "annotations": {"a": "b"},
    }
    _, image_body, _ = await registry.push_manifest("app", "base", image)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(image_body),
                "size": len(image_body),
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    rng = random.Random(13)
    statuses: dict[int, int] = {}
    for i in range(150):
        base = image if i % 2 else index
        doc = _mutate(rng, json.loads(json.dumps(base)))
        body = json.dumps(doc).encode()
        content_type = rng.choice([OCI_MANIFEST, OCI_INDEX, None])
        headers = {"Content-Type": content_type} if content_type else {}
        resp = await registry.client.put(f"/v2/app/manifests/t{i}", content=body, headers=headers)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code in (201, 400), (resp.status_code, resp.text[:300], body[:300])
        if resp.status_code == 400:
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.json()["errors"][0]["code"] in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN")
    assert statuses.get(400, 0) > 50  # the mutations do break most manifests
    assert (await registry.client.get("/v2/app/manifests/base")).status_code == 200
