"""The `ipfsreg` command line: serve, add, cat, get, export, import, routing, config, mirror.

Every command takes ``--data DIR`` (before or after the command name). Errors are printed as one
line on stderr with exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import trio

from ipfsreg import __version__
from ipfsreg.blockstore import BlockstoreError
from ipfsreg.cid import CID, CIDError
from ipfsreg.clientapi import ControlApiError, backend_for
from ipfsreg.config import Config, ConfigError, load_config, render_toml
from ipfsreg.excgroups import leaves
from ipfsreg.imageops import split_name_optional_tag, split_name_tag
from ipfsreg.malloc import limit_arenas
from ipfsreg.ops import READ_SIZE, OpsError, parse_cid_path, path_size
from ipfsreg.unixfs.car import CarV2Writer
from ipfsreg.unixfs.errors import UnixFSError
from ipfsreg.unixfs.importer import ImportOptions
from ipfsreg.unixfs.profiles import PROFILES, profile_options

Handler = Callable[[argparse.Namespace, Config], int]


class CommandError(Exception):
    """A failure to report to the user as one line."""


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--data", metavar="DIR", default=default, help="data directory")
    parser.add_argument("--config", metavar="FILE", default=default, help="TOML config file")
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level",
    )


def _mirror_entry(text: str) -> dict[str, str]:
    registry, sep, url = text.partition("=")
    if not sep or not registry or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected REGISTRY=http(s)://HOST[:PORT], got {text!r}")
    return {"registry": registry, "url": url}


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipfsreg", description="A container image registry on IPFS.")
    parser.add_argument("--version", action="version", version=f"ipfsreg {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, top=False)
        p.set_defaults(handler=handler)
        return p

    p = command("serve", cmd_serve, "run the registry, the control API and the IPFS node")
    p.add_argument("--registry-listen", metavar="HOST:PORT", default=None, help="default 0.0.0.0:5000")
    p.add_argument("--api-listen", metavar="HOST:PORT", default=None, help="default 127.0.0.1:0 (loopback)")
    p.add_argument(
        "--p2p-listen",
        metavar="MULTIADDR",
        action="append",
        default=None,
        help="default /ip4/0.0.0.0/tcp/4001",
    )
    p.add_argument(
        "--peer",
        dest="peer_list",
        metavar="MULTIADDR",
        action="append",
        default=None,
        help="peer to stay connected to (repeatable)",
    )
    p.add_argument(
        "--bootstrap",
        dest="bootstrap_list",
        metavar="MULTIADDR",
        action="append",
        default=None,
        help='DHT peer to join through (repeatable); "amino" names the public IPFS bootstrap peers',
    )
    p.add_argument(
        "--routing-mode",
        choices=["auto", "server", "client"],
        default=None,
        help="DHT mode (default auto: server on the LAN DHT, and on the public one when reachable)",
    )
    p.add_argument(
        "--swarm-key",
        metavar="FILE",
        default=None,
        help="private network key (Kubo's swarm.key format); default DATA/swarm.key when it exists",
    )
    p.add_argument(
        "--mdns", action="store_const", const=True, default=None, help="discover peers on the LAN (mDNS)"
    )

    p.add_argument("--upstream", metavar="URL", default=None, help="pull-through cache of this registry")
    p.add_argument(
        "--mirror",
        dest="mirror_list",
        metavar="REGISTRY=URL",
        action="append",
        type=_mirror_entry,
        default=None,
        help="mirror REGISTRY (its ?ns= name, e.g. docker.io) from URL (repeatable; [[mirror.upstream]])",
    )
    p.add_argument(
        "--mirror-default",
        metavar="URL",
        default=None,
        help="URL template for every other registry, e.g. 'https://{ns}' ([mirror] default_url)",
    )
    p.add_argument("--upstream-username", metavar="USER", default=None)
    p.add_argument(
        "--htpasswd", metavar="FILE", default=None, help="bcrypt htpasswd file: turns on basic auth"
    )
    p.add_argument(
        "--anonymous-pull", action="store_const", const=True, default=None, help="pull without login"
    )
    p.add_argument(
        "--access",
        metavar="RULE",
        action="append",
        default=None,
        help="USER:REPOSITORY-GLOB:ACTIONS rule (repeatable), e.g. 'bob:team/*:pull'",
    )
    p.add_argument(
        "--token-key", metavar="FILE", default=None, help="private key: issue and accept bearer tokens"
    )
    p.add_argument("--tls-cert", metavar="FILE", default=None, help="certificate (PEM) for HTTPS")
    p.add_argument("--tls-key", metavar="FILE", default=None, help="private key (PEM) for HTTPS")

    p = command("id", cmd_id, "print this node's peer ID and listen multiaddrs")
    p.add_argument("--json", action="store_true", help='print {"id": ..., "addrs": [...]}')

    p = command("peers", cmd_peers, "list the running node's connected peers")
    p.add_argument("--json", action="store_true")

    p = command("connect", cmd_connect, "connect the running node to a peer")
    p.add_argument("multiaddr", help="/ip4/.../tcp/.../p2p/<peer id>")

    p = command("add", cmd_add, "import a file or directory tree; prints the root CID last")
    p.add_argument("path", type=Path)
    p.add_argument("-r", "--recursive", action="store_true", help="add a directory tree")
    p.add_argument("-H", "--hidden", action="store_true", help="include files whose names start with '.'")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="UnixFS import profile (IPIP-499; default: [import] profile, unixfs-v0-2015)",
    )
    p.add_argument("--cid-version", type=int, choices=[0, 1], default=None)
    p.add_argument(
        "--chunk-size", type=int, default=None, help="chunk size in bytes (default: the profile's)"
    )
    p.add_argument(
        "--max-links", type=int, default=None, help="most links per file node (default: the profile's)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the root CID")
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin the root (garbage collection may remove it)"
    )

    p = command("cat", cmd_cat, "write the bytes of CID[/path] to stdout")
    p.add_argument("cid_path", metavar="CID[/path]")
    p.add_argument("--offset", type=_nonnegative, default=0)
    p.add_argument("--length", type=_nonnegative, default=None)
    p.add_argument("--peer", metavar="MULTIADDR", action="append", default=[], help="fetch from this peer")

    p = command("get", cmd_get, "write the file or directory tree at CID[/path]")
    p.add_argument("cid_path", metavar="CID[/path]")
    p.add_argument("-o", "--output", type=Path, default=None, help="destination (default: the CID)")
    p.add_argument("--peer", metavar="MULTIADDR", action="append", default=[], help="fetch from this peer")

    p = command("export", cmd_export, "write an image (NAME:TAG) or the DAG under CID as a CAR file")
    p.add_argument("cid_path", metavar="NAME:TAG|CID[/path]")
    p.add_argument("-o", "--output", type=Path, required=True, help="CAR file to write ('-' for stdout)")
    p.add_argument(
        "--car-version",
        type=int,
        choices=[1, 2],
        default=1,
        help="1 (default) or 2: CARv2 with a MultihashIndexSorted index, as go-car writes it",
    )

    p = command("import", cmd_import, "verify and store every block of a CAR v1 or v2 file; prints its roots")
    p.add_argument("car", type=Path, help="CAR file ('-' for stdin)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the roots")
    p.add_argument(
        "--tag",
        metavar="NAME[:TAG]",
        default=None,
        help="tag the imported image in the registry (no TAG: the layout's own)",
    )

    p = command(
        "publish",
        cmd_publish,
        "(re)publish NAME:TAG as an OCI image layout on IPFS; prints its pull reference HOST/ipfs/<cid>:TAG",
    )
    p.add_argument("image", metavar="NAME[:TAG]")

    p = command("images", cmd_images, "list published images: NAME:TAG, manifest digest, CID, pull reference")
    p.add_argument("--json", action="store_true")

    p = command("pull", cmd_pull, "bring an image from IPFS into the registry (fetching over bitswap)")
    p.add_argument("cid", metavar="/ipfs/CID")
    p.add_argument(
        "image",
        metavar="NAME[:TAG]",
        nargs="?",
        help="default: repository ipfs/<cid>; no TAG: the layout's own tag of the image",
    )
    p.add_argument(
        "--ref", default=None, help="the layout's tag or digest to pull (default: TAG or its only image)"
    )
    p.add_argument("--peer", metavar="MULTIADDR", action="append", default=[], help="fetch from this peer")

    p = command(
        "push",
        cmd_push,
        "import an OCI layout directory or docker save tarball as NAME:TAG; prints its pull reference",
    )
    p.add_argument("path", type=Path)
    p.add_argument("image", metavar="NAME[:TAG]")

    p = command("pin", cmd_pin, "keep DAGs through garbage collection")
    p.add_argument("action", choices=["add", "rm", "ls"])
    p.add_argument("cids", metavar="CID", nargs="*")

    p = command("gc", cmd_gc, "remove blocks no tag, manifest, upload, pin or published image reaches")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="list the removed blocks")

    p = command("routing", cmd_routing, "content and peer routing through the running node's DHT")
    actions = p.add_subparsers(dest="routing_command", required=True, metavar="ACTION")
    q = actions.add_parser("findprovs", help="print the providers of CID as they are found")
    _common(q, top=False)
    q.add_argument("cid", metavar="CID")
    q.add_argument("-n", "--num-providers", type=_nonnegative, default=20, help="stop after N (default 20)")
    q.add_argument("--json", action="store_true", help="one JSON object per provider")
    q = actions.add_parser("provide", help="announce that this node provides CID (now, then reprovided)")
    _common(q, top=False)
    q.add_argument("cids", metavar="CID", nargs="+")
    q = actions.add_parser("findpeer", help="print the multiaddrs of a peer")
    _common(q, top=False)
    q.add_argument("peer_id", metavar="PEER_ID")
    q = actions.add_parser("stat", help="routing tables, provider records, provide queue, last reprovide")
    _common(q, top=False)
    q.add_argument("--json", action="store_true")
    p = command("key", cmd_key, "IPNS keys: gen NAME, list, rm NAME ('self' is the node's own key)")
    p.add_argument("action", choices=["gen", "list", "rm"])
    p.add_argument("key_name", metavar="NAME", nargs="?")
    p.add_argument("--json", action="store_true")

    p = command(
        "name",
        cmd_name,
        "tags on IPNS: bind REPO KEY, unbind REPO, bindings, publish [KEY...], resolve NAME",
    )
    p.add_argument("action", choices=["bind", "unbind", "bindings", "publish", "resolve"])
    p.add_argument("args", nargs="*")
    p.add_argument("--json", action="store_true")

    p = command("config", cmd_config, "show the effective configuration")
    p.add_argument("action", choices=["show"])

    p = command("mirror", cmd_mirror, "the fleet mirror: container runtime configuration, counters")
    actions = p.add_subparsers(dest="mirror_action", required=True, metavar="ACTION")
    q = actions.add_parser(
        "config", help="print (or write) a container runtime's configuration to pull through this node"
    )
    _common(q, top=False)
    q.add_argument("--runtime", required=True, choices=["containerd", "cri-o", "docker", "podman"])
    q.add_argument(
        "--registry",
        metavar="REGISTRY",
        action="append",
        default=None,
        help="registry to mirror (repeatable; default: those in [[mirror.upstream]], else docker.io)",
    )
    q.add_argument("--write", metavar="DIR", type=Path, default=None, help="write the files under DIR")
    q.add_argument(
        "--address",
        metavar="URL",
        default=None,
        help="this node as the runtime reaches it (default from listen)",
    )
    q = actions.add_parser("stat", help="where the mirror's bytes came from: local, peers, upstream")
    _common(q, top=False)
    q.add_argument("--json", action="store_true")
    return parser


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; otherwise no callback."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _import_options(args: argparse.Namespace, config: Config) -> ImportOptions:
    """The [import] settings, with a --profile flag in place of the configured profile and the
    other flags over both (as Kubo's `ipfs add` flags override its Import config)."""
    settings = config.importer
    if args.profile is not None and args.profile != settings.profile:
        settings = dataclasses.replace(
            settings, profile=args.profile, chunk_size=None, cid_version=None, max_links=None
        )
    try:
        return profile_options(
            settings.profile,
            chunk_size=args.chunk_size if args.chunk_size is not None else settings.chunk_size,
            cid_version=args.cid_version if args.cid_version is not None else settings.cid_version,
            max_links=args.max_links if args.max_links is not None else settings.max_links,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _out_stream(path: Path) -> contextlib.AbstractContextManager[BinaryIO]:
    if str(path) == "-":
        return contextlib.nullcontext(sys.stdout.buffer)
    return path.open("wb")


def _in_stream(path: Path) -> contextlib.AbstractContextManager[BinaryIO]:
    if str(path) == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    try:
        return path.open("rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


def _file_chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(READ_SIZE):
        yield chunk


# --- commands --------------------------------------------------------------------------------
# Each command runs against the data dir itself, or, when `ipfsreg serve` owns it, against that
# server's control API (see ipfsreg/control.py).


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from ipfsreg.app import banner, run_server

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in config.warnings:
        logging.getLogger("ipfsreg").warning("%s", warning)
    trio.run(lambda: run_server(config, on_started=lambda info: print(banner(info), flush=True)))
    return 0


def cmd_add(args: argparse.Namespace, config: Config) -> int:
    options = _import_options(args, config)
    path: Path = args.path
    total = path_size(path) if path.exists() else None
    with backend_for(config) as backend, progress_bar(total, "add") as bar:
        result = backend.add(path, options, recursive=args.recursive, hidden=args.hidden, progress=bar)
        if not args.no_pin:
            backend.pin([result.cid])
    if not args.quiet:
        print(f"added {result.cid} {path.name or path} ({result.size} bytes)", file=sys.stderr)
    print(result.cid)
    return 0


def cmd_cat(args: argparse.Namespace, config: Config) -> int:
    out = sys.stdout.buffer
    with backend_for(config) as backend:
        backend.cat(args.cid_path, out, offset=args.offset, length=args.length, peers=args.peer)
    out.flush()
    return 0


def cmd_get(args: argparse.Namespace, config: Config) -> int:
    dest: Path = args.output or Path(args.cid_path.strip("/").split("/")[-1])
    with backend_for(config) as backend, progress_bar(None, "get") as bar:
        backend.get(args.cid_path, dest, progress=bar, peers=args.peer)
    print(f"saved {args.cid_path} to {dest}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend, _out_stream(args.output) as out, progress_bar(None, "export") as bar:
        target = args.cid_path
        extra: list[CID] = []
        if _looks_like_image(target):
            name, tag = split_name_tag(target)
            target = str(backend.image_cid(name, tag))
            # The repository's current IPNS record travels in the CAR (see ipfsreg/ipns/carfile.py).
            extra = [CID.parse(c) for c in backend.ipns_call("export_roots", arg=name, tag=tag)["roots"]]
        if args.car_version == 1:
            backend.export(target, out, progress=bar, extra_roots=extra)
        else:
            # The backend streams a CARv1 (a server sends one); it is wrapped here, index included.
            wrapper = CarV2Writer(out, seekable=str(args.output) != "-")
            backend.export(target, wrapper, progress=bar, extra_roots=extra)
            wrapper.close()
    if extra:
        print(f"exported with the IPNS record of {split_name_tag(args.cid_path)[0]}", file=sys.stderr)
    return 0


def _looks_like_image(text: str) -> bool:
    """NAME:TAG (a registry image) rather than CID[/path]."""
    if text.startswith(("/ipfs/", "ipfs://")):
        return False
    try:
        CID.parse(text.split("/", 1)[0])
    except CIDError:
        return True
    return False


def _cid_arg(text: str) -> CID:
    """A CID given as /ipfs/CID, ipfs://CID or CID (CIDv0 accepted)."""
    root, path = parse_cid_path(text)
    if path:
        raise CommandError(f"expected an image CID, not a path inside one: {text}")
    return root


def _print_pulled(result: dict[str, Any]) -> None:
    """stdout: the pull reference (``HOST/ipfs/<cidv1>:TAG``); stderr: what was stored, with the
    Kubo-parity CID (``ipfs get`` takes it, as X-Ipfs-Path gives it)."""
    image = f"{result['name']}:{result['tag']}"
    print(f"{image} {result['digest']} ({result['blobs']} blobs) /ipfs/{result['cid']}", file=sys.stderr)
    print(result["reference"])


def cmd_publish(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        published = backend.publish(*split_name_tag(args.image))
    print(f"{published['name']}:{published['tag']} /ipfs/{published['cid']}", file=sys.stderr)
    print(published["reference"])
    return 0


def cmd_images(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        images = backend.images()
    if args.json:
        print(json.dumps(images))
    else:
        for image in images:
            name = f"{image['name']}:{image['tag']}"
            print(f"{name}\t{image['digest']}\t{image['cid']}\t{image['reference']}")
    return 0


def cmd_pull(args: argparse.Namespace, config: Config) -> int:
    cid = _cid_arg(args.cid)
    target = split_name_optional_tag(args.image) if args.image else None
    with backend_for(config) as backend:
        _print_pulled(backend.pull(cid, args.ref, target, args.peer))
    return 0


def cmd_push(args: argparse.Namespace, config: Config) -> int:
    name, tag = split_name_tag(args.image)
    with backend_for(config) as backend:
        _print_pulled(backend.push(args.path, name, tag))
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend, _in_stream(args.car) as fh:
        roots = backend.import_car(_file_chunks(fh), pin=not args.no_pin)
        imported = backend.ipns_call("import_roots", arg=[str(r) for r in roots])
        roots = [CID.parse(text) for text in imported["roots"]]
        for record in imported["records"]:
            state = "stored" if record["stored"] else "kept the newer one already here"
            print(
                f"IPNS record of {record['name']} seq {record['sequence']} verified: {state}", file=sys.stderr
            )
        if args.tag:
            if len(roots) != 1:
                raise CommandError(f"--tag needs a CAR with one root, this one has {len(roots)}")
            name, tag = split_name_optional_tag(args.tag)
            tagged = backend.tag(roots[0], name, tag, None)
            print(f"tagged {name}:{tagged['tag']} {tagged['digest']} {tagged['reference']}", file=sys.stderr)
    for root in roots:
        print(root)
    return 0


def cmd_id(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        peer_id, addrs = backend.identity()
    if args.json:
        print(json.dumps({"id": peer_id, "addrs": addrs}))
    else:
        print(peer_id)
        for addr in addrs:
            print(addr)
    return 0


def cmd_peers(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        peers = backend.peers()
    if args.json:
        print(json.dumps(peers))
    else:
        for peer in peers:
            addrs = peer["addrs"] or [""]
            for addr in addrs:
                print(f"{addr}/p2p/{peer['peer_id']}" if addr else peer["peer_id"])
    return 0


def cmd_connect(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        peer_id = backend.connect(args.multiaddr)
    print(f"connected {peer_id}")
    return 0


def cmd_pin(args: argparse.Namespace, config: Config) -> int:
    cids = [CID.parse(text) for text in args.cids]
    with backend_for(config) as backend:
        if args.action == "ls":
            for cid in backend.pins():
                print(cid)
        elif not cids:
            raise CommandError(f"pin {args.action} needs at least one CID")
        elif args.action == "add":
            backend.pin(cids)
        else:
            for cid in cids:
                backend.unpin(cid)
    return 0


def cmd_gc(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        report = backend.gc(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    if args.verbose or args.dry_run:
        for cid in report["removed"]:
            print(cid)
    print(
        f"{verb} {report['removed_blocks']} blocks ({report['removed_bytes']} bytes) and "
        f"{report['forgotten_blobs']} unreferenced blobs; {report['marked']} blocks reachable "
        f"from {report['roots']} roots",
        file=sys.stderr,
    )
    return 0


def cmd_routing(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        action = args.routing_command
        if action == "findprovs":
            for provider in backend.find_providers(_cid_arg(args.cid), args.num_providers):
                if args.json:
                    print(json.dumps(provider), flush=True)
                else:
                    print(provider["peer_id"], " ".join(provider["addrs"]), flush=True)
        elif action == "provide":
            for result in backend.provide([_cid_arg(text) for text in args.cids]):
                if result["peers"]:
                    print(f"provided {result['cid']} to {result['peers']} peers")
                else:
                    print(f"queued {result['cid']}: no DHT peer took it yet (retried)", file=sys.stderr)
        elif action == "findpeer":
            addrs = backend.find_peer(args.peer_id)
            if not addrs:
                raise CommandError(f"peer {args.peer_id} was not found")
            for addr in addrs:
                print(addr)
        else:
            stat = backend.routing_stat()
            if args.json:
                print(json.dumps(stat))
            else:
                _print_routing_stat(stat)
    return 0


def _print_routing_stat(stat: dict[str, Any]) -> None:
    for dht in stat["dhts"]:
        mode = "server" if dht["server"] else "client"
        whole = dht.get("whole_network")
        seen = "" if whole is None else f" (a lookup saw the whole DHT: {whole} other servers)"
        print(f"{dht['protocol']} ({mode}): {dht['routing_table_size']} peers in the routing table{seen}")
    queue = stat["provide_queue"]
    print(f"provider records: {stat['provider_records']}, value records: {stat['value_records']}")
    print(f"provide queue: {queue['queued']} waiting, {queue['provided']} provided")
    last = queue["last_reprovide"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else "never (since start)"
    print(f"last reprovide: {when}{' (running)' if queue['reprovide_running'] else ''}")


def cmd_key(args: argparse.Namespace, config: Config) -> int:
    with backend_for(config) as backend:
        if args.action == "list":
            keys = backend.ipns_call("key_list")["keys"]
            if args.json:
                print(json.dumps(keys))
            for key in [] if args.json else keys:
                print(f"{key['name']}\t{key['id']}")
            return 0
        if not args.key_name:
            raise CommandError(f"key {args.action} needs a key NAME")
        key = backend.ipns_call("key_gen" if args.action == "gen" else "key_rm", arg=args.key_name)
    print(json.dumps(key) if args.json else key["id"])
    return 0


def cmd_name(args: argparse.Namespace, config: Config) -> int:
    wanted = {"bind": 2, "unbind": 1, "bindings": 0, "resolve": 1}
    count = wanted.get(args.action)
    if count is not None and len(args.args) != count:
        usage = {"bind": "REPO KEY", "unbind": "REPO", "bindings": "", "resolve": "NAME"}[args.action]
        raise CommandError(f"usage: ipfsreg name {args.action} {usage}".rstrip())
    with backend_for(config) as backend:
        if args.action == "bind":
            result = backend.ipns_call("bind", arg=args.args[0], key=args.args[1])
            lines = [f"{result['repository']} -> {result['name']} ({result['id']})"]
        elif args.action == "unbind":
            result = backend.ipns_call("unbind", arg=args.args[0])
            lines = [f"{result['repository']} unbound from {result['key']}"]
        elif args.action == "bindings":
            result = backend.ipns_call("bindings")
            lines = [f"{b['repository']}\t{b['key']}\t{b['from']}" for b in result["bindings"]]
        elif args.action == "publish":
            result = backend.ipns_call("publish", key=list(args.args))
            lines = []
            for item in result["published"]:
                routed = (
                    f"stored by {item['stored']} peers"
                    if item["routed"]
                    else f"local only: {item['route_error']}"
                )
                lines.append(f"{item['name']} seq {item['sequence']} -> {item['value']} ({routed})")
        else:
            result = backend.ipns_call("resolve", arg=args.args[0])
            lines = [f"{result['value']} (seq {result['sequence']}, valid until {result['validity']})"]
            for repo, tags in result["images"].items():
                lines.extend(f"{repo}:{tag}\t{cid}" for tag, cid in sorted(tags.items()))
    if args.json:
        print(json.dumps(result))
    else:
        for line in lines:
            print(line)
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(config))
    return 0


def cmd_mirror(args: argparse.Namespace, config: Config) -> int:
    if args.mirror_action == "stat":
        with backend_for(config) as backend:
            stat = backend.mirror_stat()
        if args.json:
            print(json.dumps(stat))
        else:
            _print_mirror_stat(stat)
        return 0
    return _mirror_config(args, config)


def _print_mirror_stat(stat: dict[str, Any]) -> None:
    total = sum(stat["bytes"].values()) or 1
    print("source    blobs        bytes   share")
    for source, count in stat["bytes"].items():
        print(f"{source:<8} {stat['blobs'][source]:>6} {count:>12}  {100 * count / total:5.1f}%")
    if stat["namespaces"]:
        print("\nnamespace                       hits   misses")
        for name, counts in stat["namespaces"].items():
            print(f"{name:<30} {counts['hits']:>6} {counts['misses']:>8}")
    print(
        f"\nstale tags served: {stat['stale_tags']}   peers dropped: {stat['peer_failures']}   "
        f"fetches that followed another node: {stat['coordinated']}"
    )


def _mirror_config(args: argparse.Namespace, config: Config) -> int:
    from ipfsreg.mirror.rules import mirrored_namespaces, route
    from ipfsreg.mirror.runtime import RuntimeConfigError, mirror_address, runtime_config
    from ipfsreg.registry.names import canonical_namespace

    mirror = config.section("mirror")
    registry = config.section("registry")
    registries: list[str] = []
    for text in args.registry or mirrored_namespaces(mirror) or ["docker.io"]:
        host = canonical_namespace(text)
        if host is None:
            raise CommandError(f"{text!r} is not a registry host (it needs a dot or a port, or is localhost)")
        if host not in registries:
            registries.append(host)
    upstreams = {host: found.url for host in registries if (found := route(mirror, host, "")) is not None}
    address = args.address or mirror_address(registry.listen, tls=registry.tls_cert is not None)
    daemon_json = args.write / "daemon.json" if args.write is not None else None
    existing = daemon_json.read_text() if daemon_json is not None and daemon_json.is_file() else None
    try:
        result = runtime_config(args.runtime, address, registries, upstreams, existing_daemon_json=existing)
    except RuntimeConfigError as exc:
        raise CommandError(str(exc)) from None
    for item in result.files:
        if args.write is None:
            print(f"# --- {item.path} ---")
            sys.stdout.write(item.content)
            continue
        path = args.write / item.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item.content)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from None
        print(f"wrote {path}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


# --- entry point -----------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    print(f"ipfsreg: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def user_errors() -> tuple[type[Exception], ...]:
    """Failures reported as one line (no traceback): bad input, config, storage, protocol, peers.

    Imported on demand: most commands never fail, and these modules pull in the server stack."""
    from ipfsreg.auth.policy import AuthConfigError
    from ipfsreg.ipns.record import IpnsError
    from ipfsreg.node.errors import NodeError
    from ipfsreg.oci.errors import LayoutError
    from ipfsreg.registry.errors import RegistryError

    return (
        CommandError,
        ControlApiError,
        OpsError,
        ConfigError,
        BlockstoreError,
        UnixFSError,
        CIDError,
        NodeError,
        AuthConfigError,
        RegistryError,
        LayoutError,
        IpnsError,
    )


# Flags that set config options: (section.option, argparse attribute).
_FLAG_OPTIONS = (
    ("registry.listen", "registry_listen"),
    ("api.listen", "api_listen"),
    ("node.p2p_listen", "p2p_listen"),
    ("node.peers", "peer_list"),
    ("routing.bootstrap", "bootstrap_list"),
    ("routing.mode", "routing_mode"),
    ("node.swarm_key", "swarm_key"),
    ("node.mdns", "mdns"),
    ("registry.upstream", "upstream"),
    ("mirror.upstream", "mirror_list"),
    ("mirror.default_url", "mirror_default"),
    ("registry.upstream_username", "upstream_username"),
    ("registry.htpasswd", "htpasswd"),
    ("registry.anonymous_pull", "anonymous_pull"),
    ("registry.access", "access"),
    ("registry.token_key", "token_key"),
    ("registry.tls_cert", "tls_cert"),
    ("registry.tls_key", "tls_key"),
)


def main(argv: Sequence[str] | None = None) -> int:
    limit_arenas()  # before any worker thread exists (see ipfsreg/malloc.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"log_level": args.log_level}
    for option, attr in _FLAG_OPTIONS:
        overrides[option] = getattr(args, attr, None)
    try:
        config = load_config(data_dir=args.data, config_file=args.config, overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc))
    handler: Handler = args.handler
    try:
        return handler(args, config)
    except BaseExceptionGroup as group:
        # Errors from inside the server's nurseries arrive grouped; report the user-facing ones.
        matched, rest = group.split(user_errors())
        if matched is None or rest is not None:
            raise
        _fail("; ".join(str(exc) for exc in leaves(matched)))
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        _fail(str(exc))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
