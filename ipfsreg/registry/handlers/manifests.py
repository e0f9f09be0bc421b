"""``/v2/<name>/manifests/<reference>``: GET/HEAD, PUT with validation, DELETE.

The Accept rule: a manifest is served as it was stored, with its own media type as Content-Type,
whatever the request's Accept header lists; nothing is converted (no index or list is swapped for
one of its platform images, no schema rewrite). GET and HEAD answer the same. A client that cannot
read what was pushed fails on the Content-Type it got, which names the reason, rather than on a
404 for a manifest that exists. (distribution answers 404 for OCI types missing from Accept and
rewrites Docker lists for old clients; the spec asks neither.)

Responses by tag carry ``X-Ipfs-Path: /ipfs/<cid>`` of the tag's published image directory (the CID
Kubo's ``ipfs add`` gives the layout) and ``X-Ipfs-Image-Reference: HOST/ipfs/<CIDv1 base32>:TAG``,
the same image as a reference docker, podman and skopeo can pull (HOST from the request's Host)."""

from __future__ import annotations

from typing import Final

from quart import Request, Response

from ipfsreg.cid import CID
from ipfsreg.registry.digests import Digest, is_digest_like, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers.base import Context, make_response, read_body
from ipfsreg.registry.names import is_valid_tag, pull_reference, reference_host
from ipfsreg.registry.proxy import pull_through, refuse_writes
from ipfsreg.registry.storage import ManifestInfo


def parse_reference(reference: str) -> str | Digest:
    """A digest, or a tag (checked against the tag grammar)."""
    if ":" in reference or is_digest_like(reference):
        return parse_digest(reference)
    if not is_valid_tag(reference):
        raise RegistryError("MANIFEST_INVALID", {"reason": f"invalid tag {reference[:150]!r}"})
    return reference


IMAGE_REFERENCE_HEADER: Final = "X-Ipfs-Image-Reference"


def image_headers(request: Request, image: CID | None, tag: str | None) -> dict[str, str]:
    """X-Ipfs-Path of ``image`` and, by tag, its pull reference (on this host when the request names it)."""
    if image is None:
        return {}
    headers = {"X-Ipfs-Path": f"/ipfs/{image}"}
    if tag is not None:
        headers[IMAGE_REFERENCE_HEADER] = pull_reference(
            image, tag, reference_host(request.headers.get("Host"))
        )
    return headers


def _manifest_headers(info: ManifestInfo) -> dict[str, str]:
    return {
        "Content-Type": info.media_type,
        "Docker-Content-Digest": str(info.digest),
        "ETag": f'"{info.digest}"',
    }


async def get_manifest(ctx: Context, request: Request, name: str, reference: str) -> Response:
    try:
        ref = parse_reference(reference)
    except RegistryError as exc:
        if exc.code == "MANIFEST_INVALID":
            raise RegistryError("MANIFEST_UNKNOWN", {"reference": reference[:150]}) from None
        raise
    proxy = pull_through(ctx, name)
    proxied = await proxy.manifest(ref) if proxy is not None else None
    if proxied is not None:  # not stored (or not current) here: the upstream's answer
        if request.method == "HEAD":
            return make_response(200, proxied.headers(), b"", content_length=len(proxied.body))
        return make_response(200, proxied.headers(), proxied.body)
    return await serve_stored_manifest(ctx, request, name, reference, ref)


async def serve_stored_manifest(
    ctx: Context, request: Request, name: str, reference: str, ref: str | Digest
) -> Response:
    """GET/HEAD of a manifest stored here (no upstream involved), as stored (the Accept rule)."""
    info = ctx.store.resolve(name, ref)
    # By digest X-Ipfs-Path is the manifest's own DAG; by tag it is the tag's image directory.
    if isinstance(ref, Digest):
        headers = _manifest_headers(info) | image_headers(request, info.cid, None)
    else:
        headers = _manifest_headers(info) | image_headers(request, ctx.store.image_cid(name, ref), ref)
    if request.method == "HEAD":
        return make_response(200, headers, b"", content_length=info.size)
    body = await ctx.store.read_all(info.cid)
    return make_response(200, headers, body)


async def put_manifest(ctx: Context, request: Request, name: str, reference: str) -> Response:
    refuse_writes(ctx.settings)
    ref = parse_reference(reference)
    body = await read_body(
        request, ctx.settings.max_manifest_bytes, ctx.settings.read_timeout, code="MANIFEST_INVALID"
    )
    digest, parsed = await ctx.store.put_manifest(
        name,
        body,
        request.headers.get("Content-Type"),
        tag=ref if isinstance(ref, str) else None,
        digest=ref if isinstance(ref, Digest) else None,
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{digest}",
        "Docker-Content-Digest": str(digest),
    }
    if parsed.subject is not None:
        headers["OCI-Subject"] = str(parsed.subject.digest)
    if isinstance(ref, str):
        headers |= image_headers(request, ctx.store.image_cid(name, ref), ref)
    return make_response(201, headers)


async def delete_manifest(ctx: Context, request: Request, name: str, reference: str) -> Response:
    refuse_writes(ctx.settings)
    ref = parse_reference(reference)
    if isinstance(ref, Digest):
        ctx.store.delete_manifest(name, ref)
    else:
        ctx.store.delete_tag(name, ref)
    return make_response(202)
