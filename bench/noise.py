"""Benchmark the Noise secure channel alone: ipfsreg's session against py-libp2p's stock SecureSession.

Two Noise transports handshake over one loopback TCP connection in this process; one side streams
``BENCH_NOISE_MB`` (default 200) MB to the other as a muxer does (each write one 12-byte header plus a
256 KiB body; the reader reads the header, then the body, with read(n)). Both directions of the same
connection type are measured, interleaved over ``BENCH_NOISE_ROUNDS`` (default 2) rounds, best round
reported. The anchor is the stock py-libp2p session measured in the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio
from libp2p.abc import ISecureConn
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import Transport as StockNoiseTransport

from bench._common import print_table
from ipfsreg.node.noise import noise_transport

MB = 1_000_000
HEADER = 12
BODY = 256 * 1024

TransportFactory = Callable[[], StockNoiseTransport]


def _stock() -> StockNoiseTransport:
    return StockNoiseTransport(create_new_key_pair(), noise_privkey=create_x25519_key_pair().private_key)


def _ours() -> StockNoiseTransport:
    return noise_transport(create_new_key_pair())


async def _stream_once(factory: TransportFactory, total: int) -> float:
    """Seconds to move ``total`` bytes from the dialling side to the listening side, after the handshake."""
    client_transport, server_transport = factory(), factory()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    body = os.urandom(BODY)
    frame = len(body).to_bytes(HEADER, "big") + body
    received = 0
    elapsed = 0.0

    async with trio.open_nursery() as nursery:
        accepted: list[ISecureConn] = []
        server_ready = trio.Event()

        async def accept() -> None:
            stream = await listeners[0].accept()
            raw = RawConnection(TrioTCPStream(stream), False)
            accepted.append(await server_transport.secure_inbound(raw))
            server_ready.set()

        nursery.start_soon(accept)
        client_raw = RawConnection(TrioTCPStream(await trio.open_tcp_stream("127.0.0.1", port)), True)
        client = await client_transport.secure_outbound(
            client_raw, ID.from_pubkey(server_transport.libp2p_privkey.get_public_key())
        )
        await server_ready.wait()
        server = accepted[0]

        async def reader() -> None:
            nonlocal received
            while received < total:
                header = await server.read(HEADER)
                body_len = int.from_bytes(header, "big")
                data = await server.read(body_len)
                received += len(data)

        began = time.perf_counter()
        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            sent = 0
            while sent < total:
                await client.write(frame)
                sent += BODY
        elapsed = time.perf_counter() - began
        await client.close()
        await server.close()
        for listener in listeners:
            await listener.aclose()
    return elapsed


async def _run(total: int, rounds: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, factory in (("py-libp2p SecureSession (anchor)", _stock), ("ipfsreg NoiseSession", _ours)):
            seconds = await _stream_once(factory, total)
            best[name] = max(best.get(name, 0.0), total / MB / seconds)
    return best


def main() -> None:
    total = int(float(os.environ.get("BENCH_NOISE_MB", "200")) * MB)
    rounds = int(os.environ.get("BENCH_NOISE_ROUNDS", "2"))
    best = trio.run(_run, total, rounds)
    anchor = best["py-libp2p SecureSession (anchor)"]
    print(
        f"noise: {total / MB:g} MB over one loopback connection, 12-byte header + {BODY // 1024} KiB body "
        f"per write; best of {rounds} interleaved rounds"
    )
    print_table(
        ["session", "MB/s", "ratio"],
        [[name, f"{mbps:.1f}", f"{mbps / anchor:.2f}"] for name, mbps in best.items()],
    )
