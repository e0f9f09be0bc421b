"""Tags on IPNS, the running part: publish a key's tag directory, republish it, resolve names, follow names.

- Publishing: a repository bound to a key (``ipfsreg name bind`` or an ``[[ipns.bind]]`` rule) gets, on
  every tag push or delete (the registry calls :meth:`IpnsService.notify_tags_changed`), a new record of
  that key whose value is the key's tag directory (see ``tagdir``): sequence + 1, EOL = now + lifetime.
  The record is stored locally first (the gateway serves it at once), the directory's root is provided
  (``on_committed``: the node's ``provide``, so resolvers find who holds the blocks), then the record is
  put to the routing system (``routing.py``: the DHT's PUT_VALUE under ``/ipns/<multihash>`` and the
  HTTP routers); the puts of one name run one at a time, and a record is not put once a newer one is
  signed, so no route is left holding an older record than the last one put. Every
  ``republish_interval`` every published name is signed again (sequence + 1, new EOL) and put again,
  so it never expires in the network; at start a record that old is signed again and every current
  one is put again; a record that no peer stored is put again after 30 s, 60 s, ...
- Resolving: the routing system's best record (``get_value``: the node's DHT and its HTTP routers) is
  verified here too, compared with the stored one and kept if better; a forged, expired or
  lower-sequence record never replaces a valid one, and when the network has none the stored record
  is used while it is valid. A name this node publishes resolves to its own record.
- Following: each ``[[ipns.follow]]`` name is resolved every ``poll`` seconds; every tag whose image CID
  changed is pulled whole (``ipfs/<cid>`` repository, and ``local:tag`` when configured).

The registry never speaks libp2p: it gets :class:`IpnsService` as a resolver (``resolve_image``).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.gateway.routes import SourceFactory, open_source
from ipfsreg.ipns import tagdir
from ipfsreg.ipns.keystore import Keystore, KeystoreError, NamedKey
from ipfsreg.ipns.record import (
    NANOSECONDS,
    InvalidRecord,
    IpnsError,
    IpnsName,
    IpnsRecord,
    NameNotFound,
    RecordExpired,
    compare,
    create_record,
    value_cid,
    verify_record,
)
from ipfsreg.ipns.routing import ValueRouting
from ipfsreg.ipns.settings import FollowRule, IpnsSettings
from ipfsreg.ipns.store import IpnsStore
from ipfsreg.unixfs.exporter import BlockSource

log = logging.getLogger(__name__)

CIDsStored = Callable[[list[CID]], None]
RECENT_IMAGES = 16  # images remembered per (name, repository) for pulls by digest
REROUTE_FIRST = 30.0  # seconds before a record that no peer stored is put again (then doubled)
REROUTE_CHECK = 5.0  # seconds between looks for such records


@dataclass
class Published:
    key: str
    name: IpnsName
    record: IpnsRecord
    repositories: list[str]
    skipped: list[str] = field(default_factory=list)
    routed: bool = False  # stored by at least one peer or router
    stored: int = 0  # how many peers and routers stored it
    route_error: str = ""


@dataclass
class FollowReport:
    name: IpnsName
    sequence: int
    pulled: list[str] = field(default_factory=list)  # repository:tag
    failed: list[str] = field(default_factory=list)


class IpnsService:
    def __init__(
        self,
        datastore: Datastore,
        registry: Any,  # a RegistryStore (untyped here: the registry imports ipns)
        keystore: Keystore,
        settings: IpnsSettings | None = None,
        *,
        routing: ValueRouting | None = None,
        source_factory: SourceFactory | None = None,
        on_blocks_stored: CIDsStored | None = None,
        on_committed: CIDsStored | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.datastore = datastore
        self.registry = registry
        self.keystore = keystore
        self.settings = settings if settings is not None else IpnsSettings()
        self.routing = routing
        self.source_factory = source_factory
        self.on_blocks_stored = on_blocks_stored
        self.on_committed = on_committed
        self.clock_ns = clock_ns
        self.store = IpnsStore(datastore)
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._publish_lock = trio.Lock()
        self._cache: dict[bytes, tuple[IpnsRecord, float]] = {}
        self._recent: dict[tuple[str, str], list[CID]] = {}  # (name, repository) -> images resolved last
        self._last_rejection: dict[bytes, str] = {}  # why the network's record of a name was refused
        self._unrouted: dict[str, tuple[float, float]] = {}  # key -> (when to put again, pause before)
        self._last_miss: dict[bytes, Exception] = {}  # why the network had no record of a name
        self._provided_roots: dict[bytes, CID] = {}  # followed name -> the tag directory provided last
        self._route_locks: dict[bytes, trio.Lock] = {}  # own name -> held while one of its records is put

    # --- bindings ------------------------------------------------------------------------------

    def key_for(self, repository: str) -> str | None:
        """The key a repository's tags are published under: its ``name bind``, else the first rule."""
        bound = self.store.bound().get(repository)
        if bound is not None:
            return bound
        for rule in self.settings.bind:
            if fnmatch.fnmatchcase(repository, rule.repository):
                return rule.key
        return None

    def bind(self, repository: str, key: str) -> NamedKey:
        from ipfsreg.registry.names import check_name

        check_name(repository)
        if repository.startswith(("ipfs/", "ipns/")):
            raise IpnsError(f"{repository} is a read-only repository and cannot be published")
        named = self.keystore.get(key)
        self.store.bind(repository, key)
        self.notify_tags_changed(repository)
        return named

    def unbind(self, repository: str) -> str:
        key = self.store.bound().get(repository)
        if key is None or not self.store.unbind(repository):
            raise IpnsError(f"{repository} is not bound to a key")
        self._dirty.add(key)
        self._wake.set()
        return key

    def bindings(self) -> list[dict[str, str]]:
        """Every repository with tags or a binding, and the key it publishes under."""
        out = [
            {"repository": repo, "key": key, "from": "bind"}
            for repo, key in sorted(self.store.bound().items())
        ]
        listed = {row["repository"] for row in out}
        for image in self.registry.images():
            if image.name in listed:
                continue
            listed.add(image.name)
            key = self.key_for(image.name)
            if key is not None:
                out.append({"repository": image.name, "key": key, "from": "config"})
        return out

    def _repositories_of(self, key: str) -> list[str]:
        names = {image.name for image in self.registry.images()} | set(self.store.bound())
        return sorted(repo for repo in names if self.key_for(repo) == key)

    def bound_keys(self) -> list[str]:
        keys = set(self.store.bound().values())
        for image in self.registry.images():
            key = self.key_for(image.name)
            if key is not None:
                keys.add(key)
        return sorted(keys)

    # --- publishing ----------------------------------------------------------------------------

    def notify_tags_changed(self, repository: str) -> None:
        """Called by the registry (on the trio thread) when a tag of ``repository`` moved or went away."""
        key = self.key_for(repository)
        if key is not None:
            self._dirty.add(key)
            self._wake.set()

    async def _tag_directory(self, repositories: Sequence[str]) -> tagdir.TagDirectory:
        wanted = set(repositories)
        images: dict[str, dict[str, tagdir.TagImage]] = {repo: {} for repo in repositories}
        local = self.registry.local_source
        for image in self.registry.images():
            if image.name in wanted:
                images[image.name][image.tag] = tagdir.TagImage(
                    image.cid, await tagdir.dag_size(local, image.cid)
                )
        return tagdir.build_tag_directory(images)

    async def publish(self, key_name: str, *, republish: bool = False, reroute: bool = False) -> Published:
        """Sign a new record of ``key_name``'s tag directory if it changed, if ``republish``, or if the
        current record is older than ``republish_interval``; then announce its root (``on_committed``)
        and put the record to the routing system. An unchanged, recent record is put again only when
        ``reroute`` (at start, or when no peer stored it)."""
        async with self._publish_lock:
            key = self.keystore.get(key_name)
            name = key.ipns_name
            repositories = self._repositories_of(key_name)
            directory = await self._tag_directory(repositories)
            if directory.skipped:
                log.warning(
                    "ipns: %s leaves out %s: a tag has the same name", name, ", ".join(directory.skipped)
                )
            value = f"/ipfs/{directory.root}"
            current = self.store.record(name)
            if current is None:
                current = await self._network_record(name)
                if current is not None:
                    self.store.offer(name, current)  # the sequence to continue from
            now = self.clock_ns()
            if (
                current is not None
                and current.value_text == value
                and not republish
                and not current.expired(now)
                and not self._due(current, now)
            ):
                published = Published(key_name, name, current, repositories, directory.skipped)
                if not reroute:
                    return published
                self._announce_root(directory.root)
            else:
                published = self._sign(key, value, current, directory, repositories, now)
                log.info("ipns: published %s seq %d -> %s", name, published.record.sequence, value)
        await self._route(published)
        return published

    def _sign(
        self,
        key: NamedKey,
        value: str,
        current: IpnsRecord | None,
        directory: tagdir.TagDirectory,
        repositories: list[str],
        now: int,
    ) -> Published:
        """Store the tag directory and a new record of it (sequence + 1, EOL = now + lifetime)."""
        with self.datastore.batch(sync=True) as batch:
            for block in directory.blocks:
                batch.put_block(block.cid, block.data, verify=False)
        self._announce([block.cid for block in directory.blocks])
        self._announce_root(directory.root)
        raw = create_record(
            key.private_key,
            value,
            0 if current is None else current.sequence + 1,
            now + int(self.settings.lifetime * NANOSECONDS),
            int(self.settings.ttl * NANOSECONDS),
            v1_compatible=self.settings.v1_compatible,
        )
        record = verify_record(raw, key.ipns_name, now_ns=now)
        self.store.offer(key.ipns_name, record)
        self._cache.pop(key.ipns_name.multihash, None)
        return Published(key.name, key.ipns_name, record, repositories, directory.skipped)

    def _due(self, record: IpnsRecord, now_ns: int) -> bool:
        """Whether ``record`` was signed ``republish_interval`` ago or more (judged by its EOL)."""
        left = (record.eol_ns - now_ns) / NANOSECONDS
        return left <= self.settings.lifetime - self.settings.republish_interval

    def _announce(self, cids: list[CID]) -> None:
        if self.on_blocks_stored is not None and cids:
            try:
                self.on_blocks_stored(cids)
            except Exception:
                log.exception("ipns: on_blocks_stored failed")

    def _announce_root(self, root: CID) -> None:
        """Provide the tag directory (``on_committed``: the node's ``provide``), so that a node that
        resolved the name finds who holds the blocks behind it, not only among its connected peers."""
        if self.on_committed is not None:
            try:
                self.on_committed([root])
            except Exception:
                log.exception("ipns: on_committed failed")

    async def _route(self, published: Published) -> None:
        if self.routing is None:
            published.route_error = "no routing system (DHT) in this node: the record is only local"
            return
        # The puts of one name never overlap and never go backwards: an HTTP router may keep whatever
        # was put last, so the put of seq N must have ended before seq N+1's starts, and seq N is not
        # put at all once N+1 is signed (its own put follows, or already ended).
        lock = self._route_locks.setdefault(published.name.multihash, trio.Lock())
        async with lock:
            newest = self.store.record(published.name)
            if newest is not None and compare(newest, published.record) > 0:
                published.route_error = (
                    f"not put: sequence {newest.sequence} was signed meanwhile and is put instead"
                )
                return
            await self._put(self.routing, published)

    async def _put(self, routing: ValueRouting, published: Published) -> None:
        try:
            with trio.fail_after(self.settings.resolve_timeout):
                published.stored = await routing.put_value(published.name.routing_key(), published.record.raw)
        except Exception as exc:  # the routing layer's errors are its own; the record stays local
            published.route_error = f"put_value failed: {exc or type(exc).__name__}"
        else:
            if published.stored > 0:
                published.routed = True
                self._unrouted.pop(published.key, None)
                return
            published.route_error = (
                "no DHT peer (or HTTP router) stored it: this node serves it to those who ask, and puts "
                "it again later"
            )
        _when, pause = self._unrouted.get(published.key, (0.0, REROUTE_FIRST / 2))
        pause = min(pause * 2, self.settings.republish_interval)
        self._unrouted[published.key] = (trio.current_time() + pause, pause)
        log.warning("ipns: could not route %s: %s", published.name, published.route_error)

    async def _network_record(self, name: IpnsName) -> IpnsRecord | None:
        """The routing system's valid record of ``name``, or None (not found, invalid or no routing)."""
        if self.routing is None:
            return None
        try:
            with trio.fail_after(self.settings.resolve_timeout):
                raw = await self.routing.get_value(name.routing_key())
        except InvalidRecord as exc:  # only invalid records were found: say why they were refused
            log.warning("ipns: rejected the routing system's record of %s: %s", name, exc)
            self._last_rejection[name.multihash] = str(exc)
            return None
        except Exception as exc:  # not found, timed out, or the routing layer failed
            log.info("ipns: no record of %s from the routing system: %s", name, exc or type(exc).__name__)
            self._last_miss[name.multihash] = exc
            return None
        try:
            return verify_record(raw, name, now_ns=self.clock_ns())
        except IpnsError as exc:
            log.warning("ipns: rejected a record of %s from the routing system: %s", name, exc)
            self._last_rejection[name.multihash] = str(exc)
            return None

    # --- resolving -----------------------------------------------------------------------------

    async def resolve(self, name: IpnsName, *, fresh: bool = False) -> IpnsRecord:
        """The best valid record of ``name`` (see the module docstring); NameNotFound / RecordExpired."""
        now = self.clock_ns()
        cached = self._cache.get(name.multihash)
        if (
            cached is not None
            and not fresh
            and trio.current_time() < cached[1]
            and not cached[0].expired(now)
        ):
            return cached[0]
        if self.keystore.find(name) is not None:
            own = self.store.record(name)
            if own is not None and not own.expired(now):
                return own
        self._last_rejection.pop(name.multihash, None)
        self._last_miss.pop(name.multihash, None)
        found = await self._network_record(name)
        if found is not None:
            self.store.offer(name, found)
        stored = self.store.record(name)
        best = stored
        if found is not None and (best is None or compare(found, best) > 0):
            best = found
        if best is None:
            reason = self._last_rejection.get(name.multihash)
            if reason:
                raise InvalidRecord(f"no valid record of {name}: {reason}")
            miss = self._last_miss.pop(name.multihash, None)
            if isinstance(miss, NameNotFound):
                raise NameNotFound(str(miss))  # which routes were asked, and how those that failed did
            where = (
                "from the routing system" if self.routing is not None else "locally (this node has no DHT)"
            )
            detail = f" ({miss or type(miss).__name__})" if miss is not None else ""
            raise NameNotFound(f"no record of {name} found {where}{detail}")
        if best.expired(now):
            raise RecordExpired(f"the last known record of {name} expired at {best.validity.decode()}")
        ttl = min(best.ttl / NANOSECONDS, self.settings.ttl) if best.ttl else self.settings.ttl
        self._cache[name.multihash] = (best, trio.current_time() + ttl)
        return best

    async def _root(self, name: IpnsName, fresh: bool = False) -> CID:
        record = await self.resolve(name, fresh=fresh)
        root, path = value_cid(record)
        if path:
            async with self._source() as source:
                from ipfsreg.unixfs.exporter import resolve_path

                root = await resolve_path(source, root, path)
        return root

    def _source(self) -> AbstractAsyncContextManager[BlockSource]:
        factory: SourceFactory = self.source_factory or (lambda: self.registry.local_source)
        return open_source(factory)

    async def resolve_image(self, name: IpnsName, repository: str, tag: str) -> CID:
        """The image layout directory of ``repository:tag`` under ``name`` (IpnsError if it has none)."""
        root = await self._root(name)
        async with self._source() as source:
            image = await tagdir.resolve_tag(source, root, repository, tag)
        if image is None:
            raise IpnsError(f"{name} has no tag {repository}:{tag}")
        return image

    async def list_tags(self, name: IpnsName, repository: str) -> list[str]:
        root = await self._root(name)
        async with self._source() as source:
            images = await tagdir.list_images(source, root)
        return sorted(images.get(repository, {}))

    async def list_images(self, name: IpnsName, *, fresh: bool = False) -> dict[str, dict[str, CID]]:
        root = await self._root(name, fresh=fresh)
        async with self._source() as source:
            return await tagdir.list_images(source, root)

    # The registry's resolver interface (ipfsreg.registry.handlers.base.IpnsResolver): names as text.

    async def resolve_tag(self, name: str, repository: str, tag: str) -> CID:
        image = await self.resolve_image(IpnsName.parse(name), repository, tag)
        recent = self._recent.setdefault((name, repository), [])
        if image in recent:
            recent.remove(image)
        recent.insert(0, image)
        del recent[RECENT_IMAGES:]
        return image

    async def tags_of(self, name: str, repository: str) -> list[str]:
        return await self.list_tags(IpnsName.parse(name), repository)

    async def candidate_images(self, name: str, repository: str) -> list[CID]:
        """The images of ``repository``'s tags resolved last; all of its tags' when none was."""
        recent = self._recent.get((name, repository))
        if recent:
            return list(recent)
        images = await self.list_images(IpnsName.parse(name))
        return list(images.get(repository, {}).values())

    async def resolve_name(self, name: str) -> tuple[bytes, str, int]:
        """For the gateway: the record's bytes, its value and the seconds it may be cached."""
        record = await self.resolve(IpnsName.parse(name))
        ttl = record.ttl // NANOSECONDS if record.ttl else int(self.settings.ttl)
        return record.raw, record.value_text, ttl

    def import_record(self, name: IpnsName, raw: bytes) -> tuple[IpnsRecord, bool]:
        """Verify ``raw`` as a record of ``name`` and keep it if it beats the stored one (CAR import)."""
        record = verify_record(raw, name, now_ns=self.clock_ns())
        stored = self.store.offer(name, record)
        if stored:
            self._cache.pop(name.multihash, None)
        return record, stored

    def record_of_repository(self, repository: str) -> tuple[IpnsName, IpnsRecord] | None:
        """The current record of the key ``repository`` is bound to (for ``export``)."""
        key = self.key_for(repository)
        if key is None:
            return None
        try:
            name = self.keystore.get(key).ipns_name
        except KeystoreError:
            return None
        record = self.store.record(name)
        return None if record is None else (name, record)

    # --- following -----------------------------------------------------------------------------

    async def follow_once(self, rule: FollowRule) -> FollowReport:
        """Resolve ``rule.name`` afresh and pull every tag whose image changed since the last poll."""
        from ipfsreg.registry import images as registry_images

        name = IpnsName.parse(rule.name)
        record = await self.resolve(name, fresh=True)
        report = FollowReport(name, record.sequence)
        found = await self.list_images(name)
        for repository, tags in sorted(found.items()):
            if rule.repository and repository != rule.repository:
                continue
            for tag, image in sorted(tags.items()):
                if self.store.seen_image(name, repository, tag) == image:
                    continue
                label = f"{repository}:{tag}"
                try:
                    async with self._source() as source:
                        await registry_images.mirror_image(self.registry, source, image, tag)
                        if rule.local:
                            await registry_images.pull_image(
                                self.registry, source, image, tag, rule.local, tag
                            )
                except Exception as exc:  # one bad image must not stop the others; retried next poll
                    log.warning("ipns: following %s: cannot pull %s (%s): %s", name, label, image, exc)
                    report.failed.append(label)
                    continue
                self.store.mark_seen(name, repository, tag, image)
                report.pulled.append(label)
        if report.pulled:
            log.info("ipns: %s seq %d: pulled %s", name, record.sequence, ", ".join(report.pulled))
        root = value_cid(record)[0]
        if not report.failed and self._provided_roots.get(name.multihash) != root:
            # This node now holds the whole tag directory (listing it fetched every node of it) and
            # the images it follows: it is one more provider for whoever resolves the name.
            self._announce_root(root)
            self._provided_roots[name.multihash] = root
        return report

    async def _follow_loop(self, rule: FollowRule) -> None:
        while True:
            try:
                await self.follow_once(rule)
            except IpnsError as exc:
                log.warning("ipns: following %s: %s", rule.name, exc)
            except Exception:
                log.exception("ipns: following %s failed", rule.name)
            await trio.sleep(rule.poll)

    # --- the service task ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish on tag changes, republish every ``republish_interval``, put again records no peer
        stored, follow names; until cancelled."""
        async with trio.open_nursery() as nursery:
            for rule in self.settings.follow:
                nursery.start_soon(self._follow_loop, rule)
            nursery.start_soon(self._republish_loop)
            nursery.start_soon(self._reroute_loop)
            # A restart publishes what changed while it was down, signs again what is due, and puts
            # every current record to the DHT again (its peers keep records 36 h at most).
            at_start = set(self.bound_keys())
            self._dirty.update(at_start)
            self._wake.set()
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                dirty, self._dirty = self._dirty, set()
                for key in sorted(dirty):
                    await self._publish_logged(key, reroute=key in at_start)
                    at_start.discard(key)

    async def _publish_logged(self, key: str, *, republish: bool = False, reroute: bool = False) -> None:
        try:
            await self.publish(key, republish=republish, reroute=reroute)
        except IpnsError as exc:
            log.warning("ipns: cannot publish key %s: %s", key, exc)
        except Exception:
            log.exception("ipns: publishing key %s failed", key)

    async def _republish_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.republish_interval)
            for key in self.bound_keys():
                await self._publish_logged(key, republish=True)

    async def _reroute_loop(self) -> None:
        """Put again the records that no peer stored (the DHT was empty or unreachable then), after
        REROUTE_FIRST seconds, then after twice as long each time, up to ``republish_interval``."""
        while True:
            await trio.sleep(REROUTE_CHECK)
            if not self._unrouted:
                continue
            bound, now = set(self.bound_keys()), trio.current_time()
            for key, (when, _pause) in sorted(self._unrouted.items()):
                if key not in bound:
                    del self._unrouted[key]  # unbound or removed meanwhile: nothing to put
                elif when <= now:
                    await self._publish_logged(key, reroute=True)
