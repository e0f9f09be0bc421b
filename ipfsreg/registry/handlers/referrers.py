"""``GET /v2/<name>/referrers/<digest>``: an image index of the manifests whose subject it is."""

from __future__ import annotations

from quart import Request, Response

from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.handlers.base import Context, json_response
from ipfsreg.registry.manifest import OCI_INDEX


async def list_referrers(ctx: Context, request: Request, name: str, reference: str) -> Response:
    subject = parse_digest(reference)
    artifact_type = request.args.get("artifactType") or None
    descriptors = ctx.store.list_referrers(name, subject, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    return json_response(index, content_type=OCI_INDEX, headers=headers)
