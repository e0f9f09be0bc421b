"""Helpers for auth tests: htpasswd files, signing keys, self-signed certificates, and the registry
app served behind :class:`~ipfsreg.auth.AuthApp` on loopback in the test's trio loop."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ipfsreg.auth import auth_app
from ipfsreg.blockstore import Datastore
from ipfsreg.registry.app import create_app, registry_store, serve_registry
from ipfsreg.registry.settings import RegistrySettings
from ipfsreg.registry.storage import RegistryStore

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret", "eve": "eve-secret"}


def write_htpasswd(path: Path, users: dict[str, str], *, prefix: str = "$2y$") -> Path:
    """An htpasswd file with cheap (cost 4) bcrypt hashes, as `htpasswd -B` writes them."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{user}:{prefix}{hashed[4:]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_private_key(path: Path, kind: str = "ec") -> Path:
    key: Any = (
        ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def write_self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (an IP SAN) and its key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipfsreg test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class AuthServer:
    url: str
    settings: RegistrySettings
    store: RegistryStore
    app: Any

    def client(
        self, user: str | None = None, password: str | None = None, **kwargs: Any
    ) -> httpx.AsyncClient:
        auth = None
        if user is not None:
            auth = httpx.BasicAuth(user, password if password is not None else PASSWORDS[user])
        return httpx.AsyncClient(base_url=self.url, auth=auth, timeout=60, **kwargs)


def auth_settings(**overrides: Any) -> RegistrySettings:
    return replace(RegistrySettings(listen="127.0.0.1:0"), **overrides)


@asynccontextmanager
async def running_auth_registry(data_dir: Path, settings: RegistrySettings) -> AsyncIterator[AuthServer]:
    datastore = Datastore.open(data_dir)
    try:
        registry = create_app(datastore, settings)
        app = auth_app(registry, settings)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_registry, app, settings)
            yield AuthServer(binds[0], settings, registry_store(registry), app)
            nursery.cancel_scope.cancel()
    finally:
        datastore.close()


def ssl_context_for(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Scheme k="v",k2="v2"`` -> (scheme, params); enough for the challenges tests see."""
    import re

    scheme, _, rest = header.partition(" ")
    params = {k: v.replace('\\"', '"') for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest)}
    return scheme, params


class DockerTokenAuth(httpx.Auth):
    """The Docker client side of token auth: on a Bearer challenge, fetch a token for the
    challenged scope from the realm (with Basic credentials if given) and retry once."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.user = user
        self.password = password
        self.token: str | None = None
        self.token_responses: list[httpx.Response] = []

    def auth_flow(self, request: httpx.Request) -> Any:
        if self.token is not None:
            request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme != "Bearer":
            return
        query = {"service": params["service"]}
        if "scope" in params:
            query["scope"] = params["scope"]
        token_request = httpx.Request("GET", params["realm"], params=query)
        if self.user is not None:
            token_request.headers["Authorization"] = httpx.BasicAuth(
                self.user, self.password or PASSWORDS[self.user]
            )._auth_header
        token_response = yield token_request
        token_response.read()
        self.token_responses.append(token_response)
        if token_response.status_code != 200:
            return
        self.token = token_response.json()["token"]
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request

    requires_response_body = True
