"""Paths and names on the registry port: names that only a rewrite could reach are 400 NAME_INVALID
(never a slash-merging redirect, never a Location built from the Host header), and no 404, 405 or
500 anywhere on the port is an HTML page. Requests are sent as raw bytes: nothing normalises them."""

from __future__ import annotations

import json

import pytest
import trio
from registry_helpers import Server

from ipfsreg.registry import app as registry_app
from ipfsreg.registry.errors import RegistryError


async def raw_request(
    server: Server, method: str, target: str, host: str = "evil.example"
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``target`` exactly as given: (status, headers, body)."""
    address, _, port = server.host.partition(":")
    stream = await trio.open_tcp_stream(address, int(port))
    async with stream:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        await stream.send_all(head.encode("latin-1"))
        data = b""
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                data += chunk
    header_block, _, body = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


REWRITTEN_NAMES = [
    ("GET", "/v2//etc/passwd/manifests/latest"),
    ("HEAD", "/v2//etc/passwd/manifests/latest"),
    ("GET", "/v2/%2Fetc/passwd/manifests/latest"),
    ("GET", "/v2/%2F%2Fetc/passwd/manifests/latest"),
    ("GET", "/v2/lib%2Fapp/manifests/latest"),
    ("GET", "/v2/lib/app%2F/tags/list"),
    ("POST", "/v2//tmp/evil/blobs/uploads/"),
    ("POST", "/v2/tmp//evil/blobs/uploads/"),
    ("GET", "/v2/a%0d%0ab/manifests/latest"),
    ("GET", "/v2/a%0aSet-Cookie:%20x/tags/list"),
    ("PUT", "/v2/a%00b/manifests/latest"),
]


@pytest.mark.parametrize(("method", "target"), REWRITTEN_NAMES)
async def test_names_that_need_rewriting_are_400_name_invalid_without_redirect(
    registry: Server, method: str, target: str
) -> None:
    status, headers, body = await raw_request(registry, method, target)
    assert status == 400
    assert "location" not in headers
    assert headers["content-type"] == "application/json"
    if method != "HEAD":
        assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"


async def test_no_location_is_ever_built_from_the_host_header(registry: Server) -> None:
    started = await registry.client.post("/v2/app/blobs/uploads/")
    upload = started.headers["Location"]
    targets = [
        ("GET", "/v2"),
        ("GET", "/ipfs"),
        ("POST", "/v2/app/blobs/uploads"),
        ("POST", "/v2/app/blobs/uploads/"),
        ("GET", upload),
        ("GET", "//v2/"),
    ]
    for method, target in targets:
        status, headers, _ = await raw_request(registry, method, target)
        assert "evil.example" not in headers.get("location", ""), (method, target, status)
        assert status not in (301, 302, 307, 308), (method, target)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/favicon.ico", 404),
        ("GET", "/v1/_ping", 404),
        ("GET", "/v2/app/unknown/route", 404),
        ("TRACE", "/v2/", 405),
        ("TRACE", "/v2/app/manifests/latest", 405),
        ("POST", "/ipfs/bafkqaaa", 404),  # no gateway on this app: no such route
        ("DELETE", "/v2/_catalog", 405),
    ],
)
async def test_errors_anywhere_on_the_registry_port_are_oci_json_never_html(
    registry: Server, method: str, target: str, status: int
) -> None:
    got, headers, body = await raw_request(registry, method, target, host="registry")
    assert got == status
    assert "html" not in headers.get("content-type", "")
    assert b"<html" not in body.lower() and b"<!doctype" not in body.lower()
    error = json.loads(body)["errors"][0]
    assert error["code"] in ("NAME_UNKNOWN", "UNSUPPORTED")
    if status == 405:
        assert headers["allow"]
        assert method not in headers["allow"]


async def test_an_unexpected_handler_error_is_a_500_oci_json_error(
    registry: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a handler bug")

    monkeypatch.setitem(registry_app._HANDLERS, ("tags", "GET"), broken)
    resp = await registry.client.get("/v2/app/tags/list")
    assert resp.status_code == 500
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["errors"][0]["code"] == "UNKNOWN"
    assert (await registry.client.get("/v2/")).status_code == 200


def test_check_request_path_accepts_plain_names_and_encoded_digests() -> None:
    from ipfsreg.registry.names import check_request_path

    check_request_path("/v2/lib/app/blobs/sha256:00", b"/v2/lib/app/blobs/sha256%3A00", "lib/app")
    with pytest.raises(RegistryError):
        check_request_path("/v2/lib/app/x", b"/v2/lib%2Fapp/x", "lib%2Fapp")
