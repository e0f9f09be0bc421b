"""One Kademlia DHT swarm over the libp2p host: the stream handler (server mode) and the lookups (client).

A :class:`KademliaDHT` speaks one protocol id: ``/ipfs/lan/kad/1.0.0`` (the LAN DHT, peers on
loopback and private addresses) or ``/ipfs/kad/1.0.0`` (Amino, peers on public addresses). The
node runs one of each, as Kubo's dual DHT does (see ``routing.py``); they share the provider and
record stores. Server mode registers the stream handler, so identify advertises the protocol;
client mode does neither.

Server side: each inbound stream is read as a sequence of varint-framed requests (a peer may send
several on one stream) and each gets its answer, as go-libp2p-kad-dht's handlers give it. Bounds:
at most ``MAX_INBOUND_STREAMS`` streams are served at once (more are reset), a stream idle for
``STREAM_IDLE_TIMEOUT`` is closed, ADD_PROVIDER is rate-limited per peer (a token bucket), and
the stores refuse records past their caps.

Client side: a lookup (``lookup.py``) asks up to alpha peers at a time, each request on a stream
of its own, dialling peers it learns of (``Connector``: bounded dial time, a short memory of
peers that could not be reached); the whole lookup ends by ``lookup_timeout`` at the latest.

Every message from the network is decoded against :class:`Limits` and every peer entry checked
(``addrs.py``). A peer that sends garbage — a message that does not decode, a response of the
wrong type, a malformed peer ID — is dropped: removed from the routing table, ignored for
``BAN_SECONDS`` and disconnected. Routing table admission follows Kubo: a connected peer that
advertises the protocol and whose connection is in this DHT's scope is asked FIND_NODE for its
own ID and enters the table if it answers with at least one peer; so does any peer that answers
one of our queries.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectError
from libp2p.stream_muxer.exceptions import MuxedStreamEOF
from multiaddr import Multiaddr

from ipfsreg.node.errors import DHTProtocolError, InvalidRecord, RoutingError
from ipfsreg.node.multistream import expect_selected, lazy_select
from ipfsreg.node.routing.addrs import DialAddr, dial_addr_of, parse_dial_addr, peer_id_from_bytes
from ipfsreg.node.routing.keys import MAX_REFRESH_CPL, kad_id, random_key_with_prefix
from ipfsreg.node.routing.lookup import Lookup
from ipfsreg.node.routing.message import (
    DEFAULT_LIMITS,
    MAX_KEY_SIZE,
    Connection,
    FrameReader,
    K,
    Limits,
    Message,
    MessageType,
    PeerEntry,
    Record,
    decode_message,
    encode_frame,
)
from ipfsreg.node.routing.providers import ProviderStore
from ipfsreg.node.routing.records import RecordStore
from ipfsreg.node.routing.settings import RoutingSettings
from ipfsreg.node.routing.table import RoutingTable
from ipfsreg.node.yamux import YamuxConn, YamuxStream

logger = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024
MAX_INBOUND_STREAMS: Final = 64
STREAM_IDLE_TIMEOUT: Final = 60.0
BAN_SECONDS: Final = 600.0
UNREACHABLE_SECONDS: Final = 30.0  # a peer that could not be dialled is not dialled again for this long
MAX_REMEMBERED_PEERS: Final = 4096  # bans, unreachable peers and rate-limit buckets kept at most
MAX_DIALS: Final = 64  # dials in flight at once (all lookups together)
PROBE_WORKERS: Final = 4
PROBE_QUEUE: Final = 256
IDENTIFY_WAIT: Final = 3.0
MAX_PROVIDERS_SERVED: Final = 100  # provider records in one GET_PROVIDERS answer
# Provider records are not signed: one peer's answer may name any number of peers that never
# answer. Taking only a few from each answer keeps such a peer from filling a lookup's quota.
MAX_PROVIDERS_PER_ANSWER: Final = 5
IDLE_REUSE: Final = 45.0  # seconds an idle pooled stream may be reused (Kubo closes after 60)
MAX_IDLE_PER_PEER: Final = 4
MAX_IDLE: Final = 512
STALE_AFTER: Final = 300.0  # a routing table entry not useful for this long is re-checked on refresh
MAX_TOLD_EARLY: Final = 4096  # keys whose early ADD_PROVIDER recipients are remembered for provide()
SEND_ANNOUNCED_WAIT: Final = 0.5  # seconds a commit's answer waits at most for its ADD_PROVIDERs to leave
TOLD_EARLY_FOR: Final = 30.0  # seconds provide() trusts that record (a later reprovide tells everyone)
WHOLE_NETWORK_FOR: Final = 60.0  # seconds a lookup that saw every server of a small DHT stands for any key


@dataclass
class DHTStats:
    requests_in: int = 0
    requests_out: int = 0
    requests_failed: int = 0
    violations: int = 0
    providers_stored: int = 0
    providers_refused: int = 0
    add_provider_throttled: int = 0
    streams_refused: int = 0
    streams_opened: int = 0  # outgoing; requests reuse them (see StreamPool)
    lookups: int = 0
    lookups_spared: int = 0  # closest-peers lookups answered by one that saw the whole (small) network


@dataclass(frozen=True, slots=True)
class Found:
    """A peer as a response described it: its ID and the addresses of it we can use in this DHT."""

    peer: ID
    addrs: tuple[DialAddr, ...]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class _Remembered:
    """A bounded peer -> value map that forgets the oldest entry first."""

    def __init__(self, size: int = MAX_REMEMBERED_PEERS) -> None:
        self._size = size
        self._items: OrderedDict[ID, float] = OrderedDict()

    def put(self, peer: ID, value: float) -> None:
        self._items[peer] = value
        self._items.move_to_end(peer)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def get(self, peer: ID) -> float | None:
        return self._items.get(peer)

    def pop(self, peer: ID) -> None:
        self._items.pop(peer, None)


class Connector:
    """Dials peers found through the DHT: bounded time and concurrency, a peers found dead wait."""

    def __init__(self, host: IHost, dial_timeout: float) -> None:
        self.host = host
        self.dial_timeout = dial_timeout
        self._limiter = trio.CapacityLimiter(MAX_DIALS)
        self._unreachable = _Remembered()
        self._dialling: dict[ID, trio.Event] = {}

    def is_connected(self, peer: ID) -> bool:
        """An open connection to ``peer`` (one being closed, still listed for a moment, does not count)."""
        for conn in self.host.get_network().connections.get(peer, ()):
            if not getattr(conn, "is_closed", False) and not getattr(conn.muxed_conn, "is_closed", False):
                return True
        return False

    def recently_unreachable(self, peer: ID) -> bool:
        failed = self._unreachable.get(peer)
        return failed is not None and trio.current_time() - failed < UNREACHABLE_SECONDS

    async def ensure(self, peer: ID, addrs: Sequence[DialAddr]) -> None:
        """Be connected to ``peer``, dialling ``addrs`` if needed; RoutingError if that fails.

        A connection still being closed when we dial is waited out and dialled past (py-libp2p
        lists it for a moment and a dial then returns without a usable connection).
        """
        if peer == self.host.get_id():
            raise RoutingError("refusing to dial ourselves")
        with trio.move_on_after(self.dial_timeout):
            for _ in range(3):
                if self.is_connected(peer):
                    return
                pending = self._dialling.get(peer)
                if pending is not None:
                    await pending.wait()  # someone else's dial: then look again
                    continue
                if self.recently_unreachable(peer):
                    raise RoutingError(f"{peer} was unreachable less than {UNREACHABLE_SECONDS:g}s ago")
                if not addrs:
                    raise RoutingError(f"no usable address for {peer}")
                await self._dial(peer, addrs)
                if not self.is_connected(peer):
                    await trio.sleep(0.05)  # a stale connection on its way out: dial again
            if self.is_connected(peer):
                return
            raise RoutingError(f"cannot connect to {peer}")
        self._unreachable.put(peer, trio.current_time())
        raise RoutingError(f"connecting to {peer} timed out after {self.dial_timeout:g}s")

    async def _dial(self, peer: ID, addrs: Sequence[DialAddr]) -> None:
        done = trio.Event()
        self._dialling[peer] = done
        try:
            async with self._limiter:
                await self.host.connect(PeerInfo(peer, [a.multiaddr() for a in addrs]))
            self._unreachable.pop(peer)
        except Exception as exc:
            self._unreachable.put(peer, trio.current_time())
            raise RoutingError(f"cannot connect to {peer}: {exc!r}") from None
        finally:
            del self._dialling[peer]
            done.set()


class _ConnectionEvents(INotifee):
    def __init__(self, send: trio.MemorySendChannel[ID]) -> None:
        self._send = send

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        # A full probe queue drops the event: the peer can still join the table by answering a query.
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


def _yamux(stream: INetStream) -> YamuxStream | None:
    muxed = getattr(stream, "muxed_stream", None)
    return muxed if isinstance(muxed, YamuxStream) else None


# Reads and writes go to ipfsreg's Yamux stream under the NetStream when there is one: the NetStream
# takes a lock for every call, which costs a scheduling round each (several per request).


async def _read(stream: INetStream) -> bytes:
    muxed = _yamux(stream)
    try:
        return await (muxed.read(READ_CHUNK) if muxed is not None else stream.read(READ_CHUNK))
    except (StreamEOF, MuxedStreamEOF):
        return b""


async def _write(stream: INetStream, data: bytes) -> None:
    """Write a whole message the peer is waiting for: at once, not at the muxer's next flush."""
    muxed = _yamux(stream)
    if muxed is not None:
        await muxed.write_now(data)
    else:
        await stream.write(data)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:
        logger.debug("resetting a DHT stream: %r", exc)


async def _close(stream: INetStream) -> None:
    try:
        await stream.close()
    except Exception as exc:
        logger.debug("closing a DHT stream: %r", exc)


ProviderSink = Callable[[Found], bool]  # True: enough providers, stop the lookup


class _NoStream(RoutingError):
    """No stream could be opened to the peer (protocol refused, or the connection is gone)."""


class _StaleStream(RoutingError):
    """A stream kept for reuse was dead when used (nothing of the request reached the peer's handler)."""


class StreamPool:
    """Outgoing DHT streams kept open between requests, as Kubo's message sender keeps them.

    A request takes an idle stream of its peer (or opens one) and gives it back once answered,
    which saves the protocol negotiation of a new stream on every request (one round trip each).
    At most ``MAX_IDLE_PER_PEER`` idle streams per peer and ``MAX_IDLE`` in all are kept; a stream
    idle for ``IDLE_REUSE`` seconds is closed rather than reused (Kubo's handler closes streams
    idle for a minute).
    """

    def __init__(self) -> None:
        self._idle: OrderedDict[ID, list[tuple[INetStream, float]]] = OrderedDict()
        self._count = 0
        self.nursery: trio.Nursery | None = None  # where streams no longer kept are closed

    def _discard(self, stream: INetStream) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(_close, stream)

    def take(self, peer: ID) -> INetStream | None:
        streams = self._idle.get(peer)
        now = trio.current_time()
        while streams:
            stream, since = streams.pop()
            self._count -= 1
            muxed = _yamux(stream)
            if now - since < IDLE_REUSE and (muxed is None or muxed.writable):
                if not streams:
                    del self._idle[peer]
                return stream
            self._discard(stream)
        self._idle.pop(peer, None)
        return None

    def give_back(self, peer: ID, stream: INetStream) -> None:
        streams = self._idle.setdefault(peer, [])
        self._idle.move_to_end(peer)
        if len(streams) >= MAX_IDLE_PER_PEER:
            self._discard(stream)
            return
        streams.append((stream, trio.current_time()))
        self._count += 1
        while self._count > MAX_IDLE:
            oldest_peer, oldest = next(iter(self._idle.items()))
            old_stream, _ = oldest.pop(0)
            self._count -= 1
            if not oldest:
                del self._idle[oldest_peer]
            self._discard(old_stream)

    def forget(self, peer: ID) -> None:
        for stream, _ in self._idle.pop(peer, []):
            self._count -= 1
            self._discard(stream)

    def __len__(self) -> int:
        return self._count


class KademliaDHT:
    def __init__(
        self,
        host: IHost,
        *,
        protocol: str,
        lan: bool,
        server: bool,
        settings: RoutingSettings,
        providers: ProviderStore,
        records: RecordStore,
        connector: Connector,
        local_addrs: Callable[[], list[DialAddr]],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.lan = lan
        self.server = server
        self.settings = settings
        self.providers = providers
        self.records = records
        self.connector = connector
        self.limits = limits
        self._local_addrs = local_addrs
        self.local = host.get_id()
        self.table = RoutingTable(self.local.to_bytes())
        self.streams = StreamPool()
        self.stats = DHTStats()
        self._banned = _Remembered()
        self._buckets: OrderedDict[ID, _Bucket] = OrderedDict()
        self._inbound = trio.CapacityLimiter(MAX_INBOUND_STREAMS)
        self._probe_send, self._probe_recv = trio.open_memory_channel[ID](PROBE_QUEUE)
        self._probing: set[ID] = set()
        self._nursery: trio.Nursery | None = None
        self.last_refresh: float | None = None
        self._told_early: OrderedDict[bytes, tuple[float, set[ID]]] = OrderedDict()  # see announce_now
        # Connections announce_now queued on, with the keys queued there (see send_announced).
        self._unsent: dict[YamuxConn, set[bytes]] = {}
        self._whole_network: tuple[float, list[tuple[ID, tuple[DialAddr, ...]]]] | None = None

    @property
    def name(self) -> str:
        return "LAN DHT" if self.lan else "public DHT"

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve (in server mode), admit connected DHT peers to the table and refresh it, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.streams.nursery = nursery
            if self.server:
                self.host.set_stream_handler(TProtocol(self.protocol), self._handle_stream)
            self.host.get_network().register_notifee(_ConnectionEvents(self._probe_send.clone()))
            for _ in range(PROBE_WORKERS):
                nursery.start_soon(self._probe_worker)
            for peer in list(self.host.get_network().connections):
                self._queue_probe(peer)
            nursery.start_soon(self._refresh_loop)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                if self.server:
                    self.host.remove_stream_handler(TProtocol(self.protocol))
                self._nursery = None

    def in_scope(self, addr: DialAddr) -> bool:
        return addr.scope.lan == self.lan

    def usable(self, addrs: Iterable[DialAddr]) -> tuple[DialAddr, ...]:
        return tuple(a for a in addrs if self.in_scope(a))

    def is_banned(self, peer: ID) -> bool:
        until = self._banned.get(peer)
        return until is not None and trio.current_time() < until

    async def drop(self, peer: ID, reason: Exception) -> None:
        """A peer broke the protocol: out of the table, ignored for a while, disconnected."""
        self.stats.violations += 1
        logger.warning("%s: dropping peer %s: %s", self.name, peer, reason)
        self.table.remove(peer.to_bytes())
        self.streams.forget(peer)
        self._banned.put(peer, trio.current_time() + BAN_SECONDS)
        try:
            await self.host.disconnect(peer)
        except Exception as exc:
            logger.debug("disconnecting %s: %r", peer, exc)

    # --- peer bookkeeping --------------------------------------------------------------------

    def _peerstore_addrs(self, peer: ID) -> list[DialAddr]:
        try:
            known = self.host.get_peerstore().addrs(peer)
        except Exception:
            return []
        found = [dial_addr_of(a, peer) for a in known]
        return [a for a in found if a is not None]

    def _connection_addrs(self, peer: ID) -> list[DialAddr]:
        """Remote addresses of our open connections to ``peer`` (not dialable for TCP, but scoped)."""
        addrs: list[DialAddr] = []
        for conn in self.host.get_network().connections.get(peer, []):
            try:
                remote = conn.get_transport_addresses()
            except Exception:
                continue
            for addr in remote:
                parsed = dial_addr_of(addr)
                if parsed is not None:
                    addrs.append(parsed)
        return addrs

    def _addrs_of(self, peer: ID) -> tuple[DialAddr, ...]:
        """The addresses of ``peer`` we would hand to others: table entry, else what identify said."""
        entry = self.table.get(peer.to_bytes())
        if entry is not None and entry.addrs:
            return tuple(entry.addrs)
        return self.usable(self._peerstore_addrs(peer))

    def _peer_entry(self, peer: ID, addrs: Iterable[DialAddr]) -> PeerEntry:
        connection = Connection.CONNECTED if self.connector.is_connected(peer) else Connection.CAN_CONNECT
        return PeerEntry(peer.to_bytes(), tuple(a.raw for a in addrs), connection)

    def _self_entry(self) -> PeerEntry:
        return PeerEntry(self.local.to_bytes(), tuple(a.raw for a in self.usable(self._local_addrs())))

    def _closer_entries(self, key: bytes, requester: ID) -> list[PeerEntry]:
        """Up to k table entries nearest to ``key``, excluding the requester, with their addresses."""
        nearest = self.table.closest(kad_id(key), K, exclude=(requester.to_bytes(),))
        return [PeerEntry(e.peer, tuple(a.raw for a in e.addrs)) for e in nearest if e.addrs]

    def _admit(self, peer: ID, dialled: Sequence[DialAddr] = ()) -> None:
        """``peer`` answered us: into (or refreshed in) the table, with addresses others can dial."""
        if self.is_banned(peer):
            return
        addrs = self.usable([*self._peerstore_addrs(peer), *dialled])
        if not addrs and not self.usable(self._connection_addrs(peer)):
            return  # not in this DHT's scope
        self.table.add(peer.to_bytes(), addrs, trio.current_time())

    def _parse_peers(self, entries: Sequence[PeerEntry]) -> list[Found]:
        """Validated peers of a response (DHTProtocolError for a malformed peer ID), our own scope only."""
        found: list[Found] = []
        for entry in entries:
            peer = peer_id_from_bytes(entry.peer_id)
            addrs = [parse_dial_addr(raw, peer) for raw in entry.addrs]
            found.append(Found(peer, self.usable(a for a in addrs if a is not None)))
        return found

    # --- server ------------------------------------------------------------------------------

    async def _handle_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if self.is_banned(peer):
            await _reset(stream)
            return
        try:
            self._inbound.acquire_nowait()
        except trio.WouldBlock:
            self.stats.streams_refused += 1
            await _reset(stream)
            return
        try:
            await self._serve(peer, stream)
        except DHTProtocolError as exc:
            await _reset(stream)
            await self.drop(peer, exc)
        except Exception as exc:
            logger.debug("%s: inbound stream from %s failed: %r", self.name, peer, exc)
            await _reset(stream)
        finally:
            self._inbound.release()

    async def _serve(self, peer: ID, stream: INetStream) -> None:
        reader = FrameReader(self.limits.max_message_size)
        # One scope for the idle timeout, armed only while waiting for the next request.
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + STREAM_IDLE_TIMEOUT
                chunk = await _read(stream)
                idle.deadline = math.inf
                if not chunk:
                    if not reader.at_boundary():
                        raise DHTProtocolError(f"stream ended inside a message ({reader.buffered} bytes)")
                    break
                reader.feed(chunk)
                for body in reader.frames():
                    request = decode_message(body, self.limits)
                    self.stats.requests_in += 1
                    response = self.answer(peer, request)
                    if isinstance(response, Message):
                        await _write(stream, encode_frame(response))
                    elif response is False:
                        await _reset(stream)  # an invalid request: close without answering (the spec)
                        return
        await _close(stream)  # the peer closed its side, or was idle too long

    def answer(self, peer: ID, request: Message) -> Message | bool | None:
        """The answer to ``request``: a Message, None (no answer is sent) or False (reset the stream)."""
        kind = request.type
        if kind is MessageType.FIND_NODE:
            return self._answer_find_node(peer, request)
        if kind is MessageType.GET_PROVIDERS:
            return self._answer_get_providers(peer, request)
        if kind is MessageType.ADD_PROVIDER:
            return self._answer_add_provider(peer, request)
        if kind is MessageType.GET_VALUE:
            return self._answer_get_value(peer, request)
        if kind is MessageType.PUT_VALUE:
            return self._answer_put_value(peer, request)
        return Message(MessageType.PING, cluster_level=request.cluster_level)

    def _answer_find_node(self, peer: ID, request: Message) -> Message | bool:
        if not request.key:
            return False
        closer = self._closer_entries(request.key, peer)
        if request.key == self.local.to_bytes():
            closer = [self._self_entry()]  # Kubo's lookup check asks a peer for itself
        elif request.key != peer.to_bytes():
            # The target itself, when we know where it is, even if it is not a DHT server (the spec).
            try:
                target = ID(request.key)
                known = target in self.host.get_network().connections or target.to_bytes() in self.table
            except Exception:
                known = False
            if known and all(e.peer_id != request.key for e in closer):
                addrs = self._addrs_of(target)
                if addrs:
                    closer.insert(0, self._peer_entry(target, addrs))
        return Message(MessageType.FIND_NODE, closer_peers=closer, cluster_level=request.cluster_level)

    def _answer_get_providers(self, peer: ID, request: Message) -> Message | bool:
        key = request.key
        if not 0 < len(key) <= MAX_KEY_SIZE:
            return False
        providers: list[PeerEntry] = []
        for record in self.providers.get(key, MAX_PROVIDERS_SERVED):
            if record.peer == self.local.to_bytes():
                entry = self._self_entry()
                if entry.addrs:
                    providers.append(entry)
                continue
            try:
                provider = ID(record.peer)
            except Exception:
                continue
            stored = [parse_dial_addr(raw, provider) for raw in record.addrs]
            addrs = list(self.usable(a for a in stored if a is not None))
            if self.connector.is_connected(provider):
                addrs += [a for a in self.usable(self._peerstore_addrs(provider)) if a not in addrs]
            if addrs:
                providers.append(self._peer_entry(provider, addrs))
        return Message(
            MessageType.GET_PROVIDERS,
            key=key,
            closer_peers=self._closer_entries(key, peer),
            provider_peers=providers,
            cluster_level=request.cluster_level,
        )

    def _take_token(self, peer: ID) -> bool:
        now = trio.current_time()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = _Bucket(float(self.settings.add_provider_burst), now)
            self._buckets[peer] = bucket
            while len(self._buckets) > MAX_REMEMBERED_PEERS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(peer)
        rate, burst = self.settings.add_provider_rate, float(self.settings.add_provider_burst)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _answer_add_provider(self, peer: ID, request: Message) -> bool | None:
        key = request.key
        if not 0 < len(key) <= MAX_KEY_SIZE:
            return False
        if not self._take_token(peer):
            self.stats.add_provider_throttled += 1
            return None
        sender = peer.to_bytes()
        for entry in request.provider_peers:
            if entry.peer_id != sender:
                continue  # only the sender may announce itself (as Kubo: records are not signed)
            addrs = [parse_dial_addr(raw, peer) for raw in entry.addrs]
            usable = [a.raw for a in self.usable(a for a in addrs if a is not None)]
            if self.providers.add(key, sender, usable):
                self.stats.providers_stored += 1
            else:
                self.stats.providers_refused += 1
        return None

    def _answer_get_value(self, peer: ID, request: Message) -> Message | bool:
        if not request.key:
            return False
        record = self.records.get(request.key)
        return Message(
            MessageType.GET_VALUE,
            key=request.key,
            record=record,
            closer_peers=self._closer_entries(request.key, peer),
            cluster_level=request.cluster_level,
        )

    def _answer_put_value(self, peer: ID, request: Message) -> Message | bool:
        record = request.record
        if not request.key or record is None or record.key != request.key:
            return False
        try:
            self.records.put(record.key, record.value)
        except InvalidRecord as exc:
            logger.info("%s: refused a PUT_VALUE from %s: %s", self.name, peer, exc)
            return False
        # Echo the request, without any peer lists it carried (as Kubo does).
        return Message(
            MessageType.PUT_VALUE, key=request.key, record=record, cluster_level=request.cluster_level
        )

    # --- client: one request -------------------------------------------------------------------

    async def request(self, peer: ID, message: Message, addrs: Sequence[DialAddr] = ()) -> Message:
        """One request and its answer; RoutingError if unreachable, DHTProtocolError for garbage."""
        if self.is_banned(peer):
            raise RoutingError(f"{peer} is banned")
        self.stats.requests_out += 1
        try:
            answer = await self._connected_exchange(peer, message, addrs, expect_answer=True)
            assert answer is not None
            return answer
        except trio.TooSlowError:
            self.stats.requests_failed += 1
            raise RoutingError(
                f"{peer} did not answer {message.type.name} within {self.settings.request_timeout:g}s"
            ) from None
        except RoutingError:
            self.stats.requests_failed += 1
            raise

    async def send(
        self, peer: ID, message: Message, addrs: Sequence[DialAddr] = (), *, frame: bytes | None = None
    ) -> None:
        """Send a message that gets no answer (ADD_PROVIDER); ``frame``: the message already encoded."""
        self.stats.requests_out += 1
        try:
            await self._connected_exchange(peer, message, addrs, expect_answer=False, frame=frame)
        except trio.TooSlowError:
            self.stats.requests_failed += 1
            raise RoutingError(f"sending {message.type.name} to {peer} timed out") from None
        except RoutingError:
            self.stats.requests_failed += 1
            raise

    async def _connected_exchange(
        self,
        peer: ID,
        message: Message,
        addrs: Sequence[DialAddr],
        *,
        expect_answer: bool,
        frame: bytes | None = None,
    ) -> Message | None:
        for attempt in (1, 2):
            await self.connector.ensure(peer, addrs)
            try:
                with trio.fail_after(self.settings.request_timeout):
                    return await self._exchange(peer, message, expect_answer=expect_answer, frame=frame)
            except _NoStream:
                # A connection that was closing when we used it: dial again once, if we can.
                if attempt == 2 or self.connector.is_connected(peer) or not addrs:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(
        self, peer: ID, message: Message, *, expect_answer: bool, frame: bytes | None = None
    ) -> Message | None:
        """One request on a stream of the pool (a fresh one if a reused stream turns out dead)."""
        frame = frame if frame is not None else encode_frame(message)
        reused = self.streams.take(peer)
        if reused is not None:
            try:
                return await self._exchange_on(peer, reused, message, frame, expect_answer=expect_answer)
            except _StaleStream:
                pass  # the peer closed its end while the stream sat idle: a fresh one
        stream, lazy = await self._new_stream(peer)
        self.stats.streams_opened += 1
        try:
            return await self._exchange_on(
                peer, stream, message, frame, expect_answer=expect_answer, lazy=lazy
            )
        except _StaleStream as exc:
            raise RoutingError(f"{peer} closed a new stream at once: {exc}") from None

    async def _new_stream(self, peer: ID) -> tuple[INetStream, bool]:
        """A new stream of our protocol to ``peer``, and whether its negotiation is still to be done
        lazily (with the first message): for a peer whose identify listed the protocol, as go-libp2p
        does, which spares the two round trips of py-libp2p's negotiation before the request."""
        try:
            known = self.protocol in self.host.get_peerstore().get_protocols(peer)
        except Exception:
            known = False
        try:
            if known:
                stream = await self.host.get_network().new_stream(peer)
                if _yamux(stream) is not None:
                    stream.set_protocol(TProtocol(self.protocol))
                    return stream, True
                await _reset(stream)
            return await self.host.new_stream(peer, [TProtocol(self.protocol)]), False
        except Exception as exc:
            raise _NoStream(f"cannot open a {self.protocol} stream to {peer}: {exc}") from None

    async def _exchange_on(
        self,
        peer: ID,
        stream: INetStream,
        message: Message,
        frame: bytes,
        *,
        expect_answer: bool,
        lazy: bool = False,
    ) -> Message | None:
        """Write ``message`` (encoded: ``frame``) on ``stream`` and read its answer; the stream goes
        back to the pool. ``lazy``: a new stream, negotiated along with this first message."""
        sent = False
        try:
            try:
                await _write(stream, lazy_select(self.protocol) + frame if lazy else frame)
            except Exception as exc:
                raise _StaleStream(repr(exc)) from None
            sent = True
            if lazy:
                muxed = _yamux(stream)
                assert muxed is not None  # _new_stream makes lazy ones on Yamux only
                try:
                    await expect_selected(muxed, self.protocol)
                except MultiselectError as exc:
                    raise _NoStream(f"{peer} refused {self.protocol}: {exc}") from None
            if not expect_answer:
                self.streams.give_back(peer, stream)
                return None
            reader = FrameReader(self.limits.max_message_size)
            while True:
                chunk = await _read(stream)
                if not chunk:
                    if reader.at_boundary():
                        raise _StaleStream("end of stream before the answer")
                    raise DHTProtocolError(f"{peer} closed the stream in its answer to {message.type.name}")
                reader.feed(chunk)
                for body in reader.frames():
                    answer = decode_message(body, self.limits)
                    if answer.type is not message.type:
                        raise DHTProtocolError(f"{peer} answered {message.type.name} with {answer.type.name}")
                    if reader.at_boundary():
                        self.streams.give_back(peer, stream)
                    else:
                        raise DHTProtocolError(f"{peer} sent more than the answer to {message.type.name}")
                    return answer
        except BaseException as exc:
            await _reset(stream)
            if isinstance(exc, DHTProtocolError | trio.Cancelled | RoutingError):
                raise
            if isinstance(exc, Exception):
                if not sent:
                    raise _StaleStream(repr(exc)) from None
                raise RoutingError(f"{message.type.name} to {peer} failed: {exc!r}") from None
            raise

    # --- client: lookups -----------------------------------------------------------------------

    async def lookup(
        self,
        key: bytes,
        request: Message,
        *,
        beta: int = 3,
        followup: bool = False,
        on_answer: Callable[[ID, Message], Awaitable[bool]] | None = None,
    ) -> Lookup:
        """Run an iterative lookup for ``key`` sending ``request`` to each peer.

        ``on_answer`` sees each answer after its peers are taken in; it returns True to end the
        lookup early. The lookup ends by ``lookup_timeout`` at the latest; its state is returned.
        """
        self.stats.lookups += 1
        target = kad_id(key)
        seeds = self.table.closest(target, K)
        known: dict[bytes, tuple[DialAddr, ...]] = {e.peer: tuple(e.addrs) for e in seeds}
        state = Lookup(
            target, [e.peer for e in seeds], local=self.local.to_bytes(), alpha=self.settings.alpha,
            beta=beta, followup=followup, trusted=[e.peer for e in seeds],
        )  # fmt: skip
        results_send, results_recv = trio.open_memory_channel[tuple[bytes, list[Found] | None]](K * 4)

        async def ask(peer_bytes: bytes) -> None:
            peer = ID(peer_bytes)
            addrs = known.get(peer_bytes, ())
            found: list[Found] | None = None
            try:
                answer = await self.request(peer, request, addrs)
                found = self._parse_peers(answer.closer_peers)  # one Found per entry
                self._admit(peer, addrs)
                if on_answer is not None and await on_answer(peer, answer):
                    state.stop()
            except DHTProtocolError as exc:
                await self.drop(peer, exc)
            except RoutingError as exc:
                logger.debug("%s lookup: %s", self.name, exc)
                self.table.failed(peer_bytes)
            await results_send.send((peer_bytes, found))

        with trio.move_on_after(self.settings.lookup_timeout):
            async with trio.open_nursery() as nursery:
                while True:
                    for peer_bytes in state.next_queries():
                        nursery.start_soon(ask, peer_bytes)
                    if state.done:
                        break
                    peer_bytes, found = await results_recv.receive()
                    if found is None:
                        state.failed(peer_bytes)
                        continue
                    heard: list[bytes] = []
                    state.trust(p.peer.to_bytes() for p in found if p.peer.to_bytes() in self.table)
                    for item in found:
                        raw = item.peer.to_bytes()
                        if raw == self.local.to_bytes() or self.is_banned(item.peer):
                            continue
                        if not item.addrs and not self.connector.is_connected(item.peer):
                            continue  # nothing we could dial in this DHT's scope
                        if item.addrs and raw not in known:
                            known[raw] = item.addrs
                        heard.append(raw)
                    state.responded(peer_bytes, heard, named=len(found))
                nursery.cancel_scope.cancel()
        return state

    async def closest_peers(self, key: bytes) -> list[tuple[ID, tuple[DialAddr, ...]]]:
        """The k closest DHT servers to ``key`` that answered (a FIND_NODE lookup with the follow-up),
        nearest first.

        On a DHT of fewer than k servers (a fleet, an edge site) that is all of them, whatever the
        key: a lookup that saw the whole network (:attr:`Lookup.saw_whole_network`) stands for the
        next ones for ``WHOLE_NETWORK_FOR`` seconds, or until the routing table holds a peer it did
        not see, so that the announcements of a push, or a reprovide of many keys, do not each walk
        the same few peers again.
        """
        target = kad_id(key)
        whole = self._whole_network_peers()
        if whole is not None:
            self.stats.lookups_spared += 1
            return sorted(whole, key=lambda item: kad_id(item[0].to_bytes()) ^ target)
        state = await self.lookup(key, Message(MessageType.FIND_NODE, key=key), followup=True)
        closest = [(ID(p), self._addrs_of(ID(p))) for p in state.closest()]
        if state.saw_whole_network:
            self._whole_network = (trio.current_time(), closest)
        return closest

    def whole_network_size(self) -> int | None:
        """How many servers the DHT is known to have besides this node, if a lookup saw them all."""
        whole = self._whole_network_peers()
        return None if whole is None else len(whole)

    def _whole_network_peers(self) -> list[tuple[ID, tuple[DialAddr, ...]]] | None:
        """What the last lookup that saw the whole network found, while it stands for every key."""
        if self._whole_network is None:
            return None
        when, peers = self._whole_network
        seen = {peer.to_bytes() for peer, _ in peers}
        if trio.current_time() - when >= WHOLE_NETWORK_FOR or any(
            entry.peer not in seen for entry in self.table.entries()
        ):
            self._whole_network = None  # out of date, or the network grew: look again
            return None
        return [(peer, addrs) for peer, addrs in peers if not self.is_banned(peer)]

    async def find_providers(self, key: bytes, sink: ProviderSink) -> None:
        """Feed ``sink`` each provider of ``key`` until it has enough or the lookup ends."""

        async def on_answer(peer: ID, answer: Message) -> bool:
            enough = False
            for item in self._parse_peers(answer.provider_peers)[:MAX_PROVIDERS_PER_ANSWER]:
                addrs = item.addrs or self._addrs_of(item.peer)
                if sink(Found(item.peer, addrs)):
                    enough = True
            return enough

        # With the follow-up, as Kubo: every one of the k nearest live peers is asked, not only the
        # first three to answer (a live provider's record may sit with a slower one).
        await self.lookup(
            key, Message(MessageType.GET_PROVIDERS, key=key), followup=True, on_answer=on_answer
        )

    def announce_now(self, keys: Sequence[bytes]) -> dict[bytes, set[ID]]:
        """ADD_PROVIDER for each of ``keys`` to the routing table's k peers nearest to it, queued at
        once without waiting: key -> the peers it was queued to.

        For the task that has just committed content (no await: nothing it does next, such as
        answering its HTTP request, comes first). Peers with an idle pooled stream are told every
        key in one write, which the connection's flusher sends at the next scheduling round; those
        are returned, and :meth:`provide` later skips them (the lookup and its second wave still
        run there). A connected peer without one (a quiet node's streams have expired) is sent the
        same write on a new stream by a task started here, its negotiation riding along; it is not
        counted as told, so provide() tells it again if that failed (a duplicate record is harmless).
        """
        me = self._self_entry()
        if not me.addrs or not keys:
            return {}
        frames: dict[bytes, list[tuple[bytes, bytes]]] = {}  # peer -> (key, frame), in key order
        for key in keys:
            frame = encode_frame(Message(MessageType.ADD_PROVIDER, key=key, provider_peers=[me]))
            for entry in self.table.closest(kad_id(key), K):
                frames.setdefault(entry.peer, []).append((key, frame))
        told: dict[bytes, set[ID]] = {}
        # What the flushers sent meanwhile needs no send_announced (a node nobody awaits it on, such
        # as a pull-through mirror's, keeps only what is still queued).
        for conn in [c for c in self._unsent if not c.has_queued]:
            del self._unsent[conn]
        for raw, items in frames.items():
            peer = ID(raw)
            if self.is_banned(peer) or not self.connector.is_connected(peer):
                continue
            stream = self.streams.take(peer)
            if stream is None:
                if self._nursery is not None:
                    self._nursery.start_soon(self._announce_on_new_stream, peer, [f for _, f in items])
                continue
            muxed = _yamux(stream)
            queued = muxed is not None and muxed.write_nowait(b"".join(frame for _, frame in items))
            self.streams.give_back(peer, stream)  # a dead one is dropped by the next take()
            if not queued:
                continue
            assert muxed is not None
            self._unsent.setdefault(muxed.conn, set()).update(k for k, _ in items)
            self.stats.requests_out += len(items)
            for key, _ in items:
                told.setdefault(key, set()).add(peer)
        now = trio.current_time()
        for key, peers in told.items():
            earlier = self._told_early.pop(key, None)
            if earlier is not None and now - earlier[0] < TOLD_EARLY_FOR:
                peers = peers | earlier[1]
            self._told_early[key] = (now, peers)
        while len(self._told_early) > MAX_TOLD_EARLY:
            self._told_early.popitem(last=False)  # forgotten: provide() only tells them again
        return told

    async def send_announced(self) -> None:
        """Write what :meth:`announce_now` queued, every connection at once, and return once it is
        written (``SEND_ANNOUNCED_WAIT`` at most: a peer that stopped reading holds up nobody).

        Without it the connections' flushers send it at the next scheduling round, which can come
        after the caller's next step: a registry answering 201 before its ADD_PROVIDERs left would
        let a client that asks a holder at once find nothing there yet.
        """
        unsent, self._unsent = self._unsent, {}
        if not unsent or self._nursery is None:
            return
        left = len(unsent)
        written = trio.Event()

        async def flush(conn: YamuxConn, keys: set[bytes]) -> None:
            nonlocal left
            try:
                if not await conn.flush():  # the peer did not get them: provide() tells it again
                    for key in keys:
                        told = self._told_early.get(key)
                        if told is not None:
                            told[1].discard(conn.peer_id)
            finally:
                left -= 1
                if left == 0:
                    written.set()

        # In the DHT's tasks: a write is shielded (half a frame would corrupt the connection) and may
        # stall until Yamux gives the connection up; the caller waits for it only so long.
        for conn, keys in unsent.items():
            self._nursery.start_soon(flush, conn, keys)
        with trio.move_on_after(SEND_ANNOUNCED_WAIT):
            await written.wait()

    async def _announce_on_new_stream(self, peer: ID, frames: list[bytes]) -> None:
        try:
            await self.send(peer, Message(MessageType.ADD_PROVIDER), frame=b"".join(frames))
        except (RoutingError, DHTProtocolError) as exc:
            logger.debug("%s: early ADD_PROVIDER to %s failed: %s", self.name, peer, exc)
        else:
            self.stats.requests_out += len(frames) - 1  # send() counted one

    async def provide(self, key: bytes) -> int:
        """Announce ourselves as a provider of ``key`` to its k closest peers; returns how many took it.

        In two waves: at once to the k peers of our routing table nearest to the key (no lookup to
        wait for: on a small network, or near our own ID, they are the closest; elsewhere they lie
        on the paths other lookups take), then, after the lookup, to any of the k closest peers the
        first wave missed. Peers that :meth:`announce_now` told already are not told again.
        """
        when, early = self._told_early.pop(key, (0.0, set()))
        if trio.current_time() - when >= TOLD_EARLY_FOR:
            early = set()
        me = self._self_entry()
        if not me.addrs:
            return 0  # no address in this DHT's scope: nobody here could reach us
        message = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=[me])
        frame = encode_frame(message)  # the same bytes to every peer
        told: set[ID] = set(early)
        asked: set[ID] = set(early)

        async def tell(peer: ID, addrs: tuple[DialAddr, ...]) -> None:
            try:
                await self.send(peer, message, addrs, frame=frame)
                told.add(peer)
            except (RoutingError, DHTProtocolError) as exc:
                logger.debug("%s: ADD_PROVIDER to %s failed: %s", self.name, peer, exc)

        async with trio.open_nursery() as nursery:
            for entry in self.table.closest(kad_id(key), K):
                peer = ID(entry.peer)
                if peer not in asked:
                    asked.add(peer)
                    nursery.start_soon(tell, peer, tuple(entry.addrs))
        # The first wave is out before the lookup competes with it for the event loop.
        async with trio.open_nursery() as nursery:
            for peer, addrs in await self.closest_peers(key):
                if peer not in asked:
                    asked.add(peer)
                    nursery.start_soon(tell, peer, addrs)
        return len(told)

    async def find_peer(self, target: ID) -> tuple[DialAddr, ...]:
        """Addresses of ``target`` in this DHT's scope (empty if nobody knows it)."""
        found: list[DialAddr] = []

        async def on_answer(peer: ID, answer: Message) -> bool:
            for item in self._parse_peers(answer.closer_peers):
                if item.peer == target and item.addrs:
                    found.extend(a for a in item.addrs if a not in found)
                    return True
            return False

        request = Message(MessageType.FIND_NODE, key=target.to_bytes())
        await self.lookup(target.to_bytes(), request, followup=True, on_answer=on_answer)
        return tuple(found)

    async def put_value(self, key: bytes, record: Record) -> int:
        """Send a (validated) record to the k closest peers of ``key``; returns how many stored it."""
        peers = await self.closest_peers(key)
        message = Message(MessageType.PUT_VALUE, key=key, record=Record(record.key, record.value))
        stored = 0

        async def put(peer: ID, addrs: tuple[DialAddr, ...]) -> None:
            nonlocal stored
            try:
                await self.request(peer, message, addrs)
                stored += 1
            except DHTProtocolError as exc:
                await self.drop(peer, exc)
            except RoutingError as exc:
                logger.debug("%s: PUT_VALUE to %s failed: %s", self.name, peer, exc)

        async with trio.open_nursery() as nursery:
            for peer, addrs in peers:
                nursery.start_soon(put, peer, addrs)
        return stored

    async def get_values(
        self, key: bytes, accept: Callable[[bytes], bool], quorum: int
    ) -> list[tuple[ID, bytes | None]]:
        """(peer, value) from every peer asked during a GET_VALUE lookup; a value only if ``accept`` took it.

        The lookup ends early once ``quorum`` peers gave an accepted value.
        """
        answers: list[tuple[ID, bytes | None]] = []
        accepted = 0

        async def on_answer(peer: ID, answer: Message) -> bool:
            nonlocal accepted
            record = answer.record
            value = (
                record.value if record is not None and record.key == key and accept(record.value) else None
            )
            answers.append((peer, value))
            if value is not None:
                accepted += 1
            return accepted >= quorum

        await self.lookup(key, Message(MessageType.GET_VALUE, key=key), followup=True, on_answer=on_answer)
        return answers

    # --- routing table maintenance ------------------------------------------------------------

    def _queue_probe(self, peer: ID) -> None:
        with contextlib.suppress(trio.WouldBlock):
            self._probe_send.send_nowait(peer)

    async def _probe_worker(self) -> None:
        async for peer in self._probe_recv:
            if peer in self._probing or peer == self.local:
                continue
            self._probing.add(peer)
            try:
                await self._probe(peer)
            finally:
                self._probing.discard(peer)

    async def _probe(self, peer: ID) -> None:
        """Kubo's lookup check: a connected peer that serves the protocol answers FIND_NODE for itself."""
        raw = peer.to_bytes()
        if self.is_banned(peer) or not self.table.has_room_for(raw):
            return
        peerstore = self.host.get_peerstore()
        with trio.move_on_after(IDENTIFY_WAIT):
            while True:
                try:
                    protocols = peerstore.get_protocols(peer)
                except Exception:
                    protocols = []
                if protocols:
                    break
                await trio.sleep(0.05)
        if protocols and self.protocol not in protocols:
            return
        if not self.connector.is_connected(peer):
            return
        scoped = self.usable([*self._connection_addrs(peer), *self._peerstore_addrs(peer)])
        if not scoped:
            return
        try:
            answer = await self.request(peer, Message(MessageType.FIND_NODE, key=raw))
            found = self._parse_peers(answer.closer_peers)
        except DHTProtocolError as exc:
            await self.drop(peer, exc)
            return
        except RoutingError as exc:
            logger.debug("%s: %s is not a usable DHT server: %s", self.name, peer, exc)
            return
        if found:
            self._admit(peer)

    async def refresh(self) -> None:
        """Re-check stale entries, fill buckets by looking up random keys in them, then look up ourselves."""
        now = trio.current_time()
        stale = self.table.stale(now - STALE_AFTER)

        async def check(peer: bytes, addrs: list[DialAddr]) -> None:
            try:
                await self.request(ID(peer), Message(MessageType.FIND_NODE, key=peer), addrs)
                self.table.add(peer, addrs, trio.current_time())
            except DHTProtocolError as exc:
                await self.drop(ID(peer), exc)
            except RoutingError:
                self.table.failed(peer)

        async with trio.open_nursery() as nursery:
            for entry in stale:
                nursery.start_soon(check, entry.peer, list(entry.addrs))
        if len(self.table):
            top = min(self.table.highest_nonempty_bucket(), MAX_REFRESH_CPL)
            sizes = self.table.bucket_sizes()
            for cpl in range(top + 1):
                if sizes.get(cpl, 0) < K:
                    key = random_key_with_prefix(self.table.local_kad, cpl)
                    await self.lookup(key, Message(MessageType.FIND_NODE, key=key))
        await self.lookup(self.local.to_bytes(), Message(MessageType.FIND_NODE, key=self.local.to_bytes()))
        self.last_refresh = trio.current_time()

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.refresh_interval)
            try:
                await self.refresh()
            except Exception:
                logger.exception("%s: routing table refresh failed", self.name)
