"""``GET /v2/<name>/tags/list`` with ``n`` / ``last`` pagination and a Link header."""

from __future__ import annotations

from urllib.parse import urlencode

from quart import Request, Response

from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers.base import Context, json_response, page_size
from ipfsreg.registry.proxy import current_scope


async def list_tags(ctx: Context, request: Request, name: str) -> Response:
    limit = page_size(request, ctx.settings.catalog_max_entries)
    last = request.args.get("last") or None
    tags, more = ctx.store.list_tags(name, last=last, limit=limit)
    scope = current_scope()
    # Through ?ns= the client names the repository without its registry.
    shown = name[len(scope.namespace) + 1 :] if scope.from_query else name
    if not tags and last is None and not ctx.store.repo_exists(name):
        raise RegistryError("NAME_UNKNOWN", {"name": shown})
    headers: dict[str, str] = {}
    if more and tags:
        params: dict[str, str | int] = {"n": limit, "last": tags[-1]}
        if scope.from_query:
            params["ns"] = scope.namespace
        headers["Link"] = f'</v2/{shown}/tags/list?{urlencode(params)}>; rel="next"'
    return json_response({"name": shown, "tags": tags}, headers=headers)
