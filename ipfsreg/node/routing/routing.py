"""Content and peer routing for the node: the LAN and public DHTs side by side, stores, provide queue.

As Kubo's dual DHT: the LAN DHT (``/ipfs/lan/kad/1.0.0``, server mode unless the node is a
client) and the public one (``/ipfs/kad/1.0.0``, server mode when the node has a public address
or ``mode = "server"``) share one provider store and one record store. Writes (provide, put)
go to both; reads (find providers, find peer, get value) ask both at once, with any configured
content routers (e.g. Routing V1 HTTP endpoints: objects with ``find_providers(cid, limit)``),
and take what comes first. Every read ends by ``lookup_timeout``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.node.errors import InvalidRecord, NodeError, RecordNotFound, RoutingError
from ipfsreg.node.host import connect, host_listen_addrs
from ipfsreg.node.routing.addrs import DialAddr, Scope, dial_addr_of
from ipfsreg.node.routing.dht import Connector, Found, KademliaDHT
from ipfsreg.node.routing.message import PROTOCOL_AMINO, PROTOCOL_LAN, Message, MessageType, Record
from ipfsreg.node.routing.provide import ProvideQueue, QueueStat
from ipfsreg.node.routing.providers import ProviderStore
from ipfsreg.node.routing.records import RecordStore, Validator, Validators
from ipfsreg.node.routing.settings import RoutingSettings

logger = logging.getLogger(__name__)

VALUE_QUORUM = 16  # the spec's quorum for IPNS lookups
BOOTSTRAP_WAIT = 5.0  # seconds the first refresh waits for bootstrap peers to be admitted
# Keys of one commit told to the nearest peers at once (Routing.provide); a larger batch (an import)
# goes through the provide queue beyond these.
ANNOUNCE_NOW_KEYS = 16


@dataclass(frozen=True)
class ProviderInfo:
    """A provider of some content: its peer ID and the multiaddrs (without /p2p) to reach it."""

    peer_id: str
    addrs: list[str]


class ContentRouter(Protocol):
    """Another source of providers, asked in parallel with the DHTs: the Routing V1 HTTP routers
    (``HttpRouters`` of ``http_client.py``) have this shape."""

    async def providers_into(
        self, cid: CID, send: trio.MemorySendChannel[Any], *, limit: int = 20
    ) -> None: ...  # sends items with .peer_id and .addrs, then closes ``send``


@dataclass(frozen=True)
class DHTStat:
    protocol: str
    server: bool
    routing_table_size: int
    requests_in: int
    requests_out: int
    violations: int
    last_refresh: float | None  # trio clock
    # Servers a lookup found to be the whole DHT (fewer than k: see Lookup.saw_whole_network), while
    # that stands for the next announcements; None when it is not known to be that small.
    whole_network: int | None = None


@dataclass(frozen=True)
class RoutingStat:
    dhts: list[DHTStat]
    provider_records: int
    value_records: int
    provide_queue: QueueStat


def _local_dial_addrs(host: IHost) -> list[DialAddr]:
    addrs: list[DialAddr] = []
    for text in host_listen_addrs(host):
        head, _, _ = text.partition("/p2p/")
        parsed = dial_addr_of(Multiaddr(head))
        if parsed is not None and parsed not in addrs:
            addrs.append(parsed)
    return addrs


class Routing:
    def __init__(
        self,
        host: IHost,
        datastore: Datastore,
        settings: RoutingSettings,
        *,
        validators: Mapping[str, Validator] | None = None,
        content_routers: Sequence[ContentRouter] = (),
    ) -> None:
        self.host = host
        self.datastore = datastore
        self.settings = settings
        self.validators = Validators(validators)
        self.content_routers = list(content_routers)
        self.providers = ProviderStore(
            datastore, ttl=settings.provider_record_ttl, max_records=settings.max_provider_records
        )
        self.records = RecordStore(datastore, self.validators, max_records=settings.max_value_records)
        self.connector = Connector(host, settings.dial_timeout)
        self.queue = ProvideQueue(
            datastore,
            self.provide_now,
            strategy=settings.provide_strategy,
            reprovide_interval=settings.reprovide_interval,
        )
        self.dhts: list[KademliaDHT] = []
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._joined = trio.Event()  # the first bootstrap has ended (joined, or gave up)
        self._local_addrs: tuple[float, list[DialAddr]] | None = None

    @property
    def local(self) -> ID:
        return self.host.get_id()

    def local_addrs(self) -> list[DialAddr]:
        """Our dialable listen addresses (looked up again at most once a second: every provide needs them)."""
        now = trio.current_time()
        if self._local_addrs is None or now - self._local_addrs[0] > 1.0:
            self._local_addrs = (now, _local_dial_addrs(self.host))
        return list(self._local_addrs[1])

    def _build_dhts(self) -> list[KademliaDHT]:
        mode = self.settings.mode
        public = any(a.scope is Scope.PUBLIC for a in self.local_addrs())
        dhts = []
        for enabled, protocol, lan in (
            (self.settings.lan_dht, PROTOCOL_LAN, True),
            (self.settings.wan_dht, PROTOCOL_AMINO, False),
        ):
            if not enabled:
                continue
            server = mode == "server" or (mode == "auto" and (lan or public))
            dhts.append(
                KademliaDHT(
                    self.host,
                    protocol=protocol,
                    lan=lan,
                    server=server,
                    settings=self.settings,
                    providers=self.providers,
                    records=self.records,
                    connector=self.connector,
                    local_addrs=self.local_addrs,
                )
            )
        return dhts

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run both DHTs, join through the bootstrap peers, announce and reprovide; until cancelled."""
        self.dhts = self._build_dhts()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for dht in self.dhts:
                    await nursery.start(dht.run)
                await nursery.start(self.queue.run)
                nursery.start_soon(self._expire_loop)
                nursery.start_soon(self.bootstrap)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            self._nursery = None

    async def bootstrap(self) -> None:
        """Connect to the bootstrap peers, then fill the routing tables (a self lookup per DHT).

        Lookups started meanwhile wait until a bootstrap peer is in a routing table (at most
        ``BOOTSTRAP_WAIT``), not for the refresh lookups that follow.
        """
        try:
            addrs = self.settings.bootstrap_addrs()
            if addrs:
                async with trio.open_nursery() as nursery:
                    for addr in addrs:
                        nursery.start_soon(self._connect_bootstrap, addr)
                with trio.move_on_after(BOOTSTRAP_WAIT):
                    while not any(len(d.table) for d in self.dhts):  # noqa: ASYNC110 - probes fill them
                        await trio.sleep(0.05)
        finally:
            self._joined.set()
        for dht in self.dhts:
            if len(dht.table):
                try:
                    await dht.refresh()
                except Exception:
                    logger.exception("routing: the first refresh of the %s failed", dht.name)

    async def _wait_joined(self) -> None:
        with trio.move_on_after(BOOTSTRAP_WAIT + self.settings.dial_timeout):
            await self._joined.wait()

    async def _connect_bootstrap(self, addr: str) -> None:
        targets = [addr]
        if "/dnsaddr/" in addr:
            targets = await _resolve_dnsaddr(addr)
        for target in targets:
            try:
                await connect(self.host, target, dial_timeout=self.settings.dial_timeout)
                logger.info("routing: connected to bootstrap peer %s", target)
                return
            except NodeError as exc:
                logger.warning("routing: bootstrap peer %s: %s", target, exc)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(3600.0)
            removed = await trio.to_thread.run_sync(self.providers.expire)
            if removed:
                logger.info("routing: %d expired provider records removed", removed)

    # --- content routing -----------------------------------------------------------------------

    def provide(self, cids: Sequence[CID]) -> None:
        """Announce ``cids`` (queued persistently, sent at once, reprovided until unprovided or gone)."""
        if self.settings.provide_strategy == "none" or not cids:
            return
        me = self.local.to_bytes()
        raw_addrs = [a.raw for a in self.local_addrs()]
        for cid in cids:
            self.providers.add(cid.multihash, me, raw_addrs, own=True)
        self.queue.enqueue(cids)
        if self._running:
            # The table's nearest peers are told now, ahead of the queue worker's announcement
            # (which still runs: the lookup, the peers without an idle stream, the retries).
            keys = list(dict.fromkeys(cid.multihash for cid in cids))[:ANNOUNCE_NOW_KEYS]
            for dht in self.dhts:
                try:
                    dht.announce_now(keys)
                except Exception:  # the queued announcement still goes out
                    logger.exception(
                        "routing: announcing %d keys at once on the %s failed", len(keys), dht.name
                    )

    async def send_announced(self) -> None:
        """Put the announcements :meth:`provide` queued on the wire (see
        :meth:`KademliaDHT.send_announced`): awaited before a commit is answered."""
        for dht in self.dhts:
            await dht.send_announced()

    def unprovide(self, cids: Sequence[CID]) -> None:
        me = self.local.to_bytes()
        for cid in cids:
            self.providers.remove(cid.multihash, me)
        self.queue.unprovide(cids)

    async def provide_now(self, cid: CID) -> int:
        """Announce one key on every DHT; returns how many peers took it in all."""
        await self._wait_joined()
        self.providers.add(
            cid.multihash, self.local.to_bytes(), [a.raw for a in self.local_addrs()], own=True
        )
        told = 0

        async def one(dht: KademliaDHT) -> None:
            nonlocal told
            told += await dht.provide(cid.multihash)

        async with trio.open_nursery() as nursery:
            for dht in self.dhts:
                nursery.start_soon(one, dht)
        return told

    async def announce(self, cids: Sequence[CID]) -> dict[CID, int]:
        """Announce ``cids`` now and wait: CID -> peers that took it (0: queued to retry later)."""
        results: dict[CID, int] = {}

        async def one(cid: CID) -> None:
            results[cid] = await self.provide_now(cid)
            if results[cid] > 0:
                self.queue.mark_provided(cid)
            else:
                self.queue.enqueue([cid])

        async with trio.open_nursery() as nursery:
            for cid in dict.fromkeys(cids):
                nursery.start_soon(one, cid)
        return results

    async def find_providers(self, cid: CID, limit: int = 20) -> AsyncIterator[ProviderInfo]:
        """Providers of ``cid`` (other than this node) as they are found, at most ``limit``.

        Sources, all at once: the local provider store, each DHT's lookup, the content routers.
        Ends when ``limit`` were found or every source is done (``lookup_timeout`` at the latest).
        """
        if self._nursery is None:
            raise RoutingError("routing is not running")
        send, receive = trio.open_memory_channel[ProviderInfo](math.inf)
        seen: set[str] = {self.local.to_base58()}
        scope = trio.CancelScope()

        def emit(info: ProviderInfo) -> bool:
            """Pass a new provider on; True once ``limit`` have been."""
            if info.peer_id in seen or len(seen) > limit:
                return len(seen) > limit
            seen.add(info.peer_id)
            try:
                send.send_nowait(info)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                scope.cancel()  # the reader went away
                return True
            if len(seen) > limit:
                scope.cancel()
                return True
            return False

        def emit_found(found: Found) -> bool:
            return emit(ProviderInfo(found.peer.to_base58(), [str(a) for a in found.addrs]))

        async def search() -> None:
            async with send:
                with scope:
                    for record in self.providers.get(cid.multihash, limit + 1):
                        addrs = [str(Multiaddr(a)) for a in record.addrs]
                        if emit(ProviderInfo(ID(record.peer).to_base58(), addrs)):
                            return
                    async with trio.open_nursery() as nursery:
                        for router in self.content_routers:
                            nursery.start_soon(self._ask_router, router, cid, limit, emit)
                        await self._wait_joined()
                        with trio.move_on_after(self.settings.lookup_timeout):
                            async with trio.open_nursery() as lookups:
                                for dht in self.dhts:
                                    lookups.start_soon(dht.find_providers, cid.multihash, emit_found)

        self._nursery.start_soon(search)
        async with receive:
            async for info in receive:
                yield info

    def add_content_router(self, router: ContentRouter) -> None:
        """Ask ``router`` too from now on (the app adds the HTTP routers once their client is open)."""
        self.content_routers.append(router)

    async def _ask_router(
        self, router: ContentRouter, cid: CID, limit: int, emit: Callable[[ProviderInfo], bool]
    ) -> None:
        send, receive = trio.open_memory_channel[Any](limit)
        try:
            with trio.move_on_after(self.settings.lookup_timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(router.providers_into, cid, send, limit=limit))
                    async with receive:
                        async for found in receive:
                            if emit(ProviderInfo(str(found.peer_id), [str(a) for a in found.addrs])):
                                nursery.cancel_scope.cancel()
                                return
        except Exception as exc:
            logger.info("routing: content router %r failed for %s: %r", router, cid, exc)

    # --- peer routing --------------------------------------------------------------------------

    async def find_peer(self, peer_id: str) -> list[str]:
        """Multiaddrs (without /p2p) of ``peer_id``: what identify said if connected, else what the DHTs
        know; [] if nobody does."""
        try:
            target = ID.from_base58(peer_id)
        except Exception:
            raise RoutingError(f"invalid peer ID {peer_id!r}") from None
        if self.connector.is_connected(target):
            try:
                known = self.host.get_peerstore().addrs(target)
            except Exception:
                known = []
            addrs = list(dict.fromkeys(str(d) for a in known if (d := dial_addr_of(a, target)) is not None))
            if addrs:
                return addrs
        found: list[str] = []
        await self._wait_joined()
        with trio.move_on_after(self.settings.lookup_timeout):
            async with trio.open_nursery() as nursery:

                async def one(dht: KademliaDHT) -> None:
                    for addr in await dht.find_peer(target):
                        if str(addr) not in found:
                            found.append(str(addr))
                    if found:
                        nursery.cancel_scope.cancel()

                for dht in self.dhts:
                    nursery.start_soon(one, dht)
        return found

    # --- values --------------------------------------------------------------------------------

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Validate, store here and on the k closest peers of every DHT; returns how many peers stored it."""
        self.validators.validate(key, value)
        self.records.put(key, value)
        await self._wait_joined()
        stored = 0

        async def one(dht: KademliaDHT) -> None:
            nonlocal stored
            stored += await dht.put_value(key, Record(key, value))

        with trio.move_on_after(self.settings.lookup_timeout * 2):
            async with trio.open_nursery() as nursery:
                for dht in self.dhts:
                    nursery.start_soon(one, dht)
        return stored

    async def get_value(self, key: bytes) -> bytes:
        """The best valid record for ``key`` among ours and the network's; RecordNotFound if none."""
        self.validators.check_namespace(key)
        candidates: list[bytes] = []
        local = self.records.get(key)
        if local is not None and self._valid(key, local.value):
            candidates.append(local.value)
        answers: list[tuple[KademliaDHT, ID, bytes | None]] = []
        await self._wait_joined()

        async def one(dht: KademliaDHT) -> None:
            for peer, value in await dht.get_values(key, lambda v: self._valid(key, v), VALUE_QUORUM):
                answers.append((dht, peer, value))

        with trio.move_on_after(self.settings.lookup_timeout):
            async with trio.open_nursery() as nursery:
                for dht in self.dhts:
                    nursery.start_soon(one, dht)
        candidates += [value for _, _, value in answers if value is not None]
        if not candidates:
            raise RecordNotFound(key, "the local store and the DHT have none")
        best = candidates[self.validators.select(key, candidates)]
        await self._correct(key, best, answers)
        return best

    def _valid(self, key: bytes, value: bytes) -> bool:
        try:
            self.validators.validate(key, value)
        except InvalidRecord:
            return False
        return True

    async def _correct(
        self, key: bytes, best: bytes, answers: list[tuple[KademliaDHT, ID, bytes | None]]
    ) -> None:
        """Entry correction: send the best record to the peers that answered with an older one."""
        stale = [(dht, peer) for dht, peer, value in answers if value is not None and value != best]
        if not stale:
            return
        message = Message(MessageType.PUT_VALUE, key=key, record=Record(key, best))

        async def fix(dht: KademliaDHT, peer: ID) -> None:
            try:
                await dht.request(peer, message)
            except Exception as exc:
                logger.debug("routing: correcting %s at %s failed: %r", key[:40], peer, exc)

        with trio.move_on_after(self.settings.request_timeout):
            async with trio.open_nursery() as nursery:
                for dht, peer in stale:
                    nursery.start_soon(fix, dht, peer)

    # --- status --------------------------------------------------------------------------------

    def stat(self) -> RoutingStat:
        return RoutingStat(
            dhts=[
                DHTStat(
                    d.protocol,
                    d.server,
                    len(d.table),
                    d.stats.requests_in,
                    d.stats.requests_out,
                    d.stats.violations,
                    d.last_refresh,
                    d.whole_network_size(),
                )
                for d in self.dhts
            ],
            provider_records=len(self.providers),
            value_records=len(self.records),
            provide_queue=self.queue.stat(),
        )


async def _resolve_dnsaddr(addr: str) -> list[str]:
    """/dnsaddr/... -> the multiaddrs its TXT records name (only used for the ``amino`` preset)."""
    try:
        from multiaddr.resolvers import DNSResolver

        resolved = await DNSResolver().resolve(Multiaddr(addr))
    except Exception as exc:
        logger.warning("routing: cannot resolve %s: %r", addr, exc)
        return []
    peer = addr.rsplit("/p2p/", 1)[-1]
    return [str(a) for a in resolved if str(a).endswith(f"/p2p/{peer}")]
