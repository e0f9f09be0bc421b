"""``GET /v2/_catalog`` with ``n`` / ``last`` pagination and a Link header."""

from __future__ import annotations

from urllib.parse import urlencode

from quart import Request, Response

from ipfsreg.registry.handlers.base import Context, json_response, page_size


async def list_catalog(ctx: Context, request: Request) -> Response:
    limit = page_size(request, ctx.settings.catalog_max_entries)
    last = request.args.get("last") or None
    repos, more = ctx.store.list_repos(last=last, limit=limit)
    headers: dict[str, str] = {}
    if more and repos:
        query = urlencode({"n": limit, "last": repos[-1]})
        headers["Link"] = f'</v2/_catalog?{query}>; rel="next"'
    return json_response({"repositories": repos}, headers=headers)
