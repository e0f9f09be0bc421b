"""``GET /v2/<name>/tags/list`` with ``n`` / ``last`` pagination and a Link header."""

from __future__ import annotations

from urllib.parse import urlencode

from quart import Request, Response

from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers.base import Context, json_response, page_size


async def list_tags(ctx: Context, request: Request, name: str) -> Response:
    limit = page_size(request, ctx.settings.catalog_max_entries)
    last = request.args.get("last") or None
    tags, more = ctx.store.list_tags(name, last=last, limit=limit)
    if not tags and last is None and not ctx.store.repo_exists(name):
        raise RegistryError("NAME_UNKNOWN", {"name": name})
    headers: dict[str, str] = {}
    if more and tags:
        query = urlencode({"n": limit, "last": tags[-1]})
        headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
    return json_response({"name": name, "tags": tags}, headers=headers)
