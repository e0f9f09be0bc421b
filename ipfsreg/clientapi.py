"""Where CLI commands run: on the data dir itself, or through a running server's control API.

:func:`backend_for` opens the data dir when no server holds it (:class:`LocalBackend`), and
otherwise talks to the server named in ``<data dir>/api`` (:class:`RemoteBackend`), so `ipfsreg
add` / `cat` / `get` / `export` / `import` behave the same whether or not `ipfsreg serve` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol

import httpx
import trio

from ipfsreg.apifile import PREFIX, read_api_file
from ipfsreg.blockstore import DataDirLocked, Datastore
from ipfsreg.cid import CID
from ipfsreg.config import Config
from ipfsreg.ops import READ_SIZE, ImportGroups, OpsError, add_path, cat, get, parse_cid_path, resolve
from ipfsreg.pins import Pins
from ipfsreg.unixfs.car import car_header, car_section, export_car, import_car
from ipfsreg.unixfs.exporter import BlockSource, LocalBlockSource
from ipfsreg.unixfs.importer import ImportOptions, ImportResult

if TYPE_CHECKING:
    from ipfsreg.registry.storage import RegistryStore

Progress = Callable[[int], None]
_TIMEOUT: Final = httpx.Timeout(30.0, read=None, write=None)


class ByteSink(Protocol):
    """Where exported bytes go: a binary file, or a wrapper such as ``unixfs.car.CarV2Writer``."""

    def write(self, data: bytes, /) -> object: ...


class ControlApiError(Exception):
    """The running server refused or failed a request; the message is the server's."""


class Backend(Protocol):
    def add(
        self,
        path: Path,
        options: ImportOptions,
        *,
        recursive: bool,
        hidden: bool = False,
        progress: Progress | None = None,
    ) -> ImportResult: ...

    def cat(
        self, cid_path: str, out: BinaryIO, *, offset: int, length: int | None, peers: Sequence[str] = ()
    ) -> None: ...

    def get(
        self, cid_path: str, dest: Path, *, progress: Progress | None, peers: Sequence[str] = ()
    ) -> None: ...

    def export(
        self, cid_path: str, out: ByteSink, *, progress: Progress | None, extra_roots: Sequence[CID] = ()
    ) -> None: ...

    def import_car(self, chunks: Iterable[bytes], *, pin: bool = True) -> list[CID]: ...

    def pin(self, cids: Sequence[CID]) -> None: ...

    def unpin(self, cid: CID) -> None: ...

    def pins(self) -> list[CID]: ...

    def gc(self, *, dry_run: bool) -> dict[str, Any]: ...

    def publish(self, name: str, tag: str) -> dict[str, str]: ...

    def images(self) -> list[dict[str, str]]: ...

    def image_cid(self, name: str, tag: str) -> CID: ...

    def pull(
        self, cid: CID, ref: str | None, target: tuple[str, str | None] | None, peers: Sequence[str]
    ) -> dict[str, Any]: ...

    def push(self, path: Path, name: str, tag: str) -> dict[str, Any]: ...

    def tag(self, cid: CID, name: str, tag: str | None, ref: str | None) -> dict[str, Any]: ...

    def identity(self) -> tuple[str, list[str]]: ...

    def peers(self) -> list[dict[str, Any]]: ...

    def connect(self, multiaddr: str) -> str: ...

    def mirror_stat(self) -> dict[str, Any]: ...

    def find_providers(self, cid: CID, limit: int) -> Iterator[dict[str, Any]]: ...

    def provide(self, cids: Sequence[CID]) -> list[dict[str, Any]]: ...

    def find_peer(self, peer_id: str) -> list[str]: ...

    def routing_stat(self) -> dict[str, Any]: ...
    def ipns_call(self, op: str, **args: Any) -> Any: ...


# IPNS operations: op -> (HTTP method, control API route). Arguments are query parameters.
IPNS_ROUTES: Final = {
    "key_list": ("GET", "/key/list"),
    "key_gen": ("POST", "/key/gen"),
    "key_rm": ("POST", "/key/rm"),
    "bind": ("POST", "/name/bind"),
    "unbind": ("POST", "/name/unbind"),
    "bindings": ("GET", "/name/bindings"),
    "publish": ("POST", "/name/publish"),
    "resolve": ("GET", "/name/resolve"),
    "export_roots": ("GET", "/name/export-roots"),
    "import_roots": ("POST", "/name/import-roots"),
}


class LocalBackend:
    """Runs commands directly on an opened data dir."""

    def __init__(self, store: Datastore, config: Config) -> None:
        self.store = store
        self.config = config
        self.source = LocalBlockSource(store.blocks)

    def add(
        self,
        path: Path,
        options: ImportOptions,
        *,
        recursive: bool,
        hidden: bool = False,
        progress: Progress | None = None,
    ) -> ImportResult:
        return add_path(self.store, path, options, recursive=recursive, hidden=hidden, progress=progress)

    def cat(
        self, cid_path: str, out: BinaryIO, *, offset: int, length: int | None, peers: Sequence[str] = ()
    ) -> None:
        async def run(source: BlockSource) -> None:
            async for chunk in cat(source, cid_path, offset=offset, length=length):
                out.write(chunk)

        self._run_with_source(run, peers)

    def get(self, cid_path: str, dest: Path, *, progress: Progress | None, peers: Sequence[str] = ()) -> None:
        async def run(source: BlockSource) -> None:
            await get(source, cid_path, dest, progress)

        self._run_with_source(run, peers)

    def _run_with_source(self, fn: Callable[[BlockSource], Awaitable[None]], peers: Sequence[str]) -> None:
        """Run ``fn`` on local blocks, or, with ``peers``, through a temporary node connected to them."""
        if not peers:
            trio.run(fn, LocalBlockSource(self.store.blocks))
            return

        async def with_node() -> None:
            from ipfsreg.node.identity import load_or_create_identity
            from ipfsreg.node.node import Node

            settings = dataclasses.replace(
                self.config.section("node"), p2p_listen=["/ip4/127.0.0.1/tcp/0"], peers=[]
            )
            node = Node(self.store, settings, load_or_create_identity(self.config.data_dir))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                for addr in peers:
                    await node.connect(addr)
                async with node.block_source() as source:
                    await fn(source)
                nursery.cancel_scope.cancel()

        trio.run(with_node)

    def export(
        self, cid_path: str, out: ByteSink, *, progress: Progress | None, extra_roots: Sequence[CID] = ()
    ) -> None:
        async def run() -> None:
            root = await resolve(self.source, cid_path)
            async for chunk in export_car(self.source, [root, *extra_roots]):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))

        trio.run(run)

    def import_car(self, chunks: Iterable[bytes], *, pin: bool = True) -> list[CID]:
        roots = trio.run(import_car, chunks, self.store)
        if pin:
            self.pin(roots)
        self.store.flush()
        return roots

    def pin(self, cids: Sequence[CID]) -> None:
        pins = Pins(self.store)
        with self.store.batch(sync=True) as batch:
            for cid in cids:
                pins.add(cid, batch=batch)
        self.queue_provides(list(cids))

    def queue_provides(self, cids: list[CID]) -> None:
        """Put ``cids`` in the data dir's provide queue: the next `ipfsreg serve` announces them."""
        from ipfsreg.node.routing.provide import ProvideQueue

        strategy = self.config.section("routing").provide_strategy
        ProvideQueue(self.store, None, strategy=strategy).enqueue(cids)

    def unpin(self, cid: CID) -> None:
        if not Pins(self.store).remove(cid):
            raise OpsError(f"{cid} is not pinned")

    def pins(self) -> list[CID]:
        return list(Pins(self.store))

    def gc(self, *, dry_run: bool) -> dict[str, Any]:
        from ipfsreg.gc import collector_for
        from ipfsreg.registry.storage import RegistryStore

        collector = collector_for(self.store, RegistryStore(self.store))
        return dataclasses.asdict(trio.run(lambda: collector.run(dry_run=dry_run)))

    def registry(self) -> RegistryStore:
        from ipfsreg.registry.storage import RegistryStore

        return RegistryStore(
            self.store, import_options=import_options(self.config), on_committed=self.queue_provides
        )

    def publish(self, name: str, tag: str) -> dict[str, str]:
        from ipfsreg.registry.names import pull_reference

        cid = trio.run(self.registry().publish, name, tag)
        return {"name": name, "tag": tag, "cid": str(cid), "reference": pull_reference(cid, tag)}

    def images(self) -> list[dict[str, str]]:
        from ipfsreg.imageops import image_json

        return [image_json(info) for info in self.registry().images()]

    def image_cid(self, name: str, tag: str) -> CID:
        registry = self.registry()
        cid = registry.image_cid(name, tag)
        return cid if cid is not None else trio.run(registry.publish, name, tag)

    def pull(
        self, cid: CID, ref: str | None, target: tuple[str, str | None] | None, peers: Sequence[str]
    ) -> dict[str, Any]:
        from ipfsreg.registry import images

        registry = self.registry()
        result: list[Any] = []

        async def run(source: BlockSource) -> None:
            if target is None:
                result.append(await images.mirror_image(registry, source, cid, ref))
            else:
                result.append(await images.pull_image(registry, source, cid, ref, *target))

        self._run_with_source(run, peers)
        from ipfsreg.imageops import pulled_json

        return pulled_json(result[0])

    def push(self, path: Path, name: str, tag: str) -> dict[str, Any]:
        from ipfsreg.imageops import pulled_json, push_image

        return pulled_json(trio.run(push_image, self.registry(), path, name, tag))

    def tag(self, cid: CID, name: str, tag: str | None, ref: str | None) -> dict[str, Any]:
        from ipfsreg.imageops import pulled_json
        from ipfsreg.registry.images import tag_image_from_cid

        return pulled_json(trio.run(tag_image_from_cid, self.registry(), cid, name, tag, ref))

    def identity(self) -> tuple[str, list[str]]:
        from ipfsreg.node.host import with_peer_id
        from ipfsreg.node.identity import load_or_create_identity

        peer_id = load_or_create_identity(self.config.data_dir).peer_id_str
        return peer_id, [with_peer_id(addr, peer_id) for addr in self.config.section("node").p2p_listen]

    def peers(self) -> list[dict[str, Any]]:
        raise ControlApiError(f"no server is running on {self.config.data_dir}: start `ipfsreg serve` first")

    def connect(self, multiaddr: str) -> str:
        raise ControlApiError(f"no server is running on {self.config.data_dir}: start `ipfsreg serve` first")

    def mirror_stat(self) -> dict[str, Any]:
        raise ControlApiError(f"no server is running on {self.config.data_dir}: start `ipfsreg serve` first")

    def find_providers(self, cid: CID, limit: int) -> Iterator[dict[str, Any]]:
        raise self._needs_server("routing findprovs")

    def provide(self, cids: Sequence[CID]) -> list[dict[str, Any]]:
        raise self._needs_server("routing provide")

    def find_peer(self, peer_id: str) -> list[str]:
        raise self._needs_server("routing findpeer")

    def routing_stat(self) -> dict[str, Any]:
        raise self._needs_server("routing stat")

    def _needs_server(self, what: str) -> ControlApiError:
        return ControlApiError(
            f"{what} needs the running node: no server is running on {self.config.data_dir}"
            " (start `ipfsreg serve` first)"
        )

    def ipns_call(self, op: str, **args: Any) -> Any:
        """An IPNS operation on the data dir itself: records are made and resolved locally (no DHT)."""
        from ipfsreg.ipns import ops as ipns_ops
        from ipfsreg.ipns.keystore import Keystore
        from ipfsreg.ipns.service import IpnsService

        service = IpnsService(
            self.store, self.registry(), Keystore(self.config.data_dir), self.config.section("ipns")
        )
        keystore = service.keystore
        if op == "key_list":
            return {"keys": [ipns_ops.key_json(k) for k in keystore.list()]}
        if op == "key_gen":
            return ipns_ops.key_json(keystore.generate(args["arg"]))
        if op == "key_rm":
            return ipns_ops.key_json(keystore.remove(args["arg"]))
        if op == "bind":
            return {"repository": args["arg"], **ipns_ops.key_json(service.bind(args["arg"], args["key"]))}
        if op == "unbind":
            return {"repository": args["arg"], "key": service.unbind(args["arg"])}
        if op == "bindings":
            return {"bindings": service.bindings()}
        if op == "publish":
            keys = args.get("key") or service.bound_keys()

            async def publish_all() -> list[Any]:
                return [ipns_ops.published_json(await service.publish(k, republish=True)) for k in keys]

            return {"published": trio.run(publish_all)}
        if op == "resolve":
            return trio.run(ipns_ops.resolve_json, service, args["arg"])
        if op == "export_roots":
            return {"roots": trio.run(ipns_ops.export_roots, service, self.source, args["arg"], args["tag"])}
        if op == "import_roots":
            return ipns_ops.import_roots(service, [CID.parse(text) for text in args["arg"]])
        raise ValueError(f"unknown IPNS operation {op!r}")


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        message = json.loads(response.text)["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    raise ControlApiError(str(message))


class RemoteBackend:
    """Runs commands through a running server's control API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + PREFIX
        self.client = httpx.Client(timeout=_TIMEOUT)

    def close(self) -> None:
        self.client.close()

    def request_json(self, method: str, route: str, **kwargs: Any) -> Any:
        response = self.client.request(method, self.url + route, **kwargs)
        _raise_for(response)
        return response.json()

    def add(
        self,
        path: Path,
        options: ImportOptions,
        *,
        recursive: bool,
        hidden: bool = False,
        progress: Progress | None = None,
    ) -> ImportResult:
        if path.is_dir() and not recursive:
            raise OpsError(f"{path} is a directory: use -r to add a tree")
        groups = ImportGroups(path, options, progress, hidden=hidden)

        def body() -> Iterator[bytes]:
            # The importer runs here, in the client; the server verifies every block it receives.
            yield car_header([])
            for group in groups:
                yield b"".join(car_section(block.cid, block.data) for block in group)

        self.request_json("POST", "/blocks", content=body())
        return groups.result()

    def cat(
        self, cid_path: str, out: BinaryIO, *, offset: int, length: int | None, peers: Sequence[str] = ()
    ) -> None:
        self._connect_all(peers)
        params: dict[str, Any] = {"arg": cid_path, "offset": offset}
        if length is not None:
            params["length"] = length
        with self.client.stream("GET", self.url + "/cat", params=params) as response:
            _raise_for(response)
            for chunk in response.iter_bytes(READ_SIZE):
                out.write(chunk)

    def get(self, cid_path: str, dest: Path, *, progress: Progress | None, peers: Sequence[str] = ()) -> None:
        self._connect_all(peers)

        async def run() -> None:
            async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
                await get(RemoteBlockSource(client, self.url), cid_path, dest, progress)

        trio.run(run)

    def export(
        self, cid_path: str, out: ByteSink, *, progress: Progress | None, extra_roots: Sequence[CID] = ()
    ) -> None:
        root, path = parse_cid_path(cid_path)
        if path:
            raise ControlApiError("export takes a CID, not a path inside one")
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("arg", str(cid)) for cid in [root, *extra_roots]
        ]
        with self.client.stream("GET", self.url + "/export", params=params) as response:
            _raise_for(response)
            for chunk in response.iter_bytes(READ_SIZE):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))

    def import_car(self, chunks: Iterable[bytes], *, pin: bool = True) -> list[CID]:
        params = {"pin": "true" if pin else "false"}
        result = self.request_json("POST", "/import", content=chunks, params=params)
        return [CID.parse(text) for text in result["roots"]]

    def pin(self, cids: Sequence[CID]) -> None:
        self.request_json("POST", "/pin/add", params=[("arg", str(c)) for c in cids])

    def unpin(self, cid: CID) -> None:
        self.request_json("POST", "/pin/rm", params={"arg": str(cid)})

    def pins(self) -> list[CID]:
        return [CID.parse(text) for text in self.request_json("GET", "/pin/ls")["pins"]]

    def gc(self, *, dry_run: bool) -> dict[str, Any]:
        result: dict[str, Any] = self.request_json("POST", "/gc", params={"dry-run": str(dry_run).lower()})
        return result

    def identity(self) -> tuple[str, list[str]]:
        result = self.request_json("GET", "/id")
        return str(result["id"]), [str(a) for a in result["addrs"]]

    def peers(self) -> list[dict[str, Any]]:
        return list(self.request_json("GET", "/peers")["peers"])

    def connect(self, multiaddr: str) -> str:
        return str(self.request_json("POST", "/connect", params={"arg": multiaddr})["peer_id"])

    def mirror_stat(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request_json("GET", "/mirror/stat")
        return result

    def publish(self, name: str, tag: str) -> dict[str, str]:
        return dict(self.request_json("POST", "/image/publish", params={"arg": f"{name}:{tag}"}))

    def images(self) -> list[dict[str, str]]:
        return list(self.request_json("GET", "/images")["images"])

    def image_cid(self, name: str, tag: str) -> CID:
        return CID.parse(self.request_json("GET", "/image/cid", params={"arg": f"{name}:{tag}"})["cid"])

    def pull(
        self, cid: CID, ref: str | None, target: tuple[str, str | None] | None, peers: Sequence[str]
    ) -> dict[str, Any]:
        self._connect_all(peers)
        params = {"arg": str(cid)}
        if ref is not None:
            params["ref"] = ref
        if target is not None:
            params["name"] = _name_arg(*target)
        result: dict[str, Any] = self.request_json("POST", "/image/pull", params=params)
        return result

    def push(self, path: Path, name: str, tag: str) -> dict[str, Any]:
        # The server reads the path itself: the control API is loopback-only, on this machine.
        params = {"path": str(path.resolve()), "name": f"{name}:{tag}"}
        result: dict[str, Any] = self.request_json("POST", "/image/push", params=params)
        return result

    def tag(self, cid: CID, name: str, tag: str | None, ref: str | None) -> dict[str, Any]:
        params = {"arg": str(cid), "name": _name_arg(name, tag)}
        if ref is not None:
            params["ref"] = ref
        result: dict[str, Any] = self.request_json("POST", "/image/tag", params=params)
        return result

    def find_providers(self, cid: CID, limit: int) -> Iterator[dict[str, Any]]:
        params: dict[str, str | int] = {"arg": str(cid), "limit": limit}
        with self.client.stream("GET", self.url + "/routing/findprovs", params=params) as response:
            _raise_for(response)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def provide(self, cids: Sequence[CID]) -> list[dict[str, Any]]:
        result = self.request_json("POST", "/routing/provide", params=[("arg", str(c)) for c in cids])
        return list(result["provided"])

    def find_peer(self, peer_id: str) -> list[str]:
        return [
            str(a) for a in self.request_json("GET", "/routing/findpeer", params={"arg": peer_id})["addrs"]
        ]

    def routing_stat(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request_json("GET", "/routing/stat")
        return result

    def ipns_call(self, op: str, **args: Any) -> Any:
        method, route = IPNS_ROUTES[op]
        params: list[tuple[str, str]] = []
        for key, value in args.items():
            values = value if isinstance(value, list | tuple) else [value]
            params.extend((key, str(v)) for v in values)
        return self.request_json(method, route, params=params)

    def _connect_all(self, peers: Sequence[str]) -> None:
        for addr in peers:
            self.connect(addr)


class RemoteBlockSource:
    """An exporter BlockSource over the control API (the server fetches missing blocks from peers)."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self._hints: list[CID] = []

    async def get(self, cid: CID) -> bytes:
        if self._hints:
            hints, self._hints = self._hints, []
            await self.client.post(self.url + "/prefetch", params=[("arg", str(c)) for c in hints])
        response = await self.client.get(self.url + "/block", params={"arg": str(cid)})
        if response.status_code >= 400:
            _raise_for(response)
        return response.content

    def prefetch(self, cids: Sequence[CID]) -> None:
        self._hints.extend(cids)


def _name_arg(name: str, tag: str | None) -> str:
    return name if tag is None else f"{name}:{tag}"


def import_options(config: Config) -> ImportOptions:
    return config.importer.options()


@contextlib.contextmanager
def backend_for(config: Config) -> Iterator[Backend]:
    """The data dir opened directly, or the running server that owns it."""
    try:
        store = Datastore.open(config.data_dir, verify_reads=config.storage.verify_reads)
    except DataDirLocked:
        url = read_api_file(config.data_dir)
        if url is None:
            raise
        remote = RemoteBackend(url)
        try:
            yield remote
        except httpx.TransportError as exc:
            raise ControlApiError(
                f"cannot reach the server at {url} that owns {config.data_dir}: {exc}"
            ) from exc
        finally:
            remote.close()
        return
    try:
        yield LocalBackend(store, config)
    finally:
        store.close()
