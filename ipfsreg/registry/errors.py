"""The registry's one error type and the table of OCI distribution error codes (status, message)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from ipfsreg.oci.errors import OCIError


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str


_CODES: Final = (
    ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry"),
    ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid"),
    ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"),
    ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content"),
    ErrorCode("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"),
    ErrorCode("MANIFEST_INVALID", 400, "manifest invalid"),
    ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry"),
    ErrorCode("NAME_INVALID", 400, "invalid repository name"),
    ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry"),
    ErrorCode("SIZE_INVALID", 400, "provided length did not match content length"),
    ErrorCode("TAG_INVALID", 400, "manifest tag did not match URI"),
    ErrorCode("UNAUTHORIZED", 401, "authentication required"),
    ErrorCode("DENIED", 403, "requested access to the resource is denied"),
    ErrorCode("UNSUPPORTED", 405, "the operation is unsupported"),
    ErrorCode("TOOMANYREQUESTS", 429, "too many requests"),
    ErrorCode("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"),
    ErrorCode("UNKNOWN", 500, "unknown error"),
    ErrorCode("UNAVAILABLE", 503, "service unavailable"),
)
ERROR_CODES: Final[dict[str, ErrorCode]] = {c.code: c for c in _CODES}


class RegistryError(Exception):
    """An OCI error: ``code`` from :data:`ERROR_CODES`; ``status`` may override the table's status."""

    def __init__(
        self,
        code: str,
        detail: Any = None,
        *,
        message: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        entry = ERROR_CODES.get(code)
        if entry is None:
            raise ValueError(f"unknown registry error code {code!r}")
        self.code = code
        self.message = message or entry.message
        self.detail = detail
        self.status = status if status is not None else entry.status
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {self.message}" + (f" ({detail})" if detail is not None else ""))

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}

    def body(self) -> bytes:
        return json.dumps(self.to_json()).encode()


def registry_error(exc: OCIError) -> RegistryError:
    """The registry error for an OCI format error (its code and detail; status from the table)."""
    code = exc.code if exc.code in ERROR_CODES else "MANIFEST_INVALID"
    return RegistryError(code, exc.detail)
