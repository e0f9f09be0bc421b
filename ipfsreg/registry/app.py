"""Builds the registry's Quart-trio app and serves it with hypercorn on the caller's trio loop.

Request bodies stream with backpressure: Quart's own receive loop buffers a whole body in
memory, so the connection class here stops reading from the ASGI server while more than
``body_buffer_bytes`` wait unread; uploads of any size therefore run in bounded memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Request, Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest

from ipfsreg.blockstore import Datastore
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.handlers import blobs, catalog, manifests, referrers, tags, uploads
from ipfsreg.registry.handlers.base import API_VERSION_HEADER, Context, error_response, get_base
from ipfsreg.registry.names import check_name
from ipfsreg.registry.routes import ALLOWED_METHODS, Route, match_route
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import RegistryStore
from ipfsreg.unixfs.exporter import BlockSource
from ipfsreg.unixfs.importer import ImportOptions

log = logging.getLogger(__name__)

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class StreamingBody(TrioBody):
    """A request body whose reader signals when it has drained the buffer."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._drained = trio.Event()

    async def __anext__(self) -> bytes:
        data: bytes = await super().__anext__()
        self._drained.set()
        return data

    async def wait_below(self, high_water: int) -> None:
        while len(self._data) > high_water and self._must_raise is None and not self._complete.is_set():
            self._drained = trio.Event()
            await self._drained.wait()


class StreamingRequest(TrioRequest):
    body_class = StreamingBody


class BackpressureHTTPConnection(TrioASGIHTTPConnection):
    """Stops pulling body events from the server while the handler has not read the buffer."""

    high_water = 1024 * 1024

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: Callable[[], Awaitable[Any]]
    ) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                app = self.app
                if isinstance(app, RegistryApp) and len(body._data) > app.peak_body_buffered:
                    app.peak_body_buffered = len(body._data)
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, StreamingBody):
                    await body.wait_below(self.high_water)
            elif message["type"] == "http.disconnect":
                break
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
    if route.kind == "base":
        return await get_base(ctx, req)
    if route.kind == "catalog":
        return await catalog.list_catalog(ctx, req)
    check_name(route.name)
    handler = _HANDLERS[(route.kind, method)]
    if route.kind in ("uploads", "tags"):
        return await handler(ctx, req, route.name)
    return await handler(ctx, req, route.name, route.ref)


def create_app(
    datastore: Datastore,
    settings: RegistrySettings | None = None,
    *,
    block_source: BlockSource | None = None,
    import_options: ImportOptions | None = None,
) -> RegistryApp:
    """The registry app over ``datastore``; reads go through ``block_source`` (default: local blocks)."""
    settings = settings if settings is not None else RegistrySettings()
    high_water_bytes = settings.body_buffer_bytes
    store = RegistryStore(
        datastore,
        block_source=block_source,
        import_options=import_options,
        flush_bytes=settings.upload_flush_bytes,
        upload_ttl=settings.upload_session_ttl,
        max_blob_bytes=settings.max_blob_bytes,
    )
    ctx = Context(store, settings)
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
        try:
            route = match_route(req.path)
            if route is None:
                raise RegistryError("NAME_UNKNOWN", {"path": req.path[:300]}, message="route not found")
            response = await dispatch(ctx, req, route)
        except RegistryError as exc:
            response = error_response(exc, head=head)
        response.headers.update(API_VERSION_HEADER)
        return response

    app.add_url_rule("/v2", "registry_root", handle, methods=_ALL_METHODS, strict_slashes=False)
    app.add_url_rule("/v2/", "registry_base", handle, methods=_ALL_METHODS)
    app.add_url_rule("/v2/<path:path>", "registry", handle, methods=_ALL_METHODS)
    return app


def registry_store(app: QuartTrio) -> RegistryStore:
    """The storage object behind an app made by :func:`create_app`."""
    ctx: Context = app.extensions["ipfsreg.registry"]
    return ctx.store


def hypercorn_config(settings: RegistrySettings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [settings.listen]
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    config.alpn_protocols = ["http/1.1"]
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
    config = hypercorn_config(settings)
    kwargs: dict[str, Any] = {"task_status": task_status}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger
    await serve(app, config, **kwargs)
