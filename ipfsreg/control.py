"""The local control API: while `ipfsreg serve` owns a data dir, the other CLI commands talk to it here.

It listens on loopback only (an ephemeral port by default) and writes its URL to ``<data dir>/api``,
as Kubo does. Routes (all under ``/api/v0``):

    POST /blocks                 body: a CAR v1 stream (roots may be empty: an importing client learns its
                                 root only at the end); blocks verified and stored as they arrive
    POST /import                 body: a CAR v1 file; verified whole before anything is stored -> roots
    GET  /cat?arg=CID[/path]&offset=&length=    file bytes, streamed (missing blocks fetched from peers)
    GET  /block?arg=CID          one block's bytes (fetched from peers when missing)
    POST /prefetch?arg=CID...    hint that these blocks will be read soon
    GET  /export?arg=CID         a CAR v1 stream of the DAG
    POST /pin/add?arg=CID, POST /pin/rm?arg=CID, GET /pin/ls
    POST /image/publish?arg=NAME:TAG, GET /images, GET /image/cid?arg=NAME:TAG   (with "reference":
                                 HOST/ipfs/<cidv1>:TAG, what container clients pull)
    POST /image/pull?arg=CID[&ref=REF][&name=NAME[:TAG]]   (fetches over bitswap; no TAG: the layout's)
    POST /image/push?path=PATH&name=NAME:TAG   (PATH is read by the server: same machine)
    POST /image/tag?arg=CID&name=NAME[:TAG][&ref=REF]    (image blocks already local)
    POST /gc?dry-run=            garbage collection (see ipfsreg/gc.py)
    GET  /id, GET /peers, POST /connect?arg=MULTIADDR   (when the node runs)
    GET  /mirror/stat            the mirror's counters: bytes by source, hits and misses by namespace
    GET  /routing/findprovs?arg=CID[&limit=N]   providers as they are found: NDJSON {"peer_id", "addrs"}
    POST /routing/provide?arg=CID...            announce now -> {"provided": [{"cid", "peers"}]}
    GET  /routing/findpeer?arg=PEER_ID          {"peer_id", "addrs"}
    GET  /routing/stat                          routing tables, stores, provide queue, last reprovide
    GET  /key/list, POST /key/gen?arg=NAME, POST /key/rm?arg=NAME        (IPNS keys)
    POST /name/bind?arg=REPO&key=KEY, POST /name/unbind?arg=REPO, GET /name/bindings
    POST /name/publish[?key=KEY...], GET /name/resolve?arg=NAME
    GET  /name/export-roots?arg=REPO&tag=TAG, POST /name/import-roots?arg=CID...   (records in CARs)

Errors are JSON ``{"error": message, "type": kind}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from ipfsreg import httpserver
from ipfsreg.apifile import PREFIX, ApiSettings, remove_api_file, write_api_file
from ipfsreg.blockstore import BlockNotFound, BlockstoreError, Datastore, InvalidBlock
from ipfsreg.cid import CID, CIDError, b58decode, split_multihash
from ipfsreg.gateway.routes import open_source
from ipfsreg.gc import Collector
from ipfsreg.imageops import (
    image_json,
    pulled_json,
    push_image,
    split_name_optional_tag,
    split_name_tag,
)
from ipfsreg.ipns import ops as ipns_ops
from ipfsreg.ipns.keystore import KeystoreError
from ipfsreg.ipns.record import IpnsError, NameNotFound
from ipfsreg.ipns.service import IpnsService
from ipfsreg.mirror.stats import MirrorStats
from ipfsreg.node.errors import BlockFetchTimeout, InvalidRecord, NodeError, RecordNotFound, RoutingError
from ipfsreg.oci.errors import LayoutError
from ipfsreg.ops import BlockSink, OpsError, cat, parse_cid_path
from ipfsreg.pins import Pins
from ipfsreg.registry import images
from ipfsreg.registry.errors import RegistryError
from ipfsreg.registry.names import pull_reference
from ipfsreg.registry.storage import RegistryStore
from ipfsreg.unixfs.car import CarBlock, CarReader, export_car, import_car
from ipfsreg.unixfs.errors import CarError, PathNotFound, UnixFSError
from ipfsreg.unixfs.exporter import BlockSource


class NodeControl(Protocol):
    """What the control API needs of the p2p node (absent when the node is not running)."""

    @property
    def peer_id(self) -> str: ...

    def listen_addrs(self) -> list[str]: ...

    def peers(self) -> Sequence[Any]: ...  # dataclasses with peer_id and addrs

    async def connect(self, multiaddr: str) -> str: ...


class RoutingControl(Protocol):
    """What the control API needs of content and peer routing (the node's ``routing``)."""

    def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[Any]: ...  # peer_id, addrs

    async def announce(self, cids: Sequence[CID]) -> dict[CID, int]: ...

    async def find_peer(self, peer_id: str) -> list[str]: ...

    def stat(self) -> Any: ...  # a dataclass


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def _error(status: int, message: str, kind: str) -> Response:
    body = json.dumps({"error": message, "type": kind}) + "\n"
    return Response(body, status=status, content_type="application/json")


# Exception type -> (HTTP status, error kind); Quart picks the entry of the most specific class in
# an exception's MRO. ``None``: the exception carries its own status and kind.
ERROR_STATUSES: Final[tuple[tuple[type[Exception], int | None, str | None], ...]] = (
    (ApiError, None, None),
    (RegistryError, None, None),
    (BlockNotFound, 404, "not-found"),
    (BlockFetchTimeout, 404, "not-found"),
    (RecordNotFound, 404, "not-found"),
    (InvalidRecord, 422, "invalid-record"),
    (RoutingError, 502, "routing"),
    (PathNotFound, 404, "not-found"),
    (CarError, 400, "bad-car"),
    (InvalidBlock, 400, "invalid-block"),
    (CIDError, 400, "bad-request"),
    (OpsError, 422, "bad-request"),
    (LayoutError, 422, "layout"),
    (UnixFSError, 422, "unixfs"),
    (BlockstoreError, 500, "storage"),
    (KeystoreError, 400, "key"),
    (NameNotFound, 404, "not-found"),
    (IpnsError, 422, "ipns"),
)


def _error_handler(status: int | None, kind: str | None) -> Callable[[Exception], Awaitable[Response]]:
    async def handle(exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return _error(exc.status, str(exc), exc.kind)
        if isinstance(exc, RegistryError):
            return _error(exc.status, str(exc), exc.code)
        assert status is not None and kind is not None
        return _error(status, str(exc), kind)

    return handle


def _json(value: Any) -> Response:
    return Response(json.dumps(value) + "\n", content_type="application/json")


def _arg_cid(text: str | None) -> CID:
    if not text:
        raise ApiError(400, "missing argument 'arg'", "bad-request")
    try:
        return CID.parse(text)
    except CIDError as exc:
        raise ApiError(400, str(exc), "bad-request") from None


def _bool_arg(name: str, *, default: bool) -> bool:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false, got {text!r}", "bad-request")


def _int_arg(name: str) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text!r}", "bad-request") from None
    if value < 0:
        raise ApiError(400, f"{name} must be >= 0, got {value}", "bad-request")
    return value


async def store_block_stream(store: Datastore, chunks: AsyncIterator[bytes]) -> tuple[int, int]:
    """Store CAR-framed blocks as they arrive, each verified by the reader; return (blocks, bytes)."""
    reader = CarReader()
    sink = BlockSink(store)
    count = size = 0
    try:
        async for chunk in chunks:
            blocks = [event for event in reader.feed(chunk) if isinstance(event, CarBlock)]
            sink.add(blocks)
            count += len(blocks)
            size += sum(len(block.data) for block in blocks)
        reader.close()
    except BaseException:
        sink.discard()
        raise
    sink.close()
    return count, size


def create_control_app(
    store: Datastore,
    source: BlockSource,
    *,
    node: NodeControl | None = None,
    collector: Collector | None = None,
    registry: RegistryStore | None = None,
    source_factory: Callable[[], Any] | None = None,
    spool_dir: Path | None = None,
    mirror_stats: MirrorStats | None = None,
    registry_host: Callable[[], str | None] | None = None,
    ipns: IpnsService | None = None,
    routing: RoutingControl | None = None,
    on_committed: Callable[[list[CID]], None] | None = None,
) -> QuartTrio:
    """The control API app. ``registry_host`` gives the registry's ``host:port`` (once it listens) for
    the pull references in image responses; without it they carry no host. ``on_committed`` (e.g.
    ``node.provide``) hears of the roots of imports and of pins."""
    app = QuartTrio(__name__)

    def host() -> str | None:
        return registry_host() if registry_host is not None else None

    pins = Pins(store)
    app.config.update(MAX_CONTENT_LENGTH=None, BODY_TIMEOUT=None, RESPONSE_TIMEOUT=None)

    def committed(cids: list[CID]) -> None:
        if on_committed is not None and cids:
            on_committed(cids)

    def need_node() -> NodeControl:
        if node is None:
            raise ApiError(503, "the p2p node is not running in this server", "no-node")
        return node

    for exc_type, status, kind in ERROR_STATUSES:
        app.register_error_handler(exc_type, _error_handler(status, kind))

    @app.post(f"{PREFIX}/blocks")
    async def post_blocks() -> Response:
        count, size = await store_block_stream(store, _body(request))
        return _json({"blocks": count, "bytes": size})

    @app.post(f"{PREFIX}/import")
    async def post_import() -> Response:
        roots = await import_car(_body(request), store, spool_dir=spool_dir)
        if _bool_arg("pin", default=True):
            with store.batch() as batch:
                for root in roots:
                    pins.add(root, batch=batch)
        store.flush()
        committed(list(roots))
        return _json({"roots": [str(r) for r in roots]})

    @app.post(f"{PREFIX}/pin/add")
    async def post_pin() -> Response:
        cids = [_arg_cid(text) for text in request.args.getlist("arg")]
        if not cids:
            raise ApiError(400, "missing argument 'arg'", "bad-request")
        with store.batch(sync=True) as batch:
            for cid in cids:
                pins.add(cid, batch=batch)
        committed(cids)  # pinned roots are provided (as Kubo's "roots" strategy does)
        return _json({"pinned": [str(c) for c in cids]})

    @app.post(f"{PREFIX}/pin/rm")
    async def post_unpin() -> Response:
        cid = _arg_cid(request.args.get("arg"))
        if not pins.remove(cid):
            raise ApiError(404, f"{cid} is not pinned", "not-pinned")
        return _json({"unpinned": [str(cid)]})

    @app.get(f"{PREFIX}/pin/ls")
    async def get_pins() -> Response:
        return _json({"pins": [str(c) for c in pins]})

    @app.post(f"{PREFIX}/gc")
    async def post_gc() -> Response:
        if collector is None:
            raise ApiError(503, "garbage collection is not available in this server", "no-gc")
        report = await collector.run(dry_run=_bool_arg("dry-run", default=False))
        return _json(dataclasses.asdict(report))

    @app.get(f"{PREFIX}/cat")
    async def get_cat() -> Response:
        arg = request.args.get("arg") or ""
        try:
            parse_cid_path(arg)
        except CIDError as exc:
            raise ApiError(400, str(exc), "bad-request") from None
        offset = _int_arg("offset") or 0
        length = _int_arg("length")
        chunks = cat(source, arg, offset=offset, length=length)
        # Pull the first chunk before answering, so a bad path or missing root becomes an error status.
        first = await anext(chunks, b"")

        async def stream() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk

        return Response(stream(), content_type="application/octet-stream")

    @app.get(f"{PREFIX}/block")
    async def get_block() -> Response:
        cid = _arg_cid(request.args.get("arg"))
        return Response(await source.get(cid), content_type="application/octet-stream")

    @app.post(f"{PREFIX}/prefetch")
    async def post_prefetch() -> Response:
        cids = [_arg_cid(text) for text in request.args.getlist("arg")]
        source.prefetch(cids)
        return _json({"prefetching": len(cids)})

    @app.get(f"{PREFIX}/export")
    async def get_export() -> Response:
        roots = [_arg_cid(text) for text in request.args.getlist("arg")]
        if not roots:
            raise ApiError(400, "missing argument 'arg'", "bad-request")
        return Response(export_car(source, roots), content_type="application/vnd.ipld.car")

    def need_registry() -> RegistryStore:
        if registry is None:
            raise ApiError(503, "the registry is not running in this server", "no-registry")
        return registry

    def name_tag(arg: str | None) -> tuple[str, str]:
        if not arg:
            raise ApiError(400, "missing NAME:TAG", "bad-request")
        return split_name_tag(arg)

    @app.post(f"{PREFIX}/image/publish")
    async def post_publish() -> Response:
        name, tag = name_tag(request.args.get("arg"))
        cid = await need_registry().publish(name, tag)
        return _json(
            {"name": name, "tag": tag, "cid": str(cid), "reference": pull_reference(cid, tag, host())}
        )

    @app.get(f"{PREFIX}/images")
    async def get_images() -> Response:
        return _json({"images": [image_json(info, host()) for info in need_registry().images()]})

    @app.get(f"{PREFIX}/image/cid")
    async def get_image_cid() -> Response:
        name, tag = name_tag(request.args.get("arg"))
        store = need_registry()
        cid = store.image_cid(name, tag)
        if cid is None:
            cid = await store.publish(name, tag)
        return _json(
            {"name": name, "tag": tag, "cid": str(cid), "reference": pull_reference(cid, tag, host())}
        )

    @app.post(f"{PREFIX}/image/pull")
    async def post_pull() -> Response:
        store = need_registry()
        cid = _arg_cid(request.args.get("arg"))
        ref = request.args.get("ref") or None
        target = request.args.get("name")
        factory = source_factory if source_factory is not None else (lambda: source)
        async with open_source(factory) as pull_source:
            if target:
                pulled = await images.pull_image(
                    store, pull_source, cid, ref, *split_name_optional_tag(target)
                )
            else:
                pulled = await images.mirror_image(store, pull_source, cid, ref)
        return _json(pulled_json(pulled, host()))

    @app.post(f"{PREFIX}/image/push")
    async def post_push() -> Response:
        path = request.args.get("path")
        if not path:
            raise ApiError(400, "missing argument 'path'", "bad-request")
        name, tag = name_tag(request.args.get("name"))
        return _json(pulled_json(await push_image(need_registry(), Path(path), name, tag), host()))

    @app.post(f"{PREFIX}/image/tag")
    async def post_tag() -> Response:
        cid = _arg_cid(request.args.get("arg"))
        target = request.args.get("name")
        if not target:
            raise ApiError(400, "missing NAME[:TAG]", "bad-request")
        name, tag = split_name_optional_tag(target)
        ref = request.args.get("ref") or None
        tagged = await images.tag_image_from_cid(need_registry(), cid, name, tag, ref)
        return _json(pulled_json(tagged, host()))

    @app.get(f"{PREFIX}/id")
    async def get_id() -> Response:
        n = need_node()
        return _json({"id": n.peer_id, "addrs": n.listen_addrs()})

    @app.get(f"{PREFIX}/peers")
    async def get_peers() -> Response:
        return _json({"peers": [dataclasses.asdict(peer) for peer in need_node().peers()]})

    @app.post(f"{PREFIX}/connect")
    async def post_connect() -> Response:
        addr = request.args.get("arg")
        if not addr:
            raise ApiError(400, "missing argument 'arg'", "bad-request")
        try:
            peer = await need_node().connect(addr)
        except NodeError as exc:
            raise ApiError(502, str(exc), "connect-failed") from None
        return _json({"connected": addr, "peer_id": peer})

    @app.get(f"{PREFIX}/mirror/stat")
    async def get_mirror_stat() -> Response:
        if mirror_stats is None:
            raise ApiError(503, "the mirror is not running in this server", "no-mirror")
        return _json(mirror_stats.as_json())

    def need_routing() -> RoutingControl:
        if routing is None:
            raise ApiError(503, "routing is not running in this server", "no-routing")
        return routing

    @app.get(f"{PREFIX}/routing/findprovs")
    async def get_findprovs() -> Response:
        cid = _arg_cid(request.args.get("arg"))
        limit = _int_arg("limit")
        providers = need_routing().find_providers(cid, limit if limit else 20)

        async def lines() -> AsyncIterator[bytes]:
            async for provider in providers:
                yield (json.dumps({"peer_id": provider.peer_id, "addrs": provider.addrs}) + "\n").encode()

        response = Response(lines(), content_type="application/x-ndjson")
        response.timeout = None
        return response

    @app.post(f"{PREFIX}/routing/provide")
    async def post_provide() -> Response:
        cids = [_arg_cid(text) for text in request.args.getlist("arg")]
        if not cids:
            raise ApiError(400, "missing argument 'arg'", "bad-request")
        results = await need_routing().announce(cids)
        return _json({"provided": [{"cid": str(cid), "peers": peers} for cid, peers in results.items()]})

    @app.get(f"{PREFIX}/routing/findpeer")
    async def get_findpeer() -> Response:
        peer_id = request.args.get("arg")
        if not peer_id:
            raise ApiError(400, "missing argument 'arg'", "bad-request")
        try:
            split_multihash(b58decode(peer_id))
        except (CIDError, ValueError):
            raise ApiError(400, f"invalid peer ID {peer_id[:100]!r}", "bad-request") from None
        return _json({"peer_id": peer_id, "addrs": await need_routing().find_peer(peer_id)})

    @app.get(f"{PREFIX}/routing/stat")
    async def get_routing_stat() -> Response:
        return _json(dataclasses.asdict(need_routing().stat()))

    def need_ipns() -> IpnsService:
        if ipns is None:
            raise ApiError(503, "IPNS is not running in this server", "no-ipns")
        return ipns

    def required(name: str) -> str:
        value = request.args.get(name)
        if not value:
            raise ApiError(400, f"missing argument {name!r}", "bad-request")
        return value

    @app.get(f"{PREFIX}/key/list")
    async def get_keys() -> Response:
        return _json({"keys": [ipns_ops.key_json(k) for k in need_ipns().keystore.list()]})

    @app.post(f"{PREFIX}/key/gen")
    async def post_key_gen() -> Response:
        return _json(ipns_ops.key_json(need_ipns().keystore.generate(required("arg"))))

    @app.post(f"{PREFIX}/key/rm")
    async def post_key_rm() -> Response:
        return _json(ipns_ops.key_json(need_ipns().keystore.remove(required("arg"))))

    @app.post(f"{PREFIX}/name/bind")
    async def post_bind() -> Response:
        key = need_ipns().bind(required("arg"), required("key"))
        return _json({"repository": request.args["arg"], **ipns_ops.key_json(key)})

    @app.post(f"{PREFIX}/name/unbind")
    async def post_unbind() -> Response:
        return _json({"repository": request.args.get("arg"), "key": need_ipns().unbind(required("arg"))})

    @app.get(f"{PREFIX}/name/bindings")
    async def get_bindings() -> Response:
        return _json({"bindings": need_ipns().bindings()})

    @app.post(f"{PREFIX}/name/publish")
    async def post_name_publish() -> Response:
        service = need_ipns()
        keys = request.args.getlist("key") or service.bound_keys()
        return _json(
            {"published": [ipns_ops.published_json(await service.publish(k, republish=True)) for k in keys]}
        )

    @app.get(f"{PREFIX}/name/resolve")
    async def get_name_resolve() -> Response:
        return _json(await ipns_ops.resolve_json(need_ipns(), required("arg")))

    @app.get(f"{PREFIX}/name/export-roots")
    async def get_export_roots() -> Response:
        service = need_ipns()
        roots = await ipns_ops.export_roots(service, source, required("arg"), required("tag"))
        return _json({"roots": roots})

    @app.post(f"{PREFIX}/name/import-roots")
    async def post_import_roots() -> Response:
        roots = [_arg_cid(text) for text in request.args.getlist("arg")]
        return _json(ipns_ops.import_roots(need_ipns(), roots))

    @app.get(f"{PREFIX}/stats")
    async def get_stats() -> Response:
        return _json({"blocks": store.blocks.count, "bytes": store.blocks.total_size})

    return app


async def _body(req: Any) -> AsyncIterator[bytes]:
    async for chunk in req.body:
        yield chunk


async def serve_control(
    app: QuartTrio,
    settings: ApiSettings,
    data_dir: Path,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
) -> None:
    """Serve the control API on loopback and advertise it in ``<data_dir>/api`` while it runs."""
    httpserver.install()  # one connection's failure ends that connection only
    config = HypercornConfig()
    config.bind = [settings.listen]
    config.accesslog = None
    config.include_server_header = False
    kwargs: dict[str, Any] = {}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger
    url: str | None = None
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(serve, app, config, **kwargs))
            url = binds[0]
            write_api_file(data_dir, url)
            task_status.started(url)
    finally:
        if url is not None:
            remove_api_file(data_dir, url)
