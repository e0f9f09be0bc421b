"""htpasswd users (bcrypt only), re-read when the file changes; password checks off the event loop."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import bcrypt
import trio

from ipfsreg.auth.policy import ANONYMOUS, AuthConfigError

log = logging.getLogger(__name__)

BCRYPT_PREFIXES: Final = ("$2y$", "$2b$")
MAX_USERS_FILE_BYTES: Final = 16 * 1024 * 1024
_VERIFIED_CACHE_SIZE: Final = 1024


def parse_htpasswd(text: str, *, source: str = "htpasswd") -> dict[str, bytes]:
    """``user:hash`` lines (``#`` comments and blank lines allowed) -> {user: bcrypt hash}.

    Only bcrypt (``$2y$``/``$2b$``) is accepted: MD5, SHA1, crypt and plain entries are refused
    with the line number, as is a duplicated user or one named ``anonymous`` (a rule keyword).
    """
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise AuthConfigError(f"{source}:{number}: expected user:bcrypt-hash")
        if user in users:
            raise AuthConfigError(f"{source}:{number}: user {user!r} appears twice")
        if user == ANONYMOUS or user == "*" or any(c.isspace() for c in user):
            raise AuthConfigError(f"{source}:{number}: {user!r} cannot be a user name")
        if not hashed.startswith(BCRYPT_PREFIXES) or len(hashed) != 60:
            raise AuthConfigError(
                f"{source}:{number}: user {user!r} has no bcrypt hash ($2y$ or $2b$; create it with "
                "'htpasswd -B')"
            )
        users[user] = hashed.encode("ascii", "replace")
    return users


@dataclass(frozen=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


class HtpasswdUnavailable(Exception):
    """The users file cannot be read or parsed any more (after startup): no one can log in."""


class Htpasswd:
    """The users of an htpasswd file, reloaded when its mtime, size or inode change.

    A file that turns unreadable or invalid after startup fails closed: every login is refused
    (and logged) until the file is fixed. Successful checks are remembered (keyed by an HMAC under a
    per-process secret, never the password itself) so clients that send Basic credentials with
    every request do not pay a bcrypt each time; a changed hash or user invalidates them.
    """

    def __init__(self, path: Path, *, max_concurrent_checks: int = 2) -> None:
        self.path = path
        self._users: dict[str, bytes] = {}
        self._stamp: _Stamp | None = None
        self._broken: str | None = None
        self._secret = secrets.token_bytes(32)
        self._verified: dict[bytes, None] = {}
        self._limiter = trio.CapacityLimiter(max_concurrent_checks)
        self.reload(strict=True)

    def _stat(self) -> _Stamp:
        st = os.stat(self.path)
        return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, *, strict: bool = False) -> None:
        """Re-read the file if it changed; ``strict`` raises :class:`AuthConfigError` on any problem."""
        try:
            stamp = self._stat()
            if stamp == self._stamp and self._broken is None:
                return
            if stamp.size > MAX_USERS_FILE_BYTES:
                raise AuthConfigError(f"{self.path}: larger than {MAX_USERS_FILE_BYTES} bytes")
            text = self.path.read_text(encoding="utf-8")
            users = parse_htpasswd(text, source=str(self.path))
        except (OSError, UnicodeDecodeError, AuthConfigError) as exc:
            if strict:
                raise AuthConfigError(f"htpasswd file {self.path}: {exc}") from exc
            if self._broken != str(exc):
                log.error("htpasswd file %s unusable, refusing all logins: %s", self.path, exc)
            self._broken = str(exc)
            self._users = {}
            self._stamp = None
            return
        if self._stamp is not None:
            log.info("htpasswd file %s reloaded: %d users", self.path, len(users))
        self._users, self._stamp, self._broken = users, stamp, None
        self._verified.clear()

    @property
    def users(self) -> frozenset[str]:
        self.reload()
        return frozenset(self._users)

    async def verify(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s; raises :class:`HtpasswdUnavailable` if the file broke."""
        self.reload()
        if self._broken is not None:
            raise HtpasswdUnavailable(self._broken)
        hashed = self._users.get(user)
        secret = password.encode("utf-8")
        if hashed is None:
            # Spend the same time as for a real user, so timing does not reveal who exists.
            cost = _typical_cost(self._users)
            async with self._limiter:
                await trio.to_thread.run_sync(lambda: _checkpw(secret, _dummy_hash(cost)))
            return False
        key = hmac.new(self._secret, b"\0".join((user.encode(), secret, hashed)), hashlib.sha256).digest()
        if key in self._verified:
            return True
        async with self._limiter:
            ok = await trio.to_thread.run_sync(_checkpw, secret, hashed)
        if ok:
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key] = None
            return True
        return False


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash
        return False


def _typical_cost(users: dict[str, bytes]) -> int:
    for hashed in users.values():
        cost = hashed[4:6]
        if cost.isdigit():
            return max(4, min(int(cost), 31))
    return 10


@functools.cache
def _dummy_hash(cost: int) -> bytes:
    return bytes(bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost)))
