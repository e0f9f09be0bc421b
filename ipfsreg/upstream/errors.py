"""The upstream client's one error family; each carries the upstream's own message when it gave one."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream registry could not give what was asked (bad answer, wrong digest, HTTP error)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.message = message
        self.status = status
        self.code = code
        super().__init__(message)


class UpstreamUnauthorized(UpstreamError):
    """The upstream (or its token service) refused our credentials, or anonymous access."""


class UpstreamNotFound(UpstreamError):
    """The upstream has no such repository, manifest or blob (HTTP 404)."""


class UpstreamUnavailable(UpstreamError):
    """The upstream cannot be reached, timed out, or answered 5xx / 429."""


class UpstreamDigestMismatch(UpstreamError):
    """The bytes the upstream sent do not hash to the digest asked for (or the one it announced)."""
