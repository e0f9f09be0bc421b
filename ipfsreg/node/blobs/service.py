"""The ``/ipfsreg/blob/1.0.0`` streams of a node (see protocol.py): the answering side and the asking side.

Answering: each inbound stream carries one request; the answers come from the provider the registry
installs (:meth:`BlobService.serve`), an async iterator that may wait while a fetch makes progress.
A stream whose request does not arrive within ``request_timeout``, or whose answer cannot be written
within ``write_timeout``, is reset; one peer may hold ``max_streams_per_peer`` streams at a time.
Asking: :meth:`BlobService.query` opens a stream and yields the answers, each checked by
:class:`AnswerSequence`; a provider that breaks the protocol raises :class:`BlobProtocolError`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Final

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamEOF

from ipfsreg.node.blobs.protocol import (
    PROTOCOL_ID,
    Answer,
    AnswerSequence,
    BlobProtocolError,
    FrameReader,
    Missing,
    Request,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from ipfsreg.node.errors import NodeError

logger = logging.getLogger(__name__)

AnswerProvider = Callable[[str, Request], AsyncGenerator[Answer, None]]

READ_CHUNK: Final = 64 * 1024
OPEN_TIMEOUT: Final = 5.0


class BlobQueryError(NodeError):
    """Asking a peer about a blob failed (it cannot be reached, or its stream broke)."""


async def _read_some(stream: INetStream) -> bytes:
    try:
        return bytes(await stream.read(READ_CHUNK))
    except (StreamEOF, MuxedStreamEOF):
        return b""


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:
        logger.debug("resetting a blob stream: %r", exc)


class BlobService:
    def __init__(
        self,
        host: IHost,
        *,
        request_timeout: float = 10.0,
        write_timeout: float = 30.0,
        max_streams_per_peer: int = 64,
    ) -> None:
        self.host = host
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_streams_per_peer = max_streams_per_peer
        self.provider: AnswerProvider | None = None
        self.violations = 0
        self._streams: Counter[str] = Counter()

    def serve(self, provider: AnswerProvider | None) -> None:
        """Answer inbound requests with ``provider`` (None: every blob is ``missing``)."""
        self.provider = provider

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.host.set_stream_handler(TProtocol(PROTOCOL_ID), self._handle)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.host.remove_stream_handler(TProtocol(PROTOCOL_ID))

    # --- answering ---------------------------------------------------------------------------

    async def _handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        if self._streams[peer] >= self.max_streams_per_peer:
            logger.info("blob protocol: %s holds %d streams already", peer, self._streams[peer])
            await _reset(stream)
            return
        self._streams[peer] += 1
        try:
            request = await self._read_request(stream)
            provider = self.provider
            async with aclosing(provider(peer, request) if provider is not None else _missing()) as answers:
                async for answer in answers:
                    with trio.fail_after(self.write_timeout):
                        await stream.write(encode_answer(answer))
            await stream.close()
        except BlobProtocolError as exc:
            self.violations += 1
            logger.info("blob protocol: bad request from %s: %s", peer, exc)
            await _reset(stream)
        except Exception as exc:
            logger.debug("blob protocol: stream from %s ended: %r", peer, exc)
            await _reset(stream)
        finally:
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]

    async def _read_request(self, stream: INetStream) -> Request:
        reader = FrameReader()
        with trio.fail_after(self.request_timeout):
            while True:
                data = await _read_some(stream)
                if not data:
                    raise BlobProtocolError("the stream ended before its request")
                frames = reader.feed(data)
                if frames:
                    if len(frames) > 1 or reader.buffered:
                        raise BlobProtocolError("more than one request on a stream")
                    return decode_request(frames[0])

    # --- asking ------------------------------------------------------------------------------

    @asynccontextmanager
    async def query(self, peer_id: str, request: Request) -> AsyncIterator[AsyncIterator[Answer]]:
        """Ask ``peer_id`` (connected) about a blob; iterate the answers inside the block.

        Raises BlobQueryError when the stream cannot be opened or breaks, BlobProtocolError when
        the peer breaks the protocol.
        """
        try:
            peer = ID.from_base58(peer_id)
        except Exception:
            raise BlobQueryError(f"not a peer id: {peer_id[:100]!r}") from None
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                stream = await self.host.new_stream(peer, [TProtocol(PROTOCOL_ID)])
                await stream.write(encode_request(request))
        except Exception as exc:
            raise BlobQueryError(f"cannot ask {peer_id} about {request.digest}: {exc!r}") from None
        try:
            yield self._answers(stream, peer_id)
        finally:
            await _reset(stream)  # nothing more to read, whatever the answers said

    async def _answers(self, stream: INetStream, peer_id: str) -> AsyncIterator[Answer]:
        reader = FrameReader()
        sequence = AnswerSequence()
        while not sequence.finished:
            try:
                data = await _read_some(stream)
            except Exception as exc:
                raise BlobQueryError(f"the blob stream from {peer_id} broke: {exc!r}") from None
            if not data:
                if reader.buffered:
                    raise BlobProtocolError(f"{peer_id} ended its stream inside a frame")
                raise BlobQueryError(f"{peer_id} ended its blob stream without a final answer")
            for frame in reader.feed(data):
                yield sequence.receive(decode_answer(frame))


async def _missing() -> AsyncGenerator[Answer, None]:
    yield Missing()
