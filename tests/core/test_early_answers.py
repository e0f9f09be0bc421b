"""Requests answered before their body was read, and failures inside one connection, against a whole
`ipfsreg serve` (node, auth, registry, control API) in-process on loopback.

The byte sequences are the ones that stopped the server (issue 13, item 1): a request carrying a
body that the server answers without reading it (an upload POST, ``GET /v2/``, any 401), followed
on the same connection by a second request. Every request must get its response, the connection
must end cleanly (never a reset that eats the response), and the server must keep serving.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import hypercorn.protocol.h11 as hypercorn_h11
import pytest
import trio

from ipfsreg.app import ServerInfo
from ipfsreg.httpserver import EARLY_DRAIN_BYTES

NEXT = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n"
HELLO_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
HELLO_LENGTH = b"Content-Length: 5\r\n\r\nhello"

# (request line + Host, body framing and body): each followed by NEXT on the same connection.
SEQUENCES = {
    "upload-post-chunked": b"POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: registry\r\n" + HELLO_CHUNKED,
    "upload-post-length": b"POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: registry\r\n" + HELLO_LENGTH,
    "base-get-chunked": b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n" + HELLO_CHUNKED,
    "base-get-length": b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n" + HELLO_LENGTH,
    "tags-get-chunked": b"GET /v2/app/tags/list HTTP/1.1\r\nHost: registry\r\n" + HELLO_CHUNKED,
}


class Answer:
    """What a raw connection got back: each response's status and headers, and how it ended."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, dict[str, str], bytes]] = []
        self.reset = False
        self.closed = False

    @property
    def statuses(self) -> list[int]:
        return [status for status, _, _ in self.responses]


def _parse(buffer: bytearray, answer: Answer) -> None:
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        answer.responses.append((int(head[0].split(" ")[1]), headers, body))


async def exchange(host: str, port: int, data: bytes, *, expect: int) -> Answer:
    """Send ``data`` on a new connection (while reading) and read ``expect`` responses; after a
    ``Connection: close`` response, read on until the server ends the connection."""
    answer = Answer()
    buffer = bytearray()
    stream = await trio.open_tcp_stream(host, port)

    async def send() -> None:
        # The server may close while we are still sending (a body it would not read).
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    answer.reset = True
                    break
                if not chunk:
                    answer.closed = True
                    break
                buffer += chunk
                _parse(buffer, answer)
                if len(answer.responses) >= expect and answer.responses[-1][1].get("connection") != "close":
                    break
            nursery.cancel_scope.cancel()
    await stream.aclose()
    return answer


def _address(info: ServerInfo) -> tuple[str, int]:
    host, _, port = info.registry_urls[0].removeprefix("http://").rpartition(":")
    return host, int(port)


def _htpasswd(path: Path) -> Path:
    path.write_text("alice:" + bcrypt.hashpw(b"alice-secret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return path


@pytest.fixture(params=["auth-off", "auth-on"])
def auth_overrides(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "auth-off":
        return {}
    return {"registry.htpasswd": str(_htpasswd(tmp_path / "htpasswd"))}


async def _check_still_serving(info: ServerInfo) -> None:
    async with httpx.AsyncClient(base_url=info.registry_urls[0], timeout=30) as client:
        assert (await client.get("/v2/")).status_code in (200, 401)
    async with httpx.AsyncClient(base_url=info.api_url, timeout=30) as api:
        assert (await api.get("/api/v0/stats")).status_code == 200


async def test_unread_small_body_then_pipelined_request_both_get_responses_sequential_and_20_concurrent(
    serve_node: Callable[..., Any], auth_overrides: dict[str, Any]
) -> None:
    async with serve_node("node", **auth_overrides) as info:
        host, port = _address(info)
        base_status = 401 if auth_overrides else 200
        for sequence, first in SEQUENCES.items():
            data = first + NEXT
            answers = [await exchange(host, port, data, expect=2) for _ in range(5)]
            async with trio.open_nursery() as nursery:

                async def one(data: bytes = data, answers: list[Answer] = answers) -> None:
                    answers.append(await exchange(host, port, data, expect=2))

                for _ in range(20):
                    nursery.start_soon(one)
            assert len(answers) == 25
            for answer in answers:
                assert len(answer.responses) == 2, (sequence, answer.statuses)
                assert answer.statuses[1] == base_status
                assert not answer.reset
                for _, headers, _ in answer.responses:
                    assert "close" not in headers.get("connection", "")
        await _check_still_serving(info)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_unread_large_body_gets_its_answer_with_connection_close_then_a_clean_end(
    serve_node: Callable[..., Any], auth_overrides: dict[str, Any], framing: str
) -> None:
    body = b"x" * (EARLY_DRAIN_BYTES * 4)
    if framing == "length":
        head = b"Content-Length: %d\r\n\r\n" % len(body)
        framed = body
    else:
        head = b"Transfer-Encoding: chunked\r\n\r\n"
        framed = b"".join(b"%x\r\n%s\r\n" % (16384, body[i : i + 16384]) for i in range(0, len(body), 16384))
        framed += b"0\r\n\r\n"
    data = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n" + head + framed + NEXT
    async with serve_node("node", **auth_overrides) as info:
        host, port = _address(info)
        answers = [await exchange(host, port, data, expect=1) for _ in range(3)]
        async with trio.open_nursery() as nursery:

            async def one() -> None:
                answers.append(await exchange(host, port, data, expect=1))

            for _ in range(20):
                nursery.start_soon(one)
        for answer in answers:
            assert answer.statuses == [401 if auth_overrides else 200], (answer.reset, answer.closed)
            assert answer.responses[0][1]["connection"] == "close"
            assert answer.closed and not answer.reset
        await _check_still_serving(info)


async def test_failure_inside_one_connection_is_logged_once_and_ends_that_connection_only(
    serve_node: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever goes wrong inside one connection's server (here: hypercorn's HTTP/1.1 protocol
    # raising on a marked request) must not reach the server's nursery.
    original = hypercorn_h11.H11Protocol.handle

    async def failing(self: Any, event: Any) -> None:
        if b"X-Explode" in getattr(event, "data", b""):
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        await original(self, event)

    monkeypatch.setattr(hypercorn_h11.H11Protocol, "handle", failing)
    caplog.set_level(logging.WARNING, logger="ipfsreg.http")
    async with serve_node("node") as info:
        host, port = _address(info)
        explode = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nX-Explode: 1\r\n\r\n"
        for _ in range(3):
            answer = await exchange(host, port, explode, expect=1)
            assert answer.responses == []
        api_host, _, api_port = info.api_url.removeprefix("http://").partition("/")[0].rpartition(":")
        await exchange(api_host, int(api_port), explode, expect=1)
        await _check_still_serving(info)
        ok = await exchange(host, port, NEXT, expect=1)
        assert ok.statuses == [200]
    warnings = [r for r in caplog.records if r.name == "ipfsreg.http"]
    assert len(warnings) == 4
    for record in warnings:
        assert record.levelno == logging.WARNING
        assert record.exc_info is None  # one line, no traceback
        message = record.getMessage()
        assert "127.0.0.1:" in message
        assert "BusyResourceError" in message
