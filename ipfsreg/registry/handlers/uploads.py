"""``/v2/<name>/blobs/uploads/``: start (monolithic, session, mount), PATCH, PUT, status, cancel.

A pull-through cache refuses every write here before anything is read or stored (UNSUPPORTED).
"""

from __future__ import annotations

from quart import Request, Response

from ipfsreg.httpserver import USER_SCOPE_KEY
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers.base import Context, body_chunks, make_response
from ipfsreg.registry.names import is_valid_name
from ipfsreg.registry.proxy import refuse_writes
from ipfsreg.registry.ranges import parse_content_range, upload_range
from ipfsreg.registry.storage import BlobInfo, Upload


def client_key(request: Request) -> str:
    """Whom an upload session is counted against: the authenticated user, else the address."""
    user = request.scope.get(USER_SCOPE_KEY)
    if user:
        return f"user:{user}"
    client = request.scope.get("client")
    return f"addr:{client[0]}" if client else "addr:-"


def _session_headers(name: str, upload: Upload) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload.uuid}",
        "Range": upload_range(upload.offset),
        "Docker-Upload-UUID": upload.uuid,
    }


def _created(name: str, info: BlobInfo) -> Response:
    return make_response(
        201,
        {
            "Location": f"/v2/{name}/blobs/{info.digest}",
            "Docker-Content-Digest": str(info.digest),
            "X-Ipfs-Path": f"/ipfs/{info.cid}",
        },
    )


def _check_content_range(request: Request, name: str, upload: Upload) -> int | None:
    """Check a chunk's Content-Range against the session; return the chunk's declared length."""
    header = request.headers.get("Content-Range")
    if not header:
        return None
    try:
        start, end = parse_content_range(header)
    except RegistryError as exc:
        exc.headers.update(_session_headers(name, upload))
        raise
    declared = end - start + 1
    length = request.content_length
    reason = None
    if start != upload.offset:
        reason = f"chunk range {start}-{end} does not continue the upload at {upload.offset}"
    elif length is not None and length != declared:
        reason = (
            f"Content-Range {start}-{end} is {declared} bytes but Content-Length is {length}: "
            "they must be equal"
        )
    if reason is not None:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID", {"reason": reason}, status=416, headers=_session_headers(name, upload)
        )
    return declared


async def _append(ctx: Context, request: Request, name: str, upload: Upload, declared: int | None) -> None:
    limit = ctx.settings.max_chunk_bytes
    if limit and request.content_length is not None and request.content_length > limit:
        raise RegistryError("SIZE_INVALID", {"reason": f"chunk larger than {limit} bytes"}, status=413)
    appended = await ctx.store.append(
        upload,
        body_chunks(request, ctx.settings.read_timeout, bulk=True),
        max_bytes=ctx.settings.max_chunk_bytes,
    )
    if declared is not None and appended != declared:
        ctx.store.discard_chunk(upload)
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            {"reason": f"Content-Range declared {declared} bytes, body had {appended}"},
        )


async def post_upload(ctx: Context, request: Request, name: str) -> Response:
    refuse_writes(ctx.settings)
    store = ctx.store
    mount = request.args.get("mount")
    if mount:
        digest = parse_digest(mount)
        from_repo = request.args.get("from") or None
        allowed = ctx.settings.automatic_crossmount if from_repo is None else is_valid_name(from_repo)
        if allowed:
            info = store.mount_blob(name, digest, from_repo)
            if info is not None:
                return _created(name, info)
    digest_param = request.args.get("digest")
    if digest_param is not None:
        digest = parse_digest(digest_param)
        scratch = store.scratch_upload(name)
        await _append(ctx, request, name, scratch, None)
        info = await store.finish_upload(scratch, digest)
        return _created(name, info)
    upload = await store.new_upload(name, client_key(request))
    headers = _session_headers(name, upload)
    return make_response(202, headers)


async def patch_upload(ctx: Context, request: Request, name: str, upload_id: str) -> Response:
    refuse_writes(ctx.settings)
    upload = await ctx.store.lock_upload(name, upload_id)
    try:
        declared = _check_content_range(request, name, upload)
        await _append(ctx, request, name, upload, declared)
        await ctx.store.save_upload(upload)
        return make_response(202, _session_headers(name, upload))
    finally:
        upload.lock.release()


async def put_upload(ctx: Context, request: Request, name: str, upload_id: str) -> Response:
    refuse_writes(ctx.settings)
    digest_param = request.args.get("digest")
    upload = await ctx.store.lock_upload(name, upload_id)
    try:
        if not digest_param:
            raise RegistryError("DIGEST_INVALID", {"reason": "the digest query parameter is required"})
        digest = parse_digest(digest_param)
        declared = _check_content_range(request, name, upload)
        await _append(ctx, request, name, upload, declared)
        info = await ctx.store.finish_upload(upload, digest)
        return _created(name, info)
    finally:
        upload.lock.release()


async def get_upload(ctx: Context, request: Request, name: str, upload_id: str) -> Response:
    upload = await ctx.store.get_upload(name, upload_id)
    return make_response(204, _session_headers(name, upload))


async def delete_upload(ctx: Context, request: Request, name: str, upload_id: str) -> Response:
    refuse_writes(ctx.settings)
    upload = await ctx.store.lock_upload(name, upload_id)
    try:
        ctx.store.cancel_upload(upload)
    finally:
        upload.lock.release()
    return make_response(204)
