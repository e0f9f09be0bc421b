"""Observability on the registry port: Prometheus ``/metrics``, ``/healthz``, one access-log line a request.

:class:`ObservedApp` is ASGI middleware around the registry app, so it sees every request (streamed
bodies included) and counts the bytes actually sent and received, not the declared lengths. Routes
are labelled by family (``blobs``, ``manifests``, ``uploads``, ...), never by raw path, to keep the
metric cardinality bounded. Storage and bitswap figures are read at scrape time.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ipfsreg.blockstore import Datastore
from ipfsreg.httpserver import ZEROCOPY_SEND, loggable_headers
from ipfsreg.mirror.stats import SOURCES, MirrorStats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

access_log = logging.getLogger("ipfsreg.access")

_FAMILIES: Final = (
    (re.compile(r"^/v2/?$"), "base"),
    (re.compile(r"^/v2/_catalog$"), "catalog"),
    (re.compile(r"^/v2/.+/blobs/uploads(/.*)?$"), "uploads"),
    (re.compile(r"^/v2/.+/blobs/[^/]+$"), "blobs"),
    (re.compile(r"^/v2/.+/manifests/[^/]+$"), "manifests"),
    (re.compile(r"^/v2/.+/tags/list$"), "tags"),
    (re.compile(r"^/v2/.+/referrers/[^/]+$"), "referrers"),
    (re.compile(r"^/ipfs/"), "gateway"),
    (re.compile(r"^/routing/v1/"), "routing"),
    (re.compile(r"^/metrics$"), "metrics"),
    (re.compile(r"^/healthz$"), "healthz"),
)


def route_family(path: str) -> str:
    for pattern, name in _FAMILIES:
        if pattern.match(path):
            return name
    return "other"


class HasStats(Protocol):
    """What the collector reads from the node: ``Node.stats()``."""

    def stats(self) -> Any: ...


class _StoreCollector(Collector):
    def __init__(self, store: Datastore, node: HasStats | None) -> None:
        self.store = store
        self.node = node

    def collect(self) -> Iterator[Any]:
        if not self.store.closed:
            yield GaugeMetricFamily(
                "ipfsreg_blocks_stored", "Blocks in the blockstore", value=self.store.block_count
            )
            yield GaugeMetricFamily(
                "ipfsreg_block_bytes_stored",
                "Bytes of blocks in the blockstore",
                value=self.store.block_bytes,
            )
            packs = self.store.pack_stats()
            yield GaugeMetricFamily(
                "ipfsreg_pack_files", "Pack files holding large blocks", value=packs.files
            )
            yield GaugeMetricFamily(
                "ipfsreg_pack_bytes",
                "Bytes written to pack files (dead blocks included until their pack empties)",
                value=packs.bytes,
            )
            yield GaugeMetricFamily(
                "ipfsreg_pack_live_bytes", "Bytes of live blocks in pack files", value=packs.live_bytes
            )
        if self.node is None:
            return
        stats = self.node.stats()
        yield GaugeMetricFamily(
            "ipfsreg_connected_peers", "Connected libp2p peers", value=stats.connected_peers
        )
        counters = (
            ("ipfsreg_bitswap_blocks_sent", "Blocks sent to peers over bitswap", stats.blocks_sent),
            ("ipfsreg_bitswap_block_bytes_sent", "Block bytes sent over bitswap", stats.block_bytes_sent),
            ("ipfsreg_bitswap_blocks_received", "Blocks received over bitswap", stats.blocks_received),
            (
                "ipfsreg_bitswap_block_bytes_received",
                "Block bytes received over bitswap",
                stats.block_bytes_received,
            ),
            ("ipfsreg_bitswap_duplicate_blocks", "Blocks received more than once", stats.duplicate_blocks),
            (
                "ipfsreg_bitswap_fetch_timeouts",
                "Block fetches no peer answered in time",
                stats.fetch_timeouts,
            ),
            (
                "ipfsreg_bitswap_protocol_violations",
                "Bitswap protocol violations by peers",
                stats.protocol_violations,
            ),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)


class _MirrorCollector(Collector):
    """``ipfsreg_mirror_*``: where blob bytes came from, hits and misses by namespace."""

    def __init__(self, stats: MirrorStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self.stats
        by_source = CounterMetricFamily(
            "ipfsreg_mirror_bytes",
            "Blob bytes the mirror delivered, by where they came from",
            labels=["source"],
        )
        blobs = CounterMetricFamily(
            "ipfsreg_mirror_blobs", "Blobs the mirror served locally or fetched, by source", labels=["source"]
        )
        for source in SOURCES:
            by_source.add_metric([source], stats.bytes[source])
            blobs.add_metric([source], stats.blobs[source])
        yield by_source
        yield blobs
        requests = CounterMetricFamily(
            "ipfsreg_mirror_requests",
            "Mirrored blob requests by namespace ('-': none), served locally (hit) or fetched (miss)",
            labels=["namespace", "result"],
        )
        for name in sorted(set(stats.hits) | set(stats.misses)):
            requests.add_metric([name, "hit"], stats.hits[name])
            requests.add_metric([name, "miss"], stats.misses[name])
        yield requests
        for name, doc, value in (
            ("ipfsreg_mirror_stale_tags", "Tags served from the last known digest", stats.stale_tags),
            ("ipfsreg_mirror_peer_failures", "Peers dropped while serving a blob", stats.peer_failures),
            (
                "ipfsreg_mirror_coordinated_fetches",
                "Blobs fetched from a fleet node's own fetch",
                stats.coordinated,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    """The metric set of one server (its own CollectorRegistry, so tests can run several)."""

    def __init__(
        self, store: Datastore, node: HasStats | None = None, mirror: MirrorStats | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ipfsreg_http_requests",
            "HTTP requests on the registry port",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ipfsreg_http_request_duration_seconds",
            "Time from request start to the end of the response body",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.bytes_in = Counter(
            "ipfsreg_http_request_bytes", "Request body bytes received", ["route"], registry=self.registry
        )
        self.bytes_out = Counter(
            "ipfsreg_http_response_bytes", "Response body bytes sent", ["route"], registry=self.registry
        )
        self.registry.register(_StoreCollector(store, node))
        if mirror is not None:
            self.registry.register(_MirrorCollector(mirror))

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


class ObservedApp:
    """ASGI middleware: serves /metrics and /healthz, counts and logs every other request."""

    def __init__(self, app: Any, metrics: Metrics, health: Callable[[], str | None]) -> None:
        self.app = app
        self.metrics = metrics
        self.health = health  # returns None when healthy, else the reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "")
        family = route_family(path)
        started = time.monotonic()
        if access_log.isEnabledFor(logging.DEBUG):
            client = scope.get("client") or ("-", 0)
            access_log.debug(
                '%s "%s %s" request headers: %s',
                client[0],
                method,
                _loggable_path(scope),
                loggable_headers(scope),
            )
        state = {"status": 0, "out": 0, "in": 0, "recorded": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["in"] += len(message.get("body", b""))
            return message

        def record() -> None:
            if state["recorded"]:
                return
            state["recorded"] = 1
            elapsed = time.monotonic() - started
            status = state["status"] or 499  # no response started: the client went away or we failed
            m = self.metrics
            m.requests.labels(family, method, str(status)).inc()
            m.latency.labels(family, method).observe(elapsed)
            m.bytes_in.labels(family).inc(state["in"])
            m.bytes_out.labels(family).inc(state["out"])
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d in=%d out=%d %.3fs',
                client[0],
                method,
                _loggable_path(scope),
                status,
                state["in"],
                state["out"],
                elapsed,
            )

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
            elif message["type"] in ("http.response.body", ZEROCOPY_SEND):
                body = message.get("body")
                if body is not None:
                    state["out"] += len(body)
                elif "extents" in message:
                    state["out"] += sum(extent[2] for extent in message["extents"])
                else:
                    state["out"] += int(message.get("count") or 0)
                if not message.get("more_body", False):
                    # Count the request before its last byte leaves: a client that reads /metrics
                    # right after this response then sees it.
                    record()
            await send(message)

        try:
            if family == "metrics" and method in ("GET", "HEAD"):
                await _plain(
                    counting_send, 200, self.metrics.render(), CONTENT_TYPE_LATEST, head=method == "HEAD"
                )
            elif family == "healthz" and method in ("GET", "HEAD"):
                problem = self.health()
                body = json.dumps({"status": problem or "ok"}).encode() + b"\n"
                status = 200 if problem is None else 503
                await _plain(counting_send, status, body, "application/json", head=method == "HEAD")
            else:
                await self.app(scope, counting_receive, counting_send)
        finally:
            record()  # responses that never finished (errors, clients that went away)


def _loggable_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    query: bytes = scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


async def _plain(send: Send, status: int, body: bytes, content_type: str, *, head: bool = False) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
