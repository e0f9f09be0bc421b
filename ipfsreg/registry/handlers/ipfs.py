"""``/v2/ipfs/<cid>/...``: read-only repositories that serve the OCI Image Layout directory ``<cid>``.

What is already recorded under the repository is served by the ordinary handlers' local paths (a
pull-through upstream is never asked: the content is named by its CID).
Anything else is read from the layout through a per-request block source (missing blocks come over
bitswap): a manifest is checked against its digest and recorded (with an index's children) before
it is served; a blob streams through the hasher, its last bytes held back until the digest matches,
and is recorded once it has been read whole. The next pull then needs no network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, cast

from quart import Request, Response, current_app
from quart_trio import QuartTrio

from ipfsreg.blockstore import BlockstoreError
from ipfsreg.cid import CID
from ipfsreg.gateway.routes import stream_body
from ipfsreg.node.errors import BitswapError
from ipfsreg.oci.errors import LayoutError, ReferenceNotFound
from ipfsreg.oci.reader import read_image_layout
from ipfsreg.registry.digests import Digest, parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers import blobs, manifests, referrers
from ipfsreg.registry.handlers.base import Context, json_response, make_response, page_size
from ipfsreg.registry.handlers.blobs import blob_headers
from ipfsreg.registry.images import fetch_blob, fetch_manifest, locate_blob
from ipfsreg.registry.routes import Route
from ipfsreg.registry.storage import BlobInfo
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource

READ_ONLY_MESSAGE: Final = (
    "ipfs/<cid> repositories are read-only: they serve the immutable image directory <cid>"
)
# Failures reading a layout from the network or the blockstore, reported as "unknown" with a reason.
_UNAVAILABLE: Final = (BitswapError, BlockstoreError, UnixFSError)


def _reason(exc: BaseException) -> str:
    return str(exc)[:500]


async def dispatch(ctx: Context, request: Request, route: Route, root: CID) -> Response:
    """Serve a GET/HEAD on an ``ipfs/<cid>`` repository; any write is DENIED."""
    if request.method not in ("GET", "HEAD"):
        raise RegistryError(
            "DENIED", {"name": route.name, "method": request.method}, message=READ_ONLY_MESSAGE
        )
    if route.kind == "manifest":
        return await get_manifest(ctx, request, route.name, route.ref, root)
    if route.kind == "blob":
        return await get_blob(ctx, request, route.name, route.ref, root)
    if route.kind == "tags":
        return await list_tags(ctx, request, route.name, root)
    if route.kind == "referrers":
        return await referrers.list_referrers(ctx, request, route.name, route.ref)
    raise RegistryError("UNSUPPORTED", {"route": route.kind}, message=READ_ONLY_MESSAGE)


async def get_manifest(ctx: Context, request: Request, name: str, reference: str, root: CID) -> Response:
    ref = manifests.parse_reference(reference)
    digest = ref if isinstance(ref, Digest) else ctx.store.resolve_tag(name, ref)
    if digest is None or ctx.store.manifest_info(name, digest) is None:
        try:
            async with ctx.open_source() as source:
                await fetch_manifest(ctx.store, source, root, str(ref))
        except ReferenceNotFound as exc:
            raise RegistryError(
                "MANIFEST_UNKNOWN", {"reference": reference, "reason": _reason(exc)}
            ) from None
        except (LayoutError, *_UNAVAILABLE) as exc:
            raise RegistryError(
                "MANIFEST_UNKNOWN", {"reference": reference, "image": str(root), "reason": _reason(exc)}
            ) from None
    return await manifests.serve_stored_manifest(ctx, request, name, reference, ref)


async def get_blob(ctx: Context, request: Request, name: str, reference: str, root: CID) -> Response:
    digest = parse_digest(reference)
    if ctx.store.repo_has_blob(name, digest):
        return await blobs.serve_stored_blob(ctx, request, name, digest)
    try:
        async with ctx.open_source() as source:
            cid, size = await locate_blob(source, root, digest)
    except ReferenceNotFound as exc:
        raise RegistryError("BLOB_UNKNOWN", {"digest": str(digest), "reason": _reason(exc)}) from None
    except (LayoutError, *_UNAVAILABLE) as exc:
        raise RegistryError(
            "BLOB_UNKNOWN", {"digest": str(digest), "image": str(root), "reason": _reason(exc)}
        ) from None
    # A Range is ignored (RFC 9110 allows it): only a whole read can be checked against the digest.
    headers = blob_headers(BlobInfo(digest, cid, size))
    del headers["Accept-Ranges"]
    if request.method == "HEAD" or size == 0:
        return make_response(200, headers, b"", content_length=size)
    store = ctx.store

    def body(source: BlockSource) -> AsyncIterator[bytes]:
        return fetch_blob(store, source, name, digest, cid, size)

    factory = ctx.source_factory_or_shared()
    return make_response(
        200, headers, stream_body(cast(QuartTrio, current_app).nursery, factory, body), content_length=size
    )


async def list_tags(ctx: Context, request: Request, name: str, root: CID) -> Response:
    """The layout's ref names (from its index.json), sorted, with ``n``/``last`` pagination."""
    try:
        async with ctx.open_source() as source:
            layout = await read_image_layout(source, root)
    except (LayoutError, *_UNAVAILABLE) as exc:
        raise RegistryError("NAME_UNKNOWN", {"name": name, "reason": _reason(exc)}) from None
    limit = page_size(request, ctx.settings.catalog_max_entries)
    last = request.args.get("last") or None
    tags = sorted({tag for tag in layout.tags if last is None or tag > last})
    return json_response({"name": name, "tags": tags[:limit]})
