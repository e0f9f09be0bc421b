"""``GET /v2/_catalog`` with ``n`` / ``last`` pagination and a Link header."""

from __future__ import annotations

from urllib.parse import urlencode

from quart import Request, Response

from ipfsreg.registry.handlers.base import Context, json_response, page_size
from ipfsreg.registry.proxy import current_scope


async def list_catalog(ctx: Context, request: Request) -> Response:
    """Every repository; with ``?ns=REGISTRY`` the repositories mirrored from that registry, by the
    names it knows them by (without ``ns``, those appear as ``REGISTRY/<name>``)."""
    limit = page_size(request, ctx.settings.catalog_max_entries)
    last = request.args.get("last") or None
    scope = current_scope()
    prefix = f"{scope.namespace}/" if scope.from_query else ""
    repos, more = ctx.store.list_repos(
        last=prefix + last if last is not None else None, limit=limit, prefix=prefix
    )
    repos = [repo[len(prefix) :] for repo in repos]
    headers: dict[str, str] = {}
    if more and repos:
        params: dict[str, str | int] = {"n": limit, "last": repos[-1]}
        if prefix:
            params["ns"] = scope.namespace
        query = urlencode(params)
        headers["Link"] = f'</v2/_catalog?{query}>; rel="next"'
    return json_response({"repositories": repos}, headers=headers)
