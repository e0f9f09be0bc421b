"""Docker registry bearer tokens: signing (the built-in /auth/token issuer) and verification
(the registry as resource server), RS256 or ES256 JWTs with Docker's ``access`` claim."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ipfsreg.auth.policy import Access, AuthConfigError, Resource

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
CLOCK_SKEW_SECONDS: Final = 30
MAX_TOKEN_BYTES: Final = 64 * 1024
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)


class InvalidToken(Exception):
    """A bearer token that is malformed, expired, for another service, or not signed by a trusted key."""


def algorithm_for(key: PrivateKey | PublicKey) -> str:
    """RS256 for RSA (2048 bits or more), ES256 for P-256; anything else is refused."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise AuthConfigError(f"RSA key of {key.key_size} bits: at least 2048 are required")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuthConfigError(f"EC key on {key.curve.name}: only P-256 (ES256) is supported")
        return "ES256"
    raise AuthConfigError(f"unsupported key type {type(key).__name__} (RSA or EC P-256)")


def key_id(key: PrivateKey | PublicKey) -> str:
    """libtrust's key ID (what distribution's token verifier matches ``kid`` against)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AuthConfigError(f"token key {path}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise AuthConfigError(f"token key {path}: {type(key).__name__} is not RSA or EC")
    algorithm_for(key)
    return key


def load_public_keys(path: Path) -> list[PublicKey]:
    """Every ``PUBLIC KEY`` and ``CERTIFICATE`` block of a PEM bundle (at least one)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"token certificate bundle {path}: {exc}") from exc
    keys: list[PublicKey] = []
    for block in _PEM_BLOCK.finditer(data):
        kind = block.group(1)
        try:
            if kind == b"CERTIFICATE":
                public: Any = x509.load_pem_x509_certificate(block.group(0)).public_key()
            elif kind == b"PUBLIC KEY":
                public = serialization.load_pem_public_key(block.group(0))
            else:
                continue
        except ValueError as exc:
            raise AuthConfigError(f"token certificate bundle {path}: {exc}") from exc
        if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise AuthConfigError(f"token certificate bundle {path}: {type(public).__name__} key")
        algorithm_for(public)
        keys.append(public)
    if not keys:
        raise AuthConfigError(f"token certificate bundle {path}: no PUBLIC KEY or CERTIFICATE block")
    return keys


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: int


class TokenIssuer:
    """Signs tokens for ``service`` as ``issuer`` with a private key."""

    def __init__(self, key: PrivateKey, *, issuer: str, service: str, expiration: int = 300) -> None:
        if expiration <= 0:
            raise AuthConfigError("token expiration must be positive")
        self.key = key
        self.algorithm = algorithm_for(key)
        self.kid = key_id(key)
        self.issuer = issuer
        self.service = service
        self.expiration = expiration

    def issue(self, subject: str, access: Sequence[Access], *, now: float | None = None) -> IssuedToken:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": issued + self.expiration,
            "nbf": issued,
            "iat": issued,
            "jti": secrets.token_urlsafe(16),
            "access": [a.to_claim() for a in access],
        }
        token = jwt.encode(claims, self.key, algorithm=self.algorithm, headers={"kid": self.kid})
        return IssuedToken(token, self.expiration, issued)


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    access: tuple[Access, ...]

    def allows(self, resource: Resource, action: str) -> bool:
        return any(a.resource == resource and action in a.actions for a in self.access)


class TokenVerifier:
    """Checks signature (trusted keys only, algorithm fixed by each key), issuer, audience and time."""

    def __init__(self, keys: Sequence[PublicKey], *, issuer: str, service: str) -> None:
        if not keys:
            raise AuthConfigError("no token verification keys")
        self.keys = [(key, algorithm_for(key), key_id(key)) for key in keys]
        self.issuer = issuer
        self.service = service

    def verify(self, token: str, *, now: float | None = None) -> VerifiedToken:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        candidates = [(k, a) for k, a, i in self.keys if a == alg and (kid is None or kid == i)]
        if not candidates:
            candidates = [(k, a) for k, a, _ in self.keys if a == alg]
        if not candidates:
            raise InvalidToken(f"no trusted key for algorithm {alg!r}")
        last: Exception | None = None
        for key, algorithm in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self.service,
                    issuer=self.issuer,
                    leeway=CLOCK_SKEW_SECONDS,
                    options={"require": ["exp", "iss", "aud"], "verify_iat": False},
                )
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.PyJWTError as exc:
                raise InvalidToken(str(exc)) from exc
            if now is not None and int(claims["exp"]) + CLOCK_SKEW_SECONDS < now:
                raise InvalidToken("token has expired")
            return VerifiedToken(str(claims.get("sub", "")), _parse_access(claims.get("access", [])))
        raise InvalidToken(f"signature not from a trusted key: {last}")


def _parse_access(value: Any) -> tuple[Access, ...]:
    if not isinstance(value, list):
        raise InvalidToken("access claim is not a list")
    out: list[Access] = []
    for entry in value:
        if not isinstance(entry, dict):
            raise InvalidToken("access entry is not an object")
        rtype, name, actions = entry.get("type"), entry.get("name"), entry.get("actions", [])
        if not isinstance(rtype, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("access entry needs string type and name and a list of actions")
        if not all(isinstance(a, str) for a in actions):
            raise InvalidToken("access actions must be strings")
        out.append(Access(Resource(rtype, name), tuple(actions)))
    return tuple(out)
