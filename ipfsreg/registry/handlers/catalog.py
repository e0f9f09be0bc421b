"""``GET /v2/_catalog`` with ``n`` / ``last`` pagination and a Link header.

``ipfs/<cid>`` repositories (created by pulls by CID, one per image directory ever pulled) are
listed only with ``[registry] catalog_ipfs = true``: they are not pushed repositories, and a
registry that serves many pulls by CID would bury its own repositories under them."""

from __future__ import annotations

from urllib.parse import urlencode

from quart import Request, Response

from ipfsreg.registry.handlers.base import Context, json_response, page_size
from ipfsreg.registry.names import IPFS_PREFIX
from ipfsreg.registry.proxy import current_scope


async def list_catalog(ctx: Context, request: Request) -> Response:
    """Every repository; with ``?ns=REGISTRY`` the repositories mirrored from that registry, by the
    names it knows them by (without ``ns``, those appear as ``REGISTRY/<name>``)."""
    limit = page_size(request, ctx.settings.catalog_max_entries)
    last = request.args.get("last") or None
    scope = current_scope()
    prefix = f"{scope.namespace}/" if scope.from_query else ""
    skip = None if ctx.settings.catalog_ipfs else IPFS_PREFIX
    repos, more = ctx.store.list_repos(
        last=prefix + last if last is not None else None, limit=limit, prefix=prefix, skip_prefix=skip
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
