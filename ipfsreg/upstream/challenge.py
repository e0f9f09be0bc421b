"""Pure pieces of the registry auth flow (no I/O): ``WWW-Authenticate`` challenges, token service
answers, Docker resource scopes, Basic credentials and the OCI error bodies of upstream answers."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Final

from ipfsreg.upstream.errors import UpstreamError

# RFC 9110 token characters, and token68 (a scheme's single opaque credential-like parameter).
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SPACE: Final = re.compile(r"[ \t]*")
# A token service answer without expires_in is valid for 60 seconds (Docker token spec).
DEFAULT_TOKEN_SECONDS: Final = 60
# Tokens are dropped this many seconds before they expire, so a request never carries a stale one.
TOKEN_EXPIRY_MARGIN: Final = 5.0


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


class ChallengeError(UpstreamError):
    """A ``WWW-Authenticate`` header that does not follow the grammar."""


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """The quoted-string starting at ``text[pos] == '"'``: its unescaped value and the end position."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise ChallengeError(f"unterminated quoted string in WWW-Authenticate: {text[:200]!r}")


def _skip(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


def parse_www_authenticate(header: str) -> list[Challenge]:
    """All challenges in one header value (``Basic realm="x", Bearer realm="y",scope="a b"``).

    Parameter names are case-insensitive (kept lower case); a repeated parameter keeps its first value.
    """
    challenges: list[Challenge] = []
    pos, end = 0, len(header)
    while True:
        # Skip empty list elements ("a, , b").
        while True:
            pos = _skip(header, pos)
            if pos < end and header[pos] == ",":
                pos += 1
                continue
            break
        if pos >= end:
            break
        scheme = _TOKEN.match(header, pos)
        if scheme is None:
            raise ChallengeError(f"expected an auth scheme at {pos} in {header[:200]!r}")
        challenge = Challenge(scheme.group().lower())
        challenges.append(challenge)
        pos = scheme.end()
        if pos < end and header[pos] not in " \t,":
            raise ChallengeError(f"unexpected {header[pos]!r} after scheme in {header[:200]!r}")
        pos = _skip(header, pos)
        # token68 form: "Negotiate abc==" (no '=' followed by a value).
        t68 = _TOKEN68.match(header, pos)
        if t68 is not None:
            after = _skip(header, t68.end())
            if (after >= end or header[after] == ",") and not _is_param_start(header, pos):
                challenge.params[""] = t68.group()
                pos = after
                continue
        # auth-param list; it ends where the next element is a new scheme, not name=value.
        while pos < end and _is_param_start(header, pos):
            name = _TOKEN.match(header, pos)
            assert name is not None
            pos = _skip(header, name.end())
            pos = _skip(header, pos + 1)  # the '='
            if pos < end and header[pos] == '"':
                value, pos = _quoted(header, pos)
            else:
                token = _TOKEN.match(header, pos)
                if token is None:
                    raise ChallengeError(f"parameter {name.group()!r} has no value in {header[:200]!r}")
                value, pos = token.group(), token.end()
            challenge.params.setdefault(name.group().lower(), value)
            pos = _skip(header, pos)
            if pos < end and header[pos] != ",":
                raise ChallengeError(f"expected ',' at {pos} in {header[:200]!r}")
            # Move past the comma (and empty elements) only if a parameter follows.
            look = pos
            while look < end and header[look] in ", \t":
                look += 1
            if look < end and _is_param_start(header, look):
                pos = look
            else:
                break
    return challenges


def _is_param_start(text: str, pos: int) -> bool:
    name = _TOKEN.match(text, pos)
    if name is None:
        return False
    after = _skip(text, name.end())
    return after < len(text) and text[after] == "=" and not text.startswith("==", after)


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer (token) before Basic; other schemes are not supported."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def repository_scope(name: str, actions: tuple[str, ...] = ("pull",)) -> str:
    """The Docker token scope for ``name``: ``repository:NAME:pull``."""
    return f"repository:{name}:{','.join(actions)}"


def basic_credentials(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic auth."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float

    def valid(self, now: float) -> bool:
        return now < self.expires_at - TOKEN_EXPIRY_MARGIN


def parse_token_response(body: bytes, now: float) -> Token:
    """A token service's JSON answer (``token`` or OAuth2 ``access_token``, ``expires_in``)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"token service answered non-JSON: {body[:200]!r}") from exc
    if not isinstance(doc, dict):
        raise UpstreamError("token service answer is not a JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise UpstreamError("token service answer has no token")
    expires_in = doc.get("expires_in", DEFAULT_TOKEN_SECONDS)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_SECONDS
    # Shorter lifetimes than the spec's minimum are honoured: the issuer knows best.
    return Token(value, now + float(expires_in))


def error_message(body: bytes, status: int) -> tuple[str | None, str]:
    """The first OCI error's code and ``code: message (detail)`` text, or the body's start."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("code") if isinstance(first.get("code"), str) else None
            text = f"{code or 'error'}: {first.get('message', '')}"
            detail = first.get("detail")
            if detail not in (None, "", {}, []):
                text += f" ({json.dumps(detail)[:300]})"
            return code, text
        for key in ("error_description", "error", "details", "message"):
            if isinstance(doc.get(key), str):
                return None, doc[key][:500]
    text = body[:300].decode("utf-8", "replace").strip()
    return None, text or f"HTTP {status}"
