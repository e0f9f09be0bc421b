"""Async client of a remote registry's distribution API (httpx on trio): ping, manifests by tag or
digest, blob stat and streamed blob reads, with the auth challenge flow.

Auth: a request goes out with what worked before for its scope; a 401 answer's ``WWW-Authenticate``
decides what to send next. ``Basic`` -> the configured credentials; ``Bearer realm,service,scope``
-> a token from the realm (with Basic credentials when configured, anonymous otherwise), cached per
scope until shortly before it expires. Every answer is checked: a manifest must hash to the digest
asked for (or the ``Docker-Content-Digest`` announced for a tag), and a blob stream is hashed as it
flows; its last piece is held back until the digest matches, so a consumer never receives a complete
body with the wrong bytes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import httpx
import trio

from ipfsreg.upstream.challenge import (
    Challenge,
    Token,
    basic_credentials,
    error_message,
    parse_token_response,
    parse_www_authenticate,
    pick_challenge,
    repository_scope,
)
from ipfsreg.upstream.errors import (
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
_HASHES: Final = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_HEX_LENGTHS: Final = {"sha256": 64, "sha512": 128}


class UpstreamManifest(NamedTuple):
    body: bytes
    media_type: str
    digest: str


@dataclass(frozen=True)
class ManifestHead:
    digest: str | None
    """The upstream's ``Docker-Content-Digest`` (None if it did not say)."""
    media_type: str
    size: int | None


def _split_digest(digest: str) -> tuple[str, str]:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm not in _HASHES or len(hexpart) != _HEX_LENGTHS[algorithm]:
        raise UpstreamError(f"unsupported or malformed digest {digest[:200]!r}")
    try:
        int(hexpart, 16)
    except ValueError:
        raise UpstreamError(f"malformed digest {digest[:200]!r}") from None
    return algorithm, hexpart.lower()


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_HASHES[algorithm](data).hexdigest()}"


def _is_digest(reference: str) -> bool:
    return ":" in reference


class UpstreamBlob:
    """An open blob response: ``size`` (Content-Length, if sent) and the verified byte stream."""

    def __init__(self, response: httpx.Response, digest: str, start: int = 0) -> None:
        self.response = response
        self.digest = digest
        length = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        # With a content coding, Content-Length counts the coded bytes, not the blob's.
        body_size = int(length) if length is not None and length.isdigit() and not encoded else None
        # The blob's bytes from ``start`` on: a 206 answer holds just those (and only the caller,
        # who has the bytes before ``start``, can check the digest); a 200 answer holds the whole
        # blob, whose first ``start`` bytes are dropped here after hashing.
        self.partial = start > 0 and response.status_code == 206
        self.start = start
        self._skip = 0 if self.partial else start
        self.size: int | None = None
        if body_size is not None:
            self.size = body_size + start if self.partial else body_size
        self._algorithm, self._hex = _split_digest(digest)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The blob's bytes (from ``start``); raises :class:`UpstreamDigestMismatch` (before the last
        piece) if they do not hash to the digest, :class:`UpstreamUnavailable` if the connection
        breaks. A partial (206) answer is not checked here: its caller hashes the whole blob."""
        if self.partial:
            content_range = self.response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {self.start}-"):
                raise UpstreamError(
                    f"blob {self.digest}: asked for bytes from {self.start}, got {content_range[:100]!r}",
                    status=502,
                )
        hasher = _HASHES[self._algorithm]()
        received = self.start if self.partial else 0
        skip = self._skip
        held: bytes | None = None
        try:
            async for data in self.response.aiter_bytes():
                if not data:
                    continue
                received += len(data)
                if not self.partial:
                    hasher.update(data)
                if skip:
                    dropped = min(skip, len(data))
                    skip -= dropped
                    data = data[dropped:]
                    if not data:
                        continue
                if self.size is not None and received > self.size:
                    raise UpstreamError(
                        f"blob {self.digest} is longer than its Content-Length {self.size}", status=502
                    )
                if held is not None:
                    yield held
                held = data
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"reading blob {self.digest} from upstream: {exc!r}") from exc
        if self.size is not None and received != self.size:
            raise UpstreamUnavailable(
                f"blob {self.digest} ended after {received} of {self.size} bytes", status=502
            )
        if skip:
            raise UpstreamUnavailable(f"blob {self.digest} is shorter than {self.start} bytes", status=502)
        actual = hasher.hexdigest()
        if not self.partial and actual != self._hex:
            raise UpstreamDigestMismatch(
                f"upstream sent bytes hashing to {self._algorithm}:{actual} for blob {self.digest}",
                status=502,
            )
        if held is not None:
            yield held


class UpstreamClient:
    """One remote registry (``base_url`` like ``https://registry-1.docker.io``)."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str = "",
        password: str = "",
        token_file: Path | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.token_file = token_file
        self._token_file_state: tuple[float, str] | None = None  # (mtime, content) last read
        self.max_manifest_bytes = max_manifest_bytes
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=True,
            transport=transport,
            headers={"User-Agent": "ipfsreg-pull-through"},
        )
        self._basic = False  # the upstream asked for Basic auth: send it on every request
        self._tokens: dict[str, Token] = {}
        self._token_lock = trio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- auth ----------------------------------------------------------------------------

    def _file_secret(self) -> str:
        """The token file's content (stripped), re-read when its mtime changes; "" without a file."""
        if self.token_file is None:
            return ""
        try:
            mtime = self.token_file.stat().st_mtime
            if self._token_file_state is None or self._token_file_state[0] != mtime:
                self._token_file_state = (mtime, self.token_file.read_text().strip())
        except OSError as exc:
            raise UpstreamUnauthorized(
                f"cannot read the token file {self.token_file}: {exc.strerror}"
            ) from None
        return self._token_file_state[1]

    def _credentials(self) -> str | None:
        password = self._file_secret() if self.token_file is not None else self.password
        if not self.username and not password:
            return None
        return basic_credentials(self.username, password)

    def _static_bearer(self) -> str | None:
        """A token file without a username is a bearer token sent as it stands."""
        if self.token_file is None or self.username:
            return None
        return self._file_secret() or None

    def _auth_header(self, scope: str) -> dict[str, str]:
        static = self._static_bearer()
        if static is not None:
            return {"Authorization": f"Bearer {static}"}
        token = self._tokens.get(scope)
        if token is not None and token.valid(time.time()):
            return {"Authorization": f"Bearer {token.value}"}
        credentials = self._credentials()
        if self._basic and credentials is not None:
            return {"Authorization": credentials}
        return {}

    async def _answer_challenge(self, response: httpx.Response, scope: str) -> dict[str, str]:
        """The ``Authorization`` header answering a 401's challenge (or UpstreamUnauthorized)."""
        challenges: list[Challenge] = []
        for value in response.headers.get_list("WWW-Authenticate"):
            challenges.extend(parse_www_authenticate(value))
        challenge = pick_challenge(challenges)
        _, message = error_message(await response.aread(), 401)
        if self._static_bearer() is not None:
            raise UpstreamUnauthorized(
                f"upstream refused the token from {self.token_file}: {message}", status=401
            )
        if challenge is None:
            raise UpstreamUnauthorized(
                f"upstream refused access without a usable challenge: {message}", status=401
            )
        credentials = self._credentials()
        if challenge.scheme == "basic":
            if credentials is None or self._basic:
                raise UpstreamUnauthorized(f"upstream refused the credentials: {message}", status=401)
            self._basic = True
            return {"Authorization": credentials}
        realm = challenge.realm
        if not realm:
            raise UpstreamUnauthorized("upstream Bearer challenge has no realm", status=401)
        self._tokens.pop(scope, None)
        async with self._token_lock:
            token = await self._fetch_token(realm, challenge, scope)
        self._tokens[scope] = token
        # Used for the retry even if its lifetime is shorter than the expiry margin.
        return {"Authorization": f"Bearer {token.value}"}

    async def _fetch_token(self, realm: str, challenge: Challenge, scope: str) -> Token:
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        wanted = challenge.params.get("scope") or scope
        for item in wanted.split():
            params.append(("scope", item))
        headers: dict[str, str] = {}
        credentials = self._credentials()
        if credentials is not None:
            headers["Authorization"] = credentials
        try:
            response = await self._http.get(realm, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"token service {realm} unreachable: {exc!r}") from exc
        if response.status_code in (401, 403):
            _, message = error_message(response.content, response.status_code)
            raise UpstreamUnauthorized(f"token service refused the credentials: {message}", status=401)
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content, f"token service {realm}")
        return parse_token_response(response.content, time.time())

    # --- requests ------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with auth; answer at most one challenge; return any non-401 response (open if ``stream``)."""
        auth = self._auth_header(scope)
        for attempt in range(2):
            request = self._http.build_request(method, path, headers={**(headers or {}), **auth})
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise UpstreamUnavailable(f"upstream {self.base_url} unreachable: {exc!r}") from exc
            if response.status_code == 401:
                try:
                    if attempt == 1:
                        _, message = error_message(await response.aread(), 401)
                        raise UpstreamUnauthorized(f"upstream refused access: {message}", status=401)
                    auth = await self._answer_challenge(response, scope)
                except httpx.TransportError as exc:
                    raise UpstreamUnavailable(f"reading upstream answer: {exc!r}") from exc
                finally:
                    await response.aclose()
                continue
            if not stream:
                try:
                    await response.aread()
                except httpx.TransportError as exc:
                    raise UpstreamUnavailable(f"reading upstream answer: {exc!r}") from exc
                finally:
                    await response.aclose()
            return response
        raise AssertionError("unreachable: the second 401 raises")

    async def ping(self) -> None:
        """``GET /v2/``: the upstream speaks the distribution API and accepts our credentials."""
        response = await self._send("GET", "/v2/", scope="")
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content, "GET /v2/")

    async def get_manifest(self, name: str, reference: str, accept: Sequence[str]) -> UpstreamManifest:
        """The manifest ``name:reference`` as (body, media type, digest), digest verified."""
        response = await self._send(
            "GET",
            f"/v2/{name}/manifests/{reference}",
            scope=repository_scope(name),
            headers={"Accept": ", ".join(accept)},
            stream=True,
        )
        try:
            if response.status_code != 200:
                body = await response.aread()
                raise _status_error(response.status_code, body, f"manifest {name}:{reference}")
            parts: list[bytes] = []
            total = 0
            async for data in response.aiter_bytes():
                total += len(data)
                if total > self.max_manifest_bytes:
                    raise UpstreamError(
                        f"manifest {name}:{reference} is larger than {self.max_manifest_bytes} bytes",
                        status=502,
                    )
                parts.append(data)
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"reading manifest {name}:{reference}: {exc!r}") from exc
        finally:
            await response.aclose()
        body = b"".join(parts)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        announced = response.headers.get("Docker-Content-Digest")
        expected = reference if _is_digest(reference) else announced
        if expected is not None:
            algorithm, hexpart = _split_digest(expected)
            actual = digest_bytes(body, algorithm)
            if actual != f"{algorithm}:{hexpart}":
                raise UpstreamDigestMismatch(
                    f"manifest {name}:{reference} hashes to {actual}, expected {expected}", status=502
                )
            if algorithm == "sha256":
                return UpstreamManifest(body, media_type, actual)
        return UpstreamManifest(body, media_type, digest_bytes(body))

    async def head_manifest(self, name: str, reference: str, accept: Sequence[str]) -> ManifestHead:
        """``HEAD`` of a manifest: its announced digest, media type and size."""
        response = await self._send(
            "HEAD",
            f"/v2/{name}/manifests/{reference}",
            scope=repository_scope(name),
            headers={"Accept": ", ".join(accept)},
        )
        if response.status_code != 200:
            raise _status_error(response.status_code, b"", f"manifest {name}:{reference}")
        length = response.headers.get("Content-Length")
        digest = response.headers.get("Docker-Content-Digest")
        if digest is not None:
            _split_digest(digest)
        return ManifestHead(
            digest,
            response.headers.get("Content-Type", "").split(";")[0].strip(),
            int(length) if length is not None and length.isdigit() else None,
        )

    async def stat_blob(self, name: str, digest: str) -> int | None:
        """``HEAD`` of a blob: its size (None if the upstream did not say); UpstreamNotFound if absent."""
        _split_digest(digest)
        response = await self._send("HEAD", f"/v2/{name}/blobs/{digest}", scope=repository_scope(name))
        if response.status_code != 200:
            raise _status_error(response.status_code, b"", f"blob {name}@{digest}")
        length = response.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None

    @asynccontextmanager
    async def open_blob(self, name: str, digest: str, *, start: int = 0) -> AsyncIterator[UpstreamBlob]:
        """An open ``GET`` of a blob (redirects followed); iterate ``.chunks()`` inside the block.

        With ``start`` the blob's bytes from that offset are asked for (``Range``); an upstream
        that ignores it sends the whole blob, whose first bytes ``chunks`` then drops."""
        _split_digest(digest)
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        response = await self._send(
            "GET",
            f"/v2/{name}/blobs/{digest}",
            scope=repository_scope(name),
            headers=headers,
            stream=True,
        )
        try:
            if response.status_code not in ((200, 206) if start else (200,)):
                try:
                    body = await response.aread()
                except httpx.TransportError:
                    body = b""
                raise _status_error(response.status_code, body, f"blob {name}@{digest}")
            yield UpstreamBlob(response, digest, start)
        finally:
            await response.aclose()

    async def stream_blob(self, name: str, digest: str) -> AsyncIterator[bytes]:
        """The blob's bytes, verified against ``digest`` while they stream."""
        async with self.open_blob(name, digest) as blob:
            async for chunk in blob.chunks():
                yield chunk


def _status_error(status: int, body: bytes, what: str) -> UpstreamError:
    code, message = error_message(body, status) if body else (None, f"HTTP {status}")
    text = f"upstream answered {status} for {what}: {message}"
    if status == 404:
        return UpstreamNotFound(text, status=status, code=code)
    if status in (401, 403):
        return UpstreamUnauthorized(text, status=status, code=code)
    if status == 429 or status >= 500:
        return UpstreamUnavailable(text, status=status, code=code)
    return UpstreamError(text, status=status, code=code)
