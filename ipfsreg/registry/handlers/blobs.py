"""``/v2/<name>/blobs/<digest>``: HEAD, GET (with Range) streamed from the blob's DAG (zero-copy where the
server offers it: registry/zerocopy.py), and DELETE."""

from __future__ import annotations

from quart import Request, Response

from ipfsreg.registry import zerocopy
from ipfsreg.registry.digests import Digest, parse_digest
from ipfsreg.registry.handlers.base import Context, make_response
from ipfsreg.registry.proxy import pull_through, refuse_writes
from ipfsreg.registry.ranges import RangeNotSatisfiable, parse_range
from ipfsreg.registry.storage import BlobInfo


def blob_headers(info: BlobInfo) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(info.digest),
        "ETag": f'"{info.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
        "X-Ipfs-Path": f"/ipfs/{info.cid}",
    }


async def get_blob(ctx: Context, request: Request, name: str, reference: str) -> Response:
    digest = parse_digest(reference)
    proxy = pull_through(ctx, name)
    if proxy is not None:  # a miss is answered by the mirror (None: stored now, read it locally)
        head = request.method == "HEAD"
        fetched = await proxy.blob(digest, head=head, ranged="Range" in request.headers)
        if fetched is not None:
            return make_response(200, fetched.headers(), fetched.body or b"", content_length=fetched.size)
    response = await serve_stored_blob(ctx, request, name, digest)
    if proxy is not None and request.method == "GET" and response.content_length:
        proxy.served_locally(response.content_length)
    return response


async def serve_stored_blob(ctx: Context, request: Request, name: str, digest: Digest) -> Response:
    """GET/HEAD (with Range) of a blob stored in ``name`` (no upstream involved)."""
    info = ctx.store.stat_blob(name, digest)
    headers = blob_headers(info)
    offset, length, status = 0, info.size, 200
    range_header = request.headers.get("Range")
    if range_header:
        try:
            ranged = parse_range(range_header, info.size)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{info.size}"
            return make_response(416, headers, b"")
        if ranged is not None:
            offset, length = ranged
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{info.size}"
    if request.method == "HEAD" or length == 0:
        return make_response(status, headers, b"", content_length=length)
    if zerocopy.offered(request.scope):
        # Leaves in pack files go out with sendfile, the rest as bytes (registry/zerocopy.py).
        return zerocopy.ZeroCopyResponse(
            status,
            headers,
            datastore=ctx.store.datastore,
            source=ctx.store.block_source,
            leaves=ctx.sendable_leaves,
            cid=info.cid,
            offset=offset,
            length=length,
        )
    return make_response(status, headers, ctx.store.read(info.cid, offset, length), content_length=length)


async def delete_blob(ctx: Context, request: Request, name: str, reference: str) -> Response:
    refuse_writes(ctx.settings)
    digest = parse_digest(reference)
    ctx.store.delete_blob(name, digest)
    return make_response(202, {"Docker-Content-Digest": str(digest)})
