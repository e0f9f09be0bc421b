"""Helpers for tests and benchmarks: in-process ipfsreg nodes on loopback in a trio nursery."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from ipfsreg.blockstore import Datastore
from ipfsreg.cid import CID
from ipfsreg.node.identity import Identity
from ipfsreg.node.node import Node
from ipfsreg.node.routing.records import Validator
from ipfsreg.node.routing.settings import RoutingSettings
from ipfsreg.node.settings import NodeSettings
from ipfsreg.unixfs.importer import ImportOptions, import_bytes

LOOPBACK_SETTINGS = NodeSettings(p2p_listen=["/ip4/127.0.0.1/tcp/0"], fetch_timeout=5.0, want_timeout=1.0)
# Loopback peers answer in milliseconds: short bounds keep tests with unreachable peers quick.
LOOPBACK_ROUTING = RoutingSettings(lookup_timeout=5.0, request_timeout=2.0, dial_timeout=2.0)


def add_bytes(node: Node, data: bytes, options: ImportOptions | None = None) -> CID:
    """Import ``data`` into the node's blockstore as Kubo's `ipfs add` would; returns the root CID."""
    blocks, result = import_bytes(data, options or ImportOptions())
    node.datastore.blocks.put_many((b.cid, b.data) for b in blocks)
    return result.cid


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def read_all(node: Node, cid: CID) -> bytes:
    """The whole file ``cid`` through the node's network block source."""
    from ipfsreg.unixfs.exporter import read_file

    out = bytearray()
    async with node.block_source() as source:
        async for chunk in read_file(source, cid):
            out += chunk
    return bytes(out)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state changed by other tasks, no event to wait on); TooSlowError after 5 s."""
    with trio.fail_after(5.0):
        while not condition():  # noqa: ASYNC110 - polling node state from a test is the point
            await trio.sleep(0.01)


class Nodes:
    """Starts nodes in one nursery; each has its own data dir and a fresh identity."""

    def __init__(self, stack: AsyncExitStack, nursery: trio.Nursery, directory: Path) -> None:
        self._stack = stack
        self._nursery = nursery
        self._dir = directory
        self._count = 0

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery the nodes run in (tests start their own peers in it too)."""
        return self._nursery

    async def start(
        self,
        *,
        psk: bytes | None = None,
        routing: RoutingSettings | None = None,
        validators: Mapping[str, Validator] | None = None,
        **overrides: Any,
    ) -> Node:
        """A node with LOOPBACK_SETTINGS and ``overrides``; ``routing`` defaults to LOOPBACK_ROUTING."""
        self._count += 1
        datastore = self._stack.enter_context(Datastore.open(self._dir / f"node{self._count}"))
        node = Node(
            datastore,
            replace(LOOPBACK_SETTINGS, **overrides),
            Identity.generate(),
            psk=psk,
            routing=routing if routing is not None else LOOPBACK_ROUTING,
            validators=validators,
        )
        await self._nursery.start(node.run)
        return node


@asynccontextmanager
async def running_nodes(directory: Path) -> AsyncIterator[Nodes]:
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        yield Nodes(stack, nursery, directory)
        nursery.cancel_scope.cancel()
