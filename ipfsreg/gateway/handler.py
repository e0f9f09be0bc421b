"""Answers one gateway request over a BlockSource: status, headers and a streamed body, independent of Quart.

:func:`handle_request` resolves the content path before anything is sent (so a missing root or path
entry is a 404 with a plain-text body), then returns a :class:`GatewayResponse` whose streamed body is
a :data:`BodyStream` factory, run later with a BlockSource owned by the sender for as long as the
stream lasts: a CAR is produced block by block as the DAG is walked, a file streams through the
ranged exporter. A block that goes missing after the headers are sent ends the stream with an error,
which truncates the response (the spec's "incomplete CAR" for streaming gateways).
"""

from __future__ import annotations

import html
import json
import mimetypes
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from ipfsreg.cid import CID, encode_varint
from ipfsreg.gateway.errors import (
    BadRequest,
    ContentNotFound,
    GatewayError,
    NotAcceptable,
    RangeNotSatisfiable,
)
from ipfsreg.gateway.request import RAW_TYPE, GatewayRequest, ResponseFormat, parse_request
from ipfsreg.gateway.traversal import (
    Emitter,
    ResolvedPath,
    entity_size,
    resolve_content_path,
    scope_blocks,
)
from ipfsreg.unixfs import exporter
from ipfsreg.unixfs.car import car_header, car_section
from ipfsreg.unixfs.exporter import BlockSource, decode_unixfs_node

IMMUTABLE: Final = "public, max-age=29030400, immutable"
CAR_FLUSH_BYTES: Final = 64 * 1024  # small sections are batched up to this size per write


BodyStream = Callable[[BlockSource], AsyncIterator[bytes]]
"""A streamed body: called with a (freshly opened) BlockSource by whoever sends the response."""


@dataclass
class GatewayResponse:
    status: int
    headers: dict[str, str]
    body: bytes | BodyStream = b""
    content_length: int | None = None  # None for a stream: sent without a length (chunked)


async def car_stream(
    source: BlockSource, request: GatewayRequest, resolved: ResolvedPath
) -> AsyncIterator[bytes]:
    """A CAR v1 (root: the requested CID): the path's blocks, then the terminal entity's for the scope."""
    emitter = Emitter(request.car.dups)
    buffer = bytearray(car_header([request.root]))
    for cid, block in resolved.path_blocks:
        if emitter.admit(cid):
            buffer += car_section(cid, block)
    blocks = scope_blocks(
        source, resolved.terminal, resolved.terminal_block, request.scope, request.entity_bytes, emitter
    )
    async for cid, block in blocks:
        if len(block) < CAR_FLUSH_BYTES:
            buffer += car_section(cid, block)
            if len(buffer) < CAR_FLUSH_BYTES:
                continue
            yield bytes(buffer)
        else:  # a large block (a file chunk) goes out as is, after its section prefix: no copy
            cid_bytes = cid.to_bytes()
            buffer += encode_varint(len(cid_bytes) + len(block)) + cid_bytes
            yield bytes(buffer)
            yield block
        buffer.clear()
    if buffer:
        yield bytes(buffer)


def _matches_etag(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``Range: bytes=`` range -> (offset, length); None to send the whole file.

    Malformed and multi-range headers are ignored, as RFC 9110 allows; a range that starts past the
    end raises RangeNotSatisfiable (416).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    unsatisfiable = RangeNotSatisfiable(
        f"range {header[:100]!r} is outside the {size} byte file",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        start = max(size - suffix, 0)
        return start, size - start
    start = int(first)
    if start >= size:
        raise unsatisfiable
    end = size - 1 if not last else min(int(last), size - 1)
    if end < start:
        return None
    return start, end - start + 1


def _base_headers(request: GatewayRequest, resolved: ResolvedPath) -> dict[str, str]:
    return {
        "X-Ipfs-Path": request.content_path,
        "X-Ipfs-Roots": ",".join(str(cid) for cid in resolved.roots),
        "Cache-Control": IMMUTABLE,
        "Vary": "Accept",
    }


def _content_location(request: GatewayRequest, query: Mapping[str, str]) -> dict[str, str]:
    """Where the same response lives with an explicit ``format`` (when Accept picked it)."""
    if request.explicit_format or request.format not in (ResponseFormat.RAW, ResponseFormat.CAR):
        return {}
    params = {**query, "format": request.format.value}
    encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe=':*')}" for k, v in params.items())
    path = "/".join(quote(part, safe="") for part in (str(request.root), *request.segments))
    return {"Content-Location": f"/ipfs/{path}?{encoded}"}


async def handle_request(
    source: BlockSource,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    deserialized: bool = True,
) -> GatewayResponse:
    """The response to ``GET|HEAD /ipfs/<path>``; GatewayError for refused requests.

    ``path`` is the percent-encoded part after ``/ipfs/``; ``headers`` must be looked up with
    lower-case names. Not-found errors of the source propagate (the caller maps them to 404).
    With ``deserialized`` false the gateway is strictly trustless: only raw blocks and CARs.
    """
    request = parse_request(path, query, headers)
    if not deserialized and request.format not in (ResponseFormat.RAW, ResponseFormat.CAR):
        if not headers.get("accept"):
            raise BadRequest("this gateway is trustless: ask for application/vnd.ipld.raw or .car")
        raise NotAcceptable("this gateway only serves application/vnd.ipld.raw and application/vnd.ipld.car")
    resolved = await resolve_content_path(source, request.root, request.segments)
    terminal = resolved.terminal
    out = _base_headers(request, resolved)
    head = method == "HEAD"
    if request.format is ResponseFormat.RAW:
        etag = request.etag(terminal)
        out |= {
            "Content-Type": RAW_TYPE,
            "Content-Disposition": f'attachment; filename="{terminal}.bin"',
            "X-Content-Type-Options": "nosniff",
            "Etag": etag,
            **_content_location(request, query),
        }
        if _matches_etag(headers.get("if-none-match"), etag):
            return GatewayResponse(304, out)
        return GatewayResponse(
            200, out, b"" if head else resolved.terminal_block, len(resolved.terminal_block)
        )
    if request.format is ResponseFormat.CAR:
        _check_entity_bytes(request, resolved)
        etag = request.etag(terminal)
        out |= {
            "Content-Type": request.car.content_type,
            "Content-Disposition": f'attachment; filename="{request.root}.car"',
            "X-Content-Type-Options": "nosniff",
            "Etag": etag,
            **_content_location(request, query),
        }
        if _matches_etag(headers.get("if-none-match"), etag):
            return GatewayResponse(304, out)
        if head:
            return GatewayResponse(200, out)
        return GatewayResponse(200, out, lambda src: car_stream(src, request, resolved))
    return await _deserialized(source, request, resolved, out, headers, query, head, path.endswith("/"))


def _check_entity_bytes(request: GatewayRequest, resolved: ResolvedPath) -> None:
    """A range wholly past the end of a file is known before anything is sent: 400, as the spec says
    (a gateway SHOULD when it can tell upfront). Empty ranges inside it get the root block alone."""
    if request.entity_bytes is None:
        return
    size = entity_size(resolved.terminal, resolved.terminal_block)
    if size is not None and request.entity_bytes.starts_past_end(size):
        raise BadRequest(
            f"entity-bytes {request.entity_bytes} starts past the end of the {size} byte file "
            f"{resolved.terminal}"
        )


async def _deserialized(
    source: BlockSource,
    request: GatewayRequest,
    resolved: ResolvedPath,
    out: dict[str, str],
    headers: Mapping[str, str],
    query: Mapping[str, str],
    head: bool,
    trailing_slash: bool,
) -> GatewayResponse:
    """File bytes (with Range), a symlink's target, or a directory as index.html / HTML / JSON listing."""
    terminal = resolved.terminal
    info = await exporter.stat(source, terminal)
    if info.type in ("directory", "hamt"):
        if request.format is ResponseFormat.DESERIALIZED and not trailing_slash:
            # relative links in an index.html or listing resolve against the directory itself
            location = "/" + request.content_path.strip("/") + "/"
            location = quote(location, safe="/")
            if query:
                location += "?" + "&".join(
                    f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items()
                )
            return GatewayResponse(301, {**out, "Location": location})
        return await _directory(source, request, terminal, out, headers, head)
    if info.type == "symlink":
        _, fs = decode_unixfs_node(terminal, resolved.terminal_block)
        body = fs.data or b""
        out |= {"Content-Type": "text/plain; charset=utf-8", "Etag": f'"{terminal}"'}
        return GatewayResponse(200, out, b"" if head else body, len(body))
    if info.type not in ("file", "raw"):
        raise ContentNotFound(f"{terminal} is a UnixFS {info.type} node, which has no content")
    name = query.get("filename") or (request.segments[-1] if request.segments else "")
    return _file_response(terminal, info.size, name, out, headers, query, head)


def _file_response(
    cid: CID,
    size: int,
    name: str,
    out: dict[str, str],
    headers: Mapping[str, str],
    query: Mapping[str, str],
    head: bool,
) -> GatewayResponse:
    etag = f'"{cid}"'
    content_type = mimetypes.guess_type(name)[0] if name else None
    out |= {
        "Content-Type": content_type or "application/octet-stream",
        "Etag": etag,
        "Accept-Ranges": "bytes",
    }
    if query.get("filename") or query.get("download") == "true":
        disposition = "attachment" if query.get("download") == "true" else "inline"
        out["Content-Disposition"] = f"{disposition}; filename*=UTF-8''{quote(name, safe='')}"
    if _matches_etag(headers.get("if-none-match"), etag):
        return GatewayResponse(304, out)
    ranged = parse_byte_range(headers.get("range"), size)
    offset, length, status = 0, size, 200
    if ranged is not None:
        offset, length = ranged
        status = 206
        out["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
    if head or length == 0:
        return GatewayResponse(status, out, b"", length)
    return GatewayResponse(status, out, lambda src: exporter.read_file(src, cid, offset, length), length)


async def _directory(
    source: BlockSource,
    request: GatewayRequest,
    cid: CID,
    out: dict[str, str],
    headers: Mapping[str, str],
    head: bool,
) -> GatewayResponse:
    if request.format is ResponseFormat.DESERIALIZED:
        index = await exporter.lookup(source, cid, "index.html")
        if index is not None:
            info = await exporter.stat(source, index)
            if info.type in ("file", "raw"):
                return _file_response(index, info.size, "index.html", out, headers, {}, head)
    entries = await exporter.list_directory(source, cid)
    base = request.content_path.rstrip("/")
    if request.format is ResponseFormat.JSON_LISTING:
        listing = {
            "cid": str(cid),
            "path": request.content_path,
            "entries": [{"name": e.name, "cid": str(e.cid), "size": e.tsize} for e in entries],
        }
        body = json.dumps(listing).encode()
        out |= {"Content-Type": "application/json", "Etag": f'W/"{cid}.dir.json"'}
    else:
        rows = "\n".join(
            f'<li><a href="{html.escape(quote(base + "/" + e.name, safe="/:"))}">{html.escape(e.name)}</a>'
            f" <small>{e.cid} ({e.tsize if e.tsize is not None else '?'} bytes)</small></li>"
            for e in entries
        )
        title = html.escape(request.content_path)
        body = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body><h1>Index of {title}</h1>\n<p>{cid}</p>\n<ul>\n{rows}\n</ul></body></html>\n"
        ).encode()
        out |= {"Content-Type": "text/html; charset=utf-8", "Etag": f'W/"{cid}.dir.html"'}
    if _matches_etag(headers.get("if-none-match"), out["Etag"].removeprefix("W/")):
        return GatewayResponse(304, out)
    return GatewayResponse(200, out, b"" if head else body, len(body))


def error_body(error: GatewayError) -> bytes:
    return (error.message + "\n").encode()
