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

import hypercorn.trio.tcp_server as hypercorn_tcp
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.trio import serve
from quart import Request, Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioRequest

from ipfsreg.blockstore import BlockstoreError, Datastore
from ipfsreg.cid import CID
from ipfsreg.gateway.routes import SourceFactory
from ipfsreg.mirror.rules import path_namespace, private_namespaces
from ipfsreg.mirror.settings import MirrorSettings
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.registry import coalesce
from ipfsreg.registry.body import StreamingBody
from ipfsreg.registry.digests import parse_digest
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.fleet import Fleet, FleetPeers
from ipfsreg.registry.handlers import blobs, catalog, ipfs, ipns, manifests, referrers, tags, uploads
from ipfsreg.registry.handlers.base import (
    API_VERSION_HEADER,
    Context,
    IpnsResolver,
    error_response,
    get_base,
)
from ipfsreg.registry.names import (
    check_name,
    ipfs_repository_cid,
    ipns_repository,
    parse_namespace,
    qualified_name,
)
from ipfsreg.registry.private import PrivateContent
from ipfsreg.registry.proxy import RequestScope, enter_scope, response_headers
from ipfsreg.registry.routes import ALLOWED_METHODS, Route, match_route
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import BlocksStored, RegistryStore
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.exporter import BlockSource
from ipfsreg.unixfs.importer import ImportOptions

log = logging.getLogger(__name__)

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _expects_body(request: Request) -> bool:
    if request.content_length:
        return True
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


class StreamingRequest(TrioRequest):
    body_class = StreamingBody


class BackpressureHTTPConnection(TrioASGIHTTPConnection):
    """Serves one request, reading its body no faster than the handler consumes it.

    Quart's receive loop would buffer a whole upload in memory; this one stops pulling body
    events from hypercorn while more than ``high_water`` bytes wait unread. When the handler
    answers before the body has fully arrived (an early error), the rest of the body is read
    and discarded: hypercorn's event queue must never be left full, or it blocks for good.
    """

    high_water = 1024 * 1024
    drain_idle_timeout = 30.0
    _waiting: trio.CancelScope | None = None

    async def __call__(self, receive: Callable[[], Awaitable[Any]], send: Callable[..., Any]) -> None:
        request = self._create_request_from_scope(send)
        body = request.body
        responded = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, nursery, request, receive, responded)
            await self._respond(request, send)
            responded.set()
            if isinstance(body, StreamingBody) and not body.complete:
                body.release()  # the receiver drains the rest of the body, then ends
                if self._waiting is not None:
                    self._waiting.deadline = trio.current_time() + self.drain_idle_timeout
            else:
                nursery.cancel_scope.cancel()

    async def _respond(self, request: Request, send: Callable[..., Any]) -> None:
        response = await self.app.handle_request(request)
        body = request.body
        if isinstance(response, Response) and _expects_body(request) and not getattr(body, "complete", True):
            # Answered before the whole body arrived (an early error): the client must not send
            # its next request on this connection, whose request stream is still mid-body.
            response.headers["Connection"] = "close"
        timeout = response.timeout if isinstance(response, Response) else Ellipsis
        if timeout is Ellipsis:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        with trio.move_on_after(float("inf") if timeout is None else float(timeout)):
            await self._send_response(send, response)

    async def _receive(
        self,
        nursery: trio.Nursery,
        request: Request,
        receive: Callable[[], Awaitable[Any]],
        responded: trio.Event,
    ) -> None:
        body = request.body
        # One cancel scope for the whole body (a scope per event costs more than the event's
        # parsing); it gets a deadline only once the response is out, renewed by each event.
        with trio.CancelScope() as waiting:
            self._waiting = waiting
            while True:
                if responded.is_set():
                    waiting.deadline = trio.current_time() + self.drain_idle_timeout
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                if message["type"] != "http.request":
                    continue
                more = bool(message.get("more_body", False))
                if responded.is_set():
                    if not more:
                        break
                    continue
                body.append(message.get("body", b""))
                if isinstance(body, StreamingBody):
                    app = self.app
                    if isinstance(app, RegistryApp) and body.buffered > app.peak_body_buffered:
                        app.peak_body_buffered = body.buffered
                    if more:
                        await body.wait_below(self.high_water)
                if not more:
                    body.set_complete()
        # Cancelled: the client went quiet after an early response (hypercorn closes the connection).
        self._waiting = None
        nursery.cancel_scope.cancel()


class RegistryApp(QuartTrio):
    asgi_http_class = BackpressureHTTPConnection
    request_class = StreamingRequest
    peak_body_buffered = 0
    """The most request-body bytes ever buffered unread (bounded by backpressure)."""


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
    if method not in ALLOWED_METHODS[route.kind]:
        raise RegistryError(
            "UNSUPPORTED",
            {"method": method, "route": route.kind},
            headers={"Allow": ", ".join(ALLOWED_METHODS[route.kind])},
        )
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


def create_app(
    datastore: Datastore,
    settings: RegistrySettings | None = None,
    *,
    block_source: BlockSource | None = None,
    import_options: ImportOptions | None = None,
    source_factory: SourceFactory | None = None,
    on_blocks_stored: BlocksStored | None = None,
    on_committed: BlocksStored | None = None,
    mirror: MirrorSettings | None = None,
    fleet_peers: FleetPeers | None = None,
    share_private: bool = False,
) -> RegistryApp:
    """The registry app over ``datastore``; reads go through ``block_source`` (default: local blocks).

    Pulls by CID (``ipfs/<cid>`` repositories) open a source per request from ``source_factory``
    (e.g. ``node.block_source``: one bitswap session each); without it they use ``block_source``.
    ``on_blocks_stored`` (e.g. ``node.notify_new_blocks``) is called on the trio thread with the
    CIDs of every batch of blocks that uploads and manifest pushes commit. ``on_committed`` (e.g.
    ``node.provide``) gets the CID of every blob, manifest and image directory once it is stored.

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
        try:
            route = match_route(req.path)
            if route is None:
                raise RegistryError("NAME_UNKNOWN", {"path": req.path[:300]}, message="route not found")
            response = await dispatch(ctx, req, route)
        except RegistryError as exc:
            response = error_response(exc, head=head)
        except (BlockstoreError, UnixFSError) as exc:
            # Stored data is damaged or missing (e.g. a block lost outside the registry).
            log.exception("storage error serving %s %s", req.method, req.path)
            response = error_response(RegistryError("UNKNOWN", {"reason": str(exc)}, status=500), head=head)
        response.headers.update(API_VERSION_HEADER)
        response.headers.update(response_headers())
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


# hypercorn reads a socket 64 KiB at a time and every read becomes one body event through h11,
# hypercorn and Quart: pushes then spend more on those events than on hashing. Reads of up to
# 1 MiB (a read returns only what the kernel holds) cut the main thread's work per upload by ~30%.
SOCKET_READ_BYTES = 1024 * 1024


# While a large body streams in, each read pays a fixed cost on the event loop (h11, hypercorn's
# protocol, the app's body queue: ~0.2 ms) however little it returns, and a fast loop reads the
# socket as soon as a few dozen KiB have arrived. After a read of at least GATHER_AFTER_BYTES
# (a body is streaming), the reader waits GATHER_SECONDS before reading again, so the kernel
# gathers a few hundred KiB per read (the socket buffer holds megabytes; the sender never stalls).
GATHER_AFTER_BYTES = 32 * 1024
GATHER_SECONDS = 0.002


def raise_socket_read_size() -> None:
    """Let hypercorn's trio server read up to :data:`SOCKET_READ_BYTES` per call, gathering
    streamed bodies into fewer, larger reads (process-wide)."""
    if hypercorn_tcp.MAX_RECV < SOCKET_READ_BYTES:
        hypercorn_tcp.MAX_RECV = SOCKET_READ_BYTES
    if getattr(hypercorn_tcp.TCPServer._read_data, "_ipfsreg_gathering", False):
        return

    async def _read_data(self: Any) -> None:
        while True:
            try:
                with trio.fail_after(self.config.read_timeout or float("inf")):
                    data = await self.stream.receive_some(hypercorn_tcp.MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
            if GATHER_AFTER_BYTES <= len(data) < hypercorn_tcp.MAX_RECV // 2:
                await trio.sleep(GATHER_SECONDS)
        await self.protocol.handle(Closed())

    _read_data._ipfsreg_gathering = True  # type: ignore[attr-defined]
    hypercorn_tcp.TCPServer._read_data = _read_data  # type: ignore[method-assign]


def hypercorn_config(settings: RegistrySettings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [settings.listen]
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
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
    raise_socket_read_size()
    coalesce.install()
    config = hypercorn_config(settings)
    kwargs: dict[str, Any] = {"task_status": task_status}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger
    await serve(app, config, **kwargs)
