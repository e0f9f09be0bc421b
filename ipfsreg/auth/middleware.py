"""ASGI middleware enforcing authentication and per-repository rights in front of the registry app,
and the built-in Docker token endpoint (``GET /auth/token``).

Two schemes, chosen by the settings:

- Basic (``registry.htpasswd``): credentials checked against the htpasswd file on every request,
  rights from :class:`~ipfsreg.auth.policy.Policy`. No credentials: the anonymous rights, else
  ``401`` with ``WWW-Authenticate: Basic``; wrong credentials: ``401``; a known user lacking the
  right: ``403 DENIED``.
- Bearer (``registry.token_key`` and/or ``registry.token_rootcertbundle``): every request carries
  a JWT whose ``access`` claim lists the rights; a missing, invalid or insufficient token gets
  ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` (with
  ``error="insufficient_scope"`` as distribution does, so clients fetch a wider token). With
  ``token_key`` the registry also serves ``/auth/token``, authenticating against htpasswd and
  granting the requested scopes cut down to the policy.

A cross-repository mount (``POST .../blobs/uploads/?mount=&from=``) is passed on only when the
requester may pull ``from``; otherwise the mount parameters are removed and the registry opens
an ordinary upload session (202), as distribution does. Mounts without ``from`` are removed too:
they would let anyone who knows a digest link a blob out of a repository they cannot read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

import trio

from ipfsreg.auth.htpasswd import Htpasswd, HtpasswdUnavailable
from ipfsreg.auth.policy import (
    ANONYMOUS_PRINCIPAL,
    PULL,
    Access,
    AuthConfigError,
    Need,
    Policy,
    Principal,
    Resource,
    is_mount,
    need_for,
    parse_scopes,
    without_mount,
)
from ipfsreg.auth.token import (
    InvalidToken,
    PublicKey,
    TokenIssuer,
    TokenVerifier,
    load_private_key,
    load_public_keys,
)
from ipfsreg.httpserver import USER_SCOPE_KEY, TrackedReceive, drain_body
from ipfsreg.registry.settings import RegistrySettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)

TOKEN_PATH: Final = "/auth/token"
API_VERSION: Final = (b"docker-distribution-api-version", b"registry/2.0")
DRAIN_IDLE_SECONDS: Final = 30.0
MAX_FORM_BYTES: Final = 64 * 1024


class _Rights(Protocol):
    """What an authenticated (or anonymous) requester may do."""

    @property
    def authenticated(self) -> bool: ...

    @property
    def user(self) -> str:
        """The authenticated user's name ("" when anonymous or not named)."""
        ...

    def allows(self, resource: Resource, action: str) -> bool: ...


@dataclass(frozen=True)
class _PolicyRights:
    policy: Policy
    principal: Principal

    @property
    def authenticated(self) -> bool:
        return not self.principal.anonymous

    @property
    def user(self) -> str:
        return "" if self.principal.anonymous else self.principal.name

    def allows(self, resource: Resource, action: str) -> bool:
        return self.policy.allows(self.principal, resource, action)


@dataclass(frozen=True)
class _TokenRights:
    access: tuple[Access, ...]
    authenticated: bool = True
    user: str = ""

    def allows(self, resource: Resource, action: str) -> bool:
        return any(a.resource == resource and action in a.actions for a in self.access)


class _Refused(Exception):
    """Credentials were presented and are wrong (or cannot be checked)."""

    def __init__(self, reason: str, *, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def basic_credentials(header: str) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` -> (user, password); None when it is not a Basic header.

    Empty credentials (``Basic Og==``, i.e. ``:``) come back as ``("", "")``: podman, skopeo and
    buildah send them after a Basic challenge to mean anonymous. Raises :class:`ValueError`, saying
    what is wrong, for a Basic header that does not decode.
    """
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    value = value.strip()
    if not value:
        raise ValueError("malformed Basic credentials: nothing after 'Basic'")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("malformed Basic credentials: not base64") from None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("malformed Basic credentials: user:password is not UTF-8") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise ValueError("malformed Basic credentials: no ':' between user and password")
    if not user and password:
        raise ValueError("malformed Basic credentials: a password without a user name")
    return user, password


def bearer_token(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthApp:
    """ASGI middleware: ``AuthApp(app, ...)``; build it with :func:`auth_app` from the settings."""

    def __init__(
        self,
        app: Any,
        policy: Policy,
        *,
        htpasswd: Htpasswd | None = None,
        realm: str = "ipfsreg",
        verifier: TokenVerifier | None = None,
        issuer: TokenIssuer | None = None,
        token_realm: str = "",
        service: str = "ipfsreg",
    ) -> None:
        if issuer is not None and (verifier is None or htpasswd is None):
            raise AuthConfigError("the token endpoint needs a verifier and an htpasswd file")
        if verifier is None and htpasswd is None:
            raise AuthConfigError("authentication needs an htpasswd file or token keys")
        self.app = app
        self.policy = policy
        self.htpasswd = htpasswd
        self.realm = realm
        self.verifier = verifier
        self.issuer = issuer
        self.token_realm = token_realm
        self.service = service

    @property
    def bearer(self) -> bool:
        return self.verifier is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET").upper()
        query: bytes = scope.get("query_string", b"")
        head = method == "HEAD"
        receive = TrackedReceive(receive)  # early answers read away only what is left of the body
        if path == TOKEN_PATH and self.issuer is not None:
            await self._token_endpoint(scope, receive, send)
            return
        need = need_for(method, path, query)
        try:
            rights = await self._authenticate(scope)
        except _Refused as refused:
            if refused.status == 401:
                error = "invalid_token" if self.bearer else None
                await self._challenge(scope, receive, send, need, refused.reason, error=error)
            else:
                await self._respond_error(
                    scope, receive, send, refused.status, "UNAVAILABLE", refused.reason, {}, head=head
                )
            return
        if need.kind == "name_invalid" or need.kind == "login":
            if not rights.authenticated:
                await self._challenge(scope, receive, send, need, "authentication required")
                return
            if need.kind == "name_invalid":
                await self._respond_error(
                    scope, receive, send, 400, "NAME_INVALID", "invalid repository name", {}, head=head
                )
                return
        else:
            assert need.resource is not None
            if not rights.allows(need.resource, need.action):
                if rights.authenticated and not self.bearer:
                    detail = {"type": need.resource.type, "name": need.resource.name, "action": need.action}
                    await self._respond_error(
                        scope,
                        receive,
                        send,
                        403,
                        "DENIED",
                        "requested access to the resource is denied",
                        {},
                        head=head,
                        detail=detail,
                    )
                else:
                    error = "insufficient_scope" if self.bearer and rights.authenticated else None
                    message = "authentication required"
                    if error is not None:
                        wanted = " ".join(need.challenge_scopes())
                        message = f"insufficient scope: the token does not grant {wanted}"
                    await self._challenge(scope, receive, send, need, message, error=error)
                return
            if is_mount(query) and not (need.mount_from is not None and rights.allows(need.mount_from, PULL)):
                scope = dict(scope)
                scope["query_string"] = without_mount(query)
        if rights.user:
            scope = dict(scope)
            scope[USER_SCOPE_KEY] = rights.user  # per-user limits (upload sessions) in the registry
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> _Rights:
        header = _header(scope, b"authorization")
        if self.verifier is not None:
            token = bearer_token(header) if header else None
            if token is None:
                # No token (or Basic credentials sent to a token registry): get one first.
                return _TokenRights((), authenticated=False)
            try:
                verified = self.verifier.verify(token)
            except InvalidToken as exc:
                raise _Refused(f"invalid token: {exc}") from exc
            return _TokenRights(verified.access, user=verified.subject)
        assert self.htpasswd is not None
        principal = await self._basic_principal(header)
        return _PolicyRights(self.policy, principal)

    async def _basic_principal(self, header: str) -> Principal:
        assert self.htpasswd is not None
        if not header:
            return ANONYMOUS_PRINCIPAL
        try:
            credentials = basic_credentials(header)
        except ValueError as exc:
            raise _Refused(str(exc)) from exc
        if credentials is None:
            raise _Refused("unsupported authorization scheme")
        if credentials == ("", ""):
            return ANONYMOUS_PRINCIPAL  # what the reference registry does with empty credentials
        return await self._password_principal(*credentials)

    async def _password_principal(self, user: str, password: str) -> Principal:
        assert self.htpasswd is not None
        if not user:
            raise _Refused("missing username")
        try:
            ok = await self.htpasswd.verify(user, password)
        except HtpasswdUnavailable as exc:
            raise _Refused("user database unavailable", status=503) from exc
        if not ok:
            raise _Refused("invalid username or password")
        return Principal(user)

    def _challenge_header(self, scope: Scope, need: Need, error: str | None) -> str:
        if not self.bearer:
            return f"Basic realm={_quote(self.realm)}"
        realm = self.token_realm or _own_url(scope) + TOKEN_PATH
        parts = [f"realm={_quote(realm)}", f"service={_quote(self.service)}"]
        scopes = need.challenge_scopes()
        if scopes:
            parts.append(f"scope={_quote(' '.join(scopes))}")
        if error is not None:
            parts.append(f"error={_quote(error)}")
        return "Bearer " + ",".join(parts)

    async def _challenge(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        need: Need,
        message: str,
        *,
        error: str | None = None,
    ) -> None:
        detail: Any = None
        if need.resource is not None:
            detail = [{"Type": need.resource.type, "Name": need.resource.name, "Action": need.action}]
        await self._respond_error(
            scope,
            receive,
            send,
            401,
            "UNAUTHORIZED",
            message,
            {"www-authenticate": self._challenge_header(scope, need, error)},
            head=scope.get("method", "").upper() == "HEAD",
            detail=detail,
        )

    async def _respond_error(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str],
        *,
        head: bool,
        detail: Any = None,
    ) -> None:
        entry: dict[str, Any] = {"code": code, "message": message}
        if detail is not None:
            entry["detail"] = detail
        body = json.dumps({"errors": [entry]}).encode()
        await _send_response(scope, receive, send, status, body, "application/json", headers, head=head)

    # --- the token endpoint -------------------------------------------------------------------

    async def _token_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Docker's token endpoint: ``GET`` with Basic credentials (or none: anonymous), or the
        OAuth2 ``POST`` form with ``grant_type=password`` (no refresh tokens are issued)."""
        assert self.issuer is not None and self.htpasswd is not None
        method = scope.get("method", "GET").upper()
        head = method == "HEAD"

        async def fail(
            status: int, error: str, description: str, headers: dict[str, str] | None = None
        ) -> None:
            await _send_json(
                scope, receive, send, status, _oauth_error(error, description), head=head, headers=headers
            )

        try:
            if method in ("GET", "HEAD"):
                params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                principal = await self._basic_principal(_header(scope, b"authorization"))
            elif method == "POST":
                if "application/x-www-form-urlencoded" not in _header(scope, b"content-type").lower():
                    await fail(400, "invalid_request", "expected an application/x-www-form-urlencoded form")
                    return
                form = await _read_body(receive, MAX_FORM_BYTES)
                if form is None:
                    await fail(413, "invalid_request", f"form larger than {MAX_FORM_BYTES} bytes")
                    return
                params = parse_qsl(form.decode("latin-1"), keep_blank_values=True, encoding="utf-8")
                fields = dict(params)
                if fields.get("grant_type") != "password":
                    await fail(400, "unsupported_grant_type", "only grant_type=password is supported")
                    return
                principal = await self._password_principal(
                    fields.get("username", ""), fields.get("password", "")
                )
            else:
                await fail(405, "invalid_request", "use GET or POST", {"allow": "GET, HEAD, POST"})
                return
        except _Refused as refused:
            if refused.status == 401:
                challenge = {"www-authenticate": f"Basic realm={_quote(self.realm)}"}
                await fail(401, "invalid_grant", refused.reason, challenge)
            else:
                await fail(refused.status, "temporarily_unavailable", refused.reason)
            return
        services = {v for k, v in params if k == "service"}
        if services and services != {self.service}:
            await fail(400, "invalid_request", f"unknown service {sorted(services)}")
            return
        accounts = {v for k, v in params if k == "account" and v}
        if accounts and not principal.anonymous and accounts != {principal.name}:
            await fail(400, "invalid_request", "account does not match the credentials")
            return
        requested = parse_scopes(v for k, v in params if k == "scope")
        granted = self.policy.grant(principal, requested)
        issued = self.issuer.issue(principal.name, granted)
        stamp = datetime.fromtimestamp(issued.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": stamp,
            "scope": " ".join(a.scope() for a in granted),
        }
        log.info("token for %s: %s", principal.name or "anonymous", body["scope"] or "-")
        await _send_json(scope, receive, send, 200, body, head=head)


def _oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _own_url(scope: Scope) -> str:
    """``scheme://host`` this request reached (for the built-in token realm)."""
    scheme = scope.get("scheme", "http")
    host = _header(scope, b"host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scheme}://{host}"


async def _send_json(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    doc: Any,
    *,
    head: bool,
    headers: dict[str, str] | None = None,
) -> None:
    body = json.dumps(doc).encode()
    await _send_response(scope, receive, send, status, body, "application/json", headers or {}, head=head)


async def _send_response(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: dict[str, str],
    *,
    head: bool,
) -> None:
    """Answer without the app. A request body the client is still sending is read away first
    (bounded: :func:`~ipfsreg.httpserver.drain_body`), so a client that sent all of it keeps its
    connection; past the bounds the answer says ``connection: close``."""
    raw = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        API_VERSION,
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
    ]
    if not await drain_body(scope, receive):
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it exceeds ``limit`` (the rest is drained later)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        with trio.move_on_after(DRAIN_IDLE_SECONDS) as idle:
            message = await receive()
        if idle.cancelled_caught:
            raise _Refused("the request body stopped arriving", status=408)
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        if message["type"] != "http.request":
            continue
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def auth_enabled(settings: RegistrySettings) -> bool:
    return bool(settings.htpasswd or settings.token_key or settings.token_rootcertbundle)


def auth_app(app: Any, settings: RegistrySettings) -> Any:
    """``app`` behind :class:`AuthApp` as ``settings`` ask, or ``app`` itself when auth is off.

    Raises :class:`AuthConfigError` (at startup) for unusable rules, users file or keys, and for
    access rules or anonymous pull given without any way to authenticate.
    """
    if not auth_enabled(settings):
        if settings.access or settings.anonymous_pull:
            raise AuthConfigError(
                "registry.access / registry.anonymous_pull need registry.htpasswd or token keys"
            )
        return app
    policy = Policy.from_settings(settings.access, anonymous_pull=settings.anonymous_pull)
    host = settings.listen.rsplit(":", 1)[0].strip("[]")
    if settings.tls_cert is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "authentication without TLS on %s: passwords and tokens cross the network in clear text "
            "(set registry.tls_cert and registry.tls_key, or terminate TLS in front)",
            settings.listen,
        )
    htpasswd = Htpasswd(settings.htpasswd) if settings.htpasswd is not None else None
    issuer: TokenIssuer | None = None
    keys: list[PublicKey] = []
    if settings.token_key is not None:
        if htpasswd is None:
            raise AuthConfigError("registry.token_key (the /auth/token endpoint) needs registry.htpasswd")
        private = load_private_key(settings.token_key)
        issuer = TokenIssuer(
            private,
            issuer=settings.token_issuer,
            service=settings.token_service,
            expiration=settings.token_expiration,
        )
        keys.append(private.public_key())
    if settings.token_rootcertbundle is not None:
        keys.extend(load_public_keys(settings.token_rootcertbundle))
    verifier = (
        TokenVerifier(keys, issuer=settings.token_issuer, service=settings.token_service) if keys else None
    )
    return AuthApp(
        app,
        policy,
        htpasswd=htpasswd,
        realm=settings.auth_realm,
        verifier=verifier,
        issuer=issuer,
        token_realm=settings.token_realm,
        service=settings.token_service,
    )


__all__: Sequence[str] = ("AuthApp", "auth_app", "auth_enabled", "basic_credentials", "bearer_token")
