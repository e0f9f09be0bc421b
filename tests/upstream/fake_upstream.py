"""A small fake upstream registry for the upstream client and pull-through tests: a Quart-trio app
served by hypercorn on loopback with the distribution API's read side, Basic or Bearer-token auth
(its own token realm), request counters, and knobs for misbehaving (wrong bytes, errors, stalls)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeUpstream:
    """State and knobs of the fake registry (mutate them while it serves)."""

    auth: str = "none"  # "none" | "basic" | "token"
    users: dict[str, str] = field(default_factory=dict)
    token_seconds: int = 300
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    break_after_first_chunk: set[str] = field(default_factory=set)  # blobs whose connection breaks
    redirect_blobs: bool = False  # blob GETs redirect to another origin (http://localhost:PORT)
    omit_digest_header: bool = False
    wrong_digest_header: bool = False
    down: bool = False  # answer 503 to everything
    chunk_bytes: int = 64 * 1024
    gate: trio.Event | None = None  # a blob GET sends three chunks, then waits for this
    blob_started: trio.Event = field(default_factory=trio.Event)  # set when a blob's first chunk went out
    chunk_delay: float = 0.0  # seconds between blob chunks (a slow upstream)
    ranges: bool = True  # honour "Range: bytes=N-" on blobs (else the whole blob, 200)
    static_tokens: set[str] = field(default_factory=set)  # bearer tokens accepted as they stand
    hang: bool = False  # take requests and never answer them
    blob_bytes_sent: dict[str, int] = field(default_factory=dict)  # digest -> blob bytes sent, all GETs
    requests: list[tuple[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> granted scope
    url: str = ""

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    def add_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[(repo, digest)] = data
        return digest

    def add_manifest(
        self, repo: str, tag: str | None, doc: dict[str, Any], media_type: str = OCI_MANIFEST
    ) -> str:
        body = json.dumps(doc).encode()
        digest = sha256(body)
        self.manifests[(repo, digest)] = (body, media_type)
        if tag is not None:
            self.manifests[(repo, tag)] = (body, media_type)
        return digest

    def add_image(
        self, repo: str, tag: str | None, layers: list[bytes], *, media_type: str = OCI_MANIFEST
    ) -> tuple[str, dict[str, Any]]:
        config = json.dumps({"architecture": "amd64", "os": "linux", "layers": len(layers)}).encode()
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": OCI_CONFIG, "digest": self.add_blob(repo, config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": self.add_blob(repo, layer), "size": len(layer)}
                for layer in layers
            ],
        }
        return self.add_manifest(repo, tag, doc, media_type), doc


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return Response(body, status=status, headers={"Content-Type": "application/json", **(headers or {})})


def build_app(state: FakeUpstream) -> QuartTrio:
    app = QuartTrio(__name__)

    def basic_user() -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if state.users.get(user) == password and password else None

    def challenge(scope: str) -> Response:
        if state.auth == "basic":
            return _error(
                401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": 'Basic realm="fake"'}
            )
        header = f'Bearer realm="{state.url}/token",service="fake-registry"'
        if scope:
            header += f',scope="{scope}"'
        return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": header})

    def authorized(scope: str) -> bool:
        if state.auth == "none":
            return True
        if state.auth == "basic":
            return basic_user() is not None
        header = request.headers.get("Authorization", "")
        if header.removeprefix("Bearer ") in state.static_tokens:
            return True
        granted = state.tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None
        return granted is not None and (not scope or scope in granted.split())

    @app.route("/token")
    async def token() -> Response:
        state.token_requests.append(
            {
                "service": request.args.get("service"),
                "scope": request.args.getlist("scope"),
                "user": basic_user(),
            }
        )
        if request.headers.get("Authorization") and basic_user() is None:
            return Response(json.dumps({"details": "invalid credentials"}), status=401)
        if state.users and basic_user() is None:
            return Response(json.dumps({"details": "credentials required"}), status=401)
        value = secrets.token_hex(8)
        state.tokens[value] = " ".join(request.args.getlist("scope"))
        return Response(
            json.dumps({"token": value, "expires_in": state.token_seconds}),
            headers={"Content-Type": "application/json"},
        )

    @app.route("/v2/", methods=["GET"])
    async def base() -> Response:
        state.requests.append((request.method, request.path))
        if state.down:
            return _error(503, "UNAVAILABLE", "down for maintenance")
        if not authorized(""):
            return challenge("")
        return Response("{}", headers={"Content-Type": "application/json"})

    @app.route("/_blobdata/<path:rest>", methods=["GET"])
    async def blobdata(rest: str) -> Response:
        state.requests.append((request.method, request.path))
        repo, _, digest = rest.rpartition("/")
        if request.headers.get("Authorization"):
            return _error(400, "UNSUPPORTED", "redirect target got the registry's credentials")
        return _blob_response(state, repo, digest)

    @app.route("/v2/<path:path>", methods=["GET", "HEAD"])
    async def v2(path: str) -> Response:
        state.requests.append((request.method, request.path))
        if state.hang:
            await trio.sleep_forever()
        if state.down:
            return _error(503, "UNAVAILABLE", "down for maintenance")
        if "/manifests/" in path:
            repo, _, ref = path.partition("/manifests/")
            kind = "manifest"
        elif "/blobs/" in path:
            repo, _, ref = path.partition("/blobs/")
            kind = "blob"
        else:
            return _error(404, "NAME_UNKNOWN", "no route")
        scope = f"repository:{repo}:pull"
        if not authorized(scope):
            return challenge(scope)
        if kind == "manifest":
            entry = state.manifests.get((repo, ref))
            if entry is None:
                return _error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repo}:{ref}")
            body, media_type = entry
            headers = {"Content-Type": media_type}
            if state.wrong_digest_header:
                headers["Docker-Content-Digest"] = sha256(body + b"x")
            elif not state.omit_digest_header:
                headers["Docker-Content-Digest"] = sha256(body)
            if request.method == "HEAD":
                response = Response(b"", headers=headers)
                response.content_length = len(body)
                return response
            return Response(body, headers=headers)
        if (repo, ref) not in state.blobs:
            return _error(404, "BLOB_UNKNOWN", f"blob unknown: {ref}")
        if request.method == "HEAD":
            response = Response(b"", headers={"Docker-Content-Digest": ref})
            response.content_length = len(state.blobs[(repo, ref)])
            return response
        if state.redirect_blobs:
            other_origin = state.url.replace("127.0.0.1", "localhost")
            return Response(b"", status=307, headers={"Location": f"{other_origin}/_blobdata/{repo}/{ref}"})
        return _blob_response(state, repo, ref)

    return app


def _blob_response(state: FakeUpstream, repo: str, digest: str) -> Response:
    data = state.blobs.get((repo, digest))
    if data is None:
        return _error(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
    if digest in state.corrupt:
        data = data[:-1] + bytes([data[-1] ^ 0xFF])

    start = 0
    status = 200
    extra: dict[str, str] = {}
    ranged = request.headers.get("Range", "")
    if state.ranges and ranged.startswith("bytes=") and ranged.endswith("-") and ranged[6:-1].isdigit():
        start = int(ranged[6:-1])
        status = 206
        extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"

    async def body() -> AsyncIterator[bytes]:
        for pos in range(start, len(data), state.chunk_bytes):
            piece = data[pos : pos + state.chunk_bytes]
            state.blob_bytes_sent[digest] = state.blob_bytes_sent.get(digest, 0) + len(piece)
            yield piece
            state.blob_started.set()
            if state.chunk_delay:
                await trio.sleep(state.chunk_delay)
            if digest in state.break_after_first_chunk:
                raise ConnectionAbortedError("the fake upstream breaks this blob's connection")
            if pos == 2 * state.chunk_bytes and state.gate is not None:
                await state.gate.wait()

    response = Response(
        body(),
        status=status,
        headers={"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest, **extra},
    )
    response.content_length = len(data) - start
    response.timeout = None
    return response


@asynccontextmanager
async def running_upstream(state: FakeUpstream | None = None) -> AsyncIterator[FakeUpstream]:
    """Serve a fake upstream on a free loopback port until the block exits."""
    state = state if state is not None else FakeUpstream()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, build_app(state), config)
        state.url = binds[0]
        yield state
        nursery.cancel_scope.cancel()
