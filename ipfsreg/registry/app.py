"""Builds the registry's Quart-trio app and serves it with hypercorn on the caller's trio loop.

Request bodies stream with backpressure: Quart's own receive loop buffers a whole body in
memory, so the connection class here stops reading from the ASGI server while more than
``body_buffer_bytes`` wait unread; uploads of any size therefore run in bounded memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Request, Response, request
from quart.wrappers.response import IterableBody
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ipfsreg import filesender, httpserver
from ipfsreg.blockstore import BlockstoreError, Datastore
from ipfsreg.cid import CID
from ipfsreg.gateway.routes import SourceFactory
from ipfsreg.httpserver import EARLY_DRAIN_BYTES, EARLY_DRAIN_SECONDS
from ipfsreg.mirror.rules import path_namespace, private_namespaces
from ipfsreg.mirror.settings import MirrorSettings
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.registry import coalesce, zerocopy
from ipfsreg.registry.body import StreamingBody
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.fleet import Fleet, FleetPeers
from ipfsreg.registry.handlers import blobs, catalog, ipfs, ipns, manifests, referrers, tags, uploads
from ipfsreg.registry.handlers.base import (
    API_VERSION_HEADER,
    Context,
    IpnsResolver,
    allowed_methods,
    error_response,
    get_base,
)
from ipfsreg.registry.names import (
    check_name,
    check_request_path,
    ipfs_repository_cid,
    ipns_repository,
    parse_namespace,
    qualified_name,
)
from ipfsreg.registry.priority import CURRENT_TURN, Priority, Turn, bulk_chunks
from ipfsreg.registry.private import PrivateContent
from ipfsreg.registry.proxy import RequestScope, current_scope, enter_scope, response_headers
from ipfsreg.registry.routes import ALLOWED_METHODS, Route, match_route
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import BlocksStored, RegistryStore
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource
from ipfsreg.unixfs.importer import ImportOptions

log = logging.getLogger(__name__)

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class StreamingRequest(TrioRequest):
    body_class = StreamingBody


class BackpressureHTTPConnection(TrioASGIHTTPConnection):
    """Serves one request, reading its body no faster than the handler consumes it.

    Quart's receive loop would buffer a whole upload in memory; this one stops pulling body
    events from hypercorn while more than ``high_water`` bytes wait unread.

    When the handler answers before the whole body has arrived (an early error), the rest of the
    body is read and dropped before the response goes out, up to :data:`EARLY_DRAIN_BYTES` and
    :data:`EARLY_DRAIN_SECONDS`: a client that sent all of a small body then keeps its connection
    (requests pipelined behind it are served). Past those bounds the response says
    ``Connection: close`` and the server closes after it (lingering: see ipfsreg/httpserver.py).
    """

    high_water = 512 * 1024

    async def __call__(self, receive: Callable[[], Awaitable[Any]], send: Callable[..., Any]) -> None:
        request = self._create_request_from_scope(send)
        app = self.app
        # Reads are interactive until they move bulk bytes; writes never hold bulk transfers back:
        # they wait on worker threads and fsync (a blob's commit), not on the event loop.
        interactive = request.method in ("GET", "HEAD")
        turn = Turn(app.priority if isinstance(app, RegistryApp) else Priority(), interactive=interactive)
        token = CURRENT_TURN.set(turn)
        try:
            with turn:  # ipfsreg/registry/priority.py
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._receive, nursery, request, receive)
                    await self._respond(request, send, turn)
                    nursery.cancel_scope.cancel()
        finally:
            CURRENT_TURN.reset(token)

    async def _respond(self, request: Request, send: Callable[..., Any], turn: Turn) -> None:
        response = await self.app.handle_request(request)
        if isinstance(response, Response) and isinstance(response.response, IterableBody):
            response.response.iter = bulk_chunks(turn, response.response.iter)  # streamed: bulk
        body = request.body
        if isinstance(body, StreamingBody) and not body.complete:
            whole = await body.drain(EARLY_DRAIN_BYTES, EARLY_DRAIN_SECONDS, request.content_length)
            if not whole and isinstance(response, Response):
                # The request stream is still mid-body: the client must not send its next request
                # on this connection.
                response.headers["Connection"] = "close"
        timeout = response.timeout if isinstance(response, Response) else Ellipsis
        if timeout is Ellipsis:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        with trio.move_on_after(float("inf") if timeout is None else float(timeout)):
            await self._send_response(send, response)

    async def _send_response(self, send: Callable[..., Any], response: Any) -> None:
        if isinstance(response, zerocopy.ZeroCopyResponse):
            await zerocopy.send_response(send, response)
        else:
            await super()._send_response(send, response)

    async def _receive(
        self, nursery: trio.Nursery, request: Request, receive: Callable[[], Awaitable[Any]]
    ) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                nursery.cancel_scope.cancel()  # the client went away: the handler stops too
                return
            if message["type"] != "http.request":
                continue
            more = bool(message.get("more_body", False))
            body.append(message.get("body", b""))
            if isinstance(body, StreamingBody) and more:
                app = self.app
                if isinstance(app, RegistryApp) and body.buffered > app.peak_body_buffered:
                    app.peak_body_buffered = body.buffered
                await body.wait_below(self.high_water)
            if not more:
                body.set_complete()


class RegistryApp(QuartTrio):
    asgi_http_class = BackpressureHTTPConnection
    request_class = StreamingRequest
    peak_body_buffered = 0
    """The most request-body bytes ever buffered unread (bounded by backpressure)."""
    priority: Priority = Priority()
    """Small requests before bulk transfers (one per app: set by create_app)."""


Handler = Callable[..., Awaitable[Response]]

_HANDLERS: dict[tuple[str, str], Handler] = {
    ("blob", "GET"): blobs.get_blob,
    ("blob", "HEAD"): blobs.get_blob,
    ("blob", "DELETE"): blobs.delete_blob,
    ("uploads", "POST"): uploads.post_upload,
    ("upload", "GET"): uploads.get_upload,
    ("upload", "PATCH"): uploads.patch_upload,
    ("upload", "PUT"): uploads.put_upload,
    ("upload", "DELETE"): uploads.delete_upload,
    ("manifest", "GET"): manifests.get_manifest,
    ("manifest", "HEAD"): manifests.get_manifest,
    ("manifest", "PUT"): manifests.put_manifest,
    ("manifest", "DELETE"): manifests.delete_manifest,
    ("tags", "GET"): tags.list_tags,
    ("referrers", "GET"): referrers.list_referrers,
}


async def dispatch(ctx: Context, req: Request, route: Route) -> Response:
    """Run the handler of ``route`` for the request's method (pure routing is in routes.py)."""
    method = req.method
    allowed = allowed_methods(route.kind, ctx.settings)
    if method not in allowed:
        detail: dict[str, str] = {"method": method, "route": route.kind}
        if method == "DELETE" and method in ALLOWED_METHODS[route.kind]:
            detail["reason"] = "deletes are disabled on this registry"
        raise RegistryError("UNSUPPORTED", detail, headers={"Allow": ", ".join(allowed)})
    scope = _enter_namespace(ctx, req, route)
    if route.kind == "base":
        return await get_base(ctx, req)
    if route.kind == "catalog":
        return await catalog.list_catalog(ctx, req)
    name = route.name
    if scope.from_query:
        # Another registry's repository, pulled through this mirror (ipfs/ and ipns/ names included:
        # docker.io/ipfs/... is a Docker Hub repository).
        name = qualified_name(scope.namespace, check_name(route.name))
    else:
        ipns_repo = ipns_repository(route.name)
        if ipns_repo is not None:
            return await ipns.dispatch(ctx, req, route, *ipns_repo)
        ipfs_root = ipfs_repository_cid(route.name)
        if ipfs_root is not None:
            return await ipfs.dispatch(ctx, req, route, ipfs_root)
        check_name(route.name)
    handler = _HANDLERS[(route.kind, method)]
    if route.kind in ("uploads", "tags"):
        return await handler(ctx, req, name)
    return await handler(ctx, req, name, route.ref)


def _enter_namespace(ctx: Context, req: Request, route: Route) -> RequestScope:
    """The request's registry namespace: ``?ns=`` (containerd, the OCI proxying spec), or a name's
    first component when it is a mirrored registry (CRI-O and podman mirrors with a path)."""
    scope = RequestScope()
    raw = req.args.get("ns")
    if raw is not None:
        scope.namespace, scope.from_query = parse_namespace(raw), True
    elif ctx.mirror is not None and route.name:
        found = path_namespace(ctx.mirror, route.name)
        if found is not None:
            scope.namespace = found[0]
    enter_scope(scope)
    return scope


_WRITES = frozenset({"PUT", "POST", "PATCH", "DELETE"})


def _answerable(route_kind: str, settings: RegistrySettings) -> tuple[str, ...]:
    """The Allow header of a handler's 405: a pull-through cache refuses every write, and so does
    a request through ``?ns=`` (another registry's repositories)."""
    methods = allowed_methods(route_kind, settings)
    read_only = settings.upstream or current_scope().from_query
    return tuple(m for m in methods if m not in _WRITES) if read_only else methods


def create_app(
    datastore: Datastore,
    settings: RegistrySettings | None = None,
    *,
    block_source: BlockSource | None = None,
    import_options: ImportOptions | None = None,
    source_factory: SourceFactory | None = None,
    on_blocks_stored: BlocksStored | None = None,
    on_committed: BlocksStored | None = None,
    send_committed: Callable[[], Awaitable[None]] | None = None,
    mirror: MirrorSettings | None = None,
    fleet_peers: FleetPeers | None = None,
    share_private: bool = False,
) -> RegistryApp:
    """The registry app over ``datastore``; reads go through ``block_source`` (default: local blocks).

    Pulls by CID (``ipfs/<cid>`` repositories) open a source per request from ``source_factory``
    (e.g. ``node.block_source``: one bitswap session each); without it they use ``block_source``.
    ``on_blocks_stored`` (e.g. ``node.notify_new_blocks``) is called on the trio thread with the
    CIDs of every batch of blocks that uploads and manifest pushes commit. ``on_committed`` (e.g.
    ``node.provide``) gets the CID of every blob, manifest and image directory once it is stored;
    ``send_committed`` (e.g. ``node.send_announced``) is awaited after it before a push is answered.

    ``mirror`` routes ``?ns=`` requests to their upstreams; ``fleet_peers`` (the p2p node, adapted)
    makes the mirror ask fleet peers for missing blobs first and answer theirs (see
    :func:`mirror_parts`); ``share_private``: the node is in a private swarm, where private
    namespaces' content may be served to peers.
    """
    settings = settings if settings is not None else RegistrySettings()
    high_water_bytes = settings.body_buffer_bytes
    store = RegistryStore(
        datastore,
        block_source=block_source,
        import_options=import_options,
        flush_bytes=settings.upload_flush_bytes,
        upload_ttl=settings.upload_session_ttl,
        max_blob_bytes=settings.max_blob_bytes,
        on_blocks_stored=on_blocks_stored,
        on_committed=on_committed,
        send_committed=send_committed,
        max_live_uploads=settings.max_live_uploads,
        max_uploads_per_client=settings.max_uploads_per_client,
        upload_memory_bytes=settings.upload_memory_bytes,
    )
    ctx = Context(store, settings, source_factory, mirror=mirror)
    if mirror is not None and private_namespaces(mirror):
        ctx.privacy = PrivateContent(datastore)
    if fleet_peers is not None:
        privacy = ctx.privacy
        ctx.fleet = Fleet(
            fleet_peers,
            local_blob=lambda digest: _local_blob(store, digest),
            is_private=(lambda digest: privacy.is_private_blob(digest)) if privacy is not None else _never,
            stats=ctx.mirror_stats,
            share_private=share_private,
            peer_timeout=(mirror or MirrorSettings()).peer_timeout,
            stall_timeout=(mirror or MirrorSettings()).peer_stall_timeout,
            claim_settle=(mirror or MirrorSettings()).claim_settle,
        )
    app = RegistryApp(__name__)
    app.peak_body_buffered = 0
    app.priority = Priority()
    app.config.update(
        MAX_CONTENT_LENGTH=None,
        BODY_TIMEOUT=None,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.extensions["ipfsreg.registry"] = ctx

    class _Connection(BackpressureHTTPConnection):
        high_water = high_water_bytes

    app.asgi_http_class = _Connection

    @app.before_serving
    async def _purge_expired() -> None:
        store.purge_expired_uploads()

    async def handle(path: str = "") -> Response:
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        head = req.method == "HEAD"
        enter_scope(RequestScope())
        route: Route | None = None
        try:
            raw_path: bytes = req.scope.get("raw_path") or req.path.encode()
            raw_route = match_route(raw_path.decode("latin-1"))
            check_request_path(req.path, raw_path, raw_route.name if raw_route is not None else None)
            route = match_route(req.path)
            if route is None:
                raise RegistryError("NAME_UNKNOWN", {"path": req.path[:300]}, message="route not found")
            response = await dispatch(ctx, req, route)
        except RegistryError as exc:
            if exc.status == 405 and "Allow" not in exc.headers and route is not None:
                exc.headers["Allow"] = ", ".join(_answerable(route.kind, ctx.settings))
            response = error_response(exc, head=head)
        except (BlockstoreError, UnixFSError) as exc:
            # Stored data is damaged or missing (e.g. a block lost outside the registry).
            log.exception("storage error serving %s %s", req.method, req.path)
            response = error_response(RegistryError("UNKNOWN", {"reason": str(exc)}, status=500), head=head)
        response.headers.update(API_VERSION_HEADER)
        response.headers.update(response_headers())
        return response

    # No URL rewriting by the router: its slash-merging and trailing-slash redirects answer with an
    # HTML 308 whose Location is built from the request's Host header. Paths go to the handler as
    # sent, and a name that needs rewriting is NAME_INVALID (check_request_path).
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        """What the router or the framework refuses: under /v2 the registry's own answer (routes,
        NAME_INVALID, UNSUPPORTED with Allow), elsewhere an OCI JSON error; never an HTML page."""
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        if req.path == "/v2" or req.path.startswith("/v2/"):
            return await handle()
        status = exc.code or 500
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        code = {404: "NAME_UNKNOWN", 405: "UNSUPPORTED"}.get(
            status, "UNKNOWN" if status >= 500 else "UNSUPPORTED"
        )
        error = RegistryError(
            code,
            {"path": req.path[:300]},
            message=exc.description or exc.name,
            status=status,
            headers=headers,
        )
        response = error_response(error, head=req.method == "HEAD")
        response.headers.update(API_VERSION_HEADER)
        return response

    @app.errorhandler(Exception)
    async def _internal_error(exc: Exception) -> Response:
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        log.exception("internal error serving %s %s", req.method, req.path[:300])
        error = RegistryError("UNKNOWN", {"reason": f"internal error: {type(exc).__name__}"}, status=500)
        response = error_response(error, head=req.method == "HEAD")
        response.headers.update(API_VERSION_HEADER)
        response.headers.update(response_headers())  # the request's namespace, as on every answer
        return response

    app.add_url_rule("/v2", "registry_root", handle, methods=_ALL_METHODS, strict_slashes=False)
    app.add_url_rule("/v2/", "registry_base", handle, methods=_ALL_METHODS)
    app.add_url_rule("/v2/<path:path>", "registry", handle, methods=_ALL_METHODS)
    return app


def _local_blob(store: RegistryStore, digest: str) -> tuple[CID, int] | None:
    try:
        info = store.blob_info(parse_digest(digest))
    except RegistryError:
        return None
    return None if info is None else (info.cid, info.size)


def _never(digest: str) -> bool:
    return False


@dataclass(frozen=True)
class MirrorParts:
    """What the composition wires to the node and to /metrics."""

    fleet: Fleet | None
    stats: MirrorStats
    privacy: PrivateContent | None


def mirror_parts(app: QuartTrio) -> MirrorParts:
    """The fleet coordinator (answer peers with ``fleet.answer``), counters and private content."""
    ctx: Context = app.extensions["ipfsreg.registry"]
    return MirrorParts(ctx.fleet, ctx.mirror_stats, ctx.privacy)


def set_ipns_resolver(app: QuartTrio, resolver: IpnsResolver | None) -> None:
    """Serve ``ipns/<name>/<repository>`` pulls through ``resolver`` (the node's IPNS service)."""
    ctx: Context = app.extensions["ipfsreg.registry"]
    ctx.ipns = resolver


def registry_store(app: QuartTrio) -> RegistryStore:
    """The storage object behind an app made by :func:`create_app`."""
    ctx: Context = app.extensions["ipfsreg.registry"]
    return ctx.store


APP_QUEUE_EVENTS = 2


def hypercorn_config(settings: RegistrySettings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [settings.listen]
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    # Body events wait in a queue of this many between hypercorn and the app; each can hold up to
    # COALESCE_BYTES, and the app's own buffer (body_buffer_bytes) is the backpressure that counts:
    # hypercorn's default of 10 let 5 MiB per upload pile up before the socket stopped being read.
    config.max_app_queue_size = APP_QUEUE_EVENTS
    setattr(config, coalesce.CONFIG_FLAG, True)  # body events joined: see coalesce.py
    config.alpn_protocols = ["http/1.1"]
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ValueError("registry.tls_cert and registry.tls_key must be given together")
    if settings.tls_cert is not None and settings.tls_key is not None:
        config.certfile = str(settings.tls_cert)
        config.keyfile = str(settings.tls_key)
    return config


async def serve_registry(
    app: QuartTrio,
    settings: RegistrySettings,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
) -> None:
    """Serve ``app`` on ``settings.listen`` until cancelled or ``shutdown_trigger`` returns.

    ``task_status.started`` reports the bound addresses (``http://host:port``), so callers
    using port 0 learn the real port.
    """
    httpserver.install()
    coalesce.install()
    config = hypercorn_config(settings)
    kwargs: dict[str, Any] = {"task_status": task_status}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger
    async with filesender.running():  # zero-copy blob bodies go out from its thread
        await serve(app, config, **kwargs)
