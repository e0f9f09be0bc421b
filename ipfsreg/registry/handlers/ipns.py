"""``/v2/ipns/<k51... name>/<repository>/...``: read-only repositories whose tags come from an IPNS name.

``docker pull HOST/ipns/<name>/app:v1`` resolves the name (through the injected resolver: the node's
IPNS service; the registry never speaks libp2p), finds ``app/v1`` in the record's tag directory and
then serves that image directory exactly as a pull by CID (``ipfs/<cid>``) does: manifests and blobs
verified against their digests, recorded under ``ipfs/<cid>`` so the next pull is local.
Requests by digest (child manifests, blobs) are served from the images of the repository's tags that
were resolved last (or, after a restart, from every tag of the repository).
"""

from __future__ import annotations

from typing import Final

from quart import Request, Response

from ipfsreg.cid import CID
from ipfsreg.ipns.record import IpnsError
from ipfsreg.registry.digests import Digest, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers import ipfs, manifests, referrers
from ipfsreg.registry.handlers.base import Context, IpnsResolver, json_response, page_size
from ipfsreg.registry.names import ipfs_repository_name
from ipfsreg.registry.routes import Route

READ_ONLY_MESSAGE: Final = (
    "ipns/<name>/<repository> repositories are read-only: their tags are signed by the name's key"
)


def _resolver(ctx: Context, name: str) -> IpnsResolver:
    if ctx.ipns is None:
        raise RegistryError("NAME_UNKNOWN", {"name": name}, message="this registry resolves no IPNS names")
    return ctx.ipns


async def dispatch(ctx: Context, request: Request, route: Route, ipns_name: str, repository: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        raise RegistryError(
            "DENIED", {"name": route.name, "method": request.method}, message=READ_ONLY_MESSAGE
        )
    resolver = _resolver(ctx, route.name)
    if route.kind == "tags":
        try:
            tags = await resolver.tags_of(ipns_name, repository)
        except IpnsError as exc:
            raise RegistryError("NAME_UNKNOWN", {"name": route.name, "reason": str(exc)[:500]}) from None
        limit = page_size(request, ctx.settings.catalog_max_entries)
        last = request.args.get("last") or None
        return json_response(
            {"name": route.name, "tags": [t for t in tags if last is None or t > last][:limit]}
        )
    if route.kind == "manifest":
        ref = manifests.parse_reference(route.ref)
        if not isinstance(ref, Digest):
            try:
                image = await resolver.resolve_tag(ipns_name, repository, ref)
            except IpnsError as exc:
                raise RegistryError(
                    "MANIFEST_UNKNOWN", {"reference": route.ref, "reason": str(exc)[:500]}
                ) from None
            return await ipfs.get_manifest(ctx, request, ipfs_repository_name(image), route.ref, image)
        return await _by_digest(ctx, request, route, resolver, ipns_name, repository, ref, "MANIFEST_UNKNOWN")
    if route.kind == "blob":
        digest = parse_digest(route.ref)
        return await _by_digest(ctx, request, route, resolver, ipns_name, repository, digest, "BLOB_UNKNOWN")
    if route.kind == "referrers":
        return await referrers.list_referrers(ctx, request, route.name, route.ref)
    raise RegistryError("UNSUPPORTED", {"route": route.kind}, message=READ_ONLY_MESSAGE)


async def _by_digest(
    ctx: Context,
    request: Request,
    route: Route,
    resolver: IpnsResolver,
    ipns_name: str,
    repository: str,
    digest: Digest,
    code: str,
) -> Response:
    try:
        candidates = await resolver.candidate_images(ipns_name, repository)
    except IpnsError as exc:
        raise RegistryError(code, {"digest": str(digest), "reason": str(exc)[:500]}) from None
    # What is already local first: no network for an image this node pulled before.
    local = [image for image in candidates if _holds(ctx, image, digest)]
    last_error: RegistryError | None = None
    for image in [*local, *(c for c in candidates if c not in local)]:
        try:
            if route.kind == "manifest":
                return await ipfs.get_manifest(ctx, request, ipfs_repository_name(image), str(digest), image)
            return await ipfs.get_blob(ctx, request, ipfs_repository_name(image), str(digest), image)
        except RegistryError as exc:
            if exc.code != code:
                raise
            last_error = exc
    if last_error is not None:
        raise last_error
    raise RegistryError(code, {"digest": str(digest), "reason": f"no image of {route.name} is known"})


def _holds(ctx: Context, image: CID, digest: Digest) -> bool:
    repo = ipfs_repository_name(image)
    return ctx.store.repo_has_blob(repo, digest) or ctx.store.manifest_info(repo, digest) is not None
